//! Workloads: process trees the agent placed in a cgroup of its subtree, each with a SPIFFE
//! identity and labels. The table is sans-IO (decides what to create, adopt and reap, with
//! `now` passed in); `WorkloadCgroups` is its driver for cgroupfs. Owned by the agent actor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::SpiffeId;
use crate::sys::cgroup;

/// How long a workload may stay empty after creation before it is reaped (the CLI joins it
/// right after creating it; a workload nobody joined is garbage).
pub const JOIN_GRACE_SECS: u64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("invalid workload name {0:?}: use lowercase letters, digits and '-', at most 63")]
    InvalidName(String),
    #[error("workload {0:?} already exists")]
    Exists(String),
    #[error("no workload named {0:?}")]
    NotFound(String),
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One workload, as persisted in `<state>/workloads.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub name: String,
    pub identity: SpiffeId,
    /// Numeric identity in the kernel maps.
    pub id: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// cgroup2 id of the workload's cgroup.
    pub cgroup_id: u64,
    /// Unix seconds.
    pub created: u64,
    /// Set once a process has been seen inside; from then on an empty cgroup means done.
    #[serde(default)]
    pub joined: bool,
}

/// Checks a workload name (a DNS-1123 label, as Kubernetes object names).
pub fn validate_name(name: &str) -> Result<(), WorkloadError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(WorkloadError::InvalidName(name.to_string()))
    }
}

/// The workloads this agent owns.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkloadTable {
    workloads: BTreeMap<String, Workload>,
    next_serial: u64,
}

impl WorkloadTable {
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain data always serialises")
    }

    /// A fresh unique name for a workload created without one.
    pub fn generate_name(&mut self, identity: &SpiffeId) -> String {
        loop {
            self.next_serial += 1;
            let base: String =
                identity.service_account().chars().map(|c| if c == '.' { '-' } else { c }).take(40).collect();
            let name = format!("{}-{}", base.trim_end_matches('-'), self.next_serial);
            if !self.workloads.contains_key(&name) {
                return name;
            }
        }
    }

    pub fn insert(&mut self, w: Workload) -> Result<(), WorkloadError> {
        validate_name(&w.name)?;
        if self.workloads.contains_key(&w.name) {
            return Err(WorkloadError::Exists(w.name));
        }
        self.workloads.insert(w.name.clone(), w);
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Result<Workload, WorkloadError> {
        self.workloads.remove(name).ok_or_else(|| WorkloadError::NotFound(name.to_string()))
    }

    /// A process is inside now: from here on an empty cgroup means the workload is done.
    pub fn mark_joined(&mut self, name: &str) -> Result<(), WorkloadError> {
        let w = self.workloads.get_mut(name).ok_or_else(|| WorkloadError::NotFound(name.to_string()))?;
        w.joined = true;
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Workload> {
        self.workloads.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    pub fn len(&self) -> usize {
        self.workloads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty()
    }

    /// Records what the driver observed and returns the workloads that are finished: joined
    /// once and now empty, or never joined within the grace period.
    pub fn reap(&mut self, populated: &BTreeMap<String, bool>, now: u64) -> Vec<String> {
        let mut done = Vec::new();
        for w in self.workloads.values_mut() {
            match populated.get(&w.name) {
                Some(true) => w.joined = true,
                Some(false) if w.joined => done.push(w.name.clone()),
                Some(false) if now.saturating_sub(w.created) > JOIN_GRACE_SECS => done.push(w.name.clone()),
                Some(false) => {}
                // The cgroup vanished under us.
                None => done.push(w.name.clone()),
            }
        }
        done
    }
}

/// cgroupfs side of workloads: one child cgroup per workload under the agent's root.
#[derive(Debug, Clone)]
pub struct WorkloadCgroups {
    root: PathBuf,
}

impl WorkloadCgroups {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn err(path: &Path) -> impl FnOnce(std::io::Error) -> WorkloadError + '_ {
        move |source| WorkloadError::Cgroup { path: path.to_path_buf(), source }
    }

    /// Creates the root (if needed) and returns its cgroup id.
    pub fn ensure_root(&self) -> Result<(), WorkloadError> {
        std::fs::create_dir_all(&self.root).map_err(Self::err(&self.root))
    }

    /// Creates the workload's cgroup and returns its id.
    pub fn create(&self, name: &str) -> Result<u64, WorkloadError> {
        validate_name(name)?;
        let path = self.path(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Left over from an earlier life: start clean.
                cgroup::remove_cgroup_tree(&path).map_err(Self::err(&path))?;
                std::fs::create_dir(&path).map_err(Self::err(&path))?;
            }
            Err(e) => return Err(Self::err(&path)(e)),
        }
        cgroup::cgroup_id(&path).map_err(Self::err(&path))
    }

    /// Kills everything in the workload's cgroup and removes it.
    pub fn destroy(&self, name: &str) -> Result<(), WorkloadError> {
        let path = self.path(name);
        cgroup::remove_cgroup_tree(&path).map_err(Self::err(&path))
    }

    /// Id of an existing workload cgroup, `None` if it is gone.
    pub fn existing_id(&self, name: &str) -> Option<u64> {
        cgroup::cgroup_id(&self.path(name)).ok()
    }

    pub fn populated(&self, name: &str) -> std::io::Result<bool> {
        cgroup::is_populated(&self.path(name))
    }

    /// Cgroup ids of every cgroup nested under the workload's (not its own).
    pub fn descendant_ids(&self, name: &str) -> Vec<u64> {
        fn walk(dir: &Path, depth: usize, out: &mut Vec<u64>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for e in entries.filter_map(Result::ok) {
                if depth < 16 && e.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Ok(id) = cgroup::cgroup_id(&e.path()) {
                        out.push(id);
                    }
                    walk(&e.path(), depth + 1, out);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path(name), 0, &mut out);
        out
    }

    /// Names of the child cgroups present under the root.
    pub fn children(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl(name: &str, created: u64) -> Workload {
        Workload {
            name: name.into(),
            identity: "spiffe://beemesh.local/ns/shop/sa/web".parse().expect("valid"),
            id: 300,
            labels: BTreeMap::new(),
            cgroup_id: 42,
            created,
            joined: false,
        }
    }

    #[test]
    fn names_are_dns_labels() {
        assert!(validate_name("web-1").is_ok());
        for bad in ["", "Web", "-a", "a-", "a/b", "..", &"x".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn reaping_waits_for_join_then_for_empty() {
        let mut t = WorkloadTable::default();
        t.insert(wl("a", 100)).expect("new");
        t.insert(wl("b", 100)).expect("new");
        assert!(matches!(t.insert(wl("a", 100)), Err(WorkloadError::Exists(_))));
        let obs = |a, b| BTreeMap::from([("a".to_string(), a), ("b".to_string(), b)]);
        assert!(t.reap(&obs(false, false), 110).is_empty(), "grace period");
        assert!(t.reap(&obs(true, false), 111).is_empty());
        assert_eq!(t.reap(&obs(false, false), 112), vec!["a".to_string()]);
        assert_eq!(t.reap(&obs(true, false), 100 + JOIN_GRACE_SECS + 1), vec!["b".to_string()]);
        assert_eq!(t.reap(&BTreeMap::new(), 0).len(), 2, "vanished cgroups are reaped");
    }

    #[test]
    fn generated_names_are_unique_and_valid() {
        let mut t = WorkloadTable::default();
        let id: SpiffeId = "spiffe://beemesh.local/ns/shop/sa/web.api".parse().expect("valid");
        let a = t.generate_name(&id);
        t.insert(wl(&a, 0)).expect("valid");
        let b = t.generate_name(&id);
        assert_ne!(a, b);
        validate_name(&b).expect("valid");
        let round = WorkloadTable::from_json(&t.to_json()).expect("round trip");
        assert_eq!(round.len(), 1);
    }
}
