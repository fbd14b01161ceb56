//! `get nodes`: the Node records of the cluster state (one per host that ever joined), with
//! kubectl's columns. STATUS is Ready for this host and for hosts attested and connected now,
//! NotReady otherwise (until the failure detector is wired in, connection is the signal).
//! `peers`: this host and its connected peers, with labels and capacity from their records.

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::get::{age, print_value, Output as PodOutput};
use super::{fail, unexpected};
use crate::api::client;
use crate::api::{PeerEntry, Request, Response};

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
    /// And each host's labels and allocatable cpu, memory and pods (from its Node record).
    Wide,
    Json,
}

/// `peers [-o wide|json]`.
pub async fn peers(socket: &Path, output: PeersOutput) -> ExitCode {
    let items = match client::call(socket, &Request::Peers).await {
        Ok(Response::Peers { items }) => items,
        other => return unexpected(other),
    };
    let records: Vec<Value> = if output == PeersOutput::Table {
        Vec::new()
    } else {
        let req = Request::ListObjects { kind: "Node".to_owned(), namespace: None };
        match client::call(socket, &req).await {
            Ok(Response::Objects { items }) => items.into_iter().map(|o| o.object).collect(),
            // The cluster state may not be up: peers are shown without their records.
            _ => Vec::new(),
        }
    };
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
            out.push(v);
        }
        outln!("{}", serde_json::to_string_pretty(&out).expect("JSON values serialise"));
        return ExitCode::SUCCESS;
    }
    let wide = output == PeersOutput::Wide;
    let extra = |cpu: &str, mem: &str, pods: &str, labels: &str| {
        if wide {
            format!(" {cpu:<6} {mem:<14} {pods:<5} {labels}")
        } else {
            String::new()
        }
    };
    let head = format!(
        "{:<20} {:<54} {:<9} {:<40}{}",
        "NAME",
        "PEER",
        "ATTESTED",
        "ADDRESSES",
        extra("CPU", "MEMORY", "PODS", "LABELS")
    );
    outln!("{}", head.trim_end());
    for p in &items {
        let name = match (&p.name, p.this_host) {
            (Some(n), true) => format!("{n} (this)"),
            (Some(n), false) => n.clone(),
            (None, _) => "<unattested>".into(),
        };
        let attested = if p.attested { "yes" } else { "no" };
        let r = record_of(p);
        let field =
            |ptr: &str| r.and_then(|r| r.pointer(ptr)).and_then(Value::as_str).unwrap_or("-").to_string();
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
        let columns = extra(
            &field("/status/allocatable/cpu"),
            &field("/status/allocatable/memory"),
            &field("/status/allocatable/pods"),
            &labels,
        );
        let line = format!("{name:<20} {:<54} {attested:<9} {:<40}{columns}", p.peer, p.addresses.join(","));
        outln!("{}", line.trim_end());
    }
    ExitCode::SUCCESS
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
    let peers = match client::call(socket, &Request::Peers).await {
        Ok(Response::Peers { items }) => items,
        other => return unexpected(other),
    };
    let now = time::OffsetDateTime::now_utc();
    let rows: Vec<Row> = items.iter().map(|o| Row::of(o, &peers, now)).collect();
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

fn name_of(o: &Value) -> &str {
    o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

/// One line of `get nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub name: String,
    pub ready: bool,
    pub roles: String,
    pub age: String,
    pub version: String,
    pub internal_ip: String,
    pub os_image: String,
    pub kernel: String,
}

impl Row {
    /// `peers`: what `peers` answers (this host, and every connected peer).
    pub fn of(o: &Value, peers: &[PeerEntry], now: time::OffsetDateTime) -> Row {
        let name = name_of(o).to_string();
        let peer_id = o.pointer("/metadata/annotations/beemesh.io~1peer-id").and_then(Value::as_str);
        let ready = peers.iter().any(|p| {
            p.name.as_deref() == Some(name.as_str())
                && (p.this_host || p.attested)
                && peer_id.is_none_or(|id| id == p.peer)
        });
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
        "reason": if ready { "HostConnected" } else { "NodeStatusUnknown" },
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
        let status = if r.ready { "Ready" } else { "NotReady" };
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
        };
        node_json(&facts, "2026-01-01T00:00:00Z")
    }

    fn peer(name: &str, id: &str, attested: bool, this_host: bool) -> PeerEntry {
        PeerEntry { name: Some(name.into()), peer: id.into(), attested, addresses: vec![], this_host }
    }

    #[test]
    fn ready_means_this_host_or_attested_now() {
        let now = time::OffsetDateTime::parse(
            "2026-01-01T01:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .expect("time");
        let peers = [peer("a", "P1", true, true), peer("b", "P2", true, false)];
        let a = Row::of(&node("a", "P1"), &peers, now);
        assert!(a.ready);
        assert_eq!((a.age.as_str(), a.roles.as_str(), a.internal_ip.as_str()), ("60m", "<none>", "10.0.0.2"));
        assert_eq!(a.version, "beemesh-agent 0.1.0");
        assert!(Row::of(&node("b", "P2"), &peers, now).ready);
        // Gone from the peers, or now under another peer id (a different host took the name).
        assert!(!Row::of(&node("c", "P3"), &peers, now).ready);
        assert!(!Row::of(&node("b", "P9"), &peers, now).ready);
        let json = with_ready(node("c", "P3"), false);
        assert_eq!(json["status"]["conditions"][0]["status"], "Unknown");
    }
}
