//! Policy compilation: turns parsed policy files and the known workloads into the contents of
//! one kernel policy slot (allow map, isolation map, CIDR trie, rule table). Pure and
//! deterministic; called by the agent whenever policies or workloads change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use beemesh_common::{
    Decision, IsolationKey, IsolationValue, PolicyKey, PolicyValue, Query, CIDR_MAP_SIZE, DIR_EGRESS,
    DIR_INGRESS, FIRST_CIDR_ID, ID_ANY, ISOLATION_MAP_SIZE, MAX_RULES, POLICY_MAP_SIZE, PROTO_ANY,
    RULE_DEFAULT,
};
use ipnet::IpNet;

use super::model::{Peer, Policy, Rule};
use super::{PolicyFile, Workload};

/// Why a set of valid policies cannot be loaded into the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("too many rules: {count} (the kernel counts at most {max})")]
    TooManyRules { count: usize, max: u32 },
    #[error("too many allow entries: more than {max} (narrow port ranges or selectors)")]
    TooManyAllowEntries { max: u32 },
    #[error("too many distinct CIDRs: {count} (at most {max})")]
    TooManyCidrs { count: usize, max: u32 },
    #[error("too many isolated workload directions: more than {max}")]
    TooManyIsolated { max: u32 },
    #[error("workload id {id} given twice ({first} and {second})")]
    DuplicateWorkload { id: u32, first: String, second: String },
}

/// Global defaults for workloads no policy selects in a direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompileOptions {
    pub default_allow_egress: bool,
    pub default_allow_ingress: bool,
}

impl Default for CompileOptions {
    /// Kubernetes semantics: a workload no policy selects is not restricted.
    fn default() -> Self {
        Self { default_allow_egress: true, default_allow_ingress: true }
    }
}

/// Where a rule id comes from, for counters, flow events and `policy show`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub id: u32,
    pub file: PathBuf,
    /// `IdentityPolicy/frontend` or `NetworkPolicy/ns/name` (`default` for rule 0).
    pub policy: String,
    /// `ingress[0]`, `egress[1]`, `isolation` (denials of isolated workloads) or `default`.
    pub rule: String,
}

impl RuleInfo {
    /// How counters and flow events name the rule: `default`, or `<policy> <rule>`.
    pub fn display(&self) -> String {
        if self.id == RULE_DEFAULT {
            "default".to_owned()
        } else {
            format!("{} {}", self.policy, self.rule)
        }
    }
}

/// The contents of one kernel policy slot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub allow: BTreeMap<PolicyKey, PolicyValue>,
    pub isolation: BTreeMap<IsolationKey, IsolationValue>,
    /// One CIDR identity per distinct block, numbered from `FIRST_CIDR_ID` in sorted order.
    pub cidrs: Vec<(IpNet, u32)>,
    /// Index == rule id; `rules[0]` is `RULE_DEFAULT`.
    pub rules: Vec<RuleInfo>,
    pub default_allow_egress: bool,
    pub default_allow_ingress: bool,
}

/// A block as the kernel trie sees it: 128 bits, IPv4 as IPv4-mapped (`/24` is `/120`).
fn mapped(net: &IpNet) -> (u128, u8) {
    match net {
        IpNet::V4(v4) => (u128::from(v4.network().to_ipv6_mapped()), v4.prefix_len() + 96),
        IpNet::V6(v6) => (u128::from(v6.network()), v6.prefix_len()),
    }
}

fn mapped_addr(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn prefix_matches(prefix: (u128, u8), addr: u128) -> bool {
    let (net, len) = prefix;
    len == 0 || (net ^ addr) >> (128 - u32::from(len)) == 0
}

/// `inner` lies inside `outer`, in the kernel's 128-bit view.
fn inside(inner: &IpNet, outer: &IpNet) -> bool {
    let (i, o) = (mapped(inner), mapped(outer));
    o.1 <= i.1 && prefix_matches(o, i.0)
}

impl CompiledPolicy {
    /// The CIDR identity the kernel trie yields for `addr` (longest prefix), if any.
    pub fn cidr_identity(&self, addr: IpAddr) -> Option<u32> {
        let addr = mapped_addr(addr);
        self.cidrs
            .iter()
            .map(|(net, id)| (mapped(net), *id))
            .filter(|(prefix, _)| prefix_matches(*prefix, addr))
            .max_by_key(|(prefix, _)| prefix.1)
            .map(|(_, id)| id)
    }

    /// The verdict the kernel would give with this slot loaded.
    pub fn decide(&self, q: &Query) -> Decision {
        let default_allow =
            if q.direction == DIR_EGRESS { self.default_allow_egress } else { self.default_allow_ingress };
        beemesh_common::decide(
            |k| self.allow.get(k).map(|v| v.rule),
            |k| self.isolation.get(k).map(|v| v.rule),
            default_allow,
            q,
        )
    }
}

/// Compiles `files` for `workloads`. Output depends only on the inputs (files sorted by
/// path, policies by kind/namespace/name), never on their order.
pub fn compile(
    files: &[PolicyFile],
    workloads: &[Workload],
    opts: &CompileOptions,
) -> Result<CompiledPolicy, CompileError> {
    let mut by_id: BTreeMap<u32, &Workload> = BTreeMap::new();
    for w in workloads {
        if let Some(first) = by_id.insert(w.id, w) {
            return Err(CompileError::DuplicateWorkload {
                id: w.id,
                first: first.identity.to_string(),
                second: w.identity.to_string(),
            });
        }
    }
    let mut policies: Vec<(&Path, usize, &Policy)> = files
        .iter()
        .flat_map(|f| f.policies.iter().enumerate().map(|(i, p)| (f.path.as_path(), i, p)))
        .collect();
    policies.sort_by(|a, b| (a.2.sort_key(), a.0, a.1).cmp(&(b.2.sort_key(), b.0, b.1)));

    let cidrs = number_cidrs(&policies)?;
    let numbered = cidrs.clone();
    let index = CidrIndex::new(&numbered);
    let mut out = CompiledPolicy {
        allow: BTreeMap::new(),
        isolation: BTreeMap::new(),
        cidrs,
        rules: vec![RuleInfo {
            id: RULE_DEFAULT,
            file: PathBuf::new(),
            policy: "default".to_owned(),
            rule: "default".to_owned(),
        }],
        default_allow_egress: opts.default_allow_egress,
        default_allow_ingress: opts.default_allow_ingress,
    };
    for (path, _, policy) in policies {
        let subjects: Vec<u32> = by_id
            .values()
            .filter(|w| policy.selector.matches(&w.identity, &w.labels))
            .map(|w| w.id)
            .collect();
        let add_rule = |out: &mut CompiledPolicy, rule: String| -> Result<u32, CompileError> {
            let id = u32::try_from(out.rules.len()).unwrap_or(u32::MAX);
            if id >= MAX_RULES {
                return Err(CompileError::TooManyRules { count: out.rules.len() + 1, max: MAX_RULES });
            }
            out.rules.push(RuleInfo { id, file: path.to_path_buf(), policy: policy.display_name(), rule });
            Ok(id)
        };
        let isolated: Vec<u8> = [(DIR_INGRESS, &policy.ingress), (DIR_EGRESS, &policy.egress)]
            .into_iter()
            .filter(|(_, rules)| rules.is_some())
            .map(|(dir, _)| dir)
            .collect();
        if !isolated.is_empty() {
            let rule = add_rule(&mut out, "isolation".to_owned())?;
            for &subject in &subjects {
                for &direction in &isolated {
                    let key = IsolationKey { subject, direction, _pad: [0; 3] };
                    out.isolation.entry(key).or_insert(IsolationValue { rule });
                    if out.isolation.len() > ISOLATION_MAP_SIZE as usize {
                        return Err(CompileError::TooManyIsolated { max: ISOLATION_MAP_SIZE });
                    }
                }
            }
        }
        for (direction, name, rules) in
            [(DIR_INGRESS, "ingress", &policy.ingress), (DIR_EGRESS, "egress", &policy.egress)]
        {
            for (i, r) in rules.iter().flatten().enumerate() {
                let rule = add_rule(&mut out, format!("{name}[{i}]"))?;
                let peers = peer_ids(r, &by_id, &index);
                let ports = port_keys(r);
                let mut keys = Vec::new();
                for &subject in &subjects {
                    for &peer in &peers {
                        for &(proto, port) in &ports {
                            keys.push(PolicyKey { subject, peer, port, proto, direction });
                        }
                    }
                }
                keys.extend(named_keys(r, direction, &subjects, &peers, &by_id));
                for key in keys {
                    // The first (lowest) rule id wins, so counters are stable.
                    out.allow.entry(key).or_insert(PolicyValue { rule });
                    if out.allow.len() > POLICY_MAP_SIZE as usize {
                        return Err(CompileError::TooManyAllowEntries { max: POLICY_MAP_SIZE });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// Every distinct block (cidr and except) named anywhere, numbered in sorted order.
fn number_cidrs(policies: &[(&Path, usize, &Policy)]) -> Result<Vec<(IpNet, u32)>, CompileError> {
    let mut blocks = BTreeSet::new();
    for (_, _, policy) in policies {
        for rule in policy.ingress.iter().chain(&policy.egress).flatten() {
            for peer in &rule.peers {
                if let Peer::Cidr { net, except } = peer {
                    blocks.insert(*net);
                    blocks.extend(except.iter().copied());
                }
            }
        }
    }
    if blocks.len() > CIDR_MAP_SIZE as usize {
        return Err(CompileError::TooManyCidrs { count: blocks.len(), max: CIDR_MAP_SIZE });
    }
    Ok(blocks.into_iter().zip(FIRST_CIDR_ID..).collect())
}

/// The numeric peers a rule allows. A cidr peer selects every CIDR identity inside its block
/// but not inside one of its excepts: the kernel's longest-prefix match gives each address
/// the most specific block, so this is exact even when policies' blocks overlap.
fn peer_ids(rule: &Rule, workloads: &BTreeMap<u32, &Workload>, cidrs: &CidrIndex) -> BTreeSet<u32> {
    if rule.peers.is_empty() {
        return BTreeSet::from([ID_ANY]);
    }
    let mut ids = BTreeSet::new();
    for peer in &rule.peers {
        match peer {
            Peer::Any => {
                ids.insert(ID_ANY);
            }
            Peer::Entity(id) => {
                ids.insert(*id);
            }
            Peer::Workloads(sel) => {
                ids.extend(workloads.values().filter(|w| sel.matches(&w.identity, &w.labels)).map(|w| w.id))
            }
            Peer::Cidr { net, except } => ids.extend(
                cidrs
                    .inside(net)
                    .filter(|(block, _)| !except.iter().any(|e| inside(block, e)))
                    .map(|(_, id)| id),
            ),
        }
    }
    ids
}

/// CIDR identities sorted by their 128-bit network address, so the blocks inside a given
/// block (a contiguous address range) are found by binary search instead of a full scan:
/// compiling 10,000 CIDR rules stays linear-ish rather than quadratic.
struct CidrIndex<'a> {
    sorted: Vec<(u128, u8, &'a IpNet, u32)>,
}

impl<'a> CidrIndex<'a> {
    fn new(cidrs: &'a [(IpNet, u32)]) -> Self {
        let mut sorted: Vec<_> = cidrs
            .iter()
            .map(|(net, id)| {
                let (addr, len) = mapped(net);
                (addr, len, net, *id)
            })
            .collect();
        sorted.sort_by_key(|&(addr, len, _, _)| (addr, len));
        Self { sorted }
    }

    /// Every indexed block inside `outer` (itself included).
    fn inside(&self, outer: &IpNet) -> impl Iterator<Item = (&'a IpNet, u32)> + '_ {
        let (start, len) = mapped(outer);
        let end = start | u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        let first = self.sorted.partition_point(|&(addr, _, _, _)| addr < start);
        self.sorted[first..]
            .iter()
            .take_while(move |&&(addr, _, _, _)| addr <= end)
            .filter(move |&&(_, l, _, _)| l >= len)
            .map(|&(_, _, net, id)| (net, id))
    }
}

/// The allow keys of a rule's named ports: an ingress rule's resolved on each subject (the
/// port its own containers give that name), an egress rule's on each peer workload (every
/// workload when the rule names no peer); a peer that is no workload has no named ports.
fn named_keys(
    rule: &Rule,
    direction: u8,
    subjects: &[u32],
    peers: &BTreeSet<u32>,
    workloads: &BTreeMap<u32, &Workload>,
) -> Vec<PolicyKey> {
    let mut keys = Vec::new();
    for named in &rule.named {
        for &subject in subjects {
            if direction == DIR_INGRESS {
                let Some(w) = workloads.get(&subject) else { continue };
                for (proto, port) in named.resolve(&w.ports) {
                    keys.extend(peers.iter().map(|&peer| PolicyKey {
                        subject,
                        peer,
                        port,
                        proto,
                        direction,
                    }));
                }
            } else {
                let targets: Vec<&Workload> = if peers.contains(&ID_ANY) {
                    workloads.values().copied().collect()
                } else {
                    peers.iter().filter_map(|p| workloads.get(p).copied()).collect()
                };
                for w in targets {
                    for (proto, port) in named.resolve(&w.ports) {
                        keys.push(PolicyKey { subject, peer: w.id, port, proto, direction });
                    }
                }
            }
        }
    }
    keys
}

/// `(proto, port)` pairs of a rule, ranges expanded; port 0 is any port. A rule with only
/// named ports has none here (`named_keys`).
fn port_keys(rule: &Rule) -> BTreeSet<(u8, u16)> {
    if rule.ports.is_empty() && rule.named.is_empty() {
        return BTreeSet::from([(PROTO_ANY, 0)]);
    }
    let mut keys = BTreeSet::new();
    for range in &rule.ports {
        if range.first == 0 {
            keys.insert((range.proto, 0));
        } else {
            keys.extend((range.first..=range.last).map(|p| (range.proto, p)));
        }
    }
    keys
}
