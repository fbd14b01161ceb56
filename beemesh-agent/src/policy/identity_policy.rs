//! beemesh's own `IdentityPolicy` kind (`beemesh.io/v1alpha1`): its YAML shape, strict about
//! unknown fields, and its conversion into the normalised model. Called by the parser.

use std::collections::BTreeMap;

use beemesh_common::{ID_HOST, ID_WORLD};
use serde::Deserialize;

use super::model::{IdentityGlob, LabelSelector, Peer, Policy, PolicyKind, Rule, WorkloadSelector};
use super::parse::{parse_cidr_peer, port_range, FieldError, PortValue};
use crate::identity::is_dns_subdomain;

pub(super) const API_VERSION: &str = "beemesh.io/v1alpha1";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Document {
    #[allow(dead_code)] // checked by the dispatcher before this shape is parsed
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    /// Accepted for tooling, not used.
    #[serde(default)]
    #[allow(dead_code)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    selector: Option<Selector>,
    #[serde(default)]
    ingress: Option<Vec<IngressRule>>,
    #[serde(default)]
    egress: Option<Vec<EgressRule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Selector {
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IngressRule {
    #[serde(default)]
    from: Option<Vec<PeerDoc>>,
    #[serde(default)]
    ports: Option<Vec<PortDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EgressRule {
    #[serde(default)]
    to: Option<Vec<PeerDoc>>,
    #[serde(default)]
    ports: Option<Vec<PortDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerDoc {
    identity: Option<String>,
    cidr: Option<String>,
    except: Option<Vec<String>>,
    entity: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortDoc {
    port: Option<PortField>,
    end_port: Option<i64>,
    protocol: Option<String>,
}

/// `port: 8080` or (rejected later, with a clear message) `port: http`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortField {
    Number(i64),
    Name(String),
}

pub(super) fn convert(doc: Document) -> Result<Policy, FieldError> {
    let name = doc.metadata.name;
    if !is_dns_subdomain(&name) {
        return Err(FieldError::new(
            "metadata.name",
            format!("invalid name {name:?}: expected a DNS-1123 subdomain"),
        )
        .at(name));
    }
    let selector = doc.spec.selector.unwrap_or_default();
    let mut identities = Vec::with_capacity(selector.identities.len());
    for (i, pattern) in selector.identities.iter().enumerate() {
        let glob = IdentityGlob::parse(pattern).map_err(|reason| {
            FieldError::new(format!("spec.selector.identities[{i}]"), reason).at(pattern.clone())
        })?;
        identities.push(glob);
    }
    let selector = WorkloadSelector {
        identities,
        labels: LabelSelector::from_map(&selector.labels),
        ..WorkloadSelector::default()
    };
    let ingress = doc
        .spec
        .ingress
        .map(|rules| {
            rules
                .into_iter()
                .enumerate()
                .map(|(i, r)| rule(&format!("spec.ingress[{i}]"), "from", r.from, r.ports))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let egress = doc
        .spec
        .egress
        .map(|rules| {
            rules
                .into_iter()
                .enumerate()
                .map(|(i, r)| rule(&format!("spec.egress[{i}]"), "to", r.to, r.ports))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    Ok(Policy { kind: PolicyKind::IdentityPolicy, namespace: None, name, selector, ingress, egress })
}

fn rule(
    field: &str,
    peers_key: &str,
    peers: Option<Vec<PeerDoc>>,
    ports: Option<Vec<PortDoc>>,
) -> Result<Rule, FieldError> {
    let peers = peers
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, p)| peer(&format!("{field}.{peers_key}[{i}]"), p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Rule { peers, ports: Vec::new(), named: Vec::new() };
    for (i, p) in ports.unwrap_or_default().into_iter().enumerate() {
        let port = p.port.map(|v| match v {
            PortField::Number(n) => PortValue::Number(n),
            PortField::Name(s) => PortValue::Name(s),
        });
        port_range(&format!("{field}.ports[{i}]"), p.protocol.as_deref(), port.as_ref(), p.end_port, true)?
            .add_to(&mut out);
    }
    Ok(out)
}

fn peer(field: &str, p: PeerDoc) -> Result<Peer, FieldError> {
    let forms = [p.identity.is_some(), p.cidr.is_some(), p.entity.is_some()];
    if forms.iter().filter(|x| **x).count() != 1 {
        return Err(FieldError::new(field, "a peer needs exactly one of identity, cidr or entity"));
    }
    if p.except.is_some() && p.cidr.is_none() {
        return Err(FieldError::new(format!("{field}.except"), "except is only allowed with cidr"));
    }
    if let Some(pattern) = p.identity {
        let glob = IdentityGlob::parse(&pattern)
            .map_err(|reason| FieldError::new(format!("{field}.identity"), reason).at(pattern.clone()))?;
        return Ok(Peer::Workloads(WorkloadSelector {
            identities: vec![glob],
            ..WorkloadSelector::default()
        }));
    }
    if let Some(cidr) = p.cidr {
        return parse_cidr_peer(field, &cidr, &p.except.unwrap_or_default());
    }
    match p.entity.as_deref() {
        Some("host") => Ok(Peer::Entity(ID_HOST)),
        Some("world") => Ok(Peer::Entity(ID_WORLD)),
        Some("all") => Ok(Peer::Any),
        other => {
            let other = other.unwrap_or_default();
            Err(FieldError::new(
                format!("{field}.entity"),
                format!("unknown entity {other:?} (expected host, world or all)"),
            )
            .at(other))
        }
    }
}
