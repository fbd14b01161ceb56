//! The scheduler's simulator: many hosts, each running the agent's own [`Tenderer`] and
//! [`Bidder`] (`crate::sched`), over the network model of [`Faults`] (loss, duplication,
//! delay), with host crashes, restarts and a partition. Event-driven on a virtual clock in
//! nanoseconds: a host handles one event at a time, and with [`SchedSim::measure`] each call
//! into the agent's code is charged its measured wall-clock time (the host is busy that long,
//! its outputs leave when it is done), so throughput reflects what the real code costs.
//!
//! The cluster state is modelled compactly: one last-writer-wins register per slot, each write
//! visible a random 5-50 ms after it is made, and no sooner than the state can apply writes
//! one after the other (every host applies every write: [`SchedSim::write_ns`]; the
//! replication itself is simulated and measured by the parent module). During a partition each side has its own copy: a write reaches only
//! its writer's side, and the copies merge one anti-entropy round after the partition heals
//! (the later write of a slot wins; the other holder's copy is the duplicate that stops). A
//! crashed host, or the other side of a partition, leaves the alive view `detect_ms` later, as
//! the failure detector's verdict would.
//!
//! A side that sees fewer than half the hosts leaves the lost hosts' slots alone
//! ([`may_heal`]).
//!
//! StatefulSets ([`SchedSim::stateful`]) as the agent's controller and scheduler treat them:
//! ordinals `0..N-1` created in order (OrderedReady: an ordinal is wanted once the one before
//! it is placed), each with a claim's local volume, so an ordinal stays on the host it was
//! first placed on: never placed elsewhere when that host is lost, back with it when it
//! returns.
//!
//! Checked: no host ever holds more than it can (per side); at the end every slot is placed
//! once, on an alive host, and no slot runs on two hosts; no ordinal placed before the one
//! before it, none moved off its first host, none running on two hosts at any check.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::time::Instant;

use super::Faults;
use crate::rng::Rng;
use crate::sched::{
    may_heal, rank, Answer, Bidder, HostFacts, Needs, Out, Placed, Resources, SchedConfig, SlotReq, Tender,
    Tenderer, View,
};

/// Virtual nanoseconds per millisecond.
const MS: u64 = 1_000_000;
/// Each busy tenderer ticks this often (hosts staggered by 5 ms).
const TICK_MS: u64 = 100;
/// After a partition heals, the two copies of the state merge this much later (one
/// anti-entropy round of the replicated state).
const SYNC_MS: u64 = 1_000;
/// During and after a partition, duplicates are counted this often.
const CHECK_MS: u64 = 250;

/// Hosts `split..` are cut off from hosts `..split` from `at_ms` until `heal_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub at_ms: u64,
    pub heal_ms: u64,
    pub split: usize,
}

/// Shape of a scheduling simulation.
#[derive(Debug, Clone)]
pub struct SchedSim {
    pub hosts: usize,
    pub seed: u64,
    pub faults: Faults,
    /// Workloads of `replicas` slots each, all applied at time 0.
    pub workloads: usize,
    pub replicas: usize,
    /// How many of the workloads (the last ones) are StatefulSets.
    pub stateful: usize,
    /// Each slot's request; each host's allocatable.
    pub request: Resources,
    pub allocatable: Resources,
    /// Hosts crashed at `crash_at_ms` (restarted `down_ms` later, when not 0).
    pub crashes: usize,
    pub crash_at_ms: u64,
    pub down_ms: u64,
    pub detect_ms: u64,
    pub partition: Option<Partition>,
    /// Simulated time; faults stop at `faults_until_ms`.
    pub run_ms: u64,
    pub faults_until_ms: u64,
    pub sched: SchedConfig,
    /// Charge every call into the agent's code its measured time (benchmarks). Off, calls
    /// take no virtual time and a seed replays exactly (tests).
    pub measure: bool,
    /// What applying one binding to the replicated state costs a host (ns; the benchmark
    /// measures it on `Replica`). Every host applies every write, so bindings become visible
    /// no faster than one per `write_ns`, whatever the number of hosts.
    pub write_ns: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct SchedReport {
    pub slots: usize,
    pub placed: usize,
    /// Slots placed on a host that is not alive at the end (StatefulSet ordinals not
    /// counted: they wait for their host, `ordinals_waiting`).
    pub on_dead: usize,
    pub ordinals_waiting: usize,
    /// Largest placed/allocatable cpu seen on any host, in per mille (at most 1000).
    pub max_fill_permille: u64,
    /// Times a host held more than its allocatable (must be 0).
    pub overcommits: usize,
    /// Tenders and answers sent.
    pub messages: u64,
    pub bindings: u64,
    /// p50/p95 of each slot's first placement (virtual ms after its apply at 0), and when the
    /// last slot was first placed.
    pub placed_p50_ms: u64,
    pub placed_p95_ms: u64,
    pub all_placed_ms: Option<u64>,
    /// Per host, slots placed at the end (for spreading checks).
    pub per_host: BTreeMap<usize, usize>,
    /// Slots running on two hosts at once (one per side of the partition): the most seen, at
    /// the end, and when none was left after the heal (virtual ms).
    pub max_duplicates: usize,
    pub duplicates: usize,
    pub no_duplicates_ms: Option<u64>,
    /// StatefulSet ordinals: first placed before the ordinal before them, ending on another
    /// host than their first, and the most seen running on two hosts at once (all must be 0).
    pub out_of_order: usize,
    pub moved: usize,
    pub ordinal_duplicates: usize,
    /// Calls into the agent's code (tender, answer, answered, tick) and their measured time.
    pub calls: u64,
    pub call_ns: u64,
    /// The simulator's own wall-clock time.
    pub wall_ms: u64,
}

/// What applying one write of `body_bytes` costs a replica, measured on the real
/// [`crate::replica::Replica`]: `writes` objects written on one replica, each announcement
/// encoded as on the wire and handled by a second one (which ends up holding them all, as every
/// host holds every pod). Returns ns per write, the mean over all of them.
pub fn measure_write_ns(writes: usize, body_bytes: usize) -> u64 {
    use crate::object::Key;
    use crate::replica::{Config, Output, Replica};
    let mut a: Replica<u32> = Replica::new(Config { seed: 1, ..Config::new("writer") });
    let mut b: Replica<u32> = Replica::new(Config { seed: 2, ..Config::new("reader") });
    let body = bytes::Bytes::from(vec![b'x'; body_bytes]);
    let now = super::EPOCH_MS;
    let mut spent = std::time::Duration::ZERO;
    for i in 0..writes {
        let key = Key::new("Pod", "default", format!("w{}-{}", i / 100, i % 100));
        let Ok((_, out)) = a.write(now + i as u64, key, Some(body.clone())) else { continue };
        for o in out {
            if let Output::Broadcast(msg) = o {
                let Ok(wire) = msg.encode() else { continue };
                let t0 = Instant::now();
                let _ = b.handle_bytes(now + i as u64, 1, &wire);
                spent += t0.elapsed();
            }
        }
    }
    (spent.as_nanos() / writes.max(1) as u128) as u64
}

impl SchedReport {
    /// Placements per virtual second until every slot was placed.
    pub fn placements_per_s(&self) -> f64 {
        self.all_placed_ms.map_or(0.0, |t| self.slots as f64 * 1000.0 / t.max(1) as f64)
    }
}

/// One host's slice of the simulation.
struct Host {
    alive: bool,
    tenderer: Tenderer<usize>,
    bidder: Bidder,
    /// Until when (virtual ns) the host is handling earlier events.
    busy_until: u64,
    tick_at: Option<u64>,
    /// Events that arrived while it was busy, in order, and when it looks at them next.
    inbox: std::collections::VecDeque<Ev>,
    wake_at: Option<u64>,
}

impl Host {
    fn new(cfg: &SchedConfig) -> Host {
        Host {
            alive: true,
            tenderer: Tenderer::new(cfg.clone()),
            bidder: Bidder::new(cfg),
            busy_until: 0,
            tick_at: None,
            inbox: Default::default(),
            wake_at: None,
        }
    }
}

#[derive(Clone)]
enum Msg {
    Tender { from: usize, tender: Tender },
    Answer { from: usize, slot: String, attempt: u32, answer: Answer },
}

enum Ev {
    Deliver {
        to: usize,
        msg: Msg,
    },
    /// A binding reaches the state: (time, writer) is its version.
    Visible {
        slot: usize,
        host: usize,
        writer: usize,
        written: u64,
    },
    Tick(usize),
    /// A busy host is free again: it takes the next event of its inbox.
    Wake(usize),
    Crash,
    Restart,
    /// The failure detector's verdicts or a heal change who is alive.
    Views,
    Merge,
    Check,
}

/// One copy of the state (the compact model): per slot (host, version); per host its slots,
/// and the same by name as a bidder reads them.
#[derive(Clone)]
struct State {
    placed: Vec<Option<(usize, (u64, usize))>>,
    on: Vec<BTreeSet<usize>>,
    here: Vec<BTreeMap<String, Placed>>,
}

impl State {
    fn new(slots: usize, hosts: usize) -> State {
        State {
            placed: vec![None; slots],
            on: vec![BTreeSet::new(); hosts],
            here: vec![BTreeMap::new(); hosts],
        }
    }

    fn put(&mut self, slots: &[SlotReq], slot: usize, host: usize, version: (u64, usize)) -> bool {
        if self.placed[slot].is_some_and(|(_, v)| v >= version) {
            return false;
        }
        let name = &slots[slot].slot;
        if let Some((old, _)) = self.placed[slot].replace((host, version)) {
            self.on[old].remove(&slot);
            self.here[old].remove(name);
        }
        self.on[host].insert(slot);
        let placed = Placed { requests: slots[slot].needs.requests, ..Placed::default() };
        self.here[host].insert(name.clone(), placed);
        true
    }
}

/// FNV-1a for the simulator's slot index (std's SipHash showed in profiles).
#[derive(Default)]
struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        if self.0 == 0 {
            self.0 = 0xcbf2_9ce4_8422_2325;
        }
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

type FnvMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// What every host reads: the slots, node facts and, per side, the state and alive view.
struct World {
    request: Resources,
    hash: Vec<u64>,
    facts: Vec<HostFacts>,
    slots: Vec<SlotReq>,
    index: FnvMap<String, usize>,
    /// Per slot, the hosts its tenders went to (their promises end when it is placed).
    asked: Vec<Vec<usize>>,
    /// Per slot, its workload's index, and its ordinal when the workload is a StatefulSet.
    group: Vec<usize>,
    ordinal: Vec<Option<usize>>,
    states: [State; 2],
    views: [Vec<(usize, u64)>; 2],
    alive: [Vec<bool>; 2],
    /// Per side, per workload, its owner in that side's view.
    owners: [Vec<Option<usize>>; 2],
}

struct SimView<'a> {
    w: &'a World,
    side: usize,
}

impl View<usize> for SimView<'_> {
    fn hosts(&self) -> Vec<(usize, u64)> {
        self.w.views[self.side].clone()
    }
    fn facts(&self, host: &usize) -> Option<&HostFacts> {
        self.w.facts.get(*host)
    }
    fn requested(&self, host: &usize) -> Resources {
        let n = self.w.states[self.side].on[*host].len() as u64;
        let r = self.w.request;
        Resources { cpu_millis: r.cpu_millis * n, memory_bytes: r.memory_bytes * n, pods: n }
    }
    fn group_on(&self, group: &str, host: &usize) -> u64 {
        let on = &self.w.states[self.side].on[*host];
        on.iter().filter(|s| self.w.slots[**s].group == group).count() as u64
    }
    fn matching(&self, selector: &crate::sched::fit::Selector, host: &usize) -> u64 {
        let on = &self.w.states[self.side].on[*host];
        on.iter().filter(|s| selector.matches(&self.w.slots[**s].needs.labels)).count() as u64
    }
    fn placed(&self, slot: &str) -> Option<usize> {
        let i = *self.w.index.get(slot)?;
        self.w.states[self.side].placed[i].map(|(h, _)| h)
    }
}

/// A run under way.
struct Run<'a> {
    cfg: &'a SchedSim,
    rng: Rng,
    now: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: HashMap<u64, Ev>,
    seq: u64,
    hosts: Vec<Host>,
    w: World,
    crashed: BTreeSet<usize>,
    down_since: BTreeMap<usize, u64>,
    first_placed: Vec<Option<u64>>,
    first_host: Vec<Option<usize>>,
    /// When the state's apply pipeline is free again (see `SchedSim::write_ns`).
    state_free: u64,
    report: SchedReport,
}

impl SchedSim {
    /// A healthy run of `hosts` hosts placing `workloads` x `replicas` slots.
    pub fn new(hosts: usize, workloads: usize, replicas: usize, seed: u64) -> SchedSim {
        SchedSim {
            hosts,
            seed,
            faults: Faults { loss: 0.0, duplicate: 0.0, min_delay_ms: 5, max_delay_ms: 50 },
            workloads,
            replicas,
            stateful: 0,
            request: Resources { cpu_millis: 100, memory_bytes: 128 << 20, pods: 1 },
            allocatable: Resources { cpu_millis: 4000, memory_bytes: 8 << 30, pods: 110 },
            crashes: 0,
            crash_at_ms: 0,
            down_ms: 0,
            detect_ms: 2500,
            partition: None,
            run_ms: 30_000,
            faults_until_ms: 0,
            sched: SchedConfig::default(),
            measure: false,
            write_ns: 0,
        }
    }

    pub fn run(&self) -> SchedReport {
        let started = Instant::now();
        let mut run = Run::new(self);
        run.at(0, Ev::Views);
        if self.crashes > 0 {
            run.at(self.crash_at_ms * MS, Ev::Crash);
            run.at((self.crash_at_ms + self.detect_ms) * MS, Ev::Views);
            if self.down_ms > 0 {
                run.at((self.crash_at_ms + self.down_ms) * MS, Ev::Restart);
            }
        }
        if let Some(p) = self.partition {
            run.at((p.at_ms + self.detect_ms) * MS, Ev::Views);
            run.at(p.heal_ms * MS, Ev::Views);
            run.at((p.heal_ms + SYNC_MS) * MS, Ev::Merge);
            run.at(p.at_ms * MS, Ev::Check);
        }
        run.go();
        let mut report = run.finish();
        report.wall_ms = started.elapsed().as_millis() as u64;
        report
    }
}

impl<'a> Run<'a> {
    fn new(cfg: &'a SchedSim) -> Run<'a> {
        let mut rng = Rng::new(cfg.seed);
        let n = cfg.hosts;
        let facts = HostFacts { allocatable: cfg.allocatable, ..HostFacts::default() };
        let hash: Vec<u64> = (0..n).map(|i| rank::hash_str(&format!("host-{i}"))).collect();
        let mut slots = Vec::new();
        let (mut group, mut ordinal) = (Vec::new(), Vec::new());
        let first_stateful = cfg.workloads.saturating_sub(cfg.stateful);
        for w in 0..cfg.workloads {
            for r in 0..cfg.replicas {
                let needs = Needs { requests: cfg.request, ..Needs::default() };
                let slot = format!("w{w}-{r}");
                slots.push(SlotReq {
                    slot,
                    group: format!("w{w}"),
                    needs,
                    max_skew: None,
                    spread: Vec::new(),
                });
                group.push(w);
                ordinal.push((w >= first_stateful).then_some(r));
            }
        }
        let index = slots.iter().enumerate().map(|(i, s)| (s.slot.clone(), i)).collect();
        let asked = vec![Vec::new(); slots.len()];
        let state = State::new(slots.len(), n);
        let crashed = (0..cfg.crashes).map(|_| rng.below(n)).collect();
        let report = SchedReport { slots: slots.len(), ..SchedReport::default() };
        Run {
            cfg,
            rng,
            now: 0,
            queue: BinaryHeap::new(),
            events: HashMap::new(),
            seq: 0,
            hosts: (0..n).map(|_| Host::new(&cfg.sched)).collect(),
            w: World {
                request: cfg.request,
                hash,
                facts: vec![facts; n],
                slots,
                index,
                asked,
                group,
                ordinal,
                states: [state.clone(), state],
                views: [Vec::new(), Vec::new()],
                alive: [vec![false; n], vec![false; n]],
                owners: [vec![None; cfg.workloads], vec![None; cfg.workloads]],
            },
            crashed,
            down_since: BTreeMap::new(),
            first_placed: vec![None; cfg.workloads * cfg.replicas],
            first_host: vec![None; cfg.workloads * cfg.replicas],
            state_free: 0,
            report,
        }
    }

    fn at(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.events.insert(self.seq, ev);
        self.queue.push(Reverse((time, self.seq)));
    }

    /// Whether the partition cuts the network now.
    fn cut(&self) -> bool {
        self.cfg.partition.is_some_and(|p| (p.at_ms * MS..p.heal_ms * MS).contains(&self.now))
    }

    /// Which copy of the state `host` reads: its side's, from the partition until the merge.
    fn side(&self, host: usize) -> usize {
        match self.cfg.partition {
            Some(p) if host >= p.split && (p.at_ms * MS..(p.heal_ms + SYNC_MS) * MS).contains(&self.now) => 1,
            _ => 0,
        }
    }

    fn go(&mut self) {
        let end = self.cfg.run_ms * MS;
        while let Some(Reverse((time, id))) = self.queue.pop() {
            if time > end {
                break;
            }
            self.now = time;
            let Some(ev) = self.events.remove(&id) else { continue };
            // A host handles one event at a time: a busy host's events wait in its inbox.
            let ev = match ev {
                Ev::Deliver { to: h, .. } | Ev::Tick(h) => {
                    let host = &mut self.hosts[h];
                    if !host.alive {
                        if matches!(ev, Ev::Tick(_)) {
                            host.tick_at = None;
                        }
                        continue;
                    }
                    if host.busy_until <= time && host.inbox.is_empty() {
                        ev
                    } else {
                        host.inbox.push_back(ev);
                        self.wake(h);
                        continue;
                    }
                }
                Ev::Wake(h) => {
                    let host = &mut self.hosts[h];
                    host.wake_at = None;
                    if !host.alive {
                        host.inbox.clear();
                        continue;
                    }
                    let Some(ev) = host.inbox.pop_front() else { continue };
                    if matches!(ev, Ev::Tick(_)) {
                        host.tick_at = None;
                    }
                    ev
                }
                other => other,
            };
            let waiting = match &ev {
                Ev::Deliver { to: h, .. } | Ev::Tick(h) => Some(*h),
                _ => None,
            };
            match ev {
                Ev::Deliver { to, msg } => self.deliver(to, msg),
                Ev::Visible { slot, host, writer, written } => self.visible(slot, host, writer, written),
                Ev::Tick(h) => {
                    self.hosts[h].tick_at = None;
                    let side = self.side(h);
                    let view = SimView { w: &self.w, side };
                    let t0 = self.cfg.measure.then(Instant::now);
                    let out = self.hosts[h].tenderer.tick(time / MS, &view);
                    self.charge(h, t0, out);
                }
                Ev::Crash => {
                    for h in self.crashed.clone() {
                        self.hosts[h].alive = false;
                        self.down_since.insert(h, time);
                    }
                }
                Ev::Restart => {
                    for h in self.crashed.clone() {
                        self.hosts[h] = Host::new(&self.cfg.sched);
                        self.down_since.remove(&h);
                    }
                    self.views();
                }
                Ev::Views => self.views(),
                Ev::Merge => {
                    let [a, b] = &mut self.w.states;
                    for slot in 0..a.placed.len() {
                        if let Some((h, v)) = b.placed[slot] {
                            a.put(&self.w.slots, slot, h, v);
                        }
                    }
                    *b = a.clone();
                    self.views();
                }
                Ev::Check => self.check(),
                Ev::Wake(_) => {}
            }
            if let Some(h) = waiting.filter(|h| !self.hosts[*h].inbox.is_empty()) {
                self.wake(h);
            }
        }
    }

    /// Makes sure a host with events waiting looks at them when it is free.
    fn wake(&mut self, h: usize) {
        let host = &self.hosts[h];
        if host.wake_at.is_none() && !host.inbox.is_empty() {
            let at = host.busy_until.max(self.now);
            self.hosts[h].wake_at = Some(at);
            self.at(at, Ev::Wake(h));
        }
    }

    /// The alive view of each side, each workload's owner in it, and every owner's wants.
    fn views(&mut self) {
        let detect = self.cfg.detect_ms * MS;
        for side in 0..2 {
            let mut view = Vec::new();
            for h in 0..self.cfg.hosts {
                let crashed = self.down_since.get(&h).is_some_and(|t| self.now >= t + detect);
                let cut = self.cfg.partition.is_some_and(|p| {
                    self.now >= p.at_ms * MS + detect
                        && self.now < p.heal_ms * MS
                        && (h >= p.split) != (side == 1)
                });
                self.w.alive[side][h] = !crashed && !cut;
                if !crashed && !cut {
                    view.push((h, self.w.hash[h]));
                }
            }
            for g in 0..self.cfg.workloads {
                let key = rank::hash_str(&format!("w{g}"));
                let owner = rank::owner(key, view.iter().map(|(h, x)| (h, *x))).copied();
                // A host that no longer owns a workload forgets its slots (the driver's duties).
                if let Some(old) =
                    self.w.owners[side][g].filter(|o| Some(*o) != owner && self.side(*o) == side)
                {
                    for r in 0..self.cfg.replicas {
                        self.hosts[old].tenderer.forget(&self.w.slots[g * self.cfg.replicas + r].slot);
                    }
                }
                self.w.owners[side][g] = owner;
            }
            self.w.views[side] = view;
        }
        for slot in 0..self.w.slots.len() {
            for side in 0..2 {
                self.want(side, slot);
            }
        }
    }

    /// The owner of `slot`'s workload in `side` (when it is on that side and alive) tenders
    /// the slot unless the state places it on an alive host.
    fn want(&mut self, side: usize, slot: usize) {
        let Some(o) = self.w.owners[side][self.w.group[slot]] else { return };
        if self.side(o) != side || !self.hosts[o].alive {
            return;
        }
        let ordinal = self.w.ordinal[slot];
        // OrderedReady: the controller creates an ordinal once the one before it is up.
        if ordinal.is_some_and(|r| r > 0) && self.w.states[side].placed[slot - 1].is_none() {
            return;
        }
        let (placed, lost) = match self.w.states[side].placed[slot] {
            Some((h, _)) => (self.w.alive[side][h], !self.w.alive[side][h]),
            None => (false, false),
        };
        // An ordinal's claim keeps it on its host: it waits for it.
        let pinned = ordinal.is_some();
        if placed || (lost && (pinned || !may_heal(self.w.views[side].len(), self.cfg.hosts))) {
            self.hosts[o].tenderer.forget(&self.w.slots[slot].slot);
            return;
        }
        let start = self.hosts[o].busy_until.max(self.now);
        let view = SimView { w: &self.w, side };
        let t0 = self.cfg.measure.then(Instant::now);
        let out = self.hosts[o].tenderer.want(start / MS, self.w.slots[slot].clone(), &view);
        let saved = std::mem::replace(&mut self.now, start);
        self.charge(o, t0, out);
        self.now = saved;
    }

    /// Ends a call into `host`'s code begun at `t0`: the host is busy for what it took, then
    /// its outputs go out.
    fn charge(&mut self, host: usize, t0: Option<Instant>, out: Vec<Out<usize>>) {
        let cost = t0.map_or(0, |t| t.elapsed().as_nanos() as u64);
        self.report.calls += 1;
        self.report.call_ns += cost;
        let done = self.now.max(self.hosts[host].busy_until) + cost;
        self.hosts[host].busy_until = done;
        let faulty = self.now < self.cfg.faults_until_ms * MS;
        for o in out {
            match o {
                Out::Tender { to, tender } => {
                    if let Some(&slot) = self.w.index.get(&tender.slot) {
                        self.w.asked[slot].push(to);
                    }
                    self.send(done, to, Msg::Tender { from: host, tender }, faulty);
                }
                Out::Bind { slot, host: to, .. } => {
                    let Some(&slot) = self.w.index.get(&slot) else { continue };
                    // The driver writes a binding only over what the decision saw: not over
                    // a placement on an alive host that reached the state meanwhile.
                    let side = self.side(host);
                    if self.w.states[side].placed[slot].is_some_and(|(h, _)| self.w.alive[side][h]) {
                        continue;
                    }
                    self.report.bindings += 1;
                    let arrives = done + (5 + self.rng.below(46) as u64) * MS;
                    let visible = arrives.max(self.state_free) + self.cfg.write_ns;
                    self.state_free = visible;
                    self.at(visible, Ev::Visible { slot, host: to, writer: host, written: done });
                }
                Out::Pending { .. } => {}
            }
        }
        let h = &mut self.hosts[host];
        if h.tick_at.is_none() && h.tenderer.busy() > 0 {
            let (period, phase) = (TICK_MS * MS, (host as u64 * 5 % TICK_MS) * MS);
            let next = phase + (done.saturating_sub(phase) / period + 1) * period;
            h.tick_at = Some(next);
            self.at(next, Ev::Tick(host));
        }
    }

    /// Sends `msg`: lost, delayed or delivered twice as the faults say while `faulty`.
    fn send(&mut self, at: u64, to: usize, msg: Msg, faulty: bool) {
        self.report.messages += 1;
        let f = &self.cfg.faults;
        if faulty && self.rng.chance(f.loss) {
            return;
        }
        let delay = f.min_delay_ms + self.rng.below((f.max_delay_ms - f.min_delay_ms + 1) as usize) as u64;
        if faulty && self.rng.chance(f.duplicate) {
            let again = at + (delay + 1 + self.rng.below(20) as u64) * MS;
            self.at(again, Ev::Deliver { to, msg: msg.clone() });
        }
        self.at(at + delay * MS, Ev::Deliver { to, msg });
    }

    fn deliver(&mut self, to: usize, msg: Msg) {
        let from = match &msg {
            Msg::Tender { from, .. } | Msg::Answer { from, .. } => *from,
        };
        if self.cut() && self.side(from) != self.side(to) {
            return;
        }
        let side = self.side(to);
        let now_ms = self.now / MS;
        match msg {
            Msg::Tender { from, tender } => {
                let placed = &self.w.states[side].here[to];
                let t0 = self.cfg.measure.then(Instant::now);
                let answer = self.hosts[to].bidder.answer(now_ms, &self.w.facts[to], placed, &tender);
                self.charge(to, t0, Vec::new());
                let back = Msg::Answer { from: to, slot: tender.slot, attempt: tender.attempt, answer };
                let faulty = self.now < self.cfg.faults_until_ms * MS;
                self.send(self.hosts[to].busy_until, from, back, faulty);
            }
            Msg::Answer { from, slot, attempt, answer } => {
                let view = SimView { w: &self.w, side };
                let t0 = self.cfg.measure.then(Instant::now);
                let out = self.hosts[to].tenderer.answered(now_ms, &from, &slot, attempt, answer, &view);
                self.charge(to, t0, out);
            }
        }
    }

    fn visible(&mut self, slot: usize, host: usize, writer: usize, written: u64) {
        let sides: &[usize] = if self.cut() { &[self.side(writer)] } else { &[0, 1] };
        for &side in sides {
            if !self.w.states[side].put(&self.w.slots, slot, host, (written, writer)) {
                continue;
            }
            let name = &self.w.slots[slot].slot;
            for h in std::mem::take(&mut self.w.asked[slot]) {
                self.hosts[h].bidder.settled(name);
            }
            if self.first_placed[slot].is_none() {
                self.first_placed[slot] = Some(self.now);
                self.first_host[slot] = Some(host);
                if self.w.ordinal[slot].is_some_and(|r| r > 0) && self.first_placed[slot - 1].is_none() {
                    self.report.out_of_order += 1;
                }
            }
            let n = self.w.states[side].on[host].len() as u64;
            let fill = n * self.cfg.request.cpu_millis * 1000 / self.cfg.allocatable.cpu_millis.max(1);
            self.report.max_fill_permille = self.report.max_fill_permille.max(fill);
            if fill > 1000 || n > self.cfg.allocatable.pods {
                self.report.overcommits += 1;
            }
            self.want(side, slot);
            let next = slot + 1;
            if self.w.ordinal.get(next).copied().flatten().is_some_and(|r| r > 0) {
                self.want(side, next);
            }
        }
    }

    /// Counts slots running twice: placed on a host of each side by that side's copy.
    fn check(&mut self) {
        let running = |side: usize, slot: usize| -> Option<usize> {
            let (h, _) = self.w.states[side].placed[slot]?;
            (self.side(h) == side && self.hosts[h].alive).then_some(h)
        };
        let twice: Vec<usize> = (0..self.w.slots.len())
            .filter(|s| matches!((running(0, *s), running(1, *s)), (Some(a), Some(b)) if a != b))
            .collect();
        let dups = twice.len();
        let ordinals = twice.iter().filter(|s| self.w.ordinal[**s].is_some()).count();
        self.report.ordinal_duplicates = self.report.ordinal_duplicates.max(ordinals);
        self.report.max_duplicates = self.report.max_duplicates.max(dups);
        self.report.duplicates = dups;
        let healed = self.cfg.partition.is_some_and(|p| self.now >= p.heal_ms * MS);
        if healed && dups == 0 && self.report.no_duplicates_ms.is_none() {
            self.report.no_duplicates_ms = Some(self.now / MS);
        }
        if self.report.no_duplicates_ms.is_none() {
            self.at(self.now + CHECK_MS * MS, Ev::Check);
        }
    }

    fn finish(mut self) -> SchedReport {
        if self.cfg.partition.is_some() {
            self.check();
        }
        let mut r = self.report;
        let state = &self.w.states[0];
        r.placed = state.placed.iter().flatten().count();
        let dead = |s: &usize| state.placed[*s].is_some_and(|(h, _)| !self.hosts[h].alive);
        let (ordinals, others): (Vec<usize>, Vec<usize>) =
            (0..state.placed.len()).filter(dead).partition(|s| self.w.ordinal[*s].is_some());
        (r.on_dead, r.ordinals_waiting) = (others.len(), ordinals.len());
        for (h, _) in state.placed.iter().flatten() {
            *r.per_host.entry(*h).or_default() += 1;
        }
        r.moved = (0..state.placed.len())
            .filter(|s| self.w.ordinal[*s].is_some())
            .filter(|s| state.placed[*s].map(|(h, _)| h) != self.first_host[*s])
            .count();
        let mut times: Vec<u64> = self.first_placed.iter().flatten().map(|t| t / MS).collect();
        times.sort_unstable();
        let pick = |p: f64| {
            times.get(((times.len() as f64 * p) as usize).min(times.len().saturating_sub(1))).copied()
        };
        r.placed_p50_ms = pick(0.5).unwrap_or(0);
        r.placed_p95_ms = pick(0.95).unwrap_or(0);
        if times.len() == r.slots {
            r.all_placed_ms = times.last().copied();
        }
        r
    }
}

#[cfg(test)]
mod tests;
