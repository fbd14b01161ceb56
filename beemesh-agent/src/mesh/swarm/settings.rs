//! The mesh's settings: the `mesh:` section of the config file ([`MeshSettings`]) and the
//! `run` flags that override it ([`MeshOpts`]), turned into a [`MeshConfig`].

use std::collections::BTreeMap;
use std::path::Path;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

use super::addr::{default_listen, BootstrapAddr};
use super::peers_file::KnownPeers;
use super::{MeshConfig, SwarmError};

/// UDP port of the mesh's QUIC listener.
pub const DEFAULT_MESH_PORT: u16 = 4001;
/// The workload tunnels' UDP port unless configured.
pub const DEFAULT_TUNNEL_PORT: u16 = 4002;

/// The `mesh:` section of the agent's config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshSettings {
    /// UDP port listened on (all IPv4 addresses) when `listen` is empty.
    pub port: u16,
    /// Multiaddrs to listen on instead, e.g. `/ip4/10.200.0.2/udp/4001/quic-v1`.
    pub listen: Vec<String>,
    /// Peers to join through: `HOST:PORT` or multiaddrs.
    pub bootstrap: Vec<String>,
    /// Find peers on the LAN by mDNS.
    pub mdns: bool,
    /// This host's node name; default: the hostname.
    pub node_name: Option<String>,
    /// This host's node labels.
    pub node_labels: BTreeMap<String, String>,
    /// This host's taints, `KEY[=VALUE]:EFFECT` (pods without a matching toleration are not
    /// scheduled here).
    pub node_taints: Vec<String>,
    /// Extended resources this host offers (`example.com/dongle: 2`): pods that request them
    /// are placed only on hosts with enough left.
    pub node_resources: BTreeMap<String, u64>,
    /// The issuer (`ca issue-issuer`) this member admits joining hosts with; default:
    /// `<state-dir>/issuer` when it exists.
    pub issuer_dir: Option<std::path::PathBuf>,
    /// How hosts decide that a host is gone (`beemesh_state::liveness`).
    pub failure_detector: FailureDetector,
    /// UDP port of the workload tunnels (QUIC, all IPv4 addresses); 0 lets the kernel
    /// choose. Published in the host's Node record.
    pub tunnel_port: u16,
}

/// The `mesh.failureDetector:` section: how fast a silent host is held dead, and by how many
/// of its watchers. A host is suspected `suspectAfterMs` after the last heartbeat its watcher
/// heard, and held dead about `probeWaitMs` later once `quorum` watchers agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct FailureDetector {
    /// Each host sends a heartbeat to each of its watchers this often.
    pub heartbeat_ms: u64,
    /// A watcher that heard nothing from a host for this long suspects it.
    pub suspect_after_ms: u64,
    /// How long a suspicion waits for the host's answer to a probe before it is a verdict.
    pub probe_wait_ms: u64,
    /// Watchers of each host.
    pub watchers: usize,
    /// Watchers that must suspect a host before it is held dead (at most `watchers`).
    pub quorum: usize,
}

impl Default for FailureDetector {
    fn default() -> Self {
        let d = beemesh_state::liveness::LivenessConfig::default();
        Self {
            heartbeat_ms: d.heartbeat_interval_ms,
            suspect_after_ms: d.suspect_after_ms,
            probe_wait_ms: d.probe_wait_ms,
            watchers: d.watchers,
            quorum: d.quorum,
        }
    }
}

impl FailureDetector {
    /// Checks the values against each other; errors name the key.
    pub fn validate(&self) -> Result<(), String> {
        let key = "mesh.failureDetector";
        if !(100..=60_000).contains(&self.heartbeat_ms) {
            return Err(format!("{key}.heartbeatMs: {} is outside 100..=60000", self.heartbeat_ms));
        }
        if self.suspect_after_ms < 2 * self.heartbeat_ms {
            return Err(format!(
                "{key}.suspectAfterMs: {} must be at least two heartbeats ({} ms): one lost heartbeat would make a host suspect",
                self.suspect_after_ms,
                2 * self.heartbeat_ms
            ));
        }
        if !(50..=60_000).contains(&self.probe_wait_ms) {
            return Err(format!("{key}.probeWaitMs: {} is outside 50..=60000", self.probe_wait_ms));
        }
        if !(1..=16).contains(&self.watchers) {
            return Err(format!("{key}.watchers: {} is outside 1..=16", self.watchers));
        }
        if !(1..=self.watchers).contains(&self.quorum) {
            return Err(format!(
                "{key}.quorum: {} is outside 1..={} (the watchers)",
                self.quorum, self.watchers
            ));
        }
        Ok(())
    }

    /// The settings as one line, published in this host's Node record: every host must run
    /// the same (watchers and heartbeats are assumed alike), and each compares.
    pub fn fingerprint(&self) -> String {
        format!(
            "heartbeatMs={} suspectAfterMs={} probeWaitMs={} watchers={} quorum={}",
            self.heartbeat_ms, self.suspect_after_ms, self.probe_wait_ms, self.watchers, self.quorum
        )
    }

    /// The detector's configuration (the other values scale with the heartbeat).
    pub fn to_config(&self, seed: u64) -> beemesh_state::liveness::LivenessConfig {
        let d = beemesh_state::liveness::LivenessConfig::default();
        let scale = |ms: u64| ms * self.heartbeat_ms / d.heartbeat_interval_ms;
        beemesh_state::liveness::LivenessConfig {
            watchers: self.watchers,
            quorum: self.quorum,
            heartbeat_interval_ms: self.heartbeat_ms,
            suspect_after_ms: self.suspect_after_ms,
            probe_wait_ms: self.probe_wait_ms,
            lone_verdict_after_ms: self.suspect_after_ms + (d.lone_verdict_after_ms - d.suspect_after_ms),
            sync_interval_ms: scale(d.sync_interval_ms),
            refute_interval_ms: scale(d.refute_interval_ms),
            stall_after_ms: d.stall_after_ms,
            seed,
        }
    }
}

impl Default for MeshSettings {
    fn default() -> Self {
        Self {
            port: DEFAULT_MESH_PORT,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: false,
            node_name: None,
            node_labels: BTreeMap::new(),
            node_taints: Vec::new(),
            node_resources: BTreeMap::new(),
            issuer_dir: None,
            failure_detector: FailureDetector::default(),
            tunnel_port: DEFAULT_TUNNEL_PORT,
        }
    }
}

/// Mesh flags; each overrides the config file's `mesh:` key of the same name.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct MeshOpts {
    /// UDP port of the mesh (QUIC); default 4001; 0 lets the kernel choose one (tests, several agents on one host).
    #[arg(long, global = true, env = "BEEMESH_MESH_PORT")]
    pub mesh_port: Option<u16>,
    /// Listen on this multiaddr instead (repeatable), e.g. /ip4/0.0.0.0/udp/4001/quic-v1.
    #[arg(long = "mesh-listen", global = true, value_name = "MULTIADDR")]
    pub mesh_listen: Vec<String>,
    /// Join the mesh through this peer (repeatable): HOST:PORT or a multiaddr.
    #[arg(long = "bootstrap", global = true, value_name = "ADDR")]
    pub bootstrap: Vec<String>,
    /// Find peers on the LAN by mDNS.
    #[arg(long, global = true)]
    pub mdns: bool,
    /// This host's node name; default: the hostname.
    #[arg(long, global = true, env = "BEEMESH_NODE_NAME")]
    pub node_name: Option<String>,
    /// A node label KEY=VALUE (repeatable).
    #[arg(long = "node-label", global = true, value_name = "KEY=VALUE", value_parser = parse_node_label)]
    pub node_labels: Vec<(String, String)>,
    /// A node taint KEY[=VALUE]:EFFECT (repeatable; replaces the config file's list), e.g.
    /// dedicated=gpu:NoSchedule.
    #[arg(long = "node-taint", global = true, value_name = "KEY[=VALUE]:EFFECT")]
    pub node_taints: Vec<String>,
    /// An extended resource this host offers, NAME=COUNT (repeatable; merged over the config
    /// file's), e.g. example.com/dongle=2.
    #[arg(long = "node-resource", global = true, value_name = "NAME=COUNT", value_parser = parse_node_resource)]
    pub node_resources: Vec<(String, u64)>,
    /// The issuer directory (`ca issue-issuer --out DIR`) for `token create`; default
    /// STATE_DIR/issuer when it exists.
    #[arg(long, global = true, env = "BEEMESH_ISSUER_DIR", value_name = "DIR")]
    pub issuer_dir: Option<std::path::PathBuf>,
    /// UDP port of the workload tunnels (QUIC); default 4002; 0 lets the kernel choose one.
    #[arg(long, global = true, env = "BEEMESH_TUNNEL_PORT")]
    pub tunnel_port: Option<u16>,
}

fn parse_node_resource(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("node resource {s:?}: expected NAME=COUNT"))?;
    check_node_resource(k)?;
    let n = crate::manifest::extended_count(v).map_err(|e| format!("node resource {s:?}: {e}"))?;
    Ok((k.to_string(), n))
}

fn check_node_resource(name: &str) -> Result<(), String> {
    if crate::manifest::is_extended_resource(name) {
        Ok(())
    } else {
        Err(format!("{name:?} is not an extended resource name (DOMAIN/NAME, outside kubernetes.io)"))
    }
}

fn parse_node_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("node label {s:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("node label {s:?}: empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

impl MeshOpts {
    /// Applies the flags given over `settings`: lists given on the command line replace the
    /// file's, labels are merged key by key.
    pub fn apply(&self, settings: &mut MeshSettings) {
        if let Some(p) = self.mesh_port {
            settings.port = p;
        }
        if let Some(p) = self.tunnel_port {
            settings.tunnel_port = p;
        }
        if !self.mesh_listen.is_empty() {
            settings.listen = self.mesh_listen.clone();
        }
        if !self.bootstrap.is_empty() {
            settings.bootstrap = self.bootstrap.clone();
        }
        if !self.node_taints.is_empty() {
            settings.node_taints = self.node_taints.clone();
        }
        if self.mdns {
            settings.mdns = true;
        }
        if let Some(n) = &self.node_name {
            settings.node_name = Some(n.clone());
        }
        if let Some(d) = &self.issuer_dir {
            settings.issuer_dir = Some(d.clone());
        }
        for (k, v) in &self.node_labels {
            settings.node_labels.insert(k.clone(), v.clone());
        }
        for (k, n) in &self.node_resources {
            settings.node_resources.insert(k.clone(), *n);
        }
    }
}

impl MeshSettings {
    /// The node taints, parsed.
    pub fn taints(&self) -> Result<Vec<beemesh_state::sched::fit::Taint>, String> {
        self.node_taints.iter().map(|t| crate::app::sched::needs::parse_taint(t)).collect()
    }

    /// Checks every address; errors name the key and the entry.
    pub fn validate(&self) -> Result<(), String> {
        self.listen_addrs().map_err(|e| format!("mesh.listen: {e}"))?;
        self.bootstrap_addrs().map_err(|e| format!("mesh.bootstrap: {e}"))?;
        if let Some(n) = &self.node_name {
            if n.is_empty() {
                return Err("mesh.nodeName: empty".into());
            }
        }
        self.taints().map_err(|e| format!("mesh.nodeTaints: {e}"))?;
        for name in self.node_resources.keys() {
            check_node_resource(name).map_err(|e| format!("mesh.nodeResources: {e}"))?;
        }
        self.failure_detector.validate()
    }

    pub fn listen_addrs(&self) -> Result<Vec<Multiaddr>, SwarmError> {
        if self.listen.is_empty() {
            return Ok(default_listen(self.port));
        }
        self.listen
            .iter()
            .map(|s| {
                s.parse::<Multiaddr>()
                    .map_err(|e| SwarmError::BadAddress { addr: s.clone(), why: e.to_string() })
            })
            .collect()
    }

    pub fn bootstrap_addrs(&self) -> Result<Vec<BootstrapAddr>, SwarmError> {
        self.bootstrap.iter().map(|s| s.parse()).collect()
    }

    /// The node name: the configured one, else the hostname.
    pub fn node_name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "localhost".into())
        })
    }

    /// The swarm's configuration, remembering peers under `state_dir`.
    pub fn to_config(&self, state_dir: &Path) -> Result<MeshConfig, SwarmError> {
        let mut c = MeshConfig::new(self.listen_addrs()?);
        c.bootstrap = self.bootstrap_addrs()?;
        c.mdns = self.mdns;
        c.peers_file = Some(KnownPeers::path(state_dir));
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mesh: MeshOpts,
    }

    #[test]
    fn flags_override_the_file() {
        let mut s: MeshSettings =
            serde_yaml::from_str("port: 5001\nbootstrap: [\"a:4001\"]\nnodeLabels: {zone: a, rack: \"1\"}\n")
                .expect("yaml");
        assert_eq!(s.listen_addrs().expect("listen")[0].to_string(), "/ip4/0.0.0.0/udp/5001/quic-v1");
        let cli = Cli::try_parse_from([
            "x",
            "--bootstrap",
            "10.0.0.1:4001",
            "--bootstrap",
            "/ip4/10.0.0.2/udp/4001/quic-v1",
            "--node-label",
            "zone=b",
            "--node-name",
            "n1",
            "--mdns",
            "--mesh-listen",
            "/ip4/127.0.0.1/udp/4100/quic-v1",
        ])
        .expect("parse");
        cli.mesh.apply(&mut s);
        s.validate().expect("valid");
        assert_eq!(s.bootstrap_addrs().expect("bootstrap").len(), 2);
        assert_eq!(s.node_labels["zone"], "b");
        assert_eq!(s.node_labels["rack"], "1");
        assert_eq!(s.node_name(), "n1");
        let c = s.to_config(Path::new("/var/lib/beemesh")).expect("config");
        assert!(c.mdns);
        assert_eq!(c.listen[0].to_string(), "/ip4/127.0.0.1/udp/4100/quic-v1");
        assert_eq!(c.peers_file.as_deref(), Some(Path::new("/var/lib/beemesh/mesh/peers.json")));
    }

    #[test]
    fn the_failure_detector_is_configurable_and_checked() {
        let s: MeshSettings =
            serde_yaml::from_str("failureDetector:\n  heartbeatMs: 500\n  suspectAfterMs: 1500\n")
                .expect("yaml");
        s.validate().expect("valid");
        let c = s.failure_detector.to_config(7);
        assert_eq!((c.heartbeat_interval_ms, c.suspect_after_ms, c.watchers, c.quorum), (500, 1500, 3, 2));
        assert_eq!(
            (c.sync_interval_ms, c.refute_interval_ms, c.lone_verdict_after_ms, c.seed),
            (2500, 500, 2000, 7)
        );
        let d = FailureDetector::default().to_config(0);
        assert_eq!(d, beemesh_state::liveness::LivenessConfig::default());
        let bad = |yaml: &str| {
            let s: MeshSettings = serde_yaml::from_str(yaml).expect("yaml");
            s.validate().expect_err(yaml)
        };
        assert!(bad("failureDetector: {suspectAfterMs: 1500}").contains("suspectAfterMs"));
        assert!(bad("failureDetector: {watchers: 2, quorum: 3}").contains("quorum"));
        assert!(bad("failureDetector: {heartbeatMs: 10}").contains("heartbeatMs"));
        assert!(serde_yaml::from_str::<MeshSettings>("failureDetector: {heartbeat: 1}").is_err());
    }

    #[test]
    fn defaults_listen_on_4001_and_bad_entries_are_named() {
        let s = MeshSettings::default();
        s.validate().expect("defaults");
        assert_eq!(s.listen_addrs().expect("listen")[0].to_string(), "/ip4/0.0.0.0/udp/4001/quic-v1");
        assert!(!s.node_name().is_empty());
        let bad = MeshSettings { bootstrap: vec!["nohost".into()], ..Default::default() };
        let e = bad.validate().expect_err("bad bootstrap");
        assert!(e.contains("mesh.bootstrap") && e.contains("nohost"), "{e}");
        let bad = MeshSettings { listen: vec!["/ip4/1.2.3.4/udp/x".into()], ..Default::default() };
        assert!(bad.validate().expect_err("bad listen").contains("mesh.listen"));
        assert!(Cli::try_parse_from(["x", "--node-label", "novalue"]).is_err());
    }

    #[test]
    fn the_agent_config_file_has_a_mesh_section() {
        let c = crate::config::Config::from_yaml("mesh:\n  port: 5001\n  nodeName: n1\n").expect("yaml");
        assert_eq!(c.mesh.port, 5001);
        assert_eq!(c.mesh.node_name(), "n1");
        c.validate().expect("valid");
        let c = crate::config::Config::from_yaml("mesh:\n  bootstrap: [\"nohost\"]\n").expect("yaml");
        let e = c.validate().expect_err("bad bootstrap").to_string();
        assert!(e.contains("mesh.bootstrap") && e.contains("nohost"), "{e}");
        assert!(crate::config::Config::from_yaml("mesh:\n  prot: 1\n").is_err(), "unknown key");
    }
}
