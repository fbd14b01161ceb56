//! The agent actor's policy handling: rescan policy.d (last good version per file),
//! compile for the current workloads, install atomically, sweep revoked connections,
//! publish names for flow output, report files and counters. Part of `impl Agent`.

use super::*;

/// One file of policy.d: its last good policies and the current text's error, if any.
#[derive(Debug, Default)]
pub(super) struct FileState {
    pub(super) text: String,
    pub(super) good: Option<Vec<Policy>>,
    pub(super) error: Option<String>,
}

impl Verdicts for CompiledPolicy {
    fn decide(&self, q: &Query) -> Decision {
        CompiledPolicy::decide(self, q)
    }
    fn cidr_identity(&self, ip: std::net::IpAddr) -> Option<u32> {
        CompiledPolicy::cidr_identity(self, ip)
    }
}

impl Agent {
    /// Rereads policy.d; a file whose new text is invalid keeps its last good policies.
    pub(super) fn rescan_policies(&mut self) {
        let dir = self.cfg.policy_dir.clone();
        let mut seen = Vec::new();
        let mut changed = false;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e.filter_map(Result::ok).map(|e| e.path()).collect::<Vec<_>>(),
            Err(e) => {
                error!(dir = %dir.display(), error = %e, "cannot read policy directory; policies unchanged");
                return;
            }
        };
        for path in entries.into_iter().filter(|p| is_policy_file(p)) {
            seen.push(path.clone());
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) => {
                    // Unreadable now (permissions, not UTF-8): its last good version stays.
                    error!(file = %path.display(), error = %e, "cannot read policy file; its last good version stays in force");
                    self.files.entry(path.clone()).or_default().error =
                        Some(format!("{}: {e}", path.display()));
                    continue;
                }
            };
            let entry = self.files.entry(path.clone()).or_default();
            if entry.text == text && (entry.good.is_some() || entry.error.is_some()) {
                continue;
            }
            entry.text = text;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match policy::parse_file(&path, &entry.text) {
                Ok(policies) => {
                    info!(file = %path.display(), policies = policies.len(), "policy file loaded");
                    entry.good = Some(policies);
                    entry.error = None;
                    changed = true;
                    if let Err(e) = self.state.save_good_policy(&name, &entry.text) {
                        warn!(file = %path.display(), error = %e, "cannot keep the last good version");
                    }
                }
                Err(e) => {
                    if entry.good.is_none() {
                        // First sight since start: the version that last parsed stays in force.
                        let cached = self.state.load_good_policy(&name);
                        if let Some(Ok(policies)) = cached.as_deref().map(|t| policy::parse_file(&path, t)) {
                            warn!(file = %path.display(), "invalid policy file; its last good version (kept from before the restart) stays in force");
                            entry.good = Some(policies);
                            changed = true;
                        }
                    }
                    error!(
                        file = %path.display(),
                        line = e.line(),
                        reason = %e,
                        kept = entry.good.as_ref().map_or(0, Vec::len),
                        "invalid policy file; its last good version stays in force"
                    );
                    entry.error = Some(e.to_string());
                }
            }
        }
        let before = self.files.len();
        // Files gone (now, or while the agent was down) take their last good version along.
        let present: Vec<String> =
            seen.iter().filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        for name in self.state.good_policy_names().into_iter().filter(|n| !present.contains(n)) {
            self.state.forget_good_policy(&name);
        }
        self.files.retain(|p, _| seen.contains(p));
        if self.files.len() != before {
            changed = true;
        }
        if changed || self.compiled.is_none() {
            self.recompile();
        }
    }

    /// Compiles the good policies for the current workloads, installs them atomically and
    /// tears down connections they no longer allow. On error the previous policy stays.
    /// Kernel settings for a policy with these defaults.
    pub(super) fn settings(&self, default_allow_egress: bool, default_allow_ingress: bool) -> Settings {
        Settings {
            default_allow_egress: u8::from(default_allow_egress),
            default_allow_ingress: u8::from(default_allow_ingress),
            flow_mode: match self.cfg.flow_events {
                FlowEvents::All => FLOWS_ALL,
                FlowEvents::Sampled => FLOWS_SAMPLED,
                FlowEvents::Denied => FLOWS_DENIED,
                FlowEvents::None => FLOWS_NONE,
            },
            _pad: 0,
            workload_level: self.workload_level,
            // The generation being installed: UDP exchanges remembered under older ones are
            // decided again (continuous authorization for UDP).
            generation: (self.generation + 1) as u32,
            host_netns: self.host_netns,
        }
    }

    /// Brings the policy in force up to date with the workloads after they changed: a
    /// compile only if the set of workload identities differs from the one the tables were
    /// compiled for (replicas share an identity, so most pod churn needs none).
    pub(super) fn policy_current(&mut self) -> bool {
        let ids: std::collections::BTreeSet<u32> = self.workloads.iter().map(|w| w.id).collect();
        if self.compiled.is_some() && self.compiled_for.as_ref() == Some(&ids) {
            self.policy_dirty = false;
            return true;
        }
        self.recompile()
    }

    /// Compiles and installs; returns whether the tables in force match the current
    /// workloads and files (false: the previous policy stays, the error is recorded).
    pub(super) fn recompile(&mut self) -> bool {
        self.policy_dirty = false;
        self.compiled_for = None;
        let files: Vec<PolicyFile> = self
            .files
            .iter()
            .filter_map(|(path, f)| Some(PolicyFile { path: path.clone(), policies: f.good.clone()? }))
            .collect();
        // Replicas share a security identity (SPIFFE id + labels): one entry per id.
        let workloads: Vec<policy::Workload> = self
            .workloads
            .iter()
            .map(|w| {
                let entry =
                    policy::Workload { id: w.id, identity: w.identity.clone(), labels: w.labels.clone() };
                (w.id, entry)
            })
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();
        let opts = CompileOptions {
            default_allow_egress: self.cfg.default_egress == DefaultAction::Allow,
            default_allow_ingress: self.cfg.default_ingress == DefaultAction::Allow,
        };
        let started = std::time::Instant::now();
        let compiled = match policy::compile(&files, &workloads, &opts) {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "policy does not compile; the previous policy stays in force");
                self.compile_error = Some(e.to_string());
                return false;
            }
        };
        self.compile_error = None;
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        if self.compiled.as_deref() == Some(&compiled) {
            // Same tables (a replica came or went): only the names may have changed.
            let same = self.compiled.clone().expect("just compared equal");
            self.publish_names(&same);
            self.compiled_for = Some(workloads.iter().map(|w| w.id).collect());
            return true;
        }
        let compiled = Arc::new(compiled);
        let contents = SlotContents {
            policy: compiled.clone(),
            settings: self.settings(compiled.default_allow_egress, compiled.default_allow_ingress),
        };
        if let Err(e) = self.kernel.slots.install(contents) {
            error!(error = %e, "cannot install policy into the kernel; the previous policy stays in force");
            self.compile_error = Some(e.to_string());
            return false;
        }
        self.generation += 1;
        self.publish_names(&compiled);
        let install_ms = started.elapsed().as_secs_f64() * 1e3 - compile_ms;
        let cut = authz::sweep(&self.socket_owners(), compiled.as_ref(), &self.local);
        info!(
            generation = self.generation,
            rules = compiled.rules.len(),
            entries = compiled.allow.len(),
            compile_ms = format_args!("{compile_ms:.1}"),
            install_ms = format_args!("{install_ms:.1}"),
            total_ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            revoked = cut,
            "policy in force"
        );
        if let Err(e) = self.kernel.slots.retire_idle() {
            warn!(error = %e, "cannot collect the counters of the previous policy");
        }
        self.compiled = Some(compiled);
        self.compiled_for = Some(workloads.iter().map(|w| w.id).collect());
        // Our own policy is in force: an earlier instance's programs can go.
        self.kernel.retire_previous();
        true
    }

    pub(super) fn publish_names(&self, compiled: &Arc<CompiledPolicy>) {
        let mut identities: HashMap<u32, String> =
            self.identities.iter().map(|(id, s)| (id, s.to_string())).collect();
        identities.insert(ID_NONE, "none".into());
        identities.insert(ID_HOST, "host".into());
        identities.insert(ID_WORLD, "world".into());
        identities.insert(ID_ANY, "any".into());
        self.names.send_replace(Arc::new(Names { identities, policy: compiled.clone() }));
    }

    pub(super) fn policy_report(&self) -> Result<PolicyReport, String> {
        let counters = self.kernel.slots.counters().map_err(|e| e.to_string())?;
        Ok(PolicyReport {
            files: self
                .files
                .iter()
                .map(|(path, f)| PolicyFileStatus {
                    path: path.display().to_string(),
                    policies: f.good.as_ref().map_or(0, Vec::len),
                    error: f.error.clone(),
                })
                .collect(),
            rules: counters
                .into_iter()
                .map(|(rule, c)| RuleStatus { rule, allowed: c.allowed, denied: c.denied })
                .collect(),
        })
    }
}

/// YAML files, not hidden, not editor leftovers.
fn is_policy_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")) && path.is_file()
}
