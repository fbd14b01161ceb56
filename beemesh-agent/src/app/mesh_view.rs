//! What this host's policy must know of the rest of the mesh: the pods other hosts run (their
//! identities and labels, so that selectors match them: their traffic reaches this host's
//! pods through tunnels, and this host's pods reach them) and the NetworkPolicies applied to
//! the mesh (enforced on every host, with the files of policy.d). Followed from the cluster
//! state and handed to the actor, which gives remote pods numeric identities and hands the
//! lot to the policy engine.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::cluster::execs::{ExecRecord, KIND as EXEC};
use super::cluster::pods::{self as cluster_pods, POD};
use super::cluster::Cluster;
use super::{Call, Command};
use crate::identity::SpiffeId;
use beemesh_common::{PROTO_TCP, PROTO_UDP};

use crate::policy::{Policy, WorkloadPort};

/// The kind NetworkPolicies are stored under.
const NETWORK_POLICY: &str = "NetworkPolicy";

/// A pod or `exec --identity` workload of another host, as the policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Remote {
    pub identity: SpiffeId,
    pub labels: BTreeMap<String, String>,
    /// Its named container ports (none for an `exec --identity` workload).
    pub ports: Vec<WorkloadPort>,
}

/// Other hosts' pods and the mesh's NetworkPolicies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct MeshView {
    /// `namespace/name` -> (identity, labels) of every pod placed on another host, and
    /// `exec:<node>/<name>` -> the same of every `exec --identity` workload another host runs.
    pub remote: BTreeMap<String, Remote>,
    /// The mesh's NetworkPolicies, converted (one that does not convert is left out, logged).
    pub policies: Vec<Policy>,
    /// This host's own `exec --identity` records in the store, by workload name (the actor
    /// deletes those left by an earlier run: [`super::cluster::execs::adopt`]).
    pub own_execs: BTreeMap<String, ExecRecord>,
}

/// Sends the actor a new [`MeshView`] whenever Pods or NetworkPolicies change it.
pub(crate) async fn run(cluster: Cluster, trust_domain: String, calls: mpsc::Sender<Call>) {
    let mut pods = cluster.kind_changes(POD);
    let mut execs = cluster.kind_changes(EXEC);
    let mut policies = cluster.kind_changes(NETWORK_POLICY);
    let mut last = MeshView::default();
    loop {
        let Ok((_, listed)) = cluster.snapshot(&[POD, EXEC, NETWORK_POLICY]).await else { return };
        let view = build(cluster.node(), &trust_domain, &listed);
        if view != last {
            let (tx, rx) = oneshot::channel();
            if calls.send((Command::MeshView(Box::new(view.clone())), tx)).await.is_err() {
                return;
            }
            let _ = rx.await;
            last = view;
        }
        tokio::select! {
            r = pods.changed() => if r.is_err() { return },
            r = execs.changed() => if r.is_err() { return },
            r = policies.changed() => if r.is_err() { return },
        }
        // A burst of changes (a rollout) makes one view.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pod's named container ports (its app containers', as Kubernetes resolves a
/// NetworkPolicy's named port).
fn named_ports(pod: &k8s_openapi::api::core::v1::Pod) -> Vec<WorkloadPort> {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    let mut ports: Vec<WorkloadPort> = containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            let proto = if p.protocol.as_deref() == Some("UDP") { PROTO_UDP } else { PROTO_TCP };
            let port = u16::try_from(p.container_port).ok()?;
            Some(WorkloadPort { name: p.name.clone()?, proto, port })
        })
        .collect();
    ports.sort();
    ports
}

fn build(node: &str, trust_domain: &str, listed: &[super::cluster::Listed]) -> MeshView {
    let mut view = MeshView::default();
    for l in listed {
        match l.key.kind.as_str() {
            POD => {
                let Ok(pod) = cluster_pods::decode(&l.body) else { continue };
                let (placed, _) = cluster_pods::placement(&pod);
                if placed.is_empty() || placed == node {
                    continue;
                }
                let sa = cluster_pods::service_account(&pod);
                let Ok(id) = SpiffeId::new(trust_domain, &l.key.namespace, &sa) else { continue };
                let labels = pod.metadata.labels.clone().unwrap_or_default();
                let ports = named_ports(&pod);
                let remote = Remote { identity: id, labels, ports };
                view.remote.insert(format!("{}/{}", l.key.namespace, l.key.name), remote);
            }
            EXEC => {
                let Some(r) = ExecRecord::decode(&l.key, &l.body) else { continue };
                if r.node == node {
                    view.own_execs.insert(r.name.clone(), r);
                } else {
                    let key = r.view_key();
                    view.remote
                        .insert(key, Remote { identity: r.identity, labels: r.labels, ports: Vec::new() });
                }
            }
            NETWORK_POLICY => {
                let Ok(np) = serde_json::from_slice::<NetworkPolicy>(&l.body) else { continue };
                match crate::policy::convert_network_policy(np) {
                    Ok(p) => view.policies.push(p),
                    Err(e) => {
                        warn!(policy = %l.key.name, namespace = %l.key.namespace, error = ?e, "mesh NetworkPolicy left out")
                    }
                }
            }
            _ => {}
        }
    }
    view
}
