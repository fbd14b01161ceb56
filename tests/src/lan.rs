//! Several hosts on one machine: network namespaces on a bridge (10.200.<subnet>.<n>/24),
//! and the `ca` commands that give each host its credentials from one offline root. Used by
//! the mesh end-to-end tests and `mesh_bench`.

use std::path::Path;
use std::process::Command;

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::{eventually, Agent};

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    ensure!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Hosts in network namespaces joined by a bridge in a "switch" namespace, addresses
/// 10.200.<subnet>.<n>/24; all removed on drop.
#[derive(Debug)]
pub struct Lan {
    tag: String,
    subnet: u8,
    hosts: Vec<String>,
}

impl Lan {
    pub fn new(tag: &str, subnet: u8) -> Result<Self> {
        let lan = Self { tag: format!("{tag}{}", std::process::id() % 10000), subnet, hosts: Vec::new() };
        let sw = lan.switch();
        ip(&["netns", "add", &sw])?;
        ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        Ok(lan)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.tag)
    }

    /// Adds host number `n` (1-based); returns its namespace name.
    pub fn host(&mut self, n: u8) -> Result<String> {
        let ns = self.netns(n);
        let sw = self.switch();
        ip(&["netns", "add", &ns])?;
        self.hosts.push(ns.clone());
        let (outer, inner) = (format!("{}s{n}", self.tag), format!("{}h{n}", self.tag));
        ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner])?;
        ip(&["link", "set", &outer, "netns", &sw])?;
        ip(&["link", "set", &inner, "netns", &ns])?;
        ip(&["-n", &sw, "link", "set", &outer, "master", "br0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "set", &inner, "name", "eth0"])?;
        ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.addr(n)), "dev", "eth0"])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        Ok(ns)
    }

    /// The network namespace of host `n`.
    pub fn netns(&self, n: u8) -> String {
        format!("{}-h{n}", self.tag)
    }

    pub fn addr(&self, n: u8) -> String {
        format!("10.200.{}.{n}", self.subnet)
    }

    /// Cuts host `n` off the lan (its port on the bridge goes down): a partition of one.
    pub fn cut(&self, n: u8) -> Result<()> {
        ip(&["-n", &self.switch(), "link", "set", &format!("{}s{n}", self.tag), "down"])
    }

    /// Joins host `n` to the lan again after [`Lan::cut`].
    pub fn mend(&self, n: u8) -> Result<()> {
        ip(&["-n", &self.switch(), "link", "set", &format!("{}s{n}", self.tag), "up"])
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch())) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// `n` hosts on a new lan (`tag`, `subnet`), h2.. joined from h1 (`mesh.bootstrap`), each with
/// credentials for node `h<i>` from one offline root (kept in the returned directory), agents
/// named `<tag><i>`, prepared and not started. Declare the lan first so it is dropped last.
pub fn joined_mesh(tag: &str, subnet: u8, n: u8) -> Result<(Lan, tempfile::TempDir, Vec<Agent>)> {
    joined_mesh_with(tag, subnet, n, "")
}

/// [`joined_mesh`] with `config` (top-level YAML keys, not `mesh:`) in every agent's config
/// file.
pub fn joined_mesh_with(
    tag: &str,
    subnet: u8,
    n: u8,
    config: &str,
) -> Result<(Lan, tempfile::TempDir, Vec<Agent>)> {
    let extra = config;
    let mut lan = Lan::new(tag, subnet)?;
    let offline = tempfile::tempdir()?;
    let root = offline.path().join("root");
    let port = "4001";
    let bootstrap = format!("{}:{port}", lan.addr(1));
    let mut agents = Vec::new();
    for i in 1..=n {
        let ns = lan.host(i)?;
        let mesh = if i > 1 { format!("mesh:\n  bootstrap: [\"{bootstrap}\"]\n") } else { String::new() };
        let config = format!("{extra}{mesh}");
        let agent =
            Agent::prepare(&format!("{tag}{i}"), &[("BEEMESH_MESH_PORT", port)], &config)?.in_netns(&ns);
        if i == 1 {
            ca_init(&agent, &root)?;
        }
        issue_host(&agent, &root, &format!("h{i}"))?;
        agents.push(agent);
    }
    Ok((lan, offline, agents))
}

/// Starts the agents of a [`joined_mesh`] (each with busybox:1 imported) and waits until each
/// sees every one of them (`h1`..) Ready.
pub fn start_ready(agents: &mut [Agent], timeout: Duration) -> Result<()> {
    for agent in agents.iter_mut() {
        agent.spawn()?;
        agent.import_busybox("busybox:1")?;
    }
    let names: Vec<String> = (1..=agents.len()).map(|i| format!("h{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for agent in agents.iter() {
        ensure!(eventually(timeout, || agent.sees_ready(&names)), "not every host Ready\n{}", agent.log());
    }
    Ok(())
}

/// `ca init` into `dir` (run by `agent`'s binary; no agent needed).
pub fn ca_init(agent: &Agent, dir: &Path) -> Result<()> {
    let (ok, out, err) = agent.run_cli(&["ca", "init", "--dir", dir.to_str().context("utf-8")?], None)?;
    ensure!(ok, "ca init: {out}{err}");
    Ok(())
}

/// Credentials for host `name` from the root in `ca`, written into `agent`'s state dir.
pub fn issue_host(agent: &Agent, ca: &Path, name: &str) -> Result<()> {
    let state = agent.state_dir();
    let (ok, out, err) = agent.run_cli(
        &[
            "ca",
            "issue-host",
            "--ca",
            ca.to_str().context("utf-8")?,
            "--name",
            name,
            "--out",
            state.to_str().context("utf-8")?,
        ],
        None,
    )?;
    ensure!(ok, "ca issue-host {name}: {out}{err}");
    Ok(())
}

/// How many other hosts `agent` lists as attested.
pub fn attested_others(agent: &Agent) -> usize {
    let Ok((true, out, _)) = agent.run_cli(&["peers", "-o", "json"], None) else { return 0 };
    let peers: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    peers.iter().filter(|p| p["attested"] == true && p["thisHost"] != true).count()
}

/// Starts every agent and waits (up to `timeout`) until each has attested all the others.
pub fn start_all(agents: &mut [Agent], timeout: Duration) -> Result<()> {
    for a in agents.iter_mut() {
        a.spawn()?;
    }
    let others = agents.len() - 1;
    for (i, a) in agents.iter().enumerate() {
        ensure!(
            eventually(timeout, || attested_others(a) == others),
            "h{} never saw the others\n{}",
            i + 1,
            a.log()
        );
    }
    Ok(())
}
