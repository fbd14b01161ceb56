//! The per-host reconciler: reads what the cluster state assigns to this host (Pods whose
//! `spec.nodeName` is this node, and the ConfigMaps and Secrets pods draw on) and hands it to the
//! actor, which makes its pod runtime match (`Agent::reconcile`). It runs whenever the state
//! changes, every [`RESYNC`] in any case (failed pod creations are tried again then), and at
//! once after an `apply` or `delete` on this host, so that a pod applied here exists in the
//! runtime when the apply returns.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::cluster::pods::{self as cpods, PodReport, POD, POD_STATUS};
use super::cluster::{Cluster, ClusterError};
use super::{Call, Command};
use crate::api::Response;
use crate::manifest::Object;

/// How often the reconciler runs without a change.
pub const RESYNC: Duration = Duration::from_secs(10);

/// What the cluster state assigns to this host, as of change `generation`.
#[derive(Debug, Default)]
pub struct Desired {
    pub generation: u64,
    /// Pods placed on this host, by workload name.
    pub pods: BTreeMap<String, Pod>,
    /// The ConfigMaps and Secrets of the mesh.
    pub objects: Vec<Object>,
    /// Statuses this host published earlier: `(namespace, uid)`.
    pub statuses: Vec<(String, String)>,
    /// Workload names of every pod of the mesh, wherever it is placed.
    pub named: std::collections::BTreeSet<String>,
}

/// Reads what the state assigns to this host.
pub async fn desired(cluster: &Cluster) -> Result<Desired, ClusterError> {
    let (generation, items) = cluster.snapshot(&[POD, "ConfigMap", "Secret", POD_STATUS]).await?;
    let node = cluster.node();
    let mut d = Desired { generation, ..Desired::default() };
    for listed in items {
        let key = &listed.key;
        match key.kind.as_str() {
            POD => match cpods::decode(&listed.body) {
                Ok(pod) => {
                    let workload = super::pods::workload_name(&key.namespace, &key.name);
                    d.named.insert(workload.clone());
                    if cpods::placement(&pod).0 == node {
                        d.pods.insert(workload, pod);
                    }
                }
                Err(e) => warn!(pod = %format!("{}/{}", key.namespace, key.name), error = %e, "pod skipped"),
            },
            POD_STATUS if serde_json::from_slice::<PodReport>(&listed.body).is_ok_and(|r| r.node == node) => {
                d.statuses.push((key.namespace.clone(), key.name.clone()));
            }
            "ConfigMap" => match serde_json::from_slice(&listed.body) {
                Ok(c) => d.objects.push(Object::ConfigMap(Box::new(c))),
                Err(e) => warn!(configmap = %key.name, error = %e, "replicated ConfigMap skipped"),
            },
            "Secret" => match serde_json::from_slice(&listed.body) {
                Ok(s) => d.objects.push(Object::Secret(Box::new(s))),
                // Never the body: it is a Secret.
                Err(e) => {
                    warn!(secret = %key.name, line = e.line(), column = e.column(), "replicated Secret skipped: not JSON of a Secret")
                }
            },
            _ => {}
        }
    }
    Ok(d)
}

/// Reads the state and waits until the actor has made its runtime match.
pub async fn once(cluster: &Cluster, actor: &mpsc::Sender<Call>) -> Result<(), String> {
    let desired = desired(cluster).await.map_err(|e| e.to_string())?;
    let (tx, rx) = oneshot::channel();
    actor
        .send((Command::Reconcile(Box::new(desired)), tx))
        .await
        .map_err(|_| "the agent is shutting down".to_string())?;
    match rx.await {
        Ok(Response::Error { message }) => Err(message),
        Ok(_) => Ok(()),
        Err(_) => Err("the agent dropped the reconcile".into()),
    }
}

/// Runs the reconciler until the actor goes away.
pub async fn run(cluster: Cluster, actor: mpsc::Sender<Call>) {
    let mut changes = cluster.changes();
    loop {
        if let Err(e) = once(&cluster, &actor).await {
            if actor.is_closed() {
                break;
            }
            warn!(error = %e, "reconcile failed; trying again");
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
    debug!("reconciler ended");
}
