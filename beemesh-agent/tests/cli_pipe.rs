//! The CLI writes its output through a helper that ends quietly on a closed pipe
//! (`beemesh-agent get pods | head -1`): checked offline with `policy check`, whose stdout
//! is a pipe nobody reads.

use std::process::{Command, Stdio};

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = "apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {name: p}\nspec:\n  \
                  selector: {identities: [\"spiffe://beemesh.local/ns/a/*\"]}\n  egress: []\n";
    let files: Vec<_> = (0..50)
        .map(|i| {
            let path = dir.path().join(format!("p{i}.yaml"));
            std::fs::write(&path, policy).expect("write policy");
            path
        })
        .collect();
    let config = dir.path().join("agent.yaml");
    std::fs::write(&config, "").expect("write config");
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_beemesh-agent"))
        .arg("policy")
        .arg("check")
        .args(&files)
        .env("BEEMESH_CONFIG", &config)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run beemesh-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "panicked on a closed pipe: {stderr}");
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "quietly: {stderr}");
}
