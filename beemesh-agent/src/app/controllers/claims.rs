//! Stand-alone PersistentVolumeClaims, bound as Kubernetes binds a local volume whose class
//! waits for its first consumer: a claim is bound to the host its first pod (by slot) was
//! placed on (`volume.kubernetes.io/selected-node`, status `Bound` with its request as
//! capacity), and the scheduler sends every later pod of the claim there
//! (`sched::needs::claim_host`). Its data is a directory under that host's state directory,
//! and stays there: a pod of the claim waits for that host when it is down. Pure.

use serde_json::{json, Value};

use super::common::{PodState, Write};
use super::stateful::SELECTED_NODE;
use crate::app::sched::needs;

/// The writes binding the unbound claims among `claims` (`(namespace, name, body)`) that a
/// placed pod of `pods` mounts: each to the host of its first such pod by name.
pub fn bind(claims: &[(&str, &str, &Value)], pods: &[&PodState]) -> Vec<Write> {
    let mut writes = Vec::new();
    for (ns, name, body) in claims {
        if body["metadata"]["annotations"][SELECTED_NODE].is_string() {
            continue;
        }
        let first = pods
            .iter()
            .filter(|p| !p.lost && p.pod.metadata.namespace.as_deref().unwrap_or("default") == *ns)
            .filter(|p| needs::claims_of(&p.pod).iter().any(|c| c == name))
            .filter_map(|p| {
                Some((p.name(), p.pod.spec.as_ref()?.node_name.as_deref().filter(|n| !n.is_empty())?))
            })
            .min();
        let Some((_, host)) = first else { continue };
        let mut bound = (*body).clone();
        bound["metadata"]["annotations"][SELECTED_NODE] = host.into();
        let spec = &body["spec"];
        bound["status"] = json!({
            "phase": "Bound",
            "accessModes": spec["accessModes"],
            "capacity": {"storage": spec["resources"]["requests"]["storage"]},
        });
        writes.push(Write::put("PersistentVolumeClaim", ns, name, bound));
    }
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pod(name: &str, claim: &str, node: Option<&str>) -> PodState {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}]},
        }))
        .expect("pod");
        PodState { pod, ..PodState::default() }
    }

    #[test]
    fn a_claim_binds_to_its_first_placed_pods_host_once() {
        let claim = json!({"metadata": {"name": "uploads", "namespace": "default"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}});
        let unplaced = pod("web-a", "uploads", None);
        assert!(bind(&[("default", "uploads", &claim)], &[&unplaced]).is_empty(), "nothing placed yet");
        let (a, b) = (pod("web-b", "uploads", Some("h2")), pod("web-c", "uploads", Some("h3")));
        let other = pod("other", "elsewhere", Some("h1"));
        let writes = bind(&[("default", "uploads", &claim)], &[&b, &other, &unplaced, &a]);
        assert_eq!(writes.len(), 1);
        let body = writes[0].body.clone().expect("a put");
        assert_eq!(body["metadata"]["annotations"][SELECTED_NODE], "h2", "web-b is first of the placed");
        assert_eq!(body["status"]["phase"], "Bound");
        assert_eq!(body["status"]["capacity"]["storage"], "1Gi");
        // Bound: left alone.
        assert!(bind(&[("default", "uploads", &body)], &[&b]).is_empty());
        // A pod on a lost host does not bind it.
        let mut lost = pod("web-b", "uploads", Some("h2"));
        lost.lost = true;
        assert!(bind(&[("default", "uploads", &claim)], &[&lost]).is_empty());
    }
}
