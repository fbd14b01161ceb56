//! PodDisruptionBudgets, as pure functions of a budget and the pods of its namespace: which
//! pods it covers (its selector; an empty one covers every pod of the namespace), how many of
//! them are healthy (every container ready, on a host not lost), how many must stay healthy
//! (`minAvailable`, or the covered pods less `maxUnavailable`; percentages of the covered
//! pods, rounded up), and so how many may be disrupted now. An eviction (`drain`) asks
//! [`may_evict`] of every budget covering the pod; a scale-down asks [`Budgets::removable`]
//! how many of the healthy pods it would remove may go; the controllers' driver writes each
//! budget's status record (`PodDisruptionBudgetStatus`) for `get pdb`.

use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use super::common::{PodState, Write};

/// The status record's kind.
pub const STATUS: &str = "PodDisruptionBudgetStatus";

/// A budget's counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    pub expected: i64,
    pub healthy: i64,
    pub desired: i64,
    pub allowed: i64,
}

/// Whether `pdb` covers `p`: its namespace, its selector, and not finished.
pub fn covers(pdb: &PodDisruptionBudget, p: &PodState) -> bool {
    let ns = pdb.metadata.namespace.as_deref().unwrap_or("default");
    if p.pod.metadata.namespace.as_deref().unwrap_or("default") != ns {
        return false;
    }
    if matches!(p.phase.as_str(), "Succeeded" | "Failed") {
        return false;
    }
    let labels = p.pod.metadata.labels.clone().unwrap_or_default();
    match pdb.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(sel) => crate::manifest::selector_matches(sel, &labels),
        None => true,
    }
}

fn healthy(p: &PodState) -> bool {
    p.ready && !p.lost
}

fn resolve(v: &IntOrString, of: i64) -> i64 {
    match v {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(s) => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(100);
            (of * p + 99) / 100
        }
    }
}

/// `pdb`'s counts over `pods` (any pods: those it covers are counted).
pub fn budget(pdb: &PodDisruptionBudget, pods: &[&PodState]) -> Budget {
    let covered: Vec<&&PodState> = pods.iter().filter(|p| covers(pdb, p)).collect();
    let expected = covered.len() as i64;
    let healthy = covered.iter().filter(|p| healthy(p)).count() as i64;
    let spec = pdb.spec.clone().unwrap_or_default();
    let desired = match (&spec.min_available, &spec.max_unavailable) {
        (Some(min), _) => resolve(min, expected),
        (None, Some(max)) => expected - resolve(max, expected),
        (None, None) => 0,
    }
    .max(0);
    Budget { expected, healthy, desired, allowed: (healthy - desired).max(0) }
}

/// Whether evicting `pod` keeps every budget of `pdbs` covering it, or Kubernetes' refusal.
/// An unhealthy pod may go while its budget is met (`IfHealthyBudget`, the default) or always
/// (`AlwaysAllow`): it gives no availability.
pub fn may_evict(pod: &PodState, pdbs: &[&PodDisruptionBudget], pods: &[&PodState]) -> Result<(), String> {
    for pdb in pdbs.iter().filter(|b| covers(b, pod)) {
        let b = budget(pdb, pods);
        let ok = if healthy(pod) {
            b.allowed >= 1
        } else {
            let policy = pdb.spec.as_ref().and_then(|s| s.unhealthy_pod_eviction_policy.as_deref());
            policy == Some("AlwaysAllow") || b.healthy >= b.desired
        };
        if !ok {
            let name = pdb.metadata.name.as_deref().unwrap_or_default();
            return Err(format!(
                "Cannot evict pod as it would violate the pod's disruption budget. The disruption budget {name} needs {} healthy pods and has {} currently",
                b.desired, b.healthy
            ));
        }
    }
    Ok(())
}

/// The budgets of the mesh and the pods they count, as a scale-down consults them.
#[derive(Clone, Copy)]
pub struct Budgets<'a> {
    pub pdbs: &'a [&'a PodDisruptionBudget],
    pub pods: &'a [&'a PodState],
}

impl Budgets<'_> {
    /// How many of `doomed` (in the order a scale-down removes them) may go, one after the
    /// other, each leaving every budget covering it met: a pod not healthy always may (it
    /// gives no availability), a healthy one while its budgets allow a disruption once the
    /// pods before it are gone. The first that may not stops the count: the rest wait (a
    /// scale-down below `minAvailable` holds at it until the budget or the scale changes).
    pub fn removable(&self, doomed: &[&PodState]) -> usize {
        let mut left: Vec<&PodState> = self.pods.to_vec();
        for (n, pod) in doomed.iter().enumerate() {
            let held = healthy(pod)
                && self.pdbs.iter().filter(|b| covers(b, pod)).any(|b| budget(b, &left).allowed < 1);
            if held {
                return n;
            }
            left.retain(|p| p.name() != pod.name() || p.pod.metadata.namespace != pod.pod.metadata.namespace);
        }
        doomed.len()
    }
}

/// The status record of `pdb` with its counts.
pub fn status(pdb: &PodDisruptionBudget, b: Budget) -> Write {
    let ns = pdb.metadata.namespace.as_deref().unwrap_or("default");
    let name = pdb.metadata.name.as_deref().unwrap_or_default();
    let allowed = b.allowed > 0;
    let status: Value = json!({
        "observedGeneration": pdb.metadata.generation.unwrap_or(1),
        "expectedPods": b.expected,
        "currentHealthy": b.healthy,
        "desiredHealthy": b.desired,
        "disruptionsAllowed": b.allowed,
        "conditions": [{
            "type": "DisruptionAllowed",
            "status": if allowed { "True" } else { "False" },
            "reason": if allowed { "SufficientPods" } else { "InsufficientPods" },
            "message": "",
        }],
    });
    Write::put(STATUS, ns, name, json!({"uid": pdb.metadata.uid, "status": status}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn pdb(spec: &str) -> PodDisruptionBudget {
        serde_yaml::from_str(&format!(
            "metadata: {{name: web-pdb, namespace: default}}\nspec: {{selector: {{matchLabels: {{app: web}}}}, {spec}}}"
        ))
        .expect("pdb")
    }

    fn pod(name: &str, app: &str, ready: bool) -> PodState {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "labels": {"app": app}}}))
        .expect("pod");
        PodState { pod, ready, phase: "Running".into(), ..PodState::default() }
    }

    #[test]
    fn a_scale_down_removes_healthy_pods_only_while_every_budget_allows() {
        let pods =
            [pod("a", "web", true), pod("b", "web", false), pod("c", "web", true), pod("d", "web", true)];
        let refs: Vec<&PodState> = pods.iter().collect();
        let doomed = |names: &[&str]| -> Vec<&PodState> {
            names.iter().filter_map(|n| pods.iter().find(|p| p.name() == *n)).collect()
        };
        let (min2, max1, half) = (pdb("minAvailable: 2"), pdb("maxUnavailable: 1"), pdb("minAvailable: 50%"));
        let with = |pdbs: &[&PodDisruptionBudget], names: &[&str]| {
            Budgets { pdbs, pods: &refs }.removable(&doomed(names))
        };
        // 3 healthy of 4, 2 needed: the unready pod and one healthy go, the next is held.
        assert_eq!(with(&[&min2], &["b", "d", "c", "a"]), 2);
        // Held at the first that may not go, even if an unready one comes after it.
        assert_eq!(with(&[&min2], &["d", "c", "b"]), 1);
        // maxUnavailable counts against the pods left: a scale-down never breaks it.
        assert_eq!(with(&[&max1], &["b", "d", "c", "a"]), 4);
        // ...but a healthy pod may not go first while another is unavailable.
        assert_eq!(with(&[&max1], &["d", "b"]), 0);
        // 50% of the pods left, rounded up: down to one.
        assert_eq!(with(&[&half], &["b", "d", "c", "a"]), 3);
        assert_eq!(with(&[], &["a", "b", "c", "d"]), 4, "no budget");
    }

    #[test]
    fn budgets_count_healthy_pods_and_refuse_evictions_past_them() {
        let pods =
            [pod("a", "web", true), pod("b", "web", true), pod("c", "web", false), pod("x", "db", true)];
        let refs: Vec<&PodState> = pods.iter().collect();
        let min2 = pdb("minAvailable: 2");
        assert_eq!(budget(&min2, &refs), Budget { expected: 3, healthy: 2, desired: 2, allowed: 0 });
        let e = may_evict(&pods[0], &[&min2], &refs).expect_err("refused");
        assert!(e.starts_with("Cannot evict pod as it would violate the pod's disruption budget."), "{e}");
        assert!(e.ends_with("needs 2 healthy pods and has 2 currently"), "{e}");
        // The unready pod may go: the budget is met without it.
        assert_eq!(may_evict(&pods[2], &[&min2], &refs), Ok(()));
        // Not covered: no budget applies.
        assert_eq!(may_evict(&pods[3], &[&min2], &refs), Ok(()));
        let max1 = pdb("maxUnavailable: 1");
        assert_eq!(budget(&max1, &refs), Budget { expected: 3, healthy: 2, desired: 2, allowed: 0 });
        let half = pdb("minAvailable: 50%");
        assert_eq!(budget(&half, &refs).desired, 2, "50% of 3, rounded up");
        assert!(may_evict(&pods[0], &[&half, &max1], &refs).is_err());
        let min1 = pdb("minAvailable: 1");
        assert_eq!(may_evict(&pods[0], &[&min1], &refs), Ok(()));
        let w = status(&min2, budget(&min2, &refs));
        let body = w.body.expect("put");
        assert_eq!(body["status"]["disruptionsAllowed"], 0);
        assert_eq!(body["status"]["conditions"][0]["reason"], "InsufficientPods");
    }
}
