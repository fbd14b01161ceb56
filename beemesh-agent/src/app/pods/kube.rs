//! A pod as Kubernetes shows it: the STATUS column as kubectl computes it, readiness, and the
//! Pod object with its status, built from the actor's entry.

use std::time::SystemTime;

use super::{find_container, PodEntry, Sandbox};
use crate::pod::lifecycle::{self, Phase, State};

pub(super) fn pod_ready(e: &PodEntry) -> bool {
    matches!(e.sandbox, Sandbox::Ready)
        && !e.deleting
        && e.life
            .containers
            .iter()
            .filter(|c| !c.init)
            .all(|c| e.runs.get(&c.name).is_some_and(|r| r.ready && r.host_pid.is_some()))
}

/// The STATUS column, as kubectl computes it.
pub(super) fn status_column(e: &PodEntry) -> String {
    if e.deleting {
        return "Terminating".into();
    }
    match &e.sandbox {
        Sandbox::Creating | Sandbox::Adopting => return "ContainerCreating".into(),
        Sandbox::Failed(_) => return "SandboxError".into(),
        Sandbox::Ready => {}
    }
    let inits: Vec<&lifecycle::Container> = e.life.containers.iter().filter(|c| c.init).collect();
    let done = inits.iter().filter(|c| matches!(c.state, State::Terminated { exit_code: 0, .. })).count();
    if done < inits.len() {
        let current = inits[done];
        return match &current.state {
            State::Waiting { reason, .. } if reason != "ContainerCreating" && reason != "PodInitializing" => {
                format!("Init:{reason}")
            }
            State::Terminated { reason, .. } => format!("Init:{reason}"),
            _ => format!("Init:{done}/{}", inits.len()),
        };
    }
    let mut reason = match e.life.phase() {
        Phase::Pending => "Pending".to_owned(),
        Phase::Running => "Running".to_owned(),
        Phase::Succeeded => "Completed".to_owned(),
        Phase::Failed => "Error".to_owned(),
    };
    for c in e.life.containers.iter().filter(|c| !c.init) {
        match &c.state {
            State::Waiting { reason: r, .. } => reason = r.clone(),
            State::Terminated { reason: r, .. } => reason = r.clone(),
            State::Running { .. } => {}
        }
    }
    reason
}

/// The pod as Kubernetes would show it: the manifest plus metadata and status.
pub(super) fn pod_object(e: &PodEntry, host: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(&e.record.manifest).unwrap_or_default();
    let created = format_time(e.record.created);
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.insert("uid".into(), e.record.uid.clone().into());
        meta.insert("creationTimestamp".into(), created.clone().into());
        meta.entry("namespace").or_insert_with(|| e.plan.namespace.clone().into());
        // Where to find the pod on the host: its cgroup, directory and workload.
        let annotations = meta.entry("annotations").or_insert_with(|| serde_json::json!({}));
        if let Some(a) = annotations.as_object_mut() {
            a.insert("beemesh.io/workload".into(), e.record.workload.clone().into());
            if let Some(t) = e.svid_expires.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
                a.insert("beemesh.io/svid-expires".into(), format_time(t.as_secs()).into());
            }
        }
    }
    let statuses: Vec<serde_json::Value> = e
        .life
        .containers
        .iter()
        .map(|c| {
            let run = e.runs.get(&c.name);
            let state = match &c.state {
                State::Running { .. } => serde_json::json!({"running": {}}),
                State::Waiting { reason, .. } => serde_json::json!({"waiting": {
                    "reason": reason,
                    "message": run.and_then(|r| r.message.clone()).unwrap_or_default(),
                }}),
                State::Terminated { exit_code, reason } => {
                    let mut t = serde_json::json!({"exitCode": exit_code, "reason": reason});
                    if let Some(m) = run.and_then(|r| r.exit_message.as_ref()) {
                        t["message"] = m.clone().into();
                    }
                    serde_json::json!({ "terminated": t })
                }
            };
            let mut s = serde_json::json!({
                "name": c.name,
                "ready": run.is_some_and(|r| r.ready && r.host_pid.is_some()),
                "started": run.is_some_and(|r| r.started && r.host_pid.is_some()),
                "restartCount": c.restarts,
                "state": state,
                "image": find_container(&e.record.manifest, &c.name).and_then(|k| k.image.clone()).unwrap_or_default(),
                "imageID": run.map(|r| r.image_id.clone()).unwrap_or_default(),
            });
            if let Some((code, reason)) = &c.last_exit {
                s["lastState"] = serde_json::json!({"terminated": {"exitCode": code, "reason": reason}});
                if let (Some(m), false) = (run.and_then(|r| r.exit_message.as_ref()), matches!(c.state, State::Terminated { .. })) {
                    s["lastState"]["terminated"]["message"] = m.clone().into();
                }
            }
            s
        })
        .collect();
    let (init, app): (Vec<_>, Vec<_>) =
        statuses.into_iter().zip(e.life.containers.iter()).partition(|(_, c)| c.init);
    let phase = match e.life.phase() {
        Phase::Pending => "Pending",
        Phase::Running => "Running",
        Phase::Succeeded => "Succeeded",
        Phase::Failed => "Failed",
    };
    let ready = pod_ready(e);
    v["status"] = serde_json::json!({
        "phase": phase,
        "hostIP": "127.0.0.1",
        "podIP": "10.0.2.100",
        "startTime": created,
        "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }},
            {"type": "ContainersReady", "status": if ready { "True" } else { "False" }},
        ],
        "initContainerStatuses": init.into_iter().map(|(s, _)| s).collect::<Vec<_>>(),
        "containerStatuses": app.into_iter().map(|(s, _)| s).collect::<Vec<_>>(),
    });
    if e.life.deadline_exceeded() {
        v["status"]["reason"] = "DeadlineExceeded".into();
        v["status"]["message"] = "Pod was active on the node longer than the specified deadline".into();
    }
    if let Sandbox::Failed(message) = &e.sandbox {
        v["status"]["reason"] = "SandboxError".into();
        v["status"]["message"] = message.clone().into();
    }
    if let Some(spec) = v.get_mut("spec").and_then(|s| s.as_object_mut()) {
        spec.insert("nodeName".into(), host.into());
    }
    v
}

/// RFC 3339 UTC for Unix seconds.
pub fn format_time(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Unix seconds of an RFC 3339 time (`2026-11-30T05:00:00Z`, fractions and offsets allowed);
/// `None` when it is not one or before 1970.
pub fn parse_time(text: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_back() {
        for secs in [0, 951_782_400 + 3661, 1_795_478_400, 4_102_444_799] {
            assert_eq!(parse_time(&format_time(secs)), Some(secs));
        }
        assert_eq!(parse_time("2026-11-24T00:00:00.000123Z"), Some(1_795_478_400));
        assert_eq!(parse_time("2026-11-24T01:00:00+01:00"), Some(1_795_478_400));
        for bad in ["", "2026-11-24", "2026-13-24T00:00:00Z", "2026-11-24T00:00:00", "x026-11-24T00:00:00Z"] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times_format_as_rfc3339() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_795_478_400), "2026-11-24T00:00:00Z");
        assert_eq!(format_time(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }
}
