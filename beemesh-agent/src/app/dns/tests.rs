use hickory_proto::op::Query;
use hickory_proto::rr::Name;

use super::*;

fn records() -> Records {
    let mut r = Records::default();
    r.add_service("shop", "web", vec![Ipv4Addr::new(10, 96, 3, 4)]);
    r.add_service("shop", "db", vec![Ipv4Addr::new(10, 201, 0, 5), Ipv4Addr::new(10, 201, 1, 6)]);
    r.add_pod("shop", "db", "db-0", Ipv4Addr::new(10, 201, 0, 5));
    r
}

fn query(name: &str, kind: RecordType) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(4242)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), kind));
    m.to_vec().expect("encodes")
}

/// The reply's code and A addresses.
fn ask(name: &str, kind: RecordType) -> Option<(ResponseCode, Vec<Ipv4Addr>)> {
    match answer(&query(name, kind), &records()).expect("answers") {
        Answer::Forward => None,
        Answer::Reply(bytes) => {
            let m = Message::from_vec(&bytes).expect("reply decodes");
            assert_eq!((m.id(), m.message_type(), m.queries().len()), (4242, MessageType::Response, 1));
            assert!(m.recursion_desired() && m.recursion_available());
            let addrs = m
                .answers()
                .iter()
                .filter_map(|r| match r.data() {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect();
            Some((m.response_code(), addrs))
        }
    }
}

#[test]
fn services_and_stateful_pods_resolve_by_their_kubernetes_names() {
    let web = vec![Ipv4Addr::new(10, 96, 3, 4)];
    for name in ["web.shop.svc.cluster.local.", "web.shop.svc.", "WEB.Shop.SVC.cluster.local."] {
        assert_eq!(ask(name, RecordType::A), Some((ResponseCode::NoError, web.clone())), "{name}");
    }
    // A headless Service: its pods; a StatefulSet pod by name.
    assert_eq!(ask("db.shop.svc.cluster.local.", RecordType::A).map(|r| r.1.len()), Some(2));
    assert_eq!(
        ask("db-0.db.shop.svc.", RecordType::A),
        Some((ResponseCode::NoError, vec![Ipv4Addr::new(10, 201, 0, 5)]))
    );
    // The name exists, but has no IPv6 address: NODATA, not NXDOMAIN.
    assert_eq!(ask("web.shop.svc.cluster.local.", RecordType::AAAA), Some((ResponseCode::NoError, vec![])));
}

#[test]
fn misses_under_the_cluster_domain_are_nxdomain_and_the_rest_is_forwarded() {
    for name in [
        "nope.shop.svc.cluster.local.",
        "web.other.svc.cluster.local.",
        "db-9.db.shop.svc.",
        "cluster.local.",
        "x.y.z.cluster.local.",
    ] {
        assert_eq!(ask(name, RecordType::A), Some((ResponseCode::NXDomain, vec![])), "{name}");
    }
    for name in ["example.com.", "web.shop.example.com.", "a.b.svc."] {
        assert_eq!(ask(name, RecordType::A), None, "{name}");
    }
}

#[test]
fn malformed_queries_are_dropped_or_refused() {
    assert!(answer(b"\x00\x01garbage", &records()).is_err());
    // A response is no query.
    let mut m = Message::new();
    m.set_message_type(MessageType::Response);
    assert!(answer(&m.to_vec().expect("encodes"), &records()).is_err());
    // Two questions: FORMERR.
    let mut m = Message::new();
    m.set_id(1).set_message_type(MessageType::Query);
    for n in ["a.shop.svc.", "b.shop.svc."] {
        m.add_query(Query::query(Name::from_ascii(n).expect("name"), RecordType::A));
    }
    let Answer::Reply(bytes) = answer(&m.to_vec().expect("encodes"), &records()).expect("answered") else {
        panic!("forwarded")
    };
    assert_eq!(Message::from_vec(&bytes).expect("decodes").response_code(), ResponseCode::FormErr);
}
