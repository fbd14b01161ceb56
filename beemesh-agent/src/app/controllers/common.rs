//! What every controller shares: the writes it asks for, the pods it sees, owner references,
//! Kubernetes' template hash and deterministic pod name suffixes (every host computes the same
//! name for the same replica, so two hosts that both act never make two pods of one replica).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::Value;

/// A write a controller asks for: `body` `None` deletes.
#[derive(Clone, Debug, PartialEq)]
pub struct Write {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    pub body: Option<Value>,
}

impl Write {
    pub fn put(kind: &'static str, namespace: &str, name: &str, body: Value) -> Write {
        Write { kind, namespace: namespace.to_owned(), name: name.to_owned(), body: Some(body) }
    }
    pub fn delete(kind: &'static str, namespace: &str, name: &str) -> Write {
        Write { kind, namespace: namespace.to_owned(), name: name.to_owned(), body: None }
    }
}

/// A pod of the state with what its host reported.
#[derive(Clone, Debug, Default)]
pub struct PodState {
    pub pod: Pod,
    /// Every container ready (its host says so, and the host is not lost).
    pub ready: bool,
    /// How long this host has seen it ready (0 when not ready).
    pub ready_for_secs: u64,
    /// The phase its host reported (`""` before any report).
    pub phase: String,
    /// Its containers' restarts, as its host reported them.
    pub restarts: u32,
    /// Placed on a host the failure detector holds dead.
    pub lost: bool,
}

impl PodState {
    /// Ready for at least `min_ready_seconds` (a controller's `minReadySeconds`): available.
    pub fn available(&self, min_ready_seconds: Option<i32>) -> bool {
        self.ready && self.ready_for_secs >= min_ready_seconds.map_or(0, |s| s.max(0) as u64)
    }

    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or("")
    }
    pub fn label(&self, key: &str) -> Option<&str> {
        self.pod.metadata.labels.as_ref().and_then(|l| l.get(key)).map(String::as_str)
    }
    pub fn uid(&self) -> &str {
        self.pod.metadata.uid.as_deref().unwrap_or("")
    }
}

/// The uid of the object controlling `meta` (its controller owner reference).
pub fn controller_uid(meta: &ObjectMeta) -> Option<&str> {
    meta.owner_references.iter().flatten().find(|o| o.controller == Some(true)).map(|o| o.uid.as_str())
}

pub fn owner_ref(kind: &str, meta: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: if matches!(kind, "Job" | "CronJob") { "batch/v1" } else { "apps/v1" }.into(),
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Kubernetes' alphabet for generated names (no vowels, no look-alikes).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// FNV-1a, 32 bits.
pub fn fnv32a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x0100_0193))
}

/// `pod-template-hash` as Kubernetes spells it: the template's hash in decimal, each digit
/// mapped into [`ALPHANUMS`] (`rand.SafeEncodeString`). The hash is over the template's JSON.
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let json = serde_json::to_vec(t).unwrap_or_default();
    safe_encode(&fnv32a(&json).to_string())
}

fn safe_encode(s: &str) -> String {
    s.bytes().map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char).collect()
}

/// A five-letter suffix for replica `index` of the object with uid `seed`: the same on every
/// host, different per replica (collisions among a set's replicas are skipped by the caller).
pub fn suffix(seed: &str, index: u64) -> String {
    let mut h = beemesh_state::sched::rank::mix(
        beemesh_state::sched::rank::hash_str(seed) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let n = ALPHANUMS.len() as u64;
    (0..5)
        .map(|_| {
            let c = ALPHANUMS[(h % n) as usize] as char;
            h /= n;
            c
        })
        .collect()
}

/// A pod of `template` named `name` in `namespace`, controlled by `owner`, with `labels` added.
pub fn pod_from_template(
    template: &PodTemplateSpec,
    namespace: &str,
    name: &str,
    owner: OwnerReference,
    labels: &[(&str, &str)],
) -> Pod {
    let mut metadata = template.metadata.clone().unwrap_or_default();
    metadata.name = Some(name.to_owned());
    metadata.namespace = Some(namespace.to_owned());
    metadata.owner_references = Some(vec![owner]);
    metadata.uid = None;
    metadata.creation_timestamp = None;
    let l = metadata.labels.get_or_insert_with(BTreeMap::new);
    for (k, v) in labels {
        l.insert((*k).to_owned(), (*v).to_owned());
    }
    Pod { metadata, spec: template.spec.clone(), status: None }
}

/// A condition as Kubernetes writes it.
pub fn condition(ty: &str, ok: bool, reason: &str, message: &str) -> Value {
    serde_json::json!({
        "type": ty,
        "status": if ok { "True" } else { "False" },
        "reason": reason,
        "message": message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kubernetes_shaped_and_the_same_on_every_host() {
        let t: PodTemplateSpec = serde_yaml::from_str(
            "metadata: {labels: {app: web}}\nspec: {containers: [{name: c, image: i}]}\n",
        )
        .expect("template");
        let h = template_hash(&t);
        assert!(!h.is_empty() && h.len() <= 10 && h.bytes().all(|b| ALPHANUMS.contains(&b)), "{h}");
        assert_eq!(h, template_hash(&t.clone()));
        let s: Vec<String> = (0..20).map(|i| suffix("uid-1", i)).collect();
        assert!(s.iter().all(|x| x.len() == 5 && x.bytes().all(|b| ALPHANUMS.contains(&b))));
        let distinct: std::collections::BTreeSet<_> = s.iter().collect();
        assert_eq!(distinct.len(), 20);
        assert_eq!(suffix("uid-1", 3), s[3]);
        assert_ne!(suffix("uid-2", 3), s[3]);
    }
}
