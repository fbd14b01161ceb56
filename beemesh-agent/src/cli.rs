//! Command line: `run` starts the agent; every other subcommand is a client of a running
//! agent's admin socket (found through `--run-dir`), except `policy check` and `ca ...`,
//! which work offline, and `image import|list`, which work offline on `--state-dir` when
//! no agent runs.
//! `main` parses, sets up tracing and calls [`execute`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::api::client::{self, Client, ClientError};
use crate::api::{FlowRecord, Request, Response, WorkloadInfo};
use crate::config::{Config, ConfigError, DefaultAction, FlowEvents};

/// `println!` for command output: a closed stdout (`get pods | head -1`) ends the process
/// quietly instead of panicking. Rust ignores SIGPIPE, so such a write fails with EPIPE.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*), true) };
}

/// `print!` counterpart of [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::write_stdout(format_args!($($arg)*), false) };
}

mod attach;
mod ca;
mod drain;
mod events;
mod get;
mod images;
mod nodes;
mod pods;
mod rollout;
mod token;

pub use ca::CaCommand;

/// Exit code for bad configuration or usage (sysexits EX_USAGE), as linkerd does.
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "beemesh-agent",
    version,
    about = "beemesh host agent: workload identity and policy enforced in the kernel"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings shared by all subcommands; each overrides the config file.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// Config file (YAML); default /etc/beemesh/agent.yaml if present.
    #[arg(long, global = true, env = "BEEMESH_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, global = true, env = "BEEMESH_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    #[arg(long, global = true, env = "BEEMESH_POLICY_DIR")]
    pub policy_dir: Option<PathBuf>,
    /// Where the admin socket lives; CLI subcommands connect there.
    #[arg(long, global = true, env = "BEEMESH_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// Name of the agent's cgroup2 subtree (one agent per name).
    #[arg(long, global = true, env = "BEEMESH_CGROUP_NAME")]
    pub cgroup_name: Option<String>,
    #[arg(long, global = true, env = "BEEMESH_BPFFS")]
    pub bpffs: Option<PathBuf>,
    #[arg(long, global = true, env = "BEEMESH_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    #[arg(long, global = true, env = "BEEMESH_DEFAULT_EGRESS")]
    pub default_egress: Option<DefaultAction>,
    #[arg(long, global = true, env = "BEEMESH_DEFAULT_INGRESS")]
    pub default_ingress: Option<DefaultAction>,
    #[arg(long, global = true, env = "BEEMESH_FLOW_EVENTS")]
    pub flow_events: Option<FlowEvents>,
    /// Log format.
    #[arg(long, global = true, env = "BEEMESH_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub mesh: crate::mesh::swarm::MeshOpts,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent (needs root).
    Run {
        /// Join a mesh first with this token (`token create` on a member), through
        /// --bootstrap; ignored when this host already has credentials.
        #[arg(long, env = "BEEMESH_JOIN", value_name = "TOKEN")]
        join: Option<String>,
    },
    /// A pod's init process; the agent starts it, never a user.
    #[command(hide = true)]
    PodInit {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        hostname: String,
        /// First host id of the pod's 65536 ids (none: every id maps to itself).
        #[arg(long)]
        id_base: Option<u32>,
    },
    /// Runs a command inside a container (`exec`, exec probes); never a user directly.
    #[command(hide = true)]
    PodExec {
        #[arg(long)]
        target: u32,
        #[arg(long, default_value_t = 0)]
        uid: u32,
        #[arg(long, default_value_t = 0)]
        gid: u32,
        #[arg(long, default_value = "/")]
        cwd: String,
        #[arg(long = "cgroup")]
        cgroups: Vec<PathBuf>,
        /// The container's `SecuritySpec` as JSON (capabilities, groups, no_new_privs, seccomp).
        #[arg(long)]
        security: Option<String>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Joins cgroups, then becomes COMMAND (how the agent starts slirp4netns and pod init
    /// without forking itself); never a user.
    #[command(hide = true)]
    CgroupExec {
        #[arg(long = "cgroup")]
        cgroups: Vec<PathBuf>,
        /// Start in a mount namespace whose mounts are slaves of the host's.
        #[arg(long)]
        slave_mounts: bool,
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// `exec POD -- CMD` runs CMD in a pod's container; `exec --identity ID -- CMD` runs CMD
    /// on the host as a workload with identity ID (spiffe://td/ns/NS/sa/SA or NS/SA).
    Exec {
        /// The pod to enter.
        #[arg(conflicts_with = "identity", required_unless_present = "identity")]
        pod: Option<String>,
        /// The pod's container (default: its first).
        #[arg(short, long, requires = "pod")]
        container: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        identity: Option<String>,
        /// Workload name (generated if omitted).
        #[arg(long)]
        name: Option<String>,
        /// Workload label KEY=VALUE (repeatable); NetworkPolicy podSelectors match these.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Apply a manifest (Pods, ConfigMaps, Secrets, Namespaces, Services, NetworkPolicies,
    /// Deployments, StatefulSets, ReplicaSets, DaemonSets; `-` reads stdin).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Show pods (this host) and the objects of the cluster state (configmaps, secrets,
    /// namespaces, services, networkpolicies, deployments, statefulsets).
    Get {
        #[command(subcommand)]
        what: get::GetCommand,
    },
    /// Events of the mesh, oldest first: LAST SEEN TYPE REASON OBJECT MESSAGE (tendered and
    /// scheduled with the bids, pods created and started, hosts lost, replica sets scaled).
    Events {
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only the events of this object: KIND/NAME (`pod/web-0`, `deploy/web`).
        #[arg(long = "for", value_name = "KIND/NAME")]
        about: Option<String>,
    },
    /// An object's fields as kubectl describes them (pods, deployments, statefulsets,
    /// replicasets, daemonsets, any kind of the state), then its events.
    Describe {
        /// pod, deployment, statefulset, replicaset, daemonset, service, configmap, node, ...
        kind: String,
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Mark a node unschedulable: no new pods go there (its pods stay).
    Cordon { node: String },
    /// Mark a node schedulable again.
    Uncordon { node: String },
    /// Cordon a node and evict its pods, one by one, as PodDisruptionBudgets allow (refused
    /// evictions are retried every second); DaemonSet pods stay.
    Drain {
        node: String,
        /// Evict pods that no controller keeps too (they are not made again).
        #[arg(long)]
        force: bool,
        /// Give up after this many seconds (0: never).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
    },
    /// A Deployment's revisions (`history`), or a rollback to one (`undo`).
    Rollout {
        #[command(subcommand)]
        what: rollout::RolloutCommand,
    },
    /// Delete what a manifest names (`-f FILE`) or `pod NAME`; waits until pods are gone.
    Delete {
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
        #[command(subcommand)]
        what: Option<pods::DeleteCommand>,
        /// Return at once instead of waiting for the pods to be gone.
        #[arg(long)]
        no_wait: bool,
    },
    /// A container's output.
    Logs {
        pod: String,
        #[arg(short, long)]
        container: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(short, long)]
        follow: bool,
        /// The previous run's output (after a restart).
        #[arg(short, long)]
        previous: bool,
    },
    /// Attach to a running container: its output from now on and, with -i, its input, until it
    /// ends (the container needs `stdin: true` for -i and `tty: true` for -t).
    Attach {
        pod: String,
        #[arg(short, long)]
        container: Option<String>,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Send this process's stdin to the container's.
        #[arg(short = 'i', long)]
        stdin: bool,
        /// The container's streams are a terminal: make this one raw while attached.
        #[arg(short, long)]
        tty: bool,
        /// No hint about the prompt.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Wait for a pod to be ready (or deleted).
    Wait {
        pod: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(long = "for", value_enum, default_value = "ready")]
        condition: WaitCondition,
        /// Seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Which workload owns a local port (as tagged in the kernel when it bound it).
    Owner {
        /// `tcp` or `udp`.
        #[arg(long, default_value = "tcp")]
        proto: String,
        port: u16,
    },
    /// List workloads.
    Workloads {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show flow verdicts (newest last).
    Flows {
        /// Keep streaming new flows.
        #[arg(short, long)]
        follow: bool,
        /// How many recent flows to show first.
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: usize,
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Local images (no registry): import OCI layouts and docker-archive tarballs.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// The trust domain's certificate authority, offline: a root, host credentials,
    /// issuers, host revocations.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Join tokens of the issuer this member holds (`run --join` on a new host).
    Token {
        #[command(subcommand)]
        command: token::TokenCommand,
    },
    /// Agent status.
    Status {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Hands a host revocation (the file `ca revoke-host` wrote) to the running agent: it
    /// verifies it against the trust domain's roots, keeps it, spreads it to every host and
    /// every host cuts the revoked one off.
    Revoke {
        /// The revocation's PEM file.
        file: PathBuf,
    },
    /// The mesh: this host and its connected peers (attested ones under their certificate's
    /// node name).
    Peers {
        #[arg(short, long, value_enum, default_value_t)]
        output: nodes::PeersOutput,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WaitCondition {
    Ready,
    Deleted,
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout (directory or tarball) or a docker-archive tarball: through
    /// the agent running on --run-dir, or, when none runs, into the store under --state-dir.
    Import {
        file: PathBuf,
        /// NAME:TAG for the archive's one image, instead of the names it carries (a NAME alone
        /// takes the layout's bare tag, or `latest`).
        #[arg(long)]
        name: Option<String>,
    },
    /// List images: with a running agent, every image of the mesh and the hosts holding it
    /// (HOLDERS); offline, this store's.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files offline; exits non-zero if any is invalid.
    Check { files: Vec<PathBuf> },
    /// Show the running agent's policy files and per-rule counters.
    List {
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("label {s:?}: expected KEY=VALUE"))?;
    if k.is_empty() {
        return Err(format!("label {s:?}: empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

impl GlobalOpts {
    /// Defaults < config file < env/flags.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut c = Config::load(self.config.as_deref())?;
        if let Some(v) = &self.state_dir {
            c.state_dir = v.clone();
        }
        if let Some(v) = &self.policy_dir {
            c.policy_dir = v.clone();
        }
        if let Some(v) = &self.run_dir {
            c.run_dir = v.clone();
        }
        if let Some(v) = &self.cgroup_name {
            c.cgroup_name = v.clone();
        }
        if let Some(v) = &self.bpffs {
            c.bpffs = v.clone();
        }
        if let Some(v) = &self.trust_domain {
            c.trust_domain = v.clone();
        }
        if let Some(v) = self.default_egress {
            c.default_egress = v;
        }
        if let Some(v) = self.default_ingress {
            c.default_ingress = v;
        }
        if let Some(v) = self.flow_events {
            c.flow_events = v;
        }
        self.mesh.apply(&mut c.mesh);
        c.validate()?;
        Ok(c)
    }
}

/// Writes command output to stdout; exits at once, quietly and successfully, when the
/// reader has gone (a closed pipe), and with a message on any other write error.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| if newline { out.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| out.flush());
    if let Err(e) = written {
        drop(out);
        closed_stdout(&e);
    }
}

/// The end of a command whose output cannot be written.
pub(crate) fn closed_stdout(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("beemesh-agent: cannot write output: {e}");
    std::process::exit(1);
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("beemesh-agent: {msg}");
    ExitCode::FAILURE
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("API types always serialise")
}

/// Runs a parsed command line.
pub async fn execute(cli: Cli) -> ExitCode {
    let cfg = match cli.global.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("beemesh-agent: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let socket = cfg.socket_path();
    match cli.command {
        Command::Run { join } => {
            if let Err(e) = crate::sys::process::cloexec_inherited() {
                tracing::warn!(error = %e, "inherited descriptors not marked close-on-exec; pods may hold them");
            }
            if let Some(text) = join {
                let token = match token::parse_join(&text) {
                    Ok(t) => t,
                    Err(code) => return code,
                };
                if cfg.mesh.bootstrap.is_empty() {
                    eprintln!("beemesh-agent: --join needs --bootstrap ADDR (a member holding an issuer)");
                    return ExitCode::from(EXIT_CONFIG);
                }
                if let Err(e) = crate::app::join::join(&cfg, &token).await {
                    return fail(e);
                }
            }
            match crate::app::run(cfg).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
        Command::PodInit { .. } | Command::PodExec { .. } | Command::CgroupExec { .. } => {
            fail("pod-init, pod-exec and cgroup-exec must run before the async runtime starts")
        }
        Command::Policy { command: PolicyCommand::Check { files } } => policy_check(&files),
        Command::Exec { pod: Some(pod), container, namespace, command, .. } => {
            pods::exec(&socket, &namespace, &pod, container, &command).await
        }
        Command::Exec { identity: Some(identity), name, labels, command, .. } => {
            exec(&socket, identity, name, labels.into_iter().collect(), command).await
        }
        Command::Exec { .. } => fail("exec needs a POD or --identity"),
        Command::Apply { file } => pods::apply(&socket, &file).await,
        Command::Get { what } => get::get(&socket, what).await,
        Command::Cordon { node } => drain::cordon(&socket, &node, true).await,
        Command::Uncordon { node } => drain::cordon(&socket, &node, false).await,
        Command::Drain { node, force, timeout } => drain::drain(&socket, &node, force, timeout).await,
        Command::Rollout { what } => rollout::rollout(&socket, what).await,
        Command::Events { namespace, all_namespaces, about } => {
            events::events(&socket, &namespace, all_namespaces, about.as_deref()).await
        }
        Command::Describe { kind, name, namespace } => {
            events::describe(&socket, &kind, &name, &namespace).await
        }
        Command::Delete { file, what, no_wait } => {
            let pod = what.map(|pods::DeleteCommand::Pod { name, namespace }| (namespace, name));
            pods::delete(&socket, file.as_deref(), pod, !no_wait).await
        }
        Command::Logs { pod, container, namespace, follow, previous } => {
            pods::logs(&socket, &namespace, &pod, container, follow, previous).await
        }
        Command::Attach { pod, container, namespace, stdin, tty, quiet } => {
            attach::attach(&socket, attach::Session { namespace, pod, container, stdin, tty, quiet }).await
        }
        Command::Wait { pod, namespace, condition, timeout } => {
            let condition = match condition {
                WaitCondition::Ready => crate::api::WaitFor::Ready,
                WaitCondition::Deleted => crate::api::WaitFor::Deleted,
            };
            pods::wait(&socket, namespace, pod, condition, timeout).await
        }
        Command::Owner { proto, port } => {
            match client::call(&socket, &Request::PortOwner { proto, port }).await {
                Ok(Response::PortOwner { identity: Some(id) }) => {
                    outln!("{id}");
                    ExitCode::SUCCESS
                }
                Ok(Response::PortOwner { identity: None }) => fail(format!("no workload owns port {port}")),
                other => unexpected(other),
            }
        }
        Command::Workloads { output } => match client::call(&socket, &Request::ListWorkloads).await {
            Ok(Response::Workloads { items }) => {
                match output {
                    Output::Json => outln!("{}", json(&items)),
                    Output::Table => print_workloads(&items),
                }
                ExitCode::SUCCESS
            }
            other => unexpected(other),
        },
        Command::Revoke { file } => match std::fs::read_to_string(&file) {
            Ok(text) => {
                match client::call(&socket, &Request::Revoke { file: file.display().to_string(), text }).await
                {
                    Ok(Response::Applied { lines }) => {
                        lines.iter().for_each(|l| outln!("{l}"));
                        ExitCode::SUCCESS
                    }
                    other => unexpected(other),
                }
            }
            Err(e) => fail(format!("{}: {e}", file.display())),
        },
        Command::Peers { output } => nodes::peers(&socket, output).await,
        Command::Status { output } => match client::call(&socket, &Request::Status).await {
            Ok(Response::Status(s)) => {
                match output {
                    Output::Json => outln!("{}", json(&s)),
                    Output::Table => {
                        outln!("agent        {} (pid {})", s.version, s.pid);
                        outln!("trust domain {}", s.trust_domain);
                        outln!("cgroup       {}", s.cgroup_root);
                        outln!(
                            "policy dir   {} ({} files, {} errors)",
                            s.policy_dir,
                            s.policy_files,
                            s.policy_errors
                        );
                        outln!(
                            "policy       generation {}, {} rules, {} kernel entries",
                            s.policy_generation,
                            s.rules,
                            s.allow_entries
                        );
                        outln!("workloads    {}", s.workloads);
                        if let Some(m) = &s.mesh {
                            let c = &m.counters;
                            let dropped: Vec<String> =
                                c.gossip_dropped.iter().map(|(r, n)| format!("{r} {n}")).collect();
                            outln!(
                                "mesh gossip  {} delivered, dropped: {}",
                                c.gossip_delivered,
                                if dropped.is_empty() { "none".into() } else { dropped.join(", ") }
                            );
                            outln!(
                                "mesh guard   {} failed attestations, {} requests refused, {} rate limited, {} peers expelled",
                                c.attestations_failed,
                                c.requests_refused,
                                c.requests_rate_limited,
                                c.peers_expelled
                            );
                            let l = &m.liveness;
                            outln!(
                                "liveness     {} suspicions ({} cleared), {} hosts held dead, {} refutations, {} messages ignored, {} rejected",
                                l.suspicions,
                                l.suspicions_cleared,
                                l.verdicts,
                                l.refutations,
                                l.ignored,
                                l.rejected
                            );
                            if !m.detector_differs.is_empty() {
                                outln!(
                                    "detector     settings differ from this host's on {} (mesh.failureDetector must be the same everywhere)",
                                    m.detector_differs.join(", ")
                                );
                            }
                            outln!(
                                "revoked      {}",
                                if m.revoked.is_empty() { "none".into() } else { m.revoked.join(", ") }
                            );
                        }
                    }
                }
                ExitCode::SUCCESS
            }
            other => unexpected(other),
        },
        Command::Policy { command: PolicyCommand::List { output } } => {
            match client::call(&socket, &Request::Policies).await {
                Ok(Response::Policies(report)) => {
                    match output {
                        Output::Json => outln!("{}", json(&report)),
                        Output::Table => {
                            for f in &report.files {
                                match &f.error {
                                    None => outln!("ok    {} ({} policies)", f.path, f.policies),
                                    Some(e) => {
                                        outln!("ERROR {} (keeping {} policies): {e}", f.path, f.policies)
                                    }
                                }
                            }
                            outln!("{:<60} {:>10} {:>10}", "RULE", "ALLOWED", "DENIED");
                            for r in &report.rules {
                                outln!("{:<60} {:>10} {:>10}", r.rule, r.allowed, r.denied);
                            }
                        }
                    }
                    ExitCode::SUCCESS
                }
                other => unexpected(other),
            }
        }
        Command::Flows { follow, limit, output } => flows(&socket, follow, limit, output).await,
        Command::Image { command } => images::run(&cli.global, &cfg, &socket, command).await,
        Command::Ca { command } => ca::run(&cfg, command),
        Command::Token { command } => token::run(&socket, command).await,
    }
}

fn unexpected(r: Result<Response, ClientError>) -> ExitCode {
    match r {
        Ok(other) => fail(format!("unexpected answer from the agent: {other:?}")),
        Err(e) => fail(e),
    }
}

fn policy_check(files: &[PathBuf]) -> ExitCode {
    if files.is_empty() {
        return fail("policy check: name at least one file");
    }
    let mut bad = 0;
    for path in files {
        let result = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|text| crate::policy::check(path, &text).map_err(|e| e.to_string()));
        match result {
            Ok(n) => outln!("{}: ok ({n} policies)", path.display()),
            Err(e) => {
                bad += 1;
                eprintln!("{e}");
            }
        }
    }
    if bad == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_workloads(items: &[WorkloadInfo]) {
    outln!("{:<24} {:<56} {:>6} {:<8} LABELS", "NAME", "IDENTITY", "ID", "RUNNING");
    for w in items {
        let labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        outln!(
            "{:<24} {:<56} {:>6} {:<8} {}",
            w.name,
            w.identity,
            w.id,
            if w.populated { "yes" } else { "no" },
            labels.join(",")
        );
    }
}

fn print_flow(f: &FlowRecord, output: Output) {
    match output {
        Output::Json => outln!("{}", serde_json::to_string(f).expect("serialises")),
        Output::Table => {
            let secs = f.time_ms / 1000;
            let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
            outln!(
                "{h:02}:{m:02}:{s:02}.{:03} {:<5} {:<7} {} -> {} {}:{}/{} [{}] ({})",
                f.time_ms % 1000,
                f.verdict.to_uppercase(),
                f.direction,
                f.subject,
                f.peer,
                f.addr,
                f.port,
                f.proto,
                f.rule,
                f.hook
            );
        }
    }
}

async fn flows(socket: &std::path::Path, follow: bool, limit: usize, output: Output) -> ExitCode {
    let mut c = match Client::send(socket, &Request::Flows { follow, limit }).await {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    loop {
        match c.next().await {
            Ok(Some(Response::Flow(f))) => print_flow(&f, output),
            Ok(Some(Response::Done)) | Ok(None) => return ExitCode::SUCCESS,
            Ok(Some(other)) => return fail(format!("unexpected answer: {other:?}")),
            Err(e) => return fail(e),
        }
    }
}

/// Creates the workload, moves this process into its cgroup, then execs the command, so
/// the command and everything it starts carry the identity from their first socket on.
async fn exec(
    socket: &std::path::Path,
    identity: String,
    name: Option<String>,
    labels: BTreeMap<String, String>,
    command: Vec<String>,
) -> ExitCode {
    let req = Request::CreateWorkload { name, identity, labels };
    let info = match client::call(socket, &req).await {
        Ok(Response::Workload(info)) => info,
        other => return unexpected(other),
    };
    if let Err(e) = crate::sys::cgroup::move_pid(std::path::Path::new(&info.cgroup), std::process::id()) {
        return fail(format!("cannot join workload cgroup {}: {e}", info.cgroup));
    }
    if let Err(e) = client::call(socket, &Request::JoinedWorkload { name: info.name.clone() }).await {
        return fail(e);
    }
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&command[0]).args(&command[1..]).exec();
    fail(format!("cannot execute {}: {err}", command[0]))
}
