//! What the scheduler reads from Kubernetes objects: a Pod's [`SlotReq`] (requests,
//! nodeSelector, node and pod (anti-)affinity, tolerations, hostname spreading) and a Node
//! record's [`HostFacts`] (allocatable, labels, taints). Pure functions, unit tested.
//!
//! Pod (anti-)affinity and spreading count pods per host (`topologyKey: kubernetes.io/hostname`;
//! the manifest check refuses other keys). A term matches pods of the pod's own namespace, or
//! of those it lists: the namespace travels as the label [`NAMESPACE_LABEL`] of every placed
//! pod, and each term requires it.

use std::collections::BTreeMap;

use beemesh_state::sched::fit::{DomainTerm, Effect, Op, Requirement, Selector, Taint, Toleration};
use beemesh_state::sched::{HostFacts, Needs, Placed, Resources, SlotReq, Spread};
use k8s_openapi::api::core::v1::{NodeSelectorTerm, Pod, PodAffinityTerm, WeightedPodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

use crate::app::cluster::pods as cpods;
use crate::manifest::{parse_cpu_millis, parse_memory_bytes};

/// The label under which a placed pod's namespace is matched (never a real label: `/` in a
/// key's name part is not valid Kubernetes).
pub const NAMESPACE_LABEL: &str = "beemesh.io/namespace/";

/// The taint of a cordoned host (`spec.unschedulable`), as Kubernetes names it; DaemonSets'
/// pods tolerate it.
pub const UNSCHEDULABLE_TAINT: &str = "node.kubernetes.io/unschedulable";

/// The one topology key pod (anti-)affinity and spreading honour.
pub const HOSTNAME: &str = "kubernetes.io/hostname";

fn op(s: &str) -> Option<Op> {
    Some(match s {
        "In" => Op::In,
        "NotIn" => Op::NotIn,
        "Exists" => Op::Exists,
        "DoesNotExist" => Op::DoesNotExist,
        "Gt" => Op::Gt,
        "Lt" => Op::Lt,
        _ => return None,
    })
}

/// A requirement with an operator no Kubernetes version has matches nothing.
fn requirement(key: &str, operator: &str, values: Option<&Vec<String>>) -> Requirement {
    match op(operator) {
        Some(op) => Requirement { key: key.to_owned(), op, values: values.cloned().unwrap_or_default() },
        None => Requirement { key: key.to_owned(), op: Op::In, values: Vec::new() },
    }
}

fn node_term(t: &NodeSelectorTerm) -> Selector {
    let mut reqs: Vec<Requirement> = t
        .match_expressions
        .iter()
        .flatten()
        .map(|e| requirement(&e.key, &e.operator, e.values.as_ref()))
        .collect();
    // `matchFields` has one field, metadata.name: the hostname label carries it.
    reqs.extend(t.match_fields.iter().flatten().map(|e| {
        let key = if e.key == "metadata.name" { HOSTNAME } else { e.key.as_str() };
        requirement(key, &e.operator, e.values.as_ref())
    }));
    Selector(reqs)
}

/// A label selector as requirements (`matchLabels` as `In`); `None` matches nothing, as in
/// Kubernetes' pod affinity terms.
fn label_selector(s: Option<&LabelSelector>) -> Selector {
    let Some(s) = s else {
        return Selector(vec![Requirement { key: NAMESPACE_LABEL.into(), op: Op::In, values: Vec::new() }]);
    };
    let mut reqs: Vec<Requirement> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| Requirement { key: k.clone(), op: Op::In, values: vec![v.clone()] })
        .collect();
    reqs.extend(
        s.match_expressions.iter().flatten().map(|e| requirement(&e.key, &e.operator, e.values.as_ref())),
    );
    Selector(reqs)
}

fn pod_term(t: &PodAffinityTerm, namespace: &str) -> Selector {
    let mut s = label_selector(t.label_selector.as_ref());
    let namespaces = match &t.namespaces {
        Some(n) if !n.is_empty() => n.clone(),
        _ => vec![namespace.to_owned()],
    };
    if t.namespace_selector.is_none() {
        s.0.push(Requirement { key: NAMESPACE_LABEL.into(), op: Op::In, values: namespaces });
    }
    s
}

fn effect(s: &str) -> Option<Effect> {
    Some(match s {
        "NoSchedule" => Effect::NoSchedule,
        "PreferNoSchedule" => Effect::PreferNoSchedule,
        "NoExecute" => Effect::NoExecute,
        _ => return None,
    })
}

/// `KEY[=VALUE]:EFFECT` (kubectl taint's form), as `--node-taint` takes it.
pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let (kv, eff) =
        s.rsplit_once(':').ok_or_else(|| format!("node taint {s:?}: expected KEY[=VALUE]:EFFECT"))?;
    let effect = effect(eff).ok_or_else(|| {
        format!("node taint {s:?}: effect {eff:?} is not NoSchedule, PreferNoSchedule or NoExecute")
    })?;
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if key.is_empty() {
        return Err(format!("node taint {s:?}: empty key"));
    }
    Ok(Taint { key: key.to_owned(), value: value.to_owned(), effect })
}

/// A taint as a Node's `spec.taints[]` entry.
pub fn taint_json(t: &Taint) -> Value {
    let effect = match t.effect {
        Effect::NoSchedule => "NoSchedule",
        Effect::PreferNoSchedule => "PreferNoSchedule",
        Effect::NoExecute => "NoExecute",
    };
    let mut v = serde_json::json!({"key": t.key, "effect": effect});
    if !t.value.is_empty() {
        v["value"] = t.value.clone().into();
    }
    v
}

/// The labels pod (anti-)affinity sees on a pod: its own and its namespace.
pub fn pod_labels(pod: &Pod) -> BTreeMap<String, String> {
    let mut labels = pod.metadata.labels.clone().unwrap_or_default();
    labels.insert(NAMESPACE_LABEL.into(), pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()));
    labels
}

/// The extended resources `pod` asks for: per name, the larger of its app containers' sum
/// and its largest init container (a request, else the limit it equals).
pub fn extended_requests(pod: &Pod) -> BTreeMap<String, u64> {
    let Some(spec) = &pod.spec else { return BTreeMap::new() };
    let of = |c: &k8s_openapi::api::core::v1::Container| -> BTreeMap<String, u64> {
        let r = c.resources.as_ref();
        let mut out = BTreeMap::new();
        for list in [r.and_then(|r| r.limits.as_ref()), r.and_then(|r| r.requests.as_ref())] {
            for (name, q) in list.into_iter().flatten() {
                if let (true, Ok(n)) =
                    (crate::manifest::is_extended_resource(name), crate::manifest::extended_count(&q.0))
                {
                    out.insert(name.clone(), n);
                }
            }
        }
        out
    };
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for c in &spec.containers {
        for (k, n) in of(c) {
            *total.entry(k).or_default() += n;
        }
    }
    for c in spec.init_containers.iter().flatten() {
        for (k, n) in of(c) {
            let t = total.entry(k).or_default();
            *t = (*t).max(n);
        }
    }
    total
}

/// What `pod` asks of a host.
pub fn needs(pod: &Pod) -> Needs {
    let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let (cpu, memory) = cpods::pod_requests(pod);
    let mut n = Needs {
        requests: Resources { cpu_millis: cpu, memory_bytes: memory, pods: 1 },
        labels: pod_labels(pod),
        extended: extended_requests(pod),
        ..Needs::default()
    };
    let Some(spec) = &pod.spec else { return n };
    n.node_selector = Selector(
        spec.node_selector
            .iter()
            .flatten()
            .map(|(k, v)| Requirement { key: k.clone(), op: Op::In, values: vec![v.clone()] })
            .collect(),
    );
    n.tolerations = spec
        .tolerations
        .iter()
        .flatten()
        .map(|t| Toleration {
            key: t.key.clone().unwrap_or_default(),
            exists: t.operator.as_deref() == Some("Exists"),
            value: t.value.clone().unwrap_or_default(),
            effect: t.effect.as_deref().and_then(effect),
        })
        .collect();
    let Some(affinity) = &spec.affinity else { return n };
    if let Some(na) = &affinity.node_affinity {
        if let Some(req) = &na.required_during_scheduling_ignored_during_execution {
            n.node_affinity = req.node_selector_terms.iter().map(node_term).collect();
        }
        n.preferred_nodes = na
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .map(|p| (p.weight.clamp(0, 100) as u32, node_term(&p.preference)))
            .collect();
    }
    // Terms by hostname go to the bidder (a host decides them about itself); terms over other
    // node labels to the award rule (`DomainTerm`), which sees every host of a domain.
    let by_host = |t: &&PodAffinityTerm| t.topology_key == HOSTNAME;
    let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<Selector> {
        terms.into_iter().flatten().filter(by_host).map(|t| pod_term(t, &namespace)).collect()
    };
    let preferred = |terms: Option<&Vec<WeightedPodAffinityTerm>>| -> Vec<(u32, Selector)> {
        terms
            .into_iter()
            .flatten()
            .filter(|w| by_host(&&w.pod_affinity_term))
            .map(|w| (w.weight.clamp(0, 100) as u32, pod_term(&w.pod_affinity_term, &namespace)))
            .collect()
    };
    let mut domain_terms =
        |anti: bool, req: Option<&Vec<PodAffinityTerm>>, pref: Option<&Vec<WeightedPodAffinityTerm>>| {
            let term = |t: &PodAffinityTerm, weight| DomainTerm {
                key: t.topology_key.clone(),
                selector: pod_term(t, &namespace),
                anti,
                weight,
            };
            n.domain_terms.extend(req.into_iter().flatten().filter(|t| !by_host(t)).map(|t| term(t, None)));
            n.domain_terms.extend(
                pref.into_iter()
                    .flatten()
                    .filter(|w| !by_host(&&w.pod_affinity_term))
                    .map(|w| term(&w.pod_affinity_term, Some(w.weight.clamp(1, 100) as u32))),
            );
        };
    if let Some(pa) = &affinity.pod_affinity {
        let (req, pref) = (
            pa.required_during_scheduling_ignored_during_execution.as_ref(),
            pa.preferred_during_scheduling_ignored_during_execution.as_ref(),
        );
        domain_terms(false, req, pref);
        n.pod_affinity = required(req);
        n.preferred_affinity = preferred(pref);
    }
    if let Some(pa) = &affinity.pod_anti_affinity {
        let (req, pref) = (
            pa.required_during_scheduling_ignored_during_execution.as_ref(),
            pa.preferred_during_scheduling_ignored_during_execution.as_ref(),
        );
        domain_terms(true, req, pref);
        n.pod_anti_affinity = required(req);
        n.preferred_anti = preferred(pref);
    }
    n
}

/// The workload a pod belongs to, for spreading: its controller (owner reference), else the
/// pods of its namespace with the same labels (as a Service would select them), else itself.
pub fn group(pod: &Pod, slot: &str) -> String {
    let owner = pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    if let Some(o) = owner {
        return format!("owner:{}", o.uid);
    }
    match &pod.metadata.labels {
        Some(l) if !l.is_empty() => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
            let labels: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("labels:{ns}:{}", labels.join(","))
        }
        _ => format!("pod:{slot}"),
    }
}

/// Whether the pod mounts a claim (a local volume on the host it was first placed on, which
/// holds its data): it stays with that host and is not placed elsewhere when the host is lost.
pub fn uses_claims(pod: &Pod) -> bool {
    pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()).any(|v| v.persistent_volume_claim.is_some())
}

/// The stand-alone claims a pod mounts (a StatefulSet's own claims are its controller's to
/// pin: they are made after its pod's first placement).
pub fn claims_of(pod: &Pod) -> Vec<String> {
    let by_stateful_set = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.kind == "StatefulSet");
    if by_stateful_set {
        return Vec::new();
    }
    let mut claims: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| Some(v.persistent_volume_claim.as_ref()?.claim_name.clone()))
        .collect();
    claims.sort();
    claims.dedup();
    claims
}

/// What the state says of one claim: absent, bound to a host, or waiting for its first pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimState {
    Bound(String),
    Unbound,
}

/// Where the pod of `slot` (in `namespace`, mounting `claims`) may go: `Ok(None)` anywhere
/// (it is the first pod of its unbound claims), `Ok(Some(host))` only there (a claim bound
/// there, or another pod of an unbound claim already placed there, first by slot), `Err(why)`
/// nowhere yet: a claim that does not exist, claims on two hosts, or an unbound claim whose
/// first pod (by slot) is not placed yet. `known` holds the state's claims (`namespace/name`),
/// `users` the placed or unplaced pods of each claim: `(slot, host or "")`.
pub fn claim_host(
    namespace: &str,
    slot: &str,
    claims: &[String],
    known: &BTreeMap<String, ClaimState>,
    users: &BTreeMap<String, Vec<(String, String)>>,
) -> Result<Option<String>, String> {
    let mut host: Option<String> = None;
    for claim in claims {
        let key = format!("{namespace}/{claim}");
        let here = match known.get(&key) {
            None => return Err(format!("persistentvolumeclaim {claim:?} not found")),
            Some(ClaimState::Bound(h)) => Some(h.clone()),
            Some(ClaimState::Unbound) => {
                let others: Vec<&(String, String)> =
                    users.get(&key).into_iter().flatten().filter(|(s, _)| s != slot).collect();
                match others.iter().filter(|(_, h)| !h.is_empty()).min() {
                    Some((_, h)) => Some(h.clone()),
                    None => match others.iter().map(|(s, _)| s).filter(|s| s.as_str() < slot).min() {
                        Some(first) => {
                            return Err(format!(
                                "waiting for the first pod of persistentvolumeclaim {claim:?} ({first}) to be placed"
                            ))
                        }
                        None => None,
                    },
                }
            }
        };
        match (&host, here) {
            (Some(a), Some(b)) if *a != b => {
                return Err(format!("its persistentvolumeclaims are on two hosts ({a} and {b})"))
            }
            (None, Some(b)) => host = Some(b),
            _ => {}
        }
    }
    Ok(host)
}

/// Restricts `req` to `host` (a claim's local volume is there).
pub fn pin(req: &mut SlotReq, host: &str) {
    req.needs.node_selector.0.push(Requirement {
        key: HOSTNAME.into(),
        op: Op::In,
        values: vec![host.to_owned()],
    });
}

/// Whether a Job controls the pod (`app::controllers::job` replaces it rather than the
/// scheduler moving it).
pub fn run_by_job(pod: &Pod) -> bool {
    pod.metadata.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.kind == "Job")
}

/// The slot of `pod` (its state key's `namespace/name`).
pub fn slot_of(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// `pod`'s request to the scheduler.
pub fn slot_req(pod: &Pod, slot: &str) -> SlotReq {
    let max_skew = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.when_unsatisfiable == "DoNotSchedule" && c.topology_key == HOSTNAME)
        .map(|c| c.max_skew.max(1) as u64)
        .min();
    // Over other node labels (zones): counted per domain by the award rule.
    let spread = pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.topology_key != HOSTNAME)
        .map(|c| Spread {
            key: c.topology_key.clone(),
            max_skew: c.max_skew.max(1) as u64,
            hard: c.when_unsatisfiable == "DoNotSchedule",
        })
        .collect();
    SlotReq { slot: slot.to_owned(), group: group(pod, slot), needs: needs(pod), max_skew, spread }
}

/// A placed pod as bids see it.
pub fn placed(pod: &Pod) -> Placed {
    let n = needs(pod);
    Placed { requests: n.requests, labels: n.labels, anti: n.pod_anti_affinity, extended: n.extended }
}

/// A Node record's facts; `None` when it is not a Node JSON with allocatable resources.
pub fn host_facts(node: &Value) -> Option<HostFacts> {
    let alloc = node.pointer("/status/allocatable")?;
    let get = |k: &str| alloc.get(k).and_then(Value::as_str);
    let allocatable = Resources {
        cpu_millis: parse_cpu_millis(get("cpu")?).ok()?,
        memory_bytes: parse_memory_bytes(get("memory")?).ok()?,
        pods: get("pods")?.parse().ok()?,
    };
    let labels = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default();
    let taints = node
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some(Taint {
                key: t.get("key")?.as_str()?.to_owned(),
                value: t.get("value").and_then(Value::as_str).unwrap_or("").to_owned(),
                effect: effect(t.get("effect")?.as_str()?)?,
            })
        })
        .collect::<Vec<_>>();
    // Cordoned: the taint Kubernetes' node controller gives an unschedulable node.
    let mut taints = taints;
    if node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
        taints.push(Taint {
            key: UNSCHEDULABLE_TAINT.into(),
            value: String::new(),
            effect: Effect::NoSchedule,
        });
    }
    let extended = alloc
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| crate::manifest::is_extended_resource(k))
        .filter_map(|(k, v)| Some((k.clone(), crate::manifest::extended_count(v.as_str()?).ok()?)))
        .collect();
    Some(HostFacts { allocatable, labels, taints, extended })
}

#[cfg(test)]
mod tests {
    use super::*;
    use beemesh_state::sched::fit;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("pod")
    }

    fn facts(labels: &[(&str, &str)], taints: &[&str]) -> HostFacts {
        HostFacts {
            allocatable: Resources { cpu_millis: 2000, memory_bytes: 4 << 30, pods: 110 },
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            taints: taints.iter().map(|t| parse_taint(t).expect("taint")).collect(),
            ..HostFacts::default()
        }
    }

    #[test]
    fn affinity_by_zone_goes_to_the_award_rule_and_by_hostname_to_the_bidder() {
        let p = pod(r#"
metadata: {name: w, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: c, image: i}]
  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - {labelSelector: {matchLabels: {app: web}}, topologyKey: kubernetes.io/hostname}
      - {labelSelector: {matchLabels: {app: web}}, topologyKey: topology.kubernetes.io/zone}
      preferredDuringSchedulingIgnoredDuringExecution:
      - {weight: 30, podAffinityTerm: {labelSelector: {matchLabels: {app: db}}, topologyKey: rack}}
    podAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - {labelSelector: {matchLabels: {app: cache}}, topologyKey: topology.kubernetes.io/zone}
"#);
        let n = needs(&p);
        assert_eq!(n.pod_anti_affinity.len(), 1, "the hostname term stays with the bidder");
        assert!(n.preferred_anti.is_empty() && n.pod_affinity.is_empty());
        let terms: Vec<(&str, bool, Option<u32>)> =
            n.domain_terms.iter().map(|t| (t.key.as_str(), t.anti, t.weight)).collect();
        assert_eq!(
            terms,
            [
                ("topology.kubernetes.io/zone", false, None),
                ("topology.kubernetes.io/zone", true, None),
                ("rack", true, Some(30)),
            ]
        );
        let web = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            (NAMESPACE_LABEL.to_string(), "shop".to_string()),
        ]);
        assert!(n.domain_terms[1].selector.matches(&web));
    }

    #[test]
    fn a_pods_scheduling_fields_become_its_needs() {
        let p = pod(r#"
metadata: {name: w, namespace: shop, labels: {app: web}}
spec:
  containers: [{name: c, image: i, resources: {requests: {cpu: 250m, memory: 64Mi}}}]
  nodeSelector: {disk: ssd}
  tolerations: [{key: dedicated, operator: Equal, value: web, effect: NoSchedule}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a, b]}]}]
      preferredDuringSchedulingIgnoredDuringExecution:
      - {weight: 50, preference: {matchExpressions: [{key: zone, operator: In, values: [a]}]}}
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
      - {labelSelector: {matchLabels: {app: web}}, topologyKey: kubernetes.io/hostname}
  topologySpreadConstraints:
  - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
  - {maxSkew: 2, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: web}}}
  - {maxSkew: 1, topologyKey: rack, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
"#);
        let req = slot_req(&p, "shop/w");
        assert_eq!(req.max_skew, Some(1));
        assert_eq!(
            req.spread,
            [
                Spread { key: "topology.kubernetes.io/zone".into(), max_skew: 2, hard: false },
                Spread { key: "rack".into(), max_skew: 1, hard: true },
            ]
        );
        assert_eq!(req.group, "labels:shop:app=web");
        let n = &req.needs;
        assert_eq!(n.requests, Resources { cpu_millis: 250, memory_bytes: 64 << 20, pods: 1 });
        let ok = facts(&[("disk", "ssd"), ("zone", "b")], &["dedicated=web:NoSchedule"]);
        assert!(fit::static_fit(n, &ok).is_ok());
        let other_zone = facts(&[("disk", "ssd"), ("zone", "c")], &[]);
        assert_eq!(fit::static_fit(n, &other_zone), Err(fit::Reason::NodeAffinity));
        let tainted = facts(&[("disk", "ssd"), ("zone", "a")], &["gpu:NoSchedule"]);
        assert_eq!(fit::static_fit(n, &tainted), Err(fit::Reason::Taint("gpu: ".into())));
        // Anti-affinity sees a pod of the same namespace and labels, not one of another namespace.
        let twin = placed(&p);
        assert_eq!(fit::fit(n, &ok, &[&twin]), Err(fit::Reason::PodAntiAffinity));
        let mut elsewhere = p.clone();
        elsewhere.metadata.namespace = Some("other".into());
        assert!(fit::fit(n, &ok, &[&placed(&elsewhere)]).is_ok());
        // The preferred zone scores higher.
        let a = facts(&[("disk", "ssd"), ("zone", "a")], &["dedicated=web:NoSchedule"]);
        assert!(fit::fit(n, &a, &[]).expect("fits") > fit::fit(n, &ok, &[]).expect("fits"));
    }

    #[test]
    fn a_controlled_pod_spreads_with_its_controller_and_an_unlabelled_one_alone() {
        let owned = pod("metadata: {name: a, ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: r, uid: u-9, controller: true}]}\nspec: {containers: [{name: c, image: i}]}\n");
        assert_eq!(group(&owned, "default/a"), "owner:u-9");
        let bare = pod("metadata: {name: b}\nspec: {containers: [{name: c, image: i}]}\n");
        assert_eq!(group(&bare, "default/b"), "pod:default/b");
    }

    #[test]
    fn taints_parse_in_kubectls_form_and_round_trip_through_a_node_record() {
        assert_eq!(parse_taint("gpu=true:NoSchedule").expect("ok").value, "true");
        assert_eq!(parse_taint("maintenance:NoExecute").expect("ok").effect, Effect::NoExecute);
        assert!(parse_taint("gpu=true").is_err());
        assert!(parse_taint("gpu:Sometimes").expect_err("bad effect").contains("NoSchedule"));
        assert!(parse_taint("=x:NoSchedule").is_err());
        let t = parse_taint("gpu=true:PreferNoSchedule").expect("ok");
        let node = serde_json::json!({
            "metadata": {"labels": {"kubernetes.io/hostname": "h1"}},
            "spec": {"taints": [taint_json(&t)]},
            "status": {"allocatable": {"cpu": "1500m", "memory": "2048Ki", "pods": "110"}},
        });
        let f = host_facts(&node).expect("facts");
        assert_eq!(f.allocatable, Resources { cpu_millis: 1500, memory_bytes: 2 << 20, pods: 110 });
        assert_eq!(f.taints, vec![t]);
        assert_eq!(f.labels["kubernetes.io/hostname"], "h1");
        assert!(host_facts(&serde_json::json!({"metadata": {}})).is_none());
    }

    #[test]
    fn a_claims_pods_go_where_it_is_bound_or_where_its_first_pod_went() {
        let known = BTreeMap::from([
            ("shop/bound".to_owned(), ClaimState::Bound("h2".into())),
            ("shop/fresh".to_owned(), ClaimState::Unbound),
            ("shop/other".to_owned(), ClaimState::Bound("h3".into())),
        ]);
        let claims = |c: &[&str]| c.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let none = BTreeMap::new();
        let host = |slot: &str, c: &[&str], users: &BTreeMap<String, Vec<(String, String)>>| {
            claim_host("shop", slot, &claims(c), &known, users)
        };
        assert_eq!(host("shop/a", &["bound"], &none), Ok(Some("h2".into())));
        assert_eq!(host("shop/a", &["fresh"], &none), Ok(None), "the first pod goes anywhere");
        assert_eq!(
            host("shop/a", &["missing"], &none),
            Err("persistentvolumeclaim \"missing\" not found".into())
        );
        assert!(host("shop/a", &["bound", "other"], &none).is_err_and(|e| e.contains("two hosts")));
        // Another pod of the unbound claim: placed, it draws this one to its host; unplaced
        // and first by slot, this one waits for it; later by slot, this one goes first.
        let placed =
            BTreeMap::from([("shop/fresh".to_owned(), vec![("shop/b".to_owned(), "h1".to_owned())])]);
        assert_eq!(host("shop/c", &["fresh"], &placed), Ok(Some("h1".into())));
        let waiting = BTreeMap::from([("shop/fresh".to_owned(), vec![("shop/b".to_owned(), String::new())])]);
        assert!(host("shop/c", &["fresh"], &waiting).is_err_and(|e| e.contains("shop/b")));
        assert_eq!(host("shop/a", &["fresh"], &waiting), Ok(None));
        let mut req = slot_req(&Pod::default(), "shop/a");
        pin(&mut req, "h2");
        assert_eq!(req.needs.node_selector.0.last().map(|r| r.values.clone()), Some(vec!["h2".to_owned()]));
    }
}
