//! DaemonSets, decided as a pure function of the hosts' Node records and the pods the set
//! controls: one pod per host its template fits (nodeSelector, node affinity, taints against
//! tolerations, allocatable), hosts that join later included. Each pod is bound to its host
//! as Kubernetes binds it (a required node affinity on `metadata.name`) and written with that
//! `nodeName`: never tendered, never moved (a lost host's pod waits for it, `Unknown`).
//! A template change replaces pods `maxUnavailable` (default 1) at a time (`RollingUpdate`), or
//! as they are deleted (`OnDelete`).

use std::collections::BTreeMap;

use beemesh_state::sched::{fit, HostFacts};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::json;

use super::common::{owner_ref, pod_from_template, suffix, template_hash, PodState, Write};
use super::replicas::status_write;
use super::stateful::REVISION_LABEL;
use crate::app::sched::needs;

/// Pins `pod` to `node` the way Kubernetes' DaemonSet controller does: every required node
/// affinity term also requires `metadata.name In [node]`.
fn bind_to(pod: &mut Pod, node: &str) {
    let Some(spec) = pod.spec.as_mut() else { return };
    let field = NodeSelectorRequirement {
        key: "metadata.name".into(),
        operator: "In".into(),
        values: Some(vec![node.to_owned()]),
    };
    let affinity = spec.affinity.get_or_insert_with(Default::default);
    let na = affinity.node_affinity.get_or_insert_with(Default::default);
    let required =
        na.required_during_scheduling_ignored_during_execution.get_or_insert_with(Default::default);
    if required.node_selector_terms.is_empty() {
        required.node_selector_terms.push(NodeSelectorTerm::default());
    }
    for term in &mut required.node_selector_terms {
        term.match_fields = Some(vec![field.clone()]);
    }
    spec.node_name = Some(node.to_owned());
}

/// A DaemonSet's writes and status, given every host with a Node record (dead ones too: their
/// pods stay) and the pods the set controls.
pub fn daemon_set(ds: &DaemonSet, hosts: &BTreeMap<String, HostFacts>, pods: &[&PodState]) -> Vec<Write> {
    let ns = ds.metadata.namespace.as_deref().unwrap_or("default");
    let name = ds.metadata.name.as_deref().unwrap_or("");
    let uid = ds.metadata.uid.as_deref().unwrap_or("");
    let spec = &ds.spec;
    let revision = template_hash(&spec.template);
    // A DaemonSet's pods tolerate a cordon, as Kubernetes' DaemonSet controller adds it.
    let mut template = spec.template.clone();
    if let Some(ps) = template.spec.as_mut() {
        let t = ps.tolerations.get_or_insert_with(Vec::new);
        if !t.iter().any(|t| t.key.as_deref() == Some(needs::UNSCHEDULABLE_TAINT)) {
            t.push(Toleration {
                key: Some(needs::UNSCHEDULABLE_TAINT.into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            });
        }
    }
    let probe = Pod {
        metadata: template.metadata.clone().unwrap_or_default(),
        spec: template.spec.clone(),
        status: None,
    };
    let wants = needs::needs(&probe);
    let eligible: Vec<&String> =
        hosts.iter().filter(|(_, f)| fit::static_fit(&wants, f).is_ok()).map(|(h, _)| h).collect();
    let node_of = |p: &PodState| p.pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
    let mut on: BTreeMap<String, Vec<&PodState>> = BTreeMap::new();
    for p in pods {
        on.entry(node_of(p)).or_default().push(p);
    }
    let mut writes = Vec::new();
    for host in &eligible {
        if on.contains_key(host.as_str()) {
            continue;
        }
        let pod_name = format!("{name}-{}", suffix(&format!("{uid}/{host}"), 0));
        let mut pod = pod_from_template(
            &template,
            ns,
            &pod_name,
            owner_ref("DaemonSet", &ds.metadata),
            &[(REVISION_LABEL, &revision)],
        );
        bind_to(&mut pod, host);
        writes.push(Write::put("Pod", ns, &pod_name, serde_json::to_value(pod).unwrap_or_default()));
    }
    // Hosts the template no longer fits (or gone), and a second pod on one host.
    let mut misscheduled = 0;
    for (host, list) in &on {
        let keep = usize::from(eligible.contains(&host));
        misscheduled += usize::from(keep == 0) * list.len();
        for p in list.iter().skip(keep) {
            writes.push(Write::delete("Pod", ns, p.name()));
        }
    }
    let placed: Vec<&PodState> =
        eligible.iter().filter_map(|h| on.get(h.as_str()).and_then(|l| l.first().copied())).collect();
    let ready = placed.iter().filter(|p| p.ready).count();
    let available = placed.iter().filter(|p| p.available(ds.spec.min_ready_seconds)).count();
    let updated = placed.iter().filter(|p| p.label(REVISION_LABEL) == Some(revision.as_str())).count();
    let update = spec.update_strategy.clone().unwrap_or_default();
    if update.type_.as_deref() != Some("OnDelete") {
        let max_unavailable = match update.rolling_update.and_then(|r| r.max_unavailable) {
            Some(IntOrString::Int(n)) => n.max(0) as usize,
            Some(IntOrString::String(s)) => {
                let p: usize = s.trim_end_matches('%').parse().unwrap_or(0);
                (eligible.len() * p / 100).max(1)
            }
            None => 1,
        };
        let unavailable = eligible.len() - ready;
        let room = max_unavailable.saturating_sub(unavailable);
        let stale = placed.iter().filter(|p| p.label(REVISION_LABEL) != Some(revision.as_str()));
        for p in stale.take(room) {
            writes.push(Write::delete("Pod", ns, p.name()));
        }
    }
    let status = json!({
        "observedGeneration": ds.metadata.generation.unwrap_or(1),
        "desiredNumberScheduled": eligible.len(),
        "currentNumberScheduled": placed.len(),
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": available,
        "numberUnavailable": eligible.len() - ready,
        "updatedNumberScheduled": updated,
    });
    writes.push(status_write("DaemonSetStatus", &ds.metadata, status));
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use beemesh_state::sched::Resources;

    fn host(labels: &[(&str, &str)], taint: Option<&str>) -> HostFacts {
        HostFacts {
            allocatable: Resources { cpu_millis: 2000, memory_bytes: 4 << 30, pods: 110 },
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            taints: taint.iter().map(|t| needs::parse_taint(t).expect("taint")).collect(),
            ..HostFacts::default()
        }
    }

    fn ds(image: &str) -> DaemonSet {
        serde_yaml::from_str(&format!(
            "metadata: {{name: agent, namespace: default, uid: ds-1}}\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec:\n      nodeSelector: {{role: edge}}\n      containers: [{{name: c, image: {image}}}]\n"
        ))
        .expect("daemonset")
    }

    fn run(
        d: &DaemonSet,
        hosts: &BTreeMap<String, HostFacts>,
        pods: &mut BTreeMap<String, PodState>,
    ) -> Vec<Write> {
        let listed: Vec<&PodState> = pods.values().collect();
        let writes = daemon_set(d, hosts, &listed);
        for w in &writes {
            match (w.kind, &w.body) {
                ("Pod", Some(b)) => {
                    let pod: Pod = serde_json::from_value(b.clone()).expect("pod");
                    pods.insert(w.name.clone(), PodState { pod, ready: true, ..PodState::default() });
                }
                ("Pod", None) => {
                    pods.remove(&w.name);
                }
                _ => {}
            }
        }
        writes
    }

    fn nodes(pods: &BTreeMap<String, PodState>) -> Vec<String> {
        let mut v: Vec<String> =
            pods.values().filter_map(|p| p.pod.spec.as_ref().and_then(|s| s.node_name.clone())).collect();
        v.sort();
        v
    }

    #[test]
    fn one_pod_per_fitting_host_including_hosts_that_join_later() {
        let mut hosts = BTreeMap::from([
            ("h1".to_string(), host(&[("role", "edge")], None)),
            ("h2".to_string(), host(&[("role", "core")], None)),
            ("h3".to_string(), host(&[("role", "edge")], Some("dedicated=x:NoSchedule"))),
        ]);
        let mut pods = BTreeMap::new();
        let d = ds("a:1");
        run(&d, &hosts, &mut pods);
        run(&d, &hosts, &mut pods);
        assert_eq!(nodes(&pods), ["h1"], "h2 does not match, h3's taint is not tolerated");
        let p = pods.values().next().expect("pod");
        let term = &p
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.clone())
            .and_then(|a| a.node_affinity)
            .and_then(|n| n.required_during_scheduling_ignored_during_execution)
            .expect("affinity")
            .node_selector_terms[0];
        assert_eq!(term.match_fields.as_ref().expect("fields")[0].values, Some(vec!["h1".to_string()]));
        hosts.insert("h4".into(), host(&[("role", "edge")], None));
        run(&d, &hosts, &mut pods);
        assert_eq!(nodes(&pods), ["h1", "h4"]);
        // h1 relabelled: its pod goes.
        hosts.insert("h1".into(), host(&[("role", "core")], None));
        run(&d, &hosts, &mut pods);
        assert_eq!(nodes(&pods), ["h4"]);
    }

    #[test]
    fn a_new_template_replaces_one_pod_at_a_time() {
        let hosts: BTreeMap<String, HostFacts> =
            (1..=3).map(|i| (format!("h{i}"), host(&[("role", "edge")], None))).collect();
        let mut pods = BTreeMap::new();
        run(&ds("a:1"), &hosts, &mut pods);
        let v2 = ds("a:2");
        let deleted = |w: &[Write]| w.iter().filter(|w| w.kind == "Pod" && w.body.is_none()).count();
        assert_eq!(deleted(&run(&v2, &hosts, &mut pods)), 1);
        // The replacement is created (ready at once here), then the next one goes.
        for _ in 0..6 {
            run(&v2, &hosts, &mut pods);
        }
        let status = run(&v2, &hosts, &mut pods)
            .into_iter()
            .find(|w| w.kind == "DaemonSetStatus")
            .and_then(|w| w.body)
            .expect("status");
        assert_eq!(status["status"]["updatedNumberScheduled"], 3);
        assert_eq!(status["status"]["desiredNumberScheduled"], 3);
    }
}
