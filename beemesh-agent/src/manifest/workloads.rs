//! Checks of Deployments, StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs that the k8s-openapi types cannot make: the selector
//! is valid and matches the template's labels, the template is a Pod beemesh runs (the Pod's
//! rules, `fields::validate_pod`), and the rollout settings are in range.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job, JobSpec};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{fields, join};
use crate::identity::is_dns_label;
use crate::yamldoc::FieldError;

pub(super) fn validate_deployment(d: &Deployment, prefix: &str) -> Result<(), FieldError> {
    let at = |f: &str| join(prefix, f);
    let spec = &d.spec;
    non_negative(at("spec.replicas"), spec.replicas)?;
    non_negative(at("spec.revisionHistoryLimit"), spec.revision_history_limit)?;
    non_negative(at("spec.minReadySeconds"), spec.min_ready_seconds)?;
    if let Some(deadline) = spec.progress_deadline_seconds {
        if deadline <= spec.min_ready_seconds.unwrap_or(0) {
            return Err(FieldError::new(
                at("spec.progressDeadlineSeconds"),
                "must be greater than minReadySeconds",
            ));
        }
    }
    if let Some(strategy) = &spec.strategy {
        let ty = strategy.type_.as_deref().unwrap_or("RollingUpdate");
        match ty {
            "Recreate" if strategy.rolling_update.is_some() => {
                return Err(FieldError::new(
                    at("spec.strategy.rollingUpdate"),
                    "only a RollingUpdate strategy has rollingUpdate settings",
                ))
            }
            "Recreate" | "RollingUpdate" => {}
            other => {
                return Err(FieldError::new(
                    at("spec.strategy.type"),
                    format!("{other:?}: expected RollingUpdate or Recreate"),
                )
                .at(other))
            }
        }
        if let Some(r) = &strategy.rolling_update {
            let surge = int_or_percent(at("spec.strategy.rollingUpdate.maxSurge"), r.max_surge.as_ref())?;
            let unavailable =
                int_or_percent(at("spec.strategy.rollingUpdate.maxUnavailable"), r.max_unavailable.as_ref())?;
            if surge == Some(0) && unavailable == Some(0) {
                return Err(FieldError::new(
                    at("spec.strategy.rollingUpdate"),
                    "maxSurge and maxUnavailable cannot both be 0 (the rollout could never progress)",
                ));
            }
        }
    }
    template(&spec.selector, &spec.template, prefix, &BTreeSet::new())
}

pub(super) fn validate_replica_set(r: &ReplicaSet, prefix: &str) -> Result<(), FieldError> {
    let at = |f: &str| join(prefix, f);
    non_negative(at("spec.replicas"), r.spec.replicas)?;
    non_negative(at("spec.minReadySeconds"), r.spec.min_ready_seconds)?;
    let Some(t) = &r.spec.template else {
        return Err(FieldError::new(at("spec.template"), "a ReplicaSet needs a pod template"));
    };
    template(&r.spec.selector, t, prefix, &BTreeSet::new())
}

pub(super) fn validate_daemon_set(d: &DaemonSet, prefix: &str) -> Result<(), FieldError> {
    let at = |f: &str| join(prefix, f);
    let spec = &d.spec;
    non_negative(at("spec.minReadySeconds"), spec.min_ready_seconds)?;
    non_negative(at("spec.revisionHistoryLimit"), spec.revision_history_limit)?;
    if let Some(update) = &spec.update_strategy {
        update_type(at("spec.updateStrategy.type"), update.type_.as_deref())?;
        if let Some(r) = &update.rolling_update {
            int_or_percent(
                at("spec.updateStrategy.rollingUpdate.maxUnavailable"),
                r.max_unavailable.as_ref(),
            )?;
            int_or_percent(at("spec.updateStrategy.rollingUpdate.maxSurge"), r.max_surge.as_ref())?;
        }
    }
    template(&spec.selector, &spec.template, prefix, &BTreeSet::new())
}

pub(super) fn validate_stateful_set(s: &StatefulSet, prefix: &str) -> Result<(), FieldError> {
    let at = |f: &str| join(prefix, f);
    let spec = &s.spec;
    non_negative(at("spec.replicas"), spec.replicas)?;
    non_negative(at("spec.revisionHistoryLimit"), spec.revision_history_limit)?;
    non_negative(at("spec.minReadySeconds"), spec.min_ready_seconds)?;
    let retention = spec.persistent_volume_claim_retention_policy.as_ref();
    for (field, policy) in [
        ("whenDeleted", retention.and_then(|r| r.when_deleted.as_deref())),
        ("whenScaled", retention.and_then(|r| r.when_scaled.as_deref())),
    ] {
        if let Some(p) = policy.filter(|p| *p != "Retain") {
            return Err(FieldError::new(
                at(&format!("spec.persistentVolumeClaimRetentionPolicy.{field}")),
                format!("{p}: beemesh keeps a StatefulSet's claims (Retain only)"),
            )
            .at(p));
        }
    }
    if let Some(service) = spec.service_name.as_deref().filter(|s| !s.is_empty()) {
        if !is_dns_label(service) {
            return Err(FieldError::new(at("spec.serviceName"), format!("invalid Service name {service:?}"))
                .at(service));
        }
    }
    if let Some(policy) = &spec.pod_management_policy {
        if policy != "OrderedReady" && policy != "Parallel" {
            return Err(FieldError::new(
                at("spec.podManagementPolicy"),
                format!("{policy:?}: expected OrderedReady or Parallel"),
            )
            .at(policy.clone()));
        }
    }
    if let Some(update) = &spec.update_strategy {
        update_type(at("spec.updateStrategy.type"), update.type_.as_deref())?;
        non_negative(
            at("spec.updateStrategy.rollingUpdate.partition"),
            update.rolling_update.as_ref().and_then(|r| r.partition),
        )?;
    }
    let mut claims = BTreeSet::new();
    for (i, claim) in spec.volume_claim_templates.iter().flatten().enumerate() {
        let name = claim.metadata.name.as_deref().unwrap_or_default();
        if !is_dns_label(name) || !claims.insert(name.to_owned()) {
            return Err(FieldError::new(
                at(&format!("spec.volumeClaimTemplates[{i}].metadata.name")),
                format!("invalid or repeated claim name {name:?}"),
            ));
        }
        claim_spec(claim.spec.as_ref(), &at(&format!("spec.volumeClaimTemplates[{i}].spec")))?;
    }
    template(&spec.selector, &spec.template, prefix, &claims)
}

/// A claim's spec at `base`: a storage request, access modes Kubernetes knows, a filesystem.
pub(super) fn claim_spec(
    spec: Option<&k8s_openapi::api::core::v1::PersistentVolumeClaimSpec>,
    base: &str,
) -> Result<(), FieldError> {
    let at = |f: &str| format!("{base}.{f}");
    let storage = spec.and_then(|s| s.resources.as_ref()).and_then(|r| r.requests.as_ref());
    match storage.and_then(|r| r.get("storage")) {
        Some(q) => super::parse_memory_bytes(&q.0)
            .map_err(|reason| FieldError::new(at("resources.requests.storage"), reason).at(q.0.clone()))?,
        None => {
            return Err(FieldError::new(at("resources.requests.storage"), "a claim needs a storage request"))
        }
    };
    for (i, mode) in spec.and_then(|s| s.access_modes.as_ref()).into_iter().flatten().enumerate() {
        if !matches!(mode.as_str(), "ReadWriteOnce" | "ReadOnlyMany" | "ReadWriteMany" | "ReadWriteOncePod") {
            return Err(FieldError::new(
                at(&format!("accessModes[{i}]")),
                format!("{mode:?}: expected ReadWriteOnce, ReadOnlyMany, ReadWriteMany or ReadWriteOncePod"),
            )
            .at(mode.clone()));
        }
    }
    if let Some(mode) = spec.and_then(|s| s.volume_mode.as_deref()).filter(|m| *m != "Filesystem") {
        return Err(FieldError::new(
            at("volumeMode"),
            format!("{mode}: a claim is a directory on its host's filesystem (Filesystem only)"),
        )
        .at(mode));
    }
    Ok(())
}

pub(super) fn validate_disruption_budget(
    b: &k8s_openapi::api::policy::v1::PodDisruptionBudget,
    prefix: &str,
) -> Result<(), FieldError> {
    let at = |f: &str| join(prefix, f);
    let spec = b.spec.clone().unwrap_or_default();
    match (&spec.min_available, &spec.max_unavailable) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(at("spec"), "minAvailable and maxUnavailable cannot both be set"))
        }
        (None, None) => {
            return Err(FieldError::new(
                at("spec"),
                "a PodDisruptionBudget needs minAvailable or maxUnavailable",
            ))
        }
        _ => {}
    }
    int_or_percent(at("spec.minAvailable"), spec.min_available.as_ref())?;
    int_or_percent(at("spec.maxUnavailable"), spec.max_unavailable.as_ref())?;
    if let Some(p) = spec.unhealthy_pod_eviction_policy.as_deref() {
        if p != "IfHealthyBudget" && p != "AlwaysAllow" {
            return Err(FieldError::new(
                at("spec.unhealthyPodEvictionPolicy"),
                format!("{p:?}: expected IfHealthyBudget or AlwaysAllow"),
            )
            .at(p));
        }
    }
    if let Some(selector) = &spec.selector {
        selects(selector, &BTreeMap::new(), &at)?;
    }
    Ok(())
}

pub(super) fn validate_storage_class(
    c: &k8s_openapi::api::storage::v1::StorageClass,
    prefix: &str,
) -> Result<(), FieldError> {
    let at = |f: &str| join(prefix, f);
    if c.provisioner.is_empty() {
        return Err(FieldError::new(at("provisioner"), "a StorageClass needs a provisioner"));
    }
    for (field, value, allowed) in [
        ("reclaimPolicy", c.reclaim_policy.as_deref(), &["Delete", "Retain"][..]),
        ("volumeBindingMode", c.volume_binding_mode.as_deref(), &["Immediate", "WaitForFirstConsumer"][..]),
    ] {
        if let Some(v) = value.filter(|v| !allowed.contains(v)) {
            return Err(FieldError::new(at(field), format!("{v:?}: expected {}", allowed.join(" or "))).at(v));
        }
    }
    Ok(())
}

/// A StatefulSet's or DaemonSet's `updateStrategy.type`.
fn update_type(field: String, ty: Option<&str>) -> Result<(), FieldError> {
    let ty = ty.unwrap_or("RollingUpdate");
    if ty != "RollingUpdate" && ty != "OnDelete" {
        return Err(FieldError::new(field, format!("{ty:?}: expected RollingUpdate or OnDelete")).at(ty));
    }
    Ok(())
}

fn non_negative(field: String, value: Option<i32>) -> Result<(), FieldError> {
    match value {
        Some(n) if n < 0 => Err(FieldError::new(field, format!("{n}: must not be negative"))),
        _ => Ok(()),
    }
}

/// `Some(n)` for a count, `Some(0)`/`None` for 0%/any other percent, so that only a real 0
/// counts as zero.
fn int_or_percent(field: String, value: Option<&IntOrString>) -> Result<Option<i64>, FieldError> {
    match value {
        None => Ok(None),
        Some(IntOrString::Int(n)) if *n < 0 => {
            Err(FieldError::new(field, format!("{n}: must not be negative")))
        }
        Some(IntOrString::Int(n)) => Ok(Some(i64::from(*n))),
        Some(IntOrString::String(s)) => match s.strip_suffix('%').map(str::parse::<u32>) {
            Some(Ok(p)) if p <= 100 => Ok((p == 0).then_some(0)),
            _ => Err(FieldError::new(field, format!("{s:?}: expected a count or a percentage (0%-100%)"))
                .at(s.clone())),
        },
    }
}

/// The selector is valid and selects the template's labels; the template is a Pod beemesh
/// runs, restarted always (a Deployment's or StatefulSet's pods never end on purpose).
fn template(
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    prefix: &str,
    claims: &BTreeSet<String>,
) -> Result<(), FieldError> {
    let at = |f: &str| join(prefix, f);
    let empty = BTreeMap::new();
    let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref()).unwrap_or(&empty);
    if selector.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && selector.match_expressions.as_ref().is_none_or(Vec::is_empty)
    {
        return Err(FieldError::new(at("spec.selector"), "a selector is required and must not be empty"));
    }
    if !selects(selector, labels, &at)? {
        return Err(FieldError::new(
            at("spec.selector"),
            "the selector does not match the template's labels (spec.template.metadata.labels)",
        ));
    }
    template_pod(template, &at("spec.template"), claims, &["Always"], true)
}

/// The template at `at` is a Pod beemesh runs, with one of `restart` as its restart policy
/// (`defaulted`: the policy may be left out, meaning the first).
fn template_pod(
    template: &PodTemplateSpec,
    at: &str,
    claims: &BTreeSet<String>,
    restart: &[&str],
    defaulted: bool,
) -> Result<(), FieldError> {
    let pod = Pod {
        metadata: template.metadata.clone().unwrap_or_default(),
        spec: template.spec.clone(),
        status: None,
    };
    let field = format!("{at}.spec.restartPolicy");
    match pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) {
        Some(policy) if !restart.contains(&policy) => {
            return Err(FieldError::new(
                field,
                format!("{policy:?}: only {} is allowed here", restart.join(" or ")),
            )
            .at(policy))
        }
        None if !defaulted => {
            return Err(FieldError::new(field, format!("required here: {}", restart.join(" or "))))
        }
        _ => {}
    }
    fields::validate_pod(&pod, at, claims)
}

/// The longest Job name (it is a label value on its pods), and CronJob name (its Jobs' names
/// add 11 characters).
const JOB_NAME_MAX: usize = 63;
const CRON_JOB_NAME_MAX: usize = 52;

pub(super) fn validate_job(j: &Job, prefix: &str) -> Result<(), FieldError> {
    name_at_most(j.metadata.name.as_deref(), JOB_NAME_MAX, "Job", prefix)?;
    let Some(spec) = &j.spec else {
        return Err(FieldError::new(join(prefix, "spec"), "a Job needs a spec with a pod template"));
    };
    job_spec(spec, &join(prefix, "spec"))
}

pub(super) fn validate_cron_job(c: &CronJob, prefix: &str) -> Result<(), FieldError> {
    let at = |f: &str| join(prefix, f);
    name_at_most(c.metadata.name.as_deref(), CRON_JOB_NAME_MAX, "CronJob", prefix)?;
    let spec = &c.spec;
    super::Schedule::parse(&spec.schedule, None)
        .map_err(|e| FieldError::new(at("spec.schedule"), e).at(spec.schedule.clone()))?;
    if let Some(tz) = &spec.time_zone {
        super::Schedule::parse(&spec.schedule, Some(tz))
            .map_err(|e| FieldError::new(at("spec.timeZone"), e).at(tz.clone()))?;
    }
    if let Some(policy) = spec.concurrency_policy.as_deref() {
        if !matches!(policy, "Allow" | "Forbid" | "Replace") {
            return Err(FieldError::new(
                at("spec.concurrencyPolicy"),
                format!("{policy:?}: expected Allow, Forbid or Replace"),
            )
            .at(policy));
        }
    }
    if spec.starting_deadline_seconds.is_some_and(|s| s < 0) {
        return Err(FieldError::new(at("spec.startingDeadlineSeconds"), "must not be negative"));
    }
    non_negative(at("spec.successfulJobsHistoryLimit"), spec.successful_jobs_history_limit)?;
    non_negative(at("spec.failedJobsHistoryLimit"), spec.failed_jobs_history_limit)?;
    let Some(job) = &spec.job_template.spec else {
        return Err(FieldError::new(at("spec.jobTemplate.spec"), "a CronJob's job template needs a spec"));
    };
    job_spec(job, &at("spec.jobTemplate.spec"))
}

fn name_at_most(name: Option<&str>, max: usize, kind: &str, prefix: &str) -> Result<(), FieldError> {
    match name {
        Some(n) if n.len() > max => Err(FieldError::new(
            join(prefix, "metadata.name"),
            format!("a {kind}'s name is at most {max} characters ({n:?} has {})", n.len()),
        )
        .at("name:")),
        _ => Ok(()),
    }
}

/// The most completions (and parallel pods) an Indexed Job may have, as in Kubernetes.
const MAX_INDEXED: i32 = 100_000;

/// A Job's spec at `base` (`spec`, or a CronJob's `spec.jobTemplate.spec`).
fn job_spec(spec: &JobSpec, base: &str) -> Result<(), FieldError> {
    let at = |f: &str| format!("{base}.{f}");
    non_negative(at("completions"), spec.completions)?;
    non_negative(at("parallelism"), spec.parallelism)?;
    non_negative(at("backoffLimit"), spec.backoff_limit)?;
    non_negative(at("ttlSecondsAfterFinished"), spec.ttl_seconds_after_finished)?;
    if let Some(d) = spec.active_deadline_seconds.filter(|d| *d <= 0) {
        return Err(FieldError::new(at("activeDeadlineSeconds"), format!("{d}: must be greater than 0")));
    }
    match spec.completion_mode.as_deref() {
        None | Some("NonIndexed") => {}
        Some("Indexed") => match spec.completions {
            None => {
                return Err(FieldError::new(at("completions"), "an Indexed Job needs completions"));
            }
            Some(n) if n > MAX_INDEXED || spec.parallelism.unwrap_or(1) > MAX_INDEXED => {
                return Err(FieldError::new(
                    at("completions"),
                    format!("an Indexed Job has at most {MAX_INDEXED} completions and parallel pods"),
                ));
            }
            Some(_) => {}
        },
        Some(other) => {
            return Err(FieldError::new(
                at("completionMode"),
                format!("{other:?}: expected NonIndexed or Indexed"),
            )
            .at(other))
        }
    }
    template_pod(&spec.template, &at("template"), &BTreeSet::new(), &["Never", "OnFailure"], false)
}

/// Whether `selector` selects `labels` (matchLabels and every matchExpression), after checking
/// its operators.
pub(crate) fn selects(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
    at: &dyn Fn(&str) -> String,
) -> Result<bool, FieldError> {
    let mut all = true;
    for (k, v) in selector.match_labels.iter().flatten() {
        all &= labels.get(k) == Some(v);
    }
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let field = at(&format!("spec.selector.matchExpressions[{i}]"));
        let values = e.values.as_deref().unwrap_or_default();
        let has = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(FieldError::new(
                    format!("{field}.values"),
                    format!("{} needs values", e.operator),
                ))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(FieldError::new(
                    format!("{field}.values"),
                    format!("{} takes no values", e.operator),
                ))
            }
            "In" => has.is_some_and(|v| values.contains(v)),
            "NotIn" => !has.is_some_and(|v| values.contains(v)),
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            other => {
                return Err(FieldError::new(
                    format!("{field}.operator"),
                    format!("unknown operator {other:?} (expected In, NotIn, Exists or DoesNotExist)"),
                )
                .at(other))
            }
        };
        all &= ok;
    }
    Ok(all)
}
