//! Project tasks: `cargo xtask setup | build-ebpf | run | test | bench`. Each does its own
//! set-up on a fresh machine (it calls `scripts/setup.sh`), so the README's two commands
//! (`cargo xtask run`, `cargo xtask test`) work from a clean checkout.

include!("../../beemesh-ebpf/build_ebpf.rs");

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain and test packages (apt, bpf-linker); idempotent.
    Setup,
    /// Build the kernel programs (beemesh-ebpf) and print the object's path.
    BuildEbpf,
    /// Set up, build in release mode and run the agent on its embedded defaults.
    Run {
        /// Extra arguments for `beemesh-agent` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then: fmt check, clippy -D warnings, the whole test suite (needs root).
    Test {
        /// Skip fmt and clippy.
        #[arg(long)]
        no_lint: bool,
    },
    /// Set up, then run the benchmarks (needs root) and print their ratios.
    Bench {
        /// Arguments for the bench binary (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn is_root() -> bool {
    // Reading /proc keeps this crate free of libc and unsafe.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs `cmd`, failing with its command line if it fails.
fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("xtask: {shown}");
    let status = cmd.status().with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

fn privileged(program: &str) -> Command {
    if is_root() {
        Command::new(program)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(program);
        c
    }
}

fn setup() -> Result<()> {
    run(privileged(root().join("scripts/setup.sh").to_str().context("utf-8 path")?).current_dir(root()))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

/// Builds the agent and the benches' binaries (bench drives `probe` workloads) in release
/// mode and runs the benches: policy (`bench`), pods (`pod_bench`), the replicated
/// state in the simulator against a model of memberlist (`state_bench`, which takes only
/// `--quick`: 100 hosts instead of 1,000 and 10,000), the scheduler in the simulator
/// (`sched_bench`: 100,000 pods on 1,000 and 10,000 hosts; `--quick`: 2,000 on 100) and five
/// real agents in network namespaces (`mesh_bench`: convergence, memory, failure detection;
/// takes only `--quick`), and the tunnels against plain TCP on one veth pair
/// (`tunnel_bench`: throughput, forwarded throughput, request/response, new streams; takes
/// only `--quick`), and Services between pods on two real agents (`services_bench`: pod to
/// pod across / same host, revocation, memory with 1,000 live connections; takes only
/// `--quick`).
fn bench(args: &[String]) -> Result<()> {
    build_release()?;
    let release = target_dir().join("release");
    for name in ["bench", "pod_bench"] {
        let mut cmd = Command::new(release.join(name));
        cmd.args(args).env("BEEMESH_AGENT_BIN", release.join("beemesh-agent"));
        run(&mut cmd)?;
    }
    let quick = args.iter().filter(|a| *a == "--quick");
    let mut state = Command::new(release.join("state_bench"));
    state.args(quick.clone());
    run(&mut state)?;
    let mut sched = Command::new(release.join("sched_bench"));
    sched.args(quick.clone());
    run(&mut sched)?;
    let mut tunnel = Command::new(release.join("tunnel_bench"));
    tunnel.args(quick.clone());
    run(&mut tunnel)?;
    for name in ["services_bench", "mesh_bench"] {
        let mut cmd = Command::new(release.join(name));
        cmd.args(quick.clone()).env("BEEMESH_AGENT_BIN", release.join("beemesh-agent"));
        run(&mut cmd)?;
    }
    Ok(())
}

/// The release binaries: the agent, the benches and the test workloads.
fn build_release() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "beemesh-agent",
        "-p",
        "beemesh-tests",
        "-p",
        "beemesh-state",
        "--bins",
    ]))
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup(),
        Task::BuildEbpf => {
            let object = build_ebpf(&root().join("beemesh-ebpf")).map_err(anyhow::Error::msg)?;
            println!("{}", object.display());
            Ok(())
        }
        Task::Run { args } => {
            setup()?;
            run(cargo().args(["build", "--release", "-p", "beemesh-agent"]))?;
            let bin = target_dir().join("release/beemesh-agent");
            let mut cmd = privileged(bin.to_str().context("utf-8 path")?);
            cmd.arg("run").args(args);
            run(&mut cmd)
        }
        Task::Test { no_lint } => {
            if !is_root() {
                bail!("the test suite loads eBPF programs and creates cgroups: run it as root (sudo -E cargo xtask test)");
            }
            setup()?;
            if !no_lint {
                run(cargo().args(["fmt", "--all", "--check"]))?;
                run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
            }
            // The end-to-end tests drive the release agent, as users run it: five debug
            // agents and their pods on two cores starve each other for seconds (a debug
            // agent's failure detector then sees its peers late), and the release build is
            // needed for the benches anyway.
            build_release()?;
            let agent = target_dir().join("release/beemesh-agent");
            run(cargo().args(["test", "--workspace", "--no-fail-fast"]).env("BEEMESH_AGENT_BIN", agent))?;
            // The benchmarks must at least run: one quick pass, figures printed.
            bench(&["--quick".to_string()])
        }
        Task::Bench { args } => {
            if !is_root() {
                bail!("the benchmarks attach eBPF programs and nftables rules: run as root");
            }
            setup()?;
            bench(&args)
        }
    }
}
