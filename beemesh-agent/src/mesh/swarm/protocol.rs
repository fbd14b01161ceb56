//! What travels on the mesh besides gossip: the request-response messages (CBOR on
//! `/beemesh/req/1.0.0`) and the one `NetworkBehaviour` that combines every protocol.

use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{gossipsub, identify, kad, mdns, request_response};
use serde::{Deserialize, Serialize};

/// Protocol of the request-response exchange.
pub const REQUEST_PROTOCOL: &str = "/beemesh/req/1.0.0";
/// Kademlia's protocol: beemesh meshes form their own DHT, apart from IPFS's.
pub const KAD_PROTOCOL: &str = "/beemesh/kad/1.0.0";
/// Identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/beemesh/id/1.0.0";

/// A request to a peer. New variants are added at the end; a peer that does not know one
/// fails to decode it and the sender gets an error for that request only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshRequest {
    /// Prove membership: answer with an attestation over this nonce.
    Attest { nonce: [u8; 32] },
    /// An application request (`kind` says which), answered by whoever handles `kind`.
    App { kind: String, body: Vec<u8> },
}

/// The answer to a [`MeshRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshResponse {
    /// The opaque attestation for an [`MeshRequest::Attest`] nonce.
    Attestation(Vec<u8>),
    /// The answer to an [`MeshRequest::App`].
    App(Vec<u8>),
    /// Not answered, and why (e.g. the requester is not attested).
    Refused(String),
}

/// Every protocol of the agent's swarm.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub identify: identify::Behaviour,
    pub rr: request_response::cbor::Behaviour<MeshRequest, MeshResponse>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
}
