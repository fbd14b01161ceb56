//! End-to-end pods: Kubernetes manifests run as containers in their own namespaces, networked
//! by slirp4netns, with the pod's identity on every host socket its traffic uses.

use std::time::Duration;

use anyhow::Result;
use beemesh_tests::{eventually, port, Agent};

const T: Duration = Duration::from_secs(20);

#[test]
fn a_pod_runs_in_its_namespaces_and_is_deleted_without_a_trace() -> Result<()> {
    let agent = Agent::start("podrun", &[])?;
    agent.import_busybox("busybox:1")?;
    let out = agent.apply(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: hello
  labels: {app: hello}
spec:
  containers:
  - name: main
    image: busybox:1
    command: ["sh", "-c", "echo started as $(id -u) on $(hostname); ls /; cat /proc/1/cmdline; echo; sleep 1000"]
"#,
    )?;
    assert_eq!(out.trim(), "pod/hello created");
    agent.wait_ready("hello", T)?;
    let pod = agent.pod("hello")?;
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    assert!(eventually(T, || agent
        .run_cli(&["logs", "hello"], None)
        .is_ok_and(|(_, o, _)| o.contains("started as 0 on hello"))));
    let (_, logs, _) = agent.run_cli(&["logs", "hello"], None)?;
    assert!(logs.contains("pod-init"), "PID 1 is the pod's init: {logs}");
    let (ok, out, err) =
        agent.run_cli(&["exec", "hello", "--", "sh", "-c", "echo inside $(hostname)"], None)?;
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "inside hello");
    let (ok, table, _) = agent.run_cli(&["get", "pods"], None)?;
    assert!(ok && table.contains("hello") && table.contains("1/1") && table.contains("Running"), "{table}");

    let (ok, out, err) = agent.run_cli(&["delete", "pod", "hello"], None)?;
    assert!(ok, "{err}");
    assert!(out.contains("pod/hello deleted"));
    let (_, table, _) = agent.run_cli(&["get", "pods"], None)?;
    assert!(!table.contains("hello"), "{table}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(!mounts.contains(&agent.name), "mounts left behind:\n{mounts}");
    assert!(!agent.cgroup_root().join("pod-default-hello").exists(), "cgroup left behind");
    assert!(!agent.state_dir().join("pods/pod-default-hello").exists(), "pod directory left behind");
    let _ = port();
    Ok(())
}
