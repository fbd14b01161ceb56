//! The maps shared with the agent. Names are the contract with `beemesh-agent`'s kernel
//! module, which fills them; sizes come from `beemesh-common`.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use beemesh_common::{
    Addr, BackendKey, BackendValue, Capture, CidrKey, DnsOrigin, EndpointKey, IsolationKey, IsolationValue,
    LocalPortKey, LocalPortValue, PolicyKey, PolicyValue, Redirect, RuleCounter, ServiceValue, Settings,
    UdpCapture, UdpFlowKey, UdpFlowValue, BACKEND_MAP_SIZE, CAPTURE_MAP_SIZE, CGROUP_MAP_SIZE, CIDR_MAP_SIZE,
    ENDPOINT_MAP_SIZE, FLOW_RING_BYTES, ISOLATION_MAP_SIZE, LOCAL_ADDR_MAP_SIZE, LOCAL_PORT_MAP_SIZE,
    MAX_RULES, POLICY_MAP_SIZE, SERVICE_MAP_SIZE, UDP_CAPTURE_MAP_SIZE, UDP_FLOW_MAP_SIZE,
};

/// Index (0 or 1) of the policy slot in force. The agent fills the other slot completely,
/// then flips this word: every verdict sees one whole policy, never a mix.
#[map]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// Per-slot settings (defaults, flow mode, workload cgroup level).
#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(2, 0);

#[map]
pub static POLICY0: HashMap<PolicyKey, PolicyValue> =
    HashMap::with_max_entries(POLICY_MAP_SIZE, BPF_F_NO_PREALLOC);
#[map]
pub static POLICY1: HashMap<PolicyKey, PolicyValue> =
    HashMap::with_max_entries(POLICY_MAP_SIZE, BPF_F_NO_PREALLOC);

#[map]
pub static ISOLATION0: HashMap<IsolationKey, IsolationValue> =
    HashMap::with_max_entries(ISOLATION_MAP_SIZE, BPF_F_NO_PREALLOC);
#[map]
pub static ISOLATION1: HashMap<IsolationKey, IsolationValue> =
    HashMap::with_max_entries(ISOLATION_MAP_SIZE, BPF_F_NO_PREALLOC);

#[map]
pub static CIDR0: LpmTrie<CidrKey, u32> = LpmTrie::with_max_entries(CIDR_MAP_SIZE, 0);
#[map]
pub static CIDR1: LpmTrie<CidrKey, u32> = LpmTrie::with_max_entries(CIDR_MAP_SIZE, 0);

/// Workload cgroup id -> numeric identity.
#[map]
pub static CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(CGROUP_MAP_SIZE, 0);

/// Which workload socket owns a local port: filled at bind, connect and sendmsg, removed
/// when that socket is released. LRU so a missed release can never fill it up.
#[map]
pub static LOCAL_PORTS: LruHashMap<LocalPortKey, LocalPortValue> =
    LruHashMap::with_max_entries(LOCAL_PORT_MAP_SIZE, 0);

/// Socket cookie -> the local port it tagged, so `sock_release` (which cannot read the
/// socket's port) can drop exactly its own tag.
#[map]
pub static COOKIE_PORTS: LruHashMap<u64, LocalPortKey> = LruHashMap::with_max_entries(LOCAL_PORT_MAP_SIZE, 0);

/// Workload address:port on other hosts -> identity (filled by the agent).
#[map]
pub static ENDPOINTS: HashMap<EndpointKey, u32> =
    HashMap::with_max_entries(ENDPOINT_MAP_SIZE, BPF_F_NO_PREALLOC);

/// slirp4netns leaves -> `NET_LEAF_*` bits: their denied connects fail with ECONNREFUSED
/// instead of EPERM, so that the pod sees a refused connection (a RST), not an unreachable
/// network; their DNS queries go to the agent's resolver unless `NET_LEAF_OWN_DNS`.
#[map]
pub static REFUSE_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(CGROUP_MAP_SIZE, 0);

/// This host's own addresses (besides loopback).
#[map]
pub static LOCAL_ADDRS: HashMap<Addr, u8> = HashMap::with_max_entries(LOCAL_ADDR_MAP_SIZE, 0);

/// Allowed/denied per rule; index = slot * MAX_RULES + rule id.
#[map]
pub static COUNTERS: PerCpuArray<RuleCounter> = PerCpuArray::with_max_entries(2 * MAX_RULES, 0);

/// Last time an allowed flow of this (subject, peer, port, proto, direction) was reported,
/// for `FLOWS_SAMPLED`.
#[map]
pub static FLOW_SEEN: LruHashMap<PolicyKey, u64> = LruHashMap::with_max_entries(65_536, 0);

/// UDP exchanges allowed recently, so that replies pass (see `UDP_FLOW_TTL_NS`).
#[map]
pub static UDP_FLOWS: LruHashMap<UdpFlowKey, UdpFlowValue> =
    LruHashMap::with_max_entries(UDP_FLOW_MAP_SIZE, 0);

/// Flow events to the agent.
#[map]
pub static FLOWS: RingBuf = RingBuf::with_byte_size(FLOW_RING_BYTES, 0);

/// Service cluster IP:port -> the Service's id and backend count (filled by the agent).
#[map]
pub static SERVICES: HashMap<EndpointKey, ServiceValue> =
    HashMap::with_max_entries(SERVICE_MAP_SIZE, BPF_F_NO_PREALLOC);

/// (Service id, index) -> backend (filled by the agent).
#[map]
pub static BACKENDS: HashMap<BackendKey, BackendValue> =
    HashMap::with_max_entries(BACKEND_MAP_SIZE, BPF_F_NO_PREALLOC);

/// Socket cookie -> a connection `connect4` captured, until `sock_ops` knows its port.
#[map]
pub static CAPTURES: LruHashMap<u64, Capture> = LruHashMap::with_max_entries(CAPTURE_MAP_SIZE, 0);

/// Client port (host order) -> a captured connection, until the agent accepts it.
#[map]
pub static CAPTURED: LruHashMap<u16, Capture> = LruHashMap::with_max_entries(CAPTURE_MAP_SIZE, 0);

/// The agent's capture and DNS listeners on 127.0.0.1.
#[map]
pub static REDIRECT: Array<Redirect> = Array::with_max_entries(1, 0);

/// Socket cookie -> where a pod's redirected DNS query was going (slirp4netns' socket), so
/// that the agent's answers read as from there.
#[map]
pub static DNS_ORIG: LruHashMap<u64, DnsOrigin> = LruHashMap::with_max_entries(CAPTURE_MAP_SIZE, 0);

/// Captured UDP flows by id (the low 24 bits of the loopback address their datagrams are sent
/// to; see `beemesh_common::UdpCapture`). LRU: a flow whose socket is gone ages out.
#[map]
pub static UDP_CAPTURES: LruHashMap<u32, UdpCapture> = LruHashMap::with_max_entries(UDP_CAPTURE_MAP_SIZE, 0);
