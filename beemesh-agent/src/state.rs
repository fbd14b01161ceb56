//! The agent's persistent state under `--state-dir`: identity allocations and workload
//! records, written atomically (temp file + rename) so a crash never leaves half a file.

use std::path::{Path, PathBuf};

use crate::identity::svid::Authority;
use crate::identity::IdentityRegistry;
use crate::workload::WorkloadTable;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt ({reason}); move it away to start fresh")]
    Corrupt { path: PathBuf, reason: String },
}

#[derive(Debug, Clone)]
pub struct StateFiles {
    dir: PathBuf,
}

impl StateFiles {
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    fn read(&self, name: &str) -> Result<Option<String>, StateError> {
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StateError::Io { path, source }),
        }
    }

    fn write(&self, name: &str, text: &str) -> Result<(), StateError> {
        let path = self.dir.join(name);
        let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = path.with_file_name(format!(".{file}.tmp"));
        let err = |source| StateError::Io { path: path.clone(), source };
        // Owner-only: the state holds Secrets (objects.json).
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        std::io::Write::write_all(&mut f, text.as_bytes()).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
    }

    fn good_policy_path(&self, file_name: &str) -> PathBuf {
        self.dir.join("policy-good").join(file_name)
    }

    /// Keeps the text of a policy file that parsed, so that after a restart a file that has
    /// since turned invalid still contributes its last good version.
    pub fn save_good_policy(&self, file_name: &str, text: &str) -> Result<(), StateError> {
        let dir = self.dir.join("policy-good");
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io { path: dir.clone(), source })?;
        let path = self.good_policy_path(file_name);
        let tmp = dir.join(format!(".{file_name}.tmp"));
        std::fs::write(&tmp, text).map_err(|source| StateError::Io { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &path).map_err(|source| StateError::Io { path, source })
    }

    pub fn load_good_policy(&self, file_name: &str) -> Option<String> {
        std::fs::read_to_string(self.good_policy_path(file_name)).ok()
    }

    /// Names of the files whose last good version is kept.
    pub fn good_policy_names(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("policy-good"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn forget_good_policy(&self, file_name: &str) {
        let _ = std::fs::remove_file(self.good_policy_path(file_name));
    }

    pub fn load_identities(&self) -> Result<IdentityRegistry, StateError> {
        match self.read("identities.json")? {
            None => Ok(IdentityRegistry::new()),
            Some(text) => IdentityRegistry::from_json(&text).map_err(|e| StateError::Corrupt {
                path: self.dir.join("identities.json"),
                reason: e.to_string(),
            }),
        }
    }

    pub fn save_identities(&self, reg: &IdentityRegistry) -> Result<(), StateError> {
        self.write("identities.json", &reg.to_json())
    }

    pub fn load_workloads(&self) -> Result<WorkloadTable, StateError> {
        match self.read("workloads.json")? {
            None => Ok(WorkloadTable::default()),
            Some(text) => WorkloadTable::from_json(&text).map_err(|e| StateError::Corrupt {
                path: self.dir.join("workloads.json"),
                reason: e.to_string(),
            }),
        }
    }

    pub fn save_workloads(&self, table: &WorkloadTable) -> Result<(), StateError> {
        self.write("workloads.json", &table.to_json())
    }

    /// A mesh of one's self-made root, kept in `<state-dir>/ca/` (`ca.pem`, `ca.key`,
    /// owner-only); made on first start (ten years). Used only when the host has no
    /// credentials from `ca issue-host` (`mesh::trust::files::load_host`).
    pub fn load_or_create_authority(&self, trust_domain: &str) -> Result<Authority, StateError> {
        let dir = self.dir.join("ca");
        let (cert, key) = (dir.join("ca.pem"), dir.join("ca.key"));
        let corrupt = |path: &Path, reason: String| StateError::Corrupt { path: path.to_path_buf(), reason };
        if cert.exists() || key.exists() {
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|source| StateError::Io { path: p.to_path_buf(), source })
            };
            let authority = Authority::from_pem(&read(&cert)?, &read(&key)?)
                .map_err(|e| corrupt(&cert, e.to_string()))?;
            if authority.trust_domain() != trust_domain {
                let why = format!(
                    "it signs for trust domain {}, the agent is configured for {trust_domain}",
                    authority.trust_domain()
                );
                return Err(corrupt(&cert, why));
            }
            return Ok(authority);
        }
        let lifetime = std::time::Duration::from_secs(10 * 365 * 86_400);
        let authority = Authority::generate(trust_domain, std::time::SystemTime::now(), lifetime)
            .map_err(|e| corrupt(&cert, e.to_string()))?;
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io { path: dir.clone(), source })?;
        self.write("ca/ca.key", &authority.key_pem())?;
        self.write("ca/ca.pem", &authority.cert_pem())?;
        Ok(authority)
    }

    /// Loads a JSON state file (`pods.json`, `objects.json`); missing means empty.
    pub fn load_json<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> Result<T, StateError> {
        match self.read(name)? {
            None => Ok(T::default()),
            Some(text) => serde_json::from_str(&text)
                .map_err(|e| StateError::Corrupt { path: self.dir.join(name), reason: e.to_string() }),
        }
    }

    pub fn save_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let text = serde_json::to_string(value)
            .map_err(|e| StateError::Corrupt { path: self.dir.join(name), reason: e.to_string() })?;
        self.write(name, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_is_made_once_kept_private_and_checked_against_the_trust_domain() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let s = StateFiles::new(dir.path());
        let first = s.load_or_create_authority("beemesh.local").expect("created");
        let again = s.load_or_create_authority("beemesh.local").expect("loaded");
        assert_eq!(first.cert_pem(), again.cert_pem(), "the same authority across restarts");
        let mode = std::fs::metadata(dir.path().join("ca/ca.key")).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(s.load_or_create_authority("other.example"), Err(StateError::Corrupt { .. })));
        std::fs::write(dir.path().join("ca/ca.key"), "not a key").expect("write");
        assert!(matches!(s.load_or_create_authority("beemesh.local"), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn round_trip_and_corruption_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = StateFiles::new(dir.path());
        assert!(s.load_workloads().expect("missing is empty").is_empty());
        let mut reg = IdentityRegistry::new();
        let id =
            reg.allocate(&"spiffe://beemesh.local/ns/a/sa/b".parse().expect("valid")).expect("allocates");
        s.save_identities(&reg).expect("writes");
        let back = s.load_identities().expect("reads");
        assert_eq!(
            back.spiffe_of(id).map(ToString::to_string).as_deref(),
            Some("spiffe://beemesh.local/ns/a/sa/b")
        );
        std::fs::write(dir.path().join("workloads.json"), "{nope").expect("write");
        assert!(matches!(s.load_workloads(), Err(StateError::Corrupt { .. })));
    }
}
