//! A deterministic simulator of many replicas: a virtual clock, a seeded network with loss,
//! duplication, delay (so reordering), partitions and crashes (a crashed host restarts from
//! what it had persisted), and gossip relayed the way gossipsub's mesh does it. Used by the
//! tests and, through [`bench`], by `cargo xtask bench`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use bytes::Bytes;

use crate::msg::Msg;
use crate::object::{Key, Object, Stamp};
use crate::replica::{Config, Output, Replica, ReplicaError, WriteId};
use crate::rng::Rng;

pub mod liveness;
pub mod memberlist;
pub mod sched;

/// The start of simulated time (ms since the Unix epoch): versions look like real ones.
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// What the network does to each message.
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Each delivery takes a uniform delay in `min_delay_ms..=max_delay_ms` (reordering).
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl Faults {
    /// A healthy network: no loss, 1-20 ms per hop.
    pub fn none() -> Faults {
        Faults { loss: 0.0, duplicate: 0.0, min_delay_ms: 1, max_delay_ms: 20 }
    }
}

/// Shape of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub hosts: usize,
    pub seed: u64,
    pub faults: Faults,
    /// Granularity of simulated time.
    pub step_ms: u64,
    /// Each host's `tick` runs this often (hosts staggered).
    pub tick_ms: u64,
    /// Neighbours per host: its gossip mesh (gossipsub's D is 6) and the peers it is given in
    /// `tick` (anti-entropy partners, push targets).
    pub degree: usize,
    /// Template of every replica's config (`node` and `seed` are set per host).
    pub replica: Config,
}

impl SimConfig {
    pub fn new(hosts: usize, seed: u64) -> SimConfig {
        SimConfig {
            hosts,
            seed,
            faults: Faults::none(),
            step_ms: 10,
            tick_ms: 100,
            degree: 6,
            replica: Config::new("template"),
        }
    }
}

/// Messages and bytes (encoded, as on the wire) the hosts sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub messages: u64,
    pub bytes: u64,
}

#[derive(Debug)]
enum Payload {
    Direct(Msg),
    /// A gossip message: its origin, an id for duplicate suppression and its encoded length.
    Gossip {
        origin: usize,
        id: u64,
        len: u64,
        msg: Msg,
    },
}

#[derive(Debug)]
struct Delivery {
    from: usize,
    to: usize,
    payload: Payload,
}

#[derive(Debug)]
struct Host {
    replica: Replica<usize>,
    alive: bool,
    /// What the host persisted: its objects after every call that changed them.
    disk: BTreeMap<Key, Object>,
    /// Gossip ids already seen (gossipsub's seen cache; lost in a crash).
    seen: HashSet<u64>,
}

/// A write made through the simulator and what became of it.
#[derive(Debug, Clone)]
pub struct SimWrite {
    pub host: usize,
    pub key: Key,
    pub stamp: Stamp,
    pub at_ms: u64,
    /// Acknowledged as held by another host.
    pub acked: bool,
    /// When every live host held this stamp or a newer one.
    pub everywhere_at_ms: Option<u64>,
    holders: Vec<bool>,
    holder_count: usize,
}

/// N replicas on a simulated network. Peers are host indices.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    now: u64,
    rng: Rng,
    hosts: Vec<Host>,
    neighbours: Vec<Vec<usize>>,
    /// Partition group of each host; messages between groups are lost.
    group: Vec<u32>,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    in_flight: BTreeMap<u64, Delivery>,
    seq: u64,
    traffic: Traffic,
    /// Bytes sent by each host.
    sent_bytes: Vec<u64>,
    writes: Vec<SimWrite>,
    by_write_id: BTreeMap<(usize, WriteId), usize>,
    /// Writes not yet everywhere, by key.
    watching: BTreeMap<Key, Vec<usize>>,
    /// Messages a replica refused (none in these runs: every host is honest).
    pub rejected: u64,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let n = cfg.hosts;
        let neighbours = gossip_mesh(n, cfg.degree, &mut rng);
        let hosts = (0..n)
            .map(|h| Host {
                replica: Replica::new(host_config(&cfg.replica, h, cfg.seed)),
                alive: true,
                disk: BTreeMap::new(),
                seen: HashSet::new(),
            })
            .collect();
        Sim {
            now: EPOCH_MS,
            rng,
            hosts,
            neighbours,
            group: vec![0; n],
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            traffic: Traffic::default(),
            sent_bytes: vec![0; n],
            writes: Vec::new(),
            by_write_id: BTreeMap::new(),
            watching: BTreeMap::new(),
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

    pub fn replica(&self, host: usize) -> &Replica<usize> {
        &self.hosts[host].replica
    }

    pub fn is_alive(&self, host: usize) -> bool {
        self.hosts[host].alive
    }

    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    /// Bytes each host has sent so far.
    pub fn sent_bytes(&self) -> &[u64] {
        &self.sent_bytes
    }

    pub fn writes(&self) -> &[SimWrite] {
        &self.writes
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.cfg.faults = faults;
    }

    /// Splits the hosts: `group(h)` names each host's side; messages across sides are lost.
    pub fn partition(&mut self, group: impl Fn(usize) -> u32) {
        self.group = (0..self.hosts.len()).map(group).collect();
    }

    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }

    /// The host stops at once: its memory (pending writes, gossip cache) is gone, its disk stays.
    pub fn crash(&mut self, host: usize) {
        self.hosts[host].alive = false;
    }

    /// The host starts again from what it persisted.
    pub fn restart(&mut self, host: usize) -> Result<(), ReplicaError> {
        let cfg = host_config(&self.cfg.replica, host, self.cfg.seed ^ self.now);
        let h = &mut self.hosts[host];
        h.replica = Replica::restore(cfg, h.disk.values().cloned())?;
        h.seen.clear();
        h.alive = true;
        Ok(())
    }

    /// Writes on `host` (which must be alive); returns the index into [`Sim::writes`].
    pub fn write(&mut self, host: usize, key: Key, body: Option<Bytes>) -> Result<usize, ReplicaError> {
        let (id, outs) = self.hosts[host].replica.write(self.now, key.clone(), body)?;
        let stamp = self.hosts[host]
            .replica
            .object(&key)
            .map(|o| o.stamp.clone())
            .ok_or(ReplicaError::Object(crate::object::ObjectError::Empty { field: "written object" }))?;
        let index = self.writes.len();
        let mut holders = vec![false; self.hosts.len()];
        holders[host] = true;
        self.writes.push(SimWrite {
            host,
            key: key.clone(),
            stamp,
            at_ms: self.now,
            acked: false,
            everywhere_at_ms: None,
            holders,
            holder_count: 1,
        });
        self.by_write_id.insert((host, id), index);
        self.watching.entry(key).or_default().push(index);
        self.outputs(host, outs);
        Ok(index)
    }

    /// Every live host holds the same stamps.
    pub fn converged(&self) -> bool {
        let mut roots = self.hosts.iter().filter(|h| h.alive).map(|h| h.replica.root());
        let first = roots.next();
        roots.all(|r| Some(r) == first)
    }

    /// Runs until `done` holds (checked every step) or `max_ms` pass; the time it took.
    pub fn run_until(&mut self, max_ms: u64, done: impl Fn(&Sim) -> bool) -> Option<u64> {
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
                let peers = self.neighbours[h].clone();
                let outs = self.hosts[h].replica.tick(self.now, &peers);
                self.outputs(h, outs);
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        if !self.hosts[d.to].alive {
            return;
        }
        let (from, msg, relay) = match d.payload {
            Payload::Direct(msg) => (d.from, msg, None),
            Payload::Gossip { origin, id, len, msg } => {
                if !self.hosts[d.to].seen.insert(id) {
                    return;
                }
                // The replica asks the relaying peer, as the agent does with gossipsub's
                // propagation source.
                (d.from, msg, Some((origin, id, len)))
            }
        };
        // Gossipsub forwards a message before the application has looked at it.
        if let Some((origin, id, len)) = relay {
            for &n in &self.neighbours[d.to].clone() {
                if n != d.from && n != origin {
                    let payload = Payload::Gossip { origin, id, len, msg: msg.clone() };
                    self.send(d.to, n, len, payload);
                }
            }
        }
        match self.hosts[d.to].replica.handle(self.now, from, msg) {
            Ok(outs) => self.outputs(d.to, outs),
            Err(_) => self.rejected += 1,
        }
    }

    /// Persists, records acks and visibility, and puts messages on the network.
    fn outputs(&mut self, host: usize, outs: Vec<Output<usize>>) {
        for o in &outs {
            match o {
                Output::Changed(key) | Output::Collected(key) => {
                    let h = &mut self.hosts[host];
                    match h.replica.object(key) {
                        Some(obj) => h.disk.insert(key.clone(), obj.clone()),
                        None => h.disk.remove(key),
                    };
                    self.observe(host, key);
                }
                Output::Acked { write, held_by } => {
                    if let Some(&i) = self.by_write_id.get(&(host, *write)) {
                        self.writes[i].acked = held_by.is_some();
                    }
                }
                Output::Send { .. } | Output::Broadcast(_) => {}
            }
        }
        for o in outs {
            match o {
                Output::Send { to, msg } => {
                    let len = msg.encode().map_or(0, |b| b.len() as u64);
                    self.send(host, to, len, Payload::Direct(msg));
                }
                Output::Broadcast(msg) => {
                    let bytes = msg.encode().unwrap_or_default();
                    let mut hasher = DefaultHasher::new();
                    (host, &bytes).hash(&mut hasher);
                    let id = hasher.finish();
                    self.hosts[host].seen.insert(id);
                    let len = bytes.len() as u64;
                    for &n in &self.neighbours[host].clone() {
                        self.send(host, n, len, Payload::Gossip { origin: host, id, len, msg: msg.clone() });
                    }
                }
                _ => {}
            }
        }
    }

    fn observe(&mut self, host: usize, key: &Key) {
        let Some(watch) = self.watching.get(key) else { return };
        let held = self.hosts[host].replica.object(key).map(|o| o.stamp.clone());
        let mut finished = Vec::new();
        for &i in watch {
            let w = &mut self.writes[i];
            if !w.holders[host] && held.as_ref().is_some_and(|s| *s >= w.stamp) {
                w.holders[host] = true;
                w.holder_count += 1;
                if w.holder_count == w.holders.len() {
                    w.everywhere_at_ms = Some(self.now);
                    finished.push(i);
                }
            }
        }
        if let Some(watch) = self.watching.get_mut(key) {
            watch.retain(|i| !finished.contains(i));
            if watch.is_empty() {
                self.watching.remove(key);
            }
        }
    }

    fn send(&mut self, from: usize, to: usize, len: u64, payload: Payload) {
        self.traffic.messages += 1;
        self.traffic.bytes += len;
        self.sent_bytes[from] += len;
        let f = &self.cfg.faults;
        if !self.hosts[from].alive || self.group[from] != self.group[to] || self.rng.chance(f.loss) {
            return;
        }
        let copies = if self.rng.chance(f.duplicate) { 2 } else { 1 };
        let mut payload = Some(payload);
        for c in 0..copies {
            let f = &self.cfg.faults;
            let span = f.max_delay_ms.saturating_sub(f.min_delay_ms) as usize + 1;
            let at = self.now + f.min_delay_ms + self.rng.below(span) as u64;
            let p = if c + 1 == copies { payload.take() } else { payload.as_ref().map(copy) };
            let Some(p) = p else { continue };
            self.seq += 1;
            self.in_flight.insert(self.seq, Delivery { from, to, payload: p });
            self.queue.push(Reverse((at, self.seq)));
        }
    }
}

/// Each host's gossip neighbours: everyone in a small mesh, else a ring (so the mesh is
/// connected) plus random links, about `degree` per host, as gossipsub's mesh.
pub(crate) fn gossip_mesh(n: usize, degree: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut neighbours: Vec<Vec<usize>> = vec![Vec::new(); n];
    if n <= degree + 1 {
        for (h, nb) in neighbours.iter_mut().enumerate() {
            nb.extend((0..n).filter(|&o| o != h));
        }
        return neighbours;
    }
    for h in 0..n {
        let mut link = |a: usize, b: usize| {
            if a != b && !neighbours[a].contains(&b) {
                neighbours[a].push(b);
                neighbours[b].push(a);
            }
        };
        link(h, (h + 1) % n);
        for _ in 0..degree.saturating_sub(2) / 2 {
            link(h, rng.below(n));
        }
    }
    for nb in &mut neighbours {
        nb.sort_unstable();
    }
    neighbours
}

fn copy(p: &Payload) -> Payload {
    match p {
        Payload::Direct(m) => Payload::Direct(m.clone()),
        Payload::Gossip { origin, id, len, msg } => {
            Payload::Gossip { origin: *origin, id: *id, len: *len, msg: msg.clone() }
        }
    }
}

fn host_config(template: &Config, host: usize, seed: u64) -> Config {
    Config {
        node: format!("host-{host:05}"),
        seed: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(host as u64),
        ..template.clone()
    }
}

/// Figures of one [`bench`] run.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    pub hosts: usize,
    pub writes: usize,
    pub body_bytes: usize,
    /// Write on one host -> held by every host, simulated ms.
    pub convergence_p50_ms: u64,
    pub convergence_p95_ms: u64,
    pub convergence_max_ms: u64,
    /// Writes that did not reach every host within the run (should be 0).
    pub not_converged: usize,
    /// Everything sent while the writes spread, per write per host.
    pub messages_per_write_per_host: f64,
    pub bytes_per_write_per_host: f64,
    /// The same with the idle background (anti-entropy rounds) taken out.
    pub messages_per_write_per_host_above_idle: f64,
    pub bytes_per_write_per_host_above_idle: f64,
    /// Background traffic of a converged mesh, per host per second.
    pub idle_messages_per_host_per_s: f64,
    pub idle_bytes_per_host_per_s: f64,
    /// The most any one host sent while the writes spread, per write (the writer's upload
    /// for large bodies).
    pub max_host_bytes_per_write: f64,
}

/// `writes` writes of `body_bytes` each, from random hosts 100 ms apart, on a healthy network
/// of `hosts` hosts (1-20 ms per hop, anti-entropy every second): how long until every host
/// holds each write, and what it costs. Deterministic for a seed. Build with `--release` for
/// 10,000 hosts.
pub fn bench(hosts: usize, writes: usize, body_bytes: usize, seed: u64) -> BenchReport {
    let mut sim = Sim::new(SimConfig::new(hosts, seed));
    // Warm up past the first anti-entropy rounds.
    sim.run_for(2_000);
    let (t0, before, sent0) = (sim.now(), sim.traffic(), sim.sent_bytes().to_vec());
    let mut rng = Rng::new(seed ^ 0x5eed);
    let body = Bytes::from(vec![b'x'; body_bytes]);
    for i in 0..writes {
        let host = rng.below(hosts);
        let key = Key::new("ConfigMap", "default", format!("bench-{i}"));
        // A write fails only on a bad key or body, which these are not.
        let _ = sim.write(host, key, Some(body.clone()));
        sim.run_for(100);
    }
    sim.run_until(60_000, |s| s.writes().iter().all(|w| w.everywhere_at_ms.is_some()));
    let (t1, after) = (sim.now(), sim.traffic());
    let max_sent = sim.sent_bytes().iter().zip(&sent0).map(|(a, b)| a - b).max().unwrap_or(0);
    // The background of a converged mesh holding these objects.
    sim.run_for(3_000);
    let (t2, idle) = (sim.now(), sim.traffic());
    let idle_msgs_per_s = (idle.messages - after.messages) as f64 * 1000.0 / (t2 - t1) as f64;
    let idle_bytes_per_s = (idle.bytes - after.bytes) as f64 * 1000.0 / (t2 - t1) as f64;
    let msgs = (after.messages - before.messages) as f64;
    let bytes = (after.bytes - before.bytes) as f64;
    let idle_window = (t1 - t0) as f64 / 1000.0;
    let per = (writes.max(1) * hosts) as f64;
    let mut times: Vec<u64> =
        sim.writes().iter().filter_map(|w| w.everywhere_at_ms.map(|t| t - w.at_ms)).collect();
    times.sort_unstable();
    let pct = |p: f64| -> u64 {
        if times.is_empty() {
            return 0;
        }
        let i = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1;
        times[i]
    };
    BenchReport {
        hosts,
        writes,
        body_bytes,
        convergence_p50_ms: pct(0.50),
        convergence_p95_ms: pct(0.95),
        convergence_max_ms: times.last().copied().unwrap_or(0),
        not_converged: writes - times.len(),
        messages_per_write_per_host: msgs / per,
        bytes_per_write_per_host: bytes / per,
        messages_per_write_per_host_above_idle: (msgs - idle_msgs_per_s * idle_window) / per,
        bytes_per_write_per_host_above_idle: (bytes - idle_bytes_per_s * idle_window) / per,
        idle_messages_per_host_per_s: idle_msgs_per_s / hosts as f64,
        idle_bytes_per_host_per_s: idle_bytes_per_s / hosts as f64,
        max_host_bytes_per_write: max_sent as f64 / writes.max(1) as f64,
    }
}

#[cfg(test)]
mod tests;
