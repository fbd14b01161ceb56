//! The joining host's side of the network (`run --join TOKEN --bootstrap ADDR`): a short-lived
//! swarm with request-response only, which dials a bootstrap peer, sends one
//! [`MeshRequest::Join`] and returns the answer. It has no credentials, so it leaves the
//! member's attestation challenge unanswered (the member disconnects it once the join is done
//! or the deadline passes); the agent then starts its real swarm with the credentials it got.

use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{identity::Keypair, Swarm};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::protocol::{self, MeshRequest, MeshResponse};
use super::{BootstrapAddr, SwarmError};

type Rr = request_response::cbor::Behaviour<MeshRequest, MeshResponse>;

/// What a member says when its join rate limit is reached: the joiner tries again.
pub(super) const JOIN_BUSY: &str = "too many join requests; try again in a few seconds";

/// How one attempt (one bootstrap address) ended without an answer.
enum Attempt {
    /// Worth another try (unreachable, connection lost, member busy).
    Retry(String),
    /// The member answered and refused.
    Fatal(SwarmError),
}

/// Sends `body` as a join request to the first of `bootstrap` that answers, retrying with
/// back-off until `timeout`; returns the member's answer, or its refusal as
/// [`SwarmError::Join`].
pub async fn join_request(
    bootstrap: &[BootstrapAddr],
    keypair: Keypair,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, SwarmError> {
    if bootstrap.is_empty() {
        return Err(SwarmError::Join("no bootstrap peer to join through (--bootstrap ADDR)".into()));
    }
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_quic()
        .with_behaviour(|_| protocol::request_response())
        .map_err(|e| SwarmError::Build(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    let mut last = String::from("no attempt finished");
    for addr in bootstrap.iter().cycle() {
        if Instant::now() >= deadline {
            break;
        }
        match attempt(&mut swarm, addr, &body, deadline).await {
            Ok(answer) => return Ok(answer),
            Err(Attempt::Fatal(e)) => return Err(e),
            Err(Attempt::Retry(why)) => {
                tracing::info!(bootstrap = %addr, %why, "join attempt failed; retrying");
                last = format!("{addr}: {why}");
            }
        }
        let wait = backoff.failed(std::time::Instant::now());
        tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
    }
    Err(SwarmError::Join(format!("no member answered within {} s (last: {last})", timeout.as_secs())))
}

async fn attempt(
    swarm: &mut Swarm<Rr>,
    addr: &BootstrapAddr,
    body: &[u8],
    deadline: Instant,
) -> Result<Vec<u8>, Attempt> {
    let addrs = addr.resolve().await.map_err(|e| Attempt::Retry(e.to_string()))?;
    let mut dials = 0usize;
    for a in addrs {
        match swarm.dial(DialOpts::unknown_peer_id().address(a.clone()).build()) {
            Ok(()) => dials += 1,
            Err(e) => tracing::debug!(addr = %a, error = %e, "join dial"),
        }
    }
    if dials == 0 {
        return Err(Attempt::Retry("resolves to no dialable address".into()));
    }
    let mut sent: Option<OutboundRequestId> = None;
    // The member's attestation challenges: held, never answered (we have nothing to attest
    // with), so the member waits instead of failing us before it answers the join.
    let mut held: Vec<ResponseChannel<MeshResponse>> = Vec::new();
    loop {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| Attempt::Retry("no answer before the deadline".into()))?;
        use request_response::{Event, Message};
        match event {
            SwarmEvent::ConnectionEstablished { peer_id, .. } if sent.is_none() => {
                tracing::info!(peer = %peer_id, bootstrap = %addr, "sending the join request");
                sent = Some(
                    swarm.behaviour_mut().send_request(&peer_id, MeshRequest::Join { body: body.to_vec() }),
                );
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                dials = dials.saturating_sub(1);
                if dials == 0 && sent.is_none() {
                    return Err(Attempt::Retry(error.to_string()));
                }
            }
            SwarmEvent::Behaviour(Event::Message { message: Message::Request { channel, .. }, .. }) => {
                held.push(channel);
            }
            SwarmEvent::Behaviour(Event::Message {
                message: Message::Response { request_id, response },
                ..
            }) if Some(request_id) == sent => {
                return match response {
                    MeshResponse::App(answer) => Ok(answer),
                    MeshResponse::Refused(why) if why == JOIN_BUSY => Err(Attempt::Retry(why)),
                    MeshResponse::Refused(why) => {
                        Err(Attempt::Fatal(SwarmError::Join(format!("refused by the member: {why}"))))
                    }
                    other => Err(Attempt::Fatal(SwarmError::Join(format!("unexpected answer {other:?}")))),
                };
            }
            SwarmEvent::Behaviour(Event::OutboundFailure { request_id, error, .. })
                if Some(request_id) == sent =>
            {
                return Err(Attempt::Retry(error.to_string()));
            }
            other => tracing::trace!(event = ?other, "join swarm"),
        }
    }
}
