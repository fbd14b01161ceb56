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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use beemesh_common::{BackendValue, EndpointKey, ID_WORLD, PROTO_TCP};
use k8s_openapi::api::core::v1::{Pod, Service};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::cluster::pods::{self as cluster_pods, POD, POD_STATUS};
use super::cluster::Cluster;
use super::dns;
use super::services::endpoints::{self, Backend};
use crate::flows::Names;
use crate::kernel::{Captured, ServiceMaps};
use crate::mesh::trust::files::WorkloadIssuer;
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

/// This host's running pods by `namespace/name`.
pub type LocalPods = BTreeMap<String, LocalPod>;

/// What the forwarder is started with.
pub(crate) struct Setup {
    pub node: String,
    pub cluster: Cluster,
    pub maps: ServiceMaps,
    pub tunnel: tunnel::Endpoint,
    pub issuer: Arc<WorkloadIssuer>,
    pub trust_domain: String,
    pub svid_lifetime: Duration,
    pub local: watch::Receiver<Arc<LocalPods>>,
    pub names: watch::Receiver<Arc<Names>>,
}

/// The endpoints in force, for the data path.
#[derive(Debug, Default)]
struct Table {
    /// Backend ids (as the kernel records them) -> backends; the previous table's too, so a
    /// connection captured just before a change still finds its backend.
    backends: HashMap<u32, Backend>,
    /// Node name -> its agent's tunnel address.
    tunnels: HashMap<String, SocketAddr>,
    /// (node, SPIFFE id) of every pod the state places: who a host may speak for.
    sources: HashSet<(String, String)>,
    /// The mesh's DNS names.
    records: dns::Records,
}

/// A source's tunnel identity, its generation and when to renew it.
type Issued = (Arc<TlsIdentity>, u64, Instant);
/// A pooled tunnel connection and the identity generation it presented.
type Pooled = Arc<tokio::sync::Mutex<Option<(Connection, u64)>>>;

struct Shared {
    node: String,
    maps: Mutex<ServiceMaps>,
    table: watch::Receiver<Arc<Table>>,
    local: watch::Receiver<Arc<LocalPods>>,
    names: watch::Receiver<Arc<Names>>,
    tunnel: tunnel::Endpoint,
    issuer: Arc<WorkloadIssuer>,
    trust_domain: String,
    svid_lifetime: Duration,
    /// Per source identity: its tunnel identity and when to renew it.
    identities: Mutex<HashMap<String, Issued>>,
    /// Per (source identity, node): the pooled tunnel connection and the identity
    /// generation it presented.
    pool: Mutex<HashMap<(String, String), Pooled>>,
    generation: std::sync::atomic::AtomicU64,
}

/// Starts the forwarder's tasks: endpoints, the capture listener, the tunnel acceptor.
pub(crate) async fn start(setup: Setup) -> std::io::Result<()> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let capture_port = listener.local_addr()?.port();
    let resolver = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let dns_port = resolver.local_addr()?.port();
    let mut maps = setup.maps;
    maps.set_redirect(capture_port, dns_port).map_err(std::io::Error::other)?;
    let (table_tx, table) = watch::channel(Arc::new(Table::default()));
    let shared = Arc::new(Shared {
        node: setup.node,
        maps: Mutex::new(maps),
        table,
        local: setup.local,
        names: setup.names,
        tunnel: setup.tunnel,
        issuer: setup.issuer,
        trust_domain: setup.trust_domain,
        svid_lifetime: setup.svid_lifetime,
        identities: Mutex::new(HashMap::new()),
        pool: Mutex::new(HashMap::new()),
        generation: std::sync::atomic::AtomicU64::new(0),
    });
    let upstreams = upstream_resolvers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    info!(
        capture = %listener.local_addr()?,
        dns = %resolver.local_addr()?,
        upstreams = ?upstreams,
        tunnel = ?shared.tunnel.local_addr().ok(),
        "forwarder listening"
    );
    tokio::spawn(dns_loop(shared.clone(), resolver, upstreams));
    tokio::spawn(follow_state(shared.clone(), setup.cluster, table_tx));
    tokio::spawn(capture_loop(shared.clone(), listener));
    tokio::spawn(tunnel_loop(shared));
    Ok(())
}

/// Recomputes the endpoints whenever a Service, Pod, pod status or Node changes, or this
/// host's pods do, and installs them.
async fn follow_state(shared: Arc<Shared>, cluster: Cluster, table_tx: watch::Sender<Arc<Table>>) {
    let kinds = ["Service", POD, POD_STATUS, super::nodes::KIND];
    let mut changes: Vec<watch::Receiver<u64>> = kinds.iter().map(|k| cluster.kind_changes(k)).collect();
    let mut local = shared.local.clone();
    let mut ids = Ids::default();
    loop {
        match cluster.snapshot(&kinds).await {
            Ok((_, listed)) => {
                let local_pods = local.borrow_and_update().clone();
                let (wanted, table) =
                    build(&shared.node, &shared.trust_domain, &listed, &local_pods, &mut ids);
                let table = Table {
                    backends: table.backends.into_iter().chain(ids.previous(&table_tx.borrow())).collect(),
                    ..table
                };
                let installed = shared.maps.lock().map(|mut m| m.install(&wanted));
                match installed {
                    Ok(Ok(())) => debug!(services = wanted.len(), "service endpoints installed"),
                    Ok(Err(e)) => warn!(error = %e, "cannot install service endpoints"),
                    Err(_) => return,
                }
                table_tx.send_replace(Arc::new(table));
            }
            Err(e) => {
                warn!(error = %e, "forwarder: cluster state unavailable");
                return;
            }
        }
        let any_change = futures::future::select_all(changes.iter_mut().map(|c| Box::pin(c.changed())));
        tokio::select! {
            (result, _, _) = any_change => if result.is_err() { return },
            result = local.changed() => if result.is_err() { return },
        }
        // A burst of changes (a rollout) makes one pass.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stable ids for Service ports and backends, as the kernel maps name them.
#[derive(Default)]
struct Ids {
    next: u32,
    services: HashMap<(String, String, u16), u32>,
    backends: HashMap<Backend, u32>,
}

impl Ids {
    fn id<K: std::hash::Hash + Eq>(next: &mut u32, map: &mut HashMap<K, u32>, key: K) -> u32 {
        *map.entry(key).or_insert_with(|| {
            *next = next.wrapping_add(1).max(1);
            *next
        })
    }

    /// The previous table's backends, kept one more generation.
    fn previous(&self, table: &Table) -> Vec<(u32, Backend)> {
        table.backends.iter().map(|(k, v)| (*k, v.clone())).collect()
    }
}

fn build(
    node: &str,
    trust_domain: &str,
    listed: &[super::cluster::Listed],
    local: &LocalPods,
    ids: &mut Ids,
) -> (BTreeMap<EndpointKey, Captured>, Table) {
    let mut services = Vec::new();
    let mut pods = Vec::new();
    let mut statuses = Vec::new();
    let mut tunnels = HashMap::new();
    for l in listed {
        match l.key.kind.as_str() {
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
    let mut records = dns::Records::default();
    for (namespace, name, svc) in &services {
        let headless = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None");
        match super::services::cluster_ip(svc) {
            Some(ip) => records.add_service(namespace, name, vec![Ipv4Addr::from(ip)]),
            // A headless Service's name exists; its pods' addresses come with pod addresses.
            None if headless => records.add_service(namespace, name, Vec::new()),
            None => {}
        }
    }
    let reports = cluster_pods::reports(&statuses);
    let ports = endpoints::compute(&services, &pods, &reports);
    let mut wanted = BTreeMap::new();
    let mut backends = HashMap::new();
    let (mut used_services, mut used_backends) = (HashSet::new(), HashSet::new());
    for sp in ports {
        let skey = (sp.namespace.clone(), sp.service.clone(), sp.port);
        let id = Ids::id(&mut ids.next, &mut ids.services, skey.clone());
        used_services.insert(skey);
        let mut values = Vec::with_capacity(sp.backends.len());
        for b in sp.backends {
            let bid = Ids::id(&mut ids.next, &mut ids.backends, b.clone());
            used_backends.insert(b.clone());
            let identity = if b.node == node {
                local.get(&format!("{}/{}", b.namespace, b.pod)).map_or(ID_WORLD, |p| p.identity)
            } else {
                // Remote pods' identities join policy with the mesh-wide identities.
                ID_WORLD
            };
            values.push(BackendValue { backend: bid, identity, port: b.port, _pad: 0 });
            backends.insert(bid, b);
        }
        let key = EndpointKey {
            addr: beemesh_common::Addr::from_v4_be(u32::from(sp.ip).to_be()),
            port: sp.port,
            proto: PROTO_TCP,
            _pad: 0,
        };
        wanted.insert(key, Captured { id, backends: values });
    }
    ids.services.retain(|k, _| used_services.contains(k));
    ids.backends.retain(|k, _| used_backends.contains(k));
    let sources = pods
        .iter()
        .filter_map(|p| {
            let (node, _) = cluster_pods::placement(p);
            let ns = p.metadata.namespace.as_deref()?;
            Some((node.to_owned(), spiffe_of(p, trust_domain, ns)))
        })
        .collect();
    (wanted, Table { backends, tunnels, sources, records })
}

/// The SPIFFE id of a pod.
fn spiffe_of(pod: &Pod, trust_domain: &str, namespace: &str) -> String {
    let spec = pod.spec.as_ref();
    let sa = spec
        .and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()))
        .unwrap_or_else(|| "default".to_owned());
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{sa}")
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
    let Some(backend) = table.backends.get(&capture.backend).cloned() else {
        warn!(backend = capture.backend, "captured connection to a backend that is gone: closed");
        return;
    };
    let source = shared.names.borrow().identities.get(&capture.subject).cloned();
    let Some(source) = source.filter(|s| s.starts_with("spiffe://")) else {
        warn!(subject = capture.subject, "captured connection from an unknown workload: closed");
        return;
    };
    let result = if backend.node == shared.node {
        forward_local(&shared, stream, &backend).await
    } else {
        forward_remote(&shared, stream, &source, &backend, &table).await
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
) -> Result<(u64, u64), String> {
    let key = format!("{}/{}", backend.namespace, backend.pod);
    let pod =
        shared.local.borrow().get(&key).cloned().ok_or_else(|| format!("pod {key} does not run here"))?;
    let mut upstream =
        dial_pod(&pod, backend.port).await.map_err(|e| format!("dial {key}:{}: {e}", backend.port))?;
    tokio::io::copy_bidirectional(&mut stream, &mut upstream).await.map_err(|e| e.to_string())
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
    backend: &Backend,
    table: &Table,
) -> Result<(u64, u64), String> {
    let addr =
        *table.tunnels.get(&backend.node).ok_or_else(|| format!("no tunnel address for {}", backend.node))?;
    let conn = shared.connection(source, &backend.node, addr).await?;
    let header = StreamHeader {
        source: source.to_owned(),
        target: Target {
            host: format!("{}/{}", backend.namespace, backend.pod),
            port: backend.port,
            proto: Proto::Tcp,
        },
    };
    let (send, recv) = conn.open(&header).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut quic = tokio::io::join(recv, send);
    tokio::io::copy_bidirectional(&mut stream, &mut quic).await.map_err(|e| e.to_string())
}

impl Shared {
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
    // The source was proven by mTLS; the host that vouches for it must run it.
    let vouched = conn.peer_host().is_some_and(|host| {
        shared.table.borrow().sources.contains(&(host.to_owned(), conn.peer_id().to_owned()))
    });
    if !vouched {
        warn!(peer = conn.peer_id(), host = ?conn.peer_host(), "tunnel stream from a workload its host does not run: refused");
        refuse(&mut send, &mut recv);
        return;
    }
    let pod = shared.local.borrow().get(&header.target.host).cloned();
    let Some(pod) = pod else {
        info!(peer = conn.peer_id(), target = %header.target.host, "tunnel stream to a pod that does not run here: refused");
        refuse(&mut send, &mut recv);
        return;
    };
    let mut upstream = match dial_pod(&pod, header.target.port).await {
        Ok(s) => s,
        Err(e) => {
            info!(target = %header.target.host, port = header.target.port, error = %e, "tunnel stream: dial failed");
            refuse(&mut send, &mut recv);
            return;
        }
    };
    let mut quic = tokio::io::join(recv, send);
    match tokio::io::copy_bidirectional(&mut quic, &mut upstream).await {
        Ok((up, down)) => {
            debug!(peer = conn.peer_id(), target = %header.target.host, up, down, "tunnel stream closed")
        }
        Err(e) => {
            debug!(peer = conn.peer_id(), target = %header.target.host, error = %e, "tunnel stream ended")
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
