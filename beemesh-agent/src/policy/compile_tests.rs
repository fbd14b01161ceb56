//! Unit tests of policy compilation: isolation and defaults, selector expansion, CIDR
//! containment, port ranges, determinism and limits, checked through the shared verdict rule.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use beemesh_common::{
    PeerSet, Query, DIR_EGRESS, DIR_INGRESS, FIRST_CIDR_ID, ID_ANY, ID_HOST, ID_NONE, ID_WORLD, MAX_RULES,
    POLICY_MAP_SIZE, PROTO_TCP, PROTO_UDP, RULE_DEFAULT,
};

use super::*;

fn workload(id: u32, identity: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        id,
        identity: identity.parse().expect("valid spiffe id"),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ports: Vec::new(),
    }
}

#[test]
fn named_ports_resolve_on_the_subject_for_ingress_and_on_the_peer_for_egress() {
    let port = |name: &str, proto, port| WorkloadPort { name: name.into(), proto, port };
    let mut w = workloads();
    // The db listens on 5432 named "sql" (and "metrics" on UDP); the api on 8080 named "sql".
    w[2].ports = vec![port("sql", PROTO_TCP, 5432), port("metrics", PROTO_UDP, 9125)];
    w[1].ports = vec![port("sql", PROTO_TCP, 8080)];
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: api}}}]\n    ports: [{port: sql}, {port: metrics, protocol: UDP}]\n";
    let c = compile(&[file("p.yaml", np)], &w, &CompileOptions::default()).expect("compiles");
    assert!(allowed(&c, 258, DIR_INGRESS, peer(257), PROTO_TCP, 5432), "the db's own sql port");
    assert!(!allowed(&c, 258, DIR_INGRESS, peer(257), PROTO_TCP, 8080), "the api's sql port is not the db's");
    assert!(allowed(&c, 258, DIR_INGRESS, peer(257), PROTO_UDP, 9125));
    assert!(!allowed(&c, 258, DIR_INGRESS, peer(257), PROTO_TCP, 9125), "metrics is a UDP port");
    assert!(!allowed(&c, 258, DIR_INGRESS, peer(256), PROTO_TCP, 5432), "the frontend is not admitted");

    // Egress: the name is looked up on each peer, so one rule opens a different port per peer.
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  egress:\n  - ports: [{port: sql}]\n";
    let c = compile(&[file("p.yaml", np)], &w, &CompileOptions::default()).expect("compiles");
    assert!(allowed(&c, 256, DIR_EGRESS, peer(258), PROTO_TCP, 5432));
    assert!(allowed(&c, 256, DIR_EGRESS, peer(257), PROTO_TCP, 8080));
    assert!(!allowed(&c, 256, DIR_EGRESS, peer(258), PROTO_TCP, 8080), "8080 is not the db's sql port");
    assert!(!allowed(&c, 256, DIR_EGRESS, peer(ID_WORLD), PROTO_TCP, 5432), "the world has no named ports");
    // A name no workload gives opens nothing, and isolates still.
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - ports: [{port: nothing}]\n";
    let c = compile(&[file("p.yaml", np)], &w, &CompileOptions::default()).expect("compiles");
    assert!(c.allow.is_empty());
    assert!(!allowed(&c, 258, DIR_INGRESS, peer(257), PROTO_TCP, 5432));
}

fn workloads() -> Vec<Workload> {
    vec![
        workload(256, "spiffe://td/ns/shop/sa/frontend", &[("app", "web")]),
        workload(257, "spiffe://td/ns/shop/sa/api", &[("app", "api")]),
        workload(258, "spiffe://td/ns/shop/sa/db", &[("app", "db")]),
        workload(259, "spiffe://td/ns/ops/sa/monitor", &[("app", "monitor")]),
        workload(260, "spiffe://other/ns/shop/sa/api", &[("app", "api")]),
    ]
}

fn file(name: &str, text: &str) -> PolicyFile {
    PolicyFile {
        path: PathBuf::from(name),
        policies: parse_file(Path::new(name), text).expect("valid policy"),
    }
}

fn compile_one(text: &str) -> CompiledPolicy {
    compile(&[file("p.yaml", text)], &workloads(), &CompileOptions::default()).expect("compiles")
}

fn peer(id: u32) -> PeerSet {
    PeerSet { primary: id, cidr: ID_NONE }
}

fn allowed(c: &CompiledPolicy, s: u32, dir: u8, peers: PeerSet, proto: u8, port: u16) -> bool {
    c.decide(&Query { subject: s, direction: dir, peers, proto, port }).allowed
}

const HEAD: &str = "apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {name: p}\n";

#[test]
fn isolation_and_defaults() {
    let c = compile_one(&format!(
        "{HEAD}spec:\n  selector: {{identities: [spiffe://td/ns/shop/sa/db]}}\n  ingress:\n    - from: [{{identity: spiffe://td/ns/shop/sa/api}}]\n      ports: [{{port: 5432}}]\n"
    ));
    assert_eq!(c.rules[0].rule, "default");
    assert_eq!(c.rules[1].rule, "isolation");
    assert_eq!(c.rules[1].policy, "IdentityPolicy/p");
    assert_eq!(c.rules[2].rule, "ingress[0]");
    assert_eq!(c.isolation.len(), 1);
    let d = c.decide(&Query {
        subject: 258,
        direction: DIR_INGRESS,
        peers: peer(257),
        proto: PROTO_TCP,
        port: 5432,
    });
    assert_eq!((d.allowed, d.rule), (true, 2));
    let d = c.decide(&Query {
        subject: 258,
        direction: DIR_INGRESS,
        peers: peer(256),
        proto: PROTO_TCP,
        port: 5432,
    });
    assert_eq!((d.allowed, d.rule), (false, 1));
    // Egress is not isolated: the default applies.
    let d = c.decide(&Query {
        subject: 258,
        direction: DIR_EGRESS,
        peers: peer(ID_WORLD),
        proto: PROTO_TCP,
        port: 443,
    });
    assert_eq!((d.allowed, d.rule), (true, RULE_DEFAULT));
    // Unselected workloads get the default too, which options control.
    assert!(allowed(&c, 256, DIR_INGRESS, peer(257), PROTO_TCP, 1));
    let strict = CompileOptions { default_allow_egress: false, default_allow_ingress: false };
    let c =
        compile(&[file("p.yaml", &format!("{HEAD}spec: {{}}\n"))], &workloads(), &strict).expect("compiles");
    assert!(!allowed(&c, 256, DIR_INGRESS, peer(257), PROTO_TCP, 1));
    assert!(c.isolation.is_empty());
}

#[test]
fn empty_rule_list_denies_everything() {
    let c = compile_one(&format!("{HEAD}spec:\n  egress: []\n"));
    assert_eq!(c.isolation.len(), workloads().len());
    assert!(c.allow.is_empty());
    assert!(!allowed(&c, 256, DIR_EGRESS, peer(ID_WORLD), PROTO_UDP, 53));
}

#[test]
fn rule_without_peers_or_ports_allows_everything() {
    let c = compile_one(&format!("{HEAD}spec:\n  egress: [{{}}]\n"));
    assert_eq!(c.allow.len(), workloads().len());
    assert!(c.allow.keys().all(|k| k.peer == ID_ANY && k.port == 0));
    assert!(allowed(&c, 256, DIR_EGRESS, peer(ID_WORLD), PROTO_UDP, 53));
}

#[test]
fn glob_and_label_expansion() {
    let c = compile_one(&format!(
        "{HEAD}spec:\n  selector: {{identities: [\"spiffe://td/ns/shop/*\"], labels: {{app: api}}}}\n  egress:\n    - to: [{{identity: \"spiffe://*/ns/shop/sa/*\"}}, {{entity: host}}]\n"
    ));
    let subjects: Vec<u32> = c.isolation.keys().map(|k| k.subject).collect();
    assert_eq!(subjects, vec![257]);
    let peers: Vec<u32> = c.allow.keys().map(|k| k.peer).collect();
    assert_eq!(peers, vec![ID_HOST, 256, 257, 258, 260]);
}

#[test]
fn network_policy_namespace_and_pod_selectors() {
    let c = compile_one(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: db, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: db}}\n  ingress:\n    - from:\n        - podSelector: {matchExpressions: [{key: app, operator: In, values: [api, web]}]}\n        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ops}}\n",
    );
    let subjects: Vec<u32> = c.isolation.keys().map(|k| k.subject).collect();
    assert_eq!(subjects, vec![258]);
    assert_eq!(c.rules[1].policy, "NetworkPolicy/shop/db");
    let peers: Vec<u32> = c.allow.keys().map(|k| k.peer).collect();
    // 260 has app=api but lives in namespace shop of another trust domain: Kubernetes
    // selectors only see namespaces, so it matches too.
    assert_eq!(peers, vec![256, 257, 259, 260]);
    let all_ns = compile_one(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: ops}\nspec:\n  ingress:\n    - from: [{namespaceSelector: {}}]\n",
    );
    assert_eq!(all_ns.isolation.len(), 1);
    assert_eq!(all_ns.allow.len(), 5);
}

#[test]
fn cidr_containment_with_except() {
    let c = compile_one(&format!(
        "{HEAD}spec:\n  egress:\n    - to: [{{cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]\n    - to: [{{cidr: 10.1.2.0/24}}, {{cidr: \"2001:db8::/32\"}}]\n      ports: [{{port: 443}}]\n"
    ));
    let ids: Vec<(String, u32)> = c.cidrs.iter().map(|(n, id)| (n.to_string(), *id)).collect();
    assert_eq!(
        ids,
        vec![
            ("10.0.0.0/8".to_owned(), FIRST_CIDR_ID),
            ("10.1.0.0/16".to_owned(), FIRST_CIDR_ID + 1),
            ("10.1.2.0/24".to_owned(), FIRST_CIDR_ID + 2),
            ("2001:db8::/32".to_owned(), FIRST_CIDR_ID + 3),
        ]
    );
    let verdict = |addr: &str, port: u16| {
        let addr: IpAddr = addr.parse().expect("address");
        let peers = PeerSet { primary: ID_WORLD, cidr: c.cidr_identity(addr).unwrap_or(ID_NONE) };
        allowed(&c, 256, DIR_EGRESS, peers, PROTO_TCP, port)
    };
    assert!(verdict("10.2.3.4", 80));
    assert!(!verdict("10.1.3.4", 80));
    assert!(verdict("10.1.2.3", 443));
    assert!(!verdict("10.1.2.3", 80));
    assert!(verdict("::ffff:10.2.3.4", 80));
    assert!(verdict("2001:db8::1", 443));
    assert!(!verdict("2001:db9::1", 443));
    assert!(!verdict("192.168.0.1", 80));
    assert_eq!(c.cidr_identity("192.168.0.1".parse().expect("address")), None);
}

#[test]
fn end_port_ranges_expand() {
    let c = compile_one(&format!(
        "{HEAD}spec:\n  ingress:\n    - ports: [{{port: 9000, endPort: 9004, protocol: UDP}}, {{port: 80}}]\n"
    ));
    let mut ports: Vec<(u8, u16)> =
        c.allow.keys().filter(|k| k.subject == 256).map(|k| (k.proto, k.port)).collect();
    ports.sort();
    let mut expected: Vec<(u8, u16)> = (9000..=9004).map(|p| (PROTO_UDP, p)).collect();
    expected.insert(0, (PROTO_TCP, 80));
    assert_eq!(ports, expected);
    assert!(allowed(&c, 256, DIR_INGRESS, peer(ID_WORLD), PROTO_UDP, 9003));
    assert!(!allowed(&c, 256, DIR_INGRESS, peer(ID_WORLD), PROTO_UDP, 9005));
    assert!(!allowed(&c, 256, DIR_INGRESS, peer(ID_WORLD), PROTO_TCP, 9003));
}

#[test]
fn deterministic_and_first_policy_wins() {
    let a = file("b.yaml", &format!("{HEAD}spec:\n  ingress: [{{}}]\n"));
    let b = file(
        "a.yaml",
        "apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {name: z}\nspec:\n  ingress: [{}]\n",
    );
    // Same policy name in two files: both kept, told apart by file.
    let dup = file("c.yaml", &format!("{HEAD}spec:\n  egress: []\n"));
    let opts = CompileOptions::default();
    let one = compile(&[a.clone(), b.clone(), dup.clone()], &workloads(), &opts).expect("ok");
    let two = compile(&[dup, b, a], &workloads(), &opts).expect("ok");
    assert_eq!(one, two);
    let names: Vec<String> =
        one.rules.iter().map(|r| format!("{} {} {}", r.policy, r.rule, r.file.display())).collect();
    assert_eq!(
        names,
        vec![
            "default default ",
            "IdentityPolicy/p isolation b.yaml",
            "IdentityPolicy/p ingress[0] b.yaml",
            "IdentityPolicy/p isolation c.yaml",
            "IdentityPolicy/z isolation a.yaml",
            "IdentityPolicy/z ingress[0] a.yaml",
        ]
    );
    let key = |d| beemesh_common::IsolationKey { subject: 256, direction: d, _pad: [0; 3] };
    assert_eq!(one.isolation[&key(DIR_INGRESS)].rule, 1);
    assert_eq!(one.isolation[&key(DIR_EGRESS)].rule, 3);
    assert!(one.allow.values().all(|v| v.rule == 2));
}

#[test]
fn duplicate_workload_ids_are_an_error() {
    let mut w = workloads();
    w[1].id = 256;
    let err = compile(&[], &w, &CompileOptions::default()).expect_err("duplicate");
    assert!(matches!(err, CompileError::DuplicateWorkload { id: 256, .. }));
}

#[test]
fn too_many_allow_entries() {
    // 5 subjects x 5 peers x 2 x 65535 ports is far beyond the map.
    let c = compile(
        &[file(
            "p.yaml",
            &format!("{HEAD}spec:\n  egress:\n    - to: [{{identity: \"spiffe://*\"}}]\n      ports: [{{port: 1, endPort: 65535}}, {{port: 1, endPort: 65535, protocol: UDP}}]\n"),
        )],
        &workloads(),
        &CompileOptions::default(),
    );
    assert_eq!(c, Err(CompileError::TooManyAllowEntries { max: POLICY_MAP_SIZE }));
}

#[test]
fn too_many_rules() {
    let rules = "    - {}\n".repeat(MAX_RULES as usize);
    let c = compile(
        &[file("p.yaml", &format!("{HEAD}spec:\n  egress:\n{rules}"))],
        &[],
        &CompileOptions::default(),
    );
    assert!(matches!(c, Err(CompileError::TooManyRules { .. })), "{c:?}");
}

#[test]
fn too_many_cidrs() {
    let peers: String = (0..=beemesh_common::CIDR_MAP_SIZE)
        .map(|i| format!("        - cidr: 10.{}.{}.0/24\n", i / 256 % 256, i % 256))
        .collect();
    let text = format!("{HEAD}spec:\n  egress:\n    - to:\n{peers}        - cidr: 11.0.0.0/24\n");
    let c = compile(&[file("p.yaml", &text)], &[], &CompileOptions::default());
    assert!(matches!(c, Err(CompileError::TooManyCidrs { .. })), "{c:?}");
}

#[test]
fn too_many_isolated() {
    let many: Vec<Workload> = (0..=beemesh_common::ISOLATION_MAP_SIZE / 2)
        .map(|i| workload(256 + i, &format!("spiffe://td/ns/n{i}/sa/a"), &[]))
        .collect();
    let c = compile(
        &[file("p.yaml", &format!("{HEAD}spec:\n  ingress: []\n  egress: []\n"))],
        &many,
        &CompileOptions::default(),
    );
    assert!(matches!(c, Err(CompileError::TooManyIsolated { .. })), "{c:?}");
}

#[test]
fn host_routes_and_full_prefixes_select_only_themselves() {
    let c = compile_one(
        r#"apiVersion: beemesh.io/v1alpha1
kind: IdentityPolicy
metadata:
  name: hosts
spec:
  selector:
    identities: ["spiffe://td/ns/shop/sa/frontend"]
  egress:
    - to: [{cidr: 10.0.0.1/32}]
      ports: [{port: 1}]
    - to: [{cidr: 10.0.0.0/8}]
      ports: [{port: 2}]
    - to: [{cidr: "fd00::1/128"}]
      ports: [{port: 3}]
"#,
    );
    let at = |ip: &str| PeerSet {
        primary: ID_WORLD,
        cidr: c.cidr_identity(ip.parse::<IpAddr>().expect("ip")).unwrap_or(ID_NONE),
    };
    // The /32 allows only its own address on port 1; the /8 covers both on port 2.
    assert!(allowed(&c, 256, DIR_EGRESS, at("10.0.0.1"), PROTO_TCP, 1));
    assert!(!allowed(&c, 256, DIR_EGRESS, at("10.0.0.2"), PROTO_TCP, 1));
    assert!(allowed(&c, 256, DIR_EGRESS, at("10.0.0.1"), PROTO_TCP, 2));
    assert!(allowed(&c, 256, DIR_EGRESS, at("10.0.0.2"), PROTO_TCP, 2));
    assert!(allowed(&c, 256, DIR_EGRESS, at("fd00::1"), PROTO_TCP, 3));
    assert!(!allowed(&c, 256, DIR_EGRESS, at("10.0.0.1"), PROTO_TCP, 3));
    // One entry per rule and address block, not one per block pair.
    assert_eq!(c.allow.len(), 1 + 2 + 1);
}
