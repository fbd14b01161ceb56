//! Agent configuration: embedded defaults, overridden by a YAML file, then by `BEEMESH_*`
//! variables and flags (clap merges those two). Built once in `main` and passed down.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where the optional config file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/beemesh/agent.yaml";

/// Shortest SVID lifetime accepted: renewal at half-life must stay well above the actor's
/// 500 ms tick.
pub const MIN_SVID_LIFETIME_SECONDS: u64 = 10;

/// Errors loading the config file; `main` exits with code 64 on these.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// What happens to traffic of workloads that no policy selects in a direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Allow,
    Deny,
}

/// Which verdicts become flow events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FlowEvents {
    /// Every new connection and every denial.
    All,
    /// Every denial; allowed flows once per second per (subject, peer, port).
    #[default]
    Sampled,
    /// Denials only.
    Denied,
    None,
}

/// The whole agent configuration. Every field has a default, so `beemesh-agent run` needs
/// no file at all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Persistent state: identity allocations, workload records.
    pub state_dir: PathBuf,
    /// Policy files, watched live.
    pub policy_dir: PathBuf,
    /// Admin socket (`agent.sock`) lives here; CLI subcommands connect to it.
    pub run_dir: PathBuf,
    /// Name of the agent's cgroup2 subtree under the cgroup2 mount; one agent per name.
    pub cgroup_name: String,
    /// bpffs mount; links are pinned under `<bpffs>/beemesh/<cgroup_name>`.
    pub bpffs: PathBuf,
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// Default for workloads no policy selects, egress.
    pub default_egress: DefaultAction,
    /// Default for workloads no policy selects, ingress.
    pub default_ingress: DefaultAction,
    pub flow_events: FlowEvents,
    /// How long to wait after a policy.d change for more changes before recompiling.
    pub policy_debounce_ms: u64,
    /// Flow events kept in memory for `beemesh-agent flows`.
    pub flow_history: usize,
    /// First host id of the pods' user-namespace ranges: each pod maps its ids 0..65536 onto
    /// its own block from here. The default (2000224256) keeps clear of host users, systemd's
    /// container and foreign ranges, SSSD's default AD id mapping and ids from 2^31 on
    /// (`pod::userns::DEFAULT_RANGE_START`); the agent refuses to start when the range
    /// overlaps an `/etc/subuid` or `/etc/subgid` entry.
    pub pod_id_range_start: u32,
    /// Host ids set aside for pods, a multiple of 65536: one block of 65536 per pod (default
    /// 2245 blocks, up to systemd's foreign range at 2147352576).
    pub pod_id_range_size: u32,
    /// Whether pods may run `privileged: true` containers (refused at apply otherwise).
    pub allow_privileged: bool,
    /// When not empty, hostPath volumes must be one of these directories or inside one (the
    /// agent's own directories, /proc, /sys, cgroup and bpf filesystems and / stay refused).
    pub host_path_allow: Vec<PathBuf>,
    /// Where `seccompProfile: {type: Localhost, localhostProfile: PATH}` profiles are found.
    pub seccomp_profile_dir: PathBuf,
    /// Most bytes one `image import` may unpack (its new layers together, after
    /// decompression; an archive tarball's contents too): a gzip bomb stops here.
    pub image_max_unpacked_bytes: u64,
    /// Lifetime of a pod's X.509 SVID; it is renewed at half of it.
    pub svid_lifetime_seconds: u64,
    /// A forwarded connection (to a Service, a pod's mesh address or a NodePort) that moves
    /// no byte either way for this long is reset at both ends (as Envoy's TCP proxy idle
    /// timeout, 1 hour).
    pub flow_idle_timeout_seconds: u64,
    /// Most entries (files, directories, links, and the directories their paths imply) one
    /// `image import` may create: headers compress to almost nothing, inodes do not.
    pub image_max_entries: u64,
    /// Most bytes a container's live log (`logs/<c>.log`) grows to before the agent's tick cuts
    /// it, keeping this many of its last bytes in `logs/<c>.log.1` (as the kubelet's
    /// `containerLogMaxSize`, 10 MiB).
    pub container_log_max_bytes: u64,
    /// The virtual addresses Services get (`spec.clusterIP`), mesh-wide: every host must name
    /// the same range.
    pub service_cluster_ip_range: String,
    /// The pods' mesh addresses (`status.podIP`), mesh-wide: every host must name the same
    /// range, apart from `serviceClusterIpRange`.
    pub pod_cidr: String,
    /// The mesh: listen port and addresses, bootstrap peers, mDNS, node name and labels.
    pub mesh: crate::mesh::swarm::MeshSettings,
    /// What this host's Node record offers: pods and allocatable overrides.
    pub node: NodeCapacity,
}

/// The `node:` section: what this host's Node record (in the cluster state) declares
/// allocatable. Capacity is measured (cpu count, MemTotal); allocatable is capacity unless
/// overridden here (to keep room for the host's own services).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeCapacity {
    /// Most pods on this host (the kubelet's `maxPods`, 110).
    pub max_pods: u32,
    /// Allocatable cpu in millicores (e.g. 3500); default: every cpu.
    pub allocatable_millicpu: Option<u64>,
    /// Allocatable memory in bytes; default: MemTotal.
    pub allocatable_memory_bytes: Option<u64>,
}

impl Default for NodeCapacity {
    fn default() -> Self {
        Self { max_pods: 110, allocatable_millicpu: None, allocatable_memory_bytes: None }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: "/var/lib/beemesh".into(),
            policy_dir: "/etc/beemesh/policy.d".into(),
            run_dir: "/run/beemesh".into(),
            cgroup_name: "beemesh".into(),
            bpffs: "/sys/fs/bpf".into(),
            trust_domain: "beemesh.local".into(),
            default_egress: DefaultAction::Allow,
            default_ingress: DefaultAction::Allow,
            flow_events: FlowEvents::Sampled,
            policy_debounce_ms: 5,
            flow_history: 10_000,
            pod_id_range_start: crate::pod::userns::DEFAULT_RANGE_START,
            pod_id_range_size: crate::pod::userns::DEFAULT_RANGE_SIZE,
            allow_privileged: false,
            host_path_allow: Vec::new(),
            seccomp_profile_dir: "/etc/beemesh/seccomp".into(),
            image_max_unpacked_bytes: crate::image::DEFAULT_MAX_UNPACKED_BYTES,
            svid_lifetime_seconds: 3600,
            flow_idle_timeout_seconds: 3600,
            image_max_entries: crate::image::DEFAULT_MAX_ENTRIES,
            container_log_max_bytes: 10 << 20,
            service_cluster_ip_range: crate::app::services::DEFAULT_CLUSTER_IP_RANGE.to_owned(),
            pod_cidr: crate::app::services::DEFAULT_POD_CIDR.to_owned(),
            mesh: Default::default(),
            node: NodeCapacity::default(),
        }
    }
}

impl Config {
    /// Reads `path` (or the default file if it exists) over the defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (path, required) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_FILE), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::from_yaml(&text).map_err(|source| ConfigError::Parse { path, source })
    }

    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = !self.cgroup_name.is_empty()
            && self
                .cgroup_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !self.cgroup_name.starts_with('.');
        if !name_ok {
            return Err(ConfigError::Invalid(format!(
                "cgroupName {:?}: use letters, digits, '-', '_' or '.'",
                self.cgroup_name
            )));
        }
        if let Some(p) = self.host_path_allow.iter().find(|p| !p.is_absolute()) {
            return Err(ConfigError::Invalid(format!(
                "hostPathAllow {}: must be an absolute path",
                p.display()
            )));
        }
        if self.image_max_unpacked_bytes == 0 {
            return Err(ConfigError::Invalid("imageMaxUnpackedBytes: must be more than 0".into()));
        }
        if self.svid_lifetime_seconds < MIN_SVID_LIFETIME_SECONDS {
            return Err(ConfigError::Invalid(format!(
                "svidLifetimeSeconds {}: at least {MIN_SVID_LIFETIME_SECONDS} (renewal happens at half of it)",
                self.svid_lifetime_seconds
            )));
        }
        if self.flow_idle_timeout_seconds == 0 {
            return Err(ConfigError::Invalid("flowIdleTimeoutSeconds: must be more than 0".into()));
        }
        if self.image_max_entries == 0 {
            return Err(ConfigError::Invalid("imageMaxEntries: must be more than 0".into()));
        }
        if self.container_log_max_bytes < 4096 {
            return Err(ConfigError::Invalid("containerLogMaxBytes: must be 4096 or more".into()));
        }
        let services = crate::app::services::Pool::cidr(&self.service_cluster_ip_range)
            .map_err(|e| ConfigError::Invalid(format!("serviceClusterIpRange: {e}")))?;
        let pods = crate::app::services::Pool::cidr(&self.pod_cidr)
            .map_err(|e| ConfigError::Invalid(format!("podCidr: {e}")))?;
        if pods.overlaps(&services) {
            return Err(ConfigError::Invalid(format!(
                "podCidr: {} overlaps serviceClusterIpRange {}",
                self.pod_cidr, self.service_cluster_ip_range
            )));
        }
        self.mesh.validate().map_err(ConfigError::Invalid)?;
        if self.node.max_pods == 0 {
            return Err(ConfigError::Invalid("node.maxPods: must be more than 0".into()));
        }
        if self.node.allocatable_millicpu == Some(0) || self.node.allocatable_memory_bytes == Some(0) {
            return Err(ConfigError::Invalid(
                "node.allocatableMillicpu and node.allocatableMemoryBytes: must be more than 0".into(),
            ));
        }
        crate::identity::SpiffeId::new(&self.trust_domain, "default", "default")
            .map_err(|e| ConfigError::Invalid(format!("trustDomain {:?}: {e}", self.trust_domain)))?;
        crate::pod::userns::IdRanges::new(self.pod_id_range_start, self.pod_id_range_size)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }

    /// Path of the admin socket.
    pub fn socket_path(&self) -> PathBuf {
        self.run_dir.join("agent.sock")
    }

    /// This instance's pin directory.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs.join("beemesh").join(&self.cgroup_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::from_yaml("").expect("empty is fine"), Config::default());
    }

    #[test]
    fn file_overrides_and_rejects_unknown_keys() {
        let c = Config::from_yaml("stateDir: /tmp/x\ndefaultEgress: deny\n").expect("valid");
        assert_eq!(c.state_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.default_egress, DefaultAction::Deny);
        assert_eq!(c.policy_dir, Config::default().policy_dir);
        let c = Config::from_yaml("allowPrivileged: true\nhostPathAllow: [/srv]\nseccompProfileDir: /p\n")
            .expect("valid");
        assert!(c.allow_privileged);
        assert_eq!(c.host_path_allow, vec![PathBuf::from("/srv")]);
        assert_eq!(c.seccomp_profile_dir, PathBuf::from("/p"));
        let relative = Config { host_path_allow: vec!["srv".into()], ..Config::default() };
        assert!(relative.validate().is_err());
        let err = Config::from_yaml("stateDirr: /tmp/x\n").expect_err("typo");
        assert!(err.to_string().contains("stateDirr"), "{err}");
    }

    #[test]
    fn image_size_limit_has_a_default_and_is_configurable() {
        assert_eq!(Config::default().image_max_unpacked_bytes, 8 << 30);
        let c = Config::from_yaml("imageMaxUnpackedBytes: 1048576\n").expect("valid");
        assert_eq!(c.image_max_unpacked_bytes, 1 << 20);
        let zero = Config { image_max_unpacked_bytes: 0, ..Config::default() };
        assert!(zero.validate().is_err());
        assert_eq!(Config::default().image_max_entries, 1_000_000);
        let c = Config::from_yaml("imageMaxEntries: 500\n").expect("valid");
        assert_eq!(c.image_max_entries, 500);
        let zero = Config { image_max_entries: 0, ..Config::default() };
        assert!(zero.validate().expect_err("zero entries").to_string().contains("imageMaxEntries"));
    }

    #[test]
    fn container_log_limit_has_a_default_and_is_configurable() {
        assert_eq!(Config::default().container_log_max_bytes, 10 << 20);
        let c = Config::from_yaml("containerLogMaxBytes: 65536\n").expect("valid");
        assert_eq!(c.container_log_max_bytes, 65536);
        c.validate().expect("valid");
        let tiny = Config { container_log_max_bytes: 10, ..Config::default() };
        let err = tiny.validate().expect_err("too small").to_string();
        assert!(err.contains("containerLogMaxBytes"), "{err}");
    }

    #[test]
    fn node_capacity_has_defaults_and_overrides() {
        assert_eq!(Config::default().node.max_pods, 110);
        let c = Config::from_yaml("node:\n  maxPods: 20\n  allocatableMillicpu: 1500\n").expect("parses");
        assert_eq!((c.node.max_pods, c.node.allocatable_millicpu), (20, Some(1500)));
        assert!(Config::from_yaml("node:\n  pods: 20\n").is_err());
        let zero =
            Config { node: NodeCapacity { max_pods: 0, ..NodeCapacity::default() }, ..Config::default() };
        assert!(zero.validate().expect_err("zero pods").to_string().contains("node.maxPods"));
    }

    #[test]
    fn validation_catches_bad_cgroup_names() {
        let c = Config { cgroup_name: "../escape".into(), ..Config::default() };
        assert!(c.validate().is_err());
    }

    #[test]
    fn pod_id_ranges_are_validated_by_key() {
        Config::default().validate().expect("the defaults are valid");
        let c = Config::from_yaml("podIdRangeStart: 100000\npodIdRangeSize: 1000\n").expect("parses");
        let err = c.validate().expect_err("not a multiple of 65536").to_string();
        assert!(err.contains("podIdRangeSize 1000"), "{err}");
        let c = Config::from_yaml("podIdRangeStart: 4294000000\n").expect("parses");
        assert!(c.validate().is_err(), "past the end of the id space");
    }

    #[test]
    fn svid_lifetime_is_configurable_within_bounds() {
        let c = Config::from_yaml("svidLifetimeSeconds: 20\n").expect("valid");
        assert_eq!(c.svid_lifetime_seconds, 20);
        assert!(c.validate().is_ok());
        let short = Config { svid_lifetime_seconds: 2, ..Config::default() };
        let err = short.validate().expect_err("too short").to_string();
        assert!(err.contains("svidLifetimeSeconds"), "{err}");
    }
}
