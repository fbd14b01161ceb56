//! The join-token flow, sans-IO (time passed in; `app::join` drives it over the network):
//! a member holding an issuer (`ca issue-issuer`) creates a token; a new host sends, over
//! the mesh, a request with its libp2p key and a CSR for its workload issuer's key,
//! authenticated with the token's secret; the member checks it and issues the host's
//! certificate and workload issuer; the new host checks the answer against the root hash
//! the token pins (as kubeadm pins the CA hash) before writing its `host/` directory.
//!
//! Token text: `bmjoin1.<id: 8 hex>.<secret: 32 hex>.<sha256 of the root's SubjectPublicKeyInfo: 64 hex>`.
//! The member keeps a [`TokenRecord`] (the secret, expiry, optional node name, used) in a
//! file as private as its issuer's key; the secret never travels: the request and the answer
//! are authenticated with it (HMAC-SHA256), so a host answering in a member's place learns
//! nothing it could use and cannot produce an answer the new host accepts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p_identity::{Keypair, PeerId, PublicKey};
use rcgen::{CertificateParams, CertificateSigningRequestParams, KeyPair};
use ring::hmac;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::files::{CaDir, WorkloadIssuer};
use super::{issue, HostIdentity, TrustError};
use crate::identity::svid::{self, role, Authority, PeerRole};

const PREFIX: &str = "bmjoin1";
const REQUEST_CONTEXT: &[u8] = b"beemesh join request v1\0";
const RESPONSE_CONTEXT: &[u8] = b"beemesh join response v1\0";
/// Requests and responses larger than this are refused.
pub const MAX_JOIN_MESSAGE: usize = 64 * 1024;

fn bad(reason: impl Into<String>) -> TrustError {
    TrustError::Join(reason.into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str, what: &str) -> Result<Vec<u8>, TrustError> {
    if text.len() & 1 != 0 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(format!("{what}: not hex")));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| bad(format!("{what}: not hex"))))
        .collect()
}

fn unhex_array<const N: usize>(text: &str, what: &str) -> Result<[u8; N], TrustError> {
    unhex(text, what)?.try_into().map_err(|_| bad(format!("{what}: expected {N} bytes")))
}

/// sha256 of a certificate's SubjectPublicKeyInfo: what a token pins.
pub fn root_hash(root: &CertificateDer<'_>) -> Result<[u8; 32], TrustError> {
    let cert = svid::parse_cert(root)?;
    Ok(Sha256::digest(cert.public_key().raw).into())
}

/// A join token as the new host holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// Names the token among the member's records.
    pub id: [u8; 4],
    secret: [u8; 16],
    /// sha256 of the root's SubjectPublicKeyInfo.
    pub root_hash: [u8; 32],
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken").field("id", &hex(&self.id)).field("secret", &"[secret]").finish()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}.{}.{}.{}", hex(&self.id), hex(&self.secret), hex(&self.root_hash))
    }
}

impl std::str::FromStr for JoinToken {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, TrustError> {
        let parts: Vec<&str> = s.trim().split('.').collect();
        let [PREFIX, id, secret, hash] = parts.as_slice() else {
            return Err(bad(format!("token: expected {PREFIX}.<id>.<secret>.<root hash>")));
        };
        Ok(Self {
            id: unhex_array(id, "token id")?,
            secret: unhex_array(secret, "token secret")?,
            root_hash: unhex_array(hash, "token root hash")?,
        })
    }
}

impl JoinToken {
    /// A fresh token for the trust domain whose root is `root`.
    pub fn create(root: &CertificateDer<'_>) -> Result<Self, TrustError> {
        let rng = ring::rand::SystemRandom::new();
        let mut id = [0u8; 4];
        let mut secret = [0u8; 16];
        for buf in [&mut id[..], &mut secret[..]] {
            ring::rand::SecureRandom::fill(&rng, buf)
                .map_err(|_| TrustError::CannotIssue("the system random source failed"))?;
        }
        Ok(Self { id, secret, root_hash: root_hash(root)? })
    }

    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.secret)
    }
}

/// What the member keeps of a token it created (never the secret itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRecord {
    /// The token's id, hex.
    pub id: String,
    /// The secret, hex. As secret as the issuer's key.
    pub secret: String,
    /// Seconds since the epoch after which it admits nobody.
    pub expires_at: u64,
    /// The only node name it admits, if pinned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Tokens admit one host.
    #[serde(default)]
    pub used: bool,
}

impl TokenRecord {
    /// The record of `token`, valid for `ttl` from `now`, for `node` only if given.
    pub fn new(token: &JoinToken, now: SystemTime, ttl: Duration, node: Option<&str>) -> Self {
        let expires = now.checked_add(ttl).unwrap_or(now).duration_since(UNIX_EPOCH).map(|d| d.as_secs());
        Self {
            id: hex(&token.id),
            secret: hex(&token.secret),
            expires_at: expires.unwrap_or(0),
            node: node.map(str::to_owned),
            used: false,
        }
    }
}

/// The new host's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    /// The token's id, hex.
    pub token_id: String,
    /// The node name asked for.
    pub node_name: String,
    /// The CSR for the workload issuer's key (DER, hex); its subject is ignored.
    pub workload_csr: String,
    /// HMAC-SHA256 with the secret over the fields and the requester's PeerId, hex.
    pub mac: String,
}

fn request_mac(token: &JoinToken, node_name: &str, csr: &[u8], requester: &PeerId) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(&token.key());
    ctx.update(REQUEST_CONTEXT);
    for field in [&token.id[..], node_name.as_bytes(), csr, &requester.to_bytes()] {
        ctx.update(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(field);
    }
    ctx.sign()
}

/// The new host's side, first step: the request for `node_name`, from the host's libp2p
/// `keypair` (the connection's key) and its workload issuer's key `workload_key`.
pub fn request(
    token: &JoinToken,
    node_name: &str,
    keypair: &Keypair,
    workload_key: &KeyPair,
) -> Result<JoinRequest, TrustError> {
    if !role::is_node_name(node_name) {
        return Err(TrustError::BadName(node_name.to_owned()));
    }
    let csr = CertificateParams::default().serialize_request(workload_key)?;
    let mac = request_mac(token, node_name, csr.der(), &keypair.public().to_peer_id());
    Ok(JoinRequest {
        token_id: hex(&token.id),
        node_name: node_name.to_owned(),
        workload_csr: hex(csr.der()),
        mac: hex(mac.as_ref()),
    })
}

/// The member's answer: certificates, authenticated with the token's secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinResponse {
    /// Host certificate, then issuers (DER, hex).
    pub host_chain: Vec<String>,
    /// Workload issuer certificate, then issuers (DER, hex).
    pub workload_chain: Vec<String>,
    /// The root(s) (DER, hex).
    pub bundle: Vec<String>,
    /// HMAC-SHA256 with the secret over the request's MAC and every certificate, hex.
    pub mac: String,
}

fn response_mac(key: &hmac::Key, request_mac: &[u8], response: &JoinResponse) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(RESPONSE_CONTEXT);
    ctx.update(request_mac);
    for list in [&response.host_chain, &response.workload_chain, &response.bundle] {
        ctx.update(&u32::try_from(list.len()).unwrap_or(u32::MAX).to_be_bytes());
        for cert in list {
            ctx.update(&u32::try_from(cert.len()).unwrap_or(u32::MAX).to_be_bytes());
            ctx.update(cert.as_bytes());
        }
    }
    ctx.sign()
}

/// The member's side: checks `request`, which came over a connection from `requester`,
/// against `record` at `now` (its id, not used, not expired, the pinned node name, the MAC
/// with the token's secret, the CSR's signature), marks the record used, and issues from `ca` (a root or an
/// issuer) a host certificate for the requester's key and a workload issuer for the CSR's key.
pub fn admit(
    request: &JoinRequest,
    requester: &PeerId,
    record: &mut TokenRecord,
    ca: &CaDir,
    now: SystemTime,
    ttl: Duration,
) -> Result<JoinResponse, TrustError> {
    if request.token_id != record.id {
        return Err(bad("unknown token"));
    }
    let secret: [u8; 16] = unhex_array(&record.secret, "token record secret")?;
    if record.used {
        return Err(bad("token already used"));
    }
    if now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(u64::MAX) > record.expires_at {
        return Err(bad("token expired"));
    }
    if record.node.as_deref().is_some_and(|n| n != request.node_name) {
        return Err(bad(format!("token is for node {:?}", record.node.as_deref().unwrap_or_default())));
    }
    let token = JoinToken {
        id: unhex_array(&request.token_id, "token id")?,
        secret,
        root_hash: root_hash(ca.bundle.first().ok_or_else(|| bad("the CA directory has no root"))?)?,
    };
    let csr_der = unhex(&request.workload_csr, "workload csr")?;
    let expected = request_mac(&token, &request.node_name, &csr_der, requester);
    let mac = unhex(&request.mac, "mac")?;
    if !constant_time_eq(expected.as_ref(), &mac) {
        return Err(bad("request not authenticated by the token"));
    }
    let csr = CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
        .map_err(|e| bad(format!("workload csr: {e}")))?;
    let host_key = peer_public_key(requester)?;
    record.used = true;
    let host = issue::host_cert(&ca.authority, &request.node_name, &host_key, now, ttl)?;
    let workloads = issue::workload_ca_cert(&ca.authority, &request.node_name, &csr.public_key, now, ttl)?;
    let encode = |first: CertificateDer<'static>| {
        std::iter::once(first).chain(ca.chain.iter().cloned()).map(|c| hex(&c)).collect::<Vec<_>>()
    };
    let mut response = JoinResponse {
        host_chain: encode(host),
        workload_chain: encode(workloads),
        bundle: ca.bundle.iter().map(|c| hex(c)).collect(),
        mac: String::new(),
    };
    response.mac = hex(response_mac(&token.key(), &mac, &response).as_ref());
    Ok(response)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The ed25519 key a PeerId embeds (libp2p inlines keys of 42 bytes or less in the id).
fn peer_public_key(peer: &PeerId) -> Result<PublicKey, TrustError> {
    let mh = multihash_digest(peer)?;
    PublicKey::try_decode_protobuf(&mh).map_err(|_| bad("the requester's PeerId embeds no ed25519 key"))
}

/// The digest of an identity-multihash PeerId: the protobuf-encoded public key.
fn multihash_digest(peer: &PeerId) -> Result<Vec<u8>, TrustError> {
    let bytes = peer.to_bytes();
    // Identity multihash: code 0x00, a one-byte length (keys of ed25519 are 36 bytes).
    match bytes.as_slice() {
        [0x00, len, rest @ ..] if usize::from(*len) == rest.len() => Ok(rest.to_vec()),
        _ => Err(bad("the requester's PeerId is a hash, not an inlined key")),
    }
}

/// What the new host ends up with: ready for [`super::files::write_host`].
#[derive(Debug)]
pub struct Joined {
    /// Host certificate chain (verified for our key and name).
    pub node_chain: Vec<CertificateDer<'static>>,
    /// Workload issuer chain (verified for our workload key).
    pub workload_chain: Vec<CertificateDer<'static>>,
    /// The pinned root.
    pub bundle: Vec<CertificateDer<'static>>,
}

/// The new host's side, last step: checks the member's `response` to `request` at `now`:
/// authenticated by the token; the bundle's root is the one the token pins (only that one
/// is kept); the host chain names `request.node_name` and our key and verifies under it;
/// the workload issuer is for `workload_key` and its SVIDs verify.
pub fn accept(
    token: &JoinToken,
    request: &JoinRequest,
    response: &JoinResponse,
    keypair: &Keypair,
    workload_key: &KeyPair,
    trust_domain: &str,
    now: SystemTime,
) -> Result<Joined, TrustError> {
    let expected = response_mac(&token.key(), &unhex(&request.mac, "mac")?, response);
    if !constant_time_eq(expected.as_ref(), &unhex(&response.mac, "response mac")?) {
        return Err(bad("response not authenticated by the token"));
    }
    let decode = |list: &[String], what: &str| -> Result<Vec<CertificateDer<'static>>, TrustError> {
        list.iter().map(|c| unhex(c, what).map(CertificateDer::from)).collect()
    };
    let mut bundle = Vec::new();
    for root in decode(&response.bundle, "bundle")? {
        if root_hash(&root)? == token.root_hash {
            bundle.push(root);
        }
    }
    if bundle.is_empty() {
        return Err(bad("no root in the answer matches the token's root hash"));
    }
    let node_chain = decode(&response.host_chain, "host chain")?;
    let identity = HostIdentity::new(keypair.clone(), node_chain.clone(), &bundle, trust_domain, now)?;
    if identity.node_name() != request.node_name {
        return Err(bad(format!(
            "issued for node {}, asked for {}",
            identity.node_name(),
            request.node_name
        )));
    }
    let workload_chain = decode(&response.workload_chain, "workload chain")?;
    let first = workload_chain.first().ok_or_else(|| bad("empty workload chain"))?;
    let authority =
        Authority::from_pem(&svid::encode_pem("CERTIFICATE", first), &workload_key.serialize_pem())?;
    let issuer = WorkloadIssuer::new(authority, workload_chain.clone(), bundle.clone());
    let probe = issuer.issue(
        &format!("spiffe://{trust_domain}/ns/default/sa/default"),
        now,
        Duration::from_secs(60),
    )?;
    let chain: Vec<_> =
        std::iter::once(probe.cert_der.clone()).chain(workload_chain.iter().cloned()).collect();
    svid::verify(&chain, &bundle, trust_domain, PeerRole::Client, now)?;
    Ok(Joined { node_chain, workload_chain, bundle })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::trust::generate_keypair;

    const TD: &str = "beemesh.local";
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn ca_dir(root: Authority, issuer: Option<Authority>) -> CaDir {
        let bundle = vec![root.cert_der()];
        match issuer {
            None => CaDir { dir: "/nonexistent".into(), authority: root, chain: Vec::new(), bundle },
            Some(i) => CaDir { dir: "/nonexistent".into(), chain: vec![i.cert_der()], authority: i, bundle },
        }
    }

    struct NewHost {
        keypair: Keypair,
        workload_key: KeyPair,
    }

    fn new_host() -> NewHost {
        NewHost {
            keypair: generate_keypair().expect("key"),
            workload_key: KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key"),
        }
    }

    #[test]
    fn a_host_joins_through_an_issuer_holding_member() {
        let root = Authority::generate(TD, t0(), 365 * DAY).expect("root");
        let issuer = issue::issuer_ca(&root, "ops", t0(), 365 * DAY).expect("issuer");
        let ca = ca_dir(root, Some(issuer));
        let token = JoinToken::create(&ca.bundle[0]).expect("token");
        let text = token.to_string();
        assert!(text.starts_with("bmjoin1.") && text.len() == 8 + 8 + 1 + 32 + 1 + 64, "{text}");
        assert_eq!(text.parse::<JoinToken>().expect("parses"), token);
        assert!(!format!("{token:?}").contains(&hex(&token.secret)));
        let mut record = TokenRecord::new(&token, t0(), HOUR, Some("h7"));

        let h = new_host();
        let req = request(&token, "h7", &h.keypair, &h.workload_key).expect("request");
        let json = serde_json::to_string(&req).expect("json");
        assert!(!json.contains(&hex(&token.secret)), "the secret never travels");
        let peer = h.keypair.public().to_peer_id();
        let resp = admit(&req, &peer, &mut record, &ca, t0() + HOUR / 2, DAY).expect("admitted");
        assert!(record.used);
        let joined =
            accept(&token, &req, &resp, &h.keypair, &h.workload_key, TD, t0() + HOUR).expect("accepted");
        assert_eq!(joined.node_chain.len(), 2, "host, issuer");
        assert_eq!(joined.workload_chain.len(), 2, "workload issuer, issuer");
        assert_eq!(joined.bundle, ca.bundle);
        let id = HostIdentity::new(h.keypair.clone(), joined.node_chain, &joined.bundle, TD, t0() + HOUR)
            .expect("identity");
        assert_eq!((id.node_name(), id.peer_id()), ("h7", peer));

        // Single use.
        let err = admit(&req, &peer, &mut record, &ca, t0(), DAY).expect_err("used");
        assert_eq!(err.to_string(), "join: token already used");
    }

    #[test]
    fn the_member_refuses_bad_requests() {
        let ca = ca_dir(Authority::generate(TD, t0(), 365 * DAY).expect("root"), None);
        let token = JoinToken::create(&ca.bundle[0]).expect("token");
        let h = new_host();
        let peer = h.keypair.public().to_peer_id();
        let fresh = || TokenRecord::new(&token, t0(), HOUR, None);
        let req = request(&token, "h1", &h.keypair, &h.workload_key).expect("request");
        let run = |req: &JoinRequest, peer: &PeerId, record: &mut TokenRecord, now| {
            admit(req, peer, record, &ca, now, DAY).expect_err("refused").to_string()
        };

        assert_eq!(run(&req, &peer, &mut fresh(), t0() + 2 * HOUR), "join: token expired");
        let other = JoinToken::create(&ca.bundle[0]).expect("token");
        let forged = JoinRequest {
            token_id: hex(&token.id),
            ..request(&other, "h1", &h.keypair, &h.workload_key).expect("r")
        };
        assert_eq!(run(&forged, &peer, &mut fresh(), t0()), "join: request not authenticated by the token");
        // Relayed by another peer: the MAC names the requester's PeerId.
        let thief = generate_keypair().expect("key").public().to_peer_id();
        assert_eq!(run(&req, &thief, &mut fresh(), t0()), "join: request not authenticated by the token");
        // Another node name than asked (the MAC covers it) or than pinned.
        let renamed = JoinRequest { node_name: "h2".into(), ..req.clone() };
        assert_eq!(run(&renamed, &peer, &mut fresh(), t0()), "join: request not authenticated by the token");
        let mut pinned = TokenRecord::new(&token, t0(), HOUR, Some("h9"));
        assert_eq!(run(&req, &peer, &mut pinned, t0()), "join: token is for node \"h9\"");
        assert!(!pinned.used, "a refused request does not use the token");
        let unknown = JoinRequest { token_id: "00000000".into(), ..req.clone() };
        assert_eq!(run(&unknown, &peer, &mut fresh(), t0()), "join: unknown token");
        assert!(matches!(
            request(&token, "Bad Name", &h.keypair, &h.workload_key),
            Err(TrustError::BadName(_))
        ));
        for bad_text in [
            "",
            "bmjoin1.zz.00.00",
            "bmjoin2.00000000.00000000000000000000000000000000.00",
            "bmjoin1.00.00.00",
        ] {
            assert!(bad_text.parse::<JoinToken>().is_err(), "{bad_text}");
        }
    }

    #[test]
    fn the_new_host_refuses_answers_it_cannot_trust() {
        let ca = ca_dir(Authority::generate(TD, t0(), 365 * DAY).expect("root"), None);
        let token = JoinToken::create(&ca.bundle[0]).expect("token");
        let h = new_host();
        let peer = h.keypair.public().to_peer_id();
        let req = request(&token, "h1", &h.keypair, &h.workload_key).expect("request");
        let good =
            admit(&req, &peer, &mut TokenRecord::new(&token, t0(), HOUR, None), &ca, t0(), DAY).expect("ok");
        let run = |resp: &JoinResponse| {
            accept(&token, &req, resp, &h.keypair, &h.workload_key, TD, t0())
                .expect_err("refused")
                .to_string()
        };

        // Tampered: a certificate swapped.
        let mut tampered = good.clone();
        tampered.bundle = vec![hex(&Authority::generate(TD, t0(), DAY).expect("root").cert_der())];
        assert_eq!(run(&tampered), "join: response not authenticated by the token");

        // Someone who knows the token but answers from another root (the pin catches it).
        let impostor = ca_dir(Authority::generate(TD, t0(), 365 * DAY).expect("root"), None);
        let resp = admit(&req, &peer, &mut TokenRecord::new(&token, t0(), HOUR, None), &impostor, t0(), DAY)
            .expect("issues");
        assert_eq!(run(&resp), "join: no root in the answer matches the token's root hash");

        // An answer for another key (the workload issuer for a key we do not hold).
        let other = new_host();
        let other_req = request(&token, "h1", &other.keypair, &other.workload_key).expect("request");
        let resp = admit(
            &other_req,
            &other.keypair.public().to_peer_id(),
            &mut TokenRecord::new(&token, t0(), HOUR, None),
            &ca,
            t0(),
            DAY,
        )
        .expect("issues");
        let err =
            accept(&token, &other_req, &resp, &h.keypair, &h.workload_key, TD, t0()).expect_err("not ours");
        assert!(matches!(err, TrustError::PeerMismatch { .. }), "{err}");
    }
}
