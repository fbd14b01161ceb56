//! The agent's libp2p swarm: QUIC, Kademlia, gossipsub, identify, request-response and
//! (optionally) mDNS in one event loop ([`EventLoop`] in `event_loop.rs`) behind a cloneable
//! [`MeshClient`], with the loop's [`MeshEvent`]s coming out of one channel. Peers must attest
//! (through [`Attest`]) before their gossip or requests reach the application.
//! `app` starts it with the host identity's keypair; the state and scheduler use the client.

mod addr;
mod backoff;
mod envelope;
mod event_loop;
mod guarded_kad;
mod join;
mod membership;
mod peers_file;
mod protocol;
mod ratelimit;
mod settings;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::request_response::ResponseChannel;
use libp2p::{identity::Keypair, Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

pub use crate::mesh::attest::{Attest, AttestedHost};
pub use addr::BootstrapAddr;
pub use envelope::{Envelope, ReplayWindow};
pub use join::join_request;
pub use membership::GossipDrop;
pub use peers_file::{KnownPeer, KnownPeers};
pub use protocol::{MeshRequest, MeshResponse, MAX_JOIN_BYTES};
pub use ratelimit::RateLimits;
pub use settings::{FailureDetector, MeshOpts, MeshSettings, DEFAULT_MESH_PORT};

/// Errors of the mesh swarm.
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("mesh address {addr:?}: {why}")]
    BadAddress { addr: String, why: String },
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("peers file {path}: {why}")]
    PeersFile { path: PathBuf, why: String },
    #[error("cannot build the mesh swarm: {0}")]
    Build(String),
    #[error("cannot listen on {addr}: {why}")]
    Listen { addr: Multiaddr, why: String },
    #[error("the mesh event loop has stopped")]
    Closed,
    #[error("peer {0} is not attested")]
    NotAttested(PeerId),
    #[error("cannot subscribe to {topic:?}: {why}")]
    Subscribe { topic: String, why: String },
    #[error("cannot publish on {topic:?}: {why}")]
    Publish { topic: String, why: String },
    #[error("request to {peer} failed: {why}")]
    Request { peer: PeerId, why: String },
    #[error("cannot dial {addr}: {why}")]
    Dial { addr: Multiaddr, why: String },
    #[error("join: {0}")]
    Join(String),
}

/// How the swarm runs; [`MeshConfig::new`] gives the defaults for a set of listen addresses.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// QUIC multiaddrs to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through; each is redialed with back-off until it is up.
    pub bootstrap: Vec<BootstrapAddr>,
    /// Find peers on the LAN by mDNS.
    pub mdns: bool,
    /// Where attested peers are remembered (`<state-dir>/mesh/peers.json`); none: nowhere.
    pub peers_file: Option<PathBuf>,
    /// A connected peer that has not attested by then is disconnected.
    pub attest_timeout: Duration,
    /// First wait before redialing a bootstrap or remembered peer; doubles up to the cap.
    pub redial_base: Duration,
    pub redial_cap: Duration,
    /// Largest gossip payload accepted or published.
    pub max_gossip_bytes: usize,
    /// Per-peer limits on the gossip it forwards to us.
    pub rate_limits: RateLimits,
    /// Per-peer limits on the application requests it sends us (bytes: request bodies).
    pub request_limits: RateLimits,
    /// How old (or early) a gossip message may be; gossipsub's duplicate cache outlasts it.
    pub replay_window: ReplayWindow,
    /// Our node name, as our certificate carries it: the author named in our gossip.
    pub node_name: String,
    /// Connections with nothing to do close after this.
    pub idle_timeout: Duration,
    /// How often deadlines and redials are looked at.
    pub tick: Duration,
    /// A QUIC dial that has not completed its handshake by then fails.
    pub handshake_timeout: Duration,
}

impl MeshConfig {
    pub fn new(listen: Vec<Multiaddr>) -> Self {
        Self {
            listen,
            bootstrap: Vec::new(),
            mdns: false,
            peers_file: None,
            attest_timeout: Duration::from_secs(10),
            redial_base: Duration::from_millis(500),
            redial_cap: Duration::from_secs(30),
            max_gossip_bytes: 256 * 1024,
            rate_limits: RateLimits::default(),
            request_limits: RateLimits::requests(),
            replay_window: ReplayWindow::default(),
            node_name: String::new(),
            idle_timeout: Duration::from_secs(300),
            tick: Duration::from_millis(250),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// A peer as `MeshClient::peers` lists it: connected now, or remembered from earlier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub peer: PeerId,
    /// The name its certificate carries: set once attested (for a remembered peer, the
    /// name it had when it last attested).
    pub node_name: Option<String>,
    pub attested: bool,
    /// Where it says it listens (identify), or listened when last seen.
    pub listen_addrs: Vec<Multiaddr>,
    /// Connected now (else remembered: attested earlier, not connected now).
    pub connected: bool,
    /// Unix seconds it was last seen (attested, or its last connection closed); `None` for a
    /// connected peer (seen now).
    pub last_seen: Option<u64>,
}

/// Counters of the swarm since it started (for `peers -o json`, metrics and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshStats {
    /// Gossip handed to the application.
    pub gossip_delivered: u64,
    /// Gossip dropped before the application, by [`GossipDrop::as_str`].
    pub gossip_dropped: BTreeMap<String, u64>,
    /// Application requests refused because the requester was not attested.
    pub requests_refused: u64,
    /// Application requests of attested peers refused by their per-peer rate limit.
    pub requests_rate_limited: u64,
    /// Peers whose attestation failed or timed out.
    pub attestations_failed: u64,
    /// Join requests refused by the swarm (oversized or over the rate limit).
    pub joins_refused: u64,
    /// Kademlia messages (queries, record writes) of unattested peers dropped unanswered.
    pub kad_unattested_dropped: u64,
    /// Attested peers cut off because a revocation names them.
    pub peers_expelled: u64,
}

/// A gossip message from an attested peer, waiting for the application's verdict
/// ([`MeshClient::validate`]): it is forwarded only once accepted.
#[derive(Clone, Debug)]
pub struct GossipMessage {
    pub id: MessageId,
    pub topic: String,
    /// The application's payload (out of its envelope).
    pub data: Vec<u8>,
    /// The author's node name from the envelope: checked against the origin's certificate
    /// when `origin_host` is set, a mere claim otherwise.
    pub author: String,
    /// When the author sent it (ms since the epoch, its clock; within the replay window).
    pub sent_ms: u64,
    /// The peer that created and signed it (gossipsub's signature was checked).
    pub origin: PeerId,
    /// The origin, when it is attested here; otherwise the application must check the
    /// payload's own signature against the origin's certificate.
    pub origin_host: Option<AttestedHost>,
    /// The attested peer that forwarded it to us.
    pub via: AttestedHost,
}

/// What the swarm reports to the application.
#[derive(Debug)]
pub enum MeshEvent {
    /// A peer attested: it is a member.
    PeerUp { host: AttestedHost, listen_addrs: Vec<Multiaddr> },
    /// An attested peer's last connection closed.
    PeerDown { host: AttestedHost },
    /// A peer failed attestation (or timed out); it is disconnected.
    AttestationFailed { peer: PeerId, reason: String },
    /// An attested peer is subscribed to a gossip topic.
    Subscribed { host: AttestedHost, topic: String },
    /// Gossip to validate.
    Gossip(Box<GossipMessage>),
    /// Gossip dropped before the application saw it (counted in [`MeshStats`]).
    GossipDropped { via: PeerId, origin: Option<PeerId>, reason: GossipDrop },
    /// An application request from an attested peer; answer it through `responder`.
    Request { from: AttestedHost, kind: String, body: Vec<u8>, responder: Responder },
    /// A join request from a peer that need not have attested (it has no credentials yet);
    /// answer it through `responder` (`respond` with the answer, or `refuse`).
    Join { peer: PeerId, body: Vec<u8>, responder: Responder },
    /// A bootstrap address could not be joined; it is tried again after `retry_in`.
    BootstrapFailed { addr: String, error: String, retry_in: Duration },
}

/// Answers one inbound request (once; dropping it leaves the requester to time out).
#[derive(Debug)]
pub struct Responder {
    channel: ResponseChannel<MeshResponse>,
    commands: mpsc::Sender<Command>,
}

impl Responder {
    pub async fn respond(self, body: Vec<u8>) -> Result<(), SwarmError> {
        self.send(MeshResponse::App(body)).await
    }

    pub async fn refuse(self, why: String) -> Result<(), SwarmError> {
        self.send(MeshResponse::Refused(why)).await
    }

    async fn send(self, response: MeshResponse) -> Result<(), SwarmError> {
        self.commands
            .send(Command::Respond { channel: self.channel, response })
            .await
            .map_err(|_| SwarmError::Closed)
    }
}

/// Commands from [`MeshClient`] to the event loop.
#[derive(Debug)]
enum Command {
    Subscribe {
        topic: String,
        reply: oneshot::Sender<Result<(), SwarmError>>,
    },
    Publish {
        topic: String,
        /// An encoded [`Envelope`].
        data: Vec<u8>,
        /// The size of the payload in it (what the gossip size limit applies to).
        payload_len: usize,
        reply: oneshot::Sender<Result<MessageId, SwarmError>>,
    },
    Validate {
        id: MessageId,
        via: PeerId,
        acceptance: MessageAcceptance,
    },
    Request {
        peer: PeerId,
        kind: String,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<MeshResponse, SwarmError>>,
    },
    Respond {
        channel: ResponseChannel<MeshResponse>,
        response: MeshResponse,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), SwarmError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerInfo>>,
    },
    Stats {
        reply: oneshot::Sender<MeshStats>,
    },
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Expel {
        peer: PeerId,
        reason: String,
        reply: oneshot::Sender<bool>,
    },
}

/// The handle on the swarm; cheap to clone. Every call fails with [`SwarmError::Closed`] once
/// the event loop has stopped (when every client and the event receiver are gone).
#[derive(Clone, Debug)]
pub struct MeshClient {
    local: PeerId,
    /// Our node name, the author of what we publish.
    node: Arc<str>,
    commands: mpsc::Sender<Command>,
}

impl MeshClient {
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, SwarmError> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| SwarmError::Closed)?;
        rx.await.map_err(|_| SwarmError::Closed)
    }

    pub async fn subscribe(&self, topic: &str) -> Result<(), SwarmError> {
        let topic = topic.to_string();
        self.call(|reply| Command::Subscribe { topic, reply }).await?
    }

    /// Publishes `data` (in an [`Envelope`] naming us and now, signed with our key) to the
    /// peers subscribed to `topic`.
    pub async fn publish(&self, topic: &str, data: Vec<u8>) -> Result<MessageId, SwarmError> {
        let sent_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.publish_envelope(topic, &Envelope { node: self.node.to_string(), sent_ms, data }).await
    }

    /// Publishes `envelope` as given (signed with our key). Peers check it like any other:
    /// a name that is not our certificate's or a time outside their window gets it dropped.
    pub async fn publish_envelope(&self, topic: &str, envelope: &Envelope) -> Result<MessageId, SwarmError> {
        let (topic, data, payload_len) = (topic.to_string(), envelope.encode(), envelope.data.len());
        self.call(|reply| Command::Publish { topic, data, payload_len, reply }).await?
    }

    /// Cuts `peer` off: disconnected, its gossip dropped as from a failed origin, the
    /// application told `PeerDown` if it was attested, and challenged afresh should it come
    /// back. Returns whether it was connected.
    pub async fn expel(&self, peer: PeerId, reason: String) -> Result<bool, SwarmError> {
        self.call(|reply| Command::Expel { peer, reason, reply }).await
    }

    /// The application's verdict on a [`GossipMessage`]: Accept forwards it, Reject
    /// penalises `via`, Ignore drops it quietly.
    pub async fn validate(
        &self,
        message: &GossipMessage,
        acceptance: MessageAcceptance,
    ) -> Result<(), SwarmError> {
        self.commands
            .send(Command::Validate { id: message.id.clone(), via: message.via.peer, acceptance })
            .await
            .map_err(|_| SwarmError::Closed)
    }

    /// Sends an application request of `kind` to an attested peer and waits for the answer.
    pub async fn request(&self, peer: PeerId, kind: &str, body: Vec<u8>) -> Result<MeshResponse, SwarmError> {
        let kind = kind.to_string();
        self.call(|reply| Command::Request { peer, kind, body, reply }).await?
    }

    /// Dials an address (the peer is challenged once connected).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), SwarmError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Connected peers, attested or not.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, SwarmError> {
        self.call(|reply| Command::Peers { reply }).await
    }

    pub async fn stats(&self) -> Result<MeshStats, SwarmError> {
        self.call(|reply| Command::Stats { reply }).await
    }

    /// The addresses we listen on (one per interface for an unspecified address).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, SwarmError> {
        self.call(|reply| Command::ListenAddrs { reply }).await
    }
}

/// Builds the swarm with `keypair`, listens on every configured address (returning once each
/// listener is up, or its error), and spawns the event loop on the current tokio runtime.
pub async fn start(
    config: MeshConfig,
    keypair: Keypair,
    attest: Arc<dyn Attest>,
) -> Result<(MeshClient, mpsc::Receiver<MeshEvent>), SwarmError> {
    let local = keypair.public().to_peer_id();
    let node = Arc::from(config.node_name.as_str());
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (event_tx, event_rx) = mpsc::channel(1024);
    let event_loop =
        event_loop::EventLoop::new(config, keypair, attest, cmd_rx, cmd_tx.clone(), event_tx).await?;
    tokio::spawn(event_loop.run());
    Ok((MeshClient { local, node, commands: cmd_tx }, event_rx))
}
