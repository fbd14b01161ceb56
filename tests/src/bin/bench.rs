//! `cargo xtask bench`: beemesh policy enforcement against its peers, printed as ratios.
//!
//! 1. Connection rate (one client, connect/accept/close on loopback): no programs, beemesh
//!    with 10,000 rules, nftables with the same 10,000 rules as a linear chain and as one
//!    set lookup. Rounds are interleaved and medians reported (the machine is noisy).
//! 2. Revocation latency: a grant file rewritten without its rules -> first denied connect,
//!    and -> teardown of an established connection, with 10,000 rules in force (p50/p99),
//!    idle and again while a background thread applies and deletes 50 pods in a loop.
//!
//! Needs root. `--quick` runs one short round (CI uses it to prove the bench works);
//! `--only revocation` (or `--only rate`) runs one of the two parts.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use beemesh_tests::{probe_bin, Agent, Probe};

const CLIENT: &str = "spiffe://beemesh.local/ns/bench/sa/client";
const RULES: usize = 10_000;
const T: Duration = Duration::from_secs(30);

struct Opts {
    rounds: usize,
    secs: f64,
    revocations: usize,
    /// Pods the churn thread applies and deletes per cycle.
    churn_pods: usize,
}

/// 9,998 egress rules for the client that never match (10.x.y.z/32 on some port); with the
/// two of `grant` that is 10,000. They sit in their own file, which is parsed once.
fn rules() -> String {
    let mut y = String::with_capacity(RULES * 80);
    y.push_str(
        "apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata:\n  name: bench-rules\nspec:\n",
    );
    y.push_str(&format!("  selector:\n    identities: [\"{CLIENT}\"]\n  egress:\n"));
    for i in 0..RULES - 2 {
        let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        y.push_str(&format!(
            "    - to: [{{cidr: 10.{a}.{b}.{c}/32}}]\n      ports: [{{port: {}}}]\n",
            1000 + i % 50_000
        ));
    }
    y
}

/// The two rules the benchmark traffic needs (none when `revoked`).
fn grant(rate_port: u16, hold_port: u16, revoked: bool) -> String {
    let mut y = String::new();
    y.push_str(
        "apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata:\n  name: bench-grant\nspec:\n",
    );
    y.push_str(&format!("  selector:\n    identities: [\"{CLIENT}\"]\n  egress:"));
    if revoked {
        y.push_str(" []\n");
    } else {
        y.push('\n');
        for port in [rate_port, hold_port] {
            y.push_str(&format!("    - to: [{{cidr: 127.0.0.1/32}}]\n      ports: [{{port: {port}}}]\n"));
        }
    }
    y
}

/// The same rules for nftables, as a linear chain or as one set.
fn nft_ruleset(rate_port: u16, set: bool) -> String {
    let mut r = String::with_capacity(RULES * 60);
    r.push_str("table inet bmbench {\n");
    let entries: Vec<(String, u16)> = (0..RULES - 1)
        .map(|i| {
            let (a, b, c) = ((i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
            (format!("10.{a}.{b}.{c}"), (1000 + i % 50_000) as u16)
        })
        .chain(std::iter::once(("127.0.0.1".to_string(), rate_port)))
        .collect();
    if set {
        r.push_str("  set allowed {\n    type ipv4_addr . inet_service\n    elements = {\n");
        let elems: Vec<String> = entries.iter().map(|(ip, p)| format!("      {ip} . {p}")).collect();
        r.push_str(&elems.join(",\n"));
        r.push_str("\n    }\n  }\n");
        r.push_str("  chain out {\n    type filter hook output priority 0; policy accept;\n");
        r.push_str("    ip daddr . tcp dport @allowed accept\n  }\n");
    } else {
        r.push_str("  chain out {\n    type filter hook output priority 0; policy accept;\n");
        for (ip, p) in &entries {
            r.push_str(&format!("    ip daddr {ip} tcp dport {p} accept\n"));
        }
        r.push_str("  }\n");
    }
    r.push_str("}\n");
    r
}

/// Removes a table left by an interrupted earlier run, if any.
fn nft_cleanup() {
    let _ = Command::new("nft").args(["delete", "table", "inet", "bmbench"]).stderr(Stdio::null()).status();
}

fn nft(input: Option<&str>, args: &[&str]) -> Result<()> {
    let mut c = Command::new("nft");
    c.args(args).stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().context("run nft (apt-get install nftables)")?;
    if let Some(text) = input {
        child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("nft {args:?} failed: {status}");
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// A cgroup2 sibling of the agent's subtree with no programs: baseline clients run there, at
/// the same depth as workloads, so the only difference measured is beemesh's programs.
struct PlainCgroup(std::path::PathBuf);

impl PlainCgroup {
    fn new() -> Result<Self> {
        let path = beemesh_tests::cgroup2_mount().join(format!("bmbench-plain-{}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }
}

impl Drop for PlainCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Connections per second of one client process: a workload of `agent`, or a process in
/// the plain cgroup.
fn rate(agent: Option<&Agent>, plain: &PlainCgroup, addr: &str, secs: f64, n: usize) -> Result<f64> {
    let ms = ((secs * 1000.0) as u64).to_string();
    let args = ["rate", addr, ms.as_str()];
    let p = match agent {
        Some(a) => a.workload(&format!("rate-{n}"), CLIENT, &[], &args)?,
        None => {
            let script = format!(
                "echo $$ > {}/cgroup.procs && exec {} rate {addr} {ms}",
                plain.0.display(),
                probe_bin().display()
            );
            Probe::spawn_command(Command::new("sh").args(["-c", &script]))?
        }
    };
    let line = p.line(T)?;
    let count: f64 =
        line.strip_prefix("count ").with_context(|| format!("rate probe said {line:?}"))?.parse()?;
    p.wait()?;
    Ok(count / secs)
}

fn server(close: bool) -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            if !close {
                held.push(c);
            }
        }
    });
    Ok(port)
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

/// Revocation latencies (to the first denied connect, to the teardown of an established
/// connection), in ms, over `opts.revocations` runs.
fn revocations(
    agent: &Agent,
    opts: &Opts,
    tag: &str,
    rate_port: u16,
    hold_port: u16,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let (rate_addr, hold_addr) = (format!("127.0.0.1:{rate_port}"), format!("127.0.0.1:{hold_port}"));
    let (mut to_deny, mut to_teardown) = (vec![], vec![]);
    for i in 0..opts.revocations {
        agent.write_policy("bench-grant.yaml", &grant(rate_port, hold_port, false))?;
        // Allowed again once a hold connection gets through (policy generations also move
        // with the churn's workloads, so they cannot tell when the grant is in force).
        let deadline = Instant::now() + T;
        let mut attempt = 0;
        let held = loop {
            let held = agent.workload(
                &format!("held-{tag}-{i}-{attempt}"),
                CLIENT,
                &[],
                &["hold-ts", &hold_addr],
            )?;
            if held.line(T)? == "connected" {
                break held;
            }
            if Instant::now() > deadline {
                bail!("hold connection refused while allowed:\n{}", agent.log());
            }
            attempt += 1;
        };
        let watcher =
            agent.workload(&format!("watch-{tag}-{i}"), CLIENT, &[], &["watch-deny", &rate_addr])?;
        assert_eq!(watcher.line(T)?, "watching");
        let t0 = unix_ns();
        agent.write_policy("bench-grant.yaml", &grant(rate_port, hold_port, true))?;
        let denied = watcher.line(T)?;
        let closed = held.line(T)?;
        let at = |line: &str, word: &str| -> Result<f64> {
            let ns: u128 = line
                .strip_prefix(word)
                .with_context(|| format!("expected {word:?}, got {line:?}"))?
                .trim()
                .parse()?;
            Ok(ns.saturating_sub(t0) as f64 / 1e6)
        };
        to_deny.push(at(&denied, "denied")?);
        to_teardown.push(at(&closed, "closed")?);
    }
    Ok((to_deny, to_teardown))
}

/// Applies `pods` busybox pods one `apply` at a time, then deletes them, over and over
/// until `stop`; returns how many pods went through.
fn churn(agent: &Agent, pods: usize, stop: &std::sync::atomic::AtomicBool) -> Result<usize> {
    let mut done = 0;
    for cycle in 0.. {
        let names: Vec<String> = (0..pods).map(|i| format!("churn-{cycle}-{i}")).collect();
        for name in &names {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            agent.apply(&format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: busybox:1, command: [sleep, '1000']}}\n"
            ))?;
        }
        // Deleted all at once, then waited for: the teardowns overlap.
        for name in &names {
            // A name the stop left unapplied is simply not found.
            let (ok, _, err) = agent.run_cli(&["delete", "--no-wait", "pod", name], None)?;
            if !ok && !err.contains("not found") {
                bail!("delete {name}: {err}");
            }
        }
        for name in &names {
            let (ok, _, err) = agent.run_cli(&["wait", name, "--for", "deleted", "--timeout", "60"], None)?;
            if !ok && !err.contains("not found") {
                bail!("pod {name} not deleted: {err}");
            }
            done += 1;
        }
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
    }
    Ok(done)
}

fn main() -> Result<()> {
    let keep = tempfile::tempdir()?;
    let result = run(&keep);
    if result.is_err() {
        if let Ok(log) = std::fs::read_to_string(keep.path().join("agent.log")) {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("agent log (last lines):");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
    }
    result
}

fn run(keep: &tempfile::TempDir) -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args.iter().position(|a| a == "--only").map(|i| args.get(i + 1).map(String::as_str));
    let (do_rate, do_revocation) = match only {
        None => (true, true),
        Some(Some("rate")) => (true, false),
        Some(Some("revocation")) => (false, true),
        Some(other) => bail!("--only takes rate or revocation, not {other:?}"),
    };
    if let Some(unknown) = args
        .iter()
        .enumerate()
        .find(|(i, a)| *a != "--quick" && *a != "--only" && (*i == 0 || args[i - 1] != "--only"))
    {
        bail!("unknown argument {:?} (bench [--quick] [--only rate|revocation])", unknown.1);
    }
    let opts = if quick {
        Opts { rounds: 1, secs: 1.0, revocations: 3, churn_pods: 5 }
    } else {
        Opts { rounds: 11, secs: 1.5, revocations: 100, churn_pods: 50 }
    };
    if quick {
        println!("(--quick: one short round to prove the bench runs; not a measurement)");
    }
    let rate_port = server(true)?;
    let hold_port = server(false)?;

    let flow_mode = std::env::var("BENCH_FLOW_EVENTS").unwrap_or_else(|_| "sampled".into());
    let agent = Agent::start("bench", &[("BEEMESH_FLOW_EVENTS", flow_mode.as_str())])?;
    let _ = std::fs::remove_file(keep.path().join("agent.log"));
    std::os::unix::fs::symlink(agent.log_path(), keep.path().join("agent.log"))?;
    // Read before writing: once parsing starts, a status call may only be answered after it.
    let generation = agent.generation()?;
    let t = Instant::now();
    agent.write_policy("bench-grant.yaml", &grant(rate_port, hold_port, false))?;
    agent.write_policy("bench-rules.yaml", &rules())?;
    if !beemesh_tests::eventually(T, || agent.generation().unwrap_or(0) > generation) {
        bail!("10,000-rule policy not loaded:\n{}", agent.log());
    }
    println!("10,000-rule policy file written to in force: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    nft_cleanup();

    if do_rate {
        rate_part(&agent, &opts, rate_port)?;
    }
    if do_revocation {
        revocation_part(&agent, &opts, rate_port, hold_port)?;
    }
    let kept = std::env::temp_dir().join("beemesh-bench-agent.log");
    if std::fs::copy(agent.log_path(), &kept).is_ok() {
        println!("\nagent log (with per-install timings): {}", kept.display());
    }
    Ok(())
}

/// Connection rates: no programs, beemesh, nftables linear and set, interleaved rounds.
fn rate_part(agent: &Agent, opts: &Opts, rate_port: u16) -> Result<()> {
    let rate_addr = format!("127.0.0.1:{rate_port}");
    println!(
        "\nconnection rate: connect/accept/close on loopback, 1 client, {} round(s) x {} s; medians (ratios: of per-round pairs)",
        opts.rounds, opts.secs
    );
    let plain = PlainCgroup::new()?;
    let (mut base, mut ours, mut linear, mut set) = (vec![], vec![], vec![], vec![]);
    for round in 0..opts.rounds {
        base.push(rate(None, &plain, &rate_addr, opts.secs, round)?);
        ours.push(rate(Some(agent), &plain, &rate_addr, opts.secs, round)?);
        nft(Some(&nft_ruleset(rate_port, false)), &["-f", "-"])?;
        linear.push(rate(None, &plain, &rate_addr, opts.secs, round)?);
        nft(None, &["delete", "table", "inet", "bmbench"])?;
        nft(Some(&nft_ruleset(rate_port, true)), &["-f", "-"])?;
        set.push(rate(None, &plain, &rate_addr, opts.secs, round)?);
        nft(None, &["delete", "table", "inet", "bmbench"])?;
    }
    // Ratios are taken per round (each pair ran back to back) and their median reported:
    // slow drift of the machine cancels out of a paired ratio.
    let paired = |a: &[f64], b: &[f64]| median(&mut a.iter().zip(b).map(|(x, y)| x / y).collect::<Vec<_>>());
    let (tax, vs_linear, vs_set) = (paired(&ours, &base), paired(&ours, &linear), paired(&ours, &set));
    let (base, ours, linear, set) =
        (median(&mut base), median(&mut ours), median(&mut linear), median(&mut set));
    println!("  no programs                          {base:>9.0} conn/s");
    println!(
        "  beemesh, 10,000 rules                {ours:>9.0} conn/s   policy tax ratio {tax:.3} (target >= 0.95)"
    );
    println!(
        "  nftables, 10,000 rules, linear       {linear:>9.0} conn/s   beemesh/nftables {vs_linear:.2}x (target > 1)"
    );
    println!("  nftables, 10,000 rules, one set      {set:>9.0} conn/s   beemesh/nftables-set {vs_set:.2}x");
    Ok(())
}

/// Revocation latency idle, then while pods churn.
fn revocation_part(agent: &Agent, opts: &Opts, rate_port: u16, hold_port: u16) -> Result<()> {
    println!("\nrevocation latency with the 10,000-rule file in force, {} runs", opts.revocations);
    let idle = revocations(agent, opts, "idle", rate_port, hold_port)?;
    for (label, v) in [
        ("file written -> first denied connect  ", &idle.0),
        ("file written -> established torn down ", &idle.1),
    ] {
        let (p50, p99) = (percentile(&mut v.clone(), 0.5), percentile(&mut v.clone(), 0.99));
        println!("  {label} p50 {p50:>6.1} ms   p99 {p99:>6.1} ms (target p99 <= 100 ms)");
    }

    println!(
        "\nrevocation latency while {} pods are applied and deleted in a loop, {} runs",
        opts.churn_pods, opts.revocations
    );
    agent.import_busybox("busybox:1")?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (churned, busy) = std::thread::scope(|scope| -> Result<_> {
        let churn = scope.spawn(|| churn(agent, opts.churn_pods, &stop));
        // The churn is under way (its first pod exists) before measuring.
        let started = beemesh_tests::eventually(T, || {
            agent.run_cli(&["get", "pods"], None).is_ok_and(|(_, out, _)| out.contains("churn-"))
        });
        let busy = if started {
            revocations(agent, opts, "churn", rate_port, hold_port)
        } else {
            Err(anyhow::anyhow!("the churn did not start"))
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let churned = churn.join().map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
        Ok((churned, busy?))
    })?;
    for (label, v, base) in [
        ("file written -> first denied connect  ", &busy.0, &idle.0),
        ("file written -> established torn down ", &busy.1, &idle.1),
    ] {
        let (p50, p99) = (percentile(&mut v.clone(), 0.5), percentile(&mut v.clone(), 0.99));
        let base99 = percentile(&mut base.clone(), 0.99);
        println!(
            "  {label} p50 {p50:>6.1} ms   p99 {p99:>6.1} ms   churn/idle p99 {:.2} (targets p99 <= 100 ms, ratio <= 1.5)",
            p99 / base99
        );
    }
    println!("  ({churned} pods applied and deleted meanwhile)");
    Ok(())
}
