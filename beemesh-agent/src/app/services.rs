//! Service addresses, sans-IO: the cluster IP and node ports each Service gets, stable
//! mesh-wide. `app::apply` assigns them on the host that takes the apply: kept from the
//! state's copy, taken as asked when free, or allocated by hashing the Service's key into the
//! pool and probing upward past what other Services hold, so that two hosts allocating at
//! once rarely collide. When they do (both wrote before seeing the other), [`losers`] says
//! which Service keeps the value: the one created first (then the lower key); the owner of
//! each other one moves it (`app::controllers`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Service;

pub mod endpoints;

/// The pods' mesh address range when the configuration names none (a common Kubernetes pod
/// network).
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/16";
/// The cluster IP range when the configuration names none (Kubernetes' default).
pub const DEFAULT_CLUSTER_IP_RANGE: &str = "10.96.0.0/12";
/// The node port range (Kubernetes' default).
const NODE_PORT_FIRST: u32 = 30_000;
const NODE_PORT_LAST: u32 = 32_767;

/// A range of values handed out by hash and probe: addresses (as u32) or ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    first: u32,
    count: u32,
}

impl Pool {
    /// The addresses of `cidr` (`a.b.c.d/len`, len 8 to 28) that Services may get: neither
    /// the network address, nor the first address after it (kept for the mesh's own API
    /// Service, as Kubernetes keeps it for `kubernetes`), nor the broadcast address.
    pub fn cidr(cidr: &str) -> Result<Pool, String> {
        let bad = |why: &str| format!("range {cidr:?}: {why}");
        let (addr, len) = cidr.split_once('/').ok_or_else(|| bad("not an IPv4 CIDR (a.b.c.d/len)"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let len: u32 = len.parse().map_err(|_| bad("not a prefix length"))?;
        if !(8..=28).contains(&len) {
            return Err(bad("the prefix length must be 8 to 28"));
        }
        let size = 1u32 << (32 - len);
        let base = u32::from(addr);
        if base & (size - 1) != 0 {
            return Err(bad("host bits are set"));
        }
        Ok(Pool { first: base + 2, count: size - 3 })
    }

    /// The node ports, 30000-32767.
    pub fn node_ports() -> Pool {
        Pool { first: NODE_PORT_FIRST, count: NODE_PORT_LAST - NODE_PORT_FIRST + 1 }
    }

    /// Whether the two pools share a value.
    pub fn overlaps(&self, other: &Pool) -> bool {
        self.first < other.first + other.count && other.first < self.first + self.count
    }

    pub fn contains(&self, v: u32) -> bool {
        v >= self.first && v - self.first < self.count
    }

    /// The first value at or after `key`'s hash (wrapping) that `taken` lacks; `None` when
    /// the pool is full.
    pub fn allocate(&self, key: &str, taken: &BTreeMap<u32, String>) -> Option<u32> {
        let start = (beemesh_state::sched::rank::hash_str(key) % u64::from(self.count)) as u32;
        (0..self.count).map(|i| self.first + (start + i) % self.count).find(|v| !taken.contains_key(v))
    }
}

/// The pools Services are assigned from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pools {
    pub cluster_ips: Pool,
    pub node_ports: Pool,
}

/// What other Services hold: cluster IPs and node ports, each with its holder's key.
#[derive(Clone, Debug, Default)]
pub struct Taken {
    pub ips: BTreeMap<u32, String>,
    pub ports: BTreeMap<u32, String>,
}

impl Taken {
    /// What `services` (key, object) hold, but `except`'s.
    pub fn of<'a>(services: impl IntoIterator<Item = (&'a str, &'a Service)>, except: &str) -> Taken {
        let mut t = Taken::default();
        for (key, svc) in services.into_iter().filter(|(k, _)| *k != except) {
            t.add(key, svc);
        }
        t
    }

    /// Counts `svc`'s values as held by `key`.
    pub fn add(&mut self, key: &str, svc: &Service) {
        if let Some(ip) = cluster_ip(svc) {
            self.ips.insert(ip, key.to_owned());
        }
        for p in node_ports(svc) {
            self.ports.insert(p, key.to_owned());
        }
    }
}

/// `svc`'s cluster IP, when it has one (not headless, not empty).
pub fn cluster_ip(svc: &Service) -> Option<u32> {
    let ip = svc.spec.as_ref()?.cluster_ip.as_deref()?;
    ip.parse::<Ipv4Addr>().ok().map(u32::from)
}

fn node_ports(svc: &Service) -> Vec<u32> {
    let ports = svc.spec.as_ref().and_then(|s| s.ports.as_ref());
    ports.into_iter().flatten().filter_map(|p| p.node_port).filter_map(|p| u32::try_from(p).ok()).collect()
}

fn is_headless(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn is_node_port(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("NodePort")
}

/// Fills `svc`'s cluster IP (`spec.clusterIP`, `spec.clusterIPs`) and, for a NodePort
/// Service, each port's `nodePort`: kept from `held` (the state's copy of the same Service),
/// taken as asked, or allocated. Refused, naming the field, as Kubernetes refuses it: a value
/// outside its pool or held by another Service, or a cluster IP other than the one held.
pub fn assign(
    svc: &mut Service,
    key: &str,
    held: Option<&Service>,
    taken: &Taken,
    pools: &Pools,
) -> Result<(), String> {
    let held_ip = held.and_then(cluster_ip);
    let spec = svc.spec.get_or_insert_with(Default::default);
    // `clusterIPs` alone asks as `clusterIP` does (`manifest` checked that they agree).
    if spec.cluster_ip.as_deref().is_none_or(str::is_empty) {
        spec.cluster_ip = spec.cluster_ips.as_ref().and_then(|ips| ips.first()).cloned();
    }
    // An ExternalName Service is a DNS alias: no address.
    if spec.cluster_ip.as_deref() != Some("None") && spec.type_.as_deref() != Some("ExternalName") {
        let asked = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
        let ip = match (asked, held_ip) {
            (Some(a), held) => {
                let v = a.parse::<Ipv4Addr>().map(u32::from).map_err(|_| {
                    format!("spec.clusterIP: Invalid value: {a:?}: must be an IPv4 address, \"\" or \"None\"")
                })?;
                if held.is_some_and(|h| h != v) {
                    return Err(format!("spec.clusterIP: Invalid value: {a:?}: field is immutable"));
                }
                if held.is_none() {
                    if !pools.cluster_ips.contains(v) {
                        return Err(format!(
                            "spec.clusterIP: Invalid value: {a:?}: provided IP is not in the valid range of the mesh's cluster IPs"
                        ));
                    }
                    if let Some(other) = taken.ips.get(&v) {
                        return Err(format!(
                            "spec.clusterIP: Invalid value: {a:?}: provided IP is already allocated (to Service {other})"
                        ));
                    }
                }
                v
            }
            (None, Some(h)) => h,
            (None, None) => pools
                .cluster_ips
                .allocate(key, &taken.ips)
                .ok_or("spec.clusterIP: no cluster IP left in the mesh's range")?,
        };
        let text = Ipv4Addr::from(ip).to_string();
        spec.cluster_ip = Some(text.clone());
        spec.cluster_ips = Some(vec![text]);
        // What a single-stack IPv4 Kubernetes cluster records: PreferDualStack stays as
        // asked, with the one family there is.
        spec.ip_families = Some(vec!["IPv4".into()]);
        spec.ip_family_policy.get_or_insert_with(|| "SingleStack".into());
    }
    if spec.type_.as_deref() == Some("NodePort") {
        let held_ports: BTreeMap<(i32, String), i32> = held
            .and_then(|h| h.spec.as_ref()?.ports.clone())
            .into_iter()
            .flatten()
            .filter_map(|p| Some(((p.port, p.protocol.unwrap_or_else(|| "TCP".into())), p.node_port?)))
            .collect();
        let mut ports_taken = taken.ports.clone();
        for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let port = match p.node_port {
                Some(asked) => {
                    let v = u32::try_from(asked).unwrap_or(0);
                    let mine = held_ports.get(&(p.port, protocol.clone())) == Some(&asked);
                    if !mine && !pools.node_ports.contains(v) {
                        return Err(format!(
                            "spec.ports[{i}].nodePort: Invalid value: {asked}: provided port is not in the valid range 30000-32767"
                        ));
                    }
                    if let Some(other) = ports_taken.get(&v).filter(|o| *o != key && !mine) {
                        return Err(format!(
                            "spec.ports[{i}].nodePort: Invalid value: {asked}: provided port is already allocated (to Service {other})"
                        ));
                    }
                    v
                }
                None => match held_ports.get(&(p.port, protocol.clone())) {
                    Some(h) => u32::try_from(*h).unwrap_or(0),
                    None => pools
                        .node_ports
                        .allocate(&format!("{key}:{}/{protocol}", p.port), &ports_taken)
                        .ok_or_else(|| format!("spec.ports[{i}].nodePort: no node port left"))?,
                },
            };
            ports_taken.insert(port, key.to_owned());
            p.node_port = Some(port as i32);
        }
    }
    Ok(())
}

/// Clears the cluster IP and node ports `svc` (`key`, created at `created`) shares with a
/// Service of `services` created before it (ties: the lower key), for [`assign`] to allocate
/// again; what it holds first stays.
pub fn release_shared(svc: &mut Service, key: &str, created: &str, services: &[(String, String, Service)]) {
    let me = (created, key);
    let older =
        |other: &(String, String, Service)| other.0 != key && (other.1.as_str(), other.0.as_str()) < me;
    let ip = cluster_ip(svc);
    let lost_ip = ip.is_some_and(|ip| services.iter().any(|o| older(o) && cluster_ip(&o.2) == Some(ip)));
    let lost_ports: BTreeSet<u32> = node_ports(svc)
        .into_iter()
        .filter(|p| services.iter().any(|o| older(o) && is_node_port(&o.2) && node_ports(&o.2).contains(p)))
        .collect();
    let Some(spec) = svc.spec.as_mut() else { return };
    if lost_ip {
        spec.cluster_ip = None;
        spec.cluster_ips = None;
    }
    for p in spec.ports.iter_mut().flatten() {
        if p.node_port.and_then(|n| u32::try_from(n).ok()).is_some_and(|n| lost_ports.contains(&n)) {
            p.node_port = None;
        }
    }
}

/// The Services (by key) that must give up a value they share with another: every holder of a
/// cluster IP or node port but the one created first (ties: the lower key). `services`: key,
/// creation timestamp (RFC 3339, which sorts as time), object.
pub fn losers(services: &[(String, String, Service)]) -> BTreeSet<String> {
    let mut by_ip: BTreeMap<u32, Vec<(&str, &str)>> = BTreeMap::new();
    let mut by_port: BTreeMap<u32, Vec<(&str, &str)>> = BTreeMap::new();
    for (key, created, svc) in services {
        if let Some(ip) = cluster_ip(svc).filter(|_| !is_headless(svc)) {
            by_ip.entry(ip).or_default().push((created, key));
        }
        if is_node_port(svc) {
            // One Service may use a port for TCP and UDP alike: it is one holder.
            for p in node_ports(svc).into_iter().collect::<BTreeSet<u32>>() {
                by_port.entry(p).or_default().push((created, key));
            }
        }
    }
    let mut out = BTreeSet::new();
    for mut holders in by_ip.into_values().chain(by_port.into_values()).filter(|h| h.len() > 1) {
        holders.sort();
        out.extend(holders.into_iter().skip(1).map(|(_, k)| k.to_owned()));
    }
    out
}

/// A pod, for [`pod_addresses`]: its uid and creation time (RFC 3339; older first).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Aged {
    pub created: String,
    pub uid: String,
}

/// Mesh addresses (`status.podIP`) for this host's pods (`local`), from `pool`: a pod keeps
/// the address it holds (`held`: assigned earlier, or read back from this host's reports
/// after a restart) unless an older pod elsewhere (`others`: addresses other hosts report)
/// or an older pod here holds it too; else it gets its uid hashed into the pool, probed
/// past every address in use. Two hosts picking one address at once: the older pod keeps
/// it, the younger one's host moves it on its next pass.
pub fn pod_addresses(
    pool: &Pool,
    local: &[Aged],
    held: &BTreeMap<String, u32>,
    others: &BTreeMap<u32, Aged>,
) -> BTreeMap<String, u32> {
    let mut local: Vec<&Aged> = local.iter().collect();
    local.sort();
    let mut taken: BTreeMap<u32, String> = others.iter().map(|(a, p)| (*a, p.uid.clone())).collect();
    let mut out = BTreeMap::new();
    for pod in local {
        let kept = held.get(&pod.uid).copied().filter(|a| {
            let free_here = !out.values().any(|v| v == a);
            let older_elsewhere = others.get(a).is_some_and(|o| o < pod);
            pool.contains(*a) && free_here && !older_elsewhere
        });
        let addr = kept.or_else(|| pool.allocate(&pod.uid, &taken));
        if let Some(addr) = addr {
            taken.insert(addr, pod.uid.clone());
            out.insert(pod.uid.clone(), addr);
        }
    }
    out
}

#[cfg(test)]
mod tests;
