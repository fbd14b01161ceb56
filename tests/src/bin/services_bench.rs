//! Services benchmark on real hosts, as root: two agents, each in a network namespace of its
//! own on one bridge (10.200.60.x), pods from a busybox image the bench builds.
//!
//! (1) Pod to pod: a client pod on h1 downloads a file (busybox `wget` from busybox `httpd`)
//! through a Service whose pod runs on h1 (the agent forwards inside the host, no tunnel) and
//! through one whose pod runs on h2 (client -> slirp4netns -> h1's agent -> QUIC -> h2's agent
//! -> the server pod's namespace). Ratio across / same host, with the machine's CPU seconds
//! per GB beside each (both hosts share the machine's two cores, so every process counts).
//! Rounds interleaved, medians; each download's time is its `exec` less an empty `exec`'s.
//! (2) Revocation: a pod on h1 holds a connection to an echo pod on h2; a policy.d file that
//! denies it is written on h2; timed from the write until h2's agent logs the cut (the log
//! line's timestamp), p50/p99 over the rounds.
//! (3) Memory: VmRSS of both agents before and with 1,000 live forwarded connections from
//! h1's pods to h2's (one tunnel connection, 1,000 streams).
//!
//! `--quick` runs one small round of each (CI proves the bench runs; not a measurement).

use std::time::{Duration, Instant, SystemTime};

use anyhow::{ensure, Context, Result};
use beemesh_tests::lan::{joined_mesh, start_all};
use beemesh_tests::{eventually, machine_busy_seconds, percentile, rss_kib, Agent};

const SUBNET: u8 = 60;
/// Mesh start, pod start and each wait on a loaded 2-core machine.
const T: Duration = Duration::from_secs(120);
/// The live connections of the memory figure.
const STREAMS: usize = 1000;

/// What one run does.
#[derive(Clone, Copy)]
struct Plan {
    rounds: usize,
    file_mib: u32,
    revocations: usize,
    streams: usize,
}

/// An httpd pod on `node` serving a file `big` of `mib` MiB (zeros) on port 8080, labelled
/// `app: NAME`, behind a Service NAME on port 80.
fn file_server(name: &str, node: &str, mib: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {name}}}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sh, -c, 'mkdir -p /www && dd if=/dev/zero of=/www/big bs=1048576 count={mib} 2>/dev/null && exec httpd -f -p 8080 -h /www']\n    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n---\n"
    )
}

/// An idle pod on h1 labelled `role: ROLE`, running `script`.
fn client(name: &str, role: &str, script: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{role: {role}}}}}\nspec:\n  nodeName: h1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sh, -c, '{script}']\n---\n"
    )
}

/// The echo pod on h2 (`app: db`) behind Service `db` port 80.
const ECHO: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: db, labels: {app: db}}\nspec:\n  nodeName: h2\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [nc, -ll, -p, '8080', -e, cat]\n    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  selector: {app: db}\n  ports: [{port: 80, targetPort: 8080}]\n---\n";

/// h2's policy.d file that takes the holder's permission away (only `role: other` may
/// reach the echo pod).
const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-from-other}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: other}}}]\n    ports: [{port: 8080}]\n";

/// Keeps a connection to `db` open, printing each echoed line; reconnects when cut.
const HOLD: &str =
    "while true; do (while true; do echo ping; sleep 0.05; done | nc db 80); echo CUT; sleep 0.1; done";

/// Seconds `script` took inside `pod` on `agent` (the `exec` round trip included).
fn timed_exec(agent: &Agent, pod: &str, script: &str) -> Result<(f64, String)> {
    let started = Instant::now();
    let (ok, out, err) = agent.run_cli(&["exec", pod, "--", "sh", "-c", script], None)?;
    let took = started.elapsed().as_secs_f64();
    ensure!(ok, "exec in {pod}: {out}{err}");
    Ok((took, out))
}

/// One download of `service`'s file from the client pod: (seconds, machine CPU seconds).
fn download(h1: &Agent, service: &str, empty: f64) -> Result<(f64, f64)> {
    let cpu = machine_busy_seconds()?;
    let script = format!("timeout 120 wget -q -O /dev/null http://{service}/big; echo rc=$?");
    let (took, out) = timed_exec(h1, "client", &script)?;
    let cpu = machine_busy_seconds()? - cpu;
    ensure!(out.contains("rc=0"), "download from {service}: {out}");
    Ok(((took - empty).max(1e-3), cpu))
}

fn throughput(h1: &Agent, plan: Plan) -> Result<()> {
    let bytes = f64::from(plan.file_mib) * 1048576.0;
    let (mut same, mut across, mut same_cpu, mut across_cpu) = (vec![], vec![], vec![], vec![]);
    for _ in 0..plan.rounds {
        let empty = (0..3).map(|_| timed_exec(h1, "client", "true").map(|t| t.0)).sum::<Result<f64>>()? / 3.0;
        let (t, cpu) = download(h1, "near", empty)?;
        same.push(bytes * 8.0 / t);
        same_cpu.push(cpu / (bytes / 1e9));
        let (t, cpu) = download(h1, "far", empty)?;
        across.push(bytes * 8.0 / t);
        across_cpu.push(cpu / (bytes / 1e9));
    }
    let (s, a) = (percentile(&same, 0.5), percentile(&across, 0.5));
    println!(
        "  pod to pod ({} MiB wget, {} rounds): same host {:.2} Gbit/s ({:.2} CPU s/GB)   across hosts {:.2} Gbit/s ({:.2} CPU s/GB)   ratio {:.3} (target >= 0.6)",
        plan.file_mib,
        plan.rounds,
        s / 1e9,
        percentile(&same_cpu, 0.5),
        a / 1e9,
        percentile(&across_cpu, 0.5),
        a / s
    );
    Ok(())
}

/// The timestamp at the start of an agent's log line (its colours removed).
fn line_time(line: &str) -> Option<SystemTime> {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... m
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let stamp = plain.split_whitespace().next()?;
    let t = time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.into())
}

fn revocation(h1: &Agent, h2: &Agent, plan: Plan) -> Result<()> {
    const CUT: &str = "revoked: forwarded flows cut";
    let log = || h1.run_cli(&["logs", "holder"], None).map(|(_, o, _)| o).unwrap_or_default();
    let mut took = Vec::new();
    for round in 0..plan.revocations {
        if round > 0 {
            h2.remove_policy("deny.yaml")?;
        }
        // Connected again: two more echoes than before the permission came back.
        let echoes = log().matches("ping").count();
        ensure!(
            eventually(T, || log().matches("ping").count() >= echoes + 2),
            "the holder never reconnected: {}",
            log()
        );
        let cuts = h2.log().matches(CUT).count();
        let written = SystemTime::now();
        h2.write_policy("deny.yaml", DENY)?;
        ensure!(
            eventually(T, || h2.log().matches(CUT).count() > cuts),
            "h2 never cut the stream:\n{}",
            h2.log()
        );
        let agent_log = h2.log();
        let line = agent_log.lines().filter(|l| l.contains(CUT)).nth(cuts).context("the cut's line")?;
        let at = line_time(line).with_context(|| format!("no timestamp in {line:?}"))?;
        took.push(at.duration_since(written).unwrap_or_default().as_secs_f64() * 1e3);
    }
    h2.remove_policy("deny.yaml")?;
    println!(
        "  revocation (policy.d write on h2 -> h2 cuts the live tunnel stream, {} rounds): p50 {:.1} ms   p99 {:.1} ms   max {:.1} ms (target p99 <= 100 ms)",
        took.len(),
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        percentile(&took, 1.0)
    );
    Ok(())
}

/// Open descriptors of process `pid`.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn memory(h1: &Agent, h2: &Agent, plan: Plan) -> Result<()> {
    let pids = [h1.pid().context("h1 runs")?, h2.pid().context("h2 runs")?];
    let before = [rss_kib(pids[0])?, rss_kib(pids[1])?];
    let fds = pids.map(open_fds);
    // Each connection: a captured socket in h1's agent, a socket into the echo pod in h2's.
    let script =
        format!("for i in $(seq {}); do (sleep 3600 | nc db 80) & done; exec sleep 3600", plan.streams);
    h1.apply(&client("many", "good", &script))?;
    ensure!(
        eventually(T, || (0..2).all(|i| open_fds(pids[i]) >= fds[i] + plan.streams)),
        "the agents never held {} connections: fds {:?} -> {:?}",
        plan.streams,
        fds,
        pids.map(open_fds)
    );
    let with = [rss_kib(pids[0])?, rss_kib(pids[1])?];
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "  agent memory (VmRSS) with {} live forwarded connections: h1 {:.1} -> {:.1} MiB (+{:.1})   h2 {:.1} -> {:.1} MiB (+{:.1})",
        plan.streams,
        mib(before[0]),
        mib(with[0]),
        mib(with[0]) - mib(before[0]),
        mib(before[1]),
        mib(with[1]),
        mib(with[1]) - mib(before[1])
    );
    Ok(())
}

fn main() -> Result<()> {
    beemesh_tests::require_root();
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = if quick {
        Plan { rounds: 1, file_mib: 16, revocations: 2, streams: 50 }
    } else {
        Plan { rounds: 5, file_mib: 256, revocations: 30, streams: STREAMS }
    };
    let (_lan, _offline, mut agents) = joined_mesh("svb", SUBNET, 2)?;
    start_all(&mut agents, T)?;
    for a in &agents {
        a.import_busybox("busybox:1")?;
    }
    let (h1, h2) = (&agents[0], &agents[1]);
    h1.apply(&format!(
        "{}{}{}{}{}",
        file_server("near", "h1", plan.file_mib),
        file_server("far", "h2", plan.file_mib),
        ECHO,
        client("client", "good", "exec sleep 3600"),
        client("holder", "good", HOLD),
    ))?;
    for (agent, pod) in [(h1, "near"), (h2, "far"), (h2, "db"), (h1, "client"), (h1, "holder")] {
        agent.wait_ready(pod, T)?;
    }
    // Both Services answer (their files written) before anything is timed.
    for service in ["near", "far"] {
        let probe = format!("timeout 60 wget -q -O /dev/null http://{service}/big; echo rc=$?");
        ensure!(
            eventually(T, || timed_exec(h1, "client", &probe).is_ok_and(|(_, out)| out.contains("rc=0"))),
            "{service} never answered:\n{}\n{}",
            h1.log(),
            h2.log()
        );
    }
    println!("services bench (two real agents, pods over slirp4netns, one machine)");
    throughput(h1, plan)?;
    revocation(h1, h2, plan)?;
    memory(h1, h2, plan)?;
    Ok(())
}
