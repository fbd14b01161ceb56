//! beemesh kernel programs, attached by the agent to the root of its cgroup2 subtree so
//! that they run for every workload below it:
//! - `connect4/6`, `sendmsg4/6`: egress policy before any packet leaves (EPERM on deny), and
//!   capture of Service traffic (IPv4, or IPv4-mapped on an IPv6 socket) to the agent;
//!   `recvmsg4/6` make a captured UDP flow's replies read as from the Service;
//! - `post_bind4/6`: tag the ports a workload binds (its servers) with its identity, so a
//!   connect to them knows whom it reaches; `sock_release` drops the tag;
//! - `ingress` (cgroup_skb): ingress policy on inbound SYNs and datagrams; a sender on this
//!   host is identified by looking its socket up (`bpf_sk_lookup_*`) and reading its cgroup.
#![no_std]
#![no_main]

mod enforce;
mod maps;

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
        bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval, bpf_sk_ancestor_cgroup_id,
        bpf_sk_fullsock, bpf_sk_lookup_tcp, bpf_sk_lookup_udp, bpf_sk_release, bpf_skb_ancestor_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, sock_ops},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use beemesh_common::{
    udp_capture_addr, udp_capture_id, udp_capture_slot, Addr, BackendKey, Capture, DnsOrigin, EndpointKey,
    LocalPortKey, LocalPortValue, PeerSet, UdpCapture, DIR_EGRESS, DIR_INGRESS, HOOK_CONNECT, HOOK_INGRESS,
    HOOK_SENDMSG, ID_NONE, NET_LEAF_OWN_DNS, PROTO_TCP, PROTO_UDP, UDP_CAPTURE_PROBES,
};
use enforce::{active_slot, identity_of_cgroup, is_workload, Flow, Slot};
use maps::{
    BACKENDS, CAPTURED, CAPTURES, COOKIE_PORTS, DNS_ORIG, LOCAL_PORTS, REDIRECT, REFUSE_CGROUPS, SERVICES,
    UDP_CAPTURES,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

/// Whether the socket behind `ctx` lives in the host's network namespace (see
/// `Settings::host_netns`).
#[inline(always)]
fn in_host_netns<C: EbpfContext>(ctx: &C, slot: &Slot) -> bool {
    // SAFETY: the context pointer is valid for the helper.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) == slot.settings.host_netns }
}

/// ECONNREFUSED, negated as the kernel returns it.
const ECONNREFUSED: i32 = 111;

/// Identity of the calling task's workload (its ancestor at the workload level).
#[inline(always)]
fn current_identity(slot: &Slot) -> u32 {
    // SAFETY: helper without memory arguments.
    let cg = unsafe { bpf_get_current_ancestor_cgroup_id(slot.settings.workload_level as i32) };
    identity_of_cgroup(cg)
}

#[inline(always)]
fn tag_port(identity: u32, port: u16, proto: u8, cookie: u64) {
    if port == 0 || (proto != PROTO_TCP && proto != PROTO_UDP) {
        return;
    }
    let key = LocalPortKey { port, proto, _pad: 0 };
    if let Some(v) = LOCAL_PORTS.get_ptr(&key) {
        // SAFETY: pointer from a successful lookup, read at once.
        if unsafe { (*v).cookie } == cookie {
            return;
        }
    }
    let value = LocalPortValue { identity, _pad: 0, cookie };
    let _ = LOCAL_PORTS.insert(&key, &value, 0);
    let _ = COOKIE_PORTS.insert(&cookie, &key, 0);
}

#[inline(always)]
fn sock_addr(ctx: &SockAddrContext, v6: bool, hook: u8) -> i32 {
    let Some(slot) = active_slot() else { return ALLOW };
    let subject = current_identity(&slot);
    if subject == ID_NONE || !in_host_netns(ctx, &slot) {
        return ALLOW;
    }
    // SAFETY: the kernel hands a valid bpf_sock_addr context.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return ALLOW;
    }
    let addr = if v6 {
        // Field by field, with volatile reads: the verifier only accepts context loads at a
        // constant offset from the context pointer, never through a derived pointer.
        // SAFETY: reads of the valid context's fields.
        let w = unsafe {
            [
                core::ptr::read_volatile(&sa.user_ip6[0]),
                core::ptr::read_volatile(&sa.user_ip6[1]),
                core::ptr::read_volatile(&sa.user_ip6[2]),
                core::ptr::read_volatile(&sa.user_ip6[3]),
            ]
        };
        Addr { words: w }
    } else {
        Addr::from_v4_be(sa.user_ip4)
    };
    let flow =
        Flow { subject, addr, port: u16::from_be(sa.user_port as u16), proto, direction: DIR_EGRESS, hook };
    // An IPv6 socket reaches an IPv4 Service through its IPv4-mapped address (as Java and
    // dual-stack servers' clients do): captured alike, so it can neither miss the Service
    // nor step around its policy.
    let v4 = !v6 || addr.is_v4_mapped();
    if hook == HOOK_CONNECT && v4 && proto == PROTO_TCP {
        if let Some(verdict) = capture(ctx, &slot, &flow, v6) {
            return verdict;
        }
    }
    // The workload's port is known here because sendmsg autobinds before this hook (a
    // connect does not: 0 for a socket not bound yet).
    let udp_port = if proto == PROTO_UDP {
        // SAFETY: `sk` is always set for sock_addr programs.
        let sk = unsafe { sa.__bindgen_anon_1.sk };
        // SAFETY: non-null kernel socket pointer checked by the verifier.
        if sk.is_null() {
            0
        } else {
            (unsafe { (*sk).src_port }) as u16
        }
    } else {
        0
    };
    // A connected UDP socket is captured at its connect: its sends never pass `sendmsg`.
    if v4 && proto == PROTO_UDP {
        if let Some(verdict) = capture_udp(ctx, &slot, &flow, udp_port, v6) {
            return verdict;
        }
        if hook == HOOK_SENDMSG && !v6 && flow.port == 53 && redirect_dns(ctx, &slot) {
            return ALLOW;
        }
    }
    // A datagram of a UDP exchange allowed recently (a reply, or more of the same) passes.
    if udp_port != 0 && enforce::udp_flow_known(&slot, &addr, flow.port, udp_port) {
        return ALLOW;
    }
    if enforce::egress(&slot, &flow, hook == HOOK_CONNECT) {
        enforce::remember_udp_flow(&slot, &addr, flow.port, udp_port);
        ALLOW
    } else {
        debug!(ctx, "deny egress subject={} port={}", subject, flow.port);
        if hook == HOOK_CONNECT {
            refuse_connect();
        }
        DENY
    }
}

/// A denied connect from a slirp4netns leaf fails with ECONNREFUSED (the pod sees a reset).
#[inline(always)]
fn refuse_connect() {
    // SAFETY: helper without memory arguments.
    let cg = unsafe { bpf_get_current_cgroup_id() };
    if REFUSE_CGROUPS.get_ptr(&cg).is_some() {
        // SAFETY: sets the error this connect() returns; valid in sock_addr programs.
        unsafe { bpf_set_retval(-ECONNREFUSED) };
    }
}

/// A TCP connect to a Service's cluster IP (or a pod's mesh address): picks a backend, decides the subject's egress
/// (and the backend's ingress) against it, records the capture under the socket's cookie
/// and sends the connection to the agent's capture listener (127.0.0.1). `None`: not a
/// Service address (or nothing is captured), decide as usual.
#[inline(always)]
fn capture(ctx: &SockAddrContext, slot: &Slot, flow: &Flow, v6: bool) -> Option<i32> {
    let key = EndpointKey { addr: flow.addr, port: flow.port, proto: PROTO_TCP, _pad: 0 };
    // A Service port, else a pod's mesh address (port 0: any port).
    let found = match SERVICES.get_ptr(&key) {
        Some(p) => p,
        None => SERVICES.get_ptr(&EndpointKey { port: 0, ..key })?,
    };
    // SAFETY: pointer from a successful lookup, copied at once.
    let service = unsafe { *found };
    // SAFETY: array index 0 exists; copied at once.
    let redirect = unsafe { *REDIRECT.get_ptr(0)? };
    if redirect.capture_port == 0 {
        return None;
    }
    if service.backends == 0 {
        // No ready endpoint: refused, as kube-proxy rejects a Service without endpoints.
        refuse_connect();
        return Some(DENY);
    }
    // SAFETY: helper without arguments.
    let index = unsafe { bpf_get_prandom_u32() } % service.backends;
    let Some(backend) = BACKENDS.get_ptr(&BackendKey { service: service.id, index }) else {
        refuse_connect();
        return Some(DENY);
    };
    // SAFETY: pointer from a successful lookup, copied at once.
    let backend = unsafe { *backend };
    // Port 0: the pod's own port, as asked.
    let port = if backend.port == 0 { flow.port } else { backend.port };
    let to_backend = Flow { port, ..*flow };
    let peers = PeerSet { primary: backend.identity, cidr: ID_NONE };
    if !enforce::egress_to(slot, &to_backend, peers, true) {
        refuse_connect();
        return Some(DENY);
    }
    let record = Capture {
        subject: flow.subject,
        backend: backend.backend,
        peer: backend.identity,
        port: flow.port,
        _pad: 0,
        addr: flow.addr,
    };
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if CAPTURES.insert(&cookie, &record, 0).is_err() {
        refuse_connect();
        return Some(DENY);
    }
    redirect_to(ctx, v6, u32::from_be_bytes([127, 0, 0, 1]).to_be(), redirect.capture_port);
    Some(ALLOW)
}

/// A UDP datagram to a Service's UDP port (or a pod's mesh address), sent unconnected (as
/// slirp4netns sends every pod datagram), or a UDP socket's connect there: the flow (socket,
/// destination) keeps the backend it was given while that backend stays in its slot; every
/// datagram is decided against the backend (egress and the backend's ingress), and goes to
/// the agent's UDP capture socket at the flow's own loopback address, which names the flow to
/// the agent. `None`: not a Service address, decide as usual.
#[inline(always)]
fn capture_udp(ctx: &SockAddrContext, slot: &Slot, flow: &Flow, own_port: u16, v6: bool) -> Option<i32> {
    let key = EndpointKey { addr: flow.addr, port: flow.port, proto: PROTO_UDP, _pad: 0 };
    let found = match SERVICES.get_ptr(&key) {
        Some(p) => p,
        None => SERVICES.get_ptr(&EndpointKey { port: 0, ..key })?,
    };
    // SAFETY: pointer from a successful lookup, copied at once.
    let service = unsafe { *found };
    // SAFETY: array index 0 exists; copied at once.
    let redirect = unsafe { *REDIRECT.get_ptr(0)? };
    if redirect.udp_port == 0 {
        return None;
    }
    if service.backends == 0 {
        // No ready endpoint: dropped (slirp4netns answers the pod with an ICMP error).
        return Some(DENY);
    }
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // The destination's IPv4 word (of the IPv4-mapped address on an IPv6 socket).
    let ip4 = flow.addr.words[3];
    // The flow's id: the probe that holds it already, else the first free one.
    let mut id = 0u32;
    let mut held: Option<UdpCapture> = None;
    for probe in 0..UDP_CAPTURE_PROBES {
        let candidate = udp_capture_slot(cookie, ip4, flow.port, probe);
        match UDP_CAPTURES.get_ptr(&candidate) {
            Some(p) => {
                // SAFETY: pointer from a successful lookup, copied at once.
                let c = unsafe { *p };
                if c.cookie == cookie && c.addr == ip4 && c.port == flow.port {
                    id = candidate;
                    held = Some(c);
                    break;
                }
            }
            None => {
                if id == 0 {
                    id = candidate;
                }
            }
        }
    }
    if id == 0 {
        return Some(DENY);
    }
    // The backend the flow holds, if its slot still holds it; else a new pick.
    let kept = held.and_then(|c| {
        if c.service != service.id || c.index >= service.backends {
            return None;
        }
        let b = BACKENDS.get_ptr(&BackendKey { service: service.id, index: c.index })?;
        // SAFETY: pointer from a successful lookup, copied at once.
        let b = unsafe { *b };
        (b.backend == c.backend).then_some((c.index, b))
    });
    let (index, backend) = match kept {
        Some(k) => k,
        None => {
            // SAFETY: helper without arguments.
            let index = unsafe { bpf_get_prandom_u32() } % service.backends;
            let b = BACKENDS.get_ptr(&BackendKey { service: service.id, index })?;
            // SAFETY: pointer from a successful lookup, copied at once.
            (index, unsafe { *b })
        }
    };
    let port = if backend.port == 0 { flow.port } else { backend.port };
    let to_backend = Flow { port, ..*flow };
    let peers = PeerSet { primary: backend.identity, cidr: ID_NONE };
    let fresh = kept.is_none();
    if !enforce::egress_to(slot, &to_backend, peers, fresh) {
        return Some(DENY);
    }
    if fresh || held.is_some_and(|c| c.peer != backend.identity) {
        let record = UdpCapture {
            cookie,
            subject: flow.subject,
            service: service.id,
            index,
            backend: backend.backend,
            peer: backend.identity,
            src_port: own_port,
            port: flow.port,
            addr: ip4,
            _pad: 0,
        };
        if UDP_CAPTURES.insert(&id, &record, 0).is_err() {
            return Some(DENY);
        }
    }
    redirect_to(ctx, v6, udp_capture_addr(id).to_be(), redirect.udp_port);
    Some(ALLOW)
}

/// Rewrites a connect's or sendmsg's destination to the IPv4 address `ip4_be` (network
/// order), as the IPv4-mapped IPv6 address on an IPv6 socket, and `port`.
#[inline(always)]
fn redirect_to(ctx: &SockAddrContext, v6: bool, ip4_be: u32, port: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: connect and sendmsg programs may rewrite the destination of their own context;
    // the writes are to the context's fields at constant offsets, as the verifier requires.
    unsafe {
        if v6 {
            core::ptr::write_volatile(&mut (*sa).user_ip6[0], 0);
            core::ptr::write_volatile(&mut (*sa).user_ip6[1], 0);
            core::ptr::write_volatile(&mut (*sa).user_ip6[2], 0x0000_ffff_u32.to_be());
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], ip4_be);
        } else {
            (*sa).user_ip4 = ip4_be;
        }
        (*sa).user_port = u32::from(port.to_be());
    }
}

/// Whether a datagram from 127.x.y.z:`sport` to the socket `cookie` is the agent's reply
/// on a UDP flow the kernel captured for that socket.
#[inline(always)]
fn udp_capture_reply(src_be: u32, sport: u16, cookie: u64) -> Option<UdpCapture> {
    // SAFETY: array index 0 exists; copied at once.
    let redirect = unsafe { *REDIRECT.get_ptr(0)? };
    if redirect.udp_port == 0 || sport != redirect.udp_port {
        return None;
    }
    let id = udp_capture_id(u32::from_be(src_be))?;
    // SAFETY: pointer from a successful lookup, copied at once.
    let record = unsafe { *UDP_CAPTURES.get_ptr(&id)? };
    (record.cookie == cookie).then_some(record)
}

/// A pod's DNS query (slirp4netns forwarding it from 10.0.2.3) goes to the agent's
/// resolver on 127.0.0.1; the original destination is kept by socket cookie for
/// `recvmsg4`, and the answer is let in as the reply it is.
#[inline(always)]
fn redirect_dns(ctx: &SockAddrContext, slot: &Slot) -> bool {
    // SAFETY: helper without memory arguments.
    let cg = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: pointer from a successful lookup, read at once.
    match REFUSE_CGROUPS.get_ptr(&cg).map(|f| unsafe { *f }) {
        Some(flags) if flags & NET_LEAF_OWN_DNS == 0 => {}
        _ => return false,
    }
    // SAFETY: array index 0 exists; copied at once.
    let Some(redirect) = REDIRECT.get_ptr(0).map(|r| unsafe { *r }) else { return false };
    if redirect.dns_port == 0 {
        return false;
    }
    // SAFETY: the kernel hands a valid bpf_sock_addr context; `sk` is always set.
    let sa = unsafe { &*ctx.sock_addr };
    let origin = DnsOrigin { addr: sa.user_ip4, port: sa.user_port };
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if DNS_ORIG.insert(&cookie, &origin, 0).is_err() {
        return false;
    }
    // SAFETY: non-null kernel socket pointer (sendmsg autobinds before this hook).
    let sk = unsafe { sa.__bindgen_anon_1.sk };
    let own_port = if sk.is_null() { 0 } else { (unsafe { (*sk).src_port }) as u16 };
    let loopback = u32::from_be_bytes([127, 0, 0, 1]);
    enforce::remember_udp_flow(slot, &Addr::from_v4_be(loopback.to_be()), redirect.dns_port, own_port);
    // SAFETY: sendmsg4 may rewrite the destination of its own context.
    unsafe {
        (*ctx.sock_addr).user_ip4 = loopback.to_be();
        (*ctx.sock_addr).user_port = u32::from(redirect.dns_port.to_be());
    }
    true
}

/// An answer from the agent's resolver to a redirected query reads as from the resolver
/// the query was sent to.
#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the kernel hands a valid bpf_sock_addr context.
    let (from_ip, from_port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    if let Some(record) = udp_capture_reply(from_ip, u16::from_be(from_port as u16), cookie) {
        // SAFETY: recvmsg4 may rewrite the source address it reports.
        unsafe {
            (*ctx.sock_addr).user_ip4 = record.addr;
            (*ctx.sock_addr).user_port = u32::from(record.port.to_be());
        }
        return ALLOW;
    }
    let Some(origin) = DNS_ORIG.get_ptr(&cookie) else { return ALLOW };
    // SAFETY: pointer from a successful lookup, copied at once.
    let origin = unsafe { *origin };
    // SAFETY: array index 0 exists; copied at once.
    let Some(redirect) = REDIRECT.get_ptr(0).map(|r| unsafe { *r }) else { return ALLOW };
    // SAFETY: the kernel hands a valid bpf_sock_addr context.
    let sa = unsafe { &*ctx.sock_addr };
    let from_agent = sa.user_ip4 == u32::from_be_bytes([127, 0, 0, 1]).to_be()
        && sa.user_port == u32::from(redirect.dns_port.to_be());
    if from_agent {
        // SAFETY: recvmsg4 may rewrite the source address it reports.
        unsafe {
            (*ctx.sock_addr).user_ip4 = origin.addr;
            (*ctx.sock_addr).user_port = origin.port;
        }
    }
    ALLOW
}

/// A reply of a captured UDP flow to an IPv6 socket (from `::ffff:127.x.y.z`) reads as from
/// the IPv4-mapped Service address the datagram was sent to.
#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let sa = ctx.sock_addr;
    // SAFETY: reads of the valid context's fields at constant offsets.
    let (words, from_port) = unsafe {
        (
            [
                core::ptr::read_volatile(&(*sa).user_ip6[0]),
                core::ptr::read_volatile(&(*sa).user_ip6[1]),
                core::ptr::read_volatile(&(*sa).user_ip6[2]),
            ],
            (*sa).user_port,
        )
    };
    let mapped = words[0] == 0 && words[1] == 0 && words[2] == 0x0000_ffff_u32.to_be();
    if !mapped {
        return ALLOW;
    }
    // SAFETY: read of the valid context's field at a constant offset.
    let from_ip = unsafe { core::ptr::read_volatile(&(*sa).user_ip6[3]) };
    if let Some(record) = udp_capture_reply(from_ip, u16::from_be(from_port as u16), cookie) {
        // SAFETY: recvmsg6 may rewrite the source address it reports (constant offset).
        unsafe {
            core::ptr::write_volatile(&mut (*sa).user_ip6[3], record.addr);
            (*sa).user_port = u32::from(record.port.to_be());
        }
    }
    ALLOW
}

/// `BPF_SOCK_OPS_TCP_CONNECT_CB`: the SYN is about to go, the client port is chosen.
const SOCK_OPS_TCP_CONNECT: u32 = 3;

/// Moves a capture from the socket's cookie to its client port, where the agent finds it
/// when it accepts the connection (the agent sees the port, never the cookie).
#[sock_ops]
pub fn capture_port(ctx: SockOpsContext) -> u32 {
    if ctx.op() != SOCK_OPS_TCP_CONNECT {
        return 1;
    }
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(record) = CAPTURES.get_ptr(&cookie) else { return 1 };
    // SAFETY: pointer from a successful lookup, copied at once.
    let record = unsafe { *record };
    let _ = CAPTURES.remove(&cookie);
    let _ = CAPTURED.insert(&(ctx.local_port() as u16), &record, 0);
    1
}

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, false, HOOK_CONNECT)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, true, HOOK_CONNECT)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, false, HOOK_SENDMSG)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    sock_addr(&ctx, true, HOOK_SENDMSG)
}

#[inline(always)]
fn post_bind(ctx: &SockContext) -> i32 {
    let Some(slot) = active_slot() else { return ALLOW };
    let subject = current_identity(&slot);
    if subject == ID_NONE || !in_host_netns(ctx, &slot) {
        return ALLOW;
    }
    // SAFETY: valid bpf_sock context from the kernel.
    let sk: &bpf_sock = unsafe { &*ctx.sock };
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    tag_port(subject, sk.src_port as u16, sk.protocol as u8, cookie);
    ALLOW
}

#[cgroup_sock(post_bind4)]
pub fn post_bind4(ctx: SockContext) -> i32 {
    post_bind(&ctx)
}

#[cgroup_sock(post_bind6)]
pub fn post_bind6(ctx: SockContext) -> i32 {
    post_bind(&ctx)
}

#[cgroup_sock(sock_release)]
pub fn sock_release(ctx: SockContext) -> i32 {
    // SAFETY: the context pointer is valid for the helper.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(key) = COOKIE_PORTS.get_ptr(&cookie) else {
        return ALLOW;
    };
    // SAFETY: pointer from a successful lookup, copied at once.
    let key = unsafe { *key };
    let _ = COOKIE_PORTS.remove(&cookie);
    if let Some(v) = LOCAL_PORTS.get_ptr(&key) {
        // SAFETY: pointer from a successful lookup, read at once.
        if unsafe { (*v).cookie } == cookie {
            let _ = LOCAL_PORTS.remove(&key);
        }
    }
    ALLOW
}

#[cgroup_skb(ingress)]
pub fn ingress(ctx: SkBuffContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[inline(always)]
fn try_ingress(ctx: &SkBuffContext) -> Result<i32, i32> {
    // Headers first: most packets (everything but a SYN or a datagram) leave here without
    // touching a map.
    let first: u8 = ctx.load(0).map_err(|_| ALLOW)?;
    let (proto, l4) = match first >> 4 {
        4 => (ctx.load::<u8>(9).map_err(|_| ALLOW)?, ((first & 0x0f) as usize) * 4),
        6 => ipv6_transport(ctx)?,
        _ => return Ok(ALLOW),
    };
    if proto == PROTO_TCP {
        let flags: u8 = ctx.load(l4 + 13).map_err(|_| ALLOW)?;
        if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            return Ok(ALLOW);
        }
    } else if proto != PROTO_UDP {
        return Ok(ALLOW);
    }
    let v4 = first >> 4 == 4;
    let src = if v4 {
        Addr::from_v4_be(ctx.load::<u32>(12).map_err(|_| ALLOW)?)
    } else {
        Addr { words: ctx.load::<[u32; 4]>(8).map_err(|_| ALLOW)? }
    };
    let slot = active_slot().ok_or(ALLOW)?;
    // SAFETY: the skb pointer is the program's own context.
    let cg = unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb, slot.settings.workload_level as i32) };
    let subject = identity_of_cgroup(cg);
    if subject == ID_NONE || !in_host_netns(ctx, &slot) {
        return Ok(ALLOW);
    }
    let sport = u16::from_be(ctx.load::<u16>(l4).map_err(|_| ALLOW)?);
    let dport = u16::from_be(ctx.load::<u16>(l4 + 2).map_err(|_| ALLOW)?);
    if proto == PROTO_UDP
        && (udp_receiver_connected(ctx) || enforce::udp_flow_known(&slot, &src, sport, dport))
    {
        return Ok(ALLOW);
    }
    // The agent's reply on a UDP flow captured for this socket: each of the flow's datagrams
    // was decided at sendmsg, and the agent cuts the flows a new policy forbids.
    if proto == PROTO_UDP && v4 && src.is_loopback() {
        // SAFETY: the skb pointer is the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.skb.skb.cast()) };
        if udp_capture_reply(src.words[3], sport, cookie).is_some() {
            return Ok(ALLOW);
        }
    }
    let peers = if enforce::is_local(&src) {
        let sender = local_sender(ctx, v4, proto, sport, dport, slot.settings.workload_level)?;
        enforce::local_peer(&slot, &src, sender)
    } else {
        enforce::classify(&slot, &src, sport, proto)
    };
    // A TCP connection from a workload on this host was already decided (both ends) and
    // reported at connect(); it is decided again here, quietly, because connect() may have
    // seen a different destination than the socket the kernel delivered to.
    let quiet = proto == PROTO_TCP && is_workload(peers.primary);
    let flow = Flow { subject, addr: src, port: dport, proto, direction: DIR_INGRESS, hook: HOOK_INGRESS };
    if !enforce::ingress(&slot, &flow, peers, quiet) {
        return Ok(DENY);
    }
    if proto == PROTO_UDP {
        enforce::remember_udp_flow(&slot, &src, sport, dport);
    }
    Ok(ALLOW)
}

/// A connected UDP socket only receives from the peer it connected to, which its
/// connect() was allowed to reach: its datagrams are replies.
#[inline(always)]
fn udp_receiver_connected(ctx: &SkBuffContext) -> bool {
    // SAFETY: reading the context's socket field, as the verifier allows for cgroup_skb.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return false;
    }
    // SAFETY: `sk` is the packet's socket, checked non-null.
    let full = unsafe { bpf_sk_fullsock(sk) };
    // SAFETY: a full socket from the helper, checked non-null.
    !full.is_null() && unsafe { (*full).dst_port } != 0
}

/// Identity of the socket on this host that sent the packet, found by looking it up with
/// the reversed 4-tuple (it is connected or bound: SYN_SENT sockets and bound UDP sockets are
/// in the lookup tables) and reading its workload-level cgroup. `ID_NONE` if it is not a
/// workload's socket.
#[inline(always)]
fn local_sender(
    ctx: &SkBuffContext,
    v4: bool,
    proto: u8,
    sport: u16,
    dport: u16,
    level: u32,
) -> Result<u32, i32> {
    // SAFETY: an all-zero tuple is a valid value of this plain C union.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if v4 {
        let src: u32 = ctx.load(12).map_err(|_| ALLOW)?;
        let dst: u32 = ctx.load(16).map_err(|_| ALLOW)?;
        // The sender's socket sees the packet's destination as its remote end.
        tuple.__bindgen_anon_1.ipv4.saddr = dst;
        tuple.__bindgen_anon_1.ipv4.daddr = src;
        tuple.__bindgen_anon_1.ipv4.sport = dport.to_be();
        tuple.__bindgen_anon_1.ipv4.dport = sport.to_be();
        12
    } else {
        let src: [u32; 4] = ctx.load(8).map_err(|_| ALLOW)?;
        let dst: [u32; 4] = ctx.load(24).map_err(|_| ALLOW)?;
        tuple.__bindgen_anon_1.ipv6.saddr = dst;
        tuple.__bindgen_anon_1.ipv6.daddr = src;
        tuple.__bindgen_anon_1.ipv6.sport = dport.to_be();
        tuple.__bindgen_anon_1.ipv6.dport = sport.to_be();
        36
    };
    let skb = ctx.skb.skb.cast();
    // SAFETY: the tuple lives on our stack for the call; the returned socket is released below.
    let sk = unsafe {
        if proto == PROTO_TCP {
            bpf_sk_lookup_tcp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS, 0)
        } else {
            bpf_sk_lookup_udp(skb, &mut tuple, size, BPF_F_CURRENT_NETNS, 0)
        }
    };
    if sk.is_null() {
        return Ok(ID_NONE);
    }
    // SAFETY: `sk` is a referenced socket from the lookup; released right after.
    let cg = unsafe { bpf_sk_ancestor_cgroup_id(sk.cast(), level as i32) };
    // SAFETY: releases the reference taken by the lookup.
    unsafe { bpf_sk_release(sk.cast()) };
    Ok(identity_of_cgroup(cg))
}

/// Transport protocol and offset of an IPv6 packet, past up to four extension headers.
/// A chain longer than that is refused: it could hide a TCP or UDP header from policy.
#[inline(always)]
fn ipv6_transport(ctx: &SkBuffContext) -> Result<(u8, usize), i32> {
    let mut next: u8 = ctx.load(6).map_err(|_| ALLOW)?;
    let mut off = 40usize;
    let mut hops = 0;
    while hops < 4 {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units, minus one.
            0 | 43 | 60 => {
                let len: u8 = ctx.load(off + 1).map_err(|_| DENY)?;
                next = ctx.load(off).map_err(|_| DENY)?;
                off += (len as usize + 1) * 8;
            }
            // Fragment header: fixed 8 bytes.
            44 => {
                next = ctx.load(off).map_err(|_| DENY)?;
                off += 8;
            }
            _ => return Ok((next, off)),
        }
        hops += 1;
    }
    match next {
        0 | 43 | 44 | 60 => Err(DENY),
        _ => Ok((next, off)),
    }
}

/// `BPF_F_CURRENT_NETNS`: look sockets up in the packet's network namespace.
const BPF_F_CURRENT_NETNS: u64 = u64::MAX;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
