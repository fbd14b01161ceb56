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
use tracing::{error, info, warn};

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
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AgentError {
    let what = what.into();
    move |source| AgentError::Io { what, source }
}

type Call = (Request, oneshot::Sender<Response>);

/// Cloneable handle to the agent actor.
#[derive(Clone, Debug)]
pub struct AgentHandle {
    tx: mpsc::Sender<Call>,
}

impl AgentHandle {
    /// Sends a request and waits for the answer.
    pub async fn call(&self, req: Request) -> Response {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((req, tx)).await.is_err() {
            return Response::Error { message: "the agent is shutting down".into() };
        }
        rx.await.unwrap_or(Response::Error { message: "the agent dropped the request".into() })
    }
}

/// One file of policy.d: its last good policies and the current text's error, if any.
#[derive(Debug, Default)]
struct FileState {
    text: String,
    good: Option<Vec<Policy>>,
    error: Option<String>,
}

impl Verdicts for CompiledPolicy {
    fn decide(&self, q: &Query) -> Decision {
        CompiledPolicy::decide(self, q)
    }
    fn cidr_identity(&self, ip: std::net::IpAddr) -> Option<u32> {
        CompiledPolicy::cidr_identity(self, ip)
    }
}

/// The actor's state.
struct Agent {
    cfg: Config,
    kernel: Kernel,
    state: StateFiles,
    identities: IdentityRegistry,
    workloads: WorkloadTable,
    cgroups: WorkloadCgroups,
    workload_level: u32,
    files: BTreeMap<PathBuf, FileState>,
    compiled: Option<Arc<CompiledPolicy>>,
    compile_error: Option<String>,
    generation: u64,
    local: LocalAddrs,
    names: watch::Sender<Arc<Names>>,
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
    let _instance = lock_instance(&cfg)?;
    let socket = cfg.socket_path();
    let listener = api::server::bind(&socket).await.map_err(io(format!("bind {}", socket.display())))?;
    ensure_bpffs(&cfg.bpffs)?;
    let mount = cgroup::cgroup2_mount().map_err(io("find the cgroup2 mount"))?;
    let cgroups = WorkloadCgroups::new(mount.join(&cfg.cgroup_name));
    cgroups.ensure_root()?;
    let workload_level = cgroup::cgroup_level(&mount, cgroups.root()) as u32 + 1;

    let state = StateFiles::new(&cfg.state_dir);
    let (kernel, flow_reader, log_reader) =
        Kernel::load(KernelOptions { cgroup_root: cgroups.root().to_path_buf(), pin_dir: cfg.pin_dir() })?;
    let (names_tx, names_rx) = watch::channel(Arc::new(Names::default()));
    let mut agent = Agent {
        identities: state.load_identities()?,
        workloads: WorkloadTable::default(),
        cgroups,
        workload_level,
        kernel,
        state,
        files: BTreeMap::new(),
        compiled: None,
        compile_error: None,
        generation: 0,
        local: LocalAddrs::read(),
        names: names_tx,
        cfg,
    };
    agent.recover()?;
    agent.seed_local_ports();
    agent.kernel.set_local_addrs(&agent.local.0.iter().copied().collect::<Vec<_>>())?;
    // Policy goes into the maps before the programs attach: enforcement starts complete.
    agent.rescan_policies();
    agent.kernel.attach()?;

    let (shutdown_tx, _) = broadcast::channel::<()>(1);
    let hub = FlowHub::new(agent.cfg.flow_history);
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(crate::flows::run(flow_reader, hub.clone(), names_rx));
    if let Some(logs) = log_reader {
        tasks.spawn(logs.run());
    }
    let mut policy_events =
        policy::watch::spawn(&agent.cfg.policy_dir, Duration::from_millis(agent.cfg.policy_debounce_ms))
            .map_err(io(format!("watch {}", agent.cfg.policy_dir.display())))?;
    // A change between the first scan and the watch must not be missed.
    agent.rescan_policies();

    let (call_tx, mut calls) = mpsc::channel::<Call>(64);
    tasks.spawn(api::server::serve(listener, AgentHandle { tx: call_tx }, hub, shutdown_tx.subscribe()));

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
        tokio::select! {
            // Policy changes first: revocation latency must not queue behind other work.
            biased;
            Some(()) = policy_events.recv() => agent.rescan_policies(),
            Some((req, reply)) = calls.recv() => {
                let resp = agent.handle(req);
                let _ = reply.send(resp);
            }
            _ = tick.tick() => agent.housekeeping(),
            _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { info!("SIGINT: shutting down"); break; }
        }
    }
    let _ = shutdown_tx.send(());
    tasks.abort_all();
    agent.shutdown();
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// Holds `/run/lock/beemesh/<cgroup-name>.lock` for the agent's lifetime.
fn lock_instance(cfg: &Config) -> Result<nix::fcntl::Flock<std::fs::File>, AgentError> {
    let dir = Path::new("/run/lock/beemesh");
    std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    let path = dir.join(format!("{}.lock", cfg.cgroup_name));
    let file = std::fs::File::create(&path).map_err(io(format!("open {}", path.display())))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        io(format!("another agent is running with cgroup name {:?} ({})", cfg.cgroup_name, path.display()))(
            e.into(),
        )
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

    /// Tags the ports of sockets workloads opened before this instance's programs existed
    /// (after a restart), so that they are recognised as theirs from the first verdict.
    fn seed_local_ports(&mut self) {
        let owners: HashMap<u64, u32> = self.workloads.iter().map(|w| (w.cgroup_id, w.id)).collect();
        if owners.is_empty() {
            return;
        }
        let tcp = crate::sys::diag::dump_tcp(crate::sys::diag::StateMask::ALL).unwrap_or_else(|e| {
            warn!(error = %e, "cannot list TCP sockets to re-tag workload ports");
            Vec::new()
        });
        let udp = crate::sys::diag::dump_udp().unwrap_or_else(|e| {
            warn!(error = %e, "cannot list UDP sockets to re-tag workload ports");
            Vec::new()
        });
        // Servers only: listening TCP sockets and bound UDP sockets. Clients need no tag
        // (the ingress program looks the sending socket up).
        let mut tagged = 0;
        let candidates = tcp
            .iter()
            .filter(|s| s.state == crate::sys::diag::TcpState::Listen)
            .map(|s| (s, beemesh_common::PROTO_TCP))
            .chain(udp.iter().map(|s| (s, beemesh_common::PROTO_UDP)));
        for (s, proto) in candidates {
            let Some(&id) = s.cgroup_id.and_then(|c| owners.get(&c)) else { continue };
            if s.local.port() == 0 {
                continue;
            }
            match self.kernel.tag_local_port(s.local.port(), proto, id, s.cookie) {
                Ok(()) => tagged += 1,
                Err(e) => warn!(error = %e, "cannot re-tag a workload port"),
            }
        }
        if tagged > 0 {
            info!(ports = tagged, "re-tagged ports of re-adopted workloads");
        }
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
            Request::CreateWorkload { name, identity, labels } => {
                self.create_workload(name, &identity, labels)
            }
            Request::DeleteWorkload { name } => self.delete_workload(&name).map(|()| Response::Done),
            Request::JoinedWorkload { name } => {
                self.workloads.mark_joined(&name).map(|()| Response::Done).map_err(|e| e.to_string())
            }
            Request::PortOwner { proto, port } => self.port_owner(&proto, port),
            Request::ListWorkloads => {
                Ok(Response::Workloads { items: self.workloads.iter().map(|w| self.info(w)).collect() })
            }
            Request::Policies => self.policy_report().map(Response::Policies),
            Request::Flows { .. } => Err("flows are served by the flow hub".to_string()),
        };
        result.unwrap_or_else(|message| Response::Error { message })
    }

    fn port_owner(&self, proto: &str, port: u16) -> Result<Response, String> {
        let proto = match proto {
            "tcp" => beemesh_common::PROTO_TCP,
            "udp" => beemesh_common::PROTO_UDP,
            other => return Err(format!("protocol {other:?}: expected tcp or udp")),
        };
        let identity = self
            .kernel
            .local_port_owner(port, proto)
            .map(|id| self.identities.spiffe_of(id).map_or_else(|| format!("id:{id}"), ToString::to_string));
        Ok(Response::PortOwner { identity })
    }

    fn info(&self, w: &Workload) -> WorkloadInfo {
        WorkloadInfo {
            name: w.name.clone(),
            identity: w.identity.to_string(),
            id: w.id,
            labels: w.labels.clone(),
            cgroup: self.cgroups.path(&w.name).display().to_string(),
            populated: self.cgroups.populated(&w.name).unwrap_or(false),
        }
    }

    fn status(&self) -> StatusInfo {
        let compiled = self.compiled.as_deref();
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            trust_domain: self.cfg.trust_domain.clone(),
            cgroup_root: self.cgroups.root().display().to_string(),
            policy_dir: self.cfg.policy_dir.display().to_string(),
            workloads: self.workloads.len(),
            policy_files: self.files.len(),
            policy_errors: self.files.values().filter(|f| f.error.is_some()).count()
                + usize::from(self.compile_error.is_some()),
            rules: compiled.map_or(0, |c| c.rules.len()),
            allow_entries: compiled.map_or(0, |c| c.allow.len()),
            policy_generation: self.generation,
        }
    }

    fn parse_identity(&self, text: &str) -> Result<SpiffeId, String> {
        let id = if text.starts_with("spiffe://") {
            text.parse::<SpiffeId>().map_err(|e| e.to_string())?
        } else {
            let (ns, sa) = text.split_once('/').ok_or_else(|| {
                format!("identity {text:?}: expected spiffe://<td>/ns/<ns>/sa/<sa> or <ns>/<sa>")
            })?;
            SpiffeId::new(&self.cfg.trust_domain, ns, sa).map_err(|e| e.to_string())?
        };
        if id.trust_domain() != self.cfg.trust_domain {
            return Err(format!(
                "identity {id} is outside this agent's trust domain {}",
                self.cfg.trust_domain
            ));
        }
        Ok(id)
    }

    fn create_workload(
        &mut self,
        name: Option<String>,
        identity: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Response, String> {
        let identity = self.parse_identity(identity)?;
        let name = match name {
            Some(n) => n,
            None => self.workloads.generate_name(&identity),
        };
        crate::workload::validate_name(&name).map_err(|e| e.to_string())?;
        if self.workloads.get(&name).is_some() {
            return Err(format!("workload {name:?} already exists"));
        }
        let id = self.identities.allocate_labeled(&identity, &labels).map_err(|e| e.to_string())?;
        let cgroup_id = self.cgroups.create(&name).map_err(|e| e.to_string())?;
        let w = Workload {
            name: name.clone(),
            identity,
            id,
            labels,
            cgroup_id,
            created: now_secs(),
            joined: false,
        };
        // Identity in the kernel and policy compiled for it before any process can join.
        if let Err(e) = self.kernel.set_cgroup(cgroup_id, id) {
            let _ = self.cgroups.destroy(&name);
            return Err(e.to_string());
        }
        let info = self.info(&w);
        self.workloads.insert(w).map_err(|e| e.to_string())?;
        info!(workload = %name, identity = %info.identity, id, "workload created");
        self.persist();
        self.recompile();
        Ok(Response::Workload(info))
    }

    fn delete_workload(&mut self, name: &str) -> Result<(), String> {
        self.forget_workload(name)?;
        self.persist();
        self.recompile();
        Ok(())
    }

    /// Removes a workload's cgroup and kernel mapping; the caller persists and recompiles
    /// (once for a batch).
    fn forget_workload(&mut self, name: &str) -> Result<(), String> {
        let w = self.workloads.remove(name).map_err(|e| e.to_string())?;
        if let Err(e) = self.cgroups.destroy(name) {
            warn!(workload = %name, error = %e, "cannot remove workload cgroup");
        }
        if let Err(e) = self.kernel.remove_cgroup(w.cgroup_id) {
            warn!(workload = %name, error = %e, "cannot unmap workload cgroup");
        }
        info!(workload = %name, "workload removed");
        Ok(())
    }

    /// Periodic: reap finished workloads, refresh local addresses.
    fn housekeeping(&mut self) {
        let observed: BTreeMap<String, bool> = self
            .workloads
            .iter()
            .filter_map(|w| Some((w.name.clone(), self.cgroups.populated(&w.name)?)))
            .collect();
        let done = self.workloads.reap(&observed, now_secs());
        if !done.is_empty() {
            for name in &done {
                let _ = self.forget_workload(name);
            }
            self.persist();
            self.recompile();
        }
        let local = LocalAddrs::read();
        if local.0 != self.local.0 {
            if let Err(e) = self.kernel.set_local_addrs(&local.0.iter().copied().collect::<Vec<_>>()) {
                warn!(error = %e, "cannot update local addresses");
            }
            self.local = local;
        }
    }

    /// Rereads policy.d; a file whose new text is invalid keeps its last good policies.
    fn rescan_policies(&mut self) {
        let dir = self.cfg.policy_dir.clone();
        let mut seen = Vec::new();
        let mut changed = false;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>(),
            Err(e) => {
                warn!(dir = %dir.display(), error = %e, "cannot read policy directory");
                Vec::new()
            }
        };
        for path in entries.into_iter().filter(|p| is_policy_file(p)) {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read policy file");
                    continue;
                }
            };
            seen.push(path.clone());
            let entry = self.files.entry(path.clone()).or_default();
            if entry.text == text && (entry.good.is_some() || entry.error.is_some()) {
                continue;
            }
            entry.text = text;
            match policy::parse_file(&path, &entry.text) {
                Ok(policies) => {
                    info!(file = %path.display(), policies = policies.len(), "policy file loaded");
                    entry.good = Some(policies);
                    entry.error = None;
                    changed = true;
                }
                Err(e) => {
                    error!(
                        file = %path.display(),
                        line = e.line(),
                        reason = %e,
                        kept = entry.good.as_ref().map_or(0, Vec::len),
                        "invalid policy file; its last good version stays in force"
                    );
                    entry.error = Some(e.to_string());
                }
            }
        }
        let before = self.files.len();
        self.files.retain(|p, _| seen.contains(p));
        if self.files.len() != before {
            changed = true;
        }
        if changed || self.compiled.is_none() {
            self.recompile();
        }
    }

    /// Compiles the good policies for the current workloads, installs them atomically and
    /// tears down connections they no longer allow. On error the previous policy stays.
    fn recompile(&mut self) {
        let files: Vec<PolicyFile> = self
            .files
            .iter()
            .filter_map(|(path, f)| Some(PolicyFile { path: path.clone(), policies: f.good.clone()? }))
            .collect();
        // Replicas share a security identity (SPIFFE id + labels): one entry per id.
        let workloads: Vec<policy::Workload> = self
            .workloads
            .iter()
            .map(|w| {
                let entry =
                    policy::Workload { id: w.id, identity: w.identity.clone(), labels: w.labels.clone() };
                (w.id, entry)
            })
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();
        let opts = CompileOptions {
            default_allow_egress: self.cfg.default_egress == DefaultAction::Allow,
            default_allow_ingress: self.cfg.default_ingress == DefaultAction::Allow,
        };
        let started = std::time::Instant::now();
        let compiled = match policy::compile(&files, &workloads, &opts) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "policy does not compile; the previous policy stays in force");
                self.compile_error = Some(e.to_string());
                return;
            }
        };
        self.compile_error = None;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        if self.compiled.as_deref() == Some(&compiled) {
            // Same tables (a replica came or went): only the names may have changed.
            let same = self.compiled.clone().expect("just compared equal");
            self.publish_names(&same);
            return;
        }
        let compiled = Arc::new(compiled);
        let contents = SlotContents {
            policy: compiled.clone(),
            settings: Settings {
                default_allow_egress: u8::from(compiled.default_allow_egress),
                default_allow_ingress: u8::from(compiled.default_allow_ingress),
                flow_mode: match self.cfg.flow_events {
                    FlowEvents::All => FLOWS_ALL,
                    FlowEvents::Sampled => FLOWS_SAMPLED,
                    FlowEvents::Denied => FLOWS_DENIED,
                    FlowEvents::None => FLOWS_NONE,
                },
                _pad: 0,
                workload_level: self.workload_level,
            },
        };
        if let Err(e) = self.kernel.slots.install(contents) {
            error!(error = %e, "cannot install policy into the kernel; the previous policy stays in force");
            self.compile_error = Some(e.to_string());
            return;
        }
        self.generation += 1;
        self.publish_names(&compiled);
        let install_ms = started.elapsed().as_secs_f64() * 1e3 - compile_ms;
        let owners: HashMap<u64, u32> = self.workloads.iter().map(|w| (w.cgroup_id, w.id)).collect();
        let cut = authz::sweep(&owners, compiled.as_ref(), &self.local);
        info!(
            generation = self.generation,
            rules = compiled.rules.len(),
            entries = compiled.allow.len(),
            compile_ms = format_args!("{compile_ms:.1}"),
            install_ms = format_args!("{install_ms:.1}"),
            total_ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            revoked = cut,
            "policy in force"
        );
        if let Err(e) = self.kernel.slots.retire_idle() {
            warn!(error = %e, "cannot collect the counters of the previous policy");
        }
        self.compiled = Some(compiled);
    }

    fn publish_names(&self, compiled: &Arc<CompiledPolicy>) {
        let mut identities: HashMap<u32, String> =
            self.identities.iter().map(|(id, s)| (id, s.to_string())).collect();
        identities.insert(ID_NONE, "none".into());
        identities.insert(ID_HOST, "host".into());
        identities.insert(ID_WORLD, "world".into());
        identities.insert(ID_ANY, "any".into());
        self.names.send_replace(Arc::new(Names { identities, policy: compiled.clone() }));
    }

    fn policy_report(&self) -> Result<PolicyReport, String> {
        let counters = self.kernel.slots.counters().map_err(|e| e.to_string())?;
        Ok(PolicyReport {
            files: self
                .files
                .iter()
                .map(|(path, f)| PolicyFileStatus {
                    path: path.display().to_string(),
                    policies: f.good.as_ref().map_or(0, Vec::len),
                    error: f.error.clone(),
                })
                .collect(),
            rules: counters
                .into_iter()
                .map(|(rule, c)| RuleStatus { rule, allowed: c.allowed, denied: c.denied })
                .collect(),
        })
    }

    /// Clean stop: programs detached, workloads killed, cgroups removed, state saved.
    fn shutdown(&mut self) {
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

/// YAML files, not hidden, not editor leftovers.
fn is_policy_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && path.is_file()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
