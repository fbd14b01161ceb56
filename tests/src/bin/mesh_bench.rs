//! Mesh benchmark on real hosts, as root: five agents, each in a network namespace of its own
//! on one bridge (10.200.49.x), credentials from one offline root, bootstrapped from h1.
//! (1) Convergence: a ConfigMap applied on one host (the writer rotates), timed until every
//! other host lists it (admin sockets polled every 5 ms), p50/p95. (2) Resident memory
//! (VmRSS) of one agent before and after 1,000 ConfigMaps reach its state. (3) Failure
//! detection: one agent is killed (SIGKILL), timed until `get nodes` on each other host
//! shows it NotReady. (4) Image distribution (full run only): one image with 200 MiB of random
//! data imported on h1, pods pinned to h2..h5 so that all four pull it at once, timed until
//! all four hold it (pulled, verified, unpacked); against the same bytes sent with plain TCP,
//! one stream from h1 to each of the four at once (as four `scp`s would), written to disk.
//!
//! (5) Scheduling: a Deployment of 20 replicas applied on h1 (the image imported on every
//! host first), each pod timed from the apply until h1 lists it placed and until it is
//! Running, p50/p95; in (3), the killed host's replicas are timed until they run elsewhere.
//!
//! `--quick` runs a few writes (CI uses it to prove the bench runs; not a measurement).
//! `--tcp-recv PORT FILE` / `--tcp-send FILE ADDR:PORT...` are the TCP baseline's two ends,
//! run by the bench itself inside the hosts' namespaces.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use beemesh_agent::api::{Request, Response};
use beemesh_tests::lan::{joined_mesh, Lan};
use beemesh_tests::{eventually, percentile, rss_kib, Agent};

const HOSTS: u8 = 5;
const LAN_TAG: &str = "bmb";
/// The image distributed in the image bench: random data, so no compression helps.
const IMAGE_BYTES: u64 = 200 << 20;
/// The TCP baseline's port, in each host's own namespace.
const TCP_PORT: u16 = 5301;
const SUBNET: u8 = 49;
/// Mesh start and attestation on a loaded 2-core machine.
const T: Duration = Duration::from_secs(60);
/// How often the hosts are asked whether a write has reached them.
const POLL: Duration = Duration::from_millis(5);
/// The ConfigMaps held for the memory figure.
const MEMORY_OBJECTS: usize = 1000;
/// Objects per `apply` while loading them.
const BATCH: usize = 100;
/// The scheduling part's Deployment.
const REPLICAS: usize = 20;
/// How often pods are listed while timing them.
const POD_POLL: Duration = Duration::from_millis(20);

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--tcp-recv") => return tcp_recv(&args[1..]),
        Some("--tcp-send") => return tcp_send(&args[1..]),
        _ => {}
    }
    let quick = std::env::args().any(|a| a == "--quick");
    if let Some(unknown) = std::env::args().skip(1).find(|a| a != "--quick") {
        bail!("unknown argument {unknown:?} (mesh_bench [--quick])");
    }
    let writes = if quick { 10 } else { 50 };
    if quick {
        println!("(--quick: a few writes to prove the bench runs; not a measurement)");
    }
    // Declared first, dropped last: the agents stop before their namespaces go.
    let (lan, _offline, mut agents) = joined_mesh(LAN_TAG, SUBNET, HOSTS)?;
    let started = Instant::now();
    for agent in &mut agents {
        agent.spawn()?;
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
    if !quick {
        images(&agents, &lan)?;
    }
    scheduling(&agents)?;
    failure_detection(&mut agents)
}

/// The scheduling part's pods as h1 lists them: (name, node, Running).
fn sched_pods(agent: &Agent) -> Result<Vec<(String, String, bool)>> {
    match call(agent, &Request::ListPods { namespace: Some("default".into()) })? {
        Response::Pods { items } => Ok(items
            .into_iter()
            .filter(|p| p.name.starts_with("spread-"))
            .map(|p| (p.name, p.host, p.status == "Running"))
            .collect()),
        other => bail!("list pods answered {other:?}"),
    }
}

/// A Deployment of [`REPLICAS`] applied on h1: per pod, apply -> placed and apply -> Running.
fn scheduling(agents: &[Agent]) -> Result<()> {
    for agent in agents {
        agent.import_busybox("busybox:1")?;
    }
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: spread}}\nspec:\n  replicas: {REPLICAS}\n  selector: {{matchLabels: {{app: spread}}}}\n  template:\n    metadata: {{labels: {{app: spread}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: c\n        image: busybox:1\n        resources: {{requests: {{cpu: 10m, memory: 8Mi}}}}\n        command: [sh, -c, \"trap 'exit 0' TERM; sleep 100000 & wait\"]\n"
    );
    let t = Instant::now();
    apply(&agents[0], manifest)?;
    let (mut placed, mut running) = (BTreeMap::new(), BTreeMap::new());
    let deadline = t + Duration::from_secs(120);
    while running.len() < REPLICAS {
        for (name, node, up) in sched_pods(&agents[0])? {
            if !node.is_empty() {
                placed.entry(name.clone()).or_insert_with(|| (t.elapsed(), node));
            }
            if up {
                running.entry(name).or_insert_with(|| t.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("{} of {REPLICAS} replicas Running after 120 s", running.len());
        }
        std::thread::sleep(POD_POLL);
    }
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    let to_placed: Vec<f64> = placed.values().map(|(d, _)| ms(d)).collect();
    let to_running: Vec<f64> = running.values().map(ms).collect();
    let mut per_host: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, node) in placed.values() {
        *per_host.entry(node.as_str()).or_default() += 1;
    }
    println!("\nscheduling: a Deployment of {REPLICAS} replicas applied on h1 (h1's pod list every 20 ms)");
    println!(
        "  apply -> placed   p50 {:.0} ms   p95 {:.0} ms",
        percentile(&to_placed, 0.5),
        percentile(&to_placed, 0.95)
    );
    println!(
        "  apply -> Running  p50 {:.0} ms   p95 {:.0} ms   all {:.0} ms",
        percentile(&to_running, 0.5),
        percentile(&to_running, 0.95),
        to_running.iter().cloned().fold(0.0, f64::max)
    );
    println!("  per host: {per_host:?}");
    Ok(())
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
    // Its replicas of the scheduling part (timed below until they run elsewhere).
    let lost: Vec<String> =
        sched_pods(&others[0])?.into_iter().filter(|(_, node, _)| *node == name).map(|(n, _, _)| n).collect();
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
    // Its replicas of the scheduling part, placed again and Running on the others.
    while !lost.is_empty() {
        let pods = sched_pods(&others[0])?;
        let elsewhere = pods.iter().filter(|(_, node, up)| *up && *node != name).count();
        if elsewhere == REPLICAS {
            println!(
                "  its {} replicas Running on the other hosts {:.2} s after the kill",
                lost.len(),
                t.elapsed().as_secs_f64()
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("{name}'s replicas not Running elsewhere 180 s after the kill: {pods:?}");
        }
        std::thread::sleep(POD_POLL);
    }
    Ok(())
}

/// The namespace of host `n` of the bench's lan (`Lan` names them `<tag><pid>-h<n>`).
fn host_ns(n: u8) -> String {
    format!("{LAN_TAG}{}-h{n}", std::process::id() % 10000)
}

/// `pulls_done` of `agent`'s `status`.
fn pulls_done(agent: &Agent) -> u64 {
    match call(agent, &Request::Status) {
        Ok(Response::Status(s)) => s.images.map_or(0, |i| i.pulls_done),
        _ => 0,
    }
}

/// One image of [`IMAGE_BYTES`] random data imported on h1, pulled by the four others at once;
/// then the same bytes over plain TCP from h1 to the four at once.
fn images(agents: &[Agent], lan: &Lan) -> Result<()> {
    let work = tempfile::tempdir()?;
    let layout = work.path().join("big");
    let (payload, size) = beemesh_tests::image::busybox_layout_with_payload(&layout, "big:1", IMAGE_BYTES)?;
    let (ok, out, err) = agents[0].run_cli(&["image", "import", layout.to_str().context("utf-8")?], None)?;
    ensure!(ok, "import on h1: {out}{err}");
    let pullers = &agents[1..];
    let before: Vec<u64> = pullers.iter().map(pulls_done).collect();
    let cpu_before = agents_cpu(agents)?;
    let t = Instant::now();
    let pods: Vec<String> = (2..=HOSTS)
        .map(|n| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: big-h{n}\nspec:\n  nodeName: h{n}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: big:1\n    command: [sleep, \"1000\"]\n"
            )
        })
        .collect();
    apply(&agents[0], pods.join("---\n"))?;
    let mut times: Vec<Option<Duration>> = vec![None; pullers.len()];
    let deadline = t + Duration::from_secs(600);
    while times.iter().any(Option::is_none) {
        for (i, a) in pullers.iter().enumerate() {
            if times[i].is_none() && pulls_done(a) > before[i] {
                times[i] = Some(t.elapsed());
            }
        }
        ensure!(Instant::now() < deadline, "the image never reached every host: {times:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mesh_secs = times.iter().map(|d| d.unwrap_or_default().as_secs_f64()).fold(0.0, f64::max);
    let cpu = agents_cpu(agents)? - cpu_before;
    // What one puller logged: time fetching vs verifying and unpacking.
    let h2_log: Vec<String> = pullers[0]
        .log()
        .lines()
        .filter(|l| l.contains("image pulled") || l.contains("blob verified"))
        .map(|l| {
            let plain = strip_ansi(l);
            plain.split_once("INFO").map_or(plain.as_str(), |(_, rest)| rest).trim().to_owned()
        })
        .collect();
    let per_host: Vec<String> = times
        .iter()
        .enumerate()
        .map(|(i, d)| format!("h{} {:.2} s", i + 2, d.unwrap_or_default().as_secs_f64()))
        .collect();
    let fetched: Vec<String> = pullers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| match call(a, &Request::Status) {
            Ok(Response::Status(s)) => s.images.map(|im| {
                let from: Vec<String> = im
                    .fetched
                    .iter()
                    .map(|(n, t)| format!("{n} {:.0} MiB", t.bytes as f64 / 1048576.0))
                    .collect();
                format!("h{}: {}", i + 2, from.join(", "))
            }),
            _ => None,
        })
        .collect();

    // The same payload over plain TCP: h1 -> h2..h5 at once, one stream each.
    let file = layout.join("blobs/sha256").join(payload.trim_start_matches("sha256:"));
    let exe = std::env::current_exe()?;
    let mut receivers = Vec::new();
    for n in 2..=HOSTS {
        let out = work.path().join(format!("recv-h{n}"));
        let mut cmd = std::process::Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", host_ns(n))).arg("--").arg(&exe).args([
            "--tcp-recv",
            &TCP_PORT.to_string(),
            out.to_str().context("utf-8")?,
        ]);
        let r = beemesh_tests::Probe::spawn_command(&mut cmd)?;
        let said = r.line(T)?;
        ensure!(said == "listening", "receiver on h{n} said {said:?}");
        receivers.push(r);
    }
    let targets: Vec<String> = (2..=HOSTS).map(|n| format!("{}:{TCP_PORT}", lan.addr(n))).collect();
    let t = Instant::now();
    let status = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", host_ns(1)))
        .arg("--")
        .arg(&exe)
        .arg("--tcp-send")
        .arg(&file)
        .args(&targets)
        .status()?;
    ensure!(status.success(), "tcp sender failed");
    for r in receivers {
        let said = r.line(Duration::from_secs(600))?;
        ensure!(said == format!("received {size}"), "a receiver said {said:?}");
    }
    let tcp_secs = t.elapsed().as_secs_f64();

    let mb = |secs: f64| (pullers.len() as u64 * size) as f64 / 1e6 / secs;
    println!(
        "\nimage distribution: one image of {} MiB random data on h1, pulled by the {} others at once (until each holds it: fetched, verified, unpacked)",
        size >> 20,
        pullers.len()
    );
    println!(
        "  beemesh peer to peer   {mesh_secs:>7.2} s  {:>7.1} MB/s delivered   ({})",
        mb(mesh_secs),
        per_host.join("   ")
    );
    println!("  plain TCP, 4 streams   {tcp_secs:>7.2} s  {:>7.1} MB/s delivered   (one stream from h1 to each, written to disk)", mb(tcp_secs));
    println!("  ratio (TCP time / beemesh time) {:.2}", tcp_secs / mesh_secs);
    println!("  fetched from: {}", fetched.join("; "));
    println!(
        "  CPU of the 5 agents while pulling: {cpu:.1} s ({:.1} s per GB delivered; 2 cores shared)",
        cpu / ((pullers.len() as u64 * size) as f64 / 1e9)
    );
    for l in h2_log {
        println!("  h2: {l}");
    }
    // The pods go before h5 is killed: a killed agent's pods outlive it.
    for n in 2..=HOSTS {
        let req = Request::DeletePod { namespace: "default".into(), name: format!("big-h{n}") };
        match call(&agents[0], &req)? {
            Response::Applied { .. } => {}
            other => bail!("delete answered {other:?}"),
        }
    }
    for (i, a) in pullers.iter().enumerate() {
        let name = format!("big-h{}", i + 2);
        let (ok, _, err) = a.run_cli(&["wait", &name, "--for", "deleted", "--timeout", "60"], None)?;
        ensure!(ok, "{name} not deleted: {err}");
    }
    Ok(())
}

/// `--tcp-recv PORT FILE`: accepts one connection, writes what it sends to FILE, prints
/// `received N` at EOF.
fn tcp_recv(args: &[String]) -> Result<()> {
    let [port, file] = args else { bail!("--tcp-recv PORT FILE") };
    let listener = std::net::TcpListener::bind(("0.0.0.0", port.parse::<u16>()?))?;
    println!("listening");
    std::io::stdout().flush()?;
    let (mut conn, _) = listener.accept()?;
    let mut out = std::fs::File::create(file)?;
    let n = std::io::copy(&mut conn, &mut out)?;
    println!("received {n}");
    Ok(())
}

/// `--tcp-send FILE ADDR:PORT...`: one thread per address streams FILE to it.
fn tcp_send(args: &[String]) -> Result<()> {
    let Some((file, targets)) = args.split_first() else { bail!("--tcp-send FILE ADDR:PORT...") };
    let threads: Vec<_> = targets
        .iter()
        .cloned()
        .map(|addr| {
            let file = file.clone();
            std::thread::spawn(move || -> Result<()> {
                let mut conn = std::net::TcpStream::connect(&addr)?;
                let mut src = std::fs::File::open(&file)?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = src.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    conn.write_all(&buf[..n])?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    }
    Ok(())
}

/// User + system CPU seconds of every agent process so far.
fn agents_cpu(agents: &[Agent]) -> Result<f64> {
    let mut total = 0.0;
    for a in agents {
        let pid = a.pid().context("agent runs")?;
        total += beemesh_tests::cpu_seconds(&pid.to_string())?;
    }
    Ok(total)
}

/// `line` without terminal colour sequences (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
