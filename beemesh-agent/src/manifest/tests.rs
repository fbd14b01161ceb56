//! Manifest parsing: every supported kind and form, and each kind of bad input with its
//! file:line and reason.

use super::*;

const POD: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  serviceAccountName: web
  restartPolicy: OnFailure
  volumes:
    - name: cache
      emptyDir: {}
    - name: conf
      configMap: {name: web-conf}
  initContainers:
    - name: init
      image: busybox:1
      command: [sh, -c, "true"]
  containers:
    - name: app
      image: web:1
      env:
        - name: MODE
          value: prod
        - name: PASSWORD
          valueFrom:
            secretKeyRef: {name: web-secret, key: password}
      envFrom:
        - configMapRef: {name: web-conf}
      ports:
        - containerPort: 8080
          hostPort: 18080
      resources:
        limits: {cpu: 500m, memory: 64Mi}
      readinessProbe:
        httpGet: {path: /, port: 8080}
        periodSeconds: 1
      volumeMounts:
        - {name: cache, mountPath: /cache}
    - name: sidecar
      image: busybox:1
      livenessProbe:
        exec: {command: ["true"]}
status:
  phase: Running
"#;

fn err(text: &str) -> ManifestError {
    parse("m.yaml", text).expect_err("must be rejected")
}

#[test]
fn a_full_pod_parses() {
    let objects = parse("m.yaml", POD).expect("valid");
    assert_eq!(objects.len(), 1);
    let Object::Pod(pod) = &objects[0] else { panic!("not a pod") };
    assert_eq!((objects[0].name(), objects[0].namespace()), ("web", "shop"));
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.containers.len(), 2);
    assert_eq!(spec.init_containers.as_ref().map(Vec::len), Some(1));
}

#[test]
fn multi_document_files_and_lists() {
    let text = format!(
        "{POD}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web-conf}}\ndata: {{a: b}}\n---\n\
         apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Secret\n    metadata: {{name: web-secret}}\n    stringData: {{password: x}}\n"
    );
    let kinds: Vec<&str> = parse("m.yaml", &text).expect("valid").iter().map(Object::kind).collect();
    assert_eq!(kinds, ["Pod", "ConfigMap", "Secret"]);
}

#[test]
fn unsupported_fields_are_named_with_their_line() {
    let text =
        POD.replace("  restartPolicy: OnFailure\n", "  restartPolicy: OnFailure\n  hostNetwork: true\n");
    let e = err(&text);
    let msg = e.to_string();
    assert!(msg.starts_with("m.yaml:10: spec.hostNetwork:"), "{msg}");
    let text = POD
        .replace("          hostPort: 18080\n", "          hostPort: 18080\n          containerPortt: 1\n");
    assert!(err(&text).to_string().contains("spec.containers[0].ports[0].containerPortt"));
}

#[test]
fn bad_kinds_names_images_and_yaml() {
    let e = err("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n");
    assert!(e.to_string().contains("Deployment is not supported yet"), "{e}");
    let e = err("apiVersion: v1\nkind: Gadget\nmetadata: {name: x}\n");
    assert!(e.to_string().contains("unsupported kind v1/Gadget"), "{e}");
    let e = err(&POD.replace("  name: web\n  namespace", "  name: Web_1\n  namespace"));
    assert!(e.to_string().contains("m.yaml:4: metadata.name"), "{e}");
    let e = err(&POD.replace("      image: web:1\n", ""));
    assert!(e.to_string().contains("spec.containers[0].image"), "{e}");
    let e = err("apiVersion: v1\nkind: Pod\nmetadata: [oops\n");
    assert!(matches!(e, ManifestError::Syntax { line: 3 | 4, .. }), "{e}");
    let e = err(&POD.replace("limits: {cpu: 500m, memory: 64Mi}", "limits: {cpu: fast, memory: 64Mi}"));
    assert!(e.to_string().contains("invalid cpu quantity"), "{e}");
    let e = err(&POD.replace("{name: cache, mountPath: /cache}", "{name: nope, mountPath: /cache}"));
    assert!(e.to_string().contains("no volume named \"nope\""), "{e}");
    let e = err(&POD.replace("httpGet: {path: /, port: 8080}", "httpGet: {path: /, port: nope}"));
    assert!(e.to_string().contains("named port \"nope\" is not among"), "{e}");
}

#[test]
fn a_bad_document_rejects_the_whole_file() {
    let text = format!("{POD}---\napiVersion: v1\nkind: Gadget\nmetadata: {{name: x}}\n");
    let e = err(&text);
    // The error is in the second document: its line counts from the top of the file.
    assert!(matches!(&e, ManifestError::Invalid { line, .. } if *line > 45), "{e}");
}
