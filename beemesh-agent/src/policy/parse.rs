//! Policy file parsing: splits a policy.d file into YAML documents, dispatches each on its
//! `apiVersion`/`kind`, and turns every failure into a `file:line: field: reason` error.
//! Called by the agent's policy loader and by `beemesh-agent policy check`.

use std::path::Path;
use std::str::FromStr;

use beemesh_common::{PROTO_ANY, PROTO_TCP, PROTO_UDP};
use ipnet::{IpNet, Ipv4Net};

use super::model::{NamedPort, Policy, PortRange};
use super::{identity_policy, network_policy};
pub(super) use crate::yamldoc::FieldError;
use crate::yamldoc::{find_line, split_documents, strip_location, Document};

/// A policy file that cannot be loaded; always names the file and a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The YAML itself, or its shape (unknown field, wrong type), is wrong.
    #[error("{file}:{line}: {message}")]
    Syntax { file: String, line: usize, message: String },
    /// A value is well-formed YAML but not a valid policy (bad CIDR, glob, port, kind...).
    #[error("{file}:{line}: {field}: {reason}")]
    Invalid { file: String, line: usize, field: String, reason: String },
}

impl PolicyError {
    /// 1-based line in the file.
    pub fn line(&self) -> usize {
        match self {
            PolicyError::Syntax { line, .. } | PolicyError::Invalid { line, .. } => *line,
        }
    }
}

/// Parses one policy file (all documents, all-or-nothing).
pub fn parse_file(path: &Path, text: &str) -> Result<Vec<Policy>, PolicyError> {
    let file = path.display().to_string();
    let mut policies = Vec::new();
    for doc in split_documents(text) {
        if let Some(policy) = parse_document(&file, &doc)? {
            policies.push(policy);
        }
    }
    Ok(policies)
}

/// Validates a file for `beemesh-agent policy check`; returns how many policies it holds.
pub fn check(path: &Path, text: &str) -> Result<usize, PolicyError> {
    parse_file(path, text).map(|p| p.len())
}

fn parse_document(file: &str, doc: &Document<'_>) -> Result<Option<Policy>, PolicyError> {
    let syntax = |e: serde_yaml::Error| PolicyError::Syntax {
        file: file.to_owned(),
        line: doc.first_line + e.location().map_or(1, |l| l.line()),
        message: strip_location(&e.to_string()),
    };
    let invalid = |e: FieldError| PolicyError::Invalid {
        file: file.to_owned(),
        line: doc.first_line + find_line(&doc.text, &e.field, e.needle.as_deref()),
        field: e.field,
        reason: e.reason,
    };
    let value: serde_yaml::Value = serde_yaml::from_str(&doc.text).map_err(syntax)?;
    if value.is_null() {
        return Ok(None); // an empty document (comments only, trailing `---`)
    }
    let Some(map) = value.as_mapping() else {
        return Err(invalid(FieldError::new("(document)", "expected a mapping with apiVersion and kind")));
    };
    let field = |name: &str| -> Result<String, PolicyError> {
        match map.get(name) {
            Some(serde_yaml::Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(invalid(FieldError::new(name, "expected a string"))),
            None => Err(invalid(FieldError::new(name, "missing"))),
        }
    };
    let api_version = field("apiVersion")?;
    let kind = field("kind")?;
    let policy = match (kind.as_str(), api_version.as_str()) {
        ("IdentityPolicy", identity_policy::API_VERSION) => {
            let raw = serde_yaml::from_str(&doc.text).map_err(syntax)?;
            identity_policy::convert(raw).map_err(invalid)?
        }
        ("NetworkPolicy", network_policy::API_VERSION) => {
            let raw = serde_yaml::from_str(&doc.text).map_err(syntax)?;
            crate::yamldoc::check_unknown_fields(&value, &raw).map_err(invalid)?;
            network_policy::convert(raw).map_err(invalid)?
        }
        ("IdentityPolicy", _) | ("NetworkPolicy", _) => {
            let expected = if kind == "IdentityPolicy" {
                identity_policy::API_VERSION
            } else {
                network_policy::API_VERSION
            };
            return Err(invalid(
                FieldError::new(
                    "apiVersion",
                    format!("unsupported apiVersion {api_version:?} for kind {kind} (expected {expected})"),
                )
                .at(api_version.clone()),
            ));
        }
        _ => {
            return Err(invalid(
                FieldError::new(
                    "kind",
                    format!(
                        "unknown kind {kind:?} (apiVersion {api_version:?}): expected IdentityPolicy ({}) or NetworkPolicy ({})",
                        identity_policy::API_VERSION,
                        network_policy::API_VERSION
                    ),
                )
                .at(kind.clone()),
            ))
        }
    };
    Ok(Some(policy))
}

/// Parses a CIDR, canonicalising host bits away and IPv4-mapped IPv6 blocks to IPv4 (the
/// kernel trie stores IPv4 as IPv4-mapped, so both spellings are the same block).
pub(super) fn parse_cidr(field: &str, s: &str) -> Result<IpNet, FieldError> {
    let net =
        IpNet::from_str(s.trim()).map_err(|_| FieldError::new(field, format!("invalid CIDR {s:?}")).at(s))?;
    Ok(match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => {
                IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix 96..=128 maps to 0..=32"))
            }
            None => net,
        },
        _ => net,
    }
    .trunc())
}

/// Parses a cidr peer and its except blocks, which must lie inside it.
pub(super) fn parse_cidr_peer(
    field: &str,
    cidr: &str,
    except: &[String],
) -> Result<super::model::Peer, FieldError> {
    let net = parse_cidr(&format!("{field}.cidr"), cidr)?;
    let mut excepts = Vec::with_capacity(except.len());
    for (i, e) in except.iter().enumerate() {
        let f = format!("{field}.except[{i}]");
        let block = parse_cidr(&f, e)?;
        if !net.contains(&block) {
            return Err(FieldError::new(f, format!("except {block} is not inside {net}")).at(e));
        }
        excepts.push(block);
    }
    Ok(super::model::Peer::Cidr { net, except: excepts })
}

/// A port as written: a number or a (named port) string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PortValue {
    Number(i64),
    Name(String),
}

/// A rule's port entry: numbers, or a name resolved per workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RulePort {
    Range(PortRange),
    Named(NamedPort),
}

impl RulePort {
    /// Adds it to `rule`.
    pub(super) fn add_to(self, rule: &mut super::model::Rule) {
        match self {
            RulePort::Range(r) => rule.ports.push(r),
            RulePort::Named(n) => rule.named.push(n),
        }
    }
}

/// Validates one port entry shared by both kinds. `protocol` defaults to TCP; `ANY` is only
/// accepted when `allow_any` (beemesh's own kind). A named port is an IANA service name
/// (a container port's `name`), without `endPort`.
pub(super) fn port_range(
    field: &str,
    protocol: Option<&str>,
    port: Option<&PortValue>,
    end_port: Option<i64>,
    allow_any: bool,
) -> Result<RulePort, FieldError> {
    let proto = match protocol.unwrap_or("TCP") {
        "TCP" => PROTO_TCP,
        "UDP" => PROTO_UDP,
        "ANY" if allow_any => PROTO_ANY,
        "SCTP" => {
            return Err(
                FieldError::new(format!("{field}.protocol"), "protocol SCTP is not supported").at("SCTP")
            )
        }
        other => {
            let expected = if allow_any { "TCP, UDP or ANY" } else { "TCP or UDP" };
            return Err(FieldError::new(
                format!("{field}.protocol"),
                format!("unknown protocol {other:?} (expected {expected})"),
            )
            .at(other));
        }
    };
    let check = |f: String, n: i64| -> Result<u16, FieldError> {
        u16::try_from(n)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| FieldError::new(f, format!("port {n} out of range 1-65535")).at(n.to_string()))
    };
    let first = match port {
        None => 0,
        Some(PortValue::Number(n)) => check(format!("{field}.port"), *n)?,
        Some(PortValue::Name(name)) => {
            if !crate::manifest::is_port_name(name) {
                return Err(FieldError::new(
                    format!("{field}.port"),
                    format!("{name:?} is neither a port number nor a port name (at most 15 lowercase letters, digits and '-', with a letter)"),
                )
                .at(name.clone()));
            }
            if end_port.is_some() {
                return Err(FieldError::new(format!("{field}.endPort"), "endPort requires a numeric port"));
            }
            return Ok(RulePort::Named(NamedPort { proto, name: name.clone() }));
        }
    };
    let last = match end_port {
        None => first,
        Some(_) if first == 0 => {
            return Err(FieldError::new(format!("{field}.endPort"), "endPort requires port"))
        }
        Some(n) => {
            let last = check(format!("{field}.endPort"), n)?;
            if last < first {
                return Err(FieldError::new(
                    format!("{field}.endPort"),
                    format!("endPort {last} is below port {first}"),
                )
                .at(n.to_string()));
            }
            last
        }
    };
    Ok(RulePort::Range(PortRange { proto, first, last }))
}
