//! `events [-n NS | -A] [--for KIND/NAME]` (kubectl's `get events` table) and
//! `describe KIND NAME` (the object's fields as kubectl describes them, then its events), from
//! the Event records the mesh's hosts write (`app::events`). The texts are pure functions of
//! the objects and events (`rows`, `describe_text`).

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::client;
use super::get::{age, align};
use crate::api::{Request, Response};
use crate::app::events::last_seen;

/// A kind as `describe` and `--for` take it (kubectl's names, plurals and short names).
pub(super) fn kind_of(word: &str) -> Option<&'static str> {
    Some(match word.to_ascii_lowercase().as_str() {
        "pod" | "pods" | "po" => "Pod",
        "deployment" | "deployments" | "deploy" | "deployment.apps" => "Deployment",
        "statefulset" | "statefulsets" | "sts" => "StatefulSet",
        "replicaset" | "replicasets" | "rs" => "ReplicaSet",
        "daemonset" | "daemonsets" | "ds" => "DaemonSet",
        "service" | "services" | "svc" => "Service",
        "configmap" | "configmaps" | "cm" => "ConfigMap",
        "secret" | "secrets" => "Secret",
        "namespace" | "namespaces" | "ns" => "Namespace",
        "networkpolicy" | "networkpolicies" | "netpol" => "NetworkPolicy",
        "persistentvolumeclaim" | "persistentvolumeclaims" | "pvc" => "PersistentVolumeClaim",
        "job" | "jobs" | "job.batch" => "Job",
        "cronjob" | "cronjobs" | "cj" | "cronjob.batch" => "CronJob",
        "serviceaccount" | "serviceaccounts" | "sa" => "ServiceAccount",
        "storageclass" | "storageclasses" | "sc" => "StorageClass",
        "poddisruptionbudget" | "poddisruptionbudgets" | "pdb" => "PodDisruptionBudget",
        "node" | "nodes" | "no" => "Node",
        _ => return None,
    })
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn list(socket: &Path, kind: &str, namespace: Option<&str>) -> Result<Vec<Value>, ExitCode> {
    let req = Request::ListObjects { kind: kind.into(), namespace: namespace.map(Into::into) };
    match client::call(socket, &req).await {
        Ok(Response::Objects { items }) => Ok(items.into_iter().map(|o| o.object).collect()),
        other => Err(super::unexpected(other)),
    }
}

/// The events of `about` (`(Kind, name)`) or all, oldest first (as kubectl sorts them).
fn picked<'a>(events: &'a [Value], about: Option<(&str, &str)>) -> Vec<&'a Value> {
    let mut picked: Vec<&Value> = events
        .iter()
        .filter(|e| {
            about.is_none_or(|(kind, name)| {
                e["involvedObject"]["kind"] == kind && e["involvedObject"]["name"] == name
            })
        })
        .collect();
    picked.sort_by_key(|e| (last_seen(e), e["eventTime"].as_str().unwrap_or("").to_owned()));
    picked
}

fn last_seen_text(e: &Value, now: u64) -> String {
    let seen = age(last_seen(e).map(|t| now.saturating_sub(t)));
    match e["count"].as_u64().unwrap_or(1) {
        n if n > 1 => format!("{seen} (x{n})"),
        _ => seen,
    }
}

/// `events`' table: LAST SEEN TYPE REASON OBJECT MESSAGE (NAMESPACE first with `namespaces`).
pub fn rows(events: &[Value], about: Option<(&str, &str)>, namespaces: bool, now: u64) -> String {
    let mut rows = vec![["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"].map(String::from).to_vec()];
    if namespaces {
        rows[0].insert(0, "NAMESPACE".into());
    }
    for e in picked(events, about) {
        let o = &e["involvedObject"];
        let object = format!(
            "{}/{}",
            o["kind"].as_str().unwrap_or("").to_ascii_lowercase(),
            o["name"].as_str().unwrap_or("")
        );
        let s = |f: &str| e[f].as_str().unwrap_or("").to_owned();
        let mut row = vec![last_seen_text(e, now), s("type"), s("reason"), object, s("message")];
        if namespaces {
            row.insert(0, e["metadata"]["namespace"].as_str().unwrap_or("").to_owned());
        }
        rows.push(row);
    }
    align(&rows)
}

pub async fn events(socket: &Path, namespace: &str, all_namespaces: bool, about: Option<&str>) -> ExitCode {
    let about = match about.map(|a| a.split_once('/').map(|(k, n)| (kind_of(k), n))) {
        None => None,
        Some(Some((Some(kind), name))) if !name.is_empty() => Some((kind, name)),
        Some(_) => {
            return super::fail(format!("--for {:?}: expected KIND/NAME (pod/web-0)", about.unwrap_or("")))
        }
    };
    let events = match list(socket, "Event", (!all_namespaces).then_some(namespace)).await {
        Ok(e) => e,
        Err(code) => return code,
    };
    if picked(&events, about).is_empty() {
        match all_namespaces {
            true => eprintln!("No events found."),
            false => eprintln!("No events found in {namespace} namespace."),
        }
        return ExitCode::SUCCESS;
    }
    out!("{}", rows(&events, about, all_namespaces, now_secs()));
    ExitCode::SUCCESS
}

pub async fn describe(socket: &Path, kind: &str, name: &str, namespace: &str) -> ExitCode {
    let Some(kind) = kind_of(kind) else {
        return super::fail(format!("error: the server doesn't have a resource type {kind:?}"));
    };
    let cluster_scoped = matches!(kind, "Namespace" | "Node");
    let object = if kind == "Pod" {
        match client::call(socket, &Request::ListPods { namespace: Some(namespace.into()) }).await {
            Ok(Response::Pods { items }) => items.into_iter().find(|p| p.name == name).map(|p| p.object),
            other => return super::unexpected(other),
        }
    } else {
        match list(socket, kind, (!cluster_scoped).then_some(namespace)).await {
            Ok(items) => items.into_iter().find(|o| o["metadata"]["name"] == name),
            Err(code) => return code,
        }
    };
    let Some(object) = object else {
        return super::fail(format!(
            "Error from server (NotFound): {} {name:?} not found",
            kind.to_ascii_lowercase()
        ));
    };
    let events = match list(socket, "Event", Some(if cluster_scoped { "default" } else { namespace })).await {
        Ok(e) => e,
        Err(code) => return code,
    };
    out!("{}", describe_text(kind, &object, &events, now_secs()));
    ExitCode::SUCCESS
}

/// `describe`'s text: the fields kubectl shows for the kind, then `Events:`.
pub fn describe_text(kind: &str, o: &Value, events: &[Value], now: u64) -> String {
    let m = &o["metadata"];
    let name = m["name"].as_str().unwrap_or("");
    let mut lines: Vec<(String, String)> = vec![("Name".into(), name.into())];
    let mut push = |k: &str, v: String| lines.push((k.into(), v));
    if let Some(ns) = m["namespace"].as_str() {
        push("Namespace", ns.into());
    }
    let pairs = |v: &Value, sep: &str| -> String {
        let text: Vec<String> = v
            .as_object()
            .map(|m| m.iter().map(|(k, v)| format!("{k}{sep}{}", v.as_str().unwrap_or(""))).collect())
            .unwrap_or_default();
        if text.is_empty() {
            "<none>".into()
        } else {
            text.join(", ")
        }
    };
    let s = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    let or = |v: &Value, absent: &str| v.as_str().unwrap_or(absent).to_owned();
    match kind {
        "Pod" => {
            push("Node", or(&o["spec"]["nodeName"], "<none>"));
            push("Start Time", or(&o["status"]["startTime"], "<unknown>"));
            push("Labels", pairs(&m["labels"], "="));
            push("Annotations", pairs(&m["annotations"], ": "));
            let status =
                o["status"]["reason"].as_str().or(o["status"]["phase"].as_str()).unwrap_or("Pending");
            push("Status", status.into());
            if let Some(msg) = o["status"]["message"].as_str() {
                push("Message", msg.into());
            }
            push("IP", or(&o["status"]["podIP"], "<none>"));
            if let Some(c) = controller(m) {
                push("Controlled By", c);
            }
        }
        "Deployment" | "StatefulSet" | "ReplicaSet" | "DaemonSet" => {
            push("CreationTimestamp", s(&m["creationTimestamp"]));
            push("Labels", pairs(&m["labels"], "="));
            push("Selector", pairs(&o["spec"]["selector"]["matchLabels"], "="));
            let st = &o["status"];
            let n = |v: &Value| v.as_i64().unwrap_or(0);
            match kind {
                "Deployment" => {
                    let (desired, updated, total, available) = (
                        o["spec"]["replicas"].as_i64().unwrap_or(1),
                        n(&st["updatedReplicas"]),
                        n(&st["replicas"]),
                        n(&st["availableReplicas"]),
                    );
                    push(
                        "Replicas",
                        format!(
                            "{desired} desired | {updated} updated | {total} total | {available} available | {} unavailable",
                            n(&st["unavailableReplicas"])
                        ),
                    );
                    push("StrategyType", or(&o["spec"]["strategy"]["type"], "RollingUpdate"));
                    push("MinReadySeconds", n(&o["spec"]["minReadySeconds"]).to_string());
                }
                "DaemonSet" => {
                    push("Desired Number of Nodes Scheduled", n(&st["desiredNumberScheduled"]).to_string());
                    push("Current Number of Nodes Scheduled", n(&st["currentNumberScheduled"]).to_string());
                    push("Number Ready", n(&st["numberReady"]).to_string());
                }
                _ => {
                    let desired = o["spec"]["replicas"].as_i64().unwrap_or(1);
                    push("Replicas", format!("{} current / {desired} desired", n(&st["replicas"])));
                    push("Pods Status", format!("{} Ready", n(&st["readyReplicas"])));
                }
            }
            if let Some(c) = controller(m) {
                push("Controlled By", c);
            }
        }
        "Job" => {
            push("Labels", pairs(&m["labels"], "="));
            push("Annotations", pairs(&m["annotations"], ": "));
            if let Some(c) = controller(m) {
                push("Controlled By", c);
            }
            let (spec, st) = (&o["spec"], &o["status"]);
            let n = |v: &Value| v.as_i64().unwrap_or(0);
            push("Parallelism", spec["parallelism"].as_i64().unwrap_or(1).to_string());
            push(
                "Completions",
                spec["completions"].as_i64().map_or_else(|| "<unset>".into(), |c| c.to_string()),
            );
            push("Completion Mode", or(&spec["completionMode"], "NonIndexed"));
            push("Start Time", or(&st["startTime"], "<unset>"));
            if let Some(done) = st["completionTime"].as_str() {
                push("Completed At", done.into());
            }
            push(
                "Pods Statuses",
                format!(
                    "{} Active ({} Ready) / {} Succeeded / {} Failed",
                    n(&st["active"]),
                    n(&st["ready"]),
                    n(&st["succeeded"]),
                    n(&st["failed"])
                ),
            );
            if let Some(done) = st["completedIndexes"].as_str() {
                push("Completed Indexes", if done.is_empty() { "<none>".into() } else { done.into() });
            }
        }
        "CronJob" => {
            push("Labels", pairs(&m["labels"], "="));
            push("Annotations", pairs(&m["annotations"], ": "));
            let (spec, st) = (&o["spec"], &o["status"]);
            push("Schedule", s(&spec["schedule"]));
            push("Concurrency Policy", or(&spec["concurrencyPolicy"], "Allow"));
            push("Suspend", spec["suspend"].as_bool().unwrap_or(false).to_string());
            push("Last Schedule Time", or(&st["lastScheduleTime"], "<unset>"));
            let active: Vec<&str> =
                st["active"].as_array().into_iter().flatten().filter_map(|j| j["name"].as_str()).collect();
            push("Active Jobs", if active.is_empty() { "<none>".into() } else { active.join(", ") });
        }
        _ => {
            push("Labels", pairs(&m["labels"], "="));
            push("Annotations", pairs(&m["annotations"], ": "));
        }
    }
    let width = lines.iter().map(|(k, _)| k.len() + 2).max().unwrap_or(0);
    let mut out: String = lines.iter().map(|(k, v)| format!("{:<width$}{v}\n", format!("{k}:"))).collect();
    if kind == "Pod" {
        out.push_str(&containers(o));
    }
    if let Some(conditions) = o["status"]["conditions"].as_array().filter(|c| !c.is_empty()) {
        out.push_str("Conditions:\n");
        let mut rows = vec![vec!["  Type".to_owned(), "Status".into(), "Reason".into()]];
        for c in conditions {
            rows.push(vec![
                format!("  {}", s(&c["type"])),
                s(&c["status"]),
                c["reason"].as_str().unwrap_or("").into(),
            ]);
        }
        out.push_str(&align(&rows));
    }
    let mine = picked(events, Some((kind, name)));
    if mine.is_empty() {
        out.push_str("Events:          <none>\n");
        return out;
    }
    out.push_str("Events:\n");
    let mut rows = vec![["  Type", "Reason", "Age", "From", "Message"].map(String::from).to_vec()];
    rows.push(["  ----", "------", "----", "----", "-------"].map(String::from).to_vec());
    for e in mine {
        let from = e["source"]["component"].as_str().unwrap_or("");
        let host = e["source"]["host"].as_str().unwrap_or("");
        rows.push(vec![
            format!("  {}", s(&e["type"])),
            s(&e["reason"]),
            last_seen_text(e, now),
            if host.is_empty() { from.into() } else { format!("{from} ({host})") },
            s(&e["message"]),
        ]);
    }
    out.push_str(&align(&rows));
    out
}

/// `Kind/name` of the object's controller, if any.
fn controller(meta: &Value) -> Option<String> {
    let o = meta["ownerReferences"].as_array()?.iter().find(|o| o["controller"] == true)?;
    Some(format!("{}/{}", o["kind"].as_str()?, o["name"].as_str()?))
}

/// A pod's `Containers:` section: image, state, readiness, restarts.
fn containers(pod: &Value) -> String {
    let mut out = String::from("Containers:\n");
    let statuses = pod["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or("");
        out.push_str(&format!("  {name}:\n    Image:          {}\n", c["image"].as_str().unwrap_or("")));
        if let Some(st) = statuses.iter().find(|s| s["name"] == name) {
            let state = st["state"].as_object().and_then(|m| m.keys().next().cloned()).unwrap_or_default();
            let mut state = state.chars();
            let state: String =
                state.next().map(|f| f.to_uppercase().chain(state).collect()).unwrap_or_default();
            out.push_str(&format!("    State:          {state}\n"));
            out.push_str(&format!(
                "    Ready:          {}\n",
                if st["ready"] == true { "True" } else { "False" }
            ));
            out.push_str(&format!("    Restart Count:  {}\n", st["restartCount"].as_u64().unwrap_or(0)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(name: &str, kind: &str, reason: &str, last: &str, count: u64) -> Value {
        json!({"metadata": {"namespace": "default"}, "involvedObject": {"kind": kind, "name": name},
               "reason": reason, "type": "Normal", "message": format!("{reason} {name}"),
               "source": {"component": "beemesh-scheduler", "host": "h1"}, "lastTimestamp": last, "count": count})
    }

    #[test]
    fn events_are_listed_oldest_first_with_counts_and_filtered_by_object() {
        let events = vec![
            ev("web-0", "Pod", "Started", "2026-11-24T00:00:30Z", 1),
            ev("web", "Deployment", "ScalingReplicaSet", "2026-11-24T00:00:10Z", 1),
            ev("web-0", "Pod", "Scheduled", "2026-11-24T00:00:20Z", 3),
        ];
        let now = 1_795_478_400 + 60;
        let all = rows(&events, None, false, now);
        let lines: Vec<&str> = all.lines().collect();
        assert!(lines[0].starts_with("LAST SEEN") && lines[0].contains("OBJECT"), "{all}");
        assert!(lines[1].contains("ScalingReplicaSet") && lines[1].contains("deployment/web"), "{all}");
        assert!(lines[2].starts_with("40s (x3)") && lines[2].contains("Scheduled"), "{all}");
        assert!(lines[3].contains("Started"), "{all}");
        assert_eq!(rows(&events, Some(("Pod", "web-0")), false, now).lines().count(), 3);
        assert!(rows(&events, None, true, now).starts_with("NAMESPACE"));
        assert_eq!(kind_of("deploy"), Some("Deployment"));
        assert_eq!(kind_of("Pods"), Some("Pod"));
        assert_eq!(kind_of("widget"), None);
    }

    #[test]
    fn describe_shows_a_pods_fields_containers_and_events() {
        let pod = json!({
            "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"},
                         "ownerReferences": [{"kind": "StatefulSet", "name": "web", "controller": true}]},
            "spec": {"nodeName": "h2", "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running", "podIP": "10.0.2.100",
                       "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "state": {"running": {}}}],
                       "conditions": [{"type": "Ready", "status": "True"}]},
        });
        let events = vec![
            ev("web-0", "Pod", "Scheduled", "2026-11-24T00:00:20Z", 1),
            ev("web-1", "Pod", "Scheduled", "2026-11-24T00:00:20Z", 1),
        ];
        let text = describe_text("Pod", &pod, &events, 1_795_478_400 + 60);
        for want in [
            "Name:",
            "web-0",
            "Node:",
            "h2",
            "Labels:",
            "app=web",
            "Controlled By:",
            "StatefulSet/web",
            "State:          Running",
            "Ready:          True",
            "Events:",
            "beemesh-scheduler (h1)",
            "Scheduled web-0",
        ] {
            assert!(text.contains(want), "{want:?} in\n{text}");
        }
        assert!(!text.contains("web-1"), "{text}");
        let deploy = json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": 3},
                            "status": {"replicas": 3, "updatedReplicas": 3, "availableReplicas": 2, "unavailableReplicas": 1}});
        let text = describe_text("Deployment", &deploy, &[], 0);
        assert!(text.contains("3 desired | 3 updated | 3 total | 2 available | 1 unavailable"), "{text}");
        assert!(text.ends_with("Events:          <none>\n"), "{text}");
    }
}
