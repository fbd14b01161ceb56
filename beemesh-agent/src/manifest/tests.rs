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
fn every_refused_field_of_every_document_is_named_in_one_answer() {
    let pod = POD
        .replace(
            "  restartPolicy: OnFailure\n",
            "  restartPolicy: OnFailure\n  hostNetwork: true\n  hostPID: true\n",
        )
        .replace("          hostPort: 18080\n", "          hostPort: 18080\n          containerPortt: 1\n");
    let text = format!("{pod}---\napiVersion: v1\nkind: Gadget\nmetadata: {{name: x}}\n");
    let msg = err(&text).to_string();
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 4, "{msg}");
    assert!(
        lines[0].starts_with("m.yaml:10: spec.hostNetwork: field `hostNetwork` is not supported"),
        "{msg}"
    );
    assert!(lines[1].starts_with("m.yaml:11: spec.hostPID:"), "{msg}");
    // A misspelt field too, then the second document's kind, with its line in the file.
    assert!(lines[2].contains("spec.containers[0].ports[0].containerPortt"), "{msg}");
    assert!(lines[3].starts_with("m.yaml:51: kind: unsupported kind v1/Gadget"), "{msg}");
}

#[test]
fn the_downward_api_in_env_is_checked_at_apply() {
    let with = |source: &str| {
        POD.replace(
            "        - name: MODE\n",
            &format!("        - name: D\n          valueFrom: {source}\n        - name: MODE\n"),
        )
    };
    assert!(parse("m.yaml", &with("{fieldRef: {fieldPath: \"metadata.labels['app']\"}}")).is_ok());
    assert!(parse("m.yaml", &with("{resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}")).is_ok());
    for path in ["status.podIP", "status.podIPs", "status.hostIP", "status.hostIPs"] {
        assert!(parse("m.yaml", &with(&format!("{{fieldRef: {{fieldPath: {path}}}}}"))).is_ok(), "{path}");
    }
    let msg = err(&with("{fieldRef: {fieldPath: status.phase}}")).to_string();
    assert!(msg.contains("\"status.phase\" is not a field the downward API offers"), "{msg}");
    let msg = err(&with("{fieldRef: {fieldPath: metadata.labels}}")).to_string();
    assert!(msg.contains("is not a field the downward API offers"), "{msg}");
    let msg = err(&with("{resourceFieldRef: {resource: limits.ephemeral-storage}}")).to_string();
    assert!(msg.contains("resourceFieldRef.resource: \"limits.ephemeral-storage\""), "{msg}");
    let both = "{fieldRef: {fieldPath: metadata.name}, secretKeyRef: {name: s, key: k}}";
    assert!(err(&with(both)).to_string().contains("needs exactly one of"), "{}", err(&with(both)));
}

#[test]
fn priority_classes_and_image_pull_secrets_are_accepted_and_checked() {
    let with = |lines: &str| {
        POD.replace("  restartPolicy: OnFailure\n", &format!("  restartPolicy: OnFailure\n{lines}"))
    };
    let text = with("  priorityClassName: high-priority\n  imagePullSecrets:\n    - name: regcred\n");
    let objects = parse("m.yaml", &text).expect("accepted");
    let Some(Object::Pod(pod)) = objects.first() else { panic!("not a pod: {objects:?}") };
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(spec.priority_class_name.as_deref(), Some("high-priority"));
    assert_eq!(spec.image_pull_secrets.as_ref().map(|s| s[0].name.as_str()), Some("regcred"));
    let msg = err(&with("  priorityClassName: High_Priority\n")).to_string();
    assert!(msg.starts_with("m.yaml:10: spec.priorityClassName: invalid priority class"), "{msg}");
    let msg = err(&with("  imagePullSecrets: [{name: Bad_Name}]\n")).to_string();
    assert!(msg.contains("spec.imagePullSecrets[0].name: invalid secret name"), "{msg}");
}

#[test]
fn a_bad_base64_value_is_named_by_its_line_and_key() {
    let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: tls}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: plain\ndata:\n  ca.crt: Zm9v\n  tls.crt: not*base64\n  tls.key: Zm9\n";
    let msg = err(text).to_string();
    let lines: Vec<&str> = msg.lines().collect();
    assert_eq!(lines.len(), 2, "{msg}");
    assert!(lines[0].starts_with("m.yaml:9: data.tls.crt: invalid base64"), "{msg}");
    assert!(lines[1].starts_with("m.yaml:10: data.tls.key: invalid base64"), "{msg}");
    let binary = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\nbinaryData:\n  blob: \"%%\"\n";
    assert!(
        err(binary).to_string().starts_with("m.yaml:5: binaryData.blob: invalid base64"),
        "{}",
        err(binary)
    );
    assert!(parse("m.yaml", &text.replace("not*base64", "Zm9v").replace("Zm9\n", "Zm8=\n")).is_ok());
}

#[test]
fn bad_kinds_names_images_and_yaml() {
    let e = err("apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: x}\n");
    assert!(e.to_string().contains("unsupported kind networking.k8s.io/v1/Ingress"), "{e}");
    assert!(e.to_string().contains("apps/v1 DaemonSet"), "{e}");
    let e = err("apiVersion: v1\nkind: Deployment\nmetadata: {name: x}\n");
    assert!(e.to_string().contains("m.yaml:1: apiVersion: Deployment is apps/v1 (not v1)"), "{e}");
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

const KINDS: &str = r#"apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {team: a}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http, nodePort: 30080}
    - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: front}}}]
      ports: [{port: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
    matchExpressions: [{key: tier, operator: NotIn, values: [db]}]
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 25%, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: busybox:1
          ports: [{name: http, containerPort: 8080}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  podManagementPolicy: Parallel
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - name: db
          image: busybox:1
          volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
    - metadata: {name: data}
      spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"#;

#[test]
fn namespaces_services_network_policies_deployments_and_stateful_sets_parse() {
    let objects = parse("m.yaml", KINDS).expect("valid");
    let shown: Vec<(String, &str)> = objects.iter().map(|o| (o.shown(), o.namespace())).collect();
    assert_eq!(
        shown,
        [
            ("namespace/shop".to_owned(), ""),
            ("service/web".to_owned(), "shop"),
            ("networkpolicy.networking.k8s.io/web-in".to_owned(), "shop"),
            ("deployment.apps/web".to_owned(), "shop"),
            ("statefulset.apps/db".to_owned(), "default"),
        ]
    );
}

/// The error for `KINDS` with `from` replaced by `to` (which must occur).
fn kinds_err(from: &str, to: &str) -> String {
    assert!(KINDS.contains(from), "{from}");
    err(&KINDS.replacen(from, to, 1)).to_string()
}

#[test]
fn the_new_kinds_refuse_unknown_fields_by_name_with_their_line() {
    // A Pod template follows the Pod's rules: what the scheduler could not run is refused now.
    let e = kinds_err(
        "          image: busybox:1
          ports",
        "          image: busybox:1
          stdinn: true
          ports",
    );
    assert!(
        e.starts_with("m.yaml:41: spec.template.spec.containers[0].stdinn: field `stdinn` is not supported"),
        "{e}"
    );
    let e = kinds_err(
        "    spec:
      containers:
        - name: web",
        "    spec:
      hostNetwork: true
      containers:
        - name: web",
    );
    assert!(e.starts_with("m.yaml:38: spec.template.spec.hostNetwork:"), "{e}");
    let e = kinds_err(
        "  type: NodePort
",
        "  type: NodePort
  sessionAffinity: ClientIP
",
    );
    assert!(e.starts_with("m.yaml:12: spec.sessionAffinity: ClientIP: beemesh spreads"), "{e}");
    let e = kinds_err(
        "  podSelector: {matchLabels: {app: web}}
",
        "  podSelector: {matchLabels: {app: web}}
  bogus: 1
",
    );
    assert!(e.starts_with("m.yaml:22: spec.bogus: unknown field `bogus`"), "{e}");
    let e = kinds_err(
        "  replicas: 3
",
        "  replicas: 3
  paused: true
",
    );
    assert!(e.contains("spec.paused: field `paused` is not supported"), "{e}");
}

#[test]
fn a_service_exported_from_a_single_stack_cluster_applies_and_dual_stack_is_refused_by_name() {
    // What `kubectl get svc -o yaml` prints on an IPv4 cluster.
    let exported = "  type: NodePort
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  internalTrafficPolicy: Cluster
  externalTrafficPolicy: Local
";
    let text = KINDS.replacen("  type: NodePort\n", exported, 1);
    parse("m.yaml", &text).expect("accepted");
    let preferred = exported.replace("SingleStack", "PreferDualStack");
    parse("m.yaml", &KINDS.replacen("  type: NodePort\n", &preferred, 1)).expect("falls back to IPv4");
    let cases = [
        (
            "ipFamilyPolicy: SingleStack",
            "ipFamilyPolicy: RequireDualStack",
            "m.yaml:15: spec.ipFamilyPolicy: RequireDualStack: this mesh is not configured for dual-stack",
        ),
        (
            "ipFamilyPolicy: SingleStack",
            "ipFamilyPolicy: Both",
            "spec.ipFamilyPolicy: \"Both\": supported values",
        ),
        (
            "ipFamilies: [IPv4]",
            "ipFamilies: [IPv6]",
            "m.yaml:14: spec.ipFamilies[0]: IPv6: not configured on this mesh",
        ),
        ("ipFamilies: [IPv4]", "ipFamilies: [IPv4, IPv6]", "spec.ipFamilies[1]: IPv6: not configured"),
        (
            "clusterIPs: [10.96.0.20]",
            "clusterIPs: [10.96.0.20, \"fd00::20\"]",
            "spec.clusterIPs[1]: \"fd00::20\": not configured",
        ),
        (
            "clusterIPs: [10.96.0.20]",
            "clusterIPs: [10.96.0.21]",
            "spec.clusterIPs[0]: \"10.96.0.21\" must be the same as spec.clusterIP",
        ),
        (
            "clusterIP: 10.96.0.20",
            "clusterIP: \"fd00::20\"",
            "spec.clusterIP: \"fd00::20\": not configured on this mesh: its cluster IPs are IPv4",
        ),
        (
            "internalTrafficPolicy: Cluster",
            "internalTrafficPolicy: Node",
            "spec.internalTrafficPolicy: \"Node\": supported values: Cluster, Local",
        ),
        (
            "type: NodePort",
            "type: ClusterIP",
            "spec.externalTrafficPolicy: may only be set for a Service reachable from outside the mesh",
        ),
    ];
    for (from, to, expect) in cases {
        assert!(text.contains(from), "{from}");
        let e = err(&text.replacen(from, to, 1)).to_string();
        assert!(e.contains(expect), "{from:?} -> {to:?}: {e}");
    }
}

#[test]
fn the_new_kinds_are_validated_as_kubernetes_does() {
    let cases = [
        (
            "  name: shop
",
            "  name: shop
  namespace: x
",
            "metadata.namespace: a Namespace is cluster-scoped",
        ),
        (
            "  name: shop
",
            "  name: Shop
",
            "metadata.name: invalid name \"Shop\"",
        ),
        (
            "{name: web, namespace: shop}
spec:
  type",
            "{name: 9web, namespace: shop}
spec:
  type",
            "invalid name \"9web\": a letter",
        ),
        ("type: NodePort", "type: LoadBalancer", "spec.type: type LoadBalancer is not supported"),
        ("port: 80,", "port: 0,", "spec.ports[0].port: 0: ports are 1-65535"),
        ("protocol: UDP", "protocol: SCTP", "spec.ports[1].protocol: SCTP"),
        ("{name: dns, port: 53", "{port: 53", "spec.ports[1].name: every port needs a name"),
        ("targetPort: http,", "targetPort: Not_A_Port,", "spec.ports[0].targetPort"),
        (
            "operator: NotIn, values: [db]",
            "operator: NotIn, values: []",
            "matchExpressions[0].values: NotIn needs values",
        ),
        (
            "    matchLabels: {app: web}
",
            "    matchLabels: {app: other}
",
            "spec.selector: the selector does not match the template's labels",
        ),
        (
            "podManagementPolicy: Parallel",
            "podManagementPolicy: Sometimes",
            "spec.podManagementPolicy: \"Sometimes\"",
        ),
        ("volumeMounts: [{name: data,", "volumeMounts: [{name: logs,", "no volume named \"logs\""),
        ("{requests: {storage: 1Gi}}", "{requests: {storage: lots}}", "requests.storage"),
        (
            "ingress:\n    - from: [{podSelector",
            "ingress:\n    - from: [{ipBlock: {cidr: nope}, podSelector",
            "spec.ingress[0].from[0]",
        ),
        (
            "  selector: {matchLabels: {app: db}}
",
            "  selector: {}
",
            "spec.selector: a selector is required",
        ),
    ];
    for (from, to, expect) in cases {
        let from = from.replace("\\n", "\n");
        let to = to.replace("\\n", "\n");
        let e = kinds_err(&from, &to);
        assert!(e.contains(expect), "{from:?} -> {to:?}: {e}");
    }
    // Both 0: the rollout could never progress.
    let e = kinds_err(
        "rollingUpdate: {maxSurge: 25%, maxUnavailable: 0}",
        "rollingUpdate: {maxSurge: 0%, maxUnavailable: 0}",
    );
    assert!(e.contains("maxSurge and maxUnavailable cannot both be 0"), "{e}");
    let e = kinds_err(
        "    spec:
      containers:
        - name: web",
        "    spec:
      restartPolicy: Never
      containers:
        - name: web",
    );
    assert!(e.contains("spec.template.spec.restartPolicy: \"Never\": only Always"), "{e}");
}

#[test]
fn lifecycle_hooks_and_startup_probes_are_accepted_and_checked() {
    let with = |lines: &str| POD.replace("      livenessProbe:\n", &format!("{lines}      livenessProbe:\n"));
    let good = with(
        "      startupProbe: {httpGet: {path: /up, port: 8080}, failureThreshold: 30}\n      lifecycle:\n        \
         postStart: {exec: {command: [touch, /ready]}}\n        preStop: {sleep: {seconds: 5}}\n",
    );
    assert!(parse("m.yaml", &good).is_ok(), "{:?}", parse("m.yaml", &good).err());
    let http = with("      lifecycle:\n        preStop: {httpGet: {path: /drain, port: 8080}}\n");
    assert!(parse("m.yaml", &http).is_ok());
    let msg = err(&with("      lifecycle:\n        preStop: {tcpSocket: {port: 8080}}\n")).to_string();
    // (Deprecated, and never run by Kubernetes.)
    assert!(
        msg.contains("spec.containers[1].lifecycle.preStop.tcpSocket: field `tcpSocket` is not supported"),
        "{msg}"
    );
    let msg =
        err(&with("      lifecycle:\n        postStart: {exec: {command: [a]}, sleep: {seconds: 1}}\n"))
            .to_string();
    assert!(msg.contains("lifecycle.postStart: a hook needs exactly one of exec, httpGet, sleep"), "{msg}");
    let msg = err(&with("      lifecycle:\n        postStart: {httpGet: {port: admin}}\n")).to_string();
    assert!(msg.contains("named port \"admin\" is not among the container's ports"), "{msg}");
    let msg = err(&with("      startupProbe: {exec: {command: [a]}, successThreshold: 2}\n")).to_string();
    assert!(
        msg.contains("startupProbe.successThreshold: must be 1 for a liveness or startup probe"),
        "{msg}"
    );
    let liveness = POD
        .replace("exec: {command: [\"true\"]}", "exec: {command: [\"true\"]}\n        successThreshold: 2");
    assert!(err(&liveness).to_string().contains("livenessProbe.successThreshold: must be 1"));
}

#[test]
fn downward_api_and_projected_volumes_are_accepted_and_checked() {
    let with = |volume: &str| POD.replace("    - name: conf\n", &format!("{volume}    - name: conf\n"));
    let good = with(
        "    - name: info\n      downwardAPI:\n        items:\n          - {path: labels, fieldRef: {fieldPath: metadata.labels}}\n          \
         - {path: cpu, resourceFieldRef: {containerName: app, resource: limits.cpu, divisor: 1m}}\n    \
         - name: all\n      projected:\n        defaultMode: 0o440\n        sources:\n          - configMap: {name: web-conf}\n          \
         - secret: {name: web-secret, items: [{key: password, path: pw}]}\n          \
         - downwardAPI: {items: [{path: ns, fieldRef: {fieldPath: metadata.namespace}}]}\n",
    );
    assert!(parse("m.yaml", &good).is_ok(), "{:?}", parse("m.yaml", &good).err());
    let refused = |volume: &str| err(&with(volume)).to_string();
    let msg = refused("    - name: info\n      downwardAPI: {items: [{path: node, fieldRef: {fieldPath: spec.nodeName}}]}\n");
    assert!(
        msg.contains(
            "spec.volumes[1].downwardAPI.items[0].fieldRef.fieldPath: \"spec.nodeName\": a volume offers"
        ),
        "{msg}"
    );
    let msg = refused("    - name: info\n      downwardAPI: {items: [{path: ../x, fieldRef: {fieldPath: metadata.name}}]}\n");
    assert!(msg.contains("downwardAPI.items[0].path: \"../x\" must be relative"), "{msg}");
    let msg = refused("    - name: info\n      downwardAPI: {items: [{path: cpu, resourceFieldRef: {resource: limits.cpu}}]}\n");
    assert!(
        msg.contains(
            "resourceFieldRef.containerName: \"\": a volume's resourceFieldRef must name a container"
        ),
        "{msg}"
    );
    let msg = refused("    - name: token\n      projected: {sources: [{serviceAccountToken: {path: token, expirationSeconds: 3600}}]}\n");
    assert!(
        msg.contains("spec.volumes[1].projected.sources[0].serviceAccountToken: beemesh issues no Kubernetes service account tokens"),
        "{msg}"
    );
}

/// The share of our corpus of everyday manifests (`tests/corpus`, written like Helm charts'
/// output) that applies unchanged. `cargo test -p beemesh-agent --lib corpus -- --nocapture`
/// prints every refusal. The floor only rises: a change that refuses more fails here.
#[test]
fn the_corpus_of_everyday_manifests_is_accepted() {
    const FLOOR: usize = 25;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus");
    let mut files: Vec<_> =
        std::fs::read_dir(&dir).expect("tests/corpus").flatten().map(|e| e.path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    let mut accepted = 0;
    for path in &files {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let text = std::fs::read_to_string(path).expect("read");
        match parse(&name, &text) {
            Ok(_) => accepted += 1,
            Err(e) => println!("refused {e}"),
        }
    }
    println!(
        "corpus: {accepted} of {} files accepted ({}%)",
        files.len(),
        accepted * 100 / files.len().max(1)
    );
    assert!(!files.is_empty(), "no corpus in {}", dir.display());
    assert!(accepted >= FLOOR, "{accepted} accepted, fewer than {FLOOR}");
}

#[test]
fn octal_modes_service_accounts_and_helm_habits_are_accepted() {
    // `0440` is octal to kubectl (YAML 1.1); only modes under `volumes` are read so.
    let text = POD.replace(
        "      configMap: {name: web-conf}\n",
        "      configMap:\n        name: web-conf\n        defaultMode: 0440\n        items: [{key: a, path: a, mode: 0o600}]\n",
    );
    let objects = parse("m.yaml", &text).expect("octal modes");
    let Some(Object::Pod(pod)) = objects.first() else { panic!("{objects:?}") };
    let cm =
        pod.spec.as_ref().and_then(|s| s.volumes.as_ref()).and_then(|v| v[1].config_map.clone()).expect("cm");
    assert_eq!((cm.default_mode, cm.items.as_ref().and_then(|i| i[0].mode)), (Some(0o440), Some(0o600)));
    let data =
        parse("m.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {mode: \"0644\"}\n");
    let Ok(objects) = data else { panic!("{data:?}") };
    let Some(Object::ConfigMap(c)) = objects.first() else { panic!("{objects:?}") };
    assert_eq!(
        c.data.as_ref().and_then(|d| d.get("mode")).map(String::as_str),
        Some("0644"),
        "data stays text"
    );
    // A ServiceAccount is kept as written.
    let sa = parse(
        "m.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: shop}\nautomountServiceAccountToken: false\nimagePullSecrets: [{name: reg}]\n",
    )
    .expect("service account");
    assert_eq!(sa[0].kind(), "ServiceAccount");
    // Services: affinity None is accepted, ClientIP refused with the reason.
    let svc = |extra: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web}}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n{extra}")
    };
    assert!(parse("m.yaml", &svc("  sessionAffinity: None\n  publishNotReadyAddresses: true\n")).is_ok());
    let msg = err(&svc("  sessionAffinity: ClientIP\n")).to_string();
    assert!(msg.contains("spec.sessionAffinity: ClientIP: beemesh spreads every connection"), "{msg}");
    // A StatefulSet's claims are retained; Delete is refused with the reason.
    let sts = |policy: &str| {
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db}}\nspec:\n  serviceName: db\n  \
             persistentVolumeClaimRetentionPolicy: {{whenDeleted: {policy}, whenScaled: Retain}}\n  selector: {{matchLabels: {{app: db}}}}\n  \
             template:\n    metadata: {{name: ignored, labels: {{app: db}}}}\n    spec: {{containers: [{{name: c, image: db:1}}]}}\n  \
             volumeClaimTemplates:\n  - apiVersion: v1\n    kind: PersistentVolumeClaim\n    metadata: {{name: data}}\n    \
             spec: {{accessModes: [ReadWriteOnce], resources: {{requests: {{storage: 1Gi}}}}}}\n"
        )
    };
    assert!(parse("m.yaml", &sts("Retain")).is_ok(), "{:?}", parse("m.yaml", &sts("Retain")).err());
    let msg = err(&sts("Delete")).to_string();
    assert!(msg.contains("persistentVolumeClaimRetentionPolicy.whenDeleted: Delete: beemesh keeps"), "{msg}");
}

const JOB: &str = r#"apiVersion: batch/v1
kind: Job
metadata: {name: work}
spec:
  completions: 3
  parallelism: 2
  completionMode: Indexed
  backoffLimit: 2
  activeDeadlineSeconds: 600
  ttlSecondsAfterFinished: 60
  template:
    metadata: {labels: {app: work}}
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox:1, command: [sh, -c, 'echo $JOB_COMPLETION_INDEX']}]
"#;

const CRON_JOB: &str = r#"apiVersion: batch/v1
kind: CronJob
metadata: {name: backup}
spec:
  schedule: "30 2 * * *"
  timeZone: Europe/Berlin
  concurrencyPolicy: Forbid
  startingDeadlineSeconds: 300
  successfulJobsHistoryLimit: 3
  failedJobsHistoryLimit: 5
  jobTemplate:
    metadata: {labels: {app: backup}}
    spec:
      backoffLimit: 2
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: c, image: busybox:1}]
"#;

#[test]
fn jobs_and_cron_jobs_parse_and_are_checked_as_kubernetes_does() {
    let objects = parse("j.yaml", &format!("{JOB}---\n{CRON_JOB}")).expect("valid");
    assert_eq!(
        objects.iter().map(Object::shown).collect::<Vec<_>>(),
        ["job.batch/work", "cronjob.batch/backup"]
    );
    let bad = |from: &str, to: &str, text: &str| {
        let e = err(&text.replace(from, to)).to_string();
        assert!(!e.is_empty());
        e
    };
    assert_eq!(
        bad("restartPolicy: Never", "restartPolicy: Always", JOB),
        r#"m.yaml:14: spec.template.spec.restartPolicy: "Always": only Never or OnFailure is allowed here"#
    );
    assert_eq!(
        bad("      restartPolicy: Never\n", "", JOB),
        "m.yaml:13: spec.template.spec.restartPolicy: required here: Never or OnFailure"
    );
    assert_eq!(
        bad("  completions: 3\n", "", JOB),
        "m.yaml:4: spec.completions: an Indexed Job needs completions"
    );
    assert_eq!(
        bad("completionMode: Indexed", "completionMode: Sharded", JOB),
        r#"m.yaml:7: spec.completionMode: "Sharded": expected NonIndexed or Indexed"#
    );
    assert!(bad("  backoffLimit: 2\n", "  backoffLimitPerIndex: 2\n", JOB)
        .contains("spec.backoffLimitPerIndex: field `backoffLimitPerIndex` is not supported"));
    assert!(
        bad("activeDeadlineSeconds: 600", "activeDeadlineSeconds: 0", JOB).contains("must be greater than 0")
    );
    assert!(bad("name: work}", &format!("name: {}}}", "w".repeat(64)), JOB).contains("at most 63 characters"));
    assert_eq!(
        bad("30 2 * * *", "30 2 * *", CRON_JOB),
        r#"m.yaml:5: spec.schedule: "30 2 * *": expected five fields (minute hour day-of-month month day-of-week) or a @nickname"#
    );
    assert!(bad("Europe/Berlin", "Europe/Atlantis", CRON_JOB)
        .starts_with(r#"m.yaml:6: spec.timeZone: unknown time zone "Europe/Atlantis""#));
    assert!(bad("Forbid", "Sometimes", CRON_JOB).contains("expected Allow, Forbid or Replace"));
    assert!(bad("name: backup}", &format!("name: {}}}", "b".repeat(53)), CRON_JOB).contains("at most 52"));
    assert_eq!(
        bad("restartPolicy: OnFailure", "restartPolicy: Always", CRON_JOB),
        r#"m.yaml:17: spec.jobTemplate.spec.template.spec.restartPolicy: "Always": only Never or OnFailure is allowed here"#
    );
}

#[test]
fn claims_storage_classes_and_pods_that_mount_claims_parse_and_are_checked() {
    let text = r#"apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast-ssd}
provisioner: ebs.csi.aws.com
parameters: {type: gp3}
reclaimPolicy: Retain
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: uploads}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: fast-ssd
  resources: {requests: {storage: 5Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  volumes: [{name: data, persistentVolumeClaim: {claimName: uploads, readOnly: true}}]
  containers: [{name: c, image: busybox:1, volumeMounts: [{name: data, mountPath: /data}]}]
"#;
    let objects = parse("c.yaml", text).expect("valid");
    assert_eq!(objects[0].namespace(), "", "a StorageClass is cluster-scoped");
    assert_eq!(objects[1].shown(), "persistentvolumeclaim/uploads");
    let bad = |from: &str, to: &str| err(&text.replace(from, to)).to_string();
    assert_eq!(
        bad("resources: {requests: {storage: 5Gi}}", "resources: {}"),
        "m.yaml:16: spec.resources.requests.storage: a claim needs a storage request"
    );
    assert!(bad("[ReadWriteOnce]", "[ReadWriteSometimes]").contains("spec.accessModes[0]"));
    assert!(bad("storageClassName: fast-ssd", "volumeMode: Block").contains("Filesystem only"));
    assert!(bad("reclaimPolicy: Retain", "reclaimPolicy: Recycle").contains("expected Delete or Retain"));
    assert!(bad("claimName: uploads", "claimName: Up_loads").contains("invalid claim name"));
    assert!(bad("{name: data, persistentVolumeClaim", "{name: data, emptyDir: {}, persistentVolumeClaim")
        .contains("exactly one"));
}

#[test]
fn disruption_budgets_parse_and_are_checked() {
    let text = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web}\nspec:\n  minAvailable: 50%\n  selector: {matchLabels: {app: web}}\n";
    assert_eq!(parse("p.yaml", text).expect("valid")[0].shown(), "poddisruptionbudget.policy/web");
    assert!(err(&text.replace("  minAvailable: 50%\n", "  minAvailable: 1\n  maxUnavailable: 1\n"))
        .to_string()
        .contains("cannot both be set"));
    assert!(err(&text.replace("50%", "150%")).to_string().contains("spec.minAvailable"));
    assert!(err(&text.replace("  minAvailable: 50%\n", ""))
        .to_string()
        .contains("needs minAvailable or maxUnavailable"));
}

#[test]
fn extended_resources_are_counts_and_other_resources_are_refused_by_name() {
    let with = |resources: &str| POD.replace("limits: {cpu: 500m, memory: 64Mi}", resources);
    assert!(parse("m.yaml", &with("limits: {cpu: 500m, example.com/dongle: 2}")).is_ok());
    assert!(parse("m.yaml", &with("{requests: {example.com/dongle: 1}, limits: {example.com/dongle: 1}}"))
        .is_ok());
    let e = err(&with("{requests: {example.com/dongle: 1}, limits: {example.com/dongle: 2}}")).to_string();
    assert!(e.contains("must equal its limit"), "{e}");
    let e = err(&with("limits: {example.com/dongle: 500m}")).to_string();
    assert!(e.contains("a whole count"), "{e}");
    let e = err(&with("limits: {hugepages-2Mi: 64Mi}")).to_string();
    assert!(e.contains("resource \"hugepages-2Mi\" is not supported by beemesh"), "{e}");
    let e = err(&with("limits: {kubernetes.io/gpu: 1}")).to_string();
    assert!(e.contains("is not supported"), "{e}");
}

#[test]
fn grpc_probes_are_accepted_and_checked() {
    let with = |probe: &str| POD.replace("exec: {command: [\"true\"]}", probe);
    assert!(parse("m.yaml", &with("grpc: {port: 9090, service: web}")).is_ok());
    assert!(parse("m.yaml", &with("grpc: {port: 9090}")).is_ok());
    let e = err(&with("grpc: {port: 0}")).to_string();
    assert!(e.contains("livenessProbe.grpc.port: port 0 is not 1-65535"), "{e}");
    let e = err(&with("grpc: {port: 9090}\n        exec: {command: [\"true\"]}")).to_string();
    assert!(e.contains("needs exactly one of exec, httpGet, tcpSocket, grpc"), "{e}");
}
