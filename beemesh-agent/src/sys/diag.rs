//! TCP socket dump and destroy over NETLINK_SOCK_DIAG (the interface behind `ss` and `ss -K`).
//! Used by the continuous-authorization sweep: after a policy change it lists every TCP socket
//! of the agent's network namespace, picks those owned by workload cgroups by
//! [`TcpSocket::cgroup_id`], re-evaluates them and destroys those no longer allowed.
//!
//! Wire format (all `linux/*.h` uapi): a request is `nlmsghdr` + `inet_diag_req_v2`; a dump reply
//! is a series of datagrams, each holding `nlmsghdr` + `inet_diag_msg` + netlink attributes, ended
//! by `NLMSG_DONE`. Integers are host-endian except ports (big-endian) and addresses (network
//! order). Replies are parsed from bytes with bounds checks; a malformed reply is an
//! [`ErrorKind::InvalidData`] error carrying a [`ReplyError`], never a panic. No `unsafe` here:
//! the socket calls go through `nix`.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};

// linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300; // NLM_F_ROOT | NLM_F_MATCH
const NLA_HDRLEN: usize = 4;
const NLA_TYPE_MASK: u16 = !(0x8000 | 0x4000); // ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

// linux/sock_diag.h
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;

// linux/inet_diag.h: sizeof(struct inet_diag_req_v2), sizeof(struct inet_diag_msg), and the
// attribute number in the INET_DIAG_* enum (checked against the header with a C compiler:
// INET_DIAG_CGROUP_ID == 21, INET_DIAG_PAD == 14).
const INET_DIAG_REQ_V2_LEN: usize = 56;
const INET_DIAG_MSG_LEN: usize = 72;
const INET_DIAG_CGROUP_ID: u16 = 21;

// linux/in.h, linux/socket.h
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Receive buffer. The kernel caps a dump datagram at 32 KiB (`netlink_dump`); `MSG_TRUNC` still
/// catches anything larger.
const RECV_BUF_LEN: usize = 64 * 1024;

/// A TCP state as the kernel reports it in `inet_diag_msg.idiag_state` (`net/tcp_states.h`).
/// Request sockets (`TCP_NEW_SYN_RECV`) are reported as [`TcpState::SynRecv`], bound-but-inactive
/// sockets as [`TcpState::Close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
}

impl TcpState {
    /// Every state the kernel reports.
    pub const ALL: [TcpState; 11] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
    ];

    fn from_kernel(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| *s as u8 == v)
    }
}

/// Which states a dump returns: the `idiag_states` bitmask (bit `1 << state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateMask(u32);

impl StateMask {
    pub const NONE: StateMask = StateMask(0);
    /// Every state (request sockets included: the kernel adds `TCPF_NEW_SYN_RECV` to a
    /// `SynRecv` request), without bound-inactive sockets.
    pub const ALL: StateMask = StateMask(0x1ffe);
    /// Sockets with a peer: everything but `Listen`, `Close` and `TimeWait`.
    pub const CONNECTED: StateMask = StateMask(
        Self::ALL.0
            & !(1 << TcpState::Listen as u8)
            & !(1 << TcpState::Close as u8)
            & !(1 << TcpState::TimeWait as u8),
    );
    /// Bound but neither listening nor connected (Linux 6.8+ `TCPF_BOUND_INACTIVE`); reported
    /// as [`TcpState::Close`].
    pub const BOUND_INACTIVE: StateMask = StateMask(1 << 13);

    pub const fn of(state: TcpState) -> Self {
        StateMask(1 << state as u8)
    }

    pub const fn with(self, state: TcpState) -> Self {
        StateMask(self.0 | 1 << state as u8)
    }

    pub const fn union(self, other: StateMask) -> Self {
        StateMask(self.0 | other.0)
    }

    pub const fn contains(self, state: TcpState) -> bool {
        self.0 & (1 << state as u8) != 0
    }

    pub const fn bits(self) -> u32 {
        self.0
    }
}

impl FromIterator<TcpState> for StateMask {
    fn from_iter<I: IntoIterator<Item = TcpState>>(iter: I) -> Self {
        iter.into_iter().fold(StateMask::NONE, StateMask::with)
    }
}

/// One TCP socket from a dump; enough to re-evaluate it and to destroy exactly it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TcpSocket {
    /// IPv4-mapped addresses of `AF_INET6` sockets stay [`SocketAddr::V6`]: the variant always
    /// tells the socket's family.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    /// The kernel's socket cookie (`inet_diag_sockid.idiag_cookie`, `bpf_get_socket_cookie()`),
    /// unique per socket for the life of the boot.
    pub cookie: u64,
    /// cgroup v2 id of the cgroup the socket was created in (accepted sockets inherit the
    /// listener's). `None` for time-wait and request sockets, which carry no cgroup.
    pub cgroup_id: Option<u64>,
    pub inode: u32,
    pub uid: u32,
    /// `AF_INET` or `AF_INET6`.
    family: u8,
    /// `SO_BINDTODEVICE` interface (0 if unbound); a bound socket is only found again with it.
    ifindex: u32,
}

impl TcpSocket {
    /// A socket that exists only in a test's socket table.
    #[cfg(test)]
    pub fn for_tests(local: SocketAddr, remote: SocketAddr, state: TcpState, cgroup_id: u64) -> Self {
        Self {
            local,
            remote,
            state,
            cookie: 0,
            cgroup_id: Some(cgroup_id),
            inode: 0,
            uid: 0,
            family: if local.is_ipv4() { 2 } else { 10 },
            ifindex: 0,
        }
    }
}

/// What is wrong with a reply from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("netlink header truncated at offset {offset}")]
    TruncatedHeader { offset: usize },
    #[error("netlink message at offset {offset} claims {len} bytes, {available} available")]
    BadMessageLength { offset: usize, len: usize, available: usize },
    #[error("inet_diag_msg of {0} bytes, need {INET_DIAG_MSG_LEN}")]
    ShortDiagMsg(usize),
    #[error("netlink attribute claims {len} bytes, {available} available")]
    BadAttributeLength { len: usize, available: usize },
    #[error("INET_DIAG_CGROUP_ID attribute of {0} bytes, need 8")]
    BadCgroupId(usize),
    #[error("unexpected address family {0}")]
    UnexpectedFamily(u8),
    #[error("NLMSG_ERROR payload of {0} bytes, need 4")]
    ShortError(usize),
    #[error("netlink reported overrun: reply lost")]
    Overrun,
    #[error("datagram of {0} bytes did not fit the receive buffer")]
    TruncatedDatagram(usize),
    #[error("empty netlink datagram")]
    EmptyDatagram,
}

impl From<ReplyError> for io::Error {
    fn from(e: ReplyError) -> Self {
        io::Error::new(ErrorKind::InvalidData, e)
    }
}

/// Dumps every TCP socket (IPv4 and IPv6) of the caller's network namespace in `states`.
pub fn dump_tcp(states: StateMask) -> io::Result<Vec<TcpSocket>> {
    dump(IPPROTO_TCP, states)
}

/// Dumps every UDP socket (IPv4 and IPv6): bound ones show as `Close`, connected ones as
/// `Established`. Same record type as TCP; only the addresses, cookie and cgroup matter.
pub fn dump_udp() -> io::Result<Vec<TcpSocket>> {
    dump(IPPROTO_UDP, StateMask::ALL)
}

fn dump(protocol: u8, states: StateMask) -> io::Result<Vec<TcpSocket>> {
    let mut nl = DiagSocket::open()?;
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        let req = ReqV2 {
            family,
            protocol,
            // The cgroup id needs no extension bit: `inet_diag_msg_attrs_fill()` adds
            // INET_DIAG_CGROUP_ID to every full socket (CONFIG_SOCK_CGROUP_DATA); the tests
            // check this with `idiag_ext == 0`.
            ext: 0,
            states: states.bits(),
            id: SockId::default(),
        };
        let seq = nl.request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, &req)?;
        nl.read_dump(seq, &mut out)?;
    }
    Ok(out)
}

/// Destroys exactly `sock` (`SOCK_DESTROY`, found by 4-tuple, interface and cookie): its owner
/// sees `ECONNABORTED` and the peer a reset. Fails with `ENOENT` ([`ErrorKind::NotFound`]) if the
/// socket is gone, including when its 4-tuple now belongs to another socket: the cookie differs,
/// which `inet_diag_find_one_icsk()` reports as `ENOENT` (an `ESTALE`, as `sock_diag_check_cookie()`
/// returns on other paths, is mapped to `ENOENT` too). `EOPNOTSUPP` without
/// `CONFIG_INET_DIAG_DESTROY`; `EPERM` without `CAP_NET_ADMIN`.
pub fn destroy_tcp(sock: &TcpSocket) -> io::Result<()> {
    let mut nl = DiagSocket::open()?;
    let req = ReqV2 {
        family: sock.family,
        protocol: IPPROTO_TCP,
        ext: 0,
        states: u32::MAX,
        id: SockId {
            sport: sock.local.port(),
            dport: sock.remote.port(),
            src: addr_bytes(sock.local.ip()),
            dst: addr_bytes(sock.remote.ip()),
            ifindex: sock.ifindex,
            cookie: sock.cookie,
        },
    };
    let seq = nl.request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &req)?;
    match nl.read_ack(seq) {
        Err(e) if e.raw_os_error() == Some(libc::ESTALE) => Err(io::Error::from_raw_os_error(libc::ENOENT)),
        other => other,
    }
}

fn addr_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

/// `struct inet_diag_sockid`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SockId {
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
    ifindex: u32,
    cookie: u64,
}

impl SockId {
    const LEN: usize = 48;

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.sport.to_be_bytes());
        out.extend_from_slice(&self.dport.to_be_bytes());
        out.extend_from_slice(&self.src);
        out.extend_from_slice(&self.dst);
        out.extend_from_slice(&self.ifindex.to_ne_bytes());
        // idiag_cookie[2]: low 32 bits first (sock_diag_save_cookie()).
        out.extend_from_slice(&(self.cookie as u32).to_ne_bytes());
        out.extend_from_slice(&((self.cookie >> 32) as u32).to_ne_bytes());
    }

    /// `b` is exactly `LEN` bytes.
    fn decode(b: &[u8; Self::LEN]) -> Self {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&b[4..20]);
        dst.copy_from_slice(&b[20..36]);
        let low = u32_ne(b, 40);
        let high = u32_ne(b, 44);
        SockId {
            sport: u16::from_be_bytes([b[0], b[1]]),
            dport: u16::from_be_bytes([b[2], b[3]]),
            src,
            dst,
            ifindex: u32_ne(b, 36),
            cookie: u64::from(high) << 32 | u64::from(low),
        }
    }
}

/// `struct inet_diag_req_v2`.
struct ReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    states: u32,
    id: SockId,
}

impl ReqV2 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[self.family, self.protocol, self.ext, 0]);
        out.extend_from_slice(&self.states.to_ne_bytes());
        self.id.encode(out);
    }
}

/// A `u32` at `at`; the caller has checked that 4 bytes are there.
fn u32_ne(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(w)
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

const fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// One netlink message of a reply.
#[derive(Debug, PartialEq, Eq)]
struct NlMsg<'a> {
    ty: u16,
    seq: u32,
    payload: &'a [u8],
}

/// Splits a datagram into netlink messages, checking every length against the buffer.
fn split_messages(buf: &[u8]) -> Result<Vec<NlMsg<'_>>, ReplyError> {
    let mut msgs = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        if rest.len() < NLMSG_HDRLEN {
            return Err(ReplyError::TruncatedHeader { offset });
        }
        let len = u32_ne(rest, 0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(ReplyError::BadMessageLength { offset, len, available: rest.len() });
        }
        msgs.push(NlMsg { ty: u16_ne(rest, 4), seq: u32_ne(rest, 8), payload: &rest[NLMSG_HDRLEN..len] });
        // The last message's padding may be missing; the loop ends either way.
        offset = offset.saturating_add(align4(len));
    }
    Ok(msgs)
}

/// The errno of an `NLMSG_ERROR` (0 for an ACK) or of a dump's `NLMSG_DONE`, as a positive
/// number.
fn parse_errno(payload: &[u8]) -> Result<i32, ReplyError> {
    if payload.len() < 4 {
        return Err(ReplyError::ShortError(payload.len()));
    }
    Ok(-(u32_ne(payload, 0) as i32))
}

/// Parses the payload of one `SOCK_DIAG_BY_FAMILY` reply message. `Ok(None)` for a socket in a
/// state this code does not know (a future kernel), which the sweep cannot judge anyway.
fn parse_diag_msg(payload: &[u8]) -> Result<Option<TcpSocket>, ReplyError> {
    let Some((head, attrs)) = payload.split_first_chunk::<INET_DIAG_MSG_LEN>() else {
        return Err(ReplyError::ShortDiagMsg(payload.len()));
    };
    let family = head[0];
    let state = head[1];
    let id_bytes =
        head[4..4 + SockId::LEN].try_into().map_err(|_| ReplyError::ShortDiagMsg(payload.len()))?;
    let id = SockId::decode(id_bytes);
    let uid = u32_ne(head, 64);
    let inode = u32_ne(head, 68);

    let ip = |bytes: [u8; 16]| -> Result<IpAddr, ReplyError> {
        match family {
            AF_INET => Ok(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
            AF_INET6 => Ok(IpAddr::V6(Ipv6Addr::from(bytes))),
            other => Err(ReplyError::UnexpectedFamily(other)),
        }
    };
    let local = SocketAddr::new(ip(id.src)?, id.sport);
    let remote = SocketAddr::new(ip(id.dst)?, id.dport);

    let mut cgroup_id = None;
    let mut rest = attrs;
    // As nla_for_each_attr(): fewer than NLA_HDRLEN trailing bytes are padding.
    while rest.len() >= NLA_HDRLEN {
        let len = usize::from(u16_ne(rest, 0));
        if len < NLA_HDRLEN || len > rest.len() {
            return Err(ReplyError::BadAttributeLength { len, available: rest.len() });
        }
        let value = &rest[NLA_HDRLEN..len];
        if u16_ne(rest, 2) & NLA_TYPE_MASK == INET_DIAG_CGROUP_ID {
            let bytes: [u8; 8] = value.try_into().map_err(|_| ReplyError::BadCgroupId(value.len()))?;
            cgroup_id = Some(u64::from_ne_bytes(bytes));
        }
        rest = rest.get(align4(len)..).unwrap_or_default();
    }

    let Some(state) = TcpState::from_kernel(state) else {
        return Ok(None);
    };
    Ok(Some(TcpSocket {
        local,
        remote,
        state,
        cookie: id.cookie,
        cgroup_id,
        inode,
        uid,
        family,
        ifindex: id.ifindex,
    }))
}

/// What one datagram of a dump contributed.
#[derive(Debug, PartialEq, Eq)]
enum DumpProgress {
    More,
    Done,
}

/// Handles one datagram of the dump answering `seq`, appending its sockets to `out`.
fn parse_dump_datagram(buf: &[u8], seq: u32, out: &mut Vec<TcpSocket>) -> io::Result<DumpProgress> {
    for msg in split_messages(buf)? {
        if msg.seq != seq {
            continue; // not ours (cannot happen on a private socket; cheap to check)
        }
        match msg.ty {
            NLMSG_DONE => {
                // A dump may end with a negative errno in NLMSG_DONE.
                let errno = if msg.payload.is_empty() { 0 } else { parse_errno(msg.payload)? };
                return if errno == 0 {
                    Ok(DumpProgress::Done)
                } else {
                    Err(io::Error::from_raw_os_error(errno))
                };
            }
            NLMSG_ERROR => match parse_errno(msg.payload)? {
                0 => {}
                errno => return Err(io::Error::from_raw_os_error(errno)),
            },
            NLMSG_OVERRUN => return Err(ReplyError::Overrun.into()),
            SOCK_DIAG_BY_FAMILY => out.extend(parse_diag_msg(msg.payload)?),
            _ => {} // NLMSG_NOOP and anything new
        }
    }
    Ok(DumpProgress::More)
}

/// Handles one datagram answering the `NLM_F_ACK` request `seq`: `Some` once the ACK is seen.
fn parse_ack_datagram(buf: &[u8], seq: u32) -> io::Result<Option<()>> {
    for msg in split_messages(buf)? {
        if msg.seq == seq && msg.ty == NLMSG_ERROR {
            return match parse_errno(msg.payload)? {
                0 => Ok(Some(())),
                errno => Err(io::Error::from_raw_os_error(errno)),
            };
        }
    }
    Ok(None)
}

/// A private NETLINK_SOCK_DIAG socket: one per call, so replies never interleave.
struct DiagSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl DiagSocket {
    fn open() -> io::Result<Self> {
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        Ok(DiagSocket { fd, seq: 0, buf: vec![0; RECV_BUF_LEN] })
    }

    /// Sends one request and returns its sequence number.
    fn request(&mut self, ty: u16, flags: u16, req: &ReqV2) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDRLEN + INET_DIAG_REQ_V2_LEN;
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&flags.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: 0 is the kernel
        req.encode(&mut msg);
        debug_assert_eq!(msg.len(), len);
        let sent = retry_eintr(|| socket::send(self.fd.as_raw_fd(), &msg, MsgFlags::empty()))?;
        if sent != msg.len() {
            return Err(io::Error::new(ErrorKind::WriteZero, "short netlink send"));
        }
        Ok(self.seq)
    }

    /// Receives one datagram; returns its length within `self.buf`.
    fn recv(&mut self) -> io::Result<usize> {
        let n = retry_eintr(|| socket::recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::MSG_TRUNC))?;
        if n > self.buf.len() {
            return Err(ReplyError::TruncatedDatagram(n).into());
        }
        if n == 0 {
            return Err(ReplyError::EmptyDatagram.into());
        }
        Ok(n)
    }

    fn read_dump(&mut self, seq: u32, out: &mut Vec<TcpSocket>) -> io::Result<()> {
        loop {
            let n = self.recv()?;
            if parse_dump_datagram(&self.buf[..n], seq, out)? == DumpProgress::Done {
                return Ok(());
            }
        }
    }

    fn read_ack(&mut self, seq: u32) -> io::Result<()> {
        loop {
            let n = self.recv()?;
            if parse_ack_datagram(&self.buf[..n], seq)?.is_some() {
                return Ok(());
            }
        }
    }
}

fn retry_eintr<T>(mut f: impl FnMut() -> nix::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other.map_err(io::Error::from),
        }
    }
}

#[cfg(test)]
mod tests {
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
        ReqV2 {
            family: AF_INET,
            protocol: IPPROTO_TCP,
            ext: 0,
            states: StateMask::ALL.bits(),
            id: sample_id(),
        }
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
        let sock =
            parse_diag_msg(&diag_payload(AF_INET6, 10, id, &[])).expect("parses").expect("known state");
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
        assert_eq!(
            parse_diag_msg(&diag_payload(1, 1, sample_id(), &[])),
            Err(ReplyError::UnexpectedFamily(1))
        );
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
            let mut buf = if next() % 2 == 0 {
                good.clone()
            } else {
                (0..next() % 200).map(|_| next() as u8).collect()
            };
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
            let (server, _) = accept_within(&listener, Duration::from_secs(5));

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
        let (mut server, _) = accept_within(&listener, Duration::from_secs(5));
        let before = dump_tcp(StateMask::ALL).expect("dump");
        let cookie = find(&before, caddr, laddr).expect("client end").cookie;

        drop(client); // the active closer ends in TIME_WAIT
        server.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        assert_eq!(server.read(&mut [0u8; 1]).expect("EOF"), 0);
        drop(server);

        let start = Instant::now();
        let tw = loop {
            let socks = dump_tcp(StateMask::of(TcpState::TimeWait)).expect("dump");
            if let Some(tw) = find(&socks, caddr, laddr) {
                break tw.clone();
            }
            assert!(start.elapsed() < Duration::from_secs(5), "no TIME_WAIT socket");
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
        let (server, peer) = accept_within(&listener, Duration::from_secs(5));
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
        let (mut server, peer) = accept_within(&listener, Duration::from_secs(5));

        let socks = dump_tcp(StateMask::of(TcpState::Established)).expect("dump");
        let client_end = find(&socks, peer, laddr).expect("socat's socket in dump");
        assert_eq!(client_end.cgroup_id, Some(cg_id));
        assert_ne!(cg_id, own_cgroup_id());
        // The accepted end inherits the listener's cgroup, not the peer's.
        let server_end = find(&socks, laddr, peer).expect("server end in dump");
        assert_eq!(server_end.cgroup_id, Some(own_cgroup_id()));

        // Destroying socat's socket: the server sees a reset or EOF.
        destroy_tcp(client_end).expect("destroy socat's socket");
        server.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
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
            let (mut server, _) = accept_within(&listener, Duration::from_secs(5));
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

            client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
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
}
