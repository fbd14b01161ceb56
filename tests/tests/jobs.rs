//! End-to-end checks of Jobs and CronJobs on three real agents, each in a network namespace of
//! its own on one bridge, their pods writing to one host directory (the hosts share a
//! filesystem here), so what ran is counted from what the pods themselves wrote:
//! - a Job of 3 completions, 2 at a time, its pods kept apart by anti-affinity: exactly three
//!   pods ran, on more than one host, and the Job is Complete with 3 succeeded;
//! - an Indexed Job: each index ran once, with `JOB_COMPLETION_INDEX`;
//! - a Job whose pod fails, `backoffLimit: 0`: Failed with BackoffLimitExceeded, then deleted
//!   with its pod by `ttlSecondsAfterFinished`;
//! - a CronJob firing every minute while a host leaves (its link cut) and comes back: each
//!   minute's run ran exactly once, as one Job of one pod named for its minute.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use anyhow::{ensure, Result};
use beemesh_tests::lan::{joined_mesh, start_ready};
use beemesh_tests::{eventually, Agent};
use serde_json::Value;

const T: Duration = Duration::from_secs(90);

fn job(agent: &Agent, name: &str) -> Value {
    agent.json(&["get", "jobs", name, "-o", "json"])
}

fn condition(job: &Value) -> Option<(String, String)> {
    let c = job["status"]["conditions"].as_array()?.iter().find(|c| c["status"] == "True")?;
    Some((c["type"].as_str()?.to_owned(), c["reason"].as_str().unwrap_or_default().to_owned()))
}

/// Pods of the Job `name` (label `job-name`) as `(pod, node, phase)`.
fn pods_of(agent: &Agent, name: &str) -> Vec<(String, String, String)> {
    let list = agent.json(&["get", "pods", "-o", "json"]);
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["metadata"]["labels"]["job-name"] == name)
        .map(|p| (s(&p["metadata"]["name"]), s(&p["spec"]["nodeName"]), s(&p["status"]["phase"])))
        .collect()
}

/// What the pods wrote: `(stem, pod, text)` of each file `<stem>.<pod>` (each pod writes a
/// file of its own: pods are different users on the host).
fn runs(dir: &std::path::Path) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let (stem, pod) = name.split_once('.')?;
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            Some((stem.to_owned(), pod.to_owned(), text.trim().to_owned()))
        })
        .collect();
    out.sort();
    out
}

fn jobs_manifest(out: &std::path::Path) -> String {
    let out = out.display();
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata: {{name: count}}
spec:
  completions: 3
  parallelism: 2
  template:
    metadata: {{labels: {{app: count}}}}
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {{matchLabels: {{job-name: count}}}}
            topologyKey: kubernetes.io/hostname
      volumes: [{{name: out, hostPath: {{path: {out}, type: Directory}}}}]
      containers:
      - name: c
        image: busybox:1
        command: [sh, -c, "echo ran > /out/count.$POD; sleep 2"]
        env: [{{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        volumeMounts: [{{name: out, mountPath: /out}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: shard}}
spec:
  completions: 2
  parallelism: 2
  completionMode: Indexed
  template:
    spec:
      restartPolicy: OnFailure
      terminationGracePeriodSeconds: 1
      volumes: [{{name: out, hostPath: {{path: {out}, type: Directory}}}}]
      containers:
      - name: c
        image: busybox:1
        command: [sh, -c, "echo $JOB_COMPLETION_INDEX > /out/shard-$JOB_COMPLETION_INDEX.$POD"]
        env: [{{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}]
        volumeMounts: [{{name: out, mountPath: /out}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: doomed}}
spec:
  backoffLimit: 0
  ttlSecondsAfterFinished: 3
  template:
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: busybox:1
        command: [sh, -c, "exit 3"]
"#
    )
}

fn cron_manifest(out: &std::path::Path) -> String {
    format!(
        r#"apiVersion: batch/v1
kind: CronJob
metadata: {{name: tick}}
spec:
  schedule: "* * * * *"
  successfulJobsHistoryLimit: 10
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          terminationGracePeriodSeconds: 1
          volumes: [{{name: out, hostPath: {{path: {}, type: Directory}}}}]
          containers:
          - name: c
            image: busybox:1
            command: [sh, -c, "echo ran > /out/$JOB.$POD"]
            env:
            - name: JOB
              valueFrom: {{fieldRef: {{fieldPath: "metadata.labels['job-name']"}}}}
            - name: POD
              valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
            volumeMounts: [{{name: out, mountPath: /out}}]
"#,
        out.display()
    )
}

/// The tick CronJob's Jobs that completed, by the minute in their name.
fn ticks_done(agent: &Agent) -> BTreeMap<i64, Value> {
    let list = agent.json(&["get", "jobs", "-o", "json"]);
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|j| condition(j).is_some_and(|(t, _)| t == "Complete"))
        .filter_map(|j| {
            let minute = j["metadata"]["name"].as_str()?.strip_prefix("tick-")?.parse().ok()?;
            Some((minute, j.clone()))
        })
        .collect()
}

/// The minute now (since the epoch, as the CronJob's Jobs are named) and the seconds into it.
fn minute_now() -> (i64, u64) {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    ((secs / 60) as i64, secs % 60)
}

#[test]
fn jobs_complete_once_and_a_cron_job_fires_once_a_minute_while_hosts_leave_and_return() -> Result<()> {
    let (lan, _root, mut agents) = joined_mesh("bjb", 63, 3)?;
    start_ready(&mut agents, T)?;
    let out = agents[0].dir.path().join("runs");
    std::fs::create_dir_all(&out)?;
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777))?;

    // The CronJob first: its minutes pass while the Jobs run.
    let applied = agents[1].apply(&cron_manifest(&out))?;
    ensure!(applied.contains("cronjob.batch/tick created"), "{applied}");
    let applied = agents[2].apply(&jobs_manifest(&out))?;
    ensure!(
        applied.contains("job.batch/count created") && applied.contains("job.batch/doomed created"),
        "{applied}"
    );

    // 3 completions, 2 at a time: Complete on every host, three pods ran, each once.
    for agent in &agents {
        ensure!(
            eventually(T, || condition(&job(agent, "count")).is_some_and(|(t, _)| t == "Complete")),
            "count: {}\n{:?}\n{}",
            job(agent, "count"),
            pods_of(agent, "count"),
            agents[2].log()
        );
    }
    let count = job(&agents[0], "count");
    ensure!(count["status"]["succeeded"] == 3 && count["status"]["active"] == 0, "{count}");
    let pods = pods_of(&agents[0], "count");
    ensure!(pods.len() == 3 && pods.iter().all(|(_, _, phase)| phase == "Succeeded"), "{pods:?}");
    let nodes: BTreeSet<&str> = pods.iter().map(|(_, node, _)| node.as_str()).collect();
    ensure!(nodes.len() >= 2, "the two pods run at once are kept apart: {pods:?}");
    let ran: BTreeSet<String> =
        runs(&out).into_iter().filter(|(stem, _, _)| stem == "count").map(|(_, pod, _)| pod).collect();
    let names: BTreeSet<String> = pods.iter().map(|(name, _, _)| name.clone()).collect();
    ensure!(ran == names, "each pod ran, and no other: {ran:?} vs {pods:?}");
    let table = agents[1].run_cli(&["get", "jobs"], None)?.1;
    ensure!(
        table.lines().any(|l| l.starts_with("count ") && l.contains("Complete") && l.contains("3/3")),
        "{table}"
    );

    // Indexed: each index once, with its index in the environment.
    ensure!(
        eventually(T, || condition(&job(&agents[1], "shard")).is_some_and(|(t, _)| t == "Complete")),
        "shard: {}",
        job(&agents[1], "shard")
    );
    ensure!(job(&agents[1], "shard")["status"]["completedIndexes"] == "0-1");
    let shards: Vec<(String, String)> = runs(&out)
        .into_iter()
        .filter(|(stem, _, _)| stem.starts_with("shard-"))
        .map(|(stem, _, text)| (stem, text))
        .collect();
    let want = [("shard-0".to_owned(), "0".to_owned()), ("shard-1".to_owned(), "1".to_owned())];
    ensure!(shards == want, "each index ran once with its index: {shards:?}");

    // A failing pod with backoffLimit 0: Failed at once, then gone with its pod after its TTL.
    let failed = |agent: &Agent| condition(&job(agent, "doomed"));
    let seen = eventually(T, || failed(&agents[0]).is_some() || job(&agents[0], "doomed").is_null());
    ensure!(seen, "doomed: {}", job(&agents[0], "doomed"));
    let gone = |agent: &Agent| job(agent, "doomed").is_null() && pods_of(agent, "doomed").is_empty();
    ensure!(
        eventually(T, || gone(&agents[0]) && gone(&agents[1])),
        "doomed stays: {}",
        job(&agents[0], "doomed")
    );

    // The CronJob: a run completes; early in a minute, h3 leaves; the next minute's run is made
    // by the two left; h3 comes back; the run after is seen everywhere.
    let mut first = None;
    ensure!(
        eventually(Duration::from_secs(150), || {
            let done = ticks_done(&agents[0]);
            // This minute's run is done and the next is at least 20 s away: no run is under
            // way when h3 leaves (a pod on it would be replaced, and might have run).
            let (now, secs) = minute_now();
            match done.keys().next_back() {
                Some(m) if *m == now && secs < 40 => {
                    first = Some(*m);
                    true
                }
                _ => false,
            }
        }),
        "no tick run completed early in a minute: {}",
        agents[0].json(&["get", "jobs", "-o", "json"])
    );
    let first = first.unwrap_or_default();
    lan.cut(3)?;
    ensure!(
        eventually(T, || ticks_done(&agents[0]).contains_key(&(first + 1))),
        "no run at minute {} without h3: {:?}",
        first + 1,
        ticks_done(&agents[0]).keys().collect::<Vec<_>>()
    );
    lan.mend(3)?;
    ensure!(
        eventually(T, || ticks_done(&agents[2]).contains_key(&(first + 2))
            && ticks_done(&agents[0]).contains_key(&(first + 2))),
        "no run at minute {} seen on h1 and h3: {:?} {:?}\n{}",
        first + 2,
        ticks_done(&agents[0]).keys().collect::<Vec<_>>(),
        ticks_done(&agents[2]).keys().collect::<Vec<_>>(),
        agents[2].log()
    );

    // Each minute's run ran once: one file per run written (`<job>.<pod>`), one Job of one
    // pod per minute, one succeeded each.
    let ticks: Vec<String> = runs(&out)
        .into_iter()
        .filter(|(stem, _, _)| stem.starts_with("tick-"))
        .map(|(stem, _, _)| stem)
        .collect();
    let distinct: BTreeSet<&String> = ticks.iter().collect();
    ensure!(distinct.len() == ticks.len() && ticks.len() >= 3, "a run ran twice: {ticks:?}");
    let done = ticks_done(&agents[0]);
    for m in first..=first + 2 {
        let j = &done[&m];
        ensure!(j["status"]["succeeded"] == 1 && j["status"]["failed"] == 0, "tick-{m}: {j}");
        let name = format!("tick-{m}");
        let pods = pods_of(&agents[0], &name);
        ensure!(pods.len() == 1, "{name}: {pods:?}");
        ensure!(ticks.contains(&name), "{name} wrote no line: {ticks:?}");
    }
    let cj = agents[2].json(&["get", "cronjobs", "tick", "-o", "json"]);
    ensure!(
        cj["status"]["lastScheduleTime"].is_string() && cj["status"]["lastSuccessfulTime"].is_string(),
        "{cj}"
    );
    let deleted = agents[0].run_cli(&["delete", "-f", "-"], Some(&cron_manifest(&out)))?;
    ensure!(deleted.0, "{}{}", deleted.1, deleted.2);
    ensure!(
        eventually(T, || ticks_done(&agents[1]).is_empty()
            && pods_of(&agents[1], &format!("tick-{first}")).is_empty()),
        "the CronJob's Jobs and pods outlive it: {:?}",
        ticks_done(&agents[1]).keys().collect::<Vec<_>>()
    );
    Ok(())
}
