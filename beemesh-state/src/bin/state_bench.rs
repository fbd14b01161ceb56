//! `state_bench`: beemesh-state's replica against a model of HashiCorp memberlist (LAN
//! defaults) in the same simulator: write -> held by every host (p50/p95), messages and bytes
//! per write per host, the idle background, and the time to find a dead host (beemesh-state's
//! failure detector against memberlist's probes and suspicion), with what detection costs and
//! its false verdicts under 1% loss. Run by `cargo xtask bench`; `--quick` runs 100 hosts only
//! (CI).

use std::process::ExitCode;
use std::time::Instant;

use beemesh_state::sim::liveness::{self, LiveBenchReport, LiveDetection};
use beemesh_state::sim::memberlist::{self, Detection};
use beemesh_state::sim::{self, BenchReport};

const WRITES: usize = 20;
const BODY_BYTES: usize = 512;
const SEED: u64 = 42;
/// Runs (seeds) of a lone write.
const ALONE_RUNS: u64 = 3;

fn main() -> ExitCode {
    let mut quick = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            other => {
                eprintln!("state_bench: unknown argument {other:?} (usage: state_bench [--quick])");
                return ExitCode::from(64);
            }
        }
    }
    // (hosts, memberlist kills, detector kills, seconds under 1% loss)
    let sizes: &[(usize, u64, u64, u64)] =
        if quick { &[(100, 3, 5, 20)] } else { &[(1_000, 5, 20, 120), (10_000, 3, 20, 60)] };
    println!(
        "state bench: simulator, 1-20 ms per hop, no loss; {WRITES} writes of {BODY_BYTES} B from random \
         hosts 100 ms apart, seed {SEED}"
    );
    println!("beemesh-state: gossip mesh of 6 neighbours, anti-entropy every 1 s");
    println!(
        "memberlist model (LAN defaults): gossip every 200 ms to 3 peers, retransmit 4 * ceil(log10(N+1)), \
         push-pull every 30 s, probe every 1 s, suspicion multiplier 4"
    );
    println!(
        "beemesh-state failure detector: heartbeat every 1 s to 3 ring-hashed watchers, suspect after 2.5 s, \
         verdict on 2 watchers' quorum after 0.5 s more (or 3 s alone), broadcast on the gossip mesh"
    );
    for &(hosts, kills, live_kills, lossy_seconds) in sizes {
        let started = Instant::now();
        let b = sim::bench(hosts, WRITES, BODY_BYTES, SEED);
        let m = memberlist::bench(hosts, WRITES, BODY_BYTES, SEED);
        // One write with nothing else in flight: memberlist packs its broadcasts into 1400-byte
        // packets, so a burst of writes queues behind itself; a lone write shows its best case.
        let alone: Vec<(BenchReport, memberlist::MlBenchReport)> = (1..=ALONE_RUNS)
            .map(|seed| {
                (sim::bench(hosts, 1, BODY_BYTES, seed), memberlist::bench(hosts, 1, BODY_BYTES, seed))
            })
            .collect();
        let detections: Vec<Detection> =
            (0..kills).map(|k| memberlist::detect(hosts, SEED + k, 300_000)).collect();
        print_comparison(&b, &m);
        print_alone(&alone);
        let ours: Vec<LiveDetection> =
            (0..live_kills).map(|k| liveness::detect(hosts, SEED + k, 60_000)).collect();
        let live = liveness::bench(hosts, SEED, lossy_seconds);
        print_detection(hosts, &detections, &ours, &live, &m);
        println!("  ({hosts} hosts simulated in {:.1} s)", started.elapsed().as_secs_f64());
        if ours.iter().any(|d| d.all_dead_ms.is_none()) {
            eprintln!("state_bench: a dead host was not found by every host within 60 s: {ours:?}");
            return ExitCode::FAILURE;
        }
        if b.not_converged > 0 || m.not_converged > 0 {
            eprintln!("state_bench: writes did not reach every host: beemesh {b:?}, memberlist {m:?}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn print_comparison(b: &BenchReport, m: &memberlist::MlBenchReport) {
    println!();
    println!("{} hosts (memberlist retransmit limit {})", b.hosts, m.retransmit_limit);
    println!("  {:<44} {:>14} {:>14} {:>16}", "measure", "beemesh", "memberlist", "beemesh/memberlist");
    let row = |name: &str, ours: f64, theirs: f64, unit: &str, decimals: usize| {
        let ratio = if theirs > 0.0 { format!("{:.2}", ours / theirs) } else { "-".to_string() };
        println!(
            "  {name:<44} {:>14} {:>14} {ratio:>16}",
            format!("{ours:.decimals$}{unit}"),
            format!("{theirs:.decimals$}{unit}")
        );
    };
    row("write -> every host, p50", b.convergence_p50_ms as f64, m.convergence_p50_ms as f64, " ms", 0);
    row("write -> every host, p95", b.convergence_p95_ms as f64, m.convergence_p95_ms as f64, " ms", 0);
    row(
        "messages per write per host (above idle)",
        b.messages_per_write_per_host_above_idle,
        m.messages_per_write_per_host_above_idle,
        "",
        1,
    );
    row(
        "bytes per write per host (above idle)",
        b.bytes_per_write_per_host_above_idle,
        m.bytes_per_write_per_host_above_idle,
        "",
        0,
    );
    row(
        "messages per write per host (all)",
        b.messages_per_write_per_host,
        m.messages_per_write_per_host,
        "",
        1,
    );
    row("bytes per write per host (all)", b.bytes_per_write_per_host, m.bytes_per_write_per_host, "", 0);
    row(
        "idle messages per host per s",
        b.idle_messages_per_host_per_s,
        m.idle_messages_per_host_per_s,
        "",
        1,
    );
    row("idle bytes per host per s", b.idle_bytes_per_host_per_s, m.idle_bytes_per_host_per_s, "", 0);
}

fn print_alone(runs: &[(BenchReport, memberlist::MlBenchReport)]) {
    let median = |mut v: Vec<f64>| -> f64 {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let ours = |f: fn(&BenchReport) -> f64| median(runs.iter().map(|(b, _)| f(b)).collect());
    let theirs = |f: fn(&memberlist::MlBenchReport) -> f64| median(runs.iter().map(|(_, m)| f(m)).collect());
    let (b_ms, m_ms) = (ours(|b| b.convergence_max_ms as f64), theirs(|m| m.convergence_max_ms as f64));
    let (b_msgs, m_msgs) = (
        ours(|b| b.messages_per_write_per_host_above_idle),
        theirs(|m| m.messages_per_write_per_host_above_idle),
    );
    let (b_bytes, m_bytes) =
        (ours(|b| b.bytes_per_write_per_host_above_idle), theirs(|m| m.bytes_per_write_per_host_above_idle));
    println!("  one write alone, median of {} seeds:", runs.len());
    println!(
        "  {:<44} {:>14} {:>14} {:>16.2}",
        "  write -> every host",
        format!("{b_ms:.0} ms"),
        format!("{m_ms:.0} ms"),
        b_ms / m_ms.max(1.0)
    );
    println!(
        "  {:<44} {b_msgs:>14.1} {m_msgs:>14.1} {:>16.2}",
        "  messages per write per host (above idle)",
        b_msgs / m_msgs.max(f64::MIN_POSITIVE)
    );
    println!(
        "  {:<44} {b_bytes:>14.0} {m_bytes:>14.0} {:>16.2}",
        "  bytes per write per host (above idle)",
        b_bytes / m_bytes.max(f64::MIN_POSITIVE)
    );
}

fn print_detection(
    hosts: usize,
    runs: &[Detection],
    ours: &[LiveDetection],
    live: &LiveBenchReport,
    m: &memberlist::MlBenchReport,
) {
    let sorted = |mut v: Vec<u64>| {
        v.sort_unstable();
        v
    };
    let first = sorted(runs.iter().filter_map(|d| d.first_dead_ms).collect());
    let all = sorted(runs.iter().filter_map(|d| d.all_dead_ms).collect());
    let our_first = sorted(ours.iter().filter_map(|d| d.first_dead_ms).collect());
    let our_all = sorted(ours.iter().filter_map(|d| d.all_dead_ms).collect());
    let missed = runs.len() - all.len();
    let min_ms = memberlist::MlConfig::lan(hosts, 0).suspicion_min_ms();
    println!(
        "  failure detection: beemesh {} kills, memberlist model {} kills (its suspicion timeout {min_ms}..{} ms){}",
        ours.len(),
        runs.len(),
        min_ms * 6,
        if missed > 0 { format!(", {missed} not found by every host within 300 s") } else { String::new() },
    );
    let row = |name: &str, ours: f64, theirs: f64, unit: &str, decimals: usize| {
        let ratio = if theirs > 0.0 { format!("{:.2}", ours / theirs) } else { "-".to_string() };
        println!(
            "  {name:<44} {:>14} {:>14} {ratio:>16}",
            format!("{ours:.decimals$}{unit}"),
            format!("{theirs:.decimals$}{unit}")
        );
    };
    let pct = |v: &[u64], p: f64| memberlist::percentile(v, p) as f64;
    row("  dead host -> declared by the first, p50", pct(&our_first, 0.5), pct(&first, 0.5), " ms", 0);
    row("  dead host -> declared by the first, p95", pct(&our_first, 0.95), pct(&first, 0.95), " ms", 0);
    row("  dead host -> held dead by every host, p50", pct(&our_all, 0.5), pct(&all, 0.5), " ms", 0);
    row("  dead host -> held dead by every host, p95", pct(&our_all, 0.95), pct(&all, 0.95), " ms", 0);
    row(
        "  idle messages per host per s (all)",
        live.idle_messages_per_host_per_s,
        m.idle_messages_per_host_per_s,
        "",
        1,
    );
    row(
        "  idle bytes per host per s (all)",
        live.idle_bytes_per_host_per_s,
        m.idle_bytes_per_host_per_s,
        "",
        0,
    );
    println!(
        "  {:<44} {:>14} {:>14}",
        format!("  under {:.0}% loss for {} s:", live.loss * 100.0, live.lossy_seconds),
        "",
        "(not modelled)"
    );
    println!("  {:<44} {:>14}", "    live hosts declared dead (false verdicts)", live.false_downs);
    println!("  {:<44} {:>14}", "    suspicions raised (cleared without verdict)", live.lossy_suspicions);
    println!(
        "  {:<44} {:>14}",
        "    messages, bytes per host per s",
        format!("{:.1}, {:.0}", live.lossy_messages_per_host_per_s, live.lossy_bytes_per_host_per_s)
    );
}
