//! One detector driven by hand: assignments, refutation, a dead host returning, bad input.

use super::*;

fn detectors(n: u32, now: u64) -> Vec<Detector<u32>> {
    let members: Vec<u32> = (0..n).collect();
    (0..n)
        .map(|h| {
            let mut d =
                Detector::new(LivenessConfig { seed: u64::from(h), ..LivenessConfig::default() }, h, now);
            d.set_members(now, &members);
            d
        })
        .collect()
}

/// Ticks `d` every 100 ms (as the agent does) after `from` up to `to`; everything it output.
fn run(d: &mut Detector<u32>, from: u64, to: u64) -> Vec<LiveOutput<u32>> {
    (from / 100 + 1..=to / 100).flat_map(|t| d.tick(t * 100)).collect()
}

#[test]
fn every_host_agrees_who_watches_whom() {
    let ds = detectors(20, 1_000);
    for d in &ds {
        assert_eq!(d.watchers().len(), 3);
        assert_eq!(d.watched().count(), 3);
        for w in d.watchers() {
            assert!(ds[*w as usize].watched().any(|p| p == d.me()), "{w} does not watch {}", d.me());
        }
    }
    // Tiny meshes: everyone watches everyone else.
    let ds = detectors(2, 1_000);
    assert_eq!(ds[0].watchers(), &[1]);
    assert_eq!(ds[1].watched().copied().collect::<Vec<_>>(), vec![0]);
}

#[test]
fn silence_leads_to_suspicion_probe_and_a_lone_verdict() {
    let mut ds = detectors(5, 0);
    let watcher = ds[0].watched().copied().next().expect("watches someone");
    let d = &mut ds[0];
    assert!(matches!(d.status(&watcher), Some(Liveness::Alive { last_heard_ms: Some(0) })));
    let out = run(d, 0, 2_500);
    assert!(out.contains(&LiveOutput::Send { to: watcher, msg: LiveMsg::Probe }), "{out:?}");
    assert!(out.iter().any(
        |o| matches!(o, LiveOutput::Send { msg: LiveMsg::Suspect { target, .. }, .. } if *target == watcher)
    ));
    assert_eq!(d.status(&watcher), Some(Liveness::Suspect { since_ms: 2_500 }));
    // No other watcher confirms: no verdict at quorum time...
    assert!(!run(d, 2_500, 3_100).iter().any(|o| matches!(o, LiveOutput::Down(_))));
    // ... but one once the suspicion is old enough.
    let out = run(d, 3_100, 5_500);
    assert!(out.contains(&LiveOutput::Down(watcher)), "{out:?}");
    assert!(out
        .iter()
        .any(|o| matches!(o, LiveOutput::Broadcast(LiveMsg::Dead { target, .. }) if *target == watcher)));
    assert_eq!(d.status(&watcher), Some(Liveness::Dead { since_ms: 5_500 }));
    // Nobody heartbeats to this lone detector: all three hosts it watches went the same way.
    assert_eq!(d.stats().verdicts, 3);
}

#[test]
fn a_second_watcher_confirms_sooner_and_a_heartbeat_clears() {
    let mut ds = detectors(8, 0);
    let target = 3u32;
    let watchers = ds[target as usize].watchers().to_vec();
    let (a, b) = (watchers[0], watchers[1]);
    let d = &mut ds[a as usize];
    run(d, 0, 2_500);
    assert_eq!(d.status(&target), Some(Liveness::Suspect { since_ms: 2_500 }));
    // b says it hears nothing either: the verdict comes at the probe wait.
    d.handle(2_510, b, LiveMsg::Suspect { target, incarnation: 0 });
    let out = run(d, 2_500, 3_000);
    assert!(out.contains(&LiveOutput::Down(target)), "{out:?}");
    // Another watcher, which heard it just now, answers a suspicion with Heard.
    let c = &mut ds[watchers[2] as usize];
    c.handle(2_500, target, LiveMsg::Heartbeat { incarnation: 0, digest: 0 });
    let out = c.handle(2_610, a, LiveMsg::Suspect { target, incarnation: 0 });
    assert_eq!(out, vec![LiveOutput::Send { to: a, msg: LiveMsg::Heard { target, incarnation: 0 } }]);
}

#[test]
fn a_host_that_did_not_run_does_not_blame_those_it_watches() {
    let mut ds = detectors(5, 0);
    let watched: Vec<u32> = ds[0].watched().copied().collect();
    let d = &mut ds[0];
    run(d, 0, 1_000);
    // Not ticked for 4 s (starved of CPU): the hosts it watches are not suspected for it...
    let out = d.tick(5_000);
    assert_eq!(out.first(), Some(&LiveOutput::Stalled(4_000)), "{out:?}");
    assert!(!out.iter().any(|o| matches!(o, LiveOutput::Send { msg: LiveMsg::Probe, .. })), "{out:?}");
    assert_eq!(d.stats().stalls, 1);
    // ... and what waited in its queue (heartbeats of two of them) is read first.
    d.handle(5_010, watched[0], LiveMsg::Heartbeat { incarnation: 0, digest: 0 });
    d.handle(5_010, watched[1], LiveMsg::Heartbeat { incarnation: 0, digest: 0 });
    // The silent third is suspected once its silence, stall not counted, is long enough:
    // 1 s before the stall and 1.5 s after it.
    assert!(!run(d, 5_000, 6_400).iter().any(|o| matches!(o, LiveOutput::Send { msg: LiveMsg::Probe, .. })));
    let out = run(d, 6_400, 6_500);
    assert!(out.contains(&LiveOutput::Send { to: watched[2], msg: LiveMsg::Probe }), "{out:?}");
    assert_eq!(d.status(&watched[2]), Some(Liveness::Suspect { since_ms: 6_500 }));
    for w in &watched[..2] {
        assert!(matches!(d.status(w), Some(Liveness::Alive { .. })), "{w}: {:?}", d.status(w));
    }
    // A suspicion in progress is not turned into a verdict by a stall either.
    let out = d.tick(9_500);
    assert!(!out.iter().any(|o| matches!(o, LiveOutput::Down(_))), "{out:?}");
    assert_eq!(d.status(&watched[2]), Some(Liveness::Suspect { since_ms: 9_500 }));
    // Ticking again, the lone verdict comes 3 s after the suspicion (stall not counted).
    assert!(!run(d, 9_500, 12_400).iter().any(|o| matches!(o, LiveOutput::Down(_))));
    assert!(run(d, 12_400, 12_500).contains(&LiveOutput::Down(watched[2])));
}

#[test]
fn a_host_declared_dead_refutes_and_returns() {
    let mut ds = detectors(6, 100);
    let out = ds[1].handle(200, 2, LiveMsg::Dead { target: 1, incarnation: 100 });
    // Past the verdict's incarnation, and never behind the clock (a restart outranks it too).
    assert_eq!(ds[1].incarnation(), 200);
    assert_eq!(out, vec![LiveOutput::Broadcast(LiveMsg::Alive { target: 1, incarnation: 200 })]);
    // Refutations are rate limited.
    assert!(ds[1].handle(250, 3, LiveMsg::Dead { target: 1, incarnation: 100 }).is_empty());
    let d = &mut ds[0];
    assert_eq!(d.handle(200, 2, LiveMsg::Dead { target: 1, incarnation: 100 }), vec![LiveOutput::Down(1)]);
    assert_eq!(d.status(&1), Some(Liveness::Dead { since_ms: 200 }));
    // A heartbeat at the verdict's incarnation is answered with the verdict...
    let out = d.handle(300, 1, LiveMsg::Heartbeat { incarnation: 100, digest: 0 });
    assert_eq!(out, vec![LiveOutput::Send { to: 1, msg: LiveMsg::Dead { target: 1, incarnation: 100 } }]);
    // ... and so is one at a higher incarnation (the host must tell everyone), which brings
    // it back here at once.
    let mut back = detectors(6, 100).remove(0);
    back.handle(200, 2, LiveMsg::Dead { target: 1, incarnation: 100 });
    let out = back.handle(300, 1, LiveMsg::Heartbeat { incarnation: 300, digest: 0 });
    let told = LiveOutput::Send { to: 1, msg: LiveMsg::Dead { target: 1, incarnation: 100 } };
    assert_eq!(out, vec![told, LiveOutput::Up(1)]);
    // A stale refutation changes nothing, a higher incarnation brings it back.
    assert!(d.handle(310, 2, LiveMsg::Alive { target: 1, incarnation: 100 }).is_empty());
    assert_eq!(d.handle(320, 2, LiveMsg::Alive { target: 1, incarnation: 200 }), vec![LiveOutput::Up(1)]);
    assert!(matches!(d.status(&1), Some(Liveness::Alive { .. })));
    // A late verdict about the old incarnation does not kill it again.
    assert!(d.handle(330, 3, LiveMsg::Dead { target: 1, incarnation: 100 }).is_empty());
    assert_eq!(d.digest(), 0);
}

#[test]
fn verdicts_are_exchanged_when_digests_differ() {
    let mut ds = detectors(6, 100);
    ds[0].handle(200, 2, LiveMsg::Dead { target: 4, incarnation: 100 });
    let digest = ds[0].digest();
    assert_ne!(digest, 0);
    let out = ds[0].handle(300, 1, LiveMsg::Heartbeat { incarnation: 100, digest: 0 });
    let LiveOutput::Send { to: 1, msg } = &out[0] else { panic!("{out:?}") };
    assert!(matches!(msg, LiveMsg::Verdicts { reply: true, .. }));
    let out = ds[1].handle(310, 0, msg.clone());
    assert_eq!(out, vec![LiveOutput::Down(4)]);
    assert_eq!(ds[1].digest(), digest);
    // Rate limited per peer.
    assert!(ds[0].handle(400, 1, LiveMsg::Heartbeat { incarnation: 100, digest: 0 }).is_empty());
}

#[test]
fn strangers_and_garbage_change_nothing() {
    let mut ds = detectors(4, 100);
    let d = &mut ds[0];
    assert!(d.handle(200, 99, LiveMsg::Dead { target: 1, incarnation: 500 }).is_empty());
    assert!(d.handle(200, 2, LiveMsg::Dead { target: 99, incarnation: 500 }).is_empty());
    assert_eq!(d.status(&99), None);
    assert!(matches!(d.handle_bytes(200, 2, &[0xff, 0xff]), Err(LivenessError::Msg(_))));
    assert_eq!(d.stats().rejected, 1);
    assert_eq!(d.stats().ignored, 2);
    let bytes = LiveMsg::Dead { target: 1u32, incarnation: 500 }.encode().expect("encodes");
    assert_eq!(d.handle_bytes(200, 2, &bytes).expect("decodes"), vec![LiveOutput::Down(1)]);
    // A member list without a host forgets what was held about it.
    d.set_members(300, &[0, 2, 3]);
    assert_eq!(d.status(&1), None);
    assert_eq!(d.digest(), 0);
}
