//! A scalable failure detector, sans-IO: every host is watched by k others chosen from the
//! member list by ring hashing (so every host agrees who watches whom), sends them a small
//! heartbeat every interval, and is declared dead by a quorum of its watchers once they hear
//! nothing (after probing it directly and asking each other); the verdict is broadcast and
//! every host counts it. A host declared dead refutes with a higher incarnation, as in SWIM.
//! The agent's swarm loop drives a [`Detector`] with time and messages (request-response for
//! `Send`, a gossip topic for `Broadcast`); [`crate::sim::liveness`] drives thousands of them.
//! The design and its figures are in `docs/state.md`.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

pub mod msg;
pub mod ring;

pub use msg::{LiveMsg, LiveMsgError, Verdict, MAX_LIVE_MSG_BYTES, MAX_VERDICTS};
pub use ring::Ring;

use crate::rng::Rng;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LivenessError {
    #[error("bad liveness message: {0}")]
    Msg(#[from] LiveMsgError),
}

/// Knobs of a detector. [`LivenessConfig::default`] has the defaults the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessConfig {
    /// Watchers per host (k).
    pub watchers: usize,
    /// Watchers (counting the one deciding) that must suspect a host before it is declared
    /// dead; capped at the host's number of watchers in small meshes.
    pub quorum: usize,
    /// A host sends a heartbeat to each of its watchers this often.
    pub heartbeat_interval_ms: u64,
    /// A watcher that has heard nothing from a host for this long suspects it: probes it and
    /// tells the host's other watchers.
    pub suspect_after_ms: u64,
    /// A suspicion confirmed by a quorum becomes a verdict after this long (time for the
    /// probe's answer or another watcher's "heard it" to arrive); probes repeat this often.
    pub probe_wait_ms: u64,
    /// A suspicion no other watcher confirms nor refutes becomes a verdict after this long
    /// (the other watchers may be dead or cut off too).
    pub lone_verdict_after_ms: u64,
    /// Every this often (jittered) a host sends a heartbeat to a random member, dead ones
    /// included: anti-entropy of verdicts, and how hosts on both sides of a healed partition
    /// find each other again.
    pub sync_interval_ms: u64,
    /// A host refutes verdicts about itself at most this often (by broadcast).
    pub refute_interval_ms: u64,
    /// Two ticks further apart than this mean this host itself did not run meanwhile
    /// (overloaded, paused, starved of CPU): the gap is not held against the hosts it watches,
    /// whose heartbeats may wait unread in its queues (Lifeguard's local health awareness).
    /// Must exceed the driver's tick interval.
    pub stall_after_ms: u64,
    /// Seed of the random choices (anti-entropy partner, jitter).
    pub seed: u64,
}

impl Default for LivenessConfig {
    fn default() -> LivenessConfig {
        LivenessConfig {
            watchers: 3,
            quorum: 2,
            heartbeat_interval_ms: 1_000,
            suspect_after_ms: 2_500,
            probe_wait_ms: 500,
            lone_verdict_after_ms: 3_000,
            sync_interval_ms: 5_000,
            refute_interval_ms: 1_000,
            stall_after_ms: 500,
            seed: 0,
        }
    }
}

/// What this host believes about another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Not dead. `last_heard_ms`: this host's last heartbeat from it, for the hosts it watches
    /// (others report to their own watchers; `None` here).
    Alive { last_heard_ms: Option<u64> },
    /// This host watches it and has heard nothing from it since `since_ms`'s suspicion began
    /// (only its watchers ever suspect a host).
    Suspect { since_ms: u64 },
    /// Declared dead (by this host or a verdict it received) at `since_ms`.
    Dead { since_ms: u64 },
}

/// What the driver must do after a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LiveOutput<P> {
    /// To one peer (request-response).
    Send { to: P, msg: LiveMsg<P> },
    /// To every host (the liveness gossip topic).
    Broadcast(LiveMsg<P>),
    /// A host held dead is alive again.
    Up(P),
    /// A host is now held dead.
    Down(P),
    /// This host did not run for this many ms (ticks that far apart): the time was not held
    /// against the hosts it watches. Worth a warning: the host is overloaded.
    Stalled(u64),
}

/// Counters for operators and the simulator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveStats {
    /// Suspicions this host raised as a watcher.
    pub suspicions: u64,
    /// Suspicions dropped because the host answered or another watcher had heard it.
    pub suspicions_cleared: u64,
    /// Hosts this host declared dead itself.
    pub verdicts: u64,
    /// Times this host refuted a verdict about itself.
    pub refutations: u64,
    /// Messages from hosts that are not members, or about hosts that are not.
    pub ignored: u64,
    /// Messages that did not decode or were out of bounds.
    pub rejected: u64,
    /// Times this host found it had not run for longer than `stall_after_ms`.
    #[serde(default)]
    pub stalls: u64,
}

/// A verdict this host holds: dead, or alive again at a higher incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    incarnation: u64,
    dead_since: Option<u64>,
}

/// A host this one watches.
#[derive(Debug, Clone)]
struct Watch {
    /// The last heartbeat, or when this host started watching (a grace period).
    last_heard_ms: u64,
    /// The last message from the host itself: only that lets this host vouch for it to
    /// another watcher (a grace period or a vouch received must not, or two watchers could
    /// keep vouching for a dead host to each other).
    heard_itself_ms: Option<u64>,
    incarnation: u64,
    suspect_since: Option<u64>,
    next_probe_ms: u64,
    /// Other watchers that told this host they hear nothing, and when.
    votes: Vec<(u64, usize)>,
}

/// One host's failure detector. `P` is the host id (the agent's libp2p PeerId, the
/// simulator's index); it must serialise, since messages name hosts.
#[derive(Debug)]
pub struct Detector<P> {
    cfg: LivenessConfig,
    me: P,
    incarnation: u64,
    ring: Arc<Ring<P>>,
    my_pos: Option<usize>,
    records: BTreeMap<P, Record>,
    /// XOR of the hashes of the dead records: equal digests, equal verdicts (whp).
    digest: u64,
    watched: BTreeMap<P, Watch>,
    watchers: Vec<P>,
    next_heartbeat_ms: u64,
    next_sync_ms: u64,
    last_refute_ms: Option<u64>,
    /// The last tick (a longer gap than `stall_after_ms` since is a stall of this host).
    last_tick_ms: Option<u64>,
    /// Peers sent our verdicts recently (rate limit of anti-entropy answers).
    verdicts_sent: BTreeMap<P, u64>,
    rng: Rng,
    stats: LiveStats,
}

impl<P> Detector<P>
where
    P: Ord + Clone + Hash + Debug + Serialize + DeserializeOwned,
{
    /// A detector for host `me`. Its incarnation starts at `now_ms` (wall clock): a restarted
    /// host outranks every verdict about its previous life.
    pub fn new(cfg: LivenessConfig, me: P, now_ms: u64) -> Detector<P> {
        let mut rng = Rng::new(cfg.seed);
        let next_heartbeat_ms = now_ms + rng.below(cfg.heartbeat_interval_ms.max(1) as usize) as u64;
        let next_sync_ms =
            now_ms + cfg.sync_interval_ms / 2 + rng.below(cfg.sync_interval_ms.max(1) as usize) as u64;
        Detector {
            incarnation: now_ms,
            me,
            ring: Arc::new(Ring::default()),
            my_pos: None,
            records: BTreeMap::new(),
            digest: 0,
            watched: BTreeMap::new(),
            watchers: Vec::new(),
            next_heartbeat_ms,
            next_sync_ms,
            last_refute_ms: None,
            last_tick_ms: None,
            verdicts_sent: BTreeMap::new(),
            rng,
            stats: LiveStats::default(),
            cfg,
        }
    }

    pub fn me(&self) -> &P {
        &self.me
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    pub fn stats(&self) -> LiveStats {
        self.stats
    }

    /// The hosts this one reports to.
    pub fn watchers(&self) -> &[P] {
        &self.watchers
    }

    /// The hosts this one watches.
    pub fn watched(&self) -> impl Iterator<Item = &P> {
        self.watched.keys()
    }

    /// The digest of the dead verdicts this host holds.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Hosts held dead now.
    pub fn dead(&self) -> impl Iterator<Item = &P> {
        self.records.iter().filter(|(_, r)| r.dead_since.is_some()).map(|(p, _)| p)
    }

    /// The member list (the agent feeds it from the Node records of the cluster state).
    /// Verdicts about hosts no longer members are forgotten.
    pub fn set_members(&mut self, now_ms: u64, members: &[P]) -> Vec<LiveOutput<P>> {
        self.set_ring(now_ms, Arc::new(Ring::new(members)))
    }

    /// [`Detector::set_members`] with a ring built once (the simulator shares one).
    pub fn set_ring(&mut self, now_ms: u64, ring: Arc<Ring<P>>) -> Vec<LiveOutput<P>> {
        self.ring = ring;
        self.my_pos = self.ring.position(&self.me);
        let ring = Arc::clone(&self.ring);
        self.records.retain(|p, _| ring.contains(p));
        self.digest = self
            .records
            .iter()
            .filter(|(_, r)| r.dead_since.is_some())
            .fold(0, |d, (p, r)| d ^ verdict_hash(p, r.incarnation));
        self.reassign(now_ms);
        Vec::new()
    }

    /// What this host believes about `p`; `None` for a host that is not a member.
    pub fn status(&self, p: &P) -> Option<Liveness> {
        if *p == self.me {
            return Some(Liveness::Alive { last_heard_ms: None });
        }
        if !self.ring.contains(p) {
            return None;
        }
        if let Some(since_ms) = self.records.get(p).and_then(|r| r.dead_since) {
            return Some(Liveness::Dead { since_ms });
        }
        Some(match self.watched.get(p) {
            Some(Watch { suspect_since: Some(since_ms), .. }) => Liveness::Suspect { since_ms: *since_ms },
            Some(w) => Liveness::Alive { last_heard_ms: Some(w.last_heard_ms) },
            None => Liveness::Alive { last_heard_ms: None },
        })
    }

    /// Decodes and handles a message from `from`; a bad one is an error and changes nothing.
    pub fn handle_bytes(
        &mut self,
        now_ms: u64,
        from: P,
        bytes: &[u8],
    ) -> Result<Vec<LiveOutput<P>>, LivenessError> {
        match LiveMsg::decode(bytes) {
            Ok(msg) => Ok(self.handle(now_ms, from, msg)),
            Err(e) => {
                self.stats.rejected += 1;
                Err(e.into())
            }
        }
    }

    /// Handles a message from `from` (a broadcast's origin or relay, or a direct sender).
    pub fn handle(&mut self, now_ms: u64, from: P, msg: LiveMsg<P>) -> Vec<LiveOutput<P>> {
        let mut out = Vec::new();
        if from == self.me || !self.ring.contains(&from) {
            self.stats.ignored += 1;
            return out;
        }
        match msg {
            LiveMsg::Heartbeat { incarnation, digest } => {
                if self.heard_from(now_ms, &from, incarnation, &mut out) && digest != self.digest {
                    self.send_verdicts(now_ms, &from, true, &mut out);
                }
            }
            LiveMsg::Probe => out.push(self.heartbeat_to(from)),
            LiveMsg::Suspect { target, incarnation } => {
                let quiet = self.cfg.suspect_after_ms;
                if let Some(w) = self.watched.get_mut(&target) {
                    let heard = w.heard_itself_ms.is_some_and(|at| now_ms.saturating_sub(at) < quiet);
                    if w.suspect_since.is_none() && heard {
                        let incarnation = w.incarnation.max(incarnation);
                        out.push(LiveOutput::Send { to: from, msg: LiveMsg::Heard { target, incarnation } });
                    } else if let Some(pos) = self.ring.position(&from) {
                        w.votes.retain(|(_, v)| *v != pos);
                        w.votes.push((now_ms, pos));
                    }
                } else {
                    self.stats.ignored += 1;
                }
            }
            LiveMsg::Heard { target, incarnation } => {
                if let Some(w) = self.watched.get_mut(&target) {
                    if w.suspect_since.take().is_some() {
                        self.stats.suspicions_cleared += 1;
                    }
                    w.last_heard_ms = now_ms;
                    w.incarnation = w.incarnation.max(incarnation);
                    w.votes.clear();
                }
            }
            LiveMsg::Dead { target, incarnation } => self.apply(now_ms, target, incarnation, true, &mut out),
            LiveMsg::Alive { target, incarnation } => {
                self.apply(now_ms, target, incarnation, false, &mut out)
            }
            LiveMsg::Verdicts { digest, reply, entries } => {
                for v in entries {
                    self.apply(now_ms, v.host, v.incarnation, v.dead, &mut out);
                }
                if reply && digest != self.digest {
                    self.send_verdicts(now_ms, &from, false, &mut out);
                }
            }
        }
        out
    }

    /// Heartbeats when due, suspicions and verdicts on the hosts this one watches, the
    /// anti-entropy heartbeat. The driver calls it often (every 100 ms or so).
    pub fn tick(&mut self, now_ms: u64) -> Vec<LiveOutput<P>> {
        let mut out = Vec::new();
        if let Some(gap) = self.last_tick_ms.replace(now_ms).map(|t| now_ms.saturating_sub(t)) {
            if gap > self.cfg.stall_after_ms {
                self.stats.stalls += 1;
                self.discount(now_ms, gap);
                out.push(LiveOutput::Stalled(gap));
            }
        }
        if self.my_pos.is_none() {
            return out;
        }
        if now_ms >= self.next_heartbeat_ms {
            for to in self.watchers.clone() {
                out.push(self.heartbeat_to(to));
            }
            self.next_heartbeat_ms += self.cfg.heartbeat_interval_ms;
            if self.next_heartbeat_ms <= now_ms {
                self.next_heartbeat_ms = now_ms + self.cfg.heartbeat_interval_ms;
            }
        }
        let mut verdicts = Vec::new();
        let quorum_of = |watchers: usize, cfg: &LivenessConfig| cfg.quorum.min(watchers).max(1);
        for (target, w) in self.watched.iter_mut() {
            let quiet = now_ms.saturating_sub(w.last_heard_ms);
            w.votes.retain(|(at, _)| now_ms.saturating_sub(*at) < self.cfg.suspect_after_ms);
            match w.suspect_since {
                None if quiet >= self.cfg.suspect_after_ms => {
                    w.suspect_since = Some(now_ms);
                    w.next_probe_ms = now_ms + self.cfg.probe_wait_ms;
                    self.stats.suspicions += 1;
                    verdicts.push((target.clone(), w.incarnation, false));
                }
                Some(since) => {
                    let age = now_ms - since;
                    let others = watchers_of(&self.ring, &self.records, target, self.cfg.watchers);
                    let votes = 1 + w.votes.len();
                    if (votes >= quorum_of(others.len(), &self.cfg) && age >= self.cfg.probe_wait_ms)
                        || age >= self.cfg.lone_verdict_after_ms
                    {
                        verdicts.push((target.clone(), w.incarnation, true));
                    } else if now_ms >= w.next_probe_ms {
                        w.next_probe_ms = now_ms + self.cfg.probe_wait_ms;
                        verdicts.push((target.clone(), w.incarnation, false));
                    }
                }
                None => {}
            }
        }
        for (target, incarnation, dead) in verdicts {
            if dead {
                self.stats.verdicts += 1;
                self.apply(now_ms, target.clone(), incarnation, true, &mut out);
                out.push(LiveOutput::Broadcast(LiveMsg::Dead { target, incarnation }));
            } else {
                // Probe it, and tell its other watchers (who answer if they heard it).
                out.push(LiveOutput::Send { to: target.clone(), msg: LiveMsg::Probe });
                for to in watchers_of(&self.ring, &self.records, &target, self.cfg.watchers) {
                    if to != self.me {
                        let msg = LiveMsg::Suspect { target: target.clone(), incarnation };
                        out.push(LiveOutput::Send { to, msg });
                    }
                }
            }
        }
        if now_ms >= self.next_sync_ms && self.ring.len() > 1 {
            let jitter = self.rng.below(self.cfg.sync_interval_ms.max(1) as usize) as u64;
            self.next_sync_ms = now_ms + self.cfg.sync_interval_ms / 2 + jitter;
            let to = self.ring.at(self.rng.below(self.ring.len())).clone();
            if to != self.me {
                out.push(self.heartbeat_to(to));
            }
        }
        let window = self.cfg.sync_interval_ms;
        self.verdicts_sent.retain(|_, at| now_ms.saturating_sub(*at) < window);
        out
    }

    /// This host did not run for `gap` ms: what it watches gets that time back (silence,
    /// suspicions, probes and votes all move forward by it), so that it first reads what waited
    /// for it. A host that really died meanwhile is found `gap` later.
    fn discount(&mut self, now_ms: u64, gap: u64) {
        let later = |t: u64| (t + gap).min(now_ms);
        for w in self.watched.values_mut() {
            w.last_heard_ms = later(w.last_heard_ms);
            w.suspect_since = w.suspect_since.map(later);
            w.next_probe_ms = later(w.next_probe_ms);
            for (at, _) in &mut w.votes {
                *at = later(*at);
            }
        }
    }

    fn heartbeat_to(&self, to: P) -> LiveOutput<P> {
        LiveOutput::Send {
            to,
            msg: LiveMsg::Heartbeat { incarnation: self.incarnation, digest: self.digest },
        }
    }

    /// A message from `from` at `incarnation` proves it alive at that incarnation. A host held
    /// dead is told the verdict, so that it broadcasts its refutation (or, back with a higher
    /// incarnation, its return) to every host; false when the verdict still stands here.
    fn heard_from(&mut self, now_ms: u64, from: &P, incarnation: u64, out: &mut Vec<LiveOutput<P>>) -> bool {
        if let Some(r) = self.records.get(from).filter(|r| r.dead_since.is_some()) {
            let msg = LiveMsg::Dead { target: from.clone(), incarnation: r.incarnation };
            out.push(LiveOutput::Send { to: from.clone(), msg });
            if r.incarnation >= incarnation {
                return false;
            }
        }
        self.apply(now_ms, from.clone(), incarnation, false, out);
        if let Some(w) = self.watched.get_mut(from) {
            if w.suspect_since.take().is_some() {
                self.stats.suspicions_cleared += 1;
            }
            w.last_heard_ms = now_ms;
            w.heard_itself_ms = Some(now_ms);
            w.incarnation = w.incarnation.max(incarnation);
            w.votes.clear();
        }
        true
    }

    /// Takes a verdict (`dead`) or a claim of life at `incarnation` about `target`, if it is
    /// news: dead beats alive at the same incarnation, a higher incarnation beats both.
    fn apply(&mut self, now_ms: u64, target: P, incarnation: u64, dead: bool, out: &mut Vec<LiveOutput<P>>) {
        if target == self.me {
            if dead {
                self.refute(now_ms, incarnation, out);
            }
            return;
        }
        if !self.ring.contains(&target) {
            self.stats.ignored += 1;
            return;
        }
        let known = self.watched.get(&target).map_or(0, |w| w.incarnation);
        let current = self.records.get(&target).copied();
        let was_dead = current.is_some_and(|r| r.dead_since.is_some());
        let current_inc = current.map_or(0, |r| r.incarnation).max(known);
        if let Some(w) = self.watched.get_mut(&target) {
            w.incarnation = w.incarnation.max(if dead { 0 } else { incarnation });
        }
        let news = if dead {
            !was_dead && incarnation >= current_inc || was_dead && incarnation > current_inc
        } else {
            // A claim of life matters only against a verdict held: no record is kept for
            // hosts never declared dead.
            current.is_some() && incarnation > current_inc
        };
        if !news {
            return;
        }
        if let Some(r) = current.filter(|r| r.dead_since.is_some()) {
            self.digest ^= verdict_hash(&target, r.incarnation);
        }
        let record = Record { incarnation, dead_since: dead.then_some(now_ms) };
        if dead {
            self.digest ^= verdict_hash(&target, incarnation);
        }
        self.records.insert(target.clone(), record);
        if dead != was_dead {
            out.push(if dead { LiveOutput::Down(target) } else { LiveOutput::Up(target) });
            self.reassign(now_ms);
        }
    }

    fn refute(&mut self, now_ms: u64, incarnation: u64, out: &mut Vec<LiveOutput<P>>) {
        if incarnation >= self.incarnation {
            self.incarnation = (incarnation + 1).max(now_ms);
        }
        if self.last_refute_ms.is_some_and(|at| now_ms.saturating_sub(at) < self.cfg.refute_interval_ms) {
            return;
        }
        self.last_refute_ms = Some(now_ms);
        self.stats.refutations += 1;
        out.push(LiveOutput::Broadcast(LiveMsg::Alive {
            target: self.me.clone(),
            incarnation: self.incarnation,
        }));
    }

    /// Sends this host's verdicts to `to`, at most once per sync interval per peer.
    fn send_verdicts(&mut self, now_ms: u64, to: &P, reply: bool, out: &mut Vec<LiveOutput<P>>) {
        if self.verdicts_sent.contains_key(to) {
            return;
        }
        self.verdicts_sent.insert(to.clone(), now_ms);
        let all: Vec<Verdict<P>> = self
            .records
            .iter()
            .map(|(p, r)| Verdict {
                host: p.clone(),
                incarnation: r.incarnation,
                dead: r.dead_since.is_some(),
            })
            .collect();
        if all.is_empty() {
            let msg = LiveMsg::Verdicts { digest: self.digest, reply, entries: Vec::new() };
            out.push(LiveOutput::Send { to: to.clone(), msg });
        }
        for chunk in all.chunks(MAX_VERDICTS) {
            let msg = LiveMsg::Verdicts { digest: self.digest, reply, entries: chunk.to_vec() };
            out.push(LiveOutput::Send { to: to.clone(), msg });
        }
    }

    /// Recomputes whom this host reports to and whom it watches (the first k members after and
    /// before it on the ring that are not dead); newly watched hosts get a full grace period.
    fn reassign(&mut self, now_ms: u64) {
        let Some(pos) = self.my_pos else {
            self.watchers.clear();
            self.watched.clear();
            return;
        };
        let records = &self.records;
        let is_dead = |p: &P| records.get(p).is_some_and(|r| r.dead_since.is_some());
        self.watchers = self.ring.walk(pos, true, self.cfg.watchers, is_dead);
        let watched = self.ring.walk(pos, false, self.cfg.watchers, is_dead);
        self.watched.retain(|p, _| watched.contains(p));
        for p in watched {
            let incarnation = self.records.get(&p).map_or(0, |r| r.incarnation);
            self.watched.entry(p).or_insert(Watch {
                last_heard_ms: now_ms,
                heard_itself_ms: None,
                incarnation,
                suspect_since: None,
                next_probe_ms: 0,
                votes: Vec::new(),
            });
        }
    }
}

/// The watchers of `target`: the first k members after it that are not held dead.
fn watchers_of<P: Ord + Clone + Serialize>(
    ring: &Ring<P>,
    records: &BTreeMap<P, Record>,
    target: &P,
    k: usize,
) -> Vec<P> {
    let Some(pos) = ring.position(target) else { return Vec::new() };
    ring.walk(pos, true, k, |p| records.get(p).is_some_and(|r| r.dead_since.is_some()))
}

/// A dead verdict's contribution to the digest.
fn verdict_hash<P: Serialize>(p: &P, incarnation: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(postcard::to_stdvec(p).unwrap_or_default());
    h.update(incarnation.to_be_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first)
}

#[cfg(test)]
mod tests;
