//! Issuing the mesh's own certificates, sans-IO (time passed in): a host certificate for a
//! host's ed25519 libp2p key, a host's workload issuer (the intermediate its agent signs
//! workload SVIDs with), and issuers (intermediates that may issue hosts). The roles are
//! those of [`crate::identity::svid::role`]. Used by `ca issue-host` / `ca issue-issuer`
//! and, for a mesh of one, by [`super::HostIdentity::self_made`].

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SignatureAlgorithm,
};
use rustls_pki_types::CertificateDer;

use super::TrustError;
use crate::identity::svid::role::{self, Role};
use crate::identity::svid::{self, Authority, SvidError, CLOCK_SKEW};

/// The ed25519 public key of a libp2p keypair, as rcgen wants a subject key.
#[derive(Debug)]
struct Ed25519Subject([u8; 32]);

impl PublicKeyData for Ed25519Subject {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

/// What an authority is, from its certificate's URI SAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaKind {
    /// The trust domain's root.
    Root,
    /// An issuer of host certificates.
    Issuer(String),
    /// A host's workload issuer.
    WorkloadCa(String),
}

/// The kind of `ca`.
pub fn ca_kind(ca: &Authority) -> Result<CaKind, TrustError> {
    let uri = svid::spiffe_uri_of(&ca.cert_der())?;
    let (_, path) = svid::split_spiffe_id(&uri)?;
    match role::role_of(path) {
        Some(Role::Root) => Ok(CaKind::Root),
        Some(Role::Issuer(n)) => Ok(CaKind::Issuer(n.to_owned())),
        Some(Role::WorkloadCa(n)) => Ok(CaKind::WorkloadCa(n.to_owned())),
        _ => Err(TrustError::Svid(SvidError::BadAuthority(format!("{uri} is no authority")))),
    }
}

/// A host certificate for `node` and the ed25519 key `key` (the host's libp2p key), signed by
/// `ca` (a root or an issuer): URI SAN `spiffe://<td>/beemesh/node/<node>`, not a CA,
/// digitalSignature, serverAuth + clientAuth, valid from `now` less [`CLOCK_SKEW`] for `ttl`,
/// clipped to `ca`'s validity.
pub fn host_cert(
    ca: &Authority,
    node: &str,
    key: &libp2p_identity::PublicKey,
    now: SystemTime,
    ttl: Duration,
) -> Result<CertificateDer<'static>, TrustError> {
    if !matches!(ca_kind(ca)?, CaKind::Root | CaKind::Issuer(_)) {
        return Err(TrustError::CannotIssue("host certificates are issued by a root or an issuer"));
    }
    let key = key.clone().try_into_ed25519().map_err(|_| TrustError::NotEd25519)?;
    let mut params = base_params(ca, &role::host_path(checked_name(node)?), now, ttl)?;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&Ed25519Subject(key.to_bytes()), ca.issuer())?;
    Ok(cert.der().clone())
}

/// `node`'s workload issuer, signed by `ca` (a root or an issuer): a CA with pathlen 0 and a
/// fresh ECDSA P-256 key, URI SAN `spiffe://<td>/beemesh/node/<node>/workloads`.
pub fn workload_ca(
    ca: &Authority,
    node: &str,
    now: SystemTime,
    ttl: Duration,
) -> Result<Authority, TrustError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = workload_ca_cert(ca, node, &key, now, ttl)?;
    Ok(Authority::from_pem(&svid::encode_pem("CERTIFICATE", &cert), &key.serialize_pem())?)
}

/// [`workload_ca`]'s certificate for a key held elsewhere (a joining host's, from its CSR).
pub fn workload_ca_cert(
    ca: &Authority,
    node: &str,
    key: &impl PublicKeyData,
    now: SystemTime,
    ttl: Duration,
) -> Result<CertificateDer<'static>, TrustError> {
    if !matches!(ca_kind(ca)?, CaKind::Root | CaKind::Issuer(_)) {
        return Err(TrustError::CannotIssue("a host's workload issuer is issued by a root or an issuer"));
    }
    let name = checked_name(node)?;
    let params = ca_params(ca, &role::workload_ca_path(name), &format!("{name} workloads"), 0, now, ttl)?;
    Ok(params.signed_by(key, ca.issuer())?.der().clone())
}

/// An issuer `name`, signed by the root `ca`: a CA with pathlen 1 (it signs hosts' workload
/// issuers) and a fresh ECDSA P-256 key, URI SAN `spiffe://<td>/beemesh/issuer/<name>`.
pub fn issuer_ca(
    ca: &Authority,
    name: &str,
    now: SystemTime,
    ttl: Duration,
) -> Result<Authority, TrustError> {
    if ca_kind(ca)? != CaKind::Root {
        return Err(TrustError::CannotIssue("only the root issues issuers"));
    }
    let name = checked_name(name)?;
    sub_ca(ca, &role::issuer_path(name), &format!("issuer {name}"), 1, now, ttl)
}

fn sub_ca(
    ca: &Authority,
    path: &str,
    common_name: &str,
    pathlen: u8,
    now: SystemTime,
    ttl: Duration,
) -> Result<Authority, TrustError> {
    let params = ca_params(ca, path, common_name, pathlen, now, ttl)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, ca.issuer())?;
    Ok(Authority::from_pem(&cert.pem(), &key.serialize_pem())?)
}

/// A CA certificate's parameters: [`base_params`], pathlen, key usages, a subject of its own.
fn ca_params(
    ca: &Authority,
    path: &str,
    common_name: &str,
    pathlen: u8,
    now: SystemTime,
    ttl: Duration,
) -> Result<CertificateParams, TrustError> {
    let mut params = base_params(ca, path, now, ttl)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(pathlen));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // A subject of its own: chain building matches a child's issuer against it.
    params.distinguished_name.push(DnType::OrganizationName, "beemesh");
    if common_name.len() <= 64 {
        params.distinguished_name.push(DnType::CommonName, common_name);
    }
    Ok(params)
}

fn checked_name(name: &str) -> Result<&str, TrustError> {
    if role::is_node_name(name) {
        Ok(name)
    } else {
        Err(TrustError::BadName(name.to_owned()))
    }
}

/// Subject, SAN and validity shared by everything issued here.
fn base_params(
    ca: &Authority,
    path: &str,
    now: SystemTime,
    ttl: Duration,
) -> Result<CertificateParams, TrustError> {
    if ttl.is_zero() {
        return Err(SvidError::BadValidity("zero ttl".to_owned()).into());
    }
    let now = svid::floor_secs(now)?;
    if now >= ca.not_after() {
        return Err(SvidError::AuthorityExpired(ca.not_after()).into());
    }
    let start = now.checked_sub(CLOCK_SKEW).ok_or_else(|| svid::out_of_range(now))?;
    let not_before = start.max(ca.not_before());
    let not_after = svid::checked_end(now, ttl)?.min(ca.not_after());
    let mut params = CertificateParams::default();
    // An empty subject makes rcgen mark the SAN critical, as RFC 5280 asks.
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names =
        vec![SanType::URI(format!("spiffe://{}{path}", ca.trust_domain()).try_into()?)];
    params.use_authority_key_identifier_extension = true;
    params.not_before = svid::to_offset(not_before)?;
    params.not_after = svid::to_offset(not_after)?;
    Ok(params)
}
