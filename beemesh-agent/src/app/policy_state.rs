//! The agent's policy engine: rescan policy.d (last good version per file), compile for the
//! current workloads, install atomically, sweep revoked connections, publish names for flow
//! output, report files and counters. It owns the kernel's policy slots and runs on a
//! thread of its own ([`spawn`]) at a raised CPU priority, so a policy change never waits
//! behind the actor's pod work: the actor only hands it a snapshot of the workloads when they
//! change and hears back (a [`Installed`] ticket) once the policy in force includes them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use super::*;
use crate::kernel::SlotWriter;

use super::Awaiting;

/// One file of policy.d: its last good policies and the current text's error, if any.
#[derive(Debug, Default)]
pub(super) struct FileState {
    pub(super) text: String,
    pub(super) good: Option<Vec<Policy>>,
    pub(super) error: Option<String>,
}

impl Verdicts for CompiledPolicy {
    fn decide(&self, q: &Query) -> Decision {
        CompiledPolicy::decide(self, q)
    }
    fn cidr_identity(&self, ip: std::net::IpAddr) -> Option<u32> {
        CompiledPolicy::cidr_identity(self, ip)
    }
}

/// What the engine needs of the actor's workloads: the compiler's view of each, the cgroup
/// its sockets are found by, and names for flow output. Numbered: the engine acknowledges
/// the number of the snapshot the policy in force includes.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    pub(super) ticket: u64,
    /// (workload name, its cgroup id, the compiler's view).
    pub(super) workloads: Vec<(String, u64, policy::Workload)>,
    pub(super) identities: HashMap<u32, String>,
    pub(super) local: LocalAddrs,
    /// The mesh's NetworkPolicies (`app::mesh_view`), compiled with policy.d's files, and
    /// their generation (a new one recompiles).
    pub(super) mesh_policies: Arc<Vec<policy::Policy>>,
    pub(super) mesh_generation: u64,
}

/// The engine's answer to a snapshot: the policy in force includes its workloads, or could
/// not (`error`: the previous policy stays).
#[derive(Clone, Debug, Default)]
pub(super) struct Installed {
    pub(super) ticket: u64,
    pub(super) error: Option<String>,
    /// A policy of this instance is in force (an earlier instance's programs can go).
    pub(super) in_force: bool,
}

/// What `status` shows of the policy.
#[derive(Clone, Debug, Default)]
pub(super) struct Summary {
    pub(super) generation: u64,
    pub(super) files: usize,
    pub(super) errors: usize,
    pub(super) rules: usize,
    pub(super) allow_entries: usize,
}

/// Questions the actor forwards (the engine answers the caller directly).
pub(super) enum Ask {
    Report(oneshot::Sender<Response>),
}

/// The engine's end of its links with the actor.
pub(super) struct EngineLinks {
    pub(super) snapshots: watch::Receiver<Arc<Snapshot>>,
    pub(super) asks: mpsc::Receiver<Ask>,
    pub(super) events: mpsc::Receiver<Instant>,
}

/// The actor's end: where it sends snapshots and questions, and hears acknowledgements.
pub(super) struct PolicyLink {
    pub(super) snapshots: watch::Sender<Arc<Snapshot>>,
    pub(super) asks: mpsc::Sender<Ask>,
    pub(super) installed: watch::Receiver<Installed>,
    pub(super) summary: watch::Receiver<Summary>,
}

pub(super) struct PolicyEngine {
    policy_dir: PathBuf,
    default_egress: DefaultAction,
    default_ingress: DefaultAction,
    flow_events: FlowEvents,
    workload_level: u32,
    /// This host's network namespace cookie (the kernel programs police sockets in it only).
    host_netns: u64,
    state: StateFiles,
    cgroups: WorkloadCgroups,
    slots: SlotWriter,
    files: BTreeMap<PathBuf, FileState>,
    compiled: Option<Arc<CompiledPolicy>>,
    /// The workload identities `compiled` was compiled for: a workload of an identity
    /// already among them (a replica) changes nothing in the tables.
    /// The workload ids and the mesh policy generation the tables in force were compiled for.
    compiled_for: Option<(BTreeSet<u32>, u64)>,
    compile_error: Option<String>,
    generation: u64,
    snapshot: Arc<Snapshot>,
    names: watch::Sender<Arc<Names>>,
    installed: watch::Sender<Installed>,
    summary: watch::Sender<Summary>,
    /// When the policy change being handled was first seen by the watcher.
    change_seen: Option<Instant>,
}

impl PolicyEngine {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: &Config,
        workload_level: u32,
        host_netns: u64,
        state: StateFiles,
        cgroups: WorkloadCgroups,
        slots: SlotWriter,
        names: watch::Sender<Arc<Names>>,
        snapshot: Arc<Snapshot>,
    ) -> (Self, PolicyLink, watch::Receiver<Arc<Snapshot>>) {
        let (installed, installed_rx) = watch::channel(Installed::default());
        let (summary, summary_rx) = watch::channel(Summary::default());
        let (snap_tx, snap_rx) = watch::channel(snapshot.clone());
        let (asks, _) = mpsc::channel(1);
        let engine = Self {
            policy_dir: cfg.policy_dir.clone(),
            default_egress: cfg.default_egress,
            default_ingress: cfg.default_ingress,
            flow_events: cfg.flow_events,
            workload_level,
            host_netns,
            state,
            cgroups,
            slots,
            files: BTreeMap::new(),
            compiled: None,
            compiled_for: None,
            compile_error: None,
            generation: 0,
            snapshot,
            names,
            installed,
            summary,
            change_seen: None,
        };
        let link = PolicyLink { snapshots: snap_tx, asks, installed: installed_rx, summary: summary_rx };
        (engine, link, snap_rx)
    }

    /// The workloads the first scan compiles for (recovered before the engine's thread runs).
    pub(super) fn seed(&mut self, snapshot: Arc<Snapshot>) {
        self.snapshot = snapshot;
    }

    /// Whether a policy of this instance is in force.
    pub(super) fn in_force(&self) -> bool {
        self.compiled.is_some()
    }

    /// Writes both slots' default settings (before any policy compiled).
    pub(super) fn init_settings(&mut self) -> Result<(), AgentError> {
        let defaults = self.settings(
            self.default_egress == DefaultAction::Allow,
            self.default_ingress == DefaultAction::Allow,
        );
        self.slots.init_settings(defaults)?;
        Ok(())
    }

    /// Rereads policy.d; a file whose new text is invalid keeps its last good policies.
    pub(super) fn rescan_policies(&mut self) {
        let scan_started = Instant::now();
        let dir = self.policy_dir.clone();
        let mut seen = Vec::new();
        let mut keep = Vec::new();
        let mut changed = false;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>(),
            Err(e) => {
                error!(dir = %dir.display(), error = %e, "cannot read policy directory; policies unchanged");
                return;
            }
        };
        for path in entries.into_iter().filter(|p| is_policy_file(p)) {
            seen.push(path.clone());
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    // Unreadable now (permissions, not UTF-8): its last good version stays.
                    error!(file = %path.display(), error = %e, "cannot read policy file; its last good version stays in force");
                    self.files.entry(path.clone()).or_default().error =
                        Some(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let entry = self.files.entry(path.clone()).or_default();
            if entry.text == text && (entry.good.is_some() || entry.error.is_some()) {
                continue;
            }
            entry.text = text;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match policy::parse_file(&path, &entry.text) {
                Ok(policies) => {
                    info!(file = %path.display(), policies = policies.len(), "policy file loaded");
                    entry.good = Some(policies);
                    entry.error = None;
                    changed = true;
                    // Kept once the policy is in force: the write (and the old copy's freed
                    // blocks) never delays a revocation.
                    keep.push((name, entry.text.clone()));
                }
                Err(e) => {
                    if entry.good.is_none() {
                        // First sight since start: the version that last parsed stays in force.
                        let cached = self.state.load_good_policy(&name);
                        if let Some(Ok(policies)) = cached.as_deref().map(|t| policy::parse_file(&path, t)) {
                            warn!(file = %path.display(), "invalid policy file; its last good version (kept from before the restart) stays in force");
                            entry.good = Some(policies);
                            changed = true;
                        }
                    }
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
        // Files gone (now, or while the agent was down) take their last good version along.
        let present: Vec<String> =
            seen.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        let gone: Vec<String> =
            self.state.good_policy_names().into_iter().filter(|n| !present.contains(n)).collect();
        self.files.retain(|p, _| seen.contains(p));
        if self.files.len() != before {
            changed = true;
        }
        if let Some(seen) = self.change_seen {
            debug!(
                waited_ms = format_args!("{:.1}", (scan_started - seen).as_secs_f64() * 1e3),
                read_ms = format_args!("{:.1}", scan_started.elapsed().as_secs_f64() * 1e3),
                changed,
                "policy.d rescanned"
            );
        }
        if changed || self.compiled.is_none() {
            self.recompile();
        }
        for name in gone {
            self.state.forget_good_policy(&name);
        }
        for (name, text) in keep {
            if let Err(e) = self.state.save_good_policy(&name, &text) {
                warn!(file = %name, error = %e, "cannot keep the last good version");
            }
        }
        self.change_seen = None;
        self.publish_summary();
    }

    /// Kernel settings for a policy with these defaults.
    fn settings(&self, default_allow_egress: bool, default_allow_ingress: bool) -> Settings {
        Settings {
            default_allow_egress: u8::from(default_allow_egress),
            default_allow_ingress: u8::from(default_allow_ingress),
            flow_mode: match self.flow_events {
                FlowEvents::All => FLOWS_ALL,
                FlowEvents::Sampled => FLOWS_SAMPLED,
                FlowEvents::Denied => FLOWS_DENIED,
                FlowEvents::None => FLOWS_NONE,
            },
            _pad: 0,
            workload_level: self.workload_level,
            // The generation being installed: UDP exchanges remembered under older ones are
            // decided again (continuous authorization for UDP).
            generation: (self.generation + 1) as u32,
            host_netns: self.host_netns,
        }
    }

    /// Takes the actor's latest workloads and brings the policy in force up to date with
    /// them: a compile only if the set of workload identities differs from the one the
    /// tables were compiled for (replicas share an identity, so most pod churn needs none).
    /// Acknowledges the snapshot's ticket either way.
    pub(super) fn take_snapshot(&mut self, snapshot: Arc<Snapshot>) {
        self.snapshot = snapshot;
        let ids: BTreeSet<u32> = self.snapshot.workloads.iter().map(|(_, _, w)| w.id).collect();
        let current = (self.compiled.is_some()
            && self.compiled_for == Some((ids, self.snapshot.mesh_generation)))
            || self.recompile();
        if current {
            // Names may have changed even when the tables did not.
            if let Some(c) = self.compiled.clone() {
                self.publish_names(&c);
            }
        }
        let error = (!current).then(|| self.compile_error.clone().unwrap_or_default());
        self.installed.send_replace(Installed {
            ticket: self.snapshot.ticket,
            error,
            in_force: self.compiled.is_some(),
        });
        self.publish_summary();
    }

    /// Compiles the good policies for the current workloads, installs them atomically and
    /// tears down connections they no longer allow; returns whether the tables in force match
    /// the current workloads and files (false: the previous policy stays, the error is
    /// recorded).
    fn recompile(&mut self) -> bool {
        self.compiled_for = None;
        let mut files: Vec<PolicyFile> = self
            .files
            .iter()
            .filter_map(|(path, f)| Some(PolicyFile { path: path.clone(), policies: f.good.clone()? }))
            .collect();
        if !self.snapshot.mesh_policies.is_empty() {
            files.push(PolicyFile {
                path: PathBuf::from("(mesh NetworkPolicies)"),
                policies: self.snapshot.mesh_policies.to_vec(),
            });
        }
        // Replicas share a security identity (SPIFFE id + labels): one entry per id, with the
        // named ports of all of them.
        let mut by_id: BTreeMap<u32, policy::Workload> = BTreeMap::new();
        for (_, _, w) in &self.snapshot.workloads {
            let entry =
                by_id.entry(w.id).or_insert_with(|| policy::Workload { ports: Vec::new(), ..w.clone() });
            entry.ports.extend(w.ports.iter().cloned());
        }
        let workloads: Vec<policy::Workload> = by_id
            .into_values()
            .map(|mut w| {
                w.ports.sort();
                w.ports.dedup();
                w
            })
            .collect();
        let opts = CompileOptions {
            default_allow_egress: self.default_egress == DefaultAction::Allow,
            default_allow_ingress: self.default_ingress == DefaultAction::Allow,
        };
        let started = Instant::now();
        let compiled = match policy::compile(&files, &workloads, &opts) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "policy does not compile; the previous policy stays in force");
                self.compile_error = Some(e.to_string());
                return false;
            }
        };
        self.compile_error = None;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        if self.compiled.as_deref() == Some(&compiled) {
            // Same tables (a replica came or went): nothing to install.
            self.compiled_for = Some(self.compiled_key(&workloads));
            return true;
        }
        let compiled = Arc::new(compiled);
        let contents = SlotContents {
            policy: compiled.clone(),
            settings: self.settings(compiled.default_allow_egress, compiled.default_allow_ingress),
        };
        if let Err(e) = self.slots.install(contents) {
            error!(error = %e, "cannot install policy into the kernel; the previous policy stays in force");
            self.compile_error = Some(e.to_string());
            return false;
        }
        self.generation += 1;
        self.publish_names(&compiled);
        let install_ms = started.elapsed().as_secs_f64() * 1e3 - compile_ms;
        let t = Instant::now();
        let owners = self.socket_owners();
        let owners_ms = t.elapsed().as_secs_f64() * 1e3;
        let cut = authz::sweep(&owners, compiled.as_ref(), &self.snapshot.local);
        let sweep_ms = t.elapsed().as_secs_f64() * 1e3 - owners_ms;
        info!(
            generation = self.generation,
            rules = compiled.rules.len(),
            entries = compiled.allow.len(),
            compile_ms = format_args!("{compile_ms:.1}"),
            install_ms = format_args!("{install_ms:.1}"),
            owners_ms = format_args!("{owners_ms:.1}"),
            sweep_ms = format_args!("{sweep_ms:.1}"),
            total_ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            since_change_ms =
                format_args!("{:.1}", self.change_seen.map_or(0.0, |s| s.elapsed().as_secs_f64() * 1e3)),
            revoked = cut,
            "policy in force"
        );
        if let Err(e) = self.slots.retire_idle() {
            warn!(error = %e, "cannot collect the counters of the previous policy");
        }
        self.compiled = Some(compiled);
        self.compiled_for = Some(self.compiled_key(&workloads));
        true
    }

    fn compiled_key(&self, workloads: &[policy::Workload]) -> (BTreeSet<u32>, u64) {
        (workloads.iter().map(|w| w.id).collect(), self.snapshot.mesh_generation)
    }

    /// cgroup id -> workload id for every cgroup of every workload, nested ones included
    /// (sock_diag reports a socket's own cgroup; the kernel programs use the ancestor).
    fn socket_owners(&self) -> HashMap<u64, u32> {
        let mut owners = HashMap::new();
        for (name, cgroup_id, w) in &self.snapshot.workloads {
            owners.insert(*cgroup_id, w.id);
            for id in self.cgroups.descendant_ids(name) {
                owners.insert(id, w.id);
            }
        }
        owners
    }

    fn publish_names(&self, compiled: &Arc<CompiledPolicy>) {
        let mut identities = self.snapshot.identities.clone();
        identities.insert(ID_NONE, "none".into());
        identities.insert(ID_HOST, "host".into());
        identities.insert(ID_WORLD, "world".into());
        identities.insert(ID_ANY, "any".into());
        self.names.send_replace(Arc::new(Names { identities, policy: compiled.clone() }));
    }

    fn publish_summary(&self) {
        let compiled = self.compiled.as_deref();
        self.summary.send_replace(Summary {
            generation: self.generation,
            files: self.files.len(),
            errors: self.files.values().filter(|f| f.error.is_some()).count()
                + usize::from(self.compile_error.is_some()),
            rules: compiled.map_or(0, |c| c.rules.len()),
            allow_entries: compiled.map_or(0, |c| c.allow.len()),
        });
    }

    fn policy_report(&self) -> Result<PolicyReport, String> {
        let counters = self.slots.counters().map_err(|e| e.to_string())?;
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

    /// Serves policy changes, workload snapshots and questions until the actor drops its
    /// end of the snapshot channel.
    async fn run(mut self, mut links: EngineLinks) {
        loop {
            tokio::select! {
                // Revocation first.
                biased;
                Some(seen) = links.events.recv() => {
                    self.change_seen = Some(seen);
                    self.rescan_policies();
                }
                changed = links.snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snapshot = links.snapshots.borrow_and_update().clone();
                    self.take_snapshot(snapshot);
                }
                Some(ask) = links.asks.recv() => match ask {
                    Ask::Report(reply) => {
                        let resp = self.policy_report().map(Response::Policies);
                        let _ = reply.send(resp.unwrap_or_else(|message| Response::Error { message }));
                    }
                },
            }
        }
        debug!("policy engine stopped");
    }
}

/// Starts the engine on a thread of its own (a single-threaded runtime serving the policy
/// watcher, the actor's snapshots and questions) whose CPU priority outranks the agent's
/// other threads and everything the pods run: compiling and installing a revocation wins
/// the CPU over a burst of pod starts.
pub(super) fn spawn(
    engine: PolicyEngine,
    link: &mut PolicyLink,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    debounce: Duration,
) -> Result<std::thread::JoinHandle<()>, AgentError> {
    let (asks_tx, asks) = mpsc::channel(16);
    link.asks = asks_tx;
    let dir = engine.policy_dir.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), AgentError>>(1);
    let thread = std::thread::Builder::new()
        .name("beemesh-policy".into())
        .spawn(move || {
            if let Err(rt) = crate::sys::process::realtime_thread(POLICY_RT_PRIORITY) {
                match crate::sys::process::raise_thread_priority(POLICY_NICE) {
                    Ok(()) => info!(error = %rt, nice = POLICY_NICE, "no real-time class for the policy thread; raised its priority instead"),
                    Err(e) => warn!(error = %e, "cannot raise the policy thread's priority"),
                }
            }
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(io("start the policy thread's runtime")(e)));
                    return;
                }
            };
            runtime.block_on(async move {
                // The watcher's task runs on this thread too, never behind pod work.
                let events = match policy::watch::spawn(&dir, debounce) {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = ready_tx.send(Err(io(format!("watch {}", dir.display()))(e)));
                        return;
                    }
                };
                let mut engine = engine;
                // A change between the first scan and the watch must not be missed.
                engine.rescan_policies();
                let _ = ready_tx.send(Ok(()));
                engine.run(EngineLinks { snapshots, asks, events }).await;
            });
        })
        .map_err(io("start the policy thread"))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io("start the policy thread")(std::io::Error::other("it stopped before it started"))),
    }
}

/// The policy thread's real-time priority: the lowest level, so it runs ahead of every
/// ordinary thread (the agent's pod work, the pods) yet behind the kernel's own real-time
/// threads. Its work is bounded (one compile, install and sweep per change).
const POLICY_RT_PRIORITY: i32 = 1;
/// Where real-time scheduling is refused: a nice value above the agent's other threads and
/// the pods (nice 0).
const POLICY_NICE: i32 = -10;

/// The actor's side of the link.
impl Agent {
    /// The workloads as the engine needs them.
    pub(super) fn snapshot(&self) -> Arc<Snapshot> {
        let mut named_ports = self.pods.named_ports();
        Arc::new(Snapshot {
            ticket: self.ticket,
            workloads: self
                .workloads
                .iter()
                .map(|w| {
                    let entry = policy::Workload {
                        id: w.id,
                        identity: w.identity.clone(),
                        labels: w.labels.clone(),
                        ports: named_ports.remove(&w.name).unwrap_or_default(),
                    };
                    (w.name.clone(), w.cgroup_id, entry)
                })
                // Other hosts' pods: no cgroup here, named for policy only.
                .chain(self.mesh.remote.iter().map(|(key, w)| (format!("mesh:{key}"), 0, w.clone())))
                .collect(),
            identities: self.identities.iter().map(|(id, s)| (id, s.to_string())).collect(),
            local: self.local.clone(),
            mesh_policies: self.mesh.policies.clone(),
            mesh_generation: self.mesh.generation,
        })
    }

    /// End of an actor turn: one snapshot for whatever the turn changed; what this turn
    /// created waits for the policy to include it.
    pub(super) fn settle(&mut self) {
        if self.policy_dirty {
            self.policy_dirty = false;
            self.ticket += 1;
            self.policy.snapshots.send_replace(self.snapshot());
        }
        let ticket = self.ticket;
        for key in std::mem::take(&mut self.pods.pending) {
            if let Some(uid) = self.pods.entries.get(&key).map(|e| e.uid().to_owned()) {
                self.awaiting.push((ticket, Awaiting::Pod(key, uid)));
            }
        }
        // Nothing new for the engine: what waits goes ahead on the last answer.
        if !self.awaiting.is_empty() && self.policy.installed.borrow().ticket >= ticket {
            self.on_installed();
        }
    }

    /// The engine answered: what waited for a snapshot it covers goes ahead (or fails, if
    /// the policy could not include it).
    pub(super) fn on_installed(&mut self) {
        let installed = self.policy.installed.borrow_and_update().clone();
        if installed.in_force {
            // Our own policy is in force: an earlier instance's programs can go.
            self.kernel.retire_previous();
        }
        let (done, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.awaiting).into_iter().partition(|(t, _)| *t <= installed.ticket);
        self.awaiting = waiting;
        for (_, what) in done {
            match (what, &installed.error) {
                (Awaiting::Pod(key, uid), None) => self.spawn_sandbox(&key, &uid),
                (Awaiting::Pod(key, uid), Some(why)) => self.policy_refused_pod(&key, &uid, why),
                (Awaiting::Workload(info, reply), None) => {
                    let _ = reply.send(Response::Workload(info));
                }
                (Awaiting::Workload(info, reply), Some(why)) => {
                    // Without a policy that knows it, the workload would run unselected.
                    if self.workloads.get(&info.name).is_some() {
                        let _ = self.forget_workload(&info.name);
                        self.persist();
                        self.policy_dirty = true;
                    }
                    let message =
                        format!("workload {:?} not created: the policy cannot include it: {why}", info.name);
                    let _ = reply.send(Response::Error { message });
                }
            }
        }
    }

    /// `policy list`: the engine answers the caller.
    pub(super) fn policy_report(&self, reply: oneshot::Sender<Response>) {
        if let Err(e) = self.policy.asks.try_send(policy_state::Ask::Report(reply)) {
            let reply = match e {
                mpsc::error::TrySendError::Full(policy_state::Ask::Report(r))
                | mpsc::error::TrySendError::Closed(policy_state::Ask::Report(r)) => r,
            };
            let _ = reply.send(Response::Error { message: "the policy engine is busy; try again".into() });
        }
    }
}

/// YAML files, not hidden, not editor leftovers.
fn is_policy_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && path.is_file()
}
