//! The agent actor's workload handling: create, identify, reap and re-tag workloads, and
//! answer questions about them. Part of `impl Agent` (see `app.rs`).

use super::Awaiting;
use super::*;

impl Agent {
    /// Tags the ports of sockets workloads opened before this instance's programs existed
    /// (after a restart), so that they are recognised as theirs from the first verdict.
    pub(super) fn seed_local_ports(&mut self) {
        let owners = self.socket_owners();
        if owners.is_empty() {
            return;
        }
        let tcp = crate::sys::diag::dump_tcp(crate::sys::diag::StateMask::ALL).unwrap_or_else(|e| {
            warn!(error = %e, "cannot list TCP sockets to re-tag workload ports");
            Vec::new()
        });
        let udp = crate::sys::diag::dump_udp().unwrap_or_else(|e| {
            warn!(error = %e, "cannot list UDP sockets to re-tag workload ports");
            Vec::new()
        });
        // Servers only: listening TCP sockets and bound UDP sockets. Clients need no tag
        // (the ingress program looks the sending socket up).
        let mut tagged = 0;
        let candidates = tcp
            .iter()
            .filter(|s| s.state == crate::sys::diag::TcpState::Listen)
            .map(|s| (s, beemesh_common::PROTO_TCP))
            .chain(udp.iter().map(|s| (s, beemesh_common::PROTO_UDP)));
        for (s, proto) in candidates {
            let Some(&id) = s.cgroup_id.and_then(|c| owners.get(&c)) else { continue };
            if s.local.port() == 0 {
                continue;
            }
            match self.kernel.tag_local_port(s.local.port(), proto, id, s.cookie) {
                Ok(()) => tagged += 1,
                Err(e) => warn!(error = %e, "cannot re-tag a workload port"),
            }
        }
        if tagged > 0 {
            info!(ports = tagged, "re-tagged ports of re-adopted workloads");
        }
    }

    pub(super) fn port_owner(&self, proto: &str, port: u16) -> Result<Response, String> {
        let proto = match proto {
            "tcp" => beemesh_common::PROTO_TCP,
            "udp" => beemesh_common::PROTO_UDP,
            other => return Err(format!("protocol {other:?}: expected tcp or udp")),
        };
        let identity = self
            .kernel
            .local_port_owner(port, proto)
            .map(|id| self.identities.spiffe_of(id).map_or_else(|| format!("id:{id}"), ToString::to_string));
        Ok(Response::PortOwner { identity })
    }

    pub(super) fn info(&self, w: &Workload) -> WorkloadInfo {
        WorkloadInfo {
            name: w.name.clone(),
            identity: w.identity.to_string(),
            id: w.id,
            labels: w.labels.clone(),
            cgroup: self.cgroups.path(&w.name).display().to_string(),
            populated: self.cgroups.populated(&w.name).unwrap_or(false),
        }
    }

    pub(super) fn parse_identity(&self, text: &str) -> Result<SpiffeId, String> {
        let id = if text.starts_with("spiffe://") {
            text.parse::<SpiffeId>().map_err(|e| e.to_string())?
        } else {
            let (ns, sa) = text.split_once('/').ok_or_else(|| {
                format!("identity {text:?}: expected spiffe://<td>/ns/<ns>/sa/<sa> or <ns>/<sa>")
            })?;
            SpiffeId::new(&self.cfg.trust_domain, ns, sa).map_err(|e| e.to_string())?
        };
        if id.trust_domain() != self.cfg.trust_domain {
            return Err(format!(
                "identity {id} is outside this agent's trust domain {}",
                self.cfg.trust_domain
            ));
        }
        Ok(id)
    }

    /// `exec --identity`: the workload, with the policy compiled for it before the reply
    /// (the caller moves a process in as soon as it has the answer): the reply waits for
    /// the engine to include this turn's snapshot.
    pub(super) fn create_workload(
        &mut self,
        name: Option<String>,
        identity: &str,
        labels: BTreeMap<String, String>,
        reply: oneshot::Sender<Response>,
    ) {
        match self.add_workload(name, identity, labels) {
            Ok(info) => {
                // The snapshot of this turn (see `settle`) carries it.
                self.policy_dirty = true;
                self.awaiting.push((self.ticket + 1, Awaiting::Workload(info, reply)));
            }
            Err(message) => {
                let _ = reply.send(Response::Error { message });
            }
        }
    }

    /// Identity allocated, cgroup created and mapped in the kernel; the policy is only marked
    /// stale. Nothing may run in the workload until the policy engine has included it.
    pub(super) fn add_workload(
        &mut self,
        name: Option<String>,
        identity: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<WorkloadInfo, String> {
        let identity = self.parse_identity(identity)?;
        let name = match name {
            Some(n) => n,
            None => self.workloads.generate_name(&identity),
        };
        crate::workload::validate_name(&name).map_err(|e| e.to_string())?;
        if self.workloads.get(&name).is_some() {
            return Err(format!("workload {name:?} already exists"));
        }
        let id = self.identities.allocate_labeled(&identity, &labels).map_err(|e| e.to_string())?;
        let cgroup_id = self.cgroups.create(&name).map_err(|e| e.to_string())?;
        let w = Workload {
            name: name.clone(),
            identity,
            id,
            labels,
            cgroup_id,
            created: now_secs(),
            joined: false,
        };
        // Identity in the kernel before any process can join.
        if let Err(e) = self.kernel.set_cgroup(cgroup_id, id) {
            let _ = self.cgroups.destroy(&name);
            return Err(e.to_string());
        }
        let info = self.info(&w);
        self.workloads.insert(w).map_err(|e| e.to_string())?;
        self.policy_dirty = true;
        info!(workload = %name, identity = %info.identity, id, "workload created");
        self.persist();
        Ok(info)
    }

    /// Takes other hosts' pods (numbered with this host's registry, as local workloads are)
    /// and the mesh's NetworkPolicies; the policy follows at the end of the turn.
    pub(super) fn set_mesh_view(&mut self, view: super::mesh_view::MeshView) {
        let mut remote = BTreeMap::new();
        for (key, super::mesh_view::Remote { identity, labels, ports }) in view.remote {
            match self.identities.allocate_labeled(&identity, &labels) {
                Ok(id) => {
                    remote.insert(key, crate::policy::Workload { id, identity, labels, ports });
                }
                Err(e) => warn!(pod = %key, error = %e, "no identity for a pod of another host"),
            }
        }
        let ids_changed = remote.values().map(|w| w.id).collect::<std::collections::BTreeSet<_>>()
            != self.mesh.remote.values().map(|w| w.id).collect();
        if *self.mesh.policies != view.policies {
            self.mesh.policies = Arc::new(view.policies);
            self.mesh.generation += 1;
            self.policy_dirty = true;
        }
        if ids_changed {
            self.policy_dirty = true;
            self.persist();
        } else if remote != self.mesh.remote {
            // The same identities with other named ports.
            self.policy_dirty = true;
        }
        self.mesh.remote = remote;
        if super::cluster::execs::adopt(&mut self.exec_records, &view.own_execs) {
            // Records an earlier run left: deleted unless their workload runs again.
            self.publish_local_pods();
        }
    }

    /// cgroup id -> workload id for every cgroup of every workload, nested ones included
    /// (sock_diag reports a socket's own cgroup).
    pub(super) fn socket_owners(&self) -> HashMap<u64, u32> {
        let mut owners = HashMap::new();
        for w in self.workloads.iter() {
            owners.insert(w.cgroup_id, w.id);
            for id in self.cgroups.descendant_ids(&w.name) {
                owners.insert(id, w.id);
            }
        }
        owners
    }

    /// Removes a workload; the policy follows at the end of the actor's turn.
    pub(super) fn delete_workload(&mut self, name: &str) -> Result<(), String> {
        self.forget_workload(name)?;
        self.persist();
        self.policy_dirty = true;
        Ok(())
    }

    /// Removes a workload's cgroup and kernel mapping; the caller persists and recompiles
    /// (once for a batch).
    pub(super) fn forget_workload(&mut self, name: &str) -> Result<(), String> {
        let w = self.workloads.remove(name).map_err(|e| e.to_string())?;
        if let Err(e) = self.cgroups.destroy(name) {
            // Processes may survive: keep their identity in the kernel, or they would run
            // as nobody, unrestricted.
            warn!(workload = %name, error = %e, "cannot remove workload cgroup; its kernel identity stays");
            return Ok(());
        }
        if let Err(e) = self.kernel.remove_cgroup(w.cgroup_id) {
            warn!(workload = %name, error = %e, "cannot unmap workload cgroup");
        }
        info!(workload = %name, "workload removed");
        Ok(())
    }

    /// Periodic: reap finished workloads, refresh local addresses.
    pub(super) fn housekeeping(&mut self) {
        // Only a cgroup that is really gone counts as vanished; any other read error counts
        // as populated, so a transient failure never kills a live workload.
        let observed: BTreeMap<String, bool> = self
            .workloads
            .iter()
            .filter_map(|w| match self.cgroups.populated(&w.name) {
                Ok(p) => Some((w.name.clone(), p)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(_) => Some((w.name.clone(), true)),
            })
            .collect();
        let done = self.workloads.reap(&observed, now_secs());
        if !done.is_empty() {
            for name in &done {
                let _ = self.forget_workload(name);
            }
            self.persist();
            self.policy_dirty = true;
        }
        let local = LocalAddrs::read();
        if local.0 != self.local.0 {
            if let Err(e) = self.kernel.set_local_addrs(&local.0.iter().copied().collect::<Vec<_>>()) {
                warn!(error = %e, "cannot update local addresses");
            }
            self.local = local;
            // The engine's sweeps classify addresses with it.
            self.policy_dirty = true;
        }
    }
}
