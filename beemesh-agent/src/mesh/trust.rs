//! Membership of a trust domain: a host's credentials ([`HostIdentity`]: its libp2p ed25519
//! key and the host certificate issued for that very key), the trust store that checks
//! other hosts ([`HostTrust`]: roots, trust domain, revocations) and peer attestation over
//! the swarm ([`Attestor`], the [`Attest`] implementation). Sans-IO except [`files`], which
//! reads and writes the CA and host directories (`ca ...` commands, agent start).
//!
//! An attestation is the attester's host certificate chain and an ed25519 signature, by the
//! key the certificate names (the libp2p key, so the PeerId *is* the certificate's key), over
//! a domain-separated message holding the verifier's nonce, the verifier's PeerId and the
//! attester's PeerId: it answers one challenge of one verifier and proves nothing elsewhere.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use libp2p_identity::{Keypair, PeerId, PublicKey};
use rustls_pki_types::CertificateDer;

use crate::identity::svid::role::{self, Role};
use crate::identity::svid::{self, Authority, Expect, PeerRole, SvidError};

pub use super::attest::{Attest, AttestedHost};

pub mod files;
pub mod issue;
pub mod join;
pub mod revoke;
mod wire;

pub use revoke::{Revocation, RevocationSet, SignedRevocation};
pub use wire::MAX_ATTESTATION;

/// Errors of host credentials, attestation and revocation.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// A certificate or chain problem (see [`SvidError`]).
    #[error(transparent)]
    Svid(#[from] SvidError),
    /// rcgen failed to build or sign.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// A node or issuer name that is no host name.
    #[error("invalid name {0:?}: expected [a-z0-9] with inner . or -, at most 63 characters")]
    BadName(String),
    /// An authority asked to issue what its role does not allow.
    #[error("cannot issue: {0}")]
    CannotIssue(&'static str),
    /// A key that is not ed25519 where the mesh needs one (host keys are).
    #[error("the host key is not ed25519")]
    NotEd25519,
    /// A host certificate whose key is not the libp2p key it is presented with.
    #[error("the host certificate is for peer {cert}, not {expected}")]
    PeerMismatch {
        /// The PeerId of the certificate's key.
        cert: String,
        /// The PeerId expected (the connection's, or our own key's).
        expected: String,
    },
    /// Attestation bytes that do not decode, or are too large.
    #[error("malformed attestation: {0}")]
    MalformedAttestation(String),
    /// A signature that does not check out (attestation or revocation).
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    /// The host's certificate is revoked.
    #[error("host {node} is revoked (since {at})")]
    Revoked {
        /// The node name revoked.
        node: String,
        /// When, as seconds since the epoch.
        at: u64,
    },
    /// A revocation that does not decode or does not verify.
    #[error("invalid revocation: {0}")]
    BadRevocation(String),
    /// A join request or answer that does not check out.
    #[error("join: {0}")]
    Join(String),
    /// A file of a CA or host directory: names it.
    #[error("{path}: {reason}")]
    File {
        /// The file or directory.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The host's mesh identity: its libp2p keypair (ed25519; the same key the host certificate
/// is issued for, so a PeerId *is* a certificate's public key) and its certificate chain
/// (host certificate first, then any issuer; never the root).
pub struct HostIdentity {
    keypair: Keypair,
    chain: Vec<CertificateDer<'static>>,
    node_name: String,
    trust_domain: String,
    not_after: SystemTime,
}

impl std::fmt::Debug for HostIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostIdentity")
            .field("peer", &self.peer_id())
            .field("node_name", &self.node_name)
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl HostIdentity {
    /// Checks that `chain` is a host certificate chain of `trust_domain` valid at `now`
    /// under `roots`, issued for `keypair`'s key.
    pub fn new(
        keypair: Keypair,
        chain: Vec<CertificateDer<'static>>,
        roots: &[CertificateDer<'_>],
        trust_domain: &str,
        now: SystemTime,
    ) -> Result<Self, TrustError> {
        let node_name = verify_host(&chain, roots, trust_domain, now)?;
        let (peer, not_after) = leaf_peer(&chain[0])?;
        let ours = keypair.public().to_peer_id();
        if peer != ours {
            return Err(TrustError::PeerMismatch { cert: peer.to_string(), expected: ours.to_string() });
        }
        Ok(Self { keypair, chain, node_name, trust_domain: trust_domain.to_owned(), not_after })
    }

    /// A mesh of one: a host certificate for `keypair` and `node_name` issued by the agent's
    /// own self-made root (`authority`), valid for `ttl` from `now` (clipped to the root).
    pub fn self_made(
        authority: &Authority,
        keypair: Keypair,
        node_name: &str,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<Self, TrustError> {
        let cert = issue::host_cert(authority, node_name, &keypair.public(), now, ttl)?;
        Self::new(keypair, vec![cert], &[authority.cert_der()], authority.trust_domain(), now)
    }

    /// The libp2p keypair (the swarm's identity).
    pub fn keypair(&self) -> &Keypair {
        &self.keypair
    }

    /// Our PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.keypair.public().to_peer_id()
    }

    /// The node name our certificate names.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Our trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Host certificate first, then any issuer, DER.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// When the host certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Our attestation for `nonce`, asked for by `verifier`.
    pub fn attest(&self, nonce: &[u8; 32], verifier: &PeerId) -> Vec<u8> {
        let message = wire::message(nonce, verifier, &self.peer_id());
        let signature = self.keypair.sign(&message).expect("ed25519 signing cannot fail");
        wire::encode(&self.chain, &signature)
    }
}

/// Verifies a host certificate chain (host certificate first, then any issuers) against
/// `roots` at `now` and returns the node name: the leaf must be a host certificate of
/// `trust_domain` (`spiffe://<td>/beemesh/node/<name>`, never a workload SVID), issued by a
/// root or by an issuer (never by a host's workload issuer). Revocation is [`HostTrust`]'s.
pub fn verify_host(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    trust_domain: &str,
    now: SystemTime,
) -> Result<String, TrustError> {
    let (uri, _) = svid::verify_for_role(chain, roots, trust_domain, PeerRole::Client, now, Expect::Host)?;
    let (_, path) = svid::split_spiffe_id(&uri)?;
    match role::role_of(path) {
        Some(Role::Host(name)) => Ok(name.to_owned()),
        _ => Err(SvidError::NoSpiffeUri.into()),
    }
}

/// The PeerId of a host certificate's key (which must be ed25519) and its notAfter.
fn leaf_peer(leaf: &CertificateDer<'_>) -> Result<(PeerId, SystemTime), TrustError> {
    let (key, not_after) = leaf_key(leaf)?;
    Ok((key.to_peer_id(), not_after))
}

/// The host certificate's notBefore and serial, for revocation checks.
fn leaf_issue(leaf: &CertificateDer<'_>) -> Result<(SystemTime, String), TrustError> {
    let cert = svid::parse_cert(leaf)?;
    Ok((svid::validity(&cert).0, cert.raw_serial_as_string()))
}

/// The trust store that checks other hosts: the trust domain's roots, its name, and the
/// revocations heard of (added while the swarm runs, hence behind a lock).
#[derive(Debug)]
pub struct HostTrust {
    trust_domain: String,
    roots: Vec<CertificateDer<'static>>,
    revocations: RwLock<RevocationSet>,
}

impl HostTrust {
    /// A trust store for `trust_domain` with its root certificates (a rotation may overlap two).
    pub fn new(trust_domain: &str, roots: Vec<CertificateDer<'static>>) -> Self {
        Self {
            trust_domain: trust_domain.to_owned(),
            roots,
            revocations: RwLock::new(RevocationSet::default()),
        }
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The root certificates.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Verifies a signed revocation (its PEM text, as `ca revoke-host` writes it and the
    /// mesh gossips it) and adds it; `Ok(Some(_))` when it is new, `Ok(None)` when already known.
    pub fn add_revocation(&self, signed: &[u8], now: SystemTime) -> Result<Option<Revocation>, TrustError> {
        let revocation = revoke::verify(signed, &self.roots, &self.trust_domain, now)?;
        let mut set = self.revocations.write().unwrap_or_else(|e| e.into_inner());
        Ok(set.insert(revocation.clone()).then_some(revocation))
    }

    /// A copy of the revocations known.
    pub fn revocations(&self) -> RevocationSet {
        self.revocations.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Verifies a host chain ([`verify_host`]) and that the host is not revoked; returns the
    /// node name and the PeerId of the certificate's key.
    pub fn verify_host(
        &self,
        chain: &[CertificateDer<'_>],
        now: SystemTime,
    ) -> Result<AttestedHost, TrustError> {
        let node_name = verify_host(chain, &self.roots, &self.trust_domain, now)?;
        let (peer, _) = leaf_peer(&chain[0])?;
        let (not_before, serial) = leaf_issue(&chain[0])?;
        let set = self.revocations.read().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = set.revoking(&node_name, &peer, &serial, not_before) {
            return Err(TrustError::Revoked { node: r.node.clone(), at: r.revoked_at });
        }
        Ok(AttestedHost { node_name, peer })
    }

    /// Checks `peer`'s attestation for the `nonce` that `verifier` (we) sent it at `now`:
    /// at most [`MAX_ATTESTATION`] bytes; a host chain of our trust domain valid at `now`, not
    /// revoked; the certificate's key is `peer`'s; the signature covers this nonce, this
    /// verifier and this peer.
    pub fn verify_attestation(
        &self,
        attestation: &[u8],
        nonce: &[u8; 32],
        verifier: &PeerId,
        peer: &PeerId,
        now: SystemTime,
    ) -> Result<AttestedHost, TrustError> {
        let (chain, signature) = wire::decode(attestation)?;
        let host = self.verify_host(&chain, now)?;
        if host.peer != *peer {
            return Err(TrustError::PeerMismatch { cert: host.peer.to_string(), expected: peer.to_string() });
        }
        let (key, _) = leaf_key(&chain[0])?;
        if !key.verify(&wire::message(nonce, verifier, peer), signature) {
            return Err(TrustError::BadSignature("the attestation is not signed for this challenge"));
        }
        Ok(host)
    }
}

/// A host certificate's key as a libp2p key (it must be ed25519) and its notAfter.
fn leaf_key(leaf: &CertificateDer<'_>) -> Result<(PublicKey, SystemTime), TrustError> {
    let cert = svid::parse_cert(leaf)?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(TrustError::NotEd25519);
    }
    let key = libp2p_identity::ed25519::PublicKey::try_from_bytes(&spki.subject_public_key.data)
        .map_err(|_| TrustError::NotEd25519)?;
    Ok((PublicKey::from(key), svid::validity(&cert).1))
}

/// What the swarm holds (as `Arc<dyn Attest>`): our identity to answer challenges, the trust
/// store to check answers.
#[derive(Debug, Clone)]
pub struct Attestor {
    /// Our credentials.
    pub identity: Arc<HostIdentity>,
    /// Roots and revocations.
    pub trust: Arc<HostTrust>,
}

impl Attest for Attestor {
    fn attest(&self, nonce: &[u8; 32], verifier: &PeerId) -> Vec<u8> {
        self.identity.attest(nonce, verifier)
    }

    fn verify(
        &self,
        attestation: &[u8],
        nonce: &[u8; 32],
        peer: &PeerId,
        now: SystemTime,
    ) -> Result<AttestedHost, String> {
        self.trust
            .verify_attestation(attestation, nonce, &self.identity.peer_id(), peer, now)
            .map_err(|e| e.to_string())
    }
}

/// A fresh ed25519 libp2p keypair from the system's random source.
pub fn generate_keypair() -> Result<Keypair, TrustError> {
    let mut seed = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
        .map_err(|_| TrustError::CannotIssue("the system random source failed"))?;
    Keypair::ed25519_from_bytes(seed).map_err(|_| TrustError::NotEd25519)
}

#[cfg(test)]
mod tests;
