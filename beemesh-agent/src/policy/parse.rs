//! Policy file parsing: splits a policy.d file into YAML documents, dispatches each on its
//! `apiVersion`/`kind`, and turns every failure into a `file:line: field: reason` error.
//! Called by the agent's policy loader and by `beemesh-agent policy check`.

use std::path::Path;
use std::str::FromStr;

use beemesh_common::{PROTO_ANY, PROTO_TCP, PROTO_UDP};
use ipnet::{IpNet, Ipv4Net};

use super::model::{Policy, PortRange};
use super::{identity_policy, locate, network_policy};

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

/// A semantic error inside one document, before its line is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FieldError {
    /// Dotted path such as `spec.egress[0].to[1].cidr`.
    pub field: String,
    pub reason: String,
    /// Text to look for on the offending line (the bad value), if any.
    pub needle: Option<String>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into(), needle: None }
    }

    pub fn at(mut self, needle: impl Into<String>) -> Self {
        self.needle = Some(needle.into());
        self
    }
}

/// One YAML document of a file and the 0-based file line its first line is on.
struct Document<'a> {
    first_line: usize,
    text: std::borrow::Cow<'a, str>,
}

/// Splits on `---` (and `...`) markers ourselves rather than using serde_yaml's multi-document
/// deserializer: each document is parsed twice (untyped to dispatch on `kind`, then typed), and
/// errors must be located in the document's text, so we need each document's text and offset.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize; // byte offset of the current document
    let mut first_line = 0usize;
    let mut marker_rest: Option<String> = None;
    let mut offset = 0usize;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let is_start = bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t");
        let is_end = bare == "..." || bare.starts_with("... ");
        if is_start || is_end {
            push_document(&mut docs, &text[start..offset], first_line, marker_rest.take());
            start = offset + line.len();
            first_line = n + 1;
            if is_start && bare.len() > 3 {
                // Content after `--- ` belongs to the next document, on this very line.
                marker_rest = Some(format!("   {}", &line[3..]));
                first_line = n;
            }
        }
        offset += line.len();
    }
    push_document(&mut docs, &text[start..], first_line, marker_rest);
    docs
}

fn push_document<'a>(
    docs: &mut Vec<Document<'a>>,
    body: &'a str,
    first_line: usize,
    marker_rest: Option<String>,
) {
    let text = match marker_rest {
        Some(head) => std::borrow::Cow::Owned(head + body),
        None => std::borrow::Cow::Borrowed(body),
    };
    docs.push(Document { first_line, text });
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
        line: doc.first_line + locate::find_line(&doc.text, &e.field, e.needle.as_deref()),
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
            network_policy::check_unknown_fields(&value, &raw).map_err(invalid)?;
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

/// serde_yaml appends ` at line L column C` (relative to the document); the line is reported
/// separately, file-relative.
fn strip_location(message: &str) -> String {
    let mut out = message.to_owned();
    while let Some(at) = out.find(" at line ") {
        let tail = &out[at + " at line ".len()..];
        let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
        let n = digits(tail);
        let Some(after) = tail[n..].strip_prefix(" column ") else {
            break;
        };
        let m = digits(after);
        let cut_end = at + " at line ".len() + n + " column ".len() + m;
        out.replace_range(at..cut_end, "");
    }
    out
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

/// Validates one port entry shared by both kinds. `protocol` defaults to TCP; `ANY` is only
/// accepted when `allow_any` (beemesh's own kind).
pub(super) fn port_range(
    field: &str,
    protocol: Option<&str>,
    port: Option<&PortValue>,
    end_port: Option<i64>,
    allow_any: bool,
) -> Result<PortRange, FieldError> {
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
            return Err(FieldError::new(
                format!("{field}.port"),
                format!("named ports are not supported (got {name:?}, use a number)"),
            )
            .at(name.clone()))
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
    Ok(PortRange { proto, first, last })
}
