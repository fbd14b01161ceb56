//! rustls configurations for agent-to-agent QUIC: TLS 1.3 only, ALPN [`ALPN`], the ring
//! provider, both sides presenting their SVID and verifying the other's with
//! [`svid::verify`] instead of WebPKI name checks. Used by [`super::Endpoint`].

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
use crate::identity::svid::{self, PeerRole, Svid};

/// The application protocol both sides must agree on; the number is the tunnel protocol's
/// version, bumped when [`super::frame`] or the stream semantics change incompatibly.
pub const ALPN: &[u8] = b"beemesh/1";

static TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// What an agent needs for TLS: its SVID and the trust domain it verifies peers against.
#[derive(Clone)]
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
    spiffe_uri: String,
    roots: Arc<[CertificateDer<'static>]>,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("spiffe_uri", &self.spiffe_uri)
            .field("trust_domain", &self.trust_domain)
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Our `svid`, and the authority certificates `roots` of `trust_domain` that peers'
    /// certificates must chain to. Refuses an SVID that peers would refuse (another trust
    /// domain, not signed by `roots`, expired): better a clear error now than every
    /// handshake failing later.
    pub fn new(
        svid: &Svid,
        roots: Vec<CertificateDer<'static>>,
        trust_domain: &str,
    ) -> Result<Self, TunnelError> {
        let chain = std::slice::from_ref(&svid.cert_der);
        for role in [PeerRole::Server, PeerRole::Client] {
            svid::verify(chain, &roots, trust_domain, role, SystemTime::now())
                .map_err(TunnelError::OwnSvid)?;
        }
        Ok(Self::unchecked(svid, roots, trust_domain))
    }

    /// Like [`Self::new`] without checking the SVID; tests use it to play a misconfigured peer.
    pub(crate) fn unchecked(svid: &Svid, roots: Vec<CertificateDer<'static>>, trust_domain: &str) -> Self {
        Self {
            cert: svid.cert_der.clone(),
            key: Arc::new(svid.key_der.clone_key()),
            spiffe_uri: svid.spiffe_uri.clone(),
            roots: roots.into(),
            trust_domain: trust_domain.to_owned(),
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }

    /// Our SPIFFE id.
    pub fn spiffe_uri(&self) -> &str {
        &self.spiffe_uri
    }

    /// The server side: requires a client certificate, verified for clientAuth.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TunnelError> {
        let verifier = Arc::new(SvidVerifier::new(self, PeerRole::Client, None));
        let mut config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(TLS13_ONLY)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key_der())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    /// The client side: the server's certificate is verified for serverAuth and, with
    /// `expected_peer`, must carry exactly that SPIFFE id.
    pub fn client_config(&self, expected_peer: Option<&str>) -> Result<rustls::ClientConfig, TunnelError> {
        let verifier = Arc::new(SvidVerifier::new(self, PeerRole::Server, expected_peer));
        let mut config = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(TLS13_ONLY)?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_auth_cert(vec![self.cert.clone()], self.key_der())?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(config)
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

/// The peer's SPIFFE id on an established connection: the URI SAN of the leaf it presented,
/// which the handshake already verified.
pub fn peer_spiffe_uri(conn: &quinn::Connection) -> Result<String, TunnelError> {
    let chain = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(TunnelError::NoPeerIdentity)?;
    let leaf = chain.first().ok_or(TunnelError::NoPeerIdentity)?;
    Ok(svid::spiffe_uri_of(leaf)?)
}

/// Verifies the peer's chain with [`svid::verify`] and its handshake signature with the
/// provider's algorithms; one instance per role (and per expected server).
#[derive(Debug)]
struct SvidVerifier {
    roots: Arc<[CertificateDer<'static>]>,
    trust_domain: String,
    role: PeerRole,
    expected: Option<String>,
    algs: WebPkiSupportedAlgorithms,
}

impl SvidVerifier {
    fn new(identity: &TlsIdentity, role: PeerRole, expected: Option<&str>) -> Self {
        Self {
            roots: identity.roots.clone(),
            trust_domain: identity.trust_domain.clone(),
            role,
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
        let found = svid::verify(&chain, &self.roots, &self.trust_domain, self.role, now)
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
