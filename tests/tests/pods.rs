//! End-to-end pods: Kubernetes manifests run as containers in their own namespaces, networked
//! by slirp4netns, with the pod's identity on every host socket its traffic uses.

use std::time::Duration;

use anyhow::Result;
use beemesh_tests::{eventually, host_addr, port, Agent};

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
    command: ["sh", "-c", "trap 'exit 0' TERM; echo started as $(id -u) on $(hostname); echo pid1=$(head -c 2 /proc/1/cmdline); sleep 1000 & wait"]
"#,
    )?;
    // A mesh of one: the cluster state is held here only, and `apply` says so.
    assert_eq!(out.trim(), "pod/hello created (no other host holds it yet)");
    agent.wait_ready("hello", T)?;
    let pod = agent.pod("hello")?;
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    assert!(eventually(T, || agent
        .run_cli(&["logs", "hello"], None)
        .is_ok_and(|(_, o, _)| o.contains("started as 0 on hello"))));
    // The container has a pid namespace of its own: its command is PID 1 there, and an
    // exec joins it (it sees the container's processes, not the pod's init).
    let (_, logs, _) = agent.run_cli(&["logs", "hello"], None)?;
    assert!(logs.contains("pid1=sh"), "PID 1 is the container's command: {logs}");
    let (ok, out, err) = agent
        .run_cli(&["exec", "hello", "--", "sh", "-c", "echo inside $(hostname); ps -o pid,args"], None)?;
    assert!(ok, "{err}");
    assert!(out.starts_with("inside hello"), "{out}");
    assert!(out.lines().any(|l| l.trim().starts_with("1 sh -c")), "{out}");
    assert!(!out.contains("pod-init"), "the pod's init is visible: {out}");
    // Contained: the pod's init (in the host's mount namespace) is not even visible,
    // kernel knobs are read-only, and no CAP_SYS_ADMIN (bit 21) is left.
    let probe = "for f in /proc/[0-9]*/cmdline; do grep -q pod-ini[t] $f && echo ESCAPED; done; \
                 echo 1 > /proc/sys/kernel/core_pattern && echo WROTE; grep CapEff /proc/self/status";
    let (_, out, _) = agent.run_cli(&["exec", "hello", "--", "sh", "-c", probe], None)?;
    assert!(!out.contains("ESCAPED") && !out.contains("WROTE"), "{out}");
    let cap_eff = out.lines().find_map(|l| l.strip_prefix("CapEff:")).map(str::trim).unwrap_or("");
    let caps = u64::from_str_radix(cap_eff, 16).unwrap_or(u64::MAX);
    assert_eq!(caps & (1 << 21), 0, "CAP_SYS_ADMIN kept: {out}");
    let (_, logs, _) = agent.run_cli(&["logs", "hello"], None)?;
    assert!(!logs.contains("ESCAPED"), "{logs}");
    let (ok, table, _) = agent.run_cli(&["get", "pods"], None)?;
    assert!(ok && table.contains("hello") && table.contains("1/1") && table.contains("Running"), "{table}");

    let w = agent.pod_workload("hello")?;
    // The pod's namespaces, named by the links of its init process (the pod leaf's only
    // direct member).
    let init_pid = std::fs::read_to_string(agent.cgroup_root().join(&w).join("pod/cgroup.procs"))?;
    let init_pid = init_pid.lines().next().unwrap_or_default().to_owned();
    let namespaces: Vec<std::path::PathBuf> = ["net", "pid", "ipc", "uts", "user"]
        .iter()
        .map(|ns| std::fs::read_link(format!("/proc/{init_pid}/ns/{ns}")))
        .collect::<std::io::Result<_>>()?;
    let (ok, out, err) = agent.run_cli(&["delete", "pod", "hello"], None)?;
    assert!(ok, "{err}");
    assert!(out.contains("pod/hello deleted"));
    let (_, table, _) = agent.run_cli(&["get", "pods"], None)?;
    assert!(!table.contains("hello"), "{table}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(!mounts.contains(&agent.name), "mounts left behind:\n{mounts}");
    assert!(!agent.cgroup_root().join(&w).exists(), "cgroup left behind");
    // (The kernel takes the namespaces down as the pod's last processes finish exiting.)
    let holders = || {
        let mut alive = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            for ns in ["net", "pid", "ipc", "uts", "user"] {
                if let Ok(link) = std::fs::read_link(entry.path().join("ns").join(ns)) {
                    // Namespace numbers are reused: a pod of another test (in parallel) may
                    // hold the same one by now; only this agent's processes count.
                    let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
                    let elsewhere = cgroup.contains("/bmt-") && !cgroup.contains(&agent.name);
                    if namespaces.contains(&link) && !elsewhere {
                        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                        alive.push(format!(
                            "{} ({cmd}) holds {}",
                            entry.file_name().to_string_lossy(),
                            link.display()
                        ));
                    }
                }
            }
        }
        alive
    };
    assert!(
        eventually(T, || holders().is_empty()),
        "namespaces of the deleted pod still in use: {:?}",
        holders()
    );
    assert!(!agent.state_dir().join("pods").join(&w).exists(), "pod directory left behind");
    let _ = port();
    Ok(())
}

#[test]
fn containers_share_the_pods_pid_namespace_only_when_asked() -> Result<()> {
    let agent = Agent::start("podpidns", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: shared}
spec:
  shareProcessNamespace: true
  terminationGracePeriodSeconds: 30
  containers:
  - {name: a, image: busybox:1, command: [sleep, "1001"]}
  - {name: b, image: busybox:1, command: [sleep, "1002"]}
"#,
    )?;
    agent.wait_ready("shared", T)?;
    // Init is PID 1 of the pod's namespace, and each container sees the other's processes.
    let (ok, out, err) = agent.run_cli(&["exec", "shared", "-c", "b", "--", "ps", "-o", "pid,args"], None)?;
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.trim().starts_with("1 ") && l.contains("pod-init")), "{out}");
    assert!(out.contains("sleep 1001") && out.contains("sleep 1002"), "{out}");
    // Init is visible but cannot be entered through /proc (it is not dumpable).
    let (_, out, _) =
        agent.run_cli(&["exec", "shared", "--", "sh", "-c", "ls /proc/1/root/ && echo ESCAPED"], None)?;
    assert!(!out.contains("ESCAPED"), "{out}");
    // sleep is not PID 1 here, so it dies of SIGTERM: the delete does not wait out the grace.
    let t = std::time::Instant::now();
    let (ok, _, err) = agent.run_cli(&["delete", "pod", "shared"], None)?;
    assert!(ok, "{err}");
    assert!(t.elapsed() < Duration::from_secs(15), "SIGTERM did not end sleep: {:?}", t.elapsed());
    Ok(())
}

#[test]
fn sockets_work_under_a_long_state_dir_and_a_long_pod_name() -> Result<()> {
    // A state and a run directory of about 150 characters each and a 63-character pod name:
    // every socket path (admin, init.sock, slirp.sock) would pass the 107-byte limit as is.
    let base = tempfile::Builder::new().prefix("bmt-long-").tempdir()?;
    let long = |what: &str| {
        let mut p = base.path().join(what);
        while p.as_os_str().len() < 150 {
            p.push("nested-directory");
        }
        p
    };
    let (state, run) = (long("state"), long("run"));
    let agent = Agent::start(
        "podlong",
        &[
            ("BEEMESH_STATE_DIR", state.to_str().unwrap_or_default()),
            ("BEEMESH_RUN_DIR", run.to_str().unwrap_or_default()),
        ],
    )?;
    agent.import_busybox("busybox:1")?;
    let name = format!("long-{}", "n".repeat(58));
    assert_eq!(name.len(), 63);
    let host_port = port();
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: busybox:1
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    ports: [{{containerPort: 8080, hostPort: {host_port}}}]
    readinessProbe: {{httpGet: {{path: /index.html, port: 8080}}, periodSeconds: 1}}
"#
    ))?;
    agent.wait_ready(&name, T)?;
    let pod_dir = state.join("pods").join(agent.pod_workload(&name)?);
    for socket in ["init.sock", "slirp.sock"] {
        let path = pod_dir.join(socket);
        assert!(path.as_os_str().len() > 107, "{}", path.display());
        assert!(path.exists(), "{} missing", path.display());
    }
    // init.sock (exec goes through the agent) and slirp.sock (the hostPort forward).
    let (ok, out, err) = agent.run_cli(&["exec", &name, "--", "echo", "inside"], None)?;
    assert!(ok && out.trim() == "inside", "{out} {err}");
    let reply = http_get(&format!("127.0.0.1:{host_port}")).unwrap_or_default();
    assert!(reply.contains("200"), "{reply}");
    let (ok, _, err) = agent.run_cli(&["delete", "pod", &name], None)?;
    assert!(ok, "{err}");
    assert!(!pod_dir.exists(), "pod directory left behind");
    Ok(())
}

/// A pod of one busybox container running `sh -c script` as service account `sa`.
fn shell_pod(name: &str, sa: &str, script: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  serviceAccountName: {sa}
  containers:
  - name: c
    image: busybox:1
    command: ["sh", "-c", {script:?}]
"#
    )
}

fn logs(agent: &Agent, pod: &str, container: &str) -> String {
    agent.run_cli(&["logs", pod, "-c", container], None).map(|(_, o, _)| o).unwrap_or_default()
}

fn http_get(addr: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn two_containers_share_the_network_with_config_secret_downward_env_forward_and_probe() -> Result<()> {
    let agent = Agent::start("podweb", &[])?;
    agent.import_busybox("busybox:1")?;
    let host_port = port();
    let manifest = format!(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings}}
data: {{color: blue, mode: fast}}
---
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{token: s3cr3t}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec:
  serviceAccountName: frontend
  volumes:
  - name: conf
    configMap: {{name: settings}}
  containers:
  - name: server
    image: busybox:1
    command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
    ports:
    - containerPort: 8080
      hostPort: {host_port}
    readinessProbe:
      httpGet: {{path: /index.html, port: 8080}}
      periodSeconds: 1
  - name: sidecar
    image: busybox:1
    command: ["sh", "-c", "echo color=$COLOR token=$TOKEN mode=$APP_mode file=$(cat /conf/color); echo pod=$POD ns=$NS uid=$UID_ node=$NODE app=$APPL sa=$SA mem=$MEM_MI; until wget -q -O - http://127.0.0.1:8080/index.html; do sleep 0.2; done; sleep 1000"]
    resources:
      limits: {{memory: 64Mi}}
    env:
    - name: POD
      valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
    - name: NS
      valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}
    - name: UID_
      valueFrom: {{fieldRef: {{fieldPath: metadata.uid}}}}
    - name: NODE
      valueFrom: {{fieldRef: {{fieldPath: spec.nodeName}}}}
    - name: APPL
      valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['app']"}}}}
    - name: SA
      valueFrom: {{fieldRef: {{fieldPath: spec.serviceAccountName}}}}
    - name: MEM_MI
      valueFrom: {{resourceFieldRef: {{resource: limits.memory, divisor: 1Mi}}}}
    - name: COLOR
      valueFrom: {{configMapKeyRef: {{name: settings, key: color}}}}
    - name: TOKEN
      valueFrom: {{secretKeyRef: {{name: creds, key: token}}}}
    envFrom:
    - prefix: APP_
      configMapRef: {{name: settings}}
    volumeMounts:
    - {{name: conf, mountPath: /conf}}
"#
    );
    let out = agent.apply(&manifest)?;
    assert!(out.contains("configmap/settings created") && out.contains("secret/creds created"), "{out}");
    agent.wait_ready("web", T)?;
    let pod = agent.pod("web")?;
    assert_eq!(pod["status"]["containerStatuses"][0]["ready"], true, "{pod}");
    // Env from the ConfigMap and the Secret, a configMap volume, and localhost shared with
    // the other container (one network namespace per pod).
    assert!(
        eventually(T, || logs(&agent, "web", "sidecar").contains("hello from a pod")),
        "sidecar log: {}",
        logs(&agent, "web", "sidecar")
    );
    let side = logs(&agent, "web", "sidecar");
    assert!(side.contains("color=blue token=s3cr3t mode=fast file=blue"), "{side}");
    // The downward API: the pod's own fields as the cluster state holds them.
    let (uid, node) =
        (pod["metadata"]["uid"].as_str().unwrap_or("?"), pod["spec"]["nodeName"].as_str().unwrap_or("?"));
    let downward = format!("pod=web ns=default uid={uid} node={node} app=web sa=frontend mem=64");
    assert!(side.contains(&downward), "{downward:?} not in {side}");
    // The hostPort forward reaches the pod from the host.
    let reply = http_get(&format!("127.0.0.1:{host_port}")).unwrap_or_default();
    assert!(reply.contains("200") && reply.contains("hello from a pod"), "{reply}");
    let (_, table, _) = agent.run_cli(&["get", "pods", "-o", "wide"], None)?;
    assert!(
        table.contains("2/2") && table.contains("spiffe://beemesh.local/ns/default/sa/frontend"),
        "{table}"
    );
    // The forward's host socket is the pod's: the kernel tagged it with the pod's identity.
    let (ok, owner, _) = agent.run_cli(&["owner", &host_port.to_string()], None)?;
    assert!(ok && owner.contains("sa/frontend"), "{owner}");
    Ok(())
}

#[test]
fn memory_limit_oom_kills_and_reports_oomkilled() -> Result<()> {
    let agent = Agent::start("podoom", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: busybox:1
    command: ["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"]
    resources:
      limits: {memory: 32Mi}
"#,
    )?;
    let reason = || -> String {
        agent
            .pod("hog")
            .map(|p| {
                p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .unwrap_or_default()
    };
    assert!(eventually(T, || reason() == "OOMKilled"), "pod: {}", agent.pod("hog")?);
    let pod = agent.pod("hog")?;
    assert_eq!(pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 137);
    assert_eq!(pod["status"]["phase"], "Failed");
    assert!(!logs(&agent, "hog", "hog").contains("survived"));
    Ok(())
}

#[test]
fn crashing_container_restarts_with_back_off() -> Result<()> {
    let agent = Agent::start("podcrash", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  containers:
  - name: app
    image: busybox:1
    command: ["sh", "-c", "echo attempt; exit 3"]
"#,
    )?;
    let status = || agent.run_cli(&["get", "pods"], None).map(|(_, o, _)| o).unwrap_or_default();
    // The first exit is followed by a 10 s back-off, shown as CrashLoopBackOff.
    assert!(eventually(T, || status().contains("CrashLoopBackOff")), "{}", status());
    let pod = agent.pod("crash")?;
    assert_eq!(pod["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 3, "{pod}");
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0, "{pod}");
    let restarted =
        || agent.pod("crash").is_ok_and(|p| p["status"]["containerStatuses"][0]["restartCount"] == 1);
    // The 10 s back-off, with a margin for a loaded machine.
    assert!(eventually(Duration::from_secs(40), restarted), "{}", agent.pod("crash")?);
    let (ok, previous, err) = agent.run_cli(&["logs", "crash", "--previous"], None)?;
    assert!(ok && previous.contains("attempt"), "{previous} {err}");
    Ok(())
}

#[test]
fn unknown_image_is_errimagepull_not_a_crash() -> Result<()> {
    let agent = Agent::start("podnoimg", &[])?;
    agent.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ghost}\nspec:\n  containers:\n  - {name: c, image: nowhere:1}\n",
    )?;
    let status = || agent.run_cli(&["get", "pods"], None).map(|(_, o, _)| o).unwrap_or_default();
    assert!(eventually(T, || status().contains("ErrImagePull")), "{}", status());
    let pod = agent.pod("ghost")?;
    let msg = pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(msg.contains("nowhere"), "{pod}");
    agent.run_cli(&["delete", "pod", "ghost"], None)?;
    assert!(!status().contains("ghost"));
    Ok(())
}

#[test]
fn bad_manifests_are_rejected_whole_and_change_nothing() -> Result<()> {
    let agent = Agent::start("podbad", &[])?;
    let cases = [
        ("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: s}\n", "unsupported kind networking.k8s.io/v1/Ingress"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name}\nspec:\n  containers:\n  - {name: c, image: x}\n", "invalid name"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c}\n", "image"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  hostNetwork: true\n  containers:\n  - {name: c, image: x}\n", "spec.hostNetwork"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p\nspec: [\n", "-:"),
    ];
    for (yaml, expect) in cases {
        // A good ConfigMap first: the whole file is refused, so it must not appear either.
        let text =
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm}}\ndata: {{a: b}}\n---\n{yaml}");
        let (ok, _, err) = agent.run_cli(&["apply", "-f", "-"], Some(&text))?;
        assert!(!ok, "accepted: {yaml}");
        assert!(err.contains(expect), "error for {yaml:?} should mention {expect:?}: {err}");
    }
    let (_, pods, _) = agent.run_cli(&["get", "pods", "-A"], None)?;
    assert_eq!(pods.lines().count(), 1, "only the header: {pods}");
    let (_, deleted, _) = agent
        .run_cli(&["delete", "-f", "-"], Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n"))?;
    assert!(deleted.contains("not found"), "the ConfigMap was never stored: {deleted}");
    Ok(())
}

#[test]
fn policy_lets_one_pod_reach_a_host_service_and_refuses_another() -> Result<()> {
    let agent = Agent::start("podpolicy", &[])?;
    agent.import_busybox("busybox:1")?;
    let p = port();
    // A host service on a host address (10.0.2.2 no longer leads to the host's loopback).
    let addr = host_addr();
    let server = agent.host_probe(&["listen", &format!("{addr}:{p}")])?;
    assert_eq!(server.line(T)?, "listening");
    agent.write_policy(
        "pods.yaml",
        &format!(
            r#"
apiVersion: beemesh.io/v1alpha1
kind: IdentityPolicy
metadata: {{name: pods-isolated}}
spec:
  selector: {{identities: ["spiffe://beemesh.local/ns/default/*"]}}
  egress: []
---
apiVersion: beemesh.io/v1alpha1
kind: IdentityPolicy
metadata: {{name: allowed-to-host}}
spec:
  selector: {{identities: ["spiffe://beemesh.local/ns/default/sa/allowed"]}}
  egress:
  - to: [{{entity: host}}]
    ports: [{{port: {p}}}]
"#
        ),
    )?;
    let pod = |name: &str, sa: &str| {
        let script = format!(
            "while true; do if nc -w 2 {addr} {p} </dev/null; then echo CONNECTED; else echo FAILED; fi; sleep 1; done"
        );
        shell_pod(name, sa, &script)
    };
    agent.apply(&pod("good", "allowed"))?;
    agent.apply(&pod("bad", "other"))?;
    assert!(
        eventually(T, || logs(&agent, "good", "c").contains("CONNECTED")),
        "good: {}",
        logs(&agent, "good", "c")
    );
    assert!(
        eventually(T, || logs(&agent, "bad", "c").contains("FAILED")),
        "bad: {}",
        logs(&agent, "bad", "c")
    );
    let bad = logs(&agent, "bad", "c");
    assert!(!bad.contains("CONNECTED"), "{bad}");
    // The kernel's EPERM reaches the pod as a refused connection.
    assert!(bad.contains("Connection refused"), "{bad}");
    let flows = agent.flows()?;
    assert!(
        flows
            .iter()
            .any(|f| f["verdict"] == "deny" && f["subject"].as_str().unwrap_or("").ends_with("sa/other")),
        "{flows:?}"
    );
    Ok(())
}

/// Processes, mounts and cgroups that mention this agent (its name is in every path).
fn traces(agent: &Agent) -> Vec<String> {
    let mut found = Vec::new();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    found.extend(mounts.lines().filter(|l| l.contains(&agent.name)).map(|l| format!("mount: {l}")));
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(&agent.name)
            && !text.contains(" run")
            && (text.contains("pod-init") || text.contains("slirp4netns"))
        {
            found.push(format!("process {}: {text}", entry.file_name().to_string_lossy()));
        }
    }
    let pod_dirs = |dir: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir() && e.file_name().to_string_lossy().starts_with("pod-"))
            .map(|e| e.path().display().to_string())
            .collect()
    };
    found.extend(pod_dirs(&agent.cgroup_root()).into_iter().map(|d| format!("cgroup2: {d}")));
    for c in ["memory", "cpu", "pids"] {
        let base = std::path::Path::new("/sys/fs/cgroup").join(c);
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let rel = own.lines().find_map(|l| {
            let f: Vec<&str> = l.splitn(3, ':').collect();
            (f.len() == 3 && f[1].split(',').any(|x| x == c)).then(|| f[2].trim_start_matches('/').to_owned())
        });
        if let Some(rel) = rel {
            let dir = base.join(rel).join(&agent.name);
            found.extend(pod_dirs(&dir).into_iter().map(|d| format!("cgroup v1: {d}")));
        }
    }
    found
}

#[test]
fn pods_survive_an_agent_crash_and_a_clean_stop_leaves_nothing() -> Result<()> {
    let mut agent = Agent::start("podadopt", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: keep}\nspec:\n  containers:\n  - {name: c, image: busybox:1, command: [sh, -c, 'trap \"exit 0\" TERM; sleep 1000 & echo up; wait']}\n",
    )?;
    agent.wait_ready("keep", T)?;
    // "up" comes once sleep was forked: the container's processes are all there.
    assert!(eventually(T, || logs(&agent, "keep", "c").contains("up")), "{}", logs(&agent, "keep", "c"));
    let procs = agent.cgroup_root().join(agent.pod_workload("keep")?).join("pod/c/cgroup.procs");
    let before = std::fs::read_to_string(&procs)?;
    agent.crash()?;
    agent.spawn()?;
    agent.wait_ready("keep", T)?;
    assert_eq!(std::fs::read_to_string(&procs)?, before, "the same processes run on");
    assert_eq!(logs(&agent, "keep", "c").matches("up").count(), 1, "not restarted");
    let (ok, out, err) = agent.run_cli(&["exec", "keep", "--", "echo", "still here"], None)?;
    assert!(ok && out.contains("still here"), "{err}");
    assert!(!traces(&agent).is_empty(), "the pod runs");
    assert!(agent.stop()?, "{}", agent.log());
    let left = traces(&agent);
    assert!(left.is_empty(), "left behind: {left:#?}");
    // The applied pod is desired state: the next agent starts it again.
    agent.spawn()?;
    agent.wait_ready("keep", T)?;
    agent.run_cli(&["delete", "pod", "keep"], None)?;
    assert!(traces(&agent).is_empty(), "left behind after delete: {:#?}", traces(&agent));
    Ok(())
}

#[test]
fn attach_writes_a_containers_input_and_follows_its_terminal_across_an_agent_crash() -> Result<()> {
    let mut agent = Agent::start("podattach", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: chat}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox:1
    stdin: true
    stdinOnce: true
    command: [sh, -c, 'while read line; do echo "heard $line"; done; echo "input ended"']
  - name: plain
    image: busybox:1
    command: [sleep, "1000"]
---
apiVersion: v1
kind: Pod
metadata: {name: term}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: busybox:1
    stdin: true
    tty: true
    command: [sh, -c, '[ -t 0 ] && [ -t 1 ] && echo "a terminal of $(stty size)"; read x; echo "got:$x"; read y; echo "then:$y"; sleep 1000']
"#,
    )?;
    agent.wait_ready("chat", T)?;
    agent.wait_ready("term", T)?;
    // A container without `stdin: true` takes no input.
    let (ok, _, err) = agent.run_cli(&["attach", "chat", "-c", "plain", "-i"], Some("x\n"))?;
    assert!(!ok && err.contains("stdin: true"), "{err}");
    // stdinOnce: what the attach sends is read, and its end ends the container's input.
    let (ok, out, err) = agent.run_cli(&["attach", "chat", "-i"], Some("one\ntwo\n"))?;
    assert!(ok, "{err}");
    assert!(out.contains("heard one\nheard two\ninput ended\n"), "{out}");
    assert!(
        eventually(T, || agent
            .pod("chat")
            .is_ok_and(|p| p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0)),
        "{:?}",
        agent.pod("chat")
    );
    let (ok, _, err) = agent.run_cli(&["attach", "chat", "-i"], Some("three\n"))?;
    assert!(!ok && err.contains("not running"), "{err}");

    // A terminal: the container's streams are one (24x80 until an attach says otherwise), its
    // output reaches the log, and what an attach types is its input (echoed, as terminals do).
    assert!(
        eventually(T, || logs(&agent, "term", "c").contains("a terminal of 24 80")),
        "{}",
        logs(&agent, "term", "c")
    );
    // The agent restarts: the terminal and its input stay with the pod's init.
    agent.crash()?;
    agent.spawn()?;
    agent.wait_ready("term", T)?;
    // Each attach sends its input and ends it; not stdinOnce, so the container's input stays
    // open for the next, and each attach follows the terminal until the container ends.
    let attach = |input: &[u8]| -> Result<std::process::Child> {
        use std::io::Write;
        let mut child = agent
            .cli()
            .args(["attach", "term", "-i", "-t", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        child.stdin.take().expect("piped").write_all(input)?;
        Ok(child)
    };
    let first = attach(b"abc\n")?;
    assert!(eventually(T, || logs(&agent, "term", "c").contains("got:abc")), "{}", logs(&agent, "term", "c"));
    let second = attach(b"def\n")?;
    assert!(
        eventually(T, || logs(&agent, "term", "c").contains("then:def")),
        "{}",
        logs(&agent, "term", "c")
    );
    agent.run_cli(&["delete", "pod", "term"], None)?;
    let (first, second) = (first.wait_with_output()?, second.wait_with_output()?);
    let shown = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success() && shown.contains("abc\r\ngot:abc\r\n") && shown.contains("then:def"),
        "{first:?}"
    );
    assert!(
        second.status.success() && String::from_utf8_lossy(&second.stdout).contains("def\r\nthen:def"),
        "{second:?}"
    );
    Ok(())
}

#[test]
fn a_pod_waiting_for_its_image_survives_an_agent_crash() -> Result<()> {
    let mut agent = Agent::start("podwaitimg", &[])?;
    agent.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: later}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {name: c, image: busybox:1, command: [sh, -c, 'echo up; sleep 1000']}\n",
    )?;
    let status = |agent: &Agent| agent.run_cli(&["get", "pods"], None).map(|(_, o, _)| o).unwrap_or_default();
    assert!(eventually(T, || status(&agent).contains("ErrImagePull")), "{}", status(&agent));
    // Its sandbox runs with no container started yet when the agent dies.
    agent.crash()?;
    agent.spawn()?;
    assert!(eventually(T, || status(&agent).contains("ErrImagePull")), "{}", status(&agent));
    // The re-adopted sandbox (or a new one) runs the container once the image is there.
    agent.import_busybox("busybox:1")?;
    agent.wait_ready("later", T)?;
    assert!(eventually(T, || logs(&agent, "later", "c").contains("up")));
    agent.run_cli(&["delete", "pod", "later"], None)?;
    Ok(())
}

#[test]
fn deletion_sends_sigterm_then_sigkill_after_the_grace_period() -> Result<()> {
    let agent = Agent::start("podgrace", &[])?;
    agent.import_busybox("busybox:1")?;
    let pod = |name: &str, grace: u32, on_term: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: {grace}
  containers:
  - name: c
    image: busybox:1
    command: ["sh", "-c", "trap '{on_term}' TERM; echo ready; while true; do sleep 0.1; done"]
"#
        )
    };
    // One leaves at SIGTERM, well inside its 60 s grace period.
    agent.apply(&pod("polite", 60, "exit 0"))?;
    // The other ignores SIGTERM: SIGKILL ends it when its 3 s grace period is over.
    agent.apply(&pod("stubborn", 3, "echo ignoring"))?;
    agent.wait_ready("polite", T)?;
    agent.wait_ready("stubborn", T)?;
    assert!(eventually(T, || logs(&agent, "stubborn", "c").contains("ready")));
    let t = std::time::Instant::now();
    let (ok, _, err) = agent.run_cli(&["delete", "pod", "polite"], None)?;
    assert!(ok, "{err}");
    // (Margins for a loaded machine: half the grace period is far from both outcomes.)
    assert!(t.elapsed() < Duration::from_secs(30), "SIGTERM not delivered: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let mut delete = agent
        .cli()
        .args(["delete", "pod", "stubborn"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    // SIGTERM reached it (its trap ran: it is PID 1 of its pid namespace, which gets only
    // the signals it handles)...
    assert!(
        eventually(T, || logs(&agent, "stubborn", "c").contains("ignoring")),
        "no SIGTERM: {}",
        logs(&agent, "stubborn", "c")
    );
    assert!(delete.wait()?.success(), "delete failed");
    let took = t.elapsed();
    // ...then SIGKILL at the deadline, never before.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(30),
        "grace period not kept: {took:?}"
    );
    Ok(())
}

#[test]
fn udp_from_a_pod_is_policed_where_it_leaves_slirp4netns() -> Result<()> {
    let agent = Agent::start("podudp", &[])?;
    agent.import_busybox("busybox:1")?;
    let receiver = std::net::UdpSocket::bind((host_addr(), 0))?;
    let p = receiver.local_addr()?.port();
    agent.write_policy(
        "udp.yaml",
        &format!(
            r#"
apiVersion: beemesh.io/v1alpha1
kind: IdentityPolicy
metadata: {{name: udp-for-allowed}}
spec:
  selector: {{identities: ["spiffe://beemesh.local/ns/default/sa/allowed"]}}
  egress:
  - to: [{{entity: host}}]
    ports: [{{port: {p}, protocol: UDP}}]
---
apiVersion: beemesh.io/v1alpha1
kind: IdentityPolicy
metadata: {{name: others-isolated}}
spec:
  selector: {{identities: ["spiffe://beemesh.local/ns/default/sa/denied"]}}
  egress: []
"#
        ),
    )?;
    let addr = host_addr();
    let pod = |name: &str, sa: &str| {
        shell_pod(name, sa, &format!("while true; do tftp -g -r from-{name} {addr} {p}; sleep 0.5; done"))
    };
    // (tftp sends its read request as one UDP datagram; nobody answers it, which is fine.)
    agent.apply(&pod("denied", "denied"))?;
    agent.wait_ready("denied", T)?;
    // The denied pod's datagrams were sent and stopped where they left slirp4netns: the
    // kernel reports the denial...
    let denied_flow = |f: &serde_json::Value| {
        f["verdict"] == "deny"
            && f["subject"].as_str().unwrap_or("").ends_with("sa/denied")
            && f["proto"].as_str().is_some_and(|x| x.eq_ignore_ascii_case("udp"))
            && f["port"] == p
    };
    assert!(
        eventually(T, || agent.flows().is_ok_and(|flows| flows.iter().any(denied_flow))),
        "no deny flow for the denied pod: {:?}",
        agent.flows()?
    );
    // ...and none arrived (read without waiting: what was sent before the denial was
    // reported is in the socket's queue by now).
    receiver.set_nonblocking(true)?;
    let mut buf = [0u8; 512];
    let mut drain = |got: &mut Vec<String>| {
        while let Ok((n, _)) = receiver.recv_from(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    };
    let mut early = Vec::new();
    drain(&mut early);
    assert!(early.iter().all(|d| !d.contains("from-denied")), "a denied pod's datagram arrived: {early:?}");
    agent.apply(&pod("allowed", "allowed"))?;
    let mut later = Vec::new();
    assert!(
        eventually(T, || {
            drain(&mut later);
            later.iter().any(|d| d.contains("from-allowed"))
        }),
        "the allowed pod's datagrams: {later:?}"
    );
    assert!(later.iter().all(|d| !d.contains("from-denied")), "{later:?}");
    Ok(())
}

#[test]
fn pods_cannot_reach_the_hosts_loopback() -> Result<()> {
    let agent = Agent::start("podloopback", &[])?;
    agent.import_busybox("busybox:1")?;
    // A service on the host's 127.0.0.1, no policy at all: 10.0.2.2 is not the host's
    // loopback (slirp4netns --disable-host-loopback), so the pod cannot reach it.
    let server = std::net::TcpListener::bind("127.0.0.1:0")?;
    server.set_nonblocking(true)?;
    let p = server.local_addr()?.port();
    agent.apply(&shell_pod(
        "curious",
        "curious",
        &format!("while true; do if nc -w 2 10.0.2.2 {p} </dev/null; then echo CONNECTED; else echo FAILED; fi; sleep 1; done"),
    ))?;
    // The attempt was made and refused by slirp4netns (the pod sees the error)...
    assert!(
        eventually(T, || logs(&agent, "curious", "c").contains("FAILED")),
        "{}",
        logs(&agent, "curious", "c")
    );
    let out = logs(&agent, "curious", "c");
    assert!(!out.contains("CONNECTED"), "{out}");
    assert!(out.contains("unreachable"), "{out}");
    // ...and nothing reached the host's listener.
    assert!(server.accept().is_err(), "a connection reached the host's loopback");
    Ok(())
}

#[test]
fn tcp_readiness_and_exec_liveness_probes_act() -> Result<()> {
    let agent = Agent::start("podprobe", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: probed}
spec:
  containers:
  - name: c
    image: busybox:1
    command: ["sh", "-c", "touch /tmp/alive; until [ -f /tmp/go ]; do sleep 0.1; done; httpd -p 8080 -h /www; until [ -f /tmp/stop ]; do sleep 0.1; done; rm /tmp/alive; sleep 1000"]
    readinessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 1
    livenessProbe:
      exec: {command: [sh, -c, "echo x >> /tmp/probed; test -f /tmp/alive"]}
      periodSeconds: 1
      failureThreshold: 2
"#,
    )?;
    let ready = || agent.pod("probed").is_ok_and(|p| p["status"]["containerStatuses"][0]["ready"] == true);
    let exec = |script: &str| agent.run_cli(&["exec", "probed", "--", "sh", "-c", script], None);
    // Not ready while its server does not listen, though the probes (both every second)
    // have run a few times: the liveness probe counts its runs in /tmp/probed.
    let probed =
        || exec("wc -l < /tmp/probed").is_ok_and(|(_, o, _)| o.trim().parse::<u32>().unwrap_or(0) >= 3);
    assert!(eventually(T, probed), "the probes do not run: {}", agent.pod("probed")?);
    assert!(!ready(), "ready before the port was open: {}", agent.pod("probed")?);
    // Ready once it listens.
    let (ok, _, err) = exec("touch /tmp/go")?;
    assert!(ok, "{err}");
    assert!(eventually(T, ready), "{}", agent.pod("probed")?);
    // The liveness probe fails once /tmp/alive is gone: the container is killed (137).
    let (ok, _, err) = exec("touch /tmp/stop")?;
    assert!(ok, "{err}");
    let killed = || {
        agent
            .pod("probed")
            .is_ok_and(|p| p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 137)
    };
    assert!(eventually(T, killed), "{}", agent.pod("probed")?);
    Ok(())
}

#[test]
fn init_containers_volumes_subpath_read_only_host_path_and_a_non_root_user() -> Result<()> {
    let agent = Agent::start("podvol", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.import_busybox_as("busybox:nobody", "65534")?;
    let host_dir = agent.dir.path().join("shared");
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(host_dir.join("hello.txt"), "from the host")?;
    let manifest = format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: s}}
stringData: {{token: t0ken}}
---
apiVersion: v1
kind: Pod
metadata: {{name: features}}
spec:
  restartPolicy: OnFailure
  volumes:
  - {{name: scratch, emptyDir: {{}}}}
  - {{name: host, hostPath: {{path: {host}, type: Directory}}}}
  - {{name: creds, secret: {{secretName: s}}}}
  initContainers:
  - name: prepare
    image: busybox:1
    command: [sh, -c]
    args: ["mkdir -p /scratch/sub && echo from-init > /scratch/sub/greeting && chmod -R 777 /scratch/sub"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  containers:
  - name: main
    image: busybox:nobody
    workingDir: /work
    command: [sh, -c]
    args:
    - >-
      echo cwd=$(pwd) uid=$(id -u);
      cat /data/greeting; cat /host/hello.txt; echo;
      touch /host/x && echo HOST-WRITTEN || echo host-read-only;
      echo token=$(cat /creds/token);
      grep CapEff /proc/self/status;
      sleep 1000
    resources:
      limits: {{cpu: 250m, memory: 64Mi}}
    volumeMounts:
    - {{name: scratch, mountPath: /data, subPath: sub}}
    - {{name: host, mountPath: /host, readOnly: true}}
    - {{name: creds, mountPath: /creds}}
"#,
        host = host_dir.display()
    );
    agent.apply(&manifest)?;
    agent.wait_ready("features", T)?;
    assert!(
        eventually(T, || logs(&agent, "features", "main").contains("CapEff")),
        "{}",
        logs(&agent, "features", "main")
    );
    let out = logs(&agent, "features", "main");
    assert!(out.contains("cwd=/work uid=65534"), "{out}");
    assert!(out.contains("from-init"), "init container output through the subPath: {out}");
    assert!(
        out.contains("from the host") && out.contains("host-read-only") && !out.contains("HOST-WRITTEN"),
        "{out}"
    );
    assert!(out.contains("token=t0ken"), "{out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "a non-root user holds no capabilities: {out}");
    assert!(!host_dir.join("x").exists());
    let pod = agent.pod("features")?;
    assert_eq!(
        pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["reason"], "Completed",
        "{pod}"
    );
    // The cpu limit is a CFS quota in the container's cgroup v1 group.
    let own = std::fs::read_to_string("/proc/self/cgroup")?;
    let cpu_rel = own
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.splitn(3, ':').collect();
            (f.len() == 3 && f[1].split(',').any(|c| c == "cpu"))
                .then(|| f[2].trim_start_matches('/').to_owned())
        })
        .unwrap_or_default();
    let quota = std::path::Path::new("/sys/fs/cgroup/cpu")
        .join(cpu_rel)
        .join(&agent.name)
        .join(agent.pod_workload("features")?)
        .join("main/cpu.cfs_quota_us");
    assert_eq!(std::fs::read_to_string(&quota)?.trim(), "25000", "{}", quota.display());
    Ok(())
}

#[test]
fn every_pod_gets_an_x509_svid_of_its_identity() -> Result<()> {
    let agent = Agent::start("podsvid", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: certified}\nspec:\n  serviceAccountName: frontend\n  containers:\n  - {name: c, image: busybox:1, command: [sleep, '1000']}\n",
    )?;
    agent.wait_ready("certified", T)?;
    let dir = "/var/run/secrets/beemesh.io";
    let read = |file: &str| -> Result<String> {
        let (ok, out, err) =
            agent.run_cli(&["exec", "certified", "--", "cat", &format!("{dir}/{file}")], None)?;
        anyhow::ensure!(ok, "cat {file}: {err}");
        Ok(out)
    };
    let tmp = tempfile::tempdir()?;
    for file in ["svid.pem", "svid_key.pem", "bundle.pem"] {
        std::fs::write(tmp.path().join(file), read(file)?)?;
    }
    let openssl = |args: &[&str]| -> Result<String> {
        let out = std::process::Command::new("openssl").args(args).current_dir(tmp.path()).output()?;
        anyhow::ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // The certificate names the pod's SPIFFE id, chains to the trust bundle, and matches its key.
    let san = openssl(&["x509", "-in", "svid.pem", "-noout", "-ext", "subjectAltName"])?;
    assert!(san.contains("URI:spiffe://beemesh.local/ns/default/sa/frontend"), "{san}");
    let verified = openssl(&["verify", "-CAfile", "bundle.pem", "-purpose", "sslclient", "svid.pem"])?;
    assert!(verified.contains("svid.pem: OK"), "{verified}");
    let cert_key = openssl(&["x509", "-in", "svid.pem", "-noout", "-pubkey"])?;
    let key_pub = openssl(&["pkey", "-in", "svid_key.pem", "-pubout"])?;
    assert_eq!(cert_key, key_pub, "the key is the certificate's");
    // Containers cannot change it.
    let (ok, _, _) =
        agent.run_cli(&["exec", "certified", "--", "sh", "-c", &format!("echo x > {dir}/svid.pem")], None)?;
    assert!(!ok, "the SVID directory is read-only");
    Ok(())
}

/// The first host id of a pod's range, from its `/proc/self/uid_map` (`0 <base> 65536`).
fn id_base(agent: &Agent, pod: &str) -> Result<u32> {
    let (ok, out, err) =
        agent.run_cli(&["exec", pod, "--", "cat", "/proc/self/uid_map", "/proc/self/gid_map"], None)?;
    anyhow::ensure!(ok, "exec {pod}: {err}");
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split_whitespace().collect()).collect();
    anyhow::ensure!(lines.len() == 2 && lines[0] == lines[1], "uid_map and gid_map: {out}");
    anyhow::ensure!(lines[0].len() == 3 && lines[0][0] == "0" && lines[0][2] == "65536", "uid_map: {out}");
    Ok(lines[0][1].parse()?)
}

#[test]
fn every_pod_gets_its_own_id_range_and_its_root_owns_nothing_on_the_host() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut agent = Agent::start("podusers", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.import_busybox_as("busybox:nobody", "65534")?;
    let pod = |name: &str| {
        format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  volumes: [{{name: scratch, emptyDir: {{}}}}]
  containers:
  - name: c
    image: busybox:1
    command: [sh, -c, "touch /scratch/by-root /made-by-root; echo > /etc/hosts; ls -ln /bin/busybox; stat -c 'root=%u:%g' /; echo started; sleep 1000"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
  - name: other
    image: busybox:nobody
    command: [sh, -c, "touch /scratch/by-nobody && echo nobody-wrote; sleep 1000"]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
"#
        )
    };
    agent.apply(&pod("first"))?;
    agent.apply(&pod("second"))?;
    agent.wait_ready("first", T)?;
    agent.wait_ready("second", T)?;
    let (a, b) = (id_base(&agent, "first")?, id_base(&agent, "second")?);
    // Blocks of 65536 from the default podIdRangeStart (2000224256, past systemd's container
    // ids and SSSD's AD id mapping), disjoint, below 2^31.
    assert!(a >= 2_000_224_256 && b >= 2_000_224_256, "{a} {b}");
    assert!(a < 1 << 31 && b < 1 << 31, "{a} {b}");
    assert!(a.abs_diff(b) >= 65536, "overlapping ranges: {a} {b}");
    assert!(
        eventually(T, || logs(&agent, "first", "c").contains("started")),
        "{}",
        logs(&agent, "first", "c")
    );
    let out = logs(&agent, "first", "c");
    // Image files owned by 0 are the pod root's inside; so is `/`.
    let owner =
        out.lines().find(|l| l.contains("/bin/busybox")).map(|l| l.split_whitespace().nth(2).unwrap_or(""));
    assert_eq!(owner, Some("0"), "{out}");
    assert!(out.contains("root=0:0"), "{out}");
    assert!(!out.contains("Permission denied") && !out.contains("can't"), "{out}");
    assert!(
        eventually(T, || logs(&agent, "first", "other").contains("nobody-wrote")),
        "{}",
        logs(&agent, "first", "other")
    );
    // On the host, what the pod's users made belongs to the pod's ids: root is `a`, not 0.
    let dir = agent.state_dir().join("pods").join(agent.pod_workload("first")?);
    let stat = |p: &std::path::Path| std::fs::symlink_metadata(p).map(|m| (m.uid(), m.gid()));
    assert_eq!(stat(&dir.join("volumes/scratch/by-root"))?, (a, a));
    // (The image's user is "65534" with no group: gid 0, as in Docker.)
    assert_eq!(stat(&dir.join("volumes/scratch/by-nobody"))?, (a + 65534, a));
    assert_eq!(stat(&dir.join("containers/c/upper/made-by-root"))?, (a, a));
    assert_eq!(stat(&dir.join("logs/c.log"))?, (a, a), "the container opened its log as the pod's root");
    // The shared image layers keep their owners.
    let layers = agent.state_dir().join("images/layers");
    for layer in std::fs::read_dir(&layers)? {
        assert_eq!(stat(&layer?.path().join("bin/busybox"))?.0, 0, "a layer was shifted");
    }
    // No container process runs as host root: each is a host id of the pod's range.
    let procs = agent.cgroup_root().join(agent.pod_workload("first")?).join("pod/c/cgroup.procs");
    for pid in std::fs::read_to_string(&procs)?.lines() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap_or("").split_whitespace().next();
        assert_eq!(uid, Some(a.to_string().as_str()), "pid {pid}: {status}");
    }
    // The pod directory: other host users cannot enter; the pod's root only passes through.
    let meta = std::fs::metadata(&dir)?;
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (0, a, 0o710));
    // exec and the SVID work as the pod's users.
    let (ok, out, err) = agent.run_cli(
        &[
            "exec",
            "first",
            "-c",
            "other",
            "--",
            "sh",
            "-c",
            "id -u; cat /var/run/secrets/beemesh.io/svid.pem | head -1",
        ],
        None,
    )?;
    assert!(ok && out.contains("65534") && out.contains("BEGIN CERTIFICATE"), "{out} {err}");

    // A freed range is reused as late as possible (what the pod left in a hostPath stays
    // its host ids'): the next pod gets the range after the last one handed out.
    assert_eq!(b, a + 65536, "{a} {b}");
    let (ok, _, err) = agent.run_cli(&["delete", "pod", "first"], None)?;
    assert!(ok, "{err}");
    assert!(!dir.exists(), "pod directory left behind");
    agent.apply(&pod("third"))?;
    agent.wait_ready("third", T)?;
    assert_eq!(id_base(&agent, "third")?, b + 65536, "round-robin, not the freed range");
    assert_eq!(id_base(&agent, "second")?, b);
    // The cursor survives the agent: not the lowest free range, nor the one after the highest
    // range still in use, but the one after the last handed out.
    let (ok, _, err) = agent.run_cli(&["delete", "pod", "third"], None)?;
    assert!(ok, "{err}");
    agent.crash()?;
    agent.spawn()?;
    agent.wait_ready("second", T)?;
    agent.apply(&pod("fourth"))?;
    agent.wait_ready("fourth", T)?;
    assert_eq!(id_base(&agent, "fourth")?, b + 2 * 65536);
    Ok(())
}

#[test]
fn exhausted_id_ranges_keep_a_pod_pending_and_ranges_survive_an_agent_crash() -> Result<()> {
    // Room for one pod only.
    let mut agent = Agent::start("podrange", &[])?;
    std::fs::write(
        agent.dir.path().join("agent.yaml"),
        "podIdRangeStart: 200000000\npodIdRangeSize: 65536\n",
    )?;
    agent.stop()?;
    agent.spawn()?;
    agent.import_busybox("busybox:1")?;
    agent.apply(&shell_pod("one", "default", "sleep 1000"))?;
    agent.wait_ready("one", T)?;
    assert_eq!(id_base(&agent, "one")?, 200_000_000);
    // The pod is in the cluster state; this host has no id range for it, and says why.
    let out = agent.apply(&shell_pod("two", "default", "sleep 1000"))?;
    assert!(out.contains("pod/two created"), "{out}");
    let two = agent.pod("two")?;
    assert_eq!(two["status"]["reason"], "OutOfIdRanges", "{two}");
    assert!(two["status"]["message"].as_str().is_some_and(|m| m.contains("no free pod id range")), "{two}");
    let (_, table, _) = agent.run_cli(&["get", "pods"], None)?;
    assert!(table.lines().any(|l| l.starts_with("two ") && l.contains("OutOfIdRanges")), "{table}");
    // After a crash the running pod is re-adopted with its range, which stays taken.
    agent.crash()?;
    agent.spawn()?;
    agent.wait_ready("one", T)?;
    assert_eq!(id_base(&agent, "one")?, 200_000_000);
    assert!(eventually(T, || agent.pod("two").is_ok_and(|p| p["status"]["reason"] == "OutOfIdRanges")));
    // Once the range is free again the waiting pod gets it.
    agent.run_cli(&["delete", "pod", "one"], None)?;
    agent.wait_ready("two", T)?;
    assert_eq!(id_base(&agent, "two")?, 200_000_000);
    Ok(())
}

/// The CapEff mask a container's `/proc/self/status` lines show.
fn cap_eff(status: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(u64::MAX)
}

#[test]
fn security_contexts_seccomp_and_no_new_privs_confine_containers() -> Result<()> {
    let agent = Agent::start("podsec", &[])?;
    agent.import_busybox("busybox:1")?;
    // As the Kubernetes "restricted" Pod Security profile asks, written as users write it.
    agent.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: restricted}
spec:
  securityContext:
    runAsNonRoot: true
    runAsUser: 1000
    runAsGroup: 3000
    fsGroup: 2000
    seccompProfile: {type: RuntimeDefault}
  volumes:
  - {name: scratch, emptyDir: {}}
  containers:
  - name: c
    image: busybox:1
    command: [sh, -c]
    args:
    - >-
      grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status; echo ids=$(id -u):$(id -g):$(id -G);
      touch /x 2>/dev/null && echo ROOT-WRITTEN || echo root-read-only;
      touch /scratch/f && echo scratch-written group=$(stat -c %g /scratch/f);
      unshare -U true 2>/dev/null && echo UNSHARED || echo unshare-refused;
      echo done; sleep 1000
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    volumeMounts: [{name: scratch, mountPath: /scratch}]
---
apiVersion: v1
kind: Pod
metadata: {name: unconfined}
spec:
  containers:
  - name: c
    image: busybox:1
    command: [sh, -c]
    args:
    - >-
      grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status;
      unshare -U true 2>/dev/null && echo UNSHARED || echo unshare-refused;
      echo done; sleep 1000
    securityContext:
      seccompProfile: {type: Unconfined}
      allowPrivilegeEscalation: true
      capabilities: {add: [NET_ADMIN]}
---
apiVersion: v1
kind: Pod
metadata: {name: rootimage}
spec:
  securityContext: {runAsNonRoot: true}
  containers:
  - {name: c, image: "busybox:1", command: [sleep, "1000"]}
"#,
    )?;
    agent.wait_ready("restricted", T)?;
    agent.wait_ready("unconfined", T)?;
    let done = |pod: &str| eventually(T, || logs(&agent, pod, "c").contains("done"));
    assert!(done("restricted"), "{}", logs(&agent, "restricted", "c"));
    let out = logs(&agent, "restricted", "c");
    assert!(out.contains("NoNewPrivs:\t1") && out.contains("Seccomp:\t2"), "{out}");
    assert_eq!(cap_eff(&out), 0, "{out}");
    assert!(out.contains("ids=1000:3000:3000 2000"), "runAsUser, runAsGroup, fsGroup: {out}");
    assert!(out.contains("root-read-only") && !out.contains("ROOT-WRITTEN"), "{out}");
    assert!(out.contains("scratch-written group=2000"), "volumes stay writable, owned by fsGroup: {out}");
    assert!(out.contains("unshare-refused") && !out.contains("UNSHARED"), "seccomp refuses unshare: {out}");
    assert!(done("unconfined"), "{}", logs(&agent, "unconfined", "c"));
    let out = logs(&agent, "unconfined", "c");
    assert!(out.contains("NoNewPrivs:\t0") && out.contains("Seccomp:\t0"), "{out}");
    assert!(out.contains("UNSHARED"), "without a filter unshare works: {out}");
    let caps = cap_eff(&out);
    assert!(caps & (1 << 12) != 0 && caps & (1 << 21) == 0, "NET_ADMIN added, no SYS_ADMIN: {caps:x}");
    // exec enters with the container's confinement.
    let (ok, exec_out, err) = agent.run_cli(
        &["exec", "restricted", "--", "grep", "-E", "^(NoNewPrivs|Seccomp|CapEff):", "/proc/self/status"],
        None,
    )?;
    assert!(ok, "{err}");
    assert!(exec_out.contains("NoNewPrivs:\t1") && exec_out.contains("Seccomp:\t2"), "{exec_out}");
    assert_eq!(cap_eff(&exec_out), 0, "{exec_out}");
    // runAsNonRoot against an image that runs as root: refused as the kubelet does.
    let waiting = |field: &str| {
        agent.pod("rootimage").map(|p| p["status"]["containerStatuses"][0]["state"]["waiting"][field].clone())
    };
    assert!(
        eventually(T, || waiting("reason").is_ok_and(|r| r == "CreateContainerConfigError")),
        "{:?}",
        agent.pod("rootimage")
    );
    let message = waiting("message")?.as_str().unwrap_or_default().to_owned();
    assert!(message.contains("runAsNonRoot and image will run as root"), "{message}");
    Ok(())
}

#[test]
fn privileged_and_protected_host_paths_are_refused_at_apply() -> Result<()> {
    let mut agent = Agent::start("podsecrefuse", &[])?;
    let pod = |extra: &str, sc: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n{extra}  containers:\n  - {{name: c, image: x{sc}}}\n"
        )
    };
    let state = agent.state_dir().join("pods");
    let cases = [
        (pod("", ", securityContext: {privileged: true}"), "spec.containers[0].securityContext.privileged"),
        (
            pod(&format!("  volumes: [{{name: v, hostPath: {{path: {}}}}}]\n", state.display()), ""),
            "spec.volumes[0].hostPath.path",
        ),
        (pod("  volumes: [{name: v, hostPath: {path: /proc}}]\n", ""), "spec.volumes[0].hostPath.path"),
        (pod("  volumes: [{name: v, hostPath: {path: /}}]\n", ""), "spec.volumes[0].hostPath.path"),
        // A pod that could open the agents' instance locks could hold one.
        (pod("  volumes: [{name: v, hostPath: {path: /run/lock}}]\n", ""), "spec.volumes[0].hostPath.path"),
        (pod("  volumes: [{name: v, hostPath: {path: /var/lock}}]\n", ""), "spec.volumes[0].hostPath.path"),
        (
            pod("", ", securityContext: {seccompProfile: {type: Localhost, localhostProfile: missing.json}}"),
            "seccompProfile.localhostProfile",
        ),
    ];
    for (yaml, field) in cases {
        let (ok, _, err) = agent.run_cli(&["apply", "-f", "-"], Some(&yaml))?;
        assert!(!ok, "accepted: {yaml}");
        assert!(err.contains(field), "error for {yaml:?} should name {field:?}: {err}");
    }
    let (_, pods, _) = agent.run_cli(&["get", "pods", "-A"], None)?;
    assert_eq!(pods.lines().count(), 1, "only the header: {pods}");
    // Only root can open the lock, or enter its directory.
    use std::os::unix::fs::MetadataExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.mode() & 0o7777);
    let lock_dir = std::path::Path::new("/run/lock/beemesh");
    assert_eq!(mode(lock_dir)?, 0o700);
    assert_eq!(mode(&lock_dir.join(format!("{}.lock", agent.name)))?, 0o600);
    // Allowed by the agent's configuration, a privileged container holds every capability
    // and runs without a filter.
    agent.stop()?;
    std::fs::write(agent.dir.path().join("agent.yaml"), "allowPrivileged: true\n")?;
    agent.spawn()?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        &shell_pod(
            "priv",
            "default",
            "grep -E '^(NoNewPrivs|Seccomp|CapEff):' /proc/self/status; echo done; sleep 1000",
        )
        .replace("    command:", "    securityContext: {privileged: true}\n    command:"),
    )?;
    assert!(eventually(T, || logs(&agent, "priv", "c").contains("done")), "{}", logs(&agent, "priv", "c"));
    let out = logs(&agent, "priv", "c");
    assert!(out.contains("NoNewPrivs:\t0") && out.contains("Seccomp:\t0"), "{out}");
    assert!(cap_eff(&out) & (1 << 21) != 0, "CAP_SYS_ADMIN held: {out}");
    Ok(())
}

#[test]
fn container_logs_are_cut_past_the_configured_size() -> Result<()> {
    let mut agent = Agent::start("podlogcap", &[])?;
    std::fs::write(agent.dir.path().join("agent.yaml"), "containerLogMaxBytes: 65536\n")?;
    agent.stop()?;
    agent.spawn()?;
    agent.import_busybox("busybox:1")?;
    // About 229 KB, then a line once the test says so.
    agent.apply(&shell_pod(
        "chatty",
        "default",
        "seq 1 40000; echo END; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo AFTER; sleep 1000",
    ))?;
    agent.wait_ready("chatty", T)?;
    let dir = agent.state_dir().join("pods").join(agent.pod_workload("chatty")?).join("logs");
    let (live, rotated) = (dir.join("c.log"), dir.join("c.log.1"));
    let read = |p: &std::path::Path| std::fs::read(p).unwrap_or_default();
    // The tick cuts the live log and keeps its last 64 KiB.
    let cut = || {
        let (l, r) = (read(&live), read(&rotated));
        l.len() <= 65536 && !r.is_empty() && [r, l].concat().ends_with(b"\n39999\n40000\nEND\n")
    };
    assert!(eventually(T, cut), "live {} bytes, rotated {} bytes", read(&live).len(), read(&rotated).len());
    assert!(read(&rotated).len() <= 65536);
    // The container keeps writing at the start of the cut file: no hole of zeros.
    let (ok, _, err) = agent.run_cli(&["exec", "chatty", "--", "touch", "/tmp/go"], None)?;
    assert!(ok, "{err}");
    assert!(
        eventually(T, || logs(&agent, "chatty", "c").contains("AFTER")),
        "{}",
        logs(&agent, "chatty", "c")
    );
    let l = read(&live);
    assert!(
        !l.contains(&0) && l.len() <= 65536,
        "{} bytes: {:?}",
        l.len(),
        String::from_utf8_lossy(&l[..l.len().min(64)])
    );
    Ok(())
}

/// The `(mount point, options)` lines a container printed from its /proc/self/mountinfo.
fn mount_options(out: &str, at: &str) -> Option<String> {
    out.lines().find_map(|l| l.strip_prefix(&format!("MNT {at} ")).map(str::to_owned))
}

#[test]
fn host_paths_are_checked_at_every_start_and_mounted_from_the_agents_descriptors() -> Result<()> {
    let agent = Agent::start("podhostfd", &[])?;
    agent.import_busybox("busybox:1")?;
    use std::os::unix::fs::PermissionsExt;
    // A directory the pod may write (it plants a link there), and data below a directory
    // only the host's root may enter: the pod's ids could not reach it by path.
    let writable = agent.dir.path().join("writable");
    std::fs::create_dir(&writable)?;
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777))?;
    let private = agent.dir.path().join("private");
    std::fs::create_dir_all(private.join("data"))?;
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
    std::fs::write(private.join("data/hello"), "behind a 0700 directory")?;
    let state = agent.state_dir();
    // `sneaky` resolves to nothing at apply (writable/d does not exist); the init container
    // then makes writable/d a link to the agent's state directory.
    agent.apply(&format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hostfd}}
spec:
  volumes:
  - {{name: w, hostPath: {{path: {w}, type: Directory}}}}
  - {{name: p, hostPath: {{path: {p}, type: Directory}}}}
  - {{name: sneaky, hostPath: {{path: {w}/d/pods}}}}
  - {{name: scratch, emptyDir: {{}}}}
  initContainers:
  - name: plant
    image: busybox:1
    command: [sh, -c]
    args:
    - >-
      cat /p/hello; echo;
      awk '$5=="/w"||$5=="/p"||$5=="/scratch" {{print "MNT", $5, $6}}' /proc/self/mountinfo;
      ln -s {state} /w/d && echo planted
    volumeMounts:
    - {{name: w, mountPath: /w}}
    - {{name: p, mountPath: /p, readOnly: true}}
    - {{name: scratch, mountPath: /scratch}}
  containers:
  - name: main
    image: busybox:1
    command: [sh, -c, "ls /sneaky; sleep 1000"]
    volumeMounts: [{{name: sneaky, mountPath: /sneaky}}]
"#,
        w = writable.display(),
        p = private.join("data").display(),
        state = state.display(),
    ))?;
    let waiting =
        || agent.pod("hostfd").ok().map(|p| p["status"]["containerStatuses"][0]["state"]["waiting"].clone());
    assert!(
        eventually(T, || waiting().is_some_and(|w| w["reason"] == "CreateContainerConfigError")),
        "{:?}\n{}",
        agent.pod("hostfd").ok(),
        logs(&agent, "hostfd", "plant")
    );
    let out = logs(&agent, "hostfd", "plant");
    assert!(out.contains("planted"), "{out}");
    // The link is resolved at the start and the real place refused.
    let message = waiting().map(|w| w["message"].to_string()).unwrap_or_default();
    assert!(message.contains("would expose the agent's own directory"), "{message}");
    // The agent opened the data below the 0700 directory and handed the mount over.
    assert!(out.contains("behind a 0700 directory"), "{out}");
    // hostPath and emptyDir mounts are nosuid and nodev; a read-only hostPath is read-only.
    for at in ["/w", "/p", "/scratch"] {
        let opts = mount_options(&out, at).unwrap_or_else(|| panic!("no mount at {at}: {out}"));
        let opts: Vec<&str> = opts.split(',').collect();
        assert!(opts.contains(&"nosuid") && opts.contains(&"nodev"), "{at}: {opts:?}");
        assert_eq!(opts.contains(&"ro"), at == "/p", "{at}: {opts:?}");
    }
    Ok(())
}

#[test]
fn a_container_cannot_stop_its_pod_by_signalling_init() -> Result<()> {
    let agent = Agent::start("podsiginit", &[])?;
    agent.import_busybox("busybox:1")?;
    // With a shared pid namespace, init is PID 1 for the containers: the init container
    // (root, same ids as init) signals it and ends; the app container is started only by an
    // init that is still there.
    agent.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: siginit}
spec:
  shareProcessNamespace: true
  initContainers:
  - {name: signal, image: busybox:1, command: [sh, -c, "kill -TERM 1 && kill -INT 1 && kill -HUP 1 && echo signalled"]}
  containers:
  - {name: app, image: busybox:1, command: [sleep, "1000"]}
"#,
    )?;
    agent.wait_ready("siginit", T)?;
    assert!(logs(&agent, "siginit", "signal").contains("signalled"), "{}", logs(&agent, "siginit", "signal"));
    let (ok, out, err) = agent.run_cli(&["exec", "siginit", "--", "ps", "-o", "pid,args"], None)?;
    assert!(ok && out.contains("pod-init"), "{out} {err}");
    Ok(())
}

#[test]
fn an_adopted_container_is_entered_only_as_the_manifest_says() -> Result<()> {
    use std::io::{BufRead, Write};
    let mut agent = Agent::start("podadoptlie", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: lie}\nspec:\n  containers:\n  - {name: c, image: busybox:1, command: [sleep, '1000']}\n",
    )?;
    agent.wait_ready("lie", T)?;
    let pod_dir = agent.state_dir().join("pods").join(agent.pod_workload("lie")?);
    agent.crash()?;
    // While the agent is away, something answers on init.sock in init's place and replays a
    // container run by a host process, in a cgroup of its choosing, unconfined.
    std::fs::rename(pod_dir.join("init.sock"), pod_dir.join("init.sock.real"))?;
    let listener = std::os::unix::net::UnixListener::bind(pod_dir.join("init.sock"))?;
    let mut host = std::process::Command::new("sleep").arg("1000").spawn()?;
    let bogus = agent.dir.path().join("bogus-cgroup");
    std::fs::create_dir(&bogus)?;
    std::fs::write(bogus.join("cgroup.procs"), "")?;
    let replay = format!(
        "{}\n{}\n",
        serde_json::json!({"event": "started", "name": "c", "run": 7, "pid": 1, "host_pid": host.id(),
            "uid": 0, "gid": 0, "cgroups": [bogus], "security": null}),
        serde_json::json!({"event": "replayed"}),
    );
    let fake = std::thread::spawn(move || -> Result<()> {
        let (mut conn, _) = listener.accept()?;
        conn.write_all(replay.as_bytes())?;
        // Hold the connection until the agent goes.
        for _ in std::io::BufReader::new(conn).lines() {}
        Ok(())
    });
    agent.spawn()?;
    agent.wait_ready("lie", T)?;
    let (ok, out, err) = agent.run_cli(&["exec", "lie", "--", "cat", "/proc/1/cmdline"], None)?;
    let _ = host.kill();
    let _ = host.wait();
    assert_eq!(std::fs::read_to_string(bogus.join("cgroup.procs"))?, "", "joined the replayed cgroup");
    assert!(!ok, "entered a host process as the container: {out}");
    assert!(err.contains("not running"), "{err}");
    assert!(agent.stop()?, "{}", agent.log());
    let _ = fake.join();
    Ok(())
}
/// A pod that leaves directory trees deeper than the agent may open descriptors (about 20,000
/// levels, in its emptyDir and in its root's upper directory) is removed all the same: the
/// pod directory goes, and a new pod of the same name finds its emptyDir empty.
#[test]
fn deep_trees_a_pod_leaves_go_with_it() -> Result<()> {
    let agent = Agent::start("poddeep", &[])?;
    agent.import_busybox("busybox:1")?;
    // A chain of 1,000 `a` under a fresh `n` (a path of 2,000 bytes), the tree moved to its
    // bottom, 20 times: every command sees short paths only.
    let script = "echo \"had: $(ls -A /scratch)\"; \
        p=a; i=1; while [ $i -lt 1000 ]; do p=$p/a; i=$((i+1)); done; \
        for d in /scratch /tmp; do cd $d && mkdir t && r=0 && while [ $r -lt 20 ]; do \
        mkdir -p n/$p && mv t n/$p/t && mv n t || exit 1; r=$((r+1)); done; done; \
        echo built; trap 'exit 0' TERM; sleep 1000 & wait";
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: deep}}
spec:
  volumes: [{{name: scratch, emptyDir: {{}}}}]
  containers:
  - name: c
    image: busybox:1
    command: ["sh", "-c", {script:?}]
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
"#
    );
    let long = Duration::from_secs(120);
    for round in 0..2 {
        agent.apply(&manifest)?;
        agent.wait_ready("deep", T)?;
        assert!(
            eventually(long, || logs(&agent, "deep", "c").contains("built")),
            "{}",
            logs(&agent, "deep", "c")
        );
        let out = logs(&agent, "deep", "c");
        assert!(out.lines().any(|l| l == "had: "), "round {round}: the emptyDir was not empty: {out}");
        let dir = agent.state_dir().join("pods").join(agent.pod_workload("deep")?);
        let (ok, _, err) = agent.run_cli(&["delete", "pod", "deep"], None)?;
        assert!(ok, "{err}");
        assert!(eventually(T, || !dir.exists()), "pod directory left behind:\n{}", agent.log());
        let (ok, _, err) = agent.run_cli(&["get", "pods"], None)?;
        assert!(ok, "the agent stopped answering: {err}\n{}", agent.log());
    }
    Ok(())
}

/// A nameserver on the host's test address, port 53, answering every A query with
/// 10.9.8.7; the names it was asked go to `asked`.
fn test_nameserver(asked: std::sync::mpsc::Sender<String>) -> Result<()> {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{RData, Record, RecordType};
    let socket = std::net::UdpSocket::bind((host_addr(), 53))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else { continue };
            let mut answer = Message::new();
            answer.set_id(query.id()).set_message_type(MessageType::Response).set_recursion_available(true);
            answer.set_response_code(ResponseCode::NoError);
            for q in query.queries() {
                answer.add_query(q.clone());
                let _ = asked.send(q.name().to_ascii());
                if q.query_type() == RecordType::A {
                    answer.add_answer(Record::from_rdata(
                        q.name().clone(),
                        60,
                        RData::A(A::new(10, 9, 8, 7)),
                    ));
                }
            }
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, from);
            }
        }
    });
    Ok(())
}

#[test]
fn dns_policy_dns_config_and_host_aliases_shape_the_pods_name_resolution() -> Result<()> {
    let agent = Agent::start("poddns", &[])?;
    agent.import_busybox("busybox:1")?;
    let (tx, asked) = std::sync::mpsc::channel();
    test_nameserver(tx)?;
    let addr = host_addr();
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: own, namespace: shop}}
spec:
  dnsPolicy: None
  dnsConfig:
    nameservers: [{addr}]
    searches: [probe.example]
    options: [{{name: ndots, value: "1"}}]
  hostAliases:
  - {{ip: 192.0.2.7, hostnames: [foo.local, bar.local]}}
  containers:
  - {{name: c, image: "busybox:1", command: [sleep, "3600"]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: merged, namespace: shop}}
spec:
  subdomain: db
  dnsConfig:
    nameservers: [192.0.2.53]
    searches: [extra.example]
    options: [{{name: ndots, value: "2"}}, {{name: edns0}}]
  containers:
  - {{name: c, image: "busybox:1", command: [sleep, "3600"]}}
"#
    );
    agent.apply(&manifest)?;
    for pod in ["own", "merged"] {
        let (ok, _, err) = agent.run_cli(&["wait", "-n", "shop", pod, "--timeout", "20"], None)?;
        anyhow::ensure!(ok, "{pod} not ready: {err}\n{}", agent.log());
    }
    let cat = |pod: &str, file: &str| -> Result<String> {
        let (ok, out, err) = agent.run_cli(&["exec", "-n", "shop", pod, "--", "cat", file], None)?;
        anyhow::ensure!(ok, "cat {file} in {pod}: {err}");
        Ok(out)
    };
    // `None`: only the pod's own configuration; its aliases follow its own names.
    assert_eq!(
        cat("own", "/etc/resolv.conf")?,
        format!("search probe.example\nnameserver {addr}\noptions ndots:1\n")
    );
    let hosts = cat("own", "/etc/hosts")?;
    assert!(hosts.ends_with("# Entries added by HostAliases.\n192.0.2.7\tfoo.local\tbar.local\n"), "{hosts}");
    // Its queries reach the nameserver it names (the kernel does not hand them to the
    // agent), with its search domain applied.
    let (ok, out, err) = agent.run_cli(&["exec", "-n", "shop", "own", "--", "nslookup", "www"], None)?;
    assert!(ok && out.contains("10.9.8.7"), "nslookup www: {out}{err}");
    let names: Vec<String> = asked.try_iter().collect();
    assert!(names.iter().any(|n| n == "www.probe.example."), "asked: {names:?}");
    // `ClusterFirst` with `dnsConfig`: the cluster's search domains and slirp4netns'
    // resolver first, then the pod's, its options over the default ones.
    let resolv = cat("merged", "/etc/resolv.conf")?;
    assert!(
        resolv.starts_with("search shop.svc.cluster.local svc.cluster.local cluster.local ")
            && resolv.contains(
                " extra.example\nnameserver 10.0.2.3\nnameserver 192.0.2.53\noptions ndots:2 edns0\n"
            ),
        "{resolv}"
    );
    let hosts = cat("merged", "/etc/hosts")?;
    assert!(hosts.contains("10.0.2.100\tmerged.db.shop.svc.cluster.local\tmerged\n"), "{hosts}");
    Ok(())
}

#[test]
fn hooks_run_in_the_kubelets_order_and_the_startup_probe_holds_liveness_back() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let agent = Agent::start("podhooks", &[])?;
    agent.import_busybox("busybox:1")?;
    let host_dir = agent.dir.path().join("hooks");
    std::fs::create_dir_all(&host_dir)?;
    std::fs::set_permissions(&host_dir, std::fs::Permissions::from_mode(0o777))?;
    let manifest = format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: hooked}}
spec:
  terminationGracePeriodSeconds: 30
  volumes: [{{name: out, hostPath: {{path: {host}, type: Directory}}}}]
  containers:
  - name: c
    image: busybox:1
    command: ["sh", "-c", "trap 'echo term >> /out/order; exit 0' TERM; while true; do sleep 0.1; done"]
    volumeMounts: [{{name: out, mountPath: /out}}]
    lifecycle:
      postStart: {{exec: {{command: [sh, -c, "sleep 1; echo started > /out/post"]}}}}
      preStop: {{exec: {{command: [sh, -c, "echo prestop >> /out/order; sleep 1"]}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: slow}}
spec:
  containers:
  - name: c
    image: busybox:1
    command: ["sh", "-c", "sleep 3; touch /tmp/up; sleep 3600"]
    # Liveness alone would restart it in its first seconds; the startup probe holds it back.
    startupProbe: {{exec: {{command: [cat, /tmp/up]}}, periodSeconds: 1, failureThreshold: 30}}
    livenessProbe: {{exec: {{command: [cat, /tmp/up]}}, periodSeconds: 1, failureThreshold: 1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: never}}
spec:
  containers:
  - name: c
    image: busybox:1
    command: ["sleep", "3600"]
    startupProbe: {{exec: {{command: ["false"]}}, periodSeconds: 1, failureThreshold: 2}}
"#,
        host = host_dir.display()
    );
    agent.apply(&manifest)?;
    // Ready only once postStart is through: its file is there by then.
    agent.wait_ready("hooked", T)?;
    assert_eq!(std::fs::read_to_string(host_dir.join("post"))?, "started\n");
    let status = |pod: &str| -> serde_json::Value {
        agent.pod(pod).map(|p| p["status"]["containerStatuses"][0].clone()).unwrap_or_default()
    };
    assert_eq!(status("hooked")["started"], true);
    agent.wait_ready("slow", T)?;
    let slow = status("slow");
    assert!(slow["started"] == true && slow["restartCount"] == 0, "{slow}");
    // A startup probe that never succeeds restarts its container; it never becomes ready.
    assert!(
        eventually(T, || status("never")["restartCount"].as_u64().is_some_and(|n| n >= 1)),
        "{}",
        status("never")
    );
    let never = status("never");
    assert!(never["ready"] == false && never["started"] == false, "{never}");
    // Deletion: preStop first, SIGTERM only after it ended.
    let (ok, _, err) = agent.run_cli(&["delete", "pod", "hooked"], None)?;
    assert!(ok, "{err}");
    let (ok, _, err) = agent.run_cli(&["wait", "hooked", "--for", "deleted", "--timeout", "30"], None)?;
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(host_dir.join("order"))?, "prestop\nterm\n");
    Ok(())
}

#[test]
fn downward_api_and_projected_volumes_reach_the_container() -> Result<()> {
    let agent = Agent::start("podfiles", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: prod}
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {token: t0ken}
---
apiVersion: v1
kind: Pod
metadata:
  name: files
  labels: {app: files, tier: back}
  annotations: {build: "42"}
spec:
  volumes:
  - name: info
    downwardAPI:
      items:
      - {path: labels, fieldRef: {fieldPath: metadata.labels}}
      - {path: build, fieldRef: {fieldPath: "metadata.annotations['build']"}}
      - {path: mem, resourceFieldRef: {containerName: c, resource: limits.memory, divisor: 1Mi}}
  - name: all
    projected:
      sources:
      - configMap: {name: settings}
      - secret: {name: creds, items: [{key: token, path: secret/token}]}
      - downwardAPI: {items: [{path: name, fieldRef: {fieldPath: metadata.name}}]}
  containers:
  - name: c
    image: busybox:1
    command: [sleep, "3600"]
    resources: {limits: {memory: 32Mi}}
    volumeMounts:
    - {name: info, mountPath: /etc/podinfo}
    - {name: all, mountPath: /etc/all}
"#,
    )?;
    agent.wait_ready("files", T)?;
    let sh = |script: &str| -> Result<String> {
        let (ok, out, err) = agent.run_cli(&["exec", "files", "--", "sh", "-c", script], None)?;
        anyhow::ensure!(ok, "{script}: {err}");
        Ok(out)
    };
    assert_eq!(sh("cat /etc/podinfo/labels")?, "app=\"files\"\ntier=\"back\"");
    assert_eq!(sh("cat /etc/podinfo/build /etc/podinfo/mem")?, "4232");
    assert_eq!(
        sh("cat /etc/all/mode; echo; cat /etc/all/secret/token; echo; cat /etc/all/name")?,
        "prod\nt0ken\nfiles"
    );
    // Read-only, as Kubernetes mounts them.
    assert!(sh("touch /etc/all/x 2>&1 || echo refused")?.contains("refused"));
    Ok(())
}

#[test]
fn service_links_give_pods_their_namespaces_services_in_env() -> Result<()> {
    let agent = Agent::start("podlinks", &[])?;
    agent.import_busybox("busybox:1")?;
    agent.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: redis-main}\nspec:\n  selector: {app: redis}\n  ports: [{name: client, port: 6379}]\n",
    )?;
    let (ok, out, err) = agent.run_cli(&["get", "services", "redis-main", "-o", "json"], None)?;
    anyhow::ensure!(ok, "{err}");
    let svc: serde_json::Value = serde_json::from_str(&out)?;
    let ip = svc["spec"]["clusterIP"].as_str().unwrap_or_default().to_owned();
    assert!(ip.starts_with("10."), "{svc}");
    // Applied after the Service: its containers start with the Service's variables...
    agent.apply(&shell_pod("linked", "default", "env | grep ^REDIS_MAIN | sort; sleep 3600"))?;
    // ...unless the pod says not to.
    let unlinked = shell_pod("unlinked", "default", "env | grep -c ^REDIS_MAIN; sleep 3600")
        .replace("spec:\n", "spec:\n  enableServiceLinks: false\n");
    agent.apply(&unlinked)?;
    let expected = format!(
        "REDIS_MAIN_PORT=tcp://{ip}:6379\nREDIS_MAIN_PORT_6379_TCP=tcp://{ip}:6379\nREDIS_MAIN_PORT_6379_TCP_ADDR={ip}\n\
         REDIS_MAIN_PORT_6379_TCP_PORT=6379\nREDIS_MAIN_PORT_6379_TCP_PROTO=tcp\nREDIS_MAIN_SERVICE_HOST={ip}\n\
         REDIS_MAIN_SERVICE_PORT=6379\nREDIS_MAIN_SERVICE_PORT_CLIENT=6379\n"
    );
    assert!(eventually(T, || logs(&agent, "linked", "c") == expected), "{}", logs(&agent, "linked", "c"));
    assert!(eventually(T, || logs(&agent, "unlinked", "c") == "0\n"), "{}", logs(&agent, "unlinked", "c"));
    Ok(())
}

#[test]
fn a_pod_past_its_active_deadline_is_stopped_for_good_and_failed() -> Result<()> {
    let agent = Agent::start("poddeadline", &[])?;
    agent.import_busybox("busybox:1")?;
    let manifest = shell_pod("brief", "default", "trap 'exit 0' TERM; while true; do sleep 0.1; done")
        .replace("spec:\n", "spec:\n  activeDeadlineSeconds: 2\n  terminationGracePeriodSeconds: 5\n");
    agent.apply(&manifest)?;
    let status = || agent.pod("brief").map(|p| p["status"].clone()).unwrap_or_default();
    assert!(
        eventually(T, || {
            let s = status();
            s["phase"] == "Failed"
                && s["reason"] == "DeadlineExceeded"
                && s["containerStatuses"][0]["state"]["terminated"].is_object()
        }),
        "{}",
        status()
    );
    // Stopped for good: the restart policy (Always) does not bring it back.
    let (ok, _, err) = agent.run_cli(&["wait", "brief", "--timeout", "3"], None)?;
    assert!(!ok, "ready again: {err}");
    let s = status();
    assert!(s["phase"] == "Failed" && s["containerStatuses"][0]["restartCount"] == 0, "{s}");
    Ok(())
}

#[test]
fn termination_messages_come_from_the_file_or_the_logs_tail() -> Result<()> {
    let agent = Agent::start("podmsg", &[])?;
    agent.import_busybox("busybox:1")?;
    let pod = |name: &str, extra: &str, script: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  containers:\n  \
             - name: c\n    image: busybox:1\n    command: [sh, -c, {script:?}]\n{extra}"
        )
    };
    agent.apply(&pod("file", "", "echo done-well > /dev/termination-log; exit 3"))?;
    agent.apply(&pod(
        "fallback",
        "    terminationMessagePolicy: FallbackToLogsOnError\n",
        "echo line1; echo line2; exit 1",
    ))?;
    // Another path, written by a user that is not root.
    agent.apply(&pod(
        "custom",
        "    terminationMessagePath: /tmp/why\n    securityContext: {runAsUser: 1000}\n",
        "echo custom > /tmp/why",
    ))?;
    let terminated = |name: &str| {
        agent
            .pod(name)
            .map(|p| p["status"]["containerStatuses"][0]["state"]["terminated"].clone())
            .unwrap_or_default()
    };
    for (name, code, message) in
        [("file", 3, "done-well\n"), ("fallback", 1, "line1\nline2"), ("custom", 0, "custom\n")]
    {
        assert!(
            eventually(T, || {
                let t = terminated(name);
                t["exitCode"] == code && t["message"] == message
            }),
            "{name}: {}",
            terminated(name)
        );
    }
    Ok(())
}

#[test]
fn a_grpc_readiness_probe_follows_the_health_service() -> Result<()> {
    let agent = Agent::start("podgrpc", &[])?;
    agent.import_busybox("busybox:1")?;
    // The test probe's gRPC health server, from the host (its directory and the libraries it
    // links, read-only): SERVING while /tmp/ok exists.
    let probe = beemesh_tests::probe_bin();
    let dir = probe.parent().expect("the probe's directory").display().to_string();
    agent.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: health}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sh, -c, 'touch /tmp/ok; exec /probe/probe grpc-health 0.0.0.0:9000 /tmp/ok']\n    readinessProbe: {{grpc: {{port: 9000}}, periodSeconds: 1, failureThreshold: 1}}\n    volumeMounts: [{{name: probe, mountPath: /probe, readOnly: true}}, {{name: lib, mountPath: /lib, readOnly: true}}, {{name: lib64, mountPath: /lib64, readOnly: true}}]\n  volumes: [{{name: probe, hostPath: {{path: {dir}}}}}, {{name: lib, hostPath: {{path: /usr/lib}}}}, {{name: lib64, hostPath: {{path: /usr/lib64}}}}]\n"
    ))?;
    agent.wait_ready("health", T)?;
    let ready = |agent: &Agent| {
        let pod = agent.pod("health").unwrap_or_default();
        pod["status"]["containerStatuses"][0]["ready"].as_bool()
    };
    let (ok, _, err) = agent.run_cli(&["exec", "health", "--", "rm", "/tmp/ok"], None)?;
    assert!(ok, "{err}");
    assert!(eventually(T, || ready(&agent) == Some(false)), "still ready after NOT_SERVING: {}", agent.log());
    let (ok, _, err) = agent.run_cli(&["exec", "health", "--", "touch", "/tmp/ok"], None)?;
    assert!(ok, "{err}");
    assert!(eventually(T, || ready(&agent) == Some(true)), "not ready again after SERVING: {}", agent.log());
    Ok(())
}
