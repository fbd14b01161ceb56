//! A pod's userland network: slirp4netns attached to the pod's network namespace, started
//! inside the pod's own cgroup leaf so that every host-side socket it opens for the pod
//! carries the pod's identity in the kernel programs (policy applies to pod traffic as it
//! leaves slirp4netns). It runs sandboxed (`--enable-sandbox`: its own mount namespace
//! pivoted into an empty root, capabilities dropped; `--enable-seccomp`) and without the
//! host's loopback (`--disable-host-loopback`: 10.0.2.2 no longer reaches the host's
//! 127.0.0.1 services; the host's real addresses are reached as themselves, under policy).
//! Port forwards go through its API socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::sockpath::ShortPath;

/// MTU for the tap device: about 3x the throughput of 1500 (machine notes).
pub const MTU: u32 = 65520;
/// The pod's own address on its tap device (slirp4netns' `--configure` default): what
/// the agent dials inside the pod's network namespace to reach its servers.
pub const POD_ADDR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 2, 100);
/// The descriptor number slirp4netns gets its ready pipe on.
const READY_FD: i32 = 200;
/// The descriptor number slirp4netns gets the API socket's directory on: it binds the socket
/// as `/proc/self/fd/201/<name>`, a path of fixed length whatever the state directory's.
const DIR_FD: i32 = 201;
/// How long slirp4netns may take to bring the tap device up (it takes 10-20 ms; the margin
/// is for a loaded machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot start slirp4netns (apt-get install slirp4netns): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("slirp4netns did not come up within {timeout:?}: {log}")]
    NotReady { timeout: Duration, log: String },
    #[error("slirp4netns API {path}: {source}")]
    Api {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("slirp4netns refused {request}: {reply}")]
    Refused { request: String, reply: String },
}

/// A running slirp4netns for one pod.
#[derive(Debug)]
pub struct Slirp {
    pid: u32,
    /// Set when this agent started it (and must reap it); not when adopted.
    ours: bool,
    api: PathBuf,
}

/// The `--api-socket` argument slirp4netns gets for the socket `api`.
fn api_arg(api: &Path) -> PathBuf {
    ShortPath::through(DIR_FD, api.file_name().unwrap_or_default())
}

impl Slirp {
    /// Starts slirp4netns for the network namespace of `pid`, inside the cgroup2 directory
    /// `cgroup`, with its API socket at `api`; returns once `tap0` is configured.
    pub fn start(pid: u32, cgroup: &Path, api: &Path) -> Result<Self, NetError> {
        let _ = std::fs::remove_file(api);
        let dir = ShortPath::new(api).map_err(NetError::Spawn)?;
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| NetError::Spawn(e.into()))?;
        // Only the write end goes to slirp4netns (its --ready-fd), duplicated to a fixed
        // number in the child only: the agent's copy stays close-on-exec, so no other process
        // the agent starts meanwhile inherits it. The same for the directory.
        let log_path = api.with_file_name("slirp.log");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(NetError::Spawn)?;
        let mut argv = crate::sys::cgroup_exec_argv(&[cgroup.to_path_buf()], true, "slirp4netns");
        argv.extend(
            [
                "--configure".into(),
                format!("--mtu={MTU}"),
                "--enable-sandbox".into(),
                "--enable-seccomp".into(),
                "--disable-host-loopback".into(),
                "--api-socket".into(),
            ]
            .map(std::ffi::OsString::from),
        );
        argv.push(api_arg(api).into());
        argv.extend(
            ["--ready-fd".into(), READY_FD.to_string(), pid.to_string(), "tap0".into()].map(Into::into),
        );
        let null = std::fs::File::open("/dev/null").map_err(NetError::Spawn)?;
        let pid = crate::sys::spawn_with_fds(
            &argv,
            [null.as_fd(), null.as_fd(), log.as_fd()],
            &[(write.as_fd(), READY_FD), (dir.dir_fd(), DIR_FD)],
        )
        .map_err(NetError::Spawn)?;
        drop(write);
        drop(dir);
        let mut slirp = Self { pid: pid.as_raw() as u32, ours: true, api: api.to_path_buf() };
        if let Err(timeout) = wait_ready(read) {
            slirp.stop();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let log = log.lines().last().unwrap_or("(its log is empty)").to_owned();
            return Err(NetError::NotReady { timeout, log });
        }
        Ok(slirp)
    }

    /// The slirp4netns an earlier agent started for a pod, if it still runs.
    pub fn adopt(pid: u32, api: &Path) -> Option<Self> {
        serves(pid, api).then(|| Self { pid, ours: false, api: api.to_path_buf() })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn call(&self, request: &str) -> Result<String, NetError> {
        let api = |source| NetError::Api { path: self.api.clone(), source };
        let mut s = crate::sockpath::connect(&self.api).map_err(api)?;
        s.set_read_timeout(Some(Duration::from_secs(5))).map_err(api)?;
        s.write_all(request.as_bytes()).map_err(api)?;
        s.shutdown(std::net::Shutdown::Write).map_err(api)?;
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).map_err(api)?;
        if reply.contains("\"error\"") {
            return Err(NetError::Refused { request: request.to_owned(), reply });
        }
        Ok(reply)
    }

    /// Forwards `host_addr:host_port` on the host to `guest_port` in the pod.
    pub fn add_hostfwd(
        &self,
        tcp: bool,
        host_addr: &str,
        host_port: u16,
        guest_port: u16,
    ) -> Result<(), NetError> {
        let proto = if tcp { "tcp" } else { "udp" };
        let req = format!(
            r#"{{"execute":"add_hostfwd","arguments":{{"proto":"{proto}","host_addr":"{host_addr}","host_port":{host_port},"guest_port":{guest_port}}}}}"#
        );
        self.call(&req).map(|_| ())
    }

    /// Kills slirp4netns and removes its API socket.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        if std::mem::take(&mut self.ours) {
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        let _ = std::fs::remove_file(&self.api);
    }
}

impl Drop for Slirp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Whether process `pid` is the slirp4netns serving the API socket `api`: its command line
/// names the socket through its directory descriptor, which must be the socket's directory
/// (so a reused pid is never taken for it).
fn serves(pid: u32, api: &Path) -> bool {
    crate::sys::process::cmdline(pid).is_some_and(|args| {
        args.first().is_some_and(|a| Path::new(a).ends_with("slirp4netns"))
            && args.iter().any(|a| a == api_arg(api).as_os_str())
            && std::fs::read_link(format!("/proc/{pid}/fd/{DIR_FD}"))
                .is_ok_and(|d| Some(d.as_path()) == api.parent())
    })
}

/// slirp4netns writes "1" to the ready fd once tap0 is up; `Err(timeout)` if it did not.
fn wait_ready(read: OwnedFd) -> Result<(), Duration> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut file = std::fs::File::from(read);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(file.read(&mut b).map(|n| n == 1 && b[0] == b'1'));
    });
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(true)) => Ok(()),
        _ => Err(READY_TIMEOUT),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::Command;

    use super::*;
    use crate::sys::cgroup;

    /// A non-loopback address of this host for pods to reach (`--disable-host-loopback`
    /// hides 127.0.0.1): a /32 on `lo`, added once and shared (the end-to-end harness uses
    /// the same one).
    const HOST_ADDR: &str = "10.200.255.1";

    fn ensure_host_addr() {
        let out = Command::new("ip")
            .args(["addr", "add", &format!("{HOST_ADDR}/32"), "dev", "lo"])
            .output()
            .expect("ip");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || err.contains("File exists") || err.contains("already assigned"),
            "ip addr add: {err}"
        );
    }

    /// A cgroup2 directory removed (with its leaf) on drop.
    struct Cg(PathBuf);
    impl Drop for Cg {
        fn drop(&mut self) {
            let _ = cgroup::remove_cgroup_tree(&self.0);
        }
    }

    /// A child process killed on drop.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
    }

    /// Polls `f` until it holds, for at most 20 s (a loaded 2-core machine).
    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `script` with bash in the network namespace of `pid`; (stdout, stderr).
    fn in_netns(pid: u32, script: &str) -> (String, String) {
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "bash", "-c", script])
            .output()
            .expect("nsenter");
        (
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Root, real slirp4netns: sandboxed and seccomp-filtered from its first moment in the
    /// cgroup it was given, API socket below a directory far longer than `sun_path`; the
    /// pod reaches a host address but not the host's loopback, the host reaches the pod
    /// through a port forward.
    #[test]
    fn slirp_connects_a_namespace_from_inside_its_cgroup() {
        ensure_host_addr();
        let root = cgroup::cgroup2_mount()
            .expect("cgroup2")
            .join(format!("beemesh-slirptest-{}", std::process::id()));
        let leaf = root.join("net");
        std::fs::create_dir_all(&leaf).expect("cgroup");
        let _cg = Cg(root);
        let pod = Killed(Command::new("unshare").args(["--net", "sleep", "60"]).spawn().expect("unshare"));
        let pid = pod.0.id();
        // unshare execs sleep once the namespace is made: wait for it, not for a while.
        let ours = std::fs::read_link("/proc/self/ns/net").expect("own netns");
        wait_for("the new network namespace", || {
            std::fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|ns| ns != ours)
                && crate::sys::process::cmdline(pid).is_some_and(|a| a.first().is_some_and(|a| a == "sleep"))
        });
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("d".repeat(100)).join("p".repeat(63));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let api = dir.join("slirp.sock");
        assert!(api.as_os_str().len() > 108, "the socket path must not fit in sun_path");
        let slirp = Slirp::start(pid, &leaf, &api).expect("slirp up");
        let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).expect("procs");
        assert!(
            procs.lines().any(|l| l == slirp.pid().to_string()),
            "slirp4netns not in its cgroup: {procs}"
        );
        // Sandboxed: its own mount namespace, and a seccomp filter (mode 2).
        let slirp_mnt = std::fs::read_link(format!("/proc/{}/ns/mnt", slirp.pid())).expect("mnt ns");
        assert_ne!(slirp_mnt, std::fs::read_link("/proc/self/ns/mnt").expect("own mnt ns"));
        let status = std::fs::read_to_string(format!("/proc/{}/status", slirp.pid())).expect("status");
        assert!(status.lines().any(|l| l == "Seccomp:\t2"), "no seccomp filter: {status}");
        assert!(api.exists(), "the API socket lives in the pod directory");
        assert!(serves(slirp.pid(), &api), "an agent restart finds it by its pid and socket");
        assert!(!serves(slirp.pid(), &tmp.path().join("slirp.sock")), "taken for another pod's");

        // Pod -> host: a host address is reached as itself.
        let host = TcpListener::bind((HOST_ADDR, 0)).expect("bind the host address");
        let port = host.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = host.accept() {
                let _ = c.write_all(b"from-host\n");
            }
        });
        let (out, err) =
            in_netns(pid, &format!("exec 3<>/dev/tcp/{HOST_ADDR}/{port}; read line <&3; echo $line"));
        assert_eq!(out, "from-host", "{err}");

        // Pod -> the host's loopback through 10.0.2.2: slirp4netns refuses it, and nothing
        // reaches the listener.
        let lo = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        lo.set_nonblocking(true).expect("nonblocking");
        let lo_port = lo.local_addr().expect("addr").port();
        let (out, err) = in_netns(pid, &format!("exec 3<>/dev/tcp/10.0.2.2/{lo_port} && echo CONNECTED"));
        assert!(!out.contains("CONNECTED"), "the host's loopback was reached: {out}");
        assert!(err.contains("unreachable") || err.contains("refused"), "the attempt was made: {err}");
        assert!(lo.accept().is_err(), "a connection reached the host's loopback");

        // Host -> pod through a forward, once the pod's server listens (its socket table).
        let server = Killed(
            Command::new("nsenter")
                .args([
                    "-t",
                    &pid.to_string(),
                    "-n",
                    "socat",
                    "TCP-LISTEN:8080,reuseaddr",
                    "SYSTEM:echo from-pod",
                ])
                .spawn()
                .expect("pod server"),
        );
        wait_for("the pod's server to listen", || {
            std::fs::read_to_string(format!("/proc/{pid}/net/tcp"))
                .is_ok_and(|t| t.lines().any(|l| l.contains(":1F90 00000000:0000 0A")))
        });
        let host_port = free_port();
        slirp.add_hostfwd(true, "127.0.0.1", host_port, 8080).expect("hostfwd");
        let mut reply = String::new();
        std::net::TcpStream::connect(("127.0.0.1", host_port))
            .expect("forwarded connect")
            .read_to_string(&mut reply)
            .expect("read");
        assert_eq!(reply.trim(), "from-pod");
        // A forward the API cannot set up is an error, not silence.
        assert!(slirp.add_hostfwd(true, "127.0.0.1", host_port, 8080).is_err(), "duplicate forward accepted");

        drop(server);
        drop(slirp);
        assert!(!api.exists(), "the API socket is removed with slirp4netns");
        drop(pod);
    }
}
