//! Kubernetes Events: what happened to an object, written into the cluster state as records of
//! kind [`KIND`] in the object's namespace by the host where it happened, so `events` and
//! `describe` on any host show them. Written by the scheduler (`Scheduled` with the tender's
//! candidates and bids, `FailedScheduling`, `NodeLost` when a lost host's pod is tendered
//! again, `SchedulerName`), the workload controllers (`SuccessfulCreate`, `SuccessfulDelete`,
//! `ScalingReplicaSet`) and the pod runtime (`Started`, `Failed`, `Killing`).
//!
//! As Kubernetes' recorder does, repeats of one (object, reason, message) from one host update
//! one record (`count`, `lastTimestamp`): its name is derived from them. Events are kept for
//! [`TTL`] (kube-apiserver's default, one hour) after they were last seen, then deleted by the
//! owner of their key (rendezvous over the alive hosts). Event writes do not wake the
//! scheduler, the controllers or the reconciler (`cluster`: a quiet kind).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use beemesh_state::sched::rank;
use beemesh_state::Key;
use bytes::Bytes;
use serde_json::{json, Value};
use tracing::{debug, warn};

use super::cluster::Cluster;
use super::liveness::Liveness;

pub const KIND: &str = "Event";
/// How long an event is kept after it was last seen.
pub const TTL: Duration = Duration::from_secs(3600);
/// How often the owner of events looks for expired ones.
const SWEEP: Duration = Duration::from_secs(60);
/// How many (object, reason, message) this host remembers counts for.
const REMEMBERED: usize = 4096;

/// The object an event is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Involved {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

impl Involved {
    pub fn pod(namespace: &str, name: &str, uid: Option<&str>) -> Involved {
        Involved {
            kind: "Pod".into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.map(Into::into),
        }
    }

    fn api_version(&self) -> &'static str {
        match self.kind.as_str() {
            "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" => "apps/v1",
            "Job" | "CronJob" => "batch/v1",
            "PodDisruptionBudget" => "policy/v1",
            _ => "v1",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

/// This host's event recorder (cloned by every part that records; the counts are shared).
#[derive(Clone, Debug)]
pub struct Recorder {
    cluster: Cluster,
    seen: Arc<Mutex<Seen>>,
}

/// Counts of the events this host wrote, by record name; the oldest forgotten first.
#[derive(Debug, Default)]
struct Seen {
    counts: BTreeMap<String, (u64, String)>,
    order: VecDeque<String>,
}

impl Recorder {
    pub fn new(cluster: Cluster) -> Recorder {
        Recorder { cluster, seen: Arc::default() }
    }

    pub fn normal(&self, component: &str, about: &Involved, reason: &str, message: impl Into<String>) {
        self.record(component, about, Type::Normal, reason, message.into());
    }

    pub fn warning(&self, component: &str, about: &Involved, reason: &str, message: impl Into<String>) {
        self.record(component, about, Type::Warning, reason, message.into());
    }

    fn record(&self, component: &str, about: &Involved, kind: Type, reason: &str, message: String) {
        let host = self.cluster.node().to_owned();
        let name = record_name(about, &host, reason, &message);
        let now = now_micros();
        let (count, first) = {
            let mut seen = self.seen.lock().expect("event counts lock");
            let seen = &mut *seen;
            let entry = seen.counts.entry(name.clone()).or_insert_with(|| {
                seen.order.push_back(name.clone());
                (0, stamp(now))
            });
            entry.0 += 1;
            let out = entry.clone();
            while seen.order.len() > REMEMBERED {
                if let Some(old) = seen.order.pop_front() {
                    seen.counts.remove(&old);
                }
            }
            out
        };
        let event = Event {
            component,
            host: &host,
            about,
            kind,
            reason,
            message: &message,
            count,
            first: &first,
            now,
        };
        debug!(object = %format!("{}/{}", about.kind, about.name), reason, %message, "event");
        let key = Key::new(KIND, about.namespace.as_str(), name.as_str());
        if let Err(e) = self.cluster.put(key, Some(Bytes::from(event.json().to_string()))) {
            warn!(reason, error = %e, "event not recorded");
        }
    }
}

/// One event record's fields.
struct Event<'a> {
    component: &'a str,
    host: &'a str,
    about: &'a Involved,
    kind: Type,
    reason: &'a str,
    message: &'a str,
    count: u64,
    first: &'a str,
    /// Unix microseconds.
    now: u64,
}

impl Event<'_> {
    /// The record as Kubernetes' core/v1 Event.
    fn json(&self) -> Value {
        let a = self.about;
        let name = record_name(a, self.host, self.reason, self.message);
        let mut involved =
            json!({"apiVersion": a.api_version(), "kind": a.kind, "namespace": a.namespace, "name": a.name});
        if let Some(uid) = &a.uid {
            involved["uid"] = uid.as_str().into();
        }
        json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": a.namespace, "creationTimestamp": self.first},
            "involvedObject": involved,
            "reason": self.reason,
            "message": self.message,
            "type": match self.kind { Type::Normal => "Normal", Type::Warning => "Warning" },
            "source": {"component": self.component, "host": self.host},
            "firstTimestamp": self.first,
            "lastTimestamp": stamp(self.now),
            "eventTime": micro_stamp(self.now),
            "count": self.count,
            "reportingComponent": self.component,
            "reportingInstance": self.host,
        })
    }
}

/// `<object>.<16 hex>`: the same for the same object, host, reason and message (repeats
/// update one record), different for anything else.
pub fn record_name(about: &Involved, host: &str, reason: &str, message: &str) -> String {
    let h = rank::hash_str(&format!("{}\0{}\0{}\0{}\0{}", about.kind, about.name, host, reason, message));
    format!("{}.{h:016x}", about.name)
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

fn stamp(micros: u64) -> String {
    super::pods::format_time(micros / 1_000_000)
}

/// RFC 3339 with microseconds (Kubernetes' MicroTime).
fn micro_stamp(micros: u64) -> String {
    let secs = stamp(micros);
    format!("{}.{:06}Z", secs.trim_end_matches('Z'), micros % 1_000_000)
}

/// When the event was last seen, Unix seconds.
pub fn last_seen(event: &Value) -> Option<u64> {
    let t = event["lastTimestamp"].as_str().or_else(|| event["eventTime"].as_str())?;
    super::pods::parse_time(t)
}

/// Deletes, on the host owning each, events not seen for [`TTL`].
pub fn spawn_sweeper(cluster: Cluster, liveness: Liveness) {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SWEEP).await;
            let Ok((_, items)) = cluster.snapshot(&[super::nodes::KIND, KIND]).await else { continue };
            let (nodes, events): (Vec<_>, Vec<_>) = items.into_iter().partition(|l| l.key.kind != KIND);
            let dead = super::sched::dead_nodes(&nodes, &liveness);
            let hosts = super::controllers::alive_hosts(&nodes, &dead);
            let me = cluster.node();
            let now = now_micros() / 1_000_000;
            for l in events {
                let Ok(v) = serde_json::from_slice::<Value>(&l.body) else { continue };
                let expired = last_seen(&v).is_none_or(|t| now.saturating_sub(t) > TTL.as_secs());
                let key_text = format!("{}/{}/{}", l.key.kind, l.key.namespace, l.key.name);
                let owner = rank::owner(rank::hash_str(&key_text), hosts.iter().map(|(h, x)| (h, *x)));
                if expired && owner.map(String::as_str) == Some(me) {
                    let _ = cluster.put(l.key, None);
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_a_kubernetes_event_named_by_what_repeats() {
        let about = Involved::pod("default", "web-0", Some("u-1"));
        let e = Event {
            component: "beemesh-scheduler",
            host: "h1",
            about: &about,
            kind: Type::Normal,
            reason: "Scheduled",
            message: "Successfully assigned default/web-0 to h2",
            count: 2,
            first: "2026-11-30T00:00:00Z",
            now: 1_795_478_400_000_123,
        };
        let v = e.json();
        assert_eq!(v["involvedObject"]["uid"], "u-1");
        assert_eq!(v["involvedObject"]["apiVersion"], "v1");
        assert_eq!(v["count"], 2);
        assert_eq!(v["lastTimestamp"], "2026-11-24T00:00:00Z");
        assert_eq!(v["eventTime"], "2026-11-24T00:00:00.000123Z");
        assert_eq!(v["source"]["host"], "h1");
        let name = v["metadata"]["name"].as_str().unwrap_or("");
        assert!(name.starts_with("web-0.") && name.len() == "web-0.".len() + 16, "{name}");
        // Same object, host, reason, message: the same record; anything else: another.
        assert_eq!(record_name(&about, "h1", "Scheduled", e.message), name);
        assert_ne!(record_name(&about, "h2", "Scheduled", e.message), name);
        assert_ne!(record_name(&about, "h1", "Scheduled", "other"), name);
        assert_eq!(last_seen(&v), Some(1_795_478_400));
    }
}
