//! Continuous authorization: after every policy change the agent lists the host's TCP
//! sockets (sock_diag), re-decides each connection a workload holds with the policy now in
//! force, and destroys the ones that are no longer allowed. `revoked` is the pure decision;
//! `sweep` is the driver the agent actor calls.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use beemesh_common::{
    Decision, PeerSet, Query, DIR_EGRESS, DIR_INGRESS, FIRST_CIDR_ID, FIRST_WORKLOAD_ID, ID_HOST, ID_NONE,
    ID_WORLD, PROTO_TCP,
};
use tracing::{info, warn};

use crate::sys::diag::{self, StateMask, TcpSocket, TcpState};

/// The forwarder's capture listener port on loopback (0: none yet).
static CAPTURE_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// Tells the sweep where captured connections go: the forwarder re-decides those itself.
pub fn set_capture_port(port: u16) {
    CAPTURE_PORT.store(port, std::sync::atomic::Ordering::Relaxed);
}

/// What the sweep needs from a compiled policy.
pub trait Verdicts {
    fn decide(&self, q: &Query) -> Decision;
    fn cidr_identity(&self, ip: IpAddr) -> Option<u32>;
}

fn is_workload(id: u32) -> bool {
    (FIRST_WORKLOAD_ID..FIRST_CIDR_ID).contains(&id)
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// This host's addresses, as the kernel's `LOCAL_ADDRS` plus loopback.
#[derive(Debug, Default, Clone)]
pub struct LocalAddrs(pub HashSet<IpAddr>);

impl LocalAddrs {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_loopback() || self.0.contains(&ip)
    }

    /// Reads the host's interface addresses.
    pub fn read() -> Self {
        let mut set = HashSet::new();
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for ifa in addrs {
                let Some(addr) = ifa.address else { continue };
                if let Some(v4) = addr.as_sockaddr_in() {
                    set.insert(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    set.insert(IpAddr::V6(v6.ip()));
                }
            }
        }
        Self(set)
    }
}

fn is_connection(state: TcpState) -> bool {
    !matches!(state, TcpState::Listen | TcpState::Close | TcpState::TimeWait)
}

/// The connections held by workloads (`owners`: cgroup id -> identity) that `policy` no
/// longer allows. Direction comes from the socket table: a connection whose local port has
/// a listener is inbound, any other is outbound.
pub fn revoked<'a>(
    sockets: &'a [TcpSocket],
    owners: &HashMap<u64, u32>,
    policy: &impl Verdicts,
    local: &LocalAddrs,
) -> Vec<&'a TcpSocket> {
    let owner_of = |s: &TcpSocket| s.cgroup_id.and_then(|c| owners.get(&c).copied());
    // Listening port -> identity of whoever listens (a workload, or the host).
    let listeners: HashMap<u16, u32> = sockets
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| (s.local.port(), owner_of(s).unwrap_or(ID_HOST)))
        .collect();
    // Local endpoint of each connected socket -> its owner, to name local clients.
    let endpoints: HashMap<SocketAddr, u32> = sockets
        .iter()
        .filter(|s| is_connection(s.state))
        .filter_map(|s| Some((SocketAddr::new(canonical(s.local.ip()), s.local.port()), owner_of(s)?)))
        .collect();
    let non_workload = |primary: u32, ip: IpAddr| PeerSet {
        primary,
        cidr: policy.cidr_identity(canonical(ip)).unwrap_or(ID_NONE),
    };

    let captured = CAPTURE_PORT.load(std::sync::atomic::Ordering::Relaxed);
    let mut out = Vec::new();
    for s in sockets.iter().filter(|s| is_connection(s.state)) {
        let Some(subject) = owner_of(s) else { continue };
        let remote = SocketAddr::new(canonical(s.remote.ip()), s.remote.port());
        // A connection the kernel captured for a Service: the forwarder decides it again
        // against its backend (its socket only shows the agent's listener).
        if captured != 0 && remote.ip().is_loopback() && remote.port() == captured {
            continue;
        }
        let remote_is_local = local.contains(remote.ip());
        let inbound = listeners.contains_key(&s.local.port());
        let allowed = if inbound {
            let peers = match (remote_is_local, endpoints.get(&remote)) {
                (true, Some(&id)) => PeerSet { primary: id, cidr: ID_NONE },
                (true, None) => non_workload(ID_HOST, remote.ip()),
                (false, _) => non_workload(ID_WORLD, remote.ip()),
            };
            policy
                .decide(&Query {
                    subject,
                    direction: DIR_INGRESS,
                    peers,
                    proto: PROTO_TCP,
                    port: s.local.port(),
                })
                .allowed
        } else {
            let peers = match (remote_is_local, listeners.get(&remote.port())) {
                (true, Some(&id)) if is_workload(id) => PeerSet { primary: id, cidr: ID_NONE },
                (true, _) => non_workload(ID_HOST, remote.ip()),
                (false, _) => non_workload(ID_WORLD, remote.ip()),
            };
            let mine = policy.decide(&Query {
                subject,
                direction: DIR_EGRESS,
                peers,
                proto: PROTO_TCP,
                port: remote.port(),
            });
            mine.allowed
                && (!is_workload(peers.primary)
                    || policy
                        .decide(&Query {
                            subject: peers.primary,
                            direction: DIR_INGRESS,
                            peers: PeerSet { primary: subject, cidr: ID_NONE },
                            proto: PROTO_TCP,
                            port: remote.port(),
                        })
                        .allowed)
        };
        if !allowed {
            out.push(s);
        }
    }
    out
}

/// Lists sockets, destroys the revoked ones and returns how many were cut.
pub fn sweep(owners: &HashMap<u64, u32>, policy: &impl Verdicts, local: &LocalAddrs) -> usize {
    if owners.is_empty() {
        return 0;
    }
    // Time-wait sockets carry no cgroup and can number hundreds of thousands on a busy
    // host: leave them out of the dump.
    let sockets = match diag::dump_tcp(StateMask::CONNECTED.with(TcpState::Listen)) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot list sockets; established connections not re-checked");
            return 0;
        }
    };
    let mut cut = 0;
    for s in revoked(&sockets, owners, policy, local) {
        match diag::destroy_tcp(s) {
            Ok(()) => {
                cut += 1;
                info!(local = %s.local, remote = %s.remote, "revoked: connection torn down");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(local = %s.local, remote = %s.remote, error = %e, "cannot destroy socket")
            }
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allows exactly the (subject, direction, peer, port) tuples listed.
    struct Allow(Vec<(u32, u8, u32, u16)>);

    impl Verdicts for Allow {
        fn decide(&self, q: &Query) -> Decision {
            let allowed = self.0.iter().any(|&(s, d, p, port)| {
                s == q.subject && d == q.direction && p == q.peers.primary && port == q.port
            });
            Decision { allowed, rule: 0, peer: q.peers.primary }
        }
        fn cidr_identity(&self, _ip: IpAddr) -> Option<u32> {
            None
        }
    }

    fn sock(local: &str, remote: &str, state: TcpState, cg: u64) -> TcpSocket {
        TcpSocket::for_tests(local.parse().expect("addr"), remote.parse().expect("addr"), state, cg)
    }

    #[test]
    fn revocation_finds_both_directions() {
        // Workload 300 (cgroup 10) listens on 8080; workload 301 (cgroup 11) is connected to it.
        let sockets = vec![
            sock("0.0.0.0:8080", "0.0.0.0:0", TcpState::Listen, 10),
            sock("127.0.0.1:8080", "127.0.0.1:40000", TcpState::Established, 10),
            sock("127.0.0.1:40000", "127.0.0.1:8080", TcpState::Established, 11),
            // A host process (cgroup 1) connected to workload 300.
            sock("127.0.0.1:8080", "127.0.0.1:40001", TcpState::Established, 10),
            sock("127.0.0.1:40001", "127.0.0.1:8080", TcpState::Established, 1),
        ];
        let owners = HashMap::from([(10, 300), (11, 301)]);
        let local = LocalAddrs::default();
        let everything = Allow(vec![
            (301, DIR_EGRESS, 300, 8080),
            (300, DIR_INGRESS, 301, 8080),
            (300, DIR_INGRESS, ID_HOST, 8080),
        ]);
        assert!(revoked(&sockets, &owners, &everything, &local).is_empty());

        // 300 stops accepting 301: both of their ends go, the host's connection stays.
        let no_301 = Allow(vec![(301, DIR_EGRESS, 300, 8080), (300, DIR_INGRESS, ID_HOST, 8080)]);
        let cut: Vec<_> = revoked(&sockets, &owners, &no_301, &local)
            .iter()
            .map(|s| (s.local.port(), s.remote.port()))
            .collect();
        assert_eq!(cut, vec![(8080, 40000), (40000, 8080)]);
    }
}
