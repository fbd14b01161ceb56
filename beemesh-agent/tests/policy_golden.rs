//! Golden tests of policy compilation: each `tests/golden/policy/<case>/` holds
//! `workloads.yaml`, policy `*.yaml` files and `expected.txt`, the rendering of the compiled
//! policy. `BLESS=1 cargo test --test policy_golden` rewrites the expected files.

use std::fs;
use std::path::{Path, PathBuf};

use beemesh_agent::policy::{compile, parse_file, CompileOptions, PolicyFile, Workload};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/policy")
}

/// Compiles one case; policy files are named relative to the case directory so the
/// rendering does not depend on where the repository is checked out.
fn render_case(dir: &Path) -> String {
    let workloads: Vec<Workload> = serde_yaml::from_str(
        &fs::read_to_string(dir.join("workloads.yaml")).expect("case has workloads.yaml"),
    )
    .expect("workloads.yaml is a list of {id, identity, labels}");
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("case dir readable")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "workloads.yaml")
        .collect();
    names.sort();
    let files: Vec<PolicyFile> = names
        .iter()
        .map(|name| {
            let text = fs::read_to_string(dir.join(name)).expect("policy file readable");
            let path = PathBuf::from(name);
            let policies = parse_file(&path, &text).unwrap_or_else(|e| panic!("{e}"));
            PolicyFile { path, policies }
        })
        .collect();
    let opts = match fs::read_to_string(dir.join("options.txt")) {
        Ok(text) => CompileOptions {
            default_allow_egress: !text.contains("deny-egress"),
            default_allow_ingress: !text.contains("deny-ingress"),
        },
        Err(_) => CompileOptions::default(),
    };
    compile(&files, &workloads, &opts).unwrap_or_else(|e| panic!("{}: {e}", dir.display())).render(&workloads)
}

fn diff(expected: &str, actual: &str) -> String {
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut out = String::new();
    for line in &e {
        if !a.contains(line) {
            out.push_str(&format!("-{line}\n"));
        }
    }
    for line in &a {
        if !e.contains(line) {
            out.push_str(&format!("+{line}\n"));
        }
    }
    if out.is_empty() {
        out.push_str("(same lines, different order)\n");
    }
    out
}

#[test]
fn policy_golden() {
    let bless = std::env::var_os("BLESS").is_some_and(|v| v == "1");
    let mut cases: Vec<PathBuf> = fs::read_dir(golden_dir())
        .expect("golden dir readable")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "expected at least 5 golden cases");
    let mut failures = Vec::new();
    for dir in &cases {
        let actual = render_case(dir);
        let expected_path = dir.join("expected.txt");
        if bless {
            fs::write(&expected_path, &actual).expect("write expected.txt");
            continue;
        }
        let expected = fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!("{}:\n{}", dir.display(), diff(&expected, &actual)));
        }
    }
    assert!(failures.is_empty(), "golden mismatch (BLESS=1 to update):\n{}", failures.join("\n"));
}

/// Every YAML example of the user documentation must be a valid policy file.
#[test]
fn documentation_examples_parse() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/policy.md");
    let Ok(doc) = fs::read_to_string(&doc_path) else {
        return; // the docs are merged elsewhere in some checkouts
    };
    let mut count = 0;
    for block in doc.split("```yaml\n").skip(1) {
        let yaml = block.split("```").next().expect("split yields a first part");
        parse_file(Path::new("docs/policy.md"), yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        count += 1;
    }
    assert!(count >= 3, "expected the reference and examples, found {count} blocks");
}
