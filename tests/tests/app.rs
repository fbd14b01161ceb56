//! End-to-end checks of the agent as a service: apply is all or nothing, large manifests
//! go through the admin socket, restart counts outlive the agent, pod SVIDs rotate before
//! they expire, and the CLI survives a closed pipe.

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use beemesh_tests::{eventually, Agent};

const T: Duration = Duration::from_secs(20);

fn sleeper(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: busybox:1, command: [sleep, '1000']}}\n"
    )
}

/// The agent's workload name of pod `default/<name>` (as `app::pods::workload_name`).
fn workload_of(name: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(format!("default/{name}").as_bytes());
    let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("pod-default-{name}-{hex}")
}

#[test]
fn apply_is_all_or_nothing_and_takes_a_one_mib_configmap() -> Result<()> {
    let agent = Agent::start("appatomic", &[])?;
    agent.import_busybox("busybox:1")?;
    // A file whose pod changes the spec of a pod that exists is refused whole: its
    // ConfigMap is not written either.
    agent.apply(&sleeper("first"))?;
    let changed = sleeper("first").replace("'1000'", "'2000'");
    let text =
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm}}\ndata: {{a: b}}\n---\n{changed}");
    let (ok, out, err) = agent.run_cli(&["apply", "-f", "-"], Some(&text))?;
    assert!(!ok, "applied: {out}");
    assert!(err.contains("spec cannot change") && err.contains("nothing of this file was applied"), "{err}");
    let (_, deleted, _) = agent
        .run_cli(&["delete", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n"))?;
    assert!(deleted.contains("not found"), "the ConfigMap was never stored: {deleted}");

    // A pod this host cannot create (a mount point sits where its directory must go, and the
    // agent never crosses a mount to remove a leftover) is in the cluster state all the same,
    // shows why it does not run, and leaves nothing behind; it starts once the way is clear.
    let blocker = agent.state_dir().join("pods").join(workload_of("second"));
    std::fs::create_dir_all(&blocker)?;
    let mounted =
        std::process::Command::new("mount").args(["-t", "tmpfs", "blocker"]).arg(&blocker).status()?;
    anyhow::ensure!(mounted.success(), "mount a tmpfs at {}", blocker.display());
    let out = agent.apply(&sleeper("second"))?;
    assert!(out.contains("pod/second created"), "{out}");
    let second = agent.pod("second")?;
    assert_eq!(second["status"]["reason"], "CreateError", "{second}");
    assert!(!agent.cgroup_root().join(workload_of("second")).exists(), "second's cgroup was left");
    let records = std::fs::read_to_string(agent.state_dir().join("pods.json")).unwrap_or_default();
    assert!(!records.contains(&workload_of("second")), "persisted: {records}");
    let unmounted = std::process::Command::new("umount").arg(&blocker).status()?;
    anyhow::ensure!(unmounted.success(), "umount {}", blocker.display());
    // Tried again within the reconciler's resync period (10 s).
    agent.wait_ready("second", T)?;
    agent.wait_ready("first", T)?;

    // A 1 MiB ConfigMap goes through the admin socket and is stored.
    let big = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: big}}\ndata: {{blob: {}}}\n",
        "x".repeat(1024 * 1024)
    );
    let out = agent.apply(&big)?;
    // A mesh of one: held here only, and said so.
    assert_eq!(out.trim(), "configmap/big created (no other host holds it yet)");
    // ... in the cluster state, whole (this host's local copy, objects.json, holds only what
    // its pods use).
    let (ok, out, err) = agent.run_cli(&["get", "configmaps", "big", "-o", "json"], None)?;
    anyhow::ensure!(ok, "get configmaps big: {err}");
    let cm: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(cm["data"]["blob"].as_str().map(str::len), Some(1024 * 1024));

    // `get pods | head -1`: the CLI's stdout closes after one line; no panic.
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let out = agent.cli().args(["get", "pods"]).stdout(writer).stderr(Stdio::piped()).output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{:?}: {stderr}", out.status);
    Ok(())
}

fn restarts(agent: &Agent) -> i64 {
    agent
        .pod("crash")
        .ok()
        .and_then(|p| p["status"]["containerStatuses"][0]["restartCount"].as_i64())
        .unwrap_or(-1)
}

#[test]
fn restart_counts_survive_an_agent_crash_and_a_clean_restart() -> Result<()> {
    let mut agent = Agent::start("apprestarts", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: crash}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: app, image: busybox:1, command: [sh, -c, 'sleep 1; exit 3']}\n",
    )?;
    // First run, 10 s back-off, second run: one restart.
    assert!(eventually(Duration::from_secs(30), || restarts(&agent) >= 1), "{}", agent.pod("crash")?);
    let before = restarts(&agent);
    agent.crash()?;
    agent.spawn()?;
    let after_crash = restarts(&agent);
    assert!(after_crash >= before, "reset by a crash: {before} -> {after_crash}\n{}", agent.pod("crash")?);
    let pod = agent.pod("crash")?;
    let last = &pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"];
    assert!(last == 3 || pod["status"]["containerStatuses"][0]["state"]["running"].is_object(), "{pod}");
    assert!(agent.stop()?, "{}", agent.log());
    agent.spawn()?;
    let after_stop = restarts(&agent);
    assert!(after_stop >= after_crash, "reset by a restart: {after_crash} -> {after_stop}");
    agent.run_cli(&["delete", "pod", "crash"], None)?;
    Ok(())
}

/// (text, notAfter as Unix seconds) of the SVID the pod's container sees.
fn svid(agent: &Agent, tmp: &std::path::Path) -> Result<(String, u64)> {
    let (ok, pem, err) =
        agent.run_cli(&["exec", "rotating", "--", "cat", "/var/run/secrets/beemesh.io/svid.pem"], None)?;
    anyhow::ensure!(ok, "cat svid.pem: {err}");
    std::fs::write(tmp.join("svid.pem"), &pem)?;
    let out = std::process::Command::new("openssl")
        .args(["x509", "-in", "svid.pem", "-noout", "-enddate"])
        .current_dir(tmp)
        .output()?;
    let end = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("notAfter=").to_owned();
    let out = std::process::Command::new("date").args(["-u", "-d", &end, "+%s"]).output()?;
    let secs =
        String::from_utf8_lossy(&out.stdout).trim().parse().with_context(|| format!("date of {end:?}"))?;
    Ok((pem, secs))
}

#[test]
fn pod_svids_rotate_before_they_expire_and_stay_valid() -> Result<()> {
    let agent = Agent::start_with_config("appsvid", &[], "svidLifetimeSeconds: 20\n")?;
    agent.import_busybox("busybox:1")?;
    let yaml = sleeper("rotating");
    agent.apply(&yaml)?;
    agent.wait_ready("rotating", T)?;
    let tmp = tempfile::tempdir()?;
    let (first, expires) = svid(&agent, tmp.path())?;
    let now = || SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    assert!(expires <= now() + 21, "lifetime is 20 s: expires {expires}, now {}", now());
    // Renewed at half-life: a new certificate appears well before the first one expires.
    let started = Instant::now();
    let mut second = None;
    while now() < expires && started.elapsed() < Duration::from_secs(25) {
        let (pem, until) = svid(&agent, tmp.path())?;
        if pem != first {
            second = Some((pem, until, now()));
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, until, seen) = second.context("the SVID did not change before it expired")?;
    assert!(seen < expires, "changed only at {seen}, after expiry {expires}");
    assert!(seen + 15 >= expires, "renewed long before half-life: at {seen}, expiry {expires}");
    assert!(until > expires, "the new one lasts longer: {until} vs {expires}");
    let (ok, bundle, err) =
        agent.run_cli(&["exec", "rotating", "--", "cat", "/var/run/secrets/beemesh.io/bundle.pem"], None)?;
    anyhow::ensure!(ok, "{err}");
    std::fs::write(tmp.path().join("bundle.pem"), bundle)?;
    let out = std::process::Command::new("openssl")
        .args(["verify", "-CAfile", "bundle.pem", "-purpose", "sslclient", "svid.pem"])
        .current_dir(tmp.path())
        .output()?;
    let verified = String::from_utf8_lossy(&out.stdout);
    assert!(verified.contains("svid.pem: OK"), "{verified} {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[test]
fn pods_deleted_right_after_apply_go_away() -> Result<()> {
    let agent = Agent::start("appchurn", &[])?;
    agent.import_busybox("busybox:1")?;
    let names: Vec<String> = (0..5).map(|i| format!("churn-{i}")).collect();
    for name in &names {
        agent.apply(&sleeper(name))?;
    }
    for name in &names {
        let (ok, _, err) = agent.run_cli(&["delete", "--no-wait", "pod", name], None)?;
        assert!(ok, "delete {name}: {err}");
    }
    for name in &names {
        let (ok, _, err) = agent.run_cli(&["wait", name, "--for", "deleted", "--timeout", "20"], None)?;
        assert!(ok, "{name} not deleted: {err}\n{}", agent.log());
    }
    let (_, pods, _) = agent.run_cli(&["get", "pods"], None)?;
    assert_eq!(pods.lines().count(), 1, "only the header: {pods}");
    Ok(())
}
