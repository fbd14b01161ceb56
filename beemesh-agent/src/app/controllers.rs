//! The workload controllers' driver: Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs
//! and CronJobs, kept by whichever host owns each object (rendezvous over the alive hosts by
//! the object's key, so exactly one host acts on it while the mesh agrees on who is alive, and
//! another takes over when it dies). The decisions are the pure functions of [`replicas`],
//! [`stateful`], [`daemon`], [`job`] and [`cron_job`]; this task reads the cluster state,
//! hands each owned object what it controls, and writes the differences: pods (placed by
//! `app::sched`), ReplicaSets, Jobs, and status records (`<Kind>Status`, keyed like the object
//! and naming its uid, merged into `get`; kept apart from the object so a status write never
//! undoes an `apply`). Objects whose controller is gone (a Deployment deleted: its
//! ReplicaSets, then their pods) are deleted at once when the controller's tombstone is here,
//! else once they have been orphans for [`ORPHAN_GRACE`] (the controller may not have reached
//! this host yet): `delete` deletes only what it names, and this is the cascade.

pub mod claims;
pub mod common;
pub mod cron_job;
pub mod daemon;
pub mod disruption;
pub mod job;
pub mod replicas;
pub mod stateful;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use beemesh_state::sched::rank;
use beemesh_state::Key;
use bytes::Bytes;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::cluster::pods::{self as cpods, POD, POD_STATUS};
use super::cluster::{Cluster, Listed};
use super::events::{Involved, Recorder};
use super::liveness::Liveness;
use common::{controller_uid, PodState, Write};

/// The controlled kinds and their status records' kinds.
pub const STATUS_KINDS: [(&str, &str); 7] = [
    ("Deployment", "DeploymentStatus"),
    ("ReplicaSet", "ReplicaSetStatus"),
    ("StatefulSet", "StatefulSetStatus"),
    ("DaemonSet", "DaemonSetStatus"),
    ("Job", job::STATUS),
    ("CronJob", cron_job::STATUS),
    ("PodDisruptionBudget", disruption::STATUS),
];
/// How long an object whose controller is gone waits before it is deleted (its controller
/// may only not have reached this host yet).
const ORPHAN_GRACE: Duration = Duration::from_secs(5);
/// A pass at least this often (readiness reported, hosts lost), and at most this often.
const RESYNC: Duration = Duration::from_secs(1);
const SETTLE: Duration = Duration::from_millis(20);
/// Claims (local volumes, bound to a host): StatefulSets' `volumeClaimTemplates` and
/// stand-alone ones.
const CLAIM: &str = "PersistentVolumeClaim";

pub fn spawn(cluster: Cluster, liveness: Liveness, events: Recorder, pools: super::services::Pools) {
    tokio::spawn(async move {
        let mut changes = cluster.changes();
        let mut orphans: BTreeMap<Key, Instant> = BTreeMap::new();
        let mut ready_since: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            if let Err(e) = pass(&cluster, &liveness, &events, &pools, &mut orphans, &mut ready_since).await {
                warn!(error = %e, "workload controllers could not read the cluster state");
            }
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(RESYNC) => {}
            }
            tokio::time::sleep(SETTLE).await;
        }
        debug!("workload controllers ended");
    });
}

/// The state's pods with what their hosts reported (`ready_for_secs` left 0): ready, phase
/// and restarts from the report of the host each is placed on, `lost` when `dead` holds that
/// host.
pub fn pod_states(pods: &[Listed], statuses: &[Listed], dead: &BTreeSet<String>) -> Vec<(Key, PodState)> {
    let reports = cpods::reports(statuses);
    pods.iter()
        .filter_map(|l| {
            let pod = cpods::decode(&l.body).ok()?;
            let (node, uid) = cpods::placement(&pod);
            let lost = dead.contains(node);
            let report = reports.get(uid).filter(|r| r.node == node);
            let ready = !lost && report.is_some_and(|r| r.all_ready);
            let phase = report.and_then(|r| r.pod_status["phase"].as_str()).unwrap_or_default().to_owned();
            let restarts = report.map_or(0, |r| r.restarts);
            Some((l.key.clone(), PodState { pod, ready, ready_for_secs: 0, phase, restarts, lost }))
        })
        .collect()
}

/// The hosts with a Node record not in `dead` (`sched::dead_nodes`), with their
/// rendezvous hashes: who may own an object.
pub fn alive_hosts(nodes: &[Listed], dead: &BTreeSet<String>) -> Vec<(String, u64)> {
    nodes
        .iter()
        .map(|l| l.key.name.clone())
        .filter(|n| !dead.contains(n))
        .map(|n| {
            let h = rank::hash_str(&n);
            (n, h)
        })
        .collect()
}

fn decode<T: serde::de::DeserializeOwned>(l: &Listed) -> Option<T> {
    serde_json::from_slice(&l.body).ok()
}

fn key_text(k: &Key) -> String {
    format!("{}/{}/{}", k.kind, k.namespace, k.name)
}

async fn pass(
    cluster: &Cluster,
    liveness: &Liveness,
    events: &Recorder,
    pools: &super::services::Pools,
    orphans: &mut BTreeMap<Key, Instant>,
    ready_since: &mut BTreeMap<String, Instant>,
) -> Result<(), String> {
    let now = Instant::now();
    let mut kinds: Vec<&'static str> = vec![super::nodes::KIND, POD, POD_STATUS, CLAIM, "Service"];
    for (k, s) in STATUS_KINDS {
        kinds.extend([k, s]);
    }
    let (_, items) = cluster.snapshot(&kinds).await.map_err(|e| e.to_string())?;
    let mut by_kind: BTreeMap<String, Vec<Listed>> = BTreeMap::new();
    for l in items {
        by_kind.entry(l.key.kind.clone()).or_default().push(l);
    }
    let of = |k: &str| by_kind.get(k).map_or(&[][..], Vec::as_slice);
    let dead = super::sched::dead_nodes(of(super::nodes::KIND), liveness);
    let hosts = alive_hosts(of(super::nodes::KIND), &dead);
    let me = cluster.node();
    let owns = |k: &Key| {
        rank::owner(rank::hash_str(&key_text(k)), hosts.iter().map(|(h, x)| (h, *x))).map(String::as_str)
            == Some(me)
    };
    let existing: BTreeMap<Key, &Listed> = by_kind.values().flatten().map(|l| (l.key.clone(), l)).collect();

    let mut pods = pod_states(of(POD), of(POD_STATUS), &dead);
    for (_, p) in pods.iter_mut().filter(|(_, p)| p.ready) {
        let since = *ready_since.entry(p.uid().to_owned()).or_insert(now);
        p.ready_for_secs = now.duration_since(since).as_secs();
    }
    // When this host first saw each pod ready (`minReadySeconds` counts from there: its own
    // clock, whatever the pod's host says).
    let ready_uids: BTreeSet<&str> =
        pods.iter().filter(|(_, p)| p.ready).filter_map(|(_, p)| p.pod.metadata.uid.as_deref()).collect();
    ready_since.retain(|uid, _| ready_uids.contains(uid.as_str()));
    let mut controlled: BTreeMap<String, Vec<&PodState>> = BTreeMap::new();
    for (_, p) in &pods {
        if let Some(uid) = controller_uid(&p.pod.metadata) {
            controlled.entry(uid.to_owned()).or_default().push(p);
        }
    }
    let deployments: Vec<(Key, Deployment)> =
        of("Deployment").iter().filter_map(|l| Some((l.key.clone(), decode(l)?))).collect();
    let rses: Vec<(Key, ReplicaSet)> =
        of("ReplicaSet").iter().filter_map(|l| Some((l.key.clone(), decode(l)?))).collect();
    let sets: Vec<(Key, StatefulSet)> =
        of("StatefulSet").iter().filter_map(|l| Some((l.key.clone(), decode(l)?))).collect();
    let daemons: Vec<(Key, DaemonSet)> =
        of("DaemonSet").iter().filter_map(|l| Some((l.key.clone(), decode(l)?))).collect();
    let jobs: Vec<(Key, Job)> = of("Job").iter().filter_map(|l| Some((l.key.clone(), decode(l)?))).collect();
    let crons: Vec<(Key, CronJob)> =
        of("CronJob").iter().filter_map(|l| Some((l.key.clone(), decode(l)?))).collect();
    // Every host with a Node record, dead ones too (a DaemonSet's pod waits for its host).
    let facts: BTreeMap<String, beemesh_state::sched::HostFacts> = of(super::nodes::KIND)
        .iter()
        .filter_map(|l| Some((l.key.name.clone(), super::sched::needs::host_facts(&decode::<Value>(l)?)?)))
        .collect();

    let d_uids: BTreeSet<&str> = deployments.iter().filter_map(|(_, d)| d.metadata.uid.as_deref()).collect();
    let mut writes: Vec<Write> = Vec::new();
    let mut made: Vec<(Key, u64)> = Vec::new();
    for (key, d) in deployments.iter().filter(|(k, _)| owns(k)) {
        let uid = d.metadata.uid.as_deref().unwrap_or("");
        let mine: Vec<&ReplicaSet> =
            rses.iter().map(|(_, r)| r).filter(|r| controller_uid(&r.metadata) == Some(uid)).collect();
        debug!(deployment = %key_text(key), replica_sets = mine.len(), "deployment pass");
        let written_ms = existing.get(key).map_or(0, |l| l.written_ms);
        for w in replicas::deployment(d, &mine, &controlled) {
            let rs = Key::new(w.kind, w.namespace.as_str(), w.name.as_str());
            if w.kind == "ReplicaSet" && w.body.is_some() && !existing.contains_key(&rs) {
                made.push((rs, written_ms));
            }
            writes.push(w);
        }
    }
    // A ReplicaSet deleted after its Deployment was last written is not made again at once:
    // the Deployment's own delete is on its way (the cascade deletes it first, but a peer's
    // messages may come in another order). One a user deleted comes back after the grace.
    let wall = super::cluster::now_ms();
    let deleted =
        cluster.deleted(made.iter().map(|(k, _)| k.clone()).collect()).await.map_err(|e| e.to_string())?;
    let held_back: BTreeSet<Key> = made
        .into_iter()
        .filter(|(k, since)| {
            deleted
                .get(k)
                .is_some_and(|at| at > since && wall.saturating_sub(*at) < ORPHAN_GRACE.as_millis() as u64)
        })
        .map(|(k, _)| k)
        .collect();
    writes.retain(|w| {
        let key = Key::new(w.kind, w.namespace.as_str(), w.name.as_str());
        let keep = !held_back.contains(&key);
        if !keep {
            debug!(object = %key_text(&key), "not made again yet: deleted after its deployment was written");
        }
        keep
    });
    // A ReplicaSet whose Deployment is not here (deleted, or not arrived yet) is left alone:
    // it is collected below, or its Deployment comes.
    let orphaned = |rs: &ReplicaSet| controller_uid(&rs.metadata).is_some_and(|u| !d_uids.contains(u));
    // Scale-downs honour the disruption budgets; a rollout's (an old revision's) does not.
    let all_pods: Vec<&PodState> = pods.iter().map(|(_, p)| p).collect();
    let pdbs: Vec<k8s_openapi::api::policy::v1::PodDisruptionBudget> =
        of("PodDisruptionBudget").iter().filter_map(decode).collect();
    let pdb_refs: Vec<&k8s_openapi::api::policy::v1::PodDisruptionBudget> = pdbs.iter().collect();
    let budgets = disruption::Budgets { pdbs: &pdb_refs, pods: &all_pods };
    let newest: BTreeMap<&str, i64> = rses.iter().fold(BTreeMap::new(), |mut m, (_, r)| {
        if let Some(owner) = controller_uid(&r.metadata) {
            let rev = m.entry(owner).or_insert(i64::MIN);
            *rev = (*rev).max(replicas::revision_of(r));
        }
        m
    });
    for (_, rs) in rses.iter().filter(|(k, rs)| owns(k) && !orphaned(rs)) {
        let mine = controlled.get(rs.metadata.uid.as_deref().unwrap_or("")).cloned().unwrap_or_default();
        let current = controller_uid(&rs.metadata)
            .is_none_or(|owner| newest.get(owner).is_some_and(|rev| replicas::revision_of(rs) >= *rev));
        writes.extend(replicas::replica_set(rs, &mine, current.then_some(budgets)));
    }
    for (_, s) in sets.iter().filter(|(k, _)| owns(k)) {
        let mine = controlled.get(s.metadata.uid.as_deref().unwrap_or("")).cloned().unwrap_or_default();
        let ns = s.metadata.namespace.as_deref().unwrap_or("default");
        let claims: BTreeMap<String, String> = of(CLAIM)
            .iter()
            .filter(|l| l.key.namespace == ns)
            .filter_map(|l| {
                let v: Value = decode(l)?;
                let node = v["metadata"]["annotations"][stateful::SELECTED_NODE].as_str()?.to_owned();
                Some((l.key.name.clone(), node))
            })
            .collect();
        writes.extend(stateful::stateful_set(s, &mine, &claims, budgets));
    }
    for (_, d) in daemons.iter().filter(|(k, _)| owns(k)) {
        let mine = controlled.get(d.metadata.uid.as_deref().unwrap_or("")).cloned().unwrap_or_default();
        writes.extend(daemon::daemon_set(d, &facts, &mine));
    }
    let job_records: BTreeMap<(&str, &str), Value> = of(job::STATUS)
        .iter()
        .filter_map(|l| Some(((l.key.namespace.as_str(), l.key.name.as_str()), decode::<Value>(l)?)))
        .collect();
    // Jobs and CronJobs act only where most of the mesh's hosts are heard from (neither
    // suspected nor dead): a host cut off from the others (which soon owns every object by
    // its own count) must not run a Job's pod or a CronJob's run that the larger side runs too.
    let unheard = super::sched::unheard_nodes(of(super::nodes::KIND), liveness).len();
    let known = of(super::nodes::KIND).len();
    let majority = known.saturating_sub(unheard) * 2 > known;
    for (key, j) in jobs.iter().filter(|(k, _)| majority && owns(k)) {
        let mine = controlled.get(j.metadata.uid.as_deref().unwrap_or("")).cloned().unwrap_or_default();
        let record = job_records.get(&(key.namespace.as_str(), key.name.as_str()));
        writes.extend(job::job(j, &mine, record, wall));
    }
    let owns_cron = |k: &Key| majority && owns(k);
    writes.extend(
        cron_jobs(cluster, &crons, &jobs, &job_records, of(cron_job::STATUS), &existing, wall, &owns_cron)
            .await?,
    );
    let standalone: Vec<(&str, &str, Value)> = of(CLAIM)
        .iter()
        .filter(|l| owns(&l.key))
        .filter_map(|l| Some((l.key.namespace.as_str(), l.key.name.as_str(), decode::<Value>(l)?)))
        .collect();
    let refs: Vec<(&str, &str, &Value)> = standalone.iter().map(|(ns, n, v)| (*ns, *n, v)).collect();
    writes.extend(claims::bind(&refs, &all_pods));
    for l in of("PodDisruptionBudget").iter().filter(|l| owns(&l.key)) {
        if let Some(pdb) = decode::<k8s_openapi::api::policy::v1::PodDisruptionBudget>(l) {
            writes.push(disruption::status(&pdb, disruption::budget(&pdb, &all_pods)));
        }
    }
    writes.extend(moved_services(of("Service"), pools, |k| owns(k)));

    // Orphans: ReplicaSets of no Deployment, pods of no ReplicaSet, StatefulSet or DaemonSet,
    // status records of no object; each with its controller's key.
    let owner_uids: BTreeSet<&str> = rses
        .iter()
        .filter_map(|(_, r)| r.metadata.uid.as_deref())
        .chain(sets.iter().filter_map(|(_, s)| s.metadata.uid.as_deref()))
        .chain(daemons.iter().filter_map(|(_, d)| d.metadata.uid.as_deref()))
        .chain(jobs.iter().filter_map(|(_, j)| j.metadata.uid.as_deref()))
        .collect();
    let controller_key = |key: &Key, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        let owner = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true))?;
        Some(Key::new(owner.kind.as_str(), key.namespace.as_str(), owner.name.as_str()))
    };
    let mut candidates: BTreeMap<Key, Option<Key>> = BTreeMap::new();
    for (key, rs) in &rses {
        if orphaned(rs) {
            candidates.insert(key.clone(), controller_key(key, &rs.metadata));
        }
    }
    let cron_uids: BTreeSet<&str> = crons.iter().filter_map(|(_, c)| c.metadata.uid.as_deref()).collect();
    for (key, j) in &jobs {
        if controller_uid(&j.metadata).is_some_and(|u| !cron_uids.contains(u)) {
            candidates.insert(key.clone(), controller_key(key, &j.metadata));
        }
    }
    for (key, p) in &pods {
        let kind = p.pod.metadata.owner_references.iter().flatten().find(|o| o.controller == Some(true));
        let ours = kind
            .is_some_and(|o| matches!(o.kind.as_str(), "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job"));
        if ours && controller_uid(&p.pod.metadata).is_some_and(|u| !owner_uids.contains(u)) {
            candidates.insert(key.clone(), controller_key(key, &p.pod.metadata));
        }
    }
    for (kind, status_kind) in STATUS_KINDS {
        for l in of(status_kind) {
            let object = Key::new(kind, l.key.namespace.as_str(), l.key.name.as_str());
            let uid = decode::<Value>(l).and_then(|v| v["uid"].as_str().map(str::to_owned));
            let alive = existing
                .get(&object)
                .and_then(|o| decode::<Value>(o))
                .is_some_and(|o| o["metadata"]["uid"].as_str().is_some_and(|u| Some(u.to_owned()) == uid));
            if !alive {
                candidates.insert(l.key.clone(), Some(object));
            }
        }
    }
    orphans.retain(|k, _| candidates.contains_key(k));
    // A controller deleted after the object was written (its tombstone here, newer) takes
    // what it made at once: Kubernetes' background cascade, each level deleted by a host that
    // has seen the level above go, so no controller sees its objects vanish while it still
    // stands. One merely not here yet gets the grace, and so does one whose tombstone is older
    // than the object: a controller deleted and made again under the same name, whose new
    // self has not arrived yet.
    let owners: Vec<Key> = candidates.values().flatten().cloned().collect();
    let gone = cluster.deleted(owners).await.map_err(|e| e.to_string())?;
    for (key, owner) in candidates {
        let since = *orphans.entry(key.clone()).or_insert(now);
        let written_ms = existing.get(&key).map_or(u64::MAX, |l| l.written_ms);
        let deleted_ms = owner.and_then(|o| gone.get(&o).copied());
        if orphan_due(deleted_ms, written_ms, now.duration_since(since)) && owns(&key) {
            info!(object = %key_text(&key), "deleting an object whose controller is gone");
            if let Err(e) = cluster.put(key.clone(), None) {
                warn!(object = %key_text(&key), error = %e, "orphan not deleted");
            }
            orphans.remove(&key);
        }
    }

    for w in writes {
        let key = Key::new(w.kind, w.namespace.as_str(), w.name.as_str());
        let held = existing.get(&key).copied();
        let event =
            write_event(w.kind, &w.namespace, held.and_then(decode::<Value>).as_ref(), w.body.as_ref());
        let body = match (w.body, held) {
            (None, None) => continue,
            (None, Some(_)) => None,
            (Some(v), held) => match prepared(w.kind, &w.namespace, v, held) {
                Some(b) => Some(b),
                None => continue,
            },
        };
        debug!(object = %key_text(&key), delete = body.is_none(), "controller write");
        if let Err(e) = cluster.put(key.clone(), body) {
            warn!(object = %key_text(&key), error = %e, "controller write failed");
            continue;
        }
        if let Some(e) = event {
            events.normal(e.component, &e.about, e.reason, e.message);
        }
    }
    Ok(())
}

/// The writes of the CronJobs this host owns: each one's due run (unless a Job of its name
/// exists or has a tombstone here), the Jobs it replaces and prunes, its status record.
#[allow(clippy::too_many_arguments)]
async fn cron_jobs(
    cluster: &Cluster,
    crons: &[(Key, CronJob)],
    jobs: &[(Key, Job)],
    job_records: &BTreeMap<(&str, &str), Value>,
    records: &[Listed],
    existing: &BTreeMap<Key, &Listed>,
    wall: u64,
    owns: &impl Fn(&Key) -> bool,
) -> Result<Vec<Write>, String> {
    let records: BTreeMap<(&str, &str), Value> = records
        .iter()
        .filter_map(|l| Some(((l.key.namespace.as_str(), l.key.name.as_str()), decode::<Value>(l)?)))
        .collect();
    let now = i64::try_from(wall).unwrap_or(i64::MAX);
    type Owned<'a> = (&'a Key, &'a CronJob, Option<&'a Value>, Option<cron_job::Run>);
    let mine: Vec<Owned<'_>> = crons
        .iter()
        .filter(|(k, _)| owns(k))
        .map(|(k, c)| {
            let record = records.get(&(k.namespace.as_str(), k.name.as_str()));
            (k, c, record, cron_job::due(c, record, now))
        })
        .collect();
    let names: Vec<Key> = mine
        .iter()
        .filter_map(|(k, _, _, run)| Some(Key::new("Job", k.namespace.as_str(), run.as_ref()?.1.as_str())))
        .collect();
    let tombstones = cluster.deleted(names).await.map_err(|e| e.to_string())?;
    let mut writes = Vec::new();
    for (key, c, record, run) in mine {
        let uid = c.metadata.uid.as_deref().unwrap_or("");
        let used = run.as_ref().is_some_and(|(_, name)| {
            let k = Key::new("Job", key.namespace.as_str(), name.as_str());
            existing.contains_key(&k) || tombstones.contains_key(&k)
        });
        let made: Vec<(&Job, Option<&Value>)> = jobs
            .iter()
            .filter(|(_, j)| controller_uid(&j.metadata) == Some(uid))
            .map(|(k, j)| (j, job_records.get(&(k.namespace.as_str(), k.name.as_str()))))
            .collect();
        if let Some((at, name)) = run.as_ref().filter(|_| !used) {
            debug!(cronjob = %key_text(key), job = %name, scheduled_ms = at, "cron job due");
        }
        writes.extend(cron_job::cron_job(c, &made, record, run, used));
    }
    Ok(writes)
}

/// Whether an orphan (written at `written_ms`, an orphan here for `orphan_for`) is deleted now:
/// at once when its controller's tombstone (deleted at `deleted_ms`) is newer than it (the
/// cascade), else after [`ORPHAN_GRACE`] (its controller may not have arrived yet, or was
/// deleted before it and made again under the same name).
fn orphan_due(deleted_ms: Option<u64>, written_ms: u64, orphan_for: Duration) -> bool {
    deleted_ms.is_some_and(|at| at > written_ms) || orphan_for >= ORPHAN_GRACE
}

/// Services that share a cluster IP or node port with one created before them (two hosts
/// allocated at once, `app::services`): each owned here gets new ones.
fn moved_services(
    listed: &[Listed],
    pools: &super::services::Pools,
    owns: impl Fn(&Key) -> bool,
) -> Vec<Write> {
    use k8s_openapi::api::core::v1::Service;
    let services: Vec<(Key, String, String, Service)> = listed
        .iter()
        .filter_map(|l| {
            let svc: Service = decode(l)?;
            let created =
                svc.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
            Some((l.key.clone(), format!("{}/{}", l.key.namespace, l.key.name), created, svc))
        })
        .collect();
    let rows: Vec<(String, String, Service)> =
        services.iter().map(|(_, k, c, s)| (k.clone(), c.clone(), s.clone())).collect();
    let losers = super::services::losers(&rows);
    let mut writes = Vec::new();
    for (key, text, created, svc) in services.iter().filter(|(k, t, _, _)| losers.contains(t) && owns(k)) {
        let taken = super::services::Taken::of(services.iter().map(|(_, k, _, s)| (k.as_str(), s)), text);
        let mut moved = svc.clone();
        super::services::release_shared(&mut moved, text, created, &rows);
        match super::services::assign(&mut moved, text, None, &taken, pools) {
            Ok(()) => {
                info!(service = %text, ip = ?moved.spec.as_ref().and_then(|s| s.cluster_ip.clone()), "service's address was taken by an older one: moved");
                let body = serde_json::to_value(&moved).unwrap_or_default();
                writes.push(Write {
                    kind: "Service",
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    body: Some(body),
                });
            }
            Err(e) => {
                warn!(service = %text, error = %e, "service shares an address and none is left to move it to")
            }
        }
    }
    writes
}

/// An event a controller's write makes, in Kubernetes' words.
#[derive(Debug, PartialEq, Eq)]
struct WriteEvent {
    component: &'static str,
    about: Involved,
    reason: &'static str,
    message: String,
}

/// The event of writing `new` (`None`: deleting) over `held`: a pod created or deleted by its
/// ReplicaSet, StatefulSet or DaemonSet; a Deployment's ReplicaSet scaled.
fn write_event(kind: &str, namespace: &str, held: Option<&Value>, new: Option<&Value>) -> Option<WriteEvent> {
    let object = new.or(held)?;
    let name = object["metadata"]["name"].as_str()?;
    let owner = object["metadata"]["ownerReferences"].as_array()?.iter().find(|o| o["controller"] == true)?;
    let about = Involved {
        kind: owner["kind"].as_str()?.to_owned(),
        namespace: namespace.to_owned(),
        name: owner["name"].as_str()?.to_owned(),
        uid: owner["uid"].as_str().map(str::to_owned),
    };
    let component = match about.kind.as_str() {
        "ReplicaSet" => "replicaset-controller",
        "StatefulSet" => "statefulset-controller",
        "DaemonSet" => "daemonset-controller",
        "Deployment" => "deployment-controller",
        "Job" => "job-controller",
        _ => return None,
    };
    let (reason, message) = match (kind, held, new, about.kind.as_str()) {
        (POD, None, Some(_), "StatefulSet") => {
            ("SuccessfulCreate", format!("create Pod {name} in StatefulSet {} successful", about.name))
        }
        (POD, Some(_), None, "StatefulSet") => {
            ("SuccessfulDelete", format!("delete Pod {name} in StatefulSet {} successful", about.name))
        }
        (POD, None, Some(_), _) => ("SuccessfulCreate", format!("Created pod: {name}")),
        (POD, Some(_), None, _) => ("SuccessfulDelete", format!("Deleted pod: {name}")),
        ("ReplicaSet", _, Some(new), "Deployment") => {
            let before = held.map(|h| h["spec"]["replicas"].as_i64().unwrap_or(1));
            let after = new["spec"]["replicas"].as_i64().unwrap_or(1);
            match before {
                // Made with no pods (a rollout that cannot surge): no event, as in Kubernetes.
                None if after == 0 => return None,
                None => ("ScalingReplicaSet", format!("Scaled up replica set {name} to {after}")),
                Some(b) if b < after => {
                    ("ScalingReplicaSet", format!("Scaled up replica set {name} from {b} to {after}"))
                }
                Some(b) if b > after => {
                    ("ScalingReplicaSet", format!("Scaled down replica set {name} from {b} to {after}"))
                }
                Some(_) => return None,
            }
        }
        _ => return None,
    };
    Some(WriteEvent { component, about, reason, message })
}

/// The body to write for `new` over `held` (server-side metadata kept or filled in), or
/// `None` when nothing changes. A pod that exists is never rewritten by a controller.
fn prepared(kind: &str, namespace: &str, mut new: Value, held: Option<&Listed>) -> Option<Bytes> {
    let held: Option<Value> = held.and_then(|l| serde_json::from_slice(&l.body).ok());
    match kind {
        POD => {
            if held.is_some() {
                return None;
            }
            let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(new).ok()?;
            let created = super::pods::format_time(now_secs());
            return Some(cpods::stored(&pod, namespace, &super::apply::new_uid(), &created, None));
        }
        "ReplicaSet" | "Job" => {
            let meta = &mut new["metadata"];
            match &held {
                Some(h) => {
                    for f in ["uid", "creationTimestamp"] {
                        meta[f] = h["metadata"][f].clone();
                    }
                    let generation = h["metadata"]["generation"].as_i64().unwrap_or(1);
                    let changed = h["spec"] != new["spec"];
                    new["metadata"]["generation"] = (generation + i64::from(changed)).into();
                }
                None => {
                    // A CronJob's Job comes with a uid of its own (the same from every host).
                    if !meta["uid"].is_string() {
                        meta["uid"] = super::apply::new_uid().into();
                    }
                    meta["creationTimestamp"] = super::pods::format_time(now_secs()).into();
                    meta["generation"] = 1.into();
                }
            }
        }
        _ => {}
    }
    strip_nulls(&mut new);
    if held.as_ref() == Some(&new) {
        return None;
    }
    Some(Bytes::from(serde_json::to_vec(&new).unwrap_or_default()))
}

/// Drops `null` members (k8s-openapi omits them when it serialises; a JSON `Value` we build
/// may carry them), so a body compares equal to the one it was read from.
fn strip_nulls(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, x| !x.is_null());
            m.values_mut().for_each(strip_nulls);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `get`'s entries of a controlled kind with their status records merged in (a record for
/// another uid, of an object deleted and applied again, is not shown).
pub fn merge_status(entries: &mut [crate::api::ObjectEntry], statuses: &[Listed]) {
    let by_name: BTreeMap<(&str, &str), Value> = statuses
        .iter()
        .filter_map(|l| Some(((l.key.namespace.as_str(), l.key.name.as_str()), decode::<Value>(l)?)))
        .collect();
    for e in entries {
        let Some(record) = by_name.get(&(e.namespace.as_str(), e.name.as_str())) else { continue };
        if record["uid"] == e.object["metadata"]["uid"] {
            e.object["status"] = record["status"].clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphan_goes_at_once_only_when_its_controller_was_deleted_after_it() {
        let fresh = Duration::ZERO;
        // The cascade: the ReplicaSet's tombstone (t=2000) is newer than the pod (t=1000).
        assert!(orphan_due(Some(2_000), 1_000, fresh));
        // Deleted and made again under the same name: the old tombstone (t=500) says nothing
        // of a pod written at t=1000 whose new ReplicaSet has not arrived yet.
        assert!(!orphan_due(Some(500), 1_000, fresh));
        assert!(orphan_due(Some(500), 1_000, ORPHAN_GRACE));
        // A controller not here at all: the grace.
        assert!(!orphan_due(None, 1_000, Duration::from_secs(4)));
        assert!(orphan_due(None, 1_000, ORPHAN_GRACE));
    }

    #[test]
    fn of_two_services_given_one_address_at_once_the_younger_moves() {
        let svc = |name: &str, created: &str| Listed {
            key: Key::new("Service", "default", name),
            body: Bytes::from(
                serde_json::json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": "default", "creationTimestamp": created},
                    "spec": {"clusterIP": "10.96.0.9", "clusterIPs": ["10.96.0.9"], "ports": [{"port": 80}]}})
                .to_string(),
            ),
            written_ms: 0,
        };
        let listed = [svc("old", "2026-11-30T10:00:00Z"), svc("new", "2026-11-30T10:00:01Z")];
        let pools = super::super::services::Pools {
            cluster_ips: super::super::services::Pool::cidr("10.96.0.0/16").expect("cidr"),
            node_ports: super::super::services::Pool::node_ports(),
        };
        assert!(moved_services(&listed, &pools, |_| false).is_empty(), "only the owner moves it");
        let writes = moved_services(&listed, &pools, |_| true);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].name, "new");
        let body = writes[0].body.clone().unwrap_or_default();
        let ip = body["spec"]["clusterIP"].as_str().unwrap_or_default();
        assert!(ip.starts_with("10.96.") && ip != "10.96.0.9", "{body}");
        assert_eq!(body["spec"]["clusterIPs"][0], ip);
        assert_eq!(body["metadata"]["creationTimestamp"], "2026-11-30T10:00:01Z");
    }

    #[test]
    fn writes_make_kubernetes_events_on_their_controller() {
        let pod = |owner: &str| {
            serde_json::json!({"metadata": {"name": "web-0", "ownerReferences": [
                {"kind": owner, "name": "web", "uid": "u-1", "controller": true}]}})
        };
        let e = write_event(POD, "default", None, Some(&pod("StatefulSet"))).expect("created");
        assert_eq!(
            (e.reason, e.message.as_str()),
            ("SuccessfulCreate", "create Pod web-0 in StatefulSet web successful")
        );
        assert_eq!((e.about.kind.as_str(), e.about.uid.as_deref()), ("StatefulSet", Some("u-1")));
        let e = write_event(POD, "default", Some(&pod("ReplicaSet")), None).expect("deleted");
        assert_eq!(
            (e.reason, e.component, e.message.as_str()),
            ("SuccessfulDelete", "replicaset-controller", "Deleted pod: web-0")
        );
        let rs = |n: i64| {
            serde_json::json!({"metadata": {"name": "web-abc", "ownerReferences": [
                {"kind": "Deployment", "name": "web", "uid": "d-1", "controller": true}]}, "spec": {"replicas": n}})
        };
        let e = write_event("ReplicaSet", "default", None, Some(&rs(3))).expect("new");
        assert_eq!(e.message, "Scaled up replica set web-abc to 3");
        let e = write_event("ReplicaSet", "default", Some(&rs(3)), Some(&rs(1))).expect("down");
        assert_eq!(e.message, "Scaled down replica set web-abc from 3 to 1");
        assert_eq!(write_event("ReplicaSet", "default", Some(&rs(3)), Some(&rs(3))), None);
        assert_eq!(write_event("ReplicaSet", "default", None, Some(&rs(0))), None);
        let bare = serde_json::json!({"metadata": {"name": "p"}});
        assert_eq!(write_event(POD, "default", None, Some(&bare)), None);
    }

    #[test]
    fn a_replica_set_keeps_its_identity_and_counts_spec_changes() {
        let held_body = serde_json::json!({
            "metadata": {"name": "web-x", "uid": "u-1", "creationTimestamp": "2026-11-30T00:00:00Z", "generation": 1},
            "spec": {"replicas": 1},
        });
        let held = Listed {
            key: Key::new("ReplicaSet", "default", "web-x"),
            body: Bytes::from(serde_json::to_vec(&held_body).expect("json")),
            written_ms: 0,
        };
        let same = serde_json::json!({"metadata": {"name": "web-x", "uid": null}, "spec": {"replicas": 1}});
        assert!(prepared("ReplicaSet", "default", same, Some(&held)).is_none(), "nothing changed");
        let scaled = serde_json::json!({"metadata": {"name": "web-x"}, "spec": {"replicas": 3}});
        let body = prepared("ReplicaSet", "default", scaled, Some(&held)).expect("a write");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            (v["metadata"]["uid"].as_str(), v["metadata"]["generation"].as_i64()),
            (Some("u-1"), Some(2))
        );
        let fresh = prepared("ReplicaSet", "default", serde_json::json!({"metadata": {"name": "n"}}), None)
            .expect("new");
        let v: Value = serde_json::from_slice(&fresh).expect("json");
        assert_eq!(v["metadata"]["uid"].as_str().map(str::len), Some(36));
    }
}
