//! Kubernetes objects in the cluster state: which applied objects are mesh objects, their keys
//! `(kind, namespace, name)` (Namespaces are cluster-scoped: namespace `""`) and bodies (the
//! object's Kubernetes JSON, namespace filled in), the server-side metadata filled at apply
//! (`uid`, `creationTimestamp`, `generation`), implicit namespaces, and the entries `get`
//! lists. Sans-IO: `app::apply` drives the writes. Pods are `cluster::pods`'.

use std::collections::BTreeSet;

use bytes::Bytes;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

use super::Listed;
use crate::api::ObjectEntry;
use crate::manifest::Object;

/// Namespaces that exist without being written (as in Kubernetes).
pub(crate) const BUILTIN_NAMESPACES: [&str; 2] = ["default", "kube-system"];

/// The annotation an implicitly created Namespace carries.
pub(crate) const IMPLICIT: &str = "beemesh.io/implicit";

/// The label Kubernetes puts on every Namespace (NetworkPolicy namespaceSelectors use it).
const NAME_LABEL: &str = crate::policy::NAMESPACE_NAME_LABEL;

/// What an apply does to a stored object, in kubectl's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Created,
    Configured,
    Unchanged,
}

impl Change {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Change::Created => "created",
            Change::Configured => "configured",
            Change::Unchanged => "unchanged",
        }
    }
}

/// The body to write for a stored-only object, given the body the state holds under its key
/// (`existing`): the applied object with its namespace filled in (none for a Namespace),
/// `status` dropped (the mesh writes status, not users), and `metadata.uid`,
/// `creationTimestamp` (kept from `existing`, else `uid` and `now_ms`) and `generation` (1,
/// one more when the spec changed). `None` when the object is unchanged.
pub(crate) fn prepare(
    o: &Object,
    existing: Option<&[u8]>,
    now_ms: u64,
    uid: &str,
) -> (Change, Option<Bytes>) {
    let mut new = match serde_json::to_value(o) {
        Ok(v) => v["object"].clone(),
        Err(_) => Value::Null,
    };
    let meta = &mut new["metadata"];
    if o.info().namespaced {
        meta["namespace"] = json!(o.namespace());
    } else if let Some(m) = meta.as_object_mut() {
        m.remove("namespace");
    }
    if let Some(m) = new.as_object_mut() {
        m.remove("status");
    }
    if let Object::Namespace(_) = o {
        new["metadata"]["labels"][NAME_LABEL] = json!(o.name());
        new["status"] = json!({ "phase": "Active" });
    }
    let old: Option<Value> = existing.and_then(|b| serde_json::from_slice(b).ok());
    if let (Object::PersistentVolumeClaim(_), Some(old)) = (o, &old) {
        keep_binding(&mut new, old);
    }
    let generation = match &old {
        Some(old) if user_part(old) == user_part(&new) => return (Change::Unchanged, None),
        Some(old) => {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0);
            if old["spec"] == new["spec"] {
                g.max(1)
            } else {
                g + 1
            }
        }
        None => 1,
    };
    let kept = |field: &str| old.as_ref().map(|o| o["metadata"][field].clone()).filter(|v| v.is_string());
    new["metadata"]["uid"] = kept("uid").unwrap_or_else(|| json!(uid));
    new["metadata"]["creationTimestamp"] =
        kept("creationTimestamp").unwrap_or_else(|| json!(timestamp(now_ms)));
    new["metadata"]["generation"] = json!(generation);
    let change = if old.is_some() { Change::Configured } else { Change::Created };
    (change, Some(Bytes::from(new.to_string())))
}

/// A claim applied again keeps what the mesh wrote when it bound it: the host of its local
/// volume (`volume.kubernetes.io/selected-node`) and its status.
fn keep_binding(new: &mut Value, old: &Value) {
    let node = crate::app::controllers::stateful::SELECTED_NODE;
    if let Some(host) = old["metadata"]["annotations"].get(node).filter(|h| h.is_string()) {
        new["metadata"]["annotations"][node] = host.clone();
        new["status"] = old["status"].clone();
    }
}

/// An object without what the mesh fills in: what decides whether an apply changed it.
fn user_part(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v["metadata"].as_object_mut() {
        for field in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
            m.remove(field);
        }
    }
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    v
}

/// RFC 3339 at second precision, as Kubernetes writes `creationTimestamp`.
pub(crate) fn timestamp(now_ms: u64) -> String {
    let secs = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    k8s_openapi::jiff::Timestamp::from_second(secs).map(|t| t.to_string()).unwrap_or_default()
}

/// Seconds since an RFC 3339 `creationTimestamp`.
fn age_of(created: &str, now_ms: u64) -> Option<u64> {
    let t: k8s_openapi::jiff::Timestamp = created.parse().ok()?;
    let ms = u64::try_from(t.as_millisecond()).ok()?;
    Some(now_ms.saturating_sub(ms) / 1000)
}

/// Namespaces the objects of a file live in that must exist for them: every namespace but the
/// built-in ones and those the file declares itself.
pub(crate) fn namespaces_needed(objects: &[Object]) -> BTreeSet<String> {
    let declared: BTreeSet<&str> =
        objects.iter().filter(|o| matches!(o, Object::Namespace(_))).map(Object::name).collect();
    objects
        .iter()
        .filter(|o| o.info().namespaced)
        .map(Object::namespace)
        .filter(|ns| !BUILTIN_NAMESPACES.contains(ns) && !declared.contains(ns))
        .map(str::to_owned)
        .collect()
}

/// The Namespace an object in namespace `name` creates when nobody created it.
pub(crate) fn implicit_namespace(name: &str) -> Object {
    let metadata = ObjectMeta {
        name: Some(name.to_owned()),
        annotations: Some([(IMPLICIT.to_owned(), "true".to_owned())].into()),
        ..ObjectMeta::default()
    };
    Object::Namespace(Box::new(Namespace { metadata, ..Namespace::default() }))
}

/// The kinds a namespace holds objects of (a Namespace with any of them is not deleted).
pub(crate) const NAMESPACED_KINDS: [&str; 14] = [
    "Pod",
    "ConfigMap",
    "Secret",
    "Service",
    "NetworkPolicy",
    "Deployment",
    "StatefulSet",
    "ReplicaSet",
    "DaemonSet",
    "PersistentVolumeClaim",
    "ServiceAccount",
    "Job",
    "CronJob",
    "PodDisruptionBudget",
];

/// A listed object as the API returns it; a body that is not JSON (written by a broken or
/// newer peer) is shown as a string saying so, never dropped silently. Its age is from its
/// `creationTimestamp`, or from the write that made its current state.
pub(crate) fn entry(listed: &Listed, now_ms: u64) -> ObjectEntry {
    let object: Value = serde_json::from_slice(&listed.body)
        .unwrap_or_else(|e| Value::String(format!("the replicated body of this object is not JSON: {e}")));
    let age = object["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|c| age_of(c, now_ms))
        .unwrap_or(now_ms.saturating_sub(listed.written_ms) / 1000);
    ObjectEntry {
        namespace: listed.key.namespace.clone(),
        name: listed.key.name.clone(),
        age_secs: Some(age),
        object,
    }
}

/// What `get KIND` lists: the state's objects, and for Namespaces the built-in ones too
/// (shown with no age when nobody wrote them), by name.
pub(crate) fn entries(kind: &str, listed: &[Listed], now_ms: u64) -> Vec<ObjectEntry> {
    let mut items: Vec<ObjectEntry> = listed.iter().map(|l| entry(l, now_ms)).collect();
    if kind == "Namespace" {
        for name in BUILTIN_NAMESPACES {
            if !items.iter().any(|i| i.name == name) {
                items.push(ObjectEntry {
                    namespace: String::new(),
                    name: name.to_owned(),
                    age_secs: None,
                    object: json!({
                        "apiVersion": "v1",
                        "kind": "Namespace",
                        "metadata": { "name": name, "labels": { NAME_LABEL: name } },
                        "status": { "phase": "Active" },
                    }),
                });
            }
        }
        items.sort_by(|a, b| a.name.cmp(&b.name));
    }
    items
}

#[cfg(test)]
mod tests;
