//! End-to-end checks of a host's trust-domain credentials: `ca init` and `ca issue-host`
//! make them, the agent loads them at start, and its pods' SVIDs chain to the offline root
//! through the host's own workload issuer (the root key never on the host).

use std::time::Duration;

use anyhow::Result;
use beemesh_tests::Agent;

const T: Duration = Duration::from_secs(20);

/// The log without its ANSI colours.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn issued_host_signs_pod_svids_with_its_workload_issuer_under_the_offline_root() -> Result<()> {
    let mut agent = Agent::start("trustissued", &[])?;
    agent.import_busybox("busybox:1")?;
    assert!(plain(&agent.log()).contains("issued=false"), "a mesh of one first:\n{}", agent.log());
    anyhow::ensure!(agent.stop()?, "agent stopped uncleanly:\n{}", agent.log());

    // The operator's offline CA, and credentials for this host in its state directory; the
    // mesh of one's self-made root goes: the issued host must not need it.
    let offline = tempfile::tempdir()?;
    let ca = offline.path().join("root");
    let ca_arg = ca.to_str().expect("utf-8 path");
    let state = agent.state_dir();
    let state_arg = state.to_str().expect("utf-8 path");
    let (ok, out, err) = agent.run_cli(&["ca", "init", "--dir", ca_arg], None)?;
    anyhow::ensure!(ok, "ca init: {out}{err}");
    let (ok, out, err) =
        agent.run_cli(&["ca", "issue-host", "--ca", ca_arg, "--name", "h1", "--out", state_arg], None)?;
    anyhow::ensure!(ok, "ca issue-host: {out}{err}");
    assert!(out.starts_with("host h1 (peer 12D3KooW"), "{out}");
    std::fs::remove_dir_all(state.join("ca"))?;

    agent.spawn()?;
    let log = plain(&agent.log());
    assert!(log.contains("node=\"h1\"") && log.contains("issued=true"), "{log}");
    agent.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: certified}\nspec:\n  serviceAccountName: frontend\n  containers:\n  - {name: c, image: busybox:1, command: [sleep, '1000']}\n",
    )?;
    agent.wait_ready("certified", T)?;
    assert!(!state.join("ca/ca.key").exists(), "an issued host makes no root of its own");

    let tmp = tempfile::tempdir()?;
    for file in ["svid.pem", "bundle.pem"] {
        let path = format!("/var/run/secrets/beemesh.io/{file}");
        let (ok, out, err) = agent.run_cli(&["exec", "certified", "--", "cat", &path], None)?;
        anyhow::ensure!(ok, "cat {file}: {err}");
        std::fs::write(tmp.path().join(file), out)?;
    }
    let openssl = |args: &[&str]| -> Result<(bool, String)> {
        let out = std::process::Command::new("openssl").args(args).current_dir(tmp.path()).output()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        Ok((out.status.success(), text))
    };
    // The bundle is the offline root; svid.pem is the leaf then the host's workload issuer.
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("bundle.pem"))?,
        std::fs::read_to_string(ca.join("ca.pem"))?
    );
    let chain = std::fs::read_to_string(tmp.path().join("svid.pem"))?;
    let certs: Vec<String> =
        chain.split_inclusive("-----END CERTIFICATE-----\n").map(str::to_owned).collect();
    assert_eq!(certs.len(), 2, "{chain}");
    std::fs::write(tmp.path().join("leaf.pem"), &certs[0])?;
    std::fs::write(tmp.path().join("issuer.pem"), &certs[1])?;
    let (_, san) = openssl(&["x509", "-in", "issuer.pem", "-noout", "-ext", "subjectAltName"])?;
    assert!(san.contains("URI:spiffe://beemesh.local/beemesh/node/h1/workloads"), "{san}");
    let (_, san) = openssl(&["x509", "-in", "leaf.pem", "-noout", "-ext", "subjectAltName"])?;
    assert!(san.contains("URI:spiffe://beemesh.local/ns/default/sa/frontend"), "{san}");
    let (ok, verified) = openssl(&[
        "verify",
        "-CAfile",
        "bundle.pem",
        "-untrusted",
        "issuer.pem",
        "-purpose",
        "sslclient",
        "leaf.pem",
    ])?;
    assert!(ok && verified.contains("leaf.pem: OK"), "{verified}");
    // Without the host's issuer the leaf does not chain: the root did not sign it.
    let (ok, alone) = openssl(&["verify", "-CAfile", "bundle.pem", "leaf.pem"])?;
    assert!(!ok, "verified without the intermediate: {alone}");
    Ok(())
}
