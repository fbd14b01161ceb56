//! The per-host reconciler: reads what the cluster state assigns to this host (Pods whose
//! `spec.nodeName` is this node, and the ConfigMaps and Secrets those pods draw on) and hands it
//! to the actor, which makes its pod runtime match (`Agent::reconcile`). It reads the state
//! whenever it changes, and hands the actor what it read when that differs from the last time
//! (a thousand ConfigMaps no pod here uses cost no actor turn), every [`RESYNC`] in any case
//! (failed pod creations are tried again then), and at once after an `apply` or `delete` on this
//! host, so that a pod applied here exists in the runtime when the apply returns.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::cluster::pods::{self as cpods, PodReport, POD, POD_STATUS};
use beemesh_state::Key;

use super::cluster::{Cluster, ClusterError};
use super::{Call, Command};
use crate::api::Response;
use crate::manifest::Object;
use crate::pod::spec::{self, ObjectKind};

/// How often the reconciler runs without a change.
/// The cluster state's kind of Services.
const SERVICE: &str = "Service";

pub const RESYNC: Duration = Duration::from_secs(10);

/// What the cluster state assigns to this host, as of change `generation`.
#[derive(Debug, Default, Clone)]
pub struct Desired {
    pub generation: u64,
    /// Pods placed on this host, by workload name.
    pub pods: BTreeMap<String, Pod>,
    /// The ConfigMaps and Secrets the pods placed here draw on.
    pub objects: Vec<Object>,
    /// Statuses this host published earlier: `(namespace, uid)`.
    pub statuses: Vec<(String, String)>,
    /// Workload names of every pod of the mesh, wherever it is placed.
    pub named: std::collections::BTreeSet<String>,
    /// Workload names of the pods placed on another host whose host reports them ready (a
    /// stale copy here may stop once its replacement is ready).
    pub ready_elsewhere: BTreeSet<String>,
}

impl Desired {
    /// The same assignment as `other` (whatever the generations).
    fn same(&self, other: &Desired) -> bool {
        self.pods == other.pods
            && self.objects == other.objects
            && self.statuses == other.statuses
            && self.named == other.named
            && self.ready_elsewhere == other.ready_elsewhere
    }
}

/// Reads what the state assigns to this host.
pub async fn desired(cluster: &Cluster) -> Result<Desired, ClusterError> {
    let (generation, items) = cluster.snapshot(&[POD, POD_STATUS, SERVICE]).await?;
    let node = cluster.node();
    let mut d = Desired { generation, ..Desired::default() };
    // Where each pod elsewhere is placed (workload, node, uid), and the reports of readiness.
    let mut elsewhere: Vec<(String, String, String)> = Vec::new();
    let mut ready: BTreeSet<(String, String)> = BTreeSet::new();
    let mut services: Vec<k8s_openapi::api::core::v1::Service> = Vec::new();
    for listed in items {
        let key = &listed.key;
        match key.kind.as_str() {
            POD => match cpods::decode(&listed.body) {
                Ok(pod) => {
                    let workload = super::pods::workload_name(&key.namespace, &key.name);
                    d.named.insert(workload.clone());
                    let (placed, uid) = cpods::placement(&pod);
                    if placed == node {
                        d.pods.insert(workload, pod);
                    } else if !placed.is_empty() {
                        elsewhere.push((workload, placed.to_owned(), uid.to_owned()));
                    }
                }
                Err(e) => warn!(pod = %format!("{}/{}", key.namespace, key.name), error = %e, "pod skipped"),
            },
            SERVICE => match serde_json::from_slice(&listed.body) {
                Ok(svc) => services.push(svc),
                Err(e) => {
                    warn!(service = %format!("{}/{}", key.namespace, key.name), error = %e, "service skipped")
                }
            },
            POD_STATUS => {
                let Ok(r) = serde_json::from_slice::<PodReport>(&listed.body) else { continue };
                if r.node == node {
                    d.statuses.push((key.namespace.clone(), key.name.clone()));
                } else if r.all_ready {
                    ready.insert((r.node, r.uid));
                }
            }
            _ => {}
        }
    }
    d.ready_elsewhere = elsewhere
        .into_iter()
        .filter(|(_, node, uid)| ready.contains(&(node.clone(), uid.clone())))
        .map(|(workload, _, _)| workload)
        .collect();
    // The Services of those pods' namespaces, for their service links (env at container
    // start, as the kubelet gives them).
    let linked: BTreeSet<String> = (d.pods.values())
        .filter(|p| p.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false))
        .map(|p| p.metadata.namespace.clone().unwrap_or_else(|| "default".into()))
        .collect();
    d.objects.extend(
        (services.into_iter())
            .filter(|s| linked.contains(s.metadata.namespace.as_deref().unwrap_or("default")))
            .map(|s| Object::Service(Box::new(s))),
    );
    // The ConfigMaps and Secrets those pods use (a change to one wakes the reconciler too).
    let mut wanted = BTreeSet::new();
    for pod in d.pods.values() {
        let namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        for (kind, name) in spec::references(pod) {
            wanted.insert((kind, namespace.clone(), name));
        }
    }
    for (kind, namespace, name) in wanted {
        let Some(body) = cluster.get(Key::new(kind.kube_kind(), namespace.as_str(), name.as_str())).await?
        else {
            continue;
        };
        match kind {
            ObjectKind::ConfigMap => match serde_json::from_slice(&body) {
                Ok(c) => d.objects.push(Object::ConfigMap(Box::new(c))),
                Err(e) => warn!(configmap = %name, error = %e, "replicated ConfigMap skipped"),
            },
            ObjectKind::Secret => match serde_json::from_slice(&body) {
                Ok(s) => d.objects.push(Object::Secret(Box::new(s))),
                // Never the body: it is a Secret.
                Err(e) => {
                    warn!(secret = %name, line = e.line(), column = e.column(), "replicated Secret skipped: not JSON of a Secret")
                }
            },
        }
    }
    Ok(d)
}

/// Reads the state and waits until the actor has made its runtime match.
pub async fn once(cluster: &Cluster, actor: &mpsc::Sender<Call>) -> Result<(), String> {
    let desired = desired(cluster).await.map_err(|e| e.to_string())?;
    hand_over(desired, actor).await
}

/// Hands `desired` to the actor and waits until its runtime matches.
async fn hand_over(desired: Desired, actor: &mpsc::Sender<Call>) -> Result<(), String> {
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
    let mut last: Option<Desired> = None;
    let mut resync = tokio::time::Instant::now();
    loop {
        let outcome = match desired(&cluster).await {
            Ok(d) if resync.elapsed() < RESYNC && last.as_ref().is_some_and(|l| l.same(&d)) => Ok(()),
            Ok(d) => {
                last = Some(d.clone());
                resync = tokio::time::Instant::now();
                hand_over(d, &actor).await
            }
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = outcome {
            if actor.is_closed() {
                break;
            }
            last = None;
            warn!(error = %e, "reconcile failed; trying again");
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep_until(resync + RESYNC) => {}
        }
    }
    debug!("reconciler ended");
}
