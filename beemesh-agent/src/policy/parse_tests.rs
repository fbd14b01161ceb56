//! Unit tests of policy file parsing: each accepted form and each error, with its line.

use std::path::Path;

use beemesh_common::{ID_HOST, ID_WORLD, PROTO_ANY, PROTO_TCP, PROTO_UDP};

use super::*;

fn parse(text: &str) -> Vec<Policy> {
    parse_file(Path::new("policy.d/web.yaml"), text).expect("valid policy file")
}

fn error(text: &str) -> PolicyError {
    parse_file(Path::new("policy.d/web.yaml"), text).expect_err("invalid policy file")
}

const IDENTITY_POLICY: &str = "\
apiVersion: beemesh.io/v1alpha1
kind: IdentityPolicy
metadata:
  name: frontend
spec:
  selector:
    identities: [\"spiffe://beemesh.local/ns/shop/sa/frontend\"]
    labels: {app: web}
  ingress:
    - from:
        - identity: \"spiffe://beemesh.local/ns/shop/*\"
        - cidr: 10.0.0.0/8
          except: [10.1.0.0/16]
        - entity: host
      ports:
        - port: 8080
          protocol: TCP
        - port: 9000
          endPort: 9100
        - protocol: UDP
  egress:
    - to: [{entity: world}, {entity: all}]
      ports: [{port: 53, protocol: ANY}]
";

#[test]
fn parses_identity_policy() {
    let policies = parse(IDENTITY_POLICY);
    assert_eq!(policies.len(), 1);
    let p = &policies[0];
    assert_eq!(p.kind, PolicyKind::IdentityPolicy);
    assert_eq!(p.display_name(), "IdentityPolicy/frontend");
    assert_eq!(p.selector.identities.len(), 1);
    assert_eq!(p.selector.labels.requirements.len(), 1);
    let ingress = p.ingress.as_ref().expect("ingress present");
    assert_eq!(ingress.len(), 1);
    assert_eq!(ingress[0].peers.len(), 3);
    assert!(matches!(&ingress[0].peers[1], Peer::Cidr { net, except }
        if net.to_string() == "10.0.0.0/8" && except.len() == 1));
    assert_eq!(ingress[0].peers[2], Peer::Entity(ID_HOST));
    let ports = &ingress[0].ports;
    assert_eq!((ports[0].proto, ports[0].first, ports[0].last), (PROTO_TCP, 8080, 8080));
    assert_eq!((ports[1].proto, ports[1].first, ports[1].last), (PROTO_TCP, 9000, 9100));
    assert_eq!((ports[2].proto, ports[2].first), (PROTO_UDP, 0));
    let egress = p.egress.as_ref().expect("egress present");
    assert_eq!(egress[0].peers, vec![Peer::Entity(ID_WORLD), Peer::Any]);
    assert_eq!(egress[0].ports[0].proto, PROTO_ANY);
}

#[test]
fn absent_directions_do_not_isolate() {
    let p = &parse(
        "apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {name: a}\nspec:\n  ingress: []\n",
    )[0];
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress, None);
    assert_eq!(p.selector, WorkloadSelector::default());
}

const NETWORK_POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: db}
    matchExpressions:
      - {key: tier, operator: NotIn, values: [cache]}
  ingress:
    - from:
        - podSelector: {matchLabels: {app: api}}
        - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ops}}
          podSelector: {}
        - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}
      ports:
        - {port: 5432}
        - {protocol: UDP, port: 7000, endPort: 7002}
";

#[test]
fn parses_network_policy() {
    let p = &parse(NETWORK_POLICY)[0];
    assert_eq!(p.kind, PolicyKind::NetworkPolicy);
    assert_eq!(p.display_name(), "NetworkPolicy/shop/db");
    assert_eq!(p.selector.namespaces, NamespaceMatch::Named("shop".into()));
    assert_eq!(p.selector.labels.requirements.len(), 2);
    // No policyTypes and no egress: ingress only.
    assert!(p.egress.is_none());
    let rule = &p.ingress.as_ref().expect("ingress")[0];
    assert!(
        matches!(&rule.peers[0], Peer::Workloads(s) if s.namespaces == NamespaceMatch::Named("shop".into()))
    );
    assert!(
        matches!(&rule.peers[1], Peer::Workloads(s) if matches!(s.namespaces, NamespaceMatch::Labels(_)))
    );
    assert!(matches!(&rule.peers[2], Peer::Cidr { .. }));
    assert_eq!((rule.ports[1].proto, rule.ports[1].first, rule.ports[1].last), (PROTO_UDP, 7000, 7002));
}

#[test]
fn network_policy_defaults() {
    let p = &parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all}\nspec:\n  podSelector: {}\n  egress: [{}]\n")[0];
    assert_eq!(p.namespace.as_deref(), Some("default"));
    assert_eq!(p.ingress, Some(vec![]));
    assert_eq!(p.egress.as_ref().map(Vec::len), Some(1));
    let p = &parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e}\nspec:\n  policyTypes: [Egress]\n")[0];
    assert_eq!(p.ingress, None);
    assert_eq!(p.egress, Some(vec![]));
    // Kubernetes only defaults Egress in when egress rules exist.
    let p = &parse(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e}\nspec:\n  egress: []\n",
    )[0];
    assert_eq!(p.egress, None);
}

#[test]
fn multi_document_file_with_comments_and_empty_documents() {
    let text =
        format!("# shop policies\n---\n{IDENTITY_POLICY}---\n# nothing here\n---\n{NETWORK_POLICY}---\n");
    let policies = parse(&text);
    assert_eq!(policies.len(), 2);
    assert_eq!(policies[1].display_name(), "NetworkPolicy/shop/db");
    assert_eq!(check(Path::new("x.yaml"), &text), Ok(2));
}

#[test]
fn unknown_field_names_field_and_line() {
    let e = error("apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {name: a}\nspec:\n  egress:\n    - to: []\n      prots: []\n");
    assert_eq!(e.line(), 7);
    let msg = e.to_string();
    assert!(msg.starts_with("policy.d/web.yaml:7: spec.egress[0]: unknown field `prots`"), "{msg}");
}

#[test]
fn unknown_field_in_network_policy() {
    let e = error("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  podSelector: {}\n  ingress:\n    - from:\n        - podSelektor: {}\n");
    assert_eq!(
        e.to_string(),
        "policy.d/web.yaml:8: spec.ingress[0].from[0].podSelektor: unknown field `podSelektor`"
    );
}

#[test]
fn unknown_kind_and_api_version() {
    let e = error("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n");
    assert_eq!(e.line(), 2);
    assert!(
        e.to_string()
            .starts_with("policy.d/web.yaml:2: kind: unknown kind \"ConfigMap\" (apiVersion \"v1\")"),
        "{e}"
    );
    let e = error("kind: IdentityPolicy\napiVersion: beemesh.io/v2\nmetadata: {name: a}\n");
    assert_eq!(e.to_string(), "policy.d/web.yaml:2: apiVersion: unsupported apiVersion \"beemesh.io/v2\" for kind IdentityPolicy (expected beemesh.io/v1alpha1)");
    let e = error("kind: IdentityPolicy\nmetadata: {name: a}\n");
    assert_eq!(e.to_string(), "policy.d/web.yaml:1: apiVersion: missing");
}

#[test]
fn malformed_yaml_line_is_file_relative_in_later_documents() {
    let text = format!("{IDENTITY_POLICY}---\n{NETWORK_POLICY}---\napiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata:\n  name: x\n   bad: indentation\n");
    let first = IDENTITY_POLICY.lines().count() + NETWORK_POLICY.lines().count() + 2;
    let e = error(&text);
    assert!(matches!(e, PolicyError::Syntax { .. }), "{e}");
    assert_eq!(e.line(), first + 5, "{e}");
    assert!(!e.to_string().contains("at line"), "{e}");
}

#[test]
fn type_errors_in_later_documents_are_file_relative() {
    let text = format!("{NETWORK_POLICY}---\napiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata:\n  name: x\nspec:\n  ingress: {{}}\n");
    let e = error(&text);
    assert_eq!(e.line(), NETWORK_POLICY.lines().count() + 7, "{e}");
    assert!(e.to_string().contains("spec.ingress: invalid type: map, expected a sequence"), "{e}");
}

#[test]
fn invalid_cidr() {
    let text = "\
apiVersion: beemesh.io/v1alpha1
kind: IdentityPolicy
metadata:
  name: web
spec:
  selector: {}
  egress:
    - to:
        - identity: spiffe://beemesh.local/ns/shop/*
      ports: [{port: 443}]
    - to:
        - entity: world
        - cidr: 10.0.0.0/33
";
    let e = error(text);
    assert_eq!(
        e.to_string(),
        "policy.d/web.yaml:13: spec.egress[1].to[1].cidr: invalid CIDR \"10.0.0.0/33\""
    );
    let e = error(&text.replace("10.0.0.0/33", "10.0.0.0/8\n          except: [10.0.0.0/8, 192.168.0.0/16]"));
    assert_eq!(e.to_string(), "policy.d/web.yaml:14: spec.egress[1].to[1].except[1]: except 192.168.0.0/16 is not inside 10.0.0.0/8");
}

#[test]
fn bad_glob() {
    let e = error("apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {name: a}\nspec:\n  selector:\n    identities:\n      - spiffe://td/ns/a/sa/b\n      - beemesh.local/ns/*\n");
    assert_eq!(e.to_string(), "policy.d/web.yaml:8: spec.selector.identities[1]: invalid identity glob \"beemesh.local/ns/*\": must start with spiffe://");
}

#[test]
fn named_ports_are_kept_by_name_and_bad_names_refused() {
    let p = parse("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  egress:\n    - ports:\n        - port: 53\n        - port: dns\n          protocol: UDP\n");
    let rule = &p[0].egress.as_ref().expect("egress")[0];
    assert_eq!(rule.ports, [PortRange { proto: PROTO_TCP, first: 53, last: 53 }]);
    assert_eq!(rule.named, [NamedPort { proto: PROTO_UDP, name: "dns".into() }]);
    let p = parse("apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {name: a}\nspec:\n  ingress:\n    - ports:\n        - port: http\n          protocol: ANY\n");
    let rule = &p[0].ingress.as_ref().expect("ingress")[0];
    assert!(rule.ports.is_empty());
    assert_eq!(rule.named, [NamedPort { proto: PROTO_ANY, name: "http".into() }]);
    let e = error("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  ingress:\n    - ports:\n        - port: Not_A_Name\n");
    assert_eq!(e.line(), 7);
    assert!(
        e.to_string().contains(
            "spec.ingress[0].ports[0].port: \"Not_A_Name\" is neither a port number nor a port name"
        ),
        "{e}"
    );
    let e = error("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  ingress:\n    - ports:\n        - port: http\n          endPort: 90\n");
    assert!(
        e.to_string().contains("spec.ingress[0].ports[0].endPort: endPort requires a numeric port"),
        "{e}"
    );
}

#[test]
fn sctp_is_rejected() {
    let e = error("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  ingress:\n    - ports:\n        - port: 80\n          protocol: SCTP\n");
    assert_eq!(
        e.to_string(),
        "policy.d/web.yaml:8: spec.ingress[0].ports[0].protocol: protocol SCTP is not supported"
    );
}

#[test]
fn port_range_errors() {
    let doc = |ports: &str| {
        format!("apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {{name: a}}\nspec:\n  ingress:\n    - ports:\n        - {ports}\n")
    };
    let e = error(&doc("{port: 90, endPort: 80}"));
    assert_eq!(
        e.to_string(),
        "policy.d/web.yaml:7: spec.ingress[0].ports[0].endPort: endPort 80 is below port 90"
    );
    let e = error(&doc("{port: 70000}"));
    assert!(e.to_string().ends_with("port 70000 out of range 1-65535"), "{e}");
    let e = error(&doc("{endPort: 80}"));
    assert!(e.to_string().ends_with("endPort requires port"), "{e}");
    let e = error(&doc("{port: 80, protocol: ICMP}"));
    assert!(e.to_string().contains("unknown protocol \"ICMP\""), "{e}");
}

#[test]
fn peer_shape_errors() {
    let doc = |peer: &str| {
        format!("apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata: {{name: a}}\nspec:\n  egress:\n    - to:\n        - {peer}\n")
    };
    let e = error(&doc("{entity: world, cidr: 10.0.0.0/8}"));
    assert!(e.to_string().contains("exactly one of identity, cidr or entity"), "{e}");
    let e = error(&doc("{entity: moon}"));
    assert_eq!(e.to_string(), "policy.d/web.yaml:7: spec.egress[0].to[0].entity: unknown entity \"moon\" (expected host, world or all)");
    let e = error("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec:\n  ingress:\n    - from:\n        - ipBlock: {cidr: 10.0.0.0/8}\n          podSelector: {}\n");
    assert!(e.to_string().contains("ipBlock cannot be combined"), "{e}");
}

#[test]
fn metadata_errors() {
    let e = error("apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nmetadata:\n  name: Not_Valid\n");
    assert_eq!(
        e.to_string(),
        "policy.d/web.yaml:4: metadata.name: invalid name \"Not_Valid\": expected a DNS-1123 subdomain"
    );
    let e = error("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {namespace: x}\n");
    assert!(e.to_string().contains("metadata.name: missing"), "{e}");
    let e = error("apiVersion: beemesh.io/v1alpha1\nkind: IdentityPolicy\nspec: {}\n");
    assert!(e.to_string().contains("missing field `metadata`"), "{e}");
}

#[test]
fn file_is_all_or_nothing() {
    let text = format!("{IDENTITY_POLICY}---\napiVersion: v1\nkind: Secret\n");
    assert!(parse_file(Path::new("x.yaml"), &text).is_err());
}
