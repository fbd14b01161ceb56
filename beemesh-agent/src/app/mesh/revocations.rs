//! Host revocations on the network: a revocation handed to this agent (`beemesh-agent revoke
//! FILE`), gossiped on [`TOPIC`] or pushed by a peer as a request of kind [`REQUEST_KIND`] is
//! verified against the trust domain's roots (`HostTrust::add_revocation`, which attestation
//! consults from then on), persisted under `<state-dir>/revocations/` (0600; loaded at start,
//! before the swarm listens), spread, and every attested peer it names is expelled from the
//! swarm. Anti-entropy: when a peer attests, each side pushes every revocation it holds, so
//! a host that was down when one was made hears of it as soon as it rejoins.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{info, warn};

use crate::mesh::swarm::{AttestedHost, MeshClient, MeshResponse};
use crate::mesh::trust::{HostTrust, Revocation, SignedRevocation, TrustError};

/// The gossip topic revocations travel on (the PEM text as `ca revoke-host` writes it).
pub const TOPIC: &str = "beemesh/revocations/1";
/// The mesh request kind pushing every revocation held to a peer that just attested.
pub const REQUEST_KIND: &str = "revocations";

/// Errors of revocations on the network.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("revocation {}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("revocation {name}: {source}")]
    Invalid {
        name: String,
        #[source]
        source: TrustError,
    },
    #[error("revocations pushed by a peer do not decode: {0}")]
    Push(String),
}

/// This host's revocations: the trust store they go into and where they are kept.
#[derive(Clone, Debug)]
pub struct Revocations {
    trust: Arc<HostTrust>,
    dir: PathBuf,
}

/// What accepting a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub revocation: Revocation,
    /// Node names of the peers expelled for it.
    pub expelled: Vec<String>,
}

impl Revocations {
    /// Loads every revocation kept under `<state_dir>/revocations/` into `trust`; a file that
    /// does not verify fails the start, naming it (a revocation is never dropped silently).
    pub fn load(state_dir: &Path, trust: Arc<HostTrust>) -> Result<Self, RevocationError> {
        let dir = state_dir.join("revocations");
        let this = Self { trust, dir };
        let entries = match std::fs::read_dir(&this.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(this),
            Err(source) => return Err(RevocationError::File { path: this.dir.clone(), source }),
        };
        let mut paths = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| RevocationError::File { path: this.dir.clone(), source })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pem") {
                paths.push(path);
            }
        }
        paths.sort();
        let now = SystemTime::now();
        for path in paths {
            let text = std::fs::read(&path)
                .map_err(|source| RevocationError::File { path: path.clone(), source })?;
            this.trust
                .add_revocation(&text, now)
                .map_err(|source| RevocationError::Invalid { name: path.display().to_string(), source })?;
        }
        let held = this.trust.revocations().len();
        if held > 0 {
            info!(dir = %this.dir.display(), revocations = held, "host revocations loaded");
        }
        Ok(this)
    }

    /// Node names revoked, as `status` shows them.
    pub fn revoked_nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.trust.revocations().iter().map(|r| r.node.clone()).collect();
        nodes.dedup();
        nodes
    }

    /// Verifies `text` (from `source`, for messages), and when it is new keeps it on disk and
    /// expels every attested peer it names. `Ok(None)`: already known.
    pub async fn accept(
        &self,
        client: &MeshClient,
        source: &str,
        text: &[u8],
    ) -> Result<Option<Accepted>, RevocationError> {
        let invalid = |source_err| RevocationError::Invalid { name: source.to_owned(), source: source_err };
        let Some(revocation) = self.trust.add_revocation(text, SystemTime::now()).map_err(invalid)? else {
            return Ok(None);
        };
        let path = self.dir.join(format!("{}-{}.pem", revocation.node, revocation.revoked_at));
        // Canonical text: what we keep and pass on is exactly what was signed.
        let pem = SignedRevocation::from_pem(text).map_err(invalid)?.to_pem();
        if let Err(e) = write_private(&self.dir, &path, pem.as_bytes()) {
            // Held in memory and acted on; said loudly since a restart would forget it.
            warn!(error = %e, "revocation not persisted");
        }
        info!(node = %revocation.node, from = source, "host revoked");
        let mut expelled = Vec::new();
        for peer in client.peers().await.unwrap_or_default() {
            let Some(name) = peer.node_name.filter(|_| peer.attested) else { continue };
            let named = name == revocation.node || revocation.peer.as_deref() == Some(&peer.peer.to_string());
            if named {
                let reason = format!("revoked (node {}, at {})", revocation.node, revocation.revoked_at);
                if client.expel(peer.peer, reason).await.unwrap_or(false) {
                    expelled.push(name);
                }
            }
        }
        Ok(Some(Accepted { revocation, expelled }))
    }

    /// Every revocation held, as PEM texts (what a push carries).
    fn texts(&self) -> Result<Vec<String>, RevocationError> {
        let mut texts = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(texts),
            Err(source) => return Err(RevocationError::File { path: self.dir.clone(), source }),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "pem") {
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| RevocationError::File { path: path.clone(), source })?;
                texts.push(text);
            }
        }
        Ok(texts)
    }

    /// Pushes every revocation held to `host`, which just attested (nothing when none).
    pub async fn push(&self, client: &MeshClient, host: &AttestedHost) {
        let texts = match self.texts() {
            Ok(t) if t.is_empty() => return,
            Ok(t) => t,
            Err(e) => return warn!(error = %e, "cannot read the revocations to push"),
        };
        let body = match serde_json::to_vec(&texts) {
            Ok(b) => b,
            Err(e) => return warn!(error = %e, "cannot encode revocations"),
        };
        match client.request(host.peer, REQUEST_KIND, body).await {
            Ok(MeshResponse::App(_)) => {}
            Ok(other) => warn!(node = %host.node_name, answer = ?other, "revocations not taken"),
            Err(e) => warn!(node = %host.node_name, error = %e, "revocations not pushed"),
        }
    }

    /// Takes the revocations `from` pushed; each one is verified on its own.
    pub async fn pushed(
        &self,
        client: &MeshClient,
        from: &AttestedHost,
        body: &[u8],
    ) -> Result<(), RevocationError> {
        let texts: Vec<String> =
            serde_json::from_slice(body).map_err(|e| RevocationError::Push(e.to_string().to_lowercase()))?;
        let source = format!("pushed by {}", from.node_name);
        for text in texts {
            match self.accept(client, &source, text.as_bytes()).await {
                Ok(Some(a)) => {
                    // A host that was down: what it missed spreads on from here too.
                    let _ = client.publish(TOPIC, text.into_bytes()).await;
                    info!(node = %a.revocation.node, expelled = ?a.expelled, "revocation taken from a peer");
                }
                Ok(None) => {}
                Err(e) => warn!(error = %e, "a pushed revocation refused"),
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` with mode 0600 (temporary file, then rename), `dir` made 0700.
fn write_private(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), RevocationError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| RevocationError::File { path, source }
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err(dir))?;
    let tmp = path.with_extension("pem.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err(&tmp))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::trust::files;

    const TD: &str = "guard.test";

    #[test]
    fn kept_revocations_load_at_start_and_a_bad_one_is_named() {
        let tmp = tempfile::tempdir().expect("tmp");
        let now = SystemTime::now();
        let ca = files::init_ca(&tmp.path().join("ca"), TD, now).expect("ca");
        let signed = files::revoke_host(&ca, "h3", now).expect("revoke");
        let state = tmp.path().join("state");
        let dir = state.join("revocations");
        let path = dir.join("h3-1.pem");
        write_private(&dir, &path, signed.to_pem().as_bytes()).expect("write");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).expect("meta").mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).expect("meta").mode() & 0o777, 0o700);

        let trust = Arc::new(HostTrust::new(TD, ca.bundle.clone()));
        let loaded = Revocations::load(&state, trust.clone()).expect("loads");
        assert_eq!(loaded.revoked_nodes(), ["h3"]);
        assert_eq!(trust.revocations().len(), 1);
        assert_eq!(loaded.texts().expect("texts"), [signed.to_pem()]);

        // One from another root: the start fails, naming the file.
        let other = files::init_ca(&tmp.path().join("other"), TD, now).expect("ca");
        let foreign = dir.join("h4-1.pem");
        let text = files::revoke_host(&other, "h4", now).expect("revoke").to_pem();
        write_private(&dir, &foreign, text.as_bytes()).expect("write");
        let err = Revocations::load(&state, Arc::new(HostTrust::new(TD, ca.bundle.clone())))
            .expect_err("a foreign revocation");
        assert!(err.to_string().contains(&foreign.display().to_string()), "{err}");
        // No directory: nothing held.
        let none = Revocations::load(&tmp.path().join("empty"), Arc::new(HostTrust::new(TD, ca.bundle)))
            .expect("empty");
        assert!(none.revoked_nodes().is_empty());
    }
}
