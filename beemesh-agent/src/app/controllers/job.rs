//! Jobs, decided as a pure function of the Job, the pods it controls and its status record.
//!
//! A Job runs pods until `completions` of them succeed (`NonIndexed`), or until one pod of
//! each index `0..completions` succeeds (`Indexed`), at most `parallelism` at a time; with
//! neither `completions` nor `Indexed` (a work queue) it is done when one pod succeeded and
//! none runs. It fails when more than `backoffLimit` pods failed (restarts of an `OnFailure`
//! pod's containers count too), or `activeDeadlineSeconds` after it started; its running pods
//! are then deleted. A replacement for a failed pod waits Kubernetes' back-off (10 s, doubled
//! per failure, at most 6 min). A pod on a lost host counts as failed and is deleted (the
//! scheduler never moves a Job's pod: it would run twice); the Job makes another.
//!
//! Exactly once: a finished pod is counted when its controller first sees it, by uid, in the
//! status record (`counted`), so a pod is counted once whichever host owns the Job; for an
//! Indexed Job the record keeps the completed indexes, so an index completes once even if two
//! of its pods succeed. The record stays while the Job does; `ttlSecondsAfterFinished` deletes
//! the Job (and with it, by the cascade, its pods and record) that long after it finished.
//! Pod names are `<job>-<suffix>` (`<job>-<index>-<suffix>`), the suffixes a function of the
//! Job's uid, the first not in use: two hosts acting at once write the same pod.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::common::{owner_ref, pod_from_template, suffix, PodState, Write};

pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
/// An Indexed Job's pod's index (a label and an annotation, as Kubernetes writes both).
pub const INDEX_KEY: &str = "batch.kubernetes.io/job-completion-index";
/// The status record's kind.
pub const STATUS: &str = "JobStatus";
/// Kubernetes' default `backoffLimit`.
const BACKOFF_LIMIT: i32 = 6;
/// The first replacement's back-off, doubled per failure up to [`BACKOFF_MAX_MS`].
const BACKOFF_MS: u64 = 10_000;
const BACKOFF_MAX_MS: u64 = 360_000;

/// How a Job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// `Complete` or `Failed`.
    pub kind: String,
    pub reason: String,
    pub message: String,
    pub at_ms: u64,
}

/// What the controller keeps between passes, in the status record beside the status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Tally {
    pub succeeded: u32,
    pub failed: u32,
    /// The uids of the pods counted above that still exist (a pod is counted once).
    pub counted: BTreeSet<String>,
    /// An Indexed Job's completed indexes.
    pub completed: BTreeSet<i32>,
    pub start_ms: Option<u64>,
    /// When the last failure was counted (the back-off counts from there).
    pub last_failure_ms: Option<u64>,
    pub outcome: Option<Outcome>,
}

impl Tally {
    /// The tally in a status record, if it is this Job's (`uid`).
    pub fn of(record: Option<&Value>, uid: &str) -> Tally {
        record
            .filter(|r| r["uid"].as_str() == Some(uid))
            .and_then(|r| serde_json::from_value(r["tally"].clone()).ok())
            .unwrap_or_default()
    }
}

/// Whether a Job's status record says it finished (`Complete` or `Failed`), and how.
pub fn finished(record: &Value) -> Option<String> {
    let outcome: Outcome = serde_json::from_value(record["tally"]["outcome"].clone()).ok()?;
    Some(outcome.kind)
}

fn backoff_ms(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    (BACKOFF_MS << doublings).min(BACKOFF_MAX_MS)
}

fn index_of(p: &PodState) -> Option<i32> {
    p.pod.metadata.annotations.as_ref()?.get(INDEX_KEY)?.parse().ok()
}

/// `0-2,4,6-7`, as Kubernetes writes `completedIndexes`.
pub fn ranges(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = indexes.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if end == start { start.to_string() } else { format!("{start}-{end}") });
    }
    parts.join(",")
}

/// A Job's writes (pods to create and delete, its status record, the Job itself once its
/// time to live is over) at wall time `now_ms`, given the pods it controls and its record.
pub fn job(j: &Job, pods: &[&PodState], record: Option<&Value>, now_ms: u64) -> Vec<Write> {
    let ns = j.metadata.namespace.as_deref().unwrap_or("default");
    let name = j.metadata.name.as_deref().unwrap_or("");
    let uid = j.metadata.uid.as_deref().unwrap_or("");
    let spec = j.spec.clone().unwrap_or_default();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let completions = spec.completions.map(|c| c.max(0));
    let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
    let suspended = spec.suspend == Some(true);
    let mut tally = Tally::of(record, uid);
    let mut writes = Vec::new();

    // Count what finished since the last pass; a pod on a lost host failed (and goes).
    let mut active: Vec<&PodState> = Vec::new();
    for p in pods {
        let succeeded = p.phase == "Succeeded";
        let failed = p.phase == "Failed" || (p.lost && !succeeded);
        if p.lost && !succeeded {
            writes.push(Write::delete("Pod", ns, p.name()));
        }
        if !(succeeded || failed) {
            active.push(p);
            continue;
        }
        if !tally.counted.insert(p.uid().to_owned()) {
            continue;
        }
        if succeeded {
            tally.succeeded += 1;
            if let Some(i) = index_of(p).filter(|i| indexed && completions.is_some_and(|c| *i < c)) {
                tally.completed.insert(i);
            }
        } else {
            tally.failed += 1;
            tally.last_failure_ms = Some(now_ms);
        }
    }
    let present: BTreeSet<&str> = pods.iter().map(|p| p.uid()).collect();
    tally.counted.retain(|u| present.contains(u.as_str()));
    if !suspended && tally.start_ms.is_none() {
        tally.start_ms = Some(now_ms);
    }
    let restarts: u32 = match spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some("OnFailure") => active.iter().map(|p| p.restarts).sum(),
        _ => 0,
    };

    if tally.outcome.is_none() {
        let complete = match (indexed, completions) {
            (true, Some(c)) => tally.completed.len() >= c as usize,
            (false, Some(c)) => tally.succeeded >= c as u32,
            (_, None) => tally.succeeded > 0 && active.is_empty(),
        };
        let limit = spec.backoff_limit.unwrap_or(BACKOFF_LIMIT).max(0) as u32;
        let deadline = spec
            .active_deadline_seconds
            .zip(tally.start_ms)
            .filter(|_| !suspended)
            .is_some_and(|(secs, start)| now_ms >= start + secs.max(0) as u64 * 1000);
        let outcome = |kind: &str, reason: &str, message: &str| Outcome {
            kind: kind.into(),
            reason: reason.into(),
            message: message.into(),
            at_ms: now_ms,
        };
        tally.outcome = if complete {
            Some(outcome("Complete", "Completed", "Reached expected number of succeeded pods"))
        } else if tally.failed + restarts > limit {
            Some(outcome("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"))
        } else if deadline {
            Some(outcome("Failed", "DeadlineExceeded", "Job was active longer than specified deadline"))
        } else {
            None
        };
    }

    if let Some(outcome) = &tally.outcome {
        // Finished: nothing runs on; the Job goes when its time to live is over.
        for p in &active {
            writes.push(Write::delete("Pod", ns, p.name()));
        }
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            if now_ms >= outcome.at_ms + ttl.max(0) as u64 * 1000 {
                writes.push(Write::delete("Job", ns, name));
                return writes;
            }
        }
        active.clear();
    } else if suspended {
        for p in &active {
            writes.push(Write::delete("Pod", ns, p.name()));
        }
        active.clear();
    } else {
        let waiting = tally.failed > 0
            && tally.last_failure_ms.is_some_and(|at| now_ms < at + backoff_ms(tally.failed));
        let mut taken: BTreeSet<String> = pods.iter().map(|p| p.name().to_owned()).collect();
        let mut make = |index: Option<i32>, writes: &mut Vec<Write>| {
            let seed = match index {
                Some(i) => format!("{uid}/{i}"),
                None => uid.to_owned(),
            };
            let stem = match index {
                Some(i) => format!("{name}-{i}"),
                None => name.to_owned(),
            };
            let pod_name = (0u64..)
                .map(|k| format!("{stem}-{}", suffix(&seed, k)))
                .find(|n| !taken.contains(n))
                .unwrap_or_default();
            taken.insert(pod_name.clone());
            writes.push(Write::put("Pod", ns, &pod_name, job_pod(j, &pod_name, index)));
        };
        match (indexed, completions) {
            (true, Some(c)) => {
                let running: BTreeSet<i32> = active.iter().filter_map(|p| index_of(p)).collect();
                let mut by_index: Vec<&&PodState> = active.iter().collect();
                by_index.sort_by_key(|p| std::cmp::Reverse(index_of(p)));
                for p in by_index.iter().take(active.len().saturating_sub(parallelism)) {
                    writes.push(Write::delete("Pod", ns, p.name()));
                }
                if !waiting {
                    let pending = (0..c).filter(|i| !tally.completed.contains(i) && !running.contains(i));
                    for i in pending.take(parallelism.saturating_sub(active.len())) {
                        make(Some(i), &mut writes);
                    }
                }
            }
            (_, completions) => {
                let wanted = match completions {
                    Some(c) => parallelism.min((c as u32).saturating_sub(tally.succeeded) as usize),
                    // A work queue: once one pod succeeded, the others finish on their own.
                    None if tally.succeeded > 0 => active.len(),
                    None => parallelism,
                };
                if active.len() > wanted {
                    let mut doomed: Vec<&&PodState> = active.iter().collect();
                    doomed.sort_by_key(|p| (p.ready, std::cmp::Reverse(p.name().to_owned())));
                    for p in doomed.into_iter().take(active.len() - wanted) {
                        writes.push(Write::delete("Pod", ns, p.name()));
                    }
                } else if !waiting {
                    for _ in active.len()..wanted {
                        make(None, &mut writes);
                    }
                }
            }
        }
    }
    writes.push(status(j, &tally, &active, indexed, suspended));
    writes
}

/// A pod of the Job: its template, labelled as Kubernetes labels a Job's pods; an Indexed
/// Job's pod with its index (label, annotation, `JOB_COMPLETION_INDEX`, hostname
/// `<job>-<index>`).
fn job_pod(j: &Job, pod_name: &str, index: Option<i32>) -> Value {
    let ns = j.metadata.namespace.as_deref().unwrap_or("default");
    let name = j.metadata.name.as_deref().unwrap_or("");
    let uid = j.metadata.uid.as_deref().unwrap_or("");
    let template = j.spec.as_ref().map(|s| s.template.clone()).unwrap_or_default();
    let index_text = index.map(|i| i.to_string());
    let mut labels = vec![
        (CONTROLLER_UID_LABEL, uid),
        (JOB_NAME_LABEL, name),
        ("controller-uid", uid),
        ("job-name", name),
    ];
    if let Some(i) = &index_text {
        labels.push((INDEX_KEY, i.as_str()));
    }
    let mut pod = pod_from_template(&template, ns, pod_name, owner_ref("Job", &j.metadata), &labels);
    if let (Some(i), Some(spec)) = (&index_text, pod.spec.as_mut()) {
        pod.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(INDEX_KEY.into(), i.clone());
        let env = EnvVar {
            name: "JOB_COMPLETION_INDEX".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: None,
                    field_path: format!("metadata.annotations['{INDEX_KEY}']"),
                }),
                ..EnvVarSource::default()
            }),
        };
        for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
            let list = c.env.get_or_insert_with(Vec::new);
            if !list.iter().any(|e| e.name == env.name) {
                list.insert(0, env.clone());
            }
        }
        if spec.hostname.is_none() {
            spec.hostname = Some(format!("{name}-{i}"));
        }
    }
    serde_json::to_value(pod).unwrap_or_default()
}

/// The status record: Kubernetes' JobStatus (merged into `get`) and the tally.
fn status(j: &Job, tally: &Tally, active: &[&PodState], indexed: bool, suspended: bool) -> Write {
    let mut status = json!({
        "active": active.len(),
        "ready": active.iter().filter(|p| p.ready).count(),
        "succeeded": tally.succeeded,
        "failed": tally.failed,
    });
    if let Some(start) = tally.start_ms {
        status["startTime"] = crate::app::cluster::kube::timestamp(start).into();
    }
    if indexed {
        status["completedIndexes"] = ranges(&tally.completed).into();
    }
    let mut conditions = Vec::new();
    if suspended && tally.outcome.is_none() {
        conditions.push(json!({"type": "Suspended", "status": "True", "reason": "JobSuspended",
            "message": "Job suspended"}));
    }
    if let Some(o) = &tally.outcome {
        let at = crate::app::cluster::kube::timestamp(o.at_ms);
        if o.kind == "Complete" {
            status["completionTime"] = at.clone().into();
        }
        conditions.push(json!({"type": o.kind, "status": "True", "reason": o.reason, "message": o.message,
            "lastProbeTime": at, "lastTransitionTime": at}));
    }
    if !conditions.is_empty() {
        status["conditions"] = conditions.into();
    }
    let ns = j.metadata.namespace.as_deref().unwrap_or("default");
    let name = j.metadata.name.as_deref().unwrap_or("");
    Write::put(STATUS, ns, name, json!({"uid": j.metadata.uid, "status": status, "tally": tally}))
}

#[cfg(test)]
#[path = "job_tests.rs"]
mod tests;
