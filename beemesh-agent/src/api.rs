//! The admin API on `<run-dir>/agent.sock`: newline-delimited JSON, one request per
//! connection, one response (or a stream of `flow` responses). The CLI subcommands and the
//! end-to-end tests are its clients; `server` answers through the agent actor's handle.

pub mod client;
pub mod server;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest request line the server accepts (3 MiB: a 1 MiB ConfigMap applies with room to
/// spare); longer ones get an error, not a buffer, and the connection closes.
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;

/// How long the server waits for a whole request line before giving up on the connection.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Admin connections served at once; further ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Request {
    Status,
    /// Creates a workload cgroup with an identity; the caller then moves processes in.
    #[serde(rename_all = "camelCase")]
    CreateWorkload {
        #[serde(default)]
        name: Option<String>,
        /// `spiffe://<td>/ns/<ns>/sa/<sa>` or the shorthand `<ns>/<sa>`.
        identity: String,
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    DeleteWorkload {
        name: String,
    },
    /// Sent by `exec` once it sits in the workload's cgroup: from then on an empty cgroup
    /// means the workload has finished and is reaped.
    JoinedWorkload {
        name: String,
    },
    ListWorkloads,
    /// Which workload owns a local port (`proto` is `tcp` or `udp`), from the kernel's tags.
    PortOwner {
        proto: String,
        port: u16,
    },
    /// Loaded policy files, their errors, and per-rule counters.
    Policies,
    /// The mesh: this host and its connected peers.
    Peers,
    /// The failure detector's view of these hosts (peer ids; one not a peer id is `unknown`).
    Liveness {
        peers: Vec<String>,
    },
    /// `token create|list|delete`: join tokens of the issuer this member holds.
    JoinTokens {
        action: TokenAction,
    },
    /// Hands a host revocation (the PEM `ca revoke-host` wrote, read from `file`) to the
    /// agent, which verifies, keeps and spreads it and cuts the host off.
    Revoke {
        file: String,
        text: String,
    },
    /// Applies a manifest file (every kind `manifest` accepts); all of it or none of it.
    Apply {
        file: String,
        text: String,
    },
    /// Deletes the objects a manifest file names.
    DeleteObjects {
        file: String,
        text: String,
    },
    DeletePod {
        namespace: String,
        name: String,
    },
    /// Deletes a pod as an eviction (`drain`): only if every PodDisruptionBudget covering it
    /// allows a disruption now; else an error with Kubernetes' reason.
    EvictPod {
        namespace: String,
        name: String,
    },
    /// Marks a node unschedulable (`cordon`) or schedulable again (`uncordon`).
    CordonNode {
        node: String,
        unschedulable: bool,
    },
    /// Objects of `kind` (`ConfigMap`, `Secret`, `Namespace`, `Service`, `NetworkPolicy`,
    /// `Deployment`, `StatefulSet`) in the replicated cluster state, of one namespace or
    /// (`None`) all (Namespaces: always all, `default` and `kube-system` among them).
    ListObjects {
        kind: String,
        #[serde(default)]
        namespace: Option<String>,
    },
    /// Pods, of one namespace or (`None`) all.
    ListPods {
        #[serde(default)]
        namespace: Option<String>,
    },
    /// Where a container's log is and how to enter it (`logs`, `exec`).
    PodContainer {
        namespace: String,
        name: String,
        #[serde(default)]
        container: Option<String>,
    },
    /// A chunk of a container's log from `offset` (`logs` of a pod on another host; the agent
    /// forwards it to the pod's host).
    PodLogs {
        namespace: String,
        name: String,
        #[serde(default)]
        container: Option<String>,
        #[serde(default)]
        previous: bool,
        #[serde(default)]
        offset: u64,
        /// No data, only where the log ends now (`attach` shows what comes after).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        from_end: bool,
    },
    /// Runs a command in a container to completion with its output captured (`exec` of a pod
    /// on another host; forwarded to the pod's host).
    ExecPod {
        namespace: String,
        name: String,
        #[serde(default)]
        container: Option<String>,
        command: Vec<String>,
    },
    /// Writes to a container's input (`attach -i`; forwarded to the pod's host): `data`
    /// (base64), then, with `eof`, the client has no more (a `stdinOnce` container's input
    /// ends); `size` (rows, columns) resizes its terminal first.
    PodInput {
        namespace: String,
        name: String,
        #[serde(default)]
        container: Option<String>,
        #[serde(default)]
        data: String,
        #[serde(default)]
        eof: bool,
        #[serde(default)]
        size: Option<(u16, u16)>,
    },
    /// Answers once the pod is ready (or gone, for `deleted`), or with an error at the timeout.
    WaitPod {
        namespace: String,
        name: String,
        condition: WaitFor,
        timeout_ms: u64,
        /// With `deleted`: the pod instance waited for (a controller may have made a new pod
        /// of the same name meanwhile); without, any pod of that name.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uid: Option<String>,
    },
    /// Imports an image archive (OCI layout, dir or tar, or docker-archive) at `path` (absolute,
    /// on the agent's host) into the agent's store. `stateDir`, when the client was given one,
    /// must be the agent's: the two never import into different stores by mistake.
    #[serde(rename_all = "camelCase")]
    ImportImage {
        path: String,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        state_dir: Option<String>,
    },
    /// Tags in the agent's image store (`stateDir` as for `importImage`).
    #[serde(rename_all = "camelCase")]
    ListImages {
        #[serde(default)]
        state_dir: Option<String>,
    },
    /// Recent flow events (`limit` newest), then, with `follow`, new ones as they come.
    Flows {
        #[serde(default)]
        follow: bool,
        #[serde(default = "default_flow_limit")]
        limit: usize,
    },
}

/// What `joinTokens` does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "camelCase")]
pub enum TokenAction {
    /// A new single-use token valid `ttlSecs`, for `nodeName` only if given.
    #[serde(rename_all = "camelCase")]
    Create {
        ttl_secs: u64,
        #[serde(default)]
        node_name: Option<String>,
    },
    List,
    Delete {
        id: String,
    },
}

fn default_flow_limit() -> usize {
    100
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Response {
    Status(StatusInfo),
    Workload(WorkloadInfo),
    Workloads {
        items: Vec<WorkloadInfo>,
    },
    /// `identity` is `None` when no workload socket holds the port.
    PortOwner {
        identity: Option<String>,
    },
    Policies(PolicyReport),
    Flow(FlowRecord),
    /// One line per object, `pod/web created`, kubectl style.
    Applied {
        lines: Vec<String>,
    },
    Pods {
        items: Vec<PodInfo>,
    },
    Objects {
        items: Vec<ObjectEntry>,
    },
    Container(ContainerInfo),
    /// The pod runs on another host (`node`): use `PodLogs` / `ExecPod`.
    Remote {
        node: String,
    },
    /// A log chunk: `data` (base64) from the asked offset, the offset after it (0 again when
    /// the log was rotated: read from there), and whether the container may write more.
    Log {
        data: String,
        next: u64,
        running: bool,
    },
    /// A finished command: its output (base64, each cut at 2 MiB) and exit code (128 + signal).
    Exec {
        stdout: String,
        stderr: String,
        code: i32,
    },
    /// The tags an import stored.
    Imported {
        tags: Vec<String>,
    },
    Images {
        items: Vec<ImageInfo>,
    },
    Peers {
        items: Vec<PeerEntry>,
    },
    Liveness {
        items: Vec<LiveEntry>,
    },
    /// A new join token (its text is shown once; the member keeps only its record).
    JoinToken {
        token: String,
        info: JoinTokenInfo,
    },
    JoinTokens {
        items: Vec<JoinTokenInfo>,
    },
    Done,
    Error {
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum WaitFor {
    Ready,
    Deleted,
}

/// A pod as `get pods` shows it; `object` is the Kubernetes Pod with its status.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// `ready/total` app containers.
    pub ready: String,
    /// The STATUS column: Running, Completed, CrashLoopBackOff, ErrImagePull, Terminating...
    pub status: String,
    pub restarts: u32,
    pub age_secs: u64,
    pub host: String,
    pub identity: String,
    pub object: serde_json::Value,
}

/// An object of the cluster state as `get KIND` shows it; `object` is its Kubernetes JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectEntry {
    /// `""` for a cluster-scoped object (Namespace).
    pub namespace: String,
    pub name: String,
    /// Since its `creationTimestamp` (else the write that made its current state); `None` for
    /// the built-in namespaces nobody wrote.
    #[serde(default)]
    pub age_secs: Option<u64>,
    pub object: serde_json::Value,
}

/// One tag of the image store and the image (config digest) it names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageInfo {
    pub tag: String,
    pub id: String,
    /// Bytes of its blobs together, when a holder record says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Node names of the hosts that hold it (empty when listed offline).
    #[serde(default)]
    pub holders: Vec<String>,
}

/// Bytes and chunks of image blobs moved to or from one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTransfer {
    pub bytes: u64,
    pub chunks: u64,
}

/// The `images` section of `status`: blobs shared peer to peer since the agent started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageShareStatus {
    /// Fetched from each holder (node name).
    pub fetched: std::collections::BTreeMap<String, PeerTransfer>,
    /// Served to each peer (node name).
    pub served: std::collections::BTreeMap<String, PeerTransfer>,
    /// Pulled blobs whose sha256 and size matched (and entered the store).
    pub blobs_verified: u64,
    /// Pulled blobs that did not match (discarded).
    pub blobs_rejected: u64,
    /// Bytes of partial blobs a pull found already written (resumed, not fetched again).
    pub resumed_bytes: u64,
    pub pulls_done: u64,
    pub pulls_failed: u64,
    /// Images being pulled now.
    pub pulling: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInfo {
    pub container: String,
    pub log: String,
    pub previous_log: String,
    /// Host pid of the container's process while it runs.
    pub host_pid: Option<u32>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// cgroup directories (v2 and v1) a process entering the container joins.
    pub cgroups: Vec<String>,
    /// What a process entering the container is confined with (as the container).
    #[serde(default)]
    pub security: crate::pod::proto::SecuritySpec,
    /// Its standard streams (`attach`).
    #[serde(default)]
    pub io: ContainerIo,
}

/// A container's standard streams as `attach` sees them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerIo {
    pub stdin: bool,
    pub stdin_once: bool,
    pub tty: bool,
    /// Where the running container's input is, while it takes any.
    #[serde(default)]
    pub input: Option<InputFd>,
}

/// Descriptor `fd` of the pod's init (host pid `init_pid`): a container's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InputFd {
    pub init_pid: u32,
    pub fd: i32,
}

impl ContainerInfo {
    /// How `exec` enters the running container; `None` when it does not run (or may not be
    /// entered).
    pub fn exec_target(&self) -> Option<crate::pod::probe::Target> {
        Some(crate::pod::probe::Target {
            init_pid: 0,
            host_pid: self.host_pid?,
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            user: (self.uid, self.gid),
            cgroups: self.cgroups.iter().map(std::path::PathBuf::from).collect(),
            security: self.security.clone(),
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusInfo {
    pub version: String,
    pub pid: u32,
    pub trust_domain: String,
    pub cgroup_root: String,
    pub policy_dir: String,
    pub workloads: usize,
    pub policy_files: usize,
    pub policy_errors: usize,
    pub rules: usize,
    pub allow_entries: usize,
    /// Number of policy installs since start (each an atomic slot switch).
    pub policy_generation: u64,
    /// The mesh's counters and revocations (absent without a swarm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<MeshStatus>,
    /// Images shared peer to peer (absent without a swarm).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageShareStatus>,
}

/// The `mesh` section of `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// Gossip delivered and dropped (by reason), requests refused and rate limited, failed
    /// attestations, peers expelled: since the agent started.
    pub counters: crate::mesh::swarm::MeshStats,
    /// Node names of the hosts revoked.
    pub revoked: Vec<String>,
    /// The failure detector's counters.
    #[serde(default)]
    pub liveness: beemesh_state::liveness::LiveStats,
    /// Hosts whose `mesh.failureDetector` differs from this host's (it must be the same).
    #[serde(default)]
    pub detector_differs: Vec<String>,
}

/// One host of the mesh as `peers` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerEntry {
    /// The node name its host certificate carries; `None` until it attested.
    pub name: Option<String>,
    pub peer: String,
    pub attested: bool,
    pub addresses: Vec<String>,
    /// The host that answered.
    #[serde(default)]
    pub this_host: bool,
    /// Connected now (this host, or a peer); else remembered from an earlier attestation.
    #[serde(default)]
    pub connected: bool,
    /// Unix seconds it was last seen, for a peer not connected now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<u64>,
    /// What the pods the cluster state places on it request (by its node name).
    #[serde(default)]
    pub requested: Requested,
}

/// What the pods placed on one host request, as Kubernetes' "Allocated resources" counts
/// them: pods that have not ended; per pod the larger of its app containers' sum and its
/// largest init container; a container's limit when it sets no request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Requested {
    pub pods: u32,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// What this host's failure detector holds about a host (`app::liveness`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveEntry {
    pub peer: String,
    /// The host that answered.
    pub this_host: bool,
    pub state: LiveState,
    /// Since this host last heard it (for the hosts it watches).
    pub last_heard_ms_ago: Option<u64>,
    /// Since it was suspected or declared dead.
    pub since_ms_ago: Option<u64>,
}

impl LiveEntry {
    /// `get nodes`' Ready: this host, or a host the detector holds alive.
    pub fn ready(&self) -> bool {
        self.this_host || self.state == LiveState::Alive
    }
}

/// [`LiveEntry::state`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveState {
    Alive,
    Suspect,
    Dead,
    /// Not a member (no Node record names it) or not a peer id.
    Unknown,
}

impl LiveState {
    pub fn as_str(self) -> &'static str {
        match self {
            LiveState::Alive => "alive",
            LiveState::Suspect => "suspect",
            LiveState::Dead => "dead",
            LiveState::Unknown => "unknown",
        }
    }
}

/// A join token as `token list` shows it (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinTokenInfo {
    pub id: String,
    /// Seconds since the epoch.
    pub expires_at: u64,
    /// The only node name it admits, if pinned.
    pub node_name: Option<String>,
    pub used: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadInfo {
    pub name: String,
    pub identity: String,
    pub id: u32,
    pub labels: BTreeMap<String, String>,
    /// Absolute path of the workload's cgroup2 directory.
    pub cgroup: String,
    pub populated: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    pub files: Vec<PolicyFileStatus>,
    pub rules: Vec<RuleStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyFileStatus {
    pub path: String,
    /// Policies from this file in force (its last good version).
    pub policies: usize,
    /// The current version's error, if it has one.
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleStatus {
    pub rule: String,
    pub allowed: u64,
    pub denied: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowRecord {
    /// Unix milliseconds.
    pub time_ms: u64,
    pub subject: String,
    pub peer: String,
    pub direction: String,
    pub verdict: String,
    pub proto: String,
    /// The other side's address.
    pub addr: String,
    pub port: u16,
    pub rule: String,
    pub hook: String,
}
