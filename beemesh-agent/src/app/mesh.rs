//! The agent's side of the mesh: starts the swarm with the host's identity and trust store,
//! and follows its events. Peers attested or lost, failed attestations and bootstrap retries
//! go to the log; peers, gossip on the cluster state's topic and requests of its kind go to
//! the cluster state's task (`app::cluster`). Other gossip is ignored and other requests are
//! refused by name.

use std::sync::Arc;

use libp2p::gossipsub::MessageAcceptance;
use tracing::{debug, info, warn};

use crate::api::PeerEntry;
use crate::config::Config;
use crate::mesh::swarm::{self, MeshClient, MeshEvent, PeerInfo};
use crate::mesh::trust::{Attestor, HostIdentity, HostTrust};

use super::cluster::{self, Cluster, Inbound};
use super::AgentError;

/// The running swarm, as the API sees it.
#[derive(Clone, Debug)]
pub struct Mesh {
    pub client: MeshClient,
    /// The replicated cluster state.
    pub cluster: Cluster,
    /// This host, as `peers` lists it first.
    pub this: PeerEntry,
}

/// Starts the swarm (listening on the configured port, joining the bootstrap peers) and the
/// task that follows its events.
pub(super) async fn start(
    cfg: &Config,
    identity: HostIdentity,
    trust: HostTrust,
) -> Result<Mesh, AgentError> {
    let mut config = cfg.mesh.to_config(&cfg.state_dir)?;
    let keypair = identity.keypair().clone();
    let name = identity.node_name().to_owned();
    // Our gossip names the node our certificate names: peers check it against it.
    config.node_name = name.clone();
    let attestor = Arc::new(Attestor { identity: Arc::new(identity), trust: Arc::new(trust) });
    let (client, mut events) = swarm::start(config, keypair, attestor).await?;
    let addresses = client.listen_addrs().await?.iter().map(ToString::to_string).collect::<Vec<_>>();
    info!(node = %name, peer = %client.local_peer_id(), listen = ?addresses, "mesh swarm listening");
    let this = PeerEntry {
        name: Some(name),
        peer: client.local_peer_id().to_string(),
        attested: true,
        addresses,
        this_host: true,
    };
    let cluster = cluster::start(&cfg.state_dir, &name_of(&this), client.clone()).await?;
    let (events_client, events_cluster) = (client.clone(), cluster.clone());
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            follow(&events_client, &events_cluster, event).await;
        }
        debug!("mesh events ended");
    });
    Ok(Mesh { client, cluster, this })
}

fn name_of(this: &PeerEntry) -> String {
    this.name.clone().unwrap_or_default()
}

async fn follow(client: &MeshClient, cluster: &Cluster, event: MeshEvent) {
    match event {
        MeshEvent::PeerUp { host, listen_addrs } => {
            info!(node = %host.node_name, peer = %host.peer, addrs = ?listen_addrs, "mesh peer attested");
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
        MeshEvent::Request { from, kind, responder, .. } => {
            debug!(node = %from.node_name, %kind, "mesh request refused: not served by this agent");
            let _ = responder.refuse(format!("{kind:?} is not served by this agent")).await;
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
    found.sort_by(|a, b| (&a.node_name, a.peer).cmp(&(&b.node_name, b.peer)));
    items.extend(found.into_iter().map(|p| PeerEntry {
        // Never a name a peer merely claims: only its certificate's, once attested.
        name: p.node_name.filter(|_| p.attested),
        peer: p.peer.to_string(),
        attested: p.attested,
        addresses: p.listen_addrs.iter().map(ToString::to_string).collect(),
        this_host: false,
    }));
    Ok(items)
}
