//! The memberlist model's tests: its parameters, convergence, cost and failure detection.

use super::*;

#[test]
fn retransmit_limit_and_suspicion_follow_memberlist() {
    assert_eq!(MlConfig::lan(100, 1).retransmit_limit(), 12);
    assert_eq!(MlConfig::lan(1_000, 1).retransmit_limit(), 16);
    assert_eq!(MlConfig::lan(10_000, 1).retransmit_limit(), 20);
    assert_eq!(MlConfig::lan(1_000, 1).suspicion_min_ms(), 12_000);
    assert_eq!(MlConfig::lan(10_000, 1).suspicion_min_ms(), 16_000);
    assert_eq!(MlConfig::lan(5, 1).suspicion_min_ms(), 4_000);
}

#[test]
fn a_write_converges_and_costs_its_retransmit_limit() {
    let hosts = 200;
    let mut ml = Memberlist::new(MlConfig::lan(hosts, 3));
    // Past every host's first push-pull, so what follows is gossip and probes only.
    ml.run_for(31_000);
    let (before, before_gossip) = (ml.traffic(), ml.gossip_packets);
    assert_eq!(ml.transmits, 0);
    let w = ml.write(0, 512);
    let end = ml.now() + 10_000;
    assert!(ml.run_until(end, |m| m.writes()[0].everywhere_at_ms.is_some()));
    let took = ml.writes()[w].everywhere_at_ms.unwrap_or(0) - ml.writes()[w].at_ms;
    // log(N) gossip rounds of 200 ms.
    assert!((200..3_000).contains(&took), "{took}");
    // Once every queue has drained, each host sent the write exactly retransmit_limit
    // times, in gossip packets of gossip_nodes per round or piggybacked on probes.
    ml.run_for(10_000);
    assert!(ml.hosts.iter().all(|h| h.queue.is_empty()));
    let limit = u64::from(ml.config().retransmit_limit());
    assert_eq!(ml.transmits, hosts as u64 * limit);
    // Most go in gossip packets: about limit / gossip_nodes rounds of 3 packets per host.
    let gossip = ml.gossip_packets - before_gossip;
    assert!(gossip <= hosts as u64 * limit && gossip > hosts as u64 * limit * 7 / 10, "{gossip}");
    // And no gossip packet went out without a broadcast in it: the rest are probes.
    let probes = ml.traffic().messages - before.messages - gossip;
    assert!(probes < 30 * hosts as u64, "{probes}");
}

#[test]
fn bench_converges_and_detects_a_dead_host() {
    let r = bench(100, 5, 512, 42);
    assert_eq!(r.not_converged, 0, "{r:?}");
    assert!(r.messages_per_write_per_host_above_idle > 4.0, "{r:?}");
    let d = detect(100, 9, 120_000);
    let (Some(suspect), Some(first), Some(all)) = (d.first_suspect_ms, d.first_dead_ms, d.all_dead_ms) else {
        panic!("not detected: {d:?}");
    };
    // Probed within a few seconds, then the suspicion timeout (8 s at 100 hosts, up to 6x
    // that without confirmations), then gossip.
    assert!(suspect < 10_000 && first >= suspect + 8_000 && all >= first && all < 60_000, "{d:?}");
}

#[test]
fn deterministic_for_a_seed() {
    assert_eq!(bench(50, 3, 512, 5), bench(50, 3, 512, 5));
}
