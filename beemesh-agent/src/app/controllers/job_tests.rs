use k8s_openapi::api::core::v1::Pod;

use super::*;

fn job_of(yaml: &str) -> Job {
    let mut j: Job = serde_yaml::from_str(yaml).expect("job");
    j.metadata.namespace = Some("default".into());
    j.metadata.uid = Some("job-uid".into());
    j
}

const THREE_BY_TWO: &str = "
metadata: {name: work}
spec:
  completions: 3
  parallelism: 2
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox}]
";

/// The pods a pass asked for, as the state would hold them (uid = name), in `phase`.
fn made(writes: &[Write], phase: &str) -> Vec<PodState> {
    writes
        .iter()
        .filter(|w| w.kind == "Pod")
        .filter_map(|w| w.body.clone())
        .map(|b| {
            let mut pod: Pod = serde_json::from_value(b).expect("pod");
            pod.metadata.uid = pod.metadata.name.clone();
            PodState { pod, phase: phase.into(), ..PodState::default() }
        })
        .collect()
}

fn record(writes: &[Write]) -> Value {
    writes.iter().find(|w| w.kind == STATUS).and_then(|w| w.body.clone()).expect("a status record")
}

fn deleted(writes: &[Write], kind: &str) -> Vec<String> {
    writes.iter().filter(|w| w.kind == kind && w.body.is_none()).map(|w| w.name.clone()).collect()
}

fn with_phase(mut p: PodState, phase: &str) -> PodState {
    p.phase = phase.into();
    p
}

#[test]
fn three_completions_two_at_a_time_each_counted_once() {
    let j = job_of(THREE_BY_TWO);
    let w = job(&j, &[], None, 1_000);
    let first = made(&w, "Running");
    assert_eq!(first.len(), 2, "parallelism 2");
    assert!(first.iter().all(|p| p.name().starts_with("work-") && p.name().len() == "work-".len() + 5));
    let labels = first[0].pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(JOB_NAME_LABEL).map(String::as_str), Some("work"));
    assert_eq!(labels.get(CONTROLLER_UID_LABEL).map(String::as_str), Some("job-uid"));
    let owner = &first[0].pod.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!((owner.api_version.as_str(), owner.kind.as_str()), ("batch/v1", "Job"));
    // The same pass on another host makes the same pods.
    assert_eq!(
        made(&job(&j, &[], None, 1_000), "Running").iter().map(|p| p.name().to_owned()).collect::<Vec<_>>(),
        first.iter().map(|p| p.name().to_owned()).collect::<Vec<_>>()
    );

    // Both succeed: one more pod, for the third completion.
    let done: Vec<PodState> = first.into_iter().map(|p| with_phase(p, "Succeeded")).collect();
    let rec = record(&w);
    let refs: Vec<&PodState> = done.iter().collect();
    let w = job(&j, &refs, Some(&rec), 2_000);
    let rec = record(&w);
    assert_eq!(rec["status"]["succeeded"], 2);
    let third = made(&w, "Running");
    assert_eq!(third.len(), 1);
    // Counted once: the same pods seen again add nothing.
    let mut all: Vec<PodState> = done.clone();
    all.extend(third.clone());
    let refs: Vec<&PodState> = all.iter().collect();
    let w = job(&j, &refs, Some(&rec), 3_000);
    let rec = record(&w);
    assert_eq!((rec["status"]["succeeded"].as_i64(), rec["status"]["active"].as_i64()), (Some(2), Some(1)));
    assert!(made(&w, "").is_empty());
    // The third succeeds: Complete, and nothing more is made, however often it is looked at.
    let all: Vec<PodState> =
        done.into_iter().chain(third.into_iter().map(|p| with_phase(p, "Succeeded"))).collect();
    let refs: Vec<&PodState> = all.iter().collect();
    let w = job(&j, &refs, Some(&rec), 4_000);
    let rec = record(&w);
    assert_eq!(rec["status"]["succeeded"], 3);
    assert_eq!(rec["status"]["conditions"][0]["type"], "Complete");
    assert_eq!(rec["status"]["completionTime"], "1970-01-01T00:00:04Z");
    let again = job(&j, &refs, Some(&rec), 5_000);
    assert!(made(&again, "").is_empty());
    assert_eq!(record(&again), rec, "a finished Job's record stays as it is");
}

#[test]
fn an_indexed_job_completes_each_index_once() {
    let j = job_of(
        "
metadata: {name: shard}
spec:
  completions: 3
  parallelism: 2
  completionMode: Indexed
  template:
    spec:
      restartPolicy: OnFailure
      containers: [{name: c, image: busybox, env: [{name: A, value: b}]}]
",
    );
    let w = job(&j, &[], None, 0);
    let pods = made(&w, "Running");
    let indexes: Vec<Option<i32>> = pods.iter().map(index_of).collect();
    assert_eq!(indexes, [Some(0), Some(1)]);
    assert!(pods[1].name().starts_with("shard-1-"), "{}", pods[1].name());
    let spec = pods[1].pod.spec.as_ref().expect("spec");
    assert_eq!(spec.hostname.as_deref(), Some("shard-1"));
    let env = spec.containers[0].env.as_ref().expect("env");
    assert_eq!(env[0].name, "JOB_COMPLETION_INDEX");
    assert_eq!(env[1].name, "A");
    assert_eq!(pods[1].label(INDEX_KEY), Some("1"));
    // Index 0 succeeds, and so does a second pod of index 0 (two owners, once): counted as
    // one completion; index 2 is next.
    let mut dup = pods[0].clone();
    dup.pod.metadata.name = Some("shard-0-other".into());
    dup.pod.metadata.uid = Some("other".into());
    let states = [with_phase(pods[0].clone(), "Succeeded"), with_phase(dup, "Succeeded"), pods[1].clone()];
    let refs: Vec<&PodState> = states.iter().collect();
    let w = job(&j, &refs, Some(&record(&w)), 1_000);
    let rec = record(&w);
    assert_eq!(rec["status"]["completedIndexes"], "0");
    assert_eq!(rec["status"]["succeeded"], 2, "two pods succeeded");
    let next = made(&w, "Running");
    assert_eq!(next.iter().map(index_of).collect::<Vec<_>>(), [Some(2)]);
    // Restarts of an OnFailure pod's containers are failures too: past backoffLimit (6), failed.
    let mut flaky = pods[1].clone();
    flaky.restarts = 7;
    let states = [with_phase(pods[0].clone(), "Succeeded"), flaky];
    let refs: Vec<&PodState> = states.iter().collect();
    let w = job(&j, &refs, Some(&rec), 2_000);
    let rec = record(&w);
    assert_eq!(rec["status"]["conditions"][0]["reason"], "BackoffLimitExceeded");
    assert_eq!(deleted(&w, "Pod"), [pods[1].name().to_owned()], "the running pod is stopped");
}

#[test]
fn failures_back_off_then_fail_the_job() {
    let j = job_of(THREE_BY_TWO);
    let w = job(&j, &[], None, 0);
    let pods = made(&w, "Running");
    let states = [with_phase(pods[0].clone(), "Failed"), pods[1].clone()];
    let refs: Vec<&PodState> = states.iter().collect();
    let w = job(&j, &refs, Some(&record(&w)), 1_000);
    let rec = record(&w);
    assert_eq!(rec["status"]["failed"], 1);
    assert!(made(&w, "").is_empty(), "the replacement waits out the back-off");
    let w = job(&j, &refs, Some(&rec), 10_999);
    assert!(made(&w, "").is_empty());
    let w = job(&j, &refs, Some(&rec), 11_000);
    let replacement = made(&w, "Running");
    assert_eq!(replacement.len(), 1);
    assert_ne!(replacement[0].name(), pods[0].name(), "a new name: the failed pod stays to be read");
    // A second failure passes backoffLimit 1.
    let states = [
        with_phase(pods[0].clone(), "Failed"),
        with_phase(pods[1].clone(), "Failed"),
        replacement[0].clone(),
    ];
    let refs: Vec<&PodState> = states.iter().collect();
    let w = job(&j, &refs, Some(&record(&w)), 12_000);
    let rec = record(&w);
    assert_eq!(rec["status"]["conditions"][0]["type"], "Failed");
    assert_eq!(rec["status"]["conditions"][0]["reason"], "BackoffLimitExceeded");
    assert_eq!(deleted(&w, "Pod"), [replacement[0].name().to_owned()]);
    assert!(rec["status"]["completionTime"].is_null());
}

#[test]
fn a_pod_on_a_lost_host_counts_as_failed_and_is_replaced_not_moved() {
    let j = job_of(THREE_BY_TWO);
    let w = job(&j, &[], None, 0);
    let mut pods = made(&w, "Running");
    pods[0].lost = true;
    let refs: Vec<&PodState> = pods.iter().collect();
    let w = job(&j, &refs, Some(&record(&w)), 1_000);
    assert_eq!(deleted(&w, "Pod"), [pods[0].name().to_owned()]);
    assert_eq!(record(&w)["status"]["failed"], 1);
    assert_eq!(record(&w)["status"]["active"], 1);
    // A pod that succeeded before its host was lost keeps its completion.
    let mut ok = with_phase(pods[1].clone(), "Succeeded");
    ok.lost = true;
    let w = job(&j, &[&ok], Some(&record(&w)), 2_000);
    assert!(deleted(&w, "Pod").is_empty());
    assert_eq!(record(&w)["status"]["succeeded"], 1);
}

#[test]
fn deadline_ttl_and_suspend() {
    let j = job_of(
        "
metadata: {name: slow}
spec:
  activeDeadlineSeconds: 5
  ttlSecondsAfterFinished: 10
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox}]
",
    );
    let w = job(&j, &[], None, 1_000);
    let pods = made(&w, "Running");
    let refs: Vec<&PodState> = pods.iter().collect();
    let w = job(&j, &refs, Some(&record(&w)), 5_999);
    assert!(record(&w)["status"]["conditions"].is_null());
    let w = job(&j, &refs, Some(&record(&w)), 6_000);
    let rec = record(&w);
    assert_eq!(rec["status"]["conditions"][0]["reason"], "DeadlineExceeded");
    assert_eq!(deleted(&w, "Pod"), [pods[0].name().to_owned()]);
    assert!(deleted(&job(&j, &[], Some(&rec), 15_999), "Job").is_empty());
    assert_eq!(deleted(&job(&j, &[], Some(&rec), 16_000), "Job"), ["slow"]);

    let mut suspended = j.clone();
    suspended.spec.as_mut().expect("spec").suspend = Some(true);
    suspended.metadata.uid = Some("other-uid".into());
    let w = job(&suspended, &[], None, 0);
    assert!(made(&w, "").is_empty());
    assert_eq!(record(&w)["status"]["conditions"][0]["type"], "Suspended");
}

#[test]
fn a_work_queue_is_done_when_one_succeeded_and_none_runs() {
    let j = job_of(
        "
metadata: {name: queue}
spec:
  parallelism: 2
  template:
    spec:
      restartPolicy: Never
      containers: [{name: c, image: busybox}]
",
    );
    let w = job(&j, &[], None, 0);
    let pods = made(&w, "Running");
    assert_eq!(pods.len(), 2);
    let states = [with_phase(pods[0].clone(), "Succeeded"), pods[1].clone()];
    let refs: Vec<&PodState> = states.iter().collect();
    let w = job(&j, &refs, Some(&record(&w)), 1_000);
    assert!(made(&w, "").is_empty() && deleted(&w, "Pod").is_empty(), "the other finishes on its own");
    assert!(record(&w)["status"]["conditions"].is_null());
    let states = [with_phase(pods[0].clone(), "Succeeded"), with_phase(pods[1].clone(), "Succeeded")];
    let refs: Vec<&PodState> = states.iter().collect();
    let w = job(&j, &refs, Some(&record(&w)), 2_000);
    assert_eq!(record(&w)["status"]["conditions"][0]["type"], "Complete");
}

#[test]
fn completed_indexes_are_written_as_ranges() {
    let set = |v: &[i32]| v.iter().copied().collect::<BTreeSet<i32>>();
    assert_eq!(ranges(&set(&[])), "");
    assert_eq!(ranges(&set(&[0, 1, 2, 4, 6, 7])), "0-2,4,6-7");
    assert_eq!(backoff_ms(1), 10_000);
    assert_eq!(backoff_ms(3), 40_000);
    assert_eq!(backoff_ms(30), BACKOFF_MAX_MS);
}
