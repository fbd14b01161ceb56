//! End-to-end checks of the mesh against hostile members, with real agents each in a network
//! namespace of its own on a bridge of its own (10.200.43.0/24): a member that forges another
//! node's name or sends an old message has it dropped and counted; a revoked host is cut off
//! by every host within seconds, cannot come back, and a restarted host still refuses it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use beemesh_tests::lan::Lan;
use beemesh_tests::{eventually, Agent};

const T: Duration = Duration::from_secs(30);
const SUBNET: u8 = 43;

fn path(p: &std::path::Path) -> Result<&str> {
    p.to_str().context("utf-8 path")
}

/// `ca init` into `dir`.
fn ca_init(agent: &Agent, dir: &std::path::Path) -> Result<()> {
    let (ok, out, err) = agent.run_cli(&["ca", "init", "--dir", path(dir)?], None)?;
    ensure!(ok, "ca init: {out}{err}");
    Ok(())
}

/// Credentials for host `name` from the root in `ca`, written into the state dir `out`.
fn issue_host(agent: &Agent, ca: &std::path::Path, name: &str, out: &std::path::Path) -> Result<()> {
    let (ok, stdout, err) =
        agent.run_cli(&["ca", "issue-host", "--ca", path(ca)?, "--name", name, "--out", path(out)?], None)?;
    ensure!(ok, "ca issue-host {name}: {stdout}{err}");
    Ok(())
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

/// The `mesh` section of `status -o json`.
fn mesh_status(agent: &Agent) -> Result<serde_json::Value> {
    let (ok, out, err) = agent.run_cli(&["status", "-o", "json"], None)?;
    ensure!(ok, "status: {err}");
    let status: serde_json::Value = serde_json::from_str(&out)?;
    Ok(status["mesh"].clone())
}

fn dropped(agent: &Agent, reason: &str) -> u64 {
    mesh_status(agent).ok().and_then(|m| m["counters"]["gossipDropped"][reason].as_u64()).unwrap_or(0)
}

/// `n` agents h1..hn on `lan`, credentials from the root `root`, all joining through h1.
fn mesh_of(lan: &mut Lan, root: &std::path::Path, test: &str, n: u8) -> Result<Vec<Agent>> {
    let bootstrap = format!("{}:4001", lan.addr(1));
    let mut agents = Vec::new();
    for i in 1..=n {
        let ns = lan.host(i)?;
        let config = if i > 1 { format!("mesh:\n  bootstrap: [\"{bootstrap}\"]\n") } else { String::new() };
        let agent =
            Agent::prepare(&format!("{test}{i}"), &[("BEEMESH_MESH_PORT", "4001")], &config)?.in_netns(&ns);
        if i == 1 {
            ca_init(&agent, root)?;
        }
        issue_host(&agent, root, &format!("h{i}"), &agent.state_dir())?;
        agents.push(agent);
    }
    for agent in agents.iter_mut() {
        agent.spawn()?;
    }
    let names: Vec<String> = (1..=n).map(|i| format!("h{i}")).collect();
    for (i, agent) in agents.iter().enumerate() {
        let others: Vec<String> = names.iter().filter(|m| **m != names[i]).cloned().collect();
        ensure!(
            eventually(T, || attested(agent) == others),
            "{} sees {:?}, expected {others:?}\n{}",
            names[i],
            attested(agent),
            agent.log()
        );
    }
    Ok(agents)
}

#[test]
fn a_forged_and_a_replayed_gossip_message_are_dropped_and_counted() -> Result<()> {
    let mut lan = Lan::new("bmg", SUBNET)?;
    let offline = tempfile::tempdir()?;
    let root = offline.path().join("root");
    let agents = mesh_of(&mut lan, &root, "guardgossip", 2)?;

    // A member of the trust domain turned hostile: a real certificate, its own swarm.
    let rogue_state = offline.path().join("rogue");
    issue_host(&agents[0], &root, "rogue", &rogue_state)?;
    let rogue_ns = lan.host(9)?;
    let mut rogue = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{rogue_ns}"))
        .arg(env!("CARGO_BIN_EXE_rogue_peer"))
        .args([path(&rogue_state)?, "beemesh.local", "rogue", &format!("{}:4001", lan.addr(1)), "h1", "h2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start rogue_peer")?;
    let stdout = rogue.stdout.take().context("rogue stdout")?;
    let line = BufReader::new(stdout).lines().next().context("rogue said nothing")??;
    ensure!(line == "published", "rogue: {line}");
    ensure!(attested(&agents[0]).contains(&"rogue".to_string()), "h1 does not hold the rogue as a member");

    // h1 dropped both, and counted them by reason.
    ensure!(
        eventually(T, || dropped(&agents[0], "forged") >= 1 && dropped(&agents[0], "stale") >= 1),
        "not counted: {:?}\n{}",
        mesh_status(&agents[0])?,
        agents[0].log()
    );
    // Nothing of it reached the cluster state: no complaint from the replica about the bodies.
    assert!(!agents[0].log().contains("cluster gossip rejected"), "{}", agents[0].log());
    drop(rogue.stdin.take());
    let _ = rogue.wait();
    Ok(())
}

#[test]
fn a_revoked_host_is_cut_off_everywhere_and_stays_out_across_a_restart() -> Result<()> {
    let mut lan = Lan::new("bmr", SUBNET)?;
    let offline = tempfile::tempdir()?;
    let root = offline.path().join("root");
    let mut agents = mesh_of(&mut lan, &root, "guardrevoke", 3)?;

    // The operator revokes h3 offline and hands the revocation to h1 only.
    let file = offline.path().join("h3.pem");
    let (ok, out, err) =
        agents[0].run_cli(&["ca", "revoke-host", "--ca", path(&root)?, "h3", "--out", path(&file)?], None)?;
    ensure!(ok, "ca revoke-host: {out}{err}");
    let (ok, out, err) = agents[0].run_cli(&["revoke", path(&file)?], None)?;
    ensure!(ok && out.contains("host h3 revoked") && out.contains("cut off h3"), "revoke: {out}{err}");

    // Within seconds neither h1 nor h2 holds h3 as a member; h2 heard it from the mesh.
    for agent in &agents[..2] {
        ensure!(
            eventually(Duration::from_secs(10), || !attested(agent).contains(&"h3".to_string())),
            "h3 still attested: {:?}\n{}",
            attested(agent),
            agent.log()
        );
        ensure!(
            eventually(T, || mesh_status(agent).is_ok_and(|m| m["revoked"] == serde_json::json!(["h3"]))),
            "revocation not held: {:?}",
            mesh_status(agent)
        );
    }
    // It keeps knocking (bootstrap h1) and is refused: its certificate is revoked.
    ensure!(
        eventually(T, || agents[0].log().contains("is revoked")),
        "h3 never refused on reconnecting:\n{}",
        agents[0].log()
    );
    assert_eq!(attested(&agents[0]), ["h2"]);
    assert_eq!(attested(&agents[1]), ["h1"]);
    // Kept on disk, 0600.
    use std::os::unix::fs::MetadataExt;
    let kept: Vec<_> =
        std::fs::read_dir(agents[1].state_dir().join("revocations"))?.collect::<Result<_, _>>()?;
    ensure!(kept.len() == 1, "{kept:?}");
    assert_eq!(kept[0].metadata()?.mode() & 0o777, 0o600);

    // h2 restarts: it still refuses h3 (loaded before its swarm listened) and rejoins h1.
    ensure!(agents[1].stop()?, "h2 did not stop cleanly");
    agents[1].spawn()?;
    ensure!(eventually(T, || attested(&agents[1]) == ["h1"]), "h2 did not rejoin:\n{}", agents[1].log());
    let m = mesh_status(&agents[1])?;
    assert_eq!(m["revoked"], serde_json::json!(["h3"]), "{m}");
    assert!(agents[1].log().contains("host revocations loaded"), "{}", agents[1].log());
    // Whatever h3 tries meanwhile, no host lists it.
    for agent in &agents[..2] {
        assert!(!attested(agent).contains(&"h3".to_string()), "{}", agent.log());
    }
    Ok(())
}
