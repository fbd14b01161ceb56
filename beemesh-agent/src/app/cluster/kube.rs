//! Kubernetes objects in the cluster state: which applied objects are mesh objects (ConfigMaps
//! and Secrets so far; Pods stay on the local path until the reconciler lands), their keys
//! `(kind, namespace, name)` and bodies (the object's Kubernetes JSON, namespace filled in),
//! and the entries `get` lists.

use beemesh_state::Key;
use bytes::Bytes;

use super::Listed;
use crate::api::ObjectEntry;
use crate::manifest::Object;

/// The key and body under which an applied object is replicated; `None` for kinds that are not
/// mesh objects yet.
pub(crate) fn mesh_object(o: &Object) -> Option<(Key, Bytes)> {
    let key = mesh_key(o)?;
    let body = match o {
        Object::ConfigMap(c) => {
            let mut c = (**c).clone();
            c.metadata.namespace = Some(key.namespace.clone());
            serde_json::to_vec(&c)
        }
        Object::Secret(s) => {
            let mut s = (**s).clone();
            s.metadata.namespace = Some(key.namespace.clone());
            serde_json::to_vec(&s)
        }
        Object::Pod(_) => return None,
    };
    // k8s-openapi's types always serialise.
    body.ok().map(|b| (key, Bytes::from(b)))
}

/// The key of an object `mesh_object` replicates.
pub(crate) fn mesh_key(o: &Object) -> Option<Key> {
    matches!(o, Object::ConfigMap(_) | Object::Secret(_)).then(|| Key::new(o.kind(), o.namespace(), o.name()))
}

/// A listed object as the API returns it; a body that is not JSON (written by a broken or
/// newer peer) is shown as a string saying so, never dropped silently.
pub(crate) fn entry(listed: &Listed, now_ms: u64) -> ObjectEntry {
    let object = serde_json::from_slice(&listed.body).unwrap_or_else(|e| {
        serde_json::Value::String(format!("the replicated body of this object is not JSON: {e}"))
    });
    ObjectEntry {
        namespace: listed.key.namespace.clone(),
        name: listed.key.name.clone(),
        age_secs: now_ms.saturating_sub(listed.written_ms) / 1000,
        object,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmaps_and_secrets_are_mesh_objects_with_their_namespace_and_pods_are_not() {
        let objects = crate::manifest::parse(
            "t.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: b}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: prod}\nstringData: {p: w}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: x, image: busybox}]}\n",
        )
        .expect("parse");
        let (key, body) = mesh_object(&objects[0]).expect("configmap");
        assert_eq!(key, Key::new("ConfigMap", "default", "c"));
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            (v["kind"].as_str(), v["metadata"]["namespace"].as_str()),
            (Some("ConfigMap"), Some("default"))
        );
        assert_eq!(v["data"]["a"], "b");
        let (key, _) = mesh_object(&objects[1]).expect("secret");
        assert_eq!(key, Key::new("Secret", "prod", "s"));
        assert!(mesh_object(&objects[2]).is_none());
        let listed = Listed { key, body: Bytes::from_static(b"\xff"), written_ms: 1_000 };
        let e = entry(&listed, 5_500);
        assert_eq!((e.age_secs, e.namespace.as_str()), (4, "prod"));
        assert!(e.object.as_str().is_some_and(|s| s.contains("not JSON")));
    }
}
