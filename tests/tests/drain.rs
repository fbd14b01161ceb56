//! End-to-end checks of PodDisruptionBudgets and `drain` on three real agents, each in a
//! network namespace of its own on one bridge: a Deployment of two replicas kept on two hosts
//! (anti-affinity) under a budget of `minAvailable: 2`; draining one of those hosts cordons it
//! (`SchedulingDisabled`) and is refused by the budget, with Kubernetes' reason, until the
//! budget is relaxed; then the replica is evicted and made again on the third host (not on
//! the cordoned one), and `uncordon` opens the host again. A scale-down to 0 holds at the
//! budget's `minAvailable` until the budget is relaxed. Extended resources: the one host
//! offering a dongle runs the first pod asking for one; the second waits, saying why.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use beemesh_tests::lan::{joined_mesh, start_ready};
use beemesh_tests::{eventually, Agent};

const T: Duration = Duration::from_secs(60);

fn manifest(min_available: u32, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {{matchLabels: {{app: web}}}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: c
        image: busybox:1
        command: [sh, -c, "trap 'exit 0' TERM; sleep 1000 & wait"]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: web}}
spec:
  minAvailable: {min_available}
  selector: {{matchLabels: {{app: web}}}}
"#
    )
}

/// Running, ready `web-*` pods: name -> node.
fn web(agent: &Agent) -> BTreeMap<String, String> {
    agent.json(&["get", "pods", "-o", "json"])["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("web-")))
        .filter(|p| p["status"]["phase"] == "Running")
        .filter(|p| {
            p["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .filter_map(|p| {
            Some((p["metadata"]["name"].as_str()?.to_owned(), p["spec"]["nodeName"].as_str()?.to_owned()))
        })
        .collect()
}

fn node_status(agent: &Agent, node: &str) -> String {
    let out = agent.run_cli(&["get", "nodes"], None).map(|(_, o, _)| o).unwrap_or_default();
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_disruption_budget_holds_a_drain_back_until_it_allows_the_eviction() -> Result<()> {
    let (_lan, _root, mut agents) = joined_mesh("bdr", 65, 3)?;
    // h3 offers one dongle, an extended resource.
    let config = agents[2].dir.path().join("agent.yaml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, format!("{text}  nodeResources: {{example.com/dongle: 1}}\n"))?;
    start_ready(&mut agents, T)?;
    agents[0].apply(&manifest(2, 2))?;
    ensure!(eventually(T, || web(&agents[1]).len() == 2), "web: {:?}", web(&agents[1]));
    let pdb = |agent: &Agent| agent.json(&["get", "pdb", "web", "-o", "json"]);
    ensure!(
        eventually(T, || pdb(&agents[2])["status"]["currentHealthy"] == 2
            && pdb(&agents[2])["status"]["disruptionsAllowed"] == 0),
        "{}",
        pdb(&agents[2])
    );
    let table = agents[2].run_cli(&["get", "pdb"], None)?.1;
    ensure!(
        table.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
            == ["web", "2", "N/A", "0", l.split_whitespace().last().unwrap_or("")]),
        "{table}"
    );

    // Drain a host with a replica: cordoned, and the budget refuses the eviction.
    let before = web(&agents[1]);
    let (pod, host) = before.iter().next().map(|(p, h)| (p.clone(), h.clone())).unwrap_or_default();
    let (ok, out, err) = agents[1].run_cli(&["drain", &host, "--timeout", "3"], None)?;
    ensure!(!ok, "the drain went through a budget of 2: {out}{err}");
    ensure!(
        out.contains(&format!("node/{host} cordoned"))
            && out.contains(&format!("evicting pod default/{pod}")),
        "{out}"
    );
    ensure!(
        err.contains(&format!("error when evicting pods/\"{pod}\" -n \"default\""))
            && err.contains("Cannot evict pod as it would violate the pod's disruption budget.")
            && err.contains("global timeout reached"),
        "{err}"
    );
    ensure!(web(&agents[0]).get(&pod) == Some(&host), "the replica did not stay: {:?}", web(&agents[0]));
    for agent in &agents {
        ensure!(
            eventually(T, || node_status(agent, &host) == "Ready,SchedulingDisabled"),
            "{}",
            node_status(agent, &host)
        );
    }

    // Relaxed to 1, the drain evicts the replica; it is made again on the third host.
    agents[2].apply(&manifest(1, 2))?;
    ensure!(eventually(T, || pdb(&agents[1])["status"]["disruptionsAllowed"] == 1), "{}", pdb(&agents[1]));
    let (ok, out, err) = agents[1].run_cli(&["drain", &host, "--timeout", "60"], None)?;
    ensure!(ok, "{out}{err}");
    ensure!(
        out.contains(&format!("node/{host} already cordoned"))
            && out.contains(&format!("pod/{pod} evicted"))
            && out.contains(&format!("node/{host} drained")),
        "{out}"
    );
    let third: Vec<&str> =
        ["h1", "h2", "h3"].into_iter().filter(|h| !before.values().any(|b| b == h)).collect();
    ensure!(
        eventually(T, || {
            let now = web(&agents[0]);
            now.len() == 2
                && !now.values().any(|n| *n == host)
                && now.values().any(|n| third.contains(&n.as_str()))
        }),
        "after the drain: {:?}",
        web(&agents[0])
    );

    let (ok, out, err) = agents[0].run_cli(&["uncordon", &host], None)?;
    ensure!(ok && out.contains(&format!("node/{host} uncordoned")), "{out}{err}");
    for agent in &agents {
        ensure!(eventually(T, || node_status(agent, &host) == "Ready"), "{}", node_status(agent, &host));
    }

    // Scaled to 0 under `minAvailable: 1`: one replica goes, the last is held by the budget
    // (the Deployment keeps it and says so in its status); relaxed to 0, it goes too.
    agents[1].apply(&manifest(1, 0))?;
    let deployment = |agent: &Agent| agent.json(&["get", "deployment", "web", "-o", "json"]);
    ensure!(
        eventually(T, || web(&agents[0]).len() == 1
            && deployment(&agents[2])["status"]["replicas"] == 1
            && pdb(&agents[2])["status"]["disruptionsAllowed"] == 0),
        "{:?}\n{}",
        web(&agents[0]),
        pdb(&agents[2])
    );
    agents[1].apply(&manifest(0, 0))?;
    ensure!(eventually(T, || web(&agents[0]).is_empty()), "{:?}", web(&agents[0]));

    // Extended resources: the one host with a dongle takes the first pod that asks for one;
    // the second waits, saying why.
    let dongle = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sleep, '1000']\n    resources: {{limits: {{example.com/dongle: 1}}}}\n"
        )
    };
    agents[0].apply(&dongle("dongle-a"))?;
    let pod = |agent: &Agent, name: &str| agent.json(&["get", "pods", name, "-o", "json"]);
    ensure!(
        eventually(T, || pod(&agents[1], "dongle-a")["spec"]["nodeName"] == "h3"
            && pod(&agents[1], "dongle-a")["status"]["phase"] == "Running"),
        "{}",
        pod(&agents[1], "dongle-a")
    );
    agents[1].apply(&dongle("dongle-b"))?;
    let waits = |agent: &Agent| {
        let p = pod(agent, "dongle-b");
        p["status"]["phase"] == "Pending"
            && p["status"]["conditions"][0]["message"].as_str().is_some_and(|m| {
                m.starts_with("0/3 hosts are available") && m.contains("Insufficient example.com/dongle")
            })
    };
    ensure!(eventually(T, || waits(&agents[0])), "{}", pod(&agents[0], "dongle-b"));
    let node = agents[0].json(&["get", "nodes", "h3", "-o", "json"]);
    ensure!(node["status"]["allocatable"]["example.com/dongle"] == "1", "{node}");
    Ok(())
}
