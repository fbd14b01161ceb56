//! `sched_bench`: the scheduler's tender/bid/award at scale in the simulator
//! (`beemesh_state::sim::sched`), every placement decided by the agent's own `Tenderer` and
//! `Bidder`, each call charged its measured time in virtual time, links 5-50 ms. All pods are
//! applied at once (as Nomad's C1M did); printed: placements per virtual second until the last
//! is placed, p50/p95 apply-to-placed, messages per placement, and the simulator's wall-clock
//! time. Then a partition of a third of the hosts: duplicates while cut, and when none is
//! left after the heal. Anchors: kube-scheduler's 5,000-node test (680 pods/s), Nomad C1M
//! (about 3,750 placements/s on 5,000 hosts). Run by `cargo xtask bench`; `--quick` runs 100
//! hosts only (CI), `--hosts N` one size.

use std::process::ExitCode;

use beemesh_state::sched::Resources;
use beemesh_state::sim::sched::{measure_write_ns, Partition, SchedReport, SchedSim};

const SEED: u64 = 42;
/// A stored pod's size (a Deployment's pod with one container, labels, owner and scheduling
/// annotations: about 1.5 KB of JSON).
const POD_BYTES: usize = 1_536;
const KUBE_SCHEDULER_PODS_PER_S: f64 = 680.0;
const NOMAD_C1M_PER_S: f64 = 3_750.0;

fn main() -> ExitCode {
    let mut quick = false;
    let mut only: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.len()) {
            ("--quick", _) => quick = true,
            ("--hosts", 1..) => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n >= 3 => only = Some(n),
                _ => return usage("--hosts takes a number of hosts, at least 3"),
            },
            (other, _) => return usage(&format!("unknown argument {other:?}")),
        }
    }
    // (hosts, workloads, replicas): 100,000 pods, or 2,000 on 100 hosts for CI.
    let sizes: Vec<(usize, usize, usize)> = match only {
        Some(n) => vec![(n, 1_000, 100)],
        None if quick => vec![(100, 20, 100)],
        None => vec![(1_000, 1_000, 100), (10_000, 1_000, 100)],
    };
    println!(
        "sched bench: simulator, links 5-50 ms, each call into Tenderer/Bidder charged its measured time; \
         pods of 100m cpu / 256 MiB on hosts of 16 cpu / 64 GiB / 250 pods; all applied at t=0; seed {SEED}"
    );
    // Each binding is a replicated write every host applies: its cost, measured here.
    let pods = sizes.iter().map(|(_, w, r)| w * r).max().unwrap_or(0);
    let write_ns = measure_write_ns(pods, POD_BYTES);
    println!(
        "state write applied by a replica (a {POD_BYTES}-byte pod, {pods} held): {:.1} us, so at most {:.0} \
         bindings/s visible on every host",
        write_ns as f64 / 1000.0,
        1e9 / write_ns.max(1) as f64
    );
    let mut failed = false;
    for (hosts, workloads, replicas) in sizes {
        let sim = SchedSim { write_ns, ..shape(hosts, workloads, replicas) };
        let r = sim.run();
        print_placement(hosts, &r);
        failed |= !settled(&r);
        // A tenth of the pods, placed well before the cut.
        let placed_by = r.all_placed_ms.unwrap_or(sim.run_ms) / 10 + 5_000;
        let cut = SchedSim {
            partition: Some(Partition {
                at_ms: placed_by,
                heal_ms: placed_by + 15_000,
                split: hosts - hosts / 3,
            }),
            run_ms: placed_by + 30_000,
            write_ns,
            ..shape(hosts, workloads / 10, replicas)
        };
        let p = cut.run();
        print_partition(hosts, &cut, &p);
        failed |= !settled(&p);
    }
    if failed {
        eprintln!("sched_bench: a run did not settle with every pod placed once on an alive host");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("sched_bench: {problem} (usage: sched_bench [--quick] [--hosts N])");
    ExitCode::from(64)
}

fn shape(hosts: usize, workloads: usize, replicas: usize) -> SchedSim {
    SchedSim {
        request: Resources { cpu_millis: 100, memory_bytes: 256 << 20, pods: 1 },
        allocatable: Resources { cpu_millis: 16_000, memory_bytes: 64 << 30, pods: 250 },
        run_ms: 120_000,
        measure: true,
        ..SchedSim::new(hosts, workloads, replicas, SEED)
    }
}

fn settled(r: &SchedReport) -> bool {
    r.overcommits == 0 && r.placed == r.slots && r.on_dead == 0 && r.duplicates == 0
}

fn print_placement(hosts: usize, r: &SchedReport) {
    let rate = r.placements_per_s();
    println!("{hosts} hosts, {} pods:", r.slots);
    println!(
        "  placements/s (virtual)      {rate:>10.0}   vs kube-scheduler {:.2}x, vs Nomad C1M {:.2}x",
        rate / KUBE_SCHEDULER_PODS_PER_S,
        rate / NOMAD_C1M_PER_S
    );
    println!(
        "  apply-to-placed p50 / p95   {:>7} ms / {} ms (all placed at {} ms)",
        r.placed_p50_ms,
        r.placed_p95_ms,
        r.all_placed_ms.map_or("never".to_string(), |t| t.to_string())
    );
    println!(
        "  messages per placement      {:>10.1}   ({} tenders and answers, {} bindings)",
        r.messages as f64 / r.bindings.max(1) as f64,
        r.messages,
        r.bindings
    );
    println!(
        "  agent code per placement    {:>10.1} us  ({} calls, {:.2} s in all)",
        r.call_ns as f64 / 1000.0 / r.slots.max(1) as f64,
        r.calls,
        r.call_ns as f64 / 1e9
    );
    let most = r.per_host.values().max().copied().unwrap_or(0);
    println!(
        "  settled                     {}   (overcommits {}, on dead hosts {}, most pods on a host {most})",
        settled(r),
        r.overcommits,
        r.on_dead
    );
    println!("  simulator wall clock        {:>10.1} s", r.wall_ms as f64 / 1000.0);
}

fn print_partition(hosts: usize, sim: &SchedSim, r: &SchedReport) {
    let Some(p) = sim.partition else { return };
    println!(
        "  partition: {} of {hosts} hosts cut off at {} ms for 15 s, {} pods placed before",
        hosts - p.split,
        p.at_ms,
        r.slots
    );
    println!(
        "    most running twice while cut {:>6}   none left {} ms after the heal; settled {}",
        r.max_duplicates,
        r.no_duplicates_ms.map_or("never".to_string(), |t| t.saturating_sub(p.heal_ms).to_string()),
        settled(r)
    );
}
