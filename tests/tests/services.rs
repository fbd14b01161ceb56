//! Services between pods: the kernel captures a pod's connection to a cluster IP, the agent
//! forwards it to a ready backend, on its own host from inside the backend pod's network
//! namespace, on another host through a QUIC tunnel between the two agents. Hosts are
//! network namespaces on a bridge (subnet 55).

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use beemesh_tests::{eventually, lan, Agent};

const T: Duration = Duration::from_secs(60);

/// A busybox httpd pod on `node` answering `text` on port 8080 (named `http`), ready once it
/// listens.
fn server(name: &str, node: &str, app: &str, text: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sh, -c, 'mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 8080 -h /www']\n    ports: [{{name: http, containerPort: 8080}}]\n    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}\n"
    )
}

fn service(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {app}}}\n  ports: [{{port: 80, targetPort: http}}]\n"
    )
}

fn cluster_ip(agent: &Agent, service: &str) -> Result<String> {
    let (ok, out, err) = agent.run_cli(&["get", "services", service, "-o", "json"], None)?;
    ensure!(ok, "get services {service}: {err}");
    let svc: serde_json::Value = serde_json::from_str(&out)?;
    Ok(svc["spec"]["clusterIP"].as_str().context("clusterIP")?.to_owned())
}

/// `wget` of `url` from inside `pod` (on `agent`'s host): its output, or the error.
fn fetch(agent: &Agent, pod: &str, url: &str) -> String {
    // (busybox-static 1.35's wget crashes on -T: the timeout applet bounds it.)
    let script = format!("timeout 5 wget -q -O - {url} 2>&1; echo rc=$?");
    match agent.run_cli(&["exec", pod, "--", "sh", "-c", &script], None) {
        Ok((_, out, err)) => out + &err,
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_pod_reaches_services_on_another_host_through_the_tunnel_and_on_its_own_host() -> Result<()> {
    let (_lan, _offline, mut agents) = lan::joined_mesh("svc", 55, 2)?;
    lan::start_all(&mut agents, T)?;
    for a in &agents {
        a.import_busybox("busybox:1")?;
    }
    let (h1, h2) = (&agents[0], &agents[1]);
    h1.apply(&format!(
        "{}---\n{}---\n{}---\n{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  nodeName: h1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: busybox:1, command: [sleep, '1000']}}\n",
        server("remote", "h2", "far", "hello-from-h2"),
        service("far", "far"),
        server("near", "h1", "near", "hello-from-h1"),
        service("near", "near"),
    ))?;
    for pod in ["client", "near"] {
        h1.wait_ready(pod, T)?;
    }
    h2.wait_ready("remote", T)?;

    // Through the tunnel: the server's port exists only inside its pod on h2. By name: the
    // pod's resolver (10.0.2.3 in slirp4netns) is redirected to the agent's, and `far`
    // is found through the pod's search domains.
    let far = cluster_ip(h1, "far")?;
    let url = "http://far/".to_owned();
    ensure!(
        eventually(T, || fetch(h1, "client", &url).contains("hello-from-h2")),
        "client on h1 never reached {url}: {}\nh1:\n{}\nh2:\n{}",
        fetch(h1, "client", &url),
        h1.log(),
        h2.log()
    );
    ensure!(h2.log().contains("tunnel stream closed"), "h2 served no tunnel stream:\n{}", h2.log());

    ensure!(fetch(h1, "client", &format!("http://{far}/")).contains("hello-from-h2"), "by address");
    let (ok, out, err) =
        h1.run_cli(&["exec", "client", "--", "nslookup", "far.default.svc.cluster.local"], None)?;
    ensure!(ok && out.contains(&far), "nslookup: {out}{err}");
    let (_, out, err) =
        h1.run_cli(&["exec", "client", "--", "nslookup", "nothing.default.svc.cluster.local"], None)?;
    ensure!(
        out.contains("NXDOMAIN") || err.contains("NXDOMAIN"),
        "a name under cluster.local that names nothing: {out}{err}"
    );

    // On its own host: straight into the server pod's network namespace, no tunnel.
    let url = "http://near.default.svc/".to_owned();
    ensure!(
        eventually(T, || fetch(h1, "client", &url).contains("hello-from-h1")),
        "client on h1 never reached {url}: {}\n{}",
        fetch(h1, "client", &url),
        h1.log()
    );

    // One Service, a pod on each host: connections spread over both (each picks at random;
    // 200 tries all to one side would be a 2^-199 chance).
    h1.apply(&format!(
        "{}---\n{}---\n{}",
        server("both-1", "h1", "both", "both-h1"),
        server("both-2", "h2", "both", "both-h2"),
        service("both", "both")
    ))?;
    h1.wait_ready("both-1", T)?;
    h2.wait_ready("both-2", T)?;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let got = fetch(h1, "client", "http://both/");
        for side in ["both-h1", "both-h2"] {
            if got.contains(side) {
                seen.insert(side);
            }
        }
        if seen.len() == 2 {
            break;
        }
    }
    ensure!(seen.len() == 2, "connections went only to {seen:?}");
    Ok(())
}

/// A NetworkPolicy admitting pods labelled `role: good` to `app: db` on port 8080.
const ONLY_GOOD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-from-good}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: good}}}]\n    ports: [{port: 8080}]\n";

/// A client pod on h1 labelled `role: ROLE` that idles.
fn client(name: &str, role: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{role: {role}}}}}\nspec:\n  nodeName: h1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: busybox:1, command: [sleep, '1000']}}\n"
    )
}

/// One line sent to the db Service from `pod`, and what came back (or the error).
fn ask_db(agent: &Agent, pod: &str) -> String {
    let script = "echo hi | timeout 5 nc db 80 2>&1; echo rc=$?";
    match agent.run_cli(&["exec", pod, "--", "sh", "-c", script], None) {
        Ok((_, out, err)) => out + &err,
        Err(e) => e.to_string(),
    }
}

fn answered(reply: &str) -> bool {
    reply.lines().next() == Some("hi")
}

/// Flows `agent` recorded with `verdict` and `hook` for port 8080.
fn flows_with(agent: &Agent, verdict: &str, hook: &str) -> Vec<serde_json::Value> {
    agent
        .flows()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f["verdict"] == verdict && f["hook"] == hook && f["port"] == 8080)
        .collect()
}

#[test]
fn policy_is_decided_at_both_ends_and_a_revoked_permission_cuts_the_live_stream() -> Result<()> {
    let (_lan, _offline, mut agents) = lan::joined_mesh("svp", 56, 2)?;
    lan::start_all(&mut agents, T)?;
    for a in &agents {
        a.import_busybox("busybox:1")?;
    }
    let (h1, h2) = (&agents[0], &agents[1]);
    // An echo server on h2; two clients on h1; a third keeps one connection open and says
    // when it is cut.
    h1.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: db, labels: {{app: db}}}}\nspec:\n  nodeName: h2\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [nc, -ll, -p, '8080', -e, cat]\n    ports: [{{name: echo, containerPort: 8080}}]\n    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}\n---\n{}---\n{}---\n{}",
        service("db", "db").replace("targetPort: http", "targetPort: echo"),
        client("good", "good"),
        client("bad", "bad"),
    ))?;
    h2.wait_ready("db", T)?;
    for pod in ["good", "bad"] {
        h1.wait_ready(pod, T)?;
    }
    ensure!(eventually(T, || answered(&ask_db(h1, "good"))), "good, no policy: {}", ask_db(h1, "good"));
    ensure!(answered(&ask_db(h1, "bad")), "bad, no policy: {}", ask_db(h1, "bad"));

    // The destination alone holds the policy (a file of h2's policy.d): h1 lets bad's
    // connection go, h2 refuses its stream with the identity the tunnel proved.
    h2.write_policy("db.yaml", ONLY_GOOD)?;
    ensure!(eventually(T, || !answered(&ask_db(h1, "bad"))), "bad still answered by h2: {}", h2.log());
    ensure!(answered(&ask_db(h1, "good")), "good refused: {}", ask_db(h1, "good"));
    let denied = flows_with(h2, "deny", "tunnel");
    ensure!(
        denied.iter().any(|f| f["peer"].as_str().is_some_and(|p| p.contains("ns/default/sa/default"))),
        "h2 shows no tunnel denial with the peer's identity: {denied:?}"
    );
    ensure!(!flows_with(h2, "allow", "tunnel").is_empty(), "h2 shows no allowed tunnel stream");

    // Through the mesh: every host enforces it, so h1's kernel refuses bad at connect.
    h2.remove_policy("db.yaml")?;
    h1.apply(ONLY_GOOD)?;
    ensure!(
        eventually(T, || ask_db(h1, "bad").contains("refused")
            && !flows_with(h1, "deny", "connect").is_empty()),
        "h1 never refused bad at the source: {}\n{:?}",
        ask_db(h1, "bad"),
        flows_with(h1, "deny", "connect")
    );
    ensure!(answered(&ask_db(h1, "good")), "good refused under the mesh policy: {}", ask_db(h1, "good"));

    // A live stream: good keeps a connection open and prints what comes back.
    h1.apply(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: holder, labels: {role: good}}\nspec:\n  nodeName: h1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sh, -c, 'while true; do echo ping; sleep 0.2; done | nc db 80; echo CUT; sleep 1000']\n",
    )?;
    let log = |a: &Agent| a.run_cli(&["logs", "holder"], None).map(|(_, o, _)| o).unwrap_or_default();
    ensure!(
        eventually(T, || log(h1).matches("ping").count() >= 3),
        "no echo on the live stream: {}",
        log(h1)
    );
    ensure!(!log(h1).contains("CUT"), "cut before the revocation: {}", log(h1));
    // The permission goes: the mesh policy now admits another role only.
    h1.apply(&ONLY_GOOD.replace("role: good", "role: other"))?;
    ensure!(
        eventually(T, || log(h1).contains("CUT")),
        "the live stream was never cut: {}\n{}",
        log(h1),
        h1.log()
    );
    ensure!(h1.log().contains("revoked"), "no revocation logged on h1");
    Ok(())
}
