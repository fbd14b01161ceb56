use std::collections::BTreeMap;

use super::fit::{Effect, Op, Requirement, Selector, Taint, Toleration};
use super::*;

const GI: u64 = 1 << 30;

fn res(cpu_millis: u64, memory_gi: u64) -> Resources {
    Resources { cpu_millis, memory_bytes: memory_gi * GI, pods: 1 }
}

fn host(cpu: u64, mem_gi: u64) -> HostFacts {
    HostFacts {
        allocatable: Resources { cpu_millis: cpu, memory_bytes: mem_gi * GI, pods: 110 },
        ..HostFacts::default()
    }
}

fn needs(cpu: u64, mem_gi: u64) -> Needs {
    Needs { requests: res(cpu, mem_gi), ..Needs::default() }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn req(key: &str, op: Op, values: &[&str]) -> Requirement {
    Requirement { key: key.into(), op, values: values.iter().map(|v| v.to_string()).collect() }
}

#[test]
fn the_pipeline_declines_with_kubernetes_reasons() {
    let h = HostFacts {
        labels: labels(&[("zone", "a"), ("cores", "8")]),
        taints: vec![Taint { key: "gpu".into(), value: "true".into(), effect: Effect::NoSchedule }],
        ..host(2000, 4)
    };
    let tolerate = Toleration { key: "gpu".into(), exists: true, value: String::new(), effect: None };
    let ok = Needs { tolerations: vec![tolerate.clone()], ..needs(500, 1) };
    assert!(fit::fit(&ok, &h, &[]).is_ok());
    assert_eq!(fit::fit(&needs(500, 1), &h, &[]), Err(Reason::Taint("gpu: true".into())));
    assert_eq!(
        fit::fit(&Needs { tolerations: vec![tolerate.clone()], ..needs(3000, 1) }, &h, &[]),
        Err(Reason::InsufficientCpu)
    );
    let busy = Placed { requests: res(1000, 3), ..Placed::default() };
    assert_eq!(fit::fit(&ok, &h, &[&busy, &busy]), Err(Reason::InsufficientCpu));
    let big = Placed {
        requests: Resources { cpu_millis: 0, memory_bytes: 3 * GI + 1, pods: 1 },
        ..Placed::default()
    };
    assert_eq!(fit::fit(&ok, &h, &[&big]), Err(Reason::InsufficientMemory));
    let sel = |r: Requirement| Needs { node_affinity: vec![Selector(vec![r])], ..ok.clone() };
    assert!(fit::fit(&sel(req("zone", Op::In, &["a", "b"])), &h, &[]).is_ok());
    assert_eq!(fit::fit(&sel(req("zone", Op::NotIn, &["a"])), &h, &[]), Err(Reason::NodeAffinity));
    assert!(fit::fit(&sel(req("cores", Op::Gt, &["4"])), &h, &[]).is_ok());
    assert_eq!(fit::fit(&sel(req("cores", Op::Lt, &["4"])), &h, &[]), Err(Reason::NodeAffinity));
    assert_eq!(fit::fit(&sel(req("ssd", Op::Exists, &[])), &h, &[]), Err(Reason::NodeAffinity));
    // Anti-affinity both ways, affinity.
    let web = Placed { requests: res(0, 0), labels: labels(&[("app", "web")]), ..Placed::default() };
    let not_beside_web =
        Needs { pod_anti_affinity: vec![Selector(vec![req("app", Op::In, &["web"])])], ..ok.clone() };
    assert_eq!(fit::fit(&not_beside_web, &h, &[&web]), Err(Reason::PodAntiAffinity));
    let loner = Placed { anti: vec![Selector(vec![req("app", Op::Exists, &[])])], ..Placed::default() };
    let labelled = Needs { labels: labels(&[("app", "db")]), ..ok.clone() };
    assert_eq!(fit::fit(&labelled, &h, &[&loner]), Err(Reason::PodAntiAffinity));
    let beside_web = Needs { pod_affinity: vec![Selector(vec![req("app", Op::In, &["web"])])], ..ok.clone() };
    assert_eq!(fit::fit(&beside_web, &h, &[]), Err(Reason::PodAffinity));
    assert!(fit::fit(&beside_web, &h, &[&web]).is_ok());
    // Emptier hosts score higher.
    assert!(fit::fit(&ok, &h, &[]).expect("fits") > fit::fit(&ok, &h, &[&busy]).expect("fits"));
}

fn tender(slot: &str, n: Needs) -> Tender {
    Tender { slot: slot.into(), attempt: 1, needs: Box::new(n) }
}

#[test]
fn a_bidder_never_promises_beyond_its_capacity_and_promises_lapse() {
    let cfg = SchedConfig::default();
    let mut b = Bidder::new(&cfg);
    let h = host(1000, 8);
    let none = BTreeMap::new();
    let mut bids = 0;
    for i in 0..10 {
        if matches!(b.answer(0, &h, &none, &tender(&format!("s{i}"), needs(300, 1))), Answer::Bid { .. }) {
            bids += 1;
        }
    }
    assert_eq!(bids, 3, "3 x 300m fit in 1000m, whatever arrives at once");
    assert_eq!(b.promised().cpu_millis, 900);
    // The same slot tendered again replaces its promise rather than adding one.
    assert!(matches!(b.answer(1, &h, &none, &tender("s0", needs(300, 1))), Answer::Bid { .. }));
    assert_eq!(b.promised().cpu_millis, 900);
    // s1 shows up placed here: counted once, as the pod.
    let placed: BTreeMap<String, Placed> =
        [("s1".to_string(), Placed { requests: res(300, 1), ..Placed::default() })].into();
    b.expire(2, &placed);
    assert_eq!(b.promised().cpu_millis, 600);
    assert_eq!(
        b.answer(3, &h, &placed, &tender("s9", needs(300, 1))),
        Answer::Decline(Reason::InsufficientCpu)
    );
    // Promises lapse: room again.
    assert!(matches!(
        b.answer(cfg.promise_ms + 2, &h, &placed, &tender("s9", needs(300, 1))),
        Answer::Bid { .. }
    ));
}

/// A view for tests: hosts h0.. with facts, and the pods placed.
#[derive(Default)]
struct TestView {
    hosts: Vec<(String, u64)>,
    facts: BTreeMap<String, HostFacts>,
    /// slot -> (host, group, requests)
    placed: BTreeMap<String, (String, String, Resources)>,
    /// Hosts held dead (not in `hosts`, still in `facts`).
    lost: Vec<String>,
}

impl TestView {
    fn new(n: usize, f: HostFacts) -> Self {
        let mut v = TestView::default();
        for i in 0..n {
            let name = format!("h{i}");
            v.hosts.push((name.clone(), rank::hash_str(&name)));
            v.facts.insert(name, f.clone());
        }
        v
    }
}

impl View<String> for TestView {
    fn hosts(&self) -> Vec<(String, u64)> {
        self.hosts.clone()
    }
    fn facts(&self, host: &String) -> Option<&HostFacts> {
        self.facts.get(host)
    }
    fn requested(&self, host: &String) -> Resources {
        self.placed
            .values()
            .filter(|(h, _, _)| h == host)
            .fold(Resources::default(), |a, (_, _, r)| a.plus(*r))
    }
    fn group_on(&self, group: &str, host: &String) -> u64 {
        self.placed.values().filter(|(h, g, _)| h == host && g == group).count() as u64
    }
    fn matching(&self, selector: &fit::Selector, host: &String) -> u64 {
        // A test pod's labels are `app: <group>`.
        let labels = |g: &str| BTreeMap::from([("app".to_string(), g.to_string())]);
        self.placed.values().filter(|(h, g, _)| h == host && selector.matches(&labels(g))).count() as u64
    }
    fn placed(&self, slot: &str) -> Option<String> {
        self.placed.get(slot).map(|(h, _, _)| h.clone())
    }
    fn lost_hosts(&self) -> Vec<String> {
        self.lost.clone()
    }
}

/// Runs one tender to the end with every candidate answering from `bidders`; returns the
/// binding or the pending message.
fn place(
    t: &mut Tenderer<String>,
    view: &TestView,
    bidders: &mut BTreeMap<String, Bidder>,
    r: SlotReq,
) -> Out<String> {
    let out = t.want(0, r, view);
    let mut last = None;
    for o in out {
        match o {
            Out::Tender { to, tender } => {
                let placed: BTreeMap<String, Placed> = view
                    .placed
                    .iter()
                    .filter(|(_, (h, _, _))| *h == to)
                    .map(|(s, (_, _, r))| (s.clone(), Placed { requests: *r, ..Placed::default() }))
                    .collect();
                let a = bidders.entry(to.clone()).or_default().answer(0, &view.facts[&to], &placed, &tender);
                last = t.answered(0, &to, &tender.slot, tender.attempt, a, view).into_iter().next().or(last);
            }
            other => return other,
        }
    }
    last.expect("every candidate answered: decided")
}

#[test]
fn six_replicas_on_five_hosts_put_at_most_two_on_any() {
    let mut view = TestView::new(5, host(4000, 16));
    let mut t = Tenderer::new(SchedConfig::default());
    let mut bidders = BTreeMap::new();
    for i in 0..6 {
        let slot = format!("default/web-{i}");
        let r = SlotReq {
            slot: slot.clone(),
            group: "default/web".into(),
            needs: needs(100, 1),
            max_skew: None,
            spread: Vec::new(),
        };
        match place(&mut t, &view, &mut bidders, r) {
            Out::Bind { host, bids, .. } => {
                assert_eq!(bids, 5);
                view.placed.insert(slot, (host, "default/web".into(), res(100, 1)));
            }
            other => panic!("{other:?}"),
        }
    }
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for (h, _, _) in view.placed.values() {
        *per.entry(h).or_default() += 1;
    }
    assert_eq!(per.len(), 5, "{per:?}");
    assert!(per.values().all(|n| *n <= 2), "{per:?}");
}

#[test]
fn nobody_fits_gives_pending_with_counted_reasons_then_backs_off() {
    let mut view = TestView::new(5, host(4000, 2));
    let gpu = Taint { key: "gpu".into(), value: "true".into(), effect: Effect::NoSchedule };
    for h in ["h0", "h1"] {
        let f = view.facts.get_mut(h).expect("host");
        f.taints.push(gpu.clone());
        f.allocatable.memory_bytes = 8 * GI;
    }
    view.facts.get_mut("h2").expect("host").allocatable.memory_bytes = 8 * GI;
    // h2 has the memory but is full.
    view.placed.insert("other".into(), ("h2".into(), "x".into(), res(0, 8)));
    let mut t = Tenderer::new(SchedConfig::default());
    let r = SlotReq {
        slot: "default/big".into(),
        group: "default/big".into(),
        needs: needs(100, 4),
        max_skew: None,
        spread: Vec::new(),
    };
    let mut bidders = BTreeMap::new();
    match place(&mut t, &view, &mut bidders, r.clone()) {
        Out::Pending { message, .. } => assert_eq!(
            message,
            "0/5 hosts are available: 3 Insufficient memory, 2 node(s) had untolerated taint {gpu: true}"
        ),
        other => panic!("{other:?}"),
    }
    // Waiting: not tendered again before the back-off (1 s), then again.
    assert!(t.tick(999, &view).is_empty());
    let out = t.tick(1000, &view);
    let [Out::Tender { to, tender }] = out.as_slice() else { panic!("{out:?}") };
    assert_eq!(to, "h2");
    let again = t.answered(
        1001,
        to,
        &tender.slot,
        tender.attempt,
        Answer::Decline(Reason::InsufficientMemory),
        &view,
    );
    assert!(matches!(again.as_slice(), [Out::Pending { .. }]));
    // Doubled: 2 s.
    assert!(t.tick(3000, &view).is_empty());
    // Room made: poked, tendered at the next tick, h3 among the candidates.
    view.facts.get_mut("h3").expect("host").allocatable.memory_bytes = 8 * GI;
    t.poke(3000);
    let out = t.tick(3000, &view);
    assert!(out.iter().any(|o| matches!(o, Out::Tender { to, .. } if to == "h3")), "{out:?}");
}

#[test]
fn silent_candidates_count_as_no_answer_and_bids_decide_at_the_deadline() {
    let view = TestView::new(3, host(4000, 16));
    let cfg = SchedConfig::default();
    let mut t = Tenderer::new(cfg.clone());
    let r = SlotReq {
        slot: "s".into(),
        group: "g".into(),
        needs: needs(100, 1),
        max_skew: None,
        spread: Vec::new(),
    };
    let out = t.want(0, r, &view);
    assert_eq!(out.len(), 3);
    let Out::Tender { tender, .. } = &out[0] else { panic!() };
    // Only h2 answers; a stale attempt and a host not asked are ignored.
    assert!(t
        .answered(5, &"h2".into(), "s", tender.attempt + 1, Answer::Bid { score: 90 }, &view)
        .is_empty());
    assert!(t.answered(5, &"h9".into(), "s", tender.attempt, Answer::Bid { score: 90 }, &view).is_empty());
    assert!(t.answered(5, &"h2".into(), "s", tender.attempt, Answer::Bid { score: 10 }, &view).is_empty());
    assert!(t.tick(cfg.bid_wait_ms - 1, &view).is_empty());
    // h1 and h3 could still beat a bid of 10: the tender waits for them twice more, then
    // decides on what it has.
    let w = cfg.bid_wait_ms;
    assert!(t.tick(w, &view).is_empty());
    assert!(t.tick(2 * w, &view).is_empty());
    assert_eq!(
        t.tick(3 * w, &view),
        vec![Out::Bind { slot: "s".into(), host: "h2".into(), asked: 3, bids: 1 }]
    );
}

#[test]
fn a_late_answer_from_a_candidate_that_could_win_is_waited_for() {
    let view = TestView::new(2, host(4000, 16));
    let cfg = SchedConfig::default();
    let mut t = Tenderer::new(cfg.clone());
    let r = SlotReq {
        slot: "s".into(),
        group: "g".into(),
        needs: needs(100, 1),
        max_skew: None,
        spread: Vec::new(),
    };
    let out = t.want(0, r, &view);
    let Out::Tender { tender, .. } = &out[0] else { panic!() };
    assert!(t.answered(5, &"h0".into(), "s", tender.attempt, Answer::Bid { score: 50 }, &view).is_empty());
    assert!(t.tick(cfg.bid_wait_ms, &view).is_empty(), "h1 could bid more than 50");
    let out = t.answered(
        cfg.bid_wait_ms + 300,
        &"h1".into(),
        "s",
        tender.attempt,
        Answer::Bid { score: 90 },
        &view,
    );
    assert_eq!(out, vec![Out::Bind { slot: "s".into(), host: "h1".into(), asked: 2, bids: 2 }]);
}

#[test]
fn the_award_is_the_same_whatever_order_the_bids_come_in() {
    let view = TestView::new(4, host(4000, 16));
    let answers = [("h0", 50), ("h1", 70), ("h2", 70), ("h3", 20)];
    let mut winners = std::collections::BTreeSet::new();
    for rot in 0..4 {
        let mut t = Tenderer::new(SchedConfig::default());
        let r = SlotReq {
            slot: "s".into(),
            group: "g".into(),
            needs: needs(100, 1),
            max_skew: None,
            spread: Vec::new(),
        };
        let Out::Tender { tender, .. } = t.want(0, r, &view).remove(0) else { panic!() };
        let mut got = Vec::new();
        for i in 0..4 {
            let (h, score) = answers[(i + rot) % 4];
            got.extend(t.answered(1, &h.to_string(), "s", tender.attempt, Answer::Bid { score }, &view));
        }
        winners.insert(format!("{got:?}"));
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert!(
        winners.iter().next().expect("one").contains("\"h1\""),
        "ties go to the lowest host: {winners:?}"
    );
}

#[test]
fn max_skew_refuses_hosts_ahead_of_the_least_loaded() {
    let mut view = TestView::new(3, host(4000, 16));
    for i in 0..2 {
        view.placed.insert(format!("w{i}"), ("h0".into(), "g".into(), res(1, 0)));
    }
    view.placed.insert("w2".into(), ("h1".into(), "g".into(), res(1, 0)));
    let mut t = Tenderer::new(SchedConfig { spread_weight: 0, ..SchedConfig::default() });
    let r = SlotReq {
        slot: "s".into(),
        group: "g".into(),
        needs: needs(100, 1),
        max_skew: Some(1),
        spread: Vec::new(),
    };
    let mut bidders = BTreeMap::new();
    // h0 has 2, h1 1, h2 0: only h2 keeps the skew within 1 (h1 would be 2 vs 0).
    match place(&mut t, &view, &mut bidders, r) {
        Out::Bind { host, .. } => assert_eq!(host, "h2"),
        other => panic!("{other:?}"),
    }
}

/// Five hosts, zones a (h0, h1, h2) and b (h3) and one without a zone (h4).
fn zoned_view() -> TestView {
    let mut view = TestView::new(5, host(4000, 16));
    for (h, zone) in [("h0", "a"), ("h1", "a"), ("h2", "a"), ("h3", "b")] {
        view.facts.get_mut(h).expect("host").labels.insert("topology.kubernetes.io/zone".into(), zone.into());
    }
    view
}

fn zone_spread(hard: bool) -> SlotReq {
    let spread = vec![Spread { key: "topology.kubernetes.io/zone".into(), max_skew: 1, hard }];
    SlotReq { slot: "s".into(), group: "g".into(), needs: needs(100, 1), max_skew: None, spread }
}

#[test]
fn a_hard_zone_spread_counts_pods_per_zone_and_refuses_hosts_without_the_zone() {
    let mut view = zoned_view();
    // Zone a holds one pod (on h0), zone b none: only h3 keeps the skew within 1, though h1
    // and h2 hold nothing themselves, and h4 has no zone at all.
    view.placed.insert("w0".into(), ("h0".into(), "g".into(), res(1, 0)));
    let mut t = Tenderer::new(SchedConfig { spread_weight: 0, ..SchedConfig::default() });
    match place(&mut t, &view, &mut BTreeMap::new(), zone_spread(true)) {
        Out::Bind { host, .. } => assert_eq!(host, "h3"),
        other => panic!("{other:?}"),
    }
    // Balanced (one each): any zoned host may take the next; h4 still may not.
    view.placed.insert("w1".into(), ("h3".into(), "g".into(), res(1, 0)));
    let mut t = Tenderer::new(SchedConfig { spread_weight: 0, ..SchedConfig::default() });
    match place(&mut t, &view, &mut BTreeMap::new(), zone_spread(true)) {
        Out::Bind { host, .. } => assert_ne!(host, "h4"),
        other => panic!("{other:?}"),
    }
    // Only the zoneless host can take it: refused, with Kubernetes' reason.
    let mut view = zoned_view();
    view.facts.get_mut("h4").expect("host").allocatable.cpu_millis = 4000;
    for h in ["h0", "h1", "h2", "h3"] {
        view.facts.get_mut(h).expect("host").allocatable.cpu_millis = 10;
    }
    let mut t = Tenderer::new(SchedConfig::default());
    match place(&mut t, &view, &mut BTreeMap::new(), zone_spread(true)) {
        Out::Pending { message, .. } => {
            assert!(message.contains("node(s) didn't match pod topology spread constraints"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_soft_zone_spread_prefers_the_emptier_zone_but_never_refuses() {
    let mut view = zoned_view();
    view.placed.insert("w0".into(), ("h0".into(), "g".into(), res(1, 0)));
    view.placed.insert("w1".into(), ("h1".into(), "g".into(), res(1, 0)));
    let mut t = Tenderer::new(SchedConfig::default());
    // h2 holds nothing but its zone holds 2; h3's zone none; h4 (no zone) none.
    match place(&mut t, &view, &mut BTreeMap::new(), zone_spread(false)) {
        Out::Bind { host, .. } => assert!(host == "h3" || host == "h4", "{host}"),
        other => panic!("{other:?}"),
    }
    // With only zone a's hosts left, it still places.
    view.facts.retain(|h, _| h != "h3" && h != "h4");
    view.hosts.retain(|(h, _)| h != "h3" && h != "h4");
    let mut t = Tenderer::new(SchedConfig::default());
    match place(&mut t, &view, &mut BTreeMap::new(), zone_spread(false)) {
        Out::Bind { host, .. } => assert_eq!(host, "h2", "the host with none of its own"),
        other => panic!("{other:?}"),
    }
}

/// A slot of group `g` (labels `app: g`) with one zone term over `app: other`.
fn zone_term(anti: bool, weight: Option<u32>) -> SlotReq {
    let selector = Selector(vec![req("app", Op::In, &["other"])]);
    let term = fit::DomainTerm { key: "topology.kubernetes.io/zone".into(), selector, anti, weight };
    let needs = Needs { domain_terms: vec![term], labels: labels(&[("app", "g")]), ..needs(100, 1) };
    SlotReq { slot: "s".into(), group: "g".into(), needs, max_skew: None, spread: Vec::new() }
}

#[test]
fn zone_affinity_terms_count_matching_pods_over_the_whole_zone() {
    let mut view = zoned_view();
    // A pod of `other` on h0 (zone a): h1 and h2 share its zone though they run nothing.
    view.placed.insert("o".into(), ("h0".into(), "other".into(), res(1, 0)));
    let cfg = || SchedConfig { spread_weight: 0, ..SchedConfig::default() };
    // Required anti-affinity: zone a is out; h3 (zone b) and h4 (no zone) remain.
    for _ in 0..3 {
        match place(&mut Tenderer::new(cfg()), &view, &mut BTreeMap::new(), zone_term(true, None)) {
            Out::Bind { host, .. } => assert!(host == "h3" || host == "h4", "{host}"),
            other => panic!("{other:?}"),
        }
    }
    // Required affinity: only zone a's hosts.
    match place(&mut Tenderer::new(cfg()), &view, &mut BTreeMap::new(), zone_term(false, None)) {
        Out::Bind { host, .. } => assert!(["h0", "h1", "h2"].contains(&host.as_str()), "{host}"),
        other => panic!("{other:?}"),
    }
    // Preferred anti-affinity: zone a loses its weight, so another zone wins.
    match place(&mut Tenderer::new(cfg()), &view, &mut BTreeMap::new(), zone_term(true, Some(100))) {
        Out::Bind { host, .. } => assert!(host == "h3" || host == "h4", "{host}"),
        other => panic!("{other:?}"),
    }
    // Required affinity to pods that run nowhere: Pending, with Kubernetes' reason.
    view.placed.clear();
    match place(&mut Tenderer::new(cfg()), &view, &mut BTreeMap::new(), zone_term(false, None)) {
        Out::Pending { message, .. } => {
            assert!(message.contains("didn't match pod affinity rules"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

/// A replica `name` of group `g` (labels `app: g`) that avoids the others per zone.
fn zone_replica(name: &str) -> SlotReq {
    let selector = Selector(vec![req("app", Op::In, &["g"])]);
    let term =
        fit::DomainTerm { key: "topology.kubernetes.io/zone".into(), selector, anti: true, weight: None };
    SlotReq {
        slot: name.into(),
        group: "g".into(),
        needs: Needs { domain_terms: vec![term], labels: labels(&[("app", "g")]), ..needs(100, 1) },
        max_skew: None,
        spread: Vec::new(),
    }
}

#[test]
fn zone_anti_affinity_among_replicas_counts_awards_not_yet_in_the_state() {
    // Replicas of `g` avoid each other per zone: the second is awarded before the state shows
    // the first, and still goes to the other zone.
    let mut view = zoned_view();
    view.facts.remove("h4");
    view.hosts.retain(|(h, _)| h != "h4");
    let mut t = Tenderer::new(SchedConfig::default());
    let zone = |h: &str| match h {
        "h0" | "h1" | "h2" => "a",
        "h3" => "b",
        _ => "",
    };
    let mut zones = Vec::new();
    for name in ["r0", "r1"] {
        match place(&mut t, &view, &mut BTreeMap::new(), zone_replica(name)) {
            Out::Bind { host, .. } => zones.push(zone(&host)),
            other => panic!("{other:?}"),
        }
    }
    assert_ne!(zones[0], zones[1]);
}

#[test]
fn a_lost_hosts_pod_keeps_its_zone_from_others_but_not_from_itself() {
    // Replicas of `g` avoid each other per zone; h2 (zone a) is lost with one, h3 (zone b)
    // runs another. A third replica waits: zone a is still the lost one's. The lost one,
    // tendered again, may go back to zone a.
    let mut view = zoned_view();
    for gone in ["h4", "h2"] {
        view.hosts.retain(|(h, _)| h != gone);
    }
    view.facts.remove("h4");
    view.lost.push("h2".into());
    view.placed.insert("lost".into(), ("h2".into(), "g".into(), res(100, 1)));
    view.placed.insert("b".into(), ("h3".into(), "g".into(), res(100, 1)));
    match place(&mut Tenderer::new(SchedConfig::default()), &view, &mut BTreeMap::new(), zone_replica("new"))
    {
        Out::Pending { message, .. } => {
            assert!(message.contains("didn't match pod anti-affinity rules"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match place(&mut Tenderer::new(SchedConfig::default()), &view, &mut BTreeMap::new(), zone_replica("lost"))
    {
        Out::Bind { host, .. } => assert!(host == "h0" || host == "h1", "{host}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn extended_resources_are_offered_per_host_and_counted_per_pod() {
    let dongle = |n: u64| BTreeMap::from([("example.com/dongle".to_string(), n)]);
    let wants = Needs { extended: dongle(1), ..needs(100, 1) };
    let bare = host(4000, 8);
    assert_eq!(fit::static_fit(&wants, &bare), Err(Reason::Insufficient("example.com/dongle".into())));
    assert_eq!(
        Reason::Insufficient("example.com/dongle".into()).to_string(),
        "Insufficient example.com/dongle"
    );
    let offers = HostFacts { extended: dongle(2), ..host(4000, 8) };
    assert!(fit::fit(&wants, &offers, &[]).is_ok());
    let holding = Placed { extended: dongle(1), ..Placed::default() };
    assert!(fit::fit(&wants, &offers, &[&holding]).is_ok());
    assert_eq!(
        fit::fit(&wants, &offers, &[&holding, &holding]),
        Err(Reason::Insufficient("example.com/dongle".into()))
    );
}
