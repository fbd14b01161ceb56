//! Mesh objects: keys `(kind, namespace, name)`, hybrid-logical-clock versions, sha256 digests of
//! opaque bodies, and the checks every object from a peer passes before the replica looks at it.

use std::cmp::Ordering;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Largest body a mesh object may have: the admin socket's request limit (a 1 MiB ConfigMap
/// in JSON fits with room to spare).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
/// Longest kind, namespace, name or node id, in bytes (a Kubernetes DNS subdomain name).
pub const MAX_NAME_BYTES: usize = 253;

/// Why an object (or part of one) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} bytes, more than {max}")]
    TooLong { field: &'static str, len: usize, max: usize },
    #[error("{field} contains a control character")]
    Control { field: &'static str },
    #[error("body of {len} bytes is over the {max}-byte limit")]
    BodyTooLarge { len: usize, max: usize },
    #[error("body does not match its digest")]
    DigestMismatch,
    #[error("a tombstone carries a body")]
    TombstoneWithBody,
    #[error("version is {ahead_ms} ms ahead of this host's clock (at most {max_ms} allowed)")]
    FromTheFuture { ahead_ms: u64, max_ms: u64 },
}

fn check_name(field: &'static str, s: &str, may_be_empty: bool) -> Result<(), ObjectError> {
    if s.is_empty() && !may_be_empty {
        return Err(ObjectError::Empty { field });
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(ObjectError::TooLong { field, len: s.len(), max: MAX_NAME_BYTES });
    }
    if s.chars().any(char::is_control) {
        return Err(ObjectError::Control { field });
    }
    Ok(())
}

/// Identity of an object: `(kind, namespace, name)`. The namespace is empty for cluster-scoped
/// kinds (Namespace, Node). Ordered by kind, then namespace, then name, so `list` is a range.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Key {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(kind: impl Into<String>, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Key { kind: kind.into(), namespace: namespace.into(), name: name.into() }
    }

    /// Kind and name non-empty, every part at most 253 bytes and free of control characters.
    pub fn validate(&self) -> Result<(), ObjectError> {
        check_name("kind", &self.kind, false)?;
        check_name("namespace", &self.namespace, true)?;
        check_name("name", &self.name, false)
    }

    /// Bytes hashed for bucketing and for the entry hashes of anti-entropy; NUL-separated so
    /// that no two keys share them (no part may contain a control character).
    pub(crate) fn hash_into(&self, h: &mut Sha256) {
        h.update(self.kind.as_bytes());
        h.update([0]);
        h.update(self.namespace.as_bytes());
        h.update([0]);
        h.update(self.name.as_bytes());
        h.update([0]);
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A hybrid logical clock reading plus the writing host: wall time in ms since the Unix epoch,
/// a counter for writes within one ms (or behind a clock that went backwards), and the
/// writer's stable node id. Ordered by `(wall_ms, logical, node)`: a total order, the same on
/// every host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Version {
    pub wall_ms: u64,
    pub logical: u32,
    pub node: String,
}

/// sha256 of a body; all zeroes marks a tombstone (a deletion).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of a tombstone.
    pub const TOMBSTONE: Digest = Digest([0; 32]);

    pub fn of(body: &[u8]) -> Digest {
        Digest(Sha256::digest(body).into())
    }

    pub fn is_tombstone(&self) -> bool {
        *self == Digest::TOMBSTONE
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        f.write_str("..")
    }
}

/// What decides between two states of one key: the version, then the digest (two different
/// bodies under one version only come from a bug or a hostile peer; the digest still makes
/// every host pick the same one). Greater wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    pub version: Version,
    pub digest: Digest,
}

impl Stamp {
    pub fn is_tombstone(&self) -> bool {
        self.digest.is_tombstone()
    }
}

/// One key's state on a host: a live body or a tombstone (`body: None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub key: Key,
    pub stamp: Stamp,
    pub body: Option<Bytes>,
}

impl Object {
    /// A live object or, with `body: None`, a tombstone; the digest is computed here.
    pub fn new(key: Key, version: Version, body: Option<Bytes>) -> Object {
        let digest = body.as_deref().map_or(Digest::TOMBSTONE, Digest::of);
        Object { key, stamp: Stamp { version, digest }, body }
    }

    pub fn is_tombstone(&self) -> bool {
        self.stamp.is_tombstone()
    }

    /// Everything a peer could get wrong: the key, the node id, the body's size and digest,
    /// and a version too far ahead of `now_ms` (a host with a clock far in the future, or a
    /// hostile one, would otherwise win every conflict for as long as its clock leads).
    pub fn validate(&self, now_ms: u64, max_skew_ms: u64) -> Result<(), ObjectError> {
        self.key.validate()?;
        validate_version(&self.stamp.version, now_ms, max_skew_ms)?;
        match &self.body {
            None if self.is_tombstone() => Ok(()),
            None => Err(ObjectError::DigestMismatch),
            Some(_) if self.is_tombstone() => Err(ObjectError::TombstoneWithBody),
            Some(body) if body.len() > MAX_BODY_BYTES => {
                Err(ObjectError::BodyTooLarge { len: body.len(), max: MAX_BODY_BYTES })
            }
            Some(body) if Digest::of(body) != self.stamp.digest => Err(ObjectError::DigestMismatch),
            Some(_) => Ok(()),
        }
    }
}

pub(crate) fn validate_version(v: &Version, now_ms: u64, max_skew_ms: u64) -> Result<(), ObjectError> {
    check_name("node", &v.node, false)?;
    let ahead_ms = v.wall_ms.saturating_sub(now_ms);
    if ahead_ms > max_skew_ms {
        return Err(ObjectError::FromTheFuture { ahead_ms, max_ms: max_skew_ms });
    }
    Ok(())
}

/// The host's hybrid logical clock: never goes backwards, stays close to wall time, and moves
/// past every version the host has seen, so a write made after seeing another orders after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clock {
    node: String,
    wall_ms: u64,
    logical: u32,
}

impl Clock {
    pub fn new(node: impl Into<String>) -> Clock {
        Clock { node: node.into(), wall_ms: 0, logical: 0 }
    }

    /// A fresh version, greater than every version this clock has issued or observed.
    pub fn next(&mut self, now_ms: u64) -> Version {
        if now_ms > self.wall_ms {
            self.wall_ms = now_ms;
            self.logical = 0;
        } else if self.logical == u32::MAX {
            self.wall_ms += 1;
            self.logical = 0;
        } else {
            self.logical += 1;
        }
        Version { wall_ms: self.wall_ms, logical: self.logical, node: self.node.clone() }
    }

    /// Moves the clock past `v` (only validated versions, whose wall time is bounded).
    pub fn observe(&mut self, v: &Version) {
        if (v.wall_ms, v.logical).cmp(&(self.wall_ms, self.logical)) == Ordering::Greater {
            self.wall_ms = v.wall_ms;
            self.logical = v.logical;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(wall_ms: u64, logical: u32, node: &str) -> Version {
        Version { wall_ms, logical, node: node.into() }
    }

    #[test]
    fn versions_order_by_wall_then_counter_then_node() {
        assert!(v(2, 0, "a") > v(1, 9, "z"));
        assert!(v(1, 1, "a") > v(1, 0, "z"));
        assert!(v(1, 1, "b") > v(1, 1, "a"));
    }

    #[test]
    fn clock_is_monotonic_and_passes_what_it_saw() {
        let mut c = Clock::new("a");
        assert_eq!(c.next(100), v(100, 0, "a"));
        assert_eq!(c.next(100), v(100, 1, "a"));
        // The wall clock went backwards: the counter carries on.
        assert_eq!(c.next(50), v(100, 2, "a"));
        c.observe(&v(300, 7, "b"));
        assert_eq!(c.next(200), v(300, 8, "a"));
        assert_eq!(c.next(400), v(400, 0, "a"));
    }

    #[test]
    fn objects_from_peers_are_checked() {
        let key = Key::new("ConfigMap", "default", "c");
        let ok = Object::new(key.clone(), v(1000, 0, "a"), Some(Bytes::from_static(b"{}")));
        assert_eq!(ok.validate(1000, 0), Ok(()));
        let mut bad = ok.clone();
        bad.body = Some(Bytes::from_static(b"{\"x\":1}"));
        assert_eq!(bad.validate(1000, 0), Err(ObjectError::DigestMismatch));
        let future = Object::new(key.clone(), v(70_001, 0, "a"), None);
        assert!(matches!(future.validate(10_000, 60_000), Err(ObjectError::FromTheFuture { .. })));
        let tomb = Object::new(key.clone(), v(1, 0, "a"), None);
        assert_eq!(tomb.validate(1, 0), Ok(()));
        let mut tomb_body = tomb.clone();
        tomb_body.body = Some(Bytes::new());
        assert_eq!(tomb_body.validate(1, 0), Err(ObjectError::TombstoneWithBody));
        let big = Object::new(key, v(1, 0, "a"), Some(Bytes::from(vec![0u8; MAX_BODY_BYTES + 1])));
        assert!(matches!(big.validate(1, 0), Err(ObjectError::BodyTooLarge { .. })));
        assert!(Key::new("", "x", "y").validate().is_err());
        assert!(Key::new("Pod", "x", "a\nb").validate().is_err());
        assert!(Key::new("Pod", "x", "a".repeat(254)).validate().is_err());
        assert_eq!(Key::new("Namespace", "", "prod").validate(), Ok(()));
    }
}
