//! A pod's init process (`beemesh-agent pod-init`, started by the agent for every pod).
//!
//! It clones itself into the pod's new user, pid, network, ipc and uts namespaces (the agent's
//! copy maps the user ids and exits), becomes PID 1 there and stays: it holds the namespaces
//! the containers share, starts each container on the agent's command (a fork into a pid
//! namespace of its own, unless the pod has `shareProcessNamespace: true`, that enters its
//! own mount namespace, pivots into the container's root and execs), reaps every process,
//! and reports starts and exits over `<pod-dir>/init.sock`. It needs no agent to keep running,
//! so pods outlive an agent restart; when it exits, the kernel kills whatever is left in the
//! pod. Synchronous and single-threaded on purpose: fork is then safe.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::proto::{ContainerSpec, Event, MAX_LINE};
use super::security;
use crate::sys::process::{self, Forked};

/// The control socket's file name in the pod directory.
pub const SOCKET: &str = "init.sock";

/// Runs the outer half: clones the pod's init, maps its ids (pod ids 0..65536 onto host ids
/// from `id_base`; every id to itself without one), prints its pid and returns the exit
/// status for `main`. Call before any thread exists.
pub fn main(dir: &Path, hostname: &str, id_base: Option<u32>) -> i32 {
    match start(dir, hostname, super::userns::IdMap::of(id_base)) {
        Ok(pid) => {
            println!("{pid}");
            0
        }
        Err(e) => {
            eprintln!("beemesh pod-init: {e}");
            1
        }
    }
}

fn start(dir: &Path, hostname: &str, ids: super::userns::IdMap) -> io::Result<Pid> {
    // Bound here, as the host's root: the pod's root may not create files in the pod
    // directory (nor should it), and the agent connects as root.
    let path = dir.join(SOCKET);
    let _ = std::fs::remove_file(&path);
    // Through the directory's descriptor: a state dir of any length fits in `sun_path`.
    let listener = crate::sockpath::bind(&path)?;
    listener.set_nonblocking(true)?;
    let (go_r, go_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    let mut go = Some(go_r);
    let mut ready = Some(ready_w);
    let mut listener = Some(listener);
    let parent_ends = [go_w.as_raw_fd(), ready_r.as_raw_fd()];
    let child = process::clone_into_namespaces(flags, || {
        let (Some(go), Some(ready), Some(listener)) = (go.take(), ready.take(), listener.take()) else {
            return 1;
        };
        // The copies of the parent's pipe ends: the parent must see EOF when we are gone.
        for fd in parent_ends {
            let _ = nix::unistd::close(fd);
        }
        let code = inner(hostname, listener, go, ready);
        process::exit_now(code)
    })?;
    drop(go.take());
    drop(ready.take());
    drop(listener.take());
    let map = ids.proc_line();
    let mapped = (|| {
        std::fs::write(format!("/proc/{child}/uid_map"), &map)?;
        std::fs::write(format!("/proc/{child}/gid_map"), &map)?;
        nix::unistd::write(&go_w, b"g")?;
        Ok::<_, io::Error>(())
    })();
    drop(go_w);
    let mut answer = String::new();
    let read = std::fs::File::from(ready_r).read_to_string(&mut answer);
    match (mapped, read) {
        (Ok(()), Ok(_)) if answer == "ok" => Ok(child),
        (Err(e), _) | (_, Err(e)) => {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            Err(e)
        }
        _ => {
            let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            Err(io::Error::other(if answer.is_empty() {
                "pod init died while starting".into()
            } else {
                answer
            }))
        }
    }
}

/// PID 1 of the pod.
fn inner(hostname: &str, listener: UnixListener, go: OwnedFd, ready: OwnedFd) -> i32 {
    // Not dumpable: no process of the pod may open /proc/1/root (the host's root: init stays
    // in the agent's mount namespace) or ptrace init.
    if nix::sys::prctl::set_dumpable(false).is_err() {
        return 1;
    }
    let mut ready = std::fs::File::from(ready);
    let mut byte = [0u8; 1];
    if std::fs::File::from(go).read_exact(&mut byte).is_err() {
        return 1;
    }
    let setup = (|| -> io::Result<(SignalFd, std::fs::File)> {
        // Still the host's root (unmapped here) until now: become the pod's root, so that
        // everything init and its containers create belongs to the pod's ids, never to the
        // host's root. (The capabilities in the pod's namespaces stay.)
        let root = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
        nix::unistd::setgroups(&[])?;
        nix::unistd::setresgid(root.1, root.1, root.1)?;
        nix::unistd::setresuid(root.0, root.0, root.0)?;
        nix::sys::prctl::set_dumpable(false)?;
        // stdout is the agent's pipe for our pid: it must reach EOF when the parent exits.
        nix::unistd::dup2_stdout(std::fs::File::open("/dev/null")?)?;
        nix::unistd::sethostname(hostname)?;
        process::loopback_up()?;
        let mut mask = SigSet::empty();
        for s in [Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            mask.add(s);
        }
        mask.thread_block()?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        // Our own pid namespace, to return to after forking a container into a new one.
        let pid_ns = std::fs::File::open("/proc/self/ns/pid")?;
        Ok((signals, pid_ns))
    })();
    let (signals, pid_ns) = match setup {
        Ok(v) => v,
        Err(e) => {
            let _ = write!(ready, "pod init setup: {e}");
            return 1;
        }
    };
    if ready.write_all(b"ok").is_err() {
        return 1;
    }
    drop(ready);
    Init {
        listener,
        signals,
        pid_ns,
        client: None,
        buf: Vec::new(),
        containers: BTreeMap::new(),
        pids: HashMap::new(),
        fds: Default::default(),
    }
    .run()
}

/// What init knows about one container.
struct Known {
    run: u64,
    /// In-namespace pid while it runs.
    pid: Option<Pid>,
    /// The last event, replayed to a new connection.
    last: Event,
    /// The container's cgroup2 directory, killed whole when its main process ends.
    cgroup2: Option<PathBuf>,
    /// The container's input while it takes any: the stdin pipe's write end (held so the
    /// container never reads end of input unless told), or the terminal's master side.
    input: Option<OwnedFd>,
    /// With a terminal: the log the master side's output is copied into, until the terminal
    /// hangs up.
    tty_log: Option<std::fs::File>,
}

/// What a container's standard streams are, as its child process sets them up.
enum Streams {
    /// stdin /dev/null, stdout and stderr the log.
    Log,
    /// stdin the read end of a pipe (the agent writes through init's end), stdout and stderr
    /// the log.
    Pipe(OwnedFd),
    /// All three the slave side of a terminal, also the controlling terminal.
    Tty(OwnedFd),
}

/// A new terminal's size, until `attach` sets the client's.
const TTY_SIZE: (u16, u16) = (24, 80);

struct Init {
    listener: UnixListener,
    signals: SignalFd,
    client: Option<UnixStream>,
    buf: Vec<u8>,
    containers: BTreeMap<String, Known>,
    pids: HashMap<Pid, String>,
    /// The pod's pid namespace (init's own).
    pid_ns: std::fs::File,
    /// Descriptors received with commands, in order, until a `start` takes its mounts.
    fds: std::collections::VecDeque<OwnedFd>,
}

impl Init {
    fn run(mut self) -> i32 {
        loop {
            use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
            let (accept, signal, client, terminals) = {
                let mut fds = vec![
                    PollFd::new(self.listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
                ];
                if let Some(c) = &self.client {
                    fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
                }
                let first_tty = fds.len();
                let mut names = Vec::new();
                for (name, k) in &self.containers {
                    if let (Some(master), Some(_)) = (&k.input, &k.tty_log) {
                        fds.push(PollFd::new(master.as_fd(), PollFlags::POLLIN));
                        names.push(name.clone());
                    }
                }
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return 1,
                }
                let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
                let terminals: Vec<String> = names
                    .into_iter()
                    .zip(&fds[first_tty..])
                    .filter(|(_, f)| ready(f))
                    .map(|(n, _)| n)
                    .collect();
                (ready(&fds[0]), ready(&fds[1]), first_tty > 2 && ready(&fds[2]), terminals)
            };
            for name in terminals {
                if let Some(k) = self.containers.get_mut(&name) {
                    k.copy_terminal(false);
                }
            }
            if signal && self.on_signals() {
                return 0;
            }
            if accept {
                self.on_accept();
            }
            if client && self.on_client() {
                return 0;
            }
        }
    }

    /// Returns true when init must exit.
    fn on_signals(&mut self) -> bool {
        let mut exit = false;
        while let Ok(Some(info)) = self.signals.read_signal() {
            if info.ssi_signo as i32 != Signal::SIGCHLD as i32 && stop_signal_from_outside(info.ssi_pid) {
                exit = true;
            }
        }
        self.reap();
        if exit {
            self.shutdown();
        }
        exit
    }

    fn reap(&mut self) {
        loop {
            let (pid, code, signal) = match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code, None),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32, Some(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let Some(name) = self.pids.remove(&pid) else { continue };
            if let Some(k) = self.containers.get_mut(&name) {
                k.pid = None;
                // What the container wrote last is still in the terminal; its input ends.
                k.copy_terminal(true);
                k.tty_log = None;
                k.input = None;
                // Whatever the container started goes with it (Kubernetes semantics).
                if let Some(cg) = &k.cgroup2 {
                    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
                }
                k.last = Event::Exited { name: name.clone(), run: k.run, code, signal };
                let event = k.last.clone();
                self.send(&event);
            }
        }
    }

    fn on_accept(&mut self) {
        while let Ok((stream, _)) = self.listener.accept() {
            // One agent at a time: a new connection replaces the old one.
            if stream.set_nonblocking(false).is_err() {
                continue;
            }
            self.client = Some(stream);
            self.buf.clear();
            self.fds.clear();
            let replay: Vec<Event> = self.containers.values().map(|k| k.last.clone()).collect();
            for e in replay {
                self.send(&e);
            }
            self.send(&Event::Replayed);
        }
    }

    /// Reads commands; returns true when told to shut down.
    fn on_client(&mut self) -> bool {
        let Some(stream) = self.client.as_mut() else { return false };
        let mut chunk = [0u8; 64 * 1024];
        let mut fds = Vec::new();
        match crate::sys::recv_with_fds(stream, &mut chunk, &mut fds) {
            Ok(0) | Err(_) => {
                self.client = None;
                return false;
            }
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
        }
        self.fds.extend(fds);
        if self.fds.len() > 4 * crate::sys::MAX_FDS {
            self.client = None;
            return false;
        }
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            match serde_json::from_slice::<super::proto::Command>(&line) {
                Ok(super::proto::Command::Start(spec)) => {
                    let wanted = spec.mounts.iter().filter(|m| m.from_fd).count();
                    let trees: Vec<OwnedFd> = (0..wanted).filter_map(|_| self.fds.pop_front()).collect();
                    self.start(*spec, trees)
                }
                Ok(super::proto::Command::Signal { name, signal }) => {
                    if let Some(k) = self.containers.get(&name) {
                        if let Some(pid) = k.pid {
                            let _ = process::signal_group(pid, signal);
                            if signal == libc::SIGKILL {
                                if let Some(cg) = &k.cgroup2 {
                                    let _ = std::fs::write(cg.join("cgroup.kill"), "1");
                                }
                            }
                        }
                    }
                }
                Ok(super::proto::Command::CloseInput { name }) => {
                    if let Some(k) = self.containers.get_mut(&name) {
                        k.close_input();
                    }
                }
                Ok(super::proto::Command::Shutdown) => {
                    self.shutdown();
                    return true;
                }
                Err(_) => {
                    self.client = None;
                    return false;
                }
            }
        }
        if self.buf.len() > MAX_LINE {
            self.client = None;
        }
        false
    }

    fn send(&mut self, event: &Event) {
        let Some(stream) = self.client.as_mut() else { return };
        let Ok(mut line) = serde_json::to_vec(event) else { return };
        line.push(b'\n');
        if stream.write_all(&line).is_err() {
            self.client = None;
        }
    }

    fn shutdown(&mut self) {
        for pid in self.pids.keys() {
            let _ = process::signal_group(*pid, libc::SIGKILL);
        }
    }

    fn start(&mut self, spec: ContainerSpec, trees: Vec<OwnedFd>) {
        let name = spec.name.clone();
        let run = spec.run;
        let failed = if self.containers.get(&name).is_some_and(|k| k.pid.is_some()) {
            Some("the container is already running")
        } else if trees.len() != spec.mounts.iter().filter(|m| m.from_fd).count() {
            Some("the agent's mounts for the container did not arrive")
        } else {
            None
        };
        if let Some(message) = failed {
            let event = Event::StartFailed { name, run, message: message.into() };
            self.send(&event);
            return;
        }
        let (streams, input, tty_log) = match streams(&spec) {
            Ok(v) => v,
            Err(e) => {
                let event = Event::StartFailed { name, run, message: format!("standard streams: {e}") };
                self.send(&event);
                return;
            }
        };
        let input_fd = input.as_ref().map(|fd| fd.as_raw_fd());
        let event = match spawn(&spec, trees, &self.pid_ns, streams) {
            Ok((pid, host_pid)) => {
                self.pids.insert(pid, name.clone());
                Event::Started {
                    name: name.clone(),
                    run,
                    pid: pid.as_raw() as u32,
                    host_pid,
                    uid: spec.uid,
                    gid: spec.gid,
                    cgroups: spec.cgroups.iter().chain(&spec.cgroup2).cloned().collect(),
                    security: Some(spec.security.clone()),
                    input_fd,
                }
            }
            Err(message) => Event::StartFailed { name: name.clone(), run, message },
        };
        let started = matches!(event, Event::Started { .. });
        let pid = match &event {
            Event::Started { pid, .. } => Some(Pid::from_raw(*pid as i32)),
            _ => None,
        };
        let (input, tty_log) = if started { (input, tty_log) } else { (None, None) };
        let known = Known { run, pid, last: event.clone(), cgroup2: spec.cgroup2.clone(), input, tty_log };
        self.containers.insert(name, known);
        self.send(&event);
    }
}

impl Known {
    /// Copies what the container wrote to its terminal into its log: one read, or with
    /// `all` until nothing is left. A terminal nobody holds any more (the container closed
    /// it or ended) is not read again.
    fn copy_terminal(&mut self, all: bool) {
        let (Some(master), Some(log)) = (&self.input, &mut self.tty_log) else { return };
        let mut buf = [0u8; 64 * 1024];
        loop {
            match nix::unistd::read(master, &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EIO) => {
                    self.tty_log = None;
                    return;
                }
                Ok(n) => {
                    // A log that cannot be written loses the output, never stalls init.
                    let _ = log.write_all(&buf[..n]);
                    if !all {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
        }
    }

    /// `CloseInput`: the pipe's last end init holds goes; a terminal gets ^D (its end of
    /// file) instead, as a user would type it, and stays for the output.
    /// Either way no later attach is offered the input (the replay says it has none).
    fn close_input(&mut self) {
        if let Event::Started { input_fd, .. } = &mut self.last {
            *input_fd = None;
        }
        match (&self.input, &self.tty_log) {
            (Some(master), Some(_)) => {
                let _ = nix::unistd::write(master, b"\x04");
            }
            _ => self.input = None,
        }
    }
}

/// The standard streams a container asks for: what its child sets up, the end init keeps
/// (the container's input) and, for a terminal, the log init copies its output into.
fn streams(spec: &ContainerSpec) -> io::Result<(Streams, Option<OwnedFd>, Option<std::fs::File>)> {
    if spec.tty {
        let pty = crate::sys::pty::open(TTY_SIZE.0, TTY_SIZE.1)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&spec.log)?;
        return Ok((Streams::Tty(pty.slave), Some(pty.master), Some(log)));
    }
    if spec.stdin {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // The agent's copies share this: its writes must never block it.
        nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))?;
        return Ok((Streams::Pipe(read), Some(write), None));
    }
    Ok((Streams::Log, None, None))
}

/// Whether a SIGTERM, SIGINT or SIGHUP sent by `sender_pid` (as init sees it) stops the pod.
/// The kernel queues them to init even from inside its pid namespace (a root container with
/// `shareProcessNamespace: true` can `kill -TERM 1`); only signals from outside, where the
/// agent and the host are, read as pid 0 and count.
fn stop_signal_from_outside(sender_pid: u32) -> bool {
    sender_pid == 0
}

/// Forks the container; returns its pid (in the pod and on the host) once its program was
/// executed, or the reason it could not be. Unless the pod shares one pid namespace, the
/// container gets its own, its main process as PID 1 (`pod_ns` is init's own, restored for
/// init's later children).
fn spawn(
    spec: &ContainerSpec,
    trees: Vec<OwnedFd>,
    pod_ns: &std::fs::File,
    streams: Streams,
) -> Result<(Pid, u32), String> {
    let (report_r, report_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    if !spec.share_process_namespace {
        // Only the next child enters the new namespace (as its PID 1); init stays where it is.
        nix::sched::unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("pid namespace: {e}"))?;
    }
    let forked = process::fork().map_err(|e| format!("fork: {e}"));
    if !spec.share_process_namespace && !matches!(forked, Ok(Forked::Child)) {
        // Init's later children (other containers) must not land in this container's
        // namespace: failing that, stop serving rather than mix containers up.
        if let Err(e) = nix::sched::setns(pod_ns, CloneFlags::CLONE_NEWPID) {
            eprintln!("beemesh pod-init: cannot return to the pod's pid namespace: {e}");
            process::exit_now(1);
        }
    }
    match forked? {
        Forked::Child => {
            drop(report_r);
            let mut report = std::fs::File::from(report_w);
            let e = exec_container(spec, trees, streams, &mut report);
            let _ = write!(report, "E{e}");
            process::exit_now(127)
        }
        Forked::Parent(pid) => {
            drop(report_w);
            // The container's ends are its own now.
            drop(streams);
            let mut answer = String::new();
            let _ = std::fs::File::from(report_r).read_to_string(&mut answer);
            // "P<host pid>" first, then "E<error>" if setting up failed; EOF alone means the
            // exec succeeded (the pipe is close-on-exec).
            let (host, error) = match answer.split_once('E') {
                Some((p, e)) => (p, Some(e)),
                None => (answer.as_str(), None),
            };
            match error {
                Some(e) => Err(e.to_owned()),
                None => {
                    let host_pid = host.strip_prefix('P').and_then(|p| p.parse().ok()).unwrap_or(0);
                    Ok((pid, host_pid))
                }
            }
        }
    }
}

/// In the forked child: sets the container up and execs its program. Returns only on error.
fn exec_container(
    spec: &ContainerSpec,
    trees: Vec<OwnedFd>,
    streams: Streams,
    report: &mut std::fs::File,
) -> String {
    let step = |what: &str| {
        let what = what.to_owned();
        move |e: io::Error| format!("{what}: {e}")
    };
    let run = || -> Result<std::convert::Infallible, String> {
        // The host's procfs still answers here: /proc/self is our pid on the host.
        let host_pid = std::fs::read_link("/proc/self").map_err(step("read /proc/self"))?;
        write!(report, "P{}", host_pid.display()).map_err(step("report"))?;
        process::default_signals().map_err(step("signal dispositions"))?;
        nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
        for cg in spec.cgroups.iter().chain(&spec.cgroup2) {
            std::fs::write(cg.join("cgroup.procs"), "0").map_err(step(&format!("join {}", cg.display())))?;
        }
        let last_cap = process::last_capability();
        // Compiled while the host's /proc (kernel version) is still visible.
        let filters = security::compile_seccomp(&spec.security, last_cap).map_err(|e| e.to_string())?;
        stdio(&spec.log, streams).map_err(step(&format!("standard streams (log {})", spec.log.display())))?;
        nix::sched::unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("mount namespace: {e}"))?;
        // The bounding set first (it needs CAP_SETPCAP, gone once a non-root user is set at
        // the end); the capabilities in effect for the mounts stay until exec.
        security::restrict_capabilities(&spec.security, last_cap).map_err(step("drop capabilities"))?;
        enter_root(spec, trees)?;
        // Groups, user, no_new_privs, then the seccomp filter: the last steps before exec.
        security::confine(spec.uid, spec.gid, &spec.security, &filters, || Ok(()))?;
        let env: Vec<CString> = spec.env.iter().filter_map(|e| CString::new(e.as_bytes()).ok()).collect();
        let path_var = spec.env.iter().rev().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/usr/bin:/bin");
        let program = lookup(&spec.argv[0], path_var)
            .ok_or_else(|| format!("{:?}: executable file not found in $PATH", spec.argv[0]))?;
        let argv: Vec<CString> = spec.argv.iter().filter_map(|a| CString::new(a.as_bytes()).ok()).collect();
        let program = CString::new(program.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        nix::unistd::execve(&program, &argv, &env).map_err(|e| format!("exec {:?}: {e}", spec.argv[0]))
    };
    if spec.argv.is_empty() {
        return "no command".into();
    }
    match run() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Sets stdin, stdout and stderr (after `setsid`: a terminal becomes the controlling one).
fn stdio(log: &Path, streams: Streams) -> io::Result<()> {
    let (input, output): (OwnedFd, OwnedFd) = match streams {
        Streams::Tty(slave) => {
            crate::sys::pty::make_controlling(&slave)?;
            (slave.try_clone()?, slave)
        }
        Streams::Pipe(read) => {
            (read, std::fs::OpenOptions::new().create(true).append(true).open(log)?.into())
        }
        Streams::Log => (
            std::fs::File::open("/dev/null")?.into(),
            std::fs::OpenOptions::new().create(true).append(true).open(log)?.into(),
        ),
    };
    // Descriptors 0-2 are taken (init's are /dev/null), so neither end is one of them.
    debug_assert!(input.as_raw_fd() > 2 && output.as_raw_fd() > 2);
    nix::unistd::dup2_stdin(&input)?;
    nix::unistd::dup2_stdout(&output)?;
    nix::unistd::dup2_stderr(&output)?;
    Ok(())
}

/// Mounts /proc, /sys, /dev and the bind mounts into the container's root, pivots into it
/// and changes to its working directory (and makes the root read-only if asked). Every
/// place inside the root is reached from a descriptor of the root ([`open_in_root`]) and
/// mounted on through that descriptor; `trees` are the agent's mounts for the `from_fd`
/// bind mounts, in order.
fn enter_root(spec: &ContainerSpec, trees: Vec<OwnedFd>) -> Result<(), String> {
    let m = |what: &str| {
        let what = what.to_owned();
        move |e: nix::errno::Errno| format!("{what}: {e}")
    };
    let root = &spec.rootfs;
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none).map_err(m("make / private"))?;
    // A bind of the root onto itself is a mount this namespace owns: pivot_root refuses
    // mounts copied (locked) from the agent's namespace.
    mount(Some(root), root, none, MsFlags::MS_BIND | MsFlags::MS_REC, none).map_err(m("bind the root"))?;
    // Opened after the bind: the descriptor is the new mount's root, where everything below
    // gets mounted.
    let root_fd = open_dir(root).map_err(|e| format!("open the root: {e}"))?;
    // A directory inside the root, created if missing; opened again after a mount on it to
    // get the mounted file system's root.
    let dir = |p: &str| open_in_root(&root_fd, p, Missing::Dir).map_err(|e| format!("create {p}: {e}"));
    let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), &fd_path(&dir("/proc")?), Some("proc"), nodev, none).map_err(m("mount /proc"))?;
    let proc_fd = dir("/proc")?;
    let proc_dir = fd_path(&proc_fd);
    // As runc does: kernel knobs read-only, kernel memory and timers hidden (not for a
    // privileged container).
    let shielded =
        if spec.security.privileged { &[][..] } else { &["sys", "sysrq-trigger", "irq", "bus", "fs"][..] };
    for ro in shielded {
        let p = proc_dir.join(ro);
        if p.exists() {
            mount(Some(&p), &p, none, MsFlags::MS_BIND | MsFlags::MS_REC, none)
                .map_err(m(&format!("bind /proc/{ro}")))?;
            let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC;
            mount(none, &p, none, flags, none).map_err(m(&format!("make /proc/{ro} read-only")))?;
        }
    }
    let masked_files = if spec.security.privileged {
        &[][..]
    } else {
        &["kcore", "keys", "timer_list", "latency_stats", "sched_debug"][..]
    };
    for masked in masked_files {
        let p = proc_dir.join(masked);
        if p.exists() {
            mount(Some("/dev/null"), &p, none, MsFlags::MS_BIND, none)
                .map_err(m(&format!("mask /proc/{masked}")))?;
        }
    }
    let sys_flags = if spec.security.privileged { nodev } else { nodev | MsFlags::MS_RDONLY };
    mount(Some("sysfs"), &fd_path(&dir("/sys")?), Some("sysfs"), sys_flags, none).map_err(m("mount /sys"))?;
    // Directories runc hides: an empty read-only tmpfs over each.
    let sys_fd = dir("/sys")?;
    let hidden = ["acpi", "asound", "scsi"].map(|d| proc_dir.join(d));
    for p in hidden.iter().chain([&fd_path(&sys_fd).join("firmware")]) {
        if p.is_dir() && !spec.security.privileged {
            mount(Some("tmpfs"), p, Some("tmpfs"), nodev | MsFlags::MS_RDONLY, none)
                .map_err(m(&format!("mask {}", p.display())))?;
        }
    }
    mount(
        Some("tmpfs"),
        &fd_path(&dir("/dev")?),
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=755,size=65536k"),
    )
    .map_err(m("mount /dev"))?;
    // The fresh tmpfs is this namespace's alone: paths below its descriptor are stable.
    let dev_fd = dir("/dev")?;
    let dev = fd_path(&dev_fd);
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        std::fs::File::create(&target).map_err(|e| format!("create /dev/{node}: {e}"))?;
        mount(Some(&Path::new("/dev").join(node)), &target, none, MsFlags::MS_BIND, none)
            .map_err(m(&format!("bind /dev/{node}")))?;
    }
    let pts = dev.join("pts");
    std::fs::create_dir(&pts).map_err(|e| format!("create /dev/pts: {e}"))?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .map_err(m("mount /dev/pts"))?;
    let shm = dev.join("shm");
    std::fs::create_dir(&shm).map_err(|e| format!("create /dev/shm: {e}"))?;
    mount(Some("shm"), &shm, Some("tmpfs"), nodev, Some("mode=1777,size=65536k"))
        .map_err(m("mount /dev/shm"))?;
    for (link, to) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        std::os::unix::fs::symlink(to, dev.join(link)).map_err(|e| format!("link /dev/{link}: {e}"))?;
    }
    let mut trees = trees.into_iter();
    for b in &spec.mounts {
        let shown = format!("bind {} at {}", b.source.display(), b.target);
        // Every bind is a detached copy made nosuid,nodev (read-only if asked) before it is
        // attached: the agent's for hostPaths, made here from the pod directory otherwise (a
        // subPath opened with every link resolved inside the volume, so a container that
        // writes the volume cannot point it at the host).
        let tree = if b.from_fd {
            trees.next().ok_or_else(|| format!("{shown}: the agent's mount is missing"))?
        } else {
            let source = match &b.sub_path {
                None => open_path(&b.source),
                Some(sub) => open_dir(&b.source).and_then(|base| super::sandbox::open_beneath(base, sub)),
            }
            .map_err(|e| match &b.sub_path {
                Some(sub) => format!("subPath {sub}: {e}"),
                None => format!("{shown}: {e}"),
            })?;
            crate::sys::mount::clone_tree(&source, b.read_only).map_err(|e| format!("{shown}: {e}"))?
        };
        let is_dir = nix::sys::stat::fstat(&tree)
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .map_err(|e| format!("{shown}: {e}"))?;
        let missing = if is_dir { Missing::Dir } else { Missing::File };
        let target = open_in_root(&root_fd, &b.target, missing)
            .map_err(|e| format!("mount target {}: {e}", b.target))?;
        crate::sys::mount::move_tree(&tree, &target).map_err(|e| format!("{shown}: {e}"))?;
    }
    nix::unistd::fchdir(&root_fd).map_err(m("enter the root"))?;
    nix::unistd::pivot_root(".", ".").map_err(m("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(m("detach the old root"))?;
    nix::unistd::chdir("/").map_err(m("chdir /"))?;
    let new_root = open_dir(Path::new("/")).map_err(|e| format!("open /: {e}"))?;
    let cwd = open_in_root(&new_root, &spec.cwd, Missing::Dir)
        .map_err(|e| format!("working directory {}: {e}", spec.cwd))?;
    nix::unistd::fchdir(&cwd).map_err(m(&format!("working directory {}", spec.cwd)))?;
    if spec.security.read_only_root {
        // Only the root's own mount: /proc, /dev, volumes and /etc files are mounts of their own.
        let flags =
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | locked_flags(Path::new("/"));
        mount(none, "/", none, flags, none).map_err(m("make the root read-only"))?;
    }
    Ok(())
}

/// `/proc/self/fd/<fd>`: the file `fd` refers to, for calls that take a path (mount).
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// An O_PATH descriptor of `path` (links followed).
fn open_path(path: &Path) -> io::Result<OwnedFd> {
    use nix::fcntl::OFlag;
    Ok(nix::fcntl::open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?)
}

/// An O_PATH descriptor of directory `path` (links followed).
fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    use nix::fcntl::OFlag;
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    Ok(nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty())?)
}

/// What [`open_in_root`] does with a missing path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Fails with ENOENT.
    Fail,
    /// Creates the directories on the way and the last component as a directory (0755).
    Dir,
    /// Creates the directories on the way and the last component as an empty file (0644).
    File,
}

/// `path` inside the directory `root`, following symbolic links as if `root` were `/` (an
/// image's absolute link never leads out to the host), creating what is missing as
/// `missing` says; an O_PATH descriptor. Every step starts from the descriptor of the step
/// before (openat O_NOFOLLOW, mkdirat, O_CREAT|O_EXCL|O_NOFOLLOW), and a link is read and
/// resolved here, never by the kernel: a link swapped into the path meanwhile (by a sibling
/// container writing a shared volume) is resolved inside the root like any other, and what
/// the caller mounts on is the file it got, not a path looked up again.
pub fn open_in_root(root: &OwnedFd, path: &str, missing: Missing) -> io::Result<OwnedFd> {
    use nix::fcntl::{openat, readlinkat, OFlag};
    use nix::sys::stat::{fstat, mkdirat, Mode};
    use std::ffi::OsString;
    fn push(p: &Path, out: &mut Vec<OsString>) {
        // Reversed: the next component is popped from the end.
        for c in p.components().rev() {
            match c {
                Component::Normal(n) => out.push(n.to_owned()),
                Component::ParentDir => out.push("..".into()),
                _ => {}
            }
        }
    }
    let mut pending = Vec::new();
    push(Path::new(path), &mut pending);
    // The directories walked below the root: `..` goes back one, never above the root.
    let mut walked: Vec<OwnedFd> = Vec::new();
    let (mut links, mut retries) = (0, 0);
    while let Some(name) = pending.pop() {
        if name == ".." {
            walked.pop();
            continue;
        }
        let cur = walked.last().unwrap_or(root);
        let last = pending.is_empty();
        match openat(
            cur,
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => {
                let kind = fstat(&fd)?.st_mode & libc::S_IFMT;
                if kind == libc::S_IFLNK {
                    links += 1;
                    if links > 40 {
                        return Err(io::Error::from_raw_os_error(libc::ELOOP));
                    }
                    // An O_PATH descriptor of the link itself, read with an empty path.
                    let target = PathBuf::from(readlinkat(&fd, "")?);
                    if target.is_absolute() {
                        walked.clear();
                    }
                    push(&target, &mut pending);
                } else if last {
                    return Ok(fd);
                } else if kind == libc::S_IFDIR {
                    walked.push(fd);
                } else {
                    return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
                }
            }
            Err(nix::errno::Errno::ENOENT) if missing != Missing::Fail => {
                let created = if last && missing == Missing::File {
                    let flags = OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_WRONLY
                        | OFlag::O_CLOEXEC;
                    openat(cur, name.as_os_str(), flags, Mode::from_bits_truncate(0o644)).map(drop)
                } else {
                    mkdirat(cur, name.as_os_str(), Mode::from_bits_truncate(0o755))
                };
                match created {
                    // Taken meanwhile: look at whatever is there now (bounded).
                    Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                retries += 1;
                if retries > 40 {
                    return Err(io::Error::other("the path keeps changing"));
                }
                pending.push(name);
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The root itself (or `..` above it): a descriptor of the directory reached.
    match walked.pop() {
        Some(fd) => Ok(fd),
        None => Ok(root.try_clone()?),
    }
}

/// `beemesh-agent pod-exec`: runs `argv` inside the container whose process is `target`
/// (its namespaces, root, cgroups; `uid`/`gid`; the container's `security`: capabilities,
/// groups, no_new_privs, seccomp) with this process's environment, and returns its exit
/// status. Call before any thread exists.
pub fn exec_main(
    target: u32,
    uid: u32,
    gid: u32,
    cwd: &str,
    cgroups: &[PathBuf],
    security: &super::proto::SecuritySpec,
    argv: &[String],
) -> i32 {
    match exec_in(target, (uid, gid), cwd, cgroups, security, argv) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("beemesh pod-exec: {e}");
            126
        }
    }
}

fn exec_in(
    target: u32,
    (uid, gid): (u32, u32),
    cwd: &str,
    cgroups: &[PathBuf],
    sec: &super::proto::SecuritySpec,
    argv: &[String],
) -> Result<i32, String> {
    if argv.is_empty() {
        return Err("no command".into());
    }
    let last_cap = process::last_capability();
    let filters = security::compile_seccomp(sec, last_cap).map_err(|e| e.to_string())?;
    let open = |ns: &str| {
        std::fs::File::open(format!("/proc/{target}/ns/{ns}"))
            .map_err(|e| format!("container process {target}: {e}"))
    };
    let namespaces = [
        (open("ipc")?, CloneFlags::CLONE_NEWIPC),
        (open("uts")?, CloneFlags::CLONE_NEWUTS),
        (open("net")?, CloneFlags::CLONE_NEWNET),
        (open("pid")?, CloneFlags::CLONE_NEWPID),
        (open("mnt")?, CloneFlags::CLONE_NEWNS),
        // Last: once inside the pod's user namespace, the others are out of reach.
        (open("user")?, CloneFlags::CLONE_NEWUSER),
    ];
    // The pid was checked by the agent, but may have been reused since: never enter a
    // process of the host's own user namespace (that is no container).
    let id = |f: &std::fs::File| f.metadata().map(|m| (m.dev(), m.ino()));
    let own = std::fs::File::open("/proc/self/ns/user").and_then(|f| id(&f));
    match (id(&namespaces[5].0), own) {
        (Ok(target_ns), Ok(own)) if target_ns != own => {}
        (Ok(_), Ok(_)) => return Err(format!("process {target} is not in a container")),
        (Err(e), _) | (_, Err(e)) => return Err(format!("user namespace: {e}")),
    }
    for cg in cgroups {
        std::fs::write(cg.join("cgroup.procs"), "0").map_err(|e| format!("join {}: {e}", cg.display()))?;
    }
    for (fd, kind) in &namespaces {
        nix::sched::setns(fd, *kind).map_err(|e| format!("enter {kind:?}: {e}"))?;
    }
    nix::sys::prctl::set_dumpable(false).map_err(|e| format!("dumpable: {e}"))?;
    // The pid namespace applies to children: the command runs in a fork.
    match process::fork().map_err(|e| format!("fork: {e}"))? {
        Forked::Child => {
            let e = (|| -> Result<std::convert::Infallible, String> {
                process::default_signals().map_err(|e| format!("signals: {e}"))?;
                nix::unistd::chdir(cwd)
                    .or_else(|_| nix::unistd::chdir("/"))
                    .map_err(|e| format!("chdir: {e}"))?;
                security::restrict_capabilities(sec, last_cap)
                    .map_err(|e| format!("drop capabilities: {e}"))?;
                security::confine(uid, gid, sec, &filters, || {
                    // After setuid (which clears it); the parent sits outside the pod's pid
                    // namespace, so while it lives getppid() is 0.
                    process::die_with_parent().map_err(|e| format!("parent death signal: {e}"))?;
                    if nix::unistd::getppid().as_raw() != 0 {
                        return Err("the exec wrapper is gone".into());
                    }
                    Ok(())
                })?;
                let path_var = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
                let program = lookup(&argv[0], &path_var)
                    .ok_or_else(|| format!("{:?}: executable file not found in $PATH", argv[0]))?;
                let program = CString::new(program.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
                let args: Vec<CString> =
                    argv.iter().filter_map(|a| CString::new(a.as_bytes()).ok()).collect();
                let env: Vec<CString> = std::env::vars_os()
                    .filter_map(|(k, v)| {
                        let mut kv = k.as_bytes().to_vec();
                        kv.push(b'=');
                        kv.extend_from_slice(v.as_bytes());
                        CString::new(kv).ok()
                    })
                    .collect();
                nix::unistd::execve(&program, &args, &env).map_err(|e| format!("exec {:?}: {e}", argv[0]))
            })();
            let Err(e) = e;
            eprintln!("beemesh pod-exec: {e}");
            process::exit_now(126)
        }
        Forked::Parent(child) => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(format!("wait: {e}")),
            }
        },
    }
}

/// The mount flags of `path` that a remount must repeat (nosuid, nodev, noexec, atime).
fn locked_flags(path: &Path) -> MsFlags {
    use nix::sys::statvfs::FsFlags;
    let Ok(vfs) = nix::sys::statvfs::statvfs(path) else { return MsFlags::empty() };
    let f = vfs.flags();
    let mut flags = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            flags |= ms;
        }
    }
    flags
}

/// `program` found through `path_var` (after the pivot: paths are the container's).
fn lookup(program: &str, path_var: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    path_var.split(':').filter(|d| !d.is_empty()).map(|d| Path::new(d).join(program)).find(|p| executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file at `fd` is the one at `path` (same device and inode).
    fn is(fd: &OwnedFd, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let (a, b) = (nix::sys::stat::fstat(fd).expect("fstat"), std::fs::metadata(path).expect("stat"));
        a.st_dev == b.dev() && a.st_ino == b.ino()
    }

    #[test]
    fn paths_resolve_inside_the_root_through_links() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        let root_fd = open_dir(r).expect("root");
        std::fs::create_dir_all(r.join("real/etc")).expect("mkdir");
        std::os::unix::fs::symlink("/real/etc", r.join("etc")).expect("link");
        std::os::unix::fs::symlink("../../../..", r.join("real/up")).expect("link");
        // An absolute link stays inside the root.
        let hosts = open_in_root(&root_fd, "/etc/hosts", Missing::File).expect("resolves");
        assert!(r.join("real/etc/hosts").is_file());
        assert!(is(&hosts, &r.join("real/etc/hosts")));
        // `..` never climbs above the root, through a link or directly.
        let data = open_in_root(&root_fd, "/real/up/data", Missing::Dir).expect("resolves");
        assert!(is(&data, &r.join("data")));
        let xy = open_in_root(&root_fd, "/../../x/y", Missing::Dir).expect("resolves");
        assert!(r.join("x/y").is_dir() && is(&xy, &r.join("x/y")));
        std::os::unix::fs::symlink("loop", r.join("loop")).expect("link");
        assert!(open_in_root(&root_fd, "/loop/a", Missing::Dir).is_err());
        assert!(open_in_root(&root_fd, "/nothing", Missing::Fail).is_err());
        assert!(!r.join("nothing").exists());
        // A dangling link is created where it points, inside the root.
        std::os::unix::fs::symlink("/made/here", r.join("dangling")).expect("link");
        let made = open_in_root(&root_fd, "/dangling", Missing::Dir).expect("resolves");
        assert!(is(&made, &r.join("made/here")));
    }

    #[test]
    fn what_was_opened_stays_put_when_a_link_is_swapped_in_afterwards() {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        let root_fd = open_dir(r).expect("root");
        let target = open_in_root(&root_fd, "/shared/sub", Missing::Dir).expect("resolves");
        // A sibling container swaps the shared directory for a link to the host.
        std::fs::rename(r.join("shared"), r.join("moved")).expect("rename");
        std::os::unix::fs::symlink(outside.path(), r.join("shared")).expect("link");
        // The descriptor (what init mounts on) is still the directory inside the root.
        assert!(is(&target, &r.join("moved/sub")));
        // Resolving again follows the link inside the root, where it leads nowhere real.
        let again = open_in_root(&root_fd, "/shared/new", Missing::Dir).expect("resolves");
        assert!(!outside.path().join("new").exists(), "created on the host");
        let inside = r.join(outside.path().strip_prefix("/").expect("absolute")).join("new");
        assert!(is(&again, &inside));
    }
}
