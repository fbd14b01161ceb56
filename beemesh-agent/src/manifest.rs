//! Kubernetes manifests (`beemesh-agent apply -f`): a file of one or more YAML documents (or a
//! `v1 List`) holding Pods, ConfigMaps, Secrets, Namespaces, Services, NetworkPolicies,
//! Deployments, StatefulSets, ReplicaSets, DaemonSets, ServiceAccounts, Jobs, CronJobs,
//! PersistentVolumeClaims, StorageClasses and PodDisruptionBudgets, decoded into k8s-openapi types and checked strictly. A field
//! beemesh does not implement is rejected by name, never ignored (a Deployment's Pod template
//! by the Pod's rules); a whole file is accepted or rejected. Sans-IO: the caller reads the
//! file. The pod runtime and the cluster state (`app::cluster::kube`) consume the result.

mod fields;
mod kinds;
mod quantity;
mod schedule;
#[cfg(test)]
mod tests;
mod workloads;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::storage::v1::StorageClass;
use serde::de::DeserializeOwned;

pub use fields::{env_field, extended_count, is_extended_resource, EnvField};
pub use kinds::{is_port_name, kind_info, KindInfo, KINDS};

pub use quantity::{parse_cpu_millis, parse_memory_bytes};
pub use schedule::Schedule;

use crate::identity::{is_dns_label, is_dns_subdomain};
use crate::yamldoc::{find_line, split_documents, strip_location, unknown_fields, Document, FieldError};

/// One object of a manifest file (stored as `{"kind": ..., "object": ...}`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "object")]
pub enum Object {
    Pod(Box<Pod>),
    ConfigMap(Box<ConfigMap>),
    Secret(Box<Secret>),
    Namespace(Box<Namespace>),
    Service(Box<Service>),
    NetworkPolicy(Box<NetworkPolicy>),
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    ReplicaSet(Box<ReplicaSet>),
    DaemonSet(Box<DaemonSet>),
    ServiceAccount(Box<ServiceAccount>),
    Job(Box<Job>),
    CronJob(Box<CronJob>),
    PersistentVolumeClaim(Box<PersistentVolumeClaim>),
    StorageClass(Box<StorageClass>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Pod(_) => "Pod",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Namespace(_) => "Namespace",
            Object::Service(_) => "Service",
            Object::NetworkPolicy(_) => "NetworkPolicy",
            Object::Deployment(_) => "Deployment",
            Object::StatefulSet(_) => "StatefulSet",
            Object::ReplicaSet(_) => "ReplicaSet",
            Object::DaemonSet(_) => "DaemonSet",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::Job(_) => "Job",
            Object::CronJob(_) => "CronJob",
            Object::PersistentVolumeClaim(_) => "PersistentVolumeClaim",
            Object::StorageClass(_) => "StorageClass",
            Object::PodDisruptionBudget(_) => "PodDisruptionBudget",
        }
    }

    pub fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Pod(p) => &p.metadata,
            Object::ConfigMap(c) => &c.metadata,
            Object::Secret(s) => &s.metadata,
            Object::Namespace(n) => &n.metadata,
            Object::Service(s) => &s.metadata,
            Object::NetworkPolicy(n) => &n.metadata,
            Object::Deployment(d) => &d.metadata,
            Object::StatefulSet(s) => &s.metadata,
            Object::ReplicaSet(r) => &r.metadata,
            Object::DaemonSet(d) => &d.metadata,
            Object::ServiceAccount(a) => &a.metadata,
            Object::Job(j) => &j.metadata,
            Object::CronJob(c) => &c.metadata,
            Object::PersistentVolumeClaim(c) => &c.metadata,
            Object::StorageClass(c) => &c.metadata,
            Object::PodDisruptionBudget(b) => &b.metadata,
        }
    }

    /// What this kind is to the API (`deployment.apps`, namespaced or not).
    pub fn info(&self) -> &'static KindInfo {
        kind_info(self.kind()).expect("every kind of Object is in KINDS")
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }

    /// The object's namespace: `default` when unset, `""` for a cluster-scoped kind
    /// (Namespace).
    pub fn namespace(&self) -> &str {
        if !self.info().namespaced {
            return "";
        }
        self.metadata().namespace.as_deref().unwrap_or("default")
    }

    /// `deployment.apps/web`, as kubectl names an object in its answers.
    pub fn shown(&self) -> String {
        format!("{}/{}", self.info().resource, self.name())
    }
}

/// A manifest that cannot be applied; always names the file and a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Malformed YAML, or a value of the wrong type.
    #[error("{file}:{line}: {message}")]
    Syntax { file: String, line: usize, message: String },
    /// Well-formed, but not something beemesh can run (unknown kind, unsupported field, bad name).
    #[error("{file}:{line}: {field}: {reason}")]
    Invalid { file: String, line: usize, field: String, reason: String },
    /// More than one of the above, in file order, one per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ManifestError>),
}

/// Parses a manifest file: every object, or every error (each document is checked whatever
/// the others hold; within one, every unsupported and unknown field is named, then the first
/// invalid value).
pub fn parse(file: &str, text: &str) -> Result<Vec<Object>, ManifestError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for doc in split_documents(text) {
        parse_document(file, &doc, &mut out, &mut errors);
    }
    match errors.len() {
        0 => Ok(out),
        1 => Err(errors.remove(0)),
        _ => Err(ManifestError::Several(errors)),
    }
}

/// Adds `doc`'s objects to `out`, or its errors to `errors`.
fn parse_document(file: &str, doc: &Document<'_>, out: &mut Vec<Object>, errors: &mut Vec<ManifestError>) {
    let mut value: serde_yaml::Value = match serde_yaml::from_str(&doc.text) {
        Ok(v) => v,
        Err(e) => {
            return errors.push(ManifestError::Syntax {
                file: file.to_owned(),
                line: doc.first_line + e.location().map_or(1, |l| l.line()),
                message: strip_location(&e.to_string()),
            })
        }
    };
    if value.is_null() {
        return;
    }
    octal_modes(&mut value, false);
    let invalid = |e: FieldError| ManifestError::Invalid {
        file: file.to_owned(),
        line: doc.first_line + find_line(&doc.text, &e.field, e.needle.as_deref()),
        field: e.field,
        reason: e.reason,
    };
    let typed =
        |e: serde_yaml::Error, field: &str| invalid(FieldError::new(field, strip_location(&e.to_string())));
    let mut add = |result: Result<Object, ObjectError>, prefix: &str| match result {
        Ok(object) => out.push(object),
        Err(ObjectError::Fields(f)) => errors.extend(f.into_iter().map(invalid)),
        Err(ObjectError::Type(e)) => errors.push(typed(e, prefix)),
    };
    match (str_field(&value, "apiVersion"), str_field(&value, "kind")) {
        (Some("v1"), Some("List")) => {
            let Some(items) = value.get("items").and_then(|v| v.as_sequence()) else {
                return add(Err(FieldError::new("items", "a List needs an items sequence").into()), "items");
            };
            for (i, item) in items.iter().enumerate() {
                let prefix = format!("items[{i}]");
                add(object(item, &prefix), &prefix);
            }
        }
        _ => add(object(&value, ""), "(document)"),
    }
}

fn str_field<'a>(v: &'a serde_yaml::Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(|k| k.as_str())
}

enum ObjectError {
    /// At least one.
    Fields(Vec<FieldError>),
    Type(serde_yaml::Error),
}

impl From<FieldError> for ObjectError {
    fn from(e: FieldError) -> Self {
        ObjectError::Fields(vec![e])
    }
}

fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else {
        format!("{prefix}.{field}")
    }
}

/// Decodes one object (a document, or an item of a List) at field path `prefix`.
fn object(value: &serde_yaml::Value, prefix: &str) -> Result<Object, ObjectError> {
    let api = str_field(value, "apiVersion").unwrap_or_default();
    let kind = str_field(value, "kind").unwrap_or_default();
    let decode = |v: &serde_yaml::Value| -> Result<Object, ObjectError> {
        fn strict<T: DeserializeOwned + serde::Serialize>(
            v: &serde_yaml::Value,
            prefix: &str,
        ) -> Result<T, ObjectError> {
            let t: T = serde_yaml::from_value(v.clone()).map_err(ObjectError::Type)?;
            let unknown = unknown_fields(v, &t);
            if !unknown.is_empty() {
                let joined = unknown.into_iter().map(|mut e| {
                    e.field = join(prefix, &e.field);
                    e
                });
                return Err(ObjectError::Fields(joined.collect()));
            }
            Ok(t)
        }
        Ok(match kind {
            "Pod" => Object::Pod(Box::new(strict(v, prefix)?)),
            "ConfigMap" => Object::ConfigMap(Box::new(strict(v, prefix)?)),
            "Secret" => Object::Secret(Box::new(strict(v, prefix)?)),
            "Namespace" => Object::Namespace(Box::new(strict(v, prefix)?)),
            "Service" => Object::Service(Box::new(strict(v, prefix)?)),
            "NetworkPolicy" => Object::NetworkPolicy(Box::new(strict(v, prefix)?)),
            "Deployment" => Object::Deployment(Box::new(strict(v, prefix)?)),
            "ReplicaSet" => Object::ReplicaSet(Box::new(strict(v, prefix)?)),
            "DaemonSet" => Object::DaemonSet(Box::new(strict(v, prefix)?)),
            "ServiceAccount" => Object::ServiceAccount(Box::new(strict(v, prefix)?)),
            "Job" => Object::Job(Box::new(strict(v, prefix)?)),
            "CronJob" => Object::CronJob(Box::new(strict(v, prefix)?)),
            "PersistentVolumeClaim" => Object::PersistentVolumeClaim(Box::new(strict(v, prefix)?)),
            "StorageClass" => Object::StorageClass(Box::new(strict(v, prefix)?)),
            "PodDisruptionBudget" => Object::PodDisruptionBudget(Box::new(strict(v, prefix)?)),
            _ => Object::StatefulSet(Box::new(strict(v, prefix)?)),
        })
    };
    if api.is_empty() || kind.is_empty() {
        return Err(FieldError::new(join(prefix, "kind"), "apiVersion and kind are required").into());
    }
    match kind_info(kind) {
        Some(info) if info.api_version == api => {}
        Some(info) => {
            return Err(FieldError::new(
                join(prefix, "apiVersion"),
                format!("{kind} is {} (not {api})", info.api_version),
            )
            .at(api)
            .into())
        }
        None => {
            return Err(FieldError::new(
                join(prefix, "kind"),
                format!("unsupported kind {api}/{kind} (supported: {}, and v1 List)", kinds::supported()),
            )
            .at(kind)
            .into())
        }
    }
    let mut refused = fields::unsupported(value, kind, prefix);
    refused.extend(byte_values(value, kind, prefix));
    if !refused.is_empty() {
        return Err(ObjectError::Fields(refused));
    }
    let object = decode(value)?;
    validate(&object, prefix)?;
    Ok(object)
}

/// The base64 values of a Secret's `data` and a ConfigMap's `binaryData` that do not decode,
/// each named by its key (decoding the object would name only the document).
fn byte_values(value: &serde_yaml::Value, kind: &str, prefix: &str) -> Vec<FieldError> {
    use base64::Engine as _;
    let field = match kind {
        "Secret" => "data",
        "ConfigMap" => "binaryData",
        _ => return Vec::new(),
    };
    let Some(map) = value.get(field).and_then(|m| m.as_mapping()) else { return Vec::new() };
    let mut out = Vec::new();
    for (k, v) in map {
        let (Some(key), Some(text)) = (k.as_str(), v.as_str()) else { continue };
        // As k8s-openapi's ByteString (and the API server) read it: standard alphabet, padded.
        if let Err(e) = base64::engine::general_purpose::STANDARD.decode(text) {
            out.push(
                FieldError::new(join(prefix, &format!("{field}.{key}")), format!("invalid base64 ({e})"))
                    .at(format!("{key}:")),
            );
        }
    }
    out
}

/// File modes written in octal (`defaultMode: 0440`, as YAML 1.1 and so kubectl read them;
/// YAML 1.2 takes `0440` for a string) become numbers: only `mode` and `defaultMode` keys
/// inside a `volumes` list, where every such field is an integer.
fn octal_modes(value: &mut serde_yaml::Value, in_volumes: bool) {
    use serde_yaml::Value;
    match value {
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().unwrap_or_default();
                if in_volumes && matches!(key, "mode" | "defaultMode") {
                    if let Some(n) = v
                        .as_str()
                        .and_then(|t| t.strip_prefix("0o").or_else(|| t.strip_prefix('0')))
                        .filter(|digits| !digits.is_empty())
                        .and_then(|digits| i64::from_str_radix(digits, 8).ok())
                    {
                        *v = Value::Number(n.into());
                    }
                    continue;
                }
                octal_modes(v, in_volumes || key == "volumes");
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(|v| octal_modes(v, in_volumes)),
        _ => {}
    }
}

/// Checks what the types cannot: names, required fields, references inside the object.
fn validate(object: &Object, prefix: &str) -> Result<(), FieldError> {
    let name = object.name();
    let (valid, shape) = match object {
        Object::Namespace(_) => (is_dns_label(name), "lowercase letters, digits and '-', at most 63"),
        Object::Service(_) => {
            (kinds::is_dns1035_label(name), "a letter, then lowercase letters, digits and '-', at most 63")
        }
        _ => (is_dns_subdomain(name), "lowercase letters, digits, '-' and '.', at most 253"),
    };
    if !valid {
        return Err(FieldError::new(
            join(prefix, "metadata.name"),
            format!("invalid name {name:?}: {shape}"),
        )
        .at("name:"));
    }
    if !object.info().namespaced {
        if let Some(ns) = &object.metadata().namespace {
            return Err(FieldError::new(
                join(prefix, "metadata.namespace"),
                format!("a {} is cluster-scoped: it has no namespace (remove {ns:?})", object.kind()),
            )
            .at("namespace:"));
        }
    } else if !is_dns_label(object.namespace()) {
        return Err(FieldError::new(
            join(prefix, "metadata.namespace"),
            format!("invalid namespace {:?}", object.namespace()),
        ));
    }
    match object {
        Object::Pod(pod) => fields::validate_pod(pod, prefix, &Default::default())?,
        Object::Service(svc) => kinds::validate_service(svc, prefix)?,
        Object::NetworkPolicy(np) => crate::policy::validate_network_policy(np).map_err(|mut e| {
            e.field = join(prefix, &e.field);
            e
        })?,
        Object::Deployment(d) => workloads::validate_deployment(d, prefix)?,
        Object::StatefulSet(s) => workloads::validate_stateful_set(s, prefix)?,
        Object::ReplicaSet(r) => workloads::validate_replica_set(r, prefix)?,
        Object::DaemonSet(d) => workloads::validate_daemon_set(d, prefix)?,
        Object::Job(j) => workloads::validate_job(j, prefix)?,
        Object::CronJob(c) => workloads::validate_cron_job(c, prefix)?,
        Object::PersistentVolumeClaim(c) => workloads::claim_spec(c.spec.as_ref(), &join(prefix, "spec"))?,
        Object::StorageClass(c) => workloads::validate_storage_class(c, prefix)?,
        Object::PodDisruptionBudget(b) => workloads::validate_disruption_budget(b, prefix)?,
        Object::ConfigMap(_) | Object::Secret(_) | Object::Namespace(_) | Object::ServiceAccount(_) => {}
    }
    Ok(())
}

/// Whether `selector` selects `labels` (one with an operator Kubernetes does not have selects
/// nothing; manifests are checked when applied).
pub fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    workloads::selects(selector, labels, &|f: &str| f.to_owned()).unwrap_or(false)
}
