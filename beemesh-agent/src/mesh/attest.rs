//! How the swarm asks for and checks attestations, without knowing certificates: the swarm
//! holds an `Arc<dyn Attest>`, `mesh::trust` implements it.

/// Attestation of peers: our proof of membership for a peer's challenge, and the check of a
/// peer's proof.
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

/// A peer whose attestation checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestedHost {
    /// The node name its host certificate names.
    pub node_name: String,
    /// The peer, whose key the certificate was issued for.
    pub peer: libp2p_identity::PeerId,
}
