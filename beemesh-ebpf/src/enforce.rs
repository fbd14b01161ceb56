//! Classification of flow peers, the policy decision for one flow, counters and flow
//! events. Called by every program in `main.rs`; the decision rule itself is
//! `beemesh_common::decide`, shared with the agent.

use aya_ebpf::{helpers::bpf_ktime_get_ns, maps::lpm_trie::Key};
use beemesh_common::{
    decide, Addr, CidrKey, Decision, EndpointKey, FlowEvent, LocalPortKey, PeerSet, PolicyKey, Query,
    Settings, UdpFlowKey, UdpFlowValue, DIR_EGRESS, DIR_INGRESS, FIRST_CIDR_ID, FIRST_WORKLOAD_ID,
    FLOWS_DENIED, FLOWS_NONE, FLOWS_SAMPLED, FLOW_SAMPLE_NS, ID_HOST, ID_NONE, ID_WORLD, MAX_RULES,
    UDP_FLOW_TTL_NS, VERDICT_ALLOW, VERDICT_DENY,
};

use crate::maps::{
    ACTIVE, CGROUPS, CIDR0, CIDR1, COUNTERS, ENDPOINTS, FLOWS, FLOW_SEEN, ISOLATION0, ISOLATION1,
    LOCAL_ADDRS, LOCAL_PORTS, POLICY0, POLICY1, SETTINGS, UDP_FLOWS,
};

/// The policy slot in force, read once per verdict.
#[derive(Clone, Copy)]
pub struct Slot {
    pub index: u32,
    pub settings: Settings,
}

#[inline(always)]
pub fn active_slot() -> Option<Slot> {
    let index = *ACTIVE.get(0)? & 1;
    let settings = *SETTINGS.get(index)?;
    Some(Slot { index, settings })
}

#[inline(always)]
pub fn identity_of_cgroup(cgroup_id: u64) -> u32 {
    match CGROUPS.get_ptr(&cgroup_id) {
        // SAFETY: the pointer comes from a successful map lookup and is read at once.
        Some(p) => unsafe { *p },
        None => ID_NONE,
    }
}

#[inline(always)]
pub fn is_workload(id: u32) -> bool {
    (FIRST_WORKLOAD_ID..FIRST_CIDR_ID).contains(&id)
}

#[inline(always)]
pub fn is_local(addr: &Addr) -> bool {
    addr.is_loopback() || addr.is_unspecified() || LOCAL_ADDRS.get_ptr(addr).is_some()
}

#[inline(always)]
fn cidr_identity(slot: &Slot, addr: &Addr) -> u32 {
    let key = Key::new(128, CidrKey { addr: addr.octets() });
    let hit = if slot.index == 0 { CIDR0.get(&key) } else { CIDR1.get(&key) };
    hit.copied().unwrap_or(ID_NONE)
}

/// Workload that owns a local port, if any.
#[inline(always)]
pub fn local_port_owner(port: u16, proto: u8) -> u32 {
    let key = LocalPortKey { port, proto, _pad: 0 };
    match LOCAL_PORTS.get_ptr(&key) {
        // SAFETY: pointer from a successful lookup, read at once.
        Some(p) => unsafe { (*p).identity },
        None => ID_NONE,
    }
}

/// Who is at `addr:port`: a local workload (by the port it owns), a remote workload the
/// agent told us about, this host, or the world; plus the CIDR identity for the latter two.
#[inline(always)]
pub fn classify(slot: &Slot, addr: &Addr, port: u16, proto: u8) -> PeerSet {
    if is_local(addr) {
        return local_peer(slot, addr, local_port_owner(port, proto));
    }
    let key = EndpointKey { addr: *addr, port, proto, _pad: 0 };
    if let Some(p) = ENDPOINTS.get_ptr(&key) {
        return PeerSet {
            // SAFETY: pointer from a successful lookup, read at once.
            primary: unsafe { *p },
            cidr: ID_NONE,
        };
    }
    PeerSet { primary: ID_WORLD, cidr: cidr_identity(slot, addr) }
}

/// A peer on this host: the workload `owner` if it is one, else the host (plus the CIDR
/// identity of its address).
#[inline(always)]
pub fn local_peer(slot: &Slot, addr: &Addr, owner: u32) -> PeerSet {
    if owner != ID_NONE {
        PeerSet { primary: owner, cidr: ID_NONE }
    } else {
        PeerSet { primary: ID_HOST, cidr: cidr_identity(slot, addr) }
    }
}

#[inline(always)]
fn decide_in(slot: &Slot, q: &Query) -> Decision {
    let default_allow = if q.direction == DIR_EGRESS {
        slot.settings.default_allow_egress != 0
    } else {
        slot.settings.default_allow_ingress != 0
    };
    let first = slot.index == 0;
    decide(
        |k| {
            let v = if first { POLICY0.get_ptr(k) } else { POLICY1.get_ptr(k) };
            // SAFETY: pointer from a successful lookup, read at once.
            v.map(|p| unsafe { (*p).rule })
        },
        |k| {
            let v = if first { ISOLATION0.get_ptr(k) } else { ISOLATION1.get_ptr(k) };
            // SAFETY: pointer from a successful lookup, read at once.
            v.map(|p| unsafe { (*p).rule })
        },
        default_allow,
        q,
    )
}

#[inline(always)]
fn count(slot: &Slot, rule: u32, allowed: bool) {
    if rule >= MAX_RULES {
        return;
    }
    if let Some(c) = COUNTERS.get_ptr_mut(slot.index * MAX_RULES + rule) {
        // SAFETY: per-CPU slot of this CPU; nothing else writes it while we run.
        unsafe {
            if allowed {
                (*c).allowed += 1;
            } else {
                (*c).denied += 1;
            }
        }
    }
}

/// Whether a UDP exchange between the workload's `local_port` and `addr:remote_port` was
/// allowed recently under the policy in force.
#[inline(always)]
pub fn udp_flow_known(slot: &Slot, addr: &Addr, remote_port: u16, local_port: u16) -> bool {
    let key = UdpFlowKey { addr: *addr, remote_port, local_port };
    match UDP_FLOWS.get_ptr(&key) {
        Some(v) => {
            // SAFETY: pointer from a successful lookup, copied at once.
            let v = unsafe { *v };
            // SAFETY: helper without preconditions.
            let now = unsafe { bpf_ktime_get_ns() };
            v.generation == slot.settings.generation && now.wrapping_sub(v.ts_ns) < UDP_FLOW_TTL_NS
        }
        None => false,
    }
}

/// Remembers an allowed UDP exchange (see [`udp_flow_known`]).
#[inline(always)]
pub fn remember_udp_flow(slot: &Slot, addr: &Addr, remote_port: u16, local_port: u16) {
    if local_port == 0 {
        return;
    }
    let key = UdpFlowKey { addr: *addr, remote_port, local_port };
    // SAFETY: helper without preconditions.
    let value =
        UdpFlowValue { ts_ns: unsafe { bpf_ktime_get_ns() }, generation: slot.settings.generation, _pad: 0 };
    let _ = UDP_FLOWS.insert(&key, &value, 0);
}

/// What a flow event says besides the decision.
#[derive(Clone, Copy)]
pub struct Flow {
    pub subject: u32,
    pub addr: Addr,
    pub port: u16,
    pub proto: u8,
    pub direction: u8,
    pub hook: u8,
}

#[inline(always)]
fn emit(slot: &Slot, flow: &Flow, d: &Decision, always: bool) {
    let mode = slot.settings.flow_mode;
    if mode == FLOWS_NONE || (d.allowed && (mode == FLOWS_DENIED || !always)) {
        return;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if d.allowed && mode == FLOWS_SAMPLED {
        let key = PolicyKey {
            subject: flow.subject,
            peer: d.peer,
            port: flow.port,
            proto: flow.proto,
            direction: flow.direction,
        };
        if let Some(last) = FLOW_SEEN.get_ptr(&key) {
            // SAFETY: pointer from a successful lookup, read at once.
            if now.wrapping_sub(unsafe { *last }) < FLOW_SAMPLE_NS {
                return;
            }
        }
        let _ = FLOW_SEEN.insert(&key, &now, 0);
    }
    if let Some(mut entry) = FLOWS.reserve::<FlowEvent>(0) {
        entry.write(FlowEvent {
            ts_ns: now,
            subject: flow.subject,
            peer: d.peer,
            rule: d.rule,
            addr: flow.addr,
            port: flow.port,
            proto: flow.proto,
            direction: flow.direction,
            verdict: if d.allowed { VERDICT_ALLOW } else { VERDICT_DENY },
            hook: flow.hook,
            _pad: [0; 2],
        });
        // Waking the agent for every event costs a context switch per connection; it
        // polls the ring every few milliseconds anyway, so only wake it when data piles up.
        // Denials wake it at once: operators watch for them.
        let flags = if !d.allowed || FLOWS.query(BPF_RB_AVAIL_DATA) >= FLOW_WAKEUP_BYTES {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
        entry.submit(flags);
    }
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
/// Unread bytes in the ring that justify waking the agent early (a quarter of it).
const FLOW_WAKEUP_BYTES: u64 = (beemesh_common::FLOW_RING_BYTES / 4) as u64;

/// Egress verdict for `flow` (subject's egress policy, and the ingress policy of the
/// destination when it is a workload this host knows). `emit_allowed`: whether an allowed
/// flow is worth an event (a new connection is; every UDP datagram is not).
#[inline(always)]
pub fn egress(slot: &Slot, flow: &Flow, emit_allowed: bool) -> bool {
    egress_to(slot, flow, classify(slot, &flow.addr, flow.port, flow.proto), emit_allowed)
}

/// [`egress`] to peers already known (a captured Service's backend).
#[inline(always)]
pub fn egress_to(slot: &Slot, flow: &Flow, peers: PeerSet, emit_allowed: bool) -> bool {
    let mut d = decide_in(
        slot,
        &Query { subject: flow.subject, direction: DIR_EGRESS, peers, proto: flow.proto, port: flow.port },
    );
    count(slot, d.rule, d.allowed);
    if d.allowed && is_workload(peers.primary) {
        let back = PeerSet { primary: flow.subject, cidr: ID_NONE };
        let theirs = decide_in(
            slot,
            &Query {
                subject: peers.primary,
                direction: DIR_INGRESS,
                peers: back,
                proto: flow.proto,
                port: flow.port,
            },
        );
        count(slot, theirs.rule, theirs.allowed);
        if !theirs.allowed {
            d = Decision { allowed: false, rule: theirs.rule, peer: peers.primary };
        }
    }
    emit(slot, flow, &d, emit_allowed);
    d.allowed
}

/// Ingress verdict for a new inbound flow to `flow.subject` from `flow.addr:src_port`
/// (`flow.port` is the subject's own port).
#[inline(always)]
///
/// `quiet_allow`: an allowed verdict is neither counted nor reported (a connection from a
/// local workload, already counted and reported when it connected).
pub fn ingress(slot: &Slot, flow: &Flow, peers: PeerSet, quiet_allow: bool) -> bool {
    let d = decide_in(
        slot,
        &Query { subject: flow.subject, direction: DIR_INGRESS, peers, proto: flow.proto, port: flow.port },
    );
    if !(d.allowed && quiet_allow) {
        count(slot, d.rule, d.allowed);
        emit(slot, flow, &d, true);
    }
    d.allowed
}
