//! `get nodes`: the Node records of the cluster state (one per host that ever joined), with
//! kubectl's columns. STATUS is Ready for this host and for hosts this host's failure detector
//! (`app::liveness`) holds alive, NotReady for hosts it suspects or holds dead, or does not know.
//! `peers`: this host, its connected peers and the members it remembers (not connected now,
//! with when they were last seen), the pods the state places on each and what they request;
//! labels and allocatable from their records and the detector's view of each (`-o wide|json`).

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::get::{age, print_value, Output as PodOutput};
use super::{fail, unexpected};
use crate::api::client;
use crate::api::{LiveEntry, PeerEntry, Request, Response};

/// `get nodes [NAME] [-o wide|json|yaml]`.
#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    name: Option<String>,
    #[arg(short, long, value_enum, default_value_t)]
    output: PodOutput,
}

/// How `peers` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PeersOutput {
    #[default]
    Table,
    /// And what each host's pods request of its allocatable cpu, memory and pods (from its
    /// Node record), its labels, and what the failure detector holds about it (alive,
    /// suspect, dead; last heard).
    Wide,
    Json,
}

/// `peers [-o wide|json]`.
pub async fn peers(socket: &Path, output: PeersOutput) -> ExitCode {
    let items = match client::call(socket, &Request::Peers).await {
        Ok(Response::Peers { items }) => items,
        other => return unexpected(other),
    };
    let (records, live): (Vec<Value>, Vec<LiveEntry>) = if output == PeersOutput::Table {
        (Vec::new(), Vec::new())
    } else {
        let peers = items.iter().map(|p| p.peer.clone()).collect();
        let live = match client::call(socket, &Request::Liveness { peers }).await {
            Ok(Response::Liveness { items }) => items,
            other => return unexpected(other),
        };
        let req = Request::ListObjects { kind: "Node".to_owned(), namespace: None };
        let records = match client::call(socket, &req).await {
            Ok(Response::Objects { items }) => items.into_iter().map(|o| o.object).collect(),
            // The cluster state may not be up: peers are shown without their records.
            _ => Vec::new(),
        };
        (records, live)
    };
    let live_of = |p: &PeerEntry| live.iter().find(|l| l.peer == p.peer);
    let record_of = |p: &PeerEntry| {
        records.iter().find(|r| {
            r.pointer("/metadata/annotations/beemesh.io~1peer-id").and_then(Value::as_str) == Some(&p.peer)
                && p.name.as_deref().is_some_and(|n| n == name_of(r))
        })
    };
    if output == PeersOutput::Json {
        let mut out = Vec::new();
        for p in &items {
            let mut v = serde_json::to_value(p).expect("API types always serialise");
            if let (Some(r), Some(obj)) = (record_of(p), v.as_object_mut()) {
                for (field, ptr) in [
                    ("labels", "/metadata/labels"),
                    ("capacity", "/status/capacity"),
                    ("allocatable", "/status/allocatable"),
                ] {
                    obj.insert(field.into(), r.pointer(ptr).cloned().unwrap_or(Value::Null));
                }
            }
            if let (Some(l), Some(obj)) = (live_of(p), v.as_object_mut()) {
                let mut l = serde_json::to_value(l).expect("API types always serialise");
                if let Some(l) = l.as_object_mut() {
                    l.remove("peer");
                    l.remove("thisHost");
                }
                obj.insert("liveness".into(), l);
            }
            out.push(v);
        }
        outln!("{}", serde_json::to_string_pretty(&out).expect("JSON values serialise"));
        return ExitCode::SUCCESS;
    }
    let wide = output == PeersOutput::Wide;
    let extra = |live: &str, heard: &str, cpu: &str, mem: &str, labels: &str| {
        if wide {
            format!(" {live:<8} {heard:<7} {cpu:<12} {mem:<17} {labels}")
        } else {
            String::new()
        }
    };
    let head = format!(
        "{:<20} {:<54} {:<9} {:<8} {:<10} {:<40}{}",
        "NAME",
        "PEER",
        "ATTESTED",
        "PODS",
        "LAST SEEN",
        "ADDRESSES",
        extra("LIVE", "HEARD", "CPU", "MEMORY", "LABELS")
    );
    outln!("{}", head.trim_end());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    for p in &items {
        let name = match (&p.name, p.this_host) {
            (Some(n), true) => format!("{n} (this)"),
            (Some(n), false) => n.clone(),
            (None, _) => "<unattested>".into(),
        };
        let attested = if p.attested { "yes" } else { "no" };
        let r = record_of(p);
        let field = |ptr: &str| r.and_then(|r| r.pointer(ptr)).and_then(Value::as_str).map(str::to_string);
        let labels = r
            .and_then(|r| r.pointer("/metadata/labels"))
            .and_then(Value::as_object)
            .map(|l| {
                l.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_else(|| "-".into());
        let l = live_of(p);
        let (state, heard) = match (p.this_host, l) {
            (true, _) => ("alive", "-".to_string()),
            (false, Some(l)) => (l.state.as_str(), l.last_heard_ms_ago.map_or("-".into(), heard_ago)),
            (false, None) => ("unknown", "-".to_string()),
        };
        let rq = &p.requested;
        // Requested of allocatable (allocatable once the record is known), kubectl's units.
        let of = |requested: String, allocatable: Option<String>| match allocatable {
            Some(a) => format!("{requested}/{a}"),
            None => requested,
        };
        let pods = if wide {
            of(rq.pods.to_string(), field("/status/allocatable/pods"))
        } else {
            rq.pods.to_string()
        };
        let columns = extra(
            state,
            &heard,
            &of(cpu_quantity(rq.cpu_millis), field("/status/allocatable/cpu")),
            &of(memory_quantity(rq.memory_bytes), field("/status/allocatable/memory")),
            &labels,
        );
        let seen = match (p.connected, p.last_seen) {
            (true, _) => "now".to_string(),
            (false, Some(t)) => format!("{} ago", age(Some(now.saturating_sub(t)))),
            (false, None) => "-".to_string(),
        };
        let line = format!(
            "{name:<20} {:<54} {attested:<9} {pods:<8} {seen:<10} {:<40}{columns}",
            p.peer,
            p.addresses.join(",")
        );
        outln!("{}", line.trim_end());
    }
    ExitCode::SUCCESS
}

/// Millicpus as kubectl prints a quantity: whole cpus when whole, else millis.
fn cpu_quantity(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        (millis / 1000).to_string()
    } else {
        format!("{millis}m")
    }
}

/// Bytes in the largest binary unit that divides them (kubectl's `Mi`, `Gi`, ...).
fn memory_quantity(bytes: u64) -> String {
    for (unit, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes != 0 && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod quantity_tests {
    #[test]
    fn quantities_print_as_kubectl_prints_them() {
        assert_eq!(super::cpu_quantity(2000), "2");
        assert_eq!(super::cpu_quantity(250), "250m");
        assert_eq!(super::cpu_quantity(0), "0");
        assert_eq!(super::memory_quantity(128 << 20), "128Mi");
        assert_eq!(super::memory_quantity(3 << 30), "3Gi");
        assert_eq!(super::memory_quantity(1500), "1500");
        assert_eq!(super::memory_quantity(0), "0");
    }
}

/// `HEARD`: how long ago, to the tenth of a second.
fn heard_ago(ms: u64) -> String {
    format!("{}.{}s", ms / 1000, ms % 1000 / 100)
}

pub async fn get(socket: &Path, args: NodesArgs) -> ExitCode {
    let req = Request::ListObjects { kind: "Node".to_owned(), namespace: None };
    let mut items: Vec<Value> = match client::call(socket, &req).await {
        Ok(Response::Objects { items }) => items.into_iter().map(|o| o.object).collect(),
        other => return unexpected(other),
    };
    items.sort_by(|a, b| name_of(a).cmp(name_of(b)));
    if let Some(n) = &args.name {
        items.retain(|o| name_of(o) == n);
        if items.is_empty() {
            return fail(format!("node {n} not found"));
        }
    }
    let peers = items.iter().filter_map(peer_id_of).map(str::to_string).collect();
    let live = match client::call(socket, &Request::Liveness { peers }).await {
        Ok(Response::Liveness { items }) => items,
        other => return unexpected(other),
    };
    let now = time::OffsetDateTime::now_utc();
    let rows: Vec<Row> = items.iter().map(|o| Row::of(o, &live, now)).collect();
    match args.output {
        PodOutput::Json | PodOutput::Yaml => {
            let objects: Vec<Value> =
                items.into_iter().zip(&rows).map(|(o, r)| with_ready(o, r.ready)).collect();
            print_value(&objects, args.name.is_some(), args.output);
        }
        PodOutput::Table | PodOutput::Wide => print_rows(&rows, args.output == PodOutput::Wide),
    }
    ExitCode::SUCCESS
}

fn peer_id_of(o: &Value) -> Option<&str> {
    o.pointer("/metadata/annotations/beemesh.io~1peer-id").and_then(Value::as_str)
}

fn name_of(o: &Value) -> &str {
    o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

/// One line of `get nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub ready: bool,
    /// Cordoned (`spec.unschedulable`): no new pods.
    pub unschedulable: bool,
    pub roles: String,
    pub age: String,
    pub version: String,
    pub internal_ip: String,
    pub os_image: String,
    pub kernel: String,
}

impl Row {
    /// `live`: what the failure detector holds about the records' hosts (by peer id).
    pub fn of(o: &Value, live: &[LiveEntry], now: time::OffsetDateTime) -> Row {
        let name = name_of(o).to_string();
        let ready = peer_id_of(o).is_some_and(|id| live.iter().any(|l| l.peer == id && l.ready()));
        let text = |ptr: &str| o.pointer(ptr).and_then(Value::as_str).unwrap_or("").to_string();
        let created = o.pointer("/metadata/creationTimestamp").and_then(Value::as_str).and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        });
        let age_secs = created.map_or(0, |c| (now - c).whole_seconds().max(0) as u64);
        let internal_ip = o
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().find(|x| x["type"] == "InternalIP"))
            .and_then(|x| x["address"].as_str())
            .unwrap_or("<none>")
            .to_string();
        let mut roles: Vec<&str> = o
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|l| l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/")).collect())
            .unwrap_or_default();
        roles.sort_unstable();
        Row {
            name,
            ready,
            unschedulable: o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)),
            roles: if roles.is_empty() { "<none>".into() } else { roles.join(",") },
            age: age(Some(age_secs)),
            version: text("/status/nodeInfo/kubeletVersion"),
            internal_ip,
            os_image: text("/status/nodeInfo/osImage"),
            kernel: text("/status/nodeInfo/kernelVersion"),
        }
    }
}

/// The record with a Ready condition as this host sees it now.
fn with_ready(mut o: Value, ready: bool) -> Value {
    let condition = serde_json::json!({
        "type": "Ready",
        "status": if ready { "True" } else { "Unknown" },
        "reason": if ready { "HostAlive" } else { "NodeStatusUnknown" },
    });
    if let Some(status) = o.get_mut("status").and_then(Value::as_object_mut) {
        status.insert("conditions".into(), Value::Array(vec![condition]));
    }
    o
}

fn print_rows(rows: &[Row], wide: bool) {
    let head = format!("{:<24} {:<9} {:<14} {:<6} {:<22}", "NAME", "STATUS", "ROLES", "AGE", "VERSION");
    if wide {
        outln!("{head} {:<16} {:<32} KERNEL-VERSION", "INTERNAL-IP", "OS-IMAGE");
    } else {
        outln!("{}", head.trim_end());
    }
    for r in rows {
        let status = match (r.ready, r.unschedulable) {
            (true, false) => "Ready",
            (false, false) => "NotReady",
            (true, true) => "Ready,SchedulingDisabled",
            (false, true) => "NotReady,SchedulingDisabled",
        };
        let line = format!("{:<24} {status:<9} {:<14} {:<6} {:<22}", r.name, r.roles, r.age, r.version);
        if wide {
            outln!("{line} {:<16} {:<32} {}", r.internal_ip, r.os_image, r.kernel);
        } else {
            outln!("{}", line.trim_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LiveState;
    use crate::app::nodes::{node_json, NodeFacts};
    use crate::config::NodeCapacity;

    fn node(name: &str, peer: &str) -> Value {
        let facts = NodeFacts {
            name: name.into(),
            peer_id: peer.into(),
            labels: Default::default(),
            cpus: 2,
            memory_bytes: 1 << 30,
            capacity: NodeCapacity::default(),
            addresses: vec!["10.0.0.2".into()],
            kernel: "6.18.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            arch: "amd64".into(),
            agent_version: "beemesh-agent 0.1.0".into(),
            failure_detector: "heartbeatMs=1000".into(),
            tunnel_port: 4002,
            taints: Vec::new(),
            extended: Default::default(),
        };
        node_json(&facts, "2026-01-01T00:00:00Z")
    }

    fn live(id: &str, state: LiveState, this_host: bool) -> LiveEntry {
        LiveEntry { peer: id.into(), this_host, state, last_heard_ms_ago: None, since_ms_ago: None }
    }

    #[test]
    fn ready_means_this_host_or_held_alive() {
        let now = time::OffsetDateTime::parse(
            "2026-01-01T01:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .expect("time");
        let peers = [
            live("P1", LiveState::Unknown, true),
            live("P2", LiveState::Alive, false),
            live("P4", LiveState::Suspect, false),
            live("P5", LiveState::Dead, false),
            live("P6", LiveState::Unknown, false),
        ];
        let a = Row::of(&node("a", "P1"), &peers, now);
        assert!(a.ready);
        assert_eq!((a.age.as_str(), a.roles.as_str(), a.internal_ip.as_str()), ("60m", "<none>", "10.0.0.2"));
        assert_eq!(a.version, "beemesh-agent 0.1.0");
        assert!(Row::of(&node("b", "P2"), &peers, now).ready);
        // Not in the detector's answer, suspected, dead, unknown to it.
        for (n, id) in [("c", "P3"), ("d", "P4"), ("e", "P5"), ("f", "P6")] {
            assert!(!Row::of(&node(n, id), &peers, now).ready, "{n}");
        }
        assert_eq!(heard_ago(1_250), "1.2s");
        let json = with_ready(node("c", "P3"), false);
        assert_eq!(json["status"]["conditions"][0]["status"], "Unknown");
    }
}
