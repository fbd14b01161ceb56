//! The agent actor's pods: apply and delete manifests, build each pod's sandbox (workload
//! cgroup and identity, init process, slirp4netns), drive its containers through the sans-IO
//! lifecycle, and report status. Part of `impl Agent` (see `app.rs`); the pod's init process
//! (`pod::init`) does the forking, this side decides.

use std::time::{Duration, Instant, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::task::AbortHandle;

use super::*;
use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Pod;

use super::cluster::execs as cexecs;
use super::cluster::pods::{self as cpods, PodReport};
use super::cluster::Cluster;
use super::events::{Involved, Recorder};

use super::images::pull::Wanted;
use super::reconcile::Desired;
use crate::api::{ContainerInfo, PodInfo};
use crate::manifest::Object;
use crate::mesh::trust::files::WorkloadIssuer;
use crate::pod::lifecycle::{self, Action, State};
use crate::pod::net::Slirp;
use crate::pod::rootfs::Rootfs;
use crate::pod::sandbox::{self, Layout};
use crate::pod::spec::{self, ContainerPlan, PodPlan};
use crate::pod::userns::{IdMap, IdRanges};
use crate::pod::{probe, proto};

mod kube;
mod records;

pub(super) use kube::{format_time, parse_time};
use kube::{pod_object, pod_ready, status_column};
use records::IdCursor;
pub use records::{ContainerRecord, PodRecord};

/// The component named in the pod runtime's events (Kubernetes': `kubelet`).
const COMPONENT: &str = "beemesh-agent";
/// How long a stale copy waits for its replacement to be ready before it stops anyway.
const STALE_GRACE: Duration = Duration::from_secs(120);

/// Whether this host's copy of `key`, no longer placed here, keeps running: the pod was placed
/// again elsewhere (while this host was away), its replacement is not ready yet, this copy is,
/// and more than one copy may run for a while.
fn waits_for_replacement(
    desired: &Desired,
    key: &str,
    ready_here: bool,
    pod: &k8s_openapi::api::core::v1::Pod,
) -> bool {
    let replaced = desired.named.contains(key) && !desired.pods.contains_key(key);
    replaced && !desired.ready_elsewhere.contains(key) && ready_here && !single_instance(pod)
}

/// A pod of which at most one copy may run (a StatefulSet's, or one with a claim's local
/// volume): its stale copy stops at once, whatever its replacement's state.
fn single_instance(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    let stateful = pod.metadata.owner_references.iter().flatten().any(|o| o.kind == "StatefulSet");
    stateful || super::sched::needs::uses_claims(pod)
}

/// Messages from pod tasks (sandbox creation, init connections, probes) to the actor.
#[derive(Debug)]
/// Each carries the pod's workload name and uid: a message about an earlier pod of the same
/// name (deleted and applied again) is ignored.
pub enum PodMsg {
    SandboxReady {
        workload: String,
        uid: String,
        result: Result<(u32, Slirp), String>,
    },
    Event {
        workload: String,
        uid: String,
        event: Box<proto::Event>,
    },
    InitGone {
        workload: String,
        uid: String,
    },
    /// What a container run's hooks and probes found (`probe::watch`).
    Check {
        workload: String,
        uid: String,
        container: String,
        run: u64,
        report: probe::Report,
    },
    /// A container's preStop hook has ended: its SIGTERM may go.
    PreStopDone {
        workload: String,
        uid: String,
        container: String,
    },
    /// A deleted pod's processes, mounts, cgroups and files are gone (`cgroup_removed`:
    /// its workload cgroup too; `unreaped`: its init has not been reaped yet).
    TornDown {
        workload: String,
        uid: String,
        cgroup_removed: bool,
        unreaped: Option<u32>,
    },
}

enum Sandbox {
    Creating,
    /// Re-adopted after an agent restart: nothing is started until init has replayed the
    /// state of every container.
    Adopting,
    Ready,
    Failed(String),
}

/// One container's current run, as the runtime sees it.
#[derive(Default)]
struct Run {
    run: u64,
    host_pid: Option<u32>,
    ready: bool,
    /// postStart and the startup probe are through (`containerStatuses[].started`).
    started: bool,
    /// The last run's termination message (`terminated.message`).
    exit_message: Option<String>,
    plan: Option<ContainerPlan>,
    cgroups: Vec<PathBuf>,
    message: Option<String>,
    image_id: String,
    uid: u32,
    gid: u32,
    /// What the run is confined with; processes entering it (exec, probes) get the same.
    security: proto::SecuritySpec,
    /// Why no process may enter the run (exec, exec probes), if none may: an adopted run
    /// whose confinement cannot be rebuilt from the manifest.
    sealed: Option<String>,
    probes: Vec<AbortHandle>,
    /// Init's descriptor of the run's input while it takes any (`attach`).
    input_fd: Option<i32>,
}

/// A running container of an earlier agent, as the manifest says it runs (`adopted_run`).
struct Adopted {
    plan: Option<(ContainerPlan, String)>,
    cgroups: Vec<PathBuf>,
    security: Result<proto::SecuritySpec, String>,
}

pub(super) struct PodEntry {
    record: PodRecord,
    plan: PodPlan,
    life: lifecycle::Pod,
    layout: Layout,
    runs: BTreeMap<String, Run>,
    sandbox: Sandbox,
    cmds: Option<mpsc::Sender<proto::Message>>,
    slirp: Option<Slirp>,
    net_cgroup: Option<u64>,
    deleting: bool,
    conn: Option<AbortHandle>,
    /// When the pod's X.509 SVID is renewed (half its lifetime), and when it expires.
    svid_renew: Option<SystemTime>,
    svid_expires: Option<SystemTime>,
}

/// The runtime state the actor keeps for pods.
pub(super) struct Pods {
    pub entries: BTreeMap<String, PodEntry>,
    pub objects: Vec<Object>,
    pub images: crate::image::ImageStore,
    pub limits: sandbox::Limits,
    pub tx: mpsc::Sender<PodMsg>,
    pub clock: Instant,
    pub host: String,
    /// Pod inits killed but not reaped yet (their exit takes the pod's namespaces down).
    pub unreaped: Vec<u32>,
    /// Signs every pod's X.509 SVID: the host's workload issuer, or a mesh of one's root.
    pub issuer: Arc<WorkloadIssuer>,
    /// The pods' user-namespace id ranges.
    pub ids: IdRanges,
    /// Id ranges of deleted pods whose init (pid) is not reaped yet: free once it is.
    pub releasing: Vec<(u32, u32)>,
    /// Lifetime of each SVID (`svidLifetimeSeconds`); renewed at half of it.
    pub svid_lifetime: Duration,
    /// New pods whose sandbox starts once this turn's policy compile has included them.
    pub pending: Vec<String>,
    /// Deleted pods whose teardown runs on a blocking thread; their records stay in
    /// `pods.json` (deleting) until it reports back.
    pub tearing_down: BTreeMap<String, PodRecord>,
    /// The pass over container log sizes running on a blocking thread, if any.
    pub log_pass: Option<tokio::task::JoinHandle<()>>,
    /// The cluster state: where pods come from and their statuses go.
    pub cluster: Option<Cluster>,
    /// Where the runtime's events go (`Started`, `Failed`, `Killing`).
    pub events: Option<Recorder>,
    /// Stale copies kept running until their replacement elsewhere is ready, since when.
    pub draining: BTreeMap<String, Instant>,
    /// This host's allocatable cpu (millicores) and memory (bytes), as its Node record has
    /// them: what a `resourceFieldRef` to a limit a container does not set reads.
    allocatable: (u64, u64),
    /// The last reconcile: what the cluster state assigns to this host.
    pub desired: Option<Box<Desired>>,
    /// Pods placed here whose creation failed, by workload name (tried again later).
    pub failed: BTreeMap<String, FailedPod>,
    /// The statuses this host published, by pod uid.
    pub published: BTreeMap<String, PodReport>,
    /// Pulls images this store lacks from the hosts that hold them (with a mesh).
    pub pulls: Option<super::images::sharing::Sharing>,
}

/// How often a container waiting for its image being pulled checks again (ms).
const IMAGE_RECHECK_MS: u64 = 1000;

/// A pod placed on this host that could not be created: its status says why.
pub(super) struct FailedPod {
    uid: String,
    namespace: String,
    name: String,
    containers: usize,
    reason: &'static str,
    message: String,
    at: Instant,
    /// Try again at the next converge, not only after `RESYNC`.
    retry: bool,
}

impl Pods {
    /// Each pod's workload and its named container ports, for NetworkPolicies' named ports.
    pub fn named_ports(&self) -> BTreeMap<String, Vec<crate::policy::WorkloadPort>> {
        self.entries
            .values()
            .map(|e| {
                let ports = e.plan.ports.iter().filter_map(|p| {
                    let udp = p.protocol.eq_ignore_ascii_case("udp");
                    let proto = if udp { beemesh_common::PROTO_UDP } else { beemesh_common::PROTO_TCP };
                    Some(crate::policy::WorkloadPort { name: p.name.clone()?, proto, port: p.container_port })
                });
                (e.record.workload.clone(), ports.collect())
            })
            .collect()
    }

    pub fn new(
        cfg: &Config,
        tx: mpsc::Sender<PodMsg>,
        issuer: Arc<WorkloadIssuer>,
    ) -> Result<Self, AgentError> {
        Ok(Self {
            issuer,
            svid_lifetime: Duration::from_secs(cfg.svid_lifetime_seconds),
            pending: Vec::new(),
            tearing_down: BTreeMap::new(),
            entries: BTreeMap::new(),
            objects: Vec::new(),
            images: crate::image::ImageStore::new(&cfg.state_dir),
            limits: sandbox::Limits::discover(&cfg.cgroup_name)
                .map_err(io("find the cgroup v1 controllers"))?,
            tx,
            clock: Instant::now(),
            unreaped: Vec::new(),
            ids: IdRanges::new(cfg.pod_id_range_start, cfg.pod_id_range_size)?,
            releasing: Vec::new(),
            log_pass: None,
            cluster: None,
            events: None,
            draining: BTreeMap::new(),
            allocatable: {
                let (cpus, memory) = super::nodes::host_resources();
                super::nodes::allocatable(&cfg.node, cpus, memory)
            },
            desired: None,
            failed: BTreeMap::new(),
            published: BTreeMap::new(),
            pulls: None,
            host: nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        })
    }

    fn now(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }
}

/// The workload (and cgroup) name of a pod: `pod-<namespace>-<name>-<hash>` (shortened to a
/// valid name).
pub fn workload_name(namespace: &str, name: &str) -> String {
    // The hash of `namespace/name` keeps `a-b/c` and `a/b-c` apart.
    use sha2::Digest;
    let hash = sha2::Sha256::digest(format!("{namespace}/{name}").as_bytes());
    let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let raw = format!("pod-{namespace}-{name}");
    let clean: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(54).collect();
    format!("{}-{hex}", clean.trim_end_matches('-'))
}

impl spec::Objects for Pods {
    fn config_map(&self, namespace: &str, name: &str) -> Option<&k8s_openapi::api::core::v1::ConfigMap> {
        self.objects.config_map(namespace, name)
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<&k8s_openapi::api::core::v1::Secret> {
        self.objects.secret(namespace, name)
    }
    fn allocatable(&self) -> Option<(u64, u64)> {
        Some(self.allocatable)
    }
    fn services(&self, namespace: &str) -> Vec<&k8s_openapi::api::core::v1::Service> {
        self.objects.services(namespace)
    }
}

impl Agent {
    /// What the configuration allows pods (`allowPrivileged`, `hostPathAllow`, Localhost
    /// seccomp profiles) and the host paths no pod may mount: the agent's own directories
    /// (the instance locks' too), /proc, /sys and every cgroup and bpf filesystem mounted on
    /// the host.
    fn security_rules(&self) -> crate::pod::security::Rules {
        let real = |p: &std::path::Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let mut kernel = vec![PathBuf::from("/proc"), PathBuf::from("/sys"), real(&self.cfg.bpffs)];
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        kernel.extend(mounts.lines().filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && matches!(f[2], "cgroup" | "cgroup2" | "bpf")).then(|| PathBuf::from(f[1]))
        }));
        crate::pod::security::Rules {
            allow_privileged: self.cfg.allow_privileged,
            protected: [&self.cfg.state_dir, &self.cfg.run_dir, &self.cfg.policy_dir, &self.cfg.pin_dir()]
                .into_iter()
                .map(|p| real(p))
                // A pod that could open the instance lock could hold it.
                .chain([real(std::path::Path::new(super::LOCK_DIR))])
                .collect(),
            kernel,
            allow: self.cfg.host_path_allow.iter().map(|p| real(p)).collect(),
            seccomp_dir: self.cfg.seccomp_profile_dir.clone(),
        }
    }

    /// Loads the pods and objects of an earlier run: running pods are re-adopted, the others
    /// started again.
    pub(super) fn recover_pods(&mut self) -> Result<(), AgentError> {
        // ConfigMaps and Secrets applied earlier.
        self.pods.objects = self.state.load_json("objects.json")?;
        let records: Vec<PodRecord> = self.state.load_json("pods.json")?;
        // Without a cursor (an older agent's state), after the highest recorded range.
        let cursor: IdCursor = self.state.load_json("pod-ids.json")?;
        if let Some(last) = cursor.last_id_base.or_else(|| records.iter().filter_map(|r| r.id_base).max()) {
            self.pods.ids.resume_after(last);
        }
        for mut record in records {
            let layout = Layout::new(&self.cfg.state_dir, &record.workload);
            let alive = self.workloads.get(&record.workload).is_some()
                && record.init_pid.is_some_and(|pid| sandbox::init_alive(&layout, pid));
            // The pod keeps its id range (a running pod cannot change it).
            if let (Some(base), false) = (record.id_base, record.deleting && !alive) {
                if let Err(e) = self.pods.ids.claim(base) {
                    warn!(pod = %record.workload, error = %e, "pod id range");
                    if !alive {
                        record.id_base = None;
                    }
                }
            }
            if alive {
                self.adopt_pod(record, layout);
            } else if record.deleting {
                info!(pod = %record.workload, "pod deleted while the agent was away");
                self.clear_leftovers(&record.workload, &layout);
            } else {
                info!(pod = %record.workload, "pod of an earlier run is not running: starting it again");
                self.clear_leftovers(&record.workload, &layout);
                let name = record.workload.clone();
                if let Err(e) = self.create_pod(record) {
                    warn!(pod = %name, error = %e, "cannot start pod again");
                }
            }
        }
        self.persist_pods();
        Ok(())
    }

    fn adopt_pod(&mut self, record: PodRecord, layout: Layout) {
        let plan = spec::plan_pod(&record.manifest);
        let workload = record.workload.clone();
        let init_pid = record.init_pid.unwrap_or_default();
        let net_leaf = self.cgroups.path(&workload).join("net");
        let net_cgroup = crate::sys::cgroup::cgroup_id(&net_leaf).ok();
        if let Some(id) = net_cgroup {
            let _ = self.kernel.set_refuse_cgroup(id, net_leaf_flags(&plan));
        }
        let slirp = record.slirp_pid.and_then(|pid| Slirp::adopt(pid, &layout.slirp_api())).or_else(|| {
            warn!(pod = %workload, "slirp4netns is gone: starting it again");
            start_network(init_pid, &net_leaf, &layout, &plan).ok()
        });
        let deleting = record.deleting;
        let mut entry = new_entry(record, plan, layout);
        entry.sandbox = Sandbox::Adopting;
        entry.record.slirp_pid = slirp.as_ref().map(Slirp::pid);
        entry.slirp = slirp;
        entry.net_cgroup = net_cgroup;
        if deleting {
            entry.deleting = true;
            let now = self.pods.now();
            entry.life.begin_termination(entry.plan.grace, now);
        }
        if let Err(e) = self.renew_svid(&mut entry) {
            warn!(pod = %workload, error = %e, "cannot renew the pod's SVID");
        }
        info!(pod = %workload, init = init_pid, "re-adopted pod");
        self.pods.entries.insert(workload.clone(), entry);
        self.connect_init(&workload);
    }

    /// Removes what a pod that no longer runs left behind: processes, mounts, cgroups, files.
    fn clear_leftovers(&mut self, workload: &str, layout: &Layout) {
        if self.workloads.get(workload).is_some() {
            let _ = self.forget_workload(workload);
        } else if self.cgroups.existing_id(workload).is_some() {
            let _ = self.cgroups.destroy(workload);
        }
        unmount_containers(layout);
        self.pods.limits.remove(workload);
        let _ = crate::sys::tree::remove_tree(&layout.dir);
    }

    fn persist_pods(&self) {
        let records: Vec<&PodRecord> =
            self.pods.entries.values().map(|e| &e.record).chain(self.pods.tearing_down.values()).collect();
        if let Err(e) = self.state.save_json("pods.json", &records) {
            error!(error = %e, "cannot save pod state");
        }
        if let Err(e) = self.state.save_json("objects.json", &self.pods.objects) {
            error!(error = %e, "cannot save configmaps and secrets");
        }
    }

    /// The pods of an `apply` checked against this host's rules (privileged, hostPaths,
    /// seccomp profiles) before anything is written to the cluster state. The host that runs
    /// a pod checks it again against its own rules.
    pub(super) fn check_pods(&self, file: &str, pods: &[Pod]) -> Result<(), String> {
        let rules = self.security_rules();
        for pod in pods {
            let (namespace, name) = (
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or(""),
            );
            crate::pod::security::check_against_config(pod, &rules)
                .map_err(|(field, reason)| format!("{file}: pod {namespace}/{name}: {field}: {reason}"))?;
        }
        Ok(())
    }

    /// What the cluster state assigns to this host (`app::reconcile`): its ConfigMaps and
    /// Secrets replace the local copies, and the pods converge to those placed here. A
    /// snapshot older than the last one is ignored.
    pub(super) fn reconcile(&mut self, desired: Desired) -> Response {
        if self.pods.desired.as_ref().is_some_and(|d| d.generation > desired.generation) {
            return Response::Done;
        }
        let mut desired = desired;
        let objects = std::mem::take(&mut desired.objects);
        if objects != self.pods.objects {
            self.pods.objects = objects;
            if let Err(e) = self.state.save_json("objects.json", &self.pods.objects) {
                error!(error = %e, "cannot save configmaps and secrets");
            }
        }
        // Statuses of pods this host no longer has (they went while it was down).
        let mut live: BTreeSet<&str> = self.pods.entries.values().map(|e| e.uid()).collect();
        live.extend(self.pods.tearing_down.values().map(|r| r.uid.as_str()));
        live.extend(self.pods.failed.values().map(|f| f.uid.as_str()));
        let stale: Vec<(String, String)> =
            desired.statuses.iter().filter(|(_, uid)| !live.contains(uid.as_str())).cloned().collect();
        if let Some(cluster) = &self.pods.cluster {
            for (namespace, uid) in stale {
                if cluster.put(cpods::status_key(&namespace, &uid), None).is_ok() {
                    self.pods.published.remove(&uid);
                }
            }
        }
        // Images of pods placed here that this store lacks start coming now, not only once
        // a container asks (the pull runs beside the actor).
        if let Some(pulls) = &self.pods.pulls {
            let images: BTreeSet<&str> = desired
                .pods
                .values()
                .filter_map(|p| p.spec.as_ref())
                .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
                .filter_map(|c| c.image.as_deref())
                .collect();
            for image in images {
                pulls.want(image);
            }
        }
        self.pods.desired = Some(Box::new(desired));
        self.converge();
        Response::Done
    }

    /// Makes the pod runtime match the last reconcile: pods no longer placed here (deleted, or
    /// applied again with another uid) are deleted, pods placed here and not running are
    /// created once the earlier pod of their name is gone. A creation that failed is tried again
    /// after [`super::reconcile::RESYNC`].
    pub(super) fn converge(&mut self) {
        let Some(desired) = self.pods.desired.take() else { return };
        let placed_uid = |key: &str| desired.pods.get(key).map(|p| cpods::placement(p).1);
        let stale: Vec<String> = self
            .pods
            .entries
            .iter()
            .filter(|(key, e)| !e.deleting && placed_uid(key) != Some(e.uid()))
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            let Some(entry) = self.pods.entries.get_mut(&key) else { continue };
            let (namespace, name) = (entry.plan.namespace.clone(), entry.plan.name.clone());
            if !entry.record.in_state && !desired.named.contains(&key) {
                // Applied before pods were mesh objects: it joins the state as it runs.
                if let Some(cluster) = &self.pods.cluster {
                    let created = kube::format_time(entry.record.created);
                    let body = cpods::stored(
                        &entry.record.manifest,
                        &namespace,
                        &entry.record.uid,
                        &created,
                        Some(cluster.node()),
                    );
                    if cluster.put(cpods::pod_key(&namespace, &name), Some(body)).is_ok() {
                        info!(pod = %key, "pod of an earlier agent written to the cluster state");
                        entry.record.in_state = true;
                    }
                }
                continue;
            }
            // A stale copy (the pod was placed again elsewhere while this host was away) keeps
            // serving until its replacement is ready, unless only one may run at a time.
            if waits_for_replacement(&desired, &key, kube::pod_ready(entry), &entry.record.manifest) {
                let since = *self.pods.draining.entry(key.clone()).or_insert_with(|| {
                    info!(pod = %key, "pod placed again elsewhere: this copy runs until that one is ready");
                    Instant::now()
                });
                if since.elapsed() < STALE_GRACE {
                    continue;
                }
            }
            self.pods.draining.remove(&key);
            info!(pod = %key, "pod no longer placed on this host: deleting it");
            let uid = entry.uid().to_owned();
            self.pod_event(&namespace, &name, &uid, "Killing", "Stopping pod: no longer placed on this host");
            let _ = self.delete_pod(&namespace, &name);
        }
        let mut rules = None;
        for (key, pod) in &desired.pods {
            let uid = cpods::placement(pod).1;
            if self.pods.entries.contains_key(key) || self.pods.tearing_down.contains_key(key) {
                continue;
            }
            if self
                .pods
                .failed
                .get(key)
                .is_some_and(|f| f.uid == uid && !f.retry && f.at.elapsed() < super::reconcile::RESYNC)
            {
                continue;
            }
            let rules = rules.get_or_insert_with(|| self.security_rules());
            match self.create_placed(key, pod, rules) {
                Ok(()) => {
                    self.pods.failed.remove(key);
                }
                Err((reason, message)) => {
                    warn!(pod = %key, reason, error = %message, "cannot create pod placed on this host");
                    if let Some(events) = &self.pods.events {
                        let (namespace, name) =
                            (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref());
                        let about =
                            Involved::pod(namespace.unwrap_or("default"), name.unwrap_or(""), Some(uid));
                        events.warning(COMPONENT, &about, "Failed", format!("{reason}: {message}"));
                    }
                    let failed = FailedPod {
                        uid: uid.to_owned(),
                        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
                        name: pod.metadata.name.clone().unwrap_or_default(),
                        containers: pod.spec.as_ref().map_or(0, |s| s.containers.len()),
                        reason,
                        message,
                        at: Instant::now(),
                        retry: false,
                    };
                    self.pods.failed.insert(key.clone(), failed);
                }
            }
        }
        self.pods.failed.retain(|key, f| placed_uid(key) == Some(f.uid.as_str()));
        let entries = &self.pods.entries;
        self.pods.draining.retain(|key, _| entries.get(key).is_some_and(|e| !e.deleting));
        self.pods.desired = Some(desired);
        self.persist_pods();
        self.drive_pods();
    }

    /// Creates a pod the cluster state placed here, after checking it against this host's
    /// rules. Errors are `(reason, message)` for its status.
    fn create_placed(
        &mut self,
        key: &str,
        pod: &Pod,
        rules: &crate::pod::security::Rules,
    ) -> Result<(), (&'static str, String)> {
        crate::pod::security::check_against_config(pod, rules)
            .map_err(|(field, reason)| ("Forbidden", format!("refused by this host: {field}: {reason}")))?;
        if self.workloads.get(key).is_some() {
            return Err(("CreateError", format!("workload {key:?} exists and is not a pod")));
        }
        let record = PodRecord {
            manifest: pod.clone(),
            workload: key.to_owned(),
            uid: cpods::placement(pod).1.to_owned(),
            created: now_secs(),
            init_pid: None,
            slirp_pid: None,
            deleting: false,
            id_base: None,
            containers: BTreeMap::new(),
            in_state: true,
        };
        let free = self.pods.ids.free() > 0;
        self.create_pod(record).map_err(|e| (if free { "CreateError" } else { "OutOfIdRanges" }, e))
    }

    /// Publishes the status of every pod of this host whose report changed (into the cluster
    /// state, without waiting), and removes those of pods gone from it.
    /// This host's running pods for the forwarder, sent when they changed.
    pub(super) fn publish_local_pods(&mut self) {
        let local = (self.pods.entries.values())
            .filter(|e| matches!(e.sandbox, Sandbox::Ready) && !e.deleting)
            .filter_map(|e| {
                let init_pid = e.record.init_pid?;
                let identity = self.workloads.get(&e.record.workload)?.id;
                let key = format!("{}/{}", e.plan.namespace, e.plan.name);
                Some((key, super::forward::LocalPod { uid: e.uid().to_owned(), init_pid, identity }))
            })
            .collect();
        let remote = self.mesh.remote.iter().map(|(k, w)| (k.clone(), w.id)).collect();
        let exec = self.publish_execs();
        let pods = super::forward::PodView { local, remote, exec };
        self.local_pods.send_if_modified(|held| {
            let changed = **held != pods;
            if changed {
                *held = Arc::new(pods);
            }
            changed
        });
    }

    /// Publishes this host's `exec --identity` workloads (the workloads no pod owns) into the
    /// cluster state when they changed, and deletes the records of those gone; returns them
    /// by numeric identity for the forwarder (replicas of one identity and labels share one).
    fn publish_execs(&mut self) -> BTreeMap<u32, String> {
        let Some(cluster) = self.pods.cluster.clone() else { return BTreeMap::new() };
        let pods: BTreeSet<&str> = (self.pods.entries.values().map(|e| e.record.workload.as_str()))
            .chain(self.pods.tearing_down.values().map(|r| r.workload.as_str()))
            .collect();
        let records: BTreeMap<String, (u32, cexecs::ExecRecord)> = (self.workloads.iter())
            .filter(|w| !pods.contains(w.name.as_str()))
            .map(|w| {
                let record = cexecs::ExecRecord {
                    node: cluster.node().to_owned(),
                    name: w.name.clone(),
                    identity: w.identity.clone(),
                    labels: w.labels.clone(),
                };
                (w.name.clone(), (w.id, record))
            })
            .collect();
        for (name, (_, record)) in &records {
            if self.exec_records.get(name) != Some(record)
                && cluster.put(record.key(), Some(record.encode())).is_ok()
            {
                self.exec_records.insert(name.clone(), record.clone());
            }
        }
        let gone: Vec<String> =
            self.exec_records.keys().filter(|n| !records.contains_key(*n)).cloned().collect();
        for name in gone {
            if let Some(record) = self.exec_records.get(&name) {
                if cluster.put(record.key(), None).is_ok() {
                    self.exec_records.remove(&name);
                }
            }
        }
        records.into_values().map(|(id, r)| (id, r.view_key())).collect()
    }

    pub(super) fn publish_statuses(&mut self) {
        let Some(cluster) = self.pods.cluster.clone() else { return };
        let now = now_secs();
        let node = cluster.node().to_owned();
        let mut reports = Vec::with_capacity(self.pods.entries.len() + self.pods.failed.len());
        for e in self.pods.entries.values() {
            let info = self.pod_info(e, now);
            let annotations = info.object["metadata"]["annotations"]
                .as_object()
                .map(|a| {
                    a.iter()
                        .filter(|(k, _)| k.starts_with("beemesh.io/"))
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                        .collect()
                })
                .unwrap_or_default();
            reports.push(PodReport {
                uid: e.uid().to_owned(),
                namespace: info.namespace,
                name: info.name,
                node: node.clone(),
                ready: info.ready,
                status: info.status,
                restarts: info.restarts,
                identity: info.identity,
                all_ready: pod_ready(e),
                pod_status: info.object["status"].clone(),
                annotations,
            });
        }
        for f in self.pods.failed.values() {
            let phase = if f.reason == "Forbidden" { "Failed" } else { "Pending" };
            reports.push(PodReport {
                uid: f.uid.clone(),
                namespace: f.namespace.clone(),
                name: f.name.clone(),
                node: node.clone(),
                ready: format!("0/{}", f.containers),
                status: f.reason.to_owned(),
                restarts: 0,
                identity: String::new(),
                all_ready: false,
                pod_status: serde_json::json!({"phase": phase, "reason": f.reason, "message": f.message}),
                annotations: BTreeMap::new(),
            });
        }
        let mut live: BTreeSet<String> = self.pods.tearing_down.values().map(|r| r.uid.clone()).collect();
        for report in reports {
            live.insert(report.uid.clone());
            if self.pods.published.get(&report.uid) == Some(&report) {
                continue;
            }
            let key = cpods::status_key(&report.namespace, &report.uid);
            let was_running = self.pods.published.get(&report.uid).is_some_and(|r| r.status == "Running");
            if report.status == "Running" && !was_running {
                let message = format!("Started pod on {node}");
                self.pod_event(&report.namespace, &report.name, &report.uid, "Started", &message);
            }
            if cluster.put(key, Some(cpods::encode_report(&report))).is_ok() {
                self.pods.published.insert(report.uid.clone(), report);
            }
        }
        let gone: Vec<(String, String)> = self
            .pods
            .published
            .iter()
            .filter(|(uid, _)| !live.contains(*uid))
            .map(|(uid, r)| (uid.clone(), r.namespace.clone()))
            .collect();
        for (uid, namespace) in gone {
            if cluster.put(cpods::status_key(&namespace, &uid), None).is_ok() {
                self.pods.published.remove(&uid);
            }
        }
    }

    /// Records a Normal event about this host's pod.
    fn pod_event(&self, namespace: &str, name: &str, uid: &str, reason: &str, message: &str) {
        if let Some(events) = &self.pods.events {
            events.normal(COMPONENT, &Involved::pod(namespace, name, Some(uid)), reason, message);
        }
    }

    /// Starts deleting a pod: SIGTERM now, SIGKILL after its grace period, then teardown.
    pub(super) fn delete_pod(&mut self, namespace: &str, name: &str) -> Result<Response, String> {
        let key = workload_name(namespace, name);
        let now = self.pods.now();
        if self.pods.tearing_down.contains_key(&key) {
            return Ok(Response::Applied { lines: vec![format!("pod/{name} deleted")] });
        }
        let entry =
            self.pods.entries.get_mut(&key).ok_or_else(|| format!("pod {namespace}/{name} not found"))?;
        if !entry.deleting {
            entry.deleting = true;
            entry.record.deleting = true;
            let runs = &entry.runs;
            let actions = entry.life.terminate(entry.plan.grace, now, |c| has_pre_stop(runs, c));
            info!(pod = %key, grace = ?entry.plan.grace, "deleting pod");
            self.carry_out(&key, actions);
            self.persist_pods();
        }
        self.drive_pods();
        Ok(Response::Applied { lines: vec![format!("pod/{name} deleted")] })
    }

    /// A new pod: its id range, workload (identity, cgroup), directory and volumes now; init
    /// and slirp4netns on a blocking thread once the policy engine has included the
    /// workload ([`Agent::settle`], [`Agent::on_installed`]), reported back as `SandboxReady`.
    fn create_pod(&mut self, mut record: PodRecord) -> Result<(), String> {
        // A new sandbox: its runs count from 1 again (restart counts stay).
        for c in record.containers.values_mut() {
            c.run = 0;
        }
        // A record that has a range claimed it at recovery.
        let base = match record.id_base {
            Some(b) => b,
            None => {
                let base = self.pods.ids.allocate().map_err(|e| e.to_string())?;
                let cursor = IdCursor { last_id_base: Some(base) };
                if let Err(e) = self.state.save_json("pod-ids.json", &cursor) {
                    error!(error = %e, "cannot save the pod id range cursor");
                }
                base
            }
        };
        record.id_base = Some(base);
        self.create_pod_in_range(record).inspect_err(|_| self.pods.ids.release(base))
    }

    fn create_pod_in_range(&mut self, record: PodRecord) -> Result<(), String> {
        let ids = IdMap::of(record.id_base);
        let plan = spec::plan_pod(&record.manifest);
        let workload = record.workload.clone();
        let layout = Layout::new(&self.cfg.state_dir, &workload);
        let identity = format!("{}/{}", plan.namespace, plan.service_account);
        self.add_workload(Some(workload.clone()), &identity, plan.labels.clone())?;
        let wpath = self.cgroups.path(&workload);
        let (pod_leaf, net_leaf) = (wpath.join("pod"), wpath.join("net"));
        let prepared = (|| -> Result<u64, String> {
            for leaf in [&pod_leaf, &net_leaf] {
                std::fs::create_dir_all(leaf).map_err(|e| format!("create {}: {e}", leaf.display()))?;
            }
            // The pod's root moves its container processes from init's leaf into theirs.
            sandbox::give_to_pod(&[pod_leaf.join("cgroup.procs")], ids).map_err(|e| e.to_string())?;
            let net_id = crate::sys::cgroup::cgroup_id(&net_leaf).map_err(|e| e.to_string())?;
            self.kernel.set_refuse_cgroup(net_id, net_leaf_flags(&plan)).map_err(|e| e.to_string())?;
            layout.create(&plan.hostname, &plan.namespace, &plan.dns, ids).map_err(|e| e.to_string())?;
            Ok(net_id)
        })();
        let net_id = match prepared {
            Ok(id) => id,
            Err(e) => {
                if let Ok(id) = crate::sys::cgroup::cgroup_id(&net_leaf) {
                    let _ = self.kernel.set_refuse_cgroup(id, 0);
                }
                let _ = self.delete_workload(&workload);
                return Err(e);
            }
        };
        let mut entry = new_entry(record, plan, layout.clone());
        entry.net_cgroup = Some(net_id);
        if let Err(e) = self.renew_svid(&mut entry) {
            let _ = self.kernel.set_refuse_cgroup(net_id, 0);
            let _ = self.delete_workload(&workload);
            let _ = crate::sys::tree::remove_tree(&layout.dir);
            return Err(e);
        }
        if let Err(e) = layout.prepare_volumes(
            &entry.record.manifest,
            &entry.plan,
            &self.pods,
            ids,
            &self.security_rules(),
        ) {
            entry.sandbox = Sandbox::Failed(e.to_string());
            self.pods.entries.insert(workload, entry);
            return Ok(());
        }
        info!(pod = %workload, identity = %identity, "pod created");
        self.pods.entries.insert(workload.clone(), entry);
        self.pods.pending.push(workload);
        Ok(())
    }

    /// The policy could not include a new pod: it never starts.
    pub(super) fn policy_refused_pod(&mut self, key: &str, uid: &str, why: &str) {
        if let Some(entry) = self.pods.entries.get_mut(key).filter(|e| e.record.uid == uid) {
            warn!(pod = %key, error = %why, "pod not started: the policy cannot include it");
            entry.sandbox = Sandbox::Failed(format!("the policy cannot include the pod: {why}"));
        }
    }

    /// Spawns init and slirp4netns for a created pod on a blocking thread.
    pub(super) fn spawn_sandbox(&self, key: &str, uid: &str) {
        let Some(entry) = self
            .pods
            .entries
            .get(key)
            .filter(|e| e.record.uid == uid && matches!(e.sandbox, Sandbox::Creating))
        else {
            return;
        };
        let wpath = self.cgroups.path(key);
        let (pod_leaf, net_leaf) = (wpath.join("pod"), wpath.join("net"));
        let tx = self.pods.tx.clone();
        let plan = entry.plan.clone();
        let layout = entry.layout.clone();
        let name = key.to_owned();
        let uid = entry.record.uid.clone();
        let id_base = entry.record.id_base;
        tokio::task::spawn_blocking(move || {
            let result = (|| {
                let pid = sandbox::spawn_init(&layout, &plan.hostname, &pod_leaf, id_base)
                    .map_err(|e| e.to_string())?;
                start_network(pid, &net_leaf, &layout, &plan).map(|slirp| (pid, slirp)).inspect_err(|_| {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                })
            })();
            let _ = tx.blocking_send(PodMsg::SandboxReady { workload: name, uid, result });
        });
    }

    pub(super) fn on_pod_msg(&mut self, msg: PodMsg) {
        let now = self.pods.now();
        match msg {
            PodMsg::SandboxReady { workload, uid, result } => {
                let Some(entry) = self.pods.entries.get_mut(&workload).filter(|e| e.record.uid == uid) else {
                    // Deleted meanwhile: nothing may stay behind.
                    if let Ok((pid, mut slirp)) = result {
                        slirp.stop();
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                    return;
                };
                match result {
                    Ok((pid, slirp)) => {
                        entry.record.init_pid = Some(pid);
                        entry.record.slirp_pid = Some(slirp.pid());
                        entry.slirp = Some(slirp);
                        entry.sandbox = Sandbox::Ready;
                        debug!(pod = %workload, init = pid, "pod sandbox ready");
                        self.connect_init(&workload);
                        self.persist_pods();
                    }
                    Err(e) => {
                        warn!(pod = %workload, error = %e, "pod sandbox failed");
                        entry.sandbox = Sandbox::Failed(e);
                    }
                }
            }
            PodMsg::Event { workload, uid, event } => {
                if self.pods.entries.get(&workload).is_some_and(|e| e.record.uid == uid) {
                    self.on_init_event(&workload, *event, now);
                }
            }
            PodMsg::InitGone { workload, uid } => {
                if let Some(entry) = self.pods.entries.get_mut(&workload).filter(|e| e.record.uid == uid) {
                    entry.cmds = None;
                    // The pid may be reused by anyone now: never signal it again.
                    if let Some(pid) = entry.record.init_pid.take() {
                        crate::sys::process::reap(pid, Duration::from_millis(200));
                    }
                    if !entry.deleting {
                        warn!(pod = %workload, "pod init exited: its containers are gone");
                        entry.sandbox = Sandbox::Failed("the pod's init process exited".into());
                        for (name, run) in entry.runs.iter_mut() {
                            if run.host_pid.take().is_some() {
                                entry.life.exited(name, 137, false, now);
                            }
                        }
                    } else {
                        for c in entry.life.containers.clone() {
                            if matches!(c.state, State::Running { .. }) {
                                entry.life.exited(&c.name, 137, false, now);
                            }
                        }
                    }
                }
            }
            PodMsg::TornDown { workload, uid, cgroup_removed, unreaped } => {
                self.torn_down(&workload, &uid, cgroup_removed, unreaped);
            }
            PodMsg::Check { workload, uid, container, run, report } => {
                let Some(entry) = self.pods.entries.get_mut(&workload).filter(|e| e.record.uid == uid) else {
                    return;
                };
                let declared = find_container(&entry.record.manifest, &container)
                    .is_some_and(|c| c.readiness_probe.is_some());
                let Some(r) = entry.runs.get_mut(&container).filter(|r| r.run == run) else { return };
                let kill = match report {
                    probe::Report::Ready(ok) => {
                        r.ready = ok;
                        None
                    }
                    probe::Report::Started => {
                        r.started = true;
                        // Without a readiness probe a started container is ready.
                        r.ready = !declared && r.plan.as_ref().is_none_or(|p| p.readiness.is_none());
                        None
                    }
                    probe::Report::Live(ok) => (!ok).then(|| "liveness probe failed".to_owned()),
                    probe::Report::StartupFailed => Some("startup probe failed".to_owned()),
                    probe::Report::PostStartFailed(e) => {
                        r.message = Some(format!("FailedPostStartHook: {e}"));
                        Some(format!("postStart hook failed: {e}"))
                    }
                };
                if let Some(why) = kill.filter(|_| !entry.deleting) {
                    info!(pod = %workload, container = %container, why = %why, "restarting");
                    if let Some(cmds) = &entry.cmds {
                        let _ = cmds.try_send(
                            proto::Command::Signal { name: container, signal: libc::SIGKILL }.into(),
                        );
                    }
                }
            }
            PodMsg::PreStopDone { workload, uid, container } => {
                let now = self.pods.now();
                let Some(entry) = self.pods.entries.get_mut(&workload).filter(|e| e.record.uid == uid) else {
                    return;
                };
                let actions = entry.life.pre_stop_done(&container, now);
                self.carry_out(&workload, actions);
            }
        }
        self.drive_pods();
    }

    fn on_init_event(&mut self, workload: &str, event: proto::Event, now: u64) {
        if event == proto::Event::Replayed {
            let mut term = Vec::new();
            if let Some(entry) = self.pods.entries.get_mut(workload) {
                if matches!(entry.sandbox, Sandbox::Adopting) {
                    entry.sandbox = Sandbox::Ready;
                    // A deletion that began before the replay: its SIGTERMs go out now (the
                    // deadline stays where it was).
                    if entry.deleting {
                        let runs = &entry.runs;
                        term = entry.life.terminate(entry.plan.grace, now, |c| has_pre_stop(runs, c));
                    }
                }
            }
            self.carry_out(workload, term);
            return;
        }
        let adopted = match &event {
            proto::Event::Started { name, run, .. } => self.adopted_run(workload, name, *run),
            _ => None,
        };
        let limits = self.pods.limits.clone();
        let tx = self.pods.tx.clone();
        let Some(entry) = self.pods.entries.get_mut(workload) else { return };
        let uid = entry.record.uid.clone();
        let name = event.container().to_owned();
        let r = entry.runs.entry(name.clone()).or_default();
        match event {
            proto::Event::Started { run, host_pid, uid: run_uid, gid: run_gid, input_fd, .. }
                if run >= r.run =>
            {
                if let (true, Some(adopted)) = (run > r.run, adopted) {
                    // A run this agent did not start (it restarted): adopt it as it runs.
                    // Init is a process of the pod: its user (ids inside the pod) is taken,
                    // but the cgroups and confinement that the host's root applies to a
                    // process entering the container are the manifest's, never init's.
                    r.run = run;
                    // A run an earlier agent started was counted then.
                    if entry.record.containers.get(&name).is_some_and(|c| run <= c.run) {
                        entry.life.resumed(&name, now);
                    } else {
                        entry.life.started(&name, now);
                    }
                    (r.uid, r.gid) = (run_uid, run_gid);
                    r.cgroups = adopted.cgroups;
                    match adopted.security {
                        Ok(security) => (r.security, r.sealed) = (security, None),
                        Err(e) => {
                            warn!(pod = %workload, container = %name, error = %e, "adopted container cannot be entered");
                            r.sealed = Some(e);
                        }
                    }
                    if let Some((plan, image_id)) = adopted.plan {
                        r.plan = Some(plan);
                        r.image_id = image_id;
                    }
                }
                r.host_pid = Some(host_pid);
                r.input_fd = input_fd;
                (r.ready, r.started) = (false, false);
                let init_pid = entry.record.init_pid.unwrap_or_default();
                // Hooks and probes enter the container as the host's root: only a process
                // of the pod. A run that cannot be entered is neither hooked nor probed (and
                // not ready if it declares a readiness probe).
                let enterable = r.sealed.is_none() && sandbox::in_pod(init_pid, host_pid);
                if !enterable {
                    debug!(pod = %workload, container = %name, host_pid, "not probing: not a process of the pod");
                }
                let checks = match r.plan.as_ref().filter(|_| enterable) {
                    Some(p) => probe::Checks {
                        post_start: p.post_start.clone(),
                        startup: p.startup.clone(),
                        readiness: p.readiness.clone(),
                        liveness: p.liveness.clone(),
                    },
                    None => probe::Checks::default(),
                };
                let target = check_target(init_pid, host_pid, r);
                let (w, u, c, run) = (workload.to_owned(), uid.clone(), name.clone(), r.run);
                let handle = tokio::spawn(probe::watch(checks, target, move |report| {
                    let msg = PodMsg::Check {
                        workload: w.clone(),
                        uid: u.clone(),
                        container: c.clone(),
                        run,
                        report,
                    };
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(msg).await;
                    }
                }));
                r.probes.push(handle.abort_handle());
                debug!(pod = %workload, container = %name, run, host_pid, "container started");
            }
            proto::Event::Exited { run, code, signal, .. } if run >= r.run => {
                let fresh = run > r.run || r.host_pid.is_some();
                r.run = run;
                r.host_pid = None;
                r.input_fd = None;
                r.ready = false;
                for p in r.probes.drain(..) {
                    p.abort();
                }
                if fresh {
                    r.exit_message = r.plan.as_ref().and_then(|p| entry.layout.termination_message(p, code));
                    let oom = signal == Some(libc::SIGKILL) && limits.oom_killed(workload, &name);
                    entry.life.exited(&name, code, oom, now);
                    info!(pod = %workload, container = %name, code, oom, "container exited");
                }
            }
            proto::Event::StartFailed { run, message, .. } if run >= r.run => {
                r.run = run;
                r.message = Some(message.clone());
                entry.life.failed_to_start(&name, "RunContainerError", now);
                warn!(pod = %workload, container = %name, error = %message, "container did not start");
            }
            _ => {}
        }
    }

    /// What an agent that did not start a running container needs to manage it, rebuilt
    /// from the manifest: its cgroups and confinement (what a process entering it gets), its
    /// plan and image id (probes, env) if the image still resolves.
    fn adopted_run(&self, workload: &str, name: &str, run: u64) -> Option<Adopted> {
        let entry = self.pods.entries.get(workload)?;
        if entry.runs.get(name).is_some_and(|r| r.run >= run) {
            return None;
        }
        let container = find_container(&entry.record.manifest, name)?;
        let pod_sc = entry.record.manifest.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let security = crate::pod::security::spec_for(
            &crate::pod::security::plan(pod_sc, container),
            &self.cfg.seccomp_profile_dir,
        )
        .map_err(|e| e.to_string());
        let mut cgroups = self.pods.limits.dirs(workload, name);
        cgroups.push(self.cgroups.path(workload).join("pod").join(name));
        let plan =
            self.pods.images.resolve(container.image.as_deref().unwrap_or_default()).ok().and_then(|image| {
                let plan =
                    spec::plan_container(&entry.record.manifest, name, &image.config, &self.pods).ok()?;
                Some((plan, image.id))
            });
        Some(Adopted { plan, cgroups, security })
    }

    /// Issues the pod's X.509 SVID for its identity and writes it where its containers see it.
    fn renew_svid(&self, entry: &mut PodEntry) -> Result<(), String> {
        let id = crate::identity::SpiffeId::new(
            &self.cfg.trust_domain,
            &entry.plan.namespace,
            &entry.plan.service_account,
        )
        .map_err(|e| e.to_string())?;
        let now = SystemTime::now();
        let issuer = &self.pods.issuer;
        let svid = issuer.issue(&id.to_string(), now, self.pods.svid_lifetime).map_err(|e| e.to_string())?;
        // svid.pem: the leaf, then the host's workload issuer (and its issuer) when there is one.
        entry
            .layout
            .write_svid(&issuer.svid_chain_pem(&svid), &svid.key_pem(), &issuer.bundle_pem())
            .map_err(|e| e.to_string())?;
        // A failed renewal is retried on the next tick, well before the old one expires.
        entry.svid_renew = Some(svid.renew_at());
        entry.svid_expires = Some(svid.not_after);
        Ok(())
    }

    /// Opens (or re-opens) the control connection to the pod's init.
    fn connect_init(&mut self, workload: &str) {
        let Some(entry) = self.pods.entries.get_mut(workload) else { return };
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        entry.cmds = Some(cmd_tx);
        let socket = entry.layout.socket();
        let tx = self.pods.tx.clone();
        let pod = (workload.to_owned(), entry.record.uid.clone());
        let task = tokio::spawn(init_connection(socket, pod, tx, cmd_rx));
        if let Some(old) = entry.conn.replace(task.abort_handle()) {
            old.abort();
        }
    }

    /// On the tick: cuts container logs past `containerLogMaxBytes` (`pod::logs`), one pass at
    /// a time, on a blocking thread (a cut copies up to that many bytes).
    pub(super) fn bound_logs(&mut self) {
        if self.pods.log_pass.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let logs: Vec<(String, PathBuf, PathBuf)> = (self.pods.entries.iter())
            .flat_map(|(key, e)| {
                let names = e.plan.init_containers.iter().chain(&e.plan.containers);
                names.map(|c| (key.clone(), e.layout.log(c), e.layout.rotated_log(c)))
            })
            .collect();
        let max = self.cfg.container_log_max_bytes;
        self.pods.log_pass = Some(tokio::task::spawn_blocking(move || {
            for (pod, live, rotated) in logs {
                match crate::pod::logs::bound(&live, &rotated, max) {
                    Ok(true) => info!(pod = %pod, log = %live.display(), max, "container log cut"),
                    Ok(false) => {}
                    Err(e) => {
                        warn!(pod = %pod, log = %live.display(), error = %e, "cannot bound container log")
                    }
                }
            }
        }));
    }

    /// Runs every pod's lifecycle forward: starts, signals, teardown of deleted pods.
    /// Containers that waited for a missing image are tried again now (`Command::ImagesChanged`).
    pub(super) fn retry_image_pulls(&mut self) {
        let now = self.pods.now();
        for entry in self.pods.entries.values_mut() {
            entry.life.retry_now("ErrImagePull", now);
        }
        self.drive_pods();
    }

    pub(super) fn drive_pods(&mut self) {
        let (ids, releasing) = (&mut self.pods.ids, &mut self.pods.releasing);
        let free = ids.free();
        self.pods.unreaped.retain(|pid| {
            let reaped = crate::sys::process::reap(*pid, Duration::ZERO);
            if reaped {
                // The pod's last process is gone with its init: its id range is free.
                releasing.retain(|(p, base)| {
                    if p == pid {
                        ids.release(*base);
                    }
                    p != pid
                });
            }
            !reaped
        });
        let released = self.pods.ids.free() > free;
        let wall = SystemTime::now();
        let due: Vec<String> = self
            .pods
            .entries
            .iter()
            .filter(|(_, e)| !e.deleting && e.svid_renew.is_some_and(|r| wall >= r))
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(mut entry) = self.pods.entries.remove(&key) else { continue };
            match self.renew_svid(&mut entry) {
                Ok(()) => debug!(pod = %key, "renewed the pod's SVID"),
                Err(e) => warn!(pod = %key, error = %e, "cannot renew the pod's SVID; retrying"),
            }
            self.pods.entries.insert(key, entry);
        }
        let now = self.pods.now();
        let keys: Vec<String> = self.pods.entries.keys().cloned().collect();
        let mut finished = Vec::new();
        for key in keys {
            let Some(entry) = self.pods.entries.get_mut(&key) else { continue };
            match entry.sandbox {
                Sandbox::Creating | Sandbox::Adopting => continue,
                Sandbox::Failed(_) => {
                    if entry.deleting {
                        finished.push(key);
                    }
                    continue;
                }
                Sandbox::Ready => {}
            }
            // `activeDeadlineSeconds`, from the pod's start (wall clock: it holds across agent
            // restarts): stopped for good, Failed with DeadlineExceeded.
            let active = entry.record.manifest.spec.as_ref().and_then(|s| s.active_deadline_seconds);
            if let Some(limit) = active.filter(|_| !entry.deleting && !entry.life.deadline_exceeded()) {
                let wall_secs = wall.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                if wall_secs >= entry.record.created.saturating_add(limit.max(0).unsigned_abs()) {
                    info!(pod = %key, seconds = limit, "active deadline exceeded: stopping the pod");
                    let runs = &entry.runs;
                    let actions =
                        entry.life.exceed_deadline(entry.plan.grace, now, |c| has_pre_stop(runs, c));
                    self.carry_out(&key, actions);
                    continue;
                }
            }
            let actions = entry.life.poll(now);
            if entry.deleting && entry.life.stopped() {
                finished.push(key.clone());
                continue;
            }
            self.carry_out(&key, actions);
        }
        for key in finished {
            self.teardown_pod(&key);
        }
        // Restart counts and last states go to pods.json when they change.
        let mut changed = false;
        for entry in self.pods.entries.values_mut() {
            changed |= sync_history(entry);
        }
        if changed {
            self.persist_pods();
        }
        // A pod that found no free id range may find one now.
        if released && !self.pods.failed.is_empty() {
            self.retry_failed();
            self.converge();
        }
    }

    fn carry_out(&mut self, key: &str, actions: Vec<Action>) {
        let now = self.pods.now();
        for action in actions {
            match action {
                Action::Start(name) => self.start_container(key, &name, now),
                Action::PreStop(name) => self.pre_stop(key, &name),
                Action::Term(name) => self.signal_container(key, &name, libc::SIGTERM),
                Action::Kill(name) => self.signal_container(key, &name, libc::SIGKILL),
            }
        }
    }

    /// Runs `name`'s preStop hook (within the pod's grace period), then reports
    /// `PreStopDone`; at once when the run cannot be entered.
    fn pre_stop(&mut self, key: &str, name: &str) {
        let tx = self.pods.tx.clone();
        let Some(entry) = self.pods.entries.get_mut(key) else { return };
        let (uid, grace, init_pid) = (entry.record.uid.clone(), entry.plan.grace, entry.record.init_pid);
        let done = PodMsg::PreStopDone { workload: key.to_owned(), uid, container: name.to_owned() };
        let hooked = entry.runs.get_mut(name).and_then(|r| {
            let hook = r.plan.as_ref()?.pre_stop.clone()?;
            let (init_pid, host_pid) = (init_pid?, r.host_pid?);
            (r.sealed.is_none() && sandbox::in_pod(init_pid, host_pid))
                .then(|| (hook, check_target(init_pid, host_pid, r), r))
        });
        let Some((hook, target, r)) = hooked else {
            let _ = tx.try_send(done);
            return;
        };
        info!(pod = %key, container = %name, "running the preStop hook");
        let (pod, container) = (key.to_owned(), name.to_owned());
        let handle = tokio::spawn(async move {
            match tokio::time::timeout(grace, probe::run_hook(&hook, &target)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(pod = %pod, container = %container, error = %e, "preStop hook failed"),
                Err(_) => warn!(pod = %pod, container = %container, "preStop hook outlived the grace period"),
            }
            let _ = tx.send(done).await;
        });
        r.probes.push(handle.abort_handle());
    }

    fn signal_container(&self, key: &str, name: &str, signal: i32) {
        if let Some(cmds) = self.pods.entries.get(key).and_then(|e| e.cmds.as_ref()) {
            let _ = cmds.try_send(proto::Command::Signal { name: name.to_owned(), signal }.into());
        }
    }

    fn start_container(&mut self, key: &str, name: &str, now: u64) {
        let Some(entry) = self.pods.entries.get(key) else { return };
        let Some(container) = find_container(&entry.record.manifest, name) else { return };
        let image_ref = container.image.clone().unwrap_or_default();
        let fail = |this: &mut Self, reason: &str, message: String| {
            let Some(entry) = this.pods.entries.get_mut(key) else { return };
            warn!(pod = %key, container = %name, reason, error = %message, "cannot start container");
            entry.life.failed_to_start(name, reason, now);
            entry.runs.entry(name.to_owned()).or_default().message = Some(message);
        };
        // An image this store lacks is pulled from the hosts that hold it; meanwhile the
        // container waits as ContainerCreating, re-checked on the tick.
        let image = match self.pods.images.resolve(&image_ref) {
            Ok(i) => i,
            Err(e) => match self.pods.pulls.as_ref().map(|p| p.want(&image_ref)) {
                Some(Wanted::Pulling(message)) => {
                    let Some(entry) = self.pods.entries.get_mut(key) else { return };
                    entry.life.not_yet(name, "ContainerCreating", now + IMAGE_RECHECK_MS);
                    entry.runs.entry(name.to_owned()).or_default().message = Some(message);
                    return;
                }
                Some(Wanted::Failed(reason)) => return fail(self, "ErrImagePull", reason),
                Some(Wanted::Present) => match self.pods.images.resolve(&image_ref) {
                    Ok(i) => i,
                    Err(e) => return fail(self, "ErrImagePull", e.to_string()),
                },
                None => return fail(self, "ErrImagePull", e.to_string()),
            },
        };
        // The downward API's addresses: the pod's mesh address (the forwarder gives it one
        // soon after the pod appears) and this host's InternalIPs; the container waits for them.
        let addressed;
        let manifest = if spec::reads_addresses(&entry.record.manifest) {
            let pod_ip = self.pod_addrs.lock().ok().and_then(|a| a.get(entry.uid()).copied());
            let host_ips = self.host_ips.lock().map(|h| h.clone()).unwrap_or_default();
            match pod_ip {
                Some(ip) if !host_ips.is_empty() => {
                    addressed = spec::with_addresses(&entry.record.manifest, &ip.to_string(), &host_ips);
                    &addressed
                }
                _ => {
                    let Some(entry) = self.pods.entries.get_mut(key) else { return };
                    entry.life.not_yet(name, "ContainerCreating", now + IMAGE_RECHECK_MS);
                    let message =
                        "waiting for the pod's mesh address and the host's (status.podIP, status.hostIP)";
                    entry.runs.entry(name.to_owned()).or_default().message = Some(message.into());
                    return;
                }
            }
        } else {
            &entry.record.manifest
        };
        let plan = match spec::plan_container(manifest, name, &image.config, &self.pods) {
            Ok(p) => p,
            Err(e) => return fail(self, "CreateContainerConfigError", e.to_string()),
        };
        let dir = entry.layout.container(name);
        let ids = IdMap::of(entry.record.id_base);
        // Layers are idmapped through the pod's user namespace, the one of its init.
        let userns = match (ids.is_identity(), entry.record.init_pid) {
            (true, _) => None,
            (false, Some(pid)) => match std::fs::File::open(format!("/proc/{pid}/ns/user")) {
                Ok(f) => Some(f),
                Err(e) => {
                    return fail(self, "CreateContainerError", format!("the pod's user namespace: {e}"))
                }
            },
            (false, None) => return fail(self, "CreateContainerError", "the pod's init is gone".into()),
        };
        let shift = userns.as_ref().map(|userns| crate::pod::rootfs::Shift { map: ids, userns });
        if let Err(e) = Rootfs::existing(&dir).remove() {
            return fail(self, "CreateContainerError", e.to_string());
        }
        let rootfs = match Rootfs::mount(&image, &dir, shift) {
            Ok(r) => r,
            Err(e) => return fail(self, "CreateContainerError", e.to_string()),
        };
        let cgroups = match self.pods.limits.prepare(key, &plan, ids) {
            Ok(c) => c,
            Err(e) => return fail(self, "CreateContainerError", e.to_string()),
        };
        let leaf = self.cgroups.path(key).join("pod").join(name);
        if let Err(e) = std::fs::create_dir_all(&leaf) {
            return fail(self, "CreateContainerError", format!("create {}: {e}", leaf.display()));
        }
        // The container joins its leaf, and init kills it whole, as the pod's root.
        if let Err(e) = sandbox::give_to_pod(&[leaf.join("cgroup.procs"), leaf.join("cgroup.kill")], ids) {
            return fail(self, "CreateContainerError", e.to_string());
        }
        let rules = self.security_rules();
        let Some(entry) = self.pods.entries.get_mut(key) else { return };
        let run_no = entry.runs.get(name).map_or(0, |r| r.run) + 1;
        entry.layout.rotate_log(name);
        let (spec, trees) = match entry.layout.container_spec(
            &entry.plan,
            &plan,
            run_no,
            rootfs.root(),
            (cgroups.clone(), leaf.clone()),
            &rules,
        ) {
            Ok(s) => s,
            Err(e) => return fail(self, "CreateContainerConfigError", e.to_string()),
        };
        if ids.host_id(spec.uid).is_none() || ids.host_id(spec.gid).is_none() {
            let message = format!("user {}:{} is outside the pod's {} ids", spec.uid, spec.gid, ids.count);
            return fail(self, "CreateContainerConfigError", message);
        }
        let user = (spec.uid, spec.gid);
        let security = spec.security.clone();
        let start = proto::Message { command: proto::Command::Start(Box::new(spec)), fds: trees };
        let sent = entry.cmds.as_ref().is_some_and(|c| c.try_send(start).is_ok());
        if !sent {
            return fail(self, "ContainerCreating", "the pod's init is not reachable".into());
        }
        let r = entry.runs.entry(name.to_owned()).or_default();
        r.run = run_no;
        r.plan = Some(plan);
        r.cgroups = cgroups;
        r.cgroups.push(leaf);
        (r.uid, r.gid) = user;
        r.security = security;
        r.sealed = None;
        r.message = None;
        r.image_id = image.id.clone();
        entry.life.started(name, now);
    }

    /// Everything of a deleted pod goes: init (and with it the namespaces), slirp4netns and
    /// its forwards, mounts, cgroups, files, the workload and its identity mapping. The
    /// killing, waiting and unmounting run on a blocking thread (`TornDown` reports back);
    /// the actor keeps the record, so a crash meanwhile resumes the deletion.
    fn teardown_pod(&mut self, key: &str) {
        let Some(mut entry) = self.pods.entries.remove(key) else { return };
        detach_entry(&mut entry);
        if let Some(id) = entry.net_cgroup {
            let _ = self.kernel.set_refuse_cgroup(id, 0);
        }
        let (tx, cgroups, limits) = (self.pods.tx.clone(), self.cgroups.clone(), self.pods.limits.clone());
        let (workload, uid) = (key.to_owned(), entry.record.uid.clone());
        let init_pid = entry.record.init_pid.take();
        let slirp = entry.slirp.take();
        let layout = entry.layout.clone();
        self.pods.tearing_down.insert(key.to_owned(), entry.record);
        tokio::task::spawn_blocking(move || {
            let unreaped = kill_sandbox(init_pid, slirp);
            let cgroup_removed = match cgroups.destroy(&workload) {
                Ok(()) => true,
                Err(e) => {
                    warn!(pod = %workload, error = %e, "cannot remove the pod's cgroup; its kernel identity stays");
                    false
                }
            };
            unmount_containers(&layout);
            limits.remove(&workload);
            if let Err(e) = crate::sys::tree::remove_tree(&layout.dir) {
                warn!(pod = %workload, error = %e, "cannot remove pod directory");
            }
            let _ = tx.blocking_send(PodMsg::TornDown { workload, uid, cgroup_removed, unreaped });
        });
    }

    /// The blocking part of a teardown is done: the workload and the record go.
    fn torn_down(&mut self, key: &str, uid: &str, cgroup_removed: bool, unreaped: Option<u32>) {
        if self.pods.tearing_down.get(key).is_none_or(|r| r.uid != uid) {
            return;
        }
        let record = self.pods.tearing_down.remove(key);
        self.pods.unreaped.extend(unreaped);
        // The id range is free once the pod's last process is gone (with its init).
        match (record.and_then(|r| r.id_base), unreaped) {
            (Some(base), Some(pid)) => self.pods.releasing.push((pid, base)),
            (Some(base), None) => self.pods.ids.release(base),
            (None, _) => {}
        }
        match self.workloads.remove(key) {
            Ok(w) if cgroup_removed => {
                if let Err(e) = self.kernel.remove_cgroup(w.cgroup_id) {
                    warn!(workload = %key, error = %e, "cannot unmap workload cgroup");
                }
            }
            // Processes may survive: their identity stays in the kernel, or they would run
            // as nobody, unrestricted.
            Ok(_) => {}
            Err(e) => warn!(workload = %key, error = %e, "deleted pod had no workload"),
        }
        self.persist();
        self.policy_dirty = true;
        info!(pod = %key, "pod deleted");
        self.persist_pods();
        // A pod of the same name may wait for this one to go, or for its id range.
        self.retry_failed();
        self.converge();
    }

    /// Pods whose creation failed are tried again at the next converge (room was made).
    fn retry_failed(&mut self) {
        for f in self.pods.failed.values_mut() {
            f.retry = true;
        }
    }

    /// Clean agent stop: pods stop with it (their records stay and they start again with
    /// the next agent), and nothing of them stays on the host.
    pub(super) fn stop_pods(&mut self) {
        let keys: Vec<String> = self.pods.entries.keys().cloned().collect();
        for key in keys {
            let Some(mut entry) = self.pods.entries.remove(&key) else { continue };
            if let Some(pid) = stop_entry(&mut entry) {
                crate::sys::process::reap(pid, Duration::from_secs(5));
            }
            let _ = crate::sys::cgroup::kill_cgroup(&self.cgroups.path(&key));
            let _ = self.cgroups.destroy(&key);
            unmount_containers(&entry.layout);
            self.pods.limits.remove(&key);
            let _ = crate::sys::tree::remove_tree(&entry.layout.dir);
            entry.record.init_pid = None;
            entry.record.slirp_pid = None;
            self.pods.entries.insert(key, entry);
        }
        self.persist_pods();
        self.pods.entries.clear();
    }

    fn pod_info(&self, e: &PodEntry, now: u64) -> PodInfo {
        let apps: Vec<&lifecycle::Container> = e.life.containers.iter().filter(|c| !c.init).collect();
        let ready = apps
            .iter()
            .filter(|c| e.runs.get(&c.name).is_some_and(|r| r.ready && r.host_pid.is_some()))
            .count();
        let restarts = e.life.containers.iter().map(|c| c.restarts).sum();
        let identity =
            self.workloads.get(&e.record.workload).map(|w| w.identity.to_string()).unwrap_or_default();
        PodInfo {
            namespace: e.plan.namespace.clone(),
            name: e.plan.name.clone(),
            ready: format!("{ready}/{}", apps.len()),
            status: status_column(e),
            restarts,
            age_secs: now.saturating_sub(e.record.created),
            host: self.pods.host.clone(),
            identity,
            object: {
                let mut object = pod_object(e, &self.pods.host);
                // The pod's mesh address once the forwarder gave it one (inside, it is
                // 10.0.2.100 on its own tap device).
                let addr = self.pod_addrs.lock().ok().and_then(|a| a.get(e.uid()).copied());
                if let Some(addr) = addr {
                    object["status"]["podIP"] = addr.to_string().into();
                    object["status"]["podIPs"] = serde_json::json!([{"ip": addr.to_string()}]);
                }
                let hosts = self.host_ips.lock().map(|h| h.clone()).unwrap_or_default();
                if let Some(first) = hosts.first() {
                    object["status"]["hostIP"] = first.clone().into();
                    object["status"]["hostIPs"] =
                        hosts.iter().map(|ip| serde_json::json!({"ip": ip})).collect();
                }
                object
            },
        }
    }

    /// The key of pod `namespace/name` of this host and its container `container` (the
    /// first app container when not named).
    fn container_of(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
    ) -> Result<(String, String), String> {
        let key = workload_name(namespace, name);
        let e = self.pods.entries.get(&key).ok_or_else(|| format!("pod {namespace}/{name} not found"))?;
        let container = match container {
            Some(c) => c.to_owned(),
            None => e.plan.containers.first().cloned().ok_or("the pod has no containers")?,
        };
        Ok((key, container))
    }

    pub(super) fn pod_container(
        &self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
    ) -> Result<Response, String> {
        let (key, container) = self.container_of(namespace, name, container)?;
        let e = &self.pods.entries[&key];
        if !e.life.containers.iter().any(|c| c.name == container) {
            return Err(format!("container {container:?} is not in pod {namespace}/{name}"));
        }
        let run = e.runs.get(&container);
        let plan = run.and_then(|r| r.plan.as_ref());
        let mut cgroups = vec![self.cgroups.path(&key).join("pod").display().to_string()];
        cgroups.extend(run.iter().flat_map(|r| r.cgroups.iter()).map(|p| p.display().to_string()));
        Ok(Response::Container(ContainerInfo {
            log: e.layout.log(&container).display().to_string(),
            previous_log: e.layout.previous_log(&container).display().to_string(),
            // Entered by the host's root (`exec`): only a process of the pod, in a run whose
            // confinement is known.
            host_pid: run
                .filter(|r| r.sealed.is_none())
                .and_then(|r| r.host_pid)
                .filter(|pid| e.record.init_pid.is_some_and(|init| sandbox::in_pod(init, *pid))),
            env: plan.map(|p| p.env.clone()).unwrap_or_default(),
            cwd: plan.map(|p| p.cwd.clone()).unwrap_or_else(|| "/".into()),
            uid: run.map_or(0, |r| r.uid),
            gid: run.map_or(0, |r| r.gid),
            security: run.map(|r| r.security.clone()).unwrap_or_default(),
            cgroups,
            io: io_info(e, run, &container),
            container,
        }))
    }

    /// The actor's part of `PodInput`: a `stdinOnce` container's input ends with the first
    /// attach that wrote to it (init closes it; no later attach may write).
    pub(super) fn close_input(
        &mut self,
        namespace: &str,
        name: &str,
        container: Option<&str>,
    ) -> Result<Response, String> {
        let (key, container) = self.container_of(namespace, name, container)?;
        let Some(e) = self.pods.entries.get_mut(&key) else { return Ok(Response::Done) };
        let once = e.runs.get(&container).and_then(|r| r.plan.as_ref()).is_some_and(|p| p.io.stdin_once);
        if let (true, Some(r)) = (once, e.runs.get_mut(&container)) {
            if r.input_fd.take().is_some() {
                info!(pod = %key, container = %container, "input closed after the first attach (stdinOnce)");
                if let Some(cmds) = &e.cmds {
                    let _ = cmds.try_send(proto::Command::CloseInput { name: container }.into());
                }
            }
        }
        Ok(Response::Done)
    }
}

impl PodEntry {
    /// The uid of this pod (a pod applied again under the same name has another).
    pub(super) fn uid(&self) -> &str {
        &self.record.uid
    }
}

/// What `attach` may do with container `name` of `e`: its manifest's streams and, while its
/// run takes input, where that input is (init's descriptor).
fn io_info(e: &PodEntry, run: Option<&Run>, name: &str) -> crate::api::ContainerIo {
    let io = run
        .and_then(|r| r.plan.as_ref())
        .map(|p| p.io)
        .or_else(|| find_container(&e.record.manifest, name).map(crate::pod::spec::Io::of))
        .unwrap_or_default();
    let input = run
        .filter(|r| r.host_pid.is_some())
        .and_then(|r| r.input_fd)
        .zip(e.record.init_pid)
        .map(|(fd, init_pid)| crate::api::InputFd { init_pid, fd });
    crate::api::ContainerIo { stdin: io.stdin, stdin_once: io.stdin_once, tty: io.tty, input }
}

/// Whether container `name`'s current run has a preStop hook.
fn has_pre_stop(runs: &BTreeMap<String, Run>, name: &str) -> bool {
    runs.get(name).and_then(|r| r.plan.as_ref()).is_some_and(|p| p.pre_stop.is_some())
}

/// What a hook or probe of run `r` enters: the container of `host_pid` in the pod of
/// `init_pid`, with the run's environment, user, cgroups and confinement.
fn check_target(init_pid: u32, host_pid: u32, r: &Run) -> probe::Target {
    probe::Target {
        init_pid,
        host_pid,
        env: r.plan.as_ref().map(|p| p.env.clone()).unwrap_or_default(),
        cwd: r.plan.as_ref().map_or_else(|| "/".to_owned(), |p| p.cwd.clone()),
        user: (r.uid, r.gid),
        cgroups: r.cgroups.clone(),
        security: r.security.clone(),
    }
}

/// How the kernel treats the pod's slirp4netns leaf (`REFUSE_CGROUPS`).
fn net_leaf_flags(plan: &PodPlan) -> u8 {
    let own_dns = if plan.dns.own_resolvers() { beemesh_common::NET_LEAF_OWN_DNS } else { 0 };
    beemesh_common::NET_LEAF_REFUSE | own_dns
}

fn new_entry(record: PodRecord, plan: PodPlan, layout: Layout) -> PodEntry {
    let init: Vec<&str> = plan.init_containers.iter().map(String::as_str).collect();
    let app: Vec<&str> = plan.containers.iter().map(String::as_str).collect();
    let mut life = lifecycle::Pod::new(plan.restart, &init, &app);
    for (name, c) in &record.containers {
        life.restore(name, &c.history);
    }
    PodEntry {
        record,
        plan,
        life,
        layout,
        runs: BTreeMap::new(),
        sandbox: Sandbox::Creating,
        cmds: None,
        slirp: None,
        net_cgroup: None,
        deleting: false,
        conn: None,
        svid_renew: None,
        svid_expires: None,
    }
}

/// Copies the lifecycle's container histories (and the latest run numbers) into the
/// record; returns whether anything changed.
fn sync_history(entry: &mut PodEntry) -> bool {
    let mut changed = false;
    for c in &entry.life.containers {
        let Some(history) = entry.life.history(&c.name) else { continue };
        let run = entry.runs.get(&c.name).map_or(0, |r| r.run);
        let rec = entry.record.containers.entry(c.name.clone()).or_default();
        let updated = ContainerRecord { history, run: run.max(rec.run) };
        if *rec != updated {
            *rec = updated;
            changed = true;
        }
    }
    changed
}

fn find_container<'a>(
    pod: &'a k8s_openapi::api::core::v1::Pod,
    name: &str,
) -> Option<&'a k8s_openapi::api::core::v1::Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers.iter().flatten().chain(spec.containers.iter()).find(|c| c.name == name)
}

/// Stops a pod's processes; returns its init's pid if it has not been reaped yet (the
/// caller keeps it in `Pods::unreaped` for the tick).
fn stop_entry(entry: &mut PodEntry) -> Option<u32> {
    detach_entry(entry);
    kill_sandbox(entry.record.init_pid, entry.slirp.take())
}

/// Drops the agent's ties to a pod's processes: the init connection, probes, and a last
/// `shutdown` to init.
fn detach_entry(entry: &mut PodEntry) {
    if let Some(conn) = entry.conn.take() {
        conn.abort();
    }
    for r in entry.runs.values_mut() {
        for p in r.probes.drain(..) {
            p.abort();
        }
    }
    if let Some(cmds) = entry.cmds.take() {
        let _ = cmds.try_send(proto::Command::Shutdown.into());
    }
}

/// Kills a pod's init (and with it everything in the pod) and its slirp4netns; returns
/// init's pid if it has not been reaped yet. Blocks up to half a second.
fn kill_sandbox(init_pid: Option<u32>, slirp: Option<Slirp>) -> Option<u32> {
    let mut unreaped = None;
    if let Some(pid) = init_pid {
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        // Init is our child (we are its subreaper): reap it, or its zombie keeps the pod's
        // namespaces alive.
        if !crate::sys::process::reap(pid, Duration::from_millis(500)) {
            unreaped = Some(pid);
        }
    }
    if let Some(mut slirp) = slirp {
        slirp.stop();
    }
    unreaped
}

fn unmount_containers(layout: &Layout) {
    let Ok(dirs) = std::fs::read_dir(layout.dir.join("containers")) else { return };
    for d in dirs.flatten() {
        if let Err(e) = Rootfs::existing(&d.path()).remove() {
            warn!(dir = %d.path().display(), error = %e, "cannot remove container root");
        }
    }
}

/// slirp4netns for the pod's network namespace, with its host port forwards.
fn start_network(init_pid: u32, net_leaf: &Path, layout: &Layout, plan: &PodPlan) -> Result<Slirp, String> {
    let slirp = Slirp::start(init_pid, net_leaf, &layout.slirp_api()).map_err(|e| e.to_string())?;
    for p in plan.ports.iter() {
        let Some(host_port) = p.host_port else { continue };
        let addr = p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into());
        slirp
            .add_hostfwd(p.protocol != "udp", &addr, host_port, p.container_port)
            .map_err(|e| format!("hostPort {host_port}: {e}"))?;
    }
    Ok(slirp)
}

async fn init_connection(
    socket: PathBuf,
    (workload, uid): (String, String),
    tx: mpsc::Sender<PodMsg>,
    mut cmds: mpsc::Receiver<proto::Message>,
) {
    let mut stream = None;
    for _ in 0..100 {
        match crate::sockpath::connect_async(&socket).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    if let Some(stream) = stream {
        let (read, mut write) = stream.into_split();
        let mut lines = tokio::io::BufReader::new(read).lines();
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => match serde_json::from_str::<proto::Event>(&line) {
                        Ok(event) => {
                            let _ = tx.send(PodMsg::Event { workload: workload.clone(), uid: uid.clone(), event: Box::new(event) }).await;
                        }
                        Err(e) => warn!(pod = %workload, error = %e, "malformed message from pod init"),
                    },
                    _ => break,
                },
                cmd = cmds.recv() => {
                    let Some(proto::Message { command, fds }) = cmd else { break };
                    let mut line = serde_json::to_vec(&command).expect("commands always serialise");
                    line.push(b'\n');
                    // A start's mounts go with its line's first bytes (SCM_RIGHTS).
                    let sent = if fds.is_empty() { 0 } else {
                        match send_with_fds(write.as_ref(), &line, &fds).await {
                            Ok(n) => n,
                            Err(e) => {
                                warn!(pod = %workload, error = %e, "cannot send to pod init");
                                break;
                            }
                        }
                    };
                    if write.write_all(&line[sent..]).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    let _ = tx.send(PodMsg::InitGone { workload, uid }).await;
}

/// Sends `data` with `fds` attached on the init connection; returns how many bytes went.
async fn send_with_fds(
    stream: &tokio::net::UnixStream,
    data: &[u8],
    fds: &[std::os::fd::OwnedFd],
) -> std::io::Result<usize> {
    use std::os::fd::AsFd;
    let fds: Vec<std::os::fd::BorrowedFd<'_>> = fds.iter().map(|f| f.as_fd()).collect();
    loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || crate::sys::send_with_fds(stream, data, &fds)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_copy_runs_until_its_replacement_is_ready_unless_only_one_may_run() {
        let mut d = Desired::default();
        d.named.insert("web".into());
        let pod = k8s_openapi::api::core::v1::Pod::default();
        assert!(waits_for_replacement(&d, "web", true, &pod));
        assert!(!waits_for_replacement(&d, "web", false, &pod), "a copy not ready goes at once");
        d.ready_elsewhere.insert("web".into());
        assert!(!waits_for_replacement(&d, "web", true, &pod), "the replacement is ready");
        d.ready_elsewhere.clear();
        let mut db: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db", "uid": "u"}]}}))
            .unwrap_or_default();
        assert!(!waits_for_replacement(&d, "web", true, &db), "a StatefulSet's pod never runs twice");
        db.metadata.owner_references = None;
        assert!(waits_for_replacement(&d, "web", true, &db));
        assert!(!waits_for_replacement(&d, "gone", true, &db), "deleted, not replaced");
    }

    #[test]
    fn pod_workload_names_are_valid_and_distinct() {
        assert!(workload_name("default", "web").starts_with("pod-default-web-"));
        assert_ne!(workload_name("team-a", "web"), workload_name("team", "a-web"));
        let a = workload_name("default", "a.b");
        let b = workload_name("default", "a-b");
        assert_ne!(a, b);
        assert!(crate::workload::validate_name(&a).is_ok(), "{a}");
        let long = workload_name("default", &"x".repeat(200));
        assert!(crate::workload::validate_name(&long).is_ok(), "{long}");
    }
}
