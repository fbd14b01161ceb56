//! Identity policy: parsing of the YAML files users drop into `/etc/beemesh/policy.d`
//! (beemesh `IdentityPolicy` and Kubernetes `NetworkPolicy`) and their compilation into the
//! kernel's allow, isolation and CIDR maps. Sans-IO: the agent reads the files and loads the
//! maps; `beemesh-agent policy check` calls [`check`].

mod compile;
mod identity_policy;
mod model;
mod network_policy;
mod parse;
mod render;
pub mod watch;

#[cfg(test)]
mod compile_tests;
#[cfg(test)]
mod parse_tests;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::identity::SpiffeId;

pub use compile::{compile, CompileError, CompileOptions, CompiledPolicy, RuleInfo};
pub use model::{
    IdentityGlob, LabelRequirement, LabelSelector, NamedPort, NamespaceMatch, Peer, Policy, PolicyKind,
    PortRange, Rule, WorkloadPort, WorkloadSelector, NAMESPACE_NAME_LABEL,
};
pub use parse::{check, parse_file, PolicyError};

/// Checks a NetworkPolicy applied to the mesh as a policy.d file's would be (the manifest
/// parser calls this, so that what the policy engine would refuse is refused at apply).
pub(crate) fn validate_network_policy(
    np: &k8s_openapi::api::networking::v1::NetworkPolicy,
) -> Result<(), crate::yamldoc::FieldError> {
    network_policy::convert(np.clone()).map(|_| ())
}

/// A NetworkPolicy applied to the mesh, as the compiler takes it.
pub(crate) fn convert_network_policy(
    np: k8s_openapi::api::networking::v1::NetworkPolicy,
) -> Result<Policy, crate::yamldoc::FieldError> {
    network_policy::convert(np)
}

/// A workload as the compiler sees it: its numeric id (from the identity registry), its
/// identity and its labels.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub id: u32,
    pub identity: SpiffeId,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its named container ports (every pod of the identity's), for rules' named ports.
    #[serde(default)]
    pub ports: Vec<WorkloadPort>,
}

/// The policies parsed from one file of policy.d.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFile {
    pub path: PathBuf,
    pub policies: Vec<Policy>,
}
