//! What a pod runs, worked out from its manifest: the pod-wide plan (`plan_pod`), each
//! container's argv, environment, mounts, limits and probes (`plan_container`), and the files of
//! its configMap and secret volumes (`volume_files`), with Kubernetes' semantics. Sans-IO: the
//! pod runtime calls it with a Pod already checked by `crate::manifest`, the image config, and
//! the ConfigMaps and Secrets it knows, then does the mounting and spawning itself.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, EnvVarSource, ExecAction, HTTPGetAction, LifecycleHandler,
    Pod, Probe, ResourceFieldSelector, Secret, Service, TCPSocketAction, Volume,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::lifecycle::RestartPolicy;
use super::security::SecurityPlan;
use crate::image::ImageConfig;
use crate::manifest::{env_field, parse_cpu_millis, parse_memory_bytes, EnvField, Object};

/// What container runtimes set when neither the image nor the pod defines `PATH`.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Mode of configMap and secret volume files when the manifest sets none, as Kubernetes.
pub const DEFAULT_MODE: u32 = 0o644;
/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Longest hostname (a DNS label).
const HOSTNAME_MAX: usize = 63;

/// ConfigMaps and Secrets the pod may reference, by (namespace, name).
pub trait Objects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<&ConfigMap>;
    fn secret(&self, namespace: &str, name: &str) -> Option<&Secret>;
    /// This host's allocatable cpu (millicores) and memory (bytes): what a `resourceFieldRef`
    /// to a limit the container does not set reads, as the kubelet does. `None`: unknown.
    fn allocatable(&self) -> Option<(u64, u64)> {
        None
    }
    /// The Services of `namespace` (for service links).
    fn services(&self, namespace: &str) -> Vec<&Service> {
        let _ = namespace;
        Vec::new()
    }
}

/// The ConfigMaps and Secrets a pod draws on (volumes, `envFrom`, `env[].valueFrom`), as
/// `(kind, name)` in the pod's namespace: what a host must hold to run it.
pub fn references(pod: &Pod) -> BTreeSet<(ObjectKind, String)> {
    let mut refs = BTreeSet::new();
    let Some(spec) = &pod.spec else { return refs };
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            refs.insert((ObjectKind::ConfigMap, c.name.clone()));
        }
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.insert((ObjectKind::Secret, name));
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &source.config_map {
                refs.insert((ObjectKind::ConfigMap, c.name.clone()));
            }
            if let Some(c) = &source.secret {
                refs.insert((ObjectKind::Secret, c.name.clone()));
            }
        }
    }
    let containers = spec.init_containers.iter().flatten().chain(&spec.containers);
    for c in containers {
        for from in c.env_from.iter().flatten() {
            if let Some(r) = &from.config_map_ref {
                refs.insert((ObjectKind::ConfigMap, r.name.clone()));
            }
            if let Some(r) = &from.secret_ref {
                refs.insert((ObjectKind::Secret, r.name.clone()));
            }
        }
        for from in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
            if let Some(r) = &from.config_map_key_ref {
                refs.insert((ObjectKind::ConfigMap, r.name.clone()));
            }
            if let Some(r) = &from.secret_key_ref {
                refs.insert((ObjectKind::Secret, r.name.clone()));
            }
        }
    }
    refs
}

/// The objects of one manifest file (`manifest::parse`), e.g. for `apply -f` of a pod with its
/// configuration.
impl Objects for Vec<Object> {
    fn config_map(&self, namespace: &str, name: &str) -> Option<&ConfigMap> {
        self.iter().find_map(|o| match o {
            Object::ConfigMap(c) if o.namespace() == namespace && o.name() == name => Some(&**c),
            _ => None,
        })
    }

    fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.iter().find_map(|o| match o {
            Object::Secret(s) if o.namespace() == namespace && o.name() == name => Some(&**s),
            _ => None,
        })
    }

    fn services(&self, namespace: &str) -> Vec<&Service> {
        (self.iter())
            .filter_map(|o| match o {
                Object::Service(s) if o.namespace() == namespace => Some(&**s),
                _ => None,
            })
            .collect()
    }
}

/// Who an error is about: messages start with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    Container(String),
    Volume(String),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::Container(name) => write!(f, "container {name:?}"),
            Owner::Volume(name) => write!(f, "volume {name:?}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    ConfigMap,
    Secret,
}

impl ObjectKind {
    /// The object's `kind`, as the cluster state keys it.
    pub fn kube_kind(self) -> &'static str {
        match self {
            ObjectKind::ConfigMap => "ConfigMap",
            ObjectKind::Secret => "Secret",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::ConfigMap => "configmap",
            ObjectKind::Secret => "secret",
        })
    }
}

/// Why a container cannot start (or a volume cannot be filled) as the manifest asks. Most are
/// about objects that are missing when the pod starts, so the runtime reports them on the
/// container (`CreateContainerConfigError`) and tries again later.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SpecError {
    /// `plan_container` was asked for a container the pod does not have.
    #[error("no container {0:?} in the pod")]
    NoContainer(String),
    /// A ConfigMap or Secret the pod references without `optional: true` does not exist.
    #[error("{owner}: {kind} {name:?} not found")]
    NotFound { owner: Owner, kind: ObjectKind, name: String },
    /// The object exists but lacks a key the pod references without `optional: true`.
    #[error("{owner}: key {key:?} not in {kind} {name:?}")]
    MissingKey { owner: Owner, kind: ObjectKind, name: String, key: String },
    /// Environment variables are text; a secret value used as one must be UTF-8.
    #[error("container {container:?}: key {key:?} of secret {name:?} is not utf-8 text")]
    NotText { container: String, name: String, key: String },
    #[error(
        "container {container:?}: no command: the image has no entrypoint or cmd and the container sets none"
    )]
    NoCommand { container: String },
    /// A value the manifest check lets through but that cannot run (or that it should have caught).
    #[error("{owner}: {field}: {reason}")]
    Invalid { owner: Owner, field: String, reason: String },
}

/// What the whole pod needs before any container starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPlan {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `serviceAccountName`, else the deprecated `serviceAccount`, else `default`: the pod's
    /// identity in the mesh.
    pub service_account: String,
    /// `spec.hostname`, else the pod name cut to a DNS label.
    pub hostname: String,
    pub restart: RestartPolicy,
    /// `terminationGracePeriodSeconds`: how long containers get between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// `shareProcessNamespace`: the containers share the pod's pid namespace (init is their
    /// PID 1) instead of each getting its own (its main process as PID 1).
    pub share_process_namespace: bool,
    /// Container names in manifest order; init containers run one after the other first.
    pub init_containers: Vec<String>,
    pub containers: Vec<String>,
    pub volumes: BTreeMap<String, VolumePlan>,
    /// Every port of the app containers, for host port forwards.
    pub ports: Vec<PortPlan>,
    /// `securityContext.fsGroup`: group owner of the pod's emptyDir, configMap and secret
    /// volumes (directories setgid, files group-readable).
    pub fs_group: Option<u32>,
    /// `dnsPolicy`, `dnsConfig`, `hostAliases`: the pod's resolv.conf and hosts files.
    pub dns: super::dns::DnsPlan,
}

/// A pod volume, created once per pod and mounted into containers by `MountPlan`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumePlan {
    /// `memory`: `medium: Memory` (a tmpfs); `size_limit` in bytes.
    EmptyDir { memory: bool, size_limit: Option<u64> },
    /// `kind`: the `type` check (`Directory`, `File`, `DirectoryOrCreate`...), none when unset.
    HostPath { path: String, kind: Option<String> },
    /// Files from a ConfigMap (`volume_files`); `items: None` means every key, named after it.
    ConfigMap { name: String, items: Option<Vec<KeyToPath>>, default_mode: u32, optional: bool },
    /// Files from a Secret, as for `ConfigMap`.
    Secret { name: String, items: Option<Vec<KeyToPath>>, default_mode: u32, optional: bool },
    /// A claim's local volume on this host (`<state-dir>/volumes/<namespace>/<claim>`): kept
    /// when the pod goes, found again by the next pod of the same claim here.
    /// A claim's local volume (`readOnly`: every mount of it read-only).
    Claim { claim: String, read_only: bool },
    /// Files from several sources in one directory (`projected`; a `downwardAPI` volume is
    /// one downward source): `projected_files`.
    Projected { sources: Vec<Projection>, default_mode: u32 },
}

/// One source of a projected volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Projection {
    ConfigMap { name: String, items: Option<Vec<KeyToPath>>, optional: bool },
    Secret { name: String, items: Option<Vec<KeyToPath>>, optional: bool },
    Downward(Vec<DownwardFile>),
}

/// One file of the downward API in a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownwardFile {
    pub path: String,
    pub source: DownwardSource,
    pub mode: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownwardSource {
    /// A `fieldRef` path: metadata.name, namespace, uid, labels, annotations (whole maps, or
    /// one key).
    Field(String),
    /// A `resourceFieldRef` of a named container (`divisor`: the quantity as written).
    Resource { container: String, resource: String, divisor: Option<String> },
}

/// One key of a configMap/secret volume, written at `path` (relative to the volume).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyToPath {
    pub key: String,
    pub path: String,
    /// Overrides the volume's `default_mode`.
    pub mode: Option<u32>,
}

/// A file to write into a configMap or secret volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeFile {
    /// Relative to the volume's directory; never absolute, never with `.` or `..` components.
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPlan {
    pub container: String,
    pub name: Option<String>,
    pub container_port: u16,
    pub host_port: Option<u16>,
    pub host_ip: Option<String>,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// Everything needed to start one container but its root filesystem and cgroups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPlan {
    pub name: String,
    pub init: bool,
    pub image: String,
    pub argv: Vec<String>,
    /// `NAME=value`, one entry per name.
    pub env: Vec<String>,
    pub cwd: String,
    /// The image's `User` (`name`, `uid`, `uid:gid`...); empty means root.
    pub user: String,
    pub mounts: Vec<MountPlan>,
    pub memory_limit: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    /// The cpu request (the limit when only a limit is set, as Kubernetes defaults it): the
    /// container's share of contended cpu.
    pub cpu_request_millis: Option<u64>,
    pub readiness: Option<ProbePlan>,
    pub liveness: Option<ProbePlan>,
    /// `startupProbe`: readiness and liveness wait for its first success; its failure
    /// restarts the container.
    pub startup: Option<ProbePlan>,
    /// `lifecycle.postStart`: run as the container starts; the container is not started
    /// (nor probed, nor ready) until it succeeds, and is restarted if it fails.
    pub post_start: Option<Hook>,
    /// `lifecycle.preStop`: run at deletion before SIGTERM, inside the grace period.
    pub pre_stop: Option<Hook>,
    /// `terminationMessagePath` (default `/dev/termination-log`): a file the container may
    /// write; what it holds when the container ends is its terminated state's message.
    pub termination_message_path: String,
    /// `terminationMessagePolicy: FallbackToLogsOnError`: an empty message of a failed run
    /// is the tail of its log.
    pub termination_message_from_logs: bool,
    /// User, groups, capabilities, seccomp... from the pod's and the container's
    /// `securityContext`.
    pub security: SecurityPlan,
    /// `stdin`, `stdinOnce` and `tty`: what `attach` may do with the container.
    pub io: Io,
}

/// A container's standard streams as its manifest asks for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Io {
    /// `stdin: true`: input is kept open for `attach` (else it is /dev/null).
    pub stdin: bool,
    /// `stdinOnce: true`: input ends when the first attach that wrote to it detaches.
    pub stdin_once: bool,
    /// `tty: true`: the streams are a terminal.
    pub tty: bool,
}

impl Io {
    pub fn of(c: &Container) -> Self {
        Self {
            stdin: c.stdin == Some(true),
            stdin_once: c.stdin == Some(true) && c.stdin_once == Some(true),
            tty: c.tty == Some(true),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPlan {
    /// A key of `PodPlan::volumes`.
    pub volume: String,
    /// Absolute path inside the container.
    pub target: String,
    /// Always set for configMap and secret volumes, which Kubernetes mounts read-only.
    pub read_only: bool,
    /// Mount only this path of the volume (relative, no `..`).
    pub sub_path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePlan {
    pub action: ProbeAction,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    /// Consecutive successes that make a failed container ready again.
    pub success_threshold: u32,
    /// Consecutive failures that make it unready (readiness) or restart it (liveness).
    pub failure_threshold: u32,
}

/// Where a container may leave its termination message, unless it says otherwise.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";

/// A lifecycle hook: a probe's exec or httpGet action, or a pause.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hook {
    Action(ProbeAction),
    Sleep(Duration),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    /// Run in the container; exit status 0 is success.
    Exec(Vec<String>),
    /// A GET on the pod's address (or `host`); a status 200-399 is success.
    Http { port: u16, path: String, host: Option<String>, https: bool, headers: Vec<(String, String)> },
    /// A connection that opens is success.
    Tcp { port: u16, host: Option<String> },
    /// grpc.health.v1.Health/Check on the pod's address for `service` ("": the server as a
    /// whole); SERVING is success.
    Grpc { port: u16, service: String },
}

/// The pod-wide plan. Infallible: `crate::manifest` has checked what could fail; a volume
/// without a usable source (which it rejects) is left out, so a mount of it fails in
/// `plan_container`.
pub fn plan_pod(pod: &Pod) -> PodPlan {
    let spec = pod.spec.as_ref();
    let service_account = service_account(pod);
    let names = |list: &[Container]| list.iter().map(|c| c.name.clone()).collect();
    let app = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    PodPlan {
        namespace: namespace(pod).to_owned(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        labels: pod.metadata.labels.clone().unwrap_or_default(),
        service_account,
        hostname: hostname(pod),
        restart: RestartPolicy::parse(spec.and_then(|s| s.restart_policy.as_deref())),
        grace: spec
            .and_then(|s| s.termination_grace_period_seconds)
            .map_or(DEFAULT_GRACE, |s| Duration::from_secs(s.max(0).unsigned_abs())),
        share_process_namespace: spec.and_then(|s| s.share_process_namespace).unwrap_or(false),
        init_containers: names(spec.and_then(|s| s.init_containers.as_deref()).unwrap_or_default()),
        containers: names(app),
        volumes: volumes(pod),
        ports: app.iter().flat_map(ports).collect(),
        fs_group: spec
            .and_then(|s| s.security_context.as_ref())
            .and_then(|s| s.fs_group)
            .and_then(|g| u32::try_from(g).ok()),
        dns: super::dns::DnsPlan::of(pod),
    }
}

fn namespace(pod: &Pod) -> &str {
    pod.metadata.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or("default")
}

/// The service account a pod runs as (its identity): `serviceAccountName`, else the
/// deprecated `serviceAccount`, else `default`.
pub fn service_account(pod: &Pod) -> String {
    let non_empty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
    (pod.spec.as_ref())
        .and_then(|s| non_empty(&s.service_account_name).or_else(|| non_empty(&s.service_account)))
        .unwrap_or_else(|| "default".to_owned())
}

/// As the kubelet: `spec.hostname`, else the pod name, cut to 63 characters without a trailing
/// `-` or `.`.
fn hostname(pod: &Pod) -> String {
    if let Some(h) = pod.spec.as_ref().and_then(|s| s.hostname.as_deref()).filter(|h| !h.is_empty()) {
        return h.to_owned();
    }
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    match name.char_indices().nth(HOSTNAME_MAX) {
        Some((cut, _)) => name[..cut].trim_end_matches(['-', '.']).to_owned(),
        None => name.to_owned(),
    }
}

fn volumes(pod: &Pod) -> BTreeMap<String, VolumePlan> {
    let list = pod.spec.as_ref().and_then(|s| s.volumes.as_deref()).unwrap_or_default();
    list.iter().filter_map(|v| Some((v.name.clone(), volume(v)?))).collect()
}

fn volume(v: &Volume) -> Option<VolumePlan> {
    let mode = |m: i32| u32::try_from(m).map_or(DEFAULT_MODE, |m| m & 0o777);
    let items = |items: &Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>| {
        items.as_ref().map(|items| {
            items
                .iter()
                .map(|i| KeyToPath { key: i.key.clone(), path: i.path.clone(), mode: i.mode.map(mode) })
                .collect()
        })
    };
    if let Some(e) = &v.empty_dir {
        return Some(VolumePlan::EmptyDir {
            memory: e.medium.as_deref() == Some("Memory"),
            // The manifest check does not parse sizeLimit; an unparsable one means no limit.
            size_limit: e.size_limit.as_ref().and_then(|q| parse_memory_bytes(&q.0).ok()),
        });
    }
    if let Some(h) = &v.host_path {
        let kind = h.type_.clone().filter(|t| !t.is_empty());
        return Some(VolumePlan::HostPath { path: h.path.clone(), kind });
    }
    if let Some(c) = &v.persistent_volume_claim {
        return Some(VolumePlan::Claim { claim: c.claim_name.clone(), read_only: c.read_only == Some(true) });
    }
    let downward = |items: &Option<Vec<DownwardAPIVolumeFile>>| {
        let file = |f: &DownwardAPIVolumeFile| {
            let source = match (&f.field_ref, &f.resource_field_ref) {
                (Some(r), _) => DownwardSource::Field(r.field_path.clone()),
                (None, Some(r)) => DownwardSource::Resource {
                    container: r.container_name.clone().unwrap_or_default(),
                    resource: r.resource.clone(),
                    divisor: r.divisor.as_ref().map(|q| q.0.clone()),
                },
                (None, None) => return None,
            };
            Some(DownwardFile { path: f.path.clone(), source, mode: f.mode.map(mode) })
        };
        Projection::Downward(items.iter().flatten().filter_map(file).collect())
    };
    if let Some(d) = &v.downward_api {
        let default_mode = d.default_mode.map_or(DEFAULT_MODE, mode);
        return Some(VolumePlan::Projected { sources: vec![downward(&d.items)], default_mode });
    }
    if let Some(p) = &v.projected {
        // (A serviceAccountToken source is refused at apply.)
        let sources = (p.sources.iter().flatten())
            .filter_map(|s| {
                if let Some(c) = &s.config_map {
                    return Some(Projection::ConfigMap {
                        name: c.name.clone(),
                        items: items(&c.items),
                        optional: c.optional == Some(true),
                    });
                }
                if let Some(c) = &s.secret {
                    return Some(Projection::Secret {
                        name: c.name.clone(),
                        items: items(&c.items),
                        optional: c.optional == Some(true),
                    });
                }
                s.downward_api.as_ref().map(|d| downward(&d.items))
            })
            .collect();
        return Some(VolumePlan::Projected {
            sources,
            default_mode: p.default_mode.map_or(DEFAULT_MODE, mode),
        });
    }
    if let Some(c) = &v.config_map {
        return Some(VolumePlan::ConfigMap {
            name: c.name.clone(),
            items: items(&c.items),
            default_mode: c.default_mode.map_or(DEFAULT_MODE, mode),
            optional: c.optional == Some(true),
        });
    }
    let s = v.secret.as_ref()?;
    Some(VolumePlan::Secret {
        name: s.secret_name.clone().unwrap_or_default(),
        items: items(&s.items),
        default_mode: s.default_mode.map_or(DEFAULT_MODE, mode),
        optional: s.optional == Some(true),
    })
}

fn ports(c: &Container) -> Vec<PortPlan> {
    let port = |p: i32| u16::try_from(p).ok().filter(|p| *p != 0);
    c.ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(PortPlan {
                container: c.name.clone(),
                name: p.name.clone().filter(|n| !n.is_empty()),
                container_port: port(p.container_port)?,
                host_port: p.host_port.and_then(port),
                host_ip: p.host_ip.clone().filter(|ip| !ip.is_empty()),
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
            })
        })
        .collect()
}

/// The files of a configMap or secret volume (none for other kinds). ConfigMap `data` and
/// `binaryData`; Secret `data` and `stringData` (which wins, as the API server merges it).
/// A missing object gives no files when the volume is optional; a missing item key is skipped
/// when optional.
pub fn volume_files(
    namespace: &str,
    volume: &str,
    plan: &VolumePlan,
    objects: &dyn Objects,
) -> Result<Vec<VolumeFile>, SpecError> {
    let owner = || Owner::Volume(volume.to_owned());
    let (kind, name, items, default_mode, optional, data) = match plan {
        VolumePlan::ConfigMap { name, items, default_mode, optional } => {
            let data = objects.config_map(namespace, name).map(config_map_files);
            (ObjectKind::ConfigMap, name, items, *default_mode, *optional, data)
        }
        VolumePlan::Secret { name, items, default_mode, optional } => {
            let data = objects.secret(namespace, name).map(secret_data);
            (ObjectKind::Secret, name, items, *default_mode, *optional, data)
        }
        VolumePlan::EmptyDir { .. }
        | VolumePlan::HostPath { .. }
        | VolumePlan::Claim { .. }
        | VolumePlan::Projected { .. } => return Ok(Vec::new()),
    };
    let Some(data) = data else {
        if optional {
            return Ok(Vec::new());
        }
        return Err(SpecError::NotFound { owner: owner(), kind, name: name.clone() });
    };
    let wanted: Vec<(&str, &str, u32)> = match items {
        None => data.keys().map(|k| (*k, *k, default_mode)).collect(),
        Some(items) => {
            items.iter().map(|i| (i.key.as_str(), i.path.as_str(), i.mode.unwrap_or(default_mode))).collect()
        }
    };
    let mut files = Vec::with_capacity(wanted.len());
    for (key, path, mode) in wanted {
        let Some(bytes) = data.get(key) else {
            if optional {
                continue;
            }
            let (name, key) = (name.clone(), key.to_owned());
            return Err(SpecError::MissingKey { owner: owner(), kind, name, key });
        };
        if !is_volume_file(path) {
            return Err(SpecError::Invalid {
                owner: owner(),
                field: "path".into(),
                reason: format!("{path:?} must be relative, without '.' or '..' components"),
            });
        }
        files.push(VolumeFile { path: path.to_owned(), data: bytes.to_vec(), mode });
    }
    Ok(files)
}

/// The files of a projected (or downwardAPI) volume of `pod`, source by source: configMap
/// and secret sources as their volumes' (`volume_files`), downward files with the values the
/// env's downward API gives (labels and annotations whole as `key="value"` lines, sorted, as
/// the kubelet writes them). Written once, when the pod starts.
pub fn projected_files(
    pod: &Pod,
    volume: &str,
    sources: &[Projection],
    default_mode: u32,
    objects: &dyn Objects,
) -> Result<Vec<VolumeFile>, SpecError> {
    let ns = namespace(pod);
    let invalid = |field: String, reason: String| SpecError::Invalid {
        owner: Owner::Volume(volume.to_owned()),
        field,
        reason,
    };
    let mut files = Vec::new();
    for source in sources {
        let (name, items, optional) = match source {
            Projection::ConfigMap { name, items, optional } => {
                let plan = VolumePlan::ConfigMap {
                    name: name.clone(),
                    items: items.clone(),
                    default_mode,
                    optional: *optional,
                };
                files.extend(volume_files(ns, volume, &plan, objects)?);
                continue;
            }
            Projection::Secret { name, items, optional } => (name, items, optional),
            Projection::Downward(list) => {
                for f in list {
                    if !is_volume_file(&f.path) {
                        return Err(invalid(
                            "path".into(),
                            format!("{:?} must be relative, without '.' or '..' components", f.path),
                        ));
                    }
                    let value = match &f.source {
                        DownwardSource::Field(path) => volume_field_value(pod, path).ok_or_else(|| {
                            invalid(
                                "fieldRef.fieldPath".into(),
                                format!("{path:?} is not a field the downward API offers in volumes"),
                            )
                        })?,
                        DownwardSource::Resource { container, resource, divisor } => {
                            let target = containers(pod).find(|c| &c.name == container).ok_or_else(|| {
                                invalid(
                                    "resourceFieldRef.containerName".into(),
                                    format!("no container {container:?} in the pod"),
                                )
                            })?;
                            let selector = ResourceFieldSelector {
                                container_name: Some(container.clone()),
                                resource: resource.clone(),
                                divisor: divisor
                                    .clone()
                                    .map(k8s_openapi::apimachinery::pkg::api::resource::Quantity),
                            };
                            resource_value(target, &selector, objects)
                                .map_err(|(field, e)| invalid(field, e))?
                        }
                    };
                    files.push(VolumeFile {
                        path: f.path.clone(),
                        data: value.into_bytes(),
                        mode: f.mode.unwrap_or(default_mode),
                    });
                }
                continue;
            }
        };
        let plan = VolumePlan::Secret {
            name: name.clone(),
            items: items.clone(),
            default_mode,
            optional: *optional,
        };
        files.extend(volume_files(ns, volume, &plan, objects)?);
    }
    Ok(files)
}

/// Every container of `pod`, init containers first.
fn containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    (pod.spec.iter()).flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers))
}

/// A downward volume file's value: the env's fields of the pod's metadata, or its labels or
/// annotations whole (`None`: not offered in volumes).
fn volume_field_value(pod: &Pod, path: &str) -> Option<String> {
    let format = |map: &Option<BTreeMap<String, String>>| {
        let lines: Vec<String> = map.iter().flatten().map(|(k, v)| format!("{k}={v:?}")).collect();
        lines.join("\n")
    };
    match path {
        "metadata.labels" => Some(format(&pod.metadata.labels)),
        "metadata.annotations" => Some(format(&pod.metadata.annotations)),
        _ if path.starts_with("metadata.") => field_value(pod, path),
        _ => None,
    }
}

fn config_map_files(c: &ConfigMap) -> BTreeMap<&str, &[u8]> {
    let text = c.data.iter().flatten().map(|(k, v)| (k.as_str(), v.as_bytes()));
    let binary = c.binary_data.iter().flatten().map(|(k, v)| (k.as_str(), v.0.as_slice()));
    text.chain(binary).collect()
}

fn secret_data(s: &Secret) -> BTreeMap<&str, &[u8]> {
    let data = s.data.iter().flatten().map(|(k, v)| (k.as_str(), v.0.as_slice()));
    let text = s.string_data.iter().flatten().map(|(k, v)| (k.as_str(), v.as_bytes()));
    data.chain(text).collect()
}

/// A path that stays below the directory it is joined to.
fn is_descending(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && !path.contains('\0') && path.split('/').all(|c| c != "..")
}

/// A volume file path: descending and canonical (so two items cannot name one file
/// differently), and not starting with `..` (Kubernetes keeps those names for its writer).
fn is_volume_file(path: &str) -> bool {
    is_descending(path) && !path.starts_with("..") && path.split('/').all(|c| !c.is_empty() && c != ".")
}

/// The plan for container `name` (init or app) of `pod`, run from `image`.
pub fn plan_container(
    pod: &Pod,
    name: &str,
    image: &ImageConfig,
    objects: &dyn Objects,
) -> Result<ContainerPlan, SpecError> {
    let spec = pod.spec.as_ref().ok_or_else(|| SpecError::NoContainer(name.to_owned()))?;
    let init = spec.init_containers.iter().flatten().map(|c| (c, true));
    let (c, is_init) = init
        .chain(spec.containers.iter().map(|c| (c, false)))
        .find(|(c, _)| c.name == name)
        .ok_or_else(|| SpecError::NoContainer(name.to_owned()))?;
    let invalid = |field: String, reason: String| SpecError::Invalid {
        owner: Owner::Container(c.name.clone()),
        field,
        reason,
    };
    let env = environment(pod, c, image, objects)?;
    let argv = argv(c, image, &env)?;
    let quantity = |kind: &str, resource: &str| -> Result<Option<u64>, SpecError> {
        let resources = c.resources.as_ref();
        let list =
            resources.and_then(|r| if kind == "limits" { r.limits.as_ref() } else { r.requests.as_ref() });
        let Some(q) = list.and_then(|l| l.get(resource)) else { return Ok(None) };
        let parse = if resource == "cpu" { parse_cpu_millis } else { parse_memory_bytes };
        parse(&q.0).map(Some).map_err(|reason| invalid(format!("resources.{kind}.{resource}"), reason))
    };
    let cpu_limit_millis = quantity("limits", "cpu")?;
    let probe = |field: &str, probe: &Option<Probe>| {
        probe.as_ref().map(|p| plan_probe(c, field, p, &env)).transpose()
    };
    let (readiness, liveness) =
        (probe("readinessProbe", &c.readiness_probe)?, probe("livenessProbe", &c.liveness_probe)?);
    let startup = probe("startupProbe", &c.startup_probe)?;
    let lifecycle = c.lifecycle.as_ref();
    let hook =
        |field: &str, h: Option<&LifecycleHandler>| h.map(|h| plan_hook(c, field, h, &env)).transpose();
    let post_start = hook("lifecycle.postStart", lifecycle.and_then(|l| l.post_start.as_ref()))?;
    let pre_stop = hook("lifecycle.preStop", lifecycle.and_then(|l| l.pre_stop.as_ref()))?;
    let mut defaults = Vec::new();
    if env.get("PATH").is_none() {
        defaults.push(format!("PATH={DEFAULT_PATH}"));
    }
    if env.get("HOSTNAME").is_none() {
        defaults.push(format!("HOSTNAME={}", hostname(pod)));
    }
    Ok(ContainerPlan {
        name: c.name.clone(),
        init: is_init,
        image: c.image.clone().unwrap_or_default(),
        argv,
        env: defaults.into_iter().chain(env.entries.into_iter().map(|(k, v)| format!("{k}={v}"))).collect(),
        cwd: [c.working_dir.as_deref(), Some(image.working_dir.as_str())]
            .into_iter()
            .flatten()
            .find(|d| !d.is_empty())
            .unwrap_or("/")
            .to_owned(),
        user: image.user.clone(),
        mounts: mounts(c, &volumes(pod))?,
        memory_limit: quantity("limits", "memory")?,
        cpu_limit_millis,
        cpu_request_millis: quantity("requests", "cpu")?.or(cpu_limit_millis),
        readiness,
        liveness,
        startup,
        post_start,
        pre_stop,
        termination_message_path: c
            .termination_message_path
            .clone()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_PATH.to_owned()),
        termination_message_from_logs: c.termination_message_policy.as_deref()
            == Some("FallbackToLogsOnError"),
        security: super::security::plan(spec.security_context.as_ref(), c),
        io: Io::of(c),
    })
}

/// An environment being built: one entry per name, where it was first defined.
#[derive(Debug, Default)]
struct Env {
    entries: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Env {
    fn set(&mut self, name: String, value: String) {
        match self.index.get(&name) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(name.clone(), self.entries.len());
                self.entries.push((name, value));
            }
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.index.get(name).map(|&i| self.entries[i].1.as_str())
    }
}

/// A name that can stand left of `=` in `NAME=value`.
fn is_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0'])
}

/// Image env, then `envFrom` sources in order, then `env` in order; `env` values expand
/// `$(VAR)` from what is defined before them (image env included).
fn environment(
    pod: &Pod,
    c: &Container,
    image: &ImageConfig,
    objects: &dyn Objects,
) -> Result<Env, SpecError> {
    let namespace = namespace(pod);
    let owner = || Owner::Container(c.name.clone());
    let not_found = |kind, name: &str| SpecError::NotFound { owner: owner(), kind, name: name.to_owned() };
    let mut env = Env::default();
    for entry in &image.env {
        if let Some((k, v)) = entry.split_once('=').filter(|(k, _)| is_env_name(k)) {
            env.set(k.to_owned(), v.to_owned());
        }
    }
    if pod.spec.as_ref().and_then(|s| s.enable_service_links) != Some(false) {
        let mut services = objects.services(namespace);
        services.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for (k, v) in services.into_iter().flat_map(service_links) {
            env.set(k, v);
        }
    }
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or_default();
        // Keys that cannot be variable names are skipped, as the kubelet skips invalid ones.
        let mut add = |k: &str, v: String| {
            let name = format!("{prefix}{k}");
            if is_env_name(&name) {
                env.set(name, v);
            }
        };
        if let Some(r) = &from.config_map_ref {
            match objects.config_map(namespace, &r.name) {
                Some(map) => map.data.iter().flatten().for_each(|(k, v)| add(k, v.clone())),
                None if r.optional == Some(true) => {}
                None => return Err(not_found(ObjectKind::ConfigMap, &r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match objects.secret(namespace, &r.name) {
                Some(secret) => {
                    for (k, v) in secret_data(secret) {
                        add(k, text(c, &r.name, k, v)?);
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(not_found(ObjectKind::Secret, &r.name)),
            }
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        if !is_env_name(&e.name) {
            return Err(SpecError::Invalid {
                owner: owner(),
                field: format!("env[{i}].name"),
                reason: format!("{:?} is not a variable name", e.name),
            });
        }
        let value = match &e.value_from {
            None => expand(e.value.as_deref().unwrap_or_default(), |n| env.get(n)),
            Some(from) if from.field_ref.is_some() || from.resource_field_ref.is_some() => {
                downward(pod, c, i, from, objects)?
            }
            Some(from) => match key_ref(c, i, from, namespace, objects)? {
                Some(value) => value,
                None => continue,
            },
        };
        env.set(e.name.clone(), value);
    }
    Ok(env)
}

/// A Service's variables, as the kubelet gives them to the pods of its namespace
/// (`enableServiceLinks`): `NAME_SERVICE_HOST`, `NAME_SERVICE_PORT` (the first port),
/// `NAME_SERVICE_PORT_PORTNAME` per named port, and Docker's link variables (`NAME_PORT`,
/// `NAME_PORT_80_TCP`, `_PROTO`, `_PORT`, `_ADDR`). None for a Service without a cluster IP.
fn service_links(svc: &Service) -> Vec<(String, String)> {
    let var = |s: &str| s.to_ascii_uppercase().replace('-', "_");
    let Some(spec) = svc.spec.as_ref() else { return Vec::new() };
    let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty() && *ip != "None") else {
        return Vec::new();
    };
    let name = var(svc.metadata.name.as_deref().unwrap_or_default());
    let ports = spec.ports.as_deref().unwrap_or_default();
    let mut out = vec![(format!("{name}_SERVICE_HOST"), ip.to_owned())];
    if let Some(first) = ports.first() {
        out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
    }
    for p in ports {
        if let Some(port_name) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((format!("{name}_SERVICE_PORT_{}", var(port_name)), p.port.to_string()));
        }
    }
    for (i, p) in ports.iter().enumerate() {
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        let url = format!("{}://{ip}:{}", proto.to_ascii_lowercase(), p.port);
        if i == 0 {
            out.push((format!("{name}_PORT"), url.clone()));
        }
        let prefix = format!("{name}_PORT_{}_{}", p.port, proto.to_ascii_uppercase());
        out.push((prefix.clone(), url));
        out.push((format!("{prefix}_PROTO"), proto.to_ascii_lowercase()));
        out.push((format!("{prefix}_PORT"), p.port.to_string()));
        out.push((format!("{prefix}_ADDR"), ip.to_owned()));
    }
    out
}

/// The downward API in `env`: a `fieldRef` to the pod's metadata or spec, or a
/// `resourceFieldRef` to a container's cpu or memory, with Kubernetes' values (a label or
/// annotation not set reads as empty; a limit not set reads as the host's allocatable; a
/// request not set as the limit, else 0; divided by `divisor`, rounded up).
fn downward(
    pod: &Pod,
    c: &Container,
    i: usize,
    from: &EnvVarSource,
    objects: &dyn Objects,
) -> Result<String, SpecError> {
    let invalid = |field: &str, reason: String| SpecError::Invalid {
        owner: Owner::Container(c.name.clone()),
        field: format!("env[{i}].valueFrom.{field}"),
        reason,
    };
    if let Some(f) = &from.field_ref {
        return field_value(pod, &f.field_path).ok_or_else(|| {
            invalid(
                "fieldRef.fieldPath",
                format!("{:?} is not a field the downward API offers here", f.field_path),
            )
        });
    }
    let Some(r) = &from.resource_field_ref else {
        return Err(invalid("", "needs fieldRef or resourceFieldRef".into()));
    };
    let target = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => c,
        Some(name) => containers(pod).find(|t| t.name == name).ok_or_else(|| {
            invalid("resourceFieldRef.containerName", format!("no container {name:?} in the pod"))
        })?,
    };
    resource_value(target, r, objects).map_err(|(field, reason)| invalid(&field, reason))
}

/// A `resourceFieldRef`'s value for container `target`: its limit (the host's allocatable
/// when not set) or request (the limit when not set, else 0) of cpu or memory, divided by
/// `divisor` and rounded up. An error names the selector's field.
fn resource_value(
    target: &Container,
    r: &ResourceFieldSelector,
    objects: &dyn Objects,
) -> Result<String, (String, String)> {
    let field = || "resourceFieldRef".to_owned();
    let (kind, resource) = r
        .resource
        .split_once('.')
        .filter(|(k, r)| matches!(*k, "limits" | "requests") && matches!(*r, "cpu" | "memory"))
        .ok_or_else(|| {
            (
                field(),
                format!(
                    "resource {:?}: limits.cpu, limits.memory, requests.cpu or requests.memory",
                    r.resource
                ),
            )
        })?;
    let parse = if resource == "cpu" { parse_cpu_millis } else { parse_memory_bytes };
    let of = |list: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>| {
        list.and_then(|l| l.get(resource)).map(|q| parse(&q.0)).transpose()
    };
    let resources = target.resources.as_ref();
    let limit = of(resources.and_then(|r| r.limits.as_ref())).map_err(|e| (field(), e))?;
    let value = if kind == "limits" {
        match limit {
            Some(v) => v,
            None => {
                let (cpu, memory) = objects.allocatable().ok_or_else(|| {
                    (
                        field(),
                        format!(
                            "{} sets no {} and this host's allocatable is unknown",
                            target.name, r.resource
                        ),
                    )
                })?;
                if resource == "cpu" {
                    cpu
                } else {
                    memory
                }
            }
        }
    } else {
        of(resources.and_then(|r| r.requests.as_ref())).map_err(|e| (field(), e))?.or(limit).unwrap_or(0)
    };
    let divisor_field = || "resourceFieldRef.divisor".to_owned();
    let divisor = match &r.divisor {
        Some(q) => parse(&q.0).map_err(|e| (divisor_field(), e))?,
        None if resource == "cpu" => 1000,
        None => 1,
    };
    if divisor == 0 {
        return Err((divisor_field(), "must be more than 0".into()));
    }
    Ok(value.div_ceil(divisor).to_string())
}

/// A `fieldRef` path's value for `pod` (`None`: not one the downward API offers in env).
fn field_value(pod: &Pod, path: &str) -> Option<String> {
    let m = &pod.metadata;
    let status = pod.status.as_ref();
    let keyed = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default()
    };
    Some(match env_field(path).ok()? {
        EnvField::Name => m.name.clone().unwrap_or_default(),
        EnvField::Namespace => namespace(pod).to_owned(),
        EnvField::Uid => m.uid.clone().unwrap_or_default(),
        EnvField::Label(key) => keyed(&m.labels, key),
        EnvField::Annotation(key) => keyed(&m.annotations, key),
        EnvField::NodeName => pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        EnvField::ServiceAccountName => service_account(pod),
        // Filled in by the runtime before it plans a container that reads them
        // (`with_addresses`).
        EnvField::PodIp => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        EnvField::HostIp => status.and_then(|s| s.host_ip.clone()).unwrap_or_default(),
        EnvField::HostIps => status
            .and_then(|s| s.host_ips.as_ref())
            .map(|ips| ips.iter().map(|i| i.ip.as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
    })
}

/// Whether a container of `pod` reads its pod's or host's address from the downward API.
pub fn reads_addresses(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.env.iter().flatten())
        .any(|e| {
            let path =
                e.value_from.as_ref().and_then(|v| v.field_ref.as_ref()).map(|f| f.field_path.as_str());
            matches!(
                env_field(path.unwrap_or_default()),
                Ok(EnvField::PodIp | EnvField::HostIp | EnvField::HostIps)
            )
        })
}

/// `pod` with its mesh address and its host's addresses in `status`, where the downward API
/// reads them.
pub fn with_addresses(pod: &Pod, pod_ip: &str, host_ips: &[String]) -> Pod {
    use k8s_openapi::api::core::v1::{HostIP, PodIP, PodStatus};
    let mut pod = pod.clone();
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.pod_ip = Some(pod_ip.to_owned());
    status.pod_ips = Some(vec![PodIP { ip: pod_ip.to_owned() }]);
    status.host_ip = host_ips.first().cloned();
    status.host_ips = Some(host_ips.iter().map(|ip| HostIP { ip: ip.clone() }).collect());
    pod
}

/// The value of a `configMapKeyRef` or `secretKeyRef`; none when it is optional and missing.
fn key_ref(
    c: &Container,
    i: usize,
    from: &EnvVarSource,
    namespace: &str,
    objects: &dyn Objects,
) -> Result<Option<String>, SpecError> {
    let owner = || Owner::Container(c.name.clone());
    let missing = |optional: Option<bool>, error: SpecError| match optional {
        Some(true) => Ok(None),
        _ => Err(error),
    };
    if let Some(r) = &from.config_map_key_ref {
        let kind = ObjectKind::ConfigMap;
        let Some(map) = objects.config_map(namespace, &r.name) else {
            return missing(r.optional, SpecError::NotFound { owner: owner(), kind, name: r.name.clone() });
        };
        return match map.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(v) => Ok(Some(v.clone())),
            None => {
                let (name, key) = (r.name.clone(), r.key.clone());
                missing(r.optional, SpecError::MissingKey { owner: owner(), kind, name, key })
            }
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let kind = ObjectKind::Secret;
        let Some(secret) = objects.secret(namespace, &r.name) else {
            return missing(r.optional, SpecError::NotFound { owner: owner(), kind, name: r.name.clone() });
        };
        return match secret_data(secret).get(r.key.as_str()) {
            Some(v) => text(c, &r.name, &r.key, v).map(Some),
            None => {
                let (name, key) = (r.name.clone(), r.key.clone());
                missing(r.optional, SpecError::MissingKey { owner: owner(), kind, name, key })
            }
        };
    }
    Err(SpecError::Invalid {
        owner: owner(),
        field: format!("env[{i}].valueFrom"),
        reason: "needs one of configMapKeyRef, secretKeyRef".into(),
    })
}

fn text(c: &Container, secret: &str, key: &str, value: &[u8]) -> Result<String, SpecError> {
    String::from_utf8(value.to_vec()).map_err(|_| SpecError::NotText {
        container: c.name.clone(),
        name: secret.to_owned(),
        key: key.to_owned(),
    })
}

/// As container runtimes merge them: `command` replaces the image entrypoint and drops its
/// cmd, `args` replaces the cmd. Only what the pod sets is expanded (`$(VAR)`), as the kubelet
/// does before the image is involved.
fn argv(c: &Container, image: &ImageConfig, env: &Env) -> Result<Vec<String>, SpecError> {
    let expanded = |list: &Option<Vec<String>>| -> Vec<String> {
        list.iter().flatten().map(|s| expand(s, |n| env.get(n))).collect()
    };
    let (command, args) = (expanded(&c.command), expanded(&c.args));
    // `ENTRYPOINT [""]` is how a Dockerfile clears an inherited entrypoint.
    let entrypoint = match image.entrypoint.as_slice() {
        [only] if only.is_empty() => &[][..],
        e => e,
    };
    let argv: Vec<String> = match (command.is_empty(), args.is_empty()) {
        (false, _) => command.into_iter().chain(args).collect(),
        (true, false) => entrypoint.iter().cloned().chain(args).collect(),
        (true, true) => entrypoint.iter().chain(&image.cmd).cloned().collect(),
    };
    if argv.is_empty() {
        return Err(SpecError::NoCommand { container: c.name.clone() });
    }
    Ok(argv)
}

/// Kubernetes' `$(VAR)` expansion: a defined `VAR` is replaced, an undefined one stays as
/// written, `$$` is a literal `$` (so `$$(VAR)` gives `$(VAR)`); any other `$` is kept.
fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(next) = after.strip_prefix('$') {
            out.push('$');
            rest = next;
        } else if let Some((name, next)) = after.strip_prefix('(').and_then(|r| r.split_once(')')) {
            match lookup(name) {
                Some(value) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = next;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn mounts(c: &Container, volumes: &BTreeMap<String, VolumePlan>) -> Result<Vec<MountPlan>, SpecError> {
    let invalid = |field: String, reason: String| SpecError::Invalid {
        owner: Owner::Container(c.name.clone()),
        field,
        reason,
    };
    let mut out = Vec::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let field = |f: &str| format!("volumeMounts[{i}].{f}");
        let Some(volume) = volumes.get(&m.name) else {
            return Err(invalid(field("name"), format!("no volume named {:?} in spec.volumes", m.name)));
        };
        if !m.mount_path.starts_with('/') {
            return Err(invalid(field("mountPath"), format!("{:?} must be an absolute path", m.mount_path)));
        }
        let sub_path = m.sub_path.clone().filter(|s| !s.is_empty());
        if let Some(s) = sub_path.as_deref().filter(|s| !is_descending(s)) {
            return Err(invalid(field("subPath"), format!("{s:?} must be relative, without '..'")));
        }
        out.push(MountPlan {
            volume: m.name.clone(),
            target: m.mount_path.clone(),
            read_only: m.read_only == Some(true)
                || matches!(
                    volume,
                    VolumePlan::ConfigMap { .. } | VolumePlan::Secret { .. } | VolumePlan::Projected { .. }
                ),
            sub_path,
        });
    }
    Ok(out)
}

/// Kubernetes' defaults (0 s delay, every 10 s, 1 s timeout, 1 success, 3 failures), also for
/// zero values, as the API server defaults them. Ports named as strings are looked up in the
/// container's `ports`. Exec commands expand `$(VAR)` from the container's environment (the
/// kubelet uses only the literal `env` values there).
fn plan_probe(c: &Container, field: &str, p: &Probe, env: &Env) -> Result<ProbePlan, SpecError> {
    let invalid = |sub: &str, reason: String| SpecError::Invalid {
        owner: Owner::Container(c.name.clone()),
        field: format!("{field}.{sub}"),
        reason,
    };
    let grpc = p.grpc.as_ref().map(|g| {
        let port = u16::try_from(g.port).ok().filter(|n| *n != 0);
        (port, g.service.clone().unwrap_or_default())
    });
    let action = match (
        grpc,
        plan_action(c, field, p.exec.as_ref(), p.http_get.as_ref(), p.tcp_socket.as_ref(), env)?,
    ) {
        (Some((Some(port), service)), _) => ProbeAction::Grpc { port, service },
        (Some((None, _)), _) => return Err(invalid("grpc.port", "not 1-65535".into())),
        (None, Some(action)) => action,
        (None, None) => {
            return Err(invalid("exec", "a probe needs one of exec, httpGet, tcpSocket, grpc".into()))
        }
    };
    let positive = |v: Option<i32>, default: u32| {
        v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0).unwrap_or(default)
    };
    let success_threshold = positive(p.success_threshold, 1);
    if field != "readinessProbe" && success_threshold != 1 {
        return Err(invalid("successThreshold", "must be 1 for a liveness or startup probe".into()));
    }
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    Ok(ProbePlan {
        action,
        initial_delay: secs(p.initial_delay_seconds.and_then(|v| u32::try_from(v).ok()).unwrap_or(0)),
        period: secs(positive(p.period_seconds, 10)),
        timeout: secs(positive(p.timeout_seconds, 1)),
        success_threshold,
        failure_threshold: positive(p.failure_threshold, 3),
    })
}

/// A probe's or hook's action: exec (`$(VAR)` expanded from the container's environment),
/// httpGet or tcpSocket; `None` when none is given. Ports named as strings are looked up in
/// the container's `ports`.
fn plan_action(
    c: &Container,
    field: &str,
    exec: Option<&ExecAction>,
    http_get: Option<&HTTPGetAction>,
    tcp_socket: Option<&TCPSocketAction>,
    env: &Env,
) -> Result<Option<ProbeAction>, SpecError> {
    let invalid = |sub: &str, reason: String| SpecError::Invalid {
        owner: Owner::Container(c.name.clone()),
        field: format!("{field}.{sub}"),
        reason,
    };
    let port = |sub: &str, port: &IntOrString| -> Result<u16, SpecError> {
        let number = |n: i32| u16::try_from(n).ok().filter(|n| *n != 0);
        match port {
            IntOrString::Int(n) => number(*n).ok_or_else(|| invalid(sub, format!("port {n} is not 1-65535"))),
            // The kubelet's last resort is a number written as a string.
            IntOrString::String(name) => c
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .and_then(|p| number(p.container_port))
                .or_else(|| name.parse().ok().and_then(number))
                .ok_or_else(|| invalid(sub, format!("no port named {name:?} in the container"))),
        }
    };
    let host = |h: &Option<String>| h.clone().filter(|h| !h.is_empty());
    Ok(Some(if let Some(exec) = exec {
        ProbeAction::Exec(exec.command.iter().flatten().map(|s| expand(s, |n| env.get(n))).collect())
    } else if let Some(http) = http_get {
        let path = http.path.clone().filter(|p| !p.is_empty()).unwrap_or_else(|| "/".into());
        ProbeAction::Http {
            port: port("httpGet.port", &http.port)?,
            path: if path.starts_with('/') { path } else { format!("/{path}") },
            host: host(&http.host),
            https: http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("https")),
            headers: http.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect(),
        }
    } else if let Some(tcp) = tcp_socket {
        ProbeAction::Tcp { port: port("tcpSocket.port", &tcp.port)?, host: host(&tcp.host) }
    } else {
        return Ok(None);
    }))
}

/// A lifecycle hook: exec, httpGet or sleep (Kubernetes never runs a hook's deprecated
/// tcpSocket; `crate::manifest` refuses the field).
fn plan_hook(c: &Container, field: &str, h: &LifecycleHandler, env: &Env) -> Result<Hook, SpecError> {
    if let Some(sleep) = &h.sleep {
        return Ok(Hook::Sleep(Duration::from_secs(sleep.seconds.max(0).unsigned_abs())));
    }
    match plan_action(c, field, h.exec.as_ref(), h.http_get.as_ref(), None, env)? {
        Some(action) => Ok(Hook::Action(action)),
        None => Err(SpecError::Invalid {
            owner: Owner::Container(c.name.clone()),
            field: field.to_owned(),
            reason: "a hook needs one of exec, httpGet, sleep".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OBJECTS: &str = r#"apiVersion: v1
kind: ConfigMap
metadata: {name: cfg}
data: {mode: prod, url: "http://$(HOST)", a.conf: "x=1"}
binaryData: {blob: AAEC}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cfg, namespace: other}
data: {mode: other}
---
apiVersion: v1
kind: Secret
metadata: {name: s}
data: {password: aHVudGVyMg==}
stringData: {token: abc}
---
apiVersion: v1
kind: Secret
metadata: {name: bin}
data: {raw: /w==}
"#;

    fn store() -> Vec<Object> {
        crate::manifest::parse("t.yaml", OBJECTS).expect("valid objects")
    }

    fn pod(yaml: &str) -> Pod {
        let objects = crate::manifest::parse("t.yaml", yaml).expect("valid manifest");
        match objects.into_iter().next() {
            Some(Object::Pod(p)) => *p,
            other => panic!("not a pod: {other:?}"),
        }
    }

    /// Pod `web` with volumes `cfg` (configMap cfg), `sec` (secret s) and `data` (emptyDir),
    /// whose one container `app` has `fields` (YAML lines indented by four spaces).
    fn app(fields: &str) -> Pod {
        pod(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  volumes:\n  \
             - {{name: cfg, configMap: {{name: cfg}}}}\n  - {{name: sec, secret: {{secretName: s}}}}\n  \
             - {{name: data, emptyDir: {{}}}}\n  containers:\n  - name: app\n    image: app:1\n{fields}"
        ))
    }

    #[test]
    fn references_name_every_configmap_and_secret_a_pod_draws_on() {
        let p = app("    envFrom:\n    - configMapRef: {name: env-cm}\n    - secretRef: {name: env-s}\n    \
             env:\n    - name: A\n      valueFrom: {configMapKeyRef: {name: key-cm, key: a}}\n    \
             - name: B\n      valueFrom: {secretKeyRef: {name: key-s, key: b}}\n");
        let refs: Vec<String> = references(&p).into_iter().map(|(k, n)| format!("{k}/{n}")).collect();
        assert_eq!(
            refs,
            [
                "configmap/cfg",
                "configmap/env-cm",
                "configmap/key-cm",
                "secret/env-s",
                "secret/key-s",
                "secret/s"
            ]
        );
    }

    fn image(entrypoint: &[&str], cmd: &[&str], env: &[&str]) -> ImageConfig {
        let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        ImageConfig {
            entrypoint: strings(entrypoint),
            cmd: strings(cmd),
            env: strings(env),
            working_dir: String::new(),
            user: String::new(),
        }
    }

    fn default_image() -> ImageConfig {
        ImageConfig {
            working_dir: "/srv".into(),
            user: "app".into(),
            ..image(&["/app"], &["--serve"], &["PATH=/usr/bin:/bin", "LANG=C"])
        }
    }

    fn plan(fields: &str) -> Result<ContainerPlan, SpecError> {
        plan_container(&app(fields), "app", &default_image(), &store())
    }

    fn env_of(fields: &str) -> Vec<String> {
        plan(fields).expect("plans").env
    }

    fn var(env: &[String], name: &str) -> Option<String> {
        env.iter().find_map(|e| e.strip_prefix(&format!("{name}=")).map(str::to_owned))
    }

    fn strings(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn stdin_stdin_once_and_tty_plan_the_containers_streams() {
        assert_eq!(plan("").expect("plans").io, Io::default(), "no input, no terminal");
        let io = plan(
            "    stdin: true
    stdinOnce: true
    tty: true
",
        )
        .expect("plans")
        .io;
        assert_eq!(io, Io { stdin: true, stdin_once: true, tty: true });
        // stdinOnce means nothing without stdin; a terminal without input is an output one.
        let io = plan(
            "    stdinOnce: true
    tty: true
",
        )
        .expect("plans")
        .io;
        assert_eq!(io, Io { stdin: false, stdin_once: false, tty: true });
    }

    #[test]
    fn pod_plan_defaults() {
        let plan = plan_pod(&app(""));
        assert_eq!(plan.namespace, "default");
        assert_eq!(plan.name, "web");
        assert!(plan.labels.is_empty());
        assert_eq!(plan.service_account, "default");
        assert_eq!(plan.hostname, "web");
        assert_eq!(plan.restart, RestartPolicy::Always);
        assert_eq!(plan.grace, Duration::from_secs(30));
        assert!(!plan.share_process_namespace, "a pid namespace per container, as in Kubernetes");
        assert!(
            plan_pod(&pod(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  shareProcessNamespace: true\n  \
             containers:\n  - {name: c, image: x}\n"
            ))
            .share_process_namespace
        );
        assert!(plan.init_containers.is_empty());
        assert_eq!(plan.containers, ["app"]);
        assert!(plan.ports.is_empty());
        assert_eq!(plan.volumes.keys().collect::<Vec<_>>(), ["cfg", "data", "sec"]);
    }

    #[test]
    fn pod_plan_fields() {
        let pod = pod(r#"apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  serviceAccountName: shop-web
  serviceAccount: legacy
  hostname: front
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  initContainers:
  - {name: migrate, image: m:1, ports: [{containerPort: 9000}]}
  - {name: seed, image: m:1}
  containers:
  - name: x
    image: x:1
    ports:
    - {name: http, containerPort: 8080, hostPort: 18080, hostIP: 127.0.0.1, protocol: TCP}
    - {containerPort: 53, protocol: UDP}
  - {name: y, image: y:1, ports: [{containerPort: 9090}]}
"#);
        let plan = plan_pod(&pod);
        assert_eq!(plan.namespace, "shop");
        assert_eq!(plan.labels, BTreeMap::from([("app".to_owned(), "web".to_owned())]));
        assert_eq!(plan.service_account, "shop-web");
        assert_eq!(plan.hostname, "front");
        assert_eq!(plan.restart, RestartPolicy::Never);
        assert_eq!(plan.grace, Duration::from_secs(5));
        assert_eq!(plan.init_containers, ["migrate", "seed"]);
        assert_eq!(plan.containers, ["x", "y"]);
        let port =
            |container: &str, name: Option<&str>, port, host_port, host_ip: Option<&str>, protocol: &str| {
                PortPlan {
                    container: container.into(),
                    name: name.map(Into::into),
                    container_port: port,
                    host_port,
                    host_ip: host_ip.map(Into::into),
                    protocol: protocol.into(),
                }
            };
        assert_eq!(
            plan.ports,
            [
                port("x", Some("http"), 8080, Some(18080), Some("127.0.0.1"), "tcp"),
                port("x", None, 53, None, None, "udp"),
                port("y", None, 9090, None, None, "tcp"),
            ],
            "app containers only, protocol lowercase and tcp by default"
        );
    }

    #[test]
    fn service_account_falls_back_to_the_deprecated_field() {
        let pod =
            pod("apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  serviceAccount: legacy\n  \
                       containers: [{name: app, image: a:1}]\n");
        assert_eq!(plan_pod(&pod).service_account, "legacy");
    }

    #[test]
    fn hostname_is_the_pod_name_cut_to_a_dns_label() {
        let named = |name: &str| {
            pod(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  \
                 containers: [{{name: app, image: a:1}}]\n"
            ))
        };
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        assert_eq!(plan_pod(&named(&long)).hostname, "a".repeat(62), "cut at 63, trailing '-' dropped");
        let exact = "c".repeat(63);
        assert_eq!(plan_pod(&named(&exact)).hostname, exact);
        let plan = plan_container(&named(&long), "app", &default_image(), &store()).expect("plans");
        assert_eq!(var(&plan.env, "HOSTNAME"), Some("a".repeat(62)));
    }

    #[test]
    fn volumes_are_planned() {
        let pod = pod(r#"apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers: [{name: app, image: a:1}]
  volumes:
  - {name: tmp, emptyDir: {medium: Memory, sizeLimit: 64Mi}}
  - {name: scratch, emptyDir: {}}
  - {name: logs, hostPath: {path: /var/log, type: Directory}}
  - {name: any, hostPath: {path: /srv}}
  - name: conf
    configMap:
      name: cfg
      defaultMode: 288
      optional: true
      items: [{key: mode, path: conf/mode, mode: 256}, {key: url, path: url}]
  - {name: sec, secret: {secretName: s}}
"#);
        let v = plan_pod(&pod).volumes;
        assert_eq!(v["tmp"], VolumePlan::EmptyDir { memory: true, size_limit: Some(64 << 20) });
        assert_eq!(v["scratch"], VolumePlan::EmptyDir { memory: false, size_limit: None });
        assert_eq!(
            v["logs"],
            VolumePlan::HostPath { path: "/var/log".into(), kind: Some("Directory".into()) }
        );
        assert_eq!(v["any"], VolumePlan::HostPath { path: "/srv".into(), kind: None });
        let item = |key: &str, path: &str, mode| KeyToPath { key: key.into(), path: path.into(), mode };
        assert_eq!(
            v["conf"],
            VolumePlan::ConfigMap {
                name: "cfg".into(),
                items: Some(vec![item("mode", "conf/mode", Some(0o400)), item("url", "url", None)]),
                default_mode: 0o440,
                optional: true,
            }
        );
        assert_eq!(
            v["sec"],
            VolumePlan::Secret { name: "s".into(), items: None, default_mode: 0o644, optional: false }
        );
    }

    #[test]
    fn command_replaces_the_entrypoint_and_drops_the_cmd() {
        assert_eq!(plan("    command: [/bin/sh, -c, run]\n").expect("plans").argv, ["/bin/sh", "-c", "run"]);
    }

    #[test]
    fn args_replace_the_cmd() {
        assert_eq!(plan("    args: [--once]\n").expect("plans").argv, ["/app", "--once"]);
    }

    #[test]
    fn command_and_args_together() {
        let argv = plan("    command: [/bin/sh]\n    args: [-c, run]\n").expect("plans").argv;
        assert_eq!(argv, ["/bin/sh", "-c", "run"]);
    }

    #[test]
    fn neither_runs_the_image_entrypoint_and_cmd() {
        assert_eq!(plan("").expect("plans").argv, ["/app", "--serve"]);
    }

    #[test]
    fn no_command_at_all_is_an_error() {
        let err =
            plan_container(&app(""), "app", &image(&[], &[], &[]), &store()).expect_err("nothing to run");
        assert_eq!(err, SpecError::NoCommand { container: "app".into() });
        assert_eq!(
            err.to_string(),
            "container \"app\": no command: the image has no entrypoint or cmd and the container sets none"
        );
    }

    #[test]
    fn an_empty_string_entrypoint_is_cleared() {
        let image = image(&[""], &["sh"], &[]);
        let plan = plan_container(&app(""), "app", &image, &store()).expect("plans");
        assert_eq!(plan.argv, ["sh"]);
    }

    #[test]
    fn expansion_rules() {
        let lookup = |n: &str| if n == "A" { Some("1") } else { None };
        for (input, want) in [
            ("$(A)", "1"),
            ("x$(A)y$(A)", "x1y1"),
            ("$$(A)", "$(A)"),
            ("$(B)", "$(B)"),
            ("$()", "$()"),
            ("$$", "$"),
            ("$$$(A)", "$1"),
            ("a$b", "a$b"),
            ("$(A", "$(A"),
            ("end$", "end$"),
            ("é$(A)ü", "é1ü"),
            ("", ""),
        ] {
            assert_eq!(expand(input, lookup), want, "{input:?}");
        }
    }

    #[test]
    fn env_values_expand_from_earlier_variables() {
        let env = env_of(
            "    envFrom: [{configMapRef: {name: cfg}}]\n    env:\n    \
             - {name: A, value: \"x-$(mode)-$(LANG)\"}\n    - {name: B, value: \"$(C)\"}\n    \
             - {name: C, value: c}\n    - {name: D, value: \"$$(A)\"}\n    - {name: E, value: \"$(A)!\"}\n",
        );
        assert_eq!(var(&env, "A").as_deref(), Some("x-prod-C"), "envFrom and image env are defined before");
        assert_eq!(var(&env, "B").as_deref(), Some("$(C)"), "C is defined later");
        assert_eq!(var(&env, "D").as_deref(), Some("$(A)"));
        assert_eq!(var(&env, "E").as_deref(), Some("x-prod-C!"));
        assert_eq!(var(&env, "url").as_deref(), Some("http://$(HOST)"), "envFrom values are not expanded");
    }

    #[test]
    fn command_and_args_expand_from_the_environment() {
        let argv = plan(
            "    command: [run, \"--mode=$(MODE)\", \"$(PATH)\"]\n    args: [\"$$(MODE)\", \"$(NONE)\"]\n    \
             env: [{name: MODE, value: prod}]\n",
        )
        .expect("plans")
        .argv;
        assert_eq!(argv, ["run", "--mode=prod", "/usr/bin:/bin", "$(MODE)", "$(NONE)"]);
        let image = image(&["/app", "$(MODE)"], &[], &[]);
        let plan = plan_container(&app("    env: [{name: MODE, value: prod}]\n"), "app", &image, &store());
        assert_eq!(plan.expect("plans").argv, ["/app", "$(MODE)"], "the image's own argv is not expanded");
    }

    /// The test store, on a host with 2 cpus and 4 GiB allocatable.
    struct Host(Vec<Object>);

    impl Objects for Host {
        fn config_map(&self, namespace: &str, name: &str) -> Option<&ConfigMap> {
            self.0.config_map(namespace, name)
        }
        fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
            self.0.secret(namespace, name)
        }
        fn allocatable(&self) -> Option<(u64, u64)> {
            Some((2000, 4 << 30))
        }
    }

    #[test]
    fn the_downward_api_gives_env_the_pods_fields_and_the_containers_resources() {
        let mut p = pod("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  \
             labels: {app: web}\n  annotations: {team: a}\nspec:\n  serviceAccountName: api\n  \
             containers:\n  - name: app\n    image: app:1\n    resources:\n      \
             limits: {cpu: 1500m, memory: 128Mi}\n      requests: {cpu: 250m}\n    env:\n    \
             - {name: NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}\n    \
             - {name: NS, valueFrom: {fieldRef: {apiVersion: v1, fieldPath: metadata.namespace}}}\n    \
             - {name: UID, valueFrom: {fieldRef: {fieldPath: metadata.uid}}}\n    \
             - {name: APP, valueFrom: {fieldRef: {fieldPath: \"metadata.labels['app']\"}}}\n    \
             - {name: NONE, valueFrom: {fieldRef: {fieldPath: \"metadata.labels['none']\"}}}\n    \
             - {name: TEAM, valueFrom: {fieldRef: {fieldPath: \"metadata.annotations['team']\"}}}\n    \
             - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}\n    \
             - {name: SA, valueFrom: {fieldRef: {fieldPath: spec.serviceAccountName}}}\n    \
             - {name: CPU, valueFrom: {resourceFieldRef: {resource: limits.cpu}}}\n    \
             - {name: CPU_M, valueFrom: {resourceFieldRef: {resource: limits.cpu, divisor: 1m}}}\n    \
             - {name: REQ_M, valueFrom: {resourceFieldRef: {resource: requests.cpu, divisor: 1m}}}\n    \
             - {name: MEM_MI, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}\n    \
             - {name: REQ_MEM, valueFrom: {resourceFieldRef: {resource: requests.memory}}}\n    \
             - {name: SIDE_CPU, valueFrom: {resourceFieldRef: {containerName: side, resource: limits.cpu}}}\n    \
             - {name: SIDE_REQ, valueFrom: {resourceFieldRef: {containerName: side, resource: requests.memory}}}\n  \
             - name: side\n    image: app:1\n");
        // What the cluster state fills in when it stores and places the pod.
        p.metadata.uid = Some("0d4c-uid".into());
        p.spec.as_mut().expect("spec").node_name = Some("h2".into());
        let env = plan_container(&p, "app", &default_image(), &Host(store())).expect("plans").env;
        let expected = [
            ("NAME", "web"),
            ("NS", "shop"),
            ("UID", "0d4c-uid"),
            ("APP", "web"),
            ("NONE", ""),
            ("TEAM", "a"),
            ("NODE", "h2"),
            ("SA", "api"),
            // Whole cpus, rounded up, as the kubelet does.
            ("CPU", "2"),
            ("CPU_M", "1500"),
            ("REQ_M", "250"),
            ("MEM_MI", "128"),
            // A request not set is the limit.
            ("REQ_MEM", "134217728"),
            // The sidecar sets no limit: the host's allocatable; no request either: 0.
            ("SIDE_CPU", "2"),
            ("SIDE_REQ", "0"),
        ];
        for (name, value) in expected {
            assert_eq!(var(&env, name).as_deref(), Some(value), "{name} in {env:?}");
        }
        // Without the host's allocatable (unknown), a limit not set is an error, not a guess.
        let err = plan_container(&p, "app", &default_image(), &store()).expect_err("unknown allocatable");
        assert!(err.to_string().contains("allocatable is unknown"), "{err}");
    }

    #[test]
    fn env_order_and_overrides() {
        let env = env_of(
            "    envFrom:\n    - {configMapRef: {name: cfg}, prefix: CFG_}\n    - secretRef: {name: s}\n    \
             env:\n    - {name: LANG, value: en}\n    - {name: EXTRA, value: \"1\"}\n    \
             - {name: token, value: mine}\n    - {name: EMPTY}\n",
        );
        assert_eq!(
            env,
            [
                "HOSTNAME=web",
                "PATH=/usr/bin:/bin",
                "LANG=en",
                "CFG_a.conf=x=1",
                "CFG_mode=prod",
                "CFG_url=http://$(HOST)",
                "password=hunter2",
                "token=mine",
                "EXTRA=1",
                "EMPTY=",
            ]
        );
    }

    #[test]
    fn value_from_resolves_keys() {
        let env = env_of(
            r#"    env:
    - {name: P, valueFrom: {secretKeyRef: {name: s, key: password}}}
    - {name: T, valueFrom: {secretKeyRef: {name: s, key: token}}}
    - {name: M, valueFrom: {configMapKeyRef: {name: cfg, key: mode}}}
    - {name: NOMAP, valueFrom: {configMapKeyRef: {name: nope, key: mode, optional: true}}}
    - {name: NOKEY, valueFrom: {secretKeyRef: {name: s, key: nope, optional: true}}}
    - {name: RAW, valueFrom: {configMapKeyRef: {name: cfg, key: url}}}
"#,
        );
        assert_eq!(var(&env, "P").as_deref(), Some("hunter2"));
        assert_eq!(var(&env, "T").as_deref(), Some("abc"), "stringData counts as data");
        assert_eq!(var(&env, "M").as_deref(), Some("prod"));
        assert_eq!(var(&env, "NOMAP"), None);
        assert_eq!(var(&env, "NOKEY"), None);
        assert_eq!(var(&env, "RAW").as_deref(), Some("http://$(HOST)"), "referenced values are not expanded");
    }

    #[test]
    fn missing_references_are_errors() {
        let err = |fields: &str| plan(fields).expect_err("must fail").to_string();
        assert_eq!(
            err("    env: [{name: M, valueFrom: {configMapKeyRef: {name: nope, key: mode}}}]\n"),
            "container \"app\": configmap \"nope\" not found"
        );
        assert_eq!(
            err("    env: [{name: X, valueFrom: {secretKeyRef: {name: s, key: x}}}]\n"),
            "container \"app\": key \"x\" not in secret \"s\""
        );
        assert_eq!(
            err("    env: [{name: X, valueFrom: {configMapKeyRef: {name: cfg, key: blob}}}]\n"),
            "container \"app\": key \"blob\" not in configmap \"cfg\"",
            "binaryData is not for env"
        );
        assert_eq!(
            err("    envFrom: [{secretRef: {name: nope}}]\n"),
            "container \"app\": secret \"nope\" not found"
        );
        assert_eq!(
            err("    envFrom: [{configMapRef: {name: nope}}]\n"),
            "container \"app\": configmap \"nope\" not found"
        );
        let env = env_of("    envFrom: [{configMapRef: {name: nope, optional: true}}, {secretRef: {name: no, optional: true}}]\n");
        assert_eq!(env, ["HOSTNAME=web", "PATH=/usr/bin:/bin", "LANG=C"]);
    }

    #[test]
    fn objects_are_looked_up_in_the_pod_namespace() {
        let pod = pod(r#"apiVersion: v1
kind: Pod
metadata: {name: web, namespace: other}
spec:
  containers:
  - name: app
    image: a:1
    env: [{name: M, valueFrom: {configMapKeyRef: {name: cfg, key: mode}}}]
"#);
        let plan = plan_container(&pod, "app", &default_image(), &store()).expect("plans");
        assert_eq!(var(&plan.env, "M").as_deref(), Some("other"));
        let missing = SpecError::NotFound {
            owner: Owner::Volume("v".into()),
            kind: ObjectKind::Secret,
            name: "s".into(),
        };
        let secret =
            VolumePlan::Secret { name: "s".into(), items: None, default_mode: 0o644, optional: false };
        assert_eq!(volume_files("other", "v", &secret, &store()), Err(missing));
    }

    #[test]
    fn secret_env_must_be_text() {
        let want = "container \"app\": key \"raw\" of secret \"bin\" is not utf-8 text";
        let err = plan("    env: [{name: R, valueFrom: {secretKeyRef: {name: bin, key: raw}}}]\n");
        assert_eq!(err.expect_err("not text").to_string(), want);
        let err = plan("    envFrom: [{secretRef: {name: bin}}]\n");
        assert_eq!(err.expect_err("not text").to_string(), want);
    }

    #[test]
    fn path_and_hostname_are_added_unless_set() {
        let bare = image(&["/app"], &[], &[]);
        let plan = plan_container(&app(""), "app", &bare, &store()).expect("plans");
        assert_eq!(plan.env, [format!("PATH={DEFAULT_PATH}"), "HOSTNAME=web".into()]);
        let set = app("    env: [{name: PATH, value: /opt/bin}, {name: HOSTNAME, value: mine}]\n");
        let plan = plan_container(&set, "app", &bare, &store()).expect("plans");
        assert_eq!(plan.env, ["PATH=/opt/bin", "HOSTNAME=mine"]);
    }

    #[test]
    fn working_directory_and_user() {
        let plan_with = |fields: &str, image: &ImageConfig| {
            plan_container(&app(fields), "app", image, &store()).expect("plans")
        };
        let image_dir = default_image();
        assert_eq!(plan_with("    workingDir: /w\n", &image_dir).cwd, "/w");
        assert_eq!(plan_with("", &image_dir).cwd, "/srv");
        assert_eq!(plan_with("", &image_dir).user, "app");
        let bare = image(&["/app"], &[], &[]);
        assert_eq!(plan_with("", &bare).cwd, "/");
        assert_eq!(plan_with("", &bare).user, "", "root");
    }

    #[test]
    fn resources() {
        let p =
            plan("    resources: {limits: {cpu: 500m, memory: 64Mi}, requests: {cpu: 250m, memory: 1Gi}}\n")
                .expect("plans");
        assert_eq!(
            (p.cpu_limit_millis, p.cpu_request_millis, p.memory_limit),
            (Some(500), Some(250), Some(64 << 20))
        );
        let p = plan("    resources: {requests: {cpu: \"2\"}}\n").expect("plans");
        assert_eq!((p.cpu_limit_millis, p.cpu_request_millis, p.memory_limit), (None, Some(2000), None));
        let p = plan("    resources: {limits: {cpu: \"0.5\"}}\n").expect("plans");
        assert_eq!(
            (p.cpu_limit_millis, p.cpu_request_millis),
            (Some(500), Some(500)),
            "request defaults to limit"
        );
        let p = plan("").expect("plans");
        assert_eq!((p.cpu_limit_millis, p.cpu_request_millis, p.memory_limit), (None, None, None));
    }

    #[test]
    fn probe_defaults() {
        let p = plan("    env: [{name: MODE, value: x}]\n    readinessProbe: {exec: {command: [check, \"$(MODE)\"]}}\n")
            .expect("plans");
        assert_eq!(
            p.readiness,
            Some(ProbePlan {
                action: ProbeAction::Exec(strings(&["check", "x"])),
                initial_delay: Duration::ZERO,
                period: Duration::from_secs(10),
                timeout: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            })
        );
        assert_eq!(p.liveness, None);
    }

    #[test]
    fn probe_fields() {
        let p = plan(
            r#"    livenessProbe:
      httpGet:
        port: 8080
        path: healthz
        host: 10.0.0.1
        scheme: HTTPS
        httpHeaders: [{name: X-Probe, value: "1"}]
      initialDelaySeconds: 5
      periodSeconds: 2
      timeoutSeconds: 3
      failureThreshold: 4
    readinessProbe:
      httpGet: {port: 8080}
      successThreshold: 2
"#,
        )
        .expect("plans");
        let liveness = p.liveness.expect("set");
        assert_eq!(
            liveness.action,
            ProbeAction::Http {
                port: 8080,
                path: "/healthz".into(),
                host: Some("10.0.0.1".into()),
                https: true,
                headers: vec![("X-Probe".into(), "1".into())],
            }
        );
        assert_eq!(
            (liveness.initial_delay, liveness.period, liveness.timeout, liveness.failure_threshold),
            (Duration::from_secs(5), Duration::from_secs(2), Duration::from_secs(3), 4)
        );
        let readiness = p.readiness.expect("set");
        assert_eq!(
            readiness.action,
            ProbeAction::Http { port: 8080, path: "/".into(), host: None, https: false, headers: vec![] }
        );
        assert_eq!(readiness.success_threshold, 2);
        let p = plan("    readinessProbe: {tcpSocket: {port: 9000}}\n").expect("plans");
        assert_eq!(p.readiness.expect("set").action, ProbeAction::Tcp { port: 9000, host: None });
    }

    #[test]
    fn named_probe_ports_resolve_against_the_container() {
        // The manifest check refuses named probe ports for now; the runtime still resolves them.
        let with_port = |port: &str| {
            let mut pod = app(
                "    ports: [{name: http, containerPort: 8080}]\n    readinessProbe: {httpGet: {port: 1}}\n    \
                 livenessProbe: {tcpSocket: {port: 1}}\n",
            );
            let spec = pod.spec.as_mut().expect("spec");
            let c = &mut spec.containers[0];
            let named = IntOrString::String(port.into());
            c.readiness_probe.as_mut().and_then(|p| p.http_get.as_mut()).expect("httpGet").port =
                named.clone();
            c.liveness_probe.as_mut().and_then(|p| p.tcp_socket.as_mut()).expect("tcpSocket").port = named;
            plan_container(&pod, "app", &default_image(), &store())
        };
        let p = with_port("http").expect("plans");
        assert!(matches!(p.readiness.expect("set").action, ProbeAction::Http { port: 8080, .. }));
        assert_eq!(p.liveness.expect("set").action, ProbeAction::Tcp { port: 8080, host: None });
        let p = with_port("8081").expect("a number as a string");
        assert_eq!(p.liveness.expect("set").action, ProbeAction::Tcp { port: 8081, host: None });
        assert_eq!(
            with_port("grpc").expect_err("unknown").to_string(),
            "container \"app\": readinessProbe.httpGet.port: no port named \"grpc\" in the container"
        );
    }

    #[test]
    fn mounts() {
        let p = plan(
            "    volumeMounts:\n    - {name: cfg, mountPath: /etc/app}\n    - {name: data, mountPath: /data}\n    \
             - {name: data, mountPath: /ro, readOnly: true, subPath: sub/dir}\n",
        )
        .expect("plans");
        let mount = |volume: &str, target: &str, read_only, sub_path: Option<&str>| MountPlan {
            volume: volume.into(),
            target: target.into(),
            read_only,
            sub_path: sub_path.map(Into::into),
        };
        assert_eq!(
            p.mounts,
            [
                mount("cfg", "/etc/app", true, None),
                mount("data", "/data", false, None),
                mount("data", "/ro", true, Some("sub/dir")),
            ],
            "configMap volumes are always read-only"
        );
    }

    #[test]
    fn bad_mounts_are_errors() {
        let with_mount = |edit: &dyn Fn(&mut k8s_openapi::api::core::v1::VolumeMount)| {
            let mut pod = app("    volumeMounts: [{name: data, mountPath: /data}]\n");
            let spec = pod.spec.as_mut().expect("spec");
            let mounts = spec.containers[0].volume_mounts.as_mut().expect("mounts");
            edit(&mut mounts[0]);
            plan_container(&pod, "app", &default_image(), &store()).expect_err("invalid").to_string()
        };
        assert_eq!(
            with_mount(&|m| m.name = "gone".into()),
            "container \"app\": volumeMounts[0].name: no volume named \"gone\" in spec.volumes"
        );
        assert_eq!(
            with_mount(&|m| m.mount_path = "data".into()),
            "container \"app\": volumeMounts[0].mountPath: \"data\" must be an absolute path"
        );
        for bad in ["../up", "a/../../b", "/abs"] {
            assert_eq!(
                with_mount(&|m| m.sub_path = Some(bad.into())),
                format!("container \"app\": volumeMounts[0].subPath: {bad:?} must be relative, without '..'")
            );
        }
    }

    #[test]
    fn init_and_unknown_containers() {
        let pod = pod(r#"apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  initContainers: [{name: setup, image: s:1, command: [setup]}]
  containers: [{name: app, image: a:1}]
"#);
        let init = plan_container(&pod, "setup", &default_image(), &store()).expect("plans");
        assert!(init.init);
        assert_eq!((init.image.as_str(), init.argv.as_slice()), ("s:1", &strings(&["setup"])[..]));
        let app = plan_container(&pod, "app", &default_image(), &store()).expect("plans");
        assert!(!app.init);
        assert_eq!(
            plan_container(&pod, "nope", &default_image(), &store()),
            Err(SpecError::NoContainer("nope".into()))
        );
    }

    fn config_map_volume(items: Option<Vec<KeyToPath>>, optional: bool) -> VolumePlan {
        VolumePlan::ConfigMap { name: "cfg".into(), items, default_mode: 0o644, optional }
    }

    fn item(key: &str, path: &str, mode: Option<u32>) -> KeyToPath {
        KeyToPath { key: key.into(), path: path.into(), mode }
    }

    fn file(path: &str, data: &[u8], mode: u32) -> VolumeFile {
        VolumeFile { path: path.into(), data: data.to_vec(), mode }
    }

    #[test]
    fn a_config_map_volume_holds_every_key() {
        let files = volume_files("default", "v", &config_map_volume(None, false), &store()).expect("files");
        assert_eq!(
            files,
            [
                file("a.conf", b"x=1", 0o644),
                file("blob", &[0, 1, 2], 0o644),
                file("mode", b"prod", 0o644),
                file("url", b"http://$(HOST)", 0o644),
            ]
        );
    }

    #[test]
    fn volume_items_choose_keys_paths_and_modes() {
        let plan = VolumePlan::ConfigMap {
            name: "cfg".into(),
            items: Some(vec![item("mode", "conf/mode", Some(0o400)), item("blob", "bin/blob", None)]),
            default_mode: 0o440,
            optional: false,
        };
        let files = volume_files("default", "v", &plan, &store()).expect("files");
        assert_eq!(files, [file("conf/mode", b"prod", 0o400), file("bin/blob", &[0, 1, 2], 0o440)]);
    }

    #[test]
    fn a_secret_volume_merges_string_data() {
        let plan = VolumePlan::Secret { name: "s".into(), items: None, default_mode: 0o600, optional: false };
        let files = volume_files("default", "v", &plan, &store()).expect("files");
        assert_eq!(files, [file("password", b"hunter2", 0o600), file("token", b"abc", 0o600)]);
        let bin =
            VolumePlan::Secret { name: "bin".into(), items: None, default_mode: 0o600, optional: false };
        let files = volume_files("default", "v", &bin, &store()).expect("binary is fine in files");
        assert_eq!(files, [file("raw", &[0xff], 0o600)]);
        let mut objects = store();
        objects.extend(
            crate::manifest::parse(
                "t.yaml",
                "apiVersion: v1\nkind: Secret\nmetadata: {name: both}\ndata: {k: b2xk}\nstringData: {k: new}\n",
            )
            .expect("valid"),
        );
        let both =
            VolumePlan::Secret { name: "both".into(), items: None, default_mode: 0o644, optional: false };
        let files = volume_files("default", "v", &both, &objects).expect("files");
        assert_eq!(files, [file("k", b"new", 0o644)], "stringData wins over data");
    }

    #[test]
    fn missing_volume_objects_and_keys() {
        let missing =
            VolumePlan::ConfigMap { name: "nope".into(), items: None, default_mode: 0o644, optional: false };
        let err = volume_files("default", "v", &missing, &store()).expect_err("missing");
        assert_eq!(err.to_string(), "volume \"v\": configmap \"nope\" not found");
        let optional =
            VolumePlan::ConfigMap { name: "nope".into(), items: None, default_mode: 0o644, optional: true };
        assert_eq!(volume_files("default", "v", &optional, &store()), Ok(vec![]));

        let items = Some(vec![item("x", "x", None), item("mode", "mode", None)]);
        let err = volume_files("default", "v", &config_map_volume(items.clone(), false), &store());
        assert_eq!(
            err.expect_err("missing key").to_string(),
            "volume \"v\": key \"x\" not in configmap \"cfg\""
        );
        let files = volume_files("default", "v", &config_map_volume(items, true), &store()).expect("files");
        assert_eq!(files, [file("mode", b"prod", 0o644)], "an optional volume skips missing keys");
    }

    #[test]
    fn volume_paths_must_stay_inside() {
        for bad in ["../x", "/etc/passwd", "a/../../x", "a/./b", "a//b", "a/", "..data", "", "."] {
            let plan = config_map_volume(Some(vec![item("mode", bad, None)]), false);
            let err = volume_files("default", "v", &plan, &store()).expect_err(bad);
            assert_eq!(
                err.to_string(),
                format!("volume \"v\": path: {bad:?} must be relative, without '.' or '..' components")
            );
        }
        let plan = config_map_volume(Some(vec![item("mode", "a/b.c", None)]), false);
        assert!(volume_files("default", "v", &plan, &store()).is_ok());
    }

    #[test]
    fn other_volumes_have_no_files() {
        for plan in [
            VolumePlan::EmptyDir { memory: false, size_limit: None },
            VolumePlan::HostPath { path: "/srv".into(), kind: None },
        ] {
            assert_eq!(volume_files("default", "v", &plan, &store()), Ok(vec![]));
        }
    }

    #[test]
    fn downward_and_projected_volumes_hold_the_pods_fields_and_objects() {
        let mut p = pod("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web, tier: \"a \\\"b\\\"\"}\n  \
             annotations: {build: \"7\"}\nspec:\n  volumes:\n  - name: info\n    downwardAPI:\n      defaultMode: 0o600\n      items:\n      \
             - {path: labels, fieldRef: {fieldPath: metadata.labels}}\n      - {path: meta/name, fieldRef: {fieldPath: metadata.name}, mode: 0o444}\n      \
             - {path: build, fieldRef: {fieldPath: \"metadata.annotations['build']\"}}\n      \
             - {path: mem, resourceFieldRef: {containerName: app, resource: limits.memory, divisor: 1Mi}}\n  \
             - name: all\n    projected:\n      sources:\n      - configMap: {name: cfg, items: [{key: mode, path: mode}]}\n      \
             - secret: {name: s, items: [{key: token, path: token}]}\n      - downwardAPI: {items: [{path: uid, fieldRef: {fieldPath: metadata.uid}}]}\n  \
             containers:\n  - name: app\n    image: app:1\n    resources: {limits: {memory: 64Mi}}\n");
        p.metadata.uid = Some("u-1".into());
        let refs: Vec<String> = references(&p).into_iter().map(|(k, n)| format!("{k}/{n}")).collect();
        assert_eq!(refs, ["configmap/cfg", "secret/s"], "a projection's objects are the pod's references");
        let plan = plan_pod(&p);
        let files = |name: &str| {
            let Some(VolumePlan::Projected { sources, default_mode }) = plan.volumes.get(name) else {
                panic!("{name}: {:?}", plan.volumes.get(name))
            };
            projected_files(&p, name, sources, *default_mode, &store()).expect("files")
        };
        assert_eq!(
            files("info"),
            vec![
                file("labels", b"app=\"web\"\ntier=\"a \\\"b\\\"\"", 0o600),
                file("meta/name", b"web", 0o444),
                file("build", b"7", 0o600),
                file("mem", b"64", 0o600),
            ]
        );
        assert_eq!(
            files("all"),
            vec![
                file("mode", b"prod", DEFAULT_MODE),
                file("token", b"abc", DEFAULT_MODE),
                file("uid", b"u-1", DEFAULT_MODE)
            ]
        );
    }

    #[test]
    fn service_links_give_the_namespaces_services_as_the_kubelet_does() {
        let mut objects = store();
        objects.extend(
            crate::manifest::parse(
                "s.yaml",
                "apiVersion: v1\nkind: Service\nmetadata: {name: redis-main}\nspec:\n  clusterIP: 10.96.0.7\n  selector: {app: r}\n  \
                 ports: [{name: client, port: 6379}, {name: dns, port: 53, protocol: UDP}]\n---\napiVersion: v1\nkind: Service\n\
                 metadata: {name: headless}\nspec: {clusterIP: None, selector: {app: h}, ports: [{port: 80}]}\n---\napiVersion: v1\n\
                 kind: Service\nmetadata: {name: elsewhere, namespace: other}\nspec: {clusterIP: 10.96.0.8, selector: {app: e}, ports: [{port: 80}]}\n",
            )
            .expect("services"),
        );
        let env = plan_container(&app(""), "app", &default_image(), &objects).expect("plans").env;
        let links: Vec<&String> = env
            .iter()
            .filter(|e| e.contains("REDIS_MAIN") || e.contains("HEADLESS") || e.contains("ELSEWHERE"))
            .collect();
        assert_eq!(
            links,
            [
                "REDIS_MAIN_SERVICE_HOST=10.96.0.7",
                "REDIS_MAIN_SERVICE_PORT=6379",
                "REDIS_MAIN_SERVICE_PORT_CLIENT=6379",
                "REDIS_MAIN_SERVICE_PORT_DNS=53",
                "REDIS_MAIN_PORT=tcp://10.96.0.7:6379",
                "REDIS_MAIN_PORT_6379_TCP=tcp://10.96.0.7:6379",
                "REDIS_MAIN_PORT_6379_TCP_PROTO=tcp",
                "REDIS_MAIN_PORT_6379_TCP_PORT=6379",
                "REDIS_MAIN_PORT_6379_TCP_ADDR=10.96.0.7",
                "REDIS_MAIN_PORT_53_UDP=udp://10.96.0.7:53",
                "REDIS_MAIN_PORT_53_UDP_PROTO=udp",
                "REDIS_MAIN_PORT_53_UDP_PORT=53",
                "REDIS_MAIN_PORT_53_UDP_ADDR=10.96.0.7",
            ]
        );
        // The pod's own variables win; `enableServiceLinks: false` gives none.
        let own = plan_container(
            &app("    env: [{name: REDIS_MAIN_SERVICE_HOST, value: mine}]\n"),
            "app",
            &default_image(),
            &objects,
        );
        assert!(own.expect("plans").env.contains(&"REDIS_MAIN_SERVICE_HOST=mine".to_owned()));
        let mut off = app("");
        off.spec.as_mut().expect("spec").enable_service_links = Some(false);
        let env = plan_container(&off, "app", &default_image(), &objects).expect("plans").env;
        assert!(!env.iter().any(|e| e.starts_with("REDIS_MAIN")), "{env:?}");
    }
}
