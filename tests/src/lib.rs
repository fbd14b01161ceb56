//! Harness for beemesh's end-to-end tests and benchmarks: starts a real `beemesh-agent run`
//! (real eBPF, real cgroups) with its own directories and cgroup name, runs workloads
//! through `beemesh-agent exec`, writes policy files, and checks that stopping the agent
//! leaves nothing behind. Tests need root; they fail (never skip) without it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub mod image;
pub mod lan;

/// Workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests crate sits in the workspace").to_path_buf()
}

/// The agent binary: `$BEEMESH_AGENT_BIN`, else the newest of target/{debug,release}.
pub fn agent_bin() -> PathBuf {
    if let Ok(p) = std::env::var("BEEMESH_AGENT_BIN") {
        return p.into();
    }
    let target =
        std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace().join("target"));
    let candidates = [target.join("debug/beemesh-agent"), target.join("release/beemesh-agent")];
    candidates
        .iter()
        .filter_map(|p| Some((std::fs::metadata(p).ok()?.modified().ok()?, p.clone())))
        .max()
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!("beemesh-agent is not built: run `cargo build -p beemesh-agent` (cargo xtask test does)")
        })
}

/// The `probe` binary of this package, next to the running test or bench executable.
pub fn probe_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().expect("exe has a directory");
    [dir.join("probe"), dir.parent().map(|d| d.join("probe")).unwrap_or_default()]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("probe binary not found next to {}", exe.display()))
}

/// Fails the test unless running as root: these tests must not pass by skipping.
pub fn require_root() {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .expect("Uid line");
    assert_eq!(uid, "0", "end-to-end tests need root (CI runs them as root); they do not skip");
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);
static PORT_BLOCK: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

/// Ports per test process.
const PORT_BLOCK_SIZE: u16 = 100;
/// Test ports lie below the kernel's ephemeral range (32768-60999 by default), so no client
/// socket is ever given one: blocks of 100 from 10000 to 32699.
const PORT_BLOCKS: u16 = 227;

/// A port unique on this machine while this test process lives: tests of one binary run in
/// parallel threads and take the next port of the process's block; several test binaries
/// at once each hold their own block (an exclusive `flock` on a file per block, held until
/// the process ends, released by the kernel even if it crashes). Below the ephemeral range.
pub fn port() -> u16 {
    let base = *PORT_BLOCK.get_or_init(|| {
        let dir = std::env::temp_dir().join("beemesh-test-ports");
        std::fs::create_dir_all(&dir).expect("port lock directory");
        let start = (std::process::id() % PORT_BLOCKS as u32) as u16;
        for i in 0..PORT_BLOCKS {
            let block = (start + i) % PORT_BLOCKS;
            let file = std::fs::File::create(dir.join(block.to_string())).expect("port lock file");
            if let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                // Held for the life of the process.
                std::mem::forget(lock);
                return 10000 + block * PORT_BLOCK_SIZE;
            }
        }
        panic!("all {PORT_BLOCKS} test port blocks are taken by other test processes");
    });
    base + NEXT_PORT.fetch_add(1, Ordering::Relaxed) % PORT_BLOCK_SIZE
}

/// A non-loopback address of this host that pods reach as the host: slirp4netns runs with
/// `--disable-host-loopback`, so 10.0.2.2 no longer leads to the host's 127.0.0.1. A /32 on
/// `lo` (from 10.200.0.0/16, the test range; a fresh machine may have no other address we
/// know), added once, idempotently, shared by every test and test process, and left in
/// place (removing it under another running test would break that test). The agent counts
/// it among the host's addresses (`entity: host`).
pub const HOST_ADDR: &str = "10.200.255.1";

/// Makes sure [`HOST_ADDR`] is on `lo`; returns it.
pub fn host_addr() -> &'static str {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        require_root();
        let out = Command::new("ip")
            .args(["addr", "add", &format!("{HOST_ADDR}/32"), "dev", "lo"])
            .output()
            .expect("run ip (iproute2)");
        let err = String::from_utf8_lossy(&out.stderr);
        // Another test process may have added it first.
        assert!(
            out.status.success() || err.contains("File exists") || err.contains("already assigned"),
            "ip addr add {HOST_ADDR}/32 dev lo: {err}"
        );
    });
    HOST_ADDR
}

/// A running agent with private directories; stops it (SIGTERM) on drop.
#[derive(Debug)]
pub struct Agent {
    pub name: String,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    extra: Vec<(String, String)>,
    /// The network namespace (`/run/netns/NAME`) the agent runs in, if not this one.
    netns: Option<String>,
}

impl Agent {
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policy.d")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn cgroup_root(&self) -> PathBuf {
        cgroup2_mount().join(&self.name)
    }
    pub fn pin_dir(&self) -> PathBuf {
        PathBuf::from("/sys/fs/bpf/beemesh").join(&self.name)
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Starts an agent named after the test, with optional extra `BEEMESH_*` settings.
    pub fn start(test: &str, extra: &[(&str, &str)]) -> Result<Self> {
        Self::start_with_config(test, extra, "")
    }

    /// Like [`Agent::start`], with `config` (YAML) as the agent's config file.
    pub fn start_with_config(test: &str, extra: &[(&str, &str)], config: &str) -> Result<Self> {
        let mut agent = Self::prepare(test, extra, config)?;
        agent.spawn()?;
        Ok(agent)
    }

    /// An agent's directories and settings, not started yet ([`Agent::spawn`] starts it):
    /// for tests that put credentials in its state directory first.
    pub fn prepare(test: &str, extra: &[(&str, &str)], config: &str) -> Result<Self> {
        require_root();
        // Before the agent reads the host's addresses: the test address counts as `host`
        // from the first verdict on.
        host_addr();
        let name = format!("bmt-{test}-{}", std::process::id());
        let dir = tempfile::Builder::new().prefix(&format!("{name}-")).tempdir()?;
        // Pods run as host ids of their own ranges and reach their files (under the state
        // directory) and hostPath volumes through this directory: searchable, not listable.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
        }
        let agent = Self {
            name,
            dir,
            child: None,
            extra: extra.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            netns: None,
        };
        std::fs::create_dir_all(agent.policy_dir())?;
        std::fs::write(agent.dir.path().join("agent.yaml"), config)?;
        Ok(agent)
    }

    /// Runs the agent in the network namespace `/run/netns/NAME` (entered with `nsenter
    /// --net`, which keeps this mount namespace and so the cgroup and bpf mounts).
    pub fn in_netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_owned());
        self
    }

    /// `cmd` (a program and its environment, no arguments yet) run in this agent's network
    /// namespace, if it has one.
    fn in_own_netns(&self, cmd: Command) -> Command {
        let Some(ns) = &self.netns else { return cmd };
        let mut wrapped = Command::new("nsenter");
        wrapped.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(cmd.get_program());
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                wrapped.env(k, v);
            }
        }
        wrapped
    }

    /// A `beemesh-agent` command configured for this agent.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(agent_bin());
        c.env("BEEMESH_STATE_DIR", self.state_dir())
            .env("BEEMESH_POLICY_DIR", self.policy_dir())
            .env("BEEMESH_RUN_DIR", self.run_dir())
            .env("BEEMESH_CGROUP_NAME", &self.name)
            .env("BEEMESH_CONFIG", self.dir.path().join("agent.yaml"))
            // Many agents share this host's network namespace: any free mesh port.
            .env("BEEMESH_MESH_PORT", "0")
            .env("BEEMESH_TUNNEL_PORT", "0");
        for (k, v) in &self.extra {
            c.env(k, v);
        }
        c
    }

    /// (Re)starts the agent process and waits until its socket answers.
    pub fn spawn(&mut self) -> Result<()> {
        let config = self.dir.path().join("agent.yaml");
        if !config.exists() {
            std::fs::write(&config, "")?;
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let child = self
            .in_own_netns(self.cli())
            .arg("run")
            .env("RUST_LOG", "info,beemesh_agent=debug")
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn beemesh-agent run")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("agent exited at start ({status}):\n{}", self.log());
            }
            let out = self.cli().arg("status").output()?;
            if out.status.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("agent did not come up:\n{}", self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The log of the agent's last start without its DEBUG and TRACE lines: short enough to
    /// survive a CI log's truncation of a failure's output.
    pub fn last_run_log(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let start = lines.iter().rposition(|l| l.contains("host identity")).unwrap_or(0);
        let quiet = |l: &&&str| !(l.contains("DEBUG") || l.contains("TRACE"));
        lines[start..].iter().filter(quiet).copied().collect::<Vec<_>>().join("\n")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM and wait; returns the exit status success.
    pub fn stop(&mut self) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        bail!("agent ignored SIGTERM:\n{}", self.log())
    }

    /// SIGKILL: a crash, leaving pins, cgroups and state behind.
    pub fn crash(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Writes a policy file (atomically, as editors and config management do).
    pub fn write_policy(&self, file: &str, text: &str) -> Result<()> {
        let tmp = self.policy_dir().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.policy_dir().join(file))?;
        Ok(())
    }

    pub fn remove_policy(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.policy_dir().join(file))?;
        Ok(())
    }

    /// Current policy generation (bumps on every install).
    pub fn generation(&self) -> Result<u64> {
        let out = self.cli().args(["status", "-o", "json"]).output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("status json")?;
        v["policyGeneration"].as_u64().context("policyGeneration")
    }

    /// Runs `probe ARGS` as workload `name` with `identity` (labels `k=v`), in the agent's
    /// network namespace.
    pub fn workload(
        &self,
        name: &str,
        identity: &str,
        labels: &[&str],
        probe_args: &[&str],
    ) -> Result<Probe> {
        let mut c = self.in_own_netns(self.cli());
        c.args(["exec", "--identity", identity, "--name", name]);
        for l in labels {
            c.args(["--label", l]);
        }
        c.arg("--").arg(probe_bin()).args(probe_args);
        Probe::spawn(c)
    }

    /// Runs `probe ARGS` on the host, outside any workload.
    /// Imports the busybox test image as `reference`.
    pub fn import_busybox(&self, reference: &str) -> Result<()> {
        self.import_busybox_as(reference, "")
    }

    /// Imports the busybox test image as `reference`, its `User` set to `user`.
    pub fn import_busybox_as(&self, reference: &str, user: &str) -> Result<()> {
        let layout = self.dir.path().join(format!("image-{}", reference.replace([':', '/'], "-")));
        image::busybox_layout_as(&layout, reference, user)?;
        let out = self.cli().arg("image").arg("import").arg(&layout).output()?;
        if !out.status.success() {
            bail!("image import failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// Runs a CLI subcommand; returns (success, stdout, stderr).
    pub fn run_cli(&self, args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String)> {
        use std::io::Write;
        let mut cmd = self.cli();
        cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let mut input = child.stdin.take().context("stdin")?;
        if let Some(text) = stdin {
            input.write_all(text.as_bytes())?;
        }
        drop(input);
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// What a CLI command printed as JSON (`get ... -o json`); `Null` when it failed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        match self.run_cli(args, None) {
            Ok((true, out, _)) => serde_json::from_str(&out).unwrap_or_default(),
            _ => serde_json::Value::Null,
        }
    }

    /// Whether `get nodes` here shows every one of `hosts` Ready.
    pub fn sees_ready(&self, hosts: &[&str]) -> bool {
        self.run_cli(&["get", "nodes"], None).is_ok_and(|(ok, out, _)| {
            ok && hosts.iter().all(|h| out.lines().any(|l| l.starts_with(h) && l.contains(" Ready")))
        })
    }

    /// `apply -f -` with `yaml`; fails with the CLI's error otherwise.
    pub fn apply(&self, yaml: &str) -> Result<String> {
        let (ok, out, err) = self.run_cli(&["apply", "-f", "-"], Some(yaml))?;
        if !ok {
            bail!("apply failed: {err}");
        }
        Ok(out)
    }

    /// The pod as `get pods NAME -o json` shows it.
    pub fn pod(&self, name: &str) -> Result<serde_json::Value> {
        let (ok, out, err) = self.run_cli(&["get", "pods", name, "-o", "json"], None)?;
        if !ok {
            bail!("get pods failed: {err}");
        }
        Ok(serde_json::from_str(&out)?)
    }

    /// The pod's workload (its cgroup and directory name on the host).
    pub fn pod_workload(&self, name: &str) -> Result<String> {
        let pod = self.pod(name)?;
        pod["metadata"]["annotations"]["beemesh.io/workload"]
            .as_str()
            .map(str::to_owned)
            .context("pod without a workload annotation")
    }

    /// Waits until the pod is Ready.
    pub fn wait_ready(&self, name: &str, timeout: Duration) -> Result<()> {
        let secs = timeout.as_secs().max(1).to_string();
        let (ok, _, err) = self.run_cli(&["wait", name, "--for", "ready", "--timeout", &secs], None)?;
        if !ok {
            bail!(
                "pod {name} not ready: {err}\npod: {}\nagent log:\n{}",
                self.pod(name).map(|p| p.to_string()).unwrap_or_default(),
                self.log()
            );
        }
        Ok(())
    }

    pub fn host_probe(&self, probe_args: &[&str]) -> Result<Probe> {
        let mut c = Command::new(probe_bin());
        c.args(probe_args);
        Probe::spawn(c)
    }

    /// Flow records as JSON values.
    pub fn flows(&self) -> Result<Vec<serde_json::Value>> {
        let out = self.cli().args(["flows", "-n", "10000", "-o", "json"]).output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop();
        // `BEEMESH_TEST_KEEP_LOGS=DIR` keeps every agent's log, for chasing a rare failure.
        if let Some(dir) = std::env::var_os("BEEMESH_TEST_KEEP_LOGS") {
            let kept = PathBuf::from(dir).join(format!("{}-{}.log", self.name, std::process::id()));
            let _ = std::fs::copy(self.log_path(), kept);
        }
        // Last resort for a test that failed half-way; assertions on cleanup are explicit.
        // The pods of an agent that was killed (`crash`) outlive it: what is left in its
        // cgroup subtree is killed, and the subtree removed once the kernel says it is empty.
        let root = self.cgroup_root();
        if std::fs::write(root.join("cgroup.kill"), "1").is_ok() {
            let empty = || {
                std::fs::read_to_string(root.join("cgroup.events")).is_ok_and(|e| e.contains("populated 0"))
            };
            let _ = eventually(Duration::from_secs(5), empty);
            remove_cgroup_tree(&root);
        }
    }
}

/// Removes a cgroup directory and the cgroups under it, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

pub fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("procfs");
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("a cgroup2 mount")
}

/// A probe process whose stdout lines the test reads.
#[derive(Debug)]
pub struct Probe {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Probe {
    /// Runs `c` (a probe command line) and collects its stdout lines.
    pub fn spawn_command(c: &mut Command) -> Result<Self> {
        let mut child = c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
        Self::collect(&mut child).map(|lines| Self { child, lines })
    }

    fn collect(child: &mut Child) -> Result<std::sync::mpsc::Receiver<String>> {
        let stdout: ChildStdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(rx)
    }

    fn spawn(mut c: Command) -> Result<Self> {
        Self::spawn_command(&mut c)
    }

    /// Next output line within `timeout`.
    pub fn line(&self, timeout: Duration) -> Result<String> {
        self.lines
            .recv_timeout(timeout)
            .map_err(|e| anyhow::anyhow!("probe said nothing within {timeout:?}: {e}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait(mut self) -> Result<std::process::ExitStatus> {
        Ok(self.child.wait()?)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An `IdentityPolicy` named `name` that isolates `subject` inbound and lets in only the
/// identity globs `from`, on TCP `port`.
pub fn ingress_policy(name: &str, subject: &str, from: &[&str], port: u16) -> String {
    let peers: String = from.iter().map(|glob| format!("        - identity: \"{glob}\"\n")).collect();
    format!(
        "apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata:\n  name: {name}\nspec:\n  \
         selector:\n    identities: [\"{subject}\"]\n  ingress:\n    - from:\n{peers}      ports:\n        \
         - port: {port}\n"
    )
}

static NEXT_WORKLOAD: AtomicU16 = AtomicU16::new(0);

/// One connect attempt from a new workload with `identity`; returns the probe's line.
pub fn try_connect(agent: &Agent, identity: &str, addr: &str) -> Result<String> {
    let name = format!("try-{}", NEXT_WORKLOAD.fetch_add(1, Ordering::Relaxed));
    let p = agent.workload(&name, identity, &[], &["connect", addr, "1000"])?;
    let line = p.line(Duration::from_secs(10))?;
    p.wait()?;
    Ok(line)
}

/// `error 1 ...` is EPERM: the kernel program refused the connect.
pub const EPERM_LINE: &str = "error 1 ";

/// Connects to `addr` from a fresh process placed straight into the workload cgroup `cgroup`
/// (no agent involved: works while the agent is down) and returns the probe's line.
pub fn connect_in_cgroup(cgroup: &Path, addr: &str) -> Result<String> {
    let script = format!(
        "echo $$ > '{}' && exec '{}' connect {addr} 1000",
        cgroup.join("cgroup.procs").display(),
        probe_bin().display()
    );
    let out = Command::new("sh").args(["-c", &script]).output().context("spawn sh")?;
    let line = String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("").to_string();
    anyhow::ensure!(!line.is_empty(), "no answer from the probe: {}", String::from_utf8_lossy(&out.stderr));
    Ok(line)
}

/// Established TCP connections whose destination port is `port` (client ends), from `ss`.
pub fn established_to(port: u16) -> Result<usize> {
    let out = Command::new("ss")
        .args(["-Htn", "state", "established", "(", "dport", "=", &format!(":{port}"), ")"])
        .output()
        .context("run ss")?;
    anyhow::ensure!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.trim().is_empty()).count())
}

/// The `p` quantile (0..=1) of `v`, nearest rank; `v` must not be empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// VmRSS of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS line in {path}"))
}

/// CPU seconds the whole machine has spent busy (every process and the kernel, all cores),
/// from `/proc/stat`: what several hosts in namespaces of one machine cost together.
pub fn machine_busy_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let ticks: Vec<f64> = cpu.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0.0)).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 =
        ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    Ok(busy / 100.0)
}

/// User + system CPU seconds process `pid` (a number, or `self`) has used so far, from
/// `/proc/PID/stat` (all its threads).
pub fn cpu_seconds(pid: &str) -> Result<f64> {
    let tick = 100.0; // USER_HZ on Linux
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (in parentheses): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("utime")?.parse()?;
    let stime: f64 = fields.get(12).context("stime")?.parse()?;
    Ok((utime + stime) / tick)
}
