//! Workload traffic to Services: the driver of the kernel's capture and of the tunnels.
//!
//! - **Endpoints.** From the cluster state (Services, Pods, their hosts' statuses, Nodes) it
//!   computes every Service port's ready backends (`services::endpoints`) and installs them in
//!   the capture maps (`kernel::ServiceMaps`): `connect4` picks a backend, decides policy
//!   against it and sends the connection to this task's capture listener on 127.0.0.1.
//! - **Capture.** An accepted connection's record (the connecting workload's identity and the
//!   backend, written by the kernel) is taken by its client port in O(1): the agent never
//!   takes the workload's word for who it is. A backend on this host is dialled from inside
//!   its pod's network namespace; one on another host through a QUIC tunnel to that host's
//!   agent, one pooled connection per (source identity, host) presenting the source's SVID.
//! - **Tunnels in.** Streams from other hosts' workloads: the workload must run on the host
//!   whose issuer vouches for it (the cluster state says so), and its target is a pod of
//!   this host, dialled inside the pod's network namespace.

mod udp;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use beemesh_common::{
    BackendValue, EndpointKey, FlowEvent, PeerSet, Query, DIR_EGRESS, DIR_INGRESS, HOOK_TUNNEL, ID_NONE,
    ID_WORLD, PROTO_TCP, PROTO_UDP, VERDICT_ALLOW, VERDICT_DENY,
};
use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::cluster::execs::ExecRecord;
use super::cluster::pods::{self as cluster_pods, POD, POD_STATUS};
use super::cluster::Cluster;
use super::dns;
use super::services::endpoints::{self, Backend};
use super::services::{Aged, Pool};
use crate::flows::Names;
use crate::kernel::{Captured, ServiceMaps};
use crate::mesh::trust::files::WorkloadIssuer;
use crate::tunnel::splice::{self, Ended};
use crate::tunnel::{self, Connection, Proto, StreamHeader, Target, TlsIdentity};

/// A pod running on this host, as the forwarder needs it (published by the actor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPod {
    pub uid: String,
    /// Its init process: the pod's network namespace is `/proc/<init_pid>/ns/net`.
    pub init_pid: u32,
    /// Its numeric identity in the kernel maps.
    pub identity: u32,
}

/// What the forwarder knows of pods (published by the actor).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodView {
    /// This host's running pods by `namespace/name`.
    pub local: BTreeMap<String, LocalPod>,
    /// Other hosts' pods' numeric identities (this host's numbers) by `namespace/name`, and
    /// their `exec --identity` workloads' by `exec:<node>/<name>`.
    pub remote: BTreeMap<String, u32>,
    /// This host's `exec --identity` workloads: numeric identity -> `exec:<node>/<name>`.
    pub exec: BTreeMap<u32, String>,
}

/// This host's pods' mesh addresses by uid (assigned by the forwarder, shown in their
/// statuses by the actor).
pub type PodAddrs = Arc<Mutex<BTreeMap<String, Ipv4Addr>>>;

/// What the forwarder is started with.
pub(crate) struct Setup {
    /// The pods' mesh address range (`podCidr`).
    pub pod_pool: Pool,
    pub addrs: PodAddrs,
    pub node: String,
    pub cluster: Cluster,
    /// The failure detector: pods on hosts it holds dead are no endpoints.
    pub liveness: super::liveness::Liveness,
    pub maps: ServiceMaps,
    pub tunnel: tunnel::Endpoint,
    /// The data path's runtime (`app::data_path`): the tunnel endpoint, the tunnel acceptor
    /// and every relay through a tunnel run there.
    pub data: tokio::runtime::Handle,
    pub issuer: Arc<WorkloadIssuer>,
    pub trust_domain: String,
    pub svid_lifetime: Duration,
    /// A relayed flow idle this long is reset (`flowIdleTimeoutSeconds`).
    pub idle: Duration,
    pub local: watch::Receiver<Arc<PodView>>,
    pub names: watch::Receiver<Arc<Names>>,
    /// Where the verdicts on tunnel streams are shown (`flows`).
    pub flows: crate::flows::FlowHub,
}

/// The endpoints in force, for the data path.
#[derive(Debug, Default)]
struct Table {
    /// Backend ids (as the kernel records them) -> backends; the previous table's too, so a
    /// connection captured just before a change still finds its backend.
    backends: HashMap<u32, Backend>,
    /// Node name -> its agent's tunnel address.
    tunnels: HashMap<String, SocketAddr>,
    /// `namespace/name` -> (node, SPIFFE id) of every pod the state places, and
    /// `exec:<node>/<name>` -> the same of every `exec --identity` workload a host publishes:
    /// who a host may speak for.
    pods: HashMap<String, (String, String)>,
    /// The mesh's DNS names.
    records: dns::Records,
    /// NodePort -> the ready backends of its Service port.
    node_ports: HashMap<(u16, u8), Vec<Backend>>,
}

/// What a live flow was allowed by, decided again whenever the policy changes.
#[derive(Clone, Copy, Debug)]
enum Check {
    /// A captured connection or UDP flow (the source host): `subject`'s egress to `peer`, and
    /// `peer`'s ingress from `subject`, on `port`/`proto`.
    Egress { subject: u32, peer: u32, port: u16, proto: u8 },
    /// A tunnel stream (the destination host): `subject`'s ingress from `peer` on
    /// `port`/`proto`.
    Ingress { subject: u32, peer: u32, port: u16, proto: u8 },
}

impl Check {
    fn allowed(&self, policy: &crate::policy::CompiledPolicy) -> bool {
        let q = |subject, direction, peer, port, proto| Query {
            subject,
            direction,
            peers: PeerSet { primary: peer, cidr: ID_NONE },
            proto,
            port,
        };
        match *self {
            Check::Egress { subject, peer, port, proto } => {
                policy.decide(&q(subject, DIR_EGRESS, peer, port, proto)).allowed
                    && (!is_workload(peer)
                        || policy.decide(&q(peer, DIR_INGRESS, subject, port, proto)).allowed)
            }
            Check::Ingress { subject, peer, port, proto } => {
                policy.decide(&q(subject, DIR_INGRESS, peer, port, proto)).allowed
            }
        }
    }
}

fn is_workload(id: u32) -> bool {
    (beemesh_common::FIRST_WORKLOAD_ID..beemesh_common::FIRST_CIDR_ID).contains(&id)
}

/// The flows this forwarder relays, each with what allowed it and how to cut it.
#[derive(Default)]
struct Live {
    next: std::sync::atomic::AtomicU64,
    flows: Mutex<HashMap<u64, (Check, Arc<tokio::sync::Notify>)>>,
}

/// A registered flow; unregisters when dropped.
struct LiveGuard<'a> {
    live: &'a Live,
    id: u64,
    cut: Arc<tokio::sync::Notify>,
}

impl Live {
    fn register(&self, check: Check) -> LiveGuard<'_> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let cut = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut flows) = self.flows.lock() {
            flows.insert(id, (check, cut.clone()));
        }
        LiveGuard { live: self, id, cut }
    }

    /// Cuts every flow `policy` no longer allows; returns how many.
    fn revoke(&self, policy: &crate::policy::CompiledPolicy) -> usize {
        let Ok(flows) = self.flows.lock() else { return 0 };
        let mut cut = 0;
        for (check, notify) in flows.values() {
            if !check.allowed(policy) {
                notify.notify_one();
                cut += 1;
            }
        }
        cut
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut flows) = self.live.flows.lock() {
            flows.remove(&self.id);
        }
    }
}

/// Resets a TCP connection (RST, not FIN): the workload sees its connection cut.
fn reset_tcp(stream: TcpStream) {
    // Zero linger: the close sends a reset at once (it never blocks).
    let reset = libc::linger { l_onoff: 1, l_linger: 0 };
    let _ = nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &reset);
    drop(stream);
}

/// Stream error code of a flow cut by a policy change.
const REVOKED: quinn::VarInt = quinn::VarInt::from_u32(2);

/// A source's tunnel identity, its generation and when to renew it.
type Issued = (Arc<TlsIdentity>, u64, Instant);
/// A pooled tunnel connection and the identity generation it presented.
type Pooled = Arc<tokio::sync::Mutex<Option<(Connection, u64)>>>;

struct Shared {
    node: String,
    pod_pool: Pool,
    addrs: PodAddrs,
    maps: Mutex<ServiceMaps>,
    table: watch::Receiver<Arc<Table>>,
    local: watch::Receiver<Arc<PodView>>,
    names: watch::Receiver<Arc<Names>>,
    flows: crate::flows::FlowHub,
    tunnel: tunnel::Endpoint,
    data: tokio::runtime::Handle,
    issuer: Arc<WorkloadIssuer>,
    trust_domain: String,
    svid_lifetime: Duration,
    idle: Duration,
    /// Per source identity: its tunnel identity and when to renew it.
    identities: Mutex<HashMap<String, Issued>>,
    /// Per (source identity, node): the pooled tunnel connection and the identity
    /// generation it presented.
    pool: Mutex<HashMap<(String, String), Pooled>>,
    /// The flows relayed now, for revocation.
    live: Live,
    /// Round robin over a NodePort's backends.
    next_backend: std::sync::atomic::AtomicUsize,
    generation: std::sync::atomic::AtomicU64,
}

/// Starts the forwarder's tasks: endpoints, the capture listener, the tunnel acceptor.
pub(crate) async fn start(setup: Setup) -> std::io::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let capture_port = listener.local_addr()?.port();
    let resolver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let dns_port = resolver.local_addr()?.port();
    let udp_capture = udp::bind()?;
    let udp_port = udp_capture.local_addr()?.port();
    let mut maps = setup.maps;
    maps.set_redirect(capture_port, dns_port, udp_port).map_err(std::io::Error::other)?;
    crate::authz::set_capture_port(capture_port);
    let (table_tx, table) = watch::channel(Arc::new(Table::default()));
    let shared = Arc::new(Shared {
        node: setup.node,
        pod_pool: setup.pod_pool,
        addrs: setup.addrs,
        maps: Mutex::new(maps),
        table,
        local: setup.local,
        names: setup.names,
        flows: setup.flows,
        tunnel: setup.tunnel,
        data: setup.data,
        issuer: setup.issuer,
        trust_domain: setup.trust_domain,
        svid_lifetime: setup.svid_lifetime,
        idle: setup.idle,
        identities: Mutex::new(HashMap::new()),
        pool: Mutex::new(HashMap::new()),
        live: Live::default(),
        next_backend: std::sync::atomic::AtomicUsize::new(0),
        generation: std::sync::atomic::AtomicU64::new(0),
    });
    let upstreams = upstream_resolvers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    info!(
        capture = %listener.local_addr()?,
        dns = %resolver.local_addr()?,
        udp = udp_port,
        upstreams = ?upstreams,
        tunnel = ?shared.tunnel.local_addr().ok(),
        "forwarder listening"
    );
    tokio::spawn(dns_loop(shared.clone(), resolver, upstreams));
    tokio::spawn(revoke_loop(shared.clone()));
    tokio::spawn(follow_state(shared.clone(), setup.cluster, setup.liveness, table_tx));
    tokio::spawn(node_port_loop(shared.clone()));
    tokio::spawn(capture_loop(shared.clone(), listener));
    tokio::spawn(udp::capture_loop(shared.clone(), udp_capture));
    // Tunnel streams in are relayed on the data path's thread, with the endpoint.
    shared.data.clone().spawn(tunnel_loop(shared));
    Ok(())
}

/// Recomputes the endpoints whenever a Service, Pod, pod status or Node changes, or this
/// host's pods do, and installs them.
async fn follow_state(
    shared: Arc<Shared>,
    cluster: Cluster,
    liveness: super::liveness::Liveness,
    table_tx: watch::Sender<Arc<Table>>,
) {
    let kinds = ["Service", POD, POD_STATUS, super::nodes::KIND, super::cluster::execs::KIND];
    let mut changes: Vec<watch::Receiver<u64>> = kinds.iter().map(|k| cluster.kind_changes(k)).collect();
    let mut local = shared.local.clone();
    let mut ids = Ids::default();
    let mut previous: HashMap<u32, Backend> = HashMap::new();
    // A host's death is the detector's verdict, not a write: checked every second.
    let mut verdicts = tokio::time::interval(DEAD_CHECK);
    verdicts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let dead = match cluster.snapshot(&kinds).await {
            Ok((_, listed)) => {
                let local_pods = local.borrow_and_update().clone();
                let nodes: Vec<_> =
                    listed.iter().filter(|l| l.key.kind == super::nodes::KIND).cloned().collect();
                let dead = super::sched::dead_nodes(&nodes, &liveness);
                let (wanted, table) = build(
                    &shared.node,
                    &shared.trust_domain,
                    &shared.pod_pool,
                    &shared.addrs,
                    &listed,
                    &local_pods,
                    &dead,
                    &mut ids,
                );
                // The previous pass's own backends stay one more pass (not older ones: the
                // table does not grow with every pod that ever served).
                let own = table.backends.clone();
                let backends = previous.drain().chain(table.backends).collect();
                previous = own;
                let table = Table { backends, ..table };
                let installed = shared.maps.lock().map(|mut m| m.install(&wanted));
                match installed {
                    Ok(Ok(())) => debug!(services = wanted.len(), ?dead, "service endpoints installed"),
                    Ok(Err(e)) => warn!(error = %e, "cannot install service endpoints"),
                    Err(_) => return,
                }
                table_tx.send_replace(Arc::new(table));
                dead
            }
            Err(e) => {
                warn!(error = %e, "forwarder: cluster state unavailable");
                return;
            }
        };
        loop {
            let any_change = futures::future::select_all(changes.iter_mut().map(|c| Box::pin(c.changed())));
            tokio::select! {
                (result, _, _) = any_change => if result.is_err() { return } else { break },
                result = local.changed() => if result.is_err() { return } else { break },
                _ = verdicts.tick() => {
                    let Ok((_, nodes)) = cluster.snapshot(&[super::nodes::KIND]).await else { return };
                    if super::sched::dead_nodes(&nodes, &liveness) != dead {
                        break;
                    }
                }
            }
        }
        // A burst of changes (a rollout) makes one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How often the forwarder asks the failure detector whether a backend's host died.
const DEAD_CHECK: Duration = Duration::from_secs(1);

/// Stable ids for Service ports and backends, as the kernel maps name them.
#[derive(Default)]
struct Ids {
    next: u32,
    services: HashMap<(String, String, u16, u8), u32>,
    backends: HashMap<Backend, u32>,
}

impl Ids {
    fn id<K: std::hash::Hash + Eq>(next: &mut u32, map: &mut HashMap<K, u32>, key: K) -> u32 {
        *map.entry(key).or_insert_with(|| {
            *next = next.wrapping_add(1).max(1);
            *next
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn build(
    node: &str,
    trust_domain: &str,
    pool: &Pool,
    addrs: &PodAddrs,
    listed: &[super::cluster::Listed],
    view: &PodView,
    dead: &std::collections::BTreeSet<String>,
    ids: &mut Ids,
) -> (BTreeMap<EndpointKey, Captured>, Table) {
    let mut services = Vec::new();
    let mut pods = Vec::new();
    let mut statuses = Vec::new();
    let mut tunnels = HashMap::new();
    let mut execs = Vec::new();
    for l in listed {
        match l.key.kind.as_str() {
            super::cluster::execs::KIND => execs.extend(ExecRecord::decode(&l.key, &l.body)),
            "Service" => {
                if let Ok(svc) = serde_json::from_slice::<Service>(&l.body) {
                    services.push((l.key.namespace.clone(), l.key.name.clone(), svc));
                }
            }
            POD => {
                if let Ok(pod) = cluster_pods::decode(&l.body) {
                    pods.push(pod);
                }
            }
            POD_STATUS => statuses.push(l.clone()),
            super::nodes::KIND => {
                if let Some(addr) =
                    serde_json::from_slice::<Value>(&l.body).ok().as_ref().and_then(tunnel_addr)
                {
                    tunnels.insert(l.key.name.clone(), addr);
                }
            }
            _ => {}
        }
    }
    let mut reports = cluster_pods::reports(&statuses);
    // A pod keeps its address while its host is down (it may come back)...
    let addr_of = pod_addresses(node, pool, &pods, &reports, view, addrs);
    // ...but serves nothing: as Kubernetes marks a lost node's pods not ready.
    reports.retain(|_, r| !dead.contains(&r.node));
    let records = dns_records(&services, &pods, &reports, &addr_of);
    let ports = endpoints::compute(&services, &pods, &reports);
    let mut wanted = BTreeMap::new();
    let mut backends = HashMap::new();
    let (mut used_services, mut used_backends) = (HashSet::new(), HashSet::new());
    // Every pod with a mesh address, on any port: a Service of its own (port 0).
    let pod_ports = pods.iter().filter_map(|p| {
        let addr = *addr_of.get(p.metadata.uid.as_deref()?)?;
        let (placed, uid) = cluster_pods::placement(p);
        let b = Backend {
            namespace: p.metadata.namespace.clone()?,
            pod: p.metadata.name.clone()?,
            uid: uid.to_owned(),
            node: placed.to_owned(),
            port: 0,
        };
        let service = format!("pod/{}", b.pod);
        let port = |proto| endpoints::ServicePort {
            namespace: b.namespace.clone(),
            service: service.clone(),
            ip: addr,
            port: 0,
            proto,
            node_port: None,
            backends: vec![b.clone()],
            internal_local: false,
            external_local: false,
        };
        Some([port(PROTO_TCP), port(PROTO_UDP)])
    });
    let pod_ports: Vec<_> = pod_ports.flatten().collect();
    let mut node_ports = HashMap::new();
    for sp in &ports {
        let serving = sp.serving_node_port(node);
        if let Some(np) = sp.node_port.filter(|_| !serving.is_empty()) {
            node_ports.insert((np, sp.proto), serving);
        }
    }
    let ports = ports.into_iter().map(|sp| endpoints::ServicePort { backends: sp.serving(node), ..sp });
    for sp in ports.chain(pod_ports) {
        let skey = (sp.namespace.clone(), sp.service.clone(), sp.port, sp.proto);
        let id = Ids::id(&mut ids.next, &mut ids.services, skey.clone());
        used_services.insert(skey);
        let mut values = Vec::with_capacity(sp.backends.len());
        for b in sp.backends {
            let bid = Ids::id(&mut ids.next, &mut ids.backends, b.clone());
            used_backends.insert(b.clone());
            let key = format!("{}/{}", b.namespace, b.pod);
            let identity = if b.node == node {
                view.local.get(&key).map(|p| p.identity)
            } else {
                view.remote.get(&key).copied()
            };
            // Not numbered yet (the actor has not seen the pod): policy sees the world.
            let identity = identity.unwrap_or(ID_WORLD);
            values.push(BackendValue { backend: bid, identity, port: b.port, _pad: 0 });
            backends.insert(bid, b);
        }
        let key = EndpointKey {
            addr: beemesh_common::Addr::from_v4_be(u32::from(sp.ip).to_be()),
            port: sp.port,
            proto: sp.proto,
            _pad: 0,
        };
        wanted.insert(key, Captured { id, backends: values });
    }
    ids.services.retain(|k, _| used_services.contains(k));
    ids.backends.retain(|k, _| used_backends.contains(k));
    let placed = pods
        .iter()
        .filter_map(|p| {
            let (node, _) = cluster_pods::placement(p);
            let ns = p.metadata.namespace.as_deref()?;
            let key = format!("{ns}/{}", p.metadata.name.as_deref()?);
            Some((key, (node.to_owned(), spiffe_of(p, trust_domain, ns))))
        })
        .chain(execs.iter().map(|r| (r.view_key(), (r.node.clone(), r.identity.to_string()))))
        .collect();
    (wanted, Table { backends, tunnels, pods: placed, records, node_ports })
}

/// Mesh addresses by pod uid: this host's pods' (assigned here, `services::pod_addresses`,
/// and kept in `addrs` for their statuses) and the ones other hosts report for theirs.
fn pod_addresses(
    node: &str,
    pool: &Pool,
    pods: &[Pod],
    reports: &BTreeMap<String, cluster_pods::PodReport>,
    view: &PodView,
    addrs: &PodAddrs,
) -> HashMap<String, Ipv4Addr> {
    let reported = |uid: &str, placed: &str| -> Option<u32> {
        let r = reports.get(uid).filter(|r| r.node == placed)?;
        let ip: Ipv4Addr = r.pod_status.get("podIP")?.as_str()?.parse().ok()?;
        Some(u32::from(ip)).filter(|a| pool.contains(*a))
    };
    let running_here: HashSet<&str> = view.local.values().map(|p| p.uid.as_str()).collect();
    let mut local = Vec::new();
    let mut others = BTreeMap::new();
    let held_now = addrs.lock().map(|a| a.clone()).unwrap_or_default();
    let mut held = BTreeMap::new();
    for p in pods {
        let (placed, uid) = cluster_pods::placement(p);
        let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
        let aged = Aged { created, uid: uid.to_owned() };
        if placed == node && running_here.contains(uid) {
            if let Some(a) = held_now.get(uid).map(|a| u32::from(*a)).or_else(|| reported(uid, placed)) {
                held.insert(uid.to_owned(), a);
            }
            local.push(aged);
        } else if let Some(a) = reported(uid, placed) {
            others.insert(a, aged);
        }
    }
    let assigned = super::services::pod_addresses(pool, &local, &held, &others);
    let mine: BTreeMap<String, Ipv4Addr> =
        assigned.into_iter().map(|(u, a)| (u, Ipv4Addr::from(a))).collect();
    if let Ok(mut a) = addrs.lock() {
        a.clone_from(&mine);
    }
    others.into_iter().map(|(a, p)| (p.uid, Ipv4Addr::from(a))).chain(mine).collect()
}

/// The mesh's DNS names: Services by their cluster IP, headless ones by their ready pods'
/// addresses (every running one's with `publishNotReadyAddresses`), and pods with `hostname` and `subdomain` naming a headless Service by theirs.
fn dns_records(
    services: &[(String, String, Service)],
    pods: &[Pod],
    reports: &BTreeMap<String, cluster_pods::PodReport>,
    addr_of: &HashMap<String, Ipv4Addr>,
) -> dns::Records {
    let (ready, running) = endpoints::candidates(pods, reports);
    let addr = |p: &Pod| p.metadata.uid.as_deref().and_then(|u| addr_of.get(u)).copied();
    let mut records = dns::Records::default();
    for (namespace, name, svc) in services {
        let headless = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
        if let Some(ip) = super::services::cluster_ip(svc) {
            records.add_service(namespace, name, vec![Ipv4Addr::from(ip)]);
        } else if headless {
            let pool = if endpoints::publishes_not_ready(svc) { &running } else { &ready };
            let selected = endpoints::selected(svc, namespace, pool);
            let mut addrs: Vec<Ipv4Addr> = selected.iter().filter_map(|p| addr(p)).collect();
            addrs.sort();
            records.add_service(namespace, name, addrs);
            for p in selected {
                let spec = p.spec.as_ref();
                let (Some(host), Some(sub)) =
                    (spec.and_then(|s| s.hostname.as_deref()), spec.and_then(|s| s.subdomain.as_deref()))
                else {
                    continue;
                };
                if let (true, Some(a)) = (sub == name, addr(p)) {
                    records.add_pod(namespace, name, host, a);
                }
            }
        }
    }
    records
}

/// The SPIFFE id of a pod.
fn spiffe_of(pod: &Pod, trust_domain: &str, namespace: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{}", cluster_pods::service_account(pod))
}

/// A Node record's tunnel address: its first InternalIP and its tunnel port annotation.
fn tunnel_addr(node: &Value) -> Option<SocketAddr> {
    let port: u16 = node
        .pointer("/metadata/annotations")?
        .get(super::nodes::TUNNEL_PORT_ANNOTATION)?
        .as_str()?
        .parse()
        .ok()
        .filter(|p| *p != 0)?;
    let addresses = node.pointer("/status/addresses")?.as_array()?;
    let ip = addresses
        .iter()
        .filter(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
        .filter_map(|a| a.get("address")?.as_str()?.parse::<std::net::IpAddr>().ok())
        .min_by_key(|ip| !ip.is_ipv4())?;
    Some(SocketAddr::new(ip, port))
}

async fn capture_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(captured(shared.clone(), stream, peer));
            }
            Err(e) => {
                warn!(error = %e, "capture listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One captured connection: to its backend, here or through a tunnel.
async fn captured(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let capture = shared.maps.lock().ok().and_then(|mut m| m.take_capture(peer.port()));
    let Some(capture) = capture else {
        // Only the kernel's rewrite leads here; anything else is no workload's connection.
        debug!(%peer, "connection to the capture port that the kernel did not capture: closed");
        return;
    };
    let table = shared.table.borrow().clone();
    let Some(mut backend) = table.backends.get(&capture.backend).cloned() else {
        warn!(backend = capture.backend, "captured connection to a backend that is gone: closed");
        return;
    };
    // A pod's mesh address: the port asked for.
    if backend.port == 0 {
        backend.port = capture.port;
    }
    let Some((source, source_pod)) = shared.source_of(capture.subject) else {
        warn!(subject = capture.subject, "captured connection from an unknown workload: closed");
        return;
    };
    let flow = Relay {
        check: Check::Egress {
            subject: capture.subject,
            peer: capture.peer,
            port: backend.port,
            proto: PROTO_TCP,
        },
        source,
        source_pod,
        backend,
    };
    dispatch(shared, stream, flow, table).await;
}

/// Relays `stream` here when its backend runs on this host; through a tunnel on the data
/// path's thread, with the tunnel endpoint (a relay on one thread moves its bytes without
/// handing them between workers). A relay between two sockets of this host stays on the
/// agent's runtime, whose two workers share its work.
async fn dispatch(shared: Arc<Shared>, stream: TcpStream, flow: Relay, table: Arc<Table>) {
    if flow.backend.node == shared.node {
        return relay(shared, stream, flow, &table).await;
    }
    let data = shared.data.clone();
    match stream.into_std() {
        Ok(stream) => {
            data.spawn(async move {
                match TcpStream::from_std(stream) {
                    Ok(stream) => relay(shared, stream, flow, &table).await,
                    Err(e) => warn!(error = %e, "connection not moved to the data path: closed"),
                }
            });
        }
        Err(e) => warn!(error = %e, "connection not moved to the data path: closed"),
    }
}

/// One captured connection on its way to its backend.
struct Relay {
    check: Check,
    source: String,
    source_pod: Option<String>,
    backend: Backend,
}

/// Relays `stream` to its backend, here or through a tunnel, until either side ends or the
/// policy cuts it.
async fn relay(shared: Arc<Shared>, stream: TcpStream, flow: Relay, table: &Table) {
    let Relay { check, source, source_pod, backend } = flow;
    let live = shared.live.register(check);
    let result = if backend.node == shared.node {
        forward_local(&shared, stream, &backend, &live.cut).await
    } else {
        forward_remote(&shared, stream, &source, source_pod, &backend, table, &live.cut).await
    };
    match result {
        Ok((up, down)) => {
            debug!(source = %source, pod = %backend.pod, node = %backend.node, up, down, "forwarded connection closed")
        }
        Err(e) => {
            info!(source = %source, pod = %backend.pod, node = %backend.node, error = %e, "forwarding failed")
        }
    }
}

async fn forward_local(
    shared: &Shared,
    mut stream: TcpStream,
    backend: &Backend,
    cut: &tokio::sync::Notify,
) -> Result<(u64, u64), String> {
    let key = format!("{}/{}", backend.namespace, backend.pod);
    let pod = shared
        .local
        .borrow()
        .local
        .get(&key)
        .cloned()
        .ok_or_else(|| format!("pod {key} does not run here"))?;
    let mut upstream =
        dial_pod(&pod, backend.port).await.map_err(|e| format!("dial {key}:{}: {e}", backend.port))?;
    let ended = splice::tcp_tcp(&mut stream, &mut upstream, shared.idle, cut).await;
    match ended.map_err(|e| e.to_string())? {
        Ended::Closed { up, down } => Ok((up, down)),
        cut => {
            reset_tcp(stream);
            reset_tcp(upstream);
            Err(ended_why(cut, shared.idle))
        }
    }
}

/// Why a relayed flow was cut, for the log.
fn ended_why(ended: Ended, idle: Duration) -> String {
    match ended {
        Ended::Idle => format!("idle for {idle:?}: reset"),
        _ => "revoked: the policy no longer allows it".into(),
    }
}

/// A TCP connection to `port` of `pod`, from a socket made inside its network namespace.
async fn dial_pod(pod: &LocalPod, port: u16) -> std::io::Result<TcpStream> {
    let pid = pod.init_pid;
    let fd = tokio::task::spawn_blocking(move || crate::sys::process::tcp_socket_in_netns_of(pid, false))
        .await
        .map_err(std::io::Error::other)??;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    let stream = socket.connect(SocketAddr::from((crate::pod::net::POD_ADDR, port))).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn forward_remote(
    shared: &Shared,
    mut stream: TcpStream,
    source: &str,
    source_pod: Option<String>,
    backend: &Backend,
    table: &Table,
    cut: &tokio::sync::Notify,
) -> Result<(u64, u64), String> {
    let addr =
        *table.tunnels.get(&backend.node).ok_or_else(|| format!("no tunnel address for {}", backend.node))?;
    let conn = shared.connection(source, &backend.node, addr).await?;
    let header = StreamHeader {
        source: source.to_owned(),
        pod: source_pod,
        target: Target {
            host: format!("{}/{}", backend.namespace, backend.pod),
            port: backend.port,
            proto: Proto::Tcp,
        },
    };
    let (mut send, mut recv) = conn.open(&header).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let ended = splice::tcp_stream(&mut stream, &mut send, &mut recv, shared.idle, cut).await;
    match ended.map_err(|e| e.to_string())? {
        Ended::Closed { up, down } => Ok((up, down)),
        cut => {
            reset_tcp(stream);
            let _ = send.reset(REVOKED);
            let _ = recv.stop(REVOKED);
            Err(ended_why(cut, shared.idle))
        }
    }
}

impl Shared {
    /// The SPIFFE id of the workload with numeric identity `subject`, and its pod (for the
    /// destination's label-based policy): the local pod with that identity, else the `exec
    /// --identity` workload with it. Replicas sharing an identity share its labels.
    fn source_of(&self, subject: u32) -> Option<(String, Option<String>)> {
        let source = self.names.borrow().identities.get(&subject).cloned();
        let source = source.filter(|s| s.starts_with("spiffe://"))?;
        let view = self.local.borrow();
        let pod = view.local.iter().find(|(_, p)| p.identity == subject).map(|(k, _)| k.clone());
        Some((source, pod.or_else(|| view.exec.get(&subject).cloned())))
    }

    /// The identity under which an agent carries NodePort traffic (from outside the mesh:
    /// policy sees `world`) to other hosts.
    fn node_port_identity(&self) -> String {
        format!("spiffe://{}/ns/kube-system/sa/beemesh-node-port", self.trust_domain)
    }

    /// The next backend of NodePort `port`/`proto` (in turn) for a client at `peer`, and the
    /// check of its ingress from `world` (`host` when the client is this host).
    fn node_port_backend(
        &self,
        table: &Table,
        port: u16,
        proto: u8,
        peer: SocketAddr,
    ) -> Option<(Backend, Check)> {
        let backends = table.node_ports.get(&(port, proto)).filter(|b| !b.is_empty())?;
        let turn = self.next_backend.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let backend = backends[turn % backends.len()].clone();
        let local_peer = peer.ip().is_loopback() || crate::authz::LocalAddrs::read().contains(peer.ip());
        let source = if local_peer { beemesh_common::ID_HOST } else { ID_WORLD };
        let check =
            Check::Ingress { subject: self.identity_of(&backend), peer: source, port: backend.port, proto };
        Some((backend, check))
    }

    /// The numeric identity of a backend's pod, as this host numbers it.
    fn identity_of(&self, backend: &Backend) -> u32 {
        let key = format!("{}/{}", backend.namespace, backend.pod);
        let view = self.local.borrow();
        let id = if backend.node == self.node {
            view.local.get(&key).map(|p| p.identity)
        } else {
            view.remote.get(&key).copied()
        };
        id.unwrap_or(ID_WORLD)
    }

    /// The destination's ingress verdict for a stream from `source` (a numeric identity) to
    /// `pod`'s `port`, recorded in `flows` with the tunnel peer's address.
    fn decide_ingress(&self, pod: &LocalPod, source: u32, target: &Target, from: SocketAddr) -> bool {
        let names = self.names.borrow().clone();
        let (port, proto) = (target.port, proto_number(target.proto));
        let decision = names.policy.decide(&Query {
            subject: pod.identity,
            direction: DIR_INGRESS,
            peers: PeerSet { primary: source, cidr: ID_NONE },
            proto,
            port,
        });
        let ip = match from.ip() {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        let words =
            ip.octets().chunks(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>();
        let event = FlowEvent {
            ts_ns: monotonic_ns(),
            subject: pod.identity,
            peer: source,
            rule: decision.rule,
            addr: beemesh_common::Addr { words: [words[0], words[1], words[2], words[3]] },
            port,
            proto,
            direction: DIR_INGRESS,
            verdict: if decision.allowed { VERDICT_ALLOW } else { VERDICT_DENY },
            hook: HOOK_TUNNEL,
            _pad: [0; 2],
        };
        self.flows.push_agent(event, &names);
        decision.allowed
    }

    /// The tunnel identity of `source`, issued by this host's workload issuer and renewed at
    /// half its lifetime; with its generation.
    fn workload_identity(&self, source: &str) -> Result<(Arc<TlsIdentity>, u64), String> {
        let mut ids = self.identities.lock().map_err(|_| "identity cache poisoned".to_owned())?;
        if let Some((id, generation, renew)) = ids.get(source) {
            if Instant::now() < *renew {
                return Ok((id.clone(), *generation));
            }
        }
        let svid =
            self.issuer.issue(source, SystemTime::now(), self.svid_lifetime).map_err(|e| e.to_string())?;
        let identity = TlsIdentity::workload(
            &svid,
            self.issuer.chain(),
            self.issuer.bundle().to_vec(),
            &self.trust_domain,
        )
        .map_err(|e| e.to_string())?;
        let generation = self.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let identity = Arc::new(identity);
        ids.insert(
            source.to_owned(),
            (identity.clone(), generation, Instant::now() + self.svid_lifetime / 2),
        );
        Ok((identity, generation))
    }

    /// The pooled connection for `source` to `node`, made when there is none, it closed, or
    /// the source's identity was renewed (streams of the old one go on until they end).
    async fn connection(&self, source: &str, node: &str, addr: SocketAddr) -> Result<Connection, String> {
        let slot = {
            let mut pool = self.pool.lock().map_err(|_| "pool poisoned".to_owned())?;
            pool.entry((source.to_owned(), node.to_owned())).or_default().clone()
        };
        let (identity, generation) = self.workload_identity(source)?;
        let mut held = slot.lock().await;
        if let Some((conn, g)) = held.as_ref() {
            if *g == generation && !conn.is_closed() && conn.remote_address() == addr {
                return Ok(conn.clone());
            }
        }
        let conn = self
            .tunnel
            .connect(addr, &identity, node)
            .await
            .map_err(|e| format!("tunnel to {node} at {addr}: {e}"))?;
        *held = Some((conn.clone(), generation));
        Ok(conn)
    }
}

async fn tunnel_loop(shared: Arc<Shared>) {
    while let Some(incoming) = shared.tunnel.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.handshake().await {
                Ok(conn) => serve_tunnel(shared, conn).await,
                Err(e) => warn!(%remote, error = %e, "tunnel refused"),
            }
        });
    }
}

async fn serve_tunnel(shared: Arc<Shared>, conn: Connection) {
    loop {
        match conn.accept_stream().await {
            Ok((header, send, recv)) => {
                tokio::spawn(serve_stream(shared.clone(), conn.clone(), header, send, recv));
            }
            Err(tunnel::TunnelError::Connection(e)) => {
                debug!(peer = conn.peer_id(), error = %e, "tunnel connection ended");
                return;
            }
            Err(e) => warn!(peer = conn.peer_id(), error = %e, "tunnel stream refused"),
        }
    }
}

/// How long a stream from an `exec --identity` workload this host does not know yet waits for
/// its record (published when the workload started) and its numeric identity.
const EXEC_RECORD_WAIT: Duration = Duration::from_secs(2);

async fn serve_stream(
    shared: Arc<Shared>,
    conn: Connection,
    header: StreamHeader,
    mut send: tunnel::SendStream,
    mut recv: tunnel::RecvStream,
) {
    let refuse = |send: &mut tunnel::SendStream, recv: &mut tunnel::RecvStream| {
        let _ = send.reset(tunnel::BAD_HEADER);
        let _ = recv.stop(tunnel::BAD_HEADER);
    };
    // The source was proven by mTLS; the pod it names must be placed on the host that
    // vouches for it, with that identity.
    let source_pod = header.pod.clone().unwrap_or_default();
    // NodePort traffic another host took in: no pod, its agent's node-port identity.
    let from_node_port = header.pod.is_none() && conn.peer_id() == shared.node_port_identity();
    let placed = |table: &Table| {
        conn.peer_host().is_some_and(|host| {
            table.pods.get(&source_pod) == Some(&(host.to_owned(), conn.peer_id().to_owned()))
        })
    };
    if source_pod.starts_with(super::cluster::execs::VIEW_PREFIX) {
        // An `exec --identity` workload connects as soon as it starts: its record may still be
        // on its way here, behind its first stream.
        let mut table = shared.table.clone();
        let mut local = shared.local.clone();
        let deadline = tokio::time::Instant::now() + EXEC_RECORD_WAIT;
        while !(placed(&table.borrow_and_update())
            && local.borrow_and_update().remote.contains_key(&source_pod))
        {
            tokio::select! {
                _ = table.changed() => {}
                _ = local.changed() => {}
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    let vouched = from_node_port || placed(&shared.table.borrow());
    if !vouched {
        warn!(
            peer = conn.peer_id(),
            host = ?conn.peer_host(),
            pod = %source_pod,
            "tunnel stream from a pod its host does not run with that identity: refused"
        );
        refuse(&mut send, &mut recv);
        return;
    }
    let (pod, source_id) = {
        let view = shared.local.borrow();
        (view.local.get(&header.target.host).cloned(), view.remote.get(&source_pod).copied())
    };
    let Some(pod) = pod else {
        info!(peer = conn.peer_id(), target = %header.target.host, "tunnel stream to a pod that does not run here: refused");
        refuse(&mut send, &mut recv);
        return;
    };
    // This host decides again, on its own policy, with the proven peer.
    let source_id = source_id.unwrap_or(ID_WORLD);
    let allowed = shared.decide_ingress(&pod, source_id, &header.target, conn.remote_address());
    if !allowed {
        info!(peer = conn.peer_id(), pod = %source_pod, target = %header.target.host, port = header.target.port, "tunnel stream denied by policy");
        refuse(&mut send, &mut recv);
        return;
    }
    if header.target.proto == Proto::Udp {
        let check = Check::Ingress {
            subject: pod.identity,
            peer: source_id,
            port: header.target.port,
            proto: PROTO_UDP,
        };
        return udp::serve_stream(&shared, &conn, &pod, &header, check, send, recv).await;
    }
    let mut upstream = match dial_pod(&pod, header.target.port).await {
        Ok(s) => s,
        Err(e) => {
            info!(target = %header.target.host, port = header.target.port, error = %e, "tunnel stream: dial failed");
            refuse(&mut send, &mut recv);
            return;
        }
    };
    let live = shared.live.register(Check::Ingress {
        subject: pod.identity,
        peer: source_id,
        port: header.target.port,
        proto: PROTO_TCP,
    });
    match splice::tcp_stream(&mut upstream, &mut send, &mut recv, shared.idle, &live.cut).await {
        Ok(Ended::Closed { up, down }) => {
            debug!(peer = conn.peer_id(), target = %header.target.host, up = down, down = up, "tunnel stream closed")
        }
        Err(e) => {
            debug!(peer = conn.peer_id(), target = %header.target.host, error = %e, "tunnel stream ended")
        }
        Ok(cut) => {
            reset_tcp(upstream);
            let _ = send.reset(REVOKED);
            let _ = recv.stop(REVOKED);
            let why = ended_why(cut, shared.idle);
            info!(peer = conn.peer_id(), target = %header.target.host, "tunnel stream cut: {why}");
        }
    }
}

/// Decides every live flow again whenever the policy in force changes, and cuts the ones it
/// no longer allows (continuous authorization, as the kernel's sweep does for sockets).
async fn revoke_loop(shared: Arc<Shared>) {
    let mut names = shared.names.clone();
    while names.changed().await.is_ok() {
        let policy = names.borrow_and_update().policy.clone();
        let cut = shared.live.revoke(&policy);
        if cut > 0 {
            info!(cut, "revoked: forwarded flows cut");
        }
    }
}

/// The host's resolvers (`nameserver` lines of resolv.conf), port 53.
fn upstream_resolvers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Forwarded queries in flight at most; more are dropped (the pod's resolver asks again).
const DNS_FORWARDS: usize = 256;
/// How long one upstream resolver gets to answer before the next is asked.
const DNS_UPSTREAM_WAIT: Duration = Duration::from_secs(2);

/// The agent's resolver for pods (their queries reach it through the kernel's redirect):
/// the mesh's names answered from the cluster state, other names forwarded to the host's
/// resolvers.
async fn dns_loop(shared: Arc<Shared>, socket: UdpSocket, upstreams: Vec<SocketAddr>) {
    let socket = Arc::new(socket);
    let forwards = Arc::new(tokio::sync::Semaphore::new(DNS_FORWARDS));
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                warn!(error = %e, "dns socket");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let query = &buf[..n];
        let answer = dns::answer(query, &shared.table.borrow().records);
        match answer {
            Ok(dns::Answer::Reply(reply)) => {
                let _ = socket.send_to(&reply, from).await;
            }
            Ok(dns::Answer::Forward) => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    debug!("too many forwarded DNS queries in flight: dropped");
                    continue;
                };
                let (socket, query, upstreams) = (socket.clone(), query.to_vec(), upstreams.clone());
                tokio::spawn(async move {
                    if let Some(reply) = ask_upstream(&query, &upstreams).await {
                        let _ = socket.send_to(&reply, from).await;
                    }
                    drop(permit);
                });
            }
            Err(e) => debug!(%from, error = %e, "dns query dropped"),
        }
    }
}

/// `query` asked of each upstream resolver in turn; the first answer.
async fn ask_upstream(query: &[u8], upstreams: &[SocketAddr]) -> Option<Vec<u8>> {
    for upstream in upstreams {
        let bind: SocketAddr =
            if upstream.is_ipv4() { (Ipv4Addr::UNSPECIFIED, 0).into() } else { "[::]:0".parse().ok()? };
        let Ok(sock) = UdpSocket::bind(bind).await else { continue };
        if sock.connect(upstream).await.is_err() || sock.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(Ok(n)) = tokio::time::timeout(DNS_UPSTREAM_WAIT, sock.recv(&mut buf)).await {
            buf.truncate(n);
            return Some(buf);
        }
    }
    None
}

/// The IP protocol number of a tunnel stream's protocol.
fn proto_number(proto: Proto) -> u8 {
    match proto {
        Proto::Tcp => PROTO_TCP,
        Proto::Udp => PROTO_UDP,
    }
}

/// CLOCK_MONOTONIC in nanoseconds, the kernel's flow event clock.
fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Listens on every NodePort the table names (all IPv4 addresses, as kube-proxy does), and
/// stops listening on the ones it no longer names.
async fn node_port_loop(shared: Arc<Shared>) {
    let mut table = shared.table.clone();
    let mut listening: HashMap<(u16, u8), tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let wanted: HashSet<(u16, u8)> = table.borrow_and_update().node_ports.keys().copied().collect();
        listening.retain(|port, task| {
            let keep = wanted.contains(port);
            if !keep {
                task.abort();
                info!(port = port.0, udp = port.1 == PROTO_UDP, "node port closed");
            }
            keep
        });
        for port in wanted {
            if listening.contains_key(&port) {
                continue;
            }
            let (number, proto) = port;
            let task = if proto == PROTO_UDP {
                udp::bind_node_port(number)
                    .map(|socket| tokio::spawn(udp::node_port_loop(shared.clone(), socket, number)))
            } else {
                TcpListener::bind((Ipv4Addr::UNSPECIFIED, number))
                    .await
                    .map(|listener| tokio::spawn(node_port_accept(shared.clone(), listener, number)))
            };
            match task {
                Ok(task) => {
                    info!(port = number, udp = proto == PROTO_UDP, "node port listening");
                    listening.insert(port, task);
                }
                // Tried again on the next change of the endpoints.
                Err(e) => {
                    warn!(port = number, udp = proto == PROTO_UDP, error = %e, "cannot listen on a node port")
                }
            }
        }
        if table.changed().await.is_err() {
            return;
        }
    }
}

async fn node_port_accept(shared: Arc<Shared>, listener: TcpListener, port: u16) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(node_port_connection(shared.clone(), stream, peer, port));
            }
            Err(e) => {
                warn!(port, error = %e, "node port listener");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// A connection to a NodePort: to the Service port's backends in turn, here or through a
/// tunnel, decided as coming from `world` (`host` from this host itself).
async fn node_port_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr, port: u16) {
    let table = shared.table.borrow().clone();
    let Some((backend, check)) = shared.node_port_backend(&table, port, PROTO_TCP, peer) else {
        reset_tcp(stream);
        return;
    };
    if !check.allowed(&shared.names.borrow().policy) {
        info!(port, %peer, pod = %backend.pod, "node port connection denied by policy");
        reset_tcp(stream);
        return;
    }
    debug!(port, %peer, pod = %backend.pod, node = %backend.node, "node port connection");
    let flow = Relay { check, source: shared.node_port_identity(), source_pod: None, backend };
    dispatch(shared, stream, flow, table).await;
}
