//! Peers that were attested, remembered in `<state-dir>/mesh/peers.json` so a restarted host,
//! or one that lost every bootstrap peer, can find the mesh again.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use super::SwarmError;

/// Most peers remembered; the least recently seen go first.
pub const MAX_REMEMBERED: usize = 256;

/// One remembered peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnownPeer {
    /// The node name its certificate carried when it was last attested.
    pub node_name: String,
    /// Where it listened (from identify), dialable addresses first.
    pub addrs: Vec<String>,
    /// Unix seconds when it was last attested, or when its last connection closed.
    pub last_seen: u64,
}

/// The file's contents: peer id (base58) -> what we know of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownPeers {
    pub peers: BTreeMap<String, KnownPeer>,
}

impl KnownPeers {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("mesh").join("peers.json")
    }

    /// Reads the file; a missing file is an empty set.
    pub fn load(path: &Path) -> Result<Self, SwarmError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(SwarmError::PeersFile { path: path.to_path_buf(), why: e.to_string() }),
        };
        serde_json::from_slice(&text)
            .map_err(|e| SwarmError::PeersFile { path: path.to_path_buf(), why: e.to_string() })
    }

    /// Writes the file atomically (a temporary file beside it, synced, then renamed).
    pub fn save(&self, path: &Path) -> Result<(), SwarmError> {
        let err = |e: std::io::Error| SwarmError::PeersFile { path: path.to_path_buf(), why: e.to_string() };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self).expect("a map of strings serializes");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)?;
        Ok(())
    }

    /// Records `peer` as attested at `now_unix`, listening on `addrs`; keeps at most
    /// [`MAX_REMEMBERED`] peers. Returns whether anything changed.
    pub fn remember(&mut self, peer: &PeerId, node_name: &str, addrs: &[Multiaddr], now_unix: u64) -> bool {
        let entry = KnownPeer {
            node_name: node_name.to_string(),
            addrs: addrs.iter().map(|a| a.to_string()).collect(),
            last_seen: now_unix,
        };
        let key = peer.to_base58();
        if self.peers.get(&key) == Some(&entry) {
            return false;
        }
        let old_addrs = self.peers.get(&key).map(|p| p.addrs.clone());
        let mut entry = entry;
        if entry.addrs.is_empty() {
            // Not identified yet: keep what we knew rather than forget where it lives.
            entry.addrs = old_addrs.unwrap_or_default();
        }
        self.peers.insert(key, entry);
        while self.peers.len() > MAX_REMEMBERED {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, p)| p.last_seen)
                .map(|(k, _)| k.clone())
                .expect("not empty");
            self.peers.remove(&oldest);
        }
        true
    }

    /// A remembered peer was seen at `now_unix` (its last connection closed): true if known.
    pub fn seen(&mut self, peer: &PeerId, now_unix: u64) -> bool {
        match self.peers.get_mut(&peer.to_base58()) {
            Some(p) => {
                p.last_seen = p.last_seen.max(now_unix);
                true
            }
            None => false,
        }
    }

    pub fn forget(&mut self, peer: &PeerId) -> bool {
        self.peers.remove(&peer.to_base58()).is_some()
    }

    /// The peers to redial, each with the addresses that parse (others are skipped).
    pub fn dialable(&self) -> Vec<(PeerId, Vec<Multiaddr>)> {
        self.peers
            .iter()
            .filter_map(|(k, p)| {
                let id: PeerId = k.parse().ok()?;
                let addrs: Vec<Multiaddr> = p.addrs.iter().filter_map(|a| a.parse().ok()).collect();
                (!addrs.is_empty()).then_some((id, addrs))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519().public().to_peer_id()
    }

    #[test]
    fn round_trips_atomically_and_missing_is_empty() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = KnownPeers::path(dir.path());
        assert_eq!(KnownPeers::load(&path).expect("missing"), KnownPeers::default());
        let mut k = KnownPeers::default();
        let p = peer();
        let a: Multiaddr = "/ip4/10.0.0.1/udp/4001/quic-v1".parse().expect("ma");
        assert!(k.remember(&p, "node-a", std::slice::from_ref(&a), 100));
        assert!(!k.remember(&p, "node-a", std::slice::from_ref(&a), 100), "no change");
        k.save(&path).expect("save");
        assert!(!path.with_extension("json.tmp").exists());
        let back = KnownPeers::load(&path).expect("load");
        assert_eq!(back, k);
        assert_eq!(back.dialable(), vec![(p, vec![a.clone()])]);
        // A later attestation before identify keeps the known addresses.
        let mut k2 = back.clone();
        assert!(k2.remember(&p, "node-a", &[], 200));
        assert_eq!(k2.dialable(), vec![(p, vec![a])]);
        assert!(k2.forget(&p));
        assert!(k2.dialable().is_empty());
    }

    #[test]
    fn a_corrupt_file_names_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = KnownPeers::path(dir.path());
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, b"{not json").expect("write");
        let err = KnownPeers::load(&path).expect_err("corrupt").to_string();
        assert!(err.contains("peers.json"), "{err}");
    }

    #[test]
    fn keeps_the_most_recently_seen() {
        let mut k = KnownPeers::default();
        let a: Multiaddr = "/ip4/10.0.0.1/udp/4001/quic-v1".parse().expect("ma");
        let first = peer();
        k.remember(&first, "first", std::slice::from_ref(&a), 1);
        for i in 0..MAX_REMEMBERED {
            k.remember(&peer(), "n", std::slice::from_ref(&a), 10 + i as u64);
        }
        assert_eq!(k.peers.len(), MAX_REMEMBERED);
        assert!(!k.peers.contains_key(&first.to_base58()), "the oldest went");
    }
}
