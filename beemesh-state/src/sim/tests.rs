//! Many hosts under faults: convergence within a bound, no acknowledged write lost, the same
//! conflict resolution everywhere, tombstones that win and are collected.

use super::*;

fn key(i: usize) -> Key {
    Key::new("ConfigMap", "default", format!("k{i}"))
}

fn faulty() -> Faults {
    Faults { loss: 0.3, duplicate: 0.2, min_delay_ms: 1, max_delay_ms: 300 }
}

/// After the faults: the same stamps everywhere, every acknowledged write held (or beaten by
/// a newer stamp), and every host agreeing on each key's winner.
fn assert_consistent(sim: &Sim) {
    assert!(sim.converged(), "roots differ");
    let reference = sim.replica(0).snapshot();
    for h in 1..sim.hosts() {
        if sim.hosts() <= 50 {
            assert_eq!(sim.replica(h).snapshot(), reference, "host {h} differs from host 0");
        }
    }
    for w in sim.writes().iter().filter(|w| w.acked) {
        for h in 0..sim.hosts() {
            let held = sim.replica(h).object(&w.key).map(|o| &o.stamp);
            assert!(held.is_some_and(|s| *s >= w.stamp), "acked write {:?} lost on host {h}", w.key);
        }
    }
    assert_eq!(sim.rejected, 0, "an honest host's message was refused");
}

/// Writes from random hosts to a few keys (so they conflict), a fifth of them deletes.
fn random_writes(sim: &mut Sim, rng: &mut Rng, n: usize, keys: usize) {
    for i in 0..n {
        let host = rng.below(sim.hosts());
        if sim.is_alive(host) {
            let body = (i % 5 != 4).then(|| Bytes::from(format!("{{\"write\":{i}}}")));
            sim.write(host, key(rng.below(keys)), body).expect("valid write");
        }
        sim.run_for(rng.below(200) as u64);
    }
}

#[test]
fn three_hosts_converge_after_loss_duplication_reordering_partition_and_crash() {
    let mut sim = Sim::new(SimConfig { faults: faulty(), ..SimConfig::new(3, 1) });
    let mut rng = Rng::new(11);
    random_writes(&mut sim, &mut rng, 20, 6);
    sim.partition(|h| u32::from(h == 2));
    random_writes(&mut sim, &mut rng, 20, 6);
    sim.crash(1);
    random_writes(&mut sim, &mut rng, 20, 6);
    sim.restart(1).expect("restart");
    // Concurrent writes to one key on both sides of the partition, at the same instant.
    sim.write(0, key(0), Some(Bytes::from_static(b"zero"))).expect("write");
    sim.write(2, key(0), Some(Bytes::from_static(b"two"))).expect("write");
    sim.run_for(3_000);
    sim.heal();
    sim.set_faults(Faults::none());
    let took = sim.run_until(30_000, Sim::converged).expect("converged within 30 s of the faults stopping");
    sim.run_for(3_000);
    assert_consistent(&sim);
    // host-00002 > host-00000 at the same wall time and counter: "two" wins everywhere.
    for h in 0..3 {
        assert_eq!(sim.replica(h).get(&key(0)).map(|b| &b[..]), Some(&b"two"[..]));
    }
    println!("3 hosts: converged {took} ms after the faults stopped");
}

#[test]
fn fifty_hosts_converge_after_a_split_and_crashes() {
    let mut sim = Sim::new(SimConfig { faults: faulty(), ..SimConfig::new(50, 2) });
    let mut rng = Rng::new(22);
    random_writes(&mut sim, &mut rng, 30, 20);
    sim.partition(|h| u32::from(h >= 25));
    for h in [3, 30, 41] {
        sim.crash(h);
    }
    random_writes(&mut sim, &mut rng, 60, 20);
    for h in [3, 30, 41] {
        sim.restart(h).expect("restart");
    }
    random_writes(&mut sim, &mut rng, 30, 20);
    sim.heal();
    sim.set_faults(Faults::none());
    let took = sim.run_until(30_000, Sim::converged).expect("converged within 30 s of the faults stopping");
    sim.run_for(3_000);
    assert_consistent(&sim);
    let acked = sim.writes().iter().filter(|w| w.acked).count();
    assert!(acked > 50, "only {acked} writes acknowledged");
    println!(
        "50 hosts: converged {took} ms after the faults stopped; {acked} of {} writes acked",
        sim.writes().len()
    );
}

#[test]
fn an_acknowledged_write_survives_the_writer_dying_at_once() {
    let mut sim = Sim::new(SimConfig { faults: faulty(), ..SimConfig::new(50, 3) });
    sim.run_for(1_000);
    let w = sim.write(7, key(1), Some(Bytes::from_static(b"precious"))).expect("write");
    sim.run_until(10_000, |s| s.writes()[w].acked).expect("acknowledged");
    sim.crash(7);
    sim.set_faults(Faults::none());
    sim.run_until(30_000, |s| (0..50).filter(|&h| h != 7).all(|h| s.replica(h).get(&key(1)).is_some()))
        .expect("every other host holds the write");
}

#[test]
fn tombstones_are_collected_and_a_host_cut_off_longer_resurrects() {
    let cfg = SimConfig {
        replica: Config { tombstone_ttl_ms: 10_000, ..Config::new("t") },
        ..SimConfig::new(5, 4)
    };
    let mut sim = Sim::new(cfg);
    sim.write(0, key(1), Some(Bytes::from_static(b"v1"))).expect("write");
    sim.write(0, key(2), Some(Bytes::from_static(b"v1"))).expect("write");
    sim.run_until(5_000, Sim::converged).expect("converged");
    // Host 4 is cut off holding key 2; the others delete both keys.
    sim.partition(|h| u32::from(h == 4));
    sim.write(1, key(1), None).expect("delete");
    sim.write(1, key(2), None).expect("delete");
    sim.run_for(2_000);
    for h in 0..4 {
        assert_eq!(sim.replica(h).get(&key(1)), None);
        assert!(sim.replica(h).object(&key(1)).is_some_and(Object::is_tombstone));
    }
    // Past the ttl every tombstone is gone, on every host that had one.
    sim.run_for(10_000);
    for h in 0..4 {
        assert!(sim.replica(h).object(&key(1)).is_none(), "tombstone kept on host {h}");
        assert!(sim.replica(h).object(&key(2)).is_none());
        assert_eq!(sim.replica(h).stats().collected, 2);
    }
    // The documented limit: host 4 was cut off longer than the ttl and never saw the deletes,
    // so its old copies come back everywhere.
    sim.heal();
    sim.run_until(10_000, Sim::converged).expect("converged");
    for h in 0..5 {
        assert_eq!(sim.replica(h).get(&key(1)).map(|b| &b[..]), Some(&b"v1"[..]));
        assert_eq!(sim.replica(h).get(&key(2)).map(|b| &b[..]), Some(&b"v1"[..]));
    }
}

#[test]
fn the_simulation_is_deterministic() {
    let run = || {
        let mut sim = Sim::new(SimConfig { faults: faulty(), ..SimConfig::new(20, 9) });
        let mut rng = Rng::new(5);
        random_writes(&mut sim, &mut rng, 30, 5);
        sim.run_for(2_000);
        (sim.traffic(), (0..20).map(|h| sim.replica(h).root()).collect::<Vec<_>>())
    };
    assert_eq!(run(), run());
}

#[test]
fn bench_figures_for_3_50_and_1000_hosts() {
    for hosts in [3, 50, 1000] {
        let r = bench(hosts, 5, 512, 42);
        println!("{r:?}");
        assert_eq!(r.not_converged, 0, "{r:?}");
        // Gossip over a mesh of about 6 neighbours: each host gets a handful of copies.
        assert!(r.messages_per_write_per_host_above_idle < 12.0, "{r:?}");
        assert!(r.convergence_p95_ms < 2_000, "{r:?}");
    }
}

/// The figures `cargo xtask bench` reports, at full size: run with
/// `cargo test --release -p beemesh-state -- --ignored --nocapture`.
#[test]
#[ignore = "minutes in debug; run with --release"]
fn bench_figures_for_10000_hosts() {
    for (hosts, body) in [(1_000, 512), (10_000, 512), (1_000, 64 * 1024), (1_000, 1024 * 1024)] {
        let r = bench(hosts, 20, body, 42);
        println!("{r:?}");
        assert_eq!(r.not_converged, 0, "{r:?}");
    }
}

#[test]
fn large_bodies_spread_hop_by_hop_not_all_from_the_writer() {
    let body = 64 * 1024;
    let r = bench(50, 3, body, 7);
    println!("{r:?}");
    assert_eq!(r.not_converged, 0, "{r:?}");
    // Fetched from the writer by everyone, the writer would upload 49 bodies per write.
    assert!(r.max_host_bytes_per_write < (12 * body) as f64, "{r:?}");
    assert!(r.bytes_per_write_per_host < (2 * body) as f64, "{r:?}");
}

/// Random fault schedules over many seeds: writes, crashes, restarts, partitions into random
/// sides, then the faults stop and everything must agree.
fn chaos(seed: u64, hosts: usize) {
    let mut sim = Sim::new(SimConfig { faults: faulty(), ..SimConfig::new(hosts, seed) });
    let mut rng = Rng::new(seed.wrapping_add(1000));
    for _ in 0..8 {
        match rng.below(4) {
            0 => sim.crash(rng.below(hosts)),
            1 => {
                let h = rng.below(hosts);
                if !sim.is_alive(h) {
                    sim.restart(h).expect("restart");
                }
            }
            2 => {
                let sides = rng.next_u64();
                sim.partition(move |h| ((sides >> (h % 64)) & 1) as u32);
            }
            _ => sim.heal(),
        }
        random_writes(&mut sim, &mut rng, 10, 8);
    }
    for h in 0..hosts {
        if !sim.is_alive(h) {
            sim.restart(h).expect("restart");
        }
    }
    sim.heal();
    sim.set_faults(Faults::none());
    sim.run_until(30_000, Sim::converged).unwrap_or_else(|| panic!("seed {seed}: no convergence in 30 s"));
    sim.run_for(3_000);
    assert_consistent(&sim);
}

#[test]
fn random_fault_schedules_converge() {
    for seed in 0..8 {
        chaos(seed, 10);
    }
}

#[test]
#[ignore = "many seeds; run with --release"]
fn random_fault_schedules_converge_many_seeds() {
    for seed in 0..500 {
        chaos(seed, 12);
    }
}
