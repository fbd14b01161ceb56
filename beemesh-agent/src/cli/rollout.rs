//! `rollout history|undo deployment/NAME`, as kubectl does them on the client: the history is
//! the Deployment's ReplicaSets by their revision annotation; an undo applies the Deployment
//! again with the pod template of the revision asked for (the previous one by default), and
//! the Deployment's controller rolls it out as any new template (reusing that ReplicaSet, which
//! takes the next revision). `rollout status deployment|statefulset|daemonset/NAME` follows the
//! object's status until its rollout is complete, printing kubectl's messages as they change.

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
    /// Follows a rollout until it is complete: `deployment/NAME`, `statefulset/NAME` or
    /// `daemonset/NAME`.
    Status {
        target: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Give up after this many seconds (0: wait as long as it takes).
        #[arg(long, default_value_t = 0)]
        timeout: u64,
        /// Only print the status now, do not wait.
        #[arg(short = 'w', long = "watch", default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
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

/// How often `rollout status` reads the status again.
const STATUS_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// kubectl's rollout status message for `object` of `kind`, and whether the rollout is done;
/// an error when it cannot finish (a progress deadline exceeded).
pub fn status_message(kind: &str, o: &Value) -> Result<(String, bool), String> {
    let name = o["metadata"]["name"].as_str().unwrap_or("");
    let st = &o["status"];
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let generation = n(&o["metadata"]["generation"]);
    let observed = n(&st["observedGeneration"]);
    let waiting = |m: String| Ok((m, false));
    match kind {
        "Deployment" => {
            if generation > observed {
                return waiting("Waiting for deployment spec update to be observed...".into());
            }
            let progress =
                st["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Progressing");
            if progress.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded") {
                return Err(format!("deployment {name:?} exceeded its progress deadline"));
            }
            let replicas = o["spec"]["replicas"].as_i64().unwrap_or(1);
            let (updated, total, available) =
                (n(&st["updatedReplicas"]), n(&st["replicas"]), n(&st["availableReplicas"]));
            if updated < replicas {
                return waiting(format!("Waiting for deployment {name:?} rollout to finish: {updated} out of {replicas} new replicas have been updated..."));
            }
            if total > updated {
                return waiting(format!("Waiting for deployment {name:?} rollout to finish: {} old replicas are pending termination...", total - updated));
            }
            if available < updated {
                return waiting(format!("Waiting for deployment {name:?} rollout to finish: {available} of {updated} updated replicas are available..."));
            }
            Ok((format!("deployment {name:?} successfully rolled out"), true))
        }
        "StatefulSet" => {
            if observed == 0 || generation > observed {
                return waiting("Waiting for statefulset spec update to be observed...".into());
            }
            let replicas = o["spec"]["replicas"].as_i64().unwrap_or(1);
            let ready = n(&st["readyReplicas"]);
            if ready < replicas {
                return waiting(format!("Waiting for {} pods to be ready...", replicas - ready));
            }
            let strategy = &o["spec"]["updateStrategy"];
            let partition = strategy["rollingUpdate"]["partition"].as_i64();
            if strategy["type"].as_str().is_none_or(|t| t == "RollingUpdate") {
                if let Some(p) = partition.filter(|p| *p > 0) {
                    let updated = n(&st["updatedReplicas"]);
                    if updated < replicas - p {
                        return waiting(format!("Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...", replicas - p));
                    }
                    return Ok((
                        format!("partitioned roll out complete: {updated} new pods have been updated..."),
                        true,
                    ));
                }
            }
            let (current, update) =
                (st["currentRevision"].as_str().unwrap_or(""), st["updateRevision"].as_str().unwrap_or(""));
            if current != update {
                return waiting(format!(
                    "waiting for statefulset rolling update to complete {} pods at revision {update}...",
                    n(&st["updatedReplicas"])
                ));
            }
            Ok((
                format!(
                    "statefulset rolling update complete {} pods at revision {current}...",
                    n(&st["currentReplicas"]).max(ready)
                ),
                true,
            ))
        }
        "DaemonSet" => {
            if generation > observed {
                return waiting("Waiting for daemon set spec update to be observed...".into());
            }
            let desired = n(&st["desiredNumberScheduled"]);
            let (updated, available) = (n(&st["updatedNumberScheduled"]), n(&st["numberAvailable"]));
            if updated < desired {
                return waiting(format!("Waiting for daemon set {name:?} rollout to finish: {updated} out of {desired} new pods have been updated..."));
            }
            if available < desired {
                return waiting(format!("Waiting for daemon set {name:?} rollout to finish: {available} of {desired} updated pods are available..."));
            }
            Ok((format!("daemon set {name:?} successfully rolled out"), true))
        }
        other => Err(format!("no status viewer has been implemented for {other}")),
    }
}

/// `rollout status`: reads the object's status until the rollout is done (or `timeout`).
async fn status(socket: &Path, target: &str, namespace: &str, timeout: u64, watch: bool) -> ExitCode {
    let (kind, name) = match target.split_once('/').map(|(k, n)| (super::events::kind_of(k), n)) {
        Some((Some(k @ ("Deployment" | "StatefulSet" | "DaemonSet")), n)) if !n.is_empty() => (k, n),
        _ => {
            return super::fail(format!(
                "{target:?}: expected deployment/NAME, statefulset/NAME or daemonset/NAME"
            ))
        }
    };
    let deadline = (timeout > 0).then(|| std::time::Instant::now() + std::time::Duration::from_secs(timeout));
    let mut last = String::new();
    loop {
        let objects = match list(socket, kind, namespace).await {
            Ok(o) => o,
            Err(code) => return code,
        };
        let Some(object) = objects.into_iter().find(|o| o["metadata"]["name"] == name) else {
            return super::fail(format!(
                "Error from server (NotFound): {} {name:?} not found",
                kind.to_ascii_lowercase()
            ));
        };
        match status_message(kind, &object) {
            Err(e) => return super::fail(format!("error: {e}")),
            Ok((message, done)) => {
                if message != last {
                    outln!("{message}");
                    last = message;
                }
                if done || !watch {
                    return ExitCode::SUCCESS;
                }
            }
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return super::fail("error: timed out waiting for the condition");
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
}

pub async fn rollout(socket: &Path, cmd: RolloutCommand) -> ExitCode {
    let (target, namespace) = match &cmd {
        RolloutCommand::Status { target, namespace, timeout, watch } => {
            return status(socket, target, namespace, *timeout, *watch).await
        }
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
        RolloutCommand::Status { .. } => ExitCode::SUCCESS,
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
    fn status_messages_follow_kubectl() {
        let d = |gen: i64, obs: i64, upd: i64, total: i64, avail: i64| {
            json!({"metadata": {"name": "web", "generation": gen}, "spec": {"replicas": 3},
                   "status": {"observedGeneration": obs, "updatedReplicas": upd, "replicas": total, "availableReplicas": avail}})
        };
        let m = |o: &Value| status_message("Deployment", o).expect("message");
        assert_eq!(m(&d(2, 1, 3, 3, 3)).0, "Waiting for deployment spec update to be observed...");
        assert_eq!(
            m(&d(2, 2, 1, 4, 3)).0,
            "Waiting for deployment \"web\" rollout to finish: 1 out of 3 new replicas have been updated..."
        );
        assert_eq!(
            m(&d(2, 2, 3, 4, 3)).0,
            "Waiting for deployment \"web\" rollout to finish: 1 old replicas are pending termination..."
        );
        assert_eq!(
            m(&d(2, 2, 3, 3, 2)).0,
            "Waiting for deployment \"web\" rollout to finish: 2 of 3 updated replicas are available..."
        );
        assert_eq!(m(&d(2, 2, 3, 3, 3)), ("deployment \"web\" successfully rolled out".into(), true));
        let s = json!({"metadata": {"name": "db", "generation": 1}, "spec": {"replicas": 3},
                       "status": {"observedGeneration": 1, "readyReplicas": 1, "currentRevision": "a", "updateRevision": "a"}});
        assert_eq!(status_message("StatefulSet", &s).expect("sts").0, "Waiting for 2 pods to be ready...");
        let ds = json!({"metadata": {"name": "agent", "generation": 1},
                        "status": {"observedGeneration": 1, "desiredNumberScheduled": 3, "updatedNumberScheduled": 3, "numberAvailable": 3}});
        assert!(status_message("DaemonSet", &ds).expect("ds").1);
        assert!(status_message("Pod", &ds).is_err());
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
