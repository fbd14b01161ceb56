//! Atomic policy replacement: two policy slots in the kernel, one live. A new policy is
//! written into the idle slot (as a diff against what that slot held) and goes live with a
//! single word write to `ACTIVE`, so no verdict ever sees half a policy.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use aya::maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues};
use aya::util::nr_cpus;
use beemesh_common::{
    CidrKey, IsolationKey, IsolationValue, PolicyKey, PolicyValue, RuleCounter, Settings, MAX_RULES,
};
use ipnet::IpNet;

use super::KernelError;
use crate::policy::{CompiledPolicy, RuleInfo};

/// Everything one slot holds: a compiled policy (shared, never copied) and the settings.
#[derive(Clone, Debug, Default)]
pub struct SlotContents {
    pub policy: Arc<CompiledPolicy>,
    pub settings: Settings,
}

impl SlotContents {
    fn rule_name(&self, rule: usize) -> String {
        self.policy.rules.get(rule).map(RuleInfo::display).unwrap_or_else(|| format!("rule:{rule}"))
    }
}

/// CIDR in the trie's form: IPv4 becomes IPv4-mapped IPv6, prefix length + 96.
pub fn cidr_key(net: &IpNet) -> Key<CidrKey> {
    match net {
        IpNet::V4(n) => {
            Key::new(96 + u32::from(n.prefix_len()), CidrKey { addr: n.network().to_ipv6_mapped().octets() })
        }
        IpNet::V6(n) => Key::new(u32::from(n.prefix_len()), CidrKey { addr: n.network().octets() }),
    }
}

/// Kernel address form (see `beemesh_common::Addr`).
pub fn addr_of(ip: IpAddr) -> beemesh_common::Addr {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    beemesh_common::Addr::from_octets(v6.octets())
}

/// Owner of the slot maps; see the module docs.
pub struct SlotWriter {
    active_map: Array<MapData, u32>,
    settings: Array<MapData, Settings>,
    policy: [HashMap<MapData, PolicyKey, PolicyValue>; 2],
    isolation: [HashMap<MapData, IsolationKey, IsolationValue>; 2],
    cidr: [LpmTrie<MapData, CidrKey, u32>; 2],
    counters: PerCpuArray<MapData, RuleCounter>,
    shadow: [SlotContents; 2],
    /// A slot whose maps may differ from its shadow (a write failed half-way): wiped before
    /// its next use.
    dirty: [bool; 2],
    active: usize,
    /// Counts harvested from slots that have since been replaced, by rule name.
    totals: BTreeMap<String, RuleCounter>,
}

fn take<T>(ebpf: &mut aya::Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::MissingMap(name))?;
    T::try_from(map).map_err(KernelError::map(name))
}

impl std::fmt::Debug for SlotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotWriter").field("active", &self.active).finish_non_exhaustive()
    }
}

impl SlotWriter {
    pub(super) fn new(ebpf: &mut aya::Ebpf) -> Result<Self, KernelError> {
        Ok(Self {
            active_map: take(ebpf, "ACTIVE")?,
            settings: take(ebpf, "SETTINGS")?,
            policy: [take(ebpf, "POLICY0")?, take(ebpf, "POLICY1")?],
            isolation: [take(ebpf, "ISOLATION0")?, take(ebpf, "ISOLATION1")?],
            cidr: [take(ebpf, "CIDR0")?, take(ebpf, "CIDR1")?],
            counters: take(ebpf, "COUNTERS")?,
            shadow: Default::default(),
            dirty: [false; 2],
            active: 0,
            totals: BTreeMap::new(),
        })
    }

    /// Writes `next` into the idle slot and makes it live. The idle slot's counters must have
    /// been retired ([`Self::retire_idle`]) since it was last live.
    pub fn install(&mut self, next: SlotContents) -> Result<(), KernelError> {
        let idle = 1 - self.active;
        if self.dirty[idle] {
            self.wipe(idle)?;
        }
        let old = std::mem::take(&mut self.shadow[idle]);
        if let Err(e) = self.write(idle, &old, &next) {
            // The idle slot now holds a mix nobody knows exactly; it was not switched to.
            self.dirty[idle] = true;
            let _ = self.wipe(idle);
            return Err(e);
        }
        // The switch: one array word. Verdicts read it once, so each sees one whole slot.
        self.active_map.set(0, idle as u32, 0).map_err(KernelError::map("ACTIVE"))?;
        self.shadow[idle] = next;
        self.active = idle;
        Ok(())
    }

    /// Writes both slots' settings, so that defaults and the workload cgroup level hold even
    /// before any policy compiled (a policy that does not compile at start-up).
    pub fn init_settings(&mut self, settings: Settings) -> Result<(), KernelError> {
        for slot in 0..2 {
            self.settings.set(slot, settings, 0).map_err(KernelError::map("SETTINGS"))?;
        }
        Ok(())
    }

    /// Removes every entry of a slot's maps.
    fn wipe(&mut self, slot: usize) -> Result<(), KernelError> {
        let keys: Vec<_> = self.policy[slot].keys().filter_map(Result::ok).collect();
        for k in keys {
            self.policy[slot].remove(&k).map_err(KernelError::map("POLICY"))?;
        }
        let keys: Vec<_> = self.isolation[slot].keys().filter_map(Result::ok).collect();
        for k in keys {
            self.isolation[slot].remove(&k).map_err(KernelError::map("ISOLATION"))?;
        }
        let keys: Vec<_> = self.cidr[slot].keys().filter_map(Result::ok).collect();
        for k in keys {
            self.cidr[slot].remove(&k).map_err(KernelError::map("CIDR"))?;
        }
        self.shadow[slot] = SlotContents::default();
        self.dirty[slot] = false;
        Ok(())
    }

    /// Brings slot `idle` from `old` to `next` (diff), settings included; no switch.
    fn write(&mut self, idle: usize, old: &SlotContents, next: &SlotContents) -> Result<(), KernelError> {
        let (old_p, new_p) = (&old.policy, &next.policy);
        let policy = &mut self.policy[idle];
        for key in old_p.allow.keys().filter(|k| !new_p.allow.contains_key(k)) {
            policy.remove(key).map_err(KernelError::map("POLICY"))?;
        }
        for (key, value) in new_p.allow.iter().filter(|(k, v)| old_p.allow.get(k) != Some(v)) {
            policy.insert(key, value, 0).map_err(KernelError::map("POLICY"))?;
        }
        let iso = &mut self.isolation[idle];
        for key in old_p.isolation.keys().filter(|k| !new_p.isolation.contains_key(k)) {
            iso.remove(key).map_err(KernelError::map("ISOLATION"))?;
        }
        for (key, value) in new_p.isolation.iter().filter(|(k, v)| old_p.isolation.get(k) != Some(v)) {
            iso.insert(key, value, 0).map_err(KernelError::map("ISOLATION"))?;
        }
        let (old_c, new_c): (BTreeMap<_, _>, BTreeMap<_, _>) =
            (old_p.cidrs.iter().copied().collect(), new_p.cidrs.iter().copied().collect());
        let trie = &mut self.cidr[idle];
        for net in old_c.keys().filter(|k| !new_c.contains_key(k)) {
            trie.remove(&cidr_key(net)).map_err(KernelError::map("CIDR"))?;
        }
        for (net, id) in new_c.iter().filter(|(k, v)| old_c.get(k) != Some(v)) {
            trie.insert(&cidr_key(net), id, 0).map_err(KernelError::map("CIDR"))?;
        }
        self.settings.set(idle as u32, next.settings, 0).map_err(KernelError::map("SETTINGS"))?;
        Ok(())
    }

    /// Moves the counts of the slot that just went idle into the running totals and zeroes
    /// it for its next use. Called after the switch, off the revocation path: reading 10,000
    /// per-CPU counters takes tens of milliseconds.
    pub fn retire_idle(&mut self) -> Result<(), KernelError> {
        self.harvest(1 - self.active)
    }

    /// What is live now.
    pub fn live(&self) -> &SlotContents {
        &self.shadow[self.active]
    }

    fn read_slot(&self, slot: usize) -> Result<Vec<RuleCounter>, KernelError> {
        let rules = self.shadow[slot].policy.rules.len().min(MAX_RULES as usize);
        let mut out = Vec::with_capacity(rules);
        for rule in 0..rules as u32 {
            let index = slot as u32 * MAX_RULES + rule;
            let values = self.counters.get(&index, 0).map_err(KernelError::map("COUNTERS"))?;
            let mut sum = RuleCounter::default();
            for v in values.iter() {
                sum.allowed += v.allowed;
                sum.denied += v.denied;
            }
            out.push(sum);
        }
        Ok(out)
    }

    /// Moves a slot's counters into the running totals and zeroes them.
    fn harvest(&mut self, slot: usize) -> Result<(), KernelError> {
        let counts = self.read_slot(slot)?;
        let cpus = nr_cpus().map_err(|(_, e)| KernelError::io("counting cpus")(e))?;
        for (rule, count) in counts.iter().enumerate() {
            if count.allowed == 0 && count.denied == 0 {
                continue;
            }
            let total = self.totals.entry(self.shadow[slot].rule_name(rule)).or_default();
            total.allowed += count.allowed;
            total.denied += count.denied;
            let zero = PerCpuValues::try_from(vec![RuleCounter::default(); cpus])
                .map_err(KernelError::io("per-cpu values"))?;
            self.counters
                .set(slot as u32 * MAX_RULES + rule as u32, zero, 0)
                .map_err(KernelError::map("COUNTERS"))?;
        }
        Ok(())
    }

    /// Allowed/denied per rule name since the agent started (live slot plus history).
    pub fn counters(&self) -> Result<BTreeMap<String, RuleCounter>, KernelError> {
        let mut all = self.totals.clone();
        for slot in [self.active, 1 - self.active] {
            for (rule, count) in self.read_slot(slot)?.into_iter().enumerate() {
                let total = all.entry(self.shadow[slot].rule_name(rule)).or_default();
                total.allowed += count.allowed;
                total.denied += count.denied;
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_cidrs_are_mapped_into_the_v6_trie() {
        let key = cidr_key(&"10.1.0.0/16".parse().expect("valid"));
        assert_eq!({ key.prefix_len() }, 112);
        assert_eq!(&key.data().addr[10..14], &[0xff, 0xff, 10, 1]);
        let key = cidr_key(&"fd00::/8".parse().expect("valid"));
        assert_eq!({ key.prefix_len() }, 8);
    }

    #[test]
    fn kernel_addresses_match_the_common_layout() {
        let a = addr_of("127.0.0.1".parse().expect("valid"));
        assert!(a.is_v4_mapped() && a.is_loopback());
        assert_eq!(a, beemesh_common::Addr::from_v4_be(u32::from_ne_bytes([127, 0, 0, 1])));
        assert!(addr_of("::1".parse().expect("valid")).is_loopback());
    }
}
