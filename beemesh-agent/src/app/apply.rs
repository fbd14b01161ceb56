//! The write path of objects, on the admin connection's task: `apply` writes what a file holds
//! into the cluster state (Pods placed on their `nodeName`, else by the scheduler), `delete`
//! removes it mesh-wide, and each returns once another host holds the write (on a mesh of one,
//! at once, saying so). Nothing goes from the CLI to the pod runtime directly: the reconciler
//! (`app::reconcile`) carries what the state places on this host to the actor, and is run
//! before the answer so that a pod applied here exists when `apply` returns. `get pods` and
//! `wait` read the state, so they work on any host for a pod on any host.

use std::collections::BTreeSet;
use std::time::Duration;

use beemesh_state::Key;

use k8s_openapi::api::core::v1::Pod;

use super::cluster::pods::{self as cpods, POD, POD_STATUS};
use super::cluster::{self, kube, Acked, Cluster};
use super::{mesh, sched, AgentHandle, Command};
use crate::api::{Response, WaitFor};
use crate::manifest::Object;

/// What an apply's line adds about the write's acknowledgement.
fn held(acked: &Acked) -> String {
    match &acked.held_by {
        Some(node) => format!(" (held by {node})"),
        None => " (no other host holds it yet)".to_string(),
    }
}

impl AgentHandle {
    fn cluster(&self) -> Result<&Cluster, Box<Response>> {
        self.mesh
            .as_ref()
            .map(|m| &m.cluster)
            .ok_or_else(|| Box::new(Response::Error { message: "the cluster state is not running".into() }))
    }

    /// `apply -f`: every object checked first (a pod against this host's rules; a pod that
    /// exists with another spec is refused), then written in the file's order.
    pub(super) async fn apply(&self, file: &str, objects: Vec<Object>) -> Response {
        let cluster = match self.cluster() {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let pods: Vec<Pod> = objects
            .iter()
            .filter_map(|o| match o {
                Object::Pod(p) => Some(with_namespace(p, o.namespace())),
                _ => None,
            })
            .collect();
        if !pods.is_empty() {
            if let Response::Error { message } =
                self.actor(Command::CheckPods { file: file.to_owned(), pods }).await
            {
                return Response::Error { message };
            }
        }
        // The stored state of each object, read once: a pod's spec cannot change.
        let mut existing = Vec::with_capacity(objects.len());
        for o in &objects {
            let key = Key::new(o.kind(), o.namespace(), o.name());
            let body = match cluster.get(key).await {
                Ok(b) => b,
                Err(e) => return Response::Error { message: e.to_string() },
            };
            if let (Object::Pod(new), Some(body)) = (o, &body) {
                match cpods::decode(body) {
                    Ok(stored) if !cpods::same_spec(&stored, new) => {
                        return Response::Error {
                            message: format!(
                                "{file}: pod {}/{}: a pod's spec cannot change; delete it first (nothing of this file was applied)",
                                o.namespace(),
                                o.name()
                            ),
                        }
                    }
                    // A body that is not a Pod is replaced.
                    _ => {}
                }
            }
            existing.push(body);
        }
        // Services get their addresses before anything is written: a refused one (an address
        // taken or out of range) leaves the whole file unapplied.
        let mut objects = objects;
        if let Err(message) = self.assign_addresses(cluster, &mut objects, &existing).await {
            return Response::Error {
                message: format!("{file}: {message} (nothing of this file was applied)"),
            };
        }
        // Every write is submitted in the file's order, and the acknowledgements are awaited
        // together at the end.
        let mut lines = Lines::default();
        // Namespaces the file's objects use that nobody created are created with them.
        for ns in kube::namespaces_needed(&objects) {
            let key = Key::new("Namespace", "", ns.as_str());
            match cluster.get(key.clone()).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return lines.stopped(e.to_string()).await,
            }
            let (_, body) =
                kube::prepare(&kube::implicit_namespace(&ns), None, cluster::now_ms(), &new_uid());
            match cluster.submit(key, body).await {
                Ok(p) => lines.waiting(format!("namespace/{ns} created (implicitly)"), p),
                Err(e) => return lines.stopped(format!("namespace/{ns}: {e}")).await,
            }
        }
        for (o, before) in objects.iter().zip(existing) {
            let key = Key::new(o.kind(), o.namespace(), o.name());
            let (verb, body) = match o {
                Object::Pod(p) => {
                    if before.as_ref().is_some_and(|b| cpods::decode(b).is_ok()) {
                        lines.done(format!("{} unchanged", o.shown()));
                        continue;
                    }
                    let created = super::pods::format_time(now_secs());
                    let mut pod = with_namespace(p, o.namespace());
                    let pinned = p.spec.as_ref().and_then(|s| s.node_name.clone());
                    let uid = new_uid();
                    if pinned.is_none() {
                        self.place(&mut pod, o.namespace(), o.name(), &uid).await;
                    }
                    ("created", cpods::stored(&pod, o.namespace(), &uid, &created, None))
                }
                _ => match kube::prepare(o, before.as_deref(), cluster::now_ms(), &new_uid()) {
                    (change, Some(body)) if change != kube::Change::Unchanged => (change.word(), body),
                    _ => {
                        lines.done(format!("{} unchanged", o.shown()));
                        continue;
                    }
                },
            };
            match cluster.submit(key, Some(body)).await {
                Ok(p) => lines.waiting(format!("{} {verb}", o.shown()), p),
                Err(e) => return lines.stopped(format!("{}: {e}", o.shown())).await,
            }
        }
        let lines = match lines.settle().await {
            Ok(lines) => lines,
            Err((lines, error)) => return partly(lines, error),
        };
        if let Err(e) = super::reconcile::once(cluster, &self.tx).await {
            return partly(lines, format!("written to the cluster state, but this host's pods: {e}"));
        }
        Response::Applied { lines }
    }

    /// Fills the cluster IP and node ports of the Services among `objects` (`app::services`):
    /// kept from the state's copy (`existing`, in the same order), as asked, or allocated past
    /// what every other Service of the state and of this file holds.
    async fn assign_addresses(
        &self,
        cluster: &Cluster,
        objects: &mut [Object],
        existing: &[Option<bytes::Bytes>],
    ) -> Result<(), String> {
        if !objects.iter().any(|o| matches!(o, Object::Service(_))) {
            return Ok(());
        }
        let Some(m) = self.mesh.as_ref() else { return Ok(()) };
        let listed = cluster.list("Service", None).await.map_err(|e| e.to_string())?;
        let mut held: std::collections::BTreeMap<String, k8s_openapi::api::core::v1::Service> = listed
            .iter()
            .filter_map(|l| {
                let svc = serde_json::from_slice(&l.body).ok()?;
                Some((format!("{}/{}", l.key.namespace, l.key.name), svc))
            })
            .collect();
        for (o, before) in objects.iter_mut().zip(existing) {
            let (ns, name) = (o.namespace().to_owned(), o.name().to_owned());
            let Object::Service(svc) = o else { continue };
            let key = format!("{ns}/{name}");
            let stored: Option<k8s_openapi::api::core::v1::Service> =
                before.as_ref().and_then(|b| serde_json::from_slice(b).ok());
            let taken = super::services::Taken::of(held.iter().map(|(k, s)| (k.as_str(), s)), &key);
            super::services::assign(svc, &key, stored.as_ref(), &taken, &m.service_pools)
                .map_err(|e| format!("service {key}: {e}"))?;
            held.insert(key, (**svc).clone());
        }
        Ok(())
    }

    /// Places a pod that names no `nodeName` through the mesh's scheduler (a tender to the
    /// hosts that could take it, the best bid wins); a pod nobody can take now is written
    /// unplaced, saying why, and its owner tenders it again with back-off.
    async fn place(&self, pod: &mut Pod, namespace: &str, name: &str, uid: &str) {
        let Some(m) = self.mesh.as_ref() else { return };
        let slot = sched::needs::slot_of(namespace, name);
        let about = sched::PodRef { uid: Some(uid.to_owned()), ..sched::PodRef::of(pod) };
        match m.sched.place(sched::needs::slot_req(pod, &slot), about).await {
            sched::Placement::Bound(host) => sched::mark_bound(pod, &host),
            sched::Placement::Pending(message) => sched::mark_unschedulable(pod, &message),
        }
    }

    /// `delete -f`: every object the file names, mesh-wide; Namespaces last, and only when they
    /// are empty but for what the same file deletes (`default` and `kube-system` never).
    pub(super) async fn delete_objects(&self, objects: Vec<Object>) -> Response {
        let cluster = match self.cluster() {
            Ok(c) => c,
            Err(r) => return *r,
        };
        if let Err(message) = check_namespaces_deletable(cluster, &objects).await {
            return Response::Error { message };
        }
        // What the file's controllers made goes after them, level by level, deleted by hosts
        // that have seen the level above go (`app::controllers`' collection of orphans, as
        // Kubernetes' background cascade): deleted here all at once, a peer could see a
        // Deployment still standing without its ReplicaSet and make it again.
        // Namespaces go last, once the rest is held elsewhere.
        let (last, first): (Vec<_>, Vec<_>) = objects.iter().partition(|o| matches!(o, Object::Namespace(_)));
        let mut lines = Vec::with_capacity(objects.len());
        for batch in [first, last] {
            let mut batch_lines = Lines::default();
            for o in batch {
                let key = Key::new(o.kind(), o.namespace(), o.name());
                let live = match cluster.get(key.clone()).await {
                    Ok(body) => body.is_some(),
                    Err(e) => return batch_lines.stopped(format!("{}: {e}", o.shown())).await,
                };
                if !live {
                    let (plural, name) = (o.info().plural, o.name());
                    batch_lines.done(format!("Error from server (NotFound): {plural} {name:?} not found"));
                    continue;
                }
                match cluster.submit(key, None).await {
                    Ok(p) => batch_lines.waiting(format!("{} deleted", o.shown()), p),
                    Err(e) => return batch_lines.stopped(format!("{}: {e}", o.shown())).await,
                }
            }
            match batch_lines.settle().await {
                Ok(done) => lines.extend(done),
                Err((done, error)) => {
                    lines.extend(done);
                    return partly(lines, error);
                }
            }
        }
        if let Err(e) = super::reconcile::once(cluster, &self.tx).await {
            return partly(lines, format!("deleted from the cluster state, but this host's pods: {e}"));
        }
        Response::Applied { lines }
    }

    /// `delete pod NAME`: wherever it runs.
    pub(super) async fn delete_pod(&self, namespace: &str, name: &str) -> Response {
        let cluster = match self.cluster() {
            Ok(c) => c,
            Err(r) => return *r,
        };
        match delete(cluster, cpods::pod_key(namespace, name)).await {
            Ok(Some(acked)) => {
                if let Err(e) = super::reconcile::once(cluster, &self.tx).await {
                    return Response::Error {
                        message: format!("pod/{name} deleted, but this host's pods: {e}"),
                    };
                }
                Response::Applied { lines: vec![format!("pod/{name} deleted{}", held(&acked))] }
            }
            Ok(None) => Response::Error { message: format!("pod {namespace}/{name} not found") },
            Err(e) => Response::Error { message: e.to_string() },
        }
    }

    /// An eviction: the pod is deleted only if every PodDisruptionBudget covering it allows
    /// one more disruption, counted from the state now (`controllers::disruption`).
    pub(super) async fn evict_pod(&self, namespace: &str, name: &str) -> Response {
        use super::controllers::{disruption, pod_states};
        let cluster = match self.cluster() {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let kinds = [POD, POD_STATUS, "PodDisruptionBudget", super::nodes::KIND];
        let items = match cluster.snapshot(&kinds).await {
            Ok((_, items)) => items,
            Err(e) => return Response::Error { message: e.to_string() },
        };
        let of = |kind: &str| items.iter().filter(|l| l.key.kind == kind).cloned().collect::<Vec<_>>();
        let dead = match self.mesh.as_ref() {
            Some(m) => sched::dead_nodes(&of(super::nodes::KIND), &m.liveness),
            None => Default::default(),
        };
        let pods = pod_states(&of(POD), &of(POD_STATUS), &dead);
        let Some((_, target)) = pods.iter().find(|(k, _)| k.namespace == namespace && k.name == name) else {
            return Response::Error { message: format!("pods {name:?} not found") };
        };
        let budgets: Vec<k8s_openapi::api::policy::v1::PodDisruptionBudget> = of("PodDisruptionBudget")
            .iter()
            .filter(|l| l.key.namespace == namespace)
            .filter_map(|l| serde_json::from_slice(&l.body).ok())
            .collect();
        let budgets: Vec<&_> = budgets.iter().collect();
        let all: Vec<&_> = pods.iter().map(|(_, p)| p).collect();
        if let Err(message) = disruption::may_evict(target, &budgets, &all) {
            return Response::Error { message };
        }
        match self.delete_pod(namespace, name).await {
            Response::Applied { .. } => Response::Applied { lines: vec![format!("pod/{name} evicted")] },
            other => other,
        }
    }

    /// `cordon` / `uncordon`: the node's record with `spec.unschedulable` set or removed (its
    /// own host keeps the mark when it rewrites the record; the scheduler reads it as
    /// Kubernetes' `node.kubernetes.io/unschedulable` taint).
    pub(super) async fn cordon(&self, node: &str, unschedulable: bool) -> Response {
        let cluster = match self.cluster() {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let key = super::nodes::key(node);
        let mut record: serde_json::Value = match cluster.get(key.clone()).await {
            Ok(Some(body)) => match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return Response::Error { message: format!("node {node:?}: its record is not JSON: {e}") }
                }
            },
            Ok(None) => return Response::Error { message: format!("nodes {node:?} not found") },
            Err(e) => return Response::Error { message: e.to_string() },
        };
        let word = if unschedulable { "cordoned" } else { "uncordoned" };
        let marked = record.pointer("/spec/unschedulable") == Some(&serde_json::Value::Bool(true));
        if marked == unschedulable {
            return Response::Applied { lines: vec![format!("node/{node} already {word}")] };
        }
        match (unschedulable, record["spec"].as_object_mut()) {
            (true, _) => record["spec"]["unschedulable"] = true.into(),
            (false, Some(spec)) => {
                spec.remove("unschedulable");
            }
            (false, None) => {}
        }
        let body = bytes::Bytes::from(record.to_string());
        match cluster.write(key, Some(body)).await {
            Ok(acked) => Response::Applied { lines: vec![format!("node/{node} {word}{}", held(&acked))] },
            Err(e) => Response::Error { message: e.to_string() },
        }
    }

    /// `get pods`: the mesh's pods with the status their hosts published.
    pub(super) async fn list_pods(&self, namespace: Option<&str>) -> Response {
        let cluster = match self.cluster() {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let (pods, statuses) =
            match (cluster.list(POD, namespace).await, cluster.list(POD_STATUS, namespace).await) {
                (Ok(p), Ok(s)) => (p, s),
                (Err(e), _) | (_, Err(e)) => return Response::Error { message: e.to_string() },
            };
        let reports = cpods::reports(&statuses);
        let dead = match (cluster.list(super::nodes::KIND, None).await, self.mesh.as_ref()) {
            (Ok(nodes), Some(m)) => sched::dead_nodes(&nodes, &m.liveness),
            _ => Default::default(),
        };
        let now = cluster::now_ms();
        let items = pods
            .iter()
            .map(|l| {
                let pod = cpods::decode(&l.body).ok();
                let lost = pod.as_ref().is_some_and(|p| dead.contains(cpods::placement(p).0));
                let uid = pod.and_then(|p| p.metadata.uid);
                cpods::info(l, uid.and_then(|u| reports.get(&u)), now, lost)
            })
            .collect();
        Response::Pods { items }
    }

    /// `wait`: until the pod is ready (its host says so) or deleted (gone from the state, and
    /// its host, if reachable, has torn it down), or the timeout.
    pub(super) async fn wait_pod(
        &self,
        namespace: &str,
        name: &str,
        condition: WaitFor,
        timeout_ms: u64,
        uid: Option<&str>,
    ) -> Response {
        let cluster = match self.cluster() {
            Ok(c) => c,
            Err(r) => return *r,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut changes = cluster.changes();
        loop {
            changes.mark_unchanged();
            match self.pod_condition(cluster, namespace, name, condition, uid).await {
                Ok(true) => return Response::Done,
                Ok(false) => {}
                Err(message) => return Response::Error { message },
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    return Response::Error { message: "the cluster state task has stopped".into() };
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Response::Error {
                        message: format!("timed out waiting for pod {namespace}/{name}"),
                    };
                }
                // The hosts reachable change without the state changing.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn pod_condition(
        &self,
        cluster: &Cluster,
        namespace: &str,
        name: &str,
        condition: WaitFor,
        uid: Option<&str>,
    ) -> Result<bool, String> {
        let pod = cluster.get(cpods::pod_key(namespace, name)).await.map_err(|e| e.to_string())?;
        let pod = pod.map(|b| cpods::decode(&b)).transpose()?;
        let statuses = cluster.list(POD_STATUS, Some(namespace)).await.map_err(|e| e.to_string())?;
        let reports = cpods::reports(&statuses);
        match condition {
            WaitFor::Ready => {
                let pod = pod.ok_or_else(|| format!("pod {namespace}/{name} not found"))?;
                let uid = cpods::placement(&pod).1;
                Ok(reports.get(uid).is_some_and(|r| r.all_ready))
            }
            WaitFor::Deleted => {
                // The instance waited for: a pod of the same name with another uid is a new one.
                let same = |p: &Pod| uid.is_none_or(|u| cpods::placement(p).1 == u);
                if pod.as_ref().is_some_and(same) {
                    return Ok(false);
                }
                // A host that is gone cannot tear its pod down: only reachable hosts are waited for.
                let mut hosts: BTreeSet<String> = BTreeSet::from([cluster.node().to_owned()]);
                if let Some(m) = &self.mesh {
                    let peers = mesh::peers(m).await.unwrap_or_default();
                    hosts.extend(peers.into_iter().filter(|p| p.attested).filter_map(|p| p.name));
                }
                Ok(!reports
                    .values()
                    .any(|r| r.name == name && uid.is_none_or(|u| r.uid == u) && hosts.contains(&r.node)))
            }
        }
    }
}

/// Refuses, before anything is deleted, the deletion of `default` or `kube-system`, or of a
/// Namespace that holds objects the same file does not delete. (The check reads this host's
/// copy of the state: an object applied elsewhere at the same moment can outlive it.)
async fn check_namespaces_deletable(cluster: &Cluster, objects: &[Object]) -> Result<(), String> {
    let deleted: BTreeSet<Key> =
        objects.iter().map(|o| Key::new(o.kind(), o.namespace(), o.name())).collect();
    for ns in objects.iter().filter(|o| matches!(o, Object::Namespace(_))).map(Object::name) {
        if kube::BUILTIN_NAMESPACES.contains(&ns) {
            return Err(format!(
                "namespaces {ns:?} is forbidden: this namespace may not be deleted (nothing was deleted)"
            ));
        }
        let mut held = Vec::new();
        for kind in kube::NAMESPACED_KINDS {
            let listed = cluster.list(kind, Some(ns)).await.map_err(|e| e.to_string())?;
            // What a controller made goes with its controller (or is collected, its controller
            // gone): it never holds a namespace by itself.
            let controlled = |l: &cluster::Listed| {
                serde_json::from_slice::<serde_json::Value>(&l.body).is_ok_and(|v| {
                    v["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|o| o.iter().any(|r| r["controller"] == true))
                })
            };
            held.extend(listed.into_iter().filter(|l| !deleted.contains(&l.key) && !controlled(l)).map(
                |l| {
                    let resource = crate::manifest::kind_info(kind).map_or(kind, |k| k.resource);
                    format!("{resource}/{}", l.key.name)
                },
            ));
        }
        if !held.is_empty() {
            return Err(format!(
                "namespace/{ns} is not empty: it holds {} (delete them first; nothing was deleted)",
                held.join(", ")
            ));
        }
    }
    Ok(())
}

/// Deletes `key` if it is live; `None` if there was nothing to delete.
async fn delete(cluster: &Cluster, key: Key) -> Result<Option<Acked>, cluster::ClusterError> {
    if cluster.get(key.clone()).await?.is_none() {
        return Ok(None);
    }
    cluster.write(key, None).await.map(Some)
}

/// The lines of an apply or a delete, in order; some wait for their write's acknowledgement.
#[derive(Default)]
struct Lines(Vec<(String, Option<cluster::Pending>)>);

impl Lines {
    fn done(&mut self, line: String) {
        self.0.push((line, None));
    }

    fn waiting(&mut self, line: String, pending: cluster::Pending) {
        self.0.push((line, Some(pending)));
    }

    /// Waits for every acknowledgement together: the finished lines, or those before the
    /// first write that was not acknowledged and its error.
    async fn settle(self) -> Result<Vec<String>, (Vec<String>, String)> {
        let (texts, pending): (Vec<String>, Vec<_>) = self.0.into_iter().unzip();
        let acks = futures::future::join_all(pending.into_iter().map(|p| async move {
            match p {
                Some(p) => p.acked().await.map(|a| held(&a)),
                None => Ok(String::new()),
            }
        }))
        .await;
        let mut lines = Vec::with_capacity(texts.len());
        for (text, ack) in texts.into_iter().zip(acks) {
            match ack {
                Ok(suffix) => lines.push(text + &suffix),
                Err(e) => return Err((lines, format!("{}: {e}", text.split(' ').next().unwrap_or(&text)))),
            }
        }
        Ok(lines)
    }

    /// What was submitted, settled, and the error that stopped the rest.
    async fn stopped(self, error: String) -> Response {
        match self.settle().await {
            Ok(lines) => partly(lines, error),
            Err((lines, first)) => partly(lines, format!("{first}\n{error}")),
        }
    }
}

/// The lines done so far, and what stopped the rest.
fn partly(lines: Vec<String>, error: String) -> Response {
    let mut message = lines.join("\n");
    if !message.is_empty() {
        message.push('\n');
    }
    message.push_str(&error);
    Response::Error { message }
}

fn with_namespace(pod: &Pod, namespace: &str) -> Pod {
    let mut pod = pod.clone();
    pod.metadata.namespace = Some(namespace.to_owned());
    pod
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A random (v4) uid for a new object.
pub(crate) fn new_uid() -> String {
    let mut b = [0u8; 16];
    // Uniqueness, not secrecy: a failing kernel source still leaves the time in it.
    if getrandom::getrandom(&mut b).is_err() {
        b[..16]
            .copy_from_slice(&std::time::UNIX_EPOCH.elapsed().unwrap_or_default().as_nanos().to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// The uid of a stored body, for tests.
#[cfg(test)]
fn uid_of(body: &bytes::Bytes) -> Option<String> {
    cpods::decode(body).ok().and_then(|p| p.metadata.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_v4_and_distinct() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        let pod: Pod =
            serde_yaml::from_str("metadata: {name: p}\nspec: {containers: [{name: c}]}\n").expect("pod");
        let body = cpods::stored(&pod, "default", &a, "2026-11-29T00:00:00Z", Some("h"));
        assert_eq!(uid_of(&body).as_deref(), Some(a.as_str()));
    }
}
