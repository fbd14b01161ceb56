//! X.509 SVIDs (SPIFFE workload certificates): a trust domain's signing authority, the leaf
//! certificates it issues to pods and agents, and the check a TLS peer runs on the other
//! side's chain. Sans-IO: keys and certificates come in and go out as PEM or DER, time is
//! passed in. Used by the pod runtime (which hands each pod its certificate) and by the
//! agents' QUIC transport (mutual TLS, each side verifying the other's SPIFFE id).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SignatureAlgorithm,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer, UnixTime};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::{is_trust_domain, SPIFFE_SCHEME};

pub mod role;

use role::{role_of, Role};

/// How far back a certificate's validity starts, so that a peer whose clock is a little
/// behind ours still accepts it.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// SPIFFE ids are at most 2048 bytes (SPIFFE-ID spec, section 2.3).
const MAX_SPIFFE_ID: usize = 2048;

/// X.509 CommonName is at most 64 characters (RFC 5280 ub-common-name).
const MAX_COMMON_NAME: usize = 64;

/// Signature algorithms accepted in a peer's chain. Leaves are ECDSA P-256; an authority
/// brought in with [`Authority::from_pem`] may also be P-384 or Ed25519. RSA is left out on
/// purpose: nothing in a beemesh trust domain signs with it.
pub(crate) static SIGNATURE_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ED25519,
];

/// Key algorithms an authority may sign with (see [`SIGNATURE_ALGS`]).
static AUTHORITY_KEY_ALGS: &[&SignatureAlgorithm] =
    &[&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519];

/// Errors of issuing and verifying SVIDs.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    /// DER that does not parse as one X.509 certificate.
    #[error("malformed certificate: {0}")]
    MalformedCert(String),
    /// A key that is not PKCS#8, or of an algorithm an authority may not use.
    #[error("malformed private key: {0}")]
    MalformedKey(String),
    /// Text that is not PEM, or a PEM block of the wrong kind.
    #[error("malformed pem: {0}")]
    MalformedPem(String),
    /// A trust domain name outside the SPIFFE character set.
    #[error("invalid trust domain {0:?}: expected [a-z0-9._-]+, at most 255 characters")]
    BadTrustDomain(String),
    /// A SPIFFE id that breaks the SPIFFE-ID spec, or names no workload where one is needed.
    #[error("invalid spiffe id {id:?}: {reason}")]
    BadSpiffeId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No URI SAN, or one that is not `spiffe://`.
    #[error("no spiffe:// URI SAN")]
    NoSpiffeUri,
    /// More than one URI SAN: an SVID proves exactly one id.
    #[error("{0} URI SANs, expected exactly one")]
    SeveralUris(usize),
    /// The id belongs to another trust domain.
    #[error("trust domain {found}, expected {expected}")]
    WrongTrustDomain {
        /// The trust domain of the id presented.
        found: String,
        /// The trust domain asked for.
        expected: String,
    },
    /// A certificate of the chain is past its notAfter.
    #[error("certificate expired at {}", display_time(*.not_after))]
    Expired {
        /// The certificate's notAfter.
        not_after: SystemTime,
    },
    /// A certificate of the chain is before its notBefore.
    #[error("certificate not valid before {}", display_time(*.not_before))]
    NotYetValid {
        /// The certificate's notBefore.
        not_before: SystemTime,
    },
    /// The chain does not lead to one of the trust domain's roots.
    #[error("not signed by the trust domain's authority")]
    NotSignedByAuthority,
    /// Every root given had expired at the time of the check.
    #[error("no unexpired authority certificate of the trust domain at {}", display_time(*.0))]
    NoValidRoot(SystemTime),
    /// The leaf is a CA certificate.
    #[error("a CA certificate presented as a leaf")]
    CaAsLeaf,
    /// The leaf lacks digitalSignature or may sign certificates or CRLs.
    #[error("leaf key usage: {0}")]
    BadKeyUsage(&'static str),
    /// The leaf's extended key usage excludes the peer's role.
    #[error("certificate not valid for {0} authentication")]
    WrongRole(PeerRole),
    /// The peer sent no certificate.
    #[error("empty certificate chain")]
    EmptyChain,
    /// A certificate of the trust domain presented for another role: a host certificate as
    /// a workload SVID, a workload SVID as a host, a path below `/beemesh/` that names no role.
    #[error("{found} presented as {expected}")]
    WrongCertRole {
        /// What the certificate is (see [`role::Role::describe`]).
        found: &'static str,
        /// What was asked for.
        expected: &'static str,
    },
    /// An intermediate of the verified path that may not issue what it issued (a host's
    /// workload issuer signing a host certificate, an issuer signing a workload SVID).
    #[error("intermediate {uri}: {reason}")]
    BadIntermediate {
        /// The intermediate's URI SAN (or what is wrong with it).
        uri: String,
        /// Why it may not be in this chain.
        reason: &'static str,
    },
    /// A certificate and key that cannot act as an authority.
    #[error("unusable authority certificate: {0}")]
    BadAuthority(String),
    /// Issuing after the authority itself expired.
    #[error("the authority expired at {}", display_time(*.0))]
    AuthorityExpired(SystemTime),
    /// A zero ttl, or a time certificates cannot express.
    #[error("invalid validity period: {0}")]
    BadValidity(String),
    /// Any other reason webpki refuses the chain.
    #[error("certificate rejected: {0}")]
    Rejected(webpki::Error),
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The role the peer whose chain is verified plays in the TLS handshake; decides which
/// extended key usage its leaf must allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer accepted our connection: its leaf must allow serverAuth.
    Server,
    /// The peer connected to us: its leaf must allow clientAuth.
    Client,
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Server => "server",
            Self::Client => "client",
        })
    }
}

/// A trust domain's signing authority: a self-signed CA certificate with the URI SAN
/// `spiffe://<trust-domain>` and its key (ECDSA P-256 when generated here).
///
/// It is deliberately not `Clone`: the key is secret and there should be one copy per
/// process; share it behind an `Arc`.
#[derive(Debug)]
pub struct Authority {
    trust_domain: String,
    cert_der: CertificateDer<'static>,
    /// Subject, key identifier and signing key; `Issuer`'s `Debug` leaves the key out.
    issuer: Issuer<'static, KeyPair>,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl Authority {
    /// A new authority for `trust_domain`, valid from `now` (less [`CLOCK_SKEW`]) for
    /// `lifetime`.
    pub fn generate(trust_domain: &str, now: SystemTime, lifetime: Duration) -> Result<Self, SvidError> {
        if !is_trust_domain(trust_domain) {
            return Err(SvidError::BadTrustDomain(trust_domain.to_owned()));
        }
        let not_before = floor_secs(now)?.checked_sub(CLOCK_SKEW).ok_or_else(|| out_of_range(now))?;
        let not_after = checked_end(now, lifetime)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "beemesh");
        if trust_domain.len() <= MAX_COMMON_NAME {
            params.distinguished_name.push(DnType::CommonName, trust_domain);
        }
        params.subject_alt_names = vec![SanType::URI(format!("{SPIFFE_SCHEME}{trust_domain}").try_into()?)];
        // Unconstrained so that per-node intermediate authorities stay possible.
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            not_before,
            not_after,
        })
    }

    /// Loads an authority saved with [`Self::cert_pem`] and [`Self::key_pem`] (or made
    /// elsewhere): a CA certificate whose only URI SAN is `spiffe://<trust-domain>`, and its
    /// PKCS#8 key (ECDSA P-256 or P-384, or Ed25519). An intermediate CA loads too, but its
    /// leaves then verify only with it sent along in the chain, which [`Svid`] does not carry.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, SvidError> {
        let cert_der = CertificateDer::from(pem_block(cert_pem, "CERTIFICATE")?);
        let key_der = pem_block(key_pem, "PRIVATE KEY")?;
        let key = KeyPair::try_from(key_der).map_err(|e| SvidError::MalformedKey(e.to_string()))?;
        if !AUTHORITY_KEY_ALGS.contains(&key.algorithm()) {
            return Err(SvidError::MalformedKey(
                "expected an ECDSA P-256 or P-384 or an Ed25519 key".to_owned(),
            ));
        }
        let cert = parse_cert(&cert_der)?;
        if !cert.is_ca() {
            return Err(SvidError::BadAuthority("not a CA certificate".to_owned()));
        }
        if let Some(ku) = cert.key_usage().map_err(|e| SvidError::MalformedCert(e.to_string()))? {
            if !ku.value.key_cert_sign() {
                return Err(SvidError::BadAuthority("key usage lacks keyCertSign".to_owned()));
            }
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(SvidError::BadAuthority("the key does not belong to the certificate".to_owned()));
        }
        let uri = single_uri(&cert)?;
        let (trust_domain, path) = split_spiffe_id(uri)?;
        if !matches!(role_of(path), Some(Role::Root | Role::Issuer(_) | Role::WorkloadCa(_))) {
            return Err(SvidError::BadAuthority(format!(
                "URI SAN {uri} names neither a trust domain, an issuer nor a host's workload issuer"
            )));
        }
        let trust_domain = trust_domain.to_owned();
        let (not_before, not_after) = validity(&cert);
        // webpki is what peers verify with: an anchor it cannot use is no authority.
        webpki::anchor_from_trusted_cert(&cert_der).map_err(|e| SvidError::BadAuthority(e.to_string()))?;
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        Ok(Self { trust_domain, cert_der, issuer, not_before, not_after })
    }

    /// The authority certificate, PEM-encoded: what peers put among their roots.
    pub fn cert_pem(&self) -> String {
        encode_pem("CERTIFICATE", &self.cert_der)
    }

    /// The authority's PKCS#8 private key, PEM-encoded. Secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The authority certificate, DER-encoded.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// rcgen's view of the authority, for `mesh::trust` to sign host and CA certificates.
    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The trust domain the authority signs for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Start of the authority certificate's validity.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// End of the authority certificate's validity; no leaf outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// A leaf SVID for `spiffe_uri` (`spiffe://<this trust domain>/<path>`), with a fresh
    /// ECDSA P-256 key: the id as its only URI SAN, not a CA, digitalSignature, EKU
    /// serverAuth and clientAuth, valid from `now` less [`CLOCK_SKEW`] to `now + ttl`,
    /// clipped to the authority's own validity.
    pub fn issue(&self, spiffe_uri: &str, now: SystemTime, ttl: Duration) -> Result<Svid, SvidError> {
        let (trust_domain, path) = split_spiffe_id(spiffe_uri)?;
        if path.is_empty() {
            return Err(bad_id(spiffe_uri, "a workload id needs a path after the trust domain"));
        }
        match role_of(path) {
            Some(Role::Workload) => {}
            other => return Err(wrong_role(other, Role::Workload)),
        }
        if trust_domain != self.trust_domain {
            return Err(SvidError::WrongTrustDomain {
                found: trust_domain.to_owned(),
                expected: self.trust_domain.clone(),
            });
        }
        if ttl.is_zero() {
            return Err(SvidError::BadValidity("zero ttl".to_owned()));
        }
        if floor_secs(now)? >= self.not_after {
            return Err(SvidError::AuthorityExpired(self.not_after));
        }
        let start = floor_secs(now)?.checked_sub(CLOCK_SKEW).ok_or_else(|| out_of_range(now))?;
        let not_before = start.max(self.not_before);
        let not_after = checked_end(now, ttl)?.min(self.not_after);
        if not_after <= not_before {
            return Err(SvidError::BadValidity(format!(
                "the authority is not valid before {}",
                display_time(self.not_before)
            )));
        }
        let mut params = CertificateParams::default();
        // An empty subject makes rcgen mark the SAN critical, as RFC 5280 asks.
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(spiffe_uri.try_into()?)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Svid {
            cert_der: cert.der().clone(),
            key_der: PrivatePkcs8KeyDer::from(key.serialize_der()),
            issued: floor_secs(now)?.max(not_before).min(not_after),
            not_before,
            not_after,
            spiffe_uri: spiffe_uri.to_owned(),
        })
    }
}

/// A leaf certificate and its key, as issued by [`Authority::issue`].
pub struct Svid {
    /// The leaf certificate, DER-encoded; the chain a peer sees (no intermediates).
    pub cert_der: CertificateDer<'static>,
    /// The leaf's private key, PKCS#8 DER. Secret.
    pub key_der: PrivatePkcs8KeyDer<'static>,
    /// Start of validity, as written in the certificate (whole seconds): backdated by
    /// [`CLOCK_SKEW`] from the time of issue.
    pub not_before: SystemTime,
    /// When it was issued (whole seconds; within the validity).
    pub issued: SystemTime,
    /// End of validity, as written in the certificate (whole seconds).
    pub not_after: SystemTime,
    /// The SPIFFE id the certificate proves.
    pub spiffe_uri: String,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_uri", &self.spiffe_uri)
            .field("not_before", &display_time(self.not_before))
            .field("not_after", &display_time(self.not_after))
            .field("key_der", &"[secret]")
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// The leaf certificate, PEM-encoded (what a pod reads as its `cert.pem`).
    pub fn cert_pem(&self) -> String {
        encode_pem("CERTIFICATE", &self.cert_der)
    }

    /// The private key, PKCS#8 PEM-encoded. Secret.
    pub fn key_pem(&self) -> String {
        encode_pem("PRIVATE KEY", self.key_der.secret_pkcs8_der())
    }

    /// When to get the next certificate: halfway from its issue to its end, which leaves
    /// the other half for retries while the current one still works. Counted from the issue,
    /// not from the backdated notBefore: for a lifetime near [`CLOCK_SKEW`] the latter would
    /// already be past when the certificate is new.
    pub fn renew_at(&self) -> SystemTime {
        let left = self.not_after.duration_since(self.issued).unwrap_or_default();
        self.issued + left / 2
    }
}

/// Verifies a peer's chain (leaf first, then any intermediates) against the trust domain's
/// authority certificates `roots` at `now`, for a peer in `role`, and returns the leaf's
/// SPIFFE id.
///
/// Refuses: leaves of another trust domain; a leaf without exactly one URI SAN, or whose
/// URI is not a workload SPIFFE id; CA certificates as leaves; leaves whose key usage lacks
/// digitalSignature or allows signing certificates; chains not leading to a root; expired
/// or not yet valid certificates; leaves whose extended key usage excludes `role`. Roots
/// past their own expiry at `now` are not used (webpki does not look at an anchor's
/// validity; one not yet valid is still used, leaving clock skew to the leaf's check).
///
/// The leaf must be a workload SVID (never a host certificate: see [`role`]), issued by a
/// root directly (a mesh of one) or by a host's workload issuer, itself issued by a root or
/// by an issuer.
pub fn verify(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    trust_domain: &str,
    role: PeerRole,
    now: SystemTime,
) -> Result<String, SvidError> {
    verify_for_role(chain, roots, trust_domain, role, now, Expect::Workload).map(|(uri, _)| uri)
}

/// Which kind of leaf [`verify_for_role`] accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// A workload SVID; its issuer a root or a host's workload issuer (under a root or an issuer).
    Workload,
    /// A host certificate; its issuer a root or an issuer.
    Host,
}

/// [`verify`] for a leaf of the role `expect`, with the intermediates of the verified path
/// checked for that role too. Returns the leaf's SPIFFE id and the host the verified path
/// names: a host certificate's node, or the node whose workload issuer signed a workload SVID
/// (`None`: a root signed it), taken from the path the verification built, never from what
/// else the peer sent.
pub(crate) fn verify_for_role(
    chain: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    trust_domain: &str,
    role: PeerRole,
    now: SystemTime,
    expect: Expect,
) -> Result<(String, Option<String>), SvidError> {
    let (leaf_der, intermediates) = chain.split_first().ok_or(SvidError::EmptyChain)?;
    let leaf = parse_cert(leaf_der)?;
    // Checks on the leaf's own content come first: their errors say more than a failed
    // path, and nothing is trusted from them until the signatures check out below.
    if leaf.is_ca() {
        return Err(SvidError::CaAsLeaf);
    }
    let uri = workload_uri(&leaf)?;
    let (found, path) = split_spiffe_id(&uri)?;
    let wanted = match expect {
        Expect::Workload => Role::Workload,
        Expect::Host => Role::Host(""),
    };
    let mut host = match (role_of(path), expect) {
        (Some(Role::Workload), Expect::Workload) => None,
        (Some(Role::Host(n)), Expect::Host) => Some(n.to_owned()),
        (other, _) => return Err(wrong_role(other, wanted)),
    };
    if found != trust_domain {
        return Err(SvidError::WrongTrustDomain {
            found: found.to_owned(),
            expected: trust_domain.to_owned(),
        });
    }
    match leaf.key_usage().map_err(|e| SvidError::MalformedCert(e.to_string()))? {
        None => return Err(SvidError::BadKeyUsage("no key usage extension")),
        Some(ku) if !ku.value.digital_signature() => {
            return Err(SvidError::BadKeyUsage("no digitalSignature"))
        }
        Some(ku) if ku.value.key_cert_sign() || ku.value.crl_sign() => {
            return Err(SvidError::BadKeyUsage("a leaf must not sign certificates or CRLs"))
        }
        Some(_) => {}
    }

    let unix_now = unix_time(now)?;
    let mut anchors = Vec::with_capacity(roots.len());
    for root in roots {
        let (_, not_after) = validity(&parse_cert(root)?);
        if now <= not_after {
            anchors.push(
                webpki::anchor_from_trusted_cert(root)
                    .map_err(|e| SvidError::MalformedCert(e.to_string()))?,
            );
        }
    }
    if anchors.is_empty() {
        return Err(SvidError::NoValidRoot(now));
    }
    let ee = EndEntityCert::try_from(leaf_der).map_err(|e| SvidError::MalformedCert(e.to_string()))?;
    let usage = match role {
        PeerRole::Server => KeyUsage::server_auth(),
        PeerRole::Client => KeyUsage::client_auth(),
    };
    let verified = ee
        .verify_for_usage(SIGNATURE_ALGS, &anchors, intermediates, unix_now, usage, None, None)
        .map_err(|e| from_webpki(e, role))?;
    // The path runs from the leaf's issuer up to the root's child.
    for (i, cert) in verified.intermediate_certificates().enumerate() {
        let der = cert.der();
        let parsed = parse_cert(&der)?;
        let bad = |uri: &str, reason| SvidError::BadIntermediate { uri: uri.to_owned(), reason };
        let ca_uri = single_uri(&parsed).map_err(|_| bad("(no single spiffe:// URI SAN)", "no role"))?;
        let (td, ca_path) = split_spiffe_id(ca_uri)?;
        if td != trust_domain {
            return Err(bad(ca_uri, "of another trust domain"));
        }
        match (role_of(ca_path), expect, i) {
            (Some(Role::WorkloadCa(n)), Expect::Workload, 0) => host = Some(n.to_owned()),
            (Some(Role::WorkloadCa(_)), Expect::Workload, _) => {
                return Err(bad(ca_uri, "a workload issuer may only sign workload SVIDs"))
            }
            (Some(Role::Issuer(_)), Expect::Workload, 0) => {
                return Err(bad(ca_uri, "an issuer signs hosts, not workload SVIDs"))
            }
            (Some(Role::Issuer(_)), _, _) => {}
            (Some(Role::WorkloadCa(_)), Expect::Host, _) => {
                return Err(bad(ca_uri, "a host's workload issuer may not sign host certificates"))
            }
            _ => return Err(bad(ca_uri, "not an issuer of this trust domain")),
        }
    }
    Ok((uri, host))
}

fn wrong_role(found: Option<Role<'_>>, expected: Role<'_>) -> SvidError {
    SvidError::WrongCertRole {
        found: found.map_or("a certificate under the reserved /beemesh/ path", |r| r.describe()),
        expected: expected.describe(),
    }
}

/// The SPIFFE id of a DER certificate: its only URI SAN, which must be a `spiffe://` id.
/// Does not verify anything else; for logs and for peers already verified by [`verify`].
pub fn spiffe_uri_of(cert: &CertificateDer<'_>) -> Result<String, SvidError> {
    let cert = parse_cert(cert)?;
    let uri = single_uri(&cert)?;
    split_spiffe_id(uri)?;
    Ok(uri.to_owned())
}

fn from_webpki(e: webpki::Error, role: PeerRole) -> SvidError {
    use webpki::Error as E;
    match e {
        E::CertExpired { not_after, .. } => SvidError::Expired { not_after: from_unix(not_after) },
        E::CertNotValidYet { not_before, .. } => SvidError::NotYetValid { not_before: from_unix(not_before) },
        E::UnknownIssuer | E::InvalidSignatureForPublicKey => SvidError::NotSignedByAuthority,
        E::CaUsedAsEndEntity => SvidError::CaAsLeaf,
        E::RequiredEkuNotFoundContext(_) => SvidError::WrongRole(role),
        E::BadDer | E::BadDerTime | E::TrailingData(_) | E::UnsupportedCertVersion => {
            SvidError::MalformedCert(e.to_string())
        }
        e => SvidError::Rejected(e),
    }
}

/// The leaf's workload id: exactly one URI SAN, a SPIFFE id with a path.
fn workload_uri(cert: &X509Certificate<'_>) -> Result<String, SvidError> {
    let uri = single_uri(cert)?;
    let (_, path) = split_spiffe_id(uri)?;
    if path.is_empty() {
        return Err(bad_id(uri, "a workload id needs a path after the trust domain"));
    }
    Ok(uri.to_owned())
}

/// The certificate's only URI SAN, if it starts with `spiffe://`.
pub(crate) fn single_uri<'a>(cert: &X509Certificate<'a>) -> Result<&'a str, SvidError> {
    let san = cert.subject_alternative_name().map_err(|e| SvidError::MalformedCert(e.to_string()))?;
    let uris: Vec<&'a str> = san
        .map(|ext| ext.value.general_names.iter())
        .into_iter()
        .flatten()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] if uri.starts_with(SPIFFE_SCHEME) => Ok(uri),
        [] | [_] => Err(SvidError::NoSpiffeUri),
        _ => Err(SvidError::SeveralUris(uris.len())),
    }
}

/// Splits `spiffe://<trust-domain><path>` after checking it against the SPIFFE-ID spec;
/// the path is empty or `/seg(/seg)*`, each segment `[A-Za-z0-9._-]+` other than `.` and `..`.
pub(crate) fn split_spiffe_id(id: &str) -> Result<(&str, &str), SvidError> {
    if id.len() > MAX_SPIFFE_ID {
        return Err(bad_id(id, "longer than 2048 bytes"));
    }
    let rest = id.strip_prefix(SPIFFE_SCHEME).ok_or_else(|| bad_id(id, "not a spiffe:// URI"))?;
    let (trust_domain, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    if !is_trust_domain(trust_domain) {
        return Err(bad_id(id, "the trust domain must be [a-z0-9._-]+, at most 255 characters"));
    }
    if !path.is_empty() {
        let ok_segment = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !path[1..].split('/').all(ok_segment) {
            return Err(bad_id(id, "path segments must be [A-Za-z0-9._-]+, not empty, . or .."));
        }
    }
    Ok((trust_domain, path))
}

fn bad_id(id: &str, reason: &'static str) -> SvidError {
    SvidError::BadSpiffeId { id: id.to_owned(), reason }
}

/// Parses one DER certificate, refusing trailing bytes.
pub(crate) fn parse_cert<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, SvidError> {
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(SvidError::MalformedCert(format!("{} bytes after the certificate", rest.len()))),
        Err(e) => Err(SvidError::MalformedCert(e.to_string())),
    }
}

pub(crate) fn validity(cert: &X509Certificate<'_>) -> (SystemTime, SystemTime) {
    let v = cert.validity();
    (from_unix_secs(v.not_before.timestamp()), from_unix_secs(v.not_after.timestamp()))
}

/// The contents of the first PEM block of `text`, which must be labelled `label`.
pub(crate) fn pem_block(text: &str, label: &str) -> Result<Vec<u8>, SvidError> {
    let block = pem::parse(text).map_err(|e| SvidError::MalformedPem(e.to_string().to_lowercase()))?;
    if block.tag() != label {
        return Err(SvidError::MalformedPem(format!("expected a {label} block, found {}", block.tag())));
    }
    Ok(block.into_contents())
}

pub(crate) fn encode_pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

/// `now` truncated to whole seconds, as certificates record it.
pub(crate) fn floor_secs(now: SystemTime) -> Result<SystemTime, SvidError> {
    let since = now.duration_since(UNIX_EPOCH).map_err(|_| out_of_range(now))?;
    Ok(UNIX_EPOCH + Duration::from_secs(since.as_secs()))
}

/// `now + length`, truncated to whole seconds.
pub(crate) fn checked_end(now: SystemTime, length: Duration) -> Result<SystemTime, SvidError> {
    floor_secs(now.checked_add(length).ok_or_else(|| out_of_range(now))?)
}

pub(crate) fn out_of_range(t: SystemTime) -> SvidError {
    SvidError::BadValidity(format!("time {t:?} out of the range certificates can express"))
}

pub(crate) fn to_offset(t: SystemTime) -> Result<OffsetDateTime, SvidError> {
    let secs = t.duration_since(UNIX_EPOCH).map_err(|_| out_of_range(t))?.as_secs();
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| out_of_range(t))
}

fn unix_time(t: SystemTime) -> Result<UnixTime, SvidError> {
    let since = t.duration_since(UNIX_EPOCH).map_err(|_| out_of_range(t))?;
    Ok(UnixTime::since_unix_epoch(since))
}

fn from_unix(t: UnixTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(t.as_secs())
}

fn from_unix_secs(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

/// RFC 3339 for error messages, the raw value if the time is beyond what it can show.
pub(crate) fn display_time(t: SystemTime) -> String {
    to_offset(t)
        .ok()
        .and_then(|dt| dt.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("{t:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "beemesh.local";
    const WEB: &str = "spiffe://beemesh.local/ns/shop/sa/web";
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);

    /// A fixed, whole-second "now" so that expected validity bounds are exact.
    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_750_000_000)
    }

    fn authority() -> Authority {
        Authority::generate(TD, t0(), 365 * DAY).expect("generates")
    }

    fn check(
        svid: &Svid,
        roots: &[CertificateDer<'_>],
        role: PeerRole,
        now: SystemTime,
    ) -> Result<String, SvidError> {
        verify(std::slice::from_ref(&svid.cert_der), roots, TD, role, now)
    }

    /// A leaf signed by `ca` with hand-picked parameters, for shapes `issue` never makes.
    fn crafted(ca: &Authority, edit: impl FnOnce(&mut CertificateParams)) -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(WEB.try_into().expect("ia5"))];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.not_before = to_offset(t0() - CLOCK_SKEW).expect("in range");
        params.not_after = to_offset(t0() + HOUR).expect("in range");
        edit(&mut params);
        let key = KeyPair::generate().expect("key");
        params.signed_by(&key, &ca.issuer).expect("signs").der().clone()
    }

    #[test]
    fn issue_and_verify_round_trip_for_both_roles() {
        let ca = authority();
        let svid = ca.issue(WEB, t0(), HOUR).expect("issues");
        assert_eq!(svid.spiffe_uri, WEB);
        let roots = [ca.cert_der()];
        for role in [PeerRole::Server, PeerRole::Client] {
            assert_eq!(check(&svid, &roots, role, t0()).expect("verifies"), WEB);
            assert_eq!(
                check(&svid, &roots, role, t0() + HOUR - Duration::from_secs(1)).expect("verifies"),
                WEB
            );
        }
        assert_eq!(spiffe_uri_of(&svid.cert_der).expect("has uri"), WEB);

        let leaf = parse_cert(&svid.cert_der).expect("parses");
        assert!(!leaf.is_ca());
        let ku = leaf.key_usage().expect("valid").expect("present");
        assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
        let eku = leaf.extended_key_usage().expect("valid").expect("present");
        assert!(eku.value.server_auth && eku.value.client_auth);
        let san = leaf.subject_alternative_name().expect("valid").expect("present");
        assert!(san.critical, "an empty subject needs a critical SAN");
        assert_eq!(validity(&leaf), (svid.not_before, svid.not_after));
        assert_eq!(svid.not_before, t0() - CLOCK_SKEW);
        assert_eq!(svid.not_after, t0() + HOUR);
    }

    #[test]
    fn generated_authority_is_a_spiffe_ca() {
        let ca = authority();
        assert_eq!(ca.trust_domain(), TD);
        let cert = parse_cert(&ca.cert_der).expect("parses");
        assert!(cert.is_ca());
        assert_eq!(single_uri(&cert).expect("uri"), "spiffe://beemesh.local");
        assert_eq!(validity(&cert), (t0() - CLOCK_SKEW, t0() + 365 * DAY));
        assert_eq!((ca.not_before(), ca.not_after()), (t0() - CLOCK_SKEW, t0() + 365 * DAY));
        assert!(matches!(Authority::generate("Bad Domain", t0(), DAY), Err(SvidError::BadTrustDomain(_))));
    }

    #[test]
    fn expired_and_not_yet_valid_are_rejected() {
        let ca = authority();
        let svid = ca.issue(WEB, t0(), HOUR).expect("issues");
        let roots = [ca.cert_der()];
        let late = check(&svid, &roots, PeerRole::Server, t0() + HOUR + Duration::from_secs(1))
            .expect_err("expired");
        assert!(matches!(late, SvidError::Expired { not_after } if not_after == t0() + HOUR), "{late}");
        assert!(late.to_string().starts_with("certificate expired at 2025-"), "{late}");
        let early = check(&svid, &roots, PeerRole::Client, t0() - 2 * CLOCK_SKEW).expect_err("not yet valid");
        assert!(
            matches!(early, SvidError::NotYetValid { not_before } if not_before == t0() - CLOCK_SKEW),
            "{early}"
        );
        // Just inside the skew allowance still works.
        assert!(check(&svid, &roots, PeerRole::Client, t0() - CLOCK_SKEW).is_ok());
    }

    #[test]
    fn leaf_of_another_authority_is_rejected() {
        let ours = authority();
        let theirs = authority();
        let svid = theirs.issue(WEB, t0(), HOUR).expect("issues");
        let err = check(&svid, &[ours.cert_der()], PeerRole::Server, t0()).expect_err("foreign");
        assert!(matches!(err, SvidError::NotSignedByAuthority), "{err}");
        assert_eq!(err.to_string(), "not signed by the trust domain's authority");
        // Trusting both authorities (a rotation overlap) accepts it.
        let both = [ours.cert_der(), theirs.cert_der()];
        assert_eq!(check(&svid, &both, PeerRole::Server, t0()).expect("verifies"), WEB);
    }

    #[test]
    fn another_trust_domain_is_rejected() {
        let ca = authority();
        let err = ca.issue("spiffe://other.local/ns/shop/sa/web", t0(), HOUR).expect_err("foreign id");
        assert_eq!(err.to_string(), "trust domain other.local, expected beemesh.local");

        let other = Authority::generate("other.local", t0(), DAY).expect("generates");
        let svid = other.issue("spiffe://other.local/ns/shop/sa/web", t0(), HOUR).expect("issues");
        let roots = [ca.cert_der(), other.cert_der()];
        let err = check(&svid, &roots, PeerRole::Server, t0()).expect_err("foreign domain");
        assert!(matches!(err, SvidError::WrongTrustDomain { .. }), "{err}");
        assert_eq!(err.to_string(), "trust domain other.local, expected beemesh.local");
    }

    #[test]
    fn authority_presented_as_leaf_is_rejected() {
        let ca = authority();
        let chain = [ca.cert_der()];
        let err = verify(&chain, &chain, TD, PeerRole::Server, t0()).expect_err("ca as leaf");
        assert!(matches!(err, SvidError::CaAsLeaf), "{err}");
    }

    #[test]
    fn malformed_der_gives_clear_errors() {
        let ca = authority();
        let garbage = CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02]);
        let err = verify(std::slice::from_ref(&garbage), &[ca.cert_der()], TD, PeerRole::Server, t0())
            .expect_err("garbage leaf");
        assert!(err.to_string().starts_with("malformed certificate: "), "{err}");
        let err = spiffe_uri_of(&garbage).expect_err("garbage");
        assert!(err.to_string().starts_with("malformed certificate: "), "{err}");

        let svid = ca.issue(WEB, t0(), HOUR).expect("issues");
        let err =
            check(&svid, std::slice::from_ref(&garbage), PeerRole::Server, t0()).expect_err("garbage root");
        assert!(err.to_string().starts_with("malformed certificate: "), "{err}");

        let mut trailing = svid.cert_der.to_vec();
        trailing.push(0);
        let err = spiffe_uri_of(&CertificateDer::from(trailing)).expect_err("trailing byte");
        assert_eq!(err.to_string(), "malformed certificate: 1 bytes after the certificate");

        assert!(matches!(
            verify(&[], &[ca.cert_der()], TD, PeerRole::Server, t0()),
            Err(SvidError::EmptyChain)
        ));
    }

    #[test]
    fn malformed_pem_gives_clear_errors() {
        let ca = authority();
        let (cert, key) = (ca.cert_pem(), ca.key_pem());
        let msg = |r: Result<Authority, SvidError>| r.expect_err("bad input").to_string();

        assert!(msg(Authority::from_pem("not pem at all", &key)).starts_with("malformed pem: "));
        assert!(msg(Authority::from_pem(&cert, "")).starts_with("malformed pem: "));
        assert_eq!(
            msg(Authority::from_pem(&key, &cert)),
            "malformed pem: expected a CERTIFICATE block, found PRIVATE KEY"
        );
        let junk_cert = encode_pem("CERTIFICATE", b"\x30\x00");
        assert!(msg(Authority::from_pem(&junk_cert, &key)).starts_with("malformed certificate: "));
        let junk_key = encode_pem("PRIVATE KEY", b"\x30\x00");
        assert!(msg(Authority::from_pem(&cert, &junk_key)).starts_with("malformed private key: "));

        let other = authority();
        assert_eq!(
            msg(Authority::from_pem(&cert, &other.key_pem())),
            "unusable authority certificate: the key does not belong to the certificate"
        );
        let svid = ca.issue(WEB, t0(), HOUR).expect("issues");
        assert_eq!(
            msg(Authority::from_pem(&svid.cert_pem(), &svid.key_pem())),
            "unusable authority certificate: not a CA certificate"
        );
    }

    #[test]
    fn ttl_is_clipped_to_the_authority_expiry() {
        let ca = Authority::generate(TD, t0(), DAY).expect("generates");
        let svid = ca.issue(WEB, t0() + DAY - HOUR, 2 * HOUR).expect("issues");
        assert_eq!(svid.not_after, t0() + DAY);
        assert_eq!(validity(&parse_cert(&svid.cert_der).expect("parses")).1, t0() + DAY);
        let err = ca.issue(WEB, t0() + DAY, HOUR).expect_err("authority expired");
        assert!(matches!(err, SvidError::AuthorityExpired(t) if t == t0() + DAY), "{err}");
        assert!(matches!(ca.issue(WEB, t0(), Duration::ZERO), Err(SvidError::BadValidity(_))));
    }

    #[test]
    fn leaf_never_starts_before_its_authority() {
        let ca = authority();
        let svid = ca.issue(WEB, t0() - CLOCK_SKEW / 2, HOUR).expect("issues");
        assert_eq!(svid.not_before, ca.not_before());
    }

    #[test]
    fn renew_at_is_halfway_from_the_issue() {
        let ca = authority();
        let svid = ca.issue(WEB, t0(), HOUR).expect("issues");
        assert_eq!(svid.issued, t0());
        assert_eq!(svid.renew_at(), t0() + HOUR / 2);
        // A lifetime shorter than the backdating: renewal is still ahead, not past.
        let short = Duration::from_secs(10);
        let svid = ca.issue(WEB, t0(), short).expect("issues");
        assert_eq!(svid.not_before, t0() - CLOCK_SKEW);
        assert_eq!(svid.renew_at(), t0() + short / 2);
        assert!(svid.renew_at() > t0());
    }

    #[test]
    fn pem_round_trip_keeps_the_authority() {
        let ca = authority();
        let old = ca.issue(WEB, t0(), HOUR).expect("issues");
        let back = Authority::from_pem(&ca.cert_pem(), &ca.key_pem()).expect("loads");
        assert_eq!(back.trust_domain(), TD);
        assert_eq!(back.cert_der(), ca.cert_der());
        assert_eq!(back.cert_pem(), ca.cert_pem());
        assert_eq!((back.not_before(), back.not_after()), (ca.not_before(), ca.not_after()));
        let roots = [back.cert_der()];
        assert_eq!(check(&old, &roots, PeerRole::Server, t0()).expect("old leaf verifies"), WEB);
        let new = back.issue(WEB, t0(), HOUR).expect("issues");
        assert_eq!(check(&new, &[ca.cert_der()], PeerRole::Client, t0()).expect("new leaf verifies"), WEB);
    }

    #[test]
    fn svid_pem_encodes_its_der() {
        let svid = authority().issue(WEB, t0(), HOUR).expect("issues");
        assert_eq!(pem_block(&svid.cert_pem(), "CERTIFICATE").expect("pem"), svid.cert_der.to_vec());
        let key = pem_block(&svid.key_pem(), "PRIVATE KEY").expect("pem");
        assert_eq!(key, svid.key_der.secret_pkcs8_der());
        let pair = KeyPair::try_from(key).expect("loads");
        let leaf = parse_cert(&svid.cert_der).expect("parses");
        assert_eq!(leaf.public_key().subject_public_key.data.as_ref(), pair.public_key_raw());
        assert!(!format!("{svid:?}").contains(&format!("{:?}", svid.key_der.secret_pkcs8_der())));
    }

    #[test]
    fn issue_refuses_bad_ids() {
        let ca = authority();
        for id in [
            "spiffe://beemesh.local",
            "spiffe://beemesh.local/",
            "spiffe://beemesh.local/ns//sa",
            "spiffe://beemesh.local/ns/../sa",
            "spiffe://beemesh.local/ns/a?x=1",
            "spiffe://Beemesh.local/ns/a",
            "https://beemesh.local/ns/a",
        ] {
            let err = ca.issue(id, t0(), HOUR).expect_err(id);
            assert!(matches!(err, SvidError::BadSpiffeId { .. }), "{id}: {err}");
        }
        let long = format!("spiffe://beemesh.local/{}", "a".repeat(MAX_SPIFFE_ID));
        assert!(matches!(ca.issue(&long, t0(), HOUR), Err(SvidError::BadSpiffeId { .. })));
        let node = "spiffe://beemesh.local/node/worker-1";
        assert_eq!(spiffe_uri_of(&ca.issue(node, t0(), HOUR).expect("issues").cert_der).expect("uri"), node);
    }

    #[test]
    fn leaves_need_exactly_one_spiffe_uri() {
        let ca = authority();
        let roots = [ca.cert_der()];
        let run = |leaf: CertificateDer<'static>| verify(&[leaf], &roots, TD, PeerRole::Server, t0());
        assert_eq!(run(crafted(&ca, |_| {})).expect("control verifies"), WEB);

        let dns_only =
            crafted(&ca, |p| p.subject_alt_names = vec![SanType::DnsName("web".try_into().expect("ia5"))]);
        assert_eq!(run(dns_only).expect_err("no uri").to_string(), "no spiffe:// URI SAN");
        let https = crafted(&ca, |p| {
            p.subject_alt_names = vec![SanType::URI("https://web".try_into().expect("ia5"))]
        });
        assert!(matches!(run(https), Err(SvidError::NoSpiffeUri)));
        let two = crafted(&ca, |p| {
            p.subject_alt_names
                .push(SanType::URI("spiffe://beemesh.local/ns/shop/sa/db".try_into().expect("ia5")))
        });
        assert_eq!(run(two).expect_err("two uris").to_string(), "2 URI SANs, expected exactly one");
        let domain_only = crafted(&ca, |p| {
            p.subject_alt_names = vec![SanType::URI("spiffe://beemesh.local".try_into().expect("ia5"))]
        });
        assert!(matches!(run(domain_only), Err(SvidError::BadSpiffeId { .. })));
    }

    #[test]
    fn leaf_key_usage_and_role_are_enforced() {
        let ca = authority();
        let roots = [ca.cert_der()];
        let run =
            |leaf: &CertificateDer<'static>, role| verify(std::slice::from_ref(leaf), &roots, TD, role, t0());

        let server_only = crafted(&ca, |p| p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]);
        assert_eq!(run(&server_only, PeerRole::Server).expect("server ok"), WEB);
        let err = run(&server_only, PeerRole::Client).expect_err("not a client cert");
        assert_eq!(err.to_string(), "certificate not valid for client authentication");

        let no_ku = crafted(&ca, |p| p.key_usages.clear());
        assert!(matches!(run(&no_ku, PeerRole::Server), Err(SvidError::BadKeyUsage(_))));
        let signer = crafted(&ca, |p| p.key_usages.push(KeyUsagePurpose::KeyCertSign));
        assert!(matches!(run(&signer, PeerRole::Server), Err(SvidError::BadKeyUsage(_))));
    }

    #[test]
    fn chains_through_an_intermediate() {
        let root = authority();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, "node-1");
        params.subject_alt_names = vec![SanType::URI(
            "spiffe://beemesh.local/beemesh/node/node-1/workloads".try_into().expect("ia5"),
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.not_before = to_offset(t0() - CLOCK_SKEW).expect("in range");
        params.not_after = to_offset(t0() + DAY).expect("in range");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &root.issuer).expect("signs");
        let node = Authority::from_pem(&cert.pem(), &key.serialize_pem()).expect("loads intermediate");
        let svid = node.issue(WEB, t0(), HOUR).expect("issues");

        let roots = [root.cert_der()];
        let chain = [svid.cert_der.clone(), node.cert_der()];
        assert_eq!(verify(&chain, &roots, TD, PeerRole::Client, t0()).expect("verifies"), WEB);
        let err = check(&svid, &roots, PeerRole::Client, t0()).expect_err("missing intermediate");
        assert!(matches!(err, SvidError::NotSignedByAuthority), "{err}");
    }

    #[test]
    fn expired_roots_are_not_used() {
        let old = Authority::generate(TD, t0(), DAY).expect("generates");
        let new = Authority::generate(TD, t0() + DAY, 365 * DAY).expect("generates");
        let svid = new.issue(WEB, t0() + DAY, HOUR).expect("issues");
        let later = t0() + DAY + Duration::from_secs(1);
        let err = check(&svid, &[old.cert_der()], PeerRole::Server, later).expect_err("old root expired");
        assert!(matches!(err, SvidError::NoValidRoot(_)), "{err}");
        assert_eq!(
            check(&svid, &[old.cert_der(), new.cert_der()], PeerRole::Server, later).expect("verifies"),
            WEB
        );
    }
}
