//! The puller: a pod placed here whose image this store lacks gets it from the hosts whose
//! holder records list it. Each blob is fetched in chunks from several holders at once
//! (`chunks::Fetch`), written into `partial/<hex>` with a record of the chunks done
//! (`partial/<hex>.chunks`, written after the chunk's bytes), so a pull interrupted by a crash
//! resumes with the missing chunks only; a finished blob enters the store only once its
//! sha256 and size match (`ImageStore::admit_blob`); then the image is unpacked and tagged by
//! the store (`ImageStore::install_pulled`, its limits applying). One pull per image however
//! many containers wait for it, [`super::sharing`]'s bound on pulls at once, and the image's
//! total size within `imageMaxUnpackedBytes` before anything is fetched. Started by the actor
//! (`want`, which never blocks on the pull); the waiting containers show `ContainerCreating`,
//! a failed pull `ErrImagePull` with its reason, tried again after [`RETRY`].

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::blobs::{BlobRequest, REQUEST_KIND};
use super::chunks::{self, Ask, Fetch, CHUNK, PER_HOLDER};
use super::sharing::{records, Sharing};
use crate::image::{digest_hex, normalize, BlobRef, HeldImage};
use crate::mesh::swarm::MeshResponse;

/// A failed pull is tried again this long after it failed.
pub const RETRY: Duration = Duration::from_secs(10);
/// A failed chunk request is reported after this pause, so a holder that is not reachable
/// yet (peers connect and attest after a restart) is not given up within milliseconds.
const FAIL_PAUSE: Duration = Duration::from_millis(500);
/// How long a pull waits for one of its holders to be connected and attested.
const CONNECT_WAIT: Duration = Duration::from_secs(15);

/// A pull under way, or the last one's failure.
#[derive(Clone, Debug)]
pub enum PullState {
    Pulling,
    Failed { reason: String, at: Instant },
}

impl PullState {
    pub fn is_pulling(&self) -> bool {
        matches!(self, Self::Pulling)
    }
}

/// What a container waiting for an image is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// The store holds it (now).
    Present,
    /// Being pulled: wait (`ContainerCreating`), with this message.
    Pulling(String),
    /// The last pull failed, for this reason (`ErrImagePull`).
    Failed(String),
}

/// What of a blob's chunks are written (`partial/<hex>.chunks`).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ChunkRecord {
    size: u64,
    chunk: u64,
    done: Vec<bool>,
}

/// A chunk request and what came of it.
type Answered = (Ask<Holder>, Result<Vec<u8>, String>);

/// A holder of the image being pulled.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Holder {
    node: String,
    peer: PeerId,
}

impl Sharing {
    /// The image `reference` for a container of this host: present, being pulled (a pull is
    /// started when none runs and the last did not fail within [`RETRY`]) or failed.
    pub fn want(&self, reference: &str) -> Wanted {
        let reference = normalize(reference);
        let mut pulls = self.inner.pulls.lock().expect("pulls lock");
        match pulls.get(&reference) {
            Some(PullState::Pulling) => {
                return Wanted::Pulling(format!("pulling image {reference} from peers"))
            }
            Some(PullState::Failed { reason, at }) if at.elapsed() < RETRY => {
                return Wanted::Failed(reason.clone())
            }
            _ => {}
        }
        if self.inner.store.resolve(&reference).is_ok() {
            pulls.remove(&reference);
            return Wanted::Present;
        }
        pulls.insert(reference.clone(), PullState::Pulling);
        let this = self.clone();
        let r = reference.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let result = this.pull(&r).await;
            let mut c = this.inner.counters.lock().expect("counters lock");
            let state = match result {
                Ok(()) => {
                    c.pulls_done += 1;
                    None
                }
                Err(reason) => {
                    c.pulls_failed += 1;
                    warn!(image = %r, %reason, ms = started.elapsed().as_millis() as u64, "image pull failed");
                    Some(PullState::Failed { reason, at: Instant::now() })
                }
            };
            drop(c);
            let mut pulls = this.inner.pulls.lock().expect("pulls lock");
            match state {
                Some(s) => pulls.insert(r, s),
                None => pulls.remove(&r),
            };
        });
        Wanted::Pulling(format!("pulling image {reference} from peers"))
    }

    /// Pulls `reference` (normalized) from its holders and installs it.
    async fn pull(&self, reference: &str) -> Result<(), String> {
        let _slot =
            self.inner.pull_slots.clone().acquire_owned().await.map_err(|_| "shutting down".to_string())?;
        let started = Instant::now();
        let all = records(&self.inner.cluster).await?;
        let others: Vec<(Holder, &[HeldImage])> = all
            .iter()
            .filter(|r| r.node != self.inner.node)
            .filter_map(|r| {
                Some((Holder { node: r.node.clone(), peer: r.peer.parse().ok()? }, &r.images[..]))
            })
            .collect();
        let (image, holders) = chunks::choose(reference, others)
            .ok_or_else(|| format!("no host of the mesh holds image {reference}"))?;
        let total = image.total_size();
        if total > self.inner.max_bytes {
            return Err(format!(
                "image {reference} is {total} bytes, over the {} of imageMaxUnpackedBytes",
                self.inner.max_bytes
            ));
        }
        self.connected(&holders).await;
        let names: Vec<&str> = holders.iter().map(|h| h.node.as_str()).collect();
        info!(image = %reference, id = %image.id, bytes = total, holders = ?names, "pulling image");
        let mut from: BTreeMap<String, u64> = BTreeMap::new();
        let mut resumed = 0;
        for blob in image.blobs() {
            if self.inner.store.has_blob(&blob.digest) {
                continue;
            }
            resumed += self.fetch_blob(blob, &holders, &mut from).await?;
        }
        let fetched_at = started.elapsed();
        let store = self.inner.store.clone();
        let img = image.clone();
        let tag = tokio::task::spawn_blocking(move || store.install_pulled(&img))
            .await
            .map_err(|e| format!("install task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let fetched: u64 = from.values().sum();
        let secs = started.elapsed().as_secs_f64();
        info!(
            image = %tag,
            id = %image.id,
            from = ?from,
            bytes = fetched,
            resumed_bytes = resumed,
            ms = (secs * 1e3) as u64,
            fetch_ms = fetched_at.as_millis() as u64,
            unpack_ms = (started.elapsed() - fetched_at).as_millis() as u64,
            mb_per_s = format_args!("{:.1}", fetched as f64 / 1e6 / secs.max(1e-3)),
            "image pulled"
        );
        self.publish().await;
        Ok(())
    }

    /// Waits (at most [`CONNECT_WAIT`]) until one of `holders` is an attested peer: right
    /// after a start, the state is there before the connections.
    async fn connected(&self, holders: &[Holder]) {
        let deadline = Instant::now() + CONNECT_WAIT;
        let mut changes = self.inner.cluster.changes();
        while Instant::now() < deadline {
            let peers = self.inner.client.peers().await.unwrap_or_default();
            if peers.iter().any(|p| p.attested && holders.iter().any(|h| h.peer == p.peer)) {
                return;
            }
            // Peers attesting write nothing we can wait on; the state's changes (their
            // records and gossip arriving) or a short pause, whichever comes first.
            let _ = tokio::time::timeout(FAIL_PAUSE, changes.changed()).await;
        }
    }

    /// Fetches `blob` into the store from `holders`; returns the bytes an earlier attempt had
    /// already written (resumed). `from` counts the bytes got per holder.
    async fn fetch_blob(
        &self,
        blob: &BlobRef,
        holders: &[Holder],
        from: &mut BTreeMap<String, u64>,
    ) -> Result<u64, String> {
        let hex = digest_hex(&blob.digest).map_err(|e| e.to_string())?.to_owned();
        let dir = self.inner.store.partial_dir();
        let (data, rec) = (dir.join(&hex), dir.join(format!("{hex}.chunks")));
        let (d, r, size) = (data.clone(), rec.clone(), blob.size);
        let (file, done) = tokio::task::spawn_blocking(move || open_partial(&d, &r, size))
            .await
            .map_err(|e| format!("partial file task failed: {e}"))??;
        let file = Arc::new(file);
        let mut fetch = Fetch::new(blob.size, CHUNK, done, holders.to_vec(), PER_HOLDER);
        // Resumed: what was written before this agent started (or by an attempt it did not
        // count), not what an earlier attempt of this agent fetched and counted.
        let on_disk = fetch.done_bytes();
        let resumed = {
            let mut c = self.inner.counters.lock().expect("counters lock");
            let known = c.accounted.entry(blob.digest.clone()).or_default();
            let new = on_disk.saturating_sub(*known);
            *known = on_disk;
            c.resumed_bytes += new;
            new
        };
        if on_disk > 0 {
            info!(blob = %blob.digest, resumed_bytes = on_disk, size = blob.size, "resuming blob");
        }
        let mut inflight: JoinSet<Answered> = JoinSet::new();
        let mut last_error = String::new();
        loop {
            while let Some(ask) = fetch.next() {
                let client = self.inner.client.clone();
                let req = BlobRequest { digest: blob.digest.clone(), offset: ask.offset, len: ask.len };
                inflight.spawn(async move {
                    let body = serde_json::to_vec(&req).expect("plain data serialises");
                    let got = match client.request(ask.holder.peer, REQUEST_KIND, body).await {
                        Ok(MeshResponse::App(bytes)) => Ok(bytes),
                        Ok(MeshResponse::Refused(why)) => Err(format!("{} refused: {why}", ask.holder.node)),
                        Ok(other) => Err(format!("{} answered {other:?}", ask.holder.node)),
                        Err(e) => Err(format!("{}: {e}", ask.holder.node)),
                    };
                    if got.is_err() {
                        tokio::time::sleep(FAIL_PAUSE).await;
                    }
                    (ask, got)
                });
            }
            if fetch.finished() {
                break;
            }
            if fetch.stuck() {
                return Err(format!("no holder could serve {}: {last_error}", blob.digest));
            }
            let Some(joined) = inflight.join_next().await else {
                return Err(format!("no holder could serve {}: {last_error}", blob.digest));
            };
            let (ask, got) = joined.map_err(|e| format!("chunk task failed: {e}"))?;
            let bytes = match got {
                Ok(b) if b.len() as u64 == ask.len => b,
                Ok(b) => {
                    last_error =
                        format!("{} sent {} bytes for a chunk of {}", ask.holder.node, b.len(), ask.len);
                    debug!(%last_error, "chunk refused");
                    fetch.failed(&ask);
                    continue;
                }
                Err(e) => {
                    debug!(blob = %blob.digest, error = %e, "chunk failed");
                    last_error = e;
                    fetch.failed(&ask);
                    continue;
                }
            };
            let n = bytes.len() as u64;
            let (f, offset) = (file.clone(), ask.offset);
            tokio::task::spawn_blocking(move || f.write_all_at(&bytes, offset))
                .await
                .map_err(|e| format!("write task failed: {e}"))?
                .map_err(|e| format!("{}: {e}", data.display()))?;
            fetch.completed(&ask);
            let record = ChunkRecord { size: blob.size, chunk: CHUNK, done: fetch.done().to_vec() };
            let r = rec.clone();
            tokio::task::spawn_blocking(move || save_record(&r, &record))
                .await
                .map_err(|e| format!("record task failed: {e}"))??;
            *from.entry(ask.holder.node.clone()).or_default() += n;
            let mut c = self.inner.counters.lock().expect("counters lock");
            let t = c.fetched.entry(ask.holder.node.clone()).or_default();
            t.bytes += n;
            t.chunks += 1;
            *c.accounted.entry(blob.digest.clone()).or_default() += n;
        }
        drop(file);
        let store = self.inner.store.clone();
        let b = blob.clone();
        let verifying = Instant::now();
        let admitted = tokio::task::spawn_blocking(move || {
            let r = store.admit_blob(&data, &b);
            let _ = std::fs::remove_file(&rec);
            r
        })
        .await
        .map_err(|e| format!("verify task failed: {e}"))?;
        let mut c = self.inner.counters.lock().expect("counters lock");
        match admitted {
            Ok(()) => {
                info!(blob = %blob.digest, bytes = blob.size, verify_ms = verifying.elapsed().as_millis() as u64, "blob verified");
                c.blobs_verified += 1;
                c.accounted.remove(&blob.digest);
                Ok(resumed)
            }
            Err(e) => {
                c.blobs_rejected += 1;
                c.accounted.remove(&blob.digest);
                Err(format!(
                    "blob {} from {:?}: {e}",
                    blob.digest,
                    holders.iter().map(|h| &h.node).collect::<Vec<_>>()
                ))
            }
        }
    }
}

/// Opens (or creates) `partial/<hex>` at its full size and reads which chunks are done; a
/// record of another size or chunk, or none, starts over.
fn open_partial(data: &Path, rec: &Path, size: u64) -> Result<(std::fs::File, Vec<bool>), String> {
    if let Some(dir) = data.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let record: ChunkRecord = std::fs::read(rec)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|r: &ChunkRecord| r.size == size && r.chunk == CHUNK)
        .unwrap_or_default();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(data)
        .map_err(|e| format!("{}: {e}", data.display()))?;
    let current = file.metadata().map_err(|e| format!("{}: {e}", data.display()))?.len();
    let done = if current == size { record.done } else { Vec::new() };
    file.set_len(size).map_err(|e| format!("{}: {e}", data.display()))?;
    Ok((file, done))
}

fn save_record(path: &PathBuf, record: &ChunkRecord) -> Result<(), String> {
    let tmp = path.with_extension("chunks.tmp");
    let text = serde_json::to_vec(record).expect("plain data serialises");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partial_blob_resumes_only_with_a_record_of_its_shape() {
        let dir = tempfile::tempdir().expect("tmp");
        let (data, rec) = (dir.path().join("p/abc"), dir.path().join("p/abc.chunks"));
        let size = 3 * CHUNK;
        let (_, done) = open_partial(&data, &rec, size).expect("fresh");
        assert!(done.is_empty());
        save_record(&rec, &ChunkRecord { size, chunk: CHUNK, done: vec![true, false, true] }).expect("save");
        let (_, done) = open_partial(&data, &rec, size).expect("resumed");
        assert_eq!(done, vec![true, false, true]);
        // Another size (a different blob of the same name cannot be, but a torn record can).
        let (_, done) = open_partial(&data, &rec, size + 1).expect("other size");
        assert!(done.is_empty());
    }
}
