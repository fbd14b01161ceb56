//! End-to-end checks of mesh membership with real agents, each in a network namespace of
//! its own on one bridge (several hosts on one machine): hosts with certificates from one
//! offline root find each other from one bootstrap address and attest; a host whose
//! certificate comes from another root is refused by every member and sees none of them.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use beemesh_tests::lan::{ca_init, issue_host, Lan};
use beemesh_tests::{eventually, Agent};

const T: Duration = Duration::from_secs(30);

/// `peers -o json` of `agent`.
fn peers(agent: &Agent) -> Result<Vec<serde_json::Value>> {
    let (ok, out, err) = agent.run_cli(&["peers", "-o", "json"], None)?;
    ensure!(ok, "peers: {err}");
    Ok(serde_json::from_str(&out)?)
}

/// The node names `agent` lists as attested peers (itself left out).
fn attested(agent: &Agent) -> Vec<String> {
    let mut names: Vec<String> = peers(agent)
        .unwrap_or_default()
        .iter()
        .filter(|p| p["attested"] == true && p["thisHost"] != true)
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[test]
fn hosts_of_one_root_join_from_one_bootstrap_and_a_foreign_host_is_refused() -> Result<()> {
    let mut lan = Lan::new("bmm", 41)?;
    let offline = tempfile::tempdir()?;
    let (root, foreign_root) = (offline.path().join("root"), offline.path().join("foreign"));

    let port = "4001";
    let bootstrap = format!("{}:{port}", lan.addr(1));
    let mut agents = Vec::new();
    for n in 1..=4u8 {
        let ns = lan.host(n)?;
        let name = format!("h{n}");
        let config = if n > 1 { format!("mesh:\n  bootstrap: [\"{bootstrap}\"]\n") } else { String::new() };
        let agent =
            Agent::prepare(&format!("mesh{n}"), &[("BEEMESH_MESH_PORT", port)], &config)?.in_netns(&ns);
        if n == 1 {
            ca_init(&agent, &root)?;
            ca_init(&agent, &foreign_root)?;
        }
        // h4 is of the same trust domain name but another root: an impostor.
        issue_host(&agent, if n == 4 { &foreign_root } else { &root }, &name)?;
        agents.push(agent);
    }
    // The joiners first: h1, their bootstrap, is not up yet and is reached by back-off.
    for agent in agents[1..].iter_mut() {
        agent.spawn()?;
    }
    agents[0].spawn()?;

    let members = ["h1", "h2", "h3"];
    for (i, agent) in agents[..3].iter().enumerate() {
        let others: Vec<String> =
            members.iter().filter(|m| **m != members[i]).map(|m| m.to_string()).collect();
        ensure!(
            eventually(T, || attested(agent) == others),
            "{} sees {:?}, expected {others:?}\n{}",
            members[i],
            attested(agent),
            agent.log()
        );
    }
    // The three learned each other through the bootstrap (h2 and h3 were given only h1).
    let this = peers(&agents[1])?;
    assert_eq!(this[0]["name"], "h2");
    assert_eq!(this[0]["thisHost"], true);

    // The impostor reached h1 (its bootstrap) and failed attestation there; it attests nobody.
    ensure!(
        eventually(T, || agents[0].log().contains("failed attestation")),
        "h1 never refused the impostor:\n{}",
        agents[0].log()
    );
    assert!(attested(&agents[3]).is_empty(), "the impostor sees {:?}", attested(&agents[3]));
    for agent in &agents[..3] {
        assert!(!attested(agent).contains(&"h4".to_string()), "a member lists the impostor");
        for p in peers(agent)? {
            assert!(p["name"] != "h4", "the impostor's claimed name is shown: {p}");
        }
    }
    Ok(())
}

/// The names `get KIND -o json` lists on `agent` (empty when the call fails).
fn listed(agent: &Agent, kind: &str) -> Vec<String> {
    let Ok((true, out, _)) = agent.run_cli(&["get", kind, "-A", "-o", "json"], None) else {
        return Vec::new();
    };
    let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut names: Vec<String> = list["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn config_map(name: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  greeting: {value}\n")
}

#[test]
fn objects_applied_on_one_host_are_listed_on_every_host_and_a_restarted_host_catches_up() -> Result<()> {
    let mut lan = Lan::new("bms", 42)?;
    let offline = tempfile::tempdir()?;
    let root = offline.path().join("root");
    let port = "4001";
    let bootstrap = format!("{}:{port}", lan.addr(1));
    let mut agents = Vec::new();
    for n in 1..=3u8 {
        let ns = lan.host(n)?;
        let config = if n > 1 { format!("mesh:\n  bootstrap: [\"{bootstrap}\"]\n") } else { String::new() };
        let agent =
            Agent::prepare(&format!("state{n}"), &[("BEEMESH_MESH_PORT", port)], &config)?.in_netns(&ns);
        if n == 1 {
            ca_init(&agent, &root)?;
        }
        issue_host(&agent, &root, &format!("h{n}"))?;
        agents.push(agent);
    }

    // Alone, h1 takes an apply at once and says nobody else holds it yet.
    agents[0].spawn()?;
    let out = agents[0].apply(&config_map("early", "alone"))?;
    ensure!(out.contains("configmap/early created (no other host holds it yet)"), "{out}");
    for agent in agents[1..].iter_mut() {
        agent.spawn()?;
    }
    let members = ["h1", "h2", "h3"];
    for (i, agent) in agents.iter().enumerate() {
        let others: Vec<String> =
            members.iter().filter(|m| **m != members[i]).map(|m| m.to_string()).collect();
        ensure!(
            eventually(T, || attested(agent) == others),
            "{} never saw {others:?}\n{}",
            members[i],
            agent.log()
        );
    }
    // What h1 held before the others came reaches them by anti-entropy.
    for agent in &agents[1..] {
        ensure!(
            eventually(T, || listed(agent, "configmaps") == ["early"]),
            "early never listed:\n{}",
            agent.log()
        );
    }

    // Applied on h1 with peers: acknowledged by another host, listed everywhere with its data.
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: token\n  namespace: prod\nstringData:\n  key: s3cr3t-value\n";
    let out = agents[0].apply(&format!("{}---\n{secret}", config_map("app", "hello")))?;
    ensure!(out.contains("configmap/app created (held by h"), "{out}");
    ensure!(out.contains("secret/token created (held by h"), "{out}");
    for agent in &agents[1..] {
        ensure!(
            eventually(T, || listed(agent, "configmaps") == ["app", "early"]
                && listed(agent, "secrets") == ["token"]),
            "not listed: {:?} {:?}\n{}",
            listed(agent, "configmaps"),
            listed(agent, "secrets"),
            agent.log()
        );
        let (ok, out, err) = agent.run_cli(&["get", "configmaps", "app", "-o", "json"], None)?;
        ensure!(ok, "get configmaps app: {err}");
        let cm: serde_json::Value = serde_json::from_str(&out)?;
        assert_eq!(cm["data"]["greeting"], "hello");
        assert_eq!(cm["metadata"]["namespace"], "default");
        // Secrets: never in a log, files 0600 in a 0700 directory.
        assert!(!agent.log().contains("s3cr3t"), "a secret reached the log");
        let dir = agent.state_dir().join("cluster");
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&dir)?.mode() & 0o777, 0o700);
        for entry in std::fs::read_dir(&dir)? {
            assert_eq!(entry?.metadata()?.mode() & 0o777, 0o600);
        }
    }

    // Deleted on h2 (which never applied it): gone on h1 and h3.
    let (ok, out, err) = agents[1].run_cli(&["delete", "-f", "-"], Some(&config_map("app", "hello")))?;
    ensure!(ok && out.contains("configmap/app deleted"), "delete on h2: {out}{err}");
    for agent in [&agents[0], &agents[2]] {
        ensure!(
            eventually(T, || listed(agent, "configmaps") == ["early"]),
            "app not deleted:\n{}",
            agent.log()
        );
    }

    // h3 is down while h1 writes; restarted, it catches up (anti-entropy) and kept the rest.
    ensure!(agents[2].stop()?, "h3 did not stop cleanly");
    let out = agents[0].apply(&config_map("later", "while-h3-was-down"))?;
    ensure!(out.contains("configmap/later created (held by h2)"), "{out}");
    agents[2].spawn()?;
    ensure!(
        eventually(T, || listed(&agents[2], "configmaps") == ["early", "later"]),
        "h3 did not catch up: {:?}\n{}",
        listed(&agents[2], "configmaps"),
        agents[2].log()
    );

    // A damaged state file stops the start, naming the file: nothing is dropped silently.
    ensure!(agents[2].stop()?, "h3 did not stop cleanly");
    let file =
        std::fs::read_dir(agents[2].state_dir().join("cluster"))?.next().context("a state file")??.path();
    std::fs::write(&file, b"\xff\xff not an object")?;
    let err = agents[2].spawn().expect_err("a corrupt state file must stop the start").to_string();
    ensure!(err.contains(&file.display().to_string()), "the error does not name {}: {err}", file.display());
    Ok(())
}

/// A pod that says where it runs, then sleeps (`nodeName` pins it when given).
fn pod_on(name: &str, node: Option<&str>) -> String {
    let pin = node.map(|n| format!("  nodeName: {n}\n")).unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{pin}  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    resources: {{requests: {{cpu: 100m, memory: 16Mi}}}}\n    command: [sh, -c, \"echo hello from $(hostname); trap 'exit 0' TERM; sleep 1000 & wait\"]\n"
    )
}

/// `get pods -A -o json` of `agent`: (name, node, phase) of every pod, sorted.
fn pods(agent: &Agent) -> Vec<(String, String, String)> {
    let Ok((true, out, _)) = agent.run_cli(&["get", "pods", "-A", "-o", "json"], None) else {
        return Vec::new();
    };
    let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let mut items: Vec<(String, String, String)> = list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|p| {
                    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
                    (s(&p["metadata"]["name"]), s(&p["spec"]["nodeName"]), s(&p["status"]["phase"]))
                })
                .collect()
        })
        .unwrap_or_default();
    items.sort();
    items
}

#[test]
fn pods_run_where_the_state_places_them_and_every_host_lists_logs_and_execs_them() -> Result<()> {
    let mut lan = Lan::new("bmp", 46)?;
    let offline = tempfile::tempdir()?;
    let root = offline.path().join("root");
    let port = "4001";
    let bootstrap = format!("{}:{port}", lan.addr(1));
    let mut agents = Vec::new();
    for n in 1..=3u8 {
        let ns = lan.host(n)?;
        let config = if n > 1 { format!("mesh:\n  bootstrap: [\"{bootstrap}\"]\n") } else { String::new() };
        let mut agent =
            Agent::prepare(&format!("pods{n}"), &[("BEEMESH_MESH_PORT", port)], &config)?.in_netns(&ns);
        if n == 1 {
            ca_init(&agent, &root)?;
        }
        issue_host(&agent, &root, &format!("h{n}"))?;
        agent.spawn()?;
        agent.import_busybox("busybox:1")?;
        agents.push(agent);
    }
    for (i, agent) in agents.iter().enumerate() {
        ensure!(
            eventually(T, || attested(agent).len() == 2),
            "h{} never saw both others\n{}",
            i + 1,
            agent.log()
        );
    }

    // Applied on h1: one pod pinned to h2, one the scheduler places: h1 and h3 bid alike (h2
    // holds the pinned pod's requests), and ties go to the lowest host name.
    let out = agents[0].apply(&format!("{}---\n{}", pod_on("pinned", Some("h2")), pod_on("local", None)))?;
    ensure!(
        out.contains("pod/pinned created (held by h") && out.contains("pod/local created (held by h"),
        "{out}"
    );
    // Waited for from h3, where neither runs: the hosts that run them report into the state.
    for name in ["pinned", "local"] {
        let (ok, _, err) = agents[2].run_cli(&["wait", name, "--for", "ready", "--timeout", "60"], None)?;
        ensure!(ok, "wait {name} on h3: {err}\nh1:\n{}\nh2:\n{}", agents[0].log(), agents[1].log());
    }
    let expect = vec![
        ("local".to_string(), "h1".to_string(), "Running".to_string()),
        ("pinned".to_string(), "h2".to_string(), "Running".to_string()),
    ];
    for agent in &agents {
        ensure!(eventually(T, || pods(agent) == expect), "listed {:?}, not {expect:?}", pods(agent));
    }
    let (_, table, _) = agents[2].run_cli(&["get", "pods"], None)?;
    ensure!(table.lines().next().is_some_and(|h| h.contains("NODE")), "{table}");
    ensure!(table.lines().any(|l| l.starts_with("pinned ") && l.contains(" h2 ")), "{table}");
    // peers on h3 shows what the pods placed on each host request.
    let h2 = peers(&agents[2])?.into_iter().find(|p| p["name"] == "h2").context("h2 in peers")?;
    let want = serde_json::json!({"pods": 1, "cpuMillis": 100, "memoryBytes": 16 << 20});
    ensure!(h2["requested"] == want && h2["connected"] == true, "{h2}");
    // Each pod runs only where it is placed.
    ensure!(agents[1].state_dir().join("pods").read_dir()?.count() == 1, "h2 runs one pod");
    ensure!(agents[2].state_dir().join("pods").read_dir().map_or(0, |d| d.count()) == 0, "h3 runs none");

    // logs and exec from a host that does not run the pod go to the one that does.
    ensure!(
        eventually(T, || agents[2]
            .run_cli(&["logs", "pinned"], None)
            .is_ok_and(|(ok, out, _)| ok && out.contains("hello from pinned"))),
        "logs of pinned from h3: {:?}",
        agents[2].run_cli(&["logs", "pinned"], None)
    );
    let (ok, out, err) = agents[0].run_cli(&["exec", "pinned", "--", "cat", "/etc/hostname"], None)?;
    ensure!(ok && out.trim() == "pinned", "exec from h1: {out}{err}");
    let status = agents[0]
        .cli()
        .args(["exec", "pinned", "--", "sh", "-c", "echo out; echo err >&2; exit 3"])
        .output()?;
    ensure!(status.status.code() == Some(3), "exit code: {status:?}");
    ensure!(
        String::from_utf8_lossy(&status.stdout) == "out\n"
            && String::from_utf8_lossy(&status.stderr).contains("err")
    );

    // attach from a host that does not run the pod: input and output go through h2's agent.
    agents[0].apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: asked\nspec:\n  nodeName: h2\n  restartPolicy: Never\n  \
         containers:\n  - name: c\n    image: busybox:1\n    stdin: true\n    stdinOnce: true\n    \
         command: [sh, -c, 'read q; echo \"answer to $q\"']\n",
    )?;
    let (ok, _, err) = agents[2].run_cli(&["wait", "asked", "--for", "ready", "--timeout", "60"], None)?;
    ensure!(ok, "wait asked on h3: {err}");
    let (ok, out, err) = agents[2].run_cli(&["attach", "asked", "-i"], Some("question\n"))?;
    ensure!(ok && out.contains("answer to question"), "attach from h3: {out}{err}");
    let (ok, _, err) = agents[2].run_cli(&["delete", "pod", "asked"], None)?;
    ensure!(ok, "delete asked: {err}");

    // The host that took an apply dies right after acknowledging it: nothing is lost.
    let out = agents[0].apply(&pod_on("survivor", Some("h3")))?;
    ensure!(out.contains("pod/survivor created (held by h"), "{out}");
    agents[0].crash()?;
    let (ok, _, err) = agents[1].run_cli(&["wait", "survivor", "--for", "ready", "--timeout", "60"], None)?;
    ensure!(ok, "survivor after h1 died: {err}\nh3:\n{}", agents[2].log());

    // Deleted on h3: h2 stops and removes it, and the wait ends once h2 has torn it down.
    let (ok, out, err) = agents[2].run_cli(&["delete", "pod", "pinned"], None)?;
    ensure!(ok && out.contains("pod/pinned deleted"), "{out}{err}");
    ensure!(agents[1].state_dir().join("pods").read_dir()?.count() == 0, "h2 still has the pod's directory");
    agents[0].spawn()?;
    let (ok, _, err) = agents[0].run_cli(&["wait", "local", "--for", "ready", "--timeout", "60"], None)?;
    ensure!(ok, "local after h1 restarted: {err}");
    ensure!(eventually(T, || pods(&agents[0]).len() == 2), "h1 lists {:?}", pods(&agents[0]));
    Ok(())
}

/// `get nodes` of `agent`: (NAME, STATUS) rows.
fn nodes(agent: &Agent) -> Vec<(String, String)> {
    let Ok((true, out, _)) = agent.run_cli(&["get", "nodes"], None) else { return Vec::new() };
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let mut cols = l.split_whitespace();
            Some((cols.next()?.to_string(), cols.next()?.to_string()))
        })
        .collect()
}

#[test]
fn every_host_writes_its_node_record_and_get_nodes_shows_who_is_connected() -> Result<()> {
    let mut lan = Lan::new("bmn", 47)?;
    let offline = tempfile::tempdir()?;
    let root = offline.path().join("root");
    let port = "4001";
    let bootstrap = format!("{}:{port}", lan.addr(1));
    let mut agents = Vec::new();
    for n in 1..=2u8 {
        let ns = lan.host(n)?;
        let mut config = format!("node:\n  maxPods: 7{n}\n");
        if n > 1 {
            // h2's failure detector waits longer for a probe's answer than h1's: both notice.
            config.push_str(&format!(
                "mesh:\n  bootstrap: [\"{bootstrap}\"]\n  nodeLabels: {{zone: z{n}}}\n  failureDetector: {{probeWaitMs: 1500}}\n"
            ));
        }
        let mut agent =
            Agent::prepare(&format!("nodes{n}"), &[("BEEMESH_MESH_PORT", port)], &config)?.in_netns(&ns);
        if n == 1 {
            ca_init(&agent, &root)?;
        }
        issue_host(&agent, &root, &format!("h{n}"))?;
        agent.spawn()?;
        agents.push(agent);
    }
    let both = vec![("h1".to_string(), "Ready".to_string()), ("h2".to_string(), "Ready".to_string())];
    for agent in &agents {
        ensure!(eventually(T, || nodes(agent) == both), "get nodes: {:?}\n{}", nodes(agent), agent.log());
    }
    // The record is a Kubernetes Node: labels, peer id, capacity, addresses, node info.
    let (ok, out, err) = agents[0].run_cli(&["get", "nodes", "h2", "-o", "json"], None)?;
    ensure!(ok, "get nodes h2: {err}");
    let node: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(node["kind"] == "Node" && node["metadata"]["labels"]["zone"] == "z2", "{node}");
    ensure!(node["metadata"]["labels"]["kubernetes.io/hostname"] == "h2", "{node}");
    ensure!(node["status"]["capacity"]["pods"] == "72", "{node}");
    ensure!(node["status"]["addresses"][0]["address"] == lan.addr(2).as_str(), "{node}");
    ensure!(node["status"]["conditions"][0]["status"] == "True", "{node}");
    let h2_peer = peers(&agents[1])?.iter().find(|p| p["thisHost"] == true).map(|p| p["peer"].clone());
    ensure!(Some(&node["metadata"]["annotations"]["beemesh.io/peer-id"]) == h2_peer.as_ref(), "{node}");
    let (ok, out, err) = agents[1].run_cli(&["get", "nodes", "-o", "wide"], None)?;
    ensure!(ok && out.contains("INTERNAL-IP") && out.contains(&lan.addr(1)), "{out}{err}");
    let (ok, out, _) = agents[1].run_cli(&["get", "nodes", "-o", "json"], None)?;
    let list: serde_json::Value = serde_json::from_str(&out)?;
    ensure!(ok && list["kind"] == "List" && list["items"].as_array().map(Vec::len) == Some(2), "{out}");

    // peers shows each host's labels and allocatable from its record.
    let h2 = peers(&agents[0])?.into_iter().find(|p| p["name"] == "h2").context("h2 in peers")?;
    ensure!(h2["labels"]["zone"] == "z2" && h2["allocatable"]["pods"] == "72", "{h2}");
    let (ok, out, err) = agents[0].run_cli(&["peers", "-o", "wide"], None)?;
    ensure!(ok && out.contains("LABELS") && out.contains("zone=z2"), "{out}{err}");
    // The detector's settings must be the same everywhere: each host names the other.
    for (agent, other) in agents.iter().zip(["h2", "h1"]) {
        let (ok, out, err) = agent.run_cli(&["status", "-o", "json"], None)?;
        let status: serde_json::Value = serde_json::from_str(&out).with_context(|| format!("{out}{err}"))?;
        ensure!(ok && status["mesh"]["detectorDiffers"] == serde_json::json!([other]), "{status}");
    }
    let (ok, out, err) = agents[0].run_cli(&["status"], None)?;
    ensure!(ok && out.contains("settings differ from this host's on h2"), "{out}{err}");

    // h2 stops: h1 still lists its record, NotReady, and remembers when it last saw it.
    ensure!(agents[1].stop()?, "h2 did not stop cleanly");
    let h2_gone = vec![("h1".to_string(), "Ready".to_string()), ("h2".to_string(), "NotReady".to_string())];
    ensure!(eventually(T, || nodes(&agents[0]) == h2_gone), "get nodes: {:?}", nodes(&agents[0]));
    let remembered =
        |p: &serde_json::Value| p["name"] == "h2" && p["connected"] == false && p["lastSeen"].is_u64();
    ensure!(
        eventually(T, || peers(&agents[0]).is_ok_and(|ps| ps.iter().any(remembered))),
        "h1's peers after h2 stopped: {:?}",
        peers(&agents[0])
    );
    let (ok, out, err) = agents[0].run_cli(&["peers"], None)?;
    ensure!(ok && out.lines().any(|l| l.starts_with("h2 ") && l.contains(" ago ")), "{out}{err}");
    Ok(())
}

#[test]
fn a_crashed_host_is_not_ready_within_seconds_and_ready_again_once_restarted() -> Result<()> {
    let mut lan = Lan::new("bml", 48)?;
    let offline = tempfile::tempdir()?;
    let root = offline.path().join("root");
    let port = "4001";
    let bootstrap = format!("{}:{port}", lan.addr(1));
    let mut agents = Vec::new();
    // The detector's settings, as an operator writes them (here its defaults, spelled out).
    let detector = "  failureDetector: {heartbeatMs: 1000, suspectAfterMs: 2500, watchers: 3, quorum: 2}\n";
    for n in 1..=3u8 {
        let ns = lan.host(n)?;
        let config = if n > 1 {
            format!("mesh:\n  bootstrap: [\"{bootstrap}\"]\n{detector}")
        } else {
            format!("mesh:\n{detector}")
        };
        let agent =
            Agent::prepare(&format!("live{n}"), &[("BEEMESH_MESH_PORT", port)], &config)?.in_netns(&ns);
        if n == 1 {
            ca_init(&agent, &root)?;
        }
        issue_host(&agent, &root, &format!("h{n}"))?;
        let mut agent = agent;
        agent.spawn()?;
        agents.push(agent);
    }
    let row = |name: &str, status: &str| (name.to_string(), status.to_string());
    let all = vec![row("h1", "Ready"), row("h2", "Ready"), row("h3", "Ready")];
    for agent in &agents {
        ensure!(eventually(T, || nodes(agent) == all), "get nodes: {:?}\n{}", nodes(agent), agent.log());
    }
    // peers shows the detector's view: h1 watches h2 (3 hosts: everyone watches everyone).
    let h2 = peers(&agents[0])?.into_iter().find(|p| p["name"] == "h2").context("h2 in peers")?;
    ensure!(h2["liveness"]["state"] == "alive", "{h2}");
    let (ok, out, err) = agents[0].run_cli(&["peers", "-o", "wide"], None)?;
    ensure!(ok && out.contains("LIVE") && out.contains("alive"), "{out}{err}");

    // h3 is killed: its QUIC connections linger, but its watchers stop hearing it.
    agents[2].crash()?;
    let h3_down = vec![row("h1", "Ready"), row("h2", "Ready"), row("h3", "NotReady")];
    for agent in &agents[..2] {
        let in_time = eventually(Duration::from_secs(10), || nodes(agent) == h3_down);
        ensure!(in_time, "get nodes 10 s after h3 crashed: {:?}\n{}", nodes(agent), agent.log());
    }
    // The survivors' counters show the suspicion and the verdict.
    let counter = |agent: &Agent, name: &str| -> u64 {
        let Ok((true, out, _)) = agent.run_cli(&["status", "-o", "json"], None) else { return 0 };
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v["mesh"]["liveness"][name].as_u64().unwrap_or(0)
    };
    let counted = |name: &str| -> u64 { agents[..2].iter().map(|a| counter(a, name)).sum() };
    ensure!(
        eventually(T, || counted("suspicions") >= 1 && counted("verdicts") >= 1),
        "suspicions {}, verdicts {}",
        counted("suspicions"),
        counted("verdicts")
    );
    // Restarted (same identity, a higher incarnation): Ready again everywhere.
    agents[2].spawn()?;
    for agent in &agents {
        ensure!(
            eventually(T, || nodes(agent) == all),
            "get nodes after restart: {:?}\n{}",
            nodes(agent),
            agent.log()
        );
    }
    Ok(())
}
