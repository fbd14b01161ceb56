//! Agent-to-agent tunnels: workload traffic between hosts rides QUIC streams between the
//! agents, with mutual TLS on each agent's SVID. Every stream opens with a
//! [`frame::StreamHeader`] naming the sending workload and the target. The forwarding
//! path (and `app`, which will wire it) calls [`Endpoint`]; TLS is in [`tls`], the
//! sans-IO header codec in [`frame`].

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;

use crate::identity::svid::{Svid, SvidError};

pub mod frame;
pub mod tls;

pub use frame::{FrameError, Proto, StreamHeader, Target};
pub use quinn::{RecvStream, SendStream};
pub use tls::TlsIdentity;

/// The name the client puts in its handshake; never checked, the SPIFFE id is the name.
const SERVER_NAME: &str = "agent.beemesh";

/// Per-stream receive window: one stream carries one workload connection, and the
/// machine notes measured large windows as needed for multi-Gbit/s on a single stream.
const STREAM_WINDOW: u32 = 8 << 20;
/// Connection receive and send windows: room for a few streams at full speed.
const CONNECTION_WINDOW: u32 = 32 << 20;
/// Keeps NAT and conntrack state alive and notices a dead peer well before the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(5);
/// A peer silent this long (six missed keep-alives) is gone.
const IDLE_TIMEOUT_MS: u32 = 30_000;
/// Concurrent streams a peer may open: each is one workload connection.
const MAX_STREAMS: u32 = 4096;
/// Socket buffers; 4 MiB is what net.core.*mem_max allows inside a namespace.
const SOCKET_BUFFER: usize = 4 << 20;

/// Application error code for a stream refused because of its header.
pub const BAD_HEADER: VarInt = VarInt::from_u32(1);
/// Application error code of an orderly connection close.
const CLOSED: VarInt = VarInt::from_u32(0);

/// Errors of the tunnel endpoint, its TLS set-up and its streams.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Binding or configuring the UDP socket failed.
    #[error("udp socket: {0}")]
    Socket(#[from] std::io::Error),
    /// Our own SVID would not pass a peer's check.
    #[error("our svid: {0}")]
    OwnSvid(#[source] SvidError),
    /// rustls refused the configuration (key, certificate or protocol versions).
    #[error("tls configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The crypto provider lacks the cipher suite QUIC's initial packets need.
    #[error("tls configuration: {0}")]
    QuicTls(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// The peer's certificate failed [`crate::identity::svid::verify`].
    #[error("peer certificate: {0}")]
    PeerRejected(#[from] SvidError),
    /// The server proved another SPIFFE id than the one asked for.
    #[error("peer is {found}, expected {expected}")]
    UnexpectedPeer {
        /// The SPIFFE id asked for.
        expected: String,
        /// The SPIFFE id presented.
        found: String,
    },
    /// No certificate on an established connection (cannot happen with our TLS configs).
    #[error("peer presented no certificate")]
    NoPeerIdentity,
    /// The connection could not be started (bad address, endpoint closed).
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed or the connection was lost.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing a stream failed.
    #[error("stream write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading a stream's header failed or the stream ended inside it.
    #[error("stream read: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// A stream opened with a header that does not decode.
    #[error("stream header: {0}")]
    Header(#[from] FrameError),
}

/// A QUIC endpoint that both accepts and opens tunnels. Cheap to clone; all clones share
/// the socket, which closes when the last clone and connection are gone.
#[derive(Clone, Debug)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    identity: Arc<TlsIdentity>,
    transport: Arc<TransportConfig>,
}

impl Endpoint {
    /// Binds `addr` (UDP) and serves tunnels as `svid`, trusting peers whose SVIDs chain to
    /// `roots` and belong to `trust_domain`. Needs a tokio runtime.
    pub fn bind(
        addr: SocketAddr,
        svid: &Svid,
        roots: Vec<CertificateDer<'static>>,
        trust_domain: &str,
    ) -> Result<Self, TunnelError> {
        Self::with_identity(addr, TlsIdentity::new(svid, roots, trust_domain)?)
    }

    fn with_identity(addr: SocketAddr, identity: TlsIdentity) -> Result<Self, TunnelError> {
        let transport = Arc::new(transport_config());
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(identity.server_config()?)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server.transport_config(transport.clone());
        let socket = UdpSocket::bind(addr)?;
        // Smaller buffers only cost throughput: go on with what the kernel allows.
        for (what, result) in [
            ("SO_RCVBUF", setsockopt(&socket, sockopt::RcvBuf, &SOCKET_BUFFER)),
            ("SO_SNDBUF", setsockopt(&socket, sockopt::SndBuf, &SOCKET_BUFFER)),
        ] {
            if let Err(error) = result {
                tracing::warn!(option = what, %error, "cannot size the tunnel socket buffer");
            }
        }
        let inner = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        tracing::debug!(addr = %inner.local_addr()?, id = identity.spiffe_uri(), "tunnel endpoint bound");
        Ok(Self { inner, identity: Arc::new(identity), transport })
    }

    /// The bound address (with the port chosen when binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, TunnelError> {
        Ok(self.inner.local_addr()?)
    }

    /// Our SPIFFE id, as peers see it.
    pub fn spiffe_uri(&self) -> &str {
        self.identity.spiffe_uri()
    }

    /// Connects to the agent at `peer`; with `expected_peer`, the handshake fails unless the
    /// peer proves exactly that SPIFFE id.
    pub async fn connect(
        &self,
        peer: SocketAddr,
        expected_peer: Option<&str>,
    ) -> Result<Connection, TunnelError> {
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(self.identity.client_config(expected_peer)?)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.transport.clone());
        let conn = self.inner.connect_with(config, peer, SERVER_NAME)?.await?;
        Connection::established(conn)
    }

    /// The next connection attempt from a peer; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Incoming> {
        self.inner.accept().await.map(|inner| Incoming { inner })
    }

    /// Closes every connection at once and stops accepting.
    pub fn close(&self) {
        self.inner.close(CLOSED, b"endpoint closed");
    }
}

fn transport_config() -> TransportConfig {
    let mut config = TransportConfig::default();
    config
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(IdleTimeout::from(VarInt::from_u32(IDLE_TIMEOUT_MS))));
    config
}

/// A peer's connection attempt, before the handshake.
#[derive(Debug)]
pub struct Incoming {
    inner: quinn::Incoming,
}

impl Incoming {
    /// Where the attempt comes from (not yet authenticated).
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Runs the handshake: the peer must present an SVID of our trust domain.
    pub async fn handshake(self) -> Result<Connection, TunnelError> {
        Connection::established(self.inner.await?)
    }
}

/// An authenticated connection to another agent. Cheap to clone; the connection closes
/// when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: quinn::Connection,
    peer_id: Arc<str>,
}

impl Connection {
    fn established(inner: quinn::Connection) -> Result<Self, TunnelError> {
        let peer_id = tls::peer_spiffe_uri(&inner)?;
        tracing::debug!(peer = %peer_id, remote = %inner.remote_address(), "tunnel connection established");
        Ok(Self { inner, peer_id: peer_id.into() })
    }

    /// The peer agent's SPIFFE id, verified in the handshake.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The peer's UDP address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Opens a stream and sends `header` on it; the payload follows on the returned
    /// send half.
    pub async fn open(&self, header: &StreamHeader) -> Result<(SendStream, RecvStream), TunnelError> {
        let frame = frame::encode(header)?;
        let (mut send, recv) = self.inner.open_bi().await?;
        send.write_all(&frame).await?;
        Ok((send, recv))
    }

    /// The next stream the peer opens, with its header read; the receive half is left at the
    /// first payload byte. A stream with a bad header is refused (stopped and reset with
    /// [`BAD_HEADER`]) and reported as an error; the connection stays up for other streams.
    pub async fn accept_stream(&self) -> Result<(StreamHeader, SendStream, RecvStream), TunnelError> {
        let (mut send, mut recv) = self.inner.accept_bi().await?;
        match read_header(&mut recv).await {
            Ok(header) => Ok((header, send, recv)),
            Err(err) => {
                tracing::warn!(peer = %self.peer_id, error = %err, "refusing tunnel stream");
                // Either half may already be gone with the peer; nothing is left to undo then.
                let _ = recv.stop(BAD_HEADER);
                let _ = send.reset(BAD_HEADER);
                Err(err)
            }
        }
    }

    /// Closes the connection and all its streams.
    pub fn close(&self) {
        self.inner.close(CLOSED, b"closed");
    }

    /// Waits until the connection is closed, by either side or by timeout, and says why.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.inner.closed().await
    }
}

/// Reads exactly the header frame, so the payload stays in the stream.
async fn read_header(recv: &mut RecvStream) -> Result<StreamHeader, TunnelError> {
    let mut buf = Vec::new();
    loop {
        if let Some((header, _)) = frame::decode(&buf)? {
            return Ok(header);
        }
        let start = buf.len();
        buf.resize(frame::wanted(&buf)?, 0);
        recv.read_exact(&mut buf[start..]).await?;
    }
}

#[cfg(test)]
mod tests;
