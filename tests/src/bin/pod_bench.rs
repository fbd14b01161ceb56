//! Pod benchmark, as root: (1) pod start latency, `apply` to Ready, of beemesh against
//! `podman run -d --network slirp4netns` of the same busybox image, interleaved, p50/p95 and
//! their ratios (target: beemesh at most 0.5 of podman); (2) pod-to-host TCP throughput
//! through slirp4netns, beemesh pod against the same busybox sender in a bare
//! `unshare` + slirp4netns namespace without the agent (target ratio >= 0.95).
//!
//! `--quick` runs a few short rounds (CI uses it to prove the bench works; not a measurement).
//! `--start-only` skips (2). `BEEMESH_BENCH_KEEP_LOG=FILE` keeps the agent's debug log there.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use beemesh_tests::{host_addr, image, percentile, Agent};

struct Opts {
    pods: usize,
    rounds: usize,
    mib: usize,
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let opts =
        if quick { Opts { pods: 5, rounds: 1, mib: 64 } } else { Opts { pods: 50, rounds: 7, mib: 1024 } };
    if quick {
        println!("(--quick: a few short rounds to prove the bench runs; not a measurement)");
    }
    let agent = Agent::start("podbench", &[])?;
    // podman names an image pulled from a layout after its path, which must be lowercase.
    let lower = std::env::temp_dir().join(format!("bmbench-{}", std::process::id()));
    let layout = lower.join("busybox");
    image::busybox_layout(&layout, "1")?;
    let out = agent.cli().args(["image", "import"]).arg(&layout).output()?;
    if !out.status.success() {
        bail!("import: {}", String::from_utf8_lossy(&out.stderr));
    }
    let result = Podman::new(agent.dir.path(), &layout).and_then(|podman| {
        start_latency(&agent, &podman, &opts)?;
        if std::env::args().any(|a| a == "--start-only") {
            return Ok(());
        }
        throughput(&agent, &opts)
    });
    let _ = std::fs::remove_dir_all(&lower);
    // To read where the time went: the agent's debug log outlives its temporary directory.
    if let Some(keep) = std::env::var_os("BEEMESH_BENCH_KEEP_LOG") {
        std::fs::copy(agent.log_path(), keep)?;
    }
    result
}

/// podman with private storage and the settings this machine needs (machine notes).
struct Podman {
    args: Vec<String>,
    conf: std::path::PathBuf,
    image: String,
}

impl Podman {
    fn new(dir: &Path, layout: &Path) -> Result<Self> {
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=20000:20000\"]\n[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
        )?;
        let root = dir.join("podman");
        let args = vec![
            "--root".into(),
            root.join("storage").display().to_string(),
            "--runroot".into(),
            root.join("run").display().to_string(),
        ];
        let mut p = Self { args, conf, image: String::new() };
        let out = p
            .cmd()
            .arg("pull")
            .arg("-q")
            .arg(format!("oci:{}:1", layout.display()))
            .output()
            .context("run podman (apt-get install podman)")?;
        if !out.status.success() {
            bail!("podman pull: {}", String::from_utf8_lossy(&out.stderr));
        }
        p.image = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(p)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", &self.conf).args(&self.args).stdin(Stdio::null());
        c
    }
}

fn pod_yaml(name: &str, command: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  restartPolicy: Never\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sh, -c, {command:?}]\n"
    )
}

fn start_latency(agent: &Agent, podman: &Podman, opts: &Opts) -> Result<()> {
    println!("\npod start latency, {} pods each, interleaved (busybox, sleep 1000)", opts.pods);
    let (mut ours, mut theirs, mut applies) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..opts.pods {
        let name = format!("lat-{i}");
        let t = Instant::now();
        // sh handles SIGTERM (as PID 1 of the container's pid namespace, sleep would not):
        // deleting it between rounds does not wait out the grace period.
        agent.apply(&pod_yaml(&name, "trap 'exit 0' TERM; sleep 1000 & wait"))?;
        applies.push(t.elapsed().as_secs_f64() * 1e3);
        let (ok, _, err) = agent.run_cli(&["wait", &name, "--for", "ready", "--timeout", "30"], None)?;
        if !ok {
            bail!("pod {name} not ready: {err}\n{}", agent.log());
        }
        ours.push(t.elapsed().as_secs_f64() * 1e3);
        agent.run_cli(&["delete", "pod", &name], None)?;

        let t = Instant::now();
        let out = podman
            .cmd()
            .args([
                "run",
                "-d",
                "--ulimit",
                "nproc=20000:20000",
                "--ulimit",
                "nofile=20000:20000",
                "--network",
                "slirp4netns",
                "--name",
                &name,
                &podman.image,
                "sleep",
                "1000",
            ])
            .output()?;
        if !out.status.success() {
            bail!("podman run: {}", String::from_utf8_lossy(&out.stderr));
        }
        theirs.push(t.elapsed().as_secs_f64() * 1e3);
        podman
            .cmd()
            .args(["rm", "-f", "-t", "0", &name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
    }
    let (o50, o95, p50, p95) = (
        percentile(&ours, 0.5),
        percentile(&ours, 0.95),
        percentile(&theirs, 0.5),
        percentile(&theirs, 0.95),
    );
    println!("  beemesh apply -> Ready          p50 {o50:>7.1} ms   p95 {o95:>7.1} ms");
    println!(
        "    of which apply returned       p50 {:>7.1} ms   p95 {:>7.1} ms",
        percentile(&applies, 0.5),
        percentile(&applies, 0.95)
    );
    println!("  podman run -d (slirp4netns)     p50 {p50:>7.1} ms   p95 {p95:>7.1} ms");
    println!(
        "  ratio beemesh/podman            p50 {:.3}   p95 {:.3}   (target <= 0.5)",
        o50 / p50,
        o95 / p95
    );
    Ok(())
}

/// Accepts one connection on the host's test address (pods do not reach the host's
/// loopback) and reports bytes/s from its first byte to EOF.
fn sink() -> Result<(u16, mpsc::Receiver<Result<f64>>)> {
    let listener = TcpListener::bind((host_addr(), 0))?;
    let port = listener.local_addr()?.port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = (|| -> Result<f64> {
            let (mut s, _) = listener.accept()?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            let n = s.read(&mut buf)?;
            let t = Instant::now();
            total += n as u64;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            Ok(total as f64 / t.elapsed().as_secs_f64())
        })();
        let _ = tx.send(result);
    });
    Ok((port, rx))
}

fn sender(port: u16, mib: usize) -> String {
    format!(
        "until ip addr show tap0 2>/dev/null | grep -q 10.0.2.100; do sleep 0.02; done; dd if=/dev/zero bs=1048576 count={mib} 2>/dev/null | nc {} {port}",
        host_addr()
    )
}

fn through_pod(agent: &Agent, round: usize, mib: usize) -> Result<f64> {
    let (port, rx) = sink()?;
    let name = format!("tput-{round}");
    agent.apply(&pod_yaml(&name, &sender(port, mib)))?;
    let rate = rx.recv_timeout(Duration::from_secs(120)).context("no transfer from the pod")??;
    agent.run_cli(&["delete", "pod", &name], None)?;
    Ok(rate)
}

/// The same sender in a bare namespace: unshare + slirp4netns, no agent, no cgroups.
fn through_bare(mib: usize) -> Result<f64> {
    let (port, rx) = sink()?;
    let mut ns = Command::new("unshare")
        .args(["--user", "--map-root-user", "--net", "--fork", "--kill-child", "/bin/busybox", "sh", "-c"])
        .arg(sender(port, mib))
        .env("PATH", "/bin")
        .stdin(Stdio::null())
        .spawn()?;
    // The unshare process itself moves into the new network namespace: wait for that.
    let ours = std::fs::read_link("/proc/self/ns/net")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_link(format!("/proc/{}/ns/net", ns.id()))? == ours {
        if Instant::now() > deadline {
            bail!("unshare did not make a network namespace");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // The same slirp4netns settings as the agent's.
    let mut slirp = Command::new("slirp4netns")
        .args([
            "--configure",
            "--mtu=65520",
            "--enable-sandbox",
            "--enable-seccomp",
            "--disable-host-loopback",
        ])
        .arg(ns.id().to_string())
        .arg("tap0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let rate = rx.recv_timeout(Duration::from_secs(120)).context("no transfer from the bare namespace");
    let _ = ns.wait();
    let _ = slirp.kill();
    let _ = slirp.wait();
    rate?
}

fn throughput(agent: &Agent, opts: &Opts) -> Result<()> {
    println!(
        "\npod -> host TCP throughput through slirp4netns (MTU 65520), {} MiB per run, {} round(s), interleaved",
        opts.mib, opts.rounds
    );
    let (mut ours, mut bare, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..opts.rounds {
        let b = through_bare(opts.mib)?;
        let o = through_pod(agent, round, opts.mib)?;
        ratios.push(o / b);
        ours.push(o);
        bare.push(b);
    }
    let gbit = |v: &[f64]| percentile(v, 0.5) * 8.0 / 1e9;
    println!("  bare unshare + slirp4netns      {:>6.2} Gbit/s", gbit(&bare));
    println!("  beemesh pod                     {:>6.2} Gbit/s", gbit(&ours));
    println!(
        "  ratio beemesh/bare (median of per-round pairs) {:.3}   (target >= 0.95)",
        percentile(&ratios, 0.5)
    );
    Ok(())
}
