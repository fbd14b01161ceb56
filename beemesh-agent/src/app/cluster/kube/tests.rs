//! Mesh objects: keys, bodies, server-filled metadata on create and re-apply, implicit and
//! built-in namespaces, listed entries.

use super::*;
use beemesh_state::Key;

fn parse(text: &str) -> Vec<Object> {
    crate::manifest::parse("t.yaml", text).expect("parse")
}

const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n\
    spec:\n  replicas: 2\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n\
    \x20   spec: {containers: [{name: w, image: busybox}]}\n";

#[test]
fn configmaps_and_secrets_are_stored_with_their_namespace() {
    let objects = parse(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: prod}\nstringData: {p: w}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: x, image: busybox}]}\n",
    );
    let (change, body) = prepare(&objects[0], None, 1_000, "u-1");
    assert_eq!(change, Change::Created);
    let v: Value = serde_json::from_slice(&body.expect("configmap")).expect("json");
    assert_eq!(
        (v["kind"].as_str(), v["metadata"]["namespace"].as_str()),
        (Some("ConfigMap"), Some("default"))
    );
    assert_eq!(v["data"]["a"], "b");
    let (_, body) = prepare(&objects[1], None, 1_000, "u-1");
    let v: Value = serde_json::from_slice(&body.expect("secret")).expect("json");
    assert_eq!(v["metadata"]["namespace"], "prod");
    let key = Key::new("Secret", "prod", "s");
    let listed = Listed { key, body: Bytes::from_static(b"\xff"), written_ms: 1_000 };
    let e = entry(&listed, 5_500);
    assert_eq!((e.age_secs, e.namespace.as_str()), (Some(4), "prod"));
    assert!(e.object.as_str().is_some_and(|s| s.contains("not JSON")));
}

#[test]
fn a_stored_object_gets_uid_timestamp_and_generation_which_a_reapply_keeps_or_bumps() {
    let d = &parse(DEPLOYMENT)[0];
    let now = 1_790_000_000_000;
    let (change, body) = prepare(d, None, now, "u-1");
    assert_eq!(change, Change::Created);
    let body = body.expect("a body");
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["metadata"]["uid"], "u-1");
    assert_eq!(v["metadata"]["generation"], 1);
    assert_eq!(v["metadata"]["creationTimestamp"], "2026-09-21T14:13:20Z");
    assert_eq!((v["kind"].as_str(), v["apiVersion"].as_str()), (Some("Deployment"), Some("apps/v1")));
    assert_eq!(v["metadata"]["namespace"], "shop");

    // The same object again: unchanged, nothing to write.
    assert_eq!(prepare(d, Some(&body), now + 5_000, "u-2"), (Change::Unchanged, None));
    // A label only: configured, same generation, uid and creation time kept.
    let labelled = &parse(&DEPLOYMENT.replace("namespace: shop}", "namespace: shop, labels: {t: x}}"))[0];
    let (change, b2) = prepare(labelled, Some(&body), now + 5_000, "u-2");
    let v2: Value = serde_json::from_slice(&b2.expect("body")).expect("json");
    assert_eq!(change, Change::Configured);
    assert_eq!(
        (v2["metadata"]["uid"].as_str(), v2["metadata"]["generation"].as_i64()),
        (Some("u-1"), Some(1))
    );
    assert_eq!(v2["metadata"]["creationTimestamp"], v["metadata"]["creationTimestamp"]);
    // The spec: generation 2.
    let scaled = &parse(&DEPLOYMENT.replace("replicas: 2", "replicas: 3"))[0];
    let (_, b3) = prepare(scaled, Some(&body), now + 9_000, "u-3");
    let v3: Value = serde_json::from_slice(&b3.expect("body")).expect("json");
    assert_eq!(
        (v3["metadata"]["uid"].as_str(), v3["metadata"]["generation"].as_i64()),
        (Some("u-1"), Some(2))
    );
    // Listed, its age counts from its creation, not from the last write.
    let listed = Listed {
        key: Key::new("Deployment", "shop", "web"),
        body: Bytes::from(v3.to_string()),
        written_ms: now + 9_000,
    };
    assert_eq!(entry(&listed, now + 60_000).age_secs, Some(60));
}

#[test]
fn namespaces_are_cluster_scoped_and_implicit_ones_are_marked() {
    let objects = parse(&format!(
        "{DEPLOYMENT}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec: {{ports: [{{port: 80}}]}}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c, namespace: kube-system}}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c, namespace: ops}}\n---\n\
         apiVersion: v1\nkind: Namespace\nmetadata: {{name: ops}}\n"
    ));
    // shop is needed; default and kube-system always exist; ops is declared by the file.
    assert_eq!(namespaces_needed(&objects), BTreeSet::from(["shop".to_owned()]));
    let ns = &objects[4];
    assert_eq!(ns.namespace(), "");
    let (_, body) = prepare(&implicit_namespace("shop"), None, 0, "u");
    let v: Value = serde_json::from_slice(&body.expect("body")).expect("json");
    assert!(v["metadata"].get("namespace").is_none());
    assert_eq!(v["metadata"]["annotations"][IMPLICIT], "true");
    assert_eq!(v["metadata"]["labels"]["kubernetes.io/metadata.name"], "shop");
    assert_eq!(v["status"]["phase"], "Active");

    // `get namespaces` shows the built-in ones even when nobody wrote them.
    let listed =
        Listed { key: Key::new("Namespace", "", "shop"), body: Bytes::from(v.to_string()), written_ms: 0 };
    let names: Vec<(String, Option<u64>)> =
        entries("Namespace", &[listed], 10_000).into_iter().map(|e| (e.name, e.age_secs)).collect();
    assert_eq!(
        names,
        [("default".to_owned(), None), ("kube-system".to_owned(), None), ("shop".to_owned(), Some(10))]
    );
}
