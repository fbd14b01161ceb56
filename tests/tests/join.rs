//! End-to-end checks of the join-token flow with real agents, each in a network namespace of
//! its own on one bridge: the offline root delegates to an issuer held by member `a`; a new
//! host with no credentials joins with a token `a` made and is attested by every member (also
//! by `c`, issued by the root directly); a used token, and a token pinning another root, are
//! refused, the joining host exiting with the reason and writing nothing.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use beemesh_tests::lan::Lan;
use beemesh_tests::{eventually, Agent};

const T: Duration = Duration::from_secs(30);

fn path(p: &std::path::Path) -> Result<&str> {
    p.to_str().context("utf-8 path")
}

/// Runs `agent`'s CLI and insists on success; returns stdout.
fn cli(agent: &Agent, args: &[&str]) -> Result<String> {
    let (ok, out, err) = agent.run_cli(args, None)?;
    ensure!(ok, "{}: {out}{err}", args.join(" "));
    Ok(out)
}

/// The node names `agent` lists as attested peers (itself left out).
fn attested(agent: &Agent) -> Vec<String> {
    let Ok((true, out, _)) = agent.run_cli(&["peers", "-o", "json"], None) else {
        return Vec::new();
    };
    let peers: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    let mut names: Vec<String> = peers
        .iter()
        .filter(|p| p["attested"] == true && p["thisHost"] != true)
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// sha256 of the SubjectPublicKeyInfo of the certificate in `pem` (what a token pins), hex.
fn spki_sha256(pem: &std::path::Path) -> Result<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform DER | sha256sum",
            path(pem)?
        ))
        .output()?;
    ensure!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.split_whitespace().next().context("sha256sum output")?.to_owned())
}

/// A host that joins with `token` through `bootstrap` (not started yet).
fn joiner(lan: &mut Lan, n: u8, name: &str, token: &str, bootstrap: &str) -> Result<Agent> {
    let ns = lan.host(n)?;
    let config = format!("mesh:\n  bootstrap: [\"{bootstrap}\"]\n");
    let extra = [("BEEMESH_MESH_PORT", "4001"), ("BEEMESH_JOIN", token), ("BEEMESH_NODE_NAME", name)];
    Ok(Agent::prepare(&format!("join{n}"), &extra, &config)?.in_netns(&ns))
}

#[test]
fn a_host_joins_with_a_token_from_an_issuer_holding_member_and_bad_tokens_are_refused() -> Result<()> {
    let mut lan = Lan::new("bmj", 44)?;
    let offline = tempfile::tempdir()?;
    let (root, foreign) = (offline.path().join("root"), offline.path().join("foreign"));
    let bootstrap = format!("{}:4001", lan.addr(1));

    // a: a member issued by the root, holding an issuer the root delegated to it.
    let ns = lan.host(1)?;
    let mut a = Agent::prepare("join1", &[("BEEMESH_MESH_PORT", "4001")], "")?.in_netns(&ns);
    cli(&a, &["ca", "init", "--dir", path(&root)?])?;
    cli(&a, &["ca", "init", "--dir", path(&foreign)?])?;
    let state_a = a.state_dir();
    cli(&a, &["ca", "issue-host", "--ca", path(&root)?, "--name", "a", "--out", path(&state_a)?])?;
    let issuer = state_a.join("issuer");
    cli(&a, &["ca", "issue-issuer", "--ca", path(&root)?, "--name", "ops", "--out", path(&issuer)?])?;
    a.spawn()?;
    ensure!(a.log().contains("admits joining hosts"), "a does not hold its issuer:\n{}", a.log());

    // c: a member issued by the root directly, joining through a.
    let ns = lan.host(3)?;
    let config = format!("mesh:\n  bootstrap: [\"{bootstrap}\"]\n");
    let mut c = Agent::prepare("join3", &[("BEEMESH_MESH_PORT", "4001")], &config)?.in_netns(&ns);
    cli(&c, &["ca", "issue-host", "--ca", path(&root)?, "--name", "c", "--out", path(&c.state_dir())?])?;
    c.spawn()?;

    // b: nothing but a token and a's address.
    let token = cli(&a, &["token", "create", "--ttl", "10m", "--for-node", "b"])?.trim().to_owned();
    ensure!(token.starts_with("bmjoin1."), "token: {token}");
    let mut b = joiner(&mut lan, 2, "b", &token, &bootstrap)?;
    b.spawn()?;
    ensure!(b.state_dir().join("host/node.key").exists(), "b wrote no credentials:\n{}", b.log());
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(b.state_dir().join("host/node.key"))?.permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    for (who, agent, want) in
        [("a", &a, vec!["b", "c"]), ("c", &c, vec!["a", "b"]), ("b", &b, vec!["a", "c"])]
    {
        ensure!(
            eventually(T, || attested(agent) == want),
            "{who} sees {:?}, expected {want:?}\n{}",
            attested(agent),
            agent.log()
        );
    }
    let listed: Vec<serde_json::Value> = serde_json::from_str(&cli(&a, &["token", "list", "-o", "json"])?)?;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0]["used"].clone(), listed[0]["nodeName"].clone()), (true.into(), "b".into()));
    let records = a.state_dir().join("mesh/join-tokens.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&records)?.permissions());
    assert_eq!(mode & 0o777, 0o600, "token records hold secrets");
    assert!(!a.log().contains(token.split('.').nth(2).context("secret")?), "a logged the secret");
    // b had nothing to attest with while joining: that is no attestation failure.
    assert!(a.log().contains("join request admitted"), "{}", a.log());
    assert!(!a.log().contains("failed attestation"), "{}", a.log());

    // Restarted with the token still set, b keeps its credentials and says so.
    b.stop()?;
    b.spawn()?;
    ensure!(b.log().contains("ignoring --join"), "{}", b.log());

    // The same token again: refused by a, the new host exits with the reason, nothing written.
    let mut d = joiner(&mut lan, 4, "b", &token, &bootstrap)?;
    let err = d.spawn().expect_err("a used token admits nobody").to_string();
    assert!(err.contains("join: refused by the member: token already used"), "{err}");
    assert!(!d.state_dir().join("host").exists(), "d wrote credentials");

    // A token pinning another root: the joining host refuses a's answer itself.
    let fresh = cli(&a, &["token", "create"])?.trim().to_owned();
    let mut parts: Vec<String> = fresh.split('.').map(str::to_owned).collect();
    parts[3] = spki_sha256(&foreign.join("ca.pem"))?;
    assert_eq!(parts[3].len(), 64);
    let mut e = joiner(&mut lan, 5, "e", &parts.join("."), &bootstrap)?;
    let err = e.spawn().expect_err("another root's pin").to_string();
    assert!(err.contains("no root in the answer matches the token's root hash"), "{err}");
    assert!(!e.state_dir().join("host").exists(), "e wrote credentials");

    // A malformed token is a usage error (64) before anything starts.
    let out = e.cli().args(["run", "--join", "bmjoin1.nothex"]).output()?;
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--join: join: token"), "{out:?}");
    Ok(())
}
