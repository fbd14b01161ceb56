//! Host revocations: what `ca revoke-host` signs (with the root's key or an issuer's), how
//! any host verifies one, and the [`RevocationSet`] a [`super::HostTrust`] consults. Pure.
//!
//! A revocation names the trust domain, the node, optionally the PeerId of the revoked
//! certificate's key and its serial, and the time it was made. It revokes every host
//! certificate for that node whose notBefore is not after that time (so a host issued
//! again later, with a new certificate, is a member again), and every certificate for that
//! key or serial, whatever its node name.
//!
//! On disk and on the wire it is PEM text: a `BEEMESH REVOCATION` block (the JSON payload,
//! signed as is), a `BEEMESH SIGNATURE` block, then the signer's certificate (the root, or
//! an issuer, which must chain to a root).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::SigningKey;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use super::TrustError;
use crate::identity::svid::role::{self, Role};
use crate::identity::svid::{self, Authority, CLOCK_SKEW};

/// Revocation files larger than this are refused unread.
pub const MAX_REVOCATION: usize = 64 * 1024;

const CONTEXT: &[u8] = b"beemesh revocation v1\0";
const PAYLOAD_LABEL: &str = "BEEMESH REVOCATION";
const SIGNATURE_LABEL: &str = "BEEMESH SIGNATURE";

/// What a revocation says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Revocation {
    /// The trust domain it applies to.
    pub trust_domain: String,
    /// The node revoked.
    pub node: String,
    /// The PeerId of the revoked certificate's key, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The revoked certificate's serial (hex, as x509-parser prints it), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// When it was made, seconds since the epoch.
    pub revoked_at: u64,
}

impl Revocation {
    /// Whether it revokes the host certificate for `node`, key `peer`, `serial`, valid from
    /// `not_before`.
    pub fn revokes(&self, node: &str, peer: &str, serial: &str, not_before: SystemTime) -> bool {
        let issued_before = not_before <= UNIX_EPOCH + Duration::from_secs(self.revoked_at);
        (self.node == node && issued_before)
            || self.peer.as_deref() == Some(peer)
            || self.serial.as_deref() == Some(serial)
    }
}

/// A revocation with its signature and the signer's certificate.
#[derive(Clone, Debug)]
pub struct SignedRevocation {
    /// The payload, JSON, exactly as signed.
    pub payload: Vec<u8>,
    /// The signer's signature over the context and the payload.
    pub signature: Vec<u8>,
    /// The signer's certificate (a root, or an issuer).
    pub signer: CertificateDer<'static>,
}

impl SignedRevocation {
    /// Signs `revocation` with `ca` (a root or an issuer of its trust domain).
    pub fn sign(revocation: &Revocation, ca: &Authority) -> Result<Self, TrustError> {
        if revocation.trust_domain != ca.trust_domain() {
            return Err(TrustError::BadRevocation(format!(
                "for trust domain {}, the signer is of {}",
                revocation.trust_domain,
                ca.trust_domain()
            )));
        }
        if !matches!(super::issue::ca_kind(ca)?, super::issue::CaKind::Root | super::issue::CaKind::Issuer(_))
        {
            return Err(TrustError::CannotIssue("revocations are signed by a root or an issuer"));
        }
        let payload = serde_json::to_vec(revocation).map_err(|e| TrustError::BadRevocation(e.to_string()))?;
        let signature = ca.issuer().key().sign(&signed_bytes(&payload))?;
        Ok(Self { payload, signature, signer: ca.cert_der() })
    }

    /// The PEM text (what is written to disk and gossiped).
    pub fn to_pem(&self) -> String {
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        let blocks = [
            pem::Pem::new(PAYLOAD_LABEL, self.payload.clone()),
            pem::Pem::new(SIGNATURE_LABEL, self.signature.clone()),
            pem::Pem::new("CERTIFICATE", self.signer.to_vec()),
        ];
        pem::encode_many_config(&blocks, config)
    }

    /// Parses the PEM text (nothing verified yet).
    pub fn from_pem(text: &[u8]) -> Result<Self, TrustError> {
        let bad = |s: String| TrustError::BadRevocation(s);
        if text.len() > MAX_REVOCATION {
            return Err(bad(format!("{} bytes, at most {MAX_REVOCATION}", text.len())));
        }
        let blocks = pem::parse_many(text).map_err(|e| bad(e.to_string().to_lowercase()))?;
        let labels: Vec<&str> = blocks.iter().map(pem::Pem::tag).collect();
        if labels != [PAYLOAD_LABEL, SIGNATURE_LABEL, "CERTIFICATE"] {
            return Err(bad(format!(
                "expected PEM blocks {PAYLOAD_LABEL}, {SIGNATURE_LABEL}, CERTIFICATE; found {labels:?}"
            )));
        }
        let mut it = blocks.into_iter().map(pem::Pem::into_contents);
        let mut next = || it.next().unwrap_or_default();
        Ok(Self { payload: next(), signature: next(), signer: CertificateDer::from(next()) })
    }
}

fn signed_bytes(payload: &[u8]) -> Vec<u8> {
    [CONTEXT, payload].concat()
}

/// Verifies a revocation's PEM text against the trust domain's `roots` at `now`: the
/// signature is the signer's; the signer is one of `roots`, or an issuer of `trust_domain`
/// signed by one of them and valid when the revocation was made; the revocation is for
/// `trust_domain`, names a valid node, and was not made in the future.
pub fn verify(
    text: &[u8],
    roots: &[CertificateDer<'_>],
    trust_domain: &str,
    now: SystemTime,
) -> Result<Revocation, TrustError> {
    let bad = |s: String| TrustError::BadRevocation(s);
    let signed = SignedRevocation::from_pem(text)?;
    let revocation: Revocation =
        serde_json::from_slice(&signed.payload).map_err(|e| bad(format!("payload: {e}")))?;
    if revocation.trust_domain != trust_domain {
        return Err(bad(format!("for trust domain {}, expected {trust_domain}", revocation.trust_domain)));
    }
    if !role::is_node_name(&revocation.node) {
        return Err(TrustError::BadName(revocation.node));
    }
    let made = UNIX_EPOCH + Duration::from_secs(revocation.revoked_at);
    if made > now + CLOCK_SKEW {
        return Err(bad(format!("made in the future ({})", svid::display_time(made))));
    }

    let signer = svid::parse_cert(&signed.signer)?;
    if !roots.iter().any(|r| r.as_ref() == signed.signer.as_ref()) {
        // Not a root: an issuer of this trust domain, directly under a root.
        let uri = svid::spiffe_uri_of(&signed.signer)?;
        let (td, path) = svid::split_spiffe_id(&uri)?;
        if td != trust_domain || !matches!(role::role_of(path), Some(Role::Issuer(_))) || !signer.is_ca() {
            return Err(bad(format!("signed by {uri}, neither a root nor an issuer of {trust_domain}")));
        }
        let (not_before, not_after) = svid::validity(&signer);
        if made < not_before || made > not_after {
            return Err(bad(format!("made outside its issuer's validity ({uri})")));
        }
        let mut chained = false;
        for root in roots {
            let root = svid::parse_cert(root)?;
            if signer.verify_signature(Some(root.public_key())).is_ok() {
                chained = true;
                break;
            }
        }
        if !chained {
            return Err(bad(format!("its issuer {uri} is not signed by the trust domain's root")));
        }
    }
    let ee = webpki::EndEntityCert::try_from(&signed.signer).map_err(|e| bad(format!("signer: {e}")))?;
    let message = signed_bytes(&signed.payload);
    let ok =
        svid::SIGNATURE_ALGS.iter().any(|alg| ee.verify_signature(*alg, &message, &signed.signature).is_ok());
    if !ok {
        return Err(TrustError::BadSignature("the revocation's signature is not its signer's"));
    }
    Ok(revocation)
}

/// The revocations a host knows of, by node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationSet {
    by_node: BTreeMap<String, Vec<Revocation>>,
}

impl RevocationSet {
    /// Adds a (verified) revocation; false when it was already known.
    pub fn insert(&mut self, revocation: Revocation) -> bool {
        let list = self.by_node.entry(revocation.node.clone()).or_default();
        if list.contains(&revocation) {
            return false;
        }
        list.push(revocation);
        true
    }

    /// The revocation that revokes the host certificate for `node`, key `peer`, `serial`,
    /// valid from `not_before`, if any.
    pub fn revoking(
        &self,
        node: &str,
        peer: &libp2p_identity::PeerId,
        serial: &str,
        not_before: SystemTime,
    ) -> Option<&Revocation> {
        let peer = peer.to_string();
        self.iter().find(|r| r.revokes(node, &peer, serial, not_before))
    }

    /// Every revocation, by node.
    pub fn iter(&self) -> impl Iterator<Item = &Revocation> {
        self.by_node.values().flatten()
    }

    /// How many revocations.
    pub fn len(&self) -> usize {
        self.by_node.values().map(Vec::len).sum()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}
