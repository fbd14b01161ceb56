//! Decentralized scheduling, sans-IO (`docs/scheduling.md`): the [`Tenderer`] a workload's
//! owner runs for its slots that need a host (tender to candidates, collect bids, award by a
//! rule any host evaluates alike, back off when nobody fits), and the [`Bidder`] every host
//! runs (answer from its own free capacity, keep what it bid as a promise). Time is passed in;
//! the driver carries [`Out::Tender`]s as requests and their answers back, writes
//! [`Out::Bind`]ings into the cluster state and shows [`Out::Pending`] reasons. [`View`] is
//! what the driver knows from the state and the failure detector.

pub mod fit;
pub mod rank;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use fit::{HostFacts, Needs, Placed, Reason, Resources};

/// Settings every host should share.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedConfig {
    /// Hosts a tender goes to (all, when fewer).
    pub candidates: usize,
    /// How long a tenderer waits for answers.
    pub bid_wait_ms: u64,
    /// How long a bid's promise holds capacity unless the state shows the slot placed here.
    pub promise_ms: u64,
    /// Back-off of a slot nobody can take: first wait, and the cap it doubles to.
    pub retry_ms: u64,
    pub retry_max_ms: u64,
    /// Score taken off a bid per pod of the same workload the host already has.
    pub spread_weight: u32,
}

impl Default for SchedConfig {
    fn default() -> Self {
        SchedConfig {
            candidates: 16,
            bid_wait_ms: 1000,
            promise_ms: 5000,
            retry_ms: 1000,
            retry_max_ms: 30_000,
            spread_weight: 100,
        }
    }
}

/// A slot to place: one pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotReq {
    /// The pod's key in the state (`namespace/name`).
    pub slot: String,
    /// Its workload (spreading counts the workload's pods per host).
    pub group: String,
    pub needs: Needs,
    /// `topologySpreadConstraints` over hostnames with `DoNotSchedule`: the largest skew.
    pub max_skew: Option<u64>,
    /// `topologySpreadConstraints` over other node labels (zones, racks).
    #[serde(default)]
    pub spread: Vec<Spread>,
}

/// Spreading a workload's pods over the values of a node label (a topology domain per value,
/// as `topology.kubernetes.io/zone`): the award rule counts the workload's pods per domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spread {
    /// The node label.
    pub key: String,
    pub max_skew: u64,
    /// `DoNotSchedule`: a host whose domain would go more than `max_skew` above the least
    /// loaded eligible domain is refused, and so is a host without the label. Else
    /// (`ScheduleAnyway`) the domain's count only lowers the host's score.
    pub hard: bool,
}

/// The request a candidate answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tender {
    pub slot: String,
    pub attempt: u32,
    /// Boxed: a tender travels in messages and outputs that are mostly smaller.
    pub needs: Box<Needs>,
}

/// A candidate's answer: a bid (a promise) or why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Bid { score: u32 },
    Decline(Reason),
}

/// What the driver carries out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out<H> {
    /// Send `tender` to `to`; hand its answer to [`Tenderer::answered`].
    Tender { to: H, tender: Tender },
    /// Write the slot's pod with `spec.nodeName` = `host` (`asked` candidates, `bids` of
    /// them bid).
    Bind { slot: String, host: H, asked: usize, bids: usize },
    /// Nobody can take the slot now: show `message`; tried again later.
    Pending { slot: String, message: String },
}

/// What the driver knows: alive hosts with a Node record, and what the state places where.
pub trait View<H> {
    /// The alive hosts, each with its stable hash (`rank::hash_str` of its node name).
    fn hosts(&self) -> Vec<(H, u64)>;
    fn facts(&self, host: &H) -> Option<&HostFacts>;
    /// What the state places on `host` (requests summed).
    fn requested(&self, host: &H) -> Resources;
    /// How many pods of workload `group` the state places on `host`.
    fn group_on(&self, group: &str, host: &H) -> u64;
    /// How many pods the state places on `host` whose labels `selector` matches.
    fn matching(&self, selector: &fit::Selector, host: &H) -> u64;
    /// Where the state places `slot`, if anywhere.
    fn placed(&self, slot: &str) -> Option<H>;
    /// Hosts with a Node record that the failure detector holds dead. Their pods keep their
    /// topology domains for pod (anti-)affinity until placed again (Kubernetes counts a lost
    /// node's pods until they are deleted): else a pending pod could take the zone a lost
    /// pod holds, and the two would run side by side once the host returns.
    fn lost_hosts(&self) -> Vec<H> {
        Vec::new()
    }
}

/// The owner of a workload (its key hashed with `rank::hash_str`) in `view`.
pub fn owner<H: Clone, V: View<H>>(view: &V, workload: &str) -> Option<H> {
    let hosts = view.hosts();
    rank::owner(rank::hash_str(workload), hosts.iter().map(|(h, x)| (h, *x))).cloned()
}

/// Whether a host that sees `alive` of the `known` hosts (alive or held dead) may place the
/// pods of the hosts it lost again: only while it sees at least half of them. A side cut off
/// by a partition keeps what it runs and still places what was never placed, but leaves the
/// lost hosts' pods to the larger side: no copy of the mesh's pods piles onto a minority, and
/// the duplicates a heal must stop are only those of the cut-off hosts.
pub fn may_heal(alive: usize, known: usize) -> bool {
    alive * 2 >= known
}

/// A tender under way.
#[derive(Debug)]
struct Open<H> {
    req: SlotReq,
    attempt: u32,
    asked: BTreeSet<H>,
    /// The candidates in their rank for the slot, best first (ties of the award go to the
    /// first: equal hosts share the load instead of the lowest name taking it all).
    ranked: Vec<H>,
    bids: BTreeMap<H, u32>,
    declines: BTreeMap<H, Reason>,
    /// Why the hosts not asked could not be (their Node records alone decide it).
    unfit: BTreeMap<Reason, usize>,
    deadline_ms: u64,
    /// Times the deadline was pushed back for a silent candidate that could have won.
    extended: u32,
    /// How long to wait before the next tender if this one places nothing.
    delay_ms: u64,
}

/// How many times a tender waits `bid_wait_ms` more for silent candidates that could beat
/// every bid in (a loaded host answers late; deciding without it would pile pods on the
/// hosts that answered).
const EXTENSIONS: u32 = 2;

/// A slot nobody could take, waiting to be tendered again.
#[derive(Debug)]
struct Waiting {
    req: SlotReq,
    next_ms: u64,
    delay_ms: u64,
}

/// The tendering side of one host.
#[derive(Debug)]
pub struct Tenderer<H> {
    cfg: SchedConfig,
    attempts: u32,
    open: BTreeMap<String, Open<H>>,
    waiting: BTreeMap<String, Waiting>,
    /// This host's awards the state does not show yet: slot -> (group, host, until), counted
    /// for spreading and not tendered again until the state shows them or `promise_ms` passes.
    awarded: BTreeMap<String, (String, H, u64, BTreeMap<String, String>)>,
}

impl<H: Clone + Ord + std::fmt::Debug> Tenderer<H> {
    pub fn new(cfg: SchedConfig) -> Self {
        Tenderer {
            cfg,
            attempts: 0,
            open: BTreeMap::new(),
            waiting: BTreeMap::new(),
            awarded: BTreeMap::new(),
        }
    }

    /// Slots with a tender open or waiting.
    pub fn busy(&self) -> usize {
        self.open.len() + self.waiting.len()
    }

    /// `req`'s slot needs a host: tendered now unless a tender is open or waiting for it (then
    /// only its needs are updated).
    pub fn want<V: View<H>>(&mut self, now: u64, req: SlotReq, view: &V) -> Vec<Out<H>> {
        // Awarded and not yet visible: wait for the state, unless the winner is gone.
        if let Some((_, host, until, _)) = self.awarded.get(&req.slot) {
            if now < *until && view.hosts().iter().any(|(h, _)| h == host) {
                return Vec::new();
            }
            self.awarded.remove(&req.slot);
        }
        if let Some(o) = self.open.get_mut(&req.slot) {
            o.req = req;
            return Vec::new();
        }
        if let Some(w) = self.waiting.get_mut(&req.slot) {
            w.req = req;
            return Vec::new();
        }
        self.tender(now, req, self.cfg.retry_ms, view)
    }

    /// The slot is placed, deleted or no longer this host's to place.
    pub fn forget(&mut self, slot: &str) {
        self.open.remove(slot);
        self.waiting.remove(slot);
        self.awarded.remove(slot);
    }

    /// Room may have been made (a node record or a placement changed): waiting slots are
    /// tendered at the next tick.
    pub fn poke(&mut self, now: u64) {
        for w in self.waiting.values_mut() {
            w.next_ms = w.next_ms.min(now);
        }
    }

    /// A candidate's answer.
    pub fn answered<V: View<H>>(
        &mut self,
        now: u64,
        from: &H,
        slot: &str,
        attempt: u32,
        answer: Answer,
        view: &V,
    ) -> Vec<Out<H>> {
        let Some(o) = self.open.get_mut(slot) else { return Vec::new() };
        if o.attempt != attempt || !o.asked.contains(from) {
            return Vec::new();
        }
        match answer {
            Answer::Bid { score } => {
                o.declines.remove(from);
                o.bids.insert(from.clone(), score.min(100));
            }
            Answer::Decline(r) => {
                o.bids.remove(from);
                o.declines.insert(from.clone(), r);
            }
        }
        if o.bids.len() + o.declines.len() == o.asked.len() {
            return self.decide(now, slot, view);
        }
        Vec::new()
    }

    /// Deadlines and back-offs.
    pub fn tick<V: View<H>>(&mut self, now: u64, view: &V) -> Vec<Out<H>> {
        let mut out = Vec::new();
        let due: Vec<String> =
            self.open.iter().filter(|(_, o)| now >= o.deadline_ms).map(|(s, _)| s.clone()).collect();
        for slot in due {
            out.extend(self.decide(now, &slot, view));
        }
        let due: Vec<String> =
            self.waiting.iter().filter(|(_, w)| now >= w.next_ms).map(|(s, _)| s.clone()).collect();
        for slot in due {
            if let Some(w) = self.waiting.remove(&slot) {
                let delay = (w.delay_ms * 2).min(self.cfg.retry_max_ms);
                out.extend(self.tender(now, w.req, delay, view));
            }
        }
        // Awards the state shows need no more counting.
        self.awarded
            .retain(|slot, (_, host, until, _)| now < *until && view.placed(slot).as_ref() != Some(host));
        out
    }

    fn tender<V: View<H>>(&mut self, now: u64, req: SlotReq, next_delay: u64, view: &V) -> Vec<Out<H>> {
        let hosts = view.hosts();
        let key = rank::hash_str(&req.slot);
        let mut unfit: BTreeMap<Reason, usize> = BTreeMap::new();
        let mut fit = Vec::new();
        for (h, hh) in &hosts {
            let Some(facts) = view.facts(h) else { continue };
            match fit::static_fit(&req.needs, facts) {
                Ok(()) => {
                    let free = facts.allocatable.less(view.requested(h));
                    let share = |f: u64, t: u64| if t == 0 { 0.0 } else { f as f64 / t as f64 };
                    let w = (share(free.cpu_millis, facts.allocatable.cpu_millis)
                        + share(free.memory_bytes, facts.allocatable.memory_bytes))
                        / 2.0;
                    fit.push((h.clone(), *hh, w.max(0.01)));
                }
                Err(r) => *unfit.entry(r).or_default() += 1,
            }
        }
        if fit.is_empty() {
            let message = pending_message(hosts.len(), &unfit);
            self.waiting.insert(
                req.slot.clone(),
                Waiting { req: req.clone(), next_ms: now + next_delay, delay_ms: next_delay },
            );
            return vec![Out::Pending { slot: req.slot, message }];
        }
        let asked = rank::top_k(key, fit, self.cfg.candidates);
        self.attempts = self.attempts.wrapping_add(1);
        let attempt = self.attempts;
        let tender = Tender { slot: req.slot.clone(), attempt, needs: Box::new(req.needs.clone()) };
        let out = asked.iter().map(|h| Out::Tender { to: h.clone(), tender: tender.clone() }).collect();
        self.open.insert(
            req.slot.clone(),
            Open {
                req,
                attempt,
                asked: asked.iter().cloned().collect(),
                ranked: asked,
                bids: BTreeMap::new(),
                declines: BTreeMap::new(),
                unfit,
                deadline_ms: now + self.cfg.bid_wait_ms,
                extended: 0,
                delay_ms: next_delay,
            },
        );
        out
    }

    fn decide<V: View<H>>(&mut self, now: u64, slot: &str, view: &V) -> Vec<Out<H>> {
        let Some(o) = self.open.remove(slot) else { return Vec::new() };
        let delay = o.delay_ms;
        let mut unfit = o.unfit.clone();
        for h in &o.asked {
            if !o.bids.contains_key(h) {
                *unfit.entry(o.declines.get(h).cloned().unwrap_or(Reason::NoAnswer)).or_default() += 1;
            }
        }
        let count = |h: &H| -> u64 {
            let own =
                self.awarded.values().filter(|(g, at, _, _)| *g == o.req.group && at == h).count() as u64;
            view.group_on(&o.req.group, h) + own
        };
        // DoNotSchedule spreading: no host may get more than max_skew above the least loaded
        // eligible host.
        let floor = o.req.max_skew.map(|_| {
            view.hosts()
                .iter()
                .filter(|(h, _)| view.facts(h).is_some_and(|f| fit::static_fit(&o.req.needs, f).is_ok()))
                .map(|(h, _)| count(h))
                .min()
                .unwrap_or(0)
        });
        let domains: Vec<Domains> =
            o.req.spread.iter().map(|s| Domains::count(s, &o.req.needs, view, count)).collect();
        // Pods a selector matches on `h`: the state's and this tenderer's awards not yet in it.
        let matching = |sel: &fit::Selector, h: &H| -> u64 {
            let own = self.awarded.values().filter(|(_, at, _, l)| at == h && sel.matches(l)).count() as u64;
            view.matching(sel, h) + own
        };
        // Every host whose pods hold their domains: the alive ones and the lost ones. A pod
        // tendered again off a lost host does not count against itself there.
        let mut holders: Vec<H> = view.hosts().into_iter().map(|(h, _)| h).collect();
        holders.extend(view.lost_hosts());
        let was_on = view.placed(slot);
        let held = |sel: &fit::Selector, x: &H| -> u64 {
            let itself = was_on.as_ref() == Some(x) && sel.matches(&o.req.needs.labels);
            matching(sel, x).saturating_sub(u64::from(itself))
        };
        // A domain term's matching pods over the candidate's domain; `None` without the label.
        let in_domain = |t: &fit::DomainTerm, h: &H| -> Option<u64> {
            let domain = view.facts(h)?.labels.get(&t.key)?;
            let same =
                holders.iter().filter(|x| view.facts(x).and_then(|f| f.labels.get(&t.key)) == Some(domain));
            Some(same.map(|x| held(&t.selector, x)).sum())
        };
        let terms = &o.req.needs.domain_terms;
        // Required affinity to a group with no pod yet is met by its first pod, when the pod
        // matches its own term (as in Kubernetes).
        let first_of = |t: &fit::DomainTerm| {
            t.selector.matches(&o.req.needs.labels) && holders.iter().all(|x| held(&t.selector, x) == 0)
        };
        let refused_by_terms = |h: &H| -> Option<Reason> {
            for t in terms.iter().filter(|t| t.weight.is_none()) {
                let n = in_domain(t, h);
                if t.anti && n.is_some_and(|n| n > 0) {
                    return Some(Reason::PodAntiAffinity);
                }
                if !t.anti && n.is_none_or(|n| n == 0) && !first_of(t) {
                    return Some(Reason::PodAffinity);
                }
            }
            None
        };
        // The score a host loses to spreading: its own pods of the workload, and for each
        // soft constraint the pods of its domain; and what preferred domain terms add or take.
        let penalty = |h: &H| -> i64 {
            let preferred: i64 = terms
                .iter()
                .filter_map(|t| Some((t, t.weight?)))
                .filter(|(t, _)| in_domain(t, h).is_some_and(|n| n > 0))
                .map(|(t, w)| if t.anti { i64::from(w) } else { -i64::from(w) })
                .sum();
            let soft: u64 = o
                .req
                .spread
                .iter()
                .zip(&domains)
                .filter(|(s, _)| !s.hard)
                .map(|(s, d)| d.of(s, view, h).map_or(0, |(n, _)| n))
                .sum();
            i64::from(self.cfg.spread_weight) * (count(h) + soft) as i64 + preferred
        };
        let mut best: Option<(i64, &H)> = None;
        for (h, score) in o.ranked.iter().filter_map(|h| Some((h, o.bids.get(h)?))) {
            let n = count(h);
            if let (Some(skew), Some(floor)) = (o.req.max_skew, floor) {
                if n + 1 > floor + skew {
                    *unfit.entry(Reason::TopologySpread).or_default() += 1;
                    continue;
                }
            }
            let too_far = o.req.spread.iter().zip(&domains).filter(|(s, _)| s.hard).any(|(s, d)| {
                match d.of(s, view, h) {
                    Some((n, floor)) => n + 1 > floor + s.max_skew,
                    None => true,
                }
            });
            if too_far {
                *unfit.entry(Reason::TopologySpread).or_default() += 1;
                continue;
            }
            if let Some(reason) = refused_by_terms(h) {
                *unfit.entry(reason).or_default() += 1;
                continue;
            }
            let total = i64::from(*score) - penalty(h);
            // Ties to the better ranked: strictly greater replaces.
            if best.is_none_or(|(b, _)| total > b) {
                best = Some((total, h));
            }
        }
        // A candidate that has not answered and could beat the best bid (its best possible
        // score, less its spreading) is waited for a little longer.
        let silent_could_win =
            o.asked.iter().filter(|h| !o.bids.contains_key(*h) && !o.declines.contains_key(*h)).any(|h| {
                let could = 100 - penalty(h);
                best.is_none_or(|(b, _)| could > b)
            });
        if silent_could_win && o.extended < EXTENSIONS && best.is_some() {
            let mut o = o;
            o.extended += 1;
            o.deadline_ms = now + self.cfg.bid_wait_ms;
            self.open.insert(slot.to_owned(), o);
            return Vec::new();
        }
        match best {
            Some((_, h)) => {
                let host = h.clone();
                let until = now + self.cfg.promise_ms;
                let labels = o.req.needs.labels.clone();
                self.awarded.insert(slot.to_owned(), (o.req.group.clone(), host.clone(), until, labels));
                vec![Out::Bind { slot: slot.to_owned(), host, asked: o.asked.len(), bids: o.bids.len() }]
            }
            None => {
                let total = view.hosts().len();
                let message = pending_message(total, &unfit);
                let slot = o.req.slot.clone();
                self.waiting
                    .insert(slot.clone(), Waiting { req: o.req, next_ms: now + delay, delay_ms: delay });
                vec![Out::Pending { slot, message }]
            }
        }
    }
}

/// `0/5 hosts are available: 3 Insufficient memory, 2 node(s) had untolerated taint {..}`.
pub fn pending_message(hosts: usize, reasons: &BTreeMap<Reason, usize>) -> String {
    let mut parts: Vec<(usize, String)> = reasons.iter().map(|(r, n)| (*n, r.to_string())).collect();
    parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let listed: Vec<String> = parts.into_iter().map(|(n, r)| format!("{n} {r}")).collect();
    if listed.is_empty() {
        format!("0/{hosts} hosts are available")
    } else {
        format!("0/{hosts} hosts are available: {}", listed.join(", "))
    }
}

/// A promise: capacity a bid holds.
#[derive(Debug)]
struct Promise {
    placed: Placed,
    until_ms: u64,
}

/// The bidding side of one host.
#[derive(Debug, Default)]
pub struct Bidder {
    promise_ms: u64,
    promises: BTreeMap<String, Promise>,
    /// When the earliest promise lapses (none before it: no need to look).
    next_lapse_ms: u64,
}

impl Bidder {
    pub fn new(cfg: &SchedConfig) -> Self {
        Bidder { promise_ms: cfg.promise_ms, promises: BTreeMap::new(), next_lapse_ms: u64::MAX }
    }

    /// Answers `tender` from `facts` and the pods the state places here (`placed`, by slot),
    /// counting the promises of earlier bids; a bid is kept as a promise. A tender again for a
    /// slot replaces its promise.
    pub fn answer(
        &mut self,
        now: u64,
        facts: &HostFacts,
        placed: &BTreeMap<String, Placed>,
        tender: &Tender,
    ) -> Answer {
        // Lapsed promises go; those of slots placed here are the driver's to drop
        // (`release`, `settled`): until it does, such a pod counts twice, never too little.
        if now >= self.next_lapse_ms {
            self.promises.retain(|_, p| p.until_ms > now);
            self.next_lapse_ms = self.promises.values().map(|p| p.until_ms).min().unwrap_or(u64::MAX);
        }
        self.promises.remove(&tender.slot);
        if placed.contains_key(&tender.slot) {
            // Already ours: bid without counting it twice.
            return Answer::Bid { score: 100 };
        }
        let all: Vec<&Placed> = placed.values().chain(self.promises.values().map(|p| &p.placed)).collect();
        match fit::fit(&tender.needs, facts, &all) {
            Ok(score) => {
                let placed = Placed {
                    requests: tender.needs.requests,
                    labels: tender.needs.labels.clone(),
                    anti: tender.needs.pod_anti_affinity.clone(),
                    extended: tender.needs.extended.clone(),
                };
                let until_ms = now + self.promise_ms;
                self.next_lapse_ms = self.next_lapse_ms.min(until_ms);
                self.promises.insert(tender.slot.clone(), Promise { placed, until_ms });
                Answer::Bid { score }
            }
            Err(r) => Answer::Decline(r),
        }
    }

    /// Drops lapsed promises and those the state now shows placed here.
    pub fn expire(&mut self, now: u64, placed: &BTreeMap<String, Placed>) {
        self.promises.retain(|slot, p| p.until_ms > now && !placed.contains_key(slot));
    }

    /// Drops the promises of slots the state shows placed anywhere: the bid won (the pod is
    /// counted as placed here) or lost (the capacity is free again).
    pub fn release(&mut self, placed: impl Fn(&str) -> bool) {
        self.promises.retain(|slot, _| !placed(slot));
    }

    /// The state shows `slot` placed (here or elsewhere): its promise, if any, is dropped.
    pub fn settled(&mut self, slot: &str) {
        self.promises.remove(slot);
    }

    /// What promises hold now.
    pub fn promised(&self) -> Resources {
        self.promises.values().fold(Resources::default(), |a, p| a.plus(p.placed.requests))
    }
}

/// A spread constraint's pods per domain (a value of its node label), and the least loaded
/// domain among those with a host the pod could run on.
struct Domains {
    counts: BTreeMap<String, u64>,
    floor: u64,
}

impl Domains {
    fn count<H, V: View<H>>(s: &Spread, needs: &fit::Needs, view: &V, count: impl Fn(&H) -> u64) -> Self {
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let mut eligible = BTreeSet::new();
        for (h, _) in view.hosts() {
            let Some(facts) = view.facts(&h) else { continue };
            let Some(domain) = facts.labels.get(&s.key) else { continue };
            *counts.entry(domain.clone()).or_default() += count(&h);
            if fit::static_fit(needs, facts).is_ok() {
                eligible.insert(domain.clone());
            }
        }
        let floor = eligible.iter().filter_map(|d| counts.get(d)).copied().min().unwrap_or(0);
        Domains { counts, floor }
    }

    /// The pods of `host`'s domain and the floor; `None` for a host without the label.
    fn of<H, V: View<H>>(&self, s: &Spread, view: &V, host: &H) -> Option<(u64, u64)> {
        let domain = view.facts(host)?.labels.get(&s.key)?;
        Some((self.counts.get(domain).copied().unwrap_or(0), self.floor))
    }
}
