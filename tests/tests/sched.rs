//! End-to-end checks of decentralized scheduling with real agents, each in a network namespace
//! of its own on one bridge: pods without `nodeName` are tendered to the hosts, which bid from
//! their free capacity; spreading, node selectors, taints and tolerations decide where they
//! go; a pod no host can take is Pending with Kubernetes' reason; the pods of a host that dies
//! show as Unknown (NodeLost) and are placed again on the survivors, and the host, back, stops
//! its stale copies.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use beemesh_tests::lan::joined_mesh;
use beemesh_tests::{eventually, Agent};

const T: Duration = Duration::from_secs(60);

/// A row of `get pods -o json`: node, phase, and the reason or the scheduling message.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Row {
    node: String,
    phase: String,
    why: String,
}

fn rows(agent: &Agent) -> BTreeMap<String, Row> {
    let Ok((true, out, _)) = agent.run_cli(&["get", "pods", "-o", "json"], None) else {
        return BTreeMap::new();
    };
    let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let status = &p["status"];
            let why = match status["reason"].as_str() {
                Some(r) => r.to_owned(),
                None => s(&status["conditions"][0]["message"]),
            };
            let row = Row { node: s(&p["spec"]["nodeName"]), phase: s(&status["phase"]), why };
            (s(&p["metadata"]["name"]), row)
        })
        .collect()
}

/// How many of `names` each node runs (Running) per `agent`.
fn running_on(agent: &Agent, prefix: &str) -> BTreeMap<String, usize> {
    let mut by_node = BTreeMap::new();
    for (name, row) in rows(agent) {
        if name.starts_with(prefix) && row.phase == "Running" {
            *by_node.entry(row.node).or_default() += 1;
        }
    }
    by_node
}

fn pod(name: &str, labels: &str, cpu: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{{labels}}}\nspec:\n  terminationGracePeriodSeconds: 1\n{extra}  containers:\n  - name: c\n    image: busybox:1\n    resources: {{requests: {{cpu: {cpu}, memory: 16Mi}}}}\n    command: [sh, -c, \"trap 'exit 0' TERM; sleep 1000 & wait\"]\n---\n"
    )
}

/// Adds `lines` to the `mesh:` section of `agent`'s config file.
fn add_mesh_config(agent: &Agent, lines: &str) -> Result<()> {
    let path = agent.dir.path().join("agent.yaml");
    let mut config = std::fs::read_to_string(&path)?;
    if config.is_empty() {
        config.push_str("mesh:\n");
    }
    config.push_str(lines);
    std::fs::write(path, config)?;
    Ok(())
}

#[test]
fn pods_are_tendered_spread_constrained_and_placed_again_when_their_host_dies() -> Result<()> {
    let (_lan, _root, mut agents) = joined_mesh("bms", 52, 3)?;
    add_mesh_config(&agents[0], "  nodeLabels: {disk: ssd}\n")?;
    add_mesh_config(&agents[2], "  nodeTaints: [\"dedicated=batch:NoSchedule\"]\n")?;
    for agent in agents.iter_mut() {
        agent.spawn()?;
        agent.import_busybox("busybox:1")?;
    }
    let ready = |agent: &Agent| {
        agent.run_cli(&["get", "nodes"], None).is_ok_and(|(ok, out, _)| {
            ok && ["h1", "h2", "h3"]
                .iter()
                .all(|h| out.lines().any(|l| l.starts_with(h) && l.contains(" Ready")))
        })
    };
    for agent in &agents {
        ensure!(eventually(T, || ready(agent)), "not every host Ready\n{}", agent.log());
    }

    // Six replicas of one app, applied on h2: h3's taint keeps them off it, and spreading
    // puts three on each of h1 and h2.
    let web: String = (0..6).map(|i| pod(&format!("web-{i}"), "app: web", "100m", "")).collect();
    // One pod for the host with an ssd, one that tolerates h3's taint and asks for it, one
    // that no host can hold.
    let ssd = pod("ssd", "app: ssd", "100m", "  nodeSelector: {disk: ssd}\n");
    let batch = pod(
        "batch",
        "app: batch",
        "100m",
        "  tolerations: [{key: dedicated, operator: Equal, value: batch, effect: NoSchedule}]\n  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms: [{matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [h3]}]}]\n",
    );
    let huge = pod("huge", "app: huge", "64", "");
    let out = agents[1].apply(&format!("{web}{ssd}{batch}{huge}"))?;
    ensure!(out.contains("pod/web-5 created") && out.contains("pod/huge created"), "{out}");

    let three_each = BTreeMap::from([("h1".to_string(), 3), ("h2".to_string(), 3)]);
    ensure!(
        eventually(T, || running_on(&agents[0], "web-") == three_each),
        "web spread: {:?}\n{}",
        rows(&agents[0]),
        agents[1].log()
    );
    let rows1 = rows(&agents[0]);
    ensure!(
        eventually(T, || rows(&agents[2]).get("ssd").is_some_and(|r| r.node == "h1" && r.phase == "Running")),
        "ssd: {:?}",
        rows(&agents[2])
    );
    ensure!(
        eventually(T, || rows(&agents[2])
            .get("batch")
            .is_some_and(|r| r.node == "h3" && r.phase == "Running")),
        "batch: {:?}",
        rows(&agents[2])
    );
    let huge_row = Row {
        node: String::new(),
        phase: "Pending".into(),
        why: "0/3 hosts are available: 3 Insufficient cpu".into(),
    };
    ensure!(
        eventually(T, || rows(&agents[0]).get("huge") == Some(&huge_row)),
        "huge: {:?}",
        rows1.get("huge")
    );
    let (_, table, _) = agents[2].run_cli(&["get", "pods"], None)?;
    ensure!(table.lines().any(|l| l.starts_with("huge ") && l.contains("Pending")), "{table}");

    // h2 dies: every host shows its pods as Unknown (NodeLost) within seconds, never Running,
    // then the survivors place them again. h3 is tainted: all six web pods end up on h1.
    agents[1].crash()?;
    let lost = |agent: &Agent| {
        let r = rows(agent);
        let on_h2: Vec<&Row> = r.values().filter(|row| row.node == "h2").collect();
        !on_h2.is_empty() && on_h2.iter().all(|row| row.phase == "Unknown" && row.why == "NodeLost")
    };
    let replaced = |agent: &Agent| running_on(agent, "web-") == BTreeMap::from([("h1".to_string(), 6)]);
    for agent in [&agents[0], &agents[2]] {
        ensure!(
            eventually(Duration::from_secs(15), || lost(agent) || replaced(agent)),
            "h2's pods not shown lost: {:?}",
            rows(agent)
        );
    }
    for agent in [&agents[0], &agents[2]] {
        ensure!(
            eventually(T, || replaced(agent)),
            "web after h2 died: {:?}\n{}",
            rows(agent),
            agents[0].log()
        );
    }
    // The rest stays where it was, and the pod nobody can hold still waits.
    let r = rows(&agents[2]);
    ensure!(r["ssd"].node == "h1" && r["batch"].node == "h3" && r["huge"] == huge_row, "{r:?}");

    // h2 comes back: its stale copies stop, and it runs nothing.
    agents[1].spawn()?;
    let empty = |agent: &Agent| agent.state_dir().join("pods").read_dir().map_or(0, |d| d.count()) == 0;
    ensure!(eventually(T, || empty(&agents[1])), "h2 kept its stale pods\n{}", agents[1].log());
    ensure!(eventually(T, || ready(&agents[1])), "h2 not Ready again\n{}", agents[1].log());
    ensure!(replaced(&agents[1]), "after h2 returned: {:?}", rows(&agents[1]));
    Ok(())
}
