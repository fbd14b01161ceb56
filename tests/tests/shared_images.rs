//! End-to-end checks of images shared peer to peer, with real agents each in a network
//! namespace of its own on one bridge: an image imported on one host runs on the others
//! (fetched by digest from the holder), `image list` names its holders, an image nobody
//! holds shows ErrImagePull with the reason and runs once a host imports it; an image held by
//! two hosts is fetched from both at once, and a pull killed midway (SIGKILL while the
//! partial blob grows) resumes after the restart with only the chunks it lacked.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use beemesh_tests::lan::joined_mesh;
use beemesh_tests::{eventually, Agent};
use serde_json::Value;

const T: Duration = Duration::from_secs(60);

/// A pod pinned to `node` running `image`.
fn pod(name: &str, node: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: {image}\n    command: [sh, -c, \"trap 'exit 0' TERM; sleep 1000 & wait\"]\n"
    )
}

/// Starts every agent and waits until each has attested all the others.
fn start_all(agents: &mut [Agent]) -> Result<()> {
    beemesh_tests::lan::start_all(agents, T)
}

/// The holders `image list -o json` on `agent` names for `tag`.
fn holders(agent: &Agent, tag: &str) -> Vec<String> {
    let Ok((true, out, _)) = agent.run_cli(&["image", "list", "-o", "json"], None) else { return Vec::new() };
    let items: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
    items
        .iter()
        .find(|i| i["tag"] == tag)
        .and_then(|i| i["holders"].as_array())
        .map(|h| h.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// The Pod `name` as `get pods -A -o json` on `agent` shows it.
fn pod_json(agent: &Agent, name: &str) -> Value {
    let Ok((true, out, _)) = agent.run_cli(&["get", "pods", "-A", "-o", "json"], None) else {
        return Value::Null;
    };
    let list: Value = serde_json::from_str(&out).unwrap_or_default();
    list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|p| p["metadata"]["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

fn running(agent: &Agent, name: &str) -> bool {
    pod_json(agent, name)["status"]["phase"] == "Running"
}

/// `status -o json` of `agent`, its `images` section.
fn image_status(agent: &Agent) -> Result<Value> {
    let (ok, out, err) = agent.run_cli(&["status", "-o", "json"], None)?;
    ensure!(ok, "status: {err}");
    let v: Value = serde_json::from_str(&out)?;
    Ok(v["images"].clone())
}

#[test]
fn an_image_imported_on_one_host_runs_on_the_others_and_one_nobody_holds_is_err_image_pull() -> Result<()> {
    let (_lan, _offline, mut agents) = joined_mesh("bmi", 50, 3)?;
    start_all(&mut agents)?;
    agents[0].import_busybox("busybox:1")?;
    for (i, a) in agents.iter().enumerate() {
        ensure!(
            eventually(T, || holders(a, "busybox:1") == ["h1"]),
            "h{} lists holders {:?}",
            i + 1,
            holders(a, "busybox:1")
        );
    }
    let (_, table, _) = agents[2].run_cli(&["image", "list"], None)?;
    ensure!(
        table.contains("HOLDERS") && table.lines().any(|l| l.starts_with("busybox:1") && l.ends_with("h1")),
        "{table}"
    );

    agents[0].apply(&format!("{}---\n{}", pod("on2", "h2", "busybox:1"), pod("on3", "h3", "busybox:1")))?;
    for (name, a) in [("on2", &agents[1]), ("on3", &agents[2])] {
        ensure!(
            eventually(T, || running(&agents[0], name)),
            "{name}: {}\n{}",
            pod_json(&agents[0], name),
            a.log()
        );
        ensure!(a.log().contains("image pulled"), "no pull logged:\n{}", a.log());
    }
    // Every host that ran it now holds it too.
    ensure!(
        eventually(T, || holders(&agents[0], "busybox:1") == ["h1", "h2", "h3"]),
        "holders {:?}",
        holders(&agents[0], "busybox:1")
    );
    let s = image_status(&agents[1])?;
    ensure!(s["blobsVerified"].as_u64() >= Some(2) && s["pullsDone"] == 1, "h2 status {s}");
    ensure!(
        image_status(&agents[0])?["served"]["h2"]["chunks"].as_u64() >= Some(2),
        "h1 served nothing to h2"
    );

    // Nobody holds it: ErrImagePull with the reason, shown on any host.
    agents[0].apply(&pod("ghost", "h2", "nothere:1"))?;
    let waiting =
        |a: &Agent| pod_json(a, "ghost")["status"]["containerStatuses"][0]["state"]["waiting"].clone();
    ensure!(
        eventually(T, || waiting(&agents[2])["reason"] == "ErrImagePull"),
        "ghost: {}",
        pod_json(&agents[2], "ghost")
    );
    let message = waiting(&agents[2])["message"].as_str().unwrap_or_default().to_owned();
    ensure!(message.contains("no host of the mesh holds image nothere:1"), "message: {message}");
    let (_, table, _) = agents[2].run_cli(&["get", "pods"], None)?;
    ensure!(table.lines().any(|l| l.starts_with("ghost") && l.contains("ErrImagePull")), "{table}");

    // Once a host imports it, the pod runs (after its back-off).
    agents[2].import_busybox("nothere:1")?;
    ensure!(
        eventually(Duration::from_secs(120), || running(&agents[0], "ghost")),
        "ghost never ran: {}\n{}",
        pod_json(&agents[0], "ghost"),
        agents[1].log()
    );
    Ok(())
}

/// The chunks `partial/<hex>.chunks` of `state` records done, if it exists.
fn chunks_done(state: &Path, digest: &str) -> Option<(usize, usize)> {
    let hex = digest.strip_prefix("sha256:")?;
    let path: PathBuf = state.join("images/partial").join(format!("{hex}.chunks"));
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let done = v["done"].as_array()?;
    Some((done.iter().filter(|d| **d == true).count(), done.len()))
}

/// The lines of `agent`'s log about pulls and resumes.
fn pull_lines(agent: &Agent) -> String {
    agent.log().lines().filter(|l| l.contains("pull") || l.contains("resum")).collect::<Vec<_>>().join("\n")
}

/// Limits what host namespace `ns` sends to `rate` (tbf on its eth0), so a transfer lasts
/// long enough to be killed midway.
fn throttle(ns: &str, rate: &str) -> Result<()> {
    let out = std::process::Command::new("tc")
        .args([
            "-n", ns, "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", rate, "burst", "256kb",
            "latency", "400ms",
        ])
        .output()
        .context("run tc")?;
    ensure!(out.status.success(), "tc: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[test]
fn an_image_held_by_two_hosts_comes_from_both_and_a_killed_pull_resumes_with_the_rest() -> Result<()> {
    let (_lan, _offline, mut agents) = joined_mesh("bmr", 51, 3)?;
    start_all(&mut agents)?;
    // 64 MiB of random data on h1 and h2 (the same layout, so the same image).
    let work = tempfile::tempdir()?;
    let layout = work.path().join("big");
    let (payload, payload_size) =
        beemesh_tests::image::busybox_layout_with_payload(&layout, "big:1", 64 << 20)?;
    for a in &agents[..2] {
        let (ok, out, err) = a.run_cli(&["image", "import", layout.to_str().context("utf-8")?], None)?;
        ensure!(ok, "import: {out}{err}");
    }
    ensure!(
        eventually(T, || holders(&agents[2], "big:1") == ["h1", "h2"]),
        "h3 lists holders {:?}",
        holders(&agents[2], "big:1")
    );
    // Each holder sends at 40 Mbit/s: the pull takes seconds, long enough to kill it midway.
    for n in [1u8, 2] {
        throttle(&format!("bmr{}-h{n}", std::process::id() % 10000), "40mbit")?;
    }

    agents[0].apply(&pod("big", "h3", "big:1"))?;
    let state = agents[2].state_dir();
    let total = (payload_size as usize).div_ceil(4 << 20);
    // The pod's sandbox is up and its container waits for the pull (a kill while the sandbox
    // is being made is another test's matter), and the payload is partly there.
    let waiting_for_pull = |a: &Agent| {
        pod_json(a, "big")["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("pulling image big:1"))
    };
    ensure!(
        eventually(T, || waiting_for_pull(&agents[2])
            && chunks_done(&state, &payload).is_some_and(|(d, _)| d >= 3)),
        "the payload never grew on h3 while its pod waited for it: {:?} {}\n{}",
        chunks_done(&state, &payload),
        pod_json(&agents[2], "big"),
        agents[2].log()
    );
    let before = image_status(&agents[2])?;
    agents[2].crash()?;
    let (done, n) = chunks_done(&state, &payload).context("the record went with the crash")?;
    ensure!(n == total && done < total, "killed too late: {done} of {n} chunks");
    // Both holders were asked already.
    for h in ["h1", "h2"] {
        ensure!(
            before["fetched"][h]["chunks"].as_u64() >= Some(1),
            "nothing from {h} before the kill: {before}"
        );
    }

    agents[2].spawn()?;
    // The restarted agent pulls again (for the pod it re-adopts) and finishes the image.
    let pulled = |a: &Agent| image_status(a).is_ok_and(|s| s["pullsDone"] == 1);
    ensure!(
        eventually(Duration::from_secs(120), || pulled(&agents[2])),
        "h3 never finished the pull after the restart: {:?}\n{}",
        image_status(&agents[2]),
        agents[2].log()
    );
    ensure!(
        eventually(T, || holders(&agents[0], "big:1") == ["h1", "h2", "h3"]),
        "holders {:?}",
        holders(&agents[0], "big:1")
    );
    let after = image_status(&agents[2])?;
    let resumed = after["resumedBytes"].as_u64().context("resumedBytes")?;
    ensure!(
        resumed == done as u64 * (4 << 20),
        "resumed {resumed} bytes, the record had {done} chunks: {after}\n{}",
        pull_lines(&agents[2])
    );
    let fetched: u64 = ["h1", "h2"].iter().map(|h| after["fetched"][h]["bytes"].as_u64().unwrap_or(0)).sum();
    // After the restart only the payload's missing chunks came (busybox's layer and the config
    // were in the store already).
    ensure!(
        fetched == payload_size - resumed,
        "fetched {fetched} after the restart, expected {}: {after}\n{}",
        payload_size - resumed,
        pull_lines(&agents[2])
    );
    for h in ["h1", "h2"] {
        ensure!(
            after["fetched"][h]["chunks"].as_u64() >= Some(1),
            "nothing from {h} after the restart: {after}"
        );
    }
    ensure!(after["blobsVerified"].as_u64() >= Some(1), "{after}");
    ensure!(agents[2].log().contains("resuming blob"), "no resume logged:\n{}", agents[2].log());

    // The pulled image runs in the pod re-adopted after the crash.
    ensure!(
        eventually(T, || running(&agents[0], "big")),
        "big: {}\n{}",
        pod_json(&agents[0], "big"),
        agents[2].log()
    );
    Ok(())
}
