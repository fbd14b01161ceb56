//! The verdict rule, shared by the kernel programs and the agent's revocation sweep.
//!
//! A policy is compiled into an allow map keyed by [`PolicyKey`] and an isolation map keyed
//! by [`IsolationKey`]. [`decide`] probes a fixed, small set of keys (exact, then each
//! wildcard), so the cost of a verdict does not depend on how many rules exist.

use crate::{IsolationKey, PolicyKey, ID_ANY, ID_NONE, PROTO_ANY};

/// The identities the other side of a flow is known by: its primary identity (a workload,
/// `ID_HOST` or `ID_WORLD`) and, for non-workload addresses, the CIDR identity of the most
/// specific policy CIDR containing the address (`ID_NONE` when none does).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerSet {
    pub primary: u32,
    pub cidr: u32,
}

/// One direction of one flow, as seen from `subject`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Query {
    pub subject: u32,
    /// `DIR_EGRESS` or `DIR_INGRESS`.
    pub direction: u8,
    pub peers: PeerSet,
    pub proto: u8,
    /// The destination port (egress) or the subject's own port (ingress); host order.
    pub port: u16,
}

/// Outcome of [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Allow rule, isolating rule, or `RULE_DEFAULT`.
    pub rule: u32,
    /// The peer identity that matched (the primary one when nothing matched).
    pub peer: u32,
}

/// Decides one direction of one flow for `subject`.
///
/// `lookup` reads the allow map, `isolated` the isolation map; `default_allow` applies when
/// no policy selects `subject` in `direction`. Probing order: peers (primary, CIDR, any) ×
/// (exact proto+port, proto any-port, any-proto port, any-proto any-port).
#[inline(always)]
pub fn decide<L, I>(lookup: L, isolated: I, default_allow: bool, q: &Query) -> Decision
where
    L: Fn(&PolicyKey) -> Option<u32>,
    I: Fn(&IsolationKey) -> Option<u32>,
{
    let Query { subject, direction, peers, proto, port } = *q;
    let peer_order = [peers.primary, peers.cidr, ID_ANY];
    let proto_port = [(proto, port), (proto, 0), (PROTO_ANY, port), (PROTO_ANY, 0)];
    let mut p = 0;
    while p < peer_order.len() {
        let peer = peer_order[p];
        p += 1;
        if peer == ID_NONE {
            continue;
        }
        let mut q = 0;
        while q < proto_port.len() {
            let (proto, port) = proto_port[q];
            q += 1;
            let key = PolicyKey { subject, peer, port, proto, direction };
            if let Some(rule) = lookup(&key) {
                return Decision {
                    allowed: true,
                    rule,
                    peer: if peer == ID_ANY { peers.primary } else { peer },
                };
            }
        }
    }
    let iso = IsolationKey { subject, direction, _pad: [0; 3] };
    match isolated(&iso) {
        Some(rule) => Decision { allowed: false, rule, peer: peers.primary },
        None => Decision { allowed: default_allow, rule: crate::RULE_DEFAULT, peer: peers.primary },
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::BTreeMap;

    use super::*;
    use crate::{DIR_EGRESS, DIR_INGRESS, ID_WORLD, PROTO_TCP, PROTO_UDP};

    fn key(subject: u32, peer: u32, proto: u8, port: u16, direction: u8) -> PolicyKey {
        PolicyKey { subject, peer, port, proto, direction }
    }

    struct Maps {
        allow: BTreeMap<PolicyKey, u32>,
        iso: BTreeMap<IsolationKey, u32>,
    }

    impl Maps {
        fn decide(&self, default: bool, s: u32, d: u8, peers: PeerSet, proto: u8, port: u16) -> Decision {
            let q = Query { subject: s, direction: d, peers, proto, port };
            decide(|k| self.allow.get(k).copied(), |k| self.iso.get(k).copied(), default, &q)
        }
    }

    fn peers(primary: u32) -> PeerSet {
        PeerSet { primary, cidr: ID_NONE }
    }

    #[test]
    fn unselected_subject_gets_the_default() {
        let m = Maps { allow: BTreeMap::new(), iso: BTreeMap::new() };
        assert!(m.decide(true, 300, DIR_EGRESS, peers(301), PROTO_TCP, 80).allowed);
        assert!(!m.decide(false, 300, DIR_EGRESS, peers(301), PROTO_TCP, 80).allowed);
    }

    #[test]
    fn isolated_subject_is_default_deny_and_wildcards_match() {
        let mut allow = BTreeMap::new();
        allow.insert(key(300, 301, PROTO_TCP, 80, DIR_EGRESS), 7);
        allow.insert(key(300, ID_ANY, PROTO_UDP, 53, DIR_EGRESS), 8);
        allow.insert(key(300, 500, PROTO_ANY, 0, DIR_EGRESS), 9);
        let mut iso = BTreeMap::new();
        iso.insert(IsolationKey { subject: 300, direction: DIR_EGRESS, _pad: [0; 3] }, 3);
        let m = Maps { allow, iso };
        let d = m.decide(true, 300, DIR_EGRESS, peers(301), PROTO_TCP, 80);
        assert_eq!((d.allowed, d.rule, d.peer), (true, 7, 301));
        let d = m.decide(true, 300, DIR_EGRESS, peers(301), PROTO_TCP, 81);
        assert_eq!((d.allowed, d.rule), (false, 3));
        let d = m.decide(true, 300, DIR_EGRESS, peers(ID_WORLD), PROTO_UDP, 53);
        assert_eq!((d.allowed, d.rule, d.peer), (true, 8, ID_WORLD));
        let cidr_peer = PeerSet { primary: ID_WORLD, cidr: 500 };
        let d = m.decide(true, 300, DIR_EGRESS, cidr_peer, PROTO_TCP, 443);
        assert_eq!((d.allowed, d.rule, d.peer), (true, 9, 500));
        // Ingress is a separate direction: not isolated, so the default applies.
        assert!(m.decide(true, 300, DIR_INGRESS, peers(301), PROTO_TCP, 81).allowed);
    }
}
