//! The normalised policy model both file kinds (IdentityPolicy, NetworkPolicy) are parsed
//! into, and the matching of workloads against selectors. Built by the parsers, read by the
//! compiler.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

use crate::identity::{SpiffeId, SPIFFE_SCHEME};

/// Which kind of document a [`Policy`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    IdentityPolicy,
    NetworkPolicy,
}

/// One parsed policy document, whatever its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub kind: PolicyKind,
    /// Kubernetes namespace (NetworkPolicy only).
    pub namespace: Option<String>,
    pub name: String,
    /// Whom the policy applies to.
    pub selector: WorkloadSelector,
    /// `Some` (even empty) makes the selected workloads default-deny inbound.
    pub ingress: Option<Vec<Rule>>,
    /// `Some` (even empty) makes the selected workloads default-deny outbound.
    pub egress: Option<Vec<Rule>>,
}

impl Policy {
    /// `IdentityPolicy/name` or `NetworkPolicy/namespace/name`, as shown in rule listings.
    pub fn display_name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{:?}/{ns}/{}", self.kind, self.name),
            None => format!("{:?}/{}", self.kind, self.name),
        }
    }

    /// The deterministic order policies are compiled in.
    pub fn sort_key(&self) -> (PolicyKind, &str, &str) {
        (self.kind, self.namespace.as_deref().unwrap_or(""), &self.name)
    }
}

/// One ingress or egress rule: traffic with any of `peers` on any of `ports` or `named` is
/// allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Empty means every peer.
    pub peers: Vec<Peer>,
    /// Empty (with `named` empty too) means every port and protocol.
    pub ports: Vec<PortRange>,
    /// Ports by the name a container gives them: an ingress rule's on the selected workload,
    /// an egress rule's on the peer, as Kubernetes resolves a NetworkPolicy's named port.
    pub named: Vec<NamedPort>,
}

/// A port named in a rule (`port: http`), with its protocol (`PROTO_ANY` matches either).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPort {
    pub proto: u8,
    pub name: String,
}

/// A workload's named port (a container's `ports[].name`), as rules resolve them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct WorkloadPort {
    pub name: String,
    pub proto: u8,
    pub port: u16,
}

impl NamedPort {
    /// The port numbers (and protocols) it names among `ports`.
    pub fn resolve<'a>(&'a self, ports: &'a [WorkloadPort]) -> impl Iterator<Item = (u8, u16)> + 'a {
        use beemesh_common::PROTO_ANY;
        ports
            .iter()
            .filter(move |p| p.name == self.name && (self.proto == PROTO_ANY || p.proto == self.proto))
            .map(|p| (p.proto, p.port))
    }
}

/// The other side of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Any peer at all (`entity: all`).
    Any,
    /// A reserved entity (`host` or `world`), as its numeric id.
    Entity(u32),
    /// Workloads known to the agent.
    Workloads(WorkloadSelector),
    /// An address block minus some sub-blocks.
    Cidr { net: IpNet, except: Vec<IpNet> },
}

/// A protocol and an inclusive port range; `first == 0` means every port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// `PROTO_TCP`, `PROTO_UDP` or `PROTO_ANY`.
    pub proto: u8,
    pub first: u16,
    pub last: u16,
}

/// Selects workloads; every constraint given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadSelector {
    /// Identity globs, any of which may match; empty means every identity.
    pub identities: Vec<IdentityGlob>,
    /// Which namespaces the identity may be in.
    pub namespaces: NamespaceMatch,
    /// Workload labels.
    pub labels: LabelSelector,
}

impl WorkloadSelector {
    pub fn matches(&self, identity: &SpiffeId, labels: &BTreeMap<String, String>) -> bool {
        (self.identities.is_empty() || self.identities.iter().any(|g| g.matches(identity)))
            && self.namespaces.matches(identity.namespace())
            && self.labels.matches(labels)
    }
}

/// Namespace constraint of a [`WorkloadSelector`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NamespaceMatch {
    #[default]
    Any,
    /// Exactly this namespace (NetworkPolicy `podSelector` without `namespaceSelector`).
    Named(String),
    /// Namespaces whose labels match; a namespace's only known label is
    /// `kubernetes.io/metadata.name: <namespace>`.
    Labels(LabelSelector),
}

/// The label Kubernetes puts on every namespace, the only one beemesh knows.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl NamespaceMatch {
    pub fn matches(&self, namespace: &str) -> bool {
        match self {
            NamespaceMatch::Any => true,
            NamespaceMatch::Named(ns) => ns == namespace,
            NamespaceMatch::Labels(sel) => {
                let labels = BTreeMap::from([(NAMESPACE_NAME_LABEL.to_owned(), namespace.to_owned())]);
                sel.matches(&labels)
            }
        }
    }
}

/// Kubernetes label selector semantics; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<LabelRequirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabelRequirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelSelector {
    /// `matchLabels`-style selector: every key must have exactly that value.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        Self {
            requirements: map.iter().map(|(k, v)| LabelRequirement::In(k.clone(), vec![v.clone()])).collect(),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|req| match req {
            LabelRequirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            LabelRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

/// A SPIFFE id pattern: a trailing `*` matches any suffix (slashes included), a `*`
/// anywhere else matches within one path segment; no `*` is an exact match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityGlob(String);

impl IdentityGlob {
    /// Validates `pattern`; the error is the reason, without the field path.
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let Some(rest) = pattern.strip_prefix(SPIFFE_SCHEME) else {
            return Err(format!("invalid identity glob {pattern:?}: must start with spiffe://"));
        };
        if rest.is_empty() {
            return Err(format!("invalid identity glob {pattern:?}: empty after spiffe://"));
        }
        if let Some(c) =
            rest.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/*".contains(*c)))
        {
            return Err(format!("invalid identity glob {pattern:?}: character {c:?} not allowed"));
        }
        if rest.contains("//") || rest.starts_with('/') {
            return Err(format!("invalid identity glob {pattern:?}: empty path segment"));
        }
        if rest.contains("**") {
            return Err(format!("invalid identity glob {pattern:?}: \"**\" is not allowed, a trailing \"*\" already matches any suffix"));
        }
        if !rest.contains('*') {
            pattern.parse::<SpiffeId>().map_err(|e| format!("invalid identity glob: {e}"))?;
        }
        Ok(Self(pattern.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, identity: &SpiffeId) -> bool {
        glob_match(self.0.as_bytes(), identity.to_string().as_bytes())
    }
}

impl fmt::Display for IdentityGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', [])) => true,
        Some((b'*', rest)) => {
            // Try every split of the current segment (a `*` never crosses a `/`).
            let segment = text.iter().position(|&c| c == b'/').unwrap_or(text.len());
            (0..=segment).any(|n| glob_match(rest, &text[n..]))
        }
        Some((c, rest)) => text.first() == Some(c) && glob_match(rest, &text[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        s.parse().expect("valid spiffe id")
    }

    fn glob(s: &str) -> IdentityGlob {
        IdentityGlob::parse(s).expect("valid glob")
    }

    #[test]
    fn glob_semantics() {
        let fe = id("spiffe://beemesh.local/ns/shop/sa/frontend");
        assert!(glob("spiffe://beemesh.local/ns/shop/sa/frontend").matches(&fe));
        assert!(!glob("spiffe://beemesh.local/ns/shop/sa/front").matches(&fe));
        assert!(glob("spiffe://beemesh.local/ns/shop/*").matches(&fe));
        assert!(glob("spiffe://*").matches(&fe));
        assert!(glob("spiffe://beemesh.local/ns/*/sa/frontend").matches(&fe));
        assert!(glob("spiffe://beemesh.local/ns/*/sa/front*").matches(&fe));
        assert!(glob("spiffe://beemesh.local/ns/sh*p/sa/*end").matches(&fe));
        assert!(!glob("spiffe://beemesh.local/ns/*/frontend").matches(&fe));
        assert!(!glob("spiffe://beemesh.local/ns/*/sa/*end/x").matches(&fe));
        assert!(!glob("spiffe://other/ns/shop/*").matches(&fe));
    }

    #[test]
    fn bad_globs() {
        let err = |s: &str| IdentityGlob::parse(s).expect_err(s);
        assert!(err("beemesh.local/ns/*").contains("must start with spiffe://"));
        assert!(err("spiffe://").contains("empty"));
        assert!(err("spiffe://td/ns/Shop/*").contains("'S' not allowed"));
        assert!(err("spiffe://td//*").contains("empty path segment"));
        assert!(err("spiffe://td/**").contains("**"));
        assert!(err("spiffe://td/ns/a").contains("invalid identity glob"));
    }

    #[test]
    fn label_selectors() {
        let labels =
            BTreeMap::from([("app".to_owned(), "web".to_owned()), ("tier".to_owned(), "front".to_owned())]);
        let sel = |reqs: Vec<LabelRequirement>| LabelSelector { requirements: reqs };
        let s = |v: &str| v.to_owned();
        assert!(sel(vec![]).matches(&labels));
        assert!(sel(vec![LabelRequirement::In(s("app"), vec![s("web"), s("api")])]).matches(&labels));
        assert!(!sel(vec![LabelRequirement::In(s("app"), vec![s("api")])]).matches(&labels));
        assert!(!sel(vec![LabelRequirement::In(s("x"), vec![s("web")])]).matches(&labels));
        assert!(sel(vec![LabelRequirement::NotIn(s("app"), vec![s("api")])]).matches(&labels));
        assert!(sel(vec![LabelRequirement::NotIn(s("x"), vec![s("api")])]).matches(&labels));
        assert!(!sel(vec![LabelRequirement::NotIn(s("app"), vec![s("web")])]).matches(&labels));
        assert!(sel(vec![LabelRequirement::Exists(s("tier"))]).matches(&labels));
        assert!(!sel(vec![LabelRequirement::DoesNotExist(s("tier"))]).matches(&labels));
        let map = BTreeMap::from([(s("app"), s("web"))]);
        assert!(LabelSelector::from_map(&map).matches(&labels));
    }

    #[test]
    fn namespace_match() {
        assert!(NamespaceMatch::Any.matches("x"));
        assert!(NamespaceMatch::Named("shop".into()).matches("shop"));
        assert!(!NamespaceMatch::Named("shop".into()).matches("db"));
        let by_label = NamespaceMatch::Labels(LabelSelector::from_map(&BTreeMap::from([(
            NAMESPACE_NAME_LABEL.to_owned(),
            "db".to_owned(),
        )])));
        assert!(by_label.matches("db"));
        assert!(!by_label.matches("shop"));
    }
}
