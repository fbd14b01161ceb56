//! Real QUIC between endpoints on 127.0.0.1, each on its own ephemeral port.

use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::*;
use crate::identity::svid::Authority;

const TD: &str = "beemesh.local";
const A: &str = "spiffe://beemesh.local/host/a";
const B: &str = "spiffe://beemesh.local/host/b";
const HOUR: Duration = Duration::from_secs(3600);
/// Bounds every wait, so that a broken handshake fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

fn authority(td: &str) -> Authority {
    Authority::generate(td, SystemTime::now(), 24 * HOUR).expect("generates")
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn agent(ca: &Authority, id: &str) -> Endpoint {
    let svid = ca.issue(id, SystemTime::now(), HOUR).expect("issues");
    Endpoint::bind(localhost(), &svid, vec![ca.cert_der()], ca.trust_domain()).expect("binds")
}

fn header() -> StreamHeader {
    StreamHeader {
        source: "spiffe://beemesh.local/ns/shop/sa/web".to_owned(),
        target: Target { host: "10.42.0.7".to_owned(), port: 8080, proto: Proto::Tcp },
    }
}

/// Accepts one connection attempt on `server` and returns the handshake's outcome.
fn accept_one(server: &Endpoint) -> JoinHandle<Result<Connection, TunnelError>> {
    let server = server.clone();
    tokio::spawn(async move {
        let incoming = timeout(WAIT, server.accept()).await.expect("attempt in time").expect("open");
        timeout(WAIT, incoming.handshake()).await.expect("handshake in time")
    })
}

/// A client refused by the server: its handshake may complete on its side first (TLS 1.3
/// clients send their certificate last), but then the server closes the connection with the
/// TLS alert and the reason.
async fn client_is_refused(client: Result<Connection, TunnelError>, reason: &str) {
    let why = match client {
        Ok(conn) => timeout(WAIT, conn.closed()).await.expect("closed in time").to_string(),
        Err(err) => err.to_string(),
    };
    assert!(why.contains("aborted by peer: the cryptographic handshake failed"), "{why}");
    assert!(why.contains(reason), "{why}");
}

#[tokio::test]
async fn mutual_tls_stream_echoes_a_mebibyte() {
    let ca = authority(TD);
    let (a, b) = (agent(&ca, A), agent(&ca, B));
    let b_addr = b.local_addr().expect("bound");
    assert_ne!(b_addr.port(), 0);
    assert_eq!(b.spiffe_uri(), B);

    let server = tokio::spawn(async move {
        let incoming = b.accept().await.expect("attempt");
        let conn = incoming.handshake().await.expect("handshake");
        assert_eq!(conn.peer_id(), A);
        let (header, mut send, mut recv) = conn.accept_stream().await.expect("stream");
        let data = recv.read_to_end(2 << 20).await.expect("payload");
        send.write_all(&data).await.expect("echo");
        send.finish().expect("finish");
        // Dropping the connection would cut the echo short: wait for the client to close.
        conn.closed().await;
        header
    });

    let conn = timeout(WAIT, a.connect(b_addr, Some(B))).await.expect("in time").expect("connects");
    assert_eq!(conn.peer_id(), B);
    assert_eq!(conn.remote_address(), b_addr);
    let (mut send, mut recv) = conn.open(&header()).await.expect("opens");
    let payload: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 + i / 4096) as u8).collect();
    send.write_all(&payload).await.expect("sends");
    send.finish().expect("finish");
    let echo = timeout(WAIT, recv.read_to_end(2 << 20)).await.expect("in time").expect("echo");
    assert_eq!(echo.len(), payload.len());
    assert!(echo == payload, "echo differs");
    conn.close();
    assert_eq!(timeout(WAIT, server).await.expect("in time").expect("server ok"), header());
}

#[tokio::test]
async fn client_of_another_authority_is_refused() {
    let ours = authority(TD);
    let theirs = authority(TD);
    let server = agent(&ours, B);
    // The intruder trusts our authority, so only the server's check can stop it.
    let svid = theirs.issue(A, SystemTime::now(), HOUR).expect("issues");
    let roots = vec![ours.cert_der(), theirs.cert_der()];
    let intruder = Endpoint::bind(localhost(), &svid, roots, TD).expect("binds");

    let accepted = accept_one(&server);
    let client = intruder.connect(server.local_addr().expect("bound"), None).await;
    let err = accepted.await.expect("joins").expect_err("refused");
    assert!(err.to_string().contains("not signed by the trust domain's authority"), "{err}");
    client_is_refused(client, "not signed by the trust domain's authority").await;
}

#[tokio::test]
async fn unexpected_server_is_refused() {
    let ca = authority(TD);
    let (a, b) = (agent(&ca, A), agent(&ca, B));
    let accepted = accept_one(&b);
    let other = "spiffe://beemesh.local/host/c";
    let err = a.connect(b.local_addr().expect("bound"), Some(other)).await.expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains(&format!("peer is {B}, expected {other}")), "{msg}");
    assert!(matches!(err, TunnelError::Connection(quinn::ConnectionError::TransportError(_))), "{err:?}");
    assert!(accepted.await.expect("joins").is_err());
}

#[tokio::test]
async fn client_of_another_trust_domain_is_refused() {
    let ca = authority(TD);
    let other = authority("other.local");
    let server = agent(&ca, B);
    // Its SVID names other.local; it trusts our authority for the server's certificate. A
    // properly configured agent refuses to start like this, so build the identity by hand.
    let svid = other.issue("spiffe://other.local/host/a", SystemTime::now(), HOUR).expect("issues");
    let roots = vec![ca.cert_der(), other.cert_der()];
    let err = Endpoint::bind(localhost(), &svid, roots.clone(), TD).expect_err("own svid checked");
    assert_eq!(err.to_string(), "our svid: trust domain other.local, expected beemesh.local");
    let intruder =
        Endpoint::with_identity(localhost(), TlsIdentity::unchecked(&svid, roots, TD)).expect("binds");

    let accepted = accept_one(&server);
    let client = intruder.connect(server.local_addr().expect("bound"), Some(B)).await;
    let err = accepted.await.expect("joins").expect_err("refused");
    assert!(err.to_string().contains("trust domain other.local, expected beemesh.local"), "{err}");
    client_is_refused(client, "trust domain other.local, expected beemesh.local").await;
}

#[tokio::test]
async fn bad_headers_refuse_only_their_stream() {
    let ca = authority(TD);
    let (a, b) = (agent(&ca, A), agent(&ca, B));
    let accepted = accept_one(&b);
    let client = a.connect(b.local_addr().expect("bound"), Some(B)).await.expect("connects");
    let server = accepted.await.expect("joins").expect("handshake");

    let mut refused = Vec::new();
    for garbage in [&[frame::VERSION, 0xff, 0xff][..], b"GET / HTTP/1.1\r\n"] {
        let (mut send, recv) = client.inner.open_bi().await.expect("opens");
        send.write_all(garbage).await.expect("sends");
        refused.push((send, recv));
        let err = timeout(WAIT, server.accept_stream()).await.expect("in time").expect_err("bad header");
        assert!(matches!(err, TunnelError::Header(_)), "{err}");
    }
    assert!(refused.len() == 2);
    let (send, _) = &mut refused[0];
    let code = timeout(WAIT, send.stopped()).await.expect("in time").expect("stopped");
    assert_eq!(code, Some(BAD_HEADER));

    // A stream ending inside its header is refused too.
    let (mut send, _recv) = client.inner.open_bi().await.expect("opens");
    send.write_all(&[frame::VERSION, 0]).await.expect("sends");
    send.finish().expect("finish");
    let err = timeout(WAIT, server.accept_stream()).await.expect("in time").expect_err("truncated");
    assert!(matches!(err, TunnelError::Read(quinn::ReadExactError::FinishedEarly(2))), "{err}");

    let (mut send, mut recv) = client.open(&header()).await.expect("opens");
    send.write_all(b"ping").await.expect("sends");
    send.finish().expect("finish");
    let (got, mut reply, mut body) =
        timeout(WAIT, server.accept_stream()).await.expect("in time").expect("good stream");
    assert_eq!(got, header());
    assert_eq!(body.read_to_end(64).await.expect("payload"), b"ping");
    reply.write_all(b"pong").await.expect("replies");
    reply.finish().expect("finish");
    assert_eq!(timeout(WAIT, recv.read_to_end(64)).await.expect("in time").expect("reply"), b"pong");
    client.close();
}
