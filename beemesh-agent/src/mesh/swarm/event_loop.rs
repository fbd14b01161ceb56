//! The one task that owns the libp2p `Swarm`: it runs client commands, challenges every new
//! peer, filters gossip and requests by attestation, and redials bootstrap and remembered peers.

mod dial;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{identify, identity::Keypair, mdns, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot, watch};

use super::backoff::Backoff;
use super::envelope::{Envelope, ENVELOPE_OVERHEAD};
use super::membership::{GossipDrop, Membership, PeerState};
use super::peers_file::KnownPeers;
use super::protocol::{build_swarm, Behaviour, BehaviourEvent, MeshRequest, MeshResponse, MAX_JOIN_BYTES};
use super::ratelimit::{RateLimiter, RateLimits};

use super::{
    Attest, AttestedHost, BootstrapAddr, Command, GossipMessage, MeshConfig, MeshEvent, MeshStats, PeerInfo,
    Responder, SwarmError,
};

/// How long a bootstrap attempt (resolve + dial) may take before another may start.
const DIAL_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `start` waits for the listeners to come up.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Kademlia bootstrap after a join: again after 1 s, 2 s, 4 s ... up to 5 min.
const DISCOVERY_BASE: Duration = Duration::from_secs(1);
const DISCOVERY_CAP: Duration = Duration::from_secs(300);
/// An attested connection that lasted this long resets the redial back-offs when it closes;
/// a shorter one (e.g. a peer that keeps failing attestation) leaves them growing.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Join requests (from anyone, attested or not) this host looks at: a burst of 5, then one
/// a second. PeerIds cost nothing to make, so the limit is for all requesters together.
const JOIN_LIMITS: RateLimits = RateLimits {
    messages_per_sec: 1.0,
    message_burst: 5.0,
    bytes_per_sec: MAX_JOIN_BYTES as f64,
    byte_burst: 5.0 * MAX_JOIN_BYTES as f64,
};

/// One `--bootstrap` address and where its joining stands.
#[derive(Debug)]
struct BootTarget {
    addr: BootstrapAddr,
    backoff: Backoff,
    /// The peer behind it, once a dial succeeded.
    peer: Option<PeerId>,
    /// Dials of the current attempt not finished yet.
    outstanding: usize,
    in_flight: bool,
}

/// What an outbound request was for.
#[derive(Debug)]
enum Outbound {
    Challenge { nonce: [u8; 32] },
    Client(oneshot::Sender<Result<MeshResponse, SwarmError>>),
}

/// The result of verifying a peer's attestation off the loop.
type Verified = (PeerId, [u8; 32], Result<AttestedHost, String>);

pub(super) struct EventLoop {
    swarm: Swarm<Behaviour>,
    config: MeshConfig,
    attest: Arc<dyn Attest>,
    commands: mpsc::Receiver<Command>,
    /// Handed to responders; weak so that dropping every client stops the loop.
    command_tx: mpsc::WeakSender<Command>,
    events: mpsc::Sender<MeshEvent>,
    membership: Membership,
    outbound: HashMap<OutboundRequestId, Outbound>,
    verified_tx: mpsc::Sender<Verified>,
    verified_rx: mpsc::Receiver<Verified>,
    resolved_tx: mpsc::Sender<(usize, Result<Vec<Multiaddr>, SwarmError>)>,
    resolved_rx: mpsc::Receiver<(usize, Result<Vec<Multiaddr>, SwarmError>)>,
    boot: Vec<BootTarget>,
    boot_dials: HashMap<ConnectionId, usize>,
    known: KnownPeers,
    known_tx: Option<watch::Sender<KnownPeers>>,
    remembered_backoff: Backoff,
    /// Peers expelled while attested, until their connection closes (then `PeerDown`).
    expelled: HashMap<PeerId, AttestedHost>,
    /// When each connected peer attested.
    attested_at: HashMap<PeerId, Instant>,
    /// Addresses each peer listens on: what identify said, else the address we dialed.
    identified: HashMap<PeerId, Vec<Multiaddr>>,
    limiters: HashMap<PeerId, RateLimiter>,
    request_limiters: HashMap<PeerId, RateLimiter>,
    stats: MeshStats,
    listen_addrs: HashSet<Multiaddr>,
    /// Join requests, all requesters together.
    join_limiter: RateLimiter,
    /// Peers that sent a join request: they have nothing to attest with yet, so their
    /// challenge failing is expected, not a warning.
    joiners: HashSet<PeerId>,
    /// When to ask the DHT for more peers again: soon after a peer joins (it may know others
    /// that joined at the same time), then less and less often.
    discovery: Backoff,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").field("local", self.swarm.local_peer_id()).finish_non_exhaustive()
    }
}

/// Writes the remembered peers whenever they change, off the event loop; the last value wins.
fn spawn_peers_writer(path: std::path::PathBuf, mut rx: watch::Receiver<KnownPeers>) {
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let peers = rx.borrow_and_update().clone();
            let path = path.clone();
            let written = tokio::task::spawn_blocking(move || peers.save(&path)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot remember mesh peers"),
                Err(e) => tracing::warn!(error = %e, "peers writer failed"),
            }
        }
    });
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::getrandom(&mut n).expect("the kernel's random source is available");
    n
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Whether an address is worth telling others or dialing later (not 0.0.0.0, not empty).
/// The addresses worth dialing among those a peer says it listens on. Its loopback address
/// reaches this host, not the peer, unless the peer is on this host's loopback too (it saw us
/// there): dialing it would connect to ourselves, and such self-dials racing the real dial
/// made two hosts drop each other's connection for seconds.
fn peer_addrs(listen: Vec<Multiaddr>, observed_us: &Multiaddr) -> Vec<Multiaddr> {
    let same_host = is_loopback(observed_us);
    listen.into_iter().filter(|a| dialable(a) && (same_host || !is_loopback(a))).collect()
}

/// Whether `a` is a loopback IP address.
fn is_loopback(a: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

fn dialable(a: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    match a.iter().next() {
        Some(Protocol::Ip4(ip)) => !ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => !ip.is_unspecified(),
        Some(Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)) => true,
        _ => false,
    }
}

impl EventLoop {
    pub(super) async fn new(
        config: MeshConfig,
        keypair: Keypair,
        attest: Arc<dyn Attest>,
        commands: mpsc::Receiver<Command>,
        command_tx: mpsc::Sender<Command>,
        events: mpsc::Sender<MeshEvent>,
    ) -> Result<Self, SwarmError> {
        let mut swarm = build_swarm(&config, keypair)?;
        let mut listeners = HashMap::new();
        for addr in &config.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| SwarmError::Listen { addr: addr.clone(), why: e.to_string() })?;
            listeners.insert(id, addr.clone());
        }
        // Wait for every listener: a port in use must fail the start, not a later log line.
        let mut listen_addrs = HashSet::new();
        let mut waiting: HashSet<_> = listeners.keys().copied().collect();
        let deadline = tokio::time::Instant::now() + LISTEN_TIMEOUT;
        while !waiting.is_empty() {
            let event = tokio::time::timeout_at(deadline, swarm.select_next_some()).await;
            match event {
                Err(_) => {
                    let id = waiting.iter().next().expect("not empty");
                    return Err(SwarmError::Listen {
                        addr: listeners[id].clone(),
                        why: "no listen address after 10 s".into(),
                    });
                }
                Ok(SwarmEvent::NewListenAddr { listener_id, address }) => {
                    tracing::info!(%address, "mesh listening");
                    listen_addrs.insert(address);
                    waiting.remove(&listener_id);
                }
                Ok(SwarmEvent::ListenerClosed { listener_id, reason: Err(e), .. }) => {
                    return Err(SwarmError::Listen {
                        addr: listeners[&listener_id].clone(),
                        why: e.to_string(),
                    })
                }
                Ok(SwarmEvent::ListenerError { listener_id, error }) => {
                    return Err(SwarmError::Listen {
                        addr: listeners[&listener_id].clone(),
                        why: error.to_string(),
                    })
                }
                Ok(other) => tracing::debug!(event = ?other, "mesh event while starting"),
            }
        }

        let known = match &config.peers_file {
            Some(path) => KnownPeers::load(path).unwrap_or_else(|e| {
                // Keep the unreadable file for a human; start from the bootstrap list.
                let aside = path.with_extension("json.bad");
                tracing::warn!(error = %e, aside = %aside.display(), "ignoring remembered mesh peers");
                let _ = std::fs::rename(path, &aside);
                KnownPeers::default()
            }),
            None => KnownPeers::default(),
        };
        let known_tx = config.peers_file.as_ref().map(|path| {
            let (tx, rx) = watch::channel(known.clone());
            spawn_peers_writer(path.clone(), rx);
            tx
        });
        let boot = config
            .bootstrap
            .iter()
            .map(|addr| BootTarget {
                addr: addr.clone(),
                backoff: Backoff::new(config.redial_base, config.redial_cap),
                peer: None,
                outstanding: 0,
                in_flight: false,
            })
            .collect();
        let (verified_tx, verified_rx) = mpsc::channel(64);
        let (resolved_tx, resolved_rx) = mpsc::channel(64);
        Ok(Self {
            swarm,
            remembered_backoff: Backoff::new(config.redial_base, config.redial_cap),
            attested_at: HashMap::new(),
            expelled: HashMap::new(),
            attest,
            commands,
            command_tx: command_tx.downgrade(),
            events,
            membership: Membership::default(),
            outbound: HashMap::new(),
            verified_tx,
            verified_rx,
            resolved_tx,
            resolved_rx,
            boot,
            boot_dials: HashMap::new(),
            known,
            known_tx,
            identified: HashMap::new(),
            limiters: HashMap::new(),
            request_limiters: HashMap::new(),
            stats: MeshStats::default(),
            listen_addrs,
            discovery: Backoff::new(DISCOVERY_BASE, DISCOVERY_CAP),
            join_limiter: RateLimiter::new(JOIN_LIMITS, Instant::now()),
            joiners: HashSet::new(),
            config,
        })
    }

    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let alive = tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event).await,
                command = self.commands.recv() => match command {
                    Some(c) => { self.on_command(c); true }
                    None => false,
                },
                Some((peer, nonce, result)) = self.verified_rx.recv() => self.on_verified(peer, nonce, result).await,
                Some((i, result)) = self.resolved_rx.recv() => self.on_resolved(i, result).await,
                _ = tick.tick() => self.on_tick().await,
            };
            if !alive {
                tracing::debug!("mesh event loop stops");
                return;
            }
        }
    }

    /// Sends an event; false when nobody listens any more (the loop then stops).
    async fn emit(&mut self, event: MeshEvent) -> bool {
        self.events.send(event).await.is_ok()
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Subscribe { topic, reply } => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&IdentTopic::new(&topic))
                    .map(|_| ())
                    .map_err(|e| SwarmError::Subscribe { topic, why: e.to_string() });
                let _ = reply.send(r);
            }
            Command::Publish { topic, data, payload_len, reply } => {
                let max = self.config.max_gossip_bytes;
                let r = if payload_len > max || data.len() > max + ENVELOPE_OVERHEAD {
                    Err(SwarmError::Publish { topic, why: format!("{payload_len} bytes, more than {max}") })
                } else {
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .publish(IdentTopic::new(&topic), data)
                        .map_err(|e| SwarmError::Publish { topic, why: e.to_string() })
                };
                let _ = reply.send(r);
            }
            Command::Validate { id, via, acceptance } => {
                self.swarm.behaviour_mut().gossipsub.report_message_validation_result(&id, &via, acceptance);
            }
            Command::Request { peer, kind, body, reply } => {
                if self.membership.attested(&peer).is_none() {
                    let _ = reply.send(Err(SwarmError::NotAttested(peer)));
                    return;
                }
                let id = self.swarm.behaviour_mut().rr.send_request(&peer, MeshRequest::App { kind, body });
                self.outbound.insert(id, Outbound::Client(reply));
            }
            Command::Respond { channel, response } => {
                if self.swarm.behaviour_mut().rr.send_response(channel, response).is_err() {
                    tracing::debug!("response not sent: the requester has gone");
                }
            }
            Command::Dial { addr, reply } => {
                let r =
                    self.swarm.dial(addr.clone()).map_err(|e| SwarmError::Dial { addr, why: e.to_string() });
                let _ = reply.send(r);
            }
            Command::Peers { reply } => {
                let mut peers: Vec<PeerInfo> = self
                    .swarm
                    .connected_peers()
                    .map(|p| {
                        let host = self.membership.attested(p);
                        PeerInfo {
                            peer: *p,
                            node_name: host.map(|h| h.node_name.clone()),
                            attested: host.is_some(),
                            listen_addrs: self.identified.get(p).cloned().unwrap_or_default(),
                            connected: true,
                            last_seen: None,
                        }
                    })
                    .collect();
                // Members remembered from earlier that are not connected now.
                for (id, known) in &self.known.peers {
                    let Ok(peer) = id.parse::<PeerId>() else { continue };
                    if self.swarm.is_connected(&peer) {
                        continue;
                    }
                    peers.push(PeerInfo {
                        peer,
                        node_name: Some(known.node_name.clone()),
                        attested: false,
                        listen_addrs: known.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
                        connected: false,
                        last_seen: Some(known.last_seen),
                    });
                }
                let _ = reply.send(peers);
            }
            Command::Stats { reply } => {
                let mut stats = self.stats.clone();
                stats.kad_unattested_dropped = self.swarm.behaviour().kad.dropped();
                let _ = reply.send(stats);
            }
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.listen_addrs.iter().cloned().collect());
            }
            Command::Expel { peer, reason, reply } => {
                let _ = reply.send(self.expel(peer, reason));
            }
        }
    }

    /// Cuts `peer` off (a revocation names it): its state becomes failed (so its gossip is
    /// dropped, even relayed, until it attests afresh, which a revoked certificate cannot),
    /// it is forgotten and disconnected. `PeerDown` follows from the connection's close.
    fn expel(&mut self, peer: PeerId, reason: String) -> bool {
        let was = self.membership.expel(&peer, reason.clone());
        if let Some(PeerState::Attested(host)) = &was {
            tracing::warn!(%peer, node = %host.node_name, %reason, "expelling mesh peer");
            self.stats.peers_expelled += 1;
            self.expelled.insert(peer, host.clone());
        }
        self.swarm.behaviour_mut().kad.deny(&peer);
        if self.known.forget(&peer) {
            self.publish_known();
        }
        self.swarm.disconnect_peer_id(peer).is_ok() || was.is_some()
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) -> bool {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "mesh listening");
                self.listen_addrs.insert(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_addrs.remove(&address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, connection_id, num_established, endpoint, ..
            } => {
                tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "mesh connection up");
                if endpoint.is_dialer() && dialable(endpoint.get_remote_address()) {
                    // Until identify says where it listens, the address that reached it.
                    self.identified
                        .entry(peer_id)
                        .or_insert_with(|| vec![endpoint.get_remote_address().clone()]);
                }
                if let Some(i) = self.boot_dials.remove(&connection_id) {
                    let t = &mut self.boot[i];
                    t.peer = Some(peer_id);
                    t.outstanding = t.outstanding.saturating_sub(1);
                    t.in_flight = false;
                    // Joined: should it drop us soon after, the next dial waits a while.
                    t.backoff.failed(Instant::now());
                    tracing::info!(bootstrap = %t.addr, peer = %peer_id, "joined bootstrap peer");
                }
                if num_established.get() == 1 {
                    let n = nonce();
                    if self.membership.connected(peer_id, n, Instant::now(), self.config.attest_timeout) {
                        let id = self
                            .swarm
                            .behaviour_mut()
                            .rr
                            .send_request(&peer_id, MeshRequest::Attest { nonce: n });
                        self.outbound.insert(id, Outbound::Challenge { nonce: n });
                    }
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                tracing::debug!(peer = %peer_id, num_established, cause = ?cause, "mesh connection closed");
                if num_established > 0 {
                    return true;
                }
                self.limiters.remove(&peer_id);
                self.request_limiters.remove(&peer_id);
                self.swarm.behaviour_mut().kad.deny(&peer_id);
                self.identified.remove(&peer_id);
                let stable = self.attested_at.remove(&peer_id).is_some_and(|t| t.elapsed() >= STABLE_AFTER);
                if stable {
                    // A member we held for long has gone: redial at once, then back off.
                    self.remembered_backoff.reset();
                    for t in self.boot.iter_mut().filter(|t| t.peer == Some(peer_id)) {
                        t.backoff.reset();
                    }
                }
                let was = match self.membership.disconnected(&peer_id) {
                    Some(PeerState::Attested(host)) => Some(host),
                    _ => self.expelled.remove(&peer_id),
                };
                if let Some(host) = was {
                    tracing::info!(peer = %peer_id, node = %host.node_name, "mesh peer down");
                    if self.known.seen(&peer_id, unix_now()) {
                        self.publish_known();
                    }
                    if !self.emit(MeshEvent::PeerDown { host }).await {
                        return false;
                    }
                }
            }
            SwarmEvent::IncomingConnectionError { send_back_addr, error, .. } => {
                tracing::debug!(addr = %send_back_addr, %error, "incoming mesh connection failed");
            }
            SwarmEvent::OutgoingConnectionError { connection_id, error, peer_id, .. } => {
                tracing::debug!(peer = ?peer_id, %error, "outgoing mesh connection failed");
                if let Some(i) = self.boot_dials.remove(&connection_id) {
                    let t = &mut self.boot[i];
                    t.outstanding = t.outstanding.saturating_sub(1);
                    if t.outstanding == 0 && t.in_flight {
                        return self.boot_failed(i, error.to_string()).await;
                    }
                }
            }
            SwarmEvent::Behaviour(event) => return self.on_behaviour_event(event).await,
            _ => {}
        }
        true
    }

    async fn on_behaviour_event(&mut self, event: BehaviourEvent) -> bool {
        match event {
            BehaviourEvent::Rr(e) => return self.on_request_response(e).await,
            BehaviourEvent::Gossipsub(e) => return self.on_gossip(e).await,
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let addrs = peer_addrs(info.listen_addrs, &info.observed_addr);
                if !addrs.is_empty() {
                    self.identified.insert(peer_id, addrs);
                }
                if let Some(host) = self.membership.attested(&peer_id).cloned() {
                    self.add_to_routing(&host);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(vec![addr])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    if let Err(e) = self.swarm.dial(opts) {
                        tracing::debug!(%peer, error = %e, "mdns dial");
                    }
                }
            }
            BehaviourEvent::Kad(e) => tracing::trace!(event = ?e, "kademlia"),
            _ => {}
        }
        true
    }

    async fn on_request_response(
        &mut self,
        event: request_response::Event<MeshRequest, MeshResponse>,
    ) -> bool {
        use request_response::{Event, Message};
        match event {
            Event::Message { peer, message: Message::Request { request, channel, .. }, .. } => {
                match request {
                    MeshRequest::Attest { nonce } => {
                        let attestation = self.attest.attest(&nonce, &peer);
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .rr
                            .send_response(channel, MeshResponse::Attestation(attestation));
                    }
                    MeshRequest::App { kind, body } => match self.membership.attested(&peer).cloned() {
                        Some(_) if !self.request_allowed(&peer, body.len()) => {
                            self.stats.requests_rate_limited += 1;
                            tracing::debug!(%peer, %kind, "mesh request rate limited");
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .rr
                                .send_response(channel, MeshResponse::Refused("rate limited".into()));
                        }
                        Some(from) => {
                            let Some(commands) = self.command_tx.upgrade() else {
                                return false;
                            };
                            let responder = Responder { channel, commands };
                            return self.emit(MeshEvent::Request { from, kind, body, responder }).await;
                        }
                        None => {
                            self.stats.requests_refused += 1;
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .rr
                                .send_response(channel, MeshResponse::Refused("not attested".into()));
                        }
                    },
                    MeshRequest::Join { body } => return self.on_join(peer, body, channel).await,
                }
            }
            Event::Message { peer, message: Message::Response { request_id, response }, .. } => {
                match self.outbound.remove(&request_id) {
                    Some(Outbound::Challenge { nonce, .. }) => match response {
                        MeshResponse::Attestation(bytes) => {
                            let attest = self.attest.clone();
                            let tx = self.verified_tx.clone();
                            // Verification (certificate chains) runs beside the loop.
                            tokio::task::spawn_blocking(move || {
                                let r = attest.verify(&bytes, &nonce, &peer, SystemTime::now());
                                let _ = tx.blocking_send((peer, nonce, r));
                            });
                        }
                        other => {
                            return self
                                .attestation_failed(peer, format!("answered the challenge with {other:?}"))
                                .await
                        }
                    },
                    Some(Outbound::Client(reply)) => {
                        let _ = reply.send(Ok(response));
                    }
                    None => {}
                }
            }
            Event::OutboundFailure { peer, request_id, error, .. } => match self.outbound.remove(&request_id)
            {
                Some(Outbound::Challenge { nonce }) => {
                    // One of several connections closed under the challenge (two hosts that
                    // dialed each other at once): ask again over one still open.
                    let closed = matches!(error, request_response::OutboundFailure::ConnectionClosed);
                    if closed && self.swarm.is_connected(&peer) {
                        tracing::debug!(%peer, "challenge's connection closed; challenging again");
                        let id =
                            self.swarm.behaviour_mut().rr.send_request(&peer, MeshRequest::Attest { nonce });
                        self.outbound.insert(id, Outbound::Challenge { nonce });
                        return true;
                    }
                    return self.attestation_failed(peer, format!("challenge failed: {error}")).await;
                }
                Some(Outbound::Client(reply)) => {
                    let _ = reply.send(Err(SwarmError::Request { peer, why: error.to_string() }));
                }
                None => {}
            },
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound mesh request failed");
            }
            Event::ResponseSent { .. } => {}
        }
        true
    }

    async fn on_verified(
        &mut self,
        peer: PeerId,
        nonce: [u8; 32],
        result: Result<AttestedHost, String>,
    ) -> bool {
        let Some(state) = self.membership.verified(&peer, &nonce, result).cloned() else {
            return true;
        };
        match state {
            PeerState::Attested(host) => {
                tracing::info!(%peer, node = %host.node_name, "mesh peer attested");
                self.swarm.behaviour_mut().kad.allow(peer);
                self.add_to_routing(&host);
                self.attested_at.insert(peer, Instant::now());
                // A new member: ask the DHT for the rest of the mesh now, and again soon.
                self.discovery.reset();
                self.discover(Instant::now());
                let listen_addrs = self.identified.get(&peer).cloned().unwrap_or_default();
                if !self.emit(MeshEvent::PeerUp { host: host.clone(), listen_addrs }).await {
                    return false;
                }
                // Subscriptions that arrived before the attestation.
                let topics: Vec<String> = self
                    .swarm
                    .behaviour()
                    .gossipsub
                    .all_peers()
                    .filter(|(p, _)| **p == peer)
                    .flat_map(|(_, ts)| ts.into_iter().map(|t| t.as_str().to_string()))
                    .collect();
                for topic in topics {
                    if !self.emit(MeshEvent::Subscribed { host: host.clone(), topic }).await {
                        return false;
                    }
                }
                true
            }
            PeerState::Failed { reason } => self.attestation_failed(peer, reason).await,
            PeerState::Pending { .. } => true,
        }
    }

    /// The one request a peer that has not attested may send: bounded, rate limited, then
    /// handed to the application (which holds the issuer, if this host has one).
    async fn on_join(
        &mut self,
        peer: PeerId,
        body: Vec<u8>,
        channel: request_response::ResponseChannel<MeshResponse>,
    ) -> bool {
        let refusal = if body.len() > MAX_JOIN_BYTES {
            Some(format!("join request of {} bytes, more than {MAX_JOIN_BYTES}", body.len()))
        } else if !self.join_limiter.allow(body.len(), Instant::now()) {
            Some(super::join::JOIN_BUSY.to_string())
        } else {
            None
        };
        if let Some(why) = refusal {
            self.stats.joins_refused += 1;
            tracing::info!(%peer, %why, "join request refused");
            let _ = self.swarm.behaviour_mut().rr.send_response(channel, MeshResponse::Refused(why));
            return true;
        }
        if self.membership.attested(&peer).is_none() {
            self.joiners.insert(peer);
        }
        let Some(commands) = self.command_tx.upgrade() else {
            return false;
        };
        self.emit(MeshEvent::Join { peer, body, responder: Responder { channel, commands } }).await
    }

    /// Marks `peer` failed, disconnects it and forgets it.
    async fn attestation_failed(&mut self, peer: PeerId, reason: String) -> bool {
        if self.joiners.remove(&peer) {
            // A host joining through us: it has no credentials to attest with yet.
            tracing::debug!(%peer, %reason, "joining peer not attested; disconnecting");
            self.membership.challenge_failed(&peer, reason);
            let _ = self.swarm.disconnect_peer_id(peer);
            return true;
        }
        tracing::warn!(%peer, %reason, "mesh peer failed attestation; disconnecting");
        self.membership.challenge_failed(&peer, reason.clone());
        self.stats.attestations_failed += 1;
        let _ = self.swarm.disconnect_peer_id(peer);
        if self.known.forget(&peer) {
            self.publish_known();
        }
        self.emit(MeshEvent::AttestationFailed { peer, reason }).await
    }

    /// An attested peer becomes routable in the DHT and is remembered on disk.
    fn add_to_routing(&mut self, host: &AttestedHost) {
        let addrs = self.identified.get(&host.peer).cloned().unwrap_or_default();
        for a in &addrs {
            self.swarm.behaviour_mut().kad.add_address(&host.peer, a.clone());
        }
        if self.known.remember(&host.peer, &host.node_name, &addrs, unix_now()) {
            self.publish_known();
        }
    }

    fn publish_known(&self) {
        if let Some(tx) = &self.known_tx {
            tx.send_replace(self.known.clone());
        }
    }

    async fn on_gossip(&mut self, event: gossipsub::Event) -> bool {
        match event {
            gossipsub::Event::Message { propagation_source: via, message_id, message } => {
                let verdict = self
                    .gossip_verdict(&via, message.source.as_ref(), message.data.len())
                    .and_then(|()| self.open_envelope(message.source.as_ref(), &message.data));
                match verdict {
                    Err(reason) => {
                        let acceptance = if reason.is_reject() {
                            MessageAcceptance::Reject
                        } else {
                            MessageAcceptance::Ignore
                        };
                        self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                            &message_id,
                            &via,
                            acceptance,
                        );
                        *self.stats.gossip_dropped.entry(reason.as_str().to_string()).or_default() += 1;
                        tracing::debug!(%via, reason = reason.as_str(), "gossip dropped");
                        return self
                            .emit(MeshEvent::GossipDropped { via, origin: message.source, reason })
                            .await;
                    }
                    Ok(envelope) => {
                        let via_host = self.membership.attested(&via).cloned().expect("verdict checked it");
                        let origin = message.source.expect("verdict checked it");
                        self.stats.gossip_delivered += 1;
                        return self
                            .emit(MeshEvent::Gossip(Box::new(GossipMessage {
                                id: message_id,
                                topic: message.topic.as_str().to_string(),
                                data: envelope.data,
                                author: envelope.node,
                                sent_ms: envelope.sent_ms,
                                origin,
                                origin_host: self.membership.attested(&origin).cloned(),
                                via: via_host,
                            })))
                            .await;
                    }
                }
            }
            gossipsub::Event::Subscribed { peer_id, topic } => {
                if let Some(host) = self.membership.attested(&peer_id).cloned() {
                    return self
                        .emit(MeshEvent::Subscribed { host, topic: topic.as_str().to_string() })
                        .await;
                }
            }
            _ => {}
        }
        true
    }

    fn gossip_verdict(
        &mut self,
        via: &PeerId,
        origin: Option<&PeerId>,
        len: usize,
    ) -> Result<(), GossipDrop> {
        if len > self.config.max_gossip_bytes + ENVELOPE_OVERHEAD {
            return Err(GossipDrop::Oversized);
        }
        self.membership.gossip_verdict(via, origin)?;
        let now = Instant::now();
        let limits = self.config.rate_limits;
        let limiter = self.limiters.entry(*via).or_insert_with(|| RateLimiter::new(limits, now));
        if !limiter.allow(len, now) {
            return Err(GossipDrop::RateLimited);
        }
        Ok(())
    }

    /// The envelope of gossip from `origin`: inside the replay window, and naming the node
    /// of `origin`'s certificate when `origin` is attested here (else the name is a claim
    /// the application must not trust).
    fn open_envelope(&self, origin: Option<&PeerId>, data: &[u8]) -> Result<Envelope, GossipDrop> {
        let envelope = Envelope::open(data, unix_now_ms(), self.config.replay_window)?;
        if let Some(host) = origin.and_then(|o| self.membership.attested(o)) {
            if host.node_name != envelope.node {
                return Err(GossipDrop::Forged);
            }
        }
        Ok(envelope)
    }

    /// Whether an application request of `len` bytes from `peer` is within its rate limit.
    fn request_allowed(&mut self, peer: &PeerId, len: usize) -> bool {
        let now = Instant::now();
        let limits = self.config.request_limits;
        self.request_limiters.entry(*peer).or_insert_with(|| RateLimiter::new(limits, now)).allow(len, now)
    }
}

#[cfg(test)]
mod addr_tests {
    use super::*;

    #[test]
    fn a_remote_peers_loopback_address_is_not_dialed() {
        let a = |s: &str| s.parse::<Multiaddr>().expect("multiaddr");
        let listen = vec![
            a("/ip4/127.0.0.1/udp/4001/quic-v1"),
            a("/ip4/10.200.0.2/udp/4001/quic-v1"),
            a("/ip4/0.0.0.0/udp/4001/quic-v1"),
        ];
        assert_eq!(
            peer_addrs(listen.clone(), &a("/ip4/10.200.0.1/udp/4001/quic-v1")),
            [a("/ip4/10.200.0.2/udp/4001/quic-v1")]
        );
        assert_eq!(
            peer_addrs(listen, &a("/ip4/127.0.0.1/udp/4002/quic-v1")).len(),
            2,
            "same host: loopback kept"
        );
    }
}
