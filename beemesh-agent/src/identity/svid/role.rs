//! What a certificate of a beemesh trust domain is for, read from its SPIFFE id's path, so
//! that a workload SVID never passes as a host and a host never as a workload. Used by
//! [`super::verify`] (workload chains) and `mesh::trust` (host chains). Pure.
//!
//! | path | role | is a CA |
//! | --- | --- | --- |
//! | (none) | the trust domain's root | yes |
//! | `/beemesh/issuer/NAME` | an issuer: may issue host certificates | yes (pathlen 1) |
//! | `/beemesh/node/NAME` | a host (its libp2p key) | no |
//! | `/beemesh/node/NAME/workloads` | a host's issuing key for its workloads' SVIDs | yes (pathlen 0) |
//! | any other `/beemesh/...` | reserved: refused | - |
//! | anything else | a workload SVID | no |

/// The path prefix reserved for the mesh's own certificates; no workload id lives below it.
pub const RESERVED_PREFIX: &str = "/beemesh/";

/// A certificate's role in the trust domain (see the module table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role<'a> {
    /// The trust domain's root.
    Root,
    /// An issuer of host certificates, by name.
    Issuer(&'a str),
    /// A host, by node name.
    Host(&'a str),
    /// A host's issuing key for its workloads, by the host's node name.
    WorkloadCa(&'a str),
    /// A workload.
    Workload,
}

impl Role<'_> {
    /// What the role is called in error messages.
    pub fn describe(&self) -> &'static str {
        match self {
            Self::Root => "a trust domain root",
            Self::Issuer(_) => "a host issuer",
            Self::Host(_) => "a host certificate",
            Self::WorkloadCa(_) => "a host's workload issuer",
            Self::Workload => "a workload SVID",
        }
    }
}

/// The role of a SPIFFE id's path (already checked against the SPIFFE-ID spec); `None` for
/// a path below [`RESERVED_PREFIX`] that names no role.
pub fn role_of(path: &str) -> Option<Role<'_>> {
    if path.is_empty() {
        return Some(Role::Root);
    }
    if path == "/beemesh" {
        return None;
    }
    let Some(rest) = path.strip_prefix(RESERVED_PREFIX) else { return Some(Role::Workload) };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["issuer", name] => Some(Role::Issuer(name)),
        ["node", name] => Some(Role::Host(name)),
        ["node", name, "workloads"] => Some(Role::WorkloadCa(name)),
        _ => None,
    }
}

/// The path of a host certificate for `node`.
pub fn host_path(node: &str) -> String {
    format!("{RESERVED_PREFIX}node/{node}")
}

/// The path of `node`'s workload issuer.
pub fn workload_ca_path(node: &str) -> String {
    format!("{RESERVED_PREFIX}node/{node}/workloads")
}

/// The path of the issuer `name`.
pub fn issuer_path(name: &str) -> String {
    format!("{RESERVED_PREFIX}issuer/{name}")
}

/// A node or issuer name: one SPIFFE path segment that is also a usable host name,
/// `[a-z0-9]([a-z0-9.-]*[a-z0-9])?`, at most 63 characters.
pub fn is_node_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_follow_the_path() {
        assert_eq!(role_of(""), Some(Role::Root));
        assert_eq!(role_of("/ns/shop/sa/web"), Some(Role::Workload));
        assert_eq!(role_of("/node/worker-1"), Some(Role::Workload));
        assert_eq!(role_of("/beemesh/node/h1"), Some(Role::Host("h1")));
        assert_eq!(role_of("/beemesh/node/h1/workloads"), Some(Role::WorkloadCa("h1")));
        assert_eq!(role_of("/beemesh/issuer/ops"), Some(Role::Issuer("ops")));
        for reserved in
            ["/beemesh", "/beemesh/x", "/beemesh/node", "/beemesh/node/h1/other", "/beemesh/issuer/a/b"]
        {
            assert_eq!(role_of(reserved), None, "{reserved}");
        }
        assert_eq!(role_of(&host_path("h1")), Some(Role::Host("h1")));
        assert_eq!(role_of(&workload_ca_path("h1")), Some(Role::WorkloadCa("h1")));
        assert_eq!(role_of(&issuer_path("ops")), Some(Role::Issuer("ops")));
    }

    #[test]
    fn node_names_are_host_names() {
        for ok in ["h1", "worker-1", "a.b.c", "0"] {
            assert!(is_node_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a/b", "a_b", ".a", &"a".repeat(64)] {
            assert!(!is_node_name(bad), "{bad}");
        }
    }
}
