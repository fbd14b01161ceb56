//! Tests of the sock_diag wrapper: the reply parser against malformed input, and dump and
//! destroy against the real kernel (root; they fail, never skip, without it).

use super::*;
use crate::sys::cgroup;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// ---- reply parser, no kernel ----

fn nlmsg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut out = Vec::new();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&0x2u16.to_ne_bytes()); // NLM_F_MULTI
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(out.len()), 0);
    out
}

fn attr(ty: u16, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((NLA_HDRLEN + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
    out
}

fn diag_payload(family: u8, state: u8, id: SockId, attrs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![family, state, 0, 0];
    id.encode(&mut out);
    for v in [0u32, 0, 0, 1000, 4242] {
        out.extend_from_slice(&v.to_ne_bytes()); // expires rqueue wqueue uid inode
    }
    assert_eq!(out.len(), INET_DIAG_MSG_LEN);
    for a in attrs {
        out.extend_from_slice(a);
    }
    out
}

fn sample_id() -> SockId {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[10, 0, 0, 1]);
    let mut dst = [0u8; 16];
    dst[..4].copy_from_slice(&[10, 0, 0, 2]);
    SockId { sport: 443, dport: 50000, src, dst, ifindex: 0, cookie: 0x1234_5678_9abc_def0 }
}

/// A two-message dump datagram: one IPv4 socket (with a MARK and a CGROUP_ID attribute),
/// then NLMSG_DONE.
fn sample_datagram(seq: u32) -> Vec<u8> {
    let attrs = [attr(15, &7u32.to_ne_bytes()), attr(INET_DIAG_CGROUP_ID, &99u64.to_ne_bytes())];
    let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, seq, &diag_payload(AF_INET, 1, sample_id(), &attrs));
    buf.extend(nlmsg(NLMSG_DONE, seq, &0i32.to_ne_bytes()));
    buf
}

#[test]
fn constants_match_libc_and_headers() {
    assert_eq!(i32::from(NLMSG_ERROR), libc::NLMSG_ERROR);
    assert_eq!(i32::from(NLMSG_DONE), libc::NLMSG_DONE);
    assert_eq!(i32::from(NLMSG_OVERRUN), libc::NLMSG_OVERRUN);
    assert_eq!(i32::from(NLM_F_REQUEST), libc::NLM_F_REQUEST);
    assert_eq!(i32::from(NLM_F_ACK), libc::NLM_F_ACK);
    assert_eq!(i32::from(NLM_F_DUMP), libc::NLM_F_DUMP);
    assert_eq!(NLMSG_HDRLEN, std::mem::size_of::<libc::nlmsghdr>());
    assert_eq!(i32::from(AF_INET), libc::AF_INET);
    assert_eq!(i32::from(AF_INET6), libc::AF_INET6);
    assert_eq!(i32::from(IPPROTO_TCP), libc::IPPROTO_TCP);
}

#[test]
fn request_layout() {
    let mut req = Vec::new();
    ReqV2 { family: AF_INET, protocol: IPPROTO_TCP, ext: 0, states: StateMask::ALL.bits(), id: sample_id() }
        .encode(&mut req);
    assert_eq!(req.len(), INET_DIAG_REQ_V2_LEN);
    assert_eq!(&req[..4], &[AF_INET, IPPROTO_TCP, 0, 0]);
    assert_eq!(u32_ne(&req, 4), 0x1ffe);
    assert_eq!(&req[8..12], &[0x01, 0xbb, 0xc3, 0x50]); // ports big-endian
    assert_eq!(&req[12..16], &[10, 0, 0, 1]);
    assert_eq!(u32_ne(&req, 48), 0x9abc_def0); // cookie low half first
    assert_eq!(u32_ne(&req, 52), 0x1234_5678);
    let id: &[u8; SockId::LEN] = req[8..].try_into().expect("48 bytes");
    assert_eq!(SockId::decode(id), sample_id());
}

#[test]
fn state_masks() {
    let all: StateMask = TcpState::ALL.into_iter().collect();
    assert_eq!(all.with(TcpState::Close).bits() | 1 << 12, StateMask::ALL.bits());
    assert!(StateMask::CONNECTED.contains(TcpState::Established));
    assert!(!StateMask::CONNECTED.contains(TcpState::Listen));
    assert!(StateMask::of(TcpState::Listen).contains(TcpState::Listen));
    assert_eq!(TcpState::from_kernel(12), None);
}

#[test]
fn parses_a_well_formed_dump() {
    let mut out = Vec::new();
    let progress = parse_dump_datagram(&sample_datagram(7), 7, &mut out).expect("parses");
    assert_eq!(progress, DumpProgress::Done);
    assert_eq!(
        out,
        vec![TcpSocket {
            local: "10.0.0.1:443".parse().expect("addr"),
            remote: "10.0.0.2:50000".parse().expect("addr"),
            state: TcpState::Established,
            cookie: 0x1234_5678_9abc_def0,
            cgroup_id: Some(99),
            inode: 4242,
            uid: 1000,
            family: AF_INET,
            ifindex: 0,
        }]
    );
    // Another request's messages are ignored.
    let mut other = Vec::new();
    let progress = parse_dump_datagram(&sample_datagram(7), 8, &mut other).expect("parses");
    assert_eq!((progress, other.len()), (DumpProgress::More, 0));
}

#[test]
fn ipv4_mapped_stays_v6() {
    let mut id = sample_id();
    id.src = "::ffff:127.0.0.1".parse::<Ipv6Addr>().expect("v6").octets();
    id.dst = id.src;
    let sock = parse_diag_msg(&diag_payload(AF_INET6, 10, id, &[])).expect("parses").expect("known state");
    assert_eq!(sock.local, "[::ffff:127.0.0.1]:443".parse().expect("addr"));
    assert_eq!((sock.state, sock.cgroup_id), (TcpState::Listen, None));
}

#[test]
fn truncation_anywhere_is_an_error_or_a_clean_prefix() {
    let full = sample_datagram(1);
    let first_len = full.len() - (NLMSG_HDRLEN + 4);
    for cut in 0..full.len() {
        let mut out = Vec::new();
        let res = parse_dump_datagram(&full[..cut], 1, &mut out);
        match cut {
            0 => assert_eq!(res.expect("empty is no message"), DumpProgress::More),
            c if c == first_len => {
                assert_eq!(res.expect("one whole message"), DumpProgress::More);
                assert_eq!(out.len(), 1);
            }
            _ => {
                let err = res.expect_err("cut inside a message");
                assert_eq!(err.kind(), ErrorKind::InvalidData, "cut {cut}: {err}");
            }
        }
    }
}

#[test]
fn bad_lengths_are_errors() {
    let good = sample_datagram(1);
    for bad_len in [0u32, 15, good.len() as u32 + 1, u32::MAX] {
        let mut buf = good.clone();
        buf[..4].copy_from_slice(&bad_len.to_ne_bytes());
        let err = parse_dump_datagram(&buf, 1, &mut Vec::new()).expect_err("bad nlmsg_len");
        assert_eq!(err.kind(), ErrorKind::InvalidData);
    }
    let payload = diag_payload(AF_INET, 1, sample_id(), &[]);
    // Attribute lengths: below the header, beyond the message.
    for nla_len in [0u16, 3, 200] {
        let mut p = payload.clone();
        p.extend_from_slice(&nla_len.to_ne_bytes());
        p.extend_from_slice(&INET_DIAG_CGROUP_ID.to_ne_bytes());
        p.extend_from_slice(&[0; 8]);
        assert!(matches!(parse_diag_msg(&p), Err(ReplyError::BadAttributeLength { .. })));
    }
    // A cgroup id that is not 8 bytes.
    let mut p = payload.clone();
    p.extend(attr(INET_DIAG_CGROUP_ID, &[1, 2, 3, 4]));
    assert_eq!(parse_diag_msg(&p), Err(ReplyError::BadCgroupId(4)));
    // Trailing bytes shorter than an attribute header are padding.
    let mut p = payload.clone();
    p.extend_from_slice(&[0, 0]);
    assert!(parse_diag_msg(&p).expect("padding").is_some());
    assert_eq!(parse_diag_msg(&payload[..71]), Err(ReplyError::ShortDiagMsg(71)));
    assert_eq!(parse_diag_msg(&diag_payload(1, 1, sample_id(), &[])), Err(ReplyError::UnexpectedFamily(1)));
}

#[test]
fn errors_and_acks() {
    let eperm = nlmsg(NLMSG_ERROR, 3, &(-libc::EPERM).to_ne_bytes());
    let err = parse_dump_datagram(&eperm, 3, &mut Vec::new()).expect_err("eperm");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let err = parse_ack_datagram(&eperm, 3).expect_err("eperm");
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    let ack = nlmsg(NLMSG_ERROR, 3, &0i32.to_ne_bytes());
    assert_eq!(parse_ack_datagram(&ack, 3).expect("ack"), Some(()));
    assert_eq!(parse_ack_datagram(&ack, 4).expect("not ours"), None);
    let short = nlmsg(NLMSG_ERROR, 3, &[0, 0]);
    let err = parse_ack_datagram(&short, 3).expect_err("short");
    assert_eq!(err.kind(), ErrorKind::InvalidData);
    let done_err = nlmsg(NLMSG_DONE, 3, &(-libc::ENOMEM).to_ne_bytes());
    let err = parse_dump_datagram(&done_err, 3, &mut Vec::new()).expect_err("enomem");
    assert_eq!(err.raw_os_error(), Some(libc::ENOMEM));
    let overrun = nlmsg(NLMSG_OVERRUN, 3, &[]);
    assert!(parse_dump_datagram(&overrun, 3, &mut Vec::new()).is_err());
}

/// Garbage never panics (a cheap deterministic fuzz: random bytes and random corruptions of a
/// valid reply).
#[test]
fn garbage_never_panics() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let good = sample_datagram(1);
    for _ in 0..20_000 {
        let mut buf =
            if next() % 2 == 0 { good.clone() } else { (0..next() % 200).map(|_| next() as u8).collect() };
        for _ in 0..next() % 4 {
            if !buf.is_empty() {
                let i = (next() % buf.len() as u64) as usize;
                buf[i] = next() as u8;
            }
        }
        let _ = parse_dump_datagram(&buf, 1, &mut Vec::new());
        let _ = parse_ack_datagram(&buf, 1);
    }
}

// ---- real kernel, as root ----

/// Removes the test cgroup (killing what is left in it) even when the test fails.
struct CgroupGuard(PathBuf);

impl CgroupGuard {
    fn create(name: &str) -> Self {
        let mount = cgroup::cgroup2_mount().expect("cgroup2 must be mounted");
        let path = mount.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir(&path).expect("mkdir cgroup (run the tests as root)");
        CgroupGuard(path)
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Err(e) = cgroup::remove_cgroup_tree(&self.0) {
            eprintln!("cleaning up {}: {e}", self.0.display());
        }
    }
}

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn inode_of(fd: impl AsFd) -> u32 {
    let path = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    let ino = std::fs::metadata(path).expect("stat socket fd").ino();
    u32::try_from(ino).expect("socket inodes are 32-bit")
}

fn own_cgroup_id() -> u64 {
    cgroup::cgroup_id(&cgroup::own_cgroup_path().expect("own cgroup")).expect("own cgroup id")
}

fn find(socks: &[TcpSocket], local: SocketAddr, remote: SocketAddr) -> Option<&TcpSocket> {
    socks.iter().find(|s| s.local == local && s.remote == remote)
}

fn unspecified(like: SocketAddr) -> SocketAddr {
    match like {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    }
}

/// Accepts one connection within a deadline instead of hanging the test.
fn accept_within(listener: &TcpListener, limit: Duration) -> (TcpStream, SocketAddr) {
    listener.set_nonblocking(true).expect("nonblocking");
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((s, a)) => {
                s.set_nonblocking(false).expect("blocking");
                return (s, a);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && start.elapsed() < limit => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("no connection within {limit:?}: {e}"),
        }
    }
}

#[test]
fn dump_finds_listeners_and_both_ends() {
    let own_cg = own_cgroup_id();
    let uid = nix::unistd::geteuid().as_raw();
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let listener = TcpListener::bind(bind).expect("listen");
        let laddr = listener.local_addr().expect("local addr");
        let client = TcpStream::connect(laddr).expect("connect");
        let caddr = client.local_addr().expect("client addr");
        let (server, _) = accept_within(&listener, Duration::from_secs(20));

        let socks = dump_tcp(StateMask::ALL).expect("dump");
        let l = find(&socks, laddr, unspecified(laddr)).expect("listener in dump");
        let c = find(&socks, caddr, laddr).expect("client end in dump");
        let s = find(&socks, laddr, caddr).expect("server end in dump");
        assert_eq!(l.state, TcpState::Listen);
        assert_eq!(c.state, TcpState::Established);
        assert_eq!(s.state, TcpState::Established);
        assert_eq!(l.inode, inode_of(&listener));
        assert_eq!(c.inode, inode_of(&client));
        assert_eq!(s.inode, inode_of(&server));
        for sock in [l, c, s] {
            assert_ne!(sock.cookie, 0, "{sock:?}");
            assert_eq!(sock.uid, uid);
            // Requested with idiag_ext == 0: the kernel adds the cgroup id anyway.
            assert_eq!(sock.cgroup_id, Some(own_cg), "{sock:?}");
            assert_eq!(sock.family == AF_INET, laddr.is_ipv4());
        }
        assert!(l.cookie != c.cookie && c.cookie != s.cookie && l.cookie != s.cookie);

        let connected = dump_tcp(StateMask::CONNECTED).expect("dump connected");
        assert!(find(&connected, laddr, unspecified(laddr)).is_none());
        assert!(find(&connected, caddr, laddr).is_some());
    }
}

/// Time-wait sockets are minisocks without a cgroup: the kernel sends no INET_DIAG_CGROUP_ID
/// for them, but keeps the original socket's cookie.
#[test]
fn time_wait_sockets_have_no_cgroup() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let laddr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(laddr).expect("connect");
    let caddr = client.local_addr().expect("client addr");
    let (mut server, _) = accept_within(&listener, Duration::from_secs(20));
    let before = dump_tcp(StateMask::ALL).expect("dump");
    let cookie = find(&before, caddr, laddr).expect("client end").cookie;

    drop(client); // the active closer ends in TIME_WAIT
    server.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    assert_eq!(server.read(&mut [0u8; 1]).expect("EOF"), 0);
    drop(server);

    let start = Instant::now();
    let tw = loop {
        let socks = dump_tcp(StateMask::of(TcpState::TimeWait)).expect("dump");
        if let Some(tw) = find(&socks, caddr, laddr) {
            break tw.clone();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no TIME_WAIT socket");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(tw.state, TcpState::TimeWait);
    assert_eq!(tw.cgroup_id, None);
    assert_eq!(tw.cookie, cookie);
}

#[test]
fn dual_stack_socket_keeps_v4_mapped_v6_addresses() {
    let listener = TcpListener::bind("[::]:0").expect("listen on [::]");
    let port = listener.local_addr().expect("addr").port();
    let client = TcpStream::connect(("127.0.0.1", port)).expect("connect over v4");
    let caddr = client.local_addr().expect("client addr");
    let (server, peer) = accept_within(&listener, Duration::from_secs(20));
    assert_eq!(peer.ip(), "::ffff:127.0.0.1".parse::<IpAddr>().expect("ip"));

    let socks = dump_tcp(StateMask::of(TcpState::Established)).expect("dump");
    let s = socks.iter().find(|s| s.inode == inode_of(&server)).expect("server end in dump");
    assert_eq!(s.local, server.local_addr().expect("server addr"));
    assert_eq!(s.remote, peer);
    assert!(s.local.is_ipv6() && s.family == AF_INET6);
    assert!(find(&socks, caddr, (Ipv4Addr::LOCALHOST, port).into()).is_some());

    destroy_tcp(s).expect("destroy a v4-mapped AF_INET6 socket");
    let gone = dump_tcp(StateMask::ALL).expect("dump");
    assert!(gone.iter().all(|g| g.cookie != s.cookie));
}

#[test]
fn socket_carries_the_cgroup_it_was_created_in() {
    let cg = CgroupGuard::create("beemesh-diagtest");
    let cg_id = cgroup::cgroup_id(&cg.0).expect("cgroup id");
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let laddr = listener.local_addr().expect("addr");
    // The shell joins the cgroup before socat creates its socket.
    let script = format!("echo $$ > '{}/cgroup.procs' && exec socat - TCP:{laddr}", cg.0.display());
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh + socat (apt-get install socat)");
    let mut child = ChildGuard(child);
    let (mut server, peer) = accept_within(&listener, Duration::from_secs(20));

    let socks = dump_tcp(StateMask::of(TcpState::Established)).expect("dump");
    let client_end = find(&socks, peer, laddr).expect("socat's socket in dump");
    assert_eq!(client_end.cgroup_id, Some(cg_id));
    assert_ne!(cg_id, own_cgroup_id());
    // The accepted end inherits the listener's cgroup, not the peer's.
    let server_end = find(&socks, laddr, peer).expect("server end in dump");
    assert_eq!(server_end.cgroup_id, Some(own_cgroup_id()));

    // Destroying socat's socket: the server sees a reset or EOF.
    destroy_tcp(client_end).expect("destroy socat's socket");
    server.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut byte = [0u8; 1];
    match server.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected reset or EOF, got {other:?}"),
    }
    let stdin = child.0.stdin.take();
    drop(stdin);
}

#[test]
fn destroy_resets_the_peer_and_removes_the_socket() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let listener = TcpListener::bind(bind).expect("listen");
        let laddr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(laddr).expect("connect");
        let caddr = client.local_addr().expect("client addr");
        let (mut server, _) = accept_within(&listener, Duration::from_secs(20));
        server.write_all(b"x").expect("write before destroy");
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).expect("read before destroy");

        let socks = dump_tcp(StateMask::ALL).expect("dump");
        let victim = find(&socks, laddr, caddr).expect("server end").clone();

        // Same 4-tuple, wrong cookie: the kernel refuses; that socket is gone.
        let mut impostor = victim.clone();
        impostor.cookie ^= 1;
        let err = destroy_tcp(&impostor).expect_err("wrong cookie");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

        destroy_tcp(&victim).expect("destroy server end");

        client.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        match client.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            other => panic!("{bind}: expected reset or EOF, got {other:?}"),
        }
        // The owner of the destroyed socket sees ECONNABORTED.
        let err = server.read(&mut byte).expect_err("destroyed socket");
        assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");

        let after = dump_tcp(StateMask::ALL).expect("dump");
        assert!(after.iter().all(|s| s.cookie != victim.cookie));
        let err = destroy_tcp(&victim).expect_err("already gone");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}
