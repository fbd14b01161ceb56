//! The agent's persistent state under `--state-dir`: identity allocations and workload
//! records, written atomically (temp file + rename) so a crash never leaves half a file.

use std::path::{Path, PathBuf};

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
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let err = |source| StateError::Io { path: path.clone(), source };
        std::fs::write(&tmp, text).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
