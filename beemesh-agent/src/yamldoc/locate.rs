//! Best-effort search of the line a field path (`spec.egress[0].to[1].cidr`) points to in a
//! YAML document's text. serde_yaml's `Value` carries no positions, so semantic errors found
//! after deserialisation are located here. Called by the policy and manifest parsers.

/// One step of a field path.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(field: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in field.split('.') {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some((n, tail)) = rest.split_once(']') {
            if let Ok(n) = n.parse() {
                out.push(Step::Index(n));
            }
            rest = tail.strip_prefix('[').unwrap_or(tail);
        }
    }
    out
}

/// A line of the document, with its indentation and content after any `- ` item markers.
struct Line<'a> {
    indent: usize,
    /// Column where `content` starts (after `- ` markers).
    content_col: usize,
    content: &'a str,
    is_item: bool,
}

fn parse_line(raw: &str) -> Option<Line<'_>> {
    let indent = raw.len() - raw.trim_start().len();
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let mut content = raw.trim_start();
    let mut content_col = indent;
    let mut is_item = false;
    while let Some(rest) = content.strip_prefix('-').filter(|r| r.is_empty() || r.starts_with([' ', '\t'])) {
        is_item = true;
        let skipped = rest.len() - rest.trim_start().len();
        content_col += 1 + skipped;
        content = rest.trim_start();
    }
    Some(Line { indent, content_col, content: content.trim_end(), is_item })
}

fn is_key_line(content: &str, key: &str) -> bool {
    [format!("{key}:"), format!("\"{key}\":"), format!("'{key}':")]
        .iter()
        .any(|k| content.starts_with(k.as_str()))
}

/// 1-based line (relative to `text`) of `field`, refined by `needle` (the offending value).
pub(crate) fn find_line(text: &str, field: &str, needle: Option<&str>) -> usize {
    let raw: Vec<&str> = text.lines().collect();
    let lines: Vec<Option<Line<'_>>> = raw.iter().map(|l| parse_line(l)).collect();
    let needle_from = |from: usize| -> Option<usize> {
        let needle = needle?;
        (from..raw.len()).find(|&i| raw[i].contains(needle))
    };
    let mut pos = 0usize; // the line the path has been followed to
    let mut inclusive = true; // whether a key on `pos` itself may be the next step
    let mut walked = true;
    let steps = steps(field);
    let mut next = 0;
    while next < steps.len() {
        let step = &steps[next];
        let key_at = |key: &str| {
            let from = if inclusive { pos } else { pos + 1 };
            (from..raw.len()).find(|&i| lines[i].as_ref().is_some_and(|l| is_key_line(l.content, key)))
        };
        let found = match step {
            // A key may hold dots itself (`data.tls.crt`, `app.kubernetes.io/name`): the
            // shortest run of the path's keys that is a key of the document.
            Step::Key(_) => (next..steps.len())
                .map_while(|end| {
                    let keys: Option<Vec<&str>> = steps[next..=end]
                        .iter()
                        .map(|s| match s {
                            Step::Key(k) => Some(*k),
                            Step::Index(_) => None,
                        })
                        .collect();
                    keys.map(|k| (end, k.join(".")))
                })
                .find_map(|(end, key)| key_at(&key).map(|line| (line, end, key.len()))),
            Step::Index(n) => nth_item(&lines, pos, *n).map(|line| (line, next, 0)),
        };
        let Some((line, end, key_len)) = found else {
            walked = false;
            break;
        };
        pos = line;
        inclusive = matches!(step, Step::Index(_));
        next = end + 1;
        // A flow collection (`to: [{cidr: ...}]`): the rest of the path is on this line.
        if matches!(step, Step::Key(_)) {
            let after = lines[line]
                .as_ref()
                .map_or("", |l| l.content[key_len..].trim_start_matches(['"', '\'', ':', ' ']));
            if after.starts_with(['[', '{']) {
                break;
            }
        }
    }
    let line = if walked { needle_from(pos).unwrap_or(pos) } else { needle_from(0).unwrap_or(pos) };
    line + 1
}

/// The line of the `n`-th item of the block sequence that follows the key on line `key_line`.
fn nth_item(lines: &[Option<Line<'_>>], key_line: usize, n: usize) -> Option<usize> {
    let key_col = lines.get(key_line)?.as_ref()?.content_col;
    let mut item_indent = None;
    let mut count = 0;
    for (i, line) in lines.iter().enumerate().skip(key_line + 1) {
        let Some(line) = line else { continue };
        // `to:` may be followed by items at its own indentation ("compact" sequences), so
        // only a less indented line, or a non-item at the key's column, ends the sequence.
        if line.indent < key_col || (line.indent == key_col && !line.is_item) {
            return None;
        }
        if !line.is_item {
            continue;
        }
        let indent = *item_indent.get_or_insert(line.indent);
        if line.indent < indent {
            return None;
        }
        if line.indent == indent {
            if count == n {
                return Some(i);
            }
            count += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
apiVersion: beemesh.io/v1alpha1
kind: IdentityPolicy
metadata:
  name: web
spec:
  ingress:
    - from:
        - identity: spiffe://td/ns/a/*
      ports:
        - port: 80
  egress:
    - to:
        - identity: spiffe://td/ns/a/*
        - cidr: 10.0.0.0/33
          except: [10.1.0.0/16]
    - to:
      - entity: host
      ports: [{port: http}]
";

    #[test]
    fn splits_paths() {
        assert_eq!(
            steps("spec.egress[0].to[1].cidr"),
            vec![
                Step::Key("spec"),
                Step::Key("egress"),
                Step::Index(0),
                Step::Key("to"),
                Step::Index(1),
                Step::Key("cidr")
            ]
        );
    }

    #[test]
    fn finds_nested_fields() {
        assert_eq!(find_line(DOC, "metadata.name", None), 4);
        assert_eq!(find_line(DOC, "spec.egress[0].to[1].cidr", Some("10.0.0.0/33")), 14);
        assert_eq!(find_line(DOC, "spec.egress[0].to[0].identity", None), 13);
        assert_eq!(find_line(DOC, "spec.ingress[0].ports[0].port", None), 10);
        assert_eq!(find_line(DOC, "spec.egress[1].to[0].entity", None), 17);
        assert_eq!(find_line(DOC, "spec.egress[0].to[1].except[0]", Some("10.1.0.0/16")), 15);
        assert_eq!(find_line(DOC, "spec.egress[1].ports[0].port", Some("http")), 18);
        assert_eq!(find_line(DOC, "kind", None), 2);
    }

    #[test]
    fn falls_back_to_the_needle() {
        assert_eq!(find_line(DOC, "spec.nothing[3]", Some("entity: host")), 17);
        assert_eq!(find_line(DOC, "spec.nothing", None), 5);
    }

    #[test]
    fn keys_may_hold_dots() {
        let doc = "\
kind: Secret
stringData:
  tls.crt: plain
data:
  ca.crt: Zm9v
  tls.crt: not*base64
metadata:
  labels:
    app.kubernetes.io/name: web
";
        // The key under `data`, not the same key under `stringData` before it.
        assert_eq!(find_line(doc, "data.tls.crt", Some("tls.crt:")), 6);
        assert_eq!(find_line(doc, "metadata.labels.app.kubernetes.io/name", None), 9);
    }
}
