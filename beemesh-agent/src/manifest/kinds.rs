//! The kinds `apply` accepts, how the API names them (`deployment.apps`, kubectl's resource
//! names, used in `apply`'s lines and `get`'s errors), and the checks of a Service that the
//! k8s-openapi type cannot make.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::join;
use crate::identity::is_dns_label;
use crate::yamldoc::FieldError;

/// One kind `apply` accepts.
#[derive(Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: &'static str,
    pub api_version: &'static str,
    /// kubectl's singular resource name with its group: `deployment.apps`.
    pub resource: &'static str,
    /// The plural, as the API's NotFound errors say it: `deployments.apps`.
    pub plural: &'static str,
    /// `false` for cluster-scoped kinds (Namespace).
    pub namespaced: bool,
}

const fn kind(
    kind: &'static str,
    api_version: &'static str,
    resource: &'static str,
    plural: &'static str,
    namespaced: bool,
) -> KindInfo {
    KindInfo { kind, api_version, resource, plural, namespaced }
}

/// Every kind of a manifest, in the order `supported()` lists them.
pub const KINDS: &[KindInfo] = &[
    kind("Pod", "v1", "pod", "pods", true),
    kind("ConfigMap", "v1", "configmap", "configmaps", true),
    kind("Secret", "v1", "secret", "secrets", true),
    kind("Namespace", "v1", "namespace", "namespaces", false),
    kind("Service", "v1", "service", "services", true),
    kind(
        "NetworkPolicy",
        "networking.k8s.io/v1",
        "networkpolicy.networking.k8s.io",
        "networkpolicies.networking.k8s.io",
        true,
    ),
    kind("Deployment", "apps/v1", "deployment.apps", "deployments.apps", true),
    kind("StatefulSet", "apps/v1", "statefulset.apps", "statefulsets.apps", true),
    kind("ReplicaSet", "apps/v1", "replicaset.apps", "replicasets.apps", true),
    kind("DaemonSet", "apps/v1", "daemonset.apps", "daemonsets.apps", true),
    // Kept as written; the pods that name it run as its identity
    // (`spiffe://<td>/ns/<ns>/sa/<name>`), with an SVID rather than a token.
    kind("ServiceAccount", "v1", "serviceaccount", "serviceaccounts", true),
    kind("Job", "batch/v1", "job.batch", "jobs.batch", true),
    kind("CronJob", "batch/v1", "cronjob.batch", "cronjobs.batch", true),
    // Honoured by evictions (`drain`), `app::controllers::disruption`.
    kind(
        "PodDisruptionBudget",
        "policy/v1",
        "poddisruptionbudget.policy",
        "poddisruptionbudgets.policy",
        true,
    ),
    // A local volume on the host it binds to (`app::controllers::claims`).
    kind("PersistentVolumeClaim", "v1", "persistentvolumeclaim", "persistentvolumeclaims", true),
    // Kept as written: whatever its provisioner, a claim of any class is a local volume.
    kind(
        "StorageClass",
        "storage.k8s.io/v1",
        "storageclass.storage.k8s.io",
        "storageclasses.storage.k8s.io",
        false,
    ),
];

pub fn kind_info(kind: &str) -> Option<&'static KindInfo> {
    KINDS.iter().find(|k| k.kind == kind)
}

/// `v1 Pod, ..., apps/v1 StatefulSet` for error messages.
pub(super) fn supported() -> String {
    KINDS.iter().map(|k| format!("{} {}", k.api_version, k.kind)).collect::<Vec<_>>().join(", ")
}

/// DNS-1035 label (Service names): like a DNS-1123 label, but starting with a letter.
pub(super) fn is_dns1035_label(s: &str) -> bool {
    is_dns_label(s) && s.starts_with(|c: char| c.is_ascii_lowercase())
}

/// IANA service name (named ports): at most 15 lowercase letters, digits and '-', at least one
/// letter, no leading, trailing or doubled '-'.
pub fn is_port_name(s: &str) -> bool {
    s.len() <= 15 && is_dns_label(s) && !s.contains("--") && s.bytes().any(|b| b.is_ascii_lowercase())
}

/// A Service as the tunnels issue will serve it: ClusterIP (or headless, `clusterIP: None`) or
/// NodePort, TCP/UDP ports, a selector of labels.
pub(super) fn validate_service(svc: &Service, prefix: &str) -> Result<(), FieldError> {
    let at = |f: &str| join(prefix, f);
    let spec = svc.spec.clone().unwrap_or_default();
    let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
    if !matches!(ty, "ClusterIP" | "NodePort") {
        return Err(FieldError::new(
            at("spec.type"),
            format!("type {ty} is not supported by beemesh (ClusterIP, NodePort)"),
        )
        .at(ty));
    }
    if let Some(affinity) = spec.session_affinity.as_deref().filter(|a| *a != "None") {
        return Err(FieldError::new(
            at("spec.sessionAffinity"),
            format!("{affinity}: beemesh spreads every connection over the backends (None only)"),
        )
        .at(affinity));
    }
    let headless = spec.cluster_ip.as_deref() == Some("None")
        || spec.cluster_ips.as_ref().and_then(|ips| ips.first()).map(String::as_str) == Some("None");
    let ips = spec.cluster_ip.iter().map(|ip| ("spec.clusterIP".to_owned(), ip));
    let listed = spec.cluster_ips.iter().flatten().enumerate();
    for (field, ip) in ips.chain(listed.map(|(i, ip)| (format!("spec.clusterIPs[{i}]"), ip))) {
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(_)) => {
                return Err(FieldError::new(at(&field), format!("{ip:?}: {NOT_IPV6}")).at(ip.clone()))
            }
            Err(_) if !ip.is_empty() && ip != "None" => {
                return Err(FieldError::new(
                    at(&field),
                    format!("{ip:?} is not an IP address (or None for a headless Service)"),
                )
                .at(ip.clone()))
            }
            _ => {}
        }
    }
    validate_families(&spec, &at)?;
    validate_traffic_policies(&spec, ty, &at)?;
    if headless && ty == "NodePort" {
        return Err(FieldError::new(
            at("spec.clusterIP"),
            "a NodePort Service cannot be headless (clusterIP: None)",
        ));
    }
    let ports = spec.ports.unwrap_or_default();
    if ports.is_empty() && !headless {
        return Err(FieldError::new(at("spec.ports"), "a Service needs at least one port (unless headless)"));
    }
    let (mut names, mut seen) = (BTreeSet::new(), BTreeSet::new());
    for (i, p) in ports.iter().enumerate() {
        let f = at(&format!("spec.ports[{i}]"));
        let valid = |n: i32| (1..=65535).contains(&n);
        if !valid(p.port) {
            return Err(FieldError::new(format!("{f}.port"), format!("{}: ports are 1-65535", p.port)));
        }
        let proto = p.protocol.as_deref().unwrap_or("TCP");
        if proto != "TCP" && proto != "UDP" {
            return Err(
                FieldError::new(format!("{f}.protocol"), format!("{proto}: only TCP and UDP")).at(proto)
            );
        }
        if !seen.insert((p.port, proto)) {
            return Err(FieldError::new(
                format!("{f}.port"),
                format!("{proto} port {} is listed twice", p.port),
            ));
        }
        match &p.name {
            Some(name) if !is_dns_label(name) || !names.insert(name.as_str()) => {
                return Err(FieldError::new(
                    format!("{f}.name"),
                    format!("invalid or repeated port name {name:?}"),
                )
                .at(name.clone()))
            }
            None if ports.len() > 1 => {
                return Err(FieldError::new(
                    format!("{f}.name"),
                    "every port needs a name when there are several",
                ))
            }
            _ => {}
        }
        match &p.target_port {
            Some(IntOrString::Int(n)) if !valid(*n) => {
                return Err(FieldError::new(format!("{f}.targetPort"), format!("{n}: ports are 1-65535")))
            }
            Some(IntOrString::String(s)) if !is_port_name(s) => {
                return Err(FieldError::new(
                    format!("{f}.targetPort"),
                    format!("{s:?} is neither a port number nor a port name"),
                )
                .at(s.clone()))
            }
            _ => {}
        }
        if let Some(n) = p.node_port {
            if ty != "NodePort" {
                return Err(FieldError::new(
                    format!("{f}.nodePort"),
                    "only a NodePort Service has node ports",
                ));
            }
            if !valid(n) {
                return Err(FieldError::new(format!("{f}.nodePort"), format!("{n}: ports are 1-65535")));
            }
        }
    }
    Ok(())
}

/// Why an IPv6 cluster IP or family is refused, as Kubernetes refuses a family its cluster
/// is not configured for.
const NOT_IPV6: &str = "not configured on this mesh: its cluster IPs are IPv4 (single-stack; \
     IPv6 sockets reach Services by their IPv4-mapped addresses)";

/// `spec.clusterIPs`, `spec.ipFamilies` and `spec.ipFamilyPolicy` on a single-stack IPv4 mesh,
/// checked as a single-stack Kubernetes cluster checks them: `SingleStack` and
/// `PreferDualStack` (which falls back to one family) are accepted with IPv4, and whatever
/// needs a second family or IPv6 is refused.
fn validate_families(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    at: &impl Fn(&str) -> String,
) -> Result<(), FieldError> {
    let policy = spec.ip_family_policy.as_deref();
    match policy {
        None | Some("SingleStack" | "PreferDualStack") => {}
        Some("RequireDualStack") => {
            return Err(FieldError::new(
                at("spec.ipFamilyPolicy"),
                "RequireDualStack: this mesh is not configured for dual-stack Services (its cluster IPs are IPv4; SingleStack or PreferDualStack)",
            )
            .at("RequireDualStack"))
        }
        Some(other) => {
            return Err(FieldError::new(
                at("spec.ipFamilyPolicy"),
                format!("{other:?}: supported values: SingleStack, PreferDualStack, RequireDualStack"),
            )
            .at(other))
        }
    }
    let families = spec.ip_families.as_deref().unwrap_or_default();
    for (i, family) in families.iter().enumerate() {
        let field = at(&format!("spec.ipFamilies[{i}]"));
        match family.as_str() {
            "IPv4" if i == 0 => {}
            "IPv4" => return Err(FieldError::new(field, "IPv4 is listed twice").at(family.clone())),
            "IPv6" => return Err(FieldError::new(field, format!("IPv6: {NOT_IPV6}")).at(family.clone())),
            other => {
                return Err(
                    FieldError::new(field, format!("{other:?}: supported values: IPv4, IPv6")).at(other)
                )
            }
        }
    }
    let ips = spec.cluster_ips.as_deref().unwrap_or_default();
    if ips.len() > 1 {
        return Err(FieldError::new(
            at("spec.clusterIPs"),
            "a second cluster IP needs dual-stack, which this mesh is not configured for (one IPv4 address, \"\" or None)",
        ));
    }
    if let (Some(first), Some(ip)) = (ips.first(), spec.cluster_ip.as_deref()) {
        if first != ip && !first.is_empty() && !ip.is_empty() {
            return Err(FieldError::new(
                at("spec.clusterIPs[0]"),
                format!("{first:?} must be the same as spec.clusterIP ({ip:?})"),
            )
            .at(first.clone()));
        }
    }
    Ok(())
}

/// `spec.internalTrafficPolicy` (any Service with a cluster IP) and
/// `spec.externalTrafficPolicy` (a NodePort Service's): `Cluster` spreads connections over
/// every endpoint of the mesh, `Local` only over the endpoints on the host the connection
/// enters (`services::endpoints::ServicePort::serving`).
fn validate_traffic_policies(
    spec: &k8s_openapi::api::core::v1::ServiceSpec,
    ty: &str,
    at: &impl Fn(&str) -> String,
) -> Result<(), FieldError> {
    for (field, value) in [
        ("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref()),
        ("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref()),
    ] {
        match value {
            None | Some("Cluster" | "Local") => {}
            Some(other) => {
                return Err(FieldError::new(
                    at(field),
                    format!("{other:?}: supported values: Cluster, Local"),
                )
                .at(other))
            }
        }
    }
    if spec.external_traffic_policy.is_some() && ty != "NodePort" {
        return Err(FieldError::new(
            at("spec.externalTrafficPolicy"),
            format!(
                "may only be set for a Service reachable from outside the mesh (type NodePort), not {ty}"
            ),
        ));
    }
    Ok(())
}
