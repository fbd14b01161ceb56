//! `exec --identity` workloads in the cluster state. The host that runs one publishes it under
//! `(ExecWorkload, "", <node>.<workload>)`: its identity and labels, so that other hosts let
//! its tunnel streams in (its host vouches for it, as for a pod it runs) and match it in their
//! policy (NetworkPolicy selectors, policy.d). Written when the host's workloads change and
//! deleted when one ends, and also when the host finds a record of its own naming a workload it
//! does not run (one that ended while the agent was down); sans-IO.

use std::collections::BTreeMap;

use beemesh_state::Key;
use serde::{Deserialize, Serialize};

use crate::identity::SpiffeId;

/// The kind under which hosts publish their `exec --identity` workloads.
pub const KIND: &str = "ExecWorkload";
/// How the forwarder and the policy name one beside pods (`namespace/name`): no pod key holds
/// a colon.
pub const VIEW_PREFIX: &str = "exec:";

/// One host's `exec --identity` workload, as other hosts see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRecord {
    /// The node name of the host that runs it.
    pub node: String,
    /// Its workload name on that host.
    pub name: String,
    pub identity: SpiffeId,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ExecRecord {
    /// Where it is stored (workload names have no dots, so the name is unambiguous).
    pub fn key(&self) -> Key {
        Key::new(KIND, "", format!("{}.{}", self.node, self.name))
    }

    /// `exec:<node>/<name>` ([`VIEW_PREFIX`]).
    pub fn view_key(&self) -> String {
        format!("{VIEW_PREFIX}{}/{}", self.node, self.name)
    }

    pub fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }

    /// A record, if `body` is one stored under `key` (a record under another host's key is
    /// none: it names what it is).
    pub fn decode(key: &Key, body: &[u8]) -> Option<ExecRecord> {
        let r: ExecRecord = serde_json::from_slice(body).ok()?;
        (r.key() == *key && !r.node.is_empty() && !r.name.is_empty()).then_some(r)
    }
}

/// Takes into `published` (this host's records, by workload name, as it wrote them) the
/// records of its own it finds in the cluster state (`stored`) that it did not write in this
/// run: a workload that ended while the agent was down left one. The next publication then
/// deletes those naming no workload it runs, and rewrites those that differ. Returns whether
/// any was taken.
pub fn adopt(published: &mut BTreeMap<String, ExecRecord>, stored: &BTreeMap<String, ExecRecord>) -> bool {
    let mut taken = false;
    for (name, record) in stored {
        if !published.contains_key(name) {
            published.insert(name.clone(), record.clone());
            taken = true;
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, app: &str) -> ExecRecord {
        ExecRecord {
            node: "h1".into(),
            name: name.into(),
            identity: "spiffe://td/ns/shop/sa/web".parse().expect("spiffe id"),
            labels: BTreeMap::from([("app".into(), app.into())]),
        }
    }

    #[test]
    fn records_left_by_an_earlier_run_are_taken_so_that_they_are_deleted_or_rewritten() {
        let mut published = BTreeMap::from([("live".to_owned(), record("live", "web"))]);
        // The store holds the live one (as written), one whose workload ended while the agent
        // was down, and an older version of one running again under the same name.
        let stored = BTreeMap::from([
            ("live".to_owned(), record("live", "web")),
            ("ended".to_owned(), record("ended", "web")),
            ("again".to_owned(), record("again", "old")),
        ]);
        assert!(adopt(&mut published, &stored));
        assert_eq!(published.keys().collect::<Vec<_>>(), ["again", "ended", "live"]);
        assert!(!adopt(&mut published, &stored), "nothing new the second time");
        // What this run wrote is kept, not replaced by the store's view of it.
        let mut published = BTreeMap::from([("live".to_owned(), record("live", "new"))]);
        adopt(&mut published, &BTreeMap::from([("live".to_owned(), record("live", "old"))]));
        assert_eq!(published["live"].labels["app"], "new");
    }

    #[test]
    fn a_record_is_read_back_only_under_its_own_key() {
        let r = ExecRecord {
            node: "h1.example".into(),
            name: "web-1".into(),
            identity: "spiffe://td/ns/shop/sa/web".parse().expect("spiffe id"),
            labels: BTreeMap::from([("app".into(), "web".into())]),
        };
        assert_eq!(r.key(), Key::new(KIND, "", "h1.example.web-1"));
        assert_eq!(r.view_key(), "exec:h1.example/web-1");
        assert_eq!(ExecRecord::decode(&r.key(), &r.encode()), Some(r.clone()));
        assert_eq!(ExecRecord::decode(&Key::new(KIND, "", "h2.web-1"), &r.encode()), None);
        assert_eq!(ExecRecord::decode(&r.key(), b"{\"node\":\"h1.example\"}"), None);
        let bad_identity = br#"{"node":"h1.example","name":"web-1","identity":"http://x"}"#;
        assert_eq!(ExecRecord::decode(&r.key(), bad_identity), None);
    }
}
