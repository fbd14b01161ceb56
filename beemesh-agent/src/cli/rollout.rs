//! `rollout history|undo deployment/NAME`, as kubectl does them on the client: the history is
//! the Deployment's ReplicaSets by their revision annotation; an undo applies the Deployment
//! again with the pod template of the revision asked for (the previous one by default), and
//! the Deployment's controller rolls it out as any new template (reusing that ReplicaSet, which
//! takes the next revision).

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use super::client;
use crate::api::{Request, Response};

const REVISION: &str = "deployment.kubernetes.io/revision";
const HASH_LABEL: &str = "pod-template-hash";

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// A Deployment's revisions: REVISION CHANGE-CAUSE.
    History {
        /// `deployment/NAME` (or `deploy/NAME`).
        target: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Rolls a Deployment back to its previous revision, or to `--to-revision`.
    Undo {
        /// `deployment/NAME` (or `deploy/NAME`).
        target: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        to_revision: Option<i64>,
    },
}

fn deployment_name(target: &str) -> Result<&str, String> {
    match target.split_once('/') {
        Some(("deployment" | "deploy" | "deployments" | "deployment.apps", name)) if !name.is_empty() => {
            Ok(name)
        }
        _ => Err(format!("{target:?}: expected deployment/NAME (rollout works on Deployments)")),
    }
}

fn revision(rs: &Value) -> Option<i64> {
    rs["metadata"]["annotations"][REVISION].as_str()?.parse().ok()
}

/// The ReplicaSets of the Deployment with uid `uid`, by revision.
fn owned<'a>(rses: &'a [Value], uid: &str) -> Vec<(i64, &'a Value)> {
    let mut v: Vec<(i64, &Value)> = rses
        .iter()
        .filter(|r| {
            r["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|o| o["controller"] == true && o["uid"] == uid))
        })
        .filter_map(|r| Some((revision(r)?, r)))
        .collect();
    v.sort_by_key(|(rev, _)| *rev);
    v
}

/// `rollout history`'s table.
pub fn history(deploy: &Value, rses: &[Value]) -> String {
    let uid = deploy["metadata"]["uid"].as_str().unwrap_or("");
    let mut out = String::from("REVISION  CHANGE-CAUSE\n");
    for (rev, rs) in owned(rses, uid) {
        let cause = rs["metadata"]["annotations"]["kubernetes.io/change-cause"].as_str().unwrap_or("<none>");
        out.push_str(&format!("{rev:<10}{cause}\n"));
    }
    out
}

/// The Deployment to apply for an undo: its own fields with the template of revision `to`
/// (default: the latest before the current one).
pub fn undo(deploy: &Value, rses: &[Value], to: Option<i64>) -> Result<Value, String> {
    let name = deploy["metadata"]["name"].as_str().unwrap_or("");
    let uid = deploy["metadata"]["uid"].as_str().unwrap_or("");
    let revisions = owned(rses, uid);
    let current = revisions
        .last()
        .map(|(r, _)| *r)
        .ok_or_else(|| format!("deployment {name:?} has no revisions yet"))?;
    let target = match to {
        Some(r) => revisions
            .iter()
            .find(|(rev, _)| *rev == r)
            .ok_or_else(|| format!("unable to find the specified revision {r}"))?,
        None => revisions
            .iter()
            .rev()
            .find(|(rev, _)| *rev < current)
            .ok_or_else(|| format!("no rollout history found for deployment {name:?}"))?,
    };
    let mut template = target.1["spec"]["template"].clone();
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    let meta = &deploy["metadata"];
    let mut metadata = json!({"name": meta["name"], "namespace": meta["namespace"]});
    for f in ["labels", "annotations"] {
        if meta[f].is_object() {
            metadata[f] = meta[f].clone();
        }
    }
    let mut spec = deploy["spec"].clone();
    spec["template"] = template;
    Ok(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}))
}

async fn list(socket: &Path, kind: &str, namespace: &str) -> Result<Vec<Value>, ExitCode> {
    let req = Request::ListObjects { kind: kind.into(), namespace: Some(namespace.into()) };
    match client::call(socket, &req).await {
        Ok(Response::Objects { items }) => Ok(items.into_iter().map(|o| o.object).collect()),
        other => Err(super::unexpected(other)),
    }
}

pub async fn rollout(socket: &Path, cmd: RolloutCommand) -> ExitCode {
    let (target, namespace) = match &cmd {
        RolloutCommand::History { target, namespace } | RolloutCommand::Undo { target, namespace, .. } => {
            (target.as_str(), namespace.as_str())
        }
    };
    let name = match deployment_name(target) {
        Ok(n) => n,
        Err(e) => return super::fail(e),
    };
    let deploys = match list(socket, "Deployment", namespace).await {
        Ok(d) => d,
        Err(code) => return code,
    };
    let Some(deploy) = deploys.into_iter().find(|d| d["metadata"]["name"] == name) else {
        return super::fail(format!("Error from server (NotFound): deployments.apps {name:?} not found"));
    };
    let rses = match list(socket, "ReplicaSet", namespace).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    match cmd {
        RolloutCommand::History { .. } => {
            out!("deployment.apps/{name}\n{}", history(&deploy, &rses));
            ExitCode::SUCCESS
        }
        RolloutCommand::Undo { to_revision, .. } => {
            let manifest = match undo(&deploy, &rses, to_revision) {
                Ok(m) => m,
                Err(e) => return super::fail(format!("error: {e}")),
            };
            let req = Request::Apply { file: "rollout-undo".into(), text: manifest.to_string() };
            match client::call(socket, &req).await {
                Ok(Response::Applied { .. }) => {
                    outln!("deployment.apps/{name} rolled back");
                    ExitCode::SUCCESS
                }
                other => super::unexpected(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(rev: i64, image: &str, owner: &str) -> Value {
        json!({
            "metadata": {"name": format!("web-{rev}"), "annotations": {REVISION: rev.to_string()},
                         "ownerReferences": [{"uid": owner, "controller": true}]},
            "spec": {"template": {"metadata": {"labels": {"app": "web", HASH_LABEL: format!("h{rev}")}},
                                  "spec": {"containers": [{"name": "c", "image": image}]}}},
        })
    }

    #[test]
    fn undo_takes_the_previous_revisions_template_and_history_lists_revisions() {
        let deploy = json!({
            "metadata": {"name": "web", "namespace": "default", "uid": "d-1", "generation": 3, "labels": {"team": "a"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "v3"}]}}},
            "status": {"replicas": 2},
        });
        let rses = vec![rs(1, "v1", "d-1"), rs(3, "v3", "d-1"), rs(2, "v2", "d-1"), rs(9, "x", "other")];
        let m = undo(&deploy, &rses, None).expect("undo");
        assert_eq!(m["spec"]["template"]["spec"]["containers"][0]["image"], "v2");
        assert!(m["spec"]["template"]["metadata"]["labels"].get(HASH_LABEL).is_none());
        assert!(m["metadata"].get("uid").is_none() && m.get("status").is_none());
        assert_eq!(m["metadata"]["labels"]["team"], "a");
        let m = undo(&deploy, &rses, Some(1)).expect("undo to 1");
        assert_eq!(m["spec"]["template"]["spec"]["containers"][0]["image"], "v1");
        assert!(undo(&deploy, &rses, Some(7)).expect_err("no 7").contains("revision 7"));
        assert_eq!(
            history(&deploy, &rses),
            "REVISION  CHANGE-CAUSE\n1         <none>\n2         <none>\n3         <none>\n"
        );
        assert_eq!(deployment_name("deploy/web"), Ok("web"));
        assert!(deployment_name("statefulset/db").is_err());
    }
}
