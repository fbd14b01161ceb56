//! The failure detector's messages, their wire encoding (postcard) and the bounds a message
//! from a peer is held to before it is decoded or acted on.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Largest encoded liveness message: a full batch of verdicts naming hosts by a libp2p PeerId
/// (about 40 bytes each) plus their incarnations. Checked before decoding.
pub const MAX_LIVE_MSG_BYTES: usize = 256 * 1024;
/// Most verdicts in one `Verdicts` message; more are sent in several.
pub const MAX_VERDICTS: usize = 4096;

/// Why a liveness message from a peer was refused; the detector is untouched by it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LiveMsgError {
    #[error("liveness message of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("liveness message does not decode: {0}")]
    Decode(String),
    #[error("liveness message does not encode: {0}")]
    Encode(String),
    #[error("verdicts message has {len} entries, more than {max}")]
    TooMany { len: usize, max: usize },
}

/// What one host holds about another: dead, or alive again (refuted) at an incarnation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict<P> {
    pub host: P,
    pub incarnation: u64,
    pub dead: bool,
}

/// A message between detectors. `Dead` and `Alive` are broadcast (a gossip topic); everything
/// else goes to one peer (request-response). No message is a reply anyone waits for: a lost
/// one is made good by the next heartbeat, probe or anti-entropy exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LiveMsg<P> {
    /// "I am alive at this incarnation": every interval to each of the sender's watchers, in
    /// answer to a `Probe`, and now and then to a random member (anti-entropy). `digest`
    /// summarises the sender's dead verdicts; a receiver whose digest differs sends its own.
    Heartbeat { incarnation: u64, digest: u64 },
    /// A watcher that has not heard from the receiver: answer with a `Heartbeat` now.
    Probe,
    /// A watcher to the target's other watchers: "I hear nothing from `target`".
    Suspect { target: P, incarnation: u64 },
    /// The answer of a watcher that did hear `target` recently: the suspicion is dropped.
    Heard { target: P, incarnation: u64 },
    /// Broadcast: `target` is dead at `incarnation`.
    Dead { target: P, incarnation: u64 },
    /// Broadcast: `target` is alive at `incarnation` (it refuted a verdict, or came back).
    Alive { target: P, incarnation: u64 },
    /// Anti-entropy: the sender's verdicts (dead hosts, and refutations of earlier verdicts);
    /// with `reply`, the receiver answers with its own when its digest still differs.
    Verdicts { digest: u64, reply: bool, entries: Vec<Verdict<P>> },
}

impl<P: Serialize + DeserializeOwned> LiveMsg<P> {
    /// A short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            LiveMsg::Heartbeat { .. } => "heartbeat",
            LiveMsg::Probe => "probe",
            LiveMsg::Suspect { .. } => "suspect",
            LiveMsg::Heard { .. } => "heard",
            LiveMsg::Dead { .. } => "dead",
            LiveMsg::Alive { .. } => "alive",
            LiveMsg::Verdicts { .. } => "verdicts",
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, LiveMsgError> {
        self.check_shape()?;
        let bytes = postcard::to_stdvec(self).map_err(|e| LiveMsgError::Encode(e.to_string()))?;
        if bytes.len() > MAX_LIVE_MSG_BYTES {
            return Err(LiveMsgError::TooLarge { len: bytes.len(), max: MAX_LIVE_MSG_BYTES });
        }
        Ok(bytes)
    }

    /// Decodes a message from a peer: the length is checked first, then the shape.
    pub fn decode(bytes: &[u8]) -> Result<LiveMsg<P>, LiveMsgError> {
        if bytes.len() > MAX_LIVE_MSG_BYTES {
            return Err(LiveMsgError::TooLarge { len: bytes.len(), max: MAX_LIVE_MSG_BYTES });
        }
        let msg: LiveMsg<P> = postcard::from_bytes(bytes).map_err(|e| LiveMsgError::Decode(e.to_string()))?;
        msg.check_shape()?;
        Ok(msg)
    }

    pub fn check_shape(&self) -> Result<(), LiveMsgError> {
        match self {
            LiveMsg::Verdicts { entries, .. } if entries.len() > MAX_VERDICTS => {
                Err(LiveMsgError::TooMany { len: entries.len(), max: MAX_VERDICTS })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_sizes_and_garbage() {
        let hb: LiveMsg<u32> = LiveMsg::Heartbeat { incarnation: 1_700_000_000_000, digest: 0 };
        let bytes = hb.encode().expect("encodes");
        // A heartbeat is a handful of bytes: tag, varint incarnation, varint digest.
        assert!(bytes.len() <= 9, "{}", bytes.len());
        assert_eq!(LiveMsg::decode(&bytes), Ok(hb));
        let dead: LiveMsg<String> = LiveMsg::Dead { target: "host-a".into(), incarnation: 7 };
        assert_eq!(LiveMsg::decode(&dead.encode().expect("encodes")), Ok(dead));
        assert!(matches!(LiveMsg::<u32>::decode(&[0xff, 0xff]), Err(LiveMsgError::Decode(_))));
        assert!(matches!(LiveMsg::<u32>::decode(&bytes[..bytes.len() - 1]), Err(LiveMsgError::Decode(_))));
        let huge = vec![0u8; MAX_LIVE_MSG_BYTES + 1];
        assert!(matches!(LiveMsg::<u32>::decode(&huge), Err(LiveMsgError::TooLarge { .. })));
        // A length prefix claiming a vast list is an error, not an allocation.
        let lie = [6u8, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(LiveMsg::<u32>::decode(&lie).is_err());
        let many: LiveMsg<u32> = LiveMsg::Verdicts {
            digest: 0,
            reply: false,
            entries: vec![Verdict { host: 1, incarnation: 1, dead: true }; MAX_VERDICTS + 1],
        };
        assert!(matches!(many.encode(), Err(LiveMsgError::TooMany { .. })));
        let bytes = postcard::to_stdvec(&many).expect("encodes unchecked");
        assert!(matches!(LiveMsg::<u32>::decode(&bytes), Err(LiveMsgError::TooMany { .. })));
    }
}
