//! The blob server: mesh requests of kind [`REQUEST_KIND`] (`{digest, offset, len}`, JSON)
//! answered with the raw bytes of that range of `blobs/sha256/<hex>` (the response body is
//! CBOR bytes on the wire, never an array of integers), at most [`MAX_CHUNK`] at a time. The
//! digest is checked as 64 lowercase hex digits before it names a file; only the store's
//! blobs are served. The read runs on a blocking thread, at most [`PER_PEER`] for one peer
//! at once (more wait their turn), never on the mesh's event loop.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::sharing::Sharing;
use crate::mesh::swarm::AttestedHost;

/// The mesh request kind of blob chunks.
pub const REQUEST_KIND: &str = "blob";
/// The most one request may ask for (responses are bounded at 8 MiB).
pub const MAX_CHUNK: u64 = 4 * 1024 * 1024;
/// Reads served to one peer at once.
const PER_PEER: usize = 8;

/// A request for `len` bytes of blob `digest` from `offset`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRequest {
    pub digest: String,
    pub offset: u64,
    pub len: u64,
}

impl Sharing {
    /// Answers a peer's blob request: the bytes, or why not.
    pub async fn serve(&self, from: &AttestedHost, body: &[u8]) -> Result<Vec<u8>, String> {
        let req: BlobRequest =
            serde_json::from_slice(body).map_err(|e| format!("not a blob request: {e}"))?;
        if req.len == 0 || req.len > MAX_CHUNK {
            return Err(format!("len {} is not within 1..={MAX_CHUNK}", req.len));
        }
        let path = self
            .inner
            .store
            .blob_file(&req.digest)
            .map_err(|_| format!("{} is not held here", req.digest))?;
        let gate = {
            let mut serving = self.inner.serving.lock().expect("serving lock");
            serving.entry(from.peer).or_insert_with(|| Arc::new(Semaphore::new(PER_PEER))).clone()
        };
        let _permit = gate.acquire_owned().await.map_err(|_| "the blob server is closing".to_string())?;
        let digest = req.digest.clone();
        let data = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
            let file = std::fs::File::open(&path).map_err(|e| format!("{digest}: {e}"))?;
            let size = file.metadata().map_err(|e| format!("{digest}: {e}"))?.len();
            if req.offset >= size {
                return Err(format!("offset {} is past the end of {digest} ({size} bytes)", req.offset));
            }
            let len = req.len.min(size - req.offset) as usize;
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, req.offset).map_err(|e| format!("{digest}: {e}"))?;
            Ok(buf)
        })
        .await
        .map_err(|e| format!("blob read failed: {e}"))??;
        let mut c = self.inner.counters.lock().expect("counters lock");
        let t = c.served.entry(from.node_name.clone()).or_default();
        t.bytes += data.len() as u64;
        t.chunks += 1;
        Ok(data)
    }
}
