//! The memberlist model's figures for `state_bench`: the write workload of [`crate::sim::bench`] and
//! the time to find a dead host.

use super::{Memberlist, MlConfig};
use crate::rng::Rng;

/// Figures of one [`bench`] run of the memberlist model.
#[derive(Debug, Clone, PartialEq)]
pub struct MlBenchReport {
    pub hosts: usize,
    pub writes: usize,
    pub body_bytes: usize,
    pub retransmit_limit: u32,
    pub convergence_p50_ms: u64,
    pub convergence_p95_ms: u64,
    pub convergence_max_ms: u64,
    pub not_converged: usize,
    /// Everything sent from the first write until every host has spent its retransmit budget
    /// (probes and push-pull included), per write per host.
    pub messages_per_write_per_host: f64,
    pub bytes_per_write_per_host: f64,
    /// The same with the idle background (probes, push-pull) taken out.
    pub messages_per_write_per_host_above_idle: f64,
    pub bytes_per_write_per_host_above_idle: f64,
    /// Background of a converged cluster (probes, push-pull), per host per second, over one
    /// push-pull interval.
    pub idle_messages_per_host_per_s: f64,
    pub idle_bytes_per_host_per_s: f64,
}

/// The same workload as [`crate::sim::bench`]: `writes` writes of `body_bytes` from random hosts
/// 100 ms apart, after 2 s of warm-up; how long until every host holds each, and what it costs.
pub fn bench(hosts: usize, writes: usize, body_bytes: usize, seed: u64) -> MlBenchReport {
    let mut ml = Memberlist::new(MlConfig::lan(hosts, seed));
    ml.run_for(2_000);
    let (t0, before) = (ml.now(), ml.traffic());
    let mut rng = Rng::new(seed ^ 0x5eed);
    for _ in 0..writes {
        let host = rng.below(hosts);
        ml.write(host, body_bytes as u64);
        ml.run_for(100);
    }
    let end = ml.now() + 120_000;
    ml.run_until(end, |m| m.writes().iter().all(|w| w.everywhere_at_ms.is_some()));
    // Hosts go on sending a write after everyone holds it, until its retransmit budget is
    // spent: that is part of its cost.
    while ml.now() < end && ml.hosts.iter().any(|h| !h.queue.is_empty()) {
        ml.run_for(ml.config().gossip_interval_ms);
    }
    let (t1, after) = (ml.now(), ml.traffic());
    let idle_ms = ml.config().push_pull_interval_ms;
    ml.run_for(idle_ms);
    let idle = ml.traffic();
    let idle_msgs_per_s = (idle.messages - after.messages) as f64 * 1000.0 / idle_ms as f64;
    let idle_bytes_per_s = (idle.bytes - after.bytes) as f64 * 1000.0 / idle_ms as f64;
    let msgs = (after.messages - before.messages) as f64;
    let bytes = (after.bytes - before.bytes) as f64;
    let window = (t1 - t0) as f64 / 1000.0;
    let per = (writes.max(1) * hosts) as f64;
    let mut times: Vec<u64> =
        ml.writes().iter().filter_map(|w| w.everywhere_at_ms.map(|t| t - w.at_ms)).collect();
    times.sort_unstable();
    MlBenchReport {
        hosts,
        writes,
        body_bytes,
        retransmit_limit: ml.config().retransmit_limit(),
        convergence_p50_ms: percentile(&times, 0.50),
        convergence_p95_ms: percentile(&times, 0.95),
        convergence_max_ms: times.last().copied().unwrap_or(0),
        not_converged: writes - times.len(),
        messages_per_write_per_host: msgs / per,
        bytes_per_write_per_host: bytes / per,
        messages_per_write_per_host_above_idle: (msgs - idle_msgs_per_s * window) / per,
        bytes_per_write_per_host_above_idle: (bytes - idle_bytes_per_s * window) / per,
        idle_messages_per_host_per_s: idle_msgs_per_s / hosts as f64,
        idle_bytes_per_host_per_s: idle_bytes_per_s / hosts as f64,
    }
}

/// The `p` quantile of sorted `times` (0 when empty).
pub fn percentile(times: &[u64], p: f64) -> u64 {
    if times.is_empty() {
        return 0;
    }
    let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
    times[i]
}

/// How long the memberlist model takes to find one dead host, from its death (simulated ms).
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// The first host suspects it (its probe went unanswered).
    pub first_suspect_ms: Option<u64>,
    /// The first host declares it dead (its suspicion timed out).
    pub first_dead_ms: Option<u64>,
    /// Every live host holds it dead.
    pub all_dead_ms: Option<u64>,
}

/// Kills a random host after 2 s of warm-up and runs until every live host holds it dead (at
/// most `max_ms`).
pub fn detect(hosts: usize, seed: u64, max_ms: u64) -> Detection {
    let mut ml = Memberlist::new(MlConfig::lan(hosts, seed));
    ml.run_for(2_000);
    let victim = Rng::new(seed ^ 0xdead).below(hosts);
    ml.kill(victim);
    let end = ml.now() + max_ms;
    ml.run_until(end, |m| m.all_dead_ms.is_some());
    Detection {
        first_suspect_ms: ml.first_suspect_ms,
        first_dead_ms: ml.first_dead_ms,
        all_dead_ms: ml.all_dead_ms,
    }
}
