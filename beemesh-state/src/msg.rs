//! The messages replicas exchange, their wire encoding (postcard) and the size bounds every
//! message from a peer is held to before it is decoded or looked at.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::object::{Key, Object, Stamp};

/// Anti-entropy buckets: every key falls in one by the hash of the key. Fixed: two hosts with
/// different counts could never compare digests.
pub const BUCKETS: usize = 256;
/// Largest body carried inside a gossip announcement; larger bodies are pulled with `Fetch`.
pub const MAX_INLINE_BODY_BYTES: usize = 16 * 1024;
/// Most keys in one `Fetch`, and most entries in one `Versions`.
pub const MAX_ENTRIES: usize = 4096;
/// Most objects in one `Objects`; their bodies together stay under [`MAX_MSG_BYTES`].
pub const MAX_OBJECTS: usize = 4096;
/// Largest encoded message: one 3 MiB body plus keys and versions. Checked before decoding.
pub const MAX_MSG_BYTES: usize = 4 * 1024 * 1024;

/// Why a message from a peer was refused. The replica's state is never touched by one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("message of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("message does not decode: {0}")]
    Decode(String),
    #[error("message does not encode: {0}")]
    Encode(String),
    #[error("{what} has {len} entries, more than {max}")]
    TooMany { what: &'static str, len: usize, max: usize },
    #[error("digest summary has {len} buckets, not {BUCKETS}")]
    BucketCount { len: usize },
    #[error("bucket {index} does not exist")]
    BucketIndex { index: u16 },
    #[error("key {key} does not belong in bucket {index}")]
    WrongBucket { key: String, index: u16 },
    #[error("bucket {index} appears twice")]
    DuplicateBucket { index: u16 },
    #[error("inline body of {len} bytes is over the {max}-byte gossip limit")]
    InlineTooLarge { len: usize, max: usize },
}

/// A message between replicas. `Announce` is broadcast (gossip); everything else goes to one
/// peer. Nothing is a reply the sender waits for: a lost message is made good by a retry
/// (pushes), a timeout (fetches) or the next anti-entropy round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// Gossip: a key has a new state. `body` is present only for live objects of at most
    /// [`MAX_INLINE_BODY_BYTES`]; otherwise receivers that want it `Fetch` it from the sender.
    Announce { key: Key, stamp: Stamp, body: Option<Bytes> },
    /// A writer hands its new object to one peer, which answers `PushAck` once it holds it.
    Push { object: Object },
    /// "I hold this stamp (or a newer one) of this key."
    PushAck { key: Key, stamp: Stamp },
    /// Send me your current objects under these keys.
    Fetch { keys: Vec<Key> },
    /// Objects answering a `Fetch` (a host's current state for each key it holds).
    Objects { objects: Vec<Object> },
    /// Anti-entropy, step 1: the hash over all my buckets.
    Root { root: u64 },
    /// Step 2, when the roots differ: my hash of every bucket.
    Buckets { hashes: Vec<u64> },
    /// Step 3 (and 4, with `reply`): my `(key, stamp)` pairs in the buckets that differ; the
    /// receiver fetches what is newer, and answers a non-reply with its own pairs.
    Versions { reply: bool, buckets: Vec<BucketVersions> },
}

/// The `(key, stamp)` pairs of one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketVersions {
    pub index: u16,
    pub entries: Vec<(Key, Stamp)>,
}

impl Msg {
    /// A short name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Msg::Announce { .. } => "announce",
            Msg::Push { .. } => "push",
            Msg::PushAck { .. } => "push-ack",
            Msg::Fetch { .. } => "fetch",
            Msg::Objects { .. } => "objects",
            Msg::Root { .. } => "root",
            Msg::Buckets { .. } => "buckets",
            Msg::Versions { .. } => "versions",
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, MsgError> {
        let bytes = postcard::to_stdvec(self).map_err(|e| MsgError::Encode(e.to_string()))?;
        if bytes.len() > MAX_MSG_BYTES {
            return Err(MsgError::TooLarge { len: bytes.len(), max: MAX_MSG_BYTES });
        }
        Ok(bytes)
    }

    /// Decodes a message from a peer: the length is checked first, then the shape
    /// ([`Msg::check_shape`]). Objects and keys are checked by the replica, which knows the time.
    pub fn decode(bytes: &[u8]) -> Result<Msg, MsgError> {
        if bytes.len() > MAX_MSG_BYTES {
            return Err(MsgError::TooLarge { len: bytes.len(), max: MAX_MSG_BYTES });
        }
        let msg: Msg = postcard::from_bytes(bytes).map_err(|e| MsgError::Decode(e.to_string()))?;
        msg.check_shape()?;
        Ok(msg)
    }

    /// Counts and sizes that do not depend on the replica: list lengths, bucket indices, the
    /// inline body limit.
    pub fn check_shape(&self) -> Result<(), MsgError> {
        let too_many = |what, len, max| {
            if len > max {
                Err(MsgError::TooMany { what, len, max })
            } else {
                Ok(())
            }
        };
        match self {
            Msg::Announce { body: Some(body), .. } if body.len() > MAX_INLINE_BODY_BYTES => {
                Err(MsgError::InlineTooLarge { len: body.len(), max: MAX_INLINE_BODY_BYTES })
            }
            Msg::Fetch { keys } => too_many("fetch", keys.len(), MAX_ENTRIES),
            Msg::Objects { objects } => too_many("objects", objects.len(), MAX_OBJECTS),
            Msg::Buckets { hashes } if hashes.len() != BUCKETS => {
                Err(MsgError::BucketCount { len: hashes.len() })
            }
            Msg::Versions { buckets, .. } => {
                too_many("versions", buckets.iter().map(|b| b.entries.len()).sum(), MAX_ENTRIES)?;
                let mut seen = [false; BUCKETS];
                for b in buckets {
                    let slot =
                        seen.get_mut(usize::from(b.index)).ok_or(MsgError::BucketIndex { index: b.index })?;
                    if *slot {
                        return Err(MsgError::DuplicateBucket { index: b.index });
                    }
                    *slot = true;
                    if let Some((key, _)) = b.entries.iter().find(|(k, _)| bucket_of(k) != b.index) {
                        return Err(MsgError::WrongBucket { key: key.to_string(), index: b.index });
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// The anti-entropy bucket of a key: the first two bytes of the sha256 of the key.
pub fn bucket_of(key: &Key) -> u16 {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    key.hash_into(&mut h);
    let d = h.finalize();
    // BUCKETS divides 65536, so every bucket is equally likely.
    (u16::from_be_bytes([d[0], d[1]]) as usize % BUCKETS) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::{Digest, Version};

    fn stamp() -> Stamp {
        Stamp { version: Version { wall_ms: 1, logical: 0, node: "a".into() }, digest: Digest::TOMBSTONE }
    }

    #[test]
    fn round_trip_and_garbage() {
        let key = Key::new("Pod", "default", "web");
        let msg = Msg::Announce { key, stamp: stamp(), body: None };
        let bytes = msg.encode().expect("encodes");
        assert_eq!(Msg::decode(&bytes), Ok(msg));
        assert!(matches!(Msg::decode(&[0xff, 0xff, 0xff]), Err(MsgError::Decode(_))));
        assert!(matches!(Msg::decode(&bytes[..bytes.len() - 1]), Err(MsgError::Decode(_))));
        let huge = vec![0u8; MAX_MSG_BYTES + 1];
        assert!(matches!(Msg::decode(&huge), Err(MsgError::TooLarge { .. })));
        // A length prefix claiming a vast list is an error, not an allocation.
        let mut lie = vec![3u8]; // Fetch
        lie.extend([0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(Msg::decode(&lie).is_err());
    }

    #[test]
    fn shapes_are_checked() {
        assert_eq!(Msg::Buckets { hashes: vec![0; 3] }.check_shape(), Err(MsgError::BucketCount { len: 3 }));
        let key = Key::new("Pod", "default", "web");
        let right = bucket_of(&key);
        let wrong = (right + 1) % BUCKETS as u16;
        let ok = Msg::Versions {
            reply: false,
            buckets: vec![BucketVersions { index: right, entries: vec![(key.clone(), stamp())] }],
        };
        assert_eq!(ok.check_shape(), Ok(()));
        let bad = Msg::Versions {
            reply: false,
            buckets: vec![BucketVersions { index: wrong, entries: vec![(key.clone(), stamp())] }],
        };
        assert!(matches!(bad.check_shape(), Err(MsgError::WrongBucket { .. })));
        let dup = Msg::Versions {
            reply: false,
            buckets: vec![
                BucketVersions { index: right, entries: vec![] },
                BucketVersions { index: right, entries: vec![] },
            ],
        };
        assert!(matches!(dup.check_shape(), Err(MsgError::DuplicateBucket { .. })));
        let out =
            Msg::Versions { reply: false, buckets: vec![BucketVersions { index: 999, entries: vec![] }] };
        assert!(matches!(out.check_shape(), Err(MsgError::BucketIndex { .. })));
        let fat = Msg::Announce {
            key,
            stamp: stamp(),
            body: Some(Bytes::from(vec![0; MAX_INLINE_BODY_BYTES + 1])),
        };
        assert!(matches!(fat.check_shape(), Err(MsgError::InlineTooLarge { .. })));
        let many = Msg::Fetch { keys: vec![Key::new("a", "b", "c"); MAX_ENTRIES + 1] };
        assert!(matches!(many.check_shape(), Err(MsgError::TooMany { .. })));
    }
}
