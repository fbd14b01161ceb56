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
    in_pod(agent, pod, &format!("timeout 5 wget -q -O - {url} 2>&1; echo rc=$?"))
}

/// What `script` printed inside `pod` (on `agent`'s host), or the error.
fn in_pod(agent: &Agent, pod: &str, script: &str) -> String {
    match agent.run_cli(&["exec", pod, "--", "sh", "-c", script], None) {
        Ok((_, out, err)) => out + &err,
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_pod_reaches_services_on_another_host_through_the_tunnel_and_on_its_own_host() -> Result<()> {
    let (lan, _offline, mut agents) = lan::joined_mesh("svc", 55, 2)?;
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
    // (The destination logs the stream once both directions have ended: after the client.)
    ensure!(
        eventually(T, || h2.log().contains("tunnel stream closed")),
        "h2 served no tunnel stream:\n{}",
        h2.log()
    );

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

    // Pods' mesh addresses: from podCidr (10.244.0.0/16), reachable from any host on any port,
    // answered by a headless Service and, with hostname and subdomain, by the pod's own name.
    h1.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  clusterIP: None\n  selector: {app: db}\n  ports: [{port: 8080}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db-pod, labels: {app: db}}\nspec:\n  nodeName: h2\n  hostname: db-0\n  subdomain: db\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sh, -c, 'mkdir -p /www && echo hello-from-db-0 > /www/index.html && exec httpd -f -p 8080 -h /www']\n    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}\n",
    )?;
    h2.wait_ready("db-pod", T)?;
    let pod_ip = |name: &str| -> String {
        let pod = h1.pod(name).unwrap_or_default();
        pod["status"]["podIP"].as_str().unwrap_or_default().to_owned()
    };
    ensure!(
        eventually(T, || pod_ip("db-pod").starts_with("10.244.")),
        "no mesh address: {}",
        pod_ip("db-pod")
    );
    let db_ip = pod_ip("db-pod");
    ensure!(
        eventually(T, || pod_ip("remote").starts_with("10.244.") && pod_ip("remote") != db_ip),
        "pods share or lack addresses: {db_ip} {}",
        pod_ip("remote")
    );
    let by_addr = format!("http://{db_ip}:8080/");
    ensure!(
        eventually(T, || fetch(h1, "client", &by_addr).contains("hello-from-db-0")),
        "{by_addr}: {}",
        fetch(h1, "client", &by_addr)
    );
    ensure!(
        eventually(T, || fetch(h1, "client", "http://db-0.db:8080/").contains("hello-from-db-0")),
        "db-0.db: {}",
        fetch(h1, "client", "http://db-0.db:8080/")
    );
    let (_, out, err) =
        h1.run_cli(&["exec", "client", "--", "nslookup", "db.default.svc.cluster.local"], None)?;
    ensure!(out.contains(&db_ip), "the headless Service does not answer its pod: {out}{err}");

    // A NodePort Service answers on every host's address, from outside any pod: on h1
    // through the tunnel, on h2 from its own pod.
    h1.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: np}\nspec:\n  type: NodePort\n  selector: {app: far}\n  ports: [{port: 80, targetPort: http}]\n",
    )?;
    let (ok, out, err) = h1.run_cli(&["get", "services", "np", "-o", "json"], None)?;
    ensure!(ok, "get services np: {err}");
    let svc: serde_json::Value = serde_json::from_str(&out)?;
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().context("nodePort")?;
    let from_h1 = |url: &str| {
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lan.netns(1)))
            .args(["timeout", "5", "busybox", "wget", "-q", "-O", "-", url])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
            .unwrap_or_else(|e| e.to_string())
    };
    let urls = [1, 2].map(|host| format!("http://{}:{node_port}/", lan.addr(host)));
    for url in &urls {
        ensure!(eventually(T, || from_h1(url).contains("hello-from-h2")), "{url}: {}", from_h1(url));
    }
    // `externalTrafficPolicy: Local`: h1 has no endpoint of its own, so its node port
    // refuses from then on; h2's still answers.
    h1.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: np}}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  selector: {{app: far}}\n  ports: [{{port: 80, targetPort: http, nodePort: {node_port}}}]\n"
    ))?;
    ensure!(eventually(T, || from_h1(&urls[0]).contains("refused")), "{}: {}", urls[0], from_h1(&urls[0]));
    ensure!(from_h1(&urls[1]).contains("hello-from-h2"), "{}: {}", urls[1], from_h1(&urls[1]));

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
    // The same pods behind `internalTrafficPolicy: Local`: h1's client reaches only h1's pod
    // (if the policy were ignored, 20 of 20 to h1 would be a 2^-20 chance).
    h1.apply(&service("local-only", "both").replace("spec:\n", "spec:\n  internalTrafficPolicy: Local\n"))?;
    ensure!(
        eventually(T, || fetch(h1, "client", "http://local-only/").contains("both-h1")),
        "local-only never answered"
    );
    let answers: Vec<String> = (0..20).map(|_| fetch(h1, "client", "http://local-only/")).collect();
    ensure!(answers.iter().all(|a| a.contains("both-h1")), "Local went elsewhere: {answers:?}");

    // h2's agent dies (its pods linger, unreachable): once h1's failure detector holds h2
    // dead, its pod is no endpoint, and every connection goes to h1's.
    agents[1].crash()?;
    let h1 = &agents[0];
    let all_to_h1 = || (0..10).all(|_| fetch(h1, "client", "http://both/").contains("both-h1"));
    ensure!(
        eventually(T, all_to_h1),
        "connections still go to the dead host's pod: {}\n{}",
        fetch(h1, "client", "http://both/"),
        h1.log()
    );
    Ok(())
}

/// A NetworkPolicy admitting pods labelled `role: good` to `app: db` on port 8080.
const ONLY_GOOD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db-from-good}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: good}}}]\n    ports: [{port: 8080}]\n";

/// An echo server pod on h2 (`app: db`, port 8080 named `echo`) and its Service `db`.
fn echo_db() -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: db, labels: {{app: db}}}}\nspec:\n  nodeName: h2\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [nc, -ll, -p, '8080', -e, cat]\n    ports: [{{name: echo, containerPort: 8080}}]\n    readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}\n---\n{}",
        service("db", "db").replace("targetPort: http", "targetPort: echo")
    )
}

/// A pod on h1 (`role: good`) that keeps one connection to `db` open, sending a line every
/// 0.2 s, and prints CUT when it ends.
const HOLDER: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: holder, labels: {role: good}}\nspec:\n  nodeName: h1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sh, -c, 'while true; do echo ping; sleep 0.2; done | nc db 80; echo CUT; sleep 1000']\n";

/// A client pod on h1 labelled `role: ROLE` that idles.
fn client(name: &str, role: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{role: {role}}}}}\nspec:\n  nodeName: h1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: busybox:1, command: [sleep, '1000']}}\n"
    )
}

/// One line sent to the db Service from `pod`, and what came back (or the error).
fn ask_db(agent: &Agent, pod: &str) -> String {
    in_pod(agent, pod, "echo hi | timeout 5 nc db 80 2>&1; echo rc=$?")
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
    h1.apply(&format!("{}---\n{}---\n{}", echo_db(), client("good", "good"), client("bad", "bad"),))?;
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
    h1.apply(HOLDER)?;
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
    ensure!(eventually(T, || h1.log().contains("revoked")), "no revocation logged on h1");
    Ok(())
}

#[test]
fn an_exec_workload_reaches_a_pod_on_another_host_and_that_host_decides_on_its_labels() -> Result<()> {
    let (_lan, _offline, mut agents) = lan::joined_mesh("svx", 62, 2)?;
    lan::start_all(&mut agents, T)?;
    for a in &agents {
        a.import_busybox("busybox:1")?;
    }
    let (h1, h2) = (&agents[0], &agents[1]);
    // The echo server's only backend is on h2: h1's workloads reach it through the tunnel.
    h1.apply(&echo_db())?;
    h2.wait_ready("db", T)?;
    let ip = cluster_ip(h1, "db")?;
    // A host process run as a workload of h1 (`exec --identity`), not a pod: one line sent to
    // the Service, and what came back (a workload name is used once).
    let runs = std::cell::Cell::new(0);
    let ask = |role: &str| -> String {
        runs.set(runs.get() + 1);
        let name = format!("{role}-{}", runs.get());
        let label = format!("role={role}");
        h1.workload(&name, "default/client", &[&label], &["ask", &format!("{ip}:80")])
            .and_then(|p| p.line(Duration::from_secs(15)))
            .unwrap_or_else(|e| e.to_string())
    };
    ensure!(eventually(T, || ask("good") == "reply hi"), "good: {}\n{}", ask("good"), h2.log());
    ensure!(ask("bad") == "reply hi", "bad, no policy: {}", ask("bad"));
    // From an IPv6 socket, to the IPv4-mapped cluster IP: captured as an IPv4 socket is.
    let ask6 = |role: &str| -> String {
        runs.set(runs.get() + 1);
        let label = format!("role={role}");
        h1.workload(
            &format!("{role}6-{}", runs.get()),
            "default/client",
            &[&label],
            &["ask", &format!("[::ffff:{ip}]:80")],
        )
        .and_then(|p| p.line(Duration::from_secs(15)))
        .unwrap_or_else(|e| e.to_string())
    };
    ensure!(ask6("good") == "reply hi", "good, IPv4-mapped: {}", ask6("good"));

    // h2 alone holds the policy: it admits role good, by the labels h1 published for its
    // workload, and refuses bad's stream with the identity the tunnel proved.
    h2.write_policy("db.yaml", ONLY_GOOD)?;
    ensure!(eventually(T, || ask("bad") != "reply hi"), "bad still answered by h2: {}", h2.log());
    ensure!(ask("good") == "reply hi", "good refused: {}", ask("good"));
    ensure!(ask6("bad") != "reply hi", "bad, IPv4-mapped, answered by h2");
    ensure!(ask6("good") == "reply hi", "good, IPv4-mapped, refused: {}", ask6("good"));
    let denied = flows_with(h2, "deny", "tunnel");
    ensure!(
        denied.iter().any(|f| f["peer"].as_str().is_some_and(|p| p.contains("ns/default/sa/client"))),
        "h2 shows no tunnel denial with the workload's identity: {denied:?}"
    );

    // A workload that ends while its host's agent is down leaves its record behind; the agent
    // deletes it when it comes back.
    let listed =
        |a: &Agent| a.run_cli(&["get", "execworkloads"], None).map(|(_, o, _)| o).unwrap_or_default();
    let lingering =
        h1.workload("lingers", "default/client", &["role=good"], &["udp-listen", "127.0.0.1:0"])?;
    ensure!(lingering.line(Duration::from_secs(15))? == "listening", "the workload did not start");
    ensure!(
        eventually(T, || listed(h2).contains("h1.lingers")),
        "h2 never listed h1's workload: {}",
        listed(h2)
    );
    ensure!(listed(h2).contains("role=good"), "no labels: {}", listed(h2));
    agents[0].crash()?;
    drop(lingering);
    ensure!(listed(&agents[1]).contains("h1.lingers"), "the record went with the agent");
    agents[0].spawn()?;
    ensure!(
        eventually(T, || !listed(&agents[1]).contains("h1.lingers")),
        "the stale record stayed: {}\n{}",
        listed(&agents[1]),
        agents[0].log()
    );
    Ok(())
}

#[test]
fn a_live_stream_outlives_the_certificate_it_was_opened_with() -> Result<()> {
    // SVIDs of 10 s, renewed at 5 s: the holder's stream is opened with one and must go on
    // after it expired, while new connections present the renewed one.
    let (_lan, _offline, mut agents) = lan::joined_mesh_with("svt", 61, 2, "svidLifetimeSeconds: 10\n")?;
    lan::start_all(&mut agents, T)?;
    for a in &agents {
        a.import_busybox("busybox:1")?;
    }
    let (h1, h2) = (&agents[0], &agents[1]);
    h1.apply(&format!("{}---\n{}", echo_db(), client("good", "good"),))?;
    h2.wait_ready("db", T)?;
    h1.wait_ready("good", T)?;
    ensure!(eventually(T, || answered(&ask_db(h1, "good"))), "no answer: {}", ask_db(h1, "good"));
    h1.apply(HOLDER)?;
    let log = || h1.run_cli(&["logs", "holder"], None).map(|(_, o, _)| o).unwrap_or_default();
    ensure!(eventually(T, || log().matches("ping").count() >= 3), "no echo on the live stream: {}", log());
    // The stream's SVID (issued at the latest when it opened) has expired 12 s later: the
    // time is what this test is about, not a stand-in for an event.
    let opened = std::time::Instant::now();
    let mut echoes = log().matches("ping").count();
    while opened.elapsed() < Duration::from_secs(12) {
        // Echoes keep coming all along (each wait far longer than the 0.2 s between pings).
        ensure!(
            eventually(Duration::from_secs(10), || log().matches("ping").count() > echoes),
            "the live stream stopped: {}\n{}",
            log(),
            h1.log()
        );
        echoes = log().matches("ping").count();
        ensure!(!log().contains("CUT"), "the live stream was cut: {}\n{}", log(), h1.log());
    }
    // New connections use the renewed SVID.
    ensure!(
        answered(&ask_db(h1, "good")),
        "a new connection after renewal: {}\n{}",
        ask_db(h1, "good"),
        h1.log()
    );
    ensure!(!log().contains("CUT"), "the live stream was cut: {}", log());
    Ok(())
}

/// A tunnel client the agent must refuse: QUIC with `chain`/`key` as its certificate, any
/// server certificate accepted (so that only the agent's checks decide). Runs in the network
/// namespace `netns` (a host of the lan).
mod rogue {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use anyhow::{Context, Result};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyServer(Arc<CryptoProvider>);

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// Connects to `addr` from inside `netns` presenting `chain`, and says how the connection
    /// ended (the agent closes a refused one with the TLS alert).
    pub fn refused_how(
        netns: &str,
        addr: SocketAddr,
        chain: Vec<CertificateDer<'static>>,
        key: PrivatePkcs8KeyDer<'static>,
    ) -> Result<String> {
        let ns = std::fs::File::open(format!("/run/netns/{netns}")).context("open netns")?;
        std::thread::spawn(move || -> Result<String> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
                    .with_protocol_versions(&[&rustls::version::TLS13])?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
                    .with_client_auth_cert(chain, PrivateKeyDer::Pkcs8(key))?;
                tls.alpn_protocols = vec![b"beemesh/2".to_vec()];
                let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
                let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))?;
                endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
                let why = match endpoint.connect(addr, "agent.beemesh")?.await {
                    Ok(conn) => {
                        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), conn.closed());
                        closed.await.map(|e| e.to_string()).unwrap_or_else(|_| "still open".into())
                    }
                    Err(e) => e.to_string(),
                };
                Ok(why)
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("rogue client thread panicked"))?
    }
}

#[test]
fn the_tunnel_refuses_foreign_expired_and_forged_peers_and_says_why() -> Result<()> {
    use beemesh_agent::identity::svid::Authority;
    use beemesh_agent::mesh::trust::{files, issue};
    use beemesh_agent::tunnel::{self, Proto, StreamHeader, Target, TlsIdentity};
    use std::time::SystemTime;

    let (lan, offline, mut agents) = lan::joined_mesh("svr", 57, 2)?;
    lan::start_all(&mut agents, T)?;
    agents[0].import_busybox("busybox:1")?;
    agents[0].apply(&client("good", "good"))?;
    agents[0].wait_ready("good", T)?;
    let h2 = &agents[1];
    let node: serde_json::Value = {
        let (ok, out, err) = h2.run_cli(&["get", "nodes", "h2", "-o", "json"], None)?;
        ensure!(ok, "get nodes: {err}");
        serde_json::from_str(&out)?
    };
    let port: u16 = node["metadata"]["annotations"]["beemesh.io/tunnel-port"]
        .as_str()
        .context("tunnel port annotation")?
        .parse()?;
    let addr: std::net::SocketAddr = format!("{}:{port}", lan.addr(2)).parse()?;
    let h1_ns = lan.netns(1);
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let refused_in_log = |reason: &str| {
        eventually(T, || h2.log().lines().any(|l| l.contains("tunnel refused") && l.contains(reason)))
    };

    // Another trust domain's workload.
    let other = Authority::generate("other.example", now, 24 * hour)?;
    let svid = other.issue("spiffe://other.example/ns/default/sa/default", now, hour)?;
    let why = rogue::refused_how(&h1_ns, addr, vec![svid.cert_der.clone()], svid.key_der.clone_key())?;
    ensure!(why.contains("handshake failed"), "another trust domain got in: {why}");
    ensure!(refused_in_log("other.example"), "h2 logged no refusal naming the trust domain:\n{}", h2.log());

    // An expired SVID from the mesh's own root.
    let ca = files::load_ca(&offline.path().join("root"), now)?;
    // Issued 50 s ago for 1 s (the root itself was made a minute before `ca init`).
    let svid = ca.authority.issue(
        "spiffe://beemesh.local/ns/default/sa/default",
        now - Duration::from_secs(50),
        Duration::from_secs(1),
    )?;
    let why = rogue::refused_how(&h1_ns, addr, vec![svid.cert_der.clone()], svid.key_der.clone_key())?;
    ensure!(why.contains("handshake failed"), "an expired SVID got in: {why}");
    ensure!(refused_in_log("expired"), "h2 logged no refusal for the expired SVID:\n{}", h2.log());

    // Valid certificates, lying headers: a workload issuer for h1 (minted with the root, as
    // h1's own is) vouches for `admin`, which no pod on h1 runs as.
    let issuer = issue::workload_ca(&ca.authority, "h1", now, hour)?;
    let ns = std::fs::File::open(format!("/run/netns/{h1_ns}"))?;
    let roots = ca.bundle.clone();
    let outcome = std::thread::spawn(move || -> Result<(String, String)> {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async move {
            // Any endpoint to connect from: one for a host "h9" of the same root.
            let keypair = beemesh_agent::mesh::trust::generate_keypair()?;
            let cert = issue::host_cert(&ca.authority, "h9", &keypair.public(), now, hour)?;
            let h9 = TlsIdentity::host(vec![cert], &keypair, roots.clone(), "beemesh.local")?;
            let local = tunnel::Endpoint::bind(([0, 0, 0, 0], 0).into(), h9)?;
            let admin = "spiffe://beemesh.local/ns/default/sa/admin";
            let svid = issuer.issue(admin, now, hour)?;
            let me = TlsIdentity::workload(&svid, &[issuer.cert_der()], roots.clone(), "beemesh.local")?;
            let conn = local.connect(addr, &me, "h2").await?;
            let target = Target { host: "default/good".into(), port: 80, proto: Proto::Tcp };
            // A header claiming another identity than the one proven.
            let forged = StreamHeader {
                source: "spiffe://beemesh.local/ns/default/sa/default".into(),
                pod: Some("default/good".into()),
                target: target.clone(),
            };
            let (_s, mut r) = conn.open(&forged).await?;
            let forged_end = format!("{:?}", r.read_to_end(64).await);
            // The proven identity, naming a pod that runs on h1 as another identity.
            let unvouched = StreamHeader { source: admin.into(), pod: Some("default/good".into()), target };
            let (_s, mut r) = conn.open(&unvouched).await?;
            let unvouched_end = format!("{:?}", r.read_to_end(64).await);
            Ok((forged_end, unvouched_end))
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
    ensure!(outcome.0.contains("Reset"), "the forged header's stream was not reset: {}", outcome.0);
    ensure!(outcome.1.contains("Reset"), "the unvouched stream was not reset: {}", outcome.1);
    ensure!(
        eventually(T, || h2.log().contains("tunnel stream refused")),
        "h2 logged no forged header:\n{}",
        h2.log()
    );
    ensure!(
        eventually(T, || h2.log().contains("does not run with that identity")),
        "h2 logged no unvouched stream:\n{}",
        h2.log()
    );
    Ok(())
}

#[test]
fn traffic_recovers_after_the_link_drops_and_after_the_destination_changes_address() -> Result<()> {
    let (lan, _offline, mut agents) = lan::joined_mesh("svl", 58, 2)?;
    lan::start_all(&mut agents, T)?;
    for a in &agents {
        a.import_busybox("busybox:1")?;
    }
    let (h1, h2) = (&agents[0], &agents[1]);
    h1.apply(&format!(
        "{}---\n{}---\n{}",
        server("remote", "h2", "far", "hello-from-h2"),
        service("far", "far"),
        client("c", "any")
    ))?;
    h1.wait_ready("c", T)?;
    h2.wait_ready("remote", T)?;
    let reached = || fetch(h1, "c", "http://far/").contains("hello-from-h2");
    ensure!(eventually(T, reached), "never reached: {}", fetch(h1, "c", "http://far/"));

    // The link drops (h2's port on the bridge goes down) and comes back.
    lan.cut(2)?;
    ensure!(eventually(T, || !reached()), "h2 still reached with its link down");
    lan.mend(2)?;
    ensure!(eventually(T, reached), "not recovered after the link came back:\n{}", h1.log());

    // h2 moves to another address: its Node record follows, the tunnel dials it there.
    let ns = lan.netns(2);
    let ip = |args: &[&str]| -> Result<()> {
        let out = std::process::Command::new("ip").args(["-n", &ns]).args(args).output()?;
        ensure!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    // (Deleting a primary address takes the secondaries of its subnet with it: delete first.)
    ip(&["addr", "del", &format!("{}/24", lan.addr(2)), "dev", "eth0"])?;
    ip(&["addr", "add", "10.200.58.12/24", "dev", "eth0"])?;
    ensure!(
        eventually(T, reached),
        "not recovered after h2 changed its address:\n{}\n{}",
        h1.log(),
        h2.log()
    );
    let (ok, out, _) = h1.run_cli(&["get", "nodes", "h2", "-o", "json"], None)?;
    ensure!(ok && out.contains("10.200.58.12"), "h2's Node record kept its old address: {out}");
    Ok(())
}

/// Volumes and mounts giving a busybox pod the host's `/usr/bin/socat` and the libraries it
/// links (the test images hold only busybox, whose applets have no UDP server).
const SOCAT: &str = "    volumeMounts: [{name: usr, mountPath: /usr, readOnly: true}, {name: lib, mountPath: /lib, readOnly: true}, {name: lib64, mountPath: /lib64, readOnly: true}]\n  volumes: [{name: usr, hostPath: {path: /usr}}, {name: lib, hostPath: {path: /usr/lib}}, {name: lib64, hostPath: {path: /usr/lib64}}]\n";

/// A UDP server pod on `node`: each datagram on port 5353 (named `dns`) is answered with its
/// first line and ` from NAME`; ready once its socket is bound (port 0x14E9 in
/// /proc/net/udp).
fn udp_server(name: &str, node: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: {app}}}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [/usr/bin/socat, 'UDP4-RECVFROM:5353,fork', 'SYSTEM:read l; echo \"$l from {name}\"']\n    ports: [{{name: dns, containerPort: 5353, protocol: UDP}}]\n    readinessProbe: {{exec: {{command: [sh, -c, 'grep -q \":14E9 \" /proc/net/udp']}}, periodSeconds: 1}}\n{SOCAT}"
    )
}

/// A UDP Service: port 53 to the pods' port named `dns`.
fn udp_service(name: &str, app: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  selector: {{app: {app}}}\n  ports: [{{port: 53, protocol: UDP, targetPort: dns}}]\n"
    )
}

/// One datagram `line` from `pod` to `to` (host:port) with socat; what came back.
fn ask_udp(agent: &Agent, pod: &str, to: &str, line: &str) -> String {
    in_pod(agent, pod, &format!("echo {line} | /usr/bin/socat -t 2 - UDP4:{to} 2>&1; echo rc=$?"))
}

#[test]
fn udp_services_reach_pods_on_another_host_through_the_tunnel_and_on_their_own_host() -> Result<()> {
    let (lan, _offline, mut agents) = lan::joined_mesh("svu", 66, 2)?;
    lan::start_all(&mut agents, T)?;
    for a in &agents {
        a.import_busybox("busybox:1")?;
    }
    let (h1, h2) = (&agents[0], &agents[1]);
    h1.apply(&format!(
        "{}---\n{}---\n{}---\n{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client}}\nspec:\n  nodeName: h1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sleep, '1000']\n{SOCAT}",
        udp_server("echo-far", "h2", "far"),
        udp_service("far", "far"),
        udp_server("echo-near", "h1", "near"),
        udp_service("near", "near"),
    ))?;
    h1.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: good, labels: {{role: good}}}}\nspec:\n  nodeName: h1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sleep, '1000']\n{SOCAT}"
    ))?;
    for pod in ["client", "echo-near", "good"] {
        h1.wait_ready(pod, T)?;
    }
    h2.wait_ready("echo-far", T)?;

    // By name, port 53: the Service's, not the pod resolver's (both are UDP port 53).
    ensure!(
        eventually(T, || ask_udp(h1, "client", "far:53", "ping").contains("ping from echo-far")),
        "client on h1 never heard from echo-far: {}\nh1:\n{}\nh2:\n{}",
        ask_udp(h1, "client", "far:53", "ping"),
        h1.log(),
        h2.log()
    );
    ensure!(
        eventually(T, || h2.log().contains("UDP tunnel stream opened")),
        "h2 logged no UDP tunnel stream:\n{}",
        h2.log()
    );
    let near = ask_udp(h1, "client", "near.default.svc.cluster.local:53", "hello");
    ensure!(near.contains("hello from echo-near"), "same host: {near}\n{}", h1.log());
    let far = cluster_ip(h1, "far")?;
    let by_addr = ask_udp(h1, "client", &format!("{far}:53"), "again");
    ensure!(by_addr.contains("again from echo-far"), "by cluster IP: {by_addr}");
    // From an IPv6 socket of a host workload, to the IPv4-mapped cluster IP: captured alike,
    // and the reply reads as from the address asked.
    // Connected sockets too (`c`: connect, then send): captured at their connect, the sender
    // proved by its cookie as the kernel chose its port after.
    for (name, to, how) in [
        ("ask6", format!("[::ffff:{far}]:53"), "u"),
        ("ask4c", format!("{far}:53"), "c"),
        ("ask6c", format!("[::ffff:{far}]:53"), "c"),
    ] {
        let asked = h1
            .workload(name, "default/client", &[], &["udp-ask", &to, how])
            .and_then(|p| p.line(Duration::from_secs(15)))?;
        ensure!(asked.starts_with("reply") && asked.ends_with(&format!("from {to}")), "{name} {to}: {asked}");
    }

    // A pod's mesh address, on the pod's own port.
    let pod_ip = h1.pod("echo-far")?["status"]["podIP"].as_str().unwrap_or_default().to_owned();
    ensure!(pod_ip.starts_with("10.244."), "no mesh address: {pod_ip}");
    let direct = ask_udp(h1, "client", &format!("{pod_ip}:5353"), "direct");
    ensure!(direct.contains("direct from echo-far"), "by pod address: {direct}");

    // The pod's own DNS still works beside a UDP Service on port 53.
    let (ok, out, err) =
        h1.run_cli(&["exec", "client", "--", "nslookup", "far.default.svc.cluster.local"], None)?;
    ensure!(ok && out.contains(&far), "nslookup: {out}{err}");

    // A UDP NodePort on both hosts' addresses, from h1's host (outside any pod): on h1 through
    // the tunnel, on h2 to its own pod.
    h1.apply(
        "apiVersion: v1\nkind: Service\nmetadata: {name: far-np}\nspec:\n  type: NodePort\n  selector: {app: far}\n  ports: [{port: 53, protocol: UDP, targetPort: dns}]\n",
    )?;
    let (ok, out, err) = h1.run_cli(&["get", "services", "far-np", "-o", "json"], None)?;
    ensure!(ok, "get services far-np: {err}");
    let svc: serde_json::Value = serde_json::from_str(&out)?;
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_u64().context("nodePort")?;
    for host in [1, 2] {
        let to = format!("UDP4:{}:{node_port}", lan.addr(host));
        let from_h1 = || {
            let script = format!("echo node{host} | socat -t 2 - {to}");
            std::process::Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", lan.netns(1)))
                .args(["sh", "-c", &script])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
                })
                .unwrap_or_else(|e| e.to_string())
        };
        let want = format!("node{host} from echo-far");
        ensure!(
            eventually(T, || from_h1().contains(&want)),
            "UDP node port on h{host}: {}\n{}",
            from_h1(),
            agents[usize::from(host) - 1].log()
        );
    }

    // Policy at the destination alone (a file of h2's policy.d): h1 lets the datagrams go, h2
    // refuses the stream and says so.
    let udp_flows = |a: &Agent, verdict: &str, hook: &str| -> usize {
        let flows = a.flows().unwrap_or_default();
        flows.iter().filter(|f| f["verdict"] == verdict && f["hook"] == hook && f["port"] == 5353).count()
    };
    h2.write_policy("far.yaml", FAR_FROM_GOOD)?;
    ensure!(
        eventually(T, || !ask_udp(h1, "client", "far:53", "denied").contains("from echo-far")
            && udp_flows(h2, "deny", "tunnel") > 0),
        "h2 never refused the UDP stream: {}\n{}",
        ask_udp(h1, "client", "far:53", "denied"),
        h2.log()
    );
    let good = ask_udp(h1, "good", "far:53", "fine");
    ensure!(good.contains("fine from echo-far"), "role good refused by h2: {good}\n{}", h2.log());
    h2.remove_policy("far.yaml")?;
    ensure!(
        eventually(T, || ask_udp(h1, "client", "far:53", "back").contains("back from echo-far")),
        "not answered after the policy file went: {}",
        ask_udp(h1, "client", "far:53", "back")
    );

    // A live flow (one socket sending every 0.2 s), then the same policy through the mesh:
    // h1's kernel drops the next datagram and h1's agent cuts the flow.
    h1.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: holder}}\nspec:\n  nodeName: h1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox:1\n    command: [sh, -c, 'while true; do echo tick; sleep 0.2; done | /usr/bin/socat - UDP4:far:53; echo CUT; sleep 1000']\n{SOCAT}"
    ))?;
    let log = |a: &Agent| a.run_cli(&["logs", "holder"], None).map(|(_, o, _)| o).unwrap_or_default();
    ensure!(
        eventually(T, || log(h1).matches("tick from echo-far").count() >= 3),
        "no replies on the live flow: {}",
        log(h1)
    );
    h1.apply(FAR_FROM_GOOD)?;
    ensure!(
        eventually(T, || h1.log().contains("revoked: the policy no longer allows it")
            && udp_flows(h1, "deny", "sendmsg") > 0),
        "h1 never cut the live UDP flow: {}\n{}",
        log(h1),
        h1.log()
    );
    let replies = log(h1).matches("tick from echo-far").count();
    ensure!(
        !ask_udp(h1, "client", "far:53", "late").contains("from echo-far"),
        "answered under the mesh policy"
    );
    let good = ask_udp(h1, "good", "far:53", "still");
    ensure!(
        good.contains("still from echo-far"),
        "role good refused under the mesh policy: {good}\n{}",
        h1.log()
    );
    ensure!(
        log(h1).matches("tick from echo-far").count() == replies,
        "the live flow is still answered: {}",
        log(h1)
    );
    Ok(())
}

/// A NetworkPolicy admitting to `app: far` on its UDP port named `dns` (5353) only pods
/// labelled `role: good`: the name is resolved on echo-far's own ports, by h2 for its pod and
/// by h1 for a pod of another host.
const FAR_FROM_GOOD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: far-from-good}\nspec:\n  podSelector: {matchLabels: {app: far}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {role: good}}}]\n    ports: [{port: dns, protocol: UDP}]\n";
