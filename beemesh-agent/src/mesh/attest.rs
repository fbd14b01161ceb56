//! How the swarm asks a peer for an attestation and checks one, without knowing certificates:
//! the trust module implements [`Attest`]; the swarm only calls it.

/// How the swarm asks for and checks attestations, without knowing certificates.
pub trait Attest: Send + Sync + 'static {
    /// Our attestation for a challenge `nonce` from peer `verifier` (opaque bytes on the wire).
    fn attest(&self, nonce: &[u8; 32], verifier: &libp2p_identity::PeerId) -> Vec<u8>;
    /// Checks `peer`'s attestation for the `nonce` we sent it; on success the peer's node
    /// name (from its certificate, never from what it claims elsewhere).
    fn verify(
        &self,
        attestation: &[u8],
        nonce: &[u8; 32],
        peer: &libp2p_identity::PeerId,
        now: std::time::SystemTime,
    ) -> Result<AttestedHost, String>;
}

/// A peer whose attestation passed: its PeerId and the node name its certificate carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestedHost {
    pub node_name: String,
    pub peer: libp2p_identity::PeerId,
}
