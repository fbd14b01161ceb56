//! UDP to Services and pod mesh addresses.
//!
//! The kernel's `sendmsg4` captures a workload's datagram to a Service's UDP port (slirp4netns
//! sends every pod datagram unconnected, from a host socket in the pod's cgroup): it gives the
//! flow (socket, destination) an id, keeps a backend for it, decides policy against that
//! backend for every datagram, and sends the datagram to this module's socket at the loopback
//! address `127.<id>`. The address names the flow: the agent reads the kernel's record of it
//! once (`UDP_CAPTURES`), and takes the flow's datagrams only from the socket the record
//! names. Replies go back from the same address; `recvmsg4` makes them read as from the
//! Service the workload asked.
//!
//! A backend on this host gets the datagrams from a socket made in its pod's network
//! namespace; one on another host through a tunnel stream (`Proto::Udp`, framed by
//! `tunnel::datagrams`), where the destination agent decides again and delivers them the same
//! way. A flow that moves nothing either way for [`UDP_IDLE`] ends, as conntrack forgets a UDP
//! flow; a policy change that forbids it cuts it at once.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use beemesh_common::{udp_capture_addr, udp_capture_id, UdpCapture, PROTO_UDP};
use bytes::Bytes;
use nix::sys::socket::{self as sock, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use super::endpoints::Backend;
use super::{Check, LocalPod, Shared, Table, REVOKED};
use crate::tunnel::splice::Activity;
use crate::tunnel::{self, datagrams, Connection, Proto, StreamHeader, Target};

/// A UDP flow that moves no datagram either way this long ends (conntrack's timeout for a UDP
/// flow that has seen replies).
pub(super) const UDP_IDLE: Duration = Duration::from_secs(120);
/// Datagrams queued toward one flow's backend; more are dropped, as a full socket buffer
/// drops them.
const FLOW_QUEUE: usize = 256;
/// Every this many new flows, the ended ones are forgotten.
const SWEEP_EVERY: u64 = 256;

/// The agent's UDP capture socket: every address of the host (the flows' loopback addresses
/// among them), with each datagram's destination reported (`IP_PKTINFO`).
pub(super) fn bind() -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.set_nonblocking(true)?;
    sock::setsockopt(&socket, sock::sockopt::Ipv4PacketInfo, &true)?;
    UdpSocket::from_std(socket)
}

/// The next datagram of `socket` (`what`, for the log): its length, sender and destination
/// address. A failed read is logged and skipped (after 100 ms, so that a socket in error
/// does not spin).
async fn next_datagram(
    socket: &UdpSocket,
    buf: &mut [u8],
    what: &str,
) -> (usize, SocketAddrV4, Option<Ipv4Addr>) {
    loop {
        match recv_from_to(socket, buf).await {
            Ok(got) => return got,
            Err(e) => {
                debug!(socket = what, error = %e, "UDP read failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One datagram: its length, sender and destination address (`IP_PKTINFO`).
async fn recv_from_to(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddrV4, Option<Ipv4Addr>)> {
    socket
        .async_io(Interest::READABLE, || {
            let mut iov = [io::IoSliceMut::new(buf)];
            let mut space = nix::cmsg_space!(libc::in_pktinfo);
            let msg = sock::recvmsg::<SockaddrIn>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )?;
            let from =
                msg.address.map(SocketAddrV4::from).ok_or_else(|| io::Error::other("no sender address"))?;
            let mut to = None;
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::Ipv4PacketInfo(info) = cmsg {
                    to = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                }
            }
            Ok((msg.bytes, from, to))
        })
        .await
}

/// Where a flow's replies go: to the workload's socket, from the flow's loopback address.
struct Replies {
    socket: Arc<UdpSocket>,
    from: Ipv4Addr,
    to: SocketAddrV4,
}

impl Replies {
    async fn send(&self, datagram: &[u8]) -> io::Result<()> {
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr { s_addr: u32::from(self.from).to_be() },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let to = SockaddrIn::from(self.to);
        self.socket
            .async_io(Interest::WRITABLE, || {
                let iov = [io::IoSlice::new(datagram)];
                let cmsg = [ControlMessage::Ipv4PacketInfo(&info)];
                sock::sendmsg(self.socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), Some(&to))
                    .map_err(io::Error::from)
            })
            .await
            .map(|_| ())
    }
}

/// A flow's datagrams on their way in, and the socket they come from.
struct Inbound {
    tx: mpsc::Sender<Bytes>,
    from: SocketAddrV4,
}

/// Reads the capture socket: each datagram to its flow, a new flow started from the kernel's
/// record of it.
pub(super) async fn capture_loop(shared: Arc<Shared>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let mut flows: HashMap<u32, Inbound> = HashMap::new();
    let mut started = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let (n, from, to) = next_datagram(&socket, &mut buf, "capture").await;
        // Only the kernel's rewrite leads here: a flow's loopback address, from this host.
        let Some(id) = to.and_then(|to| udp_capture_id(u32::from(to))).filter(|_| from.ip().is_loopback())
        else {
            debug!(%from, ?to, "datagram to the UDP capture port that the kernel did not capture: dropped");
            continue;
        };
        let datagram = Bytes::copy_from_slice(&buf[..n]);
        if let Some(flow) = flows.get(&id).filter(|f| f.from == from && !f.tx.is_closed()) {
            if flow.tx.try_send(datagram).is_err() {
                debug!(id, "UDP flow queue full: datagram dropped");
            }
            continue;
        }
        let record = shared.maps.lock().ok().and_then(|m| m.udp_capture(id));
        let flow_addr = Ipv4Addr::from(udp_capture_addr(id));
        let Some(record) = record
            .filter(|r| r.src_port == from.port() || (r.src_port == 0 && sent_by(r.cookie, from, flow_addr)))
        else {
            debug!(id, %from, "datagram of a UDP flow the kernel has no record of from that socket: dropped");
            continue;
        };
        started += 1;
        if started.is_multiple_of(SWEEP_EVERY) {
            flows.retain(|_, f| !f.tx.is_closed());
        }
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let _ = tx.try_send(datagram);
        flows.insert(id, Inbound { tx, from });
        let replies = Replies { socket: socket.clone(), from: flow_addr, to: from };
        tokio::spawn(flow(shared.clone(), record, rx, replies));
    }
}

/// Whether the socket that sent from `from` to the flow's address `to` is the one whose cookie
/// the kernel recorded: for a flow captured at a UDP socket's `connect()` before the socket had
/// a port (the record's `src_port` is 0). One socket dump per such flow, when its first
/// datagram arrives; the cookie, not the port, proves the sender.
fn sent_by(cookie: u64, from: SocketAddrV4, to: Ipv4Addr) -> bool {
    let v4 = |a: SocketAddr| match a {
        SocketAddr::V4(a) => Some(*a.ip()),
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped(),
    };
    match crate::sys::diag::dump_udp() {
        Ok(sockets) => sockets.iter().any(|s| {
            s.cookie == cookie
                && s.local.port() == from.port()
                && v4(s.local) == Some(*from.ip())
                && v4(s.remote) == Some(to)
        }),
        Err(e) => {
            warn!(error = %e, "cannot list UDP sockets to check a connected flow's sender: dropped");
            false
        }
    }
}

/// One captured UDP flow, to its backend here or through a tunnel, until it idles or the
/// policy cuts it.
async fn flow(shared: Arc<Shared>, record: UdpCapture, rx: mpsc::Receiver<Bytes>, replies: Replies) {
    let table = shared.table.borrow().clone();
    let Some(mut backend) = table.backends.get(&record.backend).cloned() else {
        warn!(backend = record.backend, "captured UDP flow to a backend that is gone: dropped");
        return;
    };
    // A pod's mesh address: the port asked for.
    if backend.port == 0 {
        backend.port = record.port;
    }
    let Some((source, source_pod)) = shared.source_of(record.subject) else {
        warn!(subject = record.subject, "captured UDP flow from an unknown workload: dropped");
        return;
    };
    let check =
        Check::Egress { subject: record.subject, peer: record.peer, port: backend.port, proto: PROTO_UDP };
    relay(&shared, &table, backend, source, source_pod, check, rx, replies).await;
}

/// Relays a flow to `backend`, here or through a tunnel under `source`, registered for
/// revocation with `check`; logs how it ended.
#[allow(clippy::too_many_arguments)]
async fn relay(
    shared: &Shared,
    table: &Table,
    backend: Backend,
    source: String,
    source_pod: Option<String>,
    check: Check,
    rx: mpsc::Receiver<Bytes>,
    replies: Replies,
) {
    let live = shared.live.register(check);
    let result = if backend.node == shared.node {
        let key = format!("{}/{}", backend.namespace, backend.pod);
        let pod = shared.local.borrow().local.get(&key).cloned();
        match pod {
            Some(pod) => to_pod(&pod, backend.port, rx, &replies, &live.cut).await,
            None => Err(format!("pod {key} does not run here")),
        }
    } else {
        let header = StreamHeader {
            source: source.clone(),
            pod: source_pod,
            target: Target {
                host: format!("{}/{}", backend.namespace, backend.pod),
                port: backend.port,
                proto: Proto::Udp,
            },
        };
        match table.tunnels.get(&backend.node) {
            Some(addr) => match shared.connection(&source, &backend.node, *addr).await {
                Ok(conn) => through_tunnel(&conn, &header, rx, &replies, &live.cut).await,
                Err(e) => Err(e),
            },
            None => Err(format!("no tunnel address for {}", backend.node)),
        }
    };
    match result {
        Ok(moved) => {
            debug!(source = %source, pod = %backend.pod, node = %backend.node, ?moved, "UDP flow ended")
        }
        Err(e) => {
            info!(source = %source, pod = %backend.pod, node = %backend.node, error = %e, "UDP flow ended")
        }
    }
}

/// A NodePort's UDP socket: all IPv4 addresses, as kube-proxy listens, with each datagram's
/// destination reported so that replies leave from the address the client sent to.
pub(super) fn bind_node_port(port: u16) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
    socket.set_nonblocking(true)?;
    sock::setsockopt(&socket, sock::sockopt::Ipv4PacketInfo, &true)?;
    UdpSocket::from_std(socket)
}

/// A UDP NodePort: each client (address and port) is a flow to one of the Service port's
/// backends in turn, decided as from `world` (`host` from this host), to another host under
/// the agent's node-port identity.
pub(super) async fn node_port_loop(shared: Arc<Shared>, socket: UdpSocket, port: u16) {
    let socket = Arc::new(socket);
    let mut flows: HashMap<SocketAddrV4, mpsc::Sender<Bytes>> = HashMap::new();
    let mut started = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let (n, from, to) = next_datagram(&socket, &mut buf, "node port").await;
        let datagram = Bytes::copy_from_slice(&buf[..n]);
        if let Some(tx) = flows.get(&from).filter(|tx| !tx.is_closed()) {
            if tx.try_send(datagram).is_err() {
                debug!(port, %from, "UDP flow queue full: datagram dropped");
            }
            continue;
        }
        let table = shared.table.borrow().clone();
        let Some((backend, check)) = shared.node_port_backend(&table, port, PROTO_UDP, from.into()) else {
            continue;
        };
        if !check.allowed(&shared.names.borrow().policy) {
            info!(port, %from, pod = %backend.pod, "node port datagram denied by policy");
            continue;
        }
        started += 1;
        if started.is_multiple_of(SWEEP_EVERY) {
            flows.retain(|_, tx| !tx.is_closed());
        }
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        let _ = tx.try_send(datagram);
        flows.insert(from, tx);
        let replies = Replies { socket: socket.clone(), from: to.unwrap_or(Ipv4Addr::UNSPECIFIED), to: from };
        let shared = shared.clone();
        tokio::spawn(async move {
            let source = shared.node_port_identity();
            relay(&shared, &table, backend, source, None, check, rx, replies).await;
        });
    }
}

/// Datagrams moved (to the backend, back) when a flow ended quietly.
type Moved = (u64, u64);

/// Relays a flow to `port` of a pod on this host, from a socket in its network namespace.
async fn to_pod(
    pod: &LocalPod,
    port: u16,
    mut rx: mpsc::Receiver<Bytes>,
    replies: &Replies,
    cut: &Notify,
) -> Result<Moved, String> {
    let upstream = dial_pod_udp(pod, port).await.map_err(|e| format!("UDP socket to port {port}: {e}"))?;
    let activity = Activity::new();
    let (mut up, mut down) = (0u64, 0u64);
    let outbound = async {
        while let Some(d) = rx.recv().await {
            // A datagram the pod's stack refuses is lost, as UDP loses it.
            let _ = upstream.send(&d).await;
            up += 1;
            activity.touch();
        }
    };
    let inbound = async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match upstream.recv(&mut buf).await {
                Ok(n) => {
                    let _ = replies.send(&buf[..n]).await;
                    down += 1;
                    activity.touch();
                }
                // An ICMP error for an earlier datagram (nothing listens): the flow goes on.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return e,
            }
        }
    };
    tokio::select! {
        () = outbound => {}
        e = inbound => return Err(format!("pod socket: {e}")),
        () = activity.idle(UDP_IDLE) => {}
        () = cut.notified() => return Err("revoked: the policy no longer allows it".into()),
    }
    Ok((up, down))
}

/// Relays a flow through a tunnel stream to another host's agent.
async fn through_tunnel(
    conn: &Connection,
    header: &StreamHeader,
    mut rx: mpsc::Receiver<Bytes>,
    replies: &Replies,
    cut: &Notify,
) -> Result<Moved, String> {
    let (mut send, mut recv) = conn.open(header).await.map_err(|e| e.to_string())?;
    let activity = Activity::new();
    let (mut up, mut down) = (0u64, 0u64);
    let outbound = async {
        while let Some(d) = rx.recv().await {
            datagrams::send(&mut send, &d).await?;
            up += 1;
            activity.touch();
        }
        Ok::<_, io::Error>(())
    };
    let inbound = async {
        let mut buf = Vec::new();
        while let Some(n) = datagrams::recv(&mut recv, &mut buf).await? {
            let _ = replies.send(&buf[..n]).await;
            down += 1;
            activity.touch();
        }
        Ok::<_, io::Error>(())
    };
    let ended = tokio::select! {
        r = outbound => r.map_err(|e| format!("tunnel stream: {e}")),
        r = inbound => r.map_err(|e| format!("tunnel stream: {e}")),
        () = activity.idle(UDP_IDLE) => Ok(()),
        () = cut.notified() => Err("revoked: the policy no longer allows it".to_owned()),
    };
    if ended.is_err() {
        let _ = send.reset(REVOKED);
        let _ = recv.stop(REVOKED);
    } else {
        let _ = send.finish();
    }
    ended.map(|()| (up, down))
}

/// A UDP socket connected to `port` of `pod`, made inside its network namespace.
async fn dial_pod_udp(pod: &LocalPod, port: u16) -> io::Result<UdpSocket> {
    let pid = pod.init_pid;
    let fd = tokio::task::spawn_blocking(move || crate::sys::process::udp_socket_in_netns_of(pid, false))
        .await
        .map_err(io::Error::other)??;
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
    socket.connect((crate::pod::net::POD_ADDR, port)).await?;
    Ok(socket)
}

/// A UDP tunnel stream on the destination host, already vouched for and allowed: its
/// datagrams to the target pod's port from a socket in the pod's network namespace, the
/// replies back, until the stream ends, the flow idles or the policy cuts it.
pub(super) async fn serve_stream(
    shared: &Shared,
    conn: &Connection,
    pod: &LocalPod,
    header: &StreamHeader,
    check: Check,
    mut send: tunnel::SendStream,
    mut recv: tunnel::RecvStream,
) {
    let port = header.target.port;
    let upstream = match dial_pod_udp(pod, port).await {
        Ok(s) => s,
        Err(e) => {
            info!(target = %header.target.host, port, error = %e, "UDP tunnel stream: no socket to the pod");
            let _ = send.reset(tunnel::BAD_HEADER);
            let _ = recv.stop(tunnel::BAD_HEADER);
            return;
        }
    };
    let live = shared.live.register(check);
    debug!(peer = conn.peer_id(), target = %header.target.host, port, "UDP tunnel stream opened");
    let activity = Activity::new();
    let inbound = async {
        let mut buf = Vec::new();
        while let Some(n) = datagrams::recv(&mut recv, &mut buf).await? {
            let _ = upstream.send(&buf[..n]).await;
            activity.touch();
        }
        Ok::<_, io::Error>(())
    };
    let outbound = async {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match upstream.recv(&mut buf).await {
                Ok(n) => {
                    datagrams::send(&mut send, &buf[..n]).await?;
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err::<(), _>(e),
            }
        }
    };
    let ended = tokio::select! {
        r = inbound => r.map_err(|e| e.to_string()),
        r = outbound => r.map_err(|e| e.to_string()),
        () = activity.idle(UDP_IDLE) => Ok(()),
        () = live.cut.notified() => Err("revoked: the policy no longer allows it".to_owned()),
    };
    match ended {
        Ok(()) => {
            let _ = send.finish();
            debug!(peer = conn.peer_id(), target = %header.target.host, port, "UDP tunnel stream ended");
        }
        Err(why) => {
            let _ = send.reset(REVOKED);
            let _ = recv.stop(REVOKED);
            info!(peer = conn.peer_id(), target = %header.target.host, port, "UDP tunnel stream cut: {why}");
        }
    }
}
