//! The CA and host directories on disk: what `ca init|issue-host|issue-issuer|revoke-host`
//! write and what the agent loads at start ([`load_host`]). Every problem names its file.
//!
//! A CA directory (0700; the root's is kept offline) holds `ca.pem` (the signing
//! certificate: the root, or an issuer), `ca.key` (its PKCS#8 key, 0600), `bundle.pem` (the
//! root), `hosts/<name>.pem` (host certificates issued from it, to revoke them by key) and
//! `revocations/<name>-<secs>.pem`.
//!
//! A host's credentials live in `<state-dir>/host/` (0700): `node.key` (the libp2p ed25519
//! keypair, protobuf encoding, 0600), `node.pem` (host certificate, then its issuer if not
//! the root), `workloads.pem` (the host's workload issuer, then its issuer if not the root),
//! `workloads.key` (its PKCS#8 key, 0600), `bundle.pem` (the root). Without `node.key` the
//! agent is a mesh of one: its self-made root in `<state-dir>/ca/` (made on first start)
//! issues its workloads' SVIDs and its host certificate, for a key kept in
//! `<state-dir>/ca/node.key`.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use libp2p_identity::{Keypair, PeerId};
use rustls_pki_types::CertificateDer;

use super::{issue, HostIdentity, HostTrust, Revocation, SignedRevocation, TrustError};
use crate::identity::svid::{self, Authority, Svid};

/// Where a host's credentials live below the state directory.
pub const HOST_DIR: &str = "host";

/// A root lives ten years, an issuer five, a host's certificates one.
pub const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Lifetime of an issuer made by `ca issue-issuer`.
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(5 * 365 * 86_400);
/// Default lifetime of a host certificate and its workload issuer.
pub const HOST_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// A mesh of one's node name: the host name, made a valid node name (lowercase, other
/// characters replaced by `-`, at most 63), or `node` when nothing is left.
pub fn default_node_name() -> String {
    let host = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    node_name_from(&host)
}

fn node_name_from(host: &str) -> String {
    let mapped: String = host
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
        .take(63)
        .collect();
    let name = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if svid::role::is_node_name(name) {
        name.to_owned()
    } else {
        "node".to_owned()
    }
}

fn file_err(path: &Path, reason: impl ToString) -> TrustError {
    TrustError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

fn make_dir(dir: &Path) -> Result<(), TrustError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| file_err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| file_err(dir, e))
}

/// Writes `bytes` to `path` with `mode`, atomically (temporary file, then rename).
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TrustError> {
    let name = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| file_err(&tmp, e))?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(|e| file_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_err(path, e))
}

fn read(path: &Path) -> Result<Vec<u8>, TrustError> {
    std::fs::read(path).map_err(|e| file_err(path, e))
}

/// Reads a secret file, refusing one that others than its owner may read.
fn read_secret(path: &Path) -> Result<Vec<u8>, TrustError> {
    let meta = std::fs::metadata(path).map_err(|e| file_err(path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(file_err(
            path,
            format!(
                "mode {:o}: a key must be readable by its owner only (0600)",
                meta.permissions().mode() & 0o777
            ),
        ));
    }
    read(path)
}

/// The certificates of a PEM file, in order; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let blocks = pem::parse_many(read(path)?).map_err(|e| file_err(path, e.to_string().to_lowercase()))?;
    if blocks.is_empty() {
        return Err(file_err(path, "no PEM certificate"));
    }
    blocks
        .into_iter()
        .map(|b| match b.tag() {
            "CERTIFICATE" => Ok(CertificateDer::from(b.into_contents())),
            other => Err(file_err(path, format!("expected CERTIFICATE blocks, found {other}"))),
        })
        .collect()
}

fn certs_pem(certs: &[CertificateDer<'_>]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    let blocks: Vec<pem::Pem> = certs.iter().map(|c| pem::Pem::new("CERTIFICATE", c.to_vec())).collect();
    pem::encode_many_config(&blocks, config)
}

fn load_authority(cert: &Path, key: &Path) -> Result<Authority, TrustError> {
    let key_text = String::from_utf8(read_secret(key)?).map_err(|_| file_err(key, "not PEM text"))?;
    let cert_text = String::from_utf8(read(cert)?).map_err(|_| file_err(cert, "not PEM text"))?;
    Authority::from_pem(&cert_text, &key_text).map_err(|e| file_err(cert, e))
}

/// A CA directory loaded: the signing authority (root or issuer), the chain to send along
/// with what it signs (empty for a root, the issuer's certificate otherwise), the root.
#[derive(Debug)]
pub struct CaDir {
    /// The directory.
    pub dir: PathBuf,
    /// The signing authority.
    pub authority: Authority,
    /// Intermediates from the authority up to (not including) the root.
    pub chain: Vec<CertificateDer<'static>>,
    /// The root certificate(s).
    pub bundle: Vec<CertificateDer<'static>>,
}

/// `ca init`: a new root for `trust_domain` in `dir` (made 0700), valid ten years. Refuses a
/// directory that already holds a key.
pub fn init_ca(dir: &Path, trust_domain: &str, now: SystemTime) -> Result<CaDir, TrustError> {
    let key = dir.join("ca.key");
    if key.exists() {
        return Err(file_err(&key, "already exists: a CA directory is initialised once"));
    }
    let root = Authority::generate(trust_domain, now, ROOT_LIFETIME)?;
    make_dir(dir)?;
    write_file(&key, root.key_pem().as_bytes(), 0o600)?;
    write_file(&dir.join("ca.pem"), root.cert_pem().as_bytes(), 0o644)?;
    write_file(&dir.join("bundle.pem"), root.cert_pem().as_bytes(), 0o644)?;
    let bundle = vec![root.cert_der()];
    Ok(CaDir { dir: dir.to_path_buf(), authority: root, chain: Vec::new(), bundle })
}

/// Loads a CA directory (a root's or an issuer's) and checks that its authority chains to
/// its bundle at `now`.
pub fn load_ca(dir: &Path, now: SystemTime) -> Result<CaDir, TrustError> {
    let cert_path = dir.join("ca.pem");
    let authority = load_authority(&cert_path, &dir.join("ca.key"))?;
    let bundle = read_certs(&dir.join("bundle.pem"))?;
    let certs = read_certs(&cert_path)?;
    let chain = match issue::ca_kind(&authority).map_err(|e| file_err(&cert_path, e))? {
        issue::CaKind::Root => {
            if !bundle.contains(&authority.cert_der()) {
                return Err(file_err(&dir.join("bundle.pem"), "does not hold the root in ca.pem"));
            }
            Vec::new()
        }
        issue::CaKind::Issuer(_) => {
            // Check it the way hosts will: a throwaway host certificate must verify.
            let probe = super::generate_keypair()?;
            let cert = issue::host_cert(&authority, "probe", &probe.public(), now, Duration::from_secs(60))
                .map_err(|e| file_err(&cert_path, e))?;
            super::verify_host(&[cert, certs[0].clone()], &bundle, authority.trust_domain(), now)
                .map_err(|e| file_err(&cert_path, format!("does not chain to bundle.pem: {e}")))?;
            certs[..1].to_vec()
        }
        issue::CaKind::WorkloadCa(_) => {
            return Err(file_err(&cert_path, "a host's workload issuer, not a CA directory"));
        }
    };
    Ok(CaDir { dir: dir.to_path_buf(), authority, chain, bundle })
}

/// `ca issue-host`: a new ed25519 key for host `name`, its host certificate and its workload
/// issuer from `ca`, written to `<state_dir>/host/` with the root as bundle; the host
/// certificate is also recorded in the CA directory (`hosts/<name>.pem`). Refuses to
/// overwrite a host key. Returns the host's PeerId.
pub fn issue_host(
    ca: &CaDir,
    name: &str,
    state_dir: &Path,
    now: SystemTime,
    ttl: Duration,
) -> Result<PeerId, TrustError> {
    let dir = state_dir.join(HOST_DIR);
    let key_path = dir.join("node.key");
    if key_path.exists() {
        return Err(file_err(&key_path, "already exists: this state directory has host credentials"));
    }
    let keypair = super::generate_keypair()?;
    let cert = issue::host_cert(&ca.authority, name, &keypair.public(), now, ttl)?;
    let workloads = issue::workload_ca(&ca.authority, name, now, ttl)?;
    let node_chain: Vec<_> = std::iter::once(cert.clone()).chain(ca.chain.iter().cloned()).collect();
    let workload_chain: Vec<_> =
        std::iter::once(workloads.cert_der()).chain(ca.chain.iter().cloned()).collect();
    // What the agent will load must verify before anything is written.
    HostIdentity::new(keypair.clone(), node_chain.clone(), &ca.bundle, ca.authority.trust_domain(), now)?;

    let host = HostFiles {
        keypair: &keypair,
        node_chain: &node_chain,
        workload_key_pem: &workloads.key_pem(),
        workload_chain: &workload_chain,
        bundle: &ca.bundle,
    };
    write_host(state_dir, &host)?;
    let hosts = ca.dir.join("hosts");
    make_dir(&hosts)?;
    write_file(&hosts.join(format!("{name}.pem")), certs_pem(&[cert]).as_bytes(), 0o644)?;
    Ok(keypair.public().to_peer_id())
}

/// What `<state-dir>/host/` holds (see the module doc).
#[derive(Debug)]
pub struct HostFiles<'a> {
    /// The host's libp2p keypair.
    pub keypair: &'a Keypair,
    /// Host certificate, then its issuer if not the root.
    pub node_chain: &'a [CertificateDer<'static>],
    /// The workload issuer's PKCS#8 key, PEM.
    pub workload_key_pem: &'a str,
    /// The workload issuer's certificate, then its issuer if not the root.
    pub workload_chain: &'a [CertificateDer<'static>],
    /// The root(s).
    pub bundle: &'a [CertificateDer<'static>],
}

/// Writes a host's credentials into `<state_dir>/host/` (0700; keys 0600), `node.key` last
/// (its presence is what makes the agent load the rest). Refuses to overwrite a key.
pub fn write_host(state_dir: &Path, host: &HostFiles<'_>) -> Result<(), TrustError> {
    let dir = state_dir.join(HOST_DIR);
    let key_path = dir.join("node.key");
    if key_path.exists() {
        return Err(file_err(&key_path, "already exists: this state directory has host credentials"));
    }
    // A state directory made here is searchable (0711, as `run` makes it): pods with their own
    // id range reach their files through it. Only `host/` is private.
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(state_dir)
            .map_err(|e| file_err(state_dir, e))?;
    }
    make_dir(&dir)?;
    let encoded = host.keypair.to_protobuf_encoding().map_err(|_| TrustError::NotEd25519)?;
    write_file(&dir.join("workloads.key"), host.workload_key_pem.as_bytes(), 0o600)?;
    write_file(&dir.join("workloads.pem"), certs_pem(host.workload_chain).as_bytes(), 0o644)?;
    write_file(&dir.join("node.pem"), certs_pem(host.node_chain).as_bytes(), 0o644)?;
    write_file(&dir.join("bundle.pem"), certs_pem(host.bundle).as_bytes(), 0o644)?;
    write_file(&key_path, &encoded, 0o600)
}

/// `ca issue-issuer`: an issuer `name` from the root `ca`, written as a CA directory `out`
/// (`ca.pem`, `ca.key`, `bundle.pem`). Refuses a directory that already holds a key.
pub fn issue_issuer(ca: &CaDir, name: &str, out: &Path, now: SystemTime) -> Result<(), TrustError> {
    let key = out.join("ca.key");
    if key.exists() {
        return Err(file_err(&key, "already exists"));
    }
    let issuer = issue::issuer_ca(&ca.authority, name, now, ISSUER_LIFETIME)?;
    make_dir(out)?;
    write_file(&key, issuer.key_pem().as_bytes(), 0o600)?;
    write_file(&out.join("ca.pem"), issuer.cert_pem().as_bytes(), 0o644)?;
    write_file(&out.join("bundle.pem"), certs_pem(&ca.bundle).as_bytes(), 0o644)?;
    Ok(())
}

/// `ca revoke-host`: a revocation of host `name` made at `now`, signed by `ca`; names the
/// key and serial too when this CA directory issued the host (`hosts/<name>.pem`).
pub fn revoke_host(ca: &CaDir, name: &str, now: SystemTime) -> Result<SignedRevocation, TrustError> {
    if !svid::role::is_node_name(name) {
        return Err(TrustError::BadName(name.to_owned()));
    }
    let recorded = ca.dir.join("hosts").join(format!("{name}.pem"));
    let (peer, serial) = if recorded.exists() {
        let cert = read_certs(&recorded)?.remove(0);
        let (peer, _) = super::leaf_peer(&cert).map_err(|e| file_err(&recorded, e))?;
        let (_, serial) = super::leaf_issue(&cert).map_err(|e| file_err(&recorded, e))?;
        (Some(peer.to_string()), Some(serial))
    } else {
        (None, None)
    };
    let revoked_at = now.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let revocation = Revocation {
        trust_domain: ca.authority.trust_domain().to_owned(),
        node: name.to_owned(),
        peer,
        serial,
        revoked_at,
    };
    SignedRevocation::sign(&revocation, &ca.authority)
}

/// Writes a revocation's PEM text to `path` (its directory made 0700 if missing).
pub fn write_revocation(path: &Path, revocation: &SignedRevocation) -> Result<(), TrustError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        make_dir(dir)?;
    }
    write_file(path, revocation.to_pem().as_bytes(), 0o644)
}

/// A member's join-token records (`<state-dir>/mesh/join-tokens.json`, 0600: they hold the
/// tokens' secrets); none when the file does not exist.
pub fn load_tokens(path: &Path) -> Result<Vec<super::join::TokenRecord>, TrustError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&read_secret(path)?).map_err(|e| file_err(path, e))
}

/// Writes a member's join-token records (atomically, 0600; the directory made 0700).
pub fn save_tokens(path: &Path, records: &[super::join::TokenRecord]) -> Result<(), TrustError> {
    if let Some(dir) = path.parent().filter(|d| !d.exists()) {
        make_dir(dir)?;
    }
    let text = serde_json::to_vec_pretty(records).map_err(|e| file_err(path, e))?;
    write_file(path, &text, 0o600)
}

/// What signs this host's workload SVIDs: the host's workload issuer (or, in a mesh of one,
/// the self-made root), the intermediates to send after each leaf, and the bundle.
#[derive(Debug)]
pub struct WorkloadIssuer {
    authority: Authority,
    chain: Vec<CertificateDer<'static>>,
    bundle: Vec<CertificateDer<'static>>,
}

impl WorkloadIssuer {
    /// `authority` with the intermediates above it (`chain`, its own certificate first) and
    /// the roots.
    pub fn new(
        authority: Authority,
        chain: Vec<CertificateDer<'static>>,
        bundle: Vec<CertificateDer<'static>>,
    ) -> Self {
        Self { authority, chain, bundle }
    }

    /// A leaf SVID for `spiffe_uri` (see [`Authority::issue`]).
    pub fn issue(&self, spiffe_uri: &str, now: SystemTime, ttl: Duration) -> Result<Svid, TrustError> {
        Ok(self.authority.issue(spiffe_uri, now, ttl)?)
    }

    /// The intermediates to append after the leaf (empty in a mesh of one), PEM.
    pub fn chain_pem(&self) -> String {
        certs_pem(&self.chain)
    }

    /// The leaf followed by the intermediates, PEM: what `svid.pem` holds.
    pub fn svid_chain_pem(&self, svid: &Svid) -> String {
        svid.cert_pem() + &self.chain_pem()
    }

    /// The roots, PEM: what `bundle.pem` holds.
    pub fn bundle_pem(&self) -> String {
        certs_pem(&self.bundle)
    }

    /// The intermediates, DER.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The roots, DER.
    pub fn bundle(&self) -> &[CertificateDer<'static>] {
        &self.bundle
    }
}

/// Everything the agent needs of its trust domain at start.
#[derive(Debug)]
pub struct HostCredentials {
    /// The host's identity (the swarm's keypair and what it attests with).
    pub identity: HostIdentity,
    /// The trust store checking other hosts.
    pub trust: HostTrust,
    /// What signs this host's workload SVIDs.
    pub workloads: WorkloadIssuer,
    /// Whether they were issued by `ca issue-host` (false: a mesh of one, self-made root).
    pub issued: bool,
}

/// Loads the host's credentials from `<state_dir>/host/` when `node.key` is there (the
/// trust domain must be `trust_domain`; the node name is the certificate's), else makes a
/// mesh of one: the self-made root of `<state_dir>/ca/` (made on first start), a node key
/// in `<state_dir>/ca/node.key` (made on first start) and a host certificate for
/// `node_name` issued at `now`.
pub fn load_host(
    state_dir: &Path,
    trust_domain: &str,
    node_name: &str,
    now: SystemTime,
) -> Result<HostCredentials, TrustError> {
    let dir = state_dir.join(HOST_DIR);
    let key_path = dir.join("node.key");
    if !key_path.exists() {
        return self_made(state_dir, trust_domain, node_name, now);
    }
    let keypair = Keypair::from_protobuf_encoding(&read_secret(&key_path)?)
        .map_err(|e| file_err(&key_path, format!("not a libp2p keypair: {e}")))?;
    if keypair.key_type() != libp2p_identity::KeyType::Ed25519 {
        return Err(file_err(&key_path, TrustError::NotEd25519));
    }
    let bundle_path = dir.join("bundle.pem");
    let bundle = read_certs(&bundle_path)?;
    for root in &bundle {
        let uri = svid::spiffe_uri_of(root).map_err(|e| file_err(&bundle_path, e))?;
        if uri != format!("spiffe://{trust_domain}") {
            return Err(file_err(
                &bundle_path,
                format!("root {uri}: the agent is configured for trust domain {trust_domain} (trustDomain)"),
            ));
        }
    }
    let node_path = dir.join("node.pem");
    let identity = HostIdentity::new(keypair, read_certs(&node_path)?, &bundle, trust_domain, now)
        .map_err(|e| file_err(&node_path, e))?;
    let workloads_path = dir.join("workloads.pem");
    let authority = load_authority(&workloads_path, &dir.join("workloads.key"))?;
    let workload_chain = read_certs(&workloads_path)?;
    match issue::ca_kind(&authority).map_err(|e| file_err(&workloads_path, e))? {
        issue::CaKind::WorkloadCa(n) if n == identity.node_name() => {}
        other => {
            return Err(file_err(
                &workloads_path,
                format!("{other:?} is not the workload issuer of node {}", identity.node_name()),
            ))
        }
    }
    let workloads = WorkloadIssuer { authority, chain: workload_chain, bundle: bundle.clone() };
    // The issuer must produce SVIDs that verify as peers will check them.
    let probe = workloads
        .issue(&format!("spiffe://{trust_domain}/ns/default/sa/default"), now, Duration::from_secs(60))
        .map_err(|e| file_err(&workloads_path, e))?;
    let chain: Vec<_> =
        std::iter::once(probe.cert_der.clone()).chain(workloads.chain.iter().cloned()).collect();
    svid::verify(&chain, &bundle, trust_domain, svid::PeerRole::Client, now)
        .map_err(|e| file_err(&workloads_path, format!("its SVIDs do not verify: {e}")))?;
    let trust = HostTrust::new(trust_domain, bundle);
    Ok(HostCredentials { identity, trust, workloads, issued: true })
}

fn self_made(
    state_dir: &Path,
    trust_domain: &str,
    node_name: &str,
    now: SystemTime,
) -> Result<HostCredentials, TrustError> {
    let state = crate::state::StateFiles::new(state_dir);
    let ca_dir = state_dir.join("ca");
    let authority = state.load_or_create_authority(trust_domain).map_err(|e| file_err(&ca_dir, e))?;
    let key_path = ca_dir.join("node.key");
    let keypair = if key_path.exists() {
        Keypair::from_protobuf_encoding(&read_secret(&key_path)?)
            .map_err(|e| file_err(&key_path, format!("not a libp2p keypair: {e}")))?
    } else {
        let keypair = super::generate_keypair()?;
        let encoded = keypair.to_protobuf_encoding().map_err(|_| TrustError::NotEd25519)?;
        write_file(&key_path, &encoded, 0o600)?;
        keypair
    };
    let identity = HostIdentity::self_made(&authority, keypair, node_name, now, HOST_LIFETIME)
        .map_err(|e| file_err(&key_path, e))?;
    let bundle = vec![authority.cert_der()];
    let trust = HostTrust::new(trust_domain, bundle.clone());
    let workloads = WorkloadIssuer { authority, chain: Vec::new(), bundle };
    Ok(HostCredentials { identity, trust, workloads, issued: false })
}

#[cfg(test)]
mod tests {
    use super::node_name_from;

    #[test]
    fn host_names_become_node_names() {
        assert_eq!(node_name_from("worker-1"), "worker-1");
        assert_eq!(node_name_from("Build_Box.local"), "build-box.local");
        assert_eq!(node_name_from("-x-"), "x");
        assert_eq!(node_name_from(""), "node");
        assert_eq!(node_name_from("___"), "node");
        assert_eq!(node_name_from(&"a".repeat(80)).len(), 63);
    }
}
