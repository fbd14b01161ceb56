//! The attestation's bytes and the message its signature covers. Pure.
//!
//! Layout: version `1`; the number of certificates (1 to [`MAX_CERTS`]); each certificate
//! as a big-endian u32 length and its DER; the signature as a big-endian u16 length and
//! its bytes. Nothing may follow.

use libp2p_identity::PeerId;
use rustls_pki_types::CertificateDer;

use super::TrustError;

/// Attestations larger than this are refused unread.
pub const MAX_ATTESTATION: usize = 64 * 1024;

/// Host certificate plus issuers: more is no chain of ours.
const MAX_CERTS: usize = 4;

const VERSION: u8 = 1;

/// The domain separator: a signature over this message means nothing in any other protocol.
const CONTEXT: &[u8] = b"beemesh attestation v1\0";

/// What the attester signs: the context, the verifier's nonce, the verifier's and the
/// attester's PeerIds (each length-prefixed).
pub fn message(nonce: &[u8; 32], verifier: &PeerId, attester: &PeerId) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + 32 + 2 * 40);
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(nonce);
    for peer in [verifier, attester] {
        let bytes = peer.to_bytes();
        // PeerIds are multihashes of at most 64 bytes of digest: the length fits a byte.
        m.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
        m.extend_from_slice(&bytes);
    }
    m
}

pub fn encode(chain: &[CertificateDer<'_>], signature: &[u8]) -> Vec<u8> {
    let mut out = vec![VERSION, u8::try_from(chain.len()).unwrap_or(u8::MAX)];
    for cert in chain {
        out.extend_from_slice(&u32::try_from(cert.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(cert);
    }
    out.extend_from_slice(&u16::try_from(signature.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(signature);
    out
}

pub fn decode(bytes: &[u8]) -> Result<(Vec<CertificateDer<'static>>, &[u8]), TrustError> {
    let bad = |s: &str| TrustError::MalformedAttestation(s.to_owned());
    if bytes.len() > MAX_ATTESTATION {
        return Err(TrustError::MalformedAttestation(format!(
            "{} bytes, at most {MAX_ATTESTATION}",
            bytes.len()
        )));
    }
    let mut r = Reader(bytes);
    if r.take(1)?[0] != VERSION {
        return Err(bad("unknown version"));
    }
    let count = usize::from(r.take(1)?[0]);
    if count == 0 || count > MAX_CERTS {
        return Err(TrustError::MalformedAttestation(format!(
            "{count} certificates, expected 1 to {MAX_CERTS}"
        )));
    }
    let mut chain = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::try_from(r.u32()?).map_err(|_| bad("certificate length"))?;
        chain.push(CertificateDer::from(r.take(len)?.to_vec()));
    }
    let len = usize::from(r.u16()?);
    let signature = r.take(len)?;
    if !r.0.is_empty() {
        return Err(TrustError::MalformedAttestation(format!("{} bytes after the signature", r.0.len())));
    }
    Ok((chain, signature))
}

/// What is left to read.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], TrustError> {
        if self.0.len() < n {
            return Err(TrustError::MalformedAttestation("truncated".to_owned()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, TrustError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u16(&mut self) -> Result<u16, TrustError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}
