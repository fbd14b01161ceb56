//! Shared handling of user YAML files (policy.d files, Kubernetes manifests): splitting a
//! file into documents with their line offsets, locating a field's line for error messages,
//! and strict decoding (k8s-openapi ignores unknown fields; we reject them).

mod locate;

pub(crate) use locate::find_line;

/// A semantic error inside one document, before its line is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
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
pub(crate) struct Document<'a> {
    pub(crate) first_line: usize,
    pub(crate) text: std::borrow::Cow<'a, str>,
}

/// Splits on `---` (and `...`) markers ourselves rather than using serde_yaml's multi-document
/// deserializer: each document is parsed twice (untyped to dispatch on `kind`, then typed), and
/// errors must be located in the document's text, so we need each document's text and offset.
pub(crate) fn split_documents(text: &str) -> Vec<Document<'_>> {
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

/// serde_yaml appends ` at line L column C` (relative to the document); the line is reported
/// separately, file-relative.
pub(crate) fn strip_location(message: &str) -> String {
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

/// k8s-openapi silently ignores unknown fields; Kubernetes' strict decoding (and beemesh's
/// own kind) rejects them. A field is unknown if it does not survive a round trip through the
/// typed value.
pub(crate) fn check_unknown_fields<T: serde::Serialize>(
    original: &serde_yaml::Value,
    parsed: &T,
) -> Result<(), FieldError> {
    unknown_fields(original, parsed).into_iter().next().map_or(Ok(()), Err)
}

/// Every field of `original` that `parsed` (its typed decoding) does not have, in document
/// order.
pub(crate) fn unknown_fields<T: serde::Serialize>(
    original: &serde_yaml::Value,
    parsed: &T,
) -> Vec<FieldError> {
    let mut out = Vec::new();
    match serde_json::to_value(parsed) {
        Ok(typed) => collect_unknown(original, &typed, "", &mut out),
        Err(e) => out.push(FieldError::new("(document)", e.to_string())),
    }
    out
}

fn collect_unknown(
    original: &serde_yaml::Value,
    typed: &serde_json::Value,
    path: &str,
    out: &mut Vec<FieldError>,
) {
    match (original, typed) {
        (serde_yaml::Value::Mapping(map), serde_json::Value::Object(obj)) => {
            for (k, v) in map {
                let Some(key) = k.as_str() else { continue };
                if v.is_null() {
                    continue;
                }
                let field = if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
                match obj.get(key) {
                    Some(t) => collect_unknown(v, t, &field, out),
                    None => out
                        .push(FieldError::new(field, format!("unknown field `{key}`")).at(format!("{key}:"))),
                }
            }
        }
        (serde_yaml::Value::Sequence(items), serde_json::Value::Array(typed_items)) => {
            for (i, (v, t)) in items.iter().zip(typed_items).enumerate() {
                collect_unknown(v, t, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}
