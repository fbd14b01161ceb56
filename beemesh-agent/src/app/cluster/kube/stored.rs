//! The writes of `apply` and `delete -f` for objects that live only in the cluster state
//! (Namespaces, Services, NetworkPolicies, Deployments, StatefulSets) and for implicit
//! namespaces. A file is split: the actor applies its Pods, ConfigMaps and Secrets, then these
//! are written (each waiting until another host holds it) and the answer's lines are put back
//! in the file's order.

use std::collections::BTreeSet;

use beemesh_state::Key;

use super::{implicit_namespace, key, namespaces_needed, prepare, stored_only, Change, BUILTIN_NAMESPACES};
use crate::api::Response;
use crate::app::cluster::{now_ms, Cluster};
use crate::app::held;
use crate::manifest::{kind_info, Object};

/// A parsed file, split between the actor and the cluster state.
#[derive(Debug)]
pub(crate) struct Split {
    /// The actor's objects (Pods, ConfigMaps, Secrets) in file order, until taken.
    actor: Vec<Object>,
    /// Every position of the file: `None` for an actor's object (its line comes from the
    /// actor's answer, in order), `Some` for a stored-only object.
    order: Vec<Option<Object>>,
    /// Namespaces the file's objects need that the file does not declare.
    namespaces: BTreeSet<String>,
    /// Keys of every mesh object of the file (a Namespace being deleted may hold them).
    keys: BTreeSet<Key>,
}

impl Split {
    pub(crate) fn new(objects: Vec<Object>) -> Self {
        let namespaces = namespaces_needed(&objects);
        let keys = objects.iter().map(key).collect();
        let (mut actor, mut order) = (Vec::new(), Vec::new());
        for o in objects {
            if stored_only(&o) {
                order.push(Some(o));
            } else {
                order.push(None);
                actor.push(o);
            }
        }
        Self { actor, order, namespaces, keys }
    }

    /// The actor's part (taken once).
    pub(crate) fn take_actor(&mut self) -> Vec<Object> {
        std::mem::take(&mut self.actor)
    }

    fn stored(&self) -> impl Iterator<Item = &Object> {
        self.order.iter().flatten()
    }

    /// Refuses, before anything changes, a file that needs the cluster state where none
    /// runs, and (`deleting`) the deletion of a built-in or non-empty Namespace.
    pub(crate) async fn check(&self, cluster: Option<&Cluster>, deleting: bool) -> Result<(), String> {
        let Some(cluster) = cluster else {
            return match self.stored().next() {
                Some(o) => Err(format!("{}: the cluster state is not running", o.shown())),
                None => Ok(()),
            };
        };
        if !deleting {
            return Ok(());
        }
        for ns in self.stored().filter(|o| matches!(o, Object::Namespace(_))).map(Object::name) {
            if BUILTIN_NAMESPACES.contains(&ns) {
                return Err(format!(
                    "namespaces {ns:?} is forbidden: this namespace may not be deleted (nothing was deleted)"
                ));
            }
            let mut held = Vec::new();
            for kind in super::NAMESPACED_KINDS {
                let listed = cluster.list(kind, Some(ns)).await.map_err(|e| e.to_string())?;
                held.extend(listed.into_iter().filter(|l| !self.keys.contains(&l.key)).map(|l| {
                    let resource = kind_info(kind).map_or(kind, |k| k.resource);
                    format!("{resource}/{}", l.key.name)
                }));
            }
            if !held.is_empty() {
                return Err(format!(
                    "namespace/{ns} is not empty: it holds {} (delete them first; nothing was deleted)",
                    held.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// After the actor applied its part (`resp`): creates the namespaces nobody created,
    /// writes the stored-only objects, and answers with every line in the file's order.
    pub(crate) async fn apply(self, cluster: Option<&Cluster>, resp: Response) -> Response {
        let (Response::Applied { lines }, Some(cluster)) = (&resp, cluster) else {
            return resp;
        };
        let mut out = Vec::new();
        for ns in &self.namespaces {
            let key = Key::new("Namespace", "", ns.as_str());
            match cluster.get(key.clone()).await {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(e) => return Response::Error { message: e.to_string() },
            }
            let (_, body) = prepare(&implicit_namespace(ns), None, now_ms(), &new_uid());
            match cluster.write(key, body).await {
                Ok(acked) => out.push(format!("namespace/{ns} created (implicitly){}", held(&acked))),
                Err(e) => return Response::Error { message: format!("namespace/{ns}: {e}") },
            }
        }
        let mut actor_lines = lines.iter();
        for o in self.order {
            let Some(o) = o else {
                out.extend(actor_lines.next().cloned());
                continue;
            };
            let key = key(&o);
            let existing = match cluster.get(key.clone()).await {
                Ok(b) => b,
                Err(e) => return Response::Error { message: e.to_string() },
            };
            let (change, body) = prepare(&o, existing.as_deref(), now_ms(), &new_uid());
            let what = o.shown();
            if change == Change::Unchanged {
                out.push(format!("{what} unchanged"));
                continue;
            }
            match cluster.write(key, body).await {
                Ok(acked) => out.push(format!("{what} {}{}", change.word(), held(&acked))),
                Err(e) => return Response::Error { message: format!("{what}: {e}") },
            }
        }
        // Lines the actor gave beyond its objects (none today) are not lost.
        out.extend(actor_lines.cloned());
        Response::Applied { lines: out }
    }

    /// After the actor deleted its part (`resp`): deletes the stored-only objects everywhere,
    /// Namespaces last, and answers with every line in the file's order.
    pub(crate) async fn delete(self, cluster: Option<&Cluster>, resp: Response) -> Response {
        let (Response::Applied { lines }, Some(cluster)) = (&resp, cluster) else {
            return resp;
        };
        let mut out: Vec<Option<String>> = vec![None; self.order.len()];
        let mut actor_lines = lines.iter();
        for (i, o) in self.order.iter().enumerate() {
            if o.is_none() {
                out[i] = actor_lines.next().cloned();
            }
        }
        let namespaces_last = |o: &&(usize, &Object)| matches!(o.1, Object::Namespace(_));
        let stored: Vec<(usize, &Object)> =
            self.order.iter().enumerate().filter_map(|(i, o)| o.as_ref().map(|o| (i, o))).collect();
        let (last, first): (Vec<_>, Vec<_>) = stored.iter().partition(namespaces_last);
        for &(i, o) in first.iter().chain(&last) {
            let key = key(o);
            match cluster.get(key.clone()).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    out[i] = Some(format!(
                        "Error from server (NotFound): {} {:?} not found",
                        o.info().plural,
                        o.name()
                    ));
                    continue;
                }
                Err(e) => return Response::Error { message: e.to_string() },
            }
            match cluster.write(key, None).await {
                Ok(acked) => out[i] = Some(format!("{} deleted{}", o.shown(), held(&acked))),
                Err(e) => return Response::Error { message: format!("{}: {e}", o.shown()) },
            }
        }
        let mut lines: Vec<String> = out.into_iter().flatten().collect();
        lines.extend(actor_lines.cloned());
        Response::Applied { lines }
    }
}

/// A random (version 4) UUID for `metadata.uid`.
fn new_uid() -> String {
    let mut b = [0u8; 16];
    // A uid only has to differ from other objects' uids; the clock mixed in keeps it so even
    // if the kernel's generator failed us.
    if getrandom::getrandom(&mut b).is_err() {
        b[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_split_between_the_actor_and_the_state_in_file_order() {
        let objects = crate::manifest::parse(
            "t.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: shop}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {name: ops}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ops}\n",
        )
        .expect("parse");
        let mut split = Split::new(objects);
        let actor: Vec<String> = split.take_actor().iter().map(Object::shown).collect();
        assert_eq!(actor, ["configmap/c", "secret/s"]);
        let order: Vec<Option<String>> = split.order.iter().map(|o| o.as_ref().map(Object::shown)).collect();
        assert_eq!(order, [Some("service/web".to_owned()), None, Some("namespace/ops".to_owned()), None]);
        // ops is declared by the file; shop is not; default always exists.
        assert_eq!(split.namespaces, BTreeSet::from(["shop".to_owned()]));
        assert!(split.keys.contains(&Key::new("ConfigMap", "shop", "c")));
        assert!(split.keys.contains(&Key::new("Namespace", "", "ops")));
    }
}
