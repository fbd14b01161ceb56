//! End-to-end agent lifecycle: clean shutdown leaves nothing behind; a crash leaves the
//! kernel enforcing the last policy; the next start re-adopts workloads, retires the old
//! programs and keeps enforcing.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use beemesh_tests::{connect_in_cgroup, eventually, port, try_connect, Agent, EPERM_LINE};

const T: Duration = Duration::from_secs(10);
/// The agent pins one link per kernel program (`PROGRAMS` in beemesh-agent/src/kernel/loader.rs).
const PROGRAMS: usize = 11;
const WEB: &str = "spiffe://beemesh.local/ns/shop/sa/web";
const INTRUDER: &str = "spiffe://beemesh.local/ns/other/sa/intruder";

fn deny_intruder(port: u16) -> String {
    beemesh_tests::ingress_policy("web", WEB, &["spiffe://beemesh.local/ns/shop/*"], port)
}

fn link_pins(dir: &Path) -> usize {
    walk(dir)
}

fn walk(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries.filter_map(Result::ok).map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum()
}

#[test]
fn clean_shutdown_detaches_and_removes_everything() -> Result<()> {
    let mut agent = Agent::start("shutdown", &[])?;
    let p = port();
    let web = agent.workload("web", WEB, &[], &["listen", &format!("127.0.0.1:{p}")])?;
    assert_eq!(web.line(T)?, "listening");
    assert!(agent.cgroup_root().join("web").is_dir());
    assert_eq!(link_pins(&agent.pin_dir()), PROGRAMS, "one pinned link per program");

    assert!(agent.stop()?, "agent exit status:\n{}", agent.log());
    assert!(!agent.cgroup_root().exists(), "cgroup subtree left behind");
    assert!(!agent.pin_dir().exists(), "pins left behind");
    assert!(!agent.run_dir().join("agent.sock").exists(), "socket left behind");
    // The workload was killed with its cgroup.
    let status = web.wait()?;
    assert!(!status.success());
    Ok(())
}

#[test]
fn crash_keeps_enforcing_and_restart_recovers() -> Result<()> {
    let mut agent = Agent::start("crash", &[])?;
    let p = port();
    let addr = format!("127.0.0.1:{p}");
    agent.write_policy("web.yaml", &deny_intruder(p))?;
    let web = agent.workload("web", WEB, &[], &["listen", &addr])?;
    assert_eq!(web.line(T)?, "listening");
    assert!(eventually(T, || agent.generation().unwrap_or(0) >= 2));
    let watcher = agent.workload("watcher", INTRUDER, &[], &["loop", &addr])?;
    assert!(watcher.line(T)?.starts_with(EPERM_LINE));

    agent.crash()?;
    // Pinned links keep the last policy in force while no agent runs: a new connect from the
    // intruder's cgroup is refused, and the looping watcher saw no change.
    let down = connect_in_cgroup(&agent.cgroup_root().join("watcher"), &addr)?;
    assert!(down.starts_with(EPERM_LINE), "connect while the agent was down: {down:?}");
    assert!(watcher.line(Duration::from_millis(200)).is_err(), "verdict changed while the agent was down");
    assert!(agent.pin_dir().exists());

    agent.spawn()?;
    // Workloads are re-adopted, the previous generation of links is retired.
    let out = agent.cli().args(["workloads", "-o", "json"]).output()?;
    let list: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let names: Vec<&str> = list.as_array().expect("list").iter().filter_map(|w| w["name"].as_str()).collect();
    assert!(names.contains(&"web") && names.contains(&"watcher"), "{list}");
    assert!(
        eventually(T, || link_pins(&agent.pin_dir()) == PROGRAMS),
        "old generation not retired: {} pins",
        link_pins(&agent.pin_dir())
    );
    assert!(watcher.line(Duration::from_millis(800)).is_err(), "verdict changed across restart");
    assert!(try_connect(&agent, INTRUDER, &addr)?.starts_with(EPERM_LINE));
    assert_eq!(try_connect(&agent, "spiffe://beemesh.local/ns/shop/sa/frontend", &addr)?, "connected");

    // And the restarted agent still applies policy changes live.
    agent.remove_policy("web.yaml")?;
    assert_eq!(watcher.line(T)?, "connected");

    assert!(agent.stop()?);
    assert!(!agent.cgroup_root().exists());
    assert!(!agent.pin_dir().exists());
    Ok(())
}

#[test]
fn second_agent_on_the_same_run_dir_is_refused() -> Result<()> {
    let agent = Agent::start("twice", &[])?;
    let out = agent.cli().arg("run").output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another agent"), "{err}");
    // The first one is unharmed.
    assert!(agent.cli().arg("status").output()?.status.success());
    Ok(())
}

#[test]
fn bad_config_exits_64_with_a_clear_message() -> Result<()> {
    let agent = Agent::start("config", &[])?;
    let out = agent.cli().arg("status").env("BEEMESH_CGROUP_NAME", "../escape").output()?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cgroupName"));
    let bad = agent.dir.path().join("bad.yaml");
    std::fs::write(&bad, "stateDirr: /tmp\n")?;
    let out = agent.cli().arg("status").env("BEEMESH_CONFIG", &bad).output()?;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stateDirr"));
    Ok(())
}

#[test]
fn last_good_policy_survives_a_restart_with_the_file_broken() -> Result<()> {
    let mut agent = Agent::start("lastgood", &[])?;
    let p = port();
    let addr = format!("127.0.0.1:{p}");
    agent.write_policy("web.yaml", &deny_intruder(p))?;
    assert!(eventually(T, || agent.generation().unwrap_or(0) >= 2));
    assert!(agent.stop()?);
    // Broken while the agent was down.
    agent.write_policy(
        "web.yaml",
        "apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata: [oops\n",
    )?;
    agent.spawn()?;
    let web = agent.workload("web", WEB, &[], &["listen", &addr])?;
    assert_eq!(web.line(T)?, "listening");
    assert!(
        try_connect(&agent, INTRUDER, &addr)?.starts_with(EPERM_LINE),
        "last good version not in force:\n{}",
        agent.log()
    );
    assert!(agent.log().contains("kept from before the restart"));
    Ok(())
}
