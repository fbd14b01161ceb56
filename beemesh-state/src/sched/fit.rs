//! The bid pipeline: does a pod fit this host, and how well (`docs/scheduling.md`, *Fit and
//! score*). Feasibility checks in order, each failure a [`Reason`] in Kubernetes' words, then a
//! score in 0..=100. Pure functions over [`Needs`] (what the pod asks, taken from its spec by
//! the agent) and [`HostFacts`] (what the host has and runs).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Resources requested or offered. `pods` counts pods (a pod requests 1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub pods: u64,
}

impl Resources {
    pub fn plus(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_add(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_add(o.memory_bytes),
            pods: self.pods.saturating_add(o.pods),
        }
    }

    /// `self - o`, each field at least 0.
    pub fn less(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(o.cpu_millis),
            memory_bytes: self.memory_bytes.saturating_sub(o.memory_bytes),
            pods: self.pods.saturating_sub(o.pods),
        }
    }

    /// `self` fits in `o`, or the first resource that does not (Kubernetes' order).
    pub fn fits_in(self, o: Resources) -> Result<(), Reason> {
        if self.cpu_millis > o.cpu_millis {
            Err(Reason::InsufficientCpu)
        } else if self.memory_bytes > o.memory_bytes {
            Err(Reason::InsufficientMemory)
        } else if self.pods > o.pods {
            Err(Reason::TooManyPods)
        } else {
            Ok(())
        }
    }
}

/// A node selector requirement's operator (Kubernetes `NodeSelectorOperator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

/// One requirement on a label: `key op values`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

impl Requirement {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.key);
        let int = |s: &str| s.parse::<i64>().ok();
        match self.op {
            Op::In => v.is_some_and(|v| self.values.contains(v)),
            Op::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Op::Exists => v.is_some(),
            Op::DoesNotExist => v.is_none(),
            Op::Gt | Op::Lt => {
                let (Some(have), Some(bound)) =
                    (v.and_then(|v| int(v)), self.values.first().and_then(|b| int(b)))
                else {
                    return false;
                };
                if self.op == Op::Gt {
                    have > bound
                } else {
                    have < bound
                }
            }
        }
    }
}

/// A conjunction of requirements (a node selector term, or a label selector's expressions
/// with its `matchLabels` as `In` requirements). An empty one matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }
}

/// A taint's effect. `PreferNoSchedule` only lowers the score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: Effect,
}

/// A toleration: `key` empty with `exists` tolerates every key; `effect` `None` every effect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    pub key: String,
    /// `operator: Exists` (any value) rather than `Equal`.
    pub exists: bool,
    pub value: String,
    pub effect: Option<Effect>,
}

impl Toleration {
    fn tolerates(&self, t: &Taint) -> bool {
        let key = (self.key.is_empty() && self.exists) || self.key == t.key;
        let value = self.exists || self.value == t.value;
        let effect = self.effect.is_none_or(|e| e == t.effect);
        key && value && effect
    }
}

/// What a pod asks of the host it runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Needs {
    /// `pods` is 1.
    pub requests: Resources,
    /// `nodeSelector` as `In` requirements, ANDed with the required node affinity.
    pub node_selector: Selector,
    /// Required node affinity: any of these terms (none: no constraint).
    pub node_affinity: Vec<Selector>,
    /// Preferred node affinity: (weight 1..=100, term).
    pub preferred_nodes: Vec<(u32, Selector)>,
    pub tolerations: Vec<Toleration>,
    /// Required pod affinity by hostname: the host must run a pod matching each.
    pub pod_affinity: Vec<Selector>,
    /// Required pod anti-affinity by hostname: the host must run no pod matching any.
    pub pod_anti_affinity: Vec<Selector>,
    /// Preferred pod affinity by hostname: (weight, selector).
    pub preferred_affinity: Vec<(u32, Selector)>,
    /// Preferred pod anti-affinity by hostname: (weight, selector).
    pub preferred_anti: Vec<(u32, Selector)>,
    /// The pod's own labels (what other pods' (anti-)affinity sees).
    pub labels: BTreeMap<String, String>,
    /// Extended resources (`example.com/dongle`) by name: counts.
    #[serde(default)]
    pub extended: BTreeMap<String, u64>,
    /// Pod (anti-)affinity over other node labels (zones): decided by the award rule.
    #[serde(default)]
    pub domain_terms: Vec<DomainTerm>,
}

/// A pod (anti-)affinity term over a node label other than the hostname (a zone): the award
/// rule counts the pods `selector` matches on every host of the candidate's domain (the hosts
/// with the same value of `key`), as no single host can.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainTerm {
    pub key: String,
    pub selector: Selector,
    /// Anti-affinity (no matching pod in the domain) rather than affinity (one at least).
    pub anti: bool,
    /// Preferred, with this weight (1..=100); `None`: required.
    pub weight: Option<u32>,
}

/// A pod a host runs or has promised to run, as the bid pipeline sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placed {
    pub requests: Resources,
    pub labels: BTreeMap<String, String>,
    /// Its required anti-affinity (a newcomer it matches does not fit beside it).
    pub anti: Vec<Selector>,
    /// The extended resources it holds.
    pub extended: BTreeMap<String, u64>,
}

/// What a host has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub allocatable: Resources,
    /// Extended resources the host offers (`--node-resource`), by name.
    pub extended: BTreeMap<String, u64>,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

/// Why a host declines (Kubernetes' words, counted in the Pending message).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    InsufficientCpu,
    InsufficientMemory,
    TooManyPods,
    /// Not enough of an extended resource.
    Insufficient(String),
    NodeAffinity,
    Taint(String),
    PodAntiAffinity,
    PodAffinity,
    /// Placing it would exceed the workload's maxSkew (award rule, not the bidder).
    TopologySpread,
    /// The candidate did not answer in time.
    NoAnswer,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::InsufficientCpu => f.write_str("Insufficient cpu"),
            Reason::InsufficientMemory => f.write_str("Insufficient memory"),
            Reason::TooManyPods => f.write_str("Too many pods"),
            Reason::Insufficient(name) => write!(f, "Insufficient {name}"),
            Reason::NodeAffinity => f.write_str("node(s) didn't match Pod's node affinity/selector"),
            Reason::Taint(t) => write!(f, "node(s) had untolerated taint {{{t}}}"),
            Reason::PodAntiAffinity => f.write_str("node(s) didn't match pod anti-affinity rules"),
            Reason::PodAffinity => f.write_str("node(s) didn't match pod affinity rules"),
            Reason::TopologySpread => f.write_str("node(s) didn't match pod topology spread constraints"),
            Reason::NoAnswer => f.write_str("node(s) did not answer"),
        }
    }
}

/// The checks a host's Node record alone can decide (labels, taints, allocatable): what the
/// tenderer uses to choose candidates, and the first checks of a bid.
pub fn static_fit(needs: &Needs, host: &HostFacts) -> Result<(), Reason> {
    needs.requests.fits_in(host.allocatable)?;
    extended_fit(needs, host, &[])?;
    let affinity =
        needs.node_affinity.is_empty() || needs.node_affinity.iter().any(|t| t.matches(&host.labels));
    if !needs.node_selector.matches(&host.labels) || !affinity {
        return Err(Reason::NodeAffinity);
    }
    for t in host.taints.iter().filter(|t| t.effect != Effect::PreferNoSchedule) {
        if !needs.tolerations.iter().any(|tol| tol.tolerates(t)) {
            return Err(Reason::Taint(format!("{}: {}", t.key, t.value)));
        }
    }
    Ok(())
}

/// Each extended resource the pod asks for, against what the host offers less what `placed`
/// holds.
fn extended_fit(needs: &Needs, host: &HostFacts, placed: &[&Placed]) -> Result<(), Reason> {
    for (name, want) in &needs.extended {
        let used: u64 = placed.iter().filter_map(|p| p.extended.get(name)).sum();
        let offered = host.extended.get(name).copied().unwrap_or(0);
        if used.saturating_add(*want) > offered {
            return Err(Reason::Insufficient(name.clone()));
        }
    }
    Ok(())
}

/// The share (0..=100) of the weights of `prefs` whose selector `matches`; `None` without
/// preferences.
fn matched_share(prefs: &[(u32, Selector)], matches: impl Fn(&Selector) -> bool) -> Option<u64> {
    let weight = |(w, _): &(u32, Selector)| u64::from(*w);
    let total: u64 = prefs.iter().map(weight).sum();
    let hit: u64 = prefs.iter().filter(|(_, s)| matches(s)).map(weight).sum();
    (hit * 100).checked_div(total)
}

/// The whole pipeline against what the host runs and has promised (`placed`): the score in
/// 0..=100, or why not.
pub fn fit(needs: &Needs, host: &HostFacts, placed: &[&Placed]) -> Result<u32, Reason> {
    static_fit(needs, host)?;
    let used = placed.iter().fold(Resources::default(), |acc, p| acc.plus(p.requests));
    let after = used.plus(needs.requests);
    let a = host.allocatable;
    after.fits_in(a)?;
    extended_fit(needs, host, placed)?;
    if needs.pod_anti_affinity.iter().any(|s| placed.iter().any(|p| s.matches(&p.labels))) {
        return Err(Reason::PodAntiAffinity);
    }
    // Symmetric, as in Kubernetes: a pod here whose anti-affinity matches the newcomer.
    if placed.iter().any(|p| p.anti.iter().any(|s| s.matches(&needs.labels))) {
        return Err(Reason::PodAntiAffinity);
    }
    if !needs.pod_affinity.iter().all(|s| placed.iter().any(|p| s.matches(&p.labels))) {
        return Err(Reason::PodAffinity);
    }
    // Least allocated (kube-scheduler's default): the mean free share of cpu and memory after
    // placing, 0..=100.
    let share = |used: u64, total: u64| ((total - used.min(total)) * 100).checked_div(total).unwrap_or(0);
    let mut score = (share(after.cpu_millis, a.cpu_millis) + share(after.memory_bytes, a.memory_bytes)) / 2;
    let runs_one = |s: &Selector| placed.iter().any(|p| s.matches(&p.labels));
    let soft_taint = host.taints.iter().any(|t| {
        t.effect == Effect::PreferNoSchedule && !needs.tolerations.iter().any(|tol| tol.tolerates(t))
    });
    // Preferences weigh as much as the resources: the mean of the parts.
    let parts = [
        matched_share(&needs.preferred_nodes, |t| t.matches(&host.labels)),
        matched_share(&needs.preferred_anti, runs_one).map(|a| 100 - a),
        matched_share(&needs.preferred_affinity, runs_one),
    ];
    for p in parts.iter().flatten() {
        score += p;
    }
    score /= 1 + parts.iter().flatten().count() as u64;
    if soft_taint {
        score /= 2;
    }
    Ok(score as u32)
}
