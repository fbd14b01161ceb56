//! A hostile member for the guard end-to-end tests: it holds a real host certificate of the
//! trust domain (from `ca issue-host`), joins the mesh through the agent's own swarm, and
//! once TARGET and it have attested each other and TARGET is subscribed to the cluster
//! state's topic publishes, signed with its own key, one message claiming to be another node
//! and one sent five minutes ago. It prints `published` and stays connected until stdin
//! closes.
//!
//! Usage: rogue_peer STATE_DIR TRUST_DOMAIN NODE_NAME BOOTSTRAP TARGET_NODE CLAIMED_NODE

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use beemesh_agent::mesh::swarm::{self, Envelope, MeshConfig, MeshEvent, MeshResponse};
use beemesh_agent::mesh::trust::{files, Attestor};

const TOPIC: &str = "beemesh/state/1";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [state_dir, trust_domain, name, bootstrap, target, claimed] = args.as_slice() else {
        bail!("usage: rogue_peer STATE_DIR TRUST_DOMAIN NODE_NAME BOOTSTRAP TARGET_NODE CLAIMED_NODE");
    };
    let creds = files::load_host(state_dir.as_ref(), trust_domain, name, SystemTime::now())?;
    let mut config = MeshConfig::new(vec!["/ip4/0.0.0.0/udp/0/quic-v1".parse()?]);
    config.bootstrap = vec![bootstrap.parse().context("bootstrap address")?];
    config.node_name = creds.identity.node_name().to_owned();
    let keypair = creds.identity.keypair().clone();
    let attestor = Arc::new(Attestor { identity: Arc::new(creds.identity), trust: Arc::new(creds.trust) });
    let (client, mut events) = swarm::start(config, keypair, attestor).await?;
    client.subscribe(TOPIC).await?;

    let (mut up, mut subscribed) = (false, false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !(up && subscribed) {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .context("target not attested and subscribed within 60 s")?
            .context("swarm stopped")?;
        match event {
            MeshEvent::PeerUp { host, .. } if host.node_name == *target => up = true,
            MeshEvent::Subscribed { host, topic } if host.node_name == *target && topic == TOPIC => {
                subscribed = true
            }
            MeshEvent::Gossip(m) => {
                let _ = client.validate(&m, libp2p::gossipsub::MessageAcceptance::Ignore).await;
            }
            MeshEvent::Request { responder, .. } => {
                let _ = responder.refuse("rogue".into()).await;
            }
            _ => {}
        }
    }
    // The target attests us on its own schedule: until it has, our gossip would be dropped as
    // unattested. Its answer to a request says when it has (a refusal by kind, not by trust).
    let target_peer = client
        .peers()
        .await?
        .into_iter()
        .find(|p| p.node_name.as_deref() == Some(target.as_str()))
        .context("target not connected")?
        .peer;
    loop {
        match client.request(target_peer, "ping", Vec::new()).await? {
            MeshResponse::Refused(why) if why == "not attested" => {
                if tokio::time::Instant::now() > deadline {
                    bail!("never attested by the target");
                }
                // Polling the target's own answer, as `eventually` does in the tests.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => break,
        }
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let forged = Envelope { node: claimed.clone(), sent_ms: now_ms, data: b"forged".to_vec() };
    client.publish_envelope(TOPIC, &forged).await?;
    let stale = Envelope { node: name.clone(), sent_ms: now_ms - 300_000, data: b"replayed".to_vec() };
    client.publish_envelope(TOPIC, &stale).await?;
    println!("published");

    // Keep the swarm (and its connections) until the test closes stdin; keep draining events.
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = done_tx.send(());
    });
    loop {
        tokio::select! {
            _ = &mut done_rx => return Ok(()),
            event = events.recv() => match event {
                Some(MeshEvent::Gossip(m)) => {
                    let _ = client.validate(&m, libp2p::gossipsub::MessageAcceptance::Ignore).await;
                }
                Some(MeshEvent::Request { responder, .. }) => {
                    let _ = responder.refuse("rogue".into()).await;
                }
                Some(_) => {}
                None => return Ok(()),
            },
        }
    }
}
