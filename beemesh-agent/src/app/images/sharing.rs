//! Images shared peer to peer: this host's holder record in the cluster state (kind
//! [`KIND`], one key per host named after it, rewritten at start and after every import or
//! pull), `image list` across the mesh (every image with the hosts that hold it), and the
//! counters of `status`. The blob server is `blobs.rs`, the puller `pull.rs`.
//!
//! A holder record tells every member which images (tags, ids, blob digests and sizes) a host
//! holds; nothing else. A blob fetched because of a record is trusted by its digest only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use beemesh_state::Key;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{info, warn};

use super::pull::PullState;
use crate::api::{ImageInfo, ImageShareStatus, PeerTransfer};
use crate::app::cluster::Cluster;
use crate::app::{Call, Command};
use crate::config::Config;
use crate::image::{HeldImage, ImageStore};
use crate::mesh::swarm::MeshClient;

/// The kind of holder records in the cluster state (namespace "", name = node name).
pub const KIND: &str = "ImageHoldings";
/// Images pulled at once on this host.
const PULLS_AT_ONCE: usize = 2;

/// One host's holder record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Holdings {
    pub node: String,
    /// Its libp2p peer id: where to ask for blobs.
    pub peer: String,
    pub images: Vec<HeldImage>,
}

/// The key of `node`'s holder record.
pub fn key(node: &str) -> Key {
    Key::new(KIND, "", node)
}

/// The records of the mesh, each checked to name the host it is filed under.
pub async fn records(cluster: &Cluster) -> Result<Vec<Holdings>, String> {
    let listed = cluster.list(KIND, None).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for l in listed {
        match serde_json::from_slice::<Holdings>(&l.body) {
            Ok(h) if h.node == l.key.name => out.push(h),
            Ok(h) => {
                warn!(key = %l.key.name, node = %h.node, "image holder record filed under another name; ignored")
            }
            Err(e) => warn!(node = %l.key.name, error = %e, "image holder record does not decode; ignored"),
        }
    }
    Ok(out)
}

/// `image list` across the mesh: every (tag, id) of `local` (this host's, named `node`) and
/// of the records, with its holders.
pub fn merge(node: &str, local: &[(String, String)], records: &[Holdings]) -> Vec<ImageInfo> {
    let mut by: BTreeMap<(String, String), (u64, BTreeSet<String>)> = BTreeMap::new();
    for (tag, id) in local {
        by.entry((tag.clone(), id.clone())).or_default().1.insert(node.to_owned());
    }
    for r in records {
        for i in &r.images {
            let e = by.entry((i.tag.clone(), i.id.clone())).or_default();
            e.0 = i.total_size();
            e.1.insert(r.node.clone());
        }
    }
    by.into_iter()
        .map(|((tag, id), (size, holders))| ImageInfo {
            tag,
            id,
            size: Some(size),
            holders: holders.into_iter().collect(),
        })
        .collect()
}

/// Transfer counters since the agent started.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub fetched: BTreeMap<String, PeerTransfer>,
    pub served: BTreeMap<String, PeerTransfer>,
    pub blobs_verified: u64,
    pub blobs_rejected: u64,
    pub resumed_bytes: u64,
    pub pulls_done: u64,
    pub pulls_failed: u64,
    /// Bytes of each partial blob already counted (fetched or resumed) by this agent.
    pub accounted: BTreeMap<String, u64>,
}

/// Wakes the containers of this host that wait for an image whenever a holder record changes
/// (an import or a pull, here or on another host): a failed pull is tried again at once rather
/// than when its container's back-off ends, so a pod runs as soon as some host has its image.
pub async fn watch(cluster: Cluster, sharing: Sharing, actor: mpsc::Sender<Call>) {
    let mut changes = cluster.kind_changes(KIND);
    while changes.changed().await.is_ok() {
        sharing.inner.pulls.lock().expect("pulls lock").retain(|_, p| p.is_pulling());
        let (tx, rx) = oneshot::channel();
        if actor.send((Command::ImagesChanged, tx)).await.is_err() {
            break;
        }
        let _ = rx.await;
    }
}

/// The sharing side of this host's image store: cloneable.
#[derive(Clone, Debug)]
pub struct Sharing {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub store: ImageStore,
    pub client: MeshClient,
    pub cluster: Cluster,
    pub node: String,
    pub peer: String,
    /// Bytes one pulled image may have (its blobs together): `imageMaxUnpackedBytes`.
    pub max_bytes: u64,
    pub counters: Mutex<Counters>,
    /// Pulls under way or failed lately, by normalized reference.
    pub pulls: Mutex<BTreeMap<String, PullState>>,
    pub pull_slots: Arc<Semaphore>,
    /// Blob reads in progress per requesting peer.
    pub serving: Mutex<HashMap<libp2p::PeerId, Arc<Semaphore>>>,
    /// The record body last written, so an unchanged one is not written again.
    pub published: tokio::sync::Mutex<Option<Vec<u8>>>,
}

impl Sharing {
    /// Sharing for this host (`node`, `peer`); publishes its record once at start.
    pub fn start(cfg: &Config, client: MeshClient, cluster: Cluster, node: String, peer: String) -> Self {
        let store = ImageStore::new(&cfg.state_dir)
            .max_unpacked(cfg.image_max_unpacked_bytes)
            .max_entries(cfg.image_max_entries);
        let sharing = Self {
            inner: Arc::new(Inner {
                store,
                client,
                cluster,
                node,
                peer,
                max_bytes: cfg.image_max_unpacked_bytes,
                counters: Mutex::default(),
                pulls: Mutex::default(),
                pull_slots: Arc::new(Semaphore::new(PULLS_AT_ONCE)),
                serving: Mutex::default(),
                published: tokio::sync::Mutex::new(None),
            }),
        };
        let s = sharing.clone();
        tokio::spawn(async move { s.publish().await });
        sharing
    }

    /// Writes this host's record when what the store holds changed since the last write.
    pub async fn publish(&self) {
        let store = self.inner.store.clone();
        let images = match tokio::task::spawn_blocking(move || store.holdings()).await {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => return warn!(error = %e, "cannot read the image store for the holder record"),
            Err(e) => return warn!(error = %e, "holder record task failed"),
        };
        let record = Holdings { node: self.inner.node.clone(), peer: self.inner.peer.clone(), images };
        let body = serde_json::to_vec(&record).expect("plain data serialises");
        let mut last = self.inner.published.lock().await;
        if last.as_deref() == Some(&body[..]) {
            return;
        }
        match self.inner.cluster.put(key(&self.inner.node), Some(Bytes::from(body.clone()))) {
            Ok(()) => {
                info!(images = record.images.len(), "image holder record written");
                *last = Some(body);
            }
            Err(e) => warn!(error = %e, "cannot write the image holder record"),
        }
    }

    /// `image list` across the mesh, `local` being this store's tags.
    pub async fn list(&self, local: &[(String, String)]) -> Result<Vec<ImageInfo>, String> {
        let records = records(&self.inner.cluster).await?;
        Ok(merge(&self.inner.node, local, &records))
    }

    /// The `images` section of `status`.
    pub fn status(&self) -> ImageShareStatus {
        let c = self.inner.counters.lock().expect("counters lock");
        let pulls = self.inner.pulls.lock().expect("pulls lock");
        ImageShareStatus {
            fetched: c.fetched.clone(),
            served: c.served.clone(),
            blobs_verified: c.blobs_verified,
            blobs_rejected: c.blobs_rejected,
            resumed_bytes: c.resumed_bytes,
            pulls_done: c.pulls_done,
            pulls_failed: c.pulls_failed,
            pulling: pulls.iter().filter(|(_, s)| s.is_pulling()).map(|(r, _)| r.clone()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::BlobRef;

    #[test]
    fn the_list_names_every_holder_of_each_image() {
        let img = |tag: &str, id: &str| HeldImage {
            tag: tag.into(),
            id: id.into(),
            config: BlobRef { digest: id.into(), size: 2 },
            layers: vec![BlobRef { digest: "sha256:l".into(), size: 40 }],
        };
        let records = vec![
            Holdings { node: "h2".into(), peer: "p2".into(), images: vec![img("web:1", "sha256:a")] },
            Holdings {
                node: "h3".into(),
                peer: "p3".into(),
                images: vec![img("web:1", "sha256:a"), img("db:1", "sha256:d")],
            },
        ];
        let local = vec![("web:1".to_string(), "sha256:a".to_string())];
        let list = merge("h1", &local, &records);
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].tag.as_str(), list[0].holders.clone()), ("db:1", vec!["h3".to_string()]));
        assert_eq!(list[1].holders, vec!["h1", "h2", "h3"]);
        assert_eq!(list[1].size, Some(42));
    }
}
