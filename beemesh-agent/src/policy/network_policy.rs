//! Kubernetes `networking.k8s.io/v1` `NetworkPolicy` support: conversion of the k8s-openapi
//! type into the normalised model with Kubernetes semantics, and the unknown-field check
//! k8s-openapi does not do. Called by the parser.

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::model::{
    LabelRequirement, LabelSelector, NamespaceMatch, Peer, Policy, PolicyKind, Rule, WorkloadSelector,
};
use super::parse::{parse_cidr_peer, port_range, FieldError, PortValue};
use crate::identity::{is_dns_label, is_dns_subdomain};

pub(super) const API_VERSION: &str = "networking.k8s.io/v1";

/// Namespace of a NetworkPolicy without `metadata.namespace`, as `kubectl apply` would use.
const DEFAULT_NAMESPACE: &str = "default";

pub(super) fn convert(np: NetworkPolicy) -> Result<Policy, FieldError> {
    let name = np.metadata.name.ok_or_else(|| FieldError::new("metadata.name", "missing"))?;
    if !is_dns_subdomain(&name) {
        return Err(FieldError::new(
            "metadata.name",
            format!("invalid name {name:?}: expected a DNS-1123 subdomain"),
        )
        .at(name));
    }
    let namespace = np.metadata.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    if !is_dns_label(&namespace) {
        return Err(FieldError::new(
            "metadata.namespace",
            format!("invalid namespace {namespace:?}: expected a DNS-1123 label"),
        )
        .at(namespace));
    }
    let spec = np.spec.unwrap_or_default();
    let selector = WorkloadSelector {
        identities: Vec::new(),
        namespaces: NamespaceMatch::Named(namespace.clone()),
        labels: label_selector("spec.podSelector", spec.pod_selector.as_ref())?,
    };
    // Kubernetes defaulting: Ingress always, Egress only if there are egress rules.
    let (mut isolate_ingress, mut isolate_egress) =
        (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty()));
    if let Some(types) = spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
        (isolate_ingress, isolate_egress) = (false, false);
        for (i, t) in types.iter().enumerate() {
            match t.as_str() {
                "Ingress" => isolate_ingress = true,
                "Egress" => isolate_egress = true,
                other => {
                    return Err(FieldError::new(
                        format!("spec.policyTypes[{i}]"),
                        format!("unknown policy type {other:?} (expected Ingress or Egress)"),
                    )
                    .at(other))
                }
            }
        }
    }
    let ingress = if isolate_ingress {
        let rules = spec.ingress.unwrap_or_default();
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.into_iter().enumerate() {
            let field = format!("spec.ingress[{i}]");
            out.push(rule(&field, "from", &namespace, r.from, r.ports)?);
        }
        Some(out)
    } else {
        None
    };
    let egress = if isolate_egress {
        let rules = spec.egress.unwrap_or_default();
        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.into_iter().enumerate() {
            let field = format!("spec.egress[{i}]");
            out.push(rule(&field, "to", &namespace, r.to, r.ports)?);
        }
        Some(out)
    } else {
        None
    };
    Ok(Policy {
        kind: PolicyKind::NetworkPolicy,
        namespace: Some(namespace),
        name,
        selector,
        ingress,
        egress,
    })
}

fn rule(
    field: &str,
    peers_key: &str,
    namespace: &str,
    peers: Option<Vec<NetworkPolicyPeer>>,
    ports: Option<Vec<NetworkPolicyPort>>,
) -> Result<Rule, FieldError> {
    let mut out = Rule { peers: Vec::new(), ports: Vec::new(), named: Vec::new() };
    for (i, p) in peers.unwrap_or_default().into_iter().enumerate() {
        out.peers.push(peer(&format!("{field}.{peers_key}[{i}]"), namespace, p)?);
    }
    for (i, p) in ports.unwrap_or_default().into_iter().enumerate() {
        let port = p.port.map(|v| match v {
            IntOrString::Int(n) => PortValue::Number(n.into()),
            IntOrString::String(s) => PortValue::Name(s),
        });
        port_range(
            &format!("{field}.ports[{i}]"),
            p.protocol.as_deref(),
            port.as_ref(),
            p.end_port.map(i64::from),
            false,
        )?
        .add_to(&mut out);
    }
    Ok(out)
}

fn peer(field: &str, namespace: &str, p: NetworkPolicyPeer) -> Result<Peer, FieldError> {
    if let Some(block) = p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(FieldError::new(
                field,
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            ));
        }
        let except = block.except.unwrap_or_default();
        return parse_cidr_peer(&format!("{field}.ipBlock"), &block.cidr, &except);
    }
    let namespaces = match &p.namespace_selector {
        Some(sel) => {
            NamespaceMatch::Labels(label_selector(&format!("{field}.namespaceSelector"), Some(sel))?)
        }
        None if p.pod_selector.is_some() => NamespaceMatch::Named(namespace.to_owned()),
        None => {
            return Err(FieldError::new(
                field,
                "a peer needs one of podSelector, namespaceSelector or ipBlock",
            ))
        }
    };
    Ok(Peer::Workloads(WorkloadSelector {
        identities: Vec::new(),
        namespaces,
        labels: label_selector(&format!("{field}.podSelector"), p.pod_selector.as_ref())?,
    }))
}

/// Kubernetes label selector; absent or `{}` selects everything.
fn label_selector(field: &str, sel: Option<&meta::LabelSelector>) -> Result<LabelSelector, FieldError> {
    let Some(sel) = sel else {
        return Ok(LabelSelector::default());
    };
    let mut out = sel.match_labels.as_ref().map(LabelSelector::from_map).unwrap_or_default();
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        let values = e.values.clone().unwrap_or_default();
        let key = e.key.clone();
        let req = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(FieldError::new(
                    format!("{f}.values"),
                    format!("operator {} needs values", e.operator),
                ))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(FieldError::new(
                    format!("{f}.values"),
                    format!("operator {} takes no values", e.operator),
                ))
            }
            "In" => LabelRequirement::In(key, values),
            "NotIn" => LabelRequirement::NotIn(key, values),
            "Exists" => LabelRequirement::Exists(key),
            "DoesNotExist" => LabelRequirement::DoesNotExist(key),
            other => {
                return Err(FieldError::new(
                    format!("{f}.operator"),
                    format!("unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"),
                )
                .at(other))
            }
        };
        out.requirements.push(req);
    }
    Ok(out)
}
