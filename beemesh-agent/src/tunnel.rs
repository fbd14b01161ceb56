//! Tunnels between hosts: workload traffic rides QUIC streams to the destination host's
//! agent, with mutual TLS. The connecting side presents the SVID of the workload whose
//! traffic it carries (one connection per source identity and destination host, its streams
//! multiplexed, as ztunnel's HBONE); the accepting agent presents its host certificate. Each
//! side checks the role it expects ([`tls`]). Every stream opens with a
//! [`frame::StreamHeader`] naming the sending workload and the target; its `source` must be
//! the identity the connection proved, or the stream is refused. Headers are read
//! concurrently, each within a deadline, so a stream that never sends one stalls nothing
//! else. The forwarding path (and `app`, which will wire it) calls [`Endpoint`]; the sans-IO
//! header codec is [`frame`].

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex, Semaphore};

use nix::sys::socket::{setsockopt, sockopt};
use quinn::{IdleTimeout, TransportConfig, VarInt};

use crate::identity::svid::SvidError;

pub mod datagrams;
pub mod frame;
pub mod splice;
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
/// How long a new stream may take to send its header.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(5);
/// Streams of one connection whose header is being read at once; further streams wait in
/// QUIC (bounded by [`MAX_STREAMS`]) until one of these is done.
const HEADER_READS: usize = 64;
/// Accepted streams waiting for [`Connection::accept_stream`].
const ACCEPTED_QUEUE: usize = 64;

/// Application error code for a stream refused because of its header (malformed, late, or
/// claiming a source the connection did not prove).
pub const BAD_HEADER: VarInt = VarInt::from_u32(1);
/// Application error code of an orderly connection close.
const CLOSED: VarInt = VarInt::from_u32(0);

/// Errors of the tunnel endpoint, its TLS set-up and its streams.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Binding or configuring the UDP socket failed.
    #[error("udp socket: {0}")]
    Socket(#[from] std::io::Error),
    /// Our own certificate would not pass a peer's check.
    #[error("our certificate: {0}")]
    OwnCert(#[source] SvidError),
    /// A host identity's key is not the ed25519 key its certificate is issued for.
    #[error("the host key is not an ed25519 key")]
    HostKey,
    /// An identity used on the wrong side (a workload SVID to accept, a host to connect).
    #[error("{0}")]
    WrongSide(&'static str),
    /// A stream's header named another source than the identity its connection proved.
    #[error("stream header claims source {claimed}, but the connection proved {proven}")]
    ForgedSource {
        /// What the header says.
        claimed: String,
        /// The SPIFFE id the peer's certificate proved.
        proven: String,
    },
    /// A stream sent no complete header within [`HEADER_DEADLINE`].
    #[error("no stream header within {0:?}")]
    HeaderTimeout(Duration),
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

/// A host's QUIC endpoint: it accepts tunnels as the host and opens them for its workloads.
/// Cheap to clone; all clones share the socket, which closes when the last clone and
/// connection are gone.
#[derive(Clone, Debug)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    identity: Arc<TlsIdentity>,
    /// The connecting side's: the peer may open no streams to it.
    client_transport: Arc<TransportConfig>,
    header_deadline: Duration,
}

/// Keys an endpoint keeps across restarts of its agent, derived from the host's key: QUIC's
/// stateless reset key and the key its connection ids are made with. A restarted agent then
/// recognises the connections of its previous instance and answers their packets with a
/// stateless reset (RFC 9000 §10.3), and peers drop them at once: else a peer's pooled
/// connection to the dead instance looked open until its idle timeout (30 s), and the streams
/// opened on it went nowhere.
#[derive(Clone, Copy)]
pub struct RestartKeys {
    reset: [u8; 32],
    connection_ids: u64,
}

impl std::fmt::Debug for RestartKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestartKeys(..)")
    }
}

impl RestartKeys {
    /// From the host's libp2p keypair; `None` for a key type that derives no secrets.
    pub fn of(keypair: &libp2p_identity::Keypair) -> Option<Self> {
        let reset = keypair.derive_secret(b"beemesh tunnel stateless reset key")?;
        let ids = keypair.derive_secret(b"beemesh tunnel connection id key")?;
        let connection_ids = u64::from_le_bytes(ids[..8].try_into().ok()?);
        Some(Self { reset, connection_ids })
    }

    fn endpoint_config(self) -> quinn::EndpointConfig {
        let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.reset);
        let mut config = quinn::EndpointConfig::new(Arc::new(reset));
        let key = self.connection_ids;
        config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(key)));
        config
    }
}

impl Endpoint {
    /// Binds `addr` (UDP) and accepts tunnels as `identity` (a [`TlsIdentity::host`]), from
    /// workloads whose SVIDs chain to its trust domain's roots. Needs a tokio runtime. Its
    /// reset and connection id keys are this process's own (tests and benches);
    /// [`Self::bind_keyed`] gives an agent's.
    pub fn bind(addr: SocketAddr, identity: TlsIdentity) -> Result<Self, TunnelError> {
        Self::bind_with(addr, identity, quinn::EndpointConfig::default())
    }

    /// [`Self::bind`] with keys that outlive the process ([`RestartKeys`]).
    pub fn bind_keyed(
        addr: SocketAddr,
        identity: TlsIdentity,
        keys: RestartKeys,
    ) -> Result<Self, TunnelError> {
        Self::bind_with(addr, identity, keys.endpoint_config())
    }

    fn bind_with(
        addr: SocketAddr,
        identity: TlsIdentity,
        endpoint_config: quinn::EndpointConfig,
    ) -> Result<Self, TunnelError> {
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
        let inner =
            quinn::Endpoint::new(endpoint_config, Some(server), socket, Arc::new(quinn::TokioRuntime))?;
        tracing::debug!(addr = %inner.local_addr()?, id = identity.spiffe_uri(), "tunnel endpoint bound");
        let mut client = transport_config();
        client.max_concurrent_bidi_streams(VarInt::from_u32(0));
        Ok(Self {
            inner,
            identity: Arc::new(identity),
            client_transport: Arc::new(client),
            header_deadline: HEADER_DEADLINE,
        })
    }

    /// The same endpoint with another deadline for stream headers (tests).
    pub fn with_header_deadline(mut self, deadline: Duration) -> Self {
        self.header_deadline = deadline;
        self
    }

    /// The bound address (with the port chosen when binding port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, TunnelError> {
        Ok(self.inner.local_addr()?)
    }

    /// This host's SPIFFE id, as peers see it.
    pub fn spiffe_uri(&self) -> &str {
        self.identity.spiffe_uri()
    }

    /// Connects to the agent of `host` (a node name) at `peer`, presenting `workload` (a
    /// [`TlsIdentity::workload`]); the handshake fails unless the peer proves `host`'s
    /// host certificate.
    pub async fn connect(
        &self,
        peer: SocketAddr,
        workload: &TlsIdentity,
        host: &str,
    ) -> Result<Connection, TunnelError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(workload.client_config(host)?)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.client_transport.clone());
        let conn = self.inner.connect_with(config, peer, SERVER_NAME)?.await?;
        // The host opens no streams to a workload: nothing to accept on this side.
        Connection::established(conn, workload, None)
    }

    /// The next connection attempt from a peer; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Incoming> {
        let (identity, deadline) = (self.identity.clone(), self.header_deadline);
        self.inner.accept().await.map(|inner| Incoming { inner, identity, header_deadline: deadline })
    }

    /// Closes every connection at once and stops accepting.
    pub fn close(&self) {
        self.inner.close(CLOSED, b"endpoint closed");
    }

    /// Waits until every connection of this endpoint is closed and its close has been sent,
    /// so that peers learn of it at once instead of after their idle timeout. Call it after
    /// [`Self::close`] or [`Connection::close`], before the runtime that drives the endpoint
    /// ends.
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
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
    identity: Arc<TlsIdentity>,
    header_deadline: Duration,
}

impl Incoming {
    /// Where the attempt comes from (not yet authenticated).
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Runs the handshake: the peer must present a workload SVID of our trust domain.
    pub async fn handshake(self) -> Result<Connection, TunnelError> {
        Connection::established(self.inner.await?, &self.identity, Some(self.header_deadline))
    }
}

/// What the stream acceptor hands [`Connection::accept_stream`].
type Accepted = Result<(StreamHeader, SendStream, RecvStream), TunnelError>;

/// An authenticated tunnel connection. Cheap to clone; the connection closes when the last
/// clone is dropped.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: quinn::Connection,
    peer_id: Arc<str>,
    peer_host: Option<Arc<str>>,
    accepted: Arc<Mutex<mpsc::Receiver<Accepted>>>,
}

impl Connection {
    /// `accept`: the header deadline of the streams the peer opens (the accepting side);
    /// `None`: the peer opens none (the connecting side).
    fn established(
        inner: quinn::Connection,
        ours: &TlsIdentity,
        accept: Option<Duration>,
    ) -> Result<Self, TunnelError> {
        let (peer_id, peer_host) = ours.peer_identity(&inner)?;
        tracing::debug!(peer = %peer_id, host = ?peer_host, remote = %inner.remote_address(), "tunnel connection established");
        let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
        let peer_id: Arc<str> = peer_id.into();
        if let Some(deadline) = accept {
            tokio::spawn(accept_streams(inner.clone(), peer_id.clone(), deadline, tx));
        }
        Ok(Self { inner, peer_id, peer_host: peer_host.map(Into::into), accepted: Arc::new(Mutex::new(rx)) })
    }

    /// The peer's SPIFFE id, verified in the handshake: the workload's on the accepting side,
    /// the host's on the connecting side.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The host the peer stands for: the accepted workload's issuing host (`None` when a
    /// root signed its SVID), or the connected host. The agent checks that the workload runs
    /// there before it forwards anything.
    pub fn peer_host(&self) -> Option<&str> {
        self.peer_host.as_deref()
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

    /// The next stream the peer opened whose header has arrived, with the receive half left
    /// at the first payload byte. A stream whose header is malformed, late or names another
    /// source than [`Self::peer_id`] is refused (stopped and reset with [`BAD_HEADER`]) and
    /// reported as an error; the connection stays up for other streams. Once the connection
    /// is gone, its error.
    pub async fn accept_stream(&self) -> Result<(StreamHeader, SendStream, RecvStream), TunnelError> {
        match self.accepted.lock().await.recv().await {
            Some(accepted) => accepted,
            None => Err(TunnelError::Connection(self.inner.closed().await)),
        }
    }

    /// Closes the connection and all its streams.
    pub fn close(&self) {
        self.inner.close(CLOSED, b"closed");
    }

    /// Whether the connection is closed (by either side, or by timeout).
    pub fn is_closed(&self) -> bool {
        self.inner.close_reason().is_some()
    }

    /// Waits until the connection is closed, by either side or by timeout, and says why.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.inner.closed().await
    }
}

/// Accepts the peer's streams and reads their headers concurrently (at most [`HEADER_READS`]
/// at once, each within `deadline`), handing each stream or its refusal to `out` in the order
/// headers complete. Ends with the connection, or when every [`Connection`] is dropped.
async fn accept_streams(
    conn: quinn::Connection,
    peer_id: Arc<str>,
    deadline: Duration,
    out: mpsc::Sender<Accepted>,
) {
    let reads = Arc::new(Semaphore::new(HEADER_READS));
    loop {
        let Ok(permit) = reads.clone().acquire_owned().await else { return };
        // Every `Connection` clone gone: stop, so that this task does not keep it open.
        let (mut send, mut recv) = tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok(pair) => pair,
                Err(_) => return,
            },
            () = out.closed() => return,
        };
        let (out, peer_id) = (out.clone(), peer_id.clone());
        tokio::spawn(async move {
            let header = match tokio::time::timeout(deadline, read_header(&mut recv)).await {
                Ok(Ok(h)) if h.source == *peer_id => Ok(h),
                Ok(Ok(h)) => {
                    Err(TunnelError::ForgedSource { claimed: h.source, proven: peer_id.to_string() })
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(TunnelError::HeaderTimeout(deadline)),
            };
            drop(permit);
            let accepted = match header {
                Ok(header) => Ok((header, send, recv)),
                Err(err) => {
                    tracing::warn!(peer = %peer_id, error = %err, "refusing tunnel stream");
                    // Either half may already be gone with the peer; nothing is left to undo then.
                    let _ = recv.stop(BAD_HEADER);
                    let _ = send.reset(BAD_HEADER);
                    Err(err)
                }
            };
            let _ = out.send(accepted).await;
        });
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
