//! Unit tests of one or two replicas, with messages carried by hand.

use super::*;
use crate::object::{Digest, Version};

const T0: u64 = 1_700_000_000_000;

fn replica(node: &str) -> Replica<&'static str> {
    Replica::new(Config { seed: node.len() as u64, ..Config::new(node) })
}

fn key(name: &str) -> Key {
    Key::new("ConfigMap", "default", name)
}

fn body(s: &str) -> Option<Bytes> {
    Some(Bytes::from(s.to_owned()))
}

/// Carries every `Send` between the named replicas (and broadcasts to all others) until
/// nothing is left; returns the acks seen.
fn settle(
    now: u64,
    nodes: &mut [(&'static str, &mut Replica<&'static str>)],
    mut queue: Vec<(&'static str, Output<&'static str>)>,
) -> Vec<(WriteId, Option<&'static str>)> {
    let mut acks = Vec::new();
    while let Some((from, out)) = queue.pop() {
        let deliveries: Vec<(&'static str, Msg)> = match out {
            Output::Send { to, msg } => vec![(to, msg)],
            Output::Broadcast(msg) => {
                nodes.iter().filter(|(n, _)| *n != from).map(|(n, _)| (*n, msg.clone())).collect()
            }
            Output::Acked { write, held_by } => {
                acks.push((write, held_by));
                vec![]
            }
            Output::Changed(_) | Output::Collected(_) => vec![],
        };
        for (to, msg) in deliveries {
            let (_, r) = nodes.iter_mut().find(|(n, _)| *n == to).expect("known node");
            let outs = r.handle(now, from, msg).expect("valid message");
            queue.extend(outs.into_iter().map(|o| (to, o)));
        }
    }
    acks
}

fn tagged(from: &'static str, outs: Vec<Output<&'static str>>) -> Vec<(&'static str, Output<&'static str>)> {
    outs.into_iter().map(|o| (from, o)).collect()
}

#[test]
fn a_write_with_no_peers_is_held_here_only() {
    let mut a = replica("a");
    let (id, out) = a.write(T0, key("c"), body("{}")).expect("write");
    assert!(out.contains(&Output::Acked { write: id, held_by: None }));
    assert!(out.contains(&Output::Changed(key("c"))));
    assert_eq!(a.get(&key("c")), body("{}").as_ref());
    assert_eq!(a.list("ConfigMap", Some("default")).count(), 1);
    assert_eq!(a.list("ConfigMap", Some("other")).count(), 0);
    assert_eq!(a.list("Secret", None).count(), 0);
}

#[test]
fn a_write_is_acked_once_a_peer_holds_it() {
    let (mut a, mut b) = (replica("a"), replica("b"));
    a.tick(T0, &["b"]);
    b.tick(T0, &["a"]);
    let (id, out) = a.write(T0, key("c"), body("{}")).expect("write");
    assert!(!out.iter().any(|o| matches!(o, Output::Acked { .. })));
    assert_eq!(a.pending_writes(), 1);
    let acks = settle(T0, &mut [("a", &mut a), ("b", &mut b)], tagged("a", out));
    assert_eq!(acks, vec![(id, Some("b"))]);
    assert_eq!(b.get(&key("c")), body("{}").as_ref());
    assert_eq!(a.pending_writes(), 0);
}

#[test]
fn a_lost_push_is_retried_at_another_peer() {
    let (mut a, mut c) = (replica("a"), replica("c"));
    a.tick(T0, &["b", "c"]);
    let (id, out) = a.write(T0, key("x"), body("1")).expect("write");
    // Whatever went out is lost; after the ack timeout the push goes to the other peer.
    let first = out.iter().find_map(|o| match o {
        Output::Send { to, msg: Msg::Push { .. } } => Some(*to),
        _ => None,
    });
    let retry = a.tick(T0 + a.config().ack_timeout_ms, &["b", "c"]);
    let to = retry.iter().find_map(|o| match o {
        Output::Send { to, msg: Msg::Push { .. } } => Some(*to),
        _ => None,
    });
    assert!(first.is_some() && to.is_some() && first != to, "{first:?} then {to:?}");
    let retry: Vec<_> =
        retry.into_iter().filter(|o| matches!(o, Output::Send { to: "c", msg: Msg::Push { .. } })).collect();
    if !retry.is_empty() {
        let acks = settle(T0, &mut [("a", &mut a), ("c", &mut c)], tagged("a", retry));
        assert_eq!(acks, vec![(id, Some("c"))]);
    }
    // With no peers left, a pending write is reported as held here only.
    let mut lone = replica("z");
    lone.tick(T0, &["gone"]);
    let (id, _) = lone.write(T0, key("y"), body("1")).expect("write");
    let out = lone.tick(T0 + 1, &[]);
    assert!(out.contains(&Output::Acked { write: id, held_by: None }));
}

#[test]
fn concurrent_writes_resolve_the_same_way_on_both_hosts() {
    let (mut a, mut b) = (replica("a"), replica("b"));
    let (_, oa) = a.write(T0, key("k"), body("from a")).expect("write");
    let (_, ob) = b.write(T0, key("k"), body("from b")).expect("write");
    let mut q = tagged("a", oa);
    q.extend(tagged("b", ob));
    settle(T0, &mut [("a", &mut a), ("b", &mut b)], q);
    // Same wall time and counter: the node id decides, on both.
    assert_eq!(a.get(&key("k")), body("from b").as_ref());
    assert_eq!(b.get(&key("k")), body("from b").as_ref());
    assert_eq!(a.root(), b.root());
    // A later write on a wins: its clock has moved past b's version.
    let (_, oa) = a.write(T0, key("k"), body("again")).expect("write");
    settle(T0, &mut [("a", &mut a), ("b", &mut b)], tagged("a", oa));
    assert_eq!(b.get(&key("k")), body("again").as_ref());
}

#[test]
fn tombstones_win_over_older_writes_and_are_collected() {
    let (mut a, mut b) = (replica("a"), replica("b"));
    let (_, o) = a.write(T0, key("k"), body("v1")).expect("write");
    let old = b_object(&o);
    settle(T0, &mut [("a", &mut a), ("b", &mut b)], tagged("a", o));
    let (_, o) = b.write(T0 + 10, key("k"), None).expect("delete");
    settle(T0 + 10, &mut [("a", &mut a), ("b", &mut b)], tagged("b", o));
    assert_eq!(a.get(&key("k")), None);
    assert!(a.object(&key("k")).is_some_and(Object::is_tombstone));
    // The old write arriving late (a duplicate, a slow path) loses to the tombstone.
    let out = a.handle(T0 + 20, "b", Msg::Objects { objects: vec![old.clone()] }).expect("valid");
    assert!(out.is_empty());
    assert_eq!(a.get(&key("k")), None);
    // Collected once the tombstone is older than the ttl; an expired tombstone is not taken back.
    let ttl = a.config().tombstone_ttl_ms;
    let tomb = a.object(&key("k")).cloned().expect("tombstone");
    let out = a.tick(T0 + 10 + ttl, &[]);
    assert!(out.contains(&Output::Collected(key("k"))));
    assert!(a.object(&key("k")).is_none());
    assert!(a.handle(T0 + 10 + ttl, "b", Msg::Objects { objects: vec![tomb] }).expect("valid").is_empty());
    assert!(a.object(&key("k")).is_none());
    assert_eq!(a.stats().collected, 1);
}

fn b_object(out: &[Output<&'static str>]) -> Object {
    out.iter()
        .find_map(|o| match o {
            Output::Send { msg: Msg::Push { object }, .. } => Some(object.clone()),
            Output::Broadcast(Msg::Announce { key, stamp, body }) => {
                Some(Object { key: key.clone(), stamp: stamp.clone(), body: body.clone() })
            }
            _ => None,
        })
        .expect("an object went out")
}

#[test]
fn large_bodies_are_announced_without_the_body_and_fetched() {
    let (mut a, mut b) = (replica("a"), replica("b"));
    let big = Bytes::from(vec![b'x'; MAX_INLINE_BODY_BYTES + 1]);
    let (_, out) = a.write(T0, key("big"), Some(big.clone())).expect("write");
    let announce = out.iter().find_map(|o| match o {
        Output::Broadcast(m @ Msg::Announce { body: None, .. }) => Some(m.clone()),
        _ => None,
    });
    let announce = announce.expect("an announcement without the body");
    let out = b.handle(T0, "a", announce.clone()).expect("valid");
    assert!(matches!(out.as_slice(), [Output::Send { to: "a", msg: Msg::Fetch { .. } }]));
    // A duplicate announcement does not fetch again while the fetch is out.
    assert!(b.handle(T0, "a", announce).expect("valid").is_empty());
    settle(T0, &mut [("a", &mut a), ("b", &mut b)], tagged("b", out));
    assert_eq!(b.get(&key("big")), Some(&big));
}

#[test]
fn anti_entropy_brings_two_diverged_hosts_together() {
    let (mut a, mut b) = (replica("a"), replica("b"));
    // Writes made while apart (their gossip lost), including a conflict and a delete.
    for i in 0..300 {
        a.write(T0 + i, key(&format!("a{i}")), body("a")).expect("write");
        b.write(T0 + i, key(&format!("b{i}")), body("b")).expect("write");
    }
    a.write(T0 + 500, key("both"), body("a")).expect("write");
    b.write(T0 + 501, key("both"), body("b")).expect("write");
    b.write(T0 + 502, key("a7"), None).expect("delete");
    assert_ne!(a.root(), b.root());
    let now = T0 + 1000;
    let out = a.tick(now, &["b"]);
    assert!(out.iter().any(|o| matches!(o, Output::Send { msg: Msg::Root { .. }, .. })));
    settle(now, &mut [("a", &mut a), ("b", &mut b)], tagged("a", out));
    assert_eq!(a.root(), b.root());
    assert_eq!(a.snapshot(), b.snapshot());
    assert_eq!(a.get(&key("both")), body("b").as_ref());
    assert_eq!(a.get(&key("a7")), None);
    assert_eq!(b.list("ConfigMap", None).count(), 600);
    // In sync: a round is one small message and no answer.
    let out = a.tick(now + 10_000, &["b"]);
    let root: Vec<_> = out.into_iter().filter(|o| matches!(o, Output::Send { .. })).collect();
    assert_eq!(root.len(), 1);
    let Some(Output::Send { msg, .. }) = root.first() else { unreachable!() };
    assert!(msg.encode().expect("encodes").len() <= 16);
    assert!(b.handle(now, "a", msg.clone()).expect("valid").is_empty());
}

#[test]
fn bad_messages_are_refused_counted_and_change_nothing() {
    let mut a = replica("a");
    a.write(T0, key("k"), body("v")).expect("write");
    let before = a.snapshot();
    let good = a.object(&key("k")).cloned().expect("object");
    let newer = Version { wall_ms: T0 + 5, logical: 0, node: "b".into() };
    let mut forged = Object::new(key("k"), newer.clone(), body("evil"));
    forged.body = body("other");
    let future = Object::new(key("k"), Version { wall_ms: T0 + 3_600_000, ..newer.clone() }, body("x"));
    let bad_key = Object::new(Key::new("", "default", "k"), newer.clone(), body("x"));
    let ok_other = Object::new(key("fine"), newer.clone(), body("x"));
    let cases = vec![
        Msg::Objects { objects: vec![ok_other, forged.clone()] },
        Msg::Push { object: future },
        Msg::Push { object: bad_key },
        Msg::Announce { key: key("k"), stamp: forged.stamp.clone(), body: forged.body.clone() },
        Msg::Announce {
            key: key("k"),
            stamp: Stamp { version: newer, digest: Digest::TOMBSTONE },
            body: Some(Bytes::new()),
        },
        Msg::Buckets { hashes: vec![1, 2, 3] },
        Msg::Versions {
            reply: false,
            buckets: vec![crate::msg::BucketVersions {
                index: (bucket_of(&key("k")) + 1) % BUCKETS as u16,
                entries: vec![(key("k"), good.stamp.clone())],
            }],
        },
    ];
    let n = cases.len() as u64;
    for msg in cases {
        assert!(a.handle(T0 + 10, "evil", msg.clone()).is_err(), "{msg:?} accepted");
    }
    assert!(a.handle_bytes(T0 + 10, "evil", &[0xff, 0x01]).is_err());
    let huge = vec![0u8; crate::msg::MAX_MSG_BYTES + 1];
    assert!(matches!(
        a.handle_bytes(T0 + 10, "evil", &huge),
        Err(ReplicaError::Msg(MsgError::TooLarge { .. }))
    ));
    assert_eq!(a.stats().rejected, n + 2);
    assert_eq!(a.snapshot(), before);
    assert_eq!(a.get(&key("fine")), None);
}

#[test]
fn restore_keeps_the_state_and_later_writes_still_win() {
    let mut a = replica("a");
    a.write(T0, key("k"), body("v1")).expect("write");
    a.write(T0, key("gone"), None).expect("write");
    let snap = a.snapshot();
    let bytes = postcard::to_stdvec(&snap).expect("encodes");
    let snap: Snapshot = postcard::from_bytes(&bytes).expect("decodes");
    // The host comes back with its clock behind the versions it had written.
    let mut r: Replica<&str> = Replica::restore(Config::new("a"), snap.objects.clone()).expect("restore");
    assert_eq!(r.root(), a.root());
    assert_eq!(r.get(&key("k")), body("v1").as_ref());
    r.write(T0 - 60_000, key("k"), body("v2")).expect("write");
    assert!(r.object(&key("k")).is_some_and(|o| o.stamp > a.object(&key("k")).expect("held").stamp));
    let mut bad = snap.objects;
    if let Some(o) = bad.first_mut() {
        o.body = body("tampered");
    }
    assert!(Replica::<&str>::restore(Config::new("a"), bad).is_err());
}

#[test]
fn versions_from_a_fast_clock_are_skipped_not_fatal() {
    let mut a = replica("a");
    let ahead = Version { wall_ms: T0 + 3_600_000, logical: 0, node: "b".into() };
    let fine = Version { wall_ms: T0, logical: 0, node: "b".into() };
    let stamp = |version| Stamp { version, digest: Digest::of(b"x") };
    let (k1, k2) = (key("one"), key("two"));
    let mut buckets: BTreeMap<u16, Vec<(Key, Stamp)>> = BTreeMap::new();
    buckets.entry(bucket_of(&k1)).or_default().push((k1, stamp(ahead)));
    buckets.entry(bucket_of(&k2)).or_default().push((k2.clone(), stamp(fine)));
    let buckets =
        buckets.into_iter().map(|(index, entries)| crate::msg::BucketVersions { index, entries }).collect();
    let out = a.handle(T0, "b", Msg::Versions { reply: true, buckets }).expect("valid");
    assert_eq!(out, vec![Output::Send { to: "b", msg: Msg::Fetch { keys: vec![k2] } }]);
}

#[test]
fn a_host_fetching_a_body_serves_it_to_those_who_asked_meanwhile() {
    let (mut a, mut b, mut c) = (replica("a"), replica("b"), replica("c"));
    let big = Bytes::from(vec![b'y'; MAX_INLINE_BODY_BYTES * 2]);
    let (_, out) = a.write(T0, key("big"), Some(big.clone())).expect("write");
    let announce = out
        .into_iter()
        .find_map(|o| match o {
            Output::Broadcast(m) => Some(m),
            _ => None,
        })
        .expect("announced");
    // b hears it from a and fetches; c hears it relayed by b and asks b, which has no body yet.
    let b_fetch = b.handle(T0, "a", announce.clone()).expect("valid");
    let c_fetch = c.handle(T0, "b", announce).expect("valid");
    let [Output::Send { to: "b", msg: fetch }] = c_fetch.as_slice() else { panic!("{c_fetch:?}") };
    assert!(
        b.handle(T0, "c", fetch.clone()).expect("valid").is_empty(),
        "b answers only once it holds the body"
    );
    // a answers b; b, on applying it, passes it on to c.
    let [Output::Send { to: "a", msg: fetch }] = b_fetch.as_slice() else { panic!("{b_fetch:?}") };
    let objects = a.handle(T0, "b", fetch.clone()).expect("valid");
    let [Output::Send { to: "b", msg: objects }] = objects.as_slice() else { panic!("{objects:?}") };
    let out = b.handle(T0, "a", objects.clone()).expect("valid");
    let to_c = out.iter().find_map(|o| match o {
        Output::Send { to: "c", msg } => Some(msg.clone()),
        _ => None,
    });
    c.handle(T0, "b", to_c.expect("b serves c")).expect("valid");
    assert_eq!(c.get(&key("big")), Some(&big));
}

#[test]
fn a_fetch_is_answered_with_a_bounded_amount_of_bytes() {
    let mut a = replica("a");
    let body = Bytes::from(vec![b'z'; MAX_BODY_BYTES]);
    let keys: Vec<Key> = (0..20).map(|i| key(&format!("big{i}"))).collect();
    for k in &keys {
        a.write(T0, k.clone(), Some(body.clone())).expect("write");
    }
    let out = a.handle(T0, "b", Msg::Fetch { keys }).expect("valid");
    let mut sent = 0;
    for o in &out {
        let Output::Send { to: "b", msg } = o else { panic!("{o:?}") };
        let bytes = msg.encode().expect("every answer fits in a message");
        assert!(bytes.len() <= crate::msg::MAX_MSG_BYTES);
        sent += bytes.len();
    }
    assert!(sent <= MAX_FETCH_REPLY_BYTES + 64 * 1024, "{sent}");
    assert_eq!(out.len(), MAX_FETCH_REPLY_BYTES / MAX_BODY_BYTES);
}
