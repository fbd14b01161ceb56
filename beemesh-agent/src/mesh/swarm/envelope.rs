//! The envelope every gossip payload travels in (sans-IO: time passed in): the author's node
//! name and send time around the application's bytes. It sits inside gossipsub's `data`, so
//! the author's gossipsub signature covers it; the receiving swarm checks the time against
//! its replay window and the name against the certificate of the attested author.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::membership::GossipDrop;

/// Room the envelope takes around the payload at most (a node name is 63 bytes or fewer).
pub const ENVELOPE_OVERHEAD: usize = 128;

/// What gossipsub's `data` holds: who wrote it, when, and the application's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The author's node name (its certificate's, once checked).
    pub node: String,
    /// When the author published it, ms since the epoch by its clock.
    pub sent_ms: u64,
    /// The application's payload.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// How old (or how far in the future) a message may be and still be accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Older than this: dropped as stale (a replay outside gossipsub's duplicate cache).
    pub max_age: Duration,
    /// Further ahead of our clock than this: dropped as from the future.
    pub max_skew: Duration,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(60), max_skew: Duration::from_secs(10) }
    }
}

impl ReplayWindow {
    /// How long gossipsub must remember message ids so that a replay inside the window is a
    /// duplicate: the window and the skew, plus a margin.
    pub fn duplicate_cache_time(&self) -> Duration {
        self.max_age + self.max_skew + Duration::from_secs(30)
    }
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("an envelope always serializes")
    }

    /// Decodes `bytes` and checks the send time against `window` at `now_ms`.
    pub fn open(bytes: &[u8], now_ms: u64, window: ReplayWindow) -> Result<Self, GossipDrop> {
        let envelope: Envelope = postcard::from_bytes(bytes).map_err(|_| GossipDrop::Malformed)?;
        if envelope.sent_ms.saturating_add(window.max_age.as_millis() as u64) < now_ms {
            return Err(GossipDrop::Stale);
        }
        if envelope.sent_ms > now_ms.saturating_add(window.max_skew.as_millis() as u64) {
            return Err(GossipDrop::Future);
        }
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(sent_ms: u64) -> Vec<u8> {
        Envelope { node: "h1".into(), sent_ms, data: b"payload".to_vec() }.encode()
    }

    #[test]
    fn messages_inside_the_window_open() {
        let w = ReplayWindow::default();
        let now = 1_000_000_000;
        let e = Envelope::open(&env(now), now, w).expect("fresh");
        assert_eq!((e.node.as_str(), e.data.as_slice()), ("h1", &b"payload"[..]));
        assert!(Envelope::open(&env(now - 60_000), now, w).is_ok(), "at the edge");
        assert!(Envelope::open(&env(now + 10_000), now, w).is_ok(), "skew allowed");
        assert!(ENVELOPE_OVERHEAD >= env(now).len() - 7 + 63);
    }

    #[test]
    fn old_future_and_garbled_messages_are_dropped() {
        let w = ReplayWindow::default();
        let now = 1_000_000_000;
        assert_eq!(Envelope::open(&env(now - 60_001), now, w), Err(GossipDrop::Stale));
        assert_eq!(Envelope::open(&env(0), now, w), Err(GossipDrop::Stale));
        assert_eq!(Envelope::open(&env(now + 10_001), now, w), Err(GossipDrop::Future));
        assert_eq!(Envelope::open(&env(u64::MAX), now, w), Err(GossipDrop::Future));
        assert_eq!(Envelope::open(b"\xff\xff\xff", now, w), Err(GossipDrop::Malformed));
        assert!(w.duplicate_cache_time() > w.max_age + w.max_skew);
    }
}
