//! The join-token flow on the network, both sides. A member holding an issuer ([`Issuer`]:
//! `ca issue-issuer` placed in `<state-dir>/issuer/` or `mesh.issuerDir`) keeps its token
//! records in `<state-dir>/mesh/join-tokens.json` (0600), answers `token create|list|delete`
//! (the admin API, [`answer`]) and admits joining hosts (the swarm's `MeshEvent::Join`). A new
//! host (`run --join TOKEN --bootstrap ADDR`, [`join`]) makes its keys, asks a member over a
//! short-lived swarm, checks the answer against the root the token pins and writes
//! `<state-dir>/host/` before the agent starts as any member. The decisions are
//! `mesh::trust::join`'s (sans-IO); this module does the files and the network.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use rustls_pki_types::CertificateDer;

use crate::api::{JoinTokenInfo, Response, TokenAction};
use crate::config::Config;
use crate::mesh::swarm::{self, BootstrapAddr};
use crate::mesh::trust::files::{self, CaDir, HostFiles, HOST_DIR, HOST_LIFETIME};
use crate::mesh::trust::join::{self as flow, JoinRequest, JoinResponse, JoinToken, TokenRecord};
use crate::mesh::trust::TrustError;

/// Where a member keeps its token records, below the state directory.
pub const TOKENS_FILE: &str = "mesh/join-tokens.json";
/// Where `ca issue-issuer --out` puts an issuer for the agent to find it by default.
pub const DEFAULT_ISSUER_DIR: &str = "issuer";
/// How long a joining host keeps trying its bootstrap peers.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// Records of tokens expired longer ago than this are dropped at the next write.
const KEEP_EXPIRED: u64 = 86_400;

/// Errors of joining and of the member's issuer.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Mesh(#[from] swarm::SwarmError),
    #[error("issuer {dir}: {why}")]
    Issuer { dir: PathBuf, why: String },
    #[error("this host holds no issuer: put one in <state-dir>/issuer (ca issue-issuer --out) or set mesh.issuerDir")]
    NoIssuer,
    #[error("no join token {0}")]
    UnknownToken(String),
    #[error("--join needs root, as `run` does")]
    NotRoot,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn info(r: &TokenRecord) -> JoinTokenInfo {
    JoinTokenInfo { id: r.id.clone(), expires_at: r.expires_at, node_name: r.node.clone(), used: r.used }
}

/// A member's issuer and its token records.
#[derive(Debug)]
pub struct Issuer {
    ca: CaDir,
    tokens: PathBuf,
    /// Held for each whole check-and-record, so a token admits one host even when two
    /// requests race.
    records: Mutex<Vec<TokenRecord>>,
}

impl Issuer {
    /// The issuer this host is configured with (`mesh.issuerDir`, else `<state-dir>/issuer`
    /// if it exists); it must chain to the same root(s) as the host's own credentials.
    pub fn load(cfg: &Config, roots: &[CertificateDer<'static>]) -> Result<Option<Self>, JoinError> {
        let dir = match &cfg.mesh.issuer_dir {
            Some(d) => d.clone(),
            None => {
                let d = cfg.state_dir.join(DEFAULT_ISSUER_DIR);
                if !d.join("ca.key").exists() {
                    return Ok(None);
                }
                d
            }
        };
        let ca = files::load_ca(&dir, SystemTime::now())?;
        if ca.bundle.as_slice() != roots {
            return Err(JoinError::Issuer {
                dir,
                why: "its bundle.pem is not this host's root (host/bundle.pem): a member issues \
                      only in its own trust domain, from credentials of the same root"
                    .into(),
            });
        }
        let tokens = cfg.state_dir.join(TOKENS_FILE);
        let records = files::load_tokens(&tokens)?;
        Ok(Some(Self { ca, tokens, records: Mutex::new(records) }))
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Vec<TokenRecord>> {
        // A panic while holding it left the records as they were before that call.
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps `records` (dropping long-expired ones) on disk before anything is answered.
    fn save(&self, records: &mut Vec<TokenRecord>, now: SystemTime) -> Result<(), JoinError> {
        let now = unix(now);
        records.retain(|r| r.expires_at.saturating_add(KEEP_EXPIRED) >= now);
        Ok(files::save_tokens(&self.tokens, records)?)
    }

    /// A new token valid `ttl` from `now`, for `node` only if given.
    pub fn create(
        &self,
        ttl: Duration,
        node: Option<&str>,
        now: SystemTime,
    ) -> Result<(JoinToken, JoinTokenInfo), JoinError> {
        if let Some(n) = node.filter(|n| !crate::identity::svid::role::is_node_name(n)) {
            return Err(TrustError::BadName(n.to_owned()).into());
        }
        let root = self.ca.bundle.first().ok_or_else(|| JoinError::Issuer {
            dir: self.ca.dir.clone(),
            why: "bundle.pem holds no root".into(),
        })?;
        let token = JoinToken::create(root)?;
        let record = TokenRecord::new(&token, now, ttl, node);
        let shown = info(&record);
        let mut records = self.records();
        records.push(record);
        if let Err(e) = self.save(&mut records, now) {
            records.pop();
            return Err(e);
        }
        Ok((token, shown))
    }

    pub fn list(&self) -> Vec<JoinTokenInfo> {
        self.records().iter().map(info).collect()
    }

    pub fn delete(&self, id: &str) -> Result<(), JoinError> {
        let mut records = self.records();
        let before = records.clone();
        records.retain(|r| r.id != id);
        if records.len() == before.len() {
            return Err(JoinError::UnknownToken(id.to_owned()));
        }
        if let Err(e) = self.save(&mut records, SystemTime::now()) {
            *records = before;
            return Err(e);
        }
        Ok(())
    }

    /// Checks a join request that came from `peer` and answers it (JSON), the token's use
    /// recorded on disk first; the error is what the joining host is told.
    pub fn admit(&self, peer: &PeerId, body: &[u8], now: SystemTime) -> Result<Vec<u8>, String> {
        let request: JoinRequest =
            serde_json::from_slice(body).map_err(|e| format!("malformed join request: {e}"))?;
        let mut records = self.records();
        let Some(i) = records.iter().position(|r| r.id == request.token_id) else {
            return Err("unknown token".into());
        };
        let mut record = records[i].clone();
        let response =
            flow::admit(&request, peer, &mut record, &self.ca, now, HOST_LIFETIME).map_err(|e| match e {
                TrustError::Join(reason) => reason,
                other => other.to_string(),
            })?;
        let before = std::mem::replace(&mut records[i], record);
        if let Err(e) = self.save(&mut records, now) {
            records[i] = before;
            return Err(format!("the member cannot record the token's use: {e}"));
        }
        serde_json::to_vec(&response).map_err(|e| e.to_string())
    }
}

/// `token create|list|delete` through the admin API.
pub async fn answer(issuer: Option<Arc<Issuer>>, action: TokenAction) -> Response {
    let Some(issuer) = issuer else {
        return Response::Error { message: JoinError::NoIssuer.to_string() };
    };
    let done = tokio::task::spawn_blocking(move || match action {
        TokenAction::Create { ttl_secs, node_name } => issuer
            .create(Duration::from_secs(ttl_secs), node_name.as_deref(), SystemTime::now())
            .map(|(token, info)| Response::JoinToken { token: token.to_string(), info }),
        TokenAction::List => Ok(Response::JoinTokens { items: issuer.list() }),
        TokenAction::Delete { id } => issuer.delete(&id).map(|()| Response::Done),
    })
    .await;
    match done {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Response::Error { message: e.to_string() },
        Err(e) => Response::Error { message: format!("token task failed: {e}") },
    }
}

/// `run --join TOKEN`: unless `<state-dir>/host/` already holds credentials (then it says
/// so and does nothing), joins through the bootstrap peers and writes them there.
pub async fn join(cfg: &Config, token: &JoinToken) -> Result<(), JoinError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(JoinError::NotRoot);
    }
    let host = cfg.state_dir.join(HOST_DIR);
    if host.join("node.key").exists() {
        tracing::info!(host = %host.display(), "this host has credentials already; ignoring --join");
        return Ok(());
    }
    let bootstrap: Vec<BootstrapAddr> = cfg.mesh.bootstrap_addrs()?;
    let node_name = cfg.mesh.node_name.clone().unwrap_or_else(files::default_node_name);
    let keypair = crate::mesh::trust::generate_keypair()?;
    let workload_key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TrustError::Generate)?;
    let request = flow::request(token, &node_name, &keypair, &workload_key)?;
    let body = serde_json::to_vec(&request).map_err(|e| TrustError::Join(e.to_string()))?;
    tracing::info!(node = %node_name, peer = %keypair.public().to_peer_id(), token = %hex_id(token), "joining the mesh");
    let answer = swarm::join_request(&bootstrap, keypair.clone(), body, JOIN_TIMEOUT).await?;
    let response: JoinResponse = serde_json::from_slice(&answer)
        .map_err(|e| TrustError::Join(format!("malformed answer from the member: {e}")))?;
    let joined = flow::accept(
        token,
        &request,
        &response,
        &keypair,
        &workload_key,
        &cfg.trust_domain,
        SystemTime::now(),
    )?;
    write(&cfg.state_dir, &keypair, &workload_key, &joined)?;
    tracing::info!(node = %node_name, host = %host.display(), "joined: credentials written");
    Ok(())
}

fn hex_id(token: &JoinToken) -> String {
    token.id.iter().map(|b| format!("{b:02x}")).collect()
}

fn write(
    state_dir: &Path,
    keypair: &libp2p::identity::Keypair,
    workload_key: &rcgen::KeyPair,
    joined: &flow::Joined,
) -> Result<(), JoinError> {
    let files = HostFiles {
        keypair,
        node_chain: &joined.node_chain,
        workload_key_pem: &workload_key.serialize_pem(),
        workload_chain: &joined.workload_chain,
        bundle: &joined.bundle,
    };
    Ok(files::write_host(state_dir, &files)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const TD: &str = "beemesh.local";

    /// A member's state dir with an issuer from a fresh root under `<state>/issuer`.
    fn member() -> (tempfile::TempDir, Config, Vec<CertificateDer<'static>>) {
        let tmp = tempfile::tempdir().expect("tmp");
        let now = SystemTime::now();
        let root = files::init_ca(&tmp.path().join("root"), TD, now).expect("root");
        let state = tmp.path().join("state");
        files::issue_issuer(&root, "ops", &state.join(DEFAULT_ISSUER_DIR), now).expect("issuer");
        let cfg = Config { state_dir: state, ..Config::default() };
        (tmp, cfg, root.bundle)
    }

    fn ask(token: &JoinToken, node: &str) -> (PeerId, Vec<u8>) {
        let keypair = crate::mesh::trust::generate_keypair().expect("key");
        let wk = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let req = flow::request(token, node, &keypair, &wk).expect("request");
        (keypair.public().to_peer_id(), serde_json::to_vec(&req).expect("json"))
    }

    #[test]
    fn a_token_admits_one_host_and_its_use_survives_a_restart() {
        let (_tmp, cfg, roots) = member();
        let issuer = Issuer::load(&cfg, &roots).expect("loads").expect("has an issuer");
        let (token, shown) = issuer.create(Duration::from_secs(600), None, SystemTime::now()).expect("token");
        assert!(!shown.used);
        let path = cfg.state_dir.join(TOKENS_FILE);
        let mode = std::fs::metadata(&path).expect("records").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let (peer, body) = ask(&token, "n1");
        let answer = issuer.admit(&peer, &body, SystemTime::now()).expect("admitted");
        let _: JoinResponse = serde_json::from_slice(&answer).expect("an answer");
        let again = ask(&token, "n2");
        assert_eq!(issuer.admit(&again.0, &again.1, SystemTime::now()), Err("token already used".into()));

        // Another agent process: the use was recorded before the answer left.
        let reloaded = Issuer::load(&cfg, &roots).expect("loads").expect("issuer");
        assert!(reloaded.list()[0].used);
        assert_eq!(reloaded.admit(&again.0, &again.1, SystemTime::now()), Err("token already used".into()));
        reloaded.delete(&shown.id).expect("deleted");
        assert!(reloaded.list().is_empty());
        assert!(matches!(reloaded.delete(&shown.id), Err(JoinError::UnknownToken(_))));
        assert_eq!(reloaded.admit(&again.0, &again.1, SystemTime::now()), Err("unknown token".into()));
        assert!(reloaded
            .admit(&again.0, b"{", SystemTime::now())
            .expect_err("garbage")
            .starts_with("malformed join request"));
    }

    #[test]
    fn an_issuer_of_another_root_and_bad_names_are_refused() {
        let (_tmp, cfg, _) = member();
        let other = Authority::generate(TD, SystemTime::now(), Duration::from_secs(86_400)).expect("root");
        let err = Issuer::load(&cfg, &[other.cert_der()]).expect_err("another root");
        assert!(err.to_string().contains("is not this host's root"), "{err}");

        let none = Config { state_dir: cfg.state_dir.join("elsewhere"), ..Config::default() };
        assert!(Issuer::load(&none, &[]).expect("no issuer is fine").is_none());
        let mut configured = none.clone();
        configured.mesh.issuer_dir = Some(cfg.state_dir.join("missing"));
        let err = Issuer::load(&configured, &[]).expect_err("a configured issuer must exist");
        assert!(err.to_string().contains("missing"), "{err}");

        let (_tmp2, cfg, roots) = member();
        let issuer = Issuer::load(&cfg, &roots).expect("loads").expect("issuer");
        assert!(matches!(
            issuer.create(Duration::from_secs(60), Some("Bad Name"), SystemTime::now()),
            Err(JoinError::Trust(TrustError::BadName(_)))
        ));
    }

    use crate::identity::svid::Authority;
}
