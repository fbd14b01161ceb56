//! Stable, human-readable rendering of a compiled policy, with numeric ids resolved to
//! SPIFFE ids, entities and CIDRs. Used by the golden tests and `beemesh-agent policy show`.

use std::collections::BTreeMap;
use std::fmt::Write;

use beemesh_common::{
    DIR_EGRESS, FIRST_CIDR_ID, ID_ANY, ID_HOST, ID_NONE, ID_WORLD, PROTO_ANY, PROTO_TCP, PROTO_UDP,
};

use super::{CompiledPolicy, Workload};

impl CompiledPolicy {
    /// One line per setting, rule, CIDR identity, isolation entry and allow entry, in map
    /// order, so equal policies render equally.
    pub fn render(&self, workloads: &[Workload]) -> String {
        let names: BTreeMap<u32, String> = workloads
            .iter()
            .map(|w| (w.id, w.identity.to_string()))
            .chain(self.cidrs.iter().map(|(net, id)| (*id, format!("cidr:{net}"))))
            .collect();
        let name = |id: u32| -> String {
            match id {
                ID_NONE => "none".to_owned(),
                ID_HOST => "host".to_owned(),
                ID_WORLD => "world".to_owned(),
                ID_ANY => "any".to_owned(),
                id => names.get(&id).cloned().unwrap_or_else(|| {
                    if id >= FIRST_CIDR_ID {
                        format!("cidr#{id}")
                    } else {
                        format!("#{id}")
                    }
                }),
            }
        };
        let allow = |b: bool| if b { "allow" } else { "deny" };
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "defaults egress={} ingress={}",
            allow(self.default_allow_egress),
            allow(self.default_allow_ingress)
        );
        for r in &self.rules {
            let file = r.file.display().to_string();
            let _ = if file.is_empty() {
                writeln!(out, "rule {} {} {}", r.id, r.policy, r.rule)
            } else {
                writeln!(out, "rule {} {} {} ({file})", r.id, r.policy, r.rule)
            };
        }
        for (net, id) in &self.cidrs {
            let _ = writeln!(out, "cidr {id} {net}");
        }
        for (k, v) in &self.isolation {
            let _ = writeln!(out, "isolate {} {} rule={}", name(k.subject), direction(k.direction), v.rule);
        }
        for (k, v) in &self.allow {
            let (dir, word) = if k.direction == DIR_EGRESS { ("egress", "to") } else { ("ingress", "from") };
            let port = if k.port == 0 { "*".to_owned() } else { k.port.to_string() };
            let _ = writeln!(
                out,
                "allow {} {dir} {word} {} {}/{port} rule={}",
                name(k.subject),
                name(k.peer),
                proto(k.proto),
                v.rule
            );
        }
        out
    }
}

fn direction(d: u8) -> &'static str {
    if d == DIR_EGRESS {
        "egress"
    } else {
        "ingress"
    }
}

fn proto(p: u8) -> String {
    match p {
        PROTO_ANY => "any".to_owned(),
        PROTO_TCP => "tcp".to_owned(),
        PROTO_UDP => "udp".to_owned(),
        other => format!("proto{other}"),
    }
}
