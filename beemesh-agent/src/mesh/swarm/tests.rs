//! Real swarms in one process on loopback (real QUIC, real libp2p): joining from one bootstrap,
//! attestation, gossip, a stranger refused, a late bootstrap joined by back-off, and a restart
//! that finds the mesh again through the remembered peers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use libp2p::gossipsub::MessageAcceptance;
use libp2p::identity::{Keypair, PublicKey};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;

use super::*;

/// Waits for events: long enough for a loaded 2-core machine, short enough to fail fast.
const DEADLINE: Duration = Duration::from_secs(15);

/// A gate a verification can wait on, so a test can hold a peer unattested for a while.
#[derive(Debug, Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().expect("gate") = true;
        self.cv.notify_all();
    }

    fn wait(&self) {
        let mut open = self.open.lock().expect("gate");
        while !*open {
            open = self.cv.wait(open).expect("gate");
        }
    }
}

/// Test attestation: a signature by the peer's libp2p key over the nonce and the verifier;
/// accepted for the keys of a fixed set, whose names it returns. A stranger's verification
/// waits on `gate` (when set) before failing.
#[derive(Debug)]
struct KeySet {
    me: Keypair,
    members: HashMap<PeerId, (String, PublicKey)>,
    gate: Option<Arc<Gate>>,
}

fn signed_bytes(nonce: &[u8; 32], verifier: &PeerId) -> Vec<u8> {
    let mut m = b"beemesh-test-attest".to_vec();
    m.extend_from_slice(nonce);
    m.extend_from_slice(&verifier.to_bytes());
    m
}

impl Attest for KeySet {
    fn attest(&self, nonce: &[u8; 32], verifier: &libp2p_identity::PeerId) -> Vec<u8> {
        self.me.sign(&signed_bytes(nonce, verifier)).expect("ed25519 signs")
    }

    fn verify(
        &self,
        attestation: &[u8],
        nonce: &[u8; 32],
        peer: &libp2p_identity::PeerId,
        _now: SystemTime,
    ) -> Result<AttestedHost, String> {
        let Some((name, key)) = self.members.get(peer) else {
            if let Some(g) = &self.gate {
                g.wait();
            }
            return Err("not a member of the test trust set".into());
        };
        let me = self.me.public().to_peer_id();
        if !key.verify(&signed_bytes(nonce, &me), attestation) {
            return Err("bad signature".into());
        }
        Ok(AttestedHost { node_name: name.clone(), peer: *peer })
    }
}

struct Node {
    name: &'static str,
    client: MeshClient,
    events: mpsc::Receiver<MeshEvent>,
}

impl Node {
    async fn start(
        name: &'static str,
        key: &Keypair,
        members: &[(&str, &Keypair)],
        gate: Option<Arc<Gate>>,
        tweak: impl FnOnce(&mut MeshConfig),
    ) -> Node {
        let mut config = MeshConfig::new(vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse().expect("ma")]);
        config.tick = Duration::from_millis(50);
        config.node_name = name.to_string();
        tweak(&mut config);
        let attest = KeySet {
            me: key.clone(),
            members: members
                .iter()
                .map(|(n, k)| (k.public().to_peer_id(), (n.to_string(), k.public())))
                .collect(),
            gate,
        };
        let (client, events) = start(config, key.clone(), Arc::new(attest)).await.expect(name);
        client.subscribe("t").await.expect("subscribe");
        Node { name, client, events }
    }

    async fn addr(&self) -> Multiaddr {
        self.client.listen_addrs().await.expect("addrs").remove(0)
    }

    async fn port(&self) -> u16 {
        let a = self.addr().await;
        a.iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Udp(p) => Some(p),
                _ => None,
            })
            .expect("udp port")
    }

    /// The next event `want` picks, skipping the others (collected into `skipped` for checks
    /// on what came meanwhile).
    async fn until(
        &mut self,
        what: &str,
        skipped: &mut Vec<MeshEvent>,
        mut want: impl FnMut(&MeshEvent) -> bool,
    ) -> MeshEvent {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{}: no {what} within {DEADLINE:?}; skipped {skipped:?}", self.name)
                })
                .unwrap_or_else(|| panic!("{}: event loop stopped", self.name));
            if want(&ev) {
                return ev;
            }
            skipped.push(ev);
        }
    }

    /// Waits until `names` are all up (attested) and subscribed to "t".
    async fn members_up(&mut self, names: &[&str]) -> Vec<MeshEvent> {
        let mut up = HashSet::new();
        let mut subscribed = HashSet::new();
        let mut skipped = Vec::new();
        let want: HashSet<String> = names.iter().map(|s| s.to_string()).collect();
        while !(want.is_subset(&up) && want.is_subset(&subscribed)) {
            let ev = self
                .until("members up", &mut skipped, |ev| {
                    matches!(ev, MeshEvent::PeerUp { .. } | MeshEvent::Subscribed { .. })
                })
                .await;
            match ev {
                MeshEvent::PeerUp { host, .. } => up.insert(host.node_name),
                MeshEvent::Subscribed { host, topic } if topic == "t" => subscribed.insert(host.node_name),
                _ => false,
            };
        }
        skipped
    }

    async fn gossip(&mut self, data: &[u8]) -> GossipMessage {
        let mut skipped = Vec::new();
        match self
            .until("gossip", &mut skipped, |ev| matches!(ev, MeshEvent::Gossip(m) if m.data == data))
            .await
        {
            MeshEvent::Gossip(m) => *m,
            _ => unreachable!("picked a gossip"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_join_attest_gossip_and_refuse_a_stranger() {
    let (ka, kb, kc, kr) = (
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
        Keypair::generate_ed25519(),
    );
    let members = [("a", &ka), ("b", &kb), ("c", &kc)];
    let gate = Arc::new(Gate::default());
    let mut a = Node::start("a", &ka, &members, Some(gate.clone()), |_| {}).await;
    let boot = format!("127.0.0.1:{}", a.port().await);
    let with_boot = |c: &mut MeshConfig| c.bootstrap = vec![boot.parse().expect("bootstrap")];
    let mut b = Node::start("b", &kb, &members, None, with_boot).await;
    let mut c = Node::start("c", &kc, &members, None, with_boot).await;

    // b and c only know a; they find each other through the DHT and attest each other.
    a.members_up(&["b", "c"]).await;
    b.members_up(&["a", "c"]).await;
    c.members_up(&["a", "b"]).await;
    let names: HashSet<Option<String>> =
        b.client.peers().await.expect("peers").into_iter().map(|p| p.node_name).collect();
    assert_eq!(names, HashSet::from([Some("a".to_string()), Some("c".to_string())]));

    // Gossip from b reaches a and c, attributed to b by its attestation; oversized is refused.
    let big = b.client.publish("t", vec![0; 256 * 1024 + 1]).await.expect_err("oversized");
    assert!(big.to_string().contains("more than"), "{big}");
    b.client.publish("t", b"hello".to_vec()).await.expect("publish");
    for n in [&mut a, &mut c] {
        let m = n.gossip(b"hello").await;
        assert_eq!(m.origin, kb.public().to_peer_id());
        assert_eq!(m.origin_host.as_ref().map(|h| h.node_name.as_str()), Some("b"));
        n.client.validate(&m, MessageAcceptance::Accept).await.expect("validate");
    }

    // A stranger (its key is in no one's set; it accepts a) joins through a: while a is still
    // verifying it, its gossip is rejected; then it fails and is disconnected.
    let r_members = [("a", &ka)];
    let mut r = Node::start("r", &kr, &r_members, None, with_boot).await;
    let rogue = kr.public().to_peer_id();
    r.members_up(&["a"]).await;
    r.client.publish("t", b"evil".to_vec()).await.expect("rogue publishes");
    let mut skipped = Vec::new();
    let ev = a
        .until(
            "the rogue's gossip dropped",
            &mut skipped,
            |ev| matches!(ev, MeshEvent::GossipDropped { via, .. } if *via == rogue),
        )
        .await;
    assert!(matches!(ev, MeshEvent::GossipDropped { reason: GossipDrop::Unattested, .. }), "{ev:?}");
    let listed = a.client.peers().await.expect("peers");
    let r_info = listed.iter().find(|p| p.peer == rogue).expect("rogue connected");
    assert!(!r_info.attested && r_info.node_name.is_none(), "{r_info:?}");
    // Its requests are refused while it is not attested.
    let refusal = r
        .client
        .request(ka.public().to_peer_id(), "echo", b"let me in".to_vec())
        .await
        .expect("a answers, with a refusal");
    assert!(matches!(refusal, MeshResponse::Refused(_)), "{refusal:?}");
    gate.open();
    a.until(
        "the rogue failing attestation",
        &mut skipped,
        |ev| matches!(ev, MeshEvent::AttestationFailed { peer, .. } if *peer == rogue),
    )
    .await;
    let mut r_skipped = Vec::new();
    r.until(
        "a disconnecting the rogue",
        &mut r_skipped,
        |ev| matches!(ev, MeshEvent::PeerDown { host } if host.node_name == "a"),
    )
    .await;
    assert!(
        !skipped.iter().any(|ev| matches!(ev, MeshEvent::Gossip(m) if m.origin == rogue)),
        "the rogue's gossip reached the application: {skipped:?}"
    );
    let stats = a.client.stats().await.expect("stats");
    assert!(stats.gossip_dropped.get("unattested").copied().unwrap_or(0) >= 1, "{stats:?}");
    assert!(stats.attestations_failed >= 1, "{stats:?}");
    assert_eq!(stats.requests_refused, 1, "{stats:?}");
    // Kademlia messages of peers not attested yet (the stranger's lookup among them) went unread.
    assert!(stats.kad_unattested_dropped >= 1, "{stats:?}");
    assert!(!a.client.peers().await.expect("peers").iter().any(|p| p.peer == rogue && p.attested));

    // Requests: between members they are answered; to an unattested peer they are refused.
    let b_id = kb.public().to_peer_id();
    let asking = a.client.clone();
    let ask = tokio::spawn(async move { asking.request(b_id, "echo", b"ping".to_vec()).await });
    let mut b_skipped = Vec::new();
    let MeshEvent::Request { from, kind, body, responder } =
        b.until("a request", &mut b_skipped, |ev| matches!(ev, MeshEvent::Request { .. })).await
    else {
        unreachable!("picked a request")
    };
    assert_eq!(from.node_name, "a");
    assert_eq!((kind.as_str(), body.as_slice()), ("echo", &b"ping"[..]));
    // A body as large as the admin socket takes (3 MiB) travels by request-response.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    responder.respond(big.clone()).await.expect("respond");
    let answer = ask.await.expect("join").expect("request");
    assert!(answer == MeshResponse::App(big), "the 3 MiB body came back changed");
    let refused = a.client.request(rogue, "echo", vec![]).await.expect_err("rogue not attested");
    assert!(matches!(refused, SwarmError::NotAttested(_)), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_bootstrap_is_joined_by_back_off_and_remembered_across_a_restart() {
    let (kd, ke) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let members = [("d", &kd), ("e", &ke)];
    // A port from the kernel, free again for e to take once d has failed to reach it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let state = tempfile::tempdir().expect("tempdir");
    let peers_file = KnownPeers::path(state.path());
    let pf = peers_file.clone();
    let mut d = Node::start("d", &kd, &members, None, |c| {
        c.bootstrap = vec![format!("127.0.0.1:{port}").parse().expect("bootstrap")];
        c.redial_base = Duration::from_millis(100);
        c.redial_cap = Duration::from_millis(400);
        c.handshake_timeout = Duration::from_millis(500);
        c.peers_file = Some(pf);
    })
    .await;
    let mut skipped = Vec::new();
    let MeshEvent::BootstrapFailed { retry_in: retry, .. } = d
        .until("a failed bootstrap", &mut skipped, |ev| matches!(ev, MeshEvent::BootstrapFailed { .. }))
        .await
    else {
        unreachable!("picked a failure")
    };
    assert!(retry <= Duration::from_millis(400), "capped: {retry:?}");
    let e = Node::start("e", &ke, &members, None, |c| {
        c.listen = vec![format!("/ip4/127.0.0.1/udp/{port}/quic-v1").parse().expect("ma")];
    })
    .await;
    d.members_up(&["e"]).await;

    // d remembers e on disk (written beside the loop: wait for the file to say so).
    let e_id = ke.public().to_peer_id();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let known = KnownPeers::load(&peers_file).expect("peers file");
        if known.dialable().iter().any(|(p, _)| *p == e_id) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "e never remembered: {known:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(d);

    // Restarted without any bootstrap, d finds e again through the remembered peers.
    let pf = peers_file.clone();
    let mut d2 = Node::start("d2", &kd, &members, None, |c| c.peers_file = Some(pf)).await;
    d2.members_up(&["e"]).await;
    drop(e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_does_not_attest_in_time_is_disconnected_at_the_deadline() {
    let (kx, ky) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    // x cannot decide on y (its verification hangs on a gate) until after the deadline.
    let gate = Arc::new(Gate::default());
    let mut x = Node::start("x", &kx, &[("x", &kx)], Some(gate.clone()), |c| {
        c.attest_timeout = Duration::from_millis(800);
    })
    .await;
    let boot = x.addr().await;
    let mut y = Node::start("y", &ky, &[("x", &kx)], None, |c| {
        c.bootstrap = vec![BootstrapAddr::Multiaddr(boot)];
    })
    .await;
    y.members_up(&["x"]).await;
    let mut skipped = Vec::new();
    let ev = x
        .until("y failing at the deadline", &mut skipped, |ev| {
            matches!(ev, MeshEvent::AttestationFailed { .. })
        })
        .await;
    let MeshEvent::AttestationFailed { peer, reason } = ev else { unreachable!("picked a failure") };
    assert_eq!(peer, ky.public().to_peer_id());
    assert!(reason.contains("deadline"), "{reason}");
    let mut y_skipped = Vec::new();
    y.until(
        "x disconnecting",
        &mut y_skipped,
        |ev| matches!(ev, MeshEvent::PeerDown { host } if host.node_name == "x"),
    )
    .await;
    // The verification finishing late changes nothing.
    gate.open();
    let stats = x.client.stats().await.expect("stats");
    assert!(stats.attestations_failed >= 1, "{stats:?}");
    assert!(!x.client.peers().await.expect("peers").iter().any(|p| p.attested));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_credentials_may_send_a_join_request_and_nothing_else() {
    let ka = Keypair::generate_ed25519();
    let mut a = Node::start("a", &ka, &[("a", &ka)], None, |_| {}).await;
    let boot: Vec<BootstrapAddr> = vec![format!("127.0.0.1:{}", a.port().await).parse().expect("addr")];

    // The joiner (a stranger to a) is answered by the application.
    let joiner = Keypair::generate_ed25519();
    let joiner_id = joiner.public().to_peer_id();
    let (b1, j1) = (boot.clone(), joiner.clone());
    let asked = tokio::spawn(async move { join_request(&b1, j1, b"please".to_vec(), DEADLINE).await });
    let mut skipped = Vec::new();
    let MeshEvent::Join { peer, body, responder } =
        a.until("join", &mut skipped, |ev| matches!(ev, MeshEvent::Join { .. })).await
    else {
        unreachable!("picked a join")
    };
    assert_eq!((peer, body.as_slice()), (joiner_id, &b"please"[..]));
    responder.respond(b"welcome".to_vec()).await.expect("respond");
    assert_eq!(asked.await.expect("task").expect("answered"), b"welcome");

    // A refusal reaches the joiner as such, and is not retried.
    let (b2, j2) = (boot.clone(), joiner.clone());
    let asked = tokio::spawn(async move { join_request(&b2, j2, b"again".to_vec(), DEADLINE).await });
    let MeshEvent::Join { responder, .. } =
        a.until("join", &mut skipped, |ev| matches!(ev, MeshEvent::Join { .. })).await
    else {
        unreachable!("picked a join")
    };
    responder.refuse("token already used".into()).await.expect("refuse");
    let err = asked.await.expect("task").expect_err("refused");
    assert_eq!(err.to_string(), "join: refused by the member: token already used");

    // Oversized: refused by the swarm, the application never sees it.
    let big = vec![0u8; MAX_JOIN_BYTES + 1];
    let err = join_request(&boot, joiner.clone(), big, DEADLINE).await.expect_err("too big");
    assert!(err.to_string().contains("more than 65536"), "{err}");
    assert_eq!(a.client.stats().await.expect("stats").joins_refused, 1);
    // Ordinary requests from the joiner are still refused: it never attested.
    assert!(!skipped.iter().any(|e| matches!(e, MeshEvent::Request { .. } | MeshEvent::PeerUp { .. })));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_to_an_unreachable_bootstrap_gives_up_at_the_deadline() {
    // A UDP port nothing listens on (bound, then closed).
    let port = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let boot: Vec<BootstrapAddr> = vec![format!("127.0.0.1:{port}").parse().expect("addr")];
    let err = join_request(&boot, Keypair::generate_ed25519(), b"x".to_vec(), Duration::from_secs(3))
        .await
        .expect_err("nobody there");
    assert!(err.to_string().starts_with("join: no member answered within 3 s"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_future_gossip_is_dropped_requests_are_limited_and_an_expelled_peer_goes() {
    let (ka, kb) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
    let members = [("a", &ka), ("b", &kb)];
    let mut a = Node::start("a", &ka, &members, None, |c| {
        c.request_limits =
            RateLimits { messages_per_sec: 0.001, message_burst: 2.0, bytes_per_sec: 1e9, byte_burst: 1e9 };
    })
    .await;
    let boot = format!("127.0.0.1:{}", a.port().await);
    let mut b =
        Node::start("b", &kb, &members, None, |c| c.bootstrap = vec![boot.parse().expect("bootstrap")]).await;
    a.members_up(&["b"]).await;
    b.members_up(&["a"]).await;

    let now_ms = SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("epoch").as_millis() as u64;
    let sent =
        |node: &str, sent_ms: u64, data: &[u8]| Envelope { node: node.into(), sent_ms, data: data.to_vec() };
    // b speaks for a; b replays something of five minutes ago; b sends from the future.
    b.client.publish_envelope("t", &sent("a", now_ms, b"forged")).await.expect("publish");
    b.client.publish_envelope("t", &sent("b", now_ms - 300_000, b"stale")).await.expect("publish");
    b.client.publish_envelope("t", &sent("b", now_ms + 300_000, b"future")).await.expect("publish");
    b.client.publish("t", b"honest".to_vec()).await.expect("publish");
    let mut skipped = Vec::new();
    let m = a.gossip(b"honest").await;
    assert_eq!((m.author.as_str(), m.origin_host.map(|h| h.node_name)), ("b", Some("b".to_string())));
    let stats = a.client.stats().await.expect("stats");
    for reason in ["forged", "stale", "future"] {
        assert_eq!(stats.gossip_dropped.get(reason).copied(), Some(1), "{reason}: {stats:?}");
    }
    assert_eq!(stats.gossip_delivered, 1, "{stats:?}");

    // b's requests beyond its burst are refused as rate limited.
    let a_id = ka.public().to_peer_id();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let asking = b.client.clone();
        let ask = tokio::spawn(async move { asking.request(a_id, "echo", b"x".to_vec()).await });
        if let MeshEvent::Request { responder, .. } =
            a.until("a request or nothing", &mut skipped, |ev| matches!(ev, MeshEvent::Request { .. })).await
        {
            responder.respond(b"ok".to_vec()).await.expect("respond");
        }
        answers.push(ask.await.expect("join").expect("answered"));
        if answers.len() == 2 {
            break;
        }
    }
    let third = b.client.request(a_id, "echo", b"x".to_vec()).await.expect("answered");
    assert_eq!(third, MeshResponse::Refused("rate limited".into()));
    assert_eq!(a.client.stats().await.expect("stats").requests_rate_limited, 1);

    // a expels b: b is down for a's application, and a is gone for b.
    assert!(a.client.expel(kb.public().to_peer_id(), "revoked".into()).await.expect("expel"));
    a.until("b down", &mut skipped, |ev| matches!(ev, MeshEvent::PeerDown { host } if host.node_name == "b"))
        .await;
    let mut b_skipped = Vec::new();
    b.until(
        "a down",
        &mut b_skipped,
        |ev| matches!(ev, MeshEvent::PeerDown { host } if host.node_name == "a"),
    )
    .await;
    assert_eq!(a.client.stats().await.expect("stats").peers_expelled, 1);
}
