//! Flow events: the reader task turns kernel `FlowEvent`s into named `FlowRecord`s, keeps
//! the newest in memory and fans them out to `beemesh-agent flows -f` followers.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use beemesh_common::{
    FlowEvent, DIR_EGRESS, FIRST_CIDR_ID, HOOK_CONNECT, HOOK_SENDMSG, PROTO_TCP, PROTO_UDP, VERDICT_ALLOW,
};
use tokio::sync::{broadcast, watch};
use tracing::warn;

use crate::api::FlowRecord;
use crate::kernel::FlowReader;
use crate::policy::{CompiledPolicy, RuleInfo};

/// How numeric ids in events read: published by the agent actor on every change.
#[derive(Debug, Default, Clone)]
pub struct Names {
    /// Workload and reserved identities.
    pub identities: HashMap<u32, String>,
    /// The policy in force: CIDR identities and rule ids are its own.
    pub policy: Arc<CompiledPolicy>,
}

impl Names {
    fn identity(&self, id: u32) -> String {
        if let Some(name) = self.identities.get(&id) {
            return name.clone();
        }
        // CIDR ids are numbered in order from FIRST_CIDR_ID.
        let cidr = id.checked_sub(FIRST_CIDR_ID).and_then(|i| self.policy.cidrs.get(i as usize));
        match cidr {
            Some((net, cid)) if *cid == id => format!("cidr:{net}"),
            _ => format!("id:{id}"),
        }
    }

    fn rule(&self, rule: u32) -> String {
        self.policy.rules.get(rule as usize).map(RuleInfo::display).unwrap_or_else(|| format!("rule:{rule}"))
    }
}

/// A kernel event with the names in force when it arrived; rendered only when asked for,
/// so tens of thousands of events per second cost the agent next to nothing.
type Stored = (FlowEvent, Arc<Names>);

/// Shared history and live feed.
#[derive(Clone, Debug)]
pub struct FlowHub {
    history: Arc<Mutex<VecDeque<Stored>>>,
    capacity: usize,
    live: broadcast::Sender<FlowRecord>,
    offset_ms: i128,
}

impl FlowHub {
    pub fn new(capacity: usize) -> Self {
        Self {
            history: Arc::new(Mutex::new(VecDeque::with_capacity(capacity.min(65_536)))),
            capacity,
            live: broadcast::channel(4096).0,
            offset_ms: monotonic_to_unix_ms(),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FlowRecord> {
        self.live.subscribe()
    }

    /// The newest `limit` records, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<FlowRecord> {
        let h = self.history.lock().expect("flow history lock is never poisoned");
        h.iter()
            .skip(h.len().saturating_sub(limit))
            .map(|(ev, names)| record(ev, names, self.offset_ms))
            .collect()
    }

    /// A verdict the agent itself took (a tunnel stream), `ts_ns` on CLOCK_MONOTONIC as the
    /// kernel's.
    pub fn push_agent(&self, event: FlowEvent, names: &Arc<Names>) {
        self.push(&[event], names);
    }

    fn push(&self, events: &[FlowEvent], names: &Arc<Names>) {
        {
            let mut h = self.history.lock().expect("flow history lock is never poisoned");
            for ev in events {
                if h.len() >= self.capacity {
                    h.pop_front();
                }
                h.push_back((*ev, names.clone()));
            }
        }
        if self.live.receiver_count() > 0 {
            for ev in events {
                let _ = self.live.send(record(ev, names, self.offset_ms));
            }
        }
    }
}

/// Milliseconds to add to CLOCK_MONOTONIC nanoseconds to get Unix milliseconds.
fn monotonic_to_unix_ms() -> i128 {
    use nix::time::{clock_gettime, ClockId};
    let ms = |c| {
        clock_gettime(c).map(|t| t.tv_sec() as i128 * 1000 + t.tv_nsec() as i128 / 1_000_000).unwrap_or(0)
    };
    ms(ClockId::CLOCK_REALTIME) - ms(ClockId::CLOCK_MONOTONIC)
}

/// Renders one kernel event.
pub fn record(ev: &FlowEvent, names: &Names, offset_ms: i128) -> FlowRecord {
    let octets = ev.addr.octets();
    let ip = std::net::Ipv6Addr::from(octets);
    let addr = match ip.to_ipv4_mapped() {
        Some(v4) => v4.to_string(),
        None => ip.to_string(),
    };
    FlowRecord {
        time_ms: (ev.ts_ns as i128 / 1_000_000 + offset_ms).max(0) as u64,
        subject: names.identity(ev.subject),
        peer: names.identity(ev.peer),
        direction: if ev.direction == DIR_EGRESS { "egress" } else { "ingress" }.into(),
        verdict: if ev.verdict == VERDICT_ALLOW { "allow" } else { "deny" }.into(),
        proto: match ev.proto {
            PROTO_TCP => "tcp".into(),
            PROTO_UDP => "udp".into(),
            p => p.to_string(),
        },
        addr,
        port: ev.port,
        rule: names.rule(ev.rule),
        hook: match ev.hook {
            HOOK_CONNECT => "connect",
            HOOK_SENDMSG => "sendmsg",
            beemesh_common::HOOK_TUNNEL => "tunnel",
            _ => "ingress",
        }
        .into(),
    }
}

/// Reads the ring buffer until it fails.
pub async fn run(mut reader: FlowReader, hub: FlowHub, names: watch::Receiver<Arc<Names>>) {
    let mut batch = Vec::new();
    loop {
        batch.clear();
        if let Err(e) = reader.read(&mut batch).await {
            warn!(error = %e, "flow ring buffer failed; no more flow events");
            return;
        }
        let names = names.borrow().clone();
        hub.push(&batch, &names);
    }
}
