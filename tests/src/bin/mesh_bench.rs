//! Mesh benchmark on real hosts, as root: five agents, each in a network namespace of its own
//! on one bridge (10.200.49.x), credentials from one offline root, bootstrapped from h1.
//! (1) Convergence: a ConfigMap applied on one host (the writer rotates), timed until every
//! other host lists it (admin sockets polled every 5 ms), p50/p95. (2) Resident memory
//! (VmRSS) of one agent before and after 1,000 ConfigMaps reach its state. (3) Failure
//! detection: one agent is killed (SIGKILL), timed until `get nodes` on each other host
//! shows it NotReady.
//!
//! `--quick` runs a few writes (CI uses it to prove the bench runs; not a measurement).

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use beemesh_agent::api::{Request, Response};
use beemesh_tests::lan::{ca_init, issue_host, Lan};
use beemesh_tests::{eventually, Agent};

const HOSTS: u8 = 5;
const SUBNET: u8 = 49;
/// Mesh start and attestation on a loaded 2-core machine.
const T: Duration = Duration::from_secs(60);
/// How often the hosts are asked whether a write has reached them.
const POLL: Duration = Duration::from_millis(5);
/// The ConfigMaps held for the memory figure.
const MEMORY_OBJECTS: usize = 1000;
/// Objects per `apply` while loading them.
const BATCH: usize = 100;

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    if let Some(unknown) = std::env::args().skip(1).find(|a| a != "--quick") {
        bail!("unknown argument {unknown:?} (mesh_bench [--quick])");
    }
    let writes = if quick { 10 } else { 50 };
    if quick {
        println!("(--quick: a few writes to prove the bench runs; not a measurement)");
    }
    // Declared first, dropped last: the agents stop before their namespaces go.
    let mut lan = Lan::new("bmb", SUBNET)?;
    let offline = tempfile::tempdir()?;
    let root = offline.path().join("root");
    let port = "4001";
    let bootstrap = format!("{}:{port}", lan.addr(1));
    let mut agents = Vec::new();
    let started = Instant::now();
    for n in 1..=HOSTS {
        let ns = lan.host(n)?;
        let config = if n > 1 { format!("mesh:\n  bootstrap: [\"{bootstrap}\"]\n") } else { String::new() };
        let mut agent =
            Agent::prepare(&format!("meshb{n}"), &[("BEEMESH_MESH_PORT", port)], &config)?.in_netns(&ns);
        if n == 1 {
            ca_init(&agent, &root)?;
        }
        issue_host(&agent, &root, &format!("h{n}"))?;
        agent.spawn()?;
        agents.push(agent);
    }
    let names: Vec<String> = (1..=HOSTS).map(|n| format!("h{n}")).collect();
    for (i, agent) in agents.iter().enumerate() {
        ensure!(
            eventually(T, || ready_nodes(agent) == names),
            "h{} lists Ready {:?}, not all {HOSTS}:\n{}",
            i + 1,
            ready_nodes(agent),
            agent.log()
        );
    }
    println!(
        "\nmesh of {HOSTS} real agents (network namespaces on one bridge): all Ready everywhere {:.1} s after the first start",
        started.elapsed().as_secs_f64()
    );

    convergence(&agents, writes)?;
    memory(&agents)?;
    failure_detection(&mut agents)
}

/// One admin request to `agent`'s socket, straight (no CLI process in the timing).
fn call(agent: &Agent, req: &Request) -> Result<Response> {
    let socket = agent.run_dir().join("agent.sock");
    let mut stream =
        beemesh_agent::sockpath::connect(&socket).with_context(|| format!("connect {}", socket.display()))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    ensure!(!answer.is_empty(), "{} closed without answering", socket.display());
    match serde_json::from_str(&answer)? {
        Response::Error { message } => bail!("{message}"),
        other => Ok(other),
    }
}

fn apply(agent: &Agent, text: String) -> Result<()> {
    match call(agent, &Request::Apply { file: "-".into(), text })? {
        Response::Applied { .. } => Ok(()),
        other => bail!("apply answered {other:?}"),
    }
}

/// Names of the ConfigMaps of `namespace` in `agent`'s state.
fn config_maps(agent: &Agent, namespace: &str) -> Result<Vec<String>> {
    let req = Request::ListObjects { kind: "ConfigMap".into(), namespace: Some(namespace.into()) };
    match call(agent, &req)? {
        Response::Objects { items } => Ok(items.into_iter().map(|o| o.name).collect()),
        other => bail!("list answered {other:?}"),
    }
}

fn config_map(namespace: &str, name: &str, value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {namespace}\ndata:\n  value: {value}\n"
    )
}

/// `get nodes` of `agent` (the CLI, as an operator sees it): (NAME, STATUS) rows.
fn nodes(agent: &Agent) -> Vec<(String, String)> {
    let Ok((true, out, _)) = agent.run_cli(&["get", "nodes"], None) else { return Vec::new() };
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.to_string(), cols.next()?.to_string()))
        })
        .collect()
}

fn ready_nodes(agent: &Agent) -> Vec<String> {
    nodes(agent).into_iter().filter(|(_, s)| s == "Ready").map(|(n, _)| n).collect()
}

/// Writes rotate over the hosts; each is timed from the apply request until the last other
/// host lists it (and until the first one does).
fn convergence(agents: &[Agent], writes: usize) -> Result<()> {
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for i in 0..writes {
        let writer = i % agents.len();
        let name = format!("conv-{i}");
        let t = Instant::now();
        apply(&agents[writer], config_map("default", &name, "converged"))?;
        let mut waiting: Vec<usize> = (0..agents.len()).filter(|j| *j != writer).collect();
        let mut seen_first = None;
        let deadline = t + T;
        while !waiting.is_empty() {
            let mut still = Vec::new();
            for j in waiting {
                if config_maps(&agents[j], "default")?.contains(&name) {
                    seen_first.get_or_insert(t.elapsed());
                } else {
                    still.push(j);
                }
            }
            waiting = still;
            if waiting.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!("{name} (applied on h{}) never reached h{}", writer + 1, waiting[0] + 1);
            }
            std::thread::sleep(POLL);
        }
        all.push(t.elapsed().as_secs_f64() * 1e3);
        first.push(seen_first.unwrap_or_default().as_secs_f64() * 1e3);
    }
    println!(
        "\nconvergence, {writes} ConfigMap writes rotating over the {} hosts (polled every {} ms)",
        agents.len(),
        POLL.as_millis()
    );
    let row = |label: &str, v: &[f64]| {
        println!("  {label:<34} p50 {:>7.1} ms   p95 {:>7.1} ms", percentile(v, 0.5), percentile(v, 0.95))
    };
    row("apply -> listed on a first host", &first);
    row(&format!("apply -> listed on all {} others", agents.len() - 1), &all);
    Ok(())
}

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS line in {path}"))
}

/// RSS of h2 before and after h1 applies 1,000 ConfigMaps and h2 lists all of them.
fn memory(agents: &[Agent]) -> Result<()> {
    let (writer, holder) = (&agents[0], &agents[1]);
    let pid = holder.pid().context("h2 runs")?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))?;
    ensure!(comm.trim() == "beemesh-agent", "pid {pid} is {comm:?}, not the agent");
    let before = rss_kib(pid)?;
    let value = "x".repeat(256);
    let t = Instant::now();
    for batch in 0..MEMORY_OBJECTS / BATCH {
        let docs: Vec<String> =
            (0..BATCH).map(|k| config_map("memory", &format!("cm-{}", batch * BATCH + k), &value)).collect();
        apply(writer, docs.join("---\n"))?;
    }
    ensure!(
        eventually(T, || config_maps(holder, "memory").is_ok_and(|v| v.len() == MEMORY_OBJECTS)),
        "h2 lists {:?} of {MEMORY_OBJECTS} ConfigMaps:\n{}",
        config_maps(holder, "memory").map(|v| v.len()),
        holder.log()
    );
    let loaded = t.elapsed();
    let after = rss_kib(pid)?;
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "\nresident memory of one agent (h2), {MEMORY_OBJECTS} ConfigMaps of 256-byte data applied on h1 in {} applies",
        MEMORY_OBJECTS / BATCH
    );
    println!("  {:<34} {:>7.1} MiB", "VmRSS before", mib(before));
    println!(
        "  {:<34} {:>7.1} MiB   (+{:.1} MiB, all listed on h2 {:.1} s after the first apply)",
        format!("VmRSS with {MEMORY_OBJECTS} ConfigMaps held"),
        mib(after),
        mib(after.saturating_sub(before)),
        loaded.as_secs_f64()
    );
    Ok(())
}

/// The last host is killed; each other host is timed until `get nodes` shows it NotReady.
fn failure_detection(agents: &mut [Agent]) -> Result<()> {
    let (victim, others) = agents.split_last_mut().context("hosts")?;
    let name = format!("h{HOSTS}");
    let t = Instant::now();
    victim.crash()?;
    let mut times: Vec<Option<Duration>> = vec![None; others.len()];
    let deadline = t + Duration::from_secs(180);
    while times.iter().any(Option::is_none) {
        for (i, agent) in others.iter().enumerate() {
            if times[i].is_none() && nodes(agent).iter().any(|(n, s)| *n == name && s == "NotReady") {
                times[i] = Some(t.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("{name} killed, still not NotReady everywhere after 180 s: {times:?}");
        }
        std::thread::sleep(POLL);
    }
    println!("\nfailure detection: {name} killed (SIGKILL), until `get nodes` shows it NotReady");
    let cells: Vec<String> = times
        .iter()
        .enumerate()
        .map(|(i, d)| format!("h{} {:.2} s", i + 1, d.unwrap_or_default().as_secs_f64()))
        .collect();
    println!("  {}", cells.join("   "));
    let secs: Vec<f64> = times.iter().map(|d| d.unwrap_or_default().as_secs_f64()).collect();
    println!("  slowest {:.2} s", secs.iter().cloned().fold(0.0, f64::max));
    Ok(())
}
