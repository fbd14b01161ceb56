//! Many failure detectors ([`crate::liveness::Detector`]) on the simulator's network model: a
//! virtual clock, per-hop delay, loss, duplication, partitions, crashes and restarts, and
//! broadcasts relayed along a gossip mesh the way gossipsub does it (as [`crate::sim::Sim`]).
//! Used by the tests and, through [`bench`] and [`detect`], by `state_bench`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use super::{gossip_mesh, Faults, Traffic, EPOCH_MS};
use crate::liveness::{Detector, LiveMsg, LiveOutput, LivenessConfig, Ring};
use crate::rng::Rng;

/// Shape of a simulation.
#[derive(Debug, Clone)]
pub struct LiveSimConfig {
    pub hosts: usize,
    pub seed: u64,
    pub faults: Faults,
    /// Granularity of simulated time.
    pub step_ms: u64,
    /// Each host's `tick` runs this often (hosts staggered).
    pub tick_ms: u64,
    /// Gossip mesh neighbours per host (gossipsub's D is 6).
    pub degree: usize,
    /// Template of every detector's config (`seed` is set per host).
    pub detector: LivenessConfig,
}

impl LiveSimConfig {
    pub fn new(hosts: usize, seed: u64) -> LiveSimConfig {
        LiveSimConfig {
            hosts,
            seed,
            faults: Faults::none(),
            step_ms: 10,
            tick_ms: 100,
            degree: 6,
            detector: LivenessConfig::default(),
        }
    }
}

#[derive(Debug)]
struct Delivery {
    from: usize,
    to: usize,
    /// `Some(id)` for a broadcast relayed along the gossip mesh.
    gossip: Option<(usize, u64)>,
    msg: LiveMsg<usize>,
}

#[derive(Debug)]
struct Host {
    det: Detector<usize>,
    alive: bool,
    /// Broadcast ids already seen (gossipsub's seen cache; lost in a crash).
    seen: HashSet<u64>,
}

/// N detectors on a simulated network. Host ids are indices.
#[derive(Debug)]
pub struct LiveSim {
    cfg: LiveSimConfig,
    now: u64,
    rng: Rng,
    hosts: Vec<Host>,
    ring: Arc<Ring<usize>>,
    neighbours: Vec<Vec<usize>>,
    group: Vec<u32>,
    /// Links cut in one direction: `(from, to)` loses every message.
    cut: HashSet<(usize, usize)>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: BTreeMap<u64, Delivery>,
    seq: u64,
    traffic: Traffic,
    /// For each host, how many live hosts hold it dead.
    held_dead_by: Vec<usize>,
    /// When some host first held each host dead.
    first_down_ms: Vec<Option<u64>>,
    /// Every `Down` a live host reported, and every `Up`.
    pub downs: u64,
    pub ups: u64,
    /// Messages a detector refused (none: every host is honest).
    pub rejected: u64,
}

impl LiveSim {
    pub fn new(cfg: LiveSimConfig) -> LiveSim {
        let mut rng = Rng::new(cfg.seed);
        let n = cfg.hosts;
        let neighbours = gossip_mesh(n, cfg.degree, &mut rng);
        let members: Vec<usize> = (0..n).collect();
        let ring = Arc::new(Ring::new(&members));
        let hosts = (0..n)
            .map(|h| {
                let mut det = Detector::new(detector_config(&cfg, h, cfg.seed), h, EPOCH_MS);
                det.set_ring(EPOCH_MS, Arc::clone(&ring));
                Host { det, alive: true, seen: HashSet::new() }
            })
            .collect();
        LiveSim {
            now: EPOCH_MS,
            rng,
            hosts,
            ring,
            neighbours,
            group: vec![0; n],
            cut: HashSet::new(),
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            traffic: Traffic::default(),
            held_dead_by: vec![0; n],
            first_down_ms: vec![None; n],
            downs: 0,
            ups: 0,
            rejected: 0,
            cfg,
        }
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn hosts(&self) -> usize {
        self.hosts.len()
    }

    pub fn detector(&self, host: usize) -> &Detector<usize> {
        &self.hosts[host].det
    }

    pub fn is_alive(&self, host: usize) -> bool {
        self.hosts[host].alive
    }

    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.cfg.faults = faults;
    }

    /// How many live hosts hold `host` dead now.
    pub fn held_dead_by(&self, host: usize) -> usize {
        self.held_dead_by[host]
    }

    /// When a live host first held `host` dead.
    pub fn first_down_ms(&self, host: usize) -> Option<u64> {
        self.first_down_ms[host]
    }

    pub fn live_hosts(&self) -> usize {
        self.hosts.iter().filter(|h| h.alive).count()
    }

    /// Every live host holds every live host alive, and every dead one dead.
    pub fn agreed(&self) -> bool {
        let live = self.live_hosts();
        (0..self.hosts.len()).all(|h| {
            if self.hosts[h].alive {
                self.held_dead_by[h] == 0
            } else {
                self.held_dead_by[h] == live
            }
        })
    }

    /// Splits the hosts: `group(h)` names each host's side; messages across sides are lost.
    pub fn partition(&mut self, group: impl Fn(usize) -> u32) {
        self.group = (0..self.hosts.len()).map(group).collect();
    }

    /// Heals partitions and cut links.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
        self.cut.clear();
    }

    /// Every message from `from` to `to` is lost (one direction) until [`LiveSim::heal`].
    pub fn cut_link(&mut self, from: usize, to: usize) {
        self.cut.insert((from, to));
    }

    /// The host stops at once (its detector's memory is gone).
    pub fn crash(&mut self, host: usize) {
        if !self.hosts[host].alive {
            return;
        }
        self.hosts[host].alive = false;
        let dead: Vec<usize> = self.hosts[host].det.dead().copied().collect();
        for p in dead {
            self.held_dead_by[p] -= 1;
        }
    }

    /// The host starts again with a fresh detector (a new incarnation).
    pub fn restart(&mut self, host: usize) {
        let cfg = detector_config(&self.cfg, host, self.cfg.seed ^ self.now);
        let mut det = Detector::new(cfg, host, self.now);
        det.set_ring(self.now, Arc::clone(&self.ring));
        let h = &mut self.hosts[host];
        h.det = det;
        h.seen.clear();
        h.alive = true;
    }

    /// Runs until `done` holds (checked every step) or `max_ms` pass; the time it took.
    pub fn run_until(&mut self, max_ms: u64, done: impl Fn(&LiveSim) -> bool) -> Option<u64> {
        let start = self.now;
        while self.now - start <= max_ms {
            if done(self) {
                return Some(self.now - start);
            }
            self.step();
        }
        None
    }

    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    /// One step of simulated time: deliver what is due, tick the hosts whose turn it is.
    pub fn step(&mut self) {
        self.now += self.cfg.step_ms;
        while let Some(Reverse((at, seq))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            if let Some(d) = self.in_flight.remove(&seq) {
                self.deliver(d);
            }
        }
        let slots = (self.cfg.tick_ms / self.cfg.step_ms).max(1);
        let slot = (self.now / self.cfg.step_ms) % slots;
        for h in 0..self.hosts.len() {
            if self.hosts[h].alive && h as u64 % slots == slot {
                let outs = self.hosts[h].det.tick(self.now);
                self.outputs(h, outs);
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        if !self.hosts[d.to].alive {
            return;
        }
        if let Some((origin, id)) = d.gossip {
            if !self.hosts[d.to].seen.insert(id) {
                return;
            }
            // Gossipsub forwards a message before the application has looked at it.
            for n in self.neighbours[d.to].clone() {
                if n != d.from && n != origin {
                    let msg = d.msg.clone();
                    self.send(d.to, n, Some((origin, id)), msg);
                }
            }
        }
        let outs = self.hosts[d.to].det.handle(self.now, d.from, d.msg);
        self.outputs(d.to, outs);
    }

    fn outputs(&mut self, host: usize, outs: Vec<LiveOutput<usize>>) {
        for o in outs {
            match o {
                LiveOutput::Send { to, msg } => self.send(host, to, None, msg),
                LiveOutput::Broadcast(msg) => {
                    let mut hasher = DefaultHasher::new();
                    (host, self.now, format!("{msg:?}")).hash(&mut hasher);
                    let id = hasher.finish();
                    self.hosts[host].seen.insert(id);
                    for n in self.neighbours[host].clone() {
                        self.send(host, n, Some((host, id)), msg.clone());
                    }
                }
                LiveOutput::Down(p) => {
                    self.downs += 1;
                    self.held_dead_by[p] += 1;
                    self.first_down_ms[p].get_or_insert(self.now);
                }
                LiveOutput::Up(p) => {
                    self.ups += 1;
                    self.held_dead_by[p] -= 1;
                }
                LiveOutput::Stalled(_) => {}
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, gossip: Option<(usize, u64)>, msg: LiveMsg<usize>) {
        let len = msg.encode().map_or(0, |b| b.len() as u64);
        self.traffic.messages += 1;
        self.traffic.bytes += len;
        let f = &self.cfg.faults;
        if !self.hosts[from].alive
            || self.group[from] != self.group[to]
            || self.cut.contains(&(from, to))
            || self.rng.chance(f.loss)
        {
            return;
        }
        let copies = if self.rng.chance(f.duplicate) { 2 } else { 1 };
        for _ in 0..copies {
            let f = &self.cfg.faults;
            let span = f.max_delay_ms.saturating_sub(f.min_delay_ms) as usize + 1;
            let at = self.now + f.min_delay_ms + self.rng.below(span) as u64;
            self.seq += 1;
            self.in_flight.insert(self.seq, Delivery { from, to, gossip, msg: msg.clone() });
            self.queue.push(Reverse((at, self.seq)));
        }
    }
}

fn detector_config(cfg: &LiveSimConfig, host: usize, seed: u64) -> LivenessConfig {
    LivenessConfig {
        seed: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(host as u64),
        ..cfg.detector.clone()
    }
}

/// How long the detectors take to find one dead host, from its death (simulated ms).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveDetection {
    /// The first host holds it dead.
    pub first_dead_ms: Option<u64>,
    /// Every live host holds it dead.
    pub all_dead_ms: Option<u64>,
}

/// Crashes a random host after 5 s of warm-up (past every host's first heartbeats and
/// anti-entropy round) and runs until every live host holds it dead (at most `max_ms`).
pub fn detect(hosts: usize, seed: u64, max_ms: u64) -> LiveDetection {
    let mut sim = LiveSim::new(LiveSimConfig::new(hosts, seed));
    sim.run_for(5_000);
    let victim = Rng::new(seed ^ 0xdead).below(hosts);
    let killed_at = sim.now();
    sim.crash(victim);
    let live = sim.live_hosts();
    let all = sim.run_until(max_ms, |s| s.held_dead_by(victim) == live);
    LiveDetection { first_dead_ms: sim.first_down_ms(victim).map(|t| t - killed_at), all_dead_ms: all }
}

/// Figures of one [`bench`] run.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveBenchReport {
    pub hosts: usize,
    /// Background traffic of a healthy mesh (heartbeats, anti-entropy), per host per second.
    pub idle_messages_per_host_per_s: f64,
    pub idle_bytes_per_host_per_s: f64,
    /// Under `loss` message loss and nobody dying, for `lossy_seconds`: hosts declared dead
    /// anyway (each `Down` a host reported) and suspicions raised, and what was sent.
    pub loss: f64,
    pub lossy_seconds: u64,
    pub false_downs: u64,
    pub lossy_suspicions: u64,
    pub lossy_messages_per_host_per_s: f64,
    pub lossy_bytes_per_host_per_s: f64,
}

/// The background cost of `hosts` detectors on a healthy network, then false positives under
/// 1% loss over `lossy_seconds`. Deterministic for a seed.
pub fn bench(hosts: usize, seed: u64, lossy_seconds: u64) -> LiveBenchReport {
    let mut sim = LiveSim::new(LiveSimConfig::new(hosts, seed));
    sim.run_for(5_000);
    let (t0, before) = (sim.now(), sim.traffic());
    sim.run_for(10_000);
    let (t1, after) = (sim.now(), sim.traffic());
    let per = hosts as f64 * (t1 - t0) as f64 / 1000.0;
    let loss = 0.01;
    sim.set_faults(Faults { loss, ..Faults::none() });
    let (downs0, suspicions0) = (sim.downs, suspicions(&sim));
    let (t2, lossy0) = (sim.now(), sim.traffic());
    sim.run_for(lossy_seconds * 1000);
    let (t3, lossy1) = (sim.now(), sim.traffic());
    let lossy_per = hosts as f64 * (t3 - t2) as f64 / 1000.0;
    LiveBenchReport {
        hosts,
        idle_messages_per_host_per_s: (after.messages - before.messages) as f64 / per,
        idle_bytes_per_host_per_s: (after.bytes - before.bytes) as f64 / per,
        loss,
        lossy_seconds,
        false_downs: sim.downs - downs0,
        lossy_suspicions: suspicions(&sim) - suspicions0,
        lossy_messages_per_host_per_s: (lossy1.messages - lossy0.messages) as f64 / lossy_per,
        lossy_bytes_per_host_per_s: (lossy1.bytes - lossy0.bytes) as f64 / lossy_per,
    }
}

fn suspicions(sim: &LiveSim) -> u64 {
    sim.hosts.iter().map(|h| h.det.stats().suspicions).sum()
}

#[cfg(test)]
mod tests;
