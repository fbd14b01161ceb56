//! StatefulSets, decided as a pure function of what the state holds: pods `<name>-0..N-1`
//! with a stable name per ordinal (`hostname` = the pod's name, `subdomain` = the governing
//! Service), started in order and each only once the ones before it are Ready
//! (`OrderedReady`, the default) or all at once (`Parallel`), scaled down from the highest
//! ordinal. A template change replaces pods from the highest ordinal down, one at a time with
//! every pod Ready, down to `partition` (`RollingUpdate`), or only as pods are deleted
//! (`OnDelete`). A pod on a lost host is placed again by the scheduler under the same name.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Volume};
use serde_json::json;

use super::common::{owner_ref, pod_from_template, template_hash, PodState, Write};
use super::disruption::Budgets;
use super::replicas::status_write;

pub const REVISION_LABEL: &str = "controller-revision-hash";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

/// The ordinal of `pod` in set `name`, if it is one of its names.
fn ordinal(name: &str, pod: &str) -> Option<usize> {
    let rest = pod.strip_prefix(name)?.strip_prefix('-')?;
    let n: usize = rest.parse().ok()?;
    (n.to_string() == rest).then_some(n)
}

/// The annotation naming the host a claim's local volume is on (Kubernetes' own).
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";

/// The claim of template `template` for pod `pod`, as Kubernetes names it.
pub fn claim_name(template: &str, pod: &str) -> String {
    format!("{template}-{pod}")
}

/// A StatefulSet's writes (pods to create or delete, claims to record) and status, given the
/// pods it controls and the hosts of the claims that exist (`claims`: name -> node).
/// `volumeClaimTemplates` become local volumes: each pod mounts `<template>-<pod>`, recorded
/// as a PersistentVolumeClaim bound to the host the pod was first placed on; a pod whose claims
/// are bound is pinned to that host (its data is there): never moved, it waits for the host.
/// A scale-down honours `budgets` (the disruption budgets covering its pods); replacing pods
/// for a new template does not (the owner's own change, as in Kubernetes).
pub fn stateful_set(
    s: &StatefulSet,
    pods: &[&PodState],
    claims: &BTreeMap<String, String>,
    budgets: Budgets<'_>,
) -> Vec<Write> {
    let ns = s.metadata.namespace.as_deref().unwrap_or("default");
    let name = s.metadata.name.as_deref().unwrap_or("");
    let spec = s.spec.clone();
    let n = spec.replicas.map_or(1, i64::from).max(0) as usize;
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let revision = format!("{name}-{}", template_hash(&spec.template));
    let update = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = update.type_.as_deref() == Some("OnDelete");
    let partition = update.rolling_update.and_then(|r| r.partition).map_or(0, |p| p.max(0) as usize);
    let by_ordinal: BTreeMap<usize, &PodState> =
        pods.iter().filter_map(|p| ordinal(name, p.name()).map(|o| (o, *p))).collect();
    let mut writes = Vec::new();
    let create = |i: usize| {
        let pod_name = format!("{name}-{i}");
        let index = i.to_string();
        let mut pod = pod_from_template(
            &spec.template,
            ns,
            &pod_name,
            owner_ref("StatefulSet", &s.metadata),
            &[(POD_NAME_LABEL, &pod_name), (POD_INDEX_LABEL, &index), (REVISION_LABEL, &revision)],
        );
        if let Some(ps) = pod.spec.as_mut() {
            ps.hostname = Some(pod_name.clone());
            ps.subdomain = spec.service_name.clone().filter(|s| !s.is_empty());
            let volumes = ps.volumes.get_or_insert_with(Vec::new);
            for t in spec.volume_claim_templates.iter().flatten() {
                let Some(t_name) = t.metadata.name.clone() else { continue };
                if volumes.iter().any(|v| v.name == t_name) {
                    continue;
                }
                let claim = claim_name(&t_name, &pod_name);
                if let Some(node) = claims.get(&claim) {
                    ps.node_name = Some(node.clone());
                }
                volumes.push(Volume {
                    name: t_name,
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: claim,
                        read_only: None,
                    }),
                    ..Volume::default()
                });
            }
        }
        Write::put("Pod", ns, &pod_name, serde_json::to_value(pod).unwrap_or_default())
    };
    // Start what is missing: in order, each once its predecessors are Ready, or all at once.
    for i in 0..n {
        match by_ordinal.get(&i) {
            None => {
                writes.push(create(i));
                if !parallel {
                    break;
                }
            }
            Some(p) if !p.ready && !parallel => break,
            Some(_) => {}
        }
    }
    let all_ready = (0..n).all(|i| by_ordinal.get(&i).is_some_and(|p| p.ready));
    // Scale down from the highest ordinal: one at a time with the rest Ready, or all at once.
    let extra: Vec<usize> = by_ordinal.keys().copied().filter(|o| *o >= n).collect();
    let doomed: Vec<&PodState> = extra.iter().rev().filter_map(|o| by_ordinal.get(o).copied()).collect();
    let go = if parallel {
        doomed.len()
    } else if all_ready {
        doomed.len().min(1)
    } else {
        0
    };
    for p in &doomed[..budgets.removable(&doomed[..go])] {
        writes.push(Write::delete("Pod", ns, p.name()));
    }
    // A new template replaces pods from the highest ordinal down to the partition, one at a
    // time, each once every pod is Ready (recreated with the new template at the next pass).
    if !on_delete && extra.is_empty() && all_ready {
        let stale = (partition..n)
            .rev()
            .find(|i| by_ordinal.get(i).is_some_and(|p| p.label(REVISION_LABEL) != Some(revision.as_str())));
        if let Some(i) = stale {
            writes.push(Write::delete("Pod", ns, &format!("{name}-{i}")));
        }
    }
    // Claims of placed pods not recorded yet: bound to the pod's host.
    for p in pods {
        let Some(node) = p.pod.spec.as_ref().and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty())
        else {
            continue;
        };
        for t in spec.volume_claim_templates.iter().flatten() {
            let Some(t_name) = t.metadata.name.as_deref() else { continue };
            let claim = claim_name(t_name, p.name());
            if claims.contains_key(&claim) {
                continue;
            }
            let mut labels = t.metadata.labels.clone().unwrap_or_default();
            labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
            let storage = t
                .spec
                .as_ref()
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone());
            let pvc = json!({
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {
                    "name": claim,
                    "namespace": ns,
                    "labels": labels,
                    "annotations": {SELECTED_NODE: node},
                },
                "spec": t.spec,
                "status": {
                    "phase": "Bound",
                    "accessModes": t.spec.as_ref().and_then(|s| s.access_modes.clone()),
                    "capacity": {"storage": storage},
                },
            });
            writes.push(Write::put("PersistentVolumeClaim", ns, &claim, pvc));
        }
    }
    let ready = pods.iter().filter(|p| p.ready).count();
    let available = pods.iter().filter(|p| p.available(s.spec.min_ready_seconds)).count();
    let updated = pods.iter().filter(|p| p.label(REVISION_LABEL) == Some(revision.as_str())).count();
    let current_revision = if updated == pods.len() {
        revision.clone()
    } else {
        pods.iter()
            .filter_map(|p| p.label(REVISION_LABEL))
            .find(|r| *r != revision)
            .unwrap_or(&revision)
            .to_owned()
    };
    let status = json!({
        "observedGeneration": s.metadata.generation.unwrap_or(1),
        "replicas": pods.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "currentReplicas": pods.iter().filter(|p| p.label(REVISION_LABEL) == Some(current_revision.as_str())).count(),
        "updatedReplicas": updated,
        "currentRevision": current_revision,
        "updateRevision": revision,
    });
    writes.push(status_write("StatefulSetStatus", &s.metadata, status));
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    const NO_BUDGETS: Budgets<'static> = Budgets { pdbs: &[], pods: &[] };

    fn set(replicas: i32, image: &str, extra: &str) -> StatefulSet {
        serde_yaml::from_str(&format!(
            "metadata: {{name: db, namespace: default, uid: s-1}}\nspec:\n  replicas: {replicas}\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n{extra}  template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: c, image: {image}}}]}}\n"
        ))
        .expect("statefulset")
    }

    /// Runs the controller against its own writes: created pods become ready when `ready`.
    fn step(s: &StatefulSet, pods: &mut BTreeMap<String, PodState>, ready: bool) -> Vec<Write> {
        let listed: Vec<&PodState> = pods.values().collect();
        let writes = stateful_set(s, &listed, &BTreeMap::new(), NO_BUDGETS);
        for w in &writes {
            match (w.kind, &w.body) {
                ("Pod", Some(b)) => {
                    let pod: Pod = serde_json::from_value(b.clone()).expect("pod");
                    pods.insert(w.name.clone(), PodState { pod, ready, ..PodState::default() });
                }
                ("Pod", None) => {
                    pods.remove(&w.name);
                }
                _ => {}
            }
        }
        writes
    }

    #[test]
    fn ordered_ready_starts_one_ordinal_at_a_time_and_scales_down_from_the_top() {
        let mut pods = BTreeMap::new();
        let s = set(3, "db:1", "");
        // Not ready yet: only db-0 exists, and nothing more comes.
        step(&s, &mut pods, false);
        step(&s, &mut pods, false);
        assert_eq!(pods.keys().collect::<Vec<_>>(), ["db-0"]);
        let p = &pods["db-0"].pod;
        assert_eq!(p.spec.as_ref().and_then(|s| s.hostname.as_deref()), Some("db-0"));
        assert_eq!(p.spec.as_ref().and_then(|s| s.subdomain.as_deref()), Some("db"));
        assert_eq!(pods["db-0"].label(POD_INDEX_LABEL), Some("0"));
        pods.values_mut().for_each(|p| p.ready = true);
        for _ in 0..3 {
            step(&s, &mut pods, true);
        }
        assert_eq!(pods.keys().collect::<Vec<_>>(), ["db-0", "db-1", "db-2"]);
        let s1 = set(1, "db:1", "");
        step(&s1, &mut pods, true);
        assert_eq!(pods.keys().collect::<Vec<_>>(), ["db-0", "db-1"], "highest first, one at a time");
        step(&s1, &mut pods, true);
        assert_eq!(pods.keys().collect::<Vec<_>>(), ["db-0"]);
    }

    #[test]
    fn parallel_starts_all_and_an_update_replaces_from_the_top_down_to_the_partition() {
        let mut pods = BTreeMap::new();
        let par = "  podManagementPolicy: Parallel\n  updateStrategy: {type: RollingUpdate, rollingUpdate: {partition: 1}}\n";
        step(&set(3, "db:1", par), &mut pods, true);
        assert_eq!(pods.len(), 3);
        let v2 = set(3, "db:2", par);
        let mut replaced = Vec::new();
        for _ in 0..10 {
            let writes = step(&v2, &mut pods, true);
            replaced.extend(
                writes.iter().filter(|w| w.kind == "Pod" && w.body.is_none()).map(|w| w.name.clone()),
            );
        }
        assert_eq!(replaced, ["db-2", "db-1"], "db-0 is below the partition");
        let rev = |p: &str| pods[p].label(REVISION_LABEL).map(str::to_owned);
        assert_eq!(rev("db-1"), rev("db-2"));
        assert_ne!(rev("db-0"), rev("db-1"));
        let status = step(&v2, &mut pods, true)
            .into_iter()
            .find(|w| w.kind == "StatefulSetStatus")
            .and_then(|w| w.body)
            .expect("status");
        assert_eq!(status["status"]["updatedReplicas"], 2);
        assert_eq!(status["status"]["readyReplicas"], 3);
    }
}

#[cfg(test)]
mod claim_tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    const NO_BUDGETS: Budgets<'static> = Budgets { pdbs: &[], pods: &[] };

    #[test]
    fn claims_become_local_volumes_bound_to_the_first_host_and_pin_the_pod_there() {
        let s: StatefulSet = serde_yaml::from_str(
            "metadata: {name: db, namespace: default, uid: s-1}\nspec:\n  replicas: 1\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  volumeClaimTemplates: [{metadata: {name: data}, spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}}]\n  template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: c, image: i, volumeMounts: [{name: data, mountPath: /data}]}]}\n",
        )
        .expect("statefulset");
        let writes = stateful_set(&s, &[], &BTreeMap::new(), NO_BUDGETS);
        let pod: Pod = serde_json::from_value(writes[0].body.clone().expect("pod")).expect("pod");
        let v = &pod.spec.as_ref().and_then(|s| s.volumes.clone()).expect("volumes")[0];
        assert_eq!(v.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()), Some("data-db-0"));
        assert!(
            pod.spec.as_ref().and_then(|s| s.node_name.clone()).is_none(),
            "first placement is the scheduler's"
        );
        // Placed on h2: the claim is recorded there.
        let mut placed = pod.clone();
        placed.spec.as_mut().expect("spec").node_name = Some("h2".into());
        let state = PodState { pod: placed, ready: true, ..PodState::default() };
        let writes = stateful_set(&s, &[&state], &BTreeMap::new(), NO_BUDGETS);
        let pvc = writes
            .iter()
            .find(|w| w.kind == "PersistentVolumeClaim")
            .and_then(|w| w.body.clone())
            .expect("claim");
        assert_eq!(pvc["metadata"]["annotations"][SELECTED_NODE], "h2");
        assert_eq!(pvc["status"]["capacity"]["storage"], "1Gi");
        // Replaced: the new db-0 is pinned to h2.
        let claims = BTreeMap::from([("data-db-0".to_string(), "h2".to_string())]);
        let writes = stateful_set(&s, &[], &claims, NO_BUDGETS);
        let pod: Pod = serde_json::from_value(writes[0].body.clone().expect("pod")).expect("pod");
        assert_eq!(pod.spec.and_then(|s| s.node_name), Some("h2".into()));
    }
}
