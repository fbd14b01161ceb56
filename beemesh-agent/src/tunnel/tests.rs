//! Real QUIC between endpoints on 127.0.0.1, each on its own ephemeral port. Hosts and their
//! workloads' SVIDs are issued as the mesh issues them (`mesh::trust::issue`): a root, host
//! certificates on ed25519 keys, and per host a workload issuer.

use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::timeout;

use rustls::pki_types::CertificateDer;

use super::*;
use crate::identity::svid::{Authority, Expect};
use crate::mesh::trust::{generate_keypair, issue};

const TD: &str = "beemesh.local";
const WEB: &str = "spiffe://beemesh.local/ns/shop/sa/web";
const H2: &str = "spiffe://beemesh.local/beemesh/node/h2";
const HOUR: Duration = Duration::from_secs(3600);
/// Bounds every wait, so that a broken handshake fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

fn root(td: &str) -> Authority {
    Authority::generate(td, SystemTime::now(), 24 * HOUR).expect("generates")
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Host `node`'s identity under `root`: its certificate chain and ed25519 keypair.
fn host_cert(root: &Authority, node: &str) -> (Vec<CertificateDer<'static>>, libp2p_identity::Keypair) {
    let keypair = generate_keypair().expect("keypair");
    let cert = issue::host_cert(root, node, &keypair.public(), SystemTime::now(), HOUR).expect("issues");
    (vec![cert], keypair)
}

/// Host `node`'s tunnel endpoint under `root`.
fn host(root: &Authority, node: &str) -> Endpoint {
    let (chain, keypair) = host_cert(root, node);
    let id = TlsIdentity::host(chain, &keypair, vec![root.cert_der()], root.trust_domain()).expect("host");
    Endpoint::bind(localhost(), id).expect("binds")
}

/// The SVID of workload `id` on host `node`, with its host's workload issuer after it.
fn workload(root: &Authority, node: &str, id: &str) -> TlsIdentity {
    let ca = issue::workload_ca(root, node, SystemTime::now(), HOUR).expect("workload issuer");
    let svid = ca.issue(id, SystemTime::now(), HOUR).expect("issues");
    TlsIdentity::workload(&svid, &[ca.cert_der()], vec![root.cert_der()], root.trust_domain())
        .expect("workload")
}

fn header() -> StreamHeader {
    StreamHeader {
        source: WEB.to_owned(),
        pod: None,
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

/// `from` connects to `to` (host `host`) as `workload`: the client's outcome and the server's
/// handshake.
async fn attempt(
    from: &Endpoint,
    to: &Endpoint,
    workload: &TlsIdentity,
    host: &str,
) -> (Result<Connection, TunnelError>, Result<Connection, TunnelError>) {
    let accepted = accept_one(to);
    let client = from.connect(to.local_addr().expect("bound"), workload, host).await;
    (client, accepted.await.expect("joins"))
}

/// A connection `from` -> `to` as `workload`, both sides of it.
async fn connected(from: &Endpoint, to: &Endpoint, workload: &TlsIdentity) -> (Connection, Connection) {
    let (client, server) = attempt(from, to, workload, "h2").await;
    (client.expect("connects"), server.expect("handshake"))
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
async fn a_workload_reaches_a_host_and_a_stream_echoes_a_mebibyte() {
    let ca = root(TD);
    let (h1, h2) = (host(&ca, "h1"), host(&ca, "h2"));
    let h2_addr = h2.local_addr().expect("bound");
    assert_ne!(h2_addr.port(), 0);
    assert_eq!(h2.spiffe_uri(), H2);

    let server = tokio::spawn(async move {
        let incoming = h2.accept().await.expect("attempt");
        let conn = incoming.handshake().await.expect("handshake");
        // The workload's identity, and the host whose issuer vouches for it.
        assert_eq!((conn.peer_id(), conn.peer_host()), (WEB, Some("h1")));
        let (header, mut send, mut recv) = conn.accept_stream().await.expect("stream");
        let data = recv.read_to_end(2 << 20).await.expect("payload");
        send.write_all(&data).await.expect("echo");
        send.finish().expect("finish");
        // Dropping the connection would cut the echo short: wait for the client to close.
        conn.closed().await;
        header
    });

    let web = workload(&ca, "h1", WEB);
    let conn = timeout(WAIT, h1.connect(h2_addr, &web, "h2")).await.expect("in time").expect("connects");
    assert_eq!((conn.peer_id(), conn.peer_host()), (H2, Some("h2")));
    assert_eq!(conn.remote_address(), h2_addr);
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
async fn a_workload_of_another_authority_is_refused() {
    let (ours, theirs) = (root(TD), root(TD));
    let (h1, h2) = (host(&ours, "h1"), host(&ours, "h2"));
    // The intruder trusts our root too, so only the server's check can stop it.
    let ca = issue::workload_ca(&theirs, "h1", SystemTime::now(), HOUR).expect("issuer");
    let svid = ca.issue(WEB, SystemTime::now(), HOUR).expect("issues");
    let roots = vec![ours.cert_der(), theirs.cert_der()];
    let intruder = TlsIdentity::workload(&svid, &[ca.cert_der()], roots, TD).expect("valid for itself");

    let (client, server) = attempt(&h1, &h2, &intruder, "h2").await;
    let err = server.expect_err("refused");
    assert!(err.to_string().contains("not signed by the trust domain's authority"), "{err}");
    client_is_refused(client, "not signed by the trust domain's authority").await;
}

#[tokio::test]
async fn another_host_than_the_one_asked_for_is_refused() {
    let ca = root(TD);
    let (h1, h2) = (host(&ca, "h1"), host(&ca, "h2"));
    let accepted = accept_one(&h2);
    let web = workload(&ca, "h1", WEB);
    let err = h1.connect(h2.local_addr().expect("bound"), &web, "h3").await.expect_err("refused");
    let msg = err.to_string();
    assert!(msg.contains(&format!("peer is {H2}, expected spiffe://beemesh.local/beemesh/node/h3")), "{msg}");
    assert!(matches!(err, TunnelError::Connection(quinn::ConnectionError::TransportError(_))), "{err:?}");
    assert!(accepted.await.expect("joins").is_err());
}

#[tokio::test]
async fn a_workload_of_another_trust_domain_is_refused() {
    let (ca, other) = (root(TD), root("other.local"));
    let (h1, h2) = (host(&ca, "h1"), host(&ca, "h2"));
    // Its SVID names other.local; it trusts our root for the server's certificate. A
    // properly configured agent refuses to use it, so build the identity by hand.
    let issuer = issue::workload_ca(&other, "h1", SystemTime::now(), HOUR).expect("issuer");
    let svid = issuer.issue("spiffe://other.local/ns/shop/sa/web", SystemTime::now(), HOUR).expect("issues");
    let roots = vec![ca.cert_der(), other.cert_der()];
    let err = TlsIdentity::workload(&svid, &[issuer.cert_der()], roots.clone(), TD).expect_err("checked");
    assert_eq!(err.to_string(), "our certificate: trust domain other.local, expected beemesh.local");
    let chain = vec![svid.cert_der.clone(), issuer.cert_der()];
    let intruder = TlsIdentity::unchecked(chain, svid.key_der.clone_key(), Expect::Workload, roots, TD);

    let (client, server) = attempt(&h1, &h2, &intruder, "h2").await;
    let err = server.expect_err("refused");
    assert!(err.to_string().contains("trust domain other.local, expected beemesh.local"), "{err}");
    client_is_refused(client, "trust domain other.local, expected beemesh.local").await;
}

#[tokio::test]
async fn a_workload_svid_never_passes_as_a_host() {
    let ca = root(TD);
    let h1 = host(&ca, "h1");
    // A pod's SVID issued under the path a host would have is refused by its issuer; one
    // under its own path is no host certificate: the agent will not accept with it...
    let issuer = issue::workload_ca(&ca, "h2", SystemTime::now(), HOUR).expect("issuer");
    assert!(issuer.issue(H2, SystemTime::now(), HOUR).is_err(), "a workload issuer signed a host id");
    let svid = issuer.issue(WEB, SystemTime::now(), HOUR).expect("issues");
    let chain = vec![svid.cert_der.clone(), issuer.cert_der()];
    let (_, keypair) = host_cert(&ca, "h2");
    let err = TlsIdentity::host(chain.clone(), &keypair, vec![ca.cert_der()], TD).expect_err("not a host");
    assert!(err.to_string().contains("a workload SVID"), "{err}");
    // ...and a pod that plays the agent with it is refused by the connecting side.
    let fake = TlsIdentity::unchecked(chain, svid.key_der.clone_key(), Expect::Host, vec![ca.cert_der()], TD);
    let fake_h2 = Endpoint::bind(localhost(), fake).expect("binds");
    let accepted = accept_one(&fake_h2);
    let web = workload(&ca, "h1", WEB);
    let err = h1.connect(fake_h2.local_addr().expect("bound"), &web, "h2").await.expect_err("refused");
    assert!(err.to_string().contains("a workload SVID"), "{err}");
    assert!(accepted.await.expect("joins").is_err());
}

#[tokio::test]
async fn a_host_certificate_never_passes_as_a_workload() {
    let ca = root(TD);
    let (h1, h2) = (host(&ca, "h1"), host(&ca, "h2"));
    let (chain, keypair) = host_cert(&ca, "h1");
    let key = tls::ed25519_pkcs8(&keypair).expect("ed25519");
    let err = TlsIdentity::workload(
        &crate::identity::svid::Svid {
            cert_der: chain[0].clone(),
            key_der: key.clone_key(),
            not_before: SystemTime::now(),
            issued: SystemTime::now(),
            not_after: SystemTime::now() + HOUR,
            spiffe_uri: "spiffe://beemesh.local/beemesh/node/h1".into(),
        },
        &[],
        vec![ca.cert_der()],
        TD,
    )
    .expect_err("not a workload");
    assert!(err.to_string().contains("a host certificate"), "{err}");
    let agent_as_workload = TlsIdentity::unchecked(chain, key, Expect::Workload, vec![ca.cert_der()], TD);
    let (client, server) = attempt(&h1, &h2, &agent_as_workload, "h2").await;
    let err = server.expect_err("refused");
    assert!(err.to_string().contains("a host certificate"), "{err}");
    client_is_refused(client, "a host certificate").await;
}

#[tokio::test]
async fn bad_headers_and_forged_sources_refuse_only_their_stream() {
    let ca = root(TD);
    let (h1, h2) = (host(&ca, "h1"), host(&ca, "h2"));
    let (client, server) = connected(&h1, &h2, &workload(&ca, "h1", WEB)).await;

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

    // A header naming another workload than the one the connection proved.
    let admin = StreamHeader { source: "spiffe://beemesh.local/ns/shop/sa/admin".into(), ..header() };
    let (forged, _recv) = client.open(&admin).await.expect("opens");
    let err = timeout(WAIT, server.accept_stream()).await.expect("in time").expect_err("forged");
    assert_eq!(
        err.to_string(),
        format!("stream header claims source spiffe://beemesh.local/ns/shop/sa/admin, but the connection proved {WEB}")
    );
    assert_eq!(timeout(WAIT, forged.stopped()).await.expect("in time").expect("stopped"), Some(BAD_HEADER));

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

#[tokio::test]
async fn a_stream_that_never_sends_its_header_stalls_no_other() {
    let ca = root(TD);
    let h1 = host(&ca, "h1");
    let deadline = Duration::from_secs(3);
    let h2 = host(&ca, "h2").with_header_deadline(deadline);
    let (client, server) = connected(&h1, &h2, &workload(&ca, "h1", WEB)).await;

    // A stream opened and left silent (a byte short of a header), then a good one.
    let (mut silent, _silent_recv) = client.inner.open_bi().await.expect("opens");
    silent.write_all(&[frame::VERSION]).await.expect("sends");
    let (mut send, _recv) = client.open(&header()).await.expect("opens");
    send.write_all(b"ping").await.expect("sends");
    let (got, _, _) =
        timeout(WAIT, server.accept_stream()).await.expect("in time").expect("good stream first");
    assert_eq!(got, header());
    // The silent one is refused at its deadline.
    let err = timeout(WAIT, server.accept_stream()).await.expect("in time").expect_err("late");
    assert!(matches!(err, TunnelError::HeaderTimeout(d) if d == deadline), "{err}");
    assert_eq!(timeout(WAIT, silent.stopped()).await.expect("in time").expect("stopped"), Some(BAD_HEADER));
    client.close();
}

#[tokio::test]
async fn the_host_behind_a_workload_is_read_from_the_verified_path_only() {
    let ca = root(TD);
    let (h1, h2) = (host(&ca, "h1"), host(&ca, "h2"));
    // A workload of h1 sends h2's host certificate (public) too, before its issuer: the path
    // verification builds ignores it, and so must the host it is taken to stand for.
    let issuer = issue::workload_ca(&ca, "h1", SystemTime::now(), HOUR).expect("issuer");
    let svid = issuer.issue(WEB, SystemTime::now(), HOUR).expect("issues");
    let (h2_chain, _) = host_cert(&ca, "h2");
    let chain = vec![svid.cert_der.clone(), h2_chain[0].clone(), issuer.cert_der()];
    let sly =
        TlsIdentity::unchecked(chain, svid.key_der.clone_key(), Expect::Workload, vec![ca.cert_der()], TD);
    let (_client, server) = connected(&h1, &h2, &sly).await;
    assert_eq!((server.peer_id(), server.peer_host()), (WEB, Some("h1")));
}

/// h2's agent "restarts": its endpoint moves off its port without a word (as a process that
/// died sends nothing), and a new endpoint of the same host binds the port. The client's
/// next packet on the old connection draws a stateless reset from the new instance when both
/// have h2's [`RestartKeys`]; with per-process keys the packet is dropped, and the client's
/// connection looks open until its idle timeout.
async fn restarted_host_resets_the_old_connection(keyed: bool) -> bool {
    let ca = root(TD);
    let (chain, keypair) = host_cert(&ca, "h2");
    let instance = |addr: SocketAddr| {
        let id = TlsIdentity::host(chain.clone(), &keypair, vec![ca.cert_der()], TD).expect("host");
        match (keyed, RestartKeys::of(&keypair)) {
            (true, Some(keys)) => Endpoint::bind_keyed(addr, id, keys),
            (true, None) => panic!("an ed25519 key derives its restart keys"),
            (false, _) => Endpoint::bind(addr, id),
        }
    };
    let old = instance(localhost()).expect("binds");
    let port = old.local_addr().expect("bound");
    let h1 = host(&ca, "h1");
    let web = workload(&ca, "h1", WEB);
    let (client, _server) = connected(&h1, &old, &web).await;
    // The old instance leaves the port silently: quinn keeps the socket it moved off until
    // traffic arrives on the new one, so it moves twice; the port is free once its
    // connection has moved too.
    for _ in 0..2 {
        old.inner.rebind(std::net::UdpSocket::bind(localhost()).expect("binds")).expect("moves");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let _new = loop {
        match instance(port) {
            Ok(e) => break e,
            Err(e) if tokio::time::Instant::now() < deadline => {
                assert!(
                    matches!(&e, TunnelError::Socket(s) if s.kind() == std::io::ErrorKind::AddrInUse),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("the old instance kept its port: {e}"),
        }
    };
    // The client sends on its old connection: a stream and its header.
    let _opened = client.open(&header()).await;
    match timeout(Duration::from_secs(2), client.closed()).await {
        Ok(why) => {
            assert!(matches!(why, quinn::ConnectionError::Reset), "{why}");
            true
        }
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_restarted_host_resets_its_previous_instances_connections() {
    assert!(restarted_host_resets_the_old_connection(true).await, "no stateless reset");
    assert!(!restarted_host_resets_the_old_connection(false).await, "reset without the host's keys");
}

/// A connected pair of loopback TCP sockets.
async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind(localhost()).await.expect("listens");
    let addr = listener.local_addr().expect("bound");
    let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
    (client.expect("connects"), accepted.expect("accepts").0)
}

/// The relays of one forwarded connection, as two agents run them: the client's socket ->
/// relay on h1 -> tunnel stream -> relay on h2 -> the server's socket. Returns the client's
/// and the server's sockets and both relays' outcomes, each relay running with `idle` and
/// cut by its `Notify`.
struct Forwarded {
    app: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    h1: JoinHandle<std::io::Result<splice::Ended>>,
    h2: JoinHandle<std::io::Result<splice::Ended>>,
    cut_h1: Arc<tokio::sync::Notify>,
    _conns: (Connection, Connection, Endpoint, Endpoint),
}

async fn forwarded(idle: Duration) -> Forwarded {
    let ca = root(TD);
    let (h1, h2) = (host(&ca, "h1"), host(&ca, "h2"));
    let (client, accepted) = connected(&h1, &h2, &workload(&ca, "h1", WEB)).await;
    let (app, mut agent_in) = tcp_pair().await;
    let (mut agent_out, server) = tcp_pair().await;
    let cut_h1 = Arc::new(tokio::sync::Notify::new());
    let (mut send, mut recv) = client.open(&header()).await.expect("opens");
    let cut = cut_h1.clone();
    let h1_relay =
        tokio::spawn(
            async move { splice::tcp_stream(&mut agent_in, &mut send, &mut recv, idle, &cut).await },
        );
    let (_, mut send, mut recv) =
        timeout(WAIT, accepted.accept_stream()).await.expect("in time").expect("stream");
    let h2_relay = tokio::spawn(async move {
        let never = tokio::sync::Notify::new();
        splice::tcp_stream(&mut agent_out, &mut send, &mut recv, idle, &never).await
    });
    Forwarded { app, server, h1: h1_relay, h2: h2_relay, cut_h1, _conns: (client, accepted, h1, h2) }
}

/// How a relay ended (within [`WAIT`]).
async fn relay_end(relay: JoinHandle<std::io::Result<splice::Ended>>) -> splice::Ended {
    timeout(WAIT, relay).await.expect("in time").expect("joins").expect("relays")
}

#[tokio::test]
async fn a_forwarded_connection_carries_both_ways_and_half_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Forwarded { app, mut server, h1, h2, _conns, .. } = forwarded(HOUR).await;
    let payload: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 7 + i / 4096) as u8).collect();
    let client = {
        let payload = payload.clone();
        let (mut r, mut w) = app.into_split();
        tokio::spawn(async move {
            w.write_all(&payload).await.expect("sends");
            // Half-close: the server sees the end, and may still answer.
            w.shutdown().await.expect("shuts down");
            let mut answer = Vec::new();
            r.read_to_end(&mut answer).await.expect("reads the answer");
            answer
        })
    };
    let mut got = Vec::new();
    timeout(WAIT, server.read_to_end(&mut got)).await.expect("in time").expect("reads");
    assert!(got == payload, "payload differs ({} bytes of {})", got.len(), payload.len());
    server.write_all(b"done").await.expect("answers after the client's end");
    server.shutdown().await.expect("shuts down");
    assert_eq!(timeout(WAIT, client).await.expect("in time").expect("joins"), b"done");
    let len = payload.len() as u64;
    assert_eq!(relay_end(h1).await, splice::Ended::Closed { up: len, down: 4 });
    // h2's first side is the server's socket.
    assert_eq!(relay_end(h2).await, splice::Ended::Closed { up: 4, down: len });
}

#[tokio::test]
async fn an_idle_forwarded_connection_ends_at_both_hosts() {
    let f = forwarded(Duration::from_millis(200)).await;
    assert_eq!(relay_end(f.h1).await, splice::Ended::Idle);
    assert_eq!(relay_end(f.h2).await, splice::Ended::Idle);
}

#[tokio::test]
async fn a_cut_forwarded_connection_ends_at_once() {
    let f = forwarded(HOUR).await;
    f.cut_h1.notify_one();
    assert_eq!(relay_end(f.h1).await, splice::Ended::Cut);
}

#[tokio::test]
async fn a_tcp_relay_half_closes_and_counts_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut app, mut a) = tcp_pair().await;
    let (mut b, mut server) = tcp_pair().await;
    let relay =
        tokio::spawn(async move { splice::tcp_tcp(&mut a, &mut b, HOUR, &tokio::sync::Notify::new()).await });
    app.write_all(b"hello").await.expect("sends");
    app.shutdown().await.expect("shuts down");
    let mut got = Vec::new();
    timeout(WAIT, server.read_to_end(&mut got)).await.expect("in time").expect("reads");
    assert_eq!(got, b"hello");
    server.write_all(b"world!").await.expect("answers");
    server.shutdown().await.expect("shuts down");
    let mut answer = Vec::new();
    timeout(WAIT, app.read_to_end(&mut answer)).await.expect("in time").expect("reads");
    assert_eq!(answer, b"world!");
    assert_eq!(relay_end(relay).await, splice::Ended::Closed { up: 5, down: 6 });
}
