//! rustls configurations for tunnels: TLS 1.3 only, ALPN [`ALPN`], the ring provider. The
//! accepting agent presents its host certificate (`spiffe://<td>/beemesh/node/<name>`, its
//! libp2p ed25519 key); the connecting side presents the SVID of the workload whose traffic
//! the connection carries, with the intermediates of its host's workload issuer. Each side
//! checks the role it expects with `svid::verify_for_role` (never WebPKI name checks), so a
//! workload SVID never passes as an agent and a host certificate never as a workload. Used by
//! [`super::Endpoint`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, PeerIncompatible};
use rustls::{SignatureScheme, SupportedProtocolVersion};

use super::TunnelError;
use crate::identity::svid::role;
use crate::identity::svid::{self, Expect, PeerRole, Svid};

/// The application protocol both sides must agree on; the number is the tunnel protocol's
/// version, bumped when [`super::frame`] or the stream semantics change incompatibly.
pub const ALPN: &[u8] = b"beemesh/2";

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A side of a tunnel for TLS: a host (accepts) or a workload (connects), its certificate
/// chain and key, and the trust domain it verifies peers against.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Leaf first, then the intermediates a peer needs to reach a root.
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    spiffe_uri: String,
    kind: Expect,
    roots: Arc<[CertificateDer<'static>]>,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("spiffe_uri", &self.spiffe_uri)
            .field("kind", &self.kind)
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// The PKCS#8 v1 prefix of an ed25519 private key (RFC 8410): the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// `keypair`'s ed25519 private key as PKCS#8, for rustls.
pub(crate) fn ed25519_pkcs8(
    keypair: &libp2p_identity::Keypair,
) -> Result<PrivatePkcs8KeyDer<'static>, TunnelError> {
    let ed = keypair.clone().try_into_ed25519().map_err(|_| TunnelError::HostKey)?;
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    der.extend_from_slice(ed.secret().as_ref());
    Ok(PrivatePkcs8KeyDer::from(der))
}

impl TlsIdentity {
    /// A host: its certificate `chain` (leaf first, issued for `keypair`'s ed25519 key by a
    /// root or an issuer of `trust_domain`), which the accepting side presents. Refuses a
    /// chain peers would refuse (not a host certificate, another trust domain, not under
    /// `roots`, expired) or a key of another type.
    pub fn host(
        chain: Vec<CertificateDer<'static>>,
        keypair: &libp2p_identity::Keypair,
        roots: Vec<CertificateDer<'static>>,
        trust_domain: &str,
    ) -> Result<Self, TunnelError> {
        let uri = svid::verify_for_role(
            &chain,
            &roots,
            trust_domain,
            PeerRole::Server,
            SystemTime::now(),
            Expect::Host,
        )
        .map_err(TunnelError::OwnCert)?
        .0;
        Ok(Self::assemble(chain, ed25519_pkcs8(keypair)?, uri, Expect::Host, roots, trust_domain))
    }

    /// A workload: its `svid` and the `intermediates` its host's workload issuer sends after
    /// it (none when a root issued it), which the connecting side presents. Refuses what peers
    /// would refuse (a host certificate, another trust domain, not under `roots`, expired).
    pub fn workload(
        svid: &Svid,
        intermediates: &[CertificateDer<'static>],
        roots: Vec<CertificateDer<'static>>,
        trust_domain: &str,
    ) -> Result<Self, TunnelError> {
        let mut chain = vec![svid.cert_der.clone()];
        chain.extend_from_slice(intermediates);
        let uri = svid::verify_for_role(
            &chain,
            &roots,
            trust_domain,
            PeerRole::Client,
            SystemTime::now(),
            Expect::Workload,
        )
        .map_err(TunnelError::OwnCert)?
        .0;
        Ok(Self::assemble(chain, svid.key_der.clone_key(), uri, Expect::Workload, roots, trust_domain))
    }

    /// Like [`Self::workload`] and [`Self::host`] without the checks, playing `kind` with any
    /// chain and key: tests use it for misconfigured or hostile peers.
    #[cfg(test)]
    pub(crate) fn unchecked(
        chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
        kind: Expect,
        roots: Vec<CertificateDer<'static>>,
        trust_domain: &str,
    ) -> Self {
        let uri = chain.first().and_then(|c| svid::spiffe_uri_of(c).ok()).unwrap_or_default();
        Self::assemble(chain, key, uri, kind, roots, trust_domain)
    }

    fn assemble(
        chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
        spiffe_uri: String,
        kind: Expect,
        roots: Vec<CertificateDer<'static>>,
        trust_domain: &str,
    ) -> Self {
        Self {
            chain,
            key: Arc::new(key),
            spiffe_uri,
            kind,
            roots: roots.into(),
            trust_domain: trust_domain.to_owned(),
            provider: Arc::new(provider()),
        }
    }

    /// Our SPIFFE id.
    pub fn spiffe_uri(&self) -> &str {
        &self.spiffe_uri
    }

    /// The accepting side (a host): requires the client's workload SVID, verified for
    /// clientAuth.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TunnelError> {
        if self.kind != Expect::Host {
            return Err(TunnelError::WrongSide("only a host certificate accepts tunnels"));
        }
        let verifier = Arc::new(SvidVerifier::new(self, PeerRole::Client, Expect::Workload, None));
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(TLS13_ONLY)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key_der())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The connecting side (a workload): the server must prove the host certificate of
    /// `host` (a node name), verified for serverAuth.
    pub fn client_config(&self, host: &str) -> Result<rustls::ClientConfig, TunnelError> {
        if self.kind != Expect::Workload {
            return Err(TunnelError::WrongSide("only a workload SVID opens tunnels"));
        }
        let expected = format!("spiffe://{}{}", self.trust_domain, role::host_path(host));
        let verifier = Arc::new(SvidVerifier::new(self, PeerRole::Server, Expect::Host, Some(&expected)));
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(TLS13_ONLY)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(self.chain.clone(), self.key_der())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

impl TlsIdentity {
    /// The peer's SPIFFE id on a connection this identity made or accepted, and the host it
    /// stands for: a host certificate's node, or the node whose workload issuer signed a
    /// workload SVID (`None`: a root signed it, a mesh of one). The chain is verified again to
    /// learn the host from the path verification builds: a peer may send more certificates
    /// than that path uses (another host's, which are public), and those say nothing.
    pub(crate) fn peer_identity(
        &self,
        conn: &quinn::Connection,
    ) -> Result<(String, Option<String>), TunnelError> {
        let chain = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or(TunnelError::NoPeerIdentity)?;
        // We accept workloads as a host, and connect to hosts as a workload.
        let (role, expect) = match self.kind {
            Expect::Host => (PeerRole::Client, Expect::Workload),
            Expect::Workload => (PeerRole::Server, Expect::Host),
        };
        Ok(svid::verify_for_role(&chain, &self.roots, &self.trust_domain, role, SystemTime::now(), expect)?)
    }
}

/// Verifies the peer's chain with [`svid::verify`] and its handshake signature with the
/// provider's algorithms; one instance per role (and per expected server).
#[derive(Debug)]
struct SvidVerifier {
    roots: Arc<[CertificateDer<'static>]>,
    trust_domain: String,
    role: PeerRole,
    expect: Expect,
    expected: Option<String>,
    algs: WebPkiSupportedAlgorithms,
}

impl SvidVerifier {
    fn new(identity: &TlsIdentity, role: PeerRole, expect: Expect, expected: Option<&str>) -> Self {
        Self {
            roots: identity.roots.clone(),
            trust_domain: identity.trust_domain.clone(),
            role,
            expect,
            expected: expected.map(str::to_owned),
            algs: identity.provider.signature_verification_algorithms,
        }
    }

    /// `now` is the handshake's clock (rustls's time provider, the system clock).
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<String, rustls::Error> {
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(end_entity.clone());
        chain.extend_from_slice(intermediates);
        let now = UNIX_EPOCH + Duration::from_secs(now.as_secs());
        let (found, _) =
            svid::verify_for_role(&chain, &self.roots, &self.trust_domain, self.role, now, self.expect)
                .map_err(|e| self.reject(TunnelError::PeerRejected(e)))?;
        if let Some(expected) = &self.expected {
            if found != *expected {
                return Err(self.reject(TunnelError::UnexpectedPeer { expected: expected.clone(), found }));
            }
        }
        Ok(found)
    }

    fn reject(&self, err: TunnelError) -> rustls::Error {
        tracing::warn!(role = %self.role, error = %err, "refusing tunnel peer");
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Rejection(err)))))
    }

    fn tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }
}

impl ServerCertVerifier for SvidVerifier {
    /// The server name is ignored: the SPIFFE id is the server's name.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for SvidVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Carries the reason a peer was refused into rustls's error, whose `Display` shows it
/// through `Debug`: so `Debug` here prints the message, and the connection error reads
/// "invalid peer certificate: Other(OtherError(peer certificate: not signed by the trust
/// domain's authority))" on both sides (quinn sends the reason with the TLS alert).
struct Rejection(TunnelError);

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// ring's provider with AES-128-GCM first: QUIC seals every packet, and AES-128 runs 10 rounds
/// where AES-256 runs 14 (rustls lists AES-256 first). Both are TLS 1.3's; QUIC's initial
/// packets use AES-128 anyway.
fn provider() -> CryptoProvider {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}
