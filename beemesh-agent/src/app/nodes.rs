//! This host's Node record in the cluster state (kind `Node`, cluster-scoped, named after the
//! node name): a Kubernetes Node JSON with its labels, peer id, capacity and allocatable, mesh
//! addresses and system info. Written at start, and again only when it changes (never per
//! heartbeat: liveness is the failure detector's, not the record's; checked every 30 s, written
//! on a difference). Started from `app::mesh`.

use std::collections::BTreeMap;
use std::time::Duration;

use beemesh_state::Key;
use bytes::Bytes;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::cluster::{Cluster, ClusterError};
use crate::config::NodeCapacity;
use crate::mesh::swarm::MeshClient;

/// The kind of Node records in the cluster state.
pub const KIND: &str = "Node";

/// What this host says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    pub peer_id: String,
    /// `--node-label`s; `kubernetes.io/hostname` and the os/arch labels are added.
    pub labels: BTreeMap<String, String>,
    pub cpus: u64,
    pub memory_bytes: u64,
    pub capacity: NodeCapacity,
    /// InternalIP addresses: the mesh's listen addresses' IPs.
    pub addresses: Vec<String>,
    pub kernel: String,
    pub os_image: String,
    pub arch: String,
    pub agent_version: String,
    /// `FailureDetector::fingerprint`: the annotation [`DETECTOR_ANNOTATION`].
    pub failure_detector: String,
    /// `--node-taint`s: `spec.taints`.
    pub taints: Vec<beemesh_state::sched::fit::Taint>,
    /// `--node-resource`s: extended resources in capacity and allocatable.
    pub extended: BTreeMap<String, u64>,
    /// The workload tunnels' UDP port: the annotation [`TUNNEL_PORT_ANNOTATION`].
    pub tunnel_port: u16,
}

/// The annotation of a Node record with the UDP port its agent accepts tunnels on.
pub const TUNNEL_PORT_ANNOTATION: &str = "beemesh.io/tunnel-port";

/// The annotation of a Node record with its host's failure detector settings.
pub const DETECTOR_ANNOTATION: &str = "beemesh.io/failure-detector";

impl NodeFacts {
    /// Allocatable cpu (millicores) and memory (bytes): as configured, else all of it.
    pub fn allocatable(&self) -> (u64, u64) {
        allocatable(&self.capacity, self.cpus, self.memory_bytes)
    }

    /// Facts of this host: cpus, MemTotal, kernel and OS image read from /proc and /etc.
    pub fn of_this_host(
        name: &str,
        peer_id: &str,
        labels: &BTreeMap<String, String>,
        capacity: &NodeCapacity,
        listen_addrs: &[String],
        failure_detector: String,
        taints: Vec<beemesh_state::sched::fit::Taint>,
    ) -> NodeFacts {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let (cpus, memory_bytes) = host_resources();
        NodeFacts {
            name: name.to_string(),
            peer_id: peer_id.to_string(),
            labels: labels.clone(),
            cpus,
            memory_bytes,
            capacity: capacity.clone(),
            addresses: internal_ips(listen_addrs),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os_image: pretty_name(&read("/etc/os-release")).unwrap_or_else(|| "Linux".to_string()),
            arch: kube_arch(std::env::consts::ARCH).to_string(),
            agent_version: format!("beemesh-agent {}", env!("CARGO_PKG_VERSION")),
            failure_detector,
            taints,
            extended: BTreeMap::new(),
            tunnel_port: 0,
        }
    }
}

/// This host's cpus and `MemTotal` in bytes (0 when /proc/meminfo cannot be read).
pub fn host_resources() -> (u64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    (cpus, mem_total_bytes(&meminfo).unwrap_or(0))
}

/// Allocatable cpu (millicores) and memory (bytes) of a host with `cpus` and `memory_bytes`:
/// `capacity`'s settings, else all of it.
pub fn allocatable(capacity: &NodeCapacity, cpus: u64, memory_bytes: u64) -> (u64, u64) {
    (
        capacity.allocatable_millicpu.unwrap_or(cpus * 1000),
        capacity.allocatable_memory_bytes.unwrap_or(memory_bytes),
    )
}

/// `MemTotal` of /proc/meminfo, in bytes.
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value * 1024),
        Some(_) => None,
    }
}

/// `PRETTY_NAME` of /etc/os-release (quotes removed).
pub fn pretty_name(os_release: &str) -> Option<String> {
    let value = os_release.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))?;
    let value = value.trim().trim_matches('"').trim_matches('\'');
    (!value.is_empty()).then(|| value.to_string())
}

/// Go's architecture names, as Kubernetes labels use them.
fn kube_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// The IPs of listen multiaddrs (`/ip4/A/udp/P/quic-v1`, `/ip6/...`), unspecified and loopback
/// ones left out, each once.
pub fn internal_ips(listen_addrs: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for a in listen_addrs {
        let mut parts = a.split('/').skip(1);
        let (Some(proto), Some(ip)) = (parts.next(), parts.next()) else { continue };
        if proto != "ip4" && proto != "ip6" {
            continue;
        }
        let Ok(parsed) = ip.parse::<std::net::IpAddr>() else { continue };
        if parsed.is_unspecified() || parsed.is_loopback() || out.iter().any(|o| o == ip) {
            continue;
        }
        out.push(ip.to_string());
    }
    out
}

/// The Node JSON of `facts`, created at `created` (RFC 3339; kept from the record already in
/// the state, so a restart does not make the node new).
pub fn node_json(facts: &NodeFacts, created: &str) -> Value {
    let mut labels = facts.labels.clone();
    labels.insert("kubernetes.io/hostname".into(), facts.name.clone());
    labels.insert("kubernetes.io/os".into(), "linux".into());
    labels.insert("kubernetes.io/arch".into(), facts.arch.clone());
    let memory_ki = facts.memory_bytes / 1024;
    let mut capacity = json!({
        "cpu": facts.cpus.to_string(),
        "memory": format!("{memory_ki}Ki"),
        "pods": facts.capacity.max_pods.to_string(),
    });
    let (cpu_millis, memory) = facts.allocatable();
    let cpu = if cpu_millis % 1000 == 0 { (cpu_millis / 1000).to_string() } else { format!("{cpu_millis}m") };
    let mut allocatable = json!({
        "cpu": cpu,
        "memory": format!("{}Ki", memory / 1024),
        "pods": facts.capacity.max_pods.to_string(),
    });
    for (name, n) in &facts.extended {
        capacity[name] = n.to_string().into();
        allocatable[name] = n.to_string().into();
    }
    let spec = if facts.taints.is_empty() {
        json!({})
    } else {
        json!({"taints": facts.taints.iter().map(crate::app::sched::needs::taint_json).collect::<Vec<_>>()})
    };
    let mut addresses: Vec<Value> =
        facts.addresses.iter().map(|ip| json!({"type": "InternalIP", "address": ip})).collect();
    addresses.push(json!({"type": "Hostname", "address": facts.name}));
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": facts.name,
            "labels": labels,
            "annotations": {
                "beemesh.io/peer-id": facts.peer_id,
                "beemesh.io/failure-detector": facts.failure_detector,
                TUNNEL_PORT_ANNOTATION: facts.tunnel_port.to_string(),
            },
            "creationTimestamp": created,
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "addresses": addresses,
            "nodeInfo": {
                "kernelVersion": facts.kernel,
                "osImage": facts.os_image,
                "operatingSystem": "linux",
                "architecture": facts.arch,
                "kubeletVersion": facts.agent_version,
            },
        },
    })
}

/// The state key of a node's record.
pub fn key(name: &str) -> Key {
    Key::new(KIND, "", name)
}

/// Writes this host's Node record if the state does not hold the same one (its creation time
/// kept from the record held). Returns whether it wrote.
pub async fn publish(cluster: &Cluster, facts: &NodeFacts) -> Result<bool, ClusterError> {
    let key = key(&facts.name);
    let held: Option<Value> = cluster.get(key.clone()).await?.and_then(|b| serde_json::from_slice(&b).ok());
    let created = held
        .as_ref()
        .and_then(|v| v.pointer("/metadata/creationTimestamp"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(now_rfc3339);
    let mut node = node_json(facts, &created);
    // A cordon (`beemesh-agent cordon`, from any host) stays until an uncordon.
    if held.as_ref().and_then(|h| h.pointer("/spec/unschedulable")) == Some(&Value::Bool(true)) {
        node["spec"]["unschedulable"] = true.into();
    }
    if held.as_ref() == Some(&node) {
        return Ok(false);
    }
    let body = serde_json::to_vec(&node).expect("a JSON value always serialises");
    let acked = cluster.write(key, Some(Bytes::from(body))).await?;
    info!(node = %facts.name, held_by = ?acked.held_by, "node record written to the cluster state");
    Ok(true)
}

/// How often the record is checked against this host's facts (its mesh addresses change when
/// interfaces come and go, and peers find its tunnel endpoint there); a write happens only on
/// a difference, and a check is a local read.
const REFRESH: Duration = Duration::from_secs(5);
/// At start, how long to wait for the listener's interface addresses (libp2p reports them as
/// it finds them) before writing the record without an InternalIP.
const FIRST_ADDRESS_WAIT: Duration = Duration::from_secs(10);

/// Keeps this host's record in the cluster state: written once the mesh listener's addresses
/// are known, then rewritten only when the facts change. Failures are logged and retried.
/// This host's InternalIP addresses as its Node record last had them.
pub type HostIps = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

pub fn spawn_publish(cluster: Cluster, client: MeshClient, mut facts: NodeFacts, ips: HostIps) {
    tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        loop {
            if let Ok(addrs) = client.listen_addrs().await {
                facts.addresses = internal_ips(&addrs.iter().map(ToString::to_string).collect::<Vec<_>>());
            }
            let waiting = facts.addresses.is_empty() && started.elapsed() < FIRST_ADDRESS_WAIT;
            if !waiting {
                // A host with no address but loopback says so, as its pods' status does.
                if let Ok(mut held) = ips.lock() {
                    *held = if facts.addresses.is_empty() {
                        vec!["127.0.0.1".into()]
                    } else {
                        facts.addresses.clone()
                    };
                }
                if let Err(e) = publish(&cluster, &facts).await {
                    warn!(node = %facts.name, error = %e, "node record not written; retrying");
                }
            }
            let next = if waiting { Duration::from_millis(200) } else { REFRESH };
            tokio::time::sleep(next).await;
        }
    });
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> NodeFacts {
        NodeFacts {
            name: "h1".into(),
            peer_id: "12D3KooW".into(),
            labels: BTreeMap::from([("zone".to_string(), "a".to_string())]),
            cpus: 4,
            memory_bytes: 8 << 30,
            capacity: NodeCapacity::default(),
            addresses: vec!["10.200.43.2".into()],
            kernel: "6.18.0".into(),
            os_image: "Debian GNU/Linux 12 (bookworm)".into(),
            arch: "amd64".into(),
            agent_version: "beemesh-agent 0.1.0".into(),
            failure_detector: "heartbeatMs=1000".into(),
            tunnel_port: 4002,
            taints: vec![crate::app::sched::needs::parse_taint("gpu=yes:NoSchedule").expect("taint")],
            extended: BTreeMap::from([("example.com/dongle".to_string(), 2)]),
        }
    }

    #[test]
    fn node_json_is_a_kubernetes_node() {
        let n = node_json(&facts(), "2026-01-01T00:00:00Z");
        assert_eq!(n["kind"], "Node");
        assert_eq!(n["metadata"]["labels"]["kubernetes.io/hostname"], "h1");
        assert_eq!(n["metadata"]["labels"]["zone"], "a");
        assert_eq!(n["metadata"]["annotations"]["beemesh.io/peer-id"], "12D3KooW");
        assert_eq!(
            n["status"]["capacity"],
            json!({"cpu": "4", "memory": "8388608Ki", "pods": "110", "example.com/dongle": "2"})
        );
        let facts_back = crate::app::sched::needs::host_facts(&n).expect("facts");
        assert_eq!(facts_back.extended.get("example.com/dongle"), Some(&2));
        assert_eq!(n["status"]["allocatable"], n["status"]["capacity"]);
        assert_eq!(n["status"]["addresses"][0], json!({"type": "InternalIP", "address": "10.200.43.2"}));
        assert_eq!(n["spec"]["taints"], json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]));
        assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], "beemesh-agent 0.1.0");
        let mut f = facts();
        f.capacity = NodeCapacity {
            max_pods: 20,
            allocatable_millicpu: Some(3500),
            allocatable_memory_bytes: Some(4 << 30),
        };
        let n = node_json(&f, "2026-01-01T00:00:00Z");
        assert_eq!(
            n["status"]["allocatable"],
            json!({"cpu": "3500m", "memory": "4194304Ki", "pods": "20", "example.com/dongle": "2"})
        );
    }

    #[test]
    fn host_files_are_parsed() {
        assert_eq!(mem_total_bytes("MemTotal:       16318412 kB\nMemFree: 1 kB\n"), Some(16_318_412 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(
            pretty_name("NAME=\"Debian\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(pretty_name("NAME=x\n"), None);
        let addrs = [
            "/ip4/0.0.0.0/udp/4001/quic-v1".to_string(),
            "/ip4/127.0.0.1/udp/4001/quic-v1".to_string(),
            "/ip4/10.0.0.2/udp/4001/quic-v1".to_string(),
            "/ip4/10.0.0.2/udp/4002/quic-v1".to_string(),
            "/ip6/fd00::2/udp/4001/quic-v1".to_string(),
            "/dns4/example.org/udp/4001".to_string(),
        ];
        assert_eq!(internal_ips(&addrs), vec!["10.0.0.2".to_string(), "fd00::2".to_string()]);
    }
}
