//! The failure detector's driver: one task owns this host's [`Detector`] (sans-IO, in
//! `beemesh_state::liveness`; design in `docs/state.md`), ticks it every 100 ms, feeds it the
//! member list from the Node records of the cluster state (annotation `beemesh.io/peer-id`,
//! re-read whenever the state changes), carries its `Send`s as mesh requests of kind `live`
//! (answered with an empty body) and its `Broadcast`s on the gossip topic `beemesh/live/1`.
//! `app::mesh` routes that topic and request kind here. [`Liveness::status`] and
//! [`Liveness::view`] answer `get nodes` and `peers`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use beemesh_state::liveness::{LiveOutput, Liveness as Seen, LivenessConfig};
use beemesh_state::{Detector, LiveMsg};
use libp2p::gossipsub::MessageAcceptance;
use libp2p::PeerId;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::cluster::Cluster;
use crate::api::{LiveEntry, LiveState};
use crate::mesh::swarm::{AttestedHost, FailureDetector, GossipMessage, MeshClient, Responder};

/// The gossip topic of the detector's broadcasts (verdicts, refutations).
pub const TOPIC: &str = "beemesh/live/1";
/// The mesh request kind of the detector's messages to one peer.
pub const REQUEST_KIND: &str = "live";
/// How often the detector is ticked.
const TICK: Duration = Duration::from_millis(100);
/// The annotation of a Node record that names its host's peer id.
const PEER_ID_ANNOTATION: &str = "beemesh.io/peer-id";

/// What the mesh's event loop hands the task.
#[derive(Debug)]
pub enum Inbound {
    Gossip(Box<GossipMessage>),
    Request { from: AttestedHost, body: Vec<u8>, responder: Responder },
}

/// The handle on the detector's task.
#[derive(Clone, Debug)]
pub struct Liveness {
    detector: Arc<Mutex<Detector<PeerId>>>,
    /// This host's settings (`FailureDetector::fingerprint`) and the hosts whose Node record
    /// names other ones.
    settings: Arc<str>,
    differs: Arc<Mutex<Vec<String>>>,
    clock: Clock,
    inbound: mpsc::Sender<Inbound>,
}

/// The detector's time: wall-clock ms at start, then monotonic (a clock step must not make
/// every host look silent).
#[derive(Clone, Copy, Debug)]
struct Clock {
    start: Instant,
    start_ms: u64,
}

impl Clock {
    fn new() -> Clock {
        let start_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        Clock { start: Instant::now(), start_ms }
    }

    fn now_ms(&self) -> u64 {
        self.start_ms + self.start.elapsed().as_millis() as u64
    }
}

impl Liveness {
    /// Starts the task for this host (`me`), subscribed to [`TOPIC`], with the detector's
    /// `settings`.
    pub async fn start(
        me: PeerId,
        settings: &FailureDetector,
        cluster: Cluster,
        client: MeshClient,
    ) -> Liveness {
        let clock = Clock::new();
        let config: LivenessConfig = settings.to_config(seed_of(&me));
        let detector = Detector::new(config, me, clock.now_ms());
        let (tx, rx) = mpsc::channel(1024);
        let live = Liveness {
            detector: Arc::new(Mutex::new(detector)),
            settings: settings.fingerprint().into(),
            differs: Arc::default(),
            clock,
            inbound: tx,
        };
        if let Err(e) = client.subscribe(TOPIC).await {
            warn!(error = %e, topic = TOPIC, "liveness topic not subscribed; verdicts reach this host by anti-entropy only");
        }
        tokio::spawn(run(live.clone(), cluster, client, rx));
        live
    }

    /// Hands the task a message from the mesh.
    pub async fn deliver(&self, inbound: Inbound) {
        if self.inbound.send(inbound).await.is_err() {
            debug!("liveness task gone; message dropped");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Detector<PeerId>> {
        // A panic while holding it leaves a detector still worth reading.
        self.detector.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The detector's counters since the agent started.
    pub fn stats(&self) -> beemesh_state::liveness::LiveStats {
        self.lock().stats()
    }

    /// Hosts whose failure detector settings differ from this host's, by node name.
    pub fn differs(&self) -> Vec<String> {
        self.differs.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// What this host believes about `peer`; `None` when it is not a member.
    pub fn status(&self, peer: &PeerId) -> Option<Seen> {
        self.lock().status(peer)
    }

    /// The detector's view of `peers` (as `get nodes` and `peers` show it).
    pub fn view(&self, peers: &[PeerId]) -> Vec<LiveEntry> {
        let now = self.clock.now_ms();
        let me = *self.lock().me();
        peers.iter().map(|p| entry(p, *p == me, self.status(p), now)).collect()
    }
}

/// A detector seed of its own per host (jitter of the anti-entropy partner and timers).
fn seed_of(me: &PeerId) -> u64 {
    me.to_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// The API's view of one host from what the detector holds (`now_ms` on its clock).
pub fn entry(peer: &PeerId, this_host: bool, seen: Option<Seen>, now_ms: u64) -> LiveEntry {
    let (state, last_heard_ms_ago, since_ms_ago) = match seen {
        None => (LiveState::Unknown, None, None),
        Some(Seen::Alive { last_heard_ms }) => {
            (LiveState::Alive, last_heard_ms.map(|t| now_ms.saturating_sub(t)), None)
        }
        Some(Seen::Suspect { since_ms }) => (LiveState::Suspect, None, Some(now_ms.saturating_sub(since_ms))),
        Some(Seen::Dead { since_ms }) => (LiveState::Dead, None, Some(now_ms.saturating_sub(since_ms))),
    };
    LiveEntry { peer: peer.to_string(), this_host, state, last_heard_ms_ago, since_ms_ago }
}

/// The API's entry of a host the detector cannot know (not a peer id).
pub fn entry_unknown(peer: &str) -> LiveEntry {
    LiveEntry {
        peer: peer.to_string(),
        this_host: false,
        state: LiveState::Unknown,
        last_heard_ms_ago: None,
        since_ms_ago: None,
    }
}

/// The members named by Node records (their `beemesh.io/peer-id` annotation), sorted, each
/// once; a record without a valid one is left out (returned by name in the second list).
pub fn members_of(records: &[Value]) -> (Vec<PeerId>, Vec<String>) {
    let mut members = Vec::new();
    let mut bad = Vec::new();
    for r in records {
        let id = r
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(PEER_ID_ANNOTATION))
            .and_then(Value::as_str);
        match id.and_then(|s| s.parse::<PeerId>().ok()) {
            Some(p) => members.push(p),
            None => bad
                .push(r.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_string()),
        }
    }
    members.sort();
    members.dedup();
    (members, bad)
}

/// The hosts whose Node record names other failure detector settings than `ours`, by name (a
/// record that names none is not judged).
pub fn differing(records: &[Value], ours: &str) -> Vec<String> {
    let mut out: Vec<String> = records
        .iter()
        .filter(|r| {
            r.pointer("/metadata/annotations")
                .and_then(|a| a.get(super::nodes::DETECTOR_ANNOTATION))
                .and_then(Value::as_str)
                .is_some_and(|s| s != ours)
        })
        .map(|r| r.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_string())
        .collect();
    out.sort();
    out
}

/// The members from the cluster state's Node records now; notes (and logs, when that
/// changes) the hosts whose detector settings differ from this host's.
async fn read_members(cluster: &Cluster, live: &Liveness) -> Option<Vec<PeerId>> {
    let listed = match cluster.list(super::nodes::KIND, None).await {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "node records not read; liveness members unchanged");
            return None;
        }
    };
    let records: Vec<Value> = listed.iter().filter_map(|l| serde_json::from_slice(&l.body).ok()).collect();
    let (members, bad) = members_of(&records);
    if !bad.is_empty() {
        warn!(nodes = ?bad, "node records without a valid {PEER_ID_ANNOTATION} annotation: not watched");
    }
    let differs = differing(&records, &live.settings);
    let mut known = live.differs.lock().unwrap_or_else(|e| e.into_inner());
    if *known != differs {
        if !differs.is_empty() {
            warn!(
                nodes = ?differs,
                ours = %live.settings,
                "hosts run other mesh.failureDetector settings: failure detection assumes the same everywhere"
            );
        }
        *known = differs;
    }
    Some(members)
}

async fn run(live: Liveness, cluster: Cluster, client: MeshClient, mut inbound: mpsc::Receiver<Inbound>) {
    // Only Node records name the members.
    let mut changes = cluster.kind_changes(super::nodes::KIND);
    let mut members: Vec<PeerId> = Vec::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut reread = true;
    loop {
        if reread {
            reread = false;
            if let Some(m) = read_members(&cluster, &live).await {
                if m != members {
                    debug!(members = m.len(), "liveness members from the node records");
                    let now = live.clock.now_ms();
                    let out = live.lock().set_members(now, &m);
                    members = m;
                    drive(&client, out);
                }
            }
        }
        let out = tokio::select! {
            _ = tick.tick() => {
                let now = live.clock.now_ms();
                live.lock().tick(now)
            }
            changed = changes.changed() => {
                if changed.is_err() {
                    debug!("cluster state gone; liveness task ends");
                    return;
                }
                reread = true;
                Vec::new()
            }
            msg = inbound.recv() => match msg {
                None => return,
                Some(Inbound::Request { from, body, responder }) => {
                    let now = live.clock.now_ms();
                    let handled = live.lock().handle_bytes(now, from.peer, &body);
                    let sent = match handled {
                        Ok(out) => {
                            drive(&client, out);
                            responder.respond(Vec::new()).await
                        }
                        Err(e) => {
                            debug!(node = %from.node_name, error = %e, "liveness request refused");
                            responder.refuse(e.to_string()).await
                        }
                    };
                    if let Err(e) = sent {
                        debug!(error = %e, "liveness answer not sent");
                    }
                    Vec::new()
                }
                Some(Inbound::Gossip(message)) => {
                    let now = live.clock.now_ms();
                    let handled = live.lock().handle_bytes(now, message.origin, &message.data);
                    let verdict = match handled {
                        Ok(out) => {
                            drive(&client, out);
                            MessageAcceptance::Accept
                        }
                        Err(e) => {
                            debug!(origin = %message.origin, error = %e, "liveness gossip rejected");
                            MessageAcceptance::Reject
                        }
                    };
                    let _ = client.validate(&message, verdict).await;
                    Vec::new()
                }
            },
        };
        drive(&client, out);
    }
}

/// Carries the detector's outputs: sends and broadcasts beside the loop (a peer that is down
/// must not hold up the ticks), ups and downs to the log.
fn drive(client: &MeshClient, out: Vec<LiveOutput<PeerId>>) {
    for o in out {
        match o {
            LiveOutput::Send { to, msg } => {
                let Some(body) = encoded(&msg) else { continue };
                let client = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = client.request(to, REQUEST_KIND, body).await {
                        debug!(peer = %to, kind = msg.kind(), error = %e, "liveness message not delivered");
                    }
                });
            }
            LiveOutput::Broadcast(msg) => {
                let Some(body) = encoded(&msg) else { continue };
                let client = client.clone();
                tokio::spawn(async move {
                    if let Err(e) = client.publish(TOPIC, body).await {
                        debug!(kind = msg.kind(), error = %e, "liveness broadcast not published");
                    }
                });
            }
            LiveOutput::Down(p) => info!(peer = %p, "host declared dead by the failure detector"),
            LiveOutput::Up(p) => info!(peer = %p, "host alive again"),
            LiveOutput::Stalled(ms) => warn!(
                ms,
                "the failure detector did not run for {ms} ms: this host is overloaded; the time is not held against the hosts it watches"
            ),
        }
    }
}

fn encoded(msg: &LiveMsg<PeerId>) -> Option<Vec<u8>> {
    match msg.encode() {
        Ok(b) => Some(b),
        Err(e) => {
            warn!(kind = msg.kind(), error = %e, "liveness message not encoded");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, peer: Option<&str>) -> Value {
        match peer {
            Some(p) => json!({"metadata": {"name": name, "annotations": {PEER_ID_ANNOTATION: p}}}),
            None => json!({"metadata": {"name": name}}),
        }
    }

    #[test]
    fn hosts_with_other_detector_settings_are_named() {
        let ours = crate::mesh::swarm::FailureDetector::default().fingerprint();
        let key = crate::app::nodes::DETECTOR_ANNOTATION;
        let with = |name: &str, s: &str| json!({"metadata": {"name": name, "annotations": {key: s}}});
        let other = crate::mesh::swarm::FailureDetector { quorum: 1, ..Default::default() }.fingerprint();
        let records = [with("b", &other), with("a", &ours), node("c", None), with("d", &other)];
        assert_eq!(
            differing(&records, &ours),
            vec!["b", "d"],
            "an old record without settings is not judged"
        );
    }

    #[test]
    fn members_come_from_the_peer_id_annotations() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let records = [
            node("h1", Some(&a.to_string())),
            node("h2", Some(&b.to_string())),
            node("h2-again", Some(&b.to_string())),
            node("h3", Some("not-a-peer-id")),
            node("h4", None),
        ];
        let (members, bad) = members_of(&records);
        let mut want = vec![a, b];
        want.sort();
        assert_eq!(members, want);
        assert_eq!(bad, vec!["h3".to_string(), "h4".to_string()]);
    }

    #[test]
    fn entries_say_what_the_detector_holds() {
        let p = PeerId::random();
        let e = entry(&p, false, Some(Seen::Alive { last_heard_ms: Some(9_400) }), 10_000);
        assert_eq!((e.state, e.last_heard_ms_ago, e.since_ms_ago), (LiveState::Alive, Some(600), None));
        assert_eq!(e.peer, p.to_string());
        let e = entry(&p, false, Some(Seen::Suspect { since_ms: 9_000 }), 10_000);
        assert_eq!((e.state, e.since_ms_ago), (LiveState::Suspect, Some(1_000)));
        let e = entry(&p, false, Some(Seen::Dead { since_ms: 7_000 }), 10_000);
        assert_eq!((e.state, e.since_ms_ago), (LiveState::Dead, Some(3_000)));
        let e = entry(&p, false, None, 10_000);
        assert_eq!(e.state, LiveState::Unknown);
        assert!(!e.ready() && entry(&p, true, None, 0).ready());
    }

    #[tokio::test]
    async fn the_detector_is_held_and_read_through_the_handle() {
        let (me, other) = (PeerId::random(), PeerId::random());
        let clock = Clock::new();
        let mut d = Detector::new(LivenessConfig::default(), me, clock.now_ms());
        d.set_members(clock.now_ms(), &[me, other]);
        let (tx, _rx) = mpsc::channel(1);
        let live = Liveness {
            detector: Arc::new(Mutex::new(d)),
            settings: "heartbeatMs=1000".into(),
            differs: Arc::default(),
            clock,
            inbound: tx,
        };
        let stranger = PeerId::random();
        let view = live.view(&[me, other, stranger]);
        assert_eq!(
            view.iter().map(|e| (e.state, e.this_host)).collect::<Vec<_>>(),
            vec![(LiveState::Alive, true), (LiveState::Alive, false), (LiveState::Unknown, false)]
        );
        // Silent past the suspicion and the lone verdict: dead.
        let later = live.clock.now_ms() + 10_000;
        for t in (later..=later + 3_500).step_by(100) {
            live.lock().tick(t);
        }
        assert!(matches!(live.status(&other), Some(Seen::Dead { .. })), "{:?}", live.status(&other));
    }
}
