//! What beemesh implements of each kind, field by field: `unsupported` names every other
//! field by name (a Pod that asks for `hostNetwork` must not run without it; a Deployment's
//! Pod template follows the Pod's list, so what the scheduler could not run is refused at
//! apply), and `validate_pod` checks the values the runtime relies on.

use std::collections::{BTreeSet, HashSet};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{join, parse_cpu_millis, parse_memory_bytes};
use crate::identity::{is_dns_label, is_dns_subdomain};
use crate::yamldoc::FieldError;

const METADATA: &[&str] =
    &["metadata.name", "metadata.namespace", "metadata.labels.*", "metadata.annotations.*"];

const CONTAINER: &[&str] = &[
    "name",
    "image",
    "imagePullPolicy",
    "command[]",
    "args[]",
    "workingDir",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "stdin",
    "stdinOnce",
    "tty",
    "env[].name",
    "env[].value",
    "env[].valueFrom.configMapKeyRef.name",
    "env[].valueFrom.configMapKeyRef.key",
    "env[].valueFrom.configMapKeyRef.optional",
    "env[].valueFrom.secretKeyRef.name",
    "env[].valueFrom.secretKeyRef.key",
    "env[].valueFrom.secretKeyRef.optional",
    "env[].valueFrom.fieldRef.fieldPath",
    "env[].valueFrom.fieldRef.apiVersion",
    "env[].valueFrom.resourceFieldRef.containerName",
    "env[].valueFrom.resourceFieldRef.resource",
    "env[].valueFrom.resourceFieldRef.divisor",
    "envFrom[].prefix",
    "envFrom[].configMapRef.name",
    "envFrom[].configMapRef.optional",
    "envFrom[].secretRef.name",
    "envFrom[].secretRef.optional",
    "ports[].name",
    "ports[].containerPort",
    "ports[].hostPort",
    "ports[].hostIP",
    "ports[].protocol",
    // cpu, memory and extended resources (`validate_container` names what else is refused).
    "resources.requests.*",
    "resources.limits.*",
    "volumeMounts[].name",
    "volumeMounts[].mountPath",
    "volumeMounts[].readOnly",
    "volumeMounts[].subPath",
    "securityContext.runAsUser",
    "securityContext.runAsGroup",
    "securityContext.runAsNonRoot",
    "securityContext.readOnlyRootFilesystem",
    "securityContext.allowPrivilegeEscalation",
    "securityContext.privileged",
    "securityContext.capabilities.add[]",
    "securityContext.capabilities.drop[]",
    "securityContext.seccompProfile.type",
    "securityContext.seccompProfile.localhostProfile",
];

/// What a probe and a lifecycle hook can both do: exec and httpGet.
const HANDLER: &[&str] = &[
    "exec.command[]",
    "httpGet.path",
    "httpGet.port",
    "httpGet.host",
    "httpGet.scheme",
    "httpGet.httpHeaders[].name",
    "httpGet.httpHeaders[].value",
];

/// A probe's own fields, besides [`HANDLER`].
const PROBE: &[&str] = &[
    "tcpSocket.port",
    "tcpSocket.host",
    "grpc.port",
    "grpc.service",
    "initialDelaySeconds",
    "periodSeconds",
    "timeoutSeconds",
    "successThreshold",
    "failureThreshold",
];

/// A lifecycle hook's own fields (`lifecycle.postStart`, `lifecycle.preStop`), besides
/// [`HANDLER`].
const HOOK: &[&str] = &["sleep.seconds"];

const POD_SPEC: &[&str] = &[
    "spec.restartPolicy",
    "spec.serviceAccountName",
    "spec.serviceAccount",
    // beemesh mounts no service account token either way (a pod's identity is its SVID).
    "spec.automountServiceAccountToken",
    "spec.terminationGracePeriodSeconds",
    // Counted from the pod's start; then stopped for good, Failed with DeadlineExceeded.
    "spec.activeDeadlineSeconds",
    "spec.hostname",
    // Names the headless Service whose DNS answers `HOSTNAME.SUBDOMAIN.NS.svc` (app::forward).
    "spec.subdomain",
    "spec.nodeName",
    "spec.shareProcessNamespace",
    // Service env vars at container start (pod::spec::service_links).
    "spec.enableServiceLinks",
    // pod::dns: resolv.conf and hosts as the kubelet writes them.
    "spec.dnsPolicy",
    "spec.dnsConfig.nameservers[]",
    "spec.dnsConfig.searches[]",
    "spec.dnsConfig.options[].name",
    "spec.dnsConfig.options[].value",
    "spec.hostAliases[].ip",
    "spec.hostAliases[].hostnames[]",
    "spec.volumes[].name",
    "spec.volumes[].emptyDir.medium",
    "spec.volumes[].emptyDir.sizeLimit",
    "spec.volumes[].configMap.name",
    "spec.volumes[].configMap.items[].key",
    "spec.volumes[].configMap.items[].path",
    "spec.volumes[].configMap.items[].mode",
    "spec.volumes[].configMap.defaultMode",
    "spec.volumes[].configMap.optional",
    "spec.volumes[].secret.secretName",
    "spec.volumes[].secret.items[].key",
    "spec.volumes[].secret.items[].path",
    "spec.volumes[].secret.items[].mode",
    "spec.volumes[].secret.defaultMode",
    "spec.volumes[].secret.optional",
    "spec.volumes[].hostPath.path",
    "spec.volumes[].hostPath.type",
    // A claim's local volume on the host the claim is bound to (`app::controllers::claims`).
    "spec.volumes[].persistentVolumeClaim.claimName",
    "spec.volumes[].persistentVolumeClaim.readOnly",
    "spec.securityContext.runAsUser",
    "spec.securityContext.runAsGroup",
    "spec.securityContext.runAsNonRoot",
    "spec.securityContext.fsGroup",
    // Volumes are given to the fsGroup when the pod starts, whichever policy.
    "spec.securityContext.fsGroupChangePolicy",
    "spec.securityContext.supplementalGroups[]",
    "spec.securityContext.seccompProfile.type",
    "spec.securityContext.seccompProfile.localhostProfile",
    "spec.schedulerName",
    // Kept on the object; beemesh neither preempts nor orders placement by priority.
    "spec.priorityClassName",
    // Kept; images come from the host's store or its peers, never a registry.
    "spec.imagePullSecrets[].name",
    "spec.nodeSelector.*",
    "spec.tolerations[].key",
    "spec.tolerations[].operator",
    "spec.tolerations[].value",
    "spec.tolerations[].effect",
    "spec.tolerations[].tolerationSeconds",
    "spec.topologySpreadConstraints[].maxSkew",
    "spec.topologySpreadConstraints[].topologyKey",
    "spec.topologySpreadConstraints[].whenUnsatisfiable",
];

/// A node selector term's fields (node affinity).
const NODE_TERM: &[&str] = &[
    "matchExpressions[].key",
    "matchExpressions[].operator",
    "matchExpressions[].values[]",
    "matchFields[].key",
    "matchFields[].operator",
    "matchFields[].values[]",
];

/// A pod affinity term's fields.
const POD_TERM: &[&str] = &[
    "labelSelector.matchLabels.*",
    "labelSelector.matchExpressions[].key",
    "labelSelector.matchExpressions[].operator",
    "labelSelector.matchExpressions[].values[]",
    "topologyKey",
    "namespaces[]",
];

/// The scheduling fields of a pod spec: node affinity, pod (anti-)affinity, spreading.
fn scheduling() -> Vec<String> {
    let mut v = Vec::new();
    let node = "spec.affinity.nodeAffinity";
    for f in NODE_TERM {
        v.push(format!("{node}.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[].{f}"));
        v.push(format!("{node}.preferredDuringSchedulingIgnoredDuringExecution[].preference.{f}"));
    }
    v.push(format!("{node}.preferredDuringSchedulingIgnoredDuringExecution[].weight"));
    for kind in ["podAffinity", "podAntiAffinity"] {
        let base = format!("spec.affinity.{kind}");
        for f in POD_TERM {
            v.push(format!("{base}.requiredDuringSchedulingIgnoredDuringExecution[].{f}"));
            v.push(format!("{base}.preferredDuringSchedulingIgnoredDuringExecution[].podAffinityTerm.{f}"));
        }
        v.push(format!("{base}.preferredDuringSchedulingIgnoredDuringExecution[].weight"));
    }
    for f in &POD_TERM[..4] {
        v.push(format!("spec.topologySpreadConstraints[].{f}"));
    }
    v
}

/// A Deployment's or StatefulSet's selector.
const SELECTOR: &[&str] = &[
    "spec.selector.matchLabels.*",
    "spec.selector.matchExpressions[].key",
    "spec.selector.matchExpressions[].operator",
    "spec.selector.matchExpressions[].values[]",
];

/// What the scheduling issue implements of a Deployment (besides the selector and template).
const DEPLOYMENT: &[&str] = &[
    "spec.replicas",
    "spec.strategy.type",
    "spec.strategy.rollingUpdate.maxSurge",
    "spec.strategy.rollingUpdate.maxUnavailable",
    "spec.revisionHistoryLimit",
    "spec.minReadySeconds",
    "spec.progressDeadlineSeconds",
];

/// What the scheduling issue implements of a StatefulSet (besides the selector and template).
const STATEFUL_SET: &[&str] = &[
    "spec.replicas",
    "spec.serviceName",
    "spec.podManagementPolicy",
    "spec.updateStrategy.type",
    "spec.updateStrategy.rollingUpdate.partition",
    "spec.revisionHistoryLimit",
    "spec.minReadySeconds",
    // Type meta of the claims, as `kubectl get -o yaml` writes it.
    "spec.volumeClaimTemplates[].apiVersion",
    "spec.volumeClaimTemplates[].kind",
    // beemesh keeps a StatefulSet's claims when it is deleted or scaled down: `Retain` only.
    "spec.persistentVolumeClaimRetentionPolicy.whenDeleted",
    "spec.persistentVolumeClaimRetentionPolicy.whenScaled",
    "spec.volumeClaimTemplates[].metadata.name",
    "spec.volumeClaimTemplates[].metadata.labels.*",
    "spec.volumeClaimTemplates[].metadata.annotations.*",
    "spec.volumeClaimTemplates[].spec.accessModes[]",
    "spec.volumeClaimTemplates[].spec.storageClassName",
    "spec.volumeClaimTemplates[].spec.resources.requests.storage",
];

/// What beemesh implements of a ReplicaSet applied directly (besides selector and template).
const REPLICA_SET: &[&str] = &["spec.replicas", "spec.minReadySeconds"];

/// What beemesh implements of a DaemonSet (besides selector and template).
const DAEMON_SET: &[&str] = &[
    "spec.updateStrategy.type",
    "spec.updateStrategy.rollingUpdate.maxUnavailable",
    "spec.updateStrategy.rollingUpdate.maxSurge",
    "spec.minReadySeconds",
    "spec.revisionHistoryLimit",
];

/// What beemesh implements of a Job's spec (`app::controllers::job`), besides its template.
const JOB: &[&str] = &[
    "completions",
    "parallelism",
    "completionMode",
    "backoffLimit",
    "activeDeadlineSeconds",
    "ttlSecondsAfterFinished",
    "suspend",
];

/// What beemesh implements of a CronJob (`app::controllers::cron_job`), besides its Job
/// template's spec.
const CRON_JOB: &[&str] = &[
    "spec.schedule",
    "spec.timeZone",
    "spec.concurrencyPolicy",
    "spec.startingDeadlineSeconds",
    "spec.successfulJobsHistoryLimit",
    "spec.failedJobsHistoryLimit",
    "spec.suspend",
    "spec.jobTemplate.metadata.labels.*",
    "spec.jobTemplate.metadata.annotations.*",
];

/// A PodDisruptionBudget (its selector: [`SELECTOR`]).
const DISRUPTION_BUDGET: &[&str] =
    &["spec.minAvailable", "spec.maxUnavailable", "spec.unhealthyPodEvictionPolicy"];

/// A PersistentVolumeClaim: a local volume on the host it binds to.
const CLAIM: &[&str] = &[
    "spec.accessModes[]",
    "spec.resources.requests.storage",
    "spec.resources.limits.storage",
    "spec.storageClassName",
    // `Filesystem` only (`workloads::claim_spec`).
    "spec.volumeMode",
];

/// A StorageClass: kept as written; every class means a local volume on one host.
const STORAGE_CLASS: &[&str] = &[
    "provisioner",
    "parameters.*",
    "reclaimPolicy",
    "volumeBindingMode",
    "allowVolumeExpansion",
    "mountOptions[]",
];

/// What the tunnels issue implements of a Service.
const SERVICE: &[&str] = &[
    "spec.type",
    "spec.clusterIP",
    // Single-stack IPv4: one address, IPv4, SingleStack or PreferDualStack
    // (`kinds::validate_service`).
    "spec.clusterIPs[]",
    "spec.ipFamilies[]",
    "spec.ipFamilyPolicy",
    // Cluster or Local (`services::endpoints::ServicePort::serving`).
    "spec.internalTrafficPolicy",
    "spec.externalTrafficPolicy",
    "spec.selector.*",
    "spec.ports[].name",
    "spec.ports[].protocol",
    "spec.ports[].port",
    "spec.ports[].targetPort",
    "spec.ports[].nodePort",
    // Not-ready pods are endpoints and DNS answers too (app::services::endpoints).
    "spec.publishNotReadyAddresses",
    // `None` only (`kinds::validate_service`).
    "spec.sessionAffinity",
];

/// A downward API file's fields (a `downwardAPI` volume's or projection's items).
const DOWNWARD_ITEM: &[&str] = &[
    "path",
    "mode",
    "fieldRef.fieldPath",
    "fieldRef.apiVersion",
    "resourceFieldRef.containerName",
    "resourceFieldRef.resource",
    "resourceFieldRef.divisor",
];

/// `downwardAPI` and `projected` volumes.
fn file_volumes() -> Vec<String> {
    let mut v = vec![
        "spec.volumes[].downwardAPI.defaultMode".to_owned(),
        "spec.volumes[].projected.defaultMode".into(),
    ];
    for base in ["spec.volumes[].downwardAPI", "spec.volumes[].projected.sources[].downwardAPI"] {
        v.extend(DOWNWARD_ITEM.iter().map(|f| format!("{base}.items[].{f}")));
    }
    let source = "spec.volumes[].projected.sources[]";
    for kind in ["configMap", "secret"] {
        v.extend(
            ["name", "optional", "items[].key", "items[].path", "items[].mode"]
                .map(|f| format!("{source}.{kind}.{f}")),
        );
    }
    // Accepted only to be refused with the reason (`validate_projection`).
    v.extend(["audience", "expirationSeconds", "path"].map(|f| format!("{source}.serviceAccountToken.{f}")));
    v
}

/// A Pod's `spec.*` patterns: the pod-level fields and every container's.
fn pod_spec() -> Vec<String> {
    let mut v: Vec<String> = POD_SPEC.iter().map(|s| s.to_string()).collect();
    v.extend(file_volumes());
    v.extend(scheduling());
    for list in ["spec.containers[]", "spec.initContainers[]"] {
        v.extend(CONTAINER.iter().map(|f| format!("{list}.{f}")));
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
            v.extend(HANDLER.iter().chain(PROBE).map(|f| format!("{list}.{probe}.{f}")));
        }
        for hook in ["postStart", "preStop"] {
            v.extend(HANDLER.iter().chain(HOOK).map(|f| format!("{list}.lifecycle.{hook}.{f}")));
        }
    }
    v
}

/// A workload's fields: its own, its selector, and its Pod template under `spec.template`.
fn workload(own: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = own.iter().chain(SELECTOR).map(|s| s.to_string()).collect();
    v.extend(template("spec.template"));
    v
}

/// A Pod template's fields under `at`: labels, annotations and the Pod's spec (a template's
/// name is ignored by Kubernetes too).
fn template(at: &str) -> Vec<String> {
    let mut v: Vec<String> =
        ["metadata.name", "metadata.labels.*", "metadata.annotations.*"].map(|f| format!("{at}.{f}")).into();
    v.extend(pod_spec().into_iter().map(|f| format!("{at}.{f}")));
    v
}

/// A Job spec's fields under `at` (`spec`, or a CronJob's `spec.jobTemplate.spec`): no
/// selector (the Job's own uid selects its pods, as Kubernetes generates it).
fn job(at: &str) -> Vec<String> {
    let mut v: Vec<String> = JOB.iter().map(|f| format!("{at}.{f}")).collect();
    v.extend(template(&format!("{at}.template")));
    v
}

/// Field patterns per kind (`[]`: any sequence item, `*`: any map key), and every prefix of
/// them (a prefix is a mapping that may appear on the way).
struct Allowed {
    leaves: HashSet<String>,
    inner: HashSet<String>,
}

impl Allowed {
    fn new(patterns: Vec<String>) -> Self {
        let mut inner = HashSet::new();
        for p in &patterns {
            for (i, c) in p.char_indices() {
                if c == '.' || c == '[' {
                    inner.insert(p[..i].to_owned());
                }
            }
        }
        Self { leaves: patterns.into_iter().collect(), inner }
    }
}

/// `None` for a kind whose every Kubernetes field beemesh implements (NetworkPolicy: the
/// policy engine enforces all of it).
fn allowed(kind: &str) -> Option<&'static Allowed> {
    static POD: OnceLock<Allowed> = OnceLock::new();
    static CONFIGMAP: OnceLock<Allowed> = OnceLock::new();
    static SECRET: OnceLock<Allowed> = OnceLock::new();
    static NAMESPACE: OnceLock<Allowed> = OnceLock::new();
    static SERVICE_FIELDS: OnceLock<Allowed> = OnceLock::new();
    static DEPLOYMENT_FIELDS: OnceLock<Allowed> = OnceLock::new();
    static STATEFUL_SET_FIELDS: OnceLock<Allowed> = OnceLock::new();
    static REPLICA_SET_FIELDS: OnceLock<Allowed> = OnceLock::new();
    static DAEMON_SET_FIELDS: OnceLock<Allowed> = OnceLock::new();
    static SERVICE_ACCOUNT_FIELDS: OnceLock<Allowed> = OnceLock::new();
    static JOB_FIELDS: OnceLock<Allowed> = OnceLock::new();
    static CLAIM_FIELDS: OnceLock<Allowed> = OnceLock::new();
    static BUDGET_FIELDS: OnceLock<Allowed> = OnceLock::new();
    static STORAGE_CLASS_FIELDS: OnceLock<Allowed> = OnceLock::new();
    static CRON_JOB_FIELDS: OnceLock<Allowed> = OnceLock::new();
    let with = |extra: Vec<String>| -> Allowed {
        let mut v: Vec<String> =
            ["apiVersion", "kind"].iter().chain(METADATA).map(|s| s.to_string()).collect();
        v.extend(extra);
        Allowed::new(v)
    };
    let strings = |l: &[&str]| -> Vec<String> { l.iter().map(|s| s.to_string()).collect() };
    Some(match kind {
        "Pod" => POD.get_or_init(|| with(pod_spec())),
        "ConfigMap" => CONFIGMAP.get_or_init(|| with(strings(&["data.*", "binaryData.*", "immutable"]))),
        "Secret" => SECRET.get_or_init(|| with(strings(&["data.*", "stringData.*", "type", "immutable"]))),
        "Namespace" => NAMESPACE.get_or_init(|| with(Vec::new())),
        "Service" => SERVICE_FIELDS.get_or_init(|| with(strings(SERVICE))),
        "Deployment" => DEPLOYMENT_FIELDS.get_or_init(|| with(workload(DEPLOYMENT))),
        "StatefulSet" => STATEFUL_SET_FIELDS.get_or_init(|| with(workload(STATEFUL_SET))),
        "ReplicaSet" => REPLICA_SET_FIELDS.get_or_init(|| with(workload(REPLICA_SET))),
        "DaemonSet" => DAEMON_SET_FIELDS.get_or_init(|| with(workload(DAEMON_SET))),
        "ServiceAccount" => SERVICE_ACCOUNT_FIELDS.get_or_init(|| {
            with(strings(&["automountServiceAccountToken", "imagePullSecrets[].name", "secrets[].name"]))
        }),
        "Job" => JOB_FIELDS.get_or_init(|| with(job("spec"))),
        "PersistentVolumeClaim" => CLAIM_FIELDS.get_or_init(|| with(strings(CLAIM))),
        "PodDisruptionBudget" => BUDGET_FIELDS.get_or_init(|| {
            let mut v = strings(DISRUPTION_BUDGET);
            v.extend(strings(SELECTOR));
            with(v)
        }),
        "StorageClass" => STORAGE_CLASS_FIELDS.get_or_init(|| with(strings(STORAGE_CLASS))),
        "CronJob" => CRON_JOB_FIELDS.get_or_init(|| {
            let mut v = strings(CRON_JOB);
            v.extend(job("spec.jobTemplate.spec"));
            with(v)
        }),
        _ => return None,
    })
}

/// Every field outside what beemesh implements for `kind`, in document order (what is inside
/// a refused field is not looked at). `status` (written by whoever ran the object before) is
/// ignored.
pub(super) fn unsupported(value: &serde_yaml::Value, kind: &str, prefix: &str) -> Vec<FieldError> {
    let mut out = Vec::new();
    if let Some(allowed) = allowed(kind) {
        walk(value, allowed, "", prefix, &mut out);
    }
    out
}

fn walk(value: &serde_yaml::Value, allowed: &Allowed, pattern: &str, shown: &str, out: &mut Vec<FieldError>) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map {
                let Some(key) = k.as_str() else { continue };
                if pattern.is_empty() && key == "status" {
                    continue;
                }
                let exact = if pattern.is_empty() { key.to_owned() } else { format!("{pattern}.{key}") };
                let wildcard = format!("{pattern}.*");
                let next = if allowed.leaves.contains(&exact) || allowed.inner.contains(&exact) {
                    exact
                } else if allowed.leaves.contains(&wildcard) {
                    wildcard
                } else {
                    out.push(
                        FieldError::new(
                            join(shown, key),
                            format!("field `{key}` is not supported by beemesh (it would be ignored, so the object is refused)"),
                        )
                        .at(format!("{key}:")),
                    );
                    continue;
                };
                walk(v, allowed, &next, &join(shown, key), out);
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(v, allowed, &format!("{pattern}[]"), &format!("{shown}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// An extended resource's name: `DOMAIN/NAME`, outside Kubernetes' own domains.
pub fn is_extended_resource(name: &str) -> bool {
    match name.split_once('/') {
        Some((domain, rest)) => {
            !rest.is_empty()
                && is_dns_subdomain(domain)
                && !(domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") || domain == "requests")
        }
        None => false,
    }
}

/// An extended resource's quantity: a whole count.
pub fn extended_count(q: &str) -> Result<u64, String> {
    q.parse::<u64>().map_err(|_| format!("{q:?}: an extended resource is a whole count"))
}

/// A `fieldRef.fieldPath` an env var may read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvField<'a> {
    Name,
    Namespace,
    Uid,
    Label(&'a str),
    Annotation(&'a str),
    NodeName,
    ServiceAccountName,
    /// The pod's mesh address (`status.podIP`; `status.podIPs`: the same, as beemesh gives a
    /// pod one address).
    PodIp,
    /// Its host's InternalIP (`status.hostIP`; `status.hostIPs`: all of them, comma-separated).
    HostIp,
    HostIps,
}

/// `path` as an [`EnvField`]: the kubelet's list.
pub fn env_field(path: &str) -> Result<EnvField<'_>, String> {
    let keyed = |prefix: &str| path.strip_prefix(prefix)?.strip_suffix("']").filter(|k| !k.is_empty());
    Ok(match path {
        "metadata.name" => EnvField::Name,
        "metadata.namespace" => EnvField::Namespace,
        "metadata.uid" => EnvField::Uid,
        "spec.nodeName" => EnvField::NodeName,
        "spec.serviceAccountName" => EnvField::ServiceAccountName,
        "status.podIP" | "status.podIPs" => EnvField::PodIp,
        "status.hostIP" => EnvField::HostIp,
        "status.hostIPs" => EnvField::HostIps,
        _ => match (keyed("metadata.labels['"), keyed("metadata.annotations['")) {
            (Some(key), _) => EnvField::Label(key),
            (_, Some(key)) => EnvField::Annotation(key),
            _ => return Err(format!(
                "{path:?} is not a field the downward API offers (metadata.name, metadata.namespace, metadata.uid, metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, spec.serviceAccountName, status.podIP, status.podIPs, status.hostIP, status.hostIPs)"
            )),
        },
    })
}

/// Values the runtime relies on. `claims`: names a volumeMount may use besides the pod's
/// volumes (a StatefulSet's volumeClaimTemplates).
pub(super) fn validate_pod(pod: &Pod, prefix: &str, claims: &BTreeSet<String>) -> Result<(), FieldError> {
    let at = |f: &str| join(prefix, f);
    let Some(spec) = &pod.spec else {
        return Err(FieldError::new(at("spec"), "a Pod needs a spec with containers"));
    };
    if spec.containers.is_empty() {
        return Err(FieldError::new(at("spec.containers"), "a Pod needs at least one container"));
    }
    if let Some(policy) = &spec.restart_policy {
        if !matches!(policy.as_str(), "Always" | "OnFailure" | "Never") {
            return Err(FieldError::new(
                at("spec.restartPolicy"),
                format!("{policy:?}: expected Always, OnFailure or Never"),
            )
            .at(policy.clone()));
        }
    }
    check_topology_keys(spec).map_err(|(f, m)| FieldError::new(at(&f), m))?;
    crate::pod::dns::validate(spec).map_err(|(f, m)| FieldError::new(at(&f), m))?;
    if let Some(d) = spec.active_deadline_seconds.filter(|d| *d <= 0) {
        return Err(FieldError::new(at("spec.activeDeadlineSeconds"), format!("{d}: must be more than 0")));
    }
    for sa in [&spec.service_account_name, &spec.service_account].into_iter().flatten() {
        if !is_dns_subdomain(sa) {
            return Err(FieldError::new(
                at("spec.serviceAccountName"),
                format!("invalid service account {sa:?}"),
            ));
        }
    }
    if let Some(class) = spec.priority_class_name.as_deref().filter(|c| !is_dns_subdomain(c)) {
        return Err(FieldError::new(
            at("spec.priorityClassName"),
            format!("invalid priority class {class:?}"),
        )
        .at(class.to_owned()));
    }
    for (i, secret) in spec.image_pull_secrets.iter().flatten().enumerate() {
        if !is_dns_subdomain(&secret.name) {
            return Err(FieldError::new(
                at(&format!("spec.imagePullSecrets[{i}].name")),
                format!("invalid secret name {:?}", secret.name),
            ));
        }
    }
    let mut volumes = BTreeSet::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let field = at(&format!("spec.volumes[{i}]"));
        if !is_dns_label(&v.name) || claims.contains(&v.name) || !volumes.insert(v.name.as_str()) {
            return Err(FieldError::new(
                format!("{field}.name"),
                format!("invalid or repeated volume name {:?}", v.name),
            ));
        }
        let sources = [
            v.empty_dir.is_some(),
            v.config_map.is_some(),
            v.secret.is_some(),
            v.host_path.is_some(),
            v.downward_api.is_some(),
            v.projected.is_some(),
            v.persistent_volume_claim.is_some(),
        ];
        exactly_one(
            &sources,
            &field,
            "a volume",
            "emptyDir, configMap, secret, hostPath, downwardAPI, projected, persistentVolumeClaim",
        )?;
        if let Some(claim) = v.persistent_volume_claim.as_ref().map(|c| c.claim_name.as_str()) {
            if !is_dns_subdomain(claim) {
                return Err(FieldError::new(
                    format!("{field}.persistentVolumeClaim.claimName"),
                    format!("invalid claim name {claim:?}"),
                )
                .at(claim.to_owned()));
            }
        }
        let items = v.downward_api.as_ref().map(|d| d.items.as_deref().unwrap_or_default());
        validate_downward(items, spec, &field)?;
        for (j, source) in v.projected.iter().flat_map(|p| p.sources.iter().flatten()).enumerate() {
            validate_projection(source, spec, &format!("{field}.projected.sources[{j}]"))?;
        }
    }
    crate::pod::security::validate(pod, &at)?;
    volumes.extend(claims.iter().map(String::as_str));
    let mut names = BTreeSet::new();
    let lists = [
        ("initContainers", spec.init_containers.as_deref().unwrap_or_default()),
        ("containers", &spec.containers),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            let field = at(&format!("spec.{list}[{i}]"));
            if !is_dns_label(&c.name) || !names.insert(c.name.as_str()) {
                return Err(FieldError::new(
                    format!("{field}.name"),
                    format!("invalid or repeated container name {:?}", c.name),
                )
                .at(c.name.clone()));
            }
            validate_container(c, &field, &volumes)?;
        }
    }
    Ok(())
}

fn validate_container(c: &Container, field: &str, volumes: &BTreeSet<&str>) -> Result<(), FieldError> {
    if c.image.as_deref().is_none_or(str::is_empty) {
        return Err(FieldError::new(format!("{field}.image"), "a container needs an image"));
    }
    if let Some(p) = c.termination_message_path.as_deref().filter(|p| !p.starts_with('/') || p.contains('\0'))
    {
        return Err(FieldError::new(
            format!("{field}.terminationMessagePath"),
            format!("{p:?} must be an absolute path"),
        ));
    }
    if let Some(p) =
        c.termination_message_policy.as_deref().filter(|p| !matches!(*p, "File" | "FallbackToLogsOnError"))
    {
        return Err(FieldError::new(
            format!("{field}.terminationMessagePolicy"),
            format!("{p:?}: expected File or FallbackToLogsOnError"),
        )
        .at(p.to_owned()));
    }
    for (kind, list) in [
        ("requests", c.resources.as_ref().and_then(|r| r.requests.as_ref())),
        ("limits", c.resources.as_ref().and_then(|r| r.limits.as_ref())),
    ] {
        for (name, q) in list.into_iter().flatten() {
            let f = format!("{field}.resources.{kind}.{name}");
            let parsed = match name.as_str() {
                "cpu" => parse_cpu_millis(&q.0).map(|_| ()),
                "memory" => parse_memory_bytes(&q.0).map(|_| ()),
                _ if is_extended_resource(name) => extended_count(&q.0).map(|_| ()),
                _ => Err(format!(
                    "resource {name:?} is not supported by beemesh (cpu, memory, and extended resources such as example.com/device that hosts offer with --node-resource)"
                )),
            };
            parsed.map_err(|reason| FieldError::new(f, reason).at(q.0.clone()))?;
        }
    }
    // As Kubernetes: an extended resource cannot be overcommitted (a request equals its limit).
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    for (name, limit) in c.resources.as_ref().and_then(|r| r.limits.as_ref()).into_iter().flatten() {
        let request = requests.and_then(|r| r.get(name));
        if is_extended_resource(name)
            && request.is_some_and(|r| extended_count(&r.0) != extended_count(&limit.0))
        {
            return Err(FieldError::new(
                format!("{field}.resources.requests.{name}"),
                "must equal its limit (an extended resource is not overcommitted)",
            ));
        }
    }
    for (i, p) in c.ports.iter().flatten().enumerate() {
        let f = format!("{field}.ports[{i}]");
        let valid = |n: i32| (1..=65535).contains(&n);
        if !valid(p.container_port) || p.host_port.is_some_and(|h| !valid(h)) {
            return Err(FieldError::new(f, "ports are 1-65535"));
        }
        if let Some(ip) = &p.host_ip {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(FieldError::new(format!("{f}.hostIP"), format!("{ip:?} is not an IP address"))
                    .at(ip.clone()));
            }
        }
        if let Some(proto) = &p.protocol {
            if proto != "TCP" && proto != "UDP" {
                return Err(FieldError::new(format!("{f}.protocol"), format!("{proto}: only TCP and UDP"))
                    .at(proto.clone()));
            }
        }
    }
    let probes = [
        ("readinessProbe", &c.readiness_probe),
        ("livenessProbe", &c.liveness_probe),
        ("startupProbe", &c.startup_probe),
    ];
    for (name, probe) in probes {
        if let Some(probe) = probe {
            validate_probe(probe, c, &format!("{field}.{name}"))?;
        }
    }
    let lifecycle = c.lifecycle.as_ref();
    for (name, hook) in [
        ("postStart", lifecycle.and_then(|l| l.post_start.as_ref())),
        ("preStop", lifecycle.and_then(|l| l.pre_stop.as_ref())),
    ] {
        if let Some(hook) = hook {
            validate_hook(hook, c, &format!("{field}.lifecycle.{name}"))?;
        }
    }
    for (i, e) in c.env.iter().flatten().enumerate() {
        if let Some(from) = &e.value_from {
            let sources = [
                from.config_map_key_ref.is_some(),
                from.secret_key_ref.is_some(),
                from.field_ref.is_some(),
                from.resource_field_ref.is_some(),
            ];
            let at = format!("{field}.env[{i}].valueFrom");
            exactly_one(
                &sources,
                &at,
                "a valueFrom",
                "configMapKeyRef, secretKeyRef, fieldRef, resourceFieldRef",
            )?;
            if let Some(f) = &from.field_ref {
                env_field(&f.field_path).map_err(|reason| {
                    FieldError::new(format!("{at}.fieldRef.fieldPath"), reason).at(f.field_path.clone())
                })?;
            }
            if let Some(r) = &from.resource_field_ref {
                check_resource(&r.resource, &at)?;
            }
        }
    }
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        if !volumes.contains(m.name.as_str()) {
            return Err(FieldError::new(
                format!("{field}.volumeMounts[{i}].name"),
                format!("no volume named {:?} in spec.volumes", m.name),
            )
            .at(m.name.clone()));
        }
        if !m.mount_path.starts_with('/') {
            return Err(FieldError::new(
                format!("{field}.volumeMounts[{i}].mountPath"),
                "must be an absolute path",
            ));
        }
    }
    Ok(())
}

fn validate_probe(p: &Probe, c: &Container, field: &str) -> Result<(), FieldError> {
    let handlers = [p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some(), p.grpc.is_some()];
    exactly_one(&handlers, field, "a probe", "exec, httpGet, tcpSocket, grpc")?;
    if let Some(port) = p.grpc.as_ref().map(|g| g.port).filter(|n| !(1..=65535).contains(n)) {
        return Err(FieldError::new(format!("{field}.grpc.port"), format!("port {port} is not 1-65535")));
    }
    if !field.ends_with("readinessProbe") && p.success_threshold.is_some_and(|n| n != 1) {
        return Err(FieldError::new(
            format!("{field}.successThreshold"),
            "must be 1 for a liveness or startup probe",
        ));
    }
    let port = p.http_get.as_ref().map(|h| &h.port).or(p.tcp_socket.as_ref().map(|t| &t.port));
    check_named_port(port, c, field)
}

fn validate_hook(h: &LifecycleHandler, c: &Container, field: &str) -> Result<(), FieldError> {
    let handlers = [h.exec.is_some(), h.http_get.is_some(), h.sleep.is_some()];
    exactly_one(&handlers, field, "a hook", "exec, httpGet, sleep")?;
    if let Some(sleep) = h.sleep.as_ref().filter(|s| s.seconds < 0) {
        return Err(FieldError::new(
            format!("{field}.sleep.seconds"),
            format!("{} is negative", sleep.seconds),
        ));
    }
    check_named_port(h.http_get.as_ref().map(|h| &h.port), c, field)
}

/// One source of a projected volume: exactly one of configMap, secret, downwardAPI; a
/// serviceAccountToken is refused with the reason.
fn validate_projection(
    p: &k8s_openapi::api::core::v1::VolumeProjection,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    field: &str,
) -> Result<(), FieldError> {
    if p.service_account_token.is_some() {
        return Err(FieldError::new(
            format!("{field}.serviceAccountToken"),
            "beemesh issues no Kubernetes service account tokens: a pod's identity is its X.509 SVID, \
             mounted at /var/run/secrets/beemesh.io in every container",
        ));
    }
    if p.cluster_trust_bundle.is_some() {
        return Err(FieldError::new(format!("{field}.clusterTrustBundle"), "not supported by beemesh"));
    }
    let kinds = [p.config_map.is_some(), p.secret.is_some(), p.downward_api.is_some()];
    exactly_one(&kinds, field, "a projection", "configMap, secret, downwardAPI")?;
    validate_downward(p.downward_api.as_ref().map(|d| d.items.as_deref().unwrap_or_default()), spec, field)
}

/// A `resourceFieldRef`'s resource (at `field`, its parent): cpu or memory, limit or request.
fn check_resource(resource: &str, field: &str) -> Result<(), FieldError> {
    if matches!(resource, "limits.cpu" | "limits.memory" | "requests.cpu" | "requests.memory") {
        return Ok(());
    }
    Err(FieldError::new(
        format!("{field}.resourceFieldRef.resource"),
        format!("{resource:?}: beemesh offers limits.cpu, limits.memory, requests.cpu and requests.memory"),
    )
    .at(resource.to_owned()))
}

/// `what` (at `field`) needs exactly one of the fields `names` lists, set as `set` says.
fn exactly_one(set: &[bool], field: &str, what: &str, names: &str) -> Result<(), FieldError> {
    if set.iter().filter(|s| **s).count() == 1 {
        return Ok(());
    }
    Err(FieldError::new(field, format!("{what} needs exactly one of {names}")))
}

/// The items of a `downwardAPI` volume or projection (`field`: the volume's or source's).
fn validate_downward(
    items: Option<&[k8s_openapi::api::core::v1::DownwardAPIVolumeFile]>,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    field: &str,
) -> Result<(), FieldError> {
    match items {
        Some(items) => validate_downward_items(items, spec, &format!("{field}.downwardAPI")),
        None => Ok(()),
    }
}

/// A downward API volume's files: a relative path each, and one of `fieldRef` (the pod's
/// name, namespace, uid, labels and annotations, whole or by key: what Kubernetes offers in
/// volumes) or `resourceFieldRef` (of a named container of the pod).
fn validate_downward_items(
    items: &[k8s_openapi::api::core::v1::DownwardAPIVolumeFile],
    spec: &k8s_openapi::api::core::v1::PodSpec,
    field: &str,
) -> Result<(), FieldError> {
    for (i, item) in items.iter().enumerate() {
        let at = format!("{field}.items[{i}]");
        let p = &item.path;
        if p.is_empty()
            || p.starts_with('/')
            || p.starts_with("..")
            || p.split('/').any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(FieldError::new(
                format!("{at}.path"),
                format!("{p:?} must be relative, without '.' or '..' components"),
            ));
        }
        match (&item.field_ref, &item.resource_field_ref) {
            (Some(f), None) => {
                let path = f.field_path.as_str();
                let offered = matches!(path, "metadata.labels" | "metadata.annotations")
                    || matches!(
                        env_field(path),
                        Ok(EnvField::Name
                            | EnvField::Namespace
                            | EnvField::Uid
                            | EnvField::Label(_)
                            | EnvField::Annotation(_))
                    );
                if !offered {
                    return Err(FieldError::new(
                        format!("{at}.fieldRef.fieldPath"),
                        format!("{path:?}: a volume offers metadata.name, metadata.namespace, metadata.uid, metadata.labels and metadata.annotations (whole or ['KEY'])"),
                    )
                    .at(path.to_owned()));
                }
            }
            (None, Some(r)) => {
                let name = r.container_name.as_deref().unwrap_or_default();
                let known = spec
                    .containers
                    .iter()
                    .chain(spec.init_containers.iter().flatten())
                    .any(|c| c.name == name);
                if !known {
                    return Err(FieldError::new(
                        format!("{at}.resourceFieldRef.containerName"),
                        format!("{name:?}: a volume's resourceFieldRef must name a container of the pod"),
                    ));
                }
                check_resource(&r.resource, &at)?;
            }
            _ => return Err(FieldError::new(at, "an item needs exactly one of fieldRef, resourceFieldRef")),
        }
    }
    Ok(())
}

/// A probe's or hook's port given by name must be one of the container's.
fn check_named_port(port: Option<&IntOrString>, c: &Container, field: &str) -> Result<(), FieldError> {
    if let Some(IntOrString::String(name)) = port {
        let declared = c.ports.iter().flatten().any(|p| p.name.as_deref() == Some(name.as_str()));
        if !declared && name.parse::<u16>().is_err() {
            return Err(FieldError::new(
                format!("{field}.port"),
                format!("named port {name:?} is not among the container's ports"),
            )
            .at(name.clone()));
        }
    }
    Ok(())
}

/// Pod (anti-)affinity and spreading take any node label as their topology key: by hostname
/// a host decides them about itself, over other labels (zones) the award rule counts pods per
/// domain. `DoNotSchedule` and `ScheduleAnyway` are the two ways to be unsatisfiable.
fn check_topology_keys(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<(), (String, String)> {
    let key = |field: String, k: &str| {
        if k.is_empty() {
            Err((field, "a node label is required".to_owned()))
        } else {
            Ok(())
        }
    };
    if let Some(a) = &spec.affinity {
        let terms = [
            (
                "podAffinity",
                a.pod_affinity.as_ref().map(|p| {
                    (
                        &p.required_during_scheduling_ignored_during_execution,
                        &p.preferred_during_scheduling_ignored_during_execution,
                    )
                }),
            ),
            (
                "podAntiAffinity",
                a.pod_anti_affinity.as_ref().map(|p| {
                    (
                        &p.required_during_scheduling_ignored_during_execution,
                        &p.preferred_during_scheduling_ignored_during_execution,
                    )
                }),
            ),
        ];
        for (kind, t) in terms {
            let Some((required, preferred)) = t else { continue };
            for (i, term) in required.iter().flatten().enumerate() {
                key(format!("spec.affinity.{kind}.requiredDuringSchedulingIgnoredDuringExecution[{i}].topologyKey"), &term.topology_key)?;
            }
            for (i, w) in preferred.iter().flatten().enumerate() {
                key(
                    format!("spec.affinity.{kind}.preferredDuringSchedulingIgnoredDuringExecution[{i}].podAffinityTerm.topologyKey"),
                    &w.pod_affinity_term.topology_key,
                )?;
            }
        }
    }
    for (i, c) in spec.topology_spread_constraints.iter().flatten().enumerate() {
        key(format!("spec.topologySpreadConstraints[{i}].topologyKey"), &c.topology_key)?;
        if !matches!(c.when_unsatisfiable.as_str(), "DoNotSchedule" | "ScheduleAnyway") {
            return Err((
                format!("spec.topologySpreadConstraints[{i}].whenUnsatisfiable"),
                format!("{:?}: expected DoNotSchedule or ScheduleAnyway", c.when_unsatisfiable),
            ));
        }
    }
    Ok(())
}
