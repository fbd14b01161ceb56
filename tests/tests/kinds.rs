//! End-to-end checks of the kinds that live only in the cluster state, with two real agents in
//! network namespaces of their own on one bridge: a Service without a namespace, a Deployment
//! in a namespace nobody created and a NetworkPolicy applied on one host are listed by `get`
//! on the other (`-A`, a `List` for `-o json`, one object by name, kubectl's columns), the
//! namespace is created implicitly, a re-apply keeps the uid and bumps the generation only
//! for a changed spec, a non-empty namespace is not deleted, and `delete -f` on the other host
//! removes them everywhere.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use beemesh_tests::lan::Lan;
use beemesh_tests::{eventually, Agent};

const T: Duration = Duration::from_secs(30);

/// Runs the CLI on `agent` and fails with its output unless it succeeds.
fn cli(agent: &Agent, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let (ok, out, err) = agent.run_cli(args, stdin)?;
    ensure!(ok, "{}: {out}{err}", args.join(" "));
    Ok(out)
}

/// Whether `agent` lists `other` as an attested peer.
fn attested(agent: &Agent, other: &str) -> bool {
    let Ok(out) = cli(agent, &["peers", "-o", "json"], None) else { return false };
    let peers: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    peers.iter().any(|p| p["attested"] == true && p["name"] == other)
}

/// `namespace/name` of what `get KIND -A -o json` lists on `agent` (empty when the call fails).
fn listed(agent: &Agent, kind: &str) -> Vec<String> {
    let Ok(out) = cli(agent, &["get", kind, "-A", "-o", "json"], None) else { return Vec::new() };
    let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    assert_eq!(list["kind"], "List", "{out}");
    let mut names: Vec<String> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            let ns = i["metadata"]["namespace"].as_str().unwrap_or_default();
            format!("{ns}/{}", i["metadata"]["name"].as_str().unwrap_or_default())
        })
        .collect();
    names.sort();
    names
}

const FILE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: web-conf
  namespace: shop
data: {mode: prod}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: busybox:1
          command: [httpd, -f, -p, '8080']
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-in
  namespace: shop
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: front}}}]
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: web
  namespace: shop
automountServiceAccountToken: false
";

#[test]
fn kinds_applied_on_one_host_are_listed_and_deleted_from_the_other() -> Result<()> {
    let mut lan = Lan::new("bmk", 45)?;
    let offline = tempfile::tempdir()?;
    let root = offline.path().join("root");
    let root = root.to_str().context("utf-8")?;
    let port = "4001";
    let bootstrap = format!("{}:{port}", lan.addr(1));
    let mut agents = Vec::new();
    for n in 1..=2u8 {
        let ns = lan.host(n)?;
        let config = if n > 1 { format!("mesh:\n  bootstrap: [\"{bootstrap}\"]\n") } else { String::new() };
        let agent =
            Agent::prepare(&format!("kinds{n}"), &[("BEEMESH_MESH_PORT", port)], &config)?.in_netns(&ns);
        if n == 1 {
            cli(&agent, &["ca", "init", "--dir", root], None)?;
        }
        let state = agent.state_dir();
        let state = state.to_str().context("utf-8")?;
        cli(&agent, &["ca", "issue-host", "--ca", root, "--name", &format!("h{n}"), "--out", state], None)?;
        agents.push(agent);
    }
    for agent in agents.iter_mut() {
        agent.spawn()?;
    }
    let (a, b) = (&agents[0], &agents[1]);
    for (agent, other) in [(a, "h2"), (b, "h1")] {
        ensure!(eventually(T, || attested(agent, other)), "{other} never attested:\n{}", agent.log());
    }

    // The cluster state learns of a peer just after the swarm attests it: wait until h1's
    // writes are held by h2.
    // (Each try writes something new: an unchanged object is not written again.)
    let tries = std::cell::Cell::new(0);
    let canary = || {
        tries.set(tries.get() + 1);
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: canary\ndata: {{try: \"{}\"}}\n",
            tries.get()
        )
    };
    ensure!(
        eventually(T, || a.apply(&canary()).is_ok_and(|out| out.contains("(held by h2)"))),
        "h1's writes never held by h2:\n{}",
        a.log()
    );

    // Applied on h1: the namespace nobody created is created, each object held by h2, the
    // lines in the file's order (the ConfigMap goes through the actor, the rest does not).
    let out = a.apply(FILE)?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "namespace/shop created (implicitly) (held by h2)",
            "service/web created (held by h2)",
            "configmap/web-conf created (held by h2)",
            "deployment.apps/web created (held by h2)",
            "networkpolicy.networking.k8s.io/web-in created (held by h2)",
            "serviceaccount/web created (held by h2)",
        ],
        "{out}"
    );

    // Listed on h2: every namespace (`-A`, a List), one by name, kubectl's columns.
    ensure!(
        eventually(T, || listed(b, "deployments") == ["shop/web"]
            && listed(b, "svc") == ["default/web"]
            && listed(b, "netpol") == ["shop/web-in"]
            && listed(b, "sa") == ["shop/web"]),
        "not listed on h2: {:?} {:?} {:?}\n{}",
        listed(b, "deployments"),
        listed(b, "services"),
        listed(b, "networkpolicies"),
        b.log()
    );
    let deploy: serde_json::Value =
        serde_json::from_str(&cli(b, &["get", "deploy", "web", "-n", "shop", "-o", "json"], None)?)?;
    assert_eq!(
        (deploy["kind"].as_str(), deploy["apiVersion"].as_str()),
        (Some("Deployment"), Some("apps/v1"))
    );
    assert_eq!(deploy["metadata"]["generation"], 1);
    let uid = deploy["metadata"]["uid"].as_str().context("a uid")?.to_owned();
    ensure!(deploy["metadata"]["creationTimestamp"].is_string(), "{deploy}");
    let table = cli(b, &["get", "deployments", "-n", "shop"], None)?;
    // Its ReplicaSet starts at once (the pods wait for an image no host has).
    ensure!(table.starts_with("NAME   READY   UP-TO-DATE   AVAILABLE   AGE\nweb    0/2     "), "{table}");
    let table = cli(b, &["get", "services", "-o", "wide"], None)?;
    ensure!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains("ClusterIP") && l.contains("80/TCP") && l.ends_with("app=web")),
        "{table}"
    );
    // Its cluster IP comes from the mesh's range (10.96.0.0/12 by default), and stays.
    let cluster_ip = table
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|ip| ip.parse::<std::net::Ipv4Addr>().ok())
        .context("a cluster IP")?;
    let [a1, a2, _, _] = cluster_ip.octets();
    ensure!(a1 == 10 && (96..=111).contains(&a2), "{table}");
    let yaml = cli(b, &["get", "netpol", "-n", "shop", "-o", "yaml"], None)?;
    ensure!(yaml.starts_with("apiVersion: v1\nitems:") && yaml.contains("kind: List"), "{yaml}");
    let (ok, _, err) = b.run_cli(&["get", "deployments", "web"], None)?;
    ensure!(!ok && err.trim() == "Error from server (NotFound): deployments.apps \"web\" not found", "{err}");
    let namespaces = cli(b, &["get", "namespaces"], None)?;
    let names: Vec<&str> = namespaces.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["default", "kube-system", "shop"], "{namespaces}");
    ensure!(namespaces.lines().all(|l| l.contains("STATUS") || l.contains("Active")), "{namespaces}");

    // Re-applied on h2: unchanged; scaled, it is configured with the same uid, generation 2.
    let out = b.apply(FILE)?;
    ensure!(
        out.contains("deployment.apps/web unchanged")
            && out.contains("service/web unchanged")
            && !out.contains("namespace/shop"),
        "{out}"
    );
    // Another Service may not ask for that address: nothing of its file is written.
    let taken = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: other}}\nspec:\n  clusterIP: {cluster_ip}\n  ports: [{{port: 81}}]\n"
    );
    let (ok, _, err) = b.run_cli(&["apply", "-f", "-"], Some(&taken))?;
    ensure!(
        !ok && err.contains(&format!("service default/other: spec.clusterIP: Invalid value: \"{cluster_ip}\": provided IP is already allocated (to Service default/web)")),
        "{err}"
    );
    let out = b.apply(&FILE.replace("replicas: 2", "replicas: 3"))?;
    ensure!(out.contains("deployment.apps/web configured (held by h1)"), "{out}");
    ensure!(
        eventually(T, || {
            let Ok(out) = cli(a, &["get", "deploy", "web", "-n", "shop", "-o", "json"], None) else {
                return false;
            };
            let d: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            d["metadata"]["generation"] == 2
                && d["metadata"]["uid"] == uid.as_str()
                && d["spec"]["replicas"] == 3
        }),
        "the re-apply did not reach h1"
    );

    // A namespace that still holds objects is not deleted, and nothing else is either.
    let namespace = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n";
    let (ok, out, err) = b.run_cli(&["delete", "-f", "-"], Some(namespace))?;
    ensure!(
        !ok && err.contains("namespace/shop is not empty: it holds") && err.contains("deployment.apps/web"),
        "{out}{err}"
    );

    // Deleted on h2 (which never applied it first): gone on h1; then the emptied namespace.
    let out = cli(b, &["delete", "-f", "-"], Some(FILE))?;
    ensure!(
        out.contains("deployment.apps/web deleted")
            && out.contains("service/web deleted")
            && out.contains("configmap/web-conf deleted"),
        "{out}"
    );
    ensure!(
        eventually(T, || listed(a, "deployments").is_empty()
            && listed(a, "services").is_empty()
            && listed(a, "networkpolicies").is_empty()
            && listed(a, "serviceaccounts").is_empty()
            && listed(a, "cm") == ["default/canary"]),
        "not deleted on h1:\n{}",
        a.log()
    );
    let out = cli(b, &["delete", "-f", "-"], Some(namespace))?;
    ensure!(out.contains("namespace/shop deleted"), "{out}");
    ensure!(
        eventually(T, || listed(a, "ns") == ["/default", "/kube-system"]),
        "shop still listed on h1: {:?}",
        listed(a, "ns")
    );
    Ok(())
}
