//! Which connected peers are attested (sans-IO: time passed in): the challenge sent to each,
//! its deadline, and the verdicts on their gossip and requests that follow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::mesh::attest::AttestedHost;

/// Where a connected peer stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Challenged with `nonce`; disconnected at `deadline` unless it attests.
    Pending {
        nonce: [u8; 32],
        deadline: Instant,
    },
    Attested(AttestedHost),
    /// Its attestation did not verify; it is being disconnected.
    Failed {
        reason: String,
    },
}

/// Why a gossip message is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GossipDrop {
    /// The peer that forwarded it is not attested (yet, or it failed).
    Unattested,
    /// It was created by a peer whose attestation failed here.
    FailedOrigin,
    /// It carries no origin (unsigned messages are refused anyway by strict validation).
    NoOrigin,
    /// The forwarding peer exceeded its rate limit.
    RateLimited,
    /// Larger than the configured gossip size limit.
    Oversized,
    /// Its payload is not in a beemesh envelope.
    Malformed,
    /// Sent longer ago than the replay window allows (a replay, or a very late message).
    Stale,
    /// Sent further in the future than the allowed clock skew.
    Future,
    /// Its envelope names another node than the certificate of the peer that signed it.
    Forged,
}

impl GossipDrop {
    /// Whether the forwarding peer is at fault (Reject, penalised) or not (Ignore).
    pub fn is_reject(self) -> bool {
        !matches!(self, Self::RateLimited)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unattested => "unattested",
            Self::FailedOrigin => "failed-origin",
            Self::NoOrigin => "no-origin",
            Self::RateLimited => "rate-limited",
            Self::Oversized => "oversized",
            Self::Malformed => "malformed",
            Self::Stale => "stale",
            Self::Future => "future",
            Self::Forged => "forged",
        }
    }
}

/// The state of every connected peer.
#[derive(Debug, Default)]
pub struct Membership {
    peers: HashMap<PeerId, PeerState>,
}

impl Membership {
    /// A first connection to `peer` is up at `now`: challenge it with `nonce` unless it is
    /// already attested or pending. Returns whether to send the challenge.
    pub fn connected(&mut self, peer: PeerId, nonce: [u8; 32], now: Instant, timeout: Duration) -> bool {
        match self.peers.get(&peer) {
            Some(PeerState::Attested(_)) | Some(PeerState::Pending { .. }) => false,
            Some(PeerState::Failed { .. }) | None => {
                self.peers.insert(peer, PeerState::Pending { nonce, deadline: now + timeout });
                true
            }
        }
    }

    /// The last connection to `peer` closed. Returns what it was.
    pub fn disconnected(&mut self, peer: &PeerId) -> Option<PeerState> {
        self.peers.remove(peer)
    }

    /// The nonce `peer` must answer, if it is pending.
    pub fn pending_nonce(&self, peer: &PeerId) -> Option<[u8; 32]> {
        match self.peers.get(peer) {
            Some(PeerState::Pending { nonce, .. }) => Some(*nonce),
            _ => None,
        }
    }

    /// The verification of `peer`'s answer to `nonce` finished. Returns the new state, or
    /// `None` when the result is stale (the peer left, or was challenged again since).
    pub fn verified(
        &mut self,
        peer: &PeerId,
        nonce: &[u8; 32],
        result: Result<AttestedHost, String>,
    ) -> Option<&PeerState> {
        if self.pending_nonce(peer).as_ref() != Some(nonce) {
            return None;
        }
        let state = match result {
            Ok(host) if host.peer == *peer => PeerState::Attested(host),
            Ok(host) => PeerState::Failed { reason: format!("attestation names peer {} instead", host.peer) },
            Err(reason) => PeerState::Failed { reason },
        };
        self.peers.insert(*peer, state);
        self.peers.get(peer)
    }

    /// The challenge could not be delivered or answered.
    pub fn challenge_failed(&mut self, peer: &PeerId, reason: String) {
        if matches!(self.peers.get(peer), Some(PeerState::Pending { .. })) {
            self.peers.insert(*peer, PeerState::Failed { reason });
        }
    }

    /// `peer` is cut off (revoked): failed whatever it was. Returns what it was.
    pub fn expel(&mut self, peer: &PeerId, reason: String) -> Option<PeerState> {
        self.peers.insert(*peer, PeerState::Failed { reason })
    }

    /// Pending peers whose deadline passed at `now`: they become failed and must be dropped.
    pub fn expired(&mut self, now: Instant) -> Vec<PeerId> {
        let late: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, s)| matches!(s, PeerState::Pending { deadline, .. } if now >= *deadline))
            .map(|(p, _)| *p)
            .collect();
        for p in &late {
            self.peers.insert(*p, PeerState::Failed { reason: "no attestation before the deadline".into() });
        }
        late
    }

    pub fn attested(&self, peer: &PeerId) -> Option<&AttestedHost> {
        match self.peers.get(peer) {
            Some(PeerState::Attested(h)) => Some(h),
            _ => None,
        }
    }

    /// Whether gossip forwarded by `via`, created by `origin`, may reach the application.
    /// The origin need not be attested here (it may be a peer we have no connection to); the
    /// application checks the message's own signature against the origin's certificate.
    pub fn gossip_verdict(&self, via: &PeerId, origin: Option<&PeerId>) -> Result<(), GossipDrop> {
        if self.attested(via).is_none() {
            return Err(GossipDrop::Unattested);
        }
        let origin = origin.ok_or(GossipDrop::NoOrigin)?;
        if matches!(self.peers.get(origin), Some(PeerState::Failed { .. })) {
            return Err(GossipDrop::FailedOrigin);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519().public().to_peer_id()
    }

    #[test]
    fn challenge_attest_and_gossip_verdicts() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let mut m = Membership::default();
        let (a, b) = (peer(), peer());
        assert!(m.connected(a, [1; 32], t0, ttl));
        assert!(!m.connected(a, [2; 32], t0, ttl), "pending: not challenged twice");
        assert_eq!(m.gossip_verdict(&a, Some(&a)), Err(GossipDrop::Unattested));
        // A stale answer (another nonce) changes nothing.
        assert!(m.verified(&a, &[9; 32], Ok(host(a, "a"))).is_none());
        let s = m.verified(&a, &[1; 32], Ok(host(a, "a"))).cloned();
        assert_eq!(s, Some(PeerState::Attested(host(a, "a"))));
        assert_eq!(m.gossip_verdict(&a, Some(&a)), Ok(()));
        assert_eq!(m.gossip_verdict(&a, Some(&b)), Ok(()), "origin not connected: the app decides");
        assert_eq!(m.gossip_verdict(&a, None), Err(GossipDrop::NoOrigin));
        assert!(m.connected(b, [3; 32], t0, ttl));
        m.verified(&b, &[3; 32], Err("unknown issuer".into()));
        assert_eq!(m.gossip_verdict(&b, Some(&b)), Err(GossipDrop::Unattested));
        assert_eq!(m.gossip_verdict(&a, Some(&b)), Err(GossipDrop::FailedOrigin));
        assert!(m.attested(&a).is_some() && m.attested(&b).is_none());
    }

    #[test]
    fn an_attestation_for_another_peer_fails() {
        let mut m = Membership::default();
        let (a, b) = (peer(), peer());
        m.connected(a, [1; 32], Instant::now(), Duration::from_secs(1));
        let s = m.verified(&a, &[1; 32], Ok(host(b, "b"))).cloned();
        assert!(matches!(s, Some(PeerState::Failed { .. })), "{s:?}");
        assert!(m.attested(&a).is_none());
    }

    #[test]
    fn silent_peers_expire_at_the_deadline() {
        let t0 = Instant::now();
        let mut m = Membership::default();
        let (a, b) = (peer(), peer());
        m.connected(a, [1; 32], t0, Duration::from_secs(10));
        m.connected(b, [2; 32], t0, Duration::from_secs(10));
        m.verified(&b, &[2; 32], Ok(host(b, "b")));
        assert!(m.expired(t0 + Duration::from_secs(9)).is_empty());
        assert_eq!(m.expired(t0 + Duration::from_secs(10)), vec![a]);
        assert!(m.expired(t0 + Duration::from_secs(20)).is_empty(), "once");
        assert!(m.attested(&b).is_some(), "attested peers never expire");
        assert!(matches!(m.disconnected(&a), Some(PeerState::Failed { .. })));
        // A failed peer that reconnects is challenged again.
        assert!(m.connected(a, [4; 32], t0, Duration::from_secs(10)));
    }

    fn host(peer: PeerId, name: &str) -> AttestedHost {
        AttestedHost { node_name: name.into(), peer }
    }
}
