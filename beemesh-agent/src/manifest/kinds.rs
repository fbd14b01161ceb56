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
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if let Some(ip) = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty() && *ip != "None") {
        if ip.parse::<std::net::IpAddr>().is_err() {
            return Err(FieldError::new(
                at("spec.clusterIP"),
                format!("{ip:?} is not an IP address (or None for a headless Service)"),
            )
            .at(ip));
        }
    }
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
