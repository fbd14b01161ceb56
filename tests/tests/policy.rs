//! End-to-end: a real agent, real kernel programs, workloads in real cgroups, policy files
//! in policy.d. Each test has its own agent (cgroup `bmt-<test>-<pid>`), ports and files.

use std::time::Duration;

use anyhow::Result;
use beemesh_tests::{established_to, eventually, port, try_connect, Agent, EPERM_LINE};

const WEB: &str = "spiffe://beemesh.local/ns/shop/sa/web";
const FRONTEND: &str = "spiffe://beemesh.local/ns/shop/sa/frontend";
const INTRUDER: &str = "spiffe://beemesh.local/ns/other/sa/intruder";
const T: Duration = Duration::from_secs(10);

/// Only `frontend` may reach `web`, on `port` (line 11 of the file is the FRONTEND peer).
fn web_policy(port: u16) -> String {
    beemesh_tests::ingress_policy("web", WEB, &["spiffe://beemesh.local/ns/shop/frontend*", FRONTEND], port)
}

fn start_web(agent: &Agent, addr: &str) -> Result<beemesh_tests::Probe> {
    let web = agent.workload("web", WEB, &["app=web"], &["listen", addr])?;
    assert_eq!(web.line(T)?, "listening");
    Ok(web)
}

#[test]
fn allowed_pair_connects_and_denied_pair_gets_eperm() -> Result<()> {
    let agent = Agent::start("pairs", &[])?;
    let p = port();
    agent.write_policy("web.yaml", &web_policy(p))?;
    let _web = start_web(&agent, &format!("127.0.0.1:{p}"))?;
    assert!(eventually(T, || agent.generation().unwrap_or(0) >= 2), "policy never loaded:\n{}", agent.log());

    assert_eq!(try_connect(&agent, FRONTEND, &format!("127.0.0.1:{p}"))?, "connected");
    let denied = try_connect(&agent, INTRUDER, &format!("127.0.0.1:{p}"))?;
    assert!(denied.starts_with(EPERM_LINE), "intruder got {denied:?}");
    // 0.0.0.0 reaches this host too: no way around the policy there.
    let via_any = try_connect(&agent, INTRUDER, &format!("0.0.0.0:{p}"))?;
    assert!(via_any.starts_with(EPERM_LINE), "intruder via 0.0.0.0 got {via_any:?}");

    // The verdicts are in the flow log (drained every few ms) and the counters.
    let seen = |verdict: &str, subject: &str| {
        agent.flows().is_ok_and(|flows| {
            flows.iter().any(|f| f["verdict"] == verdict && f["subject"] == subject && f["peer"] == WEB)
        })
    };
    assert!(eventually(T, || seen("deny", INTRUDER)), "no deny flow");
    assert!(eventually(T, || seen("allow", FRONTEND)), "no allow flow");
    let out = agent.cli().args(["policy", "list", "-o", "json"]).output()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rules = report["rules"].as_array().expect("rules");
    let count = |name: &str, field: &str| {
        rules.iter().find(|r| r["rule"] == name).and_then(|r| r[field].as_u64()).unwrap_or(0)
    };
    assert!(count("IdentityPolicy/web ingress[0]", "allowed") >= 1, "{report}");
    assert!(count("IdentityPolicy/web isolation", "denied") >= 1, "{report}");
    Ok(())
}

#[test]
fn the_kernel_knows_which_workload_owns_a_port() -> Result<()> {
    let agent = Agent::start("owner", &[])?;
    let p = port();
    let _web = start_web(&agent, &format!("127.0.0.1:{p}"))?;
    let out = agent.cli().args(["owner", &p.to_string()]).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), WEB);
    // A port nobody (or only the host) holds has no owner.
    let out = agent.cli().args(["owner", "--proto", "udp", &p.to_string()]).output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no workload owns"));
    Ok(())
}

#[test]
fn ipv6_connects_are_enforced_too() -> Result<()> {
    let agent = Agent::start("ipv6", &[])?;
    let p = port();
    agent.write_policy("web.yaml", &web_policy(p))?;
    let _web = start_web(&agent, &format!("[::1]:{p}"))?;
    assert!(eventually(T, || agent.generation().unwrap_or(0) >= 2));
    assert_eq!(try_connect(&agent, FRONTEND, &format!("[::1]:{p}"))?, "connected");
    let denied = try_connect(&agent, INTRUDER, &format!("[::1]:{p}"))?;
    assert!(denied.starts_with(EPERM_LINE), "intruder got {denied:?}");
    Ok(())
}

#[test]
fn policy_file_flips_the_verdict_live_and_back() -> Result<()> {
    let agent = Agent::start("live", &[])?;
    let p = port();
    let addr = format!("127.0.0.1:{p}");
    let _web = start_web(&agent, &addr)?;
    assert_eq!(try_connect(&agent, INTRUDER, &addr)?, "connected", "no policy: allowed");

    // A client that keeps connecting sees the verdict flip without any restart.
    let watcher = agent.workload("watcher", INTRUDER, &[], &["loop", &addr])?;
    assert_eq!(watcher.line(T)?, "connected");
    agent.write_policy("web.yaml", &web_policy(p))?;
    let flipped = watcher.line(T)?;
    assert!(flipped.starts_with(EPERM_LINE), "after the file appeared: {flipped:?}");

    agent.remove_policy("web.yaml")?;
    assert_eq!(watcher.line(T)?, "connected", "file removed: allowed again");
    Ok(())
}

#[test]
fn revocation_tears_down_an_established_connection() -> Result<()> {
    let agent = Agent::start("revoke", &[])?;
    let p = port();
    let addr = format!("127.0.0.1:{p}");
    let _web = start_web(&agent, &addr)?;
    let held = agent.workload("held", INTRUDER, &[], &["hold", &addr])?;
    assert_eq!(held.line(T)?, "connected");
    // A permitted peer's connection must survive the same change.
    let friend = agent.workload("friend", FRONTEND, &[], &["hold", &addr])?;
    assert_eq!(friend.line(T)?, "connected");
    assert!(eventually(T, || established_to(p).is_ok_and(|n| n == 2)), "both connections established");

    agent.write_policy("web.yaml", &web_policy(p))?;
    let ended = held.line(T)?;
    assert!(ended.starts_with("closed"), "revoked connection still open: {ended:?}");
    assert!(agent.log().contains("revoked"), "{}", agent.log());
    // The sweep that cut `held` looked at `friend` too and kept it: its connection is still
    // established in the kernel's socket table, and its probe saw no close.
    assert_eq!(established_to(p)?, 1, "the allowed connection was torn down too");
    assert!(friend.line(Duration::from_millis(200)).is_err(), "the allowed connection was torn down too");
    Ok(())
}

#[test]
fn broken_file_keeps_the_previous_verdicts() -> Result<()> {
    let agent = Agent::start("broken", &[])?;
    let p = port();
    let addr = format!("127.0.0.1:{p}");
    agent.write_policy("web.yaml", &web_policy(p))?;
    let _web = start_web(&agent, &addr)?;
    assert!(eventually(T, || agent.generation().unwrap_or(0) >= 2));
    let generation = agent.generation()?;

    // Same file, now invalid (a /33), plus an unrelated good file that must still load.
    let invalid = web_policy(p)
        .replace(&format!("        - identity: \"{FRONTEND}\"\n"), "        - cidr: 10.0.0.0/33\n");
    assert!(invalid.contains("/33"));
    agent.write_policy("web.yaml", &invalid)?;
    agent.write_policy(
        "other.yaml",
        "apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata:\n  name: other\nspec:\n  selector:\n    identities: [\"spiffe://beemesh.local/ns/x/sa/y\"]\n  egress: []\n",
    )?;
    assert!(eventually(T, || agent.generation().unwrap_or(0) > generation), "good file not loaded");
    let out = agent.cli().args(["policy", "list", "-o", "json"]).output()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let web_file = report["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"].as_str().is_some_and(|p| p.ends_with("web.yaml")))
        .expect("web.yaml listed")
        .clone();
    assert_eq!(web_file["policies"], 1, "last good version kept: {report}");
    assert!(web_file["error"].as_str().is_some_and(|e| e.contains("web.yaml:11")), "{report}");
    assert!(agent.log().contains("invalid policy file"), "{}", agent.log());

    // Verdicts are those of the last good version.
    assert_eq!(try_connect(&agent, FRONTEND, &addr)?, "connected");
    assert!(try_connect(&agent, INTRUDER, &addr)?.starts_with(EPERM_LINE));

    // `policy check` names file and line and fails.
    let check = agent.cli().args(["policy", "check"]).arg(agent.policy_dir().join("web.yaml")).output()?;
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains("web.yaml:11") && err.contains("/33"), "{err}");

    // Malformed YAML is reported too, with a line, and changes nothing.
    agent.write_policy(
        "web.yaml",
        "apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata: [unclosed\n",
    )?;
    assert!(eventually(T, || agent.log().contains("did not find expected")));
    assert!(try_connect(&agent, INTRUDER, &addr)?.starts_with(EPERM_LINE));
    Ok(())
}

#[test]
fn host_process_ingress_is_dropped_unless_host_is_allowed() -> Result<()> {
    let agent = Agent::start("hostin", &[])?;
    let p = port();
    let addr = format!("127.0.0.1:{p}");
    agent.write_policy("web.yaml", &web_policy(p))?;
    let _web = start_web(&agent, &addr)?;
    assert!(eventually(T, || agent.generation().unwrap_or(0) >= 2));
    // The host is not a workload: its SYN is dropped at the workload's ingress.
    let host = agent.host_probe(&["connect", &addr, "700"])?;
    let line = host.line(T)?;
    assert!(line.starts_with("error"), "host reached an isolated workload: {line}");
    let host_denied = || {
        agent.flows().is_ok_and(|flows| {
            flows.iter().any(|f| f["verdict"] == "deny" && f["peer"] == "host" && f["direction"] == "ingress")
        })
    };
    assert!(eventually(T, host_denied), "no ingress deny flow for the host");

    let with_host = web_policy(p).replace(
        "        - identity: \"spiffe://beemesh.local/ns/shop/frontend*\"\n",
        "        - entity: host\n",
    );
    agent.write_policy("web.yaml", &with_host)?;
    assert!(eventually(T, || {
        agent.host_probe(&["connect", &addr, "700"]).and_then(|p| p.line(T)).is_ok_and(|l| l == "connected")
    }));
    Ok(())
}

#[test]
fn network_policy_selects_by_labels_and_cidr_egress() -> Result<()> {
    let agent = Agent::start("netpol", &[])?;
    let p = port();
    let addr = format!("127.0.0.1:{p}");
    let _web = start_web(&agent, &addr)?;
    // Kubernetes NetworkPolicy: pods labelled app=locked may only talk to 127.0.0.0/8 on p.
    agent.write_policy(
        "np.yaml",
        &format!(
            r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: locked-egress
  namespace: shop
spec:
  podSelector:
    matchLabels:
      app: locked
  policyTypes: [Egress]
  egress:
    - to:
        - ipBlock:
            cidr: 127.0.0.0/8
        - podSelector:
            matchLabels:
              app: web
      ports:
        - port: {p}
          protocol: TCP
"#
        ),
    )?;
    assert!(eventually(T, || agent.generation().unwrap_or(0) >= 2));
    let run = |labels: &[&str], target: &str| -> Result<String> {
        let name = format!("np-{}", beemesh_tests::port());
        let probe = agent.workload(
            &name,
            "spiffe://beemesh.local/ns/shop/sa/default",
            labels,
            &["connect", target, "500"],
        )?;
        probe.line(T)
    };
    assert_eq!(run(&["app=locked"], &addr)?, "connected");
    let other_port = format!("127.0.0.1:{}", port());
    assert!(run(&["app=locked"], &other_port)?.starts_with(EPERM_LINE), "port not allowed");
    // 192.0.2.1 (TEST-NET-1) is outside the ipBlock: refused before any packet leaves.
    assert!(run(&["app=locked"], "192.0.2.1:80")?.starts_with(EPERM_LINE));
    // Same service account, other labels: not selected, so not restricted.
    let free = run(&["app=free"], "192.0.2.1:80")?;
    assert!(!free.starts_with(EPERM_LINE), "unselected workload restricted: {free}");
    Ok(())
}

#[test]
fn udp_sendmsg_is_enforced() -> Result<()> {
    let agent = Agent::start("udp", &[])?;
    agent.write_policy(
        "dns-only.yaml",
        r#"apiVersion: beemesh.io/v1alpha1
kind: IdentityPolicy
metadata:
  name: dns-only
spec:
  selector:
    identities: ["spiffe://beemesh.local/ns/shop/*"]
  egress:
    - to:
        - cidr: 127.0.0.0/8
      ports:
        - port: 53
          protocol: UDP
"#,
    )?;
    assert!(eventually(T, || agent.generation().unwrap_or(0) >= 2));
    let send = |target: &str| -> Result<String> {
        let name = format!("udp-{}", beemesh_tests::port());
        agent.workload(&name, FRONTEND, &[], &["udp-send", target])?.line(T)
    };
    assert_eq!(send("127.0.0.1:53")?, "sent");
    assert!(send(&format!("127.0.0.1:{}", port()))?.starts_with(EPERM_LINE));
    Ok(())
}

#[test]
fn udp_ingress_knows_local_senders_and_drops_the_host() -> Result<()> {
    let agent = Agent::start("udpin", &[])?;
    let p = port();
    let addr = format!("127.0.0.1:{p}");
    agent.write_policy(
        "dns.yaml",
        &format!(
            r#"apiVersion: beemesh.io/v1alpha1
kind: IdentityPolicy
metadata:
  name: dns
spec:
  selector:
    identities: ["{WEB}"]
  ingress:
    - from:
        - identity: "{FRONTEND}"
      ports:
        - port: {p}
          protocol: UDP
"#
        ),
    )?;
    assert!(eventually(T, || agent.generation().unwrap_or(0) >= 2));
    let server = agent.workload("dns", WEB, &[], &["udp-listen", &addr])?;
    assert_eq!(server.line(T)?, "listening");
    // A workload sender is identified by its socket (looked up at ingress) and allowed.
    assert_eq!(agent.workload("fe", FRONTEND, &[], &["udp-send", &addr])?.line(T)?, "sent");
    assert_eq!(server.line(T)?, "datagram 4");
    // A denied workload is refused at sendmsg, before anything leaves.
    assert!(agent.workload("bad", INTRUDER, &[], &["udp-send", &addr])?.line(T)?.starts_with(EPERM_LINE));
    // The host is not allowed: its datagram leaves but is dropped at the workload's ingress.
    assert_eq!(agent.host_probe(&["udp-send", &addr])?.line(T)?, "sent");
    // The datagram reached the ingress program, which denied it (not merely: nothing came)...
    let host_denied = |f: &serde_json::Value| {
        f["verdict"] == "deny"
            && f["direction"] == "ingress"
            && f["port"] == p
            && f["proto"].as_str().is_some_and(|x| x.eq_ignore_ascii_case("udp"))
    };
    assert!(
        eventually(T, || agent.flows().is_ok_and(|flows| flows.iter().any(host_denied))),
        "no ingress deny flow: {:?}",
        agent.flows()?
    );
    // ...and the server, which would have said so by now, got nothing.
    assert!(server.line(Duration::from_millis(500)).is_err(), "host datagram delivered");
    Ok(())
}

#[test]
fn udp_replies_pass_an_ingress_policy_and_revocation_stops_them() -> Result<()> {
    let agent = Agent::start("udpreply", &[])?;
    let p = port();
    let addr = format!("127.0.0.1:{p}");
    let echo = agent.host_probe(&["udp-echo", &addr])?;
    assert_eq!(echo.line(T)?, "listening");
    // The client accepts no inbound traffic at all, and may send to the echo port.
    let policy = |allowed: bool| {
        let egress = if allowed {
            format!("  egress:\n    - to: [{{entity: host}}]\n      ports: [{{port: {p}, protocol: UDP}}]\n")
        } else {
            "  egress: []\n".to_string()
        };
        format!(
            "apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata:\n  name: client\nspec:\n  \
             selector:\n    identities: [\"{FRONTEND}\"]\n  ingress: []\n{egress}"
        )
    };
    agent.write_policy("client.yaml", &policy(true))?;
    assert!(eventually(T, || agent.generation().unwrap_or(0) >= 2));
    for mode in ["u", "c"] {
        let ask = agent.workload(&format!("ask-{mode}"), FRONTEND, &[], &["udp-ask", &addr, mode])?;
        let line = ask.line(T)?;
        assert!(line.starts_with("reply 4 from"), "reply dropped ({mode}): {line}");
    }
    // Revoked: the send itself is refused.
    agent.write_policy("client.yaml", &policy(false))?;
    assert!(eventually(T, || {
        agent
            .workload(&format!("ask-{}", port()), FRONTEND, &[], &["udp-ask", &addr])
            .and_then(|p| p.line(T))
            .is_ok_and(|l| l.starts_with(EPERM_LINE))
    }));
    Ok(())
}
