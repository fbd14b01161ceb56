//! The agent's side of the mesh: starts the swarm with the host's identity and trust store,
//! and follows its events. Peers attested or lost, failed attestations and bootstrap retries
//! go to the log; peers, gossip on the cluster state's topic and requests of its kind go to
//! the cluster state's task (`app::cluster`); revocations (their topic and request kind) to
//! [`revocations`]; the failure detector's (`beemesh/live/1`, `live`) to `app::liveness`;
//! requests of kind `blob` to the image blob server (`app::images::blobs`), of kind `sched`
//! (tenders) to the scheduler (`app::sched`). Other gossip is ignored and other requests are refused by name.

pub mod revocations;

use std::sync::{Arc, OnceLock};

use libp2p::gossipsub::MessageAcceptance;
use tracing::{debug, info, warn};

use crate::api::{MeshStatus, PeerEntry};
use crate::config::Config;
use crate::mesh::swarm::{self, MeshClient, MeshEvent, PeerInfo};
use crate::mesh::trust::{Attestor, HostIdentity, HostTrust};

use super::cluster::{self, pods as cpods, Cluster, Inbound};
use super::events::Recorder;
use super::images::{blobs, sharing::Sharing};
use super::join::Issuer;
use super::liveness::{self, Liveness};
use super::sched::{self, Scheduler};
use super::{remote, AgentError, AgentHandle};
use revocations::Revocations;

/// The running swarm, as the API sees it.
#[derive(Clone, Debug)]
pub struct Mesh {
    pub client: MeshClient,
    /// The replicated cluster state.
    pub cluster: Cluster,
    /// This host, as `peers` lists it first.
    pub this: PeerEntry,
    /// Serves peers' `logs`/`exec` of this host's pods (`app::remote`); set once the agent's
    /// handle exists, refused until then.
    pub pod_server: Arc<OnceLock<AgentHandle>>,
    /// The issuer joining hosts are admitted with, if this member holds one.
    pub issuer: Option<Arc<Issuer>>,
    /// The revocations held, and what acts on new ones.
    pub revocations: Revocations,
    /// The failure detector: who is alive.
    pub liveness: Liveness,
    /// Images shared peer to peer: holder records, blob server, puller.
    pub images: Sharing,
    /// This host's scheduler: tenders, bids, bindings.
    pub sched: Scheduler,
    /// This host's event recorder (`app::events`).
    pub events: Recorder,
    /// What Services' addresses are assigned from.
    pub service_pools: super::services::Pools,
    /// This host's InternalIP addresses (its Node record's; `status.hostIP` of its pods),
    /// kept by the record's publisher.
    pub host_ips: super::nodes::HostIps,
    /// This host's tunnel endpoint: it accepts workload tunnels as the host and opens them
    /// for this host's workloads (`app::forward`). It runs on the data path's runtime.
    pub tunnel: crate::tunnel::Endpoint,
    /// The data path's runtime (`super::data_path`): the tunnel endpoint and the relays.
    pub data: tokio::runtime::Handle,
}

/// Starts the swarm (listening on the configured port, joining the bootstrap peers) and the
/// task that follows its events.
pub(super) async fn start(
    cfg: &Config,
    identity: HostIdentity,
    trust: HostTrust,
) -> Result<Mesh, AgentError> {
    let mut config = cfg.mesh.to_config(&cfg.state_dir)?;
    let issuer = Issuer::load(cfg, trust.roots())?.map(Arc::new);
    if let Some(i) = &issuer {
        info!(tokens = i.list().len(), "this member admits joining hosts (join tokens)");
    }
    let keypair = identity.keypair().clone();
    let name = identity.node_name().to_owned();
    // Our gossip names the node our certificate names: peers check it against it.
    config.node_name = name.clone();
    let host_tls = crate::tunnel::TlsIdentity::host(
        identity.chain().to_vec(),
        identity.keypair(),
        trust.roots().to_vec(),
        trust.trust_domain(),
    )
    .map_err(|e| AgentError::Config(format!("the host certificate cannot serve tunnels: {e}")))?;
    let tunnel_addr = std::net::SocketAddr::from(([0, 0, 0, 0], cfg.mesh.tunnel_port));
    let data = super::data_path().map_err(|e| AgentError::Config(format!("the data path's thread: {e}")))?;
    let tunnel = {
        // The endpoint's socket and driver belong to the runtime it is made in.
        let _on_data_path = data.enter();
        let bound = match crate::tunnel::RestartKeys::of(identity.keypair()) {
            Some(keys) => crate::tunnel::Endpoint::bind_keyed(tunnel_addr, host_tls, keys),
            None => crate::tunnel::Endpoint::bind(tunnel_addr, host_tls),
        };
        bound.map_err(|e| AgentError::Config(format!("tunnel port {}: {e}", cfg.mesh.tunnel_port)))?
    };
    let tunnel_port = tunnel.local_addr().map(|a| a.port()).unwrap_or(cfg.mesh.tunnel_port);
    let trust = Arc::new(trust);
    // Before the swarm listens: a revoked host must not attest even once after a restart.
    let revocations = Revocations::load(&cfg.state_dir, trust.clone())?;
    let attestor = Arc::new(Attestor { identity: Arc::new(identity), trust });
    let (client, mut events) = swarm::start(config, keypair, attestor).await?;
    client.subscribe(revocations::TOPIC).await?;
    let addresses = client.listen_addrs().await?.iter().map(ToString::to_string).collect::<Vec<_>>();
    info!(node = %name, peer = %client.local_peer_id(), listen = ?addresses, "mesh swarm listening");
    let this = PeerEntry {
        name: Some(name),
        peer: client.local_peer_id().to_string(),
        attested: true,
        addresses,
        this_host: true,
        connected: true,
        last_seen: None,
        requested: Default::default(),
    };
    let cluster = cluster::start(&cfg.state_dir, &name_of(&this), client.clone()).await?;
    let facts = super::nodes::NodeFacts::of_this_host(
        &name_of(&this),
        &this.peer,
        &cfg.mesh.node_labels,
        &cfg.node,
        &this.addresses,
        cfg.mesh.failure_detector.fingerprint(),
        // Checked with the rest of the config when it was loaded.
        cfg.mesh.taints().unwrap_or_default(),
    );
    let facts = super::nodes::NodeFacts { tunnel_port, extended: cfg.mesh.node_resources.clone(), ..facts };
    let host_ips = super::nodes::HostIps::default();
    super::nodes::spawn_publish(cluster.clone(), client.clone(), facts, host_ips.clone());
    let liveness =
        Liveness::start(client.local_peer_id(), &cfg.mesh.failure_detector, cluster.clone(), client.clone())
            .await;
    let images = Sharing::start(cfg, client.clone(), cluster.clone(), name_of(&this), this.peer.clone());
    let recorder = Recorder::new(cluster.clone());
    super::events::spawn_sweeper(cluster.clone(), liveness.clone());
    let sched = Scheduler::start(
        cluster.clone(),
        client.clone(),
        liveness.clone(),
        recorder.clone(),
        Default::default(),
    );
    let service_pools = super::services::Pools {
        cluster_ips: super::services::Pool::cidr(&cfg.service_cluster_ip_range)
            .map_err(|e| AgentError::Config(format!("serviceClusterIpRange: {e}")))?,
        node_ports: super::services::Pool::node_ports(),
    };
    super::controllers::spawn(cluster.clone(), liveness.clone(), recorder.clone(), service_pools);
    let pod_server = Arc::new(OnceLock::new());
    let serving = Serving {
        images: images.clone(),
        issuer: issuer.clone(),
        pods: pod_server.clone(),
        revoked: revocations.clone(),
        liveness: liveness.clone(),
        sched: sched.clone(),
    };
    let (events_client, events_cluster) = (client.clone(), cluster.clone());
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            follow(&events_client, &events_cluster, &serving, event).await;
        }
        debug!("mesh events ended");
    });
    Ok(Mesh {
        tunnel,
        data,
        client,
        cluster,
        this,
        issuer,
        pod_server,
        revocations,
        liveness,
        images,
        sched,
        events: recorder,
        service_pools,
        host_ips,
    })
}

fn name_of(this: &PeerEntry) -> String {
    this.name.clone().unwrap_or_default()
}

/// What the event follower serves besides the cluster state.
struct Serving {
    issuer: Option<Arc<Issuer>>,
    pods: Arc<OnceLock<AgentHandle>>,
    revoked: Revocations,
    liveness: Liveness,
    images: Sharing,
    sched: Scheduler,
}

async fn follow(client: &MeshClient, cluster: &Cluster, serving: &Serving, event: MeshEvent) {
    let Serving { issuer, pods, revoked, liveness, images, sched } = serving;
    match event {
        MeshEvent::PeerUp { host, listen_addrs } => {
            info!(node = %host.node_name, peer = %host.peer, addrs = ?listen_addrs, "mesh peer attested");
            let (client, revoked, to) = (client.clone(), revoked.clone(), host.clone());
            tokio::spawn(async move { revoked.push(&client, &to).await });
            cluster.deliver(Inbound::PeerUp(host)).await;
        }
        MeshEvent::PeerDown { host } => {
            info!(node = %host.node_name, peer = %host.peer, "mesh peer gone");
            cluster.deliver(Inbound::PeerDown(host)).await;
        }
        MeshEvent::AttestationFailed { peer, reason } => {
            warn!(%peer, %reason, "mesh peer failed attestation; disconnected")
        }
        MeshEvent::Subscribed { host, topic } => {
            debug!(node = %host.node_name, %topic, "mesh peer subscribed")
        }
        MeshEvent::Gossip(message) if message.topic == cluster::TOPIC => {
            cluster.deliver(Inbound::Gossip(message)).await;
        }
        MeshEvent::Gossip(message) if message.topic == liveness::TOPIC => {
            liveness.deliver(liveness::Inbound::Gossip(message)).await;
        }
        MeshEvent::Gossip(message) if message.topic == revocations::TOPIC => {
            let (client, revoked) = (client.clone(), revoked.clone());
            // Verification (certificate chains) and the disk write run beside the event loop.
            tokio::spawn(async move {
                let source = format!("gossip from {}", message.via.node_name);
                let verdict = match revoked.accept(&client, &source, &message.data).await {
                    Ok(Some(a)) => {
                        info!(node = %a.revocation.node, expelled = ?a.expelled, "revocation heard");
                        MessageAcceptance::Accept
                    }
                    Ok(None) => MessageAcceptance::Ignore,
                    Err(e) => {
                        warn!(error = %e, "revocation gossip rejected");
                        MessageAcceptance::Reject
                    }
                };
                let _ = client.validate(&message, verdict).await;
            });
        }
        MeshEvent::Gossip(message) => {
            // A topic nobody serves here: nothing is forwarded on our word.
            let _ = client.validate(&message, MessageAcceptance::Ignore).await;
        }
        MeshEvent::GossipDropped { via, origin, reason } => {
            debug!(%via, ?origin, reason = reason.as_str(), "mesh gossip dropped")
        }
        MeshEvent::Request { from, kind, body, responder } if kind == cluster::REQUEST_KIND => {
            cluster.deliver(Inbound::Request { from, body, responder }).await;
        }
        MeshEvent::Request { from, kind, body, responder } if kind == liveness::REQUEST_KIND => {
            liveness.deliver(liveness::Inbound::Request { from, body, responder }).await;
        }
        MeshEvent::Request { from, kind, body, responder } if kind == remote::REQUEST_KIND => {
            match pods.get() {
                Some(handle) => {
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        let answer = handle.serve_remote(&from, &body).await;
                        let _ = responder.respond(answer).await;
                    });
                }
                None => {
                    let _ = responder.refuse("the agent is starting".into()).await;
                }
            }
        }
        MeshEvent::Request { from, kind, body, responder } if kind == sched::REQUEST_KIND => {
            let sched = sched.clone();
            tokio::spawn(async move {
                let _ = match sched.serve(&from, &body).await {
                    Ok(bytes) => responder.respond(bytes).await,
                    Err(why) => responder.refuse(why).await,
                };
            });
        }
        MeshEvent::Request { from, kind, body, responder } if kind == blobs::REQUEST_KIND => {
            let images = images.clone();
            tokio::spawn(async move {
                let _ = match images.serve(&from, &body).await {
                    Ok(bytes) => responder.respond(bytes).await,
                    Err(why) => responder.refuse(why).await,
                };
            });
        }
        MeshEvent::Request { from, kind, body, responder } if kind == revocations::REQUEST_KIND => {
            let (client, revoked) = (client.clone(), revoked.clone());
            tokio::spawn(async move {
                match revoked.pushed(&client, &from, &body).await {
                    Ok(()) => {
                        let _ = responder.respond(Vec::new()).await;
                    }
                    Err(e) => {
                        let _ = responder.refuse(e.to_string()).await;
                    }
                }
            });
        }
        MeshEvent::Request { from, kind, responder, .. } => {
            debug!(node = %from.node_name, %kind, "mesh request refused: not served by this agent");
            let _ = responder.refuse(format!("{kind:?} is not served by this agent")).await;
        }
        MeshEvent::Join { peer, body, responder } => {
            let issuer = issuer.clone();
            // Issuing signs certificates and writes the token records: beside the loop.
            tokio::spawn(async move {
                let answer = match issuer {
                    None => Err("this member holds no issuer; join through one that does".to_string()),
                    Some(issuer) => tokio::task::spawn_blocking(move || {
                        issuer.admit(&peer, &body, std::time::SystemTime::now())
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("join task failed: {e}"))),
                };
                let sent = match answer {
                    Ok(body) => {
                        info!(%peer, "join request admitted");
                        responder.respond(body).await
                    }
                    Err(why) => {
                        warn!(%peer, %why, "join request refused");
                        responder.refuse(why).await
                    }
                };
                if let Err(e) = sent {
                    debug!(%peer, error = %e, "join answer not sent");
                }
            });
        }
        MeshEvent::BootstrapFailed { addr, error, retry_in } => {
            info!(%addr, %error, retry_in_ms = retry_in.as_millis() as u64, "mesh bootstrap not reached; retrying")
        }
    }
}

/// `peers`: this host first, then every connected peer.
pub async fn peers(mesh: &Mesh) -> Result<Vec<PeerEntry>, String> {
    let mut items = vec![mesh.this.clone()];
    let mut found: Vec<PeerInfo> = mesh.client.peers().await.map_err(|e| e.to_string())?;
    found.sort_by(|a, b| (!a.connected, &a.node_name, a.peer).cmp(&(!b.connected, &b.node_name, b.peer)));
    items.extend(found.into_iter().map(|p| PeerEntry {
        // Never a name a peer merely claims: only its certificate's, once attested (now, or
        // when a remembered peer was last connected).
        name: p.node_name.filter(|_| p.attested || !p.connected),
        peer: p.peer.to_string(),
        attested: p.attested,
        addresses: p.listen_addrs.iter().map(ToString::to_string).collect(),
        this_host: false,
        connected: p.connected,
        last_seen: p.last_seen,
        requested: Default::default(),
    }));
    // What each host's pods request, from the cluster state.
    let pods = mesh.cluster.list(cpods::POD, None).await.map_err(|e| e.to_string())?;
    let statuses = mesh.cluster.list(cpods::POD_STATUS, None).await.map_err(|e| e.to_string())?;
    let requested = cpods::requested(&pods, &statuses);
    for item in &mut items {
        if let Some(r) = item.name.as_ref().and_then(|n| requested.get(n)) {
            item.requested = *r;
        }
    }
    Ok(items)
}

/// The failure detector's view of `peers` (peer ids; one that is not is `unknown`).
pub fn liveness(mesh: &Mesh, peers: &[String]) -> Vec<crate::api::LiveEntry> {
    let ids: Vec<Option<libp2p::PeerId>> = peers.iter().map(|p| p.parse().ok()).collect();
    let known: Vec<libp2p::PeerId> = ids.iter().flatten().copied().collect();
    let mut seen = mesh.liveness.view(&known).into_iter();
    peers
        .iter()
        .zip(ids)
        .map(|(p, id)| match id {
            Some(_) => seen.next().unwrap_or_else(|| liveness::entry_unknown(p)),
            None => liveness::entry_unknown(p),
        })
        .collect()
}

/// `revoke FILE`: verifies the revocation `text` (from `file`) against our roots, keeps it,
/// expels the peers it names and spreads it to the mesh. Returns the lines to print.
pub async fn revoke(mesh: &Mesh, file: &str, text: &str) -> Result<Vec<String>, String> {
    let accepted =
        mesh.revocations.accept(&mesh.client, file, text.as_bytes()).await.map_err(|e| e.to_string())?;
    let Some(a) = accepted else {
        return Ok(vec![format!("{file}: already known here; nothing to do")]);
    };
    // With no peer subscribed gossipsub has nobody to send to: peers get it when they attest.
    let spread = match mesh.client.publish(revocations::TOPIC, text.as_bytes().to_vec()).await {
        Ok(_) => "spreading to the mesh".to_string(),
        Err(e) => format!("no peer to gossip it to yet ({e}); pushed to each peer as it attests"),
    };
    let cut = if a.expelled.is_empty() {
        "no connected peer is that host".to_string()
    } else {
        format!("cut off {}", a.expelled.join(", "))
    };
    Ok(vec![format!(
        "host {} revoked (made at {}): {cut}; {spread}",
        a.revocation.node, a.revocation.revoked_at
    )])
}

/// The `mesh` section of `status`: the swarm's counters and the hosts revoked.
pub async fn status(mesh: &Mesh) -> Result<MeshStatus, String> {
    let counters = mesh.client.stats().await.map_err(|e| e.to_string())?;
    Ok(MeshStatus {
        counters,
        revoked: mesh.revocations.revoked_nodes(),
        liveness: mesh.liveness.stats(),
        detector_differs: mesh.liveness.differs(),
    })
}
