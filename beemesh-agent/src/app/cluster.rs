//! The driver of this host's replica of the cluster state (`beemesh_state::Replica`, design in
//! `docs/state.md`): one task owns it and answers reads from it; a persister task writes
//! what changes under `<state-dir>/cluster/` before any message of the same call leaves, carries broadcasts on the gossip topic
//! [`TOPIC`] and messages to one peer as mesh requests of kind [`REQUEST_KIND`], and ticks
//! every 100 ms with the attested peers. The rest of the agent uses the [`Cluster`] handle:
//! `write` (waits until another host holds the write), `get`, `list`.

pub(crate) mod execs;
pub(crate) mod kube;
pub(crate) mod pods;
mod store;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use beemesh_state::{Config, Key, Msg, Object, Output, Replica, ReplicaError, WriteId};
use bytes::Bytes;
use libp2p::gossipsub::MessageAcceptance;
use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::mesh::swarm::{AttestedHost, GossipMessage, MeshClient, MeshResponse, Responder};
use store::Store;

/// The gossip topic of the cluster state's announcements.
pub const TOPIC: &str = "beemesh/state/1";
/// The mesh request kind carrying the cluster state's messages to one peer.
pub const REQUEST_KIND: &str = "state";
/// How often the replica is ticked (anti-entropy, push retries, fetch timeouts).
const TICK: Duration = Duration::from_millis(100);
/// How long `write` waits for another host to hold the write.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Kinds whose changes do not bump [`Cluster::changes`] (only their own `kind_changes`):
/// records nothing reconciles from, written often.
const QUIET_KINDS: [&str; 1] = [super::events::KIND];

/// Errors of the cluster state's driver.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster state: cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cluster state file {}: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    #[error("cluster state file {}: {source}", path.display())]
    Restore {
        path: PathBuf,
        #[source]
        source: ReplicaError,
    },
    #[error("cannot write {key}: {source}")]
    Write {
        key: String,
        #[source]
        source: ReplicaError,
    },
    #[error(
        "{key} is written here but no other host acknowledged it within {}s; it spreads once peers answer",
        timeout.as_secs()
    )]
    NotAcked { key: String, timeout: Duration },
    #[error("{key} was written but its acknowledgement was lost (the cluster task restarted?)")]
    AckLost { key: String },
    #[error("the cluster state task has stopped")]
    Closed,
}

/// `kind namespace/name` for messages (never a body: Secrets are among the objects).
fn shown(key: &Key) -> String {
    if key.namespace.is_empty() {
        format!("{} {}", key.kind, key.name)
    } else {
        format!("{} {}/{}", key.kind, key.namespace, key.name)
    }
}

/// A write held by another host (`held_by`: its node name), or by this host only (`None`:
/// there was no other host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub held_by: Option<String>,
}

/// A write this host holds, waiting for another host to hold it too.
#[derive(Debug)]
pub struct Pending {
    key: String,
    acked: oneshot::Receiver<Acked>,
}

impl Pending {
    /// Waits (at most [`WRITE_TIMEOUT`]) until another host holds the write.
    pub async fn acked(self) -> Result<Acked, ClusterError> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.acked).await {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(_)) => Err(ClusterError::AckLost { key: self.key }),
            Err(_) => Err(ClusterError::NotAcked { key: self.key, timeout: WRITE_TIMEOUT }),
        }
    }
}

/// A live object as `list` gives it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: Key,
    pub body: Bytes,
    /// Wall time (ms since the epoch) of the write that made this state.
    pub written_ms: u64,
}

/// What the mesh's event loop hands the cluster task.
#[derive(Debug)]
pub(crate) enum Inbound {
    Gossip(Box<GossipMessage>),
    Request { from: AttestedHost, body: Vec<u8>, responder: Responder },
    PeerUp(AttestedHost),
    PeerDown(AttestedHost),
}

enum Command {
    Write {
        key: Key,
        body: Option<Bytes>,
        reply: oneshot::Sender<Result<oneshot::Receiver<Acked>, ClusterError>>,
    },
    /// A write nobody waits for (pod status): spread like any other.
    Put {
        key: Key,
        body: Option<Bytes>,
    },
    Get {
        key: Key,
        reply: oneshot::Sender<Option<Bytes>>,
    },
    List {
        kind: String,
        namespace: Option<String>,
        reply: oneshot::Sender<Vec<Listed>>,
    },
    /// Every live object of `kinds`, with the change count they reflect.
    Snapshot {
        kinds: Vec<&'static str>,
        reply: oneshot::Sender<(u64, Vec<Listed>)>,
    },
    /// Which of `keys` are deleted (a tombstone held), with when.
    Deleted {
        keys: Vec<Key>,
        reply: oneshot::Sender<BTreeMap<Key, u64>>,
    },
}

/// Handle on the cluster task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Cluster {
    commands: mpsc::Sender<Command>,
    inbound: mpsc::Sender<Inbound>,
    /// Bumped whenever an object changes (a local write, a peer's, a collected tombstone).
    changes: watch::Receiver<u64>,
    /// Bumped whenever an object of the kind changes (kinds someone asked to watch).
    kinds: KindWatches,
    /// This host's node name.
    node: String,
}

/// Per-kind change counters, shared by the handles and the task.
type KindWatches = Arc<Mutex<HashMap<String, watch::Sender<u64>>>>;

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Write { key, .. } => write!(f, "Write({})", shown(key)),
            Command::Put { key, .. } => write!(f, "Put({})", shown(key)),
            Command::Get { key, .. } => write!(f, "Get({})", shown(key)),
            Command::List { kind, .. } => write!(f, "List({kind})"),
            Command::Snapshot { kinds, .. } => write!(f, "Snapshot({kinds:?})"),
            Command::Deleted { keys, .. } => write!(f, "Deleted({} keys)", keys.len()),
        }
    }
}

impl Cluster {
    /// Writes `body` under `key` (`None` deletes it) and waits until another host holds it,
    /// or, with no other host, returns at once with `held_by: None`.
    pub async fn write(&self, key: Key, body: Option<Bytes>) -> Result<Acked, ClusterError> {
        self.submit(key, body).await?.acked().await
    }

    /// Writes `body` under `key` (`None` deletes it) and returns once this host holds it;
    /// [`Pending::acked`] waits for another host. Writes submitted one after the other are
    /// ordered as submitted, and their acknowledgements can be awaited together (an apply of
    /// many objects costs about one round trip, not one per object).
    pub async fn submit(&self, key: Key, body: Option<Bytes>) -> Result<Pending, ClusterError> {
        let name = shown(&key);
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Write { key, body, reply: tx })
            .await
            .map_err(|_| ClusterError::Closed)?;
        let acked = rx.await.map_err(|_| ClusterError::Closed)??;
        Ok(Pending { key: name, acked })
    }

    /// Writes `body` under `key` (`None` deletes it) without waiting for another host to
    /// hold it; refused only when the task is gone or its queue is full (the caller tries
    /// again later).
    pub fn put(&self, key: Key, body: Option<Bytes>) -> Result<(), ClusterError> {
        self.commands.try_send(Command::Put { key, body }).map_err(|_| ClusterError::Closed)
    }

    /// A receiver that sees a new value whenever an object changes.
    /// A counter bumped whenever an object of `kind` changes: for what cares about one kind
    /// only and should not wake for the others.
    pub fn kind_changes(&self, kind: &str) -> watch::Receiver<u64> {
        let mut kinds = self.kinds.lock().expect("kind watches lock");
        kinds.entry(kind.to_owned()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    /// This host's node name (the replica's node id).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The live body under `key`.
    pub async fn get(&self, key: Key) -> Result<Option<Bytes>, ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Get { key, reply: tx }).await.map_err(|_| ClusterError::Closed)?;
        rx.await.map_err(|_| ClusterError::Closed)
    }

    /// Live objects of `kind` in `namespace` (or every namespace), by namespace and name.
    pub async fn list(&self, kind: &str, namespace: Option<&str>) -> Result<Vec<Listed>, ClusterError> {
        let (tx, rx) = oneshot::channel();
        let (kind, namespace) = (kind.to_owned(), namespace.map(str::to_owned));
        self.commands
            .send(Command::List { kind, namespace, reply: tx })
            .await
            .map_err(|_| ClusterError::Closed)?;
        rx.await.map_err(|_| ClusterError::Closed)
    }

    /// Every live object of `kinds` at one instant, and the count of changes up to it (a
    /// snapshot with a higher count is newer).
    pub async fn snapshot(&self, kinds: &[&'static str]) -> Result<(u64, Vec<Listed>), ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Snapshot { kinds: kinds.to_vec(), reply: tx })
            .await
            .map_err(|_| ClusterError::Closed)?;
        rx.await.map_err(|_| ClusterError::Closed)
    }

    /// Which of `keys` this host holds deleted (a tombstone, kept for the replica's tombstone
    /// ttl), with the wall time (ms since the epoch) of the delete. A key never seen, or live,
    /// is not in the answer.
    pub async fn deleted(&self, keys: Vec<Key>) -> Result<BTreeMap<Key, u64>, ClusterError> {
        if keys.is_empty() {
            return Ok(BTreeMap::new());
        }
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Deleted { keys, reply: tx }).await.map_err(|_| ClusterError::Closed)?;
        rx.await.map_err(|_| ClusterError::Closed)
    }

    /// Hands a mesh event to the task (the mesh's event loop calls this).
    pub(crate) async fn deliver(&self, event: Inbound) {
        if self.inbound.send(event).await.is_err() {
            debug!("cluster state task gone; mesh event dropped");
        }
    }
}

/// Wall time in ms since the epoch, as the replica's clock reads it.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Restores the replica from `<state_dir>/cluster/`, subscribes to [`TOPIC`] and spawns the
/// task. A state file that does not decode or check fails the start, naming the file.
pub(crate) async fn start(state_dir: &Path, node: &str, client: MeshClient) -> Result<Cluster, ClusterError> {
    let store = Store::open(state_dir.join("cluster"))?;
    let mut objects = Vec::new();
    for (path, object) in store.load()? {
        // Checked one by one so that a bad file is named (the clock may have gone back while
        // the host was down: no skew check, as in `Replica::restore`).
        object.validate(0, u64::MAX).map_err(|e| ClusterError::Restore { path, source: e.into() })?;
        objects.push(object);
    }
    let held = objects.len();
    let mut cfg = Config::new(node);
    cfg.seed = u64::from_le_bytes(rand_seed());
    let replica = Replica::restore(cfg, objects)
        .map_err(|source| ClusterError::Restore { path: store.dir().to_path_buf(), source })?;
    info!(dir = %store.dir().display(), objects = held, "cluster state restored");
    client.subscribe(TOPIC).await.map_err(|e| ClusterError::Io {
        what: "subscribe to the gossip topic for",
        path: store.dir().to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (in_tx, in_rx) = mpsc::channel(1024);
    let (changed, changes) = watch::channel(0);
    let kinds = KindWatches::default();
    let waiting = Waiting::default();
    let (persist_tx, persist_rx) = mpsc::channel(PERSIST_QUEUE);
    tokio::spawn(persister(store, client.clone(), waiting.clone(), persist_rx));
    let task = Task {
        changed,
        kinds: kinds.clone(),
        replica,
        persister: persist_tx,
        client,
        peers: BTreeMap::new(),
        names: HashMap::new(),
        waiting,
    };
    tokio::spawn(task.run(cmd_rx, in_rx));
    Ok(Cluster { commands: cmd_tx, inbound: in_tx, changes, kinds, node: node.to_owned() })
}

fn rand_seed() -> [u8; 8] {
    let mut seed = [0u8; 8];
    // Only the choice of peers depends on it: a fixed seed is no harm if the kernel fails us.
    let _ = getrandom::getrandom(&mut seed);
    seed
}

struct Task {
    /// Bumped once per call that changed objects.
    changed: watch::Sender<u64>,
    kinds: KindWatches,
    replica: Replica<PeerId>,
    /// The persister's queue (`persister`).
    persister: mpsc::Sender<Job>,
    client: MeshClient,
    /// Attested peers reachable now.
    peers: BTreeMap<PeerId, String>,
    /// Node names of every peer seen attested (an ack may come after its peer left).
    names: HashMap<PeerId, String>,
    /// Writers waiting for their write's acknowledgement.
    waiting: Waiting,
}

/// Writers waiting for their write's acknowledgement (the persister drops those it fails).
type Waiting = Arc<Mutex<HashMap<WriteId, oneshot::Sender<Acked>>>>;

/// Most calls handled before their outputs are carried out together.
const MAX_BATCH: usize = 256;

/// What waits for a batch's objects to reach the disk.
enum Then {
    /// A `write`'s answer: the acknowledgement's receiver, or the error.
    Write {
        id: WriteId,
        reply: oneshot::Sender<Result<oneshot::Receiver<Acked>, ClusterError>>,
        acked: oneshot::Receiver<Acked>,
    },
    /// Gossip handled well: accepted once persisted (ignored if not).
    Validate(Box<GossipMessage>),
    /// A request's (empty) answer.
    Respond(Responder),
}

/// The outputs of the calls handled since the last flush, and what waits for them.
#[derive(Default)]
struct Batch {
    calls: usize,
    out: Vec<Output<PeerId>>,
    then: Vec<Then>,
}

impl Task {
    /// Handles what arrives, in batches: every call ready (up to [`MAX_BATCH`]) goes to the
    /// replica, then the batch's changed objects go to the persister, which writes them
    /// together (in parallel, off the runtime: one round of fsyncs for many writes) before any
    /// of the batch's messages leave.
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut inbound: mpsc::Receiver<Inbound>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut batch = Batch::default();
            tokio::select! {
                Some(cmd) = commands.recv() => self.command(cmd, &mut batch),
                Some(event) = inbound.recv() => self.inbound(event, &mut batch),
                _ = tick.tick() => self.tick(&mut batch),
                else => break,
            }
            while batch.calls < MAX_BATCH {
                if let Ok(event) = inbound.try_recv() {
                    self.inbound(event, &mut batch);
                } else if let Ok(cmd) = commands.try_recv() {
                    self.command(cmd, &mut batch);
                } else {
                    break;
                }
            }
            self.flush(batch).await;
        }
        debug!("cluster state task ended");
    }

    fn tick(&mut self, batch: &mut Batch) {
        let peers: Vec<PeerId> = self.peers.keys().copied().collect();
        batch.out.extend(self.replica.tick(now_ms(), &peers));
        batch.calls += 1;
    }

    fn command(&mut self, cmd: Command, batch: &mut Batch) {
        batch.calls += 1;
        match cmd {
            Command::Write { key, body, reply } => {
                let name = shown(&key);
                match self.replica.write(now_ms(), key, body) {
                    Ok((id, out)) => {
                        let (tx, acked) = oneshot::channel();
                        self.waiting.lock().expect("waiting lock").insert(id, tx);
                        batch.out.extend(out);
                        batch.then.push(Then::Write { id, reply, acked });
                    }
                    Err(source) => {
                        let _ = reply.send(Err(ClusterError::Write { key: name, source }));
                    }
                }
            }
            Command::Put { key, body } => {
                let name = shown(&key);
                match self.replica.write(now_ms(), key, body) {
                    Ok((_, out)) => batch.out.extend(out),
                    Err(e) => warn!(key = %name, error = %e, "cannot write"),
                }
            }
            Command::Get { key, reply } => {
                let _ = reply.send(self.replica.get(&key).cloned());
            }
            Command::List { kind, namespace, reply } => {
                let _ = reply.send(self.listed(&kind, namespace.as_deref()));
            }
            Command::Snapshot { kinds, reply } => {
                let items = kinds.iter().flat_map(|k| self.listed(k, None)).collect();
                let _ = reply.send((*self.changed.borrow(), items));
            }
            Command::Deleted { keys, reply } => {
                let deleted = keys
                    .into_iter()
                    .filter_map(|k| {
                        let at = self.replica.object(&k).filter(|o| o.is_tombstone())?.stamp.version.wall_ms;
                        Some((k, at))
                    })
                    .collect();
                let _ = reply.send(deleted);
            }
        }
    }

    fn listed(&self, kind: &str, namespace: Option<&str>) -> Vec<Listed> {
        self.replica
            .list(kind, namespace)
            .map(|(key, body)| Listed {
                key: key.clone(),
                body: body.clone(),
                written_ms: self.replica.object(key).map_or(0, |o| o.stamp.version.wall_ms),
            })
            .collect()
    }

    fn inbound(&mut self, event: Inbound, batch: &mut Batch) {
        batch.calls += 1;
        match event {
            Inbound::PeerUp(host) => {
                self.names.insert(host.peer, host.node_name.clone());
                self.peers.insert(host.peer, host.node_name);
            }
            Inbound::PeerDown(host) => {
                self.peers.remove(&host.peer);
            }
            Inbound::Gossip(message) => {
                // The relaying peer is the one asked for a body not carried inline.
                match self.replica.handle_bytes(now_ms(), message.via.peer, &message.data) {
                    Ok(out) => {
                        batch.out.extend(out);
                        batch.then.push(Then::Validate(message));
                    }
                    Err(e) => {
                        warn!(via = %message.via.node_name, origin = %message.origin, error = %e, "cluster gossip rejected");
                        validate(&self.client, message, MessageAcceptance::Reject);
                    }
                }
            }
            Inbound::Request { from, body, responder } => {
                match self.replica.handle_bytes(now_ms(), from.peer, &body) {
                    Ok(out) => batch.out.extend(out),
                    Err(e) => warn!(from = %from.node_name, error = %e, "cluster state message rejected"),
                }
                batch.then.push(Then::Respond(responder));
            }
        }
    }

    /// Carries out a batch's outputs. Changes are visible to readers at once (this task's
    /// reads come from the replica); what the batch's objects must reach the disk before (its
    /// messages, gossip verdicts, write answers) goes with them to the persister, which keeps
    /// batches in order. This task never waits on the disk, only when the persister is
    /// [`PERSIST_QUEUE`] batches behind.
    async fn flush(&mut self, batch: Batch) {
        let Batch { out, then, .. } = batch;
        let mut files: Vec<(Key, Option<Object>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // The last output for a key wins: a later call of the batch changed it again.
        for o in out.iter().rev() {
            match o {
                Output::Changed(key) if seen.insert(key.clone()) => {
                    if let Some(object) = self.replica.object(key) {
                        files.push((key.clone(), Some(object.clone())));
                    }
                }
                Output::Collected(key) if seen.insert(key.clone()) => files.push((key.clone(), None)),
                _ => {}
            }
        }
        // Events wake nobody but who watches their kind (`QUIET_KINDS`).
        if files.iter().any(|(k, _)| !QUIET_KINDS.contains(&k.kind.as_str())) {
            self.changed.send_modify(|n| *n += 1);
        }
        let mut sends = Vec::new();
        for o in out {
            match o {
                Output::Changed(key) => {
                    debug!(key = %shown(&key), "cluster object changed");
                    if let Some(tx) = self.kinds.lock().expect("kind watches lock").get(&key.kind) {
                        tx.send_modify(|n| *n += 1);
                    }
                }
                Output::Collected(key) => debug!(key = %shown(&key), "cluster tombstone collected"),
                Output::Acked { write, held_by } => {
                    // Our write left only once persisted: an ack never overtakes the disk.
                    let held_by =
                        held_by.map(|p| self.names.get(&p).cloned().unwrap_or_else(|| p.to_string()));
                    if let Some(tx) = self.waiting.lock().expect("waiting lock").remove(&write) {
                        let _ = tx.send(Acked { held_by });
                    }
                }
                Output::Broadcast(msg) => sends.push((None, msg)),
                Output::Send { to, msg } => sends.push((Some(to), msg)),
            }
        }
        if files.is_empty() && sends.is_empty() && then.is_empty() {
            return;
        }
        files.reverse();
        let _ = self.persister.send(Job { files, sends, then }).await;
    }
}

/// How many batches the persister may be behind before the cluster task waits for it.
const PERSIST_QUEUE: usize = 16;

/// A batch's files (a body, or `None`: removed) and what waits for them to reach the disk.
struct Job {
    files: Vec<(Key, Option<Object>)>,
    sends: Vec<(Option<PeerId>, Msg)>,
    then: Vec<Then>,
}

/// The persister: writes each batch's objects (batches queued meanwhile together: one round
/// of fsyncs, the last state of a key wins), then carries out what waited for them, in order:
/// messages leave (none if persisting failed), gossip is accepted (or ignored), writes answered.
async fn persister(store: Store, client: MeshClient, waiting: Waiting, mut jobs: mpsc::Receiver<Job>) {
    while let Some(first) = jobs.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = jobs.try_recv() {
            batch.push(more);
        }
        let mut last: HashMap<Key, Option<Object>> = HashMap::new();
        for job in &mut batch {
            last.extend(job.files.drain(..));
        }
        let (mut saves, mut removes) = (Vec::new(), Vec::new());
        for (key, object) in last {
            match object {
                Some(o) => saves.push(o),
                None => removes.push(key),
            }
        }
        let (count, started) = (saves.len() + removes.len(), std::time::Instant::now());
        let persisted = count == 0
            || {
                let store = store.clone();
                let result = tokio::task::spawn_blocking(move || store.save_all(&saves, &removes)).await;
                debug!(
                    objects = count,
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "cluster batch persisted"
                );
                match result {
                    Ok(Ok(())) => true,
                    Ok(Err(e)) => {
                        error!(error = %e, "cluster state not persisted; these calls' messages are not sent");
                        false
                    }
                    Err(e) => {
                        error!(error = %e, "cluster state persistence panicked; these calls' messages are not sent");
                        false
                    }
                }
            };
        for job in batch {
            if persisted {
                job.sends.into_iter().for_each(|(to, msg)| send(&client, to, msg));
            }
            for t in job.then {
                answer(&client, &store, &waiting, t, persisted);
            }
        }
    }
    debug!("cluster persister ended");
}

/// Sends `msg`: published on the topic (`to` = `None`) or as a request to one peer, in a task
/// of its own (the persister never waits on the swarm).
fn send(client: &MeshClient, to: Option<PeerId>, msg: Msg) {
    let bytes = match msg.encode() {
        Ok(b) => b,
        Err(e) => {
            error!(error = %e, kind = msg.kind(), "cannot encode a cluster message");
            return;
        }
    };
    let client = client.clone();
    let kind = msg.kind();
    tokio::spawn(async move {
        match to {
            None => {
                if let Err(e) = client.publish(TOPIC, bytes).await {
                    // With no peer subscribed yet gossipsub has nobody to send to;
                    // anti-entropy spreads the write once peers come.
                    debug!(error = %e, "cluster announcement not published");
                }
            }
            Some(to) => match client.request(to, REQUEST_KIND, bytes).await {
                Ok(MeshResponse::App(_)) => {}
                Ok(other) => debug!(%to, kind, answer = ?other, "cluster message refused"),
                Err(e) => debug!(%to, kind, error = %e, "cluster message not delivered"),
            },
        }
    });
}

/// Carries out what waited for a batch's objects to reach the disk (`persisted`: they did).
fn answer(client: &MeshClient, store: &Store, waiting: &Waiting, then: Then, persisted: bool) {
    match then {
        Then::Write { id, reply, acked } => {
            if persisted {
                let _ = reply.send(Ok(acked));
            } else {
                waiting.lock().expect("waiting lock").remove(&id);
                let _ = reply.send(Err(ClusterError::Io {
                    what: "persist a write in",
                    path: store.dir().to_path_buf(),
                    source: std::io::Error::other("see the agent's log"),
                }));
            }
        }
        Then::Validate(message) => {
            let verdict = if persisted { MessageAcceptance::Accept } else { MessageAcceptance::Ignore };
            validate(client, message, verdict);
        }
        Then::Respond(responder) => {
            tokio::spawn(async move {
                let _ = responder.respond(Vec::new()).await;
            });
        }
    }
}

fn validate(client: &MeshClient, message: Box<GossipMessage>, verdict: MessageAcceptance) {
    let client = client.clone();
    tokio::spawn(async move {
        let _ = client.validate(&message, verdict).await;
    });
}
