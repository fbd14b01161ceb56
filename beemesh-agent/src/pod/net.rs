//! A pod's userland network: slirp4netns attached to the pod's network namespace, started
//! inside the pod's own cgroup leaf so that every host-side socket it opens for the pod
//! carries the pod's identity in the kernel programs (policy applies to pod traffic as it
//! leaves slirp4netns). Port forwards go through its API socket.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// MTU for the tap device: about 3x the throughput of 1500 (machine notes).
pub const MTU: u32 = 65520;
/// The descriptor number slirp4netns gets its ready pipe on.
const READY_FD: i32 = 200;
/// How long slirp4netns may take to bring the tap device up.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("cannot start slirp4netns (apt-get install slirp4netns): {0}")]
    Spawn(#[source] std::io::Error),
    #[error("slirp4netns did not come up within {0:?}")]
    NotReady(Duration),
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
    /// Set when this agent started it (and must reap it); `None` once adopted.
    child: Option<Child>,
    api: PathBuf,
}

impl Slirp {
    /// Starts slirp4netns for the network namespace of `pid`, inside the cgroup2 directory
    /// `cgroup`, with its API socket at `api`; returns once `tap0` is configured.
    pub fn start(pid: u32, cgroup: &Path, api: &Path) -> Result<Self, NetError> {
        let _ = std::fs::remove_file(api);
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| NetError::Spawn(e.into()))?;
        // Only the write end goes to slirp4netns (its --ready-fd), duplicated to a fixed
        // number in the child only: the agent's copy stays close-on-exec, so no other process
        // the agent starts meanwhile inherits it.
        let log_path = api.with_file_name("slirp.log");
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(NetError::Spawn)?;
        let mut cmd = Command::new("slirp4netns");
        cmd.arg("--configure")
            .arg(format!("--mtu={MTU}"))
            .arg("--api-socket")
            .arg(api)
            .arg("--ready-fd")
            .arg(READY_FD.to_string())
            .arg(pid.to_string())
            .arg("tap0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        crate::sys::exec_in_cgroup(&mut cmd, cgroup).map_err(NetError::Spawn)?;
        crate::sys::pass_fd(&mut cmd, write.as_raw_fd(), READY_FD);
        let child = cmd.spawn().map_err(NetError::Spawn)?;
        drop(write);
        let mut slirp = Self { pid: child.id(), child: Some(child), api: api.to_path_buf() };
        if let Err(e) = wait_ready(read) {
            slirp.stop();
            return Err(e);
        }
        Ok(slirp)
    }

    /// The slirp4netns an earlier agent started for a pod, if it still runs.
    pub fn adopt(pid: u32, api: &Path) -> Option<Self> {
        // The command line names this pod's API socket: a reused pid is never taken for it.
        let args = crate::sys::process::cmdline(pid)?;
        let ours = args.first().is_some_and(|a| Path::new(a).ends_with("slirp4netns"))
            && args.iter().any(|a| a == api.as_os_str());
        ours.then(|| Self { pid, child: None, api: api.to_path_buf() })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn call(&self, request: &str) -> Result<String, NetError> {
        let api = |source| NetError::Api { path: self.api.clone(), source };
        let mut s = UnixStream::connect(&self.api).map_err(api)?;
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
        match self.child.as_mut() {
            Some(child) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            None => {
                let pid = nix::unistd::Pid::from_raw(self.pid as i32);
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(&self.api);
    }
}

impl Drop for Slirp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// slirp4netns writes "1" to the ready fd once tap0 is up.
fn wait_ready(read: OwnedFd) -> Result<(), NetError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut file = std::fs::File::from(read);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(file.read(&mut b).map(|n| n == 1 && b[0] == b'1'));
    });
    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(Ok(true)) => Ok(()),
        _ => Err(NetError::NotReady(READY_TIMEOUT)),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::process::Command;

    use super::*;
    use crate::sys::cgroup;

    /// A cgroup2 directory removed (with its leaf) on drop.
    struct Cg(PathBuf);
    impl Drop for Cg {
        fn drop(&mut self) {
            let _ = cgroup::remove_cgroup_tree(&self.0);
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
    }

    /// Root, real slirp4netns: the pod reaches the host, the host reaches the pod through a
    /// port forward, and slirp4netns sits in the cgroup it was given from its first moment.
    #[test]
    fn slirp_connects_a_namespace_from_inside_its_cgroup() {
        let root = cgroup::cgroup2_mount()
            .expect("cgroup2")
            .join(format!("beemesh-slirptest-{}", std::process::id()));
        let leaf = root.join("net");
        std::fs::create_dir_all(&leaf).expect("cgroup");
        let _cg = Cg(root);
        let mut pod = Command::new("unshare").args(["--net", "sleep", "30"]).spawn().expect("unshare");
        std::thread::sleep(Duration::from_millis(100));
        let dir = tempfile::tempdir().expect("tmp");
        let slirp = Slirp::start(pod.id(), &leaf, &dir.path().join("slirp.sock")).expect("slirp up");
        let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).expect("procs");
        assert!(
            procs.lines().any(|l| l == slirp.pid().to_string()),
            "slirp4netns not in its cgroup: {procs}"
        );

        // Pod -> host: 10.0.2.2 is the host's loopback.
        let host = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = host.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            if let Ok((mut c, _)) = host.accept() {
                let _ = c.write_all(b"from-host\n");
            }
        });
        let script = format!("exec 3<>/dev/tcp/10.0.2.2/{port}; read line <&3; echo $line");
        let out = Command::new("nsenter")
            .args(["-t", &pod.id().to_string(), "-n", "bash", "-c", &script])
            .output()
            .expect("nsenter");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "from-host",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Host -> pod through a forward.
        let mut server = Command::new("nsenter")
            .args([
                "-t",
                &pod.id().to_string(),
                "-n",
                "socat",
                "TCP-LISTEN:8080,reuseaddr",
                "SYSTEM:echo from-pod",
            ])
            .spawn()
            .expect("pod server");
        std::thread::sleep(Duration::from_millis(200));
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

        let _ = server.kill();
        let _ = server.wait();
        drop(slirp);
        let _ = pod.kill();
        let _ = pod.wait();
    }
}
