//! Wires the agent together and runs its actor: the one task that owns the kernel maps,
//! the identity registry, the workload table and the policy state. The admin API, the
//! policy watcher and timers talk to it through channels; nothing else mutates state.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use beemesh_common::{
    Decision, Query, Settings, FLOWS_ALL, FLOWS_DENIED, FLOWS_NONE, FLOWS_SAMPLED, ID_ANY, ID_HOST, ID_NONE,
    ID_WORLD,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::api::{
    self, PolicyFileStatus, PolicyReport, Request, Response, RuleStatus, StatusInfo, WorkloadInfo,
};
use crate::authz::{self, LocalAddrs, Verdicts};
use crate::config::{Config, DefaultAction, FlowEvents};
use crate::flows::{FlowHub, Names};
use crate::identity::{IdentityRegistry, SpiffeId};
use crate::kernel::{Kernel, KernelOptions, SlotContents};
use crate::policy::{self, CompileOptions, CompiledPolicy, Policy, PolicyFile};
use crate::state::StateFiles;
use crate::sys::cgroup;
use crate::workload::{Workload, WorkloadCgroups, WorkloadTable};

mod apply;
pub(crate) mod cluster;
pub(crate) mod controllers;
pub mod dns;
pub(crate) mod events;
pub(crate) mod forward;
mod images;
pub mod join;
pub(crate) mod liveness;
pub(crate) mod mesh;
mod mesh_view;
pub(crate) mod nodes;
mod pods;
mod policy_state;
mod reconcile;
mod remote;
pub(crate) mod sched;
pub(crate) mod services;
mod workloads;

use policy_state::{PolicyEngine, PolicyLink, Snapshot};

/// Why the agent could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("beemesh-agent run needs root (CAP_BPF, CAP_NET_ADMIN, cgroup writes); try sudo")]
    NotRoot,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Kernel(#[from] crate::kernel::KernelError),
    #[error(transparent)]
    Workload(#[from] crate::workload::WorkloadError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Trust(#[from] crate::mesh::trust::TrustError),
    #[error("mesh: {0}")]
    Mesh(#[from] crate::mesh::swarm::SwarmError),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error(transparent)]
    Join(#[from] join::JoinError),
    #[error(transparent)]
    Userns(#[from] crate::pod::userns::UsernsError),
    #[error(transparent)]
    Revocation(#[from] mesh::revocations::RevocationError),
    #[error("configuration: {0}")]
    Config(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

/// What the actor is asked to do: an API request, or a manifest already parsed beside it.
#[derive(Debug)]
pub(crate) enum Command {
    Api(Request),
    /// `apply -f`'s pods, checked against this host's rules before they are written.
    CheckPods {
        file: String,
        pods: Vec<k8s_openapi::api::core::v1::Pod>,
    },
    /// What the cluster state assigns to this host (`app::reconcile`).
    Reconcile(Box<reconcile::Desired>),
    /// Some host (this one too) holds other images now: containers that found no image are
    /// tried again at once.
    ImagesChanged,
    /// Other hosts' pods and the mesh's NetworkPolicies changed (`app::mesh_view`).
    MeshView(Box<mesh_view::MeshView>),
}

pub(crate) type Call = (Command, oneshot::Sender<Response>);

/// Cloneable handle to the agent actor.
#[derive(Clone, Debug)]
pub struct AgentHandle {
    tx: mpsc::Sender<Call>,
    /// The swarm (answers `peers` without the actor).
    mesh: Option<mesh::Mesh>,
}

impl AgentHandle {
    /// A handle whose calls arrive on `tx`'s receiver (the actor, or a test's stand-in).
    pub(crate) fn new(tx: mpsc::Sender<Call>) -> Self {
        Self { tx, mesh: None }
    }

    /// The same handle, answering `peers` from `mesh`.
    pub(crate) fn with_mesh(self, mesh: mesh::Mesh) -> Self {
        Self { mesh: Some(mesh), ..self }
    }

    /// Sends a request and waits for the answer. Manifests are parsed here, on a blocking
    /// thread, so a large file never holds up the actor (and with it policy installs); objects
    /// go to the cluster state (`app::apply`), never to the pod runtime directly.
    pub async fn call(&self, req: Request) -> Response {
        let cmd = match req {
            Request::Apply { file, text } => {
                return match parse_manifest(file.clone(), text).await {
                    Ok(objects) => self.apply(&file, objects).await,
                    Err(message) => Response::Error { message },
                }
            }
            Request::DeleteObjects { file, text } => {
                return match parse_manifest(file, text).await {
                    Ok(objects) => self.delete_objects(objects).await,
                    Err(message) => Response::Error { message },
                }
            }
            Request::DeletePod { namespace, name } => return self.delete_pod(&namespace, &name).await,
            Request::EvictPod { namespace, name } => return self.evict_pod(&namespace, &name).await,
            Request::CordonNode { node, unschedulable } => return self.cordon(&node, unschedulable).await,
            req @ Request::PodContainer { .. } => return self.pod_container(req).await,
            req @ (Request::PodLogs { .. } | Request::ExecPod { .. } | Request::PodInput { .. }) => {
                return self.pod_io(req).await
            }
            Request::ListPods { namespace } => return self.list_pods(namespace.as_deref()).await,
            Request::WaitPod { namespace, name, condition, timeout_ms, uid } => {
                return self.wait_pod(&namespace, &name, condition, timeout_ms, uid.as_deref()).await
            }
            Request::ListObjects { kind, namespace } => {
                let Some(m) = &self.mesh else {
                    return Response::Error { message: "the cluster state is not running".into() };
                };
                let mut items = match m.cluster.list(&kind, namespace.as_deref()).await {
                    Ok(listed) => cluster::kube::entries(&kind, &listed, cluster::now_ms()),
                    Err(e) => return Response::Error { message: e.to_string() },
                };
                if let Some((_, status_kind)) = controllers::STATUS_KINDS.iter().find(|(k, _)| *k == kind) {
                    match m.cluster.list(status_kind, namespace.as_deref()).await {
                        Ok(statuses) => controllers::merge_status(&mut items, &statuses),
                        Err(e) => return Response::Error { message: e.to_string() },
                    }
                }
                return Response::Objects { items };
            }
            Request::JoinTokens { action } => {
                return join::answer(self.mesh.as_ref().and_then(|m| m.issuer.clone()), action).await;
            }
            Request::Revoke { file, text } => {
                return match &self.mesh {
                    Some(m) => match mesh::revoke(m, &file, &text).await {
                        Ok(lines) => Response::Applied { lines },
                        Err(message) => Response::Error { message },
                    },
                    None => Response::Error { message: "the mesh swarm is not running".into() },
                };
            }
            Request::Status => {
                let resp = self.actor(Command::Api(Request::Status)).await;
                return match (resp, &self.mesh) {
                    (Response::Status(mut s), Some(m)) => {
                        s.mesh = mesh::status(m).await.ok();
                        s.images = Some(m.images.status());
                        Response::Status(s)
                    }
                    (other, _) => other,
                };
            }
            Request::Peers => {
                return match &self.mesh {
                    Some(m) => match mesh::peers(m).await {
                        Ok(items) => Response::Peers { items },
                        Err(message) => Response::Error { message },
                    },
                    None => Response::Error { message: "the mesh swarm is not running".into() },
                };
            }
            Request::Liveness { peers } => {
                return match &self.mesh {
                    Some(m) => Response::Liveness { items: mesh::liveness(m, &peers) },
                    None => Response::Error { message: "the mesh swarm is not running".into() },
                };
            }
            req @ (Request::ImportImage { .. } | Request::ListImages { .. }) => {
                return self.images(req).await
            }
            other => Command::Api(other),
        };
        self.actor(cmd).await
    }

    async fn actor(&self, cmd: Command) -> Response {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((cmd, tx)).await.is_err() {
            return Response::Error { message: "the agent is shutting down".into() };
        }
        rx.await.unwrap_or(Response::Error { message: "the agent dropped the request".into() })
    }
}

async fn parse_manifest(file: String, text: String) -> Result<Vec<crate::manifest::Object>, String> {
    tokio::task::spawn_blocking(move || crate::manifest::parse(&file, &text).map_err(|e| e.to_string()))
        .await
        .unwrap_or_else(|e| Err(format!("manifest parser failed: {e}")))
}

/// The actor's state.
struct Agent {
    cfg: Config,
    kernel: Kernel,
    state: StateFiles,
    identities: IdentityRegistry,
    workloads: WorkloadTable,
    cgroups: WorkloadCgroups,
    local: LocalAddrs,
    pods: pods::Pods,
    /// The policy engine (its own thread): snapshots of the workloads go there, tickets of
    /// the snapshots the policy in force includes come back.
    policy: PolicyLink,
    /// The last snapshot's ticket.
    ticket: u64,
    /// What waits for the policy to include the snapshot of a ticket: new pods' sandboxes,
    /// `exec --identity` replies.
    awaiting: Vec<(u64, Awaiting)>,
    /// The workloads changed since the last snapshot: send one at the end of this turn of
    /// the actor (one snapshot, and at most one compile, per burst, not one per pod).
    policy_dirty: bool,
    /// This host's running pods, and other hosts' pods' numeric identities, for the
    /// forwarder (`app::forward`).
    local_pods: watch::Sender<Arc<forward::PodView>>,
    /// Other hosts' pods (numbered here) and the mesh's NetworkPolicies, for the policy.
    mesh: MeshPolicy,
    /// This host's pods' mesh addresses (assigned by the forwarder), for their statuses.
    pod_addrs: forward::PodAddrs,
    /// This host's InternalIPs (the Node record's publisher keeps them), for `status.hostIP`.
    host_ips: nodes::HostIps,
    /// This host's `exec --identity` workloads as published in the cluster state, by name.
    exec_records: BTreeMap<String, cluster::execs::ExecRecord>,
}

/// What the policy knows of the rest of the mesh (`app::mesh_view`).
#[derive(Debug, Default)]
struct MeshPolicy {
    /// `namespace/name` -> the pod as the compiler sees it, with a numeric id of this host's.
    remote: BTreeMap<String, crate::policy::Workload>,
    policies: Arc<Vec<crate::policy::Policy>>,
    /// Bumped when `policies` change.
    generation: u64,
}

/// Something that may only go ahead once the policy in force includes a workload.
enum Awaiting {
    /// A new pod (workload name, uid): its sandbox starts.
    Pod(String, String),
    /// `exec --identity`: the reply lets the caller move a process in.
    Workload(WorkloadInfo, oneshot::Sender<Response>),
}

/// Starts the data path's runtime: one thread with a single-threaded tokio runtime, on which
/// the tunnel endpoint, the tunnel acceptor and every relay through a tunnel run
/// (`app::forward`; the capture and NodePort listeners stay on the agent's runtime and hand
/// such connections over). A relay's bytes then never hop between worker threads,
/// and the agent's other work (the cluster state, the scheduler, the controllers) never
/// delays them; the QUIC machine notes measured 7.7 -> 8.9 Gbit/s from fewer runtime threads.
fn data_path() -> std::io::Result<tokio::runtime::Handle> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("beemesh-data".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))?;
    Ok(handle)
}

/// Raises the soft limit on open files to the hard one: every forwarded connection holds a
/// socket or two (a unit's default soft limit, 1024, would refuse connections past about a
/// thousand, as Envoy's deployments raise it too).
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => warn!(soft, hard, error = %e, "cannot raise the open files limit"),
        },
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot read the open files limit"),
    }
}

/// Runs the agent until SIGTERM/SIGINT, then detaches everything it attached and removes
/// every cgroup it created.
pub async fn run(cfg: Config) -> Result<(), AgentError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(AgentError::NotRoot);
    }
    for dir in [&cfg.state_dir, &cfg.run_dir, &cfg.policy_dir] {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    // One agent per cgroup name and per run dir, checked before touching anything shared.
    let _instance = lock_instance(Path::new(LOCK_DIR), &cfg.cgroup_name)?;
    check_subids(&cfg, &[Path::new("/etc/subuid"), Path::new("/etc/subgid")])?;
    // Image files may be setuid: the store is root's alone, also when made by an older agent.
    crate::image::ImageStore::new(&cfg.state_dir).secure().map_err(io("secure the image store"))?;
    crate::sys::process::become_subreaper().map_err(io("become the reaper of pod init processes"))?;
    raise_open_files();
    let socket = cfg.socket_path();
    let listener = api::server::bind(&socket).await.map_err(io(format!("bind {}", socket.display())))?;
    ensure_bpffs(&cfg.bpffs)?;
    let mount = cgroup::cgroup2_mount().map_err(io("find the cgroup2 mount"))?;
    let cgroups = WorkloadCgroups::new(mount.join(&cfg.cgroup_name));
    cgroups.ensure_root()?;
    let workload_level = cgroup::cgroup_level(&mount, cgroups.root()) as u32 + 1;

    let state = StateFiles::new(&cfg.state_dir);
    let (mut kernel, slots, flow_reader, log_reader) =
        Kernel::load(KernelOptions { cgroup_root: cgroups.root().to_path_buf(), pin_dir: cfg.pin_dir() })?;
    let service_maps = kernel.take_service_maps();
    let (names_tx, names_rx) = watch::channel(Arc::new(Names::default()));
    let (pod_tx, mut pod_msgs) = mpsc::channel::<pods::PodMsg>(256);
    // Host credentials from `ca issue-host` in <state-dir>/host/, or a mesh of one on the
    // self-made root of <state-dir>/ca/. The swarm attests with `identity` and checks peers
    // with `trust`; the pods' SVIDs come from `workloads`.
    let creds = crate::mesh::trust::files::load_host(
        &cfg.state_dir,
        &cfg.trust_domain,
        // The hostname made into a valid node name unless one is configured.
        &cfg.mesh.node_name.clone().unwrap_or_else(crate::mesh::trust::files::default_node_name),
        std::time::SystemTime::now(),
    )?;
    tracing::info!(
        node = creds.identity.node_name(),
        peer = %creds.identity.peer_id(),
        issued = creds.issued,
        "host identity"
    );
    let issuer = Arc::new(creds.workloads);
    let mut pods = pods::Pods::new(&cfg, pod_tx, issuer.clone())?;
    let trust_domain = creds.trust.trust_domain().to_owned();
    let mesh = mesh::start(&cfg, creds.identity, creds.trust).await?;
    // Pods come from the cluster state and their statuses go there; `spec.nodeName` names
    // hosts by node name.
    pods.cluster = Some(mesh.cluster.clone());
    pods.events = Some(mesh.events.clone());
    pods.pulls = Some(mesh.images.clone());
    pods.host = mesh.cluster.node().to_owned();
    let host_netns = crate::sys::process::netns_cookie().map_err(io("read the network namespace cookie"))?;
    let (mut engine, policy_link, snapshots) = PolicyEngine::new(
        &cfg,
        workload_level,
        host_netns,
        state.clone(),
        cgroups.clone(),
        slots,
        names_tx,
        Arc::new(Snapshot::default()),
    );
    let mut agent = Agent {
        pods,
        identities: state.load_identities()?,
        workloads: WorkloadTable::default(),
        cgroups,
        kernel,
        state,
        local: LocalAddrs::read(),
        cfg,
        policy: policy_link,
        ticket: 0,
        awaiting: Vec::new(),
        policy_dirty: false,
        local_pods: watch::channel(Arc::new(forward::PodView::default())).0,
        mesh: MeshPolicy::default(),
        pod_addrs: forward::PodAddrs::default(),
        host_ips: mesh.host_ips.clone(),
        exec_records: BTreeMap::new(),
    };
    agent.recover()?;
    agent.seed_local_ports();
    agent.kernel.set_local_addrs(&agent.local.0.iter().copied().collect::<Vec<_>>())?;
    // Policy goes into the maps before the programs attach: enforcement starts complete.
    // Defaults and the workload level hold even if no policy compiles.
    engine.init_settings()?;
    engine.seed(agent.snapshot());
    engine.rescan_policies();
    agent.kernel.attach()?;
    // Sockets bound while we attached were tagged in the old maps only.
    agent.seed_local_ports();
    if engine.in_force() {
        agent.kernel.retire_previous();
    } else {
        warn!("no policy compiled yet: an earlier instance's programs (if any) stay attached");
    }

    let (shutdown_tx, _) = broadcast::channel::<()>(1);
    let hub = FlowHub::new(agent.cfg.flow_history);
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(maps) = service_maps {
        let pod_pool = services::Pool::cidr(&agent.cfg.pod_cidr)
            .map_err(|e| AgentError::Config(format!("podCidr: {e}")))?;
        forward::start(forward::Setup {
            pod_pool,
            addrs: agent.pod_addrs.clone(),
            node: mesh.cluster.node().to_owned(),
            cluster: mesh.cluster.clone(),
            liveness: mesh.liveness.clone(),
            maps,
            tunnel: mesh.tunnel.clone(),
            data: mesh.data.clone(),
            issuer,
            trust_domain,
            svid_lifetime: Duration::from_secs(agent.cfg.svid_lifetime_seconds),
            idle: Duration::from_secs(agent.cfg.flow_idle_timeout_seconds),
            local: agent.local_pods.subscribe(),
            names: names_rx.clone(),
            flows: hub.clone(),
        })
        .await
        .map_err(io("start the forwarder"))?;
    }
    tasks.spawn(crate::flows::run(flow_reader, hub.clone(), names_rx));
    if let Some(logs) = log_reader {
        tasks.spawn(logs.run());
    }
    // From here on the policy engine runs on its own thread (it watches policy.d).
    let _policy_thread = policy_state::spawn(
        engine,
        &mut agent.policy,
        snapshots,
        Duration::from_millis(agent.cfg.policy_debounce_ms),
    )?;

    // Pods after policy: a pod's workload is created with the policy in force.
    agent.recover_pods()?;
    agent.settle();

    let (call_tx, mut calls) = mpsc::channel::<Call>(64);
    // The reconciler carries what the state places here to the actor from now on (the
    // first pass adopts what `recover_pods` found to the state).
    tasks.spawn(reconcile::run(mesh.cluster.clone(), call_tx.clone()));
    tasks.spawn(images::sharing::watch(mesh.cluster.clone(), mesh.images.clone(), call_tx.clone()));
    tasks.spawn(mesh_view::run(mesh.cluster.clone(), agent.cfg.trust_domain.clone(), call_tx.clone()));
    let handle = AgentHandle::new(call_tx).with_mesh(mesh.clone());
    let _ = mesh.pod_server.set(handle.clone());
    tasks.spawn(api::server::serve(
        listener,
        handle,
        hub,
        api::server::Limits::default(),
        shutdown_tx.subscribe(),
    ));

    let mut sigterm = signal(SignalKind::terminate()).map_err(io("install SIGTERM handler"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(io("install SIGINT handler"))?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    info!(
        pid = std::process::id(),
        socket = %socket.display(),
        cgroup = %agent.cgroups.root().display(),
        policy_dir = %agent.cfg.policy_dir.display(),
        "beemesh agent running"
    );
    loop {
        let event = tokio::select! {
            biased;
            Ok(()) = agent.policy.installed.changed() => Event::Installed,
            Some((cmd, reply)) = calls.recv() => Event::Call(cmd, reply),
            Some(msg) = pod_msgs.recv() => Event::Pod(Box::new(msg)),
            _ = tick.tick() => Event::Tick,
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
        };
        let turn = std::time::Instant::now();
        let kind = match event {
            Event::Installed => {
                agent.on_installed();
                "installed"
            }
            Event::Call(cmd, reply) => {
                match cmd {
                    Command::Api(Request::ImportImage { path, name, state_dir }) => {
                        agent.import_image(path, name, state_dir, reply);
                    }
                    Command::Api(Request::CreateWorkload { name, identity, labels }) => {
                        agent.create_workload(name, &identity, labels, reply);
                    }
                    Command::Api(Request::Policies) => agent.policy_report(reply),
                    Command::Api(req) => {
                        let resp = agent.handle(req);
                        let _ = reply.send(resp);
                    }
                    Command::CheckPods { file, pods } => {
                        let resp = agent
                            .check_pods(&file, &pods)
                            .map_or_else(|message| Response::Error { message }, |()| Response::Done);
                        let _ = reply.send(resp);
                    }
                    Command::Reconcile(desired) => {
                        let _ = reply.send(agent.reconcile(*desired));
                    }
                    Command::ImagesChanged => {
                        agent.retry_image_pulls();
                        let _ = reply.send(Response::Done);
                    }
                    Command::MeshView(view) => {
                        agent.set_mesh_view(*view);
                        let _ = reply.send(Response::Done);
                    }
                };
                "call"
            }
            Event::Pod(msg) => {
                agent.on_pod_msg(*msg);
                "pod"
            }
            Event::Tick => {
                agent.housekeeping();
                agent.drive_pods();
                agent.bound_logs();
                "tick"
            }
        };
        let handled = turn.elapsed();
        agent.settle();
        agent.publish_statuses();
        agent.publish_local_pods();
        let total = turn.elapsed();
        if total >= Duration::from_millis(2) {
            debug!(
                kind,
                handle_ms = format_args!("{:.1}", handled.as_secs_f64() * 1e3),
                settle_ms = format_args!("{:.1}", (total - handled).as_secs_f64() * 1e3),
                "actor turn"
            );
        }
    }
    let _ = shutdown_tx.send(());
    // Dropping the actor's end of the snapshots stops the policy engine.
    tasks.abort_all();
    agent.shutdown();
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// What woke the actor.
enum Event {
    Installed,
    Call(Command, oneshot::Sender<Response>),
    Pod(Box<pods::PodMsg>),
    Tick,
}

/// Holds `/run/lock/beemesh/<cgroup-name>.lock` for the agent's lifetime.
/// Refuses a pod id range that overlaps an entry of `files` (`/etc/subuid`, `/etc/subgid`;
/// missing files are fine): a host user's rootless containers would share host ids with pods.
fn check_subids(cfg: &Config, files: &[&Path]) -> Result<(), AgentError> {
    let (start, size) = (cfg.pod_id_range_start, cfg.pod_id_range_size);
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io(format!("read {}", file.display()))(e)),
        };
        if let Some((line, entry)) = crate::pod::userns::subid_overlap(&text, start, size) {
            let file = file.display().to_string();
            return Err(
                crate::pod::userns::UsernsError::SubidOverlap { start, size, file, line, entry }.into()
            );
        }
    }
    Ok(())
}

/// The agents' single-instance locks, one per cgroup name. Root's alone (0700, files 0600):
/// whoever can open a lock file can hold its flock and keep the next agent from starting. It
/// is also a protected hostPath.
pub const LOCK_DIR: &str = "/run/lock/beemesh";

/// Takes this instance's lock in `dir` (`LOCK_DIR`) for `name` (the cgroup name).
fn lock_instance(dir: &Path, name: &str) -> Result<nix::fcntl::Flock<std::fs::File>, AgentError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    let me = nix::unistd::geteuid().as_raw();
    let shown = dir.display();
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(format!("create {shown}"))(e)),
    }
    // /run/lock is world-writable (sticky): anyone could have made the directory first.
    let meta = std::fs::symlink_metadata(dir).map_err(io(format!("stat {shown}")))?;
    if !meta.is_dir() || meta.uid() != me {
        return Err(io(format!("lock directory {shown}"))(std::io::Error::other(format!(
            "not a directory of uid {me} (uid {}, {:?}): remove it and start again",
            meta.uid(),
            meta.file_type()
        ))));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(io(format!("chmod 0700 {shown}")))?;
    let path = dir.join(format!("{name}.lock"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io(format!("open {}", path.display())))?;
    let owner = file.metadata().map_err(io(format!("stat {}", path.display())))?.uid();
    if owner != me {
        return Err(io(format!("lock file {}", path.display()))(std::io::Error::other(format!(
            "belongs to uid {owner}, not {me}: remove it and start again"
        ))));
    }
    // A lock file of an older agent was 0644.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod 0600 {}", path.display())))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        io(format!("another agent is running with cgroup name {name:?} ({})", path.display()))(e.into())
    })
}

fn ensure_bpffs(path: &Path) -> Result<(), AgentError> {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .map_err(io("read /proc/self/mounts"))?
        .lines()
        .any(|l| {
            let mut f = l.split_whitespace();
            let (_, target, fstype) = (f.next(), f.next(), f.next());
            fstype == Some("bpf") && target.map(Path::new) == Some(path)
        });
    if !mounted {
        std::fs::create_dir_all(path).map_err(io(format!("create {}", path.display())))?;
        nix::mount::mount(Some("bpf"), path, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .map_err(|e| io(format!("mount bpffs at {}", path.display()))(e.into()))?;
        info!(path = %path.display(), "mounted bpffs");
    }
    Ok(())
}

impl Agent {
    /// Re-adopts the workloads of an earlier run whose cgroups still exist, and removes
    /// cgroups nobody owns.
    fn recover(&mut self) -> Result<(), AgentError> {
        let previous = self.state.load_workloads()?;
        for w in previous.iter() {
            match self.cgroups.existing_id(&w.name) {
                Some(cgroup_id) => {
                    let mut w = w.clone();
                    w.cgroup_id = cgroup_id;
                    self.kernel.set_cgroup(cgroup_id, w.id)?;
                    info!(workload = %w.name, identity = %w.identity, "re-adopted workload");
                    self.workloads.insert(w)?;
                }
                None => info!(workload = %w.name, "workload of an earlier run is gone"),
            }
        }
        for child in self.cgroups.children() {
            if self.workloads.get(&child).is_none() {
                warn!(cgroup = %child, "removing a cgroup no workload owns");
                if let Err(e) = self.cgroups.destroy(&child) {
                    warn!(cgroup = %child, error = %e, "cannot remove stale cgroup");
                }
            }
        }
        self.persist();
        Ok(())
    }

    fn persist(&self) {
        if let Err(e) = self.state.save_workloads(&self.workloads) {
            error!(error = %e, "cannot save workload state");
        }
        if let Err(e) = self.state.save_identities(&self.identities) {
            error!(error = %e, "cannot save identity state");
        }
    }

    fn handle(&mut self, req: Request) -> Response {
        let result = match req {
            Request::Status => Ok(Response::Status(self.status())),
            Request::CreateWorkload { .. } => {
                Err("workload creation is answered by the actor loop".to_string())
            }
            Request::DeleteWorkload { name } => self.delete_workload(&name).map(|()| Response::Done),
            Request::JoinedWorkload { name } => {
                self.workloads.mark_joined(&name).map(|()| Response::Done).map_err(|e| e.to_string())
            }
            Request::PortOwner { proto, port } => self.port_owner(&proto, port),
            Request::ListWorkloads => {
                Ok(Response::Workloads { items: self.workloads.iter().map(|w| self.info(w)).collect() })
            }
            Request::Policies => Err("policy reports are answered by the policy engine".to_string()),
            Request::Peers | Request::Liveness { .. } | Request::Revoke { .. } => {
                Err("answered by the mesh swarm".to_string())
            }
            Request::JoinTokens { .. } => Err("join tokens are answered by the issuer".to_string()),
            Request::Flows { .. } => Err("flows are served by the flow hub".to_string()),
            Request::Apply { .. }
            | Request::DeleteObjects { .. }
            | Request::DeletePod { .. }
            | Request::EvictPod { .. }
            | Request::CordonNode { .. }
            | Request::ListPods { .. }
            | Request::WaitPod { .. }
            | Request::PodLogs { .. }
            | Request::ExecPod { .. } => {
                Err("objects and pods are answered from the cluster state".to_string())
            }
            Request::ListObjects { .. } => Err("objects are listed by the cluster state".to_string()),
            Request::PodContainer { namespace, name, container } => {
                self.pod_container(&namespace, &name, container.as_deref())
            }
            // Written by the pod I/O path; the actor only closes a stdinOnce input.
            Request::PodInput { namespace, name, container, .. } => {
                self.close_input(&namespace, &name, container.as_deref())
            }
            Request::ImportImage { .. } => Err("imports are answered by the actor loop".to_string()),
            Request::ListImages { state_dir } => self.list_images(state_dir.as_deref()),
        };
        result.unwrap_or_else(|message| Response::Error { message })
    }

    fn status(&self) -> StatusInfo {
        let policy = self.policy.summary.borrow().clone();
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            trust_domain: self.cfg.trust_domain.clone(),
            cgroup_root: self.cgroups.root().display().to_string(),
            policy_dir: self.cfg.policy_dir.display().to_string(),
            workloads: self.workloads.len(),
            policy_files: policy.files,
            policy_errors: policy.errors,
            rules: policy.rules,
            allow_entries: policy.allow_entries,
            policy_generation: policy.generation,
            mesh: None,
            images: None,
        }
    }

    /// Clean stop: programs detached, workloads killed, cgroups removed, state saved.
    fn shutdown(&mut self) {
        self.stop_pods();
        // Workloads die first, all at once, while the programs still enforce.
        for w in self.workloads.iter() {
            if let Err(e) = crate::sys::cgroup::kill_cgroup(&self.cgroups.path(&w.name)) {
                warn!(workload = %w.name, error = %e, "cannot kill workload");
            }
        }
        self.kernel.detach();
        let names: Vec<String> = self.workloads.iter().map(|w| w.name.clone()).collect();
        for name in names {
            if let Err(e) = self.cgroups.destroy(&name) {
                warn!(workload = %name, error = %e, "cannot remove workload cgroup");
            }
            let _ = self.workloads.remove(&name);
        }
        if let Err(e) = std::fs::remove_dir(self.cgroups.root()) {
            warn!(cgroup = %self.cgroups.root().display(), error = %e, "cannot remove cgroup root");
        }
        self.persist();
        info!("agent stopped");
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777
    }

    #[test]
    fn the_instance_lock_is_root_only_and_exclusive() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("beemesh");
        let held = lock_instance(&dir, "a").expect("first lock");
        assert_eq!((mode(&dir), mode(&dir.join("a.lock"))), (0o700, 0o600));
        let err = lock_instance(&dir, "a").expect_err("held").to_string();
        assert!(err.contains("another agent is running") && err.contains("\"a\""), "{err}");
        lock_instance(&dir, "b").expect("another name");
        drop(held);
        // What an older agent left: a 0755 directory and 0644 files.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(dir.join("a.lock"), std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let _held = lock_instance(&dir, "a").expect("lock again");
        assert_eq!((mode(&dir), mode(&dir.join("a.lock"))), (0o700, 0o600));
        // A planted link is never followed, as the lock file or as the directory.
        std::os::unix::fs::symlink(tmp.path().join("elsewhere"), dir.join("c.lock")).expect("symlink");
        assert!(lock_instance(&dir, "c").is_err());
        assert!(!tmp.path().join("elsewhere").exists());
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink");
        let err = lock_instance(&link, "d").expect_err("a link").to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn a_pod_id_range_overlapping_subordinate_ids_is_refused_by_key() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (subuid, subgid) = (tmp.path().join("subuid"), tmp.path().join("subgid"));
        std::fs::write(&subuid, "alice:100000:65536\n").expect("write");
        std::fs::write(&subgid, "alice:100000:65536\nbob:2000300000:65536\n").expect("write");
        let files = [subuid.as_path(), subgid.as_path(), Path::new("/nonexistent/subuid")];
        check_subids(&Config::default(), &files[..1]).expect("the default range is clear of alice");
        let err = check_subids(&Config::default(), &files).expect_err("bob's ids").to_string();
        assert!(err.contains("podIdRangeStart") && err.contains("subgid:2") && err.contains("bob"), "{err}");
        let low = Config { pod_id_range_start: 65_536 * 2, pod_id_range_size: 65_536, ..Config::default() };
        let err = check_subids(&low, &files).expect_err("alice's ids").to_string();
        assert!(err.contains("subuid:1"), "{err}");
    }

    #[test]
    fn a_lock_directory_made_by_someone_else_is_refused() {
        // (Runs as root, as the agent does: chown needs it.)
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("beemesh");
        std::fs::create_dir(&dir).expect("mkdir");
        std::os::unix::fs::chown(&dir, Some(4321), Some(4321)).expect("chown");
        let err = lock_instance(&dir, "a").expect_err("foreign owner").to_string();
        assert!(err.contains("uid 4321") && err.contains("remove it"), "{err}");
    }
}
