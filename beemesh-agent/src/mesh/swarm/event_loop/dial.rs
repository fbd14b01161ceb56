//! The event loop's timers: attestation deadlines, bootstrap addresses redialed with back-off
//! until joined, remembered peers when alone, Kademlia lookups for the rest of the mesh.

use std::time::Instant;

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::Multiaddr;

use super::{EventLoop, DIAL_ATTEMPT_TIMEOUT};
use crate::mesh::swarm::{MeshEvent, SwarmError};

impl EventLoop {
    /// Kademlia bootstrap (a lookup of our own id) when due; needs a member in the table.
    pub(super) fn discover(&mut self, now: Instant) {
        if self.discovery.ready(now) && self.swarm.behaviour_mut().kad.bootstrap().is_ok() {
            self.discovery.failed(now);
        }
    }

    pub(super) async fn on_tick(&mut self) -> bool {
        let now = Instant::now();
        self.discover(now);
        for peer in self.membership.expired(now) {
            self.stats.attestations_failed += 1;
            let _ = self.swarm.disconnect_peer_id(peer);
            let reason = "no attestation before the deadline".to_string();
            tracing::warn!(%peer, %reason, "disconnecting mesh peer");
            if !self.emit(MeshEvent::AttestationFailed { peer, reason }).await {
                return false;
            }
        }
        for i in 0..self.boot.len() {
            let t = &mut self.boot[i];
            let joined = t.peer.is_some_and(|p| self.swarm.is_connected(&p));
            if joined || t.in_flight || !t.backoff.ready(now) {
                continue;
            }
            t.in_flight = true;
            t.backoff.started(now, DIAL_ATTEMPT_TIMEOUT);
            let addr = t.addr.clone();
            let tx = self.resolved_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send((i, addr.resolve().await)).await;
            });
        }
        if self.swarm.connected_peers().next().is_none() && self.remembered_backoff.ready(now) {
            let remembered = self.known.dialable();
            if !remembered.is_empty() {
                tracing::debug!(peers = remembered.len(), "dialing remembered mesh peers");
                for (peer, addrs) in remembered {
                    let opts = DialOpts::peer_id(peer)
                        .addresses(addrs)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build();
                    let _ = self.swarm.dial(opts);
                }
            }
            // Reset when a member held for long goes; until then, wait longer each time.
            self.remembered_backoff.failed(now);
        }
        true
    }

    pub(super) async fn on_resolved(&mut self, i: usize, result: Result<Vec<Multiaddr>, SwarmError>) -> bool {
        let addrs = match result {
            Ok(a) if a.is_empty() => return self.boot_failed(i, "resolves to no address".into()).await,
            Ok(a) => a,
            Err(e) => return self.boot_failed(i, e.to_string()).await,
        };
        let mut last_error = None;
        for addr in addrs {
            let opts = DialOpts::unknown_peer_id().address(addr).build();
            let id = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    self.boot_dials.insert(id, i);
                    self.boot[i].outstanding += 1;
                }
                Err(e) => last_error = Some(e.to_string()),
            }
        }
        if self.boot[i].outstanding == 0 {
            return self.boot_failed(i, last_error.unwrap_or_else(|| "no dial started".into())).await;
        }
        true
    }

    pub(super) async fn boot_failed(&mut self, i: usize, error: String) -> bool {
        let t = &mut self.boot[i];
        t.in_flight = false;
        let retry_in = t.backoff.failed(Instant::now());
        let addr = t.addr.to_string();
        tracing::info!(bootstrap = %addr, %error, ?retry_in, "bootstrap peer not reached; retrying");
        self.emit(MeshEvent::BootstrapFailed { addr, error, retry_in }).await
    }
}
