//! Types shared by the beemesh kernel programs (`beemesh-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` and `Copy` so that it can live in BPF maps and ring
//! buffers with the same layout on both sides. The verdict logic itself ([`decide`]) is
//! here too, generic over how maps are read, so that the kernel fast path and the agent's
//! revocation sweep evaluate policy with exactly the same rules.
#![no_std]

pub mod verdict;

pub use verdict::{decide, Decision, PeerSet, Query};

/// No identity: a socket or address the agent knows nothing about.
pub const ID_NONE: u32 = 0;
/// Processes on this host that are not in any workload (reserved entity `host`).
pub const ID_HOST: u32 = 1;
/// Addresses outside this host that no CIDR rule names (reserved entity `world`).
pub const ID_WORLD: u32 = 2;
/// Wildcard peer in a [`PolicyKey`]: the rule applies to every peer.
pub const ID_ANY: u32 = u32::MAX;
/// First numeric id handed to a workload identity (below are reserved entities).
pub const FIRST_WORKLOAD_ID: u32 = 256;
/// First numeric id handed to a CIDR identity (address blocks named by policies).
pub const FIRST_CIDR_ID: u32 = 0x0100_0000;

/// Traffic leaving the subject (connect, sendmsg).
pub const DIR_EGRESS: u8 = 0;
/// Traffic arriving at the subject (inbound SYN, inbound datagram).
pub const DIR_INGRESS: u8 = 1;

/// Wildcard protocol in a [`PolicyKey`].
pub const PROTO_ANY: u8 = 0;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Verdicts as stored in [`FlowEvent::verdict`].
pub const VERDICT_DENY: u8 = 0;
pub const VERDICT_ALLOW: u8 = 1;

/// Rule id used when no rule decided and the global default applied.
pub const RULE_DEFAULT: u32 = 0;
/// Capacity of the per-rule counter array, per policy slot.
pub const MAX_RULES: u32 = 16384;

/// Capacity of each policy slot's allow map.
pub const POLICY_MAP_SIZE: u32 = 262_144;
/// Capacity of each slot's CIDR trie.
pub const CIDR_MAP_SIZE: u32 = 65_536;
/// Capacity of the isolation (default-deny) map per slot.
pub const ISOLATION_MAP_SIZE: u32 = 65_536;
/// Capacity of the cgroup -> identity map.
pub const CGROUP_MAP_SIZE: u32 = 65_536;

/// `REFUSE_CGROUPS` values (bits) for a slirp4netns leaf: denied connects fail with
/// ECONNREFUSED...
pub const NET_LEAF_REFUSE: u8 = 1;
/// ...and its DNS queries go where the pod sends them (`dnsPolicy: None`), not to the agent.
pub const NET_LEAF_OWN_DNS: u8 = 2;
/// Capacity of the local-port owner map.
pub const LOCAL_PORT_MAP_SIZE: u32 = 131_072;
/// Capacity of the remote endpoint (address:port -> identity) map.
pub const ENDPOINT_MAP_SIZE: u32 = 65_536;
/// Capacity of the local address set.
pub const LOCAL_ADDR_MAP_SIZE: u32 = 1024;
/// Ring buffer size for flow events (bytes, power of two).
pub const FLOW_RING_BYTES: u32 = 1 << 18;

/// Flow events: emit every verdict.
pub const FLOWS_ALL: u8 = 0;
/// Flow events: emit only denials.
pub const FLOWS_DENIED: u8 = 1;
/// Flow events: emit nothing.
pub const FLOWS_NONE: u8 = 2;
/// Flow events: every denial; an allowed flow at most once per [`FLOW_SAMPLE_NS`] per
/// (subject, peer, port, protocol, direction).
pub const FLOWS_SAMPLED: u8 = 3;
/// Sampling window of `FLOWS_SAMPLED`.
pub const FLOW_SAMPLE_NS: u64 = 1_000_000_000;

/// An IPv4 or IPv6 address as four network-order words; IPv4 is IPv4-mapped
/// (`::ffff:a.b.c.d`), so one key type serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub words: [u32; 4],
}

impl Addr {
    /// Builds an IPv4-mapped address from a network-order IPv4 word (as the kernel
    /// stores `user_ip4`, `saddr` and friends).
    #[inline(always)]
    pub const fn from_v4_be(ip: u32) -> Self {
        Self { words: [0, 0, u32::to_be(0x0000_ffff), ip] }
    }

    #[inline(always)]
    pub const fn is_v4_mapped(&self) -> bool {
        self.words[0] == 0 && self.words[1] == 0 && self.words[2] == u32::to_be(0x0000_ffff)
    }

    /// 127.0.0.0/8 and ::1.
    #[inline(always)]
    pub const fn is_loopback(&self) -> bool {
        if self.is_v4_mapped() {
            (u32::from_be(self.words[3]) >> 24) == 127
        } else {
            self.words[0] == 0 && self.words[1] == 0 && self.words[2] == 0 && self.words[3] == u32::to_be(1)
        }
    }

    /// 0.0.0.0, :: and ::ffff:0.0.0.0: connecting there reaches this host.
    #[inline(always)]
    pub const fn is_unspecified(&self) -> bool {
        self.words[0] == 0
            && self.words[1] == 0
            && (self.words[2] == 0 || self.words[2] == u32::to_be(0x0000_ffff))
            && self.words[3] == 0
    }

    /// The sixteen address bytes in network order.
    #[inline(always)]
    pub fn octets(&self) -> [u8; 16] {
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let b = self.words[i].to_ne_bytes();
            out[i * 4] = b[0];
            out[i * 4 + 1] = b[1];
            out[i * 4 + 2] = b[2];
            out[i * 4 + 3] = b[3];
            i += 1;
        }
        out
    }

    pub fn from_octets(o: [u8; 16]) -> Self {
        let mut words = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            words[i] = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
            i += 1;
        }
        Self { words }
    }
}

/// Key of the allow map: "`subject` may talk to `peer` in `direction` on `proto`/`port`".
/// `peer == ID_ANY`, `proto == PROTO_ANY` and `port == 0` are wildcards; [`decide`] probes
/// the exact key first and then each wildcard, so a verdict is a handful of hash lookups
/// whatever the number of rules.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub subject: u32,
    pub peer: u32,
    /// Host byte order; 0 means any port.
    pub port: u16,
    pub proto: u8,
    pub direction: u8,
}

/// Value of the allow map: the rule that allowed (for counters and flow events).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    pub rule: u32,
}

/// Key of the isolation map: present when some policy selects `subject` in `direction`,
/// which makes that direction default-deny for it (Kubernetes semantics).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IsolationKey {
    pub subject: u32,
    pub direction: u8,
    pub _pad: [u8; 3],
}

/// Value of the isolation map: the rule id denials are counted against.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IsolationValue {
    pub rule: u32,
}

/// Data part of a CIDR trie key (the prefix length is aya's `Key::prefix_len`, counted on
/// the IPv4-mapped 128-bit form: an IPv4 /24 is a /120).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrKey {
    pub addr: [u8; 16],
}

/// Key of the local-port owner map: which workload socket owns `proto`/`port` on this host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LocalPortKey {
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Value of the local-port owner map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LocalPortValue {
    pub identity: u32,
    pub _pad: u32,
    /// Socket cookie of the owning socket, so only its own release removes the entry.
    pub cookie: u64,
}

/// Key of the endpoint map: a workload address:port the agent learnt about (remote hosts).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    pub addr: Addr,
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// A Service's virtual address the kernel captures (`SERVICES`, key type [`EndpointKey`]):
/// its id and how many backends it has in `BACKENDS` (indices `0..backends`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    pub id: u32,
    pub backends: u32,
}

/// One backend slot of a captured Service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub service: u32,
    pub index: u32,
}

/// A backend: the agent's id for it (a pod and its port), the pod's numeric identity and
/// the port policy is decided on (the pod's port, not the Service's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendValue {
    pub backend: u32,
    pub identity: u32,
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

/// A connection the kernel captured, as `connect4` recorded it (`CAPTURES` by socket
/// cookie, then `CAPTURED` by the client port once the port is chosen).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capture {
    /// The connecting workload's numeric identity.
    pub subject: u32,
    /// The backend picked ([`BackendValue::backend`]).
    pub backend: u32,
    /// The backend's numeric identity, as policy saw it.
    pub peer: u32,
    /// The destination the workload asked for (host order port).
    pub port: u16,
    pub _pad: u16,
    pub addr: Addr,
}

/// Where captured traffic goes: the agent's listeners on 127.0.0.1 (host order ports; 0:
/// nothing is captured).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Redirect {
    pub capture_port: u16,
    pub dns_port: u16,
    /// The agent's UDP capture socket: datagrams to a Service's UDP port go to
    /// `udp_capture_addr(id)` on this port.
    pub udp_port: u16,
    pub _pad: u16,
}

/// A UDP flow to a Service port (or a pod's mesh address) the kernel captured, in
/// `UDP_CAPTURES` under its id: one per (workload socket, destination), so one socket may
/// talk to several Services. The datagrams go to the agent at `udp_capture_addr(id)`, which
/// is how the agent names the flow; its replies come from there, and `recvmsg4` makes them
/// read as from the destination asked.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpCapture {
    /// The sending socket's cookie.
    pub cookie: u64,
    /// The sending workload's numeric identity.
    pub subject: u32,
    /// The Service port's id and the backend's index in `BACKENDS`, and the backend picked
    /// ([`BackendValue::backend`]): the flow keeps its backend while that slot holds it.
    pub service: u32,
    pub index: u32,
    pub backend: u32,
    /// The backend's numeric identity, as policy saw it.
    pub peer: u32,
    /// The sending socket's own port (host order): the agent takes datagrams of this flow
    /// only from it. 0: a socket that connected before it was bound (the kernel chose its
    /// port after this record); the agent then checks the sender's cookie (sock_diag).
    pub src_port: u16,
    /// The destination asked for (host order port; network order address, as `user_ip4`).
    pub port: u16,
    pub addr: u32,
    pub _pad: u32,
}

/// The first and last UDP capture ids: an id is the low 24 bits of a 127.0.0.0/8 address,
/// leaving out 127.0.0.0, 127.0.0.1 and 127.255.255.255.
pub const UDP_CAPTURE_FIRST: u32 = 2;
pub const UDP_CAPTURE_LAST: u32 = 0x00ff_fffe;

/// The loopback address (host order) a captured UDP flow's datagrams are sent to.
#[inline(always)]
pub const fn udp_capture_addr(id: u32) -> u32 {
    (127 << 24) | (id & 0x00ff_ffff)
}

/// The capture id of a loopback address (host order), if it can be one.
#[inline(always)]
pub const fn udp_capture_id(addr: u32) -> Option<u32> {
    let id = addr & 0x00ff_ffff;
    if addr >> 24 == 127 && id >= UDP_CAPTURE_FIRST && id <= UDP_CAPTURE_LAST {
        Some(id)
    } else {
        None
    }
}

/// The ids a UDP flow may take, in probe order: a hash of (socket cookie, destination)
/// spread over the id range, then the next few.
pub const UDP_CAPTURE_PROBES: u32 = 4;

#[inline(always)]
pub const fn udp_capture_slot(cookie: u64, addr: u32, port: u16, probe: u32) -> u32 {
    // splitmix64's finalizer.
    let mut h = cookie ^ ((addr as u64) << 16) ^ (port as u64) ^ 0x9e37_79b9_7f4a_7c15;
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let span = (UDP_CAPTURE_LAST - UDP_CAPTURE_FIRST + 1) as u64;
    UDP_CAPTURE_FIRST + (h.wrapping_add(probe as u64) % span) as u32
}

/// Capacity of the captured UDP flows.
pub const UDP_CAPTURE_MAP_SIZE: u32 = 65_536;

/// Where a redirected DNS query was going (`DNS_ORIG`, by socket cookie): its replies are
/// made to come from there.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsOrigin {
    /// Network order, as `user_ip4`.
    pub addr: u32,
    /// Network order, as `user_port`.
    pub port: u32,
}

/// Capacity of the captured-Service map (Service ports).
pub const SERVICE_MAP_SIZE: u32 = 65_536;
/// Capacity of the backend map.
pub const BACKEND_MAP_SIZE: u32 = 262_144;
/// Capacity of the captures in flight (connect -> accepted by the agent).
pub const CAPTURE_MAP_SIZE: u32 = 65_536;

/// Per-slot settings, swapped atomically with the rest of a compiled policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// 1 if traffic of workloads no policy selects is allowed (egress).
    pub default_allow_egress: u8,
    /// 1 if traffic of workloads no policy selects is allowed (ingress).
    pub default_allow_ingress: u8,
    /// One of `FLOWS_ALL`, `FLOWS_SAMPLED`, `FLOWS_DENIED`, `FLOWS_NONE`.
    pub flow_mode: u8,
    pub _pad: u8,
    /// cgroup2 level of workload cgroups; sockets are attributed to their ancestor at this
    /// level, so nested cgroups inside a workload keep its identity.
    pub workload_level: u32,
    /// Policy generation: remembered UDP flows of an older generation are decided again.
    pub generation: u32,
    /// Cookie of the host's network namespace. Sockets elsewhere (inside a pod's own
    /// namespace) are not policed: a pod's traffic leaves only through its slirp4netns,
    /// whose host sockets carry the pod's identity and are policed there.
    pub host_netns: u64,
}

/// A UDP exchange a workload is part of, seen from the workload: the other side's address
/// and port, and the workload's own port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct UdpFlowKey {
    pub addr: Addr,
    pub remote_port: u16,
    pub local_port: u16,
}

/// When a UDP exchange was last allowed, and under which policy generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpFlowValue {
    pub ts_ns: u64,
    pub generation: u32,
    pub _pad: u32,
}

/// A UDP exchange allowed in one direction lets its replies through for this long (as
/// stateful firewalls do), unless the policy changes first.
pub const UDP_FLOW_TTL_NS: u64 = 120_000_000_000;
/// Capacity of the UDP exchange map.
pub const UDP_FLOW_MAP_SIZE: u32 = 65_536;

/// Allowed/denied counts for one rule (per CPU in the kernel, summed by the agent).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounter {
    pub allowed: u64,
    pub denied: u64,
}

/// Where a verdict was taken.
pub const HOOK_CONNECT: u8 = 0;
pub const HOOK_SENDMSG: u8 = 1;
pub const HOOK_INGRESS: u8 = 2;
/// Decided by the agent for a stream arriving through a tunnel (not by a kernel hook).
pub const HOOK_TUNNEL: u8 = 3;

/// One verdict, streamed to the agent through the flow ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// The workload the verdict was taken for.
    pub subject: u32,
    /// The other side's numeric identity (workload, reserved entity or CIDR id).
    pub peer: u32,
    /// Rule that decided (allow rule, isolating policy, or `RULE_DEFAULT`).
    pub rule: u32,
    /// The other side's address.
    pub addr: Addr,
    /// The other side's port (egress) or the subject's port (ingress); host order.
    pub port: u16,
    pub proto: u8,
    pub direction: u8,
    pub verdict: u8,
    pub hook: u8,
    pub _pad: [u8; 2],
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all these are repr(C), Copy, contain only integers, and every bit pattern is
    // valid; explicit padding fields leave no uninitialised bytes.
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for PolicyValue {}
    unsafe impl aya::Pod for IsolationKey {}
    unsafe impl aya::Pod for IsolationValue {}
    unsafe impl aya::Pod for CidrKey {}
    unsafe impl aya::Pod for LocalPortKey {}
    unsafe impl aya::Pod for LocalPortValue {}
    unsafe impl aya::Pod for EndpointKey {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for RuleCounter {}
    unsafe impl aya::Pod for FlowEvent {}
    unsafe impl aya::Pod for UdpFlowKey {}
    unsafe impl aya::Pod for UdpFlowValue {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for BackendValue {}
    unsafe impl aya::Pod for Capture {}
    unsafe impl aya::Pod for Redirect {}
    unsafe impl aya::Pod for DnsOrigin {}
    unsafe impl aya::Pod for UdpCapture {}
}
