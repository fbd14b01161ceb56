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
mod tests;
