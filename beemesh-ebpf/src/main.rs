//! beemesh kernel programs, attached by the agent to the root of its cgroup2 subtree so
//! that they run for every workload below it:
//! - `connect4/6`, `sendmsg4/6`: egress policy before any packet leaves (EPERM on deny);
//! - `post_bind4/6`, `sock_ops` (TCP_CONNECT_CB), `sendmsg`: tag the local ports a workload
//!   owns with its identity; `sock_release` drops the tag;
//! - `ingress` (cgroup_skb): ingress policy on inbound SYNs and datagrams.
#![no_std]
#![no_main]

mod enforce;
mod maps;

use aya_ebpf::{
    bindings::{bpf_sock, BPF_SOCK_OPS_TCP_CONNECT_CB},
    helpers::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie, bpf_skb_ancestor_cgroup_id},
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, sock_ops},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockOpsContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use beemesh_common::{
    Addr, LocalPortKey, LocalPortValue, DIR_EGRESS, DIR_INGRESS, HOOK_CONNECT, HOOK_INGRESS,
    HOOK_SENDMSG, ID_NONE, PROTO_TCP, PROTO_UDP,
};
use enforce::{active_slot, identity_of_cgroup, is_workload, Flow, Slot};
use maps::{COOKIE_PORTS, LOCAL_PORTS, PENDING_TAGS};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

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
    if subject == ID_NONE {
        return ALLOW;
    }
    // SAFETY: the kernel hands a valid bpf_sock_addr context.
    let sa = unsafe { &*ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return ALLOW;
    }
    let addr = if v6 {
        Addr { words: sa.user_ip6 }
    } else {
        Addr::from_v4_be(sa.user_ip4)
    };
    let flow = Flow {
        subject,
        addr,
        port: u16::from_be(sa.user_port as u16),
        proto,
        direction: DIR_EGRESS,
        hook,
    };
    let verdict = enforce::egress(&slot, &flow, hook == HOOK_CONNECT);
    if !verdict.allowed {
        debug!(ctx, "deny egress subject={} port={}", subject, flow.port);
        return DENY;
    }
    if verdict.to_local_workload {
        // SAFETY: the context pointer is valid for the helper.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        if hook == HOOK_SENDMSG {
            // UDP: the port is already bound (autobind runs before the hook).
            // SAFETY: `sk` is always set for sock_addr programs.
            let sk = unsafe { sa.__bindgen_anon_1.sk };
            if !sk.is_null() {
                // SAFETY: non-null kernel socket pointer checked by the verifier.
                let port = unsafe { (*sk).src_port } as u16;
                tag_port(subject, port, proto, cookie);
            }
        } else if proto == PROTO_TCP {
            // TCP picks the port after this hook; sock_ops tags it at TCP_CONNECT_CB.
            let _ = PENDING_TAGS.insert(&cookie, &subject, 0);
        }
    }
    ALLOW
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
    if subject == ID_NONE {
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

#[sock_ops]
pub fn tag_connect(ctx: SockOpsContext) -> u32 {
    if ctx.op() == BPF_SOCK_OPS_TCP_CONNECT_CB {
        // SAFETY: the context pointer is valid for the helper.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        if let Some(subject) = PENDING_TAGS.get_ptr(&cookie) {
            // SAFETY: pointer from a successful lookup, read at once.
            let subject = unsafe { *subject };
            let _ = PENDING_TAGS.remove(&cookie);
            tag_port(subject, ctx.local_port() as u16, PROTO_TCP, cookie);
        }
    }
    1
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
        6 => (ctx.load::<u8>(6).map_err(|_| ALLOW)?, 40),
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
    let src = if first >> 4 == 4 {
        Addr::from_v4_be(ctx.load::<u32>(12).map_err(|_| ALLOW)?)
    } else {
        Addr {
            words: ctx.load::<[u32; 4]>(8).map_err(|_| ALLOW)?,
        }
    };
    let slot = active_slot().ok_or(ALLOW)?;
    // SAFETY: the skb pointer is the program's own context.
    let cg = unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb, slot.settings.workload_level as i32) };
    let subject = identity_of_cgroup(cg);
    if subject == ID_NONE {
        return Ok(ALLOW);
    }
    let sport = u16::from_be(ctx.load::<u16>(l4).map_err(|_| ALLOW)?);
    let dport = u16::from_be(ctx.load::<u16>(l4 + 2).map_err(|_| ALLOW)?);
    let (peers, _) = enforce::classify(&slot, &src, sport, proto);
    // A TCP connection from a workload on this host was decided, both ends, at connect().
    if proto == PROTO_TCP && is_workload(peers.primary) {
        return Ok(ALLOW);
    }
    let flow = Flow {
        subject,
        addr: src,
        port: dport,
        proto,
        direction: DIR_INGRESS,
        hook: HOOK_INGRESS,
    };
    Ok(if enforce::ingress(&slot, &flow, peers) { ALLOW } else { DENY })
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
