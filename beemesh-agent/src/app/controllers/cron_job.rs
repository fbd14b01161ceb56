//! CronJobs, decided as pure functions of the CronJob, the Jobs it made and its status record.
//!
//! Exactly one Job per scheduled time, whichever hosts come and go:
//! - one host acts on a CronJob at a time: its owner by rendezvous over the alive hosts (the
//!   driver's rule for every controller), and another takes over when it dies; a host that
//!   sees no strict majority of the mesh's hosts alive (cut off, it would own everything by
//!   its own count) makes no runs, so a partition's smaller side never fires what the larger
//!   side fires (with an even split, neither side fires until it heals);
//! - the run at scheduled instant `T` is the Job `<cronjob>-<T in minutes since the epoch>`
//!   (Kubernetes' own name), with a uid derived from the CronJob's uid and `T`: two hosts that
//!   both believe they own the CronJob during a change of membership write the same object
//!   under the same key, and the state keeps one;
//! - the status record keeps `lastScheduleTime`, and the driver never makes a Job whose name
//!   exists or was deleted (its tombstone), so a run already made, finished and pruned is not
//!   made again by a new owner that has not seen the record yet.
//!
//! A missed run (no host alive at `T`) is made later if `startingDeadlineSeconds` allows, and
//! of several missed runs only the latest, as Kubernetes does. `concurrencyPolicy` `Forbid`
//! waits while a run is active, `Replace` deletes the active runs first. Finished Jobs beyond
//! `successfulJobsHistoryLimit` (3) and `failedJobsHistoryLimit` (1) are deleted, oldest first.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, Job};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::common::{owner_ref, Write};
use super::job;
use crate::manifest::Schedule;

/// The status record's kind.
pub const STATUS: &str = "CronJobStatus";
/// On a CronJob's Job: the instant it was scheduled for.
pub const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// A due run: its scheduled instant (milliseconds since the epoch) and its Job's name.
pub type Run = (i64, String);

/// What the controller keeps between passes, in the status record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Tally {
    pub last_schedule_ms: Option<i64>,
    pub last_successful_ms: Option<i64>,
}

impl Tally {
    fn of(record: Option<&Value>, uid: &str) -> Tally {
        record
            .filter(|r| r["uid"].as_str() == Some(uid))
            .and_then(|r| serde_json::from_value(r["tally"].clone()).ok())
            .unwrap_or_default()
    }
}

fn ms_of(rfc3339: &str) -> Option<i64> {
    Some(rfc3339.parse::<k8s_openapi::jiff::Timestamp>().ok()?.as_millisecond())
}

/// RFC 3339 at second precision (`kube::timestamp`), of a time that may precede the epoch.
fn rfc3339(ms: i64) -> String {
    crate::app::cluster::kube::timestamp(u64::try_from(ms).unwrap_or(0))
}

/// The run due at wall time `now_ms`, if any: its scheduled instant and its Job's name. The
/// driver checks that name was never used before it hands the run to [`cron_job`].
pub fn due(cj: &CronJob, record: Option<&Value>, now_ms: i64) -> Option<Run> {
    let spec = &cj.spec;
    if spec.suspend == Some(true) {
        return None;
    }
    let schedule = Schedule::parse(&spec.schedule, spec.time_zone.as_deref()).ok()?;
    let uid = cj.metadata.uid.as_deref().unwrap_or("");
    let created = cj.metadata.creation_timestamp.as_ref().map(|t| t.0.as_millisecond());
    let since = Tally::of(record, uid).last_schedule_ms.or(created)?;
    let at = schedule.latest_due(since, now_ms)?;
    if let Some(deadline) = spec.starting_deadline_seconds {
        if now_ms - at > deadline.max(0) * 1000 {
            return None;
        }
    }
    let name = cj.metadata.name.as_deref().unwrap_or("");
    Some((at, format!("{name}-{}", at.div_euclid(60_000))))
}

/// A uid in the shape of a UUID, the same on every host for the same `seed`.
fn derived_uid(seed: &str) -> String {
    use beemesh_state::sched::rank::{hash_str, mix};
    let a = hash_str(seed);
    let b = mix(a ^ 0x5bd1_e995_u64);
    let hex = format!("{a:016x}{b:016x}");
    format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
}

/// A CronJob's writes at wall time `now_ms`: the Job of the due `run` (unless `used`: a Job
/// of that name exists or existed), the active Jobs it replaces, the finished ones past the
/// history limits, and its status record. `jobs` are the Jobs it controls, with their status
/// records.
pub fn cron_job(
    cj: &CronJob,
    jobs: &[(&Job, Option<&Value>)],
    record: Option<&Value>,
    run: Option<Run>,
    used: bool,
) -> Vec<Write> {
    let spec = &cj.spec;
    let ns = cj.metadata.namespace.as_deref().unwrap_or("default");
    let uid = cj.metadata.uid.as_deref().unwrap_or("");
    let mut tally = Tally::of(record, uid);
    let mut writes = Vec::new();
    let outcome = |r: Option<&Value>| r.and_then(job::finished);
    let mut active: Vec<&Job> = jobs.iter().filter(|(_, r)| outcome(*r).is_none()).map(|(j, _)| *j).collect();
    for (_, r) in jobs {
        if outcome(*r).as_deref() == Some("Complete") {
            let done = r.and_then(|r| r["status"]["completionTime"].as_str()).and_then(ms_of);
            tally.last_successful_ms = tally.last_successful_ms.max(done);
        }
    }

    if let Some((at, name)) = run {
        let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
        if used {
            tally.last_schedule_ms = tally.last_schedule_ms.max(Some(at));
        } else if policy == "Forbid" && !active.is_empty() {
            // Waits: made when the active run ends, if still due then.
        } else {
            if policy == "Replace" {
                for j in active.drain(..) {
                    writes.push(Write::delete("Job", ns, j.metadata.name.as_deref().unwrap_or("")));
                }
            }
            let template = &spec.job_template;
            let meta = template.metadata.clone().unwrap_or_default();
            let mut annotations = meta.annotations.unwrap_or_default();
            annotations.insert(SCHEDULED_ANNOTATION.into(), rfc3339(at));
            let body = json!({
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "uid": derived_uid(&format!("{uid}/{at}")),
                    "labels": meta.labels.unwrap_or_default(),
                    "annotations": annotations,
                    "ownerReferences": [owner_ref("CronJob", &cj.metadata)],
                },
                "spec": template.spec,
            });
            writes.push(Write::put("Job", ns, &name, body));
            tally.last_schedule_ms = Some(at);
        }
    }

    // History: the newest finished runs of each outcome are kept.
    let scheduled = |j: &Job| {
        j.metadata.annotations.as_ref().and_then(|a| a.get(SCHEDULED_ANNOTATION)).and_then(|t| ms_of(t))
    };
    let mut finished: BTreeMap<String, Vec<(Option<i64>, &str)>> = BTreeMap::new();
    for (j, r) in jobs {
        if let Some(kind) = outcome(*r) {
            finished.entry(kind).or_default().push((scheduled(j), j.metadata.name.as_deref().unwrap_or("")));
        }
    }
    for (kind, mut list) in finished {
        let keep = match kind.as_str() {
            "Complete" => spec.successful_jobs_history_limit.unwrap_or(3),
            _ => spec.failed_jobs_history_limit.unwrap_or(1),
        }
        .max(0) as usize;
        list.sort_by(|a, b| b.cmp(a));
        for (_, name) in list.into_iter().skip(keep) {
            writes.push(Write::delete("Job", ns, name));
        }
    }

    let refs: Vec<Value> = active
        .iter()
        .map(|j| {
            json!({"apiVersion": "batch/v1", "kind": "Job", "name": j.metadata.name,
                "namespace": ns, "uid": j.metadata.uid})
        })
        .collect();
    let mut status = json!({});
    if !refs.is_empty() {
        status["active"] = refs.into();
    }
    if let Some(at) = tally.last_schedule_ms {
        status["lastScheduleTime"] = rfc3339(at).into();
    }
    if let Some(at) = tally.last_successful_ms {
        status["lastSuccessfulTime"] = rfc3339(at).into();
    }
    let name = cj.metadata.name.as_deref().unwrap_or("");
    writes.push(Write::put(STATUS, ns, name, json!({"uid": uid, "status": status, "tally": tally})));
    writes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(yaml: &str) -> CronJob {
        let mut c: CronJob = serde_yaml::from_str(yaml).expect("cronjob");
        c.metadata.namespace = Some("default".into());
        c.metadata.uid = Some("cj-uid".into());
        c.metadata.creation_timestamp = serde_json::from_value(json!("2026-12-01T10:00:30Z")).ok();
        c
    }

    const MINUTELY: &str = "
metadata: {name: tick}
spec:
  schedule: '* * * * *'
  jobTemplate:
    metadata: {labels: {app: tick}}
    spec:
      template:
        spec:
          restartPolicy: Never
          containers: [{name: c, image: busybox}]
";

    fn ms(t: &str) -> i64 {
        ms_of(t).expect("instant")
    }

    fn record(writes: &[Write]) -> Value {
        writes.iter().find(|w| w.kind == STATUS).and_then(|w| w.body.clone()).expect("record")
    }

    fn made(writes: &[Write]) -> Vec<Job> {
        writes
            .iter()
            .filter(|w| w.kind == "Job")
            .filter_map(|w| w.body.clone())
            .map(|b| serde_json::from_value(b).expect("job"))
            .collect()
    }

    #[test]
    fn each_minute_makes_one_job_named_for_its_minute_the_same_on_every_host() {
        let c = cron(MINUTELY);
        assert_eq!(due(&c, None, ms("2026-12-01T10:00:59Z")), None, "nothing due before the first minute");
        let now = ms("2026-12-01T10:01:02Z");
        let run = due(&c, None, now).expect("due");
        assert_eq!(
            run,
            (ms("2026-12-01T10:01:00Z"), format!("tick-{}", ms("2026-12-01T10:01:00Z") / 60_000))
        );
        let w = cron_job(&c, &[], None, Some(run.clone()), false);
        let jobs = made(&w);
        assert_eq!(jobs.len(), 1);
        let j = &jobs[0];
        assert_eq!(j.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str), Some("tick"));
        assert_eq!(
            j.metadata.annotations.as_ref().and_then(|a| a.get(SCHEDULED_ANNOTATION)).map(String::as_str),
            Some("2026-12-01T10:01:00Z")
        );
        let owner = &j.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("CronJob", "cj-uid"));
        // Another host deciding the same run writes the same Job, uid included.
        assert_eq!(made(&cron_job(&c, &[], None, Some(run.clone()), false))[0], *j);
        // Once recorded, the same minute is not due again; the next one is.
        let rec = record(&w);
        assert_eq!(rec["status"]["lastScheduleTime"], "2026-12-01T10:01:00Z");
        assert_eq!(due(&c, Some(&rec), ms("2026-12-01T10:01:40Z")), None);
        assert_eq!(
            due(&c, Some(&rec), ms("2026-12-01T10:02:00Z")).map(|r| r.0),
            Some(ms("2026-12-01T10:02:00Z"))
        );
        // A run whose Job exists or existed (a new owner without the record) is only recorded.
        let w = cron_job(&c, &[], None, Some(run), true);
        assert!(made(&w).is_empty());
        assert_eq!(record(&w)["status"]["lastScheduleTime"], "2026-12-01T10:01:00Z");
    }

    #[test]
    fn missed_runs_the_deadline_and_suspend() {
        let mut c = cron(MINUTELY);
        // Down for ten minutes: only the latest run is made.
        let run = due(&c, None, ms("2026-12-01T10:11:30Z")).expect("due");
        assert_eq!(run.0, ms("2026-12-01T10:11:00Z"));
        c.spec.starting_deadline_seconds = Some(20);
        assert_eq!(due(&c, None, ms("2026-12-01T10:11:30Z")), None, "30 s late, past a 20 s deadline");
        assert!(due(&c, None, ms("2026-12-01T10:11:15Z")).is_some());
        c.spec.suspend = Some(true);
        assert_eq!(due(&c, None, ms("2026-12-01T10:11:15Z")), None);
    }

    fn finished_job(name: &str, at: &str, outcome: &str) -> (Job, Value) {
        let j: Job = serde_json::from_value(json!({
            "metadata": {"name": name, "uid": name, "annotations": {SCHEDULED_ANNOTATION: at}},
        }))
        .expect("job");
        let mut record = json!({"uid": name, "status": {}, "tally": {}});
        if !outcome.is_empty() {
            record["tally"]["outcome"] = json!({"kind": outcome, "reason": "", "message": "", "atMs": 0});
            record["status"]["completionTime"] = json!(at);
        }
        (j, record)
    }

    #[test]
    fn concurrency_policies_and_history_limits() {
        let mut c = cron(MINUTELY);
        let (running, running_rec) = finished_job("tick-1", "2026-12-01T10:01:00Z", "");
        let run = (ms("2026-12-01T10:02:00Z"), "tick-2".to_owned());
        let jobs = [(&running, Some(&running_rec))];
        // Allow: a second run beside the first.
        let w = cron_job(&c, &jobs, None, Some(run.clone()), false);
        assert_eq!(made(&w).len(), 1);
        assert_eq!(record(&w)["status"]["active"][0]["name"], "tick-1");
        // Forbid: waits, and the run stays due.
        c.spec.concurrency_policy = Some("Forbid".into());
        let w = cron_job(&c, &jobs, None, Some(run.clone()), false);
        assert!(made(&w).is_empty());
        assert!(record(&w)["status"]["lastScheduleTime"].is_null());
        // Replace: the active run is deleted, the new one made.
        c.spec.concurrency_policy = Some("Replace".into());
        let w = cron_job(&c, &jobs, None, Some(run), false);
        let deleted: Vec<&str> =
            w.iter().filter(|w| w.kind == "Job" && w.body.is_none()).map(|w| w.name.as_str()).collect();
        assert_eq!(deleted, ["tick-1"]);
        assert_eq!(made(&w)[0].metadata.name.as_deref(), Some("tick-2"));

        // History: 3 complete and 1 failed kept, the oldest go.
        let c = cron(MINUTELY);
        let done: Vec<(Job, Value)> = (1..=5)
            .map(|m| finished_job(&format!("ok-{m}"), &format!("2026-12-01T10:0{m}:00Z"), "Complete"))
            .chain(
                (1..=2)
                    .map(|m| finished_job(&format!("bad-{m}"), &format!("2026-12-01T10:0{m}:30Z"), "Failed")),
            )
            .collect();
        let jobs: Vec<(&Job, Option<&Value>)> = done.iter().map(|(j, r)| (j, Some(r))).collect();
        let w = cron_job(&c, &jobs, None, None, false);
        let mut deleted: Vec<&str> =
            w.iter().filter(|w| w.kind == "Job" && w.body.is_none()).map(|w| w.name.as_str()).collect();
        deleted.sort_unstable();
        assert_eq!(deleted, ["bad-1", "ok-1", "ok-2"]);
        assert_eq!(record(&w)["status"]["lastSuccessfulTime"], "2026-12-01T10:05:00Z");
    }
}
