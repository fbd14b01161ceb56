//! Pods in the cluster state. A Pod is stored under `(Pod, namespace, name)` as its Kubernetes
//! JSON with what the applying host fills in: namespace, `metadata.uid`, `creationTimestamp` and
//! `spec.nodeName` (the placement: the manifest's, else the scheduler's; none while no host
//! can take it). The host that runs a
//! pod publishes its status under `(PodStatus, namespace, uid)` as a [`PodReport`]: a key of
//! its own, so a status written late never brings a deleted Pod back (last writer wins per
//! key), and a pod applied again under the same name (a new uid) never sees the old one's.

use std::collections::BTreeMap;

use beemesh_state::Key;
use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use super::Listed;
use crate::api::PodInfo;

/// The kind under which Pods are stored.
pub const POD: &str = "Pod";
/// The kind under which the host that runs a pod publishes its status.
pub const POD_STATUS: &str = "PodStatus";

/// What the host that runs a pod says about it (`get pods` on any host shows it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// The node name of the host that runs it.
    pub node: String,
    /// `ready/total` app containers.
    pub ready: String,
    /// The STATUS column.
    pub status: String,
    pub restarts: u32,
    pub identity: String,
    /// Every app container ready (`wait --for ready`).
    pub all_ready: bool,
    /// The Pod's Kubernetes `status`.
    pub pod_status: serde_json::Value,
    /// Annotations the running host adds (workload name, SVID expiry).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// The key of a pod.
pub fn pod_key(namespace: &str, name: &str) -> Key {
    Key::new(POD, namespace, name)
}

/// The key of a pod's status.
pub fn status_key(namespace: &str, uid: &str) -> Key {
    Key::new(POD_STATUS, namespace, uid)
}

/// The Pod as stored: `pod` with its namespace, uid and creation time filled in, and its node
/// when `node` names one (else the pod's own: placed, or not yet).
pub fn stored(pod: &Pod, namespace: &str, uid: &str, created: &str, node: Option<&str>) -> Bytes {
    let mut pod = pod.clone();
    pod.metadata.namespace = Some(namespace.to_owned());
    pod.metadata.uid = Some(uid.to_owned());
    pod.metadata.creation_timestamp = serde_json::from_value(created.into()).ok();
    if let (Some(spec), Some(node)) = (pod.spec.as_mut(), node) {
        spec.node_name = Some(node.to_owned());
    }
    // k8s-openapi's types always serialise.
    Bytes::from(serde_json::to_vec(&pod).unwrap_or_default())
}

/// A stored Pod, or why its body is not one (a broken or newer peer wrote it).
pub fn decode(body: &[u8]) -> Result<Pod, String> {
    serde_json::from_slice(body).map_err(|e| format!("the replicated body of this pod is not a Pod: {e}"))
}

/// The service account a pod runs as (its identity): `serviceAccountName`, else the
/// deprecated `serviceAccount`, else `default`.
pub fn service_account(pod: &Pod) -> String {
    crate::pod::spec::service_account(pod)
}

/// The node a stored pod is placed on, and its uid.
pub fn placement(pod: &Pod) -> (&str, &str) {
    (
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or(""),
        pod.metadata.uid.as_deref().unwrap_or(""),
    )
}

/// Whether `new` (as applied) has the spec of `stored`, the node the applying host filled in
/// aside.
pub fn same_spec(stored: &Pod, new: &Pod) -> bool {
    let mut a = stored.spec.clone();
    let b = new.spec.clone();
    if let (Some(a), Some(b)) = (a.as_mut(), b.as_ref()) {
        if b.node_name.is_none() {
            a.node_name = None;
        }
    }
    a == b
}

/// The cpu (millis) and memory (bytes) one pod requests: the larger of its app containers'
/// sum and its largest init container, per resource; a container's limit stands in for a
/// request it does not set (as the API server defaults it). Unparsable quantities count 0
/// (manifests are checked when applied).
pub fn pod_requests(pod: &Pod) -> (u64, u64) {
    use crate::manifest::{parse_cpu_millis, parse_memory_bytes};
    let Some(spec) = &pod.spec else { return (0, 0) };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref();
        let get = |name: &str| {
            r.and_then(|r| r.requests.as_ref().and_then(|q| q.get(name)))
                .or_else(|| r.and_then(|r| r.limits.as_ref().and_then(|q| q.get(name))))
                .map(|q| q.0.clone())
        };
        let cpu = get("cpu").and_then(|q| parse_cpu_millis(&q).ok()).unwrap_or(0);
        let memory = get("memory").and_then(|q| parse_memory_bytes(&q).ok()).unwrap_or(0);
        (cpu, memory)
    };
    let apps = spec.containers.iter().map(of).fold((0, 0), |(c, m), (dc, dm)| (c + dc, m + dm));
    spec.init_containers.iter().flatten().map(of).fold(apps, |(c, m), (ic, im)| (c.max(ic), m.max(im)))
}

/// What the pods of the state (`pods`, with `statuses`) request per node name; pods whose
/// host reported them Succeeded or Failed are not counted.
pub fn requested(pods: &[Listed], statuses: &[Listed]) -> BTreeMap<String, crate::api::Requested> {
    let reports = reports(statuses);
    let mut by_node: BTreeMap<String, crate::api::Requested> = BTreeMap::new();
    for pod in pods.iter().filter_map(|l| decode(&l.body).ok()) {
        let (node, uid) = placement(&pod);
        let ended = reports.get(uid).is_some_and(|r| {
            r.node == node
                && matches!(r.pod_status.get("phase").and_then(|p| p.as_str()), Some("Succeeded" | "Failed"))
        });
        if ended {
            continue;
        }
        let (cpu, memory) = pod_requests(&pod);
        let r = by_node.entry(node.to_owned()).or_default();
        r.pods += 1;
        r.cpu_millis += cpu;
        r.memory_bytes += memory;
    }
    by_node
}

/// A report's body.
pub fn encode_report(report: &PodReport) -> Bytes {
    Bytes::from(serde_json::to_vec(report).unwrap_or_default())
}

/// The reports of `statuses` by uid (bodies that do not decode are skipped: the pod shows as
/// not reported).
pub fn reports(statuses: &[Listed]) -> BTreeMap<String, PodReport> {
    statuses
        .iter()
        .filter_map(|l| serde_json::from_slice::<PodReport>(&l.body).ok())
        .map(|r| (r.uid.clone(), r))
        .collect()
}

/// `get pods`' row of a stored pod, with its host's report if there is one (else Pending,
/// as a pod no host has started yet, with the scheduler's reason while no host can take it).
/// A pod whose host the failure detector holds dead (`lost`) is `Unknown` (reason NodeLost),
/// never what its host last said, until it is placed again.
pub fn info(listed: &Listed, report: Option<&PodReport>, now_ms: u64, lost: bool) -> PodInfo {
    let (namespace, name) = (listed.key.namespace.clone(), listed.key.name.clone());
    let age_secs = now_ms.saturating_sub(listed.written_ms) / 1000;
    let pod = match decode(&listed.body) {
        Ok(p) => p,
        Err(e) => {
            return PodInfo {
                namespace,
                name,
                ready: "0/0".into(),
                status: "Unknown".into(),
                restarts: 0,
                age_secs,
                host: String::new(),
                identity: String::new(),
                object: serde_json::Value::String(e),
            }
        }
    };
    let (node, uid) = placement(&pod);
    let report = report.filter(|r| r.uid == uid);
    let mut object = serde_json::to_value(&pod).unwrap_or_default();
    let containers = pod.spec.as_ref().map_or(0, |s| s.containers.len());
    if lost {
        object["status"] = serde_json::json!({
            "phase": "Unknown",
            "reason": "NodeLost",
            "message": format!("Node {node} which was running pod {name} is unresponsive"),
        });
        return PodInfo {
            namespace,
            name,
            ready: format!("0/{containers}"),
            status: "Unknown".into(),
            restarts: report.map_or(0, |r| r.restarts),
            age_secs,
            host: node.to_owned(),
            identity: report.map(|r| r.identity.clone()).unwrap_or_default(),
            object,
        };
    }
    match report {
        Some(r) => {
            object["status"] = r.pod_status.clone();
            if !r.annotations.is_empty() {
                if let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                    let a = meta.entry("annotations").or_insert_with(|| serde_json::json!({}));
                    for (k, v) in &r.annotations {
                        a[k] = v.clone().into();
                    }
                }
            }
            PodInfo {
                namespace,
                name,
                ready: r.ready.clone(),
                status: r.status.clone(),
                restarts: r.restarts,
                age_secs,
                host: node.to_owned(),
                identity: r.identity.clone(),
                object,
            }
        }
        None => {
            let why = pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::app::sched::UNSCHEDULABLE_ANNOTATION))
                .filter(|_| node.is_empty());
            object["status"] = match why {
                Some(message) => serde_json::json!({
                    "phase": "Pending",
                    "conditions": [{
                        "type": "PodScheduled",
                        "status": "False",
                        "reason": "Unschedulable",
                        "message": message,
                    }],
                }),
                None => serde_json::json!({"phase": "Pending"}),
            };
            PodInfo {
                namespace,
                name,
                ready: format!("0/{containers}"),
                status: "Pending".into(),
                restarts: 0,
                age_secs,
                host: node.to_owned(),
                identity: String::new(),
                object,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("pod")
    }

    #[test]
    fn a_stored_pod_carries_its_namespace_uid_and_node_and_keeps_the_manifests_node() {
        let p = pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec: {containers: [{name: c, image: i}]}\n",
        );
        let body = stored(&p, "default", "u-1", "2026-11-29T00:00:00Z", Some("h1"));
        let back = decode(&body).expect("decodes");
        assert_eq!(placement(&back), ("h1", "u-1"));
        assert_eq!(back.metadata.namespace.as_deref(), Some("default"));
        assert!(back.metadata.creation_timestamp.is_some());
        // Applied again unchanged (no nodeName): the same spec.
        assert!(same_spec(&back, &p));
        let pinned = pod("apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec: {nodeName: h2, containers: [{name: c, image: i}]}\n");
        assert!(!same_spec(&back, &pinned));
        let changed = pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec: {containers: [{name: c, image: j}]}\n",
        );
        assert!(!same_spec(&back, &changed));
    }

    #[test]
    fn get_shows_a_pods_report_only_for_its_uid_and_pending_without_one() {
        let p = pod(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec: {containers: [{name: c, image: i}]}\n",
        );
        let listed = Listed {
            key: pod_key("default", "w"),
            body: stored(&p, "default", "u-2", "2026-11-29T00:00:00Z", Some("h1")),
            written_ms: 1_000,
        };
        let report = PodReport {
            uid: "u-2".into(),
            namespace: "default".into(),
            name: "w".into(),
            node: "h1".into(),
            ready: "1/1".into(),
            status: "Running".into(),
            restarts: 2,
            identity: "spiffe://td/ns/default/sa/default".into(),
            all_ready: true,
            pod_status: serde_json::json!({"phase": "Running"}),
            annotations: BTreeMap::from([("beemesh.io/workload".into(), "pod-default-w".into())]),
        };
        let i = info(&listed, Some(&report), 11_000, false);
        assert_eq!((i.status.as_str(), i.restarts, i.host.as_str(), i.age_secs), ("Running", 2, "h1", 10));
        assert_eq!(i.object["status"]["phase"], "Running");
        assert_eq!(i.object["metadata"]["annotations"]["beemesh.io/workload"], "pod-default-w");
        assert_eq!(i.object["spec"]["nodeName"], "h1");
        let stale = PodReport { uid: "u-1".into(), ..report };
        let i = info(&listed, Some(&stale), 11_000, false);
        assert_eq!((i.status.as_str(), i.ready.as_str()), ("Pending", "0/1"));
        let lost = info(&listed, Some(&stale), 11_000, true);
        assert_eq!((lost.status.as_str(), lost.host.as_str()), ("Unknown", "h1"));
        assert_eq!(lost.object["status"]["reason"], "NodeLost");
        let broken = Listed { body: Bytes::from_static(b"{"), ..listed };
        assert_eq!(info(&broken, None, 0, false).status, "Unknown");
    }

    #[test]
    fn requested_counts_running_pods_per_node_as_kubernetes_allocates() {
        let listed = |name: &str, node: &str, uid: &str, containers: &str| {
            let p = pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n{containers}"
            ));
            Listed {
                key: pod_key("default", name),
                body: stored(&p, "default", uid, "2026-11-29T00:00:00Z", Some(node)),
                written_ms: 0,
            }
        };
        let pods = vec![
            // Two app containers (one with a limit only), an init container larger in cpu.
            listed(
                "a",
                "h1",
                "u-a",
                "  initContainers: [{name: i, image: i, resources: {requests: {cpu: '1'}}}]\n  \
                 containers:\n  - {name: c, image: i, resources: {requests: {cpu: 100m, memory: 64Mi}}}\n  \
                 - {name: d, image: i, resources: {limits: {cpu: 200m, memory: 32Mi}}}\n",
            ),
            listed("b", "h1", "u-b", "  containers: [{name: c, image: i}]\n"),
            listed(
                "done",
                "h1",
                "u-d",
                "  containers: [{name: c, image: i, resources: {requests: {cpu: '2'}}}]\n",
            ),
            listed(
                "c",
                "h2",
                "u-c",
                "  containers: [{name: c, image: i, resources: {requests: {memory: 1Gi}}}]\n",
            ),
        ];
        let report = |uid: &str, phase: &str| PodReport {
            uid: uid.into(),
            namespace: "default".into(),
            name: String::new(),
            node: "h1".into(),
            ready: String::new(),
            status: String::new(),
            restarts: 0,
            identity: String::new(),
            all_ready: false,
            pod_status: serde_json::json!({"phase": phase}),
            annotations: BTreeMap::new(),
        };
        let statuses: Vec<Listed> = [report("u-d", "Succeeded"), report("u-a", "Running")]
            .iter()
            .map(|r| Listed { key: status_key("default", &r.uid), body: encode_report(r), written_ms: 0 })
            .collect();
        let r = requested(&pods, &statuses);
        let h1 = crate::api::Requested { pods: 2, cpu_millis: 1000, memory_bytes: 96 << 20 };
        assert_eq!(r.get("h1"), Some(&h1), "the ended pod is not counted");
        assert_eq!(
            r.get("h2"),
            Some(&crate::api::Requested { pods: 1, cpu_millis: 0, memory_bytes: 1 << 30 })
        );
    }
}
