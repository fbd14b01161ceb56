//! A model of HashiCorp memberlist's dissemination and failure detection with its LAN defaults,
//! run on the same simulated network (the same per-hop latency) as beemesh-state's replicas, so
//! that `state_bench` can print both side by side. It is a model for comparison, not memberlist:
//! it reproduces what decides memberlist's convergence time and traffic (as in `state.go`,
//! `broadcast.go`, `queue.go`, `suspicion.go` and `util.go` of hashicorp/memberlist):
//!
//! - every `gossip_interval_ms` (200 ms) a host with queued broadcasts sends one UDP packet to
//!   each of `gossip_nodes` (3) distinct random peers, each packet filled (up to
//!   `udp_buffer_bytes`, 1400) with the queued broadcasts sent the fewest times, newest first;
//!   every inclusion counts as one transmit and a broadcast is dropped after
//!   `retransmit_mult * ceil(log10(N + 1))` transmits (4 * 4 = 16 at 1,000 hosts, 20 at
//!   10,000); a host that learns something new queues it again (as serf does with user events
//!   and memberlist with alive/suspect/dead messages);
//! - broadcasts are also piggybacked on every ping and ack (memberlist's `sendMsg`);
//! - every `push_pull_interval_ms` (30 s) each host syncs its full state with one random peer
//!   over TCP (a request and a reply, each every member's entry plus every object);
//! - every `probe_interval_ms` (1 s) each host pings a peer; without an ack within
//!   `probe_timeout_ms` (500 ms) it asks `indirect_checks` (3) peers to ping it; without any ack
//!   by the end of the probe interval it suspects the peer and broadcasts it; a suspicion
//!   expires after between `suspicion_mult * max(1, log10(N)) * probe_interval` (min) and
//!   `suspicion_max_timeout_mult` (6) times that (max), shrinking as `suspicion_mult - 2`
//!   independent confirmations arrive (Lifeguard); then the host declares it dead and broadcasts
//!   that.
//!
//! Simplifications: a host picks its probe target at random instead of walking a shuffled list
//! (either way some host probes a given peer about once a second); Lifeguard's awareness
//! (local health) multiplier stays at its healthy value; nacks, TCP fallback pings and the
//! refutation of suspicions by live hosts are left out (only a dead host is ever suspected
//! here); there is no bandwidth model. Sizes: a ping 60 bytes, an ack 16, an indirect ping
//! request 70, a suspect or dead message 40, a member's entry in a push-pull 64, an object
//! broadcast its body plus 80 bytes (key, version and digest, as beemesh's announcement carries
//! them), a packet of several messages 2 + 2 per message more (memberlist's compound header).

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{Faults, Traffic};
use crate::rng::Rng;

const PING_BYTES: u64 = 60;
const ACK_BYTES: u64 = 16;
const INDIRECT_BYTES: u64 = 70;
const SUSPICION_BYTES: u64 = 40;
const MEMBER_ENTRY_BYTES: u64 = 64;
const OBJECT_OVERHEAD_BYTES: u64 = 80;
const COMPOUND_HEADER_BYTES: u64 = 2;
const COMPOUND_PER_MSG_BYTES: u64 = 2;

/// memberlist's `DefaultLANConfig` values that matter here, and the network they run on.
#[derive(Debug, Clone, PartialEq)]
pub struct MlConfig {
    pub hosts: usize,
    pub seed: u64,
    /// Per-hop delay (and loss) of every message, the same model as beemesh's simulator.
    pub faults: Faults,
    pub gossip_interval_ms: u64,
    pub gossip_nodes: usize,
    pub retransmit_mult: u32,
    pub push_pull_interval_ms: u64,
    pub probe_interval_ms: u64,
    pub probe_timeout_ms: u64,
    pub indirect_checks: usize,
    pub suspicion_mult: u32,
    pub suspicion_max_timeout_mult: u32,
    pub udp_buffer_bytes: u64,
}

impl MlConfig {
    /// memberlist's LAN defaults on a healthy network with 1-20 ms per hop.
    pub fn lan(hosts: usize, seed: u64) -> MlConfig {
        MlConfig {
            hosts,
            seed,
            faults: Faults::none(),
            gossip_interval_ms: 200,
            gossip_nodes: 3,
            retransmit_mult: 4,
            push_pull_interval_ms: 30_000,
            probe_interval_ms: 1_000,
            probe_timeout_ms: 500,
            indirect_checks: 3,
            suspicion_mult: 4,
            suspicion_max_timeout_mult: 6,
            udp_buffer_bytes: 1400,
        }
    }

    /// How many times a host sends one broadcast: `retransmit_mult * ceil(log10(N + 1))`.
    pub fn retransmit_limit(&self) -> u32 {
        let scale = ((self.hosts as f64 + 1.0).log10()).ceil() as u32;
        self.retransmit_mult * scale
    }

    /// The shortest suspicion timeout: `suspicion_mult * max(1, log10(N)) * probe_interval`.
    pub fn suspicion_min_ms(&self) -> u64 {
        let scale = (self.hosts.max(1) as f64).log10().max(1.0);
        (f64::from(self.suspicion_mult) * scale * self.probe_interval_ms as f64) as u64
    }

    /// Confirmations that bring a suspicion down to its shortest timeout.
    fn confirmations_wanted(&self) -> u32 {
        let k = self.suspicion_mult.saturating_sub(2);
        if (self.hosts as u32).saturating_sub(2) < k {
            0
        } else {
            k
        }
    }
}

/// What a host believes about the one host that may be dead.
#[derive(Debug, Clone, PartialEq)]
enum View {
    Alive,
    Suspect { since: u64, from: Vec<usize>, generation: u64 },
    Dead,
}

/// A broadcast: an object write (by index) or a verdict about the dead host.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Item {
    Write(usize),
    Suspect { from: usize },
    Dead { from: usize },
}

#[derive(Debug)]
struct Queued {
    item: Item,
    bytes: u64,
    transmits: u32,
    id: u64,
}

#[derive(Debug)]
enum Kind {
    Gossip,
    /// `relay`: the host that asked for an indirect probe, to which the ack goes back.
    Ping {
        probe: u64,
        relay: Option<usize>,
    },
    Ack {
        probe: u64,
        relay: Option<usize>,
    },
    IndirectPing {
        probe: u64,
        target: usize,
    },
    PushPull {
        reply: bool,
        writes: Vec<usize>,
        view: ViewWire,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum ViewWire {
    Alive,
    Suspect,
    Dead,
}

#[derive(Debug)]
struct Packet {
    from: usize,
    kind: Kind,
    items: Vec<Item>,
}

#[derive(Debug)]
enum Event {
    Gossip(usize),
    Probe(usize),
    ProbeDeadline { host: usize, probe: u64, target: usize, indirect: bool },
    PushPull(usize),
    SuspicionTimeout { host: usize, generation: u64 },
    Deliver { to: usize, packet: Packet },
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    // Earliest first in a max-heap.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug)]
struct Host {
    alive: bool,
    /// Offset of this host's gossip timer in the interval.
    gossip_phase: u64,
    gossip_scheduled: bool,
    queue: Vec<Queued>,
    held: Vec<bool>,
    view: View,
    /// The probe waiting for its ack.
    awaiting: Option<u64>,
    dead_at: Option<u64>,
}

/// A write and when every live host held it.
#[derive(Debug, Clone)]
pub struct MlWrite {
    pub host: usize,
    pub at_ms: u64,
    pub everywhere_at_ms: Option<u64>,
    holders: usize,
}

/// The memberlist model running on a simulated network.
#[derive(Debug)]
pub struct Memberlist {
    cfg: MlConfig,
    now: u64,
    seq: u64,
    rng: Rng,
    hosts: Vec<Host>,
    events: BinaryHeap<Scheduled>,
    writes: Vec<MlWrite>,
    body_bytes: Vec<u64>,
    traffic: Traffic,
    live: usize,
    dead_known: usize,
    /// Gossip packets sent, and broadcasts sent (in gossip packets or piggybacked).
    pub gossip_packets: u64,
    pub transmits: u64,
    next_id: u64,
    /// The host killed by [`Memberlist::kill`] and when.
    dead: Option<(usize, u64)>,
    pub first_suspect_ms: Option<u64>,
    pub first_dead_ms: Option<u64>,
    pub all_dead_ms: Option<u64>,
}

impl Memberlist {
    pub fn new(cfg: MlConfig) -> Memberlist {
        let mut rng = Rng::new(cfg.seed);
        let mut events = BinaryHeap::new();
        let mut seq = 0;
        let live = cfg.hosts;
        let mut hosts = Vec::with_capacity(cfg.hosts);
        for h in 0..cfg.hosts {
            hosts.push(Host {
                alive: true,
                gossip_phase: rng.below(cfg.gossip_interval_ms as usize) as u64,
                gossip_scheduled: false,
                queue: Vec::new(),
                held: Vec::new(),
                view: View::Alive,
                awaiting: None,
                dead_at: None,
            });
            let probe_at = rng.below(cfg.probe_interval_ms as usize) as u64;
            let push_pull_at = rng.below(cfg.push_pull_interval_ms as usize) as u64;
            for (at, event) in [(probe_at, Event::Probe(h)), (push_pull_at, Event::PushPull(h))] {
                seq += 1;
                events.push(Scheduled { at, seq, event });
            }
        }
        Memberlist {
            cfg,
            now: 0,
            seq,
            rng,
            hosts,
            events,
            writes: Vec::new(),
            body_bytes: Vec::new(),
            traffic: Traffic::default(),
            live,
            dead_known: 0,
            gossip_packets: 0,
            transmits: 0,
            next_id: 0,
            dead: None,
            first_suspect_ms: None,
            first_dead_ms: None,
            all_dead_ms: None,
        }
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    pub fn writes(&self) -> &[MlWrite] {
        &self.writes
    }

    pub fn config(&self) -> &MlConfig {
        &self.cfg
    }

    /// A write of `body_bytes` on `host`, broadcast to every host; its index in [`Self::writes`].
    pub fn write(&mut self, host: usize, body_bytes: u64) -> usize {
        let w = self.writes.len();
        self.writes.push(MlWrite { host, at_ms: self.now, everywhere_at_ms: None, holders: 0 });
        self.body_bytes.push(body_bytes + OBJECT_OVERHEAD_BYTES);
        self.learn_write(host, w);
        self.enqueue(host, Item::Write(w));
        w
    }

    /// `host` stops answering and sending.
    pub fn kill(&mut self, host: usize) {
        if self.hosts[host].alive {
            self.hosts[host].alive = false;
            self.live -= 1;
        }
        self.dead = Some((host, self.now));
    }

    /// Processes every event up to `now + ms`.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        self.run_until(end, |_| false);
    }

    /// Processes events until `done` holds (checked after each event) or time `end`.
    pub fn run_until(&mut self, end: u64, done: impl Fn(&Memberlist) -> bool) -> bool {
        while let Some(top) = self.events.peek() {
            if top.at > end {
                break;
            }
            let Some(ev) = self.events.pop() else { break };
            self.now = ev.at;
            self.handle(ev.event);
            if done(self) {
                return true;
            }
        }
        self.now = self.now.max(end);
        done(self)
    }

    fn schedule(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.events.push(Scheduled { at, seq: self.seq, event });
    }

    fn send(&mut self, from: usize, to: usize, kind: Kind, items: Vec<Item>, bytes: u64) {
        self.traffic.messages += 1;
        self.traffic.bytes += bytes;
        let f = &self.cfg.faults;
        if !self.hosts[to].alive || self.rng.chance(f.loss) {
            return;
        }
        let span = f.max_delay_ms.saturating_sub(f.min_delay_ms) as usize + 1;
        let at = self.now + f.min_delay_ms + self.rng.below(span) as u64;
        self.schedule(at, Event::Deliver { to, packet: Packet { from, kind, items } });
    }

    /// `k` distinct random hosts other than `host` (fewer if there are not enough).
    fn random_peers(&mut self, host: usize, k: usize, except: Option<usize>) -> Vec<usize> {
        let n = self.hosts.len();
        let available = n - 1 - usize::from(except.is_some_and(|e| e != host));
        let k = k.min(available);
        let mut out = Vec::with_capacity(k);
        while out.len() < k {
            let p = self.rng.below(n);
            if p != host && Some(p) != except && !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    fn enqueue(&mut self, host: usize, item: Item) {
        let bytes = match item {
            Item::Write(w) => self.body_bytes[w],
            Item::Suspect { .. } | Item::Dead { .. } => SUSPICION_BYTES,
        };
        let h = &mut self.hosts[host];
        if !matches!(item, Item::Write(_)) {
            // A newer message about the node invalidates the queued one (NamedBroadcast).
            h.queue.retain(|q| matches!(q.item, Item::Write(_)));
        }
        self.next_id += 1;
        h.queue.push(Queued { item, bytes, transmits: 0, id: self.next_id });
        if !h.gossip_scheduled {
            h.gossip_scheduled = true;
            let interval = self.cfg.gossip_interval_ms;
            let phase = h.gossip_phase;
            let next =
                if self.now < phase { phase } else { phase + ((self.now - phase) / interval + 1) * interval };
            self.schedule(next, Event::Gossip(host));
        }
    }

    /// Takes the broadcasts to piggyback in `avail` bytes: fewest transmits first, then newest.
    fn take_broadcasts(&mut self, host: usize, avail: u64) -> (Vec<Item>, u64) {
        let limit = self.cfg.retransmit_limit();
        let h = &mut self.hosts[host];
        h.queue.sort_by(|a, b| a.transmits.cmp(&b.transmits).then(b.id.cmp(&a.id)));
        let (mut items, mut used) = (Vec::new(), 0);
        for q in &mut h.queue {
            if used + q.bytes + COMPOUND_PER_MSG_BYTES > avail {
                continue;
            }
            used += q.bytes + COMPOUND_PER_MSG_BYTES;
            q.transmits += 1;
            self.transmits += 1;
            items.push(q.item);
        }
        h.queue.retain(|q| q.transmits < limit);
        (items, used)
    }

    /// Bytes of a packet carrying `own` bytes of its own message plus piggybacked `extra`.
    fn packet_bytes(own: u64, items: usize, extra: u64) -> u64 {
        if items == 0 {
            own
        } else {
            own + extra + COMPOUND_HEADER_BYTES + COMPOUND_PER_MSG_BYTES
        }
    }

    fn send_with_piggyback(&mut self, from: usize, to: usize, kind: Kind, own: u64) {
        let avail = self.cfg.udp_buffer_bytes.saturating_sub(own + COMPOUND_HEADER_BYTES);
        let (items, extra) = self.take_broadcasts(from, avail);
        let bytes = Self::packet_bytes(own, items.len(), extra);
        self.send(from, to, kind, items, bytes);
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Gossip(h) => self.gossip(h),
            Event::Probe(h) => self.probe(h),
            Event::ProbeDeadline { host, probe, target, indirect } => {
                self.probe_deadline(host, probe, target, indirect)
            }
            Event::PushPull(h) => self.push_pull(h),
            Event::SuspicionTimeout { host, generation } => self.suspicion_timeout(host, generation),
            Event::Deliver { to, packet } => self.deliver(to, packet),
        }
    }

    fn gossip(&mut self, h: usize) {
        self.hosts[h].gossip_scheduled = false;
        if !self.hosts[h].alive || self.hosts[h].queue.is_empty() {
            return;
        }
        let targets = self.random_peers(h, self.cfg.gossip_nodes, None);
        for t in targets {
            let avail = self.cfg.udp_buffer_bytes - COMPOUND_HEADER_BYTES;
            let (items, used) = self.take_broadcasts(h, avail);
            if items.is_empty() {
                break;
            }
            // One message goes alone, several in a compound packet.
            let bytes =
                if items.len() == 1 { used - COMPOUND_PER_MSG_BYTES } else { used + COMPOUND_HEADER_BYTES };
            self.gossip_packets += 1;
            self.send(h, t, Kind::Gossip, items, bytes);
        }
        if !self.hosts[h].queue.is_empty() {
            self.hosts[h].gossip_scheduled = true;
            self.schedule(self.now + self.cfg.gossip_interval_ms, Event::Gossip(h));
        }
    }

    fn probe(&mut self, h: usize) {
        if !self.hosts[h].alive {
            return;
        }
        self.schedule(self.now + self.cfg.probe_interval_ms, Event::Probe(h));
        // Hosts declared dead are not probed.
        let dead_known = matches!(self.hosts[h].view, View::Dead);
        let except = if dead_known { self.dead.map(|(d, _)| d) } else { None };
        let Some(&target) = self.random_peers(h, 1, except).first() else { return };
        self.next_id += 1;
        let probe = self.next_id;
        self.hosts[h].awaiting = Some(probe);
        self.send_with_piggyback(h, target, Kind::Ping { probe, relay: None }, PING_BYTES);
        let at = self.now + self.cfg.probe_timeout_ms;
        self.schedule(at, Event::ProbeDeadline { host: h, probe, target, indirect: false });
    }

    fn probe_deadline(&mut self, h: usize, probe: u64, target: usize, indirect: bool) {
        if !self.hosts[h].alive || self.hosts[h].awaiting != Some(probe) {
            return;
        }
        if !indirect {
            for helper in self.random_peers(h, self.cfg.indirect_checks, Some(target)) {
                self.send_with_piggyback(h, helper, Kind::IndirectPing { probe, target }, INDIRECT_BYTES);
            }
            // The end of the probe interval, just before the host's next probe starts.
            let at = self.now + self.cfg.probe_interval_ms - self.cfg.probe_timeout_ms - 1;
            self.schedule(at, Event::ProbeDeadline { host: h, probe, target, indirect: true });
            return;
        }
        self.hosts[h].awaiting = None;
        if Some(target) == self.dead.map(|(d, _)| d) {
            self.suspect(h, h);
        }
    }

    /// `h` suspects the dead host, on its own probe (`from == h`) or on a message from `from`.
    fn suspect(&mut self, h: usize, from: usize) {
        if self.first_suspect_ms.is_none() {
            self.first_suspect_ms = self.dead.map(|(_, at)| self.now - at);
        }
        let wanted = self.cfg.confirmations_wanted();
        let min = self.cfg.suspicion_min_ms();
        let max = min * u64::from(self.cfg.suspicion_max_timeout_mult);
        let (since, confirmations, generation) = match &mut self.hosts[h].view {
            View::Dead => return,
            View::Alive => {
                self.hosts[h].view = View::Suspect { since: self.now, from: vec![from], generation: 0 };
                (self.now, 0, 0)
            }
            View::Suspect { since, from: seen, generation } => {
                if seen.len() as u32 > wanted || seen.contains(&from) {
                    return;
                }
                seen.push(from);
                *generation += 1;
                (*since, seen.len() as u32 - 1, *generation)
            }
        };
        // Lifeguard: max - (max - min) * log(n + 1) / log(k + 1), at least min.
        let timeout = if wanted == 0 {
            min
        } else {
            let frac = f64::from(confirmations + 1).ln() / f64::from(wanted + 1).ln();
            ((max as f64 - (max - min) as f64 * frac) as u64).max(min)
        };
        self.schedule((since + timeout).max(self.now), Event::SuspicionTimeout { host: h, generation });
        self.enqueue(h, Item::Suspect { from });
    }

    fn suspicion_timeout(&mut self, h: usize, generation: u64) {
        match self.hosts[h].view {
            View::Suspect { generation: g, .. } if g == generation && self.hosts[h].alive => {
                self.declare_dead(h);
                self.enqueue(h, Item::Dead { from: h });
            }
            _ => {}
        }
    }

    fn declare_dead(&mut self, h: usize) {
        if matches!(self.hosts[h].view, View::Dead) {
            return;
        }
        self.hosts[h].view = View::Dead;
        self.hosts[h].dead_at = Some(self.now);
        let Some((_, killed_at)) = self.dead else { return };
        let since = self.now - killed_at;
        self.first_dead_ms.get_or_insert(since);
        if self.hosts[h].alive {
            self.dead_known += 1;
        }
        if self.dead_known == self.live {
            self.all_dead_ms = Some(since);
        }
    }

    fn push_pull(&mut self, h: usize) {
        if !self.hosts[h].alive {
            return;
        }
        self.schedule(self.now + self.cfg.push_pull_interval_ms, Event::PushPull(h));
        let Some(&peer) = self.random_peers(h, 1, None).first() else { return };
        self.send_state(h, peer, false);
    }

    fn send_state(&mut self, from: usize, to: usize, reply: bool) {
        let writes: Vec<usize> =
            (0..self.writes.len()).filter(|&w| self.hosts[from].held.get(w) == Some(&true)).collect();
        let bytes = self.hosts.len() as u64 * MEMBER_ENTRY_BYTES
            + writes.iter().map(|&w| self.body_bytes[w]).sum::<u64>();
        let view = match self.hosts[from].view {
            View::Alive => ViewWire::Alive,
            View::Suspect { .. } => ViewWire::Suspect,
            View::Dead => ViewWire::Dead,
        };
        self.send(from, to, Kind::PushPull { reply, writes, view }, Vec::new(), bytes);
    }

    fn learn_write(&mut self, h: usize, w: usize) {
        let held = &mut self.hosts[h].held;
        if held.len() < self.writes.len() {
            held.resize(self.writes.len(), false);
        }
        if held[w] {
            return;
        }
        held[w] = true;
        let write = &mut self.writes[w];
        write.holders += 1;
        if write.holders == self.live {
            write.everywhere_at_ms = Some(self.now);
        }
    }

    fn deliver(&mut self, to: usize, packet: Packet) {
        if !self.hosts[to].alive {
            return;
        }
        for item in packet.items {
            match item {
                Item::Write(w) => {
                    let new = self.hosts[to].held.get(w).is_none_or(|held| !held);
                    if new {
                        self.learn_write(to, w);
                        self.enqueue(to, Item::Write(w));
                    }
                }
                Item::Suspect { from } => self.suspect(to, from),
                Item::Dead { from } => {
                    if !matches!(self.hosts[to].view, View::Dead) {
                        self.declare_dead(to);
                        self.enqueue(to, Item::Dead { from });
                    }
                }
            }
        }
        let from = packet.from;
        match packet.kind {
            Kind::Gossip | Kind::Ack { relay: None, .. } => {
                if let Kind::Ack { probe, .. } = packet.kind {
                    if self.hosts[to].awaiting == Some(probe) {
                        self.hosts[to].awaiting = None;
                    }
                }
            }
            Kind::Ack { probe, relay: Some(origin) } => {
                self.send_with_piggyback(to, origin, Kind::Ack { probe, relay: None }, ACK_BYTES);
            }
            Kind::Ping { probe, relay } => {
                self.send_with_piggyback(to, from, Kind::Ack { probe, relay }, ACK_BYTES);
            }
            Kind::IndirectPing { probe, target } => {
                self.send_with_piggyback(to, target, Kind::Ping { probe, relay: Some(from) }, PING_BYTES);
            }
            Kind::PushPull { reply, writes, view } => {
                if !reply {
                    self.send_state(to, from, true);
                }
                // Merged without rebroadcast (memberlist's MergeRemoteState).
                for w in writes {
                    self.learn_write(to, w);
                }
                // mergeState: a peer's dead verdict becomes a suspicion here.
                if view != ViewWire::Alive && self.dead.is_some() {
                    self.suspect(to, from);
                }
            }
        }
    }
}

mod bench;
pub use bench::{bench, detect, percentile, Detection, MlBenchReport};

#[cfg(test)]
mod tests;
