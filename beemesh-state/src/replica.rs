//! One host's copy of the cluster state: writes, last-writer-wins merges, gossip announcements,
//! acknowledged pushes, anti-entropy, tombstone collection and snapshots. Sans-IO: the driver
//! (the agent's swarm loop, or the simulator) passes time and messages in and carries the
//! [`Output`]s out.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::msg::{bucket_of, BucketVersions, Msg, MsgError, BUCKETS, MAX_ENTRIES, MAX_INLINE_BODY_BYTES};
use crate::object::{validate_version, Clock, Key, Object, ObjectError, Stamp, MAX_BODY_BYTES};
use crate::rng::Rng;

/// Why a write or a message was refused; the state is untouched by either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error("bad object: {0}")]
    Object(#[from] ObjectError),
    #[error("bad message: {0}")]
    Msg(#[from] MsgError),
}

/// Most keys this host waits for at once; past it, announcements and version lists are not
/// followed up until fetches complete or time out (a peer announcing keys it never serves
/// cannot grow the table without bound).
const MAX_INFLIGHT: usize = 65_536;

/// Most body bytes sent in answer to one `Fetch`: a 40-byte request for 4096 keys must not
/// make this host send gigabytes. Keys left out time out at the asker and are asked again.
const MAX_FETCH_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// Most peers waiting on one key this host is itself fetching.
const MAX_WAITERS_PER_KEY: usize = 32;

/// Knobs of a replica. [`Config::new`] has the defaults the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This host's stable node id (its node name); the last tie-breaker between versions.
    pub node: String,
    /// Seed of the random choice of peers (anti-entropy partner, push target).
    pub seed: u64,
    /// How long a deletion is remembered, from its version's wall time. A host cut off for
    /// longer than this may bring a deleted object back (see docs/state.md).
    pub tombstone_ttl_ms: u64,
    /// Versions further ahead of this host's clock are refused (they would win every conflict).
    pub max_clock_skew_ms: u64,
    /// How often this host starts an anti-entropy round with a random peer.
    pub anti_entropy_interval_ms: u64,
    /// How long a push waits for its ack before it goes to another peer.
    pub ack_timeout_ms: u64,
    /// How long a fetch is outstanding before the key may be fetched again (from anyone).
    pub fetch_timeout_ms: u64,
}

impl Config {
    pub fn new(node: impl Into<String>) -> Config {
        Config {
            node: node.into(),
            seed: 0,
            tombstone_ttl_ms: 7 * 24 * 3600 * 1000,
            max_clock_skew_ms: 60_000,
            anti_entropy_interval_ms: 1_000,
            ack_timeout_ms: 1_000,
            fetch_timeout_ms: 2_000,
        }
    }
}

/// Handle of a local write, reported back in [`Output::Acked`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WriteId(pub u64);

/// What the driver must do after a call. Persist first: the objects behind `Changed` and
/// `Collected` must be on disk before any `Send` of the same call leaves (a `PushAck` promises
/// that this host holds the object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<P> {
    /// Send to one peer (request-response).
    Send { to: P, msg: Msg },
    /// Publish to every host (gossipsub). Receivers pass the peer that relayed it as `from`.
    Broadcast(Msg),
    /// A local write is held by another host (`held_by`), or, with `None`, there was no other
    /// host to hold it: it is held here only.
    Acked { write: WriteId, held_by: Option<P> },
    /// The key's state changed (a new body or a deletion): persist [`Replica::object`], tell
    /// the reconciler.
    Changed(Key),
    /// An expired tombstone was dropped: remove the key from disk.
    Collected(Key),
}

/// Counters for the driver to export; `rejected` counts messages refused as bad.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub handled: u64,
    pub rejected: u64,
    pub applied: u64,
    pub collected: u64,
    pub anti_entropy_rounds: u64,
}

/// What a host persists to keep its state across a restart: every object and tombstone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub objects: Vec<Object>,
}

#[derive(Debug, Clone)]
struct Pending<P> {
    key: Key,
    stamp: Stamp,
    peer: P,
    sent_at: u64,
}

/// One host's replica of the cluster state. `P` names peers (a libp2p `PeerId` in the agent,
/// an index in the simulator).
#[derive(Debug)]
pub struct Replica<P> {
    cfg: Config,
    clock: Clock,
    rng: Rng,
    objects: BTreeMap<Key, Object>,
    /// XOR of the entry hashes of the keys in each bucket: updated in O(1) per change.
    bucket_hash: Vec<u64>,
    /// XOR of every entry hash (so of every bucket hash): the anti-entropy root, kept in O(1).
    root: u64,
    bucket_keys: Vec<BTreeSet<Key>>,
    /// Tombstones by wall time, for collection without a scan.
    tombstones: BTreeSet<(u64, Key)>,
    /// Keys asked for and not yet received: the stamp wanted and when it was asked.
    inflight: BTreeMap<Key, (Stamp, u64)>,
    pending: BTreeMap<WriteId, Pending<P>>,
    /// Peers that asked for a key while this host was fetching a newer state of it: they get
    /// it as soon as it arrives (so a large body spreads hop by hop along the gossip relays
    /// instead of every host pulling it from the writer).
    waiters: BTreeMap<Key, Vec<P>>,
    waiting: usize,
    peers: Vec<P>,
    next_write: u64,
    next_anti_entropy: u64,
    stats: Stats,
}

fn entry_hash(key: &Key, stamp: &Stamp) -> u64 {
    let mut h = Sha256::new();
    key.hash_into(&mut h);
    h.update(stamp.version.wall_ms.to_be_bytes());
    h.update(stamp.version.logical.to_be_bytes());
    h.update(stamp.version.node.as_bytes());
    h.update([0]);
    h.update(stamp.digest.0);
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

impl<P: Clone + Eq + Ord + std::fmt::Debug> Replica<P> {
    pub fn new(cfg: Config) -> Replica<P> {
        Replica {
            clock: Clock::new(cfg.node.clone()),
            rng: Rng::new(cfg.seed),
            objects: BTreeMap::new(),
            bucket_hash: vec![0; BUCKETS],
            root: 0,
            bucket_keys: vec![BTreeSet::new(); BUCKETS],
            tombstones: BTreeSet::new(),
            inflight: BTreeMap::new(),
            pending: BTreeMap::new(),
            waiters: BTreeMap::new(),
            waiting: 0,
            peers: Vec::new(),
            next_write: 0,
            next_anti_entropy: 0,
            stats: Stats::default(),
            cfg,
        }
    }

    /// A replica holding what a host persisted (a [`Snapshot`]'s objects, or the objects it
    /// wrote to disk one by one). Every object is checked (except for clock skew: the host's
    /// clock may have gone back while it was down); a bad one fails the restore.
    pub fn restore(
        cfg: Config,
        objects: impl IntoIterator<Item = Object>,
    ) -> Result<Replica<P>, ReplicaError> {
        let mut r = Replica::new(cfg);
        for o in objects {
            o.validate(0, u64::MAX)?;
            r.insert(o);
        }
        Ok(r)
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot { objects: self.objects.values().cloned().collect() }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The live body under `key` (None when absent or deleted).
    pub fn get(&self, key: &Key) -> Option<&Bytes> {
        self.objects.get(key).and_then(|o| o.body.as_ref())
    }

    /// The key's state, tombstones included: what the driver persists on `Changed`.
    pub fn object(&self, key: &Key) -> Option<&Object> {
        self.objects.get(key)
    }

    /// Live objects of `kind`, in one namespace or (None) all, ordered by namespace and name.
    pub fn list<'a>(
        &'a self,
        kind: &'a str,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a Key, &'a Bytes)> + 'a {
        let start = Key::new(kind, namespace.unwrap_or(""), "");
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.kind == kind && namespace.is_none_or(|ns| k.namespace == ns))
            .filter_map(|(k, o)| o.body.as_ref().map(|b| (k, b)))
    }

    /// Every key's state, tombstones included.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects.values()
    }

    /// Writes still waiting for another host to hold them.
    pub fn pending_writes(&self) -> usize {
        self.pending.len()
    }

    /// Summary of every `(key, stamp)` held (the XOR of their 64-bit hashes): equal on two
    /// replicas that hold the same stamps, and different otherwise but with odds of 2^-64.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Writes `body` under `key` (`None` deletes it) with a fresh version. The object is
    /// announced to every host and pushed to one peer, whose ack yields `Acked`.
    pub fn write(
        &mut self,
        now: u64,
        key: Key,
        body: Option<Bytes>,
    ) -> Result<(WriteId, Vec<Output<P>>), ReplicaError> {
        key.validate()?;
        if let Some(b) = &body {
            if b.len() > MAX_BODY_BYTES {
                return Err(ObjectError::BodyTooLarge { len: b.len(), max: MAX_BODY_BYTES }.into());
            }
        }
        let version = self.clock.next(now);
        let object = Object::new(key.clone(), version, body);
        let stamp = object.stamp.clone();
        let announce = Msg::Announce {
            key: key.clone(),
            stamp: stamp.clone(),
            body: object.body.clone().filter(|b| b.len() <= MAX_INLINE_BODY_BYTES),
        };
        self.insert(object.clone());
        let id = WriteId(self.next_write);
        self.next_write += 1;
        let mut out = vec![Output::Changed(key.clone()), Output::Broadcast(announce)];
        match self.pick_peer(None) {
            None => out.push(Output::Acked { write: id, held_by: None }),
            Some(peer) => {
                out.push(Output::Send { to: peer.clone(), msg: Msg::Push { object } });
                self.pending.insert(id, Pending { key, stamp, peer, sent_at: now });
            }
        }
        Ok((id, out))
    }

    /// Handles a message from `from` (for a broadcast: the peer that relayed it to us,
    /// gossipsub's `propagation_source`, which is asked for a body not carried inline). A bad
    /// message is an error, counted in `stats().rejected`, and changes nothing.
    pub fn handle(&mut self, now: u64, from: P, msg: Msg) -> Result<Vec<Output<P>>, ReplicaError> {
        self.stats.handled += 1;
        let result = self.check(now, &msg).map(|()| self.apply_msg(now, from, msg));
        if result.is_err() {
            self.stats.rejected += 1;
        }
        result
    }

    /// [`Msg::decode`] then [`Replica::handle`]: the driver's entry for bytes off the wire
    /// (a message that does not decode is counted as rejected too).
    pub fn handle_bytes(&mut self, now: u64, from: P, bytes: &[u8]) -> Result<Vec<Output<P>>, ReplicaError> {
        match Msg::decode(bytes) {
            Ok(msg) => self.handle(now, from, msg),
            Err(e) => {
                self.stats.handled += 1;
                self.stats.rejected += 1;
                Err(e.into())
            }
        }
    }

    /// Time passes: tombstone collection, fetch timeouts, push retries, anti-entropy.
    /// `peers` are the attested hosts currently reachable (without this host).
    pub fn tick(&mut self, now: u64, peers: &[P]) -> Vec<Output<P>> {
        peers.clone_into(&mut self.peers);
        let mut out = Vec::new();
        while let Some((wall, _)) = self.tombstones.first() {
            if wall.saturating_add(self.cfg.tombstone_ttl_ms) > now {
                break;
            }
            let Some((_, key)) = self.tombstones.pop_first() else { break };
            self.remove(&key);
            self.stats.collected += 1;
            out.push(Output::Collected(key));
        }
        let timeout = self.cfg.fetch_timeout_ms;
        self.inflight.retain(|_, (_, at)| at.saturating_add(timeout) > now);
        let inflight = &self.inflight;
        self.waiters.retain(|k, _| inflight.contains_key(k));
        self.waiting = self.waiters.values().map(Vec::len).sum();
        let due: Vec<WriteId> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                self.peers.is_empty() || p.sent_at.saturating_add(self.cfg.ack_timeout_ms) <= now
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(p) = self.pending.get(&id) else { continue };
            let last = p.peer.clone();
            let object = self.objects.get(&p.key).cloned();
            match (self.pick_peer(Some(&last)), object) {
                (Some(peer), Some(object)) => {
                    out.push(Output::Send { to: peer.clone(), msg: Msg::Push { object } });
                    if let Some(p) = self.pending.get_mut(&id) {
                        p.peer = peer;
                        p.sent_at = now;
                    }
                }
                // No peer left (or, after a week without one, the tombstone is gone).
                _ => {
                    self.pending.remove(&id);
                    out.push(Output::Acked { write: id, held_by: None });
                }
            }
        }
        if now >= self.next_anti_entropy {
            // Jitter keeps hosts from starting their rounds in lockstep.
            let jitter = self.rng.below(self.cfg.anti_entropy_interval_ms as usize / 4 + 1) as u64;
            self.next_anti_entropy = now + self.cfg.anti_entropy_interval_ms - jitter;
            if let Some(peer) = self.pick_peer(None) {
                self.stats.anti_entropy_rounds += 1;
                out.push(Output::Send { to: peer, msg: Msg::Root { root: self.root() } });
            }
        }
        out
    }

    /// A random peer, other than `avoid` when there is a choice.
    fn pick_peer(&mut self, avoid: Option<&P>) -> Option<P> {
        let n = self.peers.len();
        if n == 0 {
            return None;
        }
        let start = self.rng.below(n);
        let mut first = None;
        for i in 0..n {
            let p = &self.peers[(start + i) % n];
            if Some(p) != avoid {
                return Some(p.clone());
            }
            first.get_or_insert(p);
        }
        first.cloned()
    }

    fn expired(&self, stamp: &Stamp, now: u64) -> bool {
        stamp.is_tombstone() && stamp.version.wall_ms.saturating_add(self.cfg.tombstone_ttl_ms) <= now
    }

    /// Is `stamp` newer than what this host holds for `key` (and worth holding)?
    fn wants(&self, key: &Key, stamp: &Stamp, now: u64) -> bool {
        !self.expired(stamp, now) && self.objects.get(key).is_none_or(|o| *stamp > o.stamp)
    }

    /// Everything about a message that can be wrong, checked before anything changes.
    fn check(&self, now: u64, msg: &Msg) -> Result<(), ReplicaError> {
        msg.check_shape()?;
        let skew = self.cfg.max_clock_skew_ms;
        match msg {
            Msg::Announce { key, stamp, body } => {
                key.validate()?;
                validate_version(&stamp.version, now, skew)?;
                if let Some(body) = body {
                    Object { key: key.clone(), stamp: stamp.clone(), body: Some(body.clone()) }
                        .validate(now, skew)?;
                }
            }
            Msg::Push { object } => object.validate(now, skew)?,
            Msg::PushAck { key, stamp } => {
                key.validate()?;
                validate_version(&stamp.version, now, skew)?;
            }
            Msg::Fetch { keys } => keys.iter().try_for_each(Key::validate)?,
            Msg::Objects { objects } => objects.iter().try_for_each(|o| o.validate(now, skew))?,
            Msg::Versions { buckets, .. } => {
                // Versions too far ahead are skipped in `apply_msg`, not refused: one host
                // with a fast clock must not stop the rest of a round.
                for (key, stamp) in buckets.iter().flat_map(|b| &b.entries) {
                    key.validate()?;
                    validate_version(&stamp.version, 0, u64::MAX)?;
                }
            }
            Msg::Root { .. } | Msg::Buckets { .. } => {}
        }
        Ok(())
    }

    fn apply_msg(&mut self, now: u64, from: P, msg: Msg) -> Vec<Output<P>> {
        let mut out = Vec::new();
        match msg {
            Msg::Announce { key, stamp, body } => {
                if !self.wants(&key, &stamp, now) {
                } else if stamp.is_tombstone() || body.is_some() {
                    self.merge(Object { key, stamp, body }, now, &mut out);
                } else if self.inflight.len() < MAX_INFLIGHT
                    && self.inflight.get(&key).is_none_or(|(s, _)| *s < stamp)
                {
                    self.inflight.insert(key.clone(), (stamp, now));
                    out.push(Output::Send { to: from, msg: Msg::Fetch { keys: vec![key] } });
                }
            }
            Msg::Push { object } => {
                let key = object.key.clone();
                let pushed = object.stamp.clone();
                self.merge(object, now, &mut out);
                // What is held now: the pushed stamp, or a newer one that beat it.
                let stamp = self.objects.get(&key).map_or(pushed, |o| o.stamp.clone());
                out.push(Output::Send { to: from, msg: Msg::PushAck { key, stamp } });
            }
            Msg::PushAck { key, stamp } => {
                let done: Vec<WriteId> = self
                    .pending
                    .iter()
                    .filter(|(_, p)| p.key == key && p.stamp <= stamp)
                    .map(|(id, _)| *id)
                    .collect();
                for id in done {
                    self.pending.remove(&id);
                    out.push(Output::Acked { write: id, held_by: Some(from.clone()) });
                }
            }
            Msg::Fetch { keys } => {
                let mut found = Vec::new();
                let mut reply_bytes = 0;
                for k in keys {
                    let held = self.objects.get(&k);
                    let awaited =
                        self.inflight.get(&k).is_some_and(|(s, _)| held.is_none_or(|o| o.stamp < *s));
                    let waiters = self.waiters.get(&k).map_or(0, Vec::len);
                    if awaited && self.waiting < MAX_INFLIGHT && waiters < MAX_WAITERS_PER_KEY {
                        let w = self.waiters.entry(k).or_default();
                        if !w.contains(&from) {
                            w.push(from.clone());
                            self.waiting += 1;
                        }
                    } else if let Some(o) = held {
                        let len = o.body.as_ref().map_or(0, Bytes::len);
                        if reply_bytes + len > MAX_FETCH_REPLY_BYTES && !found.is_empty() {
                            continue;
                        }
                        reply_bytes += len;
                        found.push(o.clone());
                    }
                }
                for objects in pack(found) {
                    out.push(Output::Send { to: from.clone(), msg: Msg::Objects { objects } });
                }
            }
            Msg::Objects { objects } => {
                for o in objects {
                    if self.inflight.get(&o.key).is_some_and(|(s, _)| *s <= o.stamp) {
                        self.inflight.remove(&o.key);
                    }
                    self.merge(o, now, &mut out);
                }
            }
            Msg::Root { root } => {
                if root != self.root() {
                    out.push(Output::Send {
                        to: from,
                        msg: Msg::Buckets { hashes: self.bucket_hash.clone() },
                    });
                }
            }
            Msg::Buckets { hashes } => {
                let differing: Vec<u16> = (0..BUCKETS as u16)
                    .filter(|&i| hashes.get(usize::from(i)) != self.bucket_hash.get(usize::from(i)))
                    .collect();
                let buckets = self.versions_of(&differing, now);
                if !buckets.is_empty() {
                    out.push(Output::Send { to: from, msg: Msg::Versions { reply: false, buckets } });
                }
            }
            Msg::Versions { reply, buckets } => {
                let indices: Vec<u16> = buckets.iter().map(|b| b.index).collect();
                let wanted: Vec<(Key, Stamp)> = buckets
                    .into_iter()
                    .flat_map(|b| b.entries)
                    .filter(|(k, s)| {
                        s.version.wall_ms.saturating_sub(now) <= self.cfg.max_clock_skew_ms
                            && self.wants(k, s, now)
                            && self.inflight.get(k).is_none_or(|(have, _)| have < s)
                    })
                    .collect();
                let mut keys = Vec::with_capacity(wanted.len());
                for (k, s) in wanted {
                    if self.inflight.len() >= MAX_INFLIGHT {
                        break;
                    }
                    self.inflight.insert(k.clone(), (s, now));
                    keys.push(k);
                }
                if !keys.is_empty() {
                    out.push(Output::Send { to: from.clone(), msg: Msg::Fetch { keys } });
                }
                if !reply {
                    let buckets = self.versions_of(&indices, now);
                    out.push(Output::Send { to: from, msg: Msg::Versions { reply: true, buckets } });
                }
            }
        }
        out
    }

    /// The `(key, stamp)` lists of `indices`, whole buckets only, at most [`MAX_ENTRIES`]
    /// pairs (the buckets left out are compared in a later round).
    fn versions_of(&self, indices: &[u16], now: u64) -> Vec<BucketVersions> {
        let mut total = 0;
        let mut buckets = Vec::new();
        for &index in indices {
            let Some(keys) = self.bucket_keys.get(usize::from(index)) else { continue };
            let entries: Vec<(Key, Stamp)> = keys
                .iter()
                .filter_map(|k| self.objects.get(k))
                .filter(|o| !self.expired(&o.stamp, now))
                .map(|o| (o.key.clone(), o.stamp.clone()))
                .collect();
            if total + entries.len() > MAX_ENTRIES {
                if buckets.is_empty() {
                    // One bucket over the limit (over a million objects in the state): send
                    // its first part; the rest converges by gossip and later rounds.
                    buckets.push(BucketVersions {
                        index,
                        entries: entries.into_iter().take(MAX_ENTRIES).collect(),
                    });
                }
                break;
            }
            total += entries.len();
            buckets.push(BucketVersions { index, entries });
        }
        buckets
    }

    /// Last writer wins: keeps `o` if it is newer than what is held.
    fn merge(&mut self, o: Object, now: u64, out: &mut Vec<Output<P>>) {
        if self.wants(&o.key, &o.stamp, now) {
            let key = o.key.clone();
            let waiters = self.waiters.remove(&key).unwrap_or_default();
            self.waiting = self.waiting.saturating_sub(waiters.len());
            for to in waiters {
                out.push(Output::Send { to, msg: Msg::Objects { objects: vec![o.clone()] } });
            }
            self.insert(o);
            self.stats.applied += 1;
            out.push(Output::Changed(key));
        }
    }

    fn insert(&mut self, o: Object) {
        self.clock.observe(&o.stamp.version);
        let bucket = usize::from(bucket_of(&o.key));
        let hash = entry_hash(&o.key, &o.stamp);
        self.bucket_hash[bucket] ^= hash;
        self.root ^= hash;
        self.bucket_keys[bucket].insert(o.key.clone());
        let tombstone = o.is_tombstone().then(|| (o.stamp.version.wall_ms, o.key.clone()));
        if let Some(old) = self.objects.insert(o.key.clone(), o) {
            let hash = entry_hash(&old.key, &old.stamp);
            self.bucket_hash[bucket] ^= hash;
            self.root ^= hash;
            if old.is_tombstone() {
                self.tombstones.remove(&(old.stamp.version.wall_ms, old.key));
            }
        }
        if let Some(t) = tombstone {
            self.tombstones.insert(t);
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some(old) = self.objects.remove(key) {
            let bucket = usize::from(bucket_of(key));
            let hash = entry_hash(&old.key, &old.stamp);
            self.bucket_hash[bucket] ^= hash;
            self.root ^= hash;
            self.bucket_keys[bucket].remove(key);
        }
    }
}

/// Splits objects into `Objects` messages under the size limit (bodies plus a margin for keys).
fn pack(objects: Vec<Object>) -> Vec<Vec<Object>> {
    const BUDGET: usize = MAX_BODY_BYTES;
    let mut msgs = Vec::new();
    let mut cur: Vec<Object> = Vec::new();
    let mut size = 0;
    for o in objects {
        let len = o.body.as_ref().map_or(0, Bytes::len) + 2048;
        if !cur.is_empty() && (size + len > BUDGET || cur.len() >= crate::msg::MAX_OBJECTS) {
            msgs.push(std::mem::take(&mut cur));
            size = 0;
        }
        size += len;
        cur.push(o);
    }
    if !cur.is_empty() {
        msgs.push(cur);
    }
    msgs
}

#[cfg(test)]
mod tests;
