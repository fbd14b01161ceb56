//! What of the actor's pods survives an agent restart: `pods.json` records (manifest, uid,
//! pids, id range, container histories) and `pod-ids.json`'s cursor.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::pod::lifecycle;

/// One container's history in `pods.json`: restart count and last state survive an agent
/// restart; `run` is the last run an agent started (a replayed run up to it is not counted
/// again when re-adopted).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRecord {
    #[serde(flatten)]
    pub history: lifecycle::History,
    #[serde(default)]
    pub run: u64,
}

/// What survives a restart of the agent (`<state-dir>/pods.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub manifest: k8s_openapi::api::core::v1::Pod,
    pub workload: String,
    pub uid: String,
    pub created: u64,
    #[serde(default)]
    pub init_pid: Option<u32>,
    #[serde(default)]
    pub slirp_pid: Option<u32>,
    /// Deletion started (its grace period runs): survives an agent restart.
    #[serde(default)]
    pub deleting: bool,
    /// First host id of the pod's user-namespace range (65536 ids); kept across agent
    /// restarts. None for pods recorded before ranges existed (their ids are the host's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_base: Option<u32>,
    /// Per container: restart count, last state, back-off.
    #[serde(default)]
    pub containers: BTreeMap<String, ContainerRecord>,
    /// Placed here by the cluster state (false: applied to an agent from before pods were mesh
    /// objects; such a pod is written to the state instead of being deleted).
    #[serde(default)]
    pub in_state: bool,
}

/// `pod-ids.json`: the id range handed out last, so that round-robin allocation resumes
/// after it when the agent starts again (a freed range is reused as late as possible).
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct IdCursor {
    #[serde(default)]
    pub last_id_base: Option<u32>,
}
