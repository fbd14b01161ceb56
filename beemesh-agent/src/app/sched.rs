//! The scheduler's driver (`docs/scheduling.md`): one task per host owning the sans-IO
//! [`Tenderer`] and [`Bidder`] of `beemesh_state::sched`. It reads the cluster state (Node
//! records: allocatable, labels, taints; Pods: where each is placed and what it asks) and the
//! failure detector (which hosts are dead) into a [`View`], carries tenders to candidates as
//! mesh requests of kind [`REQUEST_KIND`] (the tenders of one pass to one candidate in one
//! request; a tender to this host is answered in place), and
//! writes the outcome into the state: `spec.nodeName` for a binding, the annotation
//! [`UNSCHEDULABLE_ANNOTATION`] with Kubernetes' message for a slot nobody can take.
//!
//! Who tenders: `apply` on any host places the Pods it writes without a `nodeName` through
//! [`Scheduler::place`] before writing them (so a pod applied is placed in the same write);
//! afterwards a pod's owner (rendezvous over the alive hosts, by its workload) tenders what
//! still needs a host: pods written unplaced, and pods the mesh placed (annotation
//! [`SCHEDULED_ANNOTATION`]) on a host the failure detector holds dead, while this host sees
//! at least half the known hosts ([`core::may_heal`]: a side cut off by a partition leaves the
//! lost hosts' pods to the larger side). A pod a manifest pins with `nodeName` stays where it
//! is pinned.

pub mod needs;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use beemesh_state::sched::{
    self as core, rank, Answer, Bidder, HostFacts, Out, Placed, Resources, SchedConfig, SlotReq, Tender,
    Tenderer,
};
use beemesh_state::Key;
use bytes::Bytes;
use k8s_openapi::api::core::v1::Pod;
use libp2p::PeerId;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::events::{Involved, Recorder};
use tracing::{debug, info, warn};

use super::cluster::pods::{self as cpods, POD, POD_STATUS};
use super::cluster::{Cluster, Listed};
use super::liveness::Liveness;
use crate::mesh::swarm::{AttestedHost, MeshClient, MeshResponse};

/// The mesh request kind of tenders (a JSON list of [`Tender`]s in, of [`Answer`]s out).
pub const REQUEST_KIND: &str = "sched";
/// On a pod the mesh placed (it may be placed again when its host is lost).
pub const SCHEDULED_ANNOTATION: &str = "beemesh.io/scheduled";
/// On a pod no host can take now: why (`0/3 hosts are available: ...`).
pub const UNSCHEDULABLE_ANNOTATION: &str = "beemesh.io/unschedulable";
/// The kind of claims (a pod mounting one goes where it is bound).
const CLAIM: &str = "PersistentVolumeClaim";
/// How often the task looks at deadlines and back-offs.
const TICK: Duration = Duration::from_millis(100);
/// How often the view is read again without a change (the detector's verdicts change
/// without the state changing).
const REFRESH: Duration = Duration::from_secs(1);
/// The Node records' annotation naming a host's peer id.
const PEER_ID_ANNOTATION: &str = "beemesh.io/peer-id";

/// Where `apply` may write a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Placement {
    Bound(String),
    /// Nobody can take it now: why.
    Pending(String),
}

/// What the scheduler's events say about the pod of a placement `apply` asks for.
#[derive(Clone, Debug, Default)]
pub struct PodRef {
    pub uid: Option<String>,
    /// The stand-alone claims it mounts (`needs::claims_of`): they decide its host.
    pub claims: Vec<String>,
    /// Its `spec.schedulerName`, when it names one.
    pub scheduler_name: Option<String>,
}

impl PodRef {
    pub fn of(pod: &Pod) -> PodRef {
        PodRef {
            uid: pod.metadata.uid.clone(),
            claims: needs::claims_of(pod),
            scheduler_name: pod.spec.as_ref().and_then(|s| s.scheduler_name.clone()),
        }
    }
}

/// The component named in the scheduler's events.
const COMPONENT: &str = "beemesh-scheduler";
/// The scheduler name Kubernetes pods name by default.
const DEFAULT_SCHEDULER: &str = "default-scheduler";

enum Input {
    Place {
        req: Box<SlotReq>,
        pod: PodRef,
        reply: oneshot::Sender<Placement>,
    },
    /// A peer's tenders, answered in their order.
    Tenders {
        tenders: Vec<Tender>,
        reply: oneshot::Sender<Vec<Answer>>,
    },
    /// A candidate's answers to the tenders sent to it in one request.
    Answered {
        from: String,
        answers: Vec<(Tender, Answer)>,
    },
}

/// Most tenders one request carries: a burst of slots (a Deployment's replicas) goes to each
/// candidate in a few requests instead of one per slot.
const BATCH: usize = 128;

/// The handle of this host's scheduler task.
#[derive(Clone, Debug)]
pub struct Scheduler {
    tx: mpsc::Sender<Input>,
    cfg: SchedConfig,
}

impl Scheduler {
    pub fn start(
        cluster: Cluster,
        client: MeshClient,
        liveness: Liveness,
        events: Recorder,
        cfg: SchedConfig,
    ) -> Scheduler {
        let (tx, rx) = mpsc::channel(1024);
        let task = Task {
            me: cluster.node().to_owned(),
            tenderer: Tenderer::new(cfg.clone()),
            bidder: Bidder::new(&cfg),
            view: StateView::default(),
            tracked: BTreeSet::new(),
            waiters: BTreeMap::new(),
            shown: BTreeMap::new(),
            epoch: Instant::now(),
            events,
            cluster,
            client,
            liveness,
            tx: tx.downgrade(),
        };
        tokio::spawn(task.run(rx));
        Scheduler { tx, cfg }
    }

    /// Places the slot of a pod about to be written: the host that won it, or why none can.
    pub async fn place(&self, req: SlotReq, pod: PodRef) -> Placement {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Input::Place { req: Box::new(req), pod, reply }).await.is_err() {
            return Placement::Pending("the scheduler has stopped".into());
        }
        // The tender's own deadline decides well before this.
        let limit = Duration::from_millis(self.cfg.bid_wait_ms * 3 + 1000);
        match tokio::time::timeout(limit, rx).await {
            Ok(Ok(p)) => p,
            _ => Placement::Pending("no host answered the tender".into()),
        }
    }

    /// A peer's tenders (a JSON list of at most [`BATCH`]): this host's bid, or why not, to
    /// each, in their order.
    pub async fn serve(&self, from: &AttestedHost, body: &[u8]) -> Result<Vec<u8>, String> {
        let tenders: Vec<Tender> =
            serde_json::from_slice(body).map_err(|e| format!("not a list of tenders: {e}"))?;
        if tenders.len() > BATCH {
            return Err(format!("{} tenders in one request, more than {BATCH}", tenders.len()));
        }
        debug!(from = %from.node_name, tenders = tenders.len(), first = ?tenders.first().map(|t| &t.slot), "tenders");
        let (reply, rx) = oneshot::channel();
        self.tx.send(Input::Tenders { tenders, reply }).await.map_err(|_| "the scheduler has stopped")?;
        let answers = rx.await.map_err(|_| "the scheduler dropped the tenders")?;
        serde_json::to_vec(&answers).map_err(|e| e.to_string())
    }
}

/// A pod of the state as the scheduler sees it.
#[derive(Debug)]
struct PodSlot {
    pod: Pod,
    node: String,
    scheduled: bool,
}

/// What the state and the failure detector say, read at once.
#[derive(Debug, Default)]
struct StateView {
    /// Alive hosts with a Node record, with their rendezvous hashes.
    hosts: Vec<(String, u64)>,
    dead: BTreeSet<String>,
    facts: BTreeMap<String, HostFacts>,
    peers: BTreeMap<String, PeerId>,
    requested: BTreeMap<String, Resources>,
    groups: BTreeMap<(String, String), u64>,
    placed: BTreeMap<String, String>,
    /// What each host runs, by slot.
    on: BTreeMap<String, BTreeMap<String, Placed>>,
    pods: BTreeMap<String, PodSlot>,
    /// The state's claims (`namespace/name`) and where each is bound.
    claims: BTreeMap<String, needs::ClaimState>,
    /// The pods of each claim (`namespace/name`): `(slot, host or "")`.
    claim_users: BTreeMap<String, Vec<(String, String)>>,
}

impl StateView {
    /// Where the pod of `slot` may go for its claims (`needs::claim_host`).
    fn claim_host(&self, slot: &str, claims: &[String]) -> Result<Option<String>, String> {
        if claims.is_empty() {
            return Ok(None);
        }
        let namespace = slot.split_once('/').map_or("default", |(ns, _)| ns);
        needs::claim_host(namespace, slot, claims, &self.claims, &self.claim_users)
    }
}

impl core::View<String> for StateView {
    fn hosts(&self) -> Vec<(String, u64)> {
        self.hosts.clone()
    }
    fn facts(&self, host: &String) -> Option<&HostFacts> {
        self.facts.get(host)
    }
    fn requested(&self, host: &String) -> Resources {
        self.requested.get(host).copied().unwrap_or_default()
    }
    fn group_on(&self, group: &str, host: &String) -> u64 {
        self.groups.get(&(group.to_owned(), host.clone())).copied().unwrap_or(0)
    }
    fn matching(&self, selector: &beemesh_state::sched::fit::Selector, host: &String) -> u64 {
        self.on
            .get(host)
            .map_or(0, |pods| pods.values().filter(|p| selector.matches(&p.labels)).count() as u64)
    }
    fn placed(&self, slot: &str) -> Option<String> {
        self.placed.get(slot).cloned()
    }
    fn lost_hosts(&self) -> Vec<String> {
        self.dead.iter().filter(|n| self.facts.contains_key(*n)).cloned().collect()
    }
}

/// The node names of `nodes` (Node records) whose host the failure detector holds dead.
pub fn dead_nodes(nodes: &[Listed], liveness: &Liveness) -> BTreeSet<String> {
    nodes_where(nodes, liveness, |l| matches!(l, beemesh_state::liveness::Liveness::Dead { .. }))
}

/// The node names of the Node records whose hosts the failure detector suspects or holds
/// dead: not heard from lately (within its suspicion time, 2.5 s).
pub fn unheard_nodes(nodes: &[Listed], liveness: &Liveness) -> BTreeSet<String> {
    nodes_where(nodes, liveness, |l| !matches!(l, beemesh_state::liveness::Liveness::Alive { .. }))
}

fn nodes_where(
    nodes: &[Listed],
    liveness: &Liveness,
    pick: impl Fn(&beemesh_state::liveness::Liveness) -> bool,
) -> BTreeSet<String> {
    nodes
        .iter()
        .filter_map(|l| {
            let v: Value = serde_json::from_slice(&l.body).ok()?;
            let peer: PeerId =
                v.pointer("/metadata/annotations")?.get(PEER_ID_ANNOTATION)?.as_str()?.parse().ok()?;
            liveness.status(&peer).is_some_and(|s| pick(&s)).then(|| l.key.name.clone())
        })
        .collect()
}

/// Whether a stored pod was placed by the mesh.
fn scheduled(pod: &Pod) -> bool {
    pod.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(SCHEDULED_ANNOTATION))
}

impl StateView {
    fn read(
        nodes: &[Listed],
        pods: &[Listed],
        statuses: &[Listed],
        claims: &[Listed],
        liveness: &Liveness,
    ) -> StateView {
        let mut v = StateView { dead: dead_nodes(nodes, liveness), ..StateView::default() };
        for l in nodes {
            let Ok(record) = serde_json::from_slice::<Value>(&l.body) else { continue };
            let name = l.key.name.clone();
            let peer = record
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(PEER_ID_ANNOTATION))
                .and_then(Value::as_str)
                .and_then(|p| p.parse::<PeerId>().ok());
            let (Some(facts), Some(peer)) = (needs::host_facts(&record), peer) else { continue };
            v.facts.insert(name.clone(), facts);
            v.peers.insert(name.clone(), peer);
            if !v.dead.contains(&name) {
                v.hosts.push((name.clone(), rank::hash_str(&name)));
            }
        }
        let reports = cpods::reports(statuses);
        for l in pods {
            let Ok(pod) = cpods::decode(&l.body) else { continue };
            let (node, uid) = cpods::placement(&pod);
            let (node, uid) = (node.to_owned(), uid.to_owned());
            let slot = needs::slot_of(&l.key.namespace, &l.key.name);
            let ended = reports.get(&uid).is_some_and(|r| {
                r.node == node
                    && matches!(
                        r.pod_status.get("phase").and_then(Value::as_str),
                        Some("Succeeded" | "Failed")
                    )
            });
            if !node.is_empty() && !ended {
                let p = needs::placed(&pod);
                let r = v.requested.entry(node.clone()).or_default();
                *r = r.plus(p.requests);
                *v.groups.entry((needs::group(&pod, &slot), node.clone())).or_default() += 1;
                v.on.entry(node.clone()).or_default().insert(slot.clone(), p);
                v.placed.insert(slot.clone(), node.clone());
            }
            let scheduled = scheduled(&pod);
            let host = if v.dead.contains(&node) { String::new() } else { node.clone() };
            for claim in needs::claims_of(&pod) {
                let key = format!("{}/{claim}", l.key.namespace);
                v.claim_users.entry(key).or_default().push((slot.clone(), host.clone()));
            }
            v.pods.insert(slot, PodSlot { pod, node, scheduled });
        }
        for l in claims {
            let Ok(record) = serde_json::from_slice::<Value>(&l.body) else { continue };
            let bound =
                record["metadata"]["annotations"][super::controllers::stateful::SELECTED_NODE].as_str();
            let state = match bound {
                Some(host) => needs::ClaimState::Bound(host.to_owned()),
                None => needs::ClaimState::Unbound,
            };
            v.claims.insert(format!("{}/{}", l.key.namespace, l.key.name), state);
        }
        v
    }
}

struct Task {
    me: String,
    tenderer: Tenderer<String>,
    bidder: Bidder,
    view: StateView,
    /// Slots this host tenders as their owner.
    tracked: BTreeSet<String>,
    /// `apply`s waiting for their slot's outcome.
    waiters: BTreeMap<String, (oneshot::Sender<Placement>, PodRef)>,
    /// The unschedulable message last written per slot.
    shown: BTreeMap<String, String>,
    epoch: Instant,
    events: Recorder,
    cluster: Cluster,
    client: MeshClient,
    liveness: Liveness,
    tx: mpsc::WeakSender<Input>,
}

impl Task {
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let mut pods = self.cluster.kind_changes(POD);
        let mut nodes = self.cluster.kind_changes(super::nodes::KIND);
        let mut claims = self.cluster.kind_changes(CLAIM);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut read_at: Option<Instant> = None;
        loop {
            let mut dirty = false;
            tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => {
                        // A placement decides on the latest state (an apply's earlier pods).
                        let changed = pods.has_changed().unwrap_or(false)
                            || nodes.has_changed().unwrap_or(false)
                            || claims.has_changed().unwrap_or(false);
                        if matches!(input, Input::Place { .. }) && (changed || read_at.is_none()) {
                            pods.mark_unchanged();
                            nodes.mark_unchanged();
                            claims.mark_unchanged();
                            if self.read().await.is_ok() {
                                read_at = Some(Instant::now());
                            }
                        }
                        let outs = self.on_input(input);
                        self.carry(outs);
                    }
                    None => break,
                },
                changed = pods.changed() => { if changed.is_err() { break } dirty = true; }
                changed = claims.changed() => { if changed.is_err() { break } dirty = true; }
                changed = nodes.changed() => {
                    if changed.is_err() { break }
                    dirty = true;
                    let now = self.now();
                    self.tenderer.poke(now);
                }
                _ = tick.tick() => {}
            }
            if dirty || read_at.is_none_or(|t| t.elapsed() >= REFRESH) {
                match self.read().await {
                    Ok(()) => read_at = Some(Instant::now()),
                    Err(e) => warn!(error = %e, "scheduler could not read the cluster state"),
                }
                let outs = self.duties();
                self.carry(outs);
            }
            let now = self.now();
            let outs = self.tenderer.tick(now, &self.view);
            self.carry(outs);
        }
        debug!("scheduler ended");
    }

    async fn read(&mut self) -> Result<(), String> {
        let (_, items) = self
            .cluster
            .snapshot(&[super::nodes::KIND, POD, POD_STATUS, CLAIM])
            .await
            .map_err(|e| e.to_string())?;
        let (mut nodes, mut pods, mut statuses, mut claims) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for l in items {
            match l.key.kind.as_str() {
                POD => pods.push(l),
                POD_STATUS => statuses.push(l),
                CLAIM => claims.push(l),
                _ => nodes.push(l),
            }
        }
        self.view = StateView::read(&nodes, &pods, &statuses, &claims, &self.liveness);
        let placed = &self.view.placed;
        self.bidder.release(|slot| placed.contains_key(slot));
        Ok(())
    }

    /// The slots of the state that need a host and are this host's to tender.
    fn duties(&mut self) -> Vec<Out<String>> {
        let now = self.now();
        let mut outs = Vec::new();
        let mut wanted = BTreeSet::new();
        let heal = core::may_heal(self.view.hosts.len(), self.view.facts.len());
        for (slot, p) in &self.view.pods {
            // A pod with a claim's local volume waits for its host: its data is there. A Job's
            // pod is never moved: it may have run already; its Job counts it failed and
            // makes another.
            let lost = heal
                && p.scheduled
                && self.view.dead.contains(&p.node)
                && !needs::uses_claims(&p.pod)
                && !needs::run_by_job(&p.pod);
            if !(p.node.is_empty() || lost) {
                continue;
            }
            let mut req = needs::slot_req(&p.pod, slot);
            if core::owner(&self.view, &req.group).as_deref() != Some(self.me.as_str()) {
                continue;
            }
            match self.view.claim_host(slot, &needs::claims_of(&p.pod)) {
                Ok(Some(host)) => needs::pin(&mut req, &host),
                Ok(None) => {}
                Err(message) => {
                    // Not tendered until its claims allow; said once.
                    if self.shown.get(slot) != Some(&message) {
                        outs.push(Out::Pending { slot: slot.clone(), message });
                    }
                    continue;
                }
            }
            if lost && !self.tracked.contains(slot) {
                info!(pod = %slot, node = %p.node, "pod's host is lost; placing it again");
                let about = pod_involved(slot, p.pod.metadata.uid.as_deref());
                let message = format!("host {} is lost: tendering the pod again", p.node);
                self.events.warning(COMPONENT, &about, "NodeLost", message);
            }
            wanted.insert(slot.clone());
            outs.extend(self.tenderer.want(now, req, &self.view));
        }
        for slot in std::mem::take(&mut self.tracked) {
            if !wanted.contains(&slot) && !self.waiters.contains_key(&slot) {
                self.tenderer.forget(&slot);
                self.shown.remove(&slot);
            }
        }
        self.tracked = wanted;
        outs
    }

    fn on_input(&mut self, input: Input) -> Vec<Out<String>> {
        let now = self.now();
        match input {
            Input::Place { mut req, pod, reply } => {
                let slot = req.slot.clone();
                let host = self.view.claim_host(&slot, &pod.claims);
                self.waiters.insert(slot.clone(), (reply, pod));
                match host {
                    Ok(Some(host)) => needs::pin(&mut req, &host),
                    Ok(None) => {}
                    Err(message) => return vec![Out::Pending { slot, message }],
                }
                // A slot placed in this apply's own earlier write is tendered afresh.
                self.tenderer.forget(&slot);
                self.tenderer.want(now, *req, &self.view)
            }
            Input::Tenders { tenders, reply } => {
                let _ = reply.send(tenders.iter().map(|t| self.bid(now, t)).collect());
                Vec::new()
            }
            Input::Answered { from, answers } => {
                let mut outs = Vec::new();
                for (t, answer) in answers {
                    outs.extend(self.tenderer.answered(now, &from, &t.slot, t.attempt, answer, &self.view));
                }
                outs
            }
        }
    }

    fn bid(&mut self, now: u64, tender: &Tender) -> Answer {
        let Some(facts) = self.view.facts.get(&self.me) else {
            return Answer::Decline(core::Reason::NoAnswer);
        };
        let empty = BTreeMap::new();
        let here = self.view.on.get(&self.me).unwrap_or(&empty);
        self.bidder.answer(now, facts, here, tender)
    }

    /// Carries out what the tenderer asks, answering tenders to this host in place; tenders to
    /// one peer travel together.
    fn carry(&mut self, outs: Vec<Out<String>>) {
        let mut queue: VecDeque<Out<String>> = outs.into();
        let mut sends: BTreeMap<String, Vec<Tender>> = BTreeMap::new();
        while let Some(out) = queue.pop_front() {
            match out {
                Out::Tender { to, tender } if to == self.me => {
                    let now = self.now();
                    let answer = self.bid(now, &tender);
                    let me = self.me.clone();
                    queue.extend(self.tenderer.answered(
                        now,
                        &me,
                        &tender.slot,
                        tender.attempt,
                        answer,
                        &self.view,
                    ));
                }
                Out::Tender { to, tender } => sends.entry(to).or_default().push(tender),
                Out::Bind { slot, host, asked, bids } => {
                    self.shown.remove(&slot);
                    debug!(pod = %slot, node = %host, bids, "placed");
                    let pod = match self.waiters.remove(&slot) {
                        Some((w, pod)) => {
                            let _ = w.send(Placement::Bound(host.clone()));
                            pod
                        }
                        None => {
                            let held = self.view.pods.get(&slot);
                            let from = held.map(|p| p.node.clone()).unwrap_or_default();
                            // A pod placed again gets a new uid when it is written.
                            let pod = held.filter(|_| from.is_empty()).map(|p| PodRef::of(&p.pod));
                            tokio::spawn(bind(self.cluster.clone(), slot.clone(), host.clone(), from));
                            pod.unwrap_or_default()
                        }
                    };
                    self.placed_events(&slot, &host, asked, bids, &pod);
                }
                Out::Pending { slot, message } => {
                    let uid = match self.waiters.get(&slot) {
                        Some((_, pod)) => pod.uid.clone(),
                        None => self.view.pods.get(&slot).and_then(|p| p.pod.metadata.uid.clone()),
                    };
                    self.events.warning(
                        COMPONENT,
                        &pod_involved(&slot, uid.as_deref()),
                        "FailedScheduling",
                        &message,
                    );
                    if let Some((w, _)) = self.waiters.remove(&slot) {
                        let _ = w.send(Placement::Pending(message));
                        if !self.tracked.contains(&slot) {
                            // The pod is written unplaced; its owner tenders it from now on.
                            self.tenderer.forget(&slot);
                        }
                        continue;
                    }
                    if self.shown.get(&slot) != Some(&message) {
                        self.shown.insert(slot.clone(), message.clone());
                        tokio::spawn(unschedulable(self.cluster.clone(), slot, message));
                    }
                }
            }
        }
        for (to, tenders) in sends {
            for chunk in tenders.chunks(BATCH) {
                self.send_tenders(to.clone(), chunk.to_vec());
            }
        }
    }

    /// `Scheduled` (and `SchedulerName` for a pod naming another scheduler).
    fn placed_events(&self, slot: &str, host: &str, asked: usize, bids: usize, pod: &PodRef) {
        let about = pod_involved(slot, pod.uid.as_deref());
        let message =
            format!("Successfully assigned {slot} to {host} (tendered to {asked} hosts, {bids} bid)");
        self.events.normal(COMPONENT, &about, "Scheduled", message);
        if let Some(name) = pod.scheduler_name.as_deref().filter(|n| *n != DEFAULT_SCHEDULER) {
            let message = format!(
                "schedulerName {name:?} is not a scheduler of this mesh: the mesh's tender and bid placed the pod"
            );
            self.events.normal(COMPONENT, &about, "SchedulerName", message);
        }
    }

    fn send_tenders(&self, to: String, tenders: Vec<Tender>) {
        let (Some(peer), Some(tx)) = (self.view.peers.get(&to).copied(), self.tx.upgrade()) else { return };
        let client = self.client.clone();
        tokio::spawn(async move {
            let body = serde_json::to_vec(&tenders).unwrap_or_default();
            let answers = match client.request(peer, REQUEST_KIND, body).await {
                Ok(MeshResponse::App(bytes)) => match serde_json::from_slice::<Vec<Answer>>(&bytes) {
                    Ok(a) if a.len() == tenders.len() => Some(a),
                    _ => {
                        debug!(node = %to, "tenders answered with a malformed list");
                        None
                    }
                },
                Ok(other) => {
                    debug!(node = %to, answer = ?other, "tenders not answered");
                    None
                }
                Err(e) => {
                    debug!(node = %to, error = %e, "tenders not delivered");
                    None
                }
            };
            if let Some(answers) = answers {
                let answers = tenders.into_iter().zip(answers).collect();
                let _ = tx.send(Input::Answered { from: to, answers }).await;
            }
        });
    }
}

fn split(slot: &str) -> Option<(&str, &str)> {
    slot.split_once('/')
}

/// The pod of `slot` (`namespace/name`) as an event's object.
fn pod_involved(slot: &str, uid: Option<&str>) -> Involved {
    let (namespace, name) = split(slot).unwrap_or(("default", slot));
    Involved::pod(namespace, name, uid)
}

/// Reads the slot's pod and applies `change` to it, writing it back when it returns true.
async fn rewrite(cluster: &Cluster, slot: &str, change: impl FnOnce(&mut Pod) -> bool) {
    let Some((namespace, name)) = split(slot) else { return };
    let key: Key = cpods::pod_key(namespace, name);
    let Ok(Some(body)) = cluster.get(key.clone()).await else { return };
    let Ok(mut pod) = cpods::decode(&body) else { return };
    if !change(&mut pod) {
        return;
    }
    let body = Bytes::from(serde_json::to_vec(&pod).unwrap_or_default());
    if let Err(e) = cluster.put(key, Some(body)) {
        warn!(pod = %slot, error = %e, "scheduler's write failed");
    }
}

/// Writes a binding: the pod's `nodeName`, unless it was placed elsewhere meanwhile (`from`:
/// where the decision saw it, empty for unplaced). A pod moved off a lost host is a new pod
/// (a new uid) on its new host.
async fn bind(cluster: Cluster, slot: String, host: String, from: String) {
    rewrite(&cluster, &slot, |pod| {
        if cpods::placement(pod).0 != from {
            return false;
        }
        if !from.is_empty() {
            pod.metadata.uid = Some(super::apply::new_uid());
            info!(pod = %slot, from = %from, to = %host, "pod placed again");
        }
        mark_bound(pod, &host);
        true
    })
    .await;
}

/// Sets `pod`'s node as the mesh's placement.
pub fn mark_bound(pod: &mut Pod, host: &str) {
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = Some(host.to_owned());
    }
    let a = pod.metadata.annotations.get_or_insert_with(Default::default);
    a.insert(SCHEDULED_ANNOTATION.into(), "mesh".into());
    a.remove(UNSCHEDULABLE_ANNOTATION);
}

/// Marks `pod` as waiting for a host, saying why.
pub fn mark_unschedulable(pod: &mut Pod, message: &str) {
    let a = pod.metadata.annotations.get_or_insert_with(Default::default);
    a.insert(UNSCHEDULABLE_ANNOTATION.into(), message.to_owned());
}

async fn unschedulable(cluster: Cluster, slot: String, message: String) {
    rewrite(&cluster, &slot, |pod| {
        let unplaced = cpods::placement(pod).0.is_empty();
        let shown = pod.metadata.annotations.as_ref().and_then(|a| a.get(UNSCHEDULABLE_ANNOTATION));
        if !unplaced || shown == Some(&message) {
            return false;
        }
        info!(pod = %slot, %message, "pod unschedulable");
        mark_unschedulable(pod, &message);
        true
    })
    .await;
}
