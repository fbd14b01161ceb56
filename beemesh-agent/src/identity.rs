//! Workload identities: SPIFFE ids and the sans-IO registry that gives each one the stable
//! numeric id used in the kernel maps. Used by the policy compiler and the agent's workload
//! tracker (which persists the registry in its state dir). X.509 SVIDs live in [`svid`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use beemesh_common::{FIRST_CIDR_ID, FIRST_WORKLOAD_ID, ID_ANY, ID_HOST, ID_NONE, ID_WORLD};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod svid;

/// The URI scheme every workload identity starts with.
pub const SPIFFE_SCHEME: &str = "spiffe://";

/// SPIFFE allows trust domains up to 255 characters.
const MAX_TRUST_DOMAIN: usize = 255;
/// Kubernetes namespaces are DNS-1123 labels.
const MAX_LABEL: usize = 63;
/// Kubernetes service accounts are DNS-1123 subdomains.
const MAX_SUBDOMAIN: usize = 253;

/// Errors of SPIFFE id parsing and of the identity registry.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0:?}: not a spiffe id (expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>)")]
    WrongScheme(String),
    #[error("{0:?}: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    MissingParts(String),
    #[error("invalid trust domain {0:?}: expected [a-z0-9._-]+, at most 255 characters")]
    BadTrustDomain(String),
    #[error("invalid namespace {0:?}: expected a DNS-1123 label ([a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63 characters)")]
    BadNamespace(String),
    #[error("invalid service account {0:?}: expected a DNS-1123 subdomain ([a-z0-9]([-a-z0-9.]*[a-z0-9])?, at most 253 characters)")]
    BadServiceAccount(String),
    #[error("workload identity space exhausted ({0} ids handed out)")]
    Exhausted(u32),
    #[error("invalid identity registry state: {0}")]
    Json(#[from] serde_json::Error),
    #[error("inconsistent identity registry state: {0}")]
    Corrupt(String),
}

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl SpiffeId {
    /// Builds an id from its parts, validating each one.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, IdentityError> {
        if !is_trust_domain(trust_domain) {
            return Err(IdentityError::BadTrustDomain(trust_domain.to_owned()));
        }
        if !is_dns_label(namespace) {
            return Err(IdentityError::BadNamespace(namespace.to_owned()));
        }
        if !is_dns_subdomain(service_account) {
            return Err(IdentityError::BadServiceAccount(service_account.to_owned()));
        }
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s.strip_prefix(SPIFFE_SCHEME).ok_or_else(|| IdentityError::WrongScheme(s.to_owned()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Self::new(td, ns, sa),
            _ => Err(IdentityError::MissingParts(s.to_owned())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SPIFFE_SCHEME}{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[a-z0-9._-]+`, at most 255 characters (SPIFFE trust domain).
pub fn is_trust_domain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TRUST_DOMAIN
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= MAX_LABEL && dns_shape(s, b"-")
}

/// DNS-1123 subdomain (as Kubernetes checks names): `[a-z0-9]([-a-z0-9.]*[a-z0-9])?`, at
/// most 253 characters.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= MAX_SUBDOMAIN && dns_shape(s, b"-.")
}

fn dns_shape(s: &str, inner: &[u8]) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    match (b.first(), b.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && b.iter().all(|c| alnum(c) || inner.contains(c))
        }
        _ => false,
    }
}

/// Workload labels, as Kubernetes labels (`app: web`).
pub type Labels = BTreeMap<String, String>;

/// Hands out the numeric ids that stand for workload identities in the kernel maps.
///
/// The kernel's unit is a *security identity*: a SPIFFE id together with the workload's
/// labels, so that label selectors (NetworkPolicy `podSelector`) can tell apart workloads
/// that share a service account. Ids are stable (the same SPIFFE id and labels always get
/// the same number while known), start at [`FIRST_WORKLOAD_ID`] and are never handed out
/// twice, even after [`Self::forget`]: a stale id still cached somewhere (a socket's map
/// entry, a flow event) must never name another workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityRegistry {
    by_key: BTreeMap<(SpiffeId, Labels), u32>,
    by_id: BTreeMap<u32, (SpiffeId, Labels)>,
    /// Next id to hand out; persisted so that forgotten ids are not reused after a restart.
    next: u32,
}

/// On-disk form of one allocation.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Allocation {
    id: u32,
    spiffe: SpiffeId,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: Labels,
}

/// On-disk form of the registry (JSON in the agent's state dir).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryState {
    next: u32,
    ids: Vec<Allocation>,
}

impl IdentityRegistry {
    pub fn new() -> Self {
        Self { by_key: BTreeMap::new(), by_id: BTreeMap::new(), next: FIRST_WORKLOAD_ID }
    }

    /// The id of `spiffe` without labels, allocating one if needed.
    pub fn allocate(&mut self, spiffe: &SpiffeId) -> Result<u32, IdentityError> {
        self.allocate_labeled(spiffe, &Labels::new())
    }

    /// The id of `spiffe` with `labels`, allocating the next free one if it has none yet.
    pub fn allocate_labeled(&mut self, spiffe: &SpiffeId, labels: &Labels) -> Result<u32, IdentityError> {
        let key = (spiffe.clone(), labels.clone());
        if let Some(id) = self.by_key.get(&key) {
            return Ok(*id);
        }
        // `Default` leaves `next` at 0; ids below FIRST_WORKLOAD_ID are reserved.
        let id = self.next.max(FIRST_WORKLOAD_ID);
        if id >= FIRST_CIDR_ID {
            return Err(IdentityError::Exhausted(id - FIRST_WORKLOAD_ID));
        }
        self.next = id + 1;
        self.by_key.insert(key.clone(), id);
        self.by_id.insert(id, key);
        Ok(id)
    }

    /// Drops the mapping of `spiffe` without labels; its id is not reused.
    pub fn forget(&mut self, spiffe: &SpiffeId) -> Option<u32> {
        let id = self.by_key.remove(&(spiffe.clone(), Labels::new()))?;
        self.by_id.remove(&id);
        Some(id)
    }

    pub fn id_of(&self, spiffe: &SpiffeId) -> Option<u32> {
        self.by_key.get(&(spiffe.clone(), Labels::new())).copied()
    }

    pub fn spiffe_of(&self, id: u32) -> Option<&SpiffeId> {
        self.by_id.get(&id).map(|(s, _)| s)
    }

    pub fn labels_of(&self, id: u32) -> Option<&Labels> {
        self.by_id.get(&id).map(|(_, l)| l)
    }

    /// Known identities in id order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &SpiffeId)> {
        self.by_id.iter().map(|(id, (s, _))| (*id, s))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// A human-readable name for any numeric id (reserved entities included), for logs and
    /// flow output.
    pub fn describe(&self, id: u32) -> String {
        match id {
            ID_NONE => "none".to_owned(),
            ID_HOST => "host".to_owned(),
            ID_WORLD => "world".to_owned(),
            ID_ANY => "any".to_owned(),
            id if id >= FIRST_CIDR_ID => format!("cidr#{id}"),
            id => match self.spiffe_of(id) {
                Some(spiffe) => spiffe.to_string(),
                None if id < FIRST_WORKLOAD_ID => format!("reserved#{id}"),
                None => format!("unknown#{id}"),
            },
        }
    }

    /// Serialises the registry for the agent's state dir.
    pub fn to_json(&self) -> String {
        let state = RegistryState {
            next: self.next.max(FIRST_WORKLOAD_ID),
            ids: self
                .by_id
                .iter()
                .map(|(id, (spiffe, labels))| Allocation {
                    id: *id,
                    spiffe: spiffe.clone(),
                    labels: labels.clone(),
                })
                .collect(),
        };
        serde_json::to_string_pretty(&state).expect("strings and integers serialise")
    }

    /// Restores a registry written by [`Self::to_json`], checking it is consistent.
    pub fn from_json(text: &str) -> Result<Self, IdentityError> {
        let state: RegistryState = serde_json::from_str(text)?;
        if !(FIRST_WORKLOAD_ID..=FIRST_CIDR_ID).contains(&state.next) {
            return Err(IdentityError::Corrupt(format!("next id {} out of the workload range", state.next)));
        }
        let mut reg = Self { next: state.next, ..Self::new() };
        for a in state.ids {
            if !(FIRST_WORKLOAD_ID..state.next).contains(&a.id) {
                return Err(IdentityError::Corrupt(format!(
                    "{} has id {}, outside {FIRST_WORKLOAD_ID}..{}",
                    a.spiffe, a.id, state.next
                )));
            }
            let key = (a.spiffe, a.labels);
            if let Some((other, _)) = reg.by_id.insert(a.id, key.clone()) {
                return Err(IdentityError::Corrupt(format!(
                    "id {} given to both {other} and {}",
                    a.id, key.0
                )));
            }
            if reg.by_key.insert(key.clone(), a.id).is_some() {
                return Err(IdentityError::Corrupt(format!("{} allocated twice", key.0)));
            }
        }
        Ok(reg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().expect("valid spiffe id")
    }

    #[test]
    fn parses_and_displays() {
        let s = id("spiffe://beemesh.local/ns/shop/sa/frontend");
        assert_eq!(s.trust_domain(), "beemesh.local");
        assert_eq!(s.namespace(), "shop");
        assert_eq!(s.service_account(), "frontend");
        assert_eq!(s.to_string(), "spiffe://beemesh.local/ns/shop/sa/frontend");
        let sa_with_dots = id("spiffe://td/ns/a-1/sa/build.bot");
        assert_eq!(sa_with_dots.service_account(), "build.bot");
    }

    #[test]
    fn rejects_bad_ids() {
        let err = |s: &str| s.parse::<SpiffeId>().expect_err(s).to_string();
        assert!(err("http://td/ns/a/sa/b").contains("not a spiffe id"));
        assert!(err("spiffe://td/ns/a").contains("expected spiffe://"));
        assert!(err("spiffe://td/ns/a/sa/b/c").contains("expected spiffe://"));
        assert!(err("spiffe://td/namespace/a/sa/b").contains("expected spiffe://"));
        assert!(err("spiffe://TD/ns/a/sa/b").contains("invalid trust domain"));
        assert!(err("spiffe:///ns/a/sa/b").contains("invalid trust domain"));
        assert!(err("spiffe://td/ns/a.b/sa/b").contains("invalid namespace"));
        assert!(err("spiffe://td/ns/-a/sa/b").contains("invalid namespace"));
        assert!(err("spiffe://td/ns/a/sa/b_c").contains("invalid service account"));
        assert!(err("spiffe://td/ns/a/sa/").contains("invalid service account"));
        let long = "a".repeat(64);
        assert!(err(&format!("spiffe://td/ns/{long}/sa/b")).contains("invalid namespace"));
        assert!(SpiffeId::new("td", &"a".repeat(63), &"b".repeat(253)).is_ok());
        assert!(SpiffeId::new("td", "a", &"b".repeat(254)).is_err());
    }

    #[test]
    fn serde_as_string() {
        let s = id("spiffe://td/ns/a/sa/b");
        let json = serde_json::to_string(&s).expect("serialises");
        assert_eq!(json, "\"spiffe://td/ns/a/sa/b\"");
        let back: SpiffeId = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, s);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/x\"").is_err());
    }

    #[test]
    fn allocation_is_stable_and_never_reuses() {
        let mut r = IdentityRegistry::new();
        let a = id("spiffe://td/ns/a/sa/a");
        let b = id("spiffe://td/ns/a/sa/b");
        assert_eq!(r.allocate(&a).expect("room"), FIRST_WORKLOAD_ID);
        assert_eq!(r.allocate(&b).expect("room"), FIRST_WORKLOAD_ID + 1);
        assert_eq!(r.allocate(&a).expect("room"), FIRST_WORKLOAD_ID);
        assert_eq!(r.id_of(&b), Some(FIRST_WORKLOAD_ID + 1));
        assert_eq!(r.spiffe_of(FIRST_WORKLOAD_ID), Some(&a));
        assert_eq!(r.forget(&a), Some(FIRST_WORKLOAD_ID));
        assert_eq!(r.id_of(&a), None);
        assert_eq!(r.allocate(&a).expect("room"), FIRST_WORKLOAD_ID + 2);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn default_registry_starts_at_first_workload_id() {
        let mut r = IdentityRegistry::default();
        assert_eq!(r.allocate(&id("spiffe://td/ns/a/sa/a")).expect("room"), FIRST_WORKLOAD_ID);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut r = IdentityRegistry::new();
        r.next = FIRST_CIDR_ID - 1;
        assert_eq!(r.allocate(&id("spiffe://td/ns/a/sa/a")).expect("room"), FIRST_CIDR_ID - 1);
        let err = r.allocate(&id("spiffe://td/ns/a/sa/b")).expect_err("full");
        assert!(matches!(err, IdentityError::Exhausted(_)));
        // Known identities still resolve.
        assert!(r.allocate(&id("spiffe://td/ns/a/sa/a")).is_ok());
    }

    #[test]
    fn json_round_trip_keeps_next() {
        let mut r = IdentityRegistry::new();
        let a = id("spiffe://td/ns/a/sa/a");
        let b = id("spiffe://td/ns/a/sa/b");
        r.allocate(&a).expect("room");
        r.allocate(&b).expect("room");
        r.forget(&a);
        let mut back = IdentityRegistry::from_json(&r.to_json()).expect("round trip");
        assert_eq!(back, r);
        assert_eq!(back.allocate(&a).expect("room"), FIRST_WORKLOAD_ID + 2);
    }

    #[test]
    fn json_rejects_inconsistent_state() {
        let dup = r#"{"next": 300, "ids": [{"id": 256, "spiffe": "spiffe://td/ns/a/sa/a"}, {"id": 256, "spiffe": "spiffe://td/ns/a/sa/b"}]}"#;
        assert!(matches!(IdentityRegistry::from_json(dup), Err(IdentityError::Corrupt(_))));
        let range = r#"{"next": 300, "ids": [{"id": 12, "spiffe": "spiffe://td/ns/a/sa/a"}]}"#;
        assert!(matches!(IdentityRegistry::from_json(range), Err(IdentityError::Corrupt(_))));
        let beyond = r#"{"next": 300, "ids": [{"id": 300, "spiffe": "spiffe://td/ns/a/sa/a"}]}"#;
        assert!(matches!(IdentityRegistry::from_json(beyond), Err(IdentityError::Corrupt(_))));
        let bad_id = r#"{"next": 300, "ids": [{"id": 256, "spiffe": "spiffe://td/x"}]}"#;
        assert!(matches!(IdentityRegistry::from_json(bad_id), Err(IdentityError::Json(_))));
    }

    #[test]
    fn describe_names_reserved_ids() {
        let mut r = IdentityRegistry::new();
        let a = id("spiffe://td/ns/a/sa/a");
        let n = r.allocate(&a).expect("room");
        assert_eq!(r.describe(ID_HOST), "host");
        assert_eq!(r.describe(ID_WORLD), "world");
        assert_eq!(r.describe(ID_NONE), "none");
        assert_eq!(r.describe(ID_ANY), "any");
        assert_eq!(r.describe(n), "spiffe://td/ns/a/sa/a");
        assert_eq!(r.describe(n + 1), format!("unknown#{}", n + 1));
        assert_eq!(r.describe(FIRST_CIDR_ID), format!("cidr#{FIRST_CIDR_ID}"));
    }

    #[test]
    fn labels_make_distinct_security_identities() {
        let mut r = IdentityRegistry::new();
        let a = id("spiffe://td/ns/shop/sa/default");
        let web = Labels::from([("app".to_string(), "web".to_string())]);
        let db = Labels::from([("app".to_string(), "db".to_string())]);
        let w = r.allocate_labeled(&a, &web).expect("room");
        let d = r.allocate_labeled(&a, &db).expect("room");
        assert_ne!(w, d);
        assert_eq!(r.allocate_labeled(&a, &web).expect("room"), w);
        assert_eq!(r.labels_of(d), Some(&db));
        let back = IdentityRegistry::from_json(&r.to_json()).expect("round trip");
        assert_eq!(back, r);
    }
}
