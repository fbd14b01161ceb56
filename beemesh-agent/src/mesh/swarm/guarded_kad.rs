//! Kademlia that serves attested peers only. libp2p-kad decides client or server mode for
//! the whole behaviour and answers every connected peer that speaks its protocol, handing
//! the routing table (the member list) to anyone who completed a QUIC handshake. This wrapper
//! passes a connection's Kademlia events (inbound queries and record writes, answers to our
//! queries) on only once its peer is attested; those of any other peer are dropped unread, so
//! its queries go unanswered until it is disconnected at the attestation deadline.

use std::collections::HashSet;
use std::ops::{Deref, DerefMut};
use std::task::{Context, Poll};

use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::kad::{self, store::MemoryStore};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent,
    ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

type Inner = kad::Behaviour<MemoryStore>;

/// [`kad::Behaviour`] behind an attestation gate; derefs to it for queries and the table.
pub struct GuardedKad {
    inner: Inner,
    attested: HashSet<PeerId>,
    /// Kademlia messages of unattested peers dropped.
    dropped: u64,
}

impl GuardedKad {
    pub fn new(inner: Inner) -> Self {
        Self { inner, attested: HashSet::new(), dropped: 0 }
    }

    /// `peer` attested: its Kademlia messages are served from now on.
    pub fn allow(&mut self, peer: PeerId) {
        self.attested.insert(peer);
    }

    /// `peer` left, failed or was expelled: served no more (and out of the table).
    pub fn deny(&mut self, peer: &PeerId) {
        self.attested.remove(peer);
        self.inner.remove_peer(peer);
    }

    /// Kademlia messages of unattested peers dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

impl Deref for GuardedKad {
    type Target = Inner;

    fn deref(&self) -> &Inner {
        &self.inner
    }
}

impl DerefMut for GuardedKad {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }
}

impl NetworkBehaviour for GuardedKad {
    type ConnectionHandler = <Inner as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = kad::Event;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner.handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_inbound_connection(connection_id, peer, local_addr, remote_addr)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(connection_id, maybe_peer, addresses, effective_role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.inner.handle_established_outbound_connection(connection_id, peer, addr, role_override, port_use)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        if self.attested.contains(&peer_id) {
            self.inner.on_connection_handler_event(peer_id, connection_id, event);
        } else {
            self.dropped += 1;
            tracing::trace!(peer = %peer_id, "kademlia message of an unattested peer dropped");
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}
