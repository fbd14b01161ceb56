//! What travels on the mesh besides gossip: the request-response messages (CBOR on
//! `/beemesh/req/1.0.0`) and the one `NetworkBehaviour` that combines every protocol.

use std::time::Duration;

use libp2p::gossipsub::{self, MessageAuthenticity, ValidationMode};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{identify, identity::Keypair, kad, mdns, StreamProtocol, Swarm};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::envelope::ENVELOPE_OVERHEAD;
use super::guarded_kad::GuardedKad;
use super::{MeshConfig, SwarmError};

/// Protocol of the request-response exchange.
pub const REQUEST_PROTOCOL: &str = "/beemesh/req/1.0.0";
/// Kademlia's protocol: beemesh meshes form their own DHT, apart from IPFS's.
pub const KAD_PROTOCOL: &str = "/beemesh/kad/1.0.0";
/// Identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/beemesh/id/1.0.0";

/// Room for gossipsub's framing around the payload.
const GOSSIP_FRAMING: usize = 4096;

/// A request to a peer. New variants are added at the end; a peer that does not know one
/// fails to decode it and the sender gets an error for that request only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshRequest {
    /// Prove membership: answer with an attestation over this nonce.
    Attest { nonce: [u8; 32] },
    /// An application request (`kind` says which), answered by whoever handles `kind`.
    App {
        kind: String,
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
    /// A join request (`mesh::trust::join`): the one request a peer that has not attested
    /// may send; at most [`MAX_JOIN_BYTES`], rate limited, answered with an `App` body or
    /// `Refused`.
    Join {
        #[serde(with = "serde_bytes")]
        body: Vec<u8>,
    },
}

/// Largest join request body a member looks at.
pub const MAX_JOIN_BYTES: usize = 64 * 1024;

/// The answer to a [`MeshRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshResponse {
    /// The opaque attestation for an [`MeshRequest::Attest`] nonce.
    Attestation(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The answer to an [`MeshRequest::App`].
    App(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Not answered, and why (e.g. the requester is not attested).
    Refused(String),
}

/// Every protocol of the agent's swarm.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub kad: GuardedKad,
    pub gossipsub: gossipsub::Behaviour,
    pub identify: identify::Behaviour,
    pub rr: request_response::cbor::Behaviour<MeshRequest, MeshResponse>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}

/// The request-response behaviour on [`REQUEST_PROTOCOL`] (also the joiner's only one).
pub(super) fn request_response() -> request_response::cbor::Behaviour<MeshRequest, MeshResponse> {
    let codec = request_response::cbor::codec::Codec::default()
        .set_request_size_maximum(4 * 1024 * 1024)
        .set_response_size_maximum(8 * 1024 * 1024);
    request_response::Behaviour::with_codec(
        codec,
        [(StreamProtocol::new(REQUEST_PROTOCOL), ProtocolSupport::Full)],
        request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
    )
}

/// The swarm with every protocol configured: QUIC only, on tokio.
pub(super) fn build_swarm(config: &MeshConfig, keypair: Keypair) -> Result<Swarm<Behaviour>, SwarmError> {
    let max_gossip = config.max_gossip_bytes;
    let replay = config.replay_window;
    let mdns_on = config.mdns;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic_config(|mut c| {
            c.handshake_timeout = config.handshake_timeout;
            c
        })
        .with_behaviour(|key| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
            let local = key.public().to_peer_id();
            let gossip_config = gossipsub::ConfigBuilder::default()
                .validation_mode(ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(max_gossip + ENVELOPE_OVERHEAD + GOSSIP_FRAMING)
                // A replay inside the window is a duplicate; outside it, the envelope is stale.
                .duplicate_cache_time(replay.duplicate_cache_time())
                // Stable across builds and hosts (std's hasher is neither): a replay of the
                // same payload on the same topic has the same id and is dropped as a duplicate.
                .message_id_fn(|m: &gossipsub::Message| {
                    let mut h = Sha256::new();
                    h.update(m.topic.as_str().as_bytes());
                    h.update([0u8]);
                    h.update(&m.data);
                    gossipsub::MessageId::from(h.finalize().to_vec())
                })
                .build()?;
            let gossipsub =
                gossipsub::Behaviour::new(MessageAuthenticity::Signed(key.clone()), gossip_config)?;
            let mut kad_config = kad::Config::new(StreamProtocol::new(KAD_PROTOCOL));
            // Only attested peers enter the routing table (we add them), so the DHT never
            // hands out addresses of peers that failed attestation here.
            kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
            // beemesh keeps no records in the DHT: none written by a peer is stored.
            kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
            let mut kad = kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), kad_config);
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(format!("beemesh-agent/{}", env!("CARGO_PKG_VERSION"))),
            );
            let rr = request_response();
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(mdns::Config::default(), local)?)
            } else {
                None
            };
            // Kademlia answers attested peers only (the member list is not for strangers).
            let kad = GuardedKad::new(kad);
            Ok(Behaviour { kad, gossipsub, identify, rr, mdns: Toggle::from(mdns) })
        })
        .map_err(|e| SwarmError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    Ok(swarm)
}
