//! ReplicaSets and Deployments, decided as pure functions of what the state holds.
//!
//! A ReplicaSet keeps `spec.replicas` pods named `<rs>-<suffix>`, the suffix a function of the
//! ReplicaSet's uid and the replica's index (the same on every host), and drops the pods of
//! indices past the count. A Deployment keeps one ReplicaSet per pod template
//! (`<deployment>-<pod-template-hash>`, revision annotation as Kubernetes writes it) and moves
//! replicas from the old ones to the new one: `Recreate` stops the old pods first,
//! `RollingUpdate` keeps at most `replicas + maxSurge` pods and at least
//! `replicas - maxUnavailable` ready ones. Old ReplicaSets scaled to 0 are kept as revision
//! history (`revisionHistoryLimit`, default 10) for rollbacks.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{json, Value};

use super::common::{condition, owner_ref, pod_from_template, suffix, template_hash, PodState, Write};
use super::disruption::Budgets;

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

fn replicas_of(rs: &ReplicaSet) -> i64 {
    rs.spec.replicas.map_or(1, i64::from)
}

pub fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata.annotations.as_ref().and_then(|a| a.get(REVISION)).and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// The names of a ReplicaSet's first `n` replicas.
pub fn replica_names(name: &str, uid: &str, n: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(n);
    let mut seen = BTreeSet::new();
    let mut i = 0u64;
    while names.len() < n {
        let s = suffix(uid, i);
        i += 1;
        if seen.insert(s.clone()) {
            names.push(format!("{name}-{s}"));
        }
    }
    names
}

/// A ReplicaSet's writes (pods to create and delete) and its status, given the pods it
/// controls.
/// `budgets`: the disruption budgets a scale-down honours (`None` for an old revision of a
/// Deployment, which a rollout scales down: the owner's own change, as in Kubernetes).
pub fn replica_set(rs: &ReplicaSet, pods: &[&PodState], budgets: Option<Budgets<'_>>) -> Vec<Write> {
    let ns = rs.metadata.namespace.as_deref().unwrap_or("default");
    let name = rs.metadata.name.as_deref().unwrap_or("");
    let uid = rs.metadata.uid.as_deref().unwrap_or("");
    let want = replicas_of(rs).max(0) as usize;
    let mut writes = Vec::new();
    let template = rs.spec.template.clone().unwrap_or_default();
    if pods.len() < want {
        // The first names (by index) not in use: two owners writing at once write the same.
        let have: BTreeSet<&str> = pods.iter().map(|p| p.name()).collect();
        let names = replica_names(name, uid, want + pods.len());
        for n in names.iter().filter(|n| !have.contains(n.as_str())).take(want - pods.len()) {
            let pod = pod_from_template(&template, ns, n, owner_ref("ReplicaSet", &rs.metadata), &[]);
            writes.push(Write::put("Pod", ns, n, serde_json::to_value(pod).unwrap_or_default()));
        }
    } else if pods.len() > want {
        // Pods not ready go first (they cost no availability), then the latest names, as
        // Kubernetes ranks the pods it deletes.
        let rank: BTreeMap<String, usize> =
            replica_names(name, uid, pods.len() * 2).into_iter().enumerate().map(|(i, n)| (n, i)).collect();
        let mut doomed: Vec<&PodState> = pods.to_vec();
        doomed
            .sort_by_key(|p| (p.ready, std::cmp::Reverse(rank.get(p.name()).copied().unwrap_or(usize::MAX))));
        doomed.truncate(pods.len() - want);
        let go = budgets.map_or(doomed.len(), |b| b.removable(&doomed));
        for p in &doomed[..go] {
            writes.push(Write::delete("Pod", ns, p.name()));
        }
    }
    let ready = pods.iter().filter(|p| p.ready).count();
    let available = pods.iter().filter(|p| p.available(rs.spec.min_ready_seconds)).count();
    let status = json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": pods.len(),
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs.metadata.generation.unwrap_or(1),
    });
    writes.push(status_write("ReplicaSetStatus", &rs.metadata, status));
    writes
}

/// The status record of an object: `{uid, status}` under `(kind, namespace, name)`.
pub fn status_write(kind: &'static str, meta: &ObjectMeta, status: Value) -> Write {
    let ns = meta.namespace.as_deref().unwrap_or("default");
    let name = meta.name.as_deref().unwrap_or("");
    Write::put(kind, ns, name, json!({"uid": meta.uid, "status": status}))
}

/// `maxSurge` / `maxUnavailable` of `n` replicas: a count, or a percentage rounded up
/// (surge) or down (unavailable), as Kubernetes resolves them.
fn resolve(v: Option<&IntOrString>, n: i64, default_percent: i64, round_up: bool) -> i64 {
    let percent = |p: i64| if round_up { (n * p + 99) / 100 } else { n * p / 100 };
    match v {
        Some(IntOrString::Int(i)) => i64::from(*i),
        Some(IntOrString::String(s)) => s.strip_suffix('%').and_then(|p| p.parse().ok()).map_or(0, percent),
        None => percent(default_percent),
    }
}

/// A Deployment's writes: its ReplicaSets (created, scaled, pruned) and its status. `rses` are
/// the ReplicaSets it controls, `pods` the pods each controls (by ReplicaSet uid).
pub fn deployment(
    d: &Deployment,
    rses: &[&ReplicaSet],
    pods: &BTreeMap<String, Vec<&PodState>>,
) -> Vec<Write> {
    let ns = d.metadata.namespace.as_deref().unwrap_or("default");
    let dname = d.metadata.name.as_deref().unwrap_or("");
    let spec = d.spec.clone();
    let n = spec.replicas.map_or(1, i64::from).max(0);
    let hash = template_hash(&spec.template);
    let new_name = format!("{dname}-{hash}");
    let uid_of = |rs: &ReplicaSet| rs.metadata.uid.clone().unwrap_or_default();
    let pods_of = |rs: &ReplicaSet| pods.get(&uid_of(rs)).map_or(&[][..], Vec::as_slice);
    // Availability (what maxUnavailable keeps) counts pods ready for `minReadySeconds`.
    let min_ready = spec.min_ready_seconds;
    let ready_of = |rs: &ReplicaSet| pods_of(rs).iter().filter(|p| p.available(min_ready)).count() as i64;

    let max_revision = rses.iter().map(|r| revision_of(r)).max().unwrap_or(0);
    let existing_new = rses.iter().find(|r| r.metadata.name.as_deref() == Some(new_name.as_str()));
    let new_revision = match existing_new {
        Some(r) if revision_of(r) == max_revision => max_revision,
        _ => max_revision + 1,
    };
    let mut olds: Vec<&ReplicaSet> =
        rses.iter().copied().filter(|r| r.metadata.name.as_deref() != Some(new_name.as_str())).collect();
    olds.sort_by_key(|r| revision_of(r));
    let mut new_replicas = existing_new.map_or(0, |r| replicas_of(r));
    let mut old_replicas: Vec<i64> = olds.iter().map(|r| replicas_of(r)).collect();
    let strategy = spec.strategy.clone().unwrap_or_default();
    let recreate = strategy.type_.as_deref() == Some("Recreate");
    let rolling = strategy.rolling_update.unwrap_or_default();
    let mut surge = resolve(rolling.max_surge.as_ref(), n, 25, true);
    let mut unavailable = resolve(rolling.max_unavailable.as_ref(), n, 25, false);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    if recreate {
        surge = 0;
        let old_pods: usize = olds.iter().map(|r| pods_of(r).len()).sum();
        old_replicas.iter_mut().for_each(|r| *r = 0);
        new_replicas = if old_pods == 0 { n } else { 0 };
    } else {
        let total: i64 = new_replicas + old_replicas.iter().sum::<i64>();
        if new_replicas < n {
            let up = (n + surge - total).min(n - new_replicas);
            if up > 0 {
                new_replicas += up;
            }
        }
        new_replicas = new_replicas.min(n);
        // As Kubernetes: old pods that are not ready go first (a ReplicaSet deletes those
        // first), as many as `maxScaledDown` allows; then ready ones, as far as keeping
        // `n - maxUnavailable` available allows. A ReplicaSet's pods count up to its count
        // only: those past it are being deleted (by its owner, perhaps another host not
        // heard from yet), no availability to count on (Kubernetes sums the counts).
        let held = |r: &ReplicaSet| (pods_of(r).len() as i64).min(replicas_of(r));
        let ready_held = |r: &ReplicaSet| ready_of(r).min(held(r));
        let min_available = n - unavailable;
        let all_pods: i64 = rses.iter().map(|r| held(r)).sum();
        let new_unready = existing_new.map_or(0, |r| (replicas_of(r) - ready_of(r)).max(0));
        let mut cleanup = all_pods - min_available - new_unready;
        for (i, r) in old_replicas.iter_mut().enumerate() {
            let unready = (held(olds[i]) - ready_held(olds[i])).max(0).min(*r).min(cleanup.max(0));
            *r -= unready;
            cleanup -= unready;
        }
        let available: i64 = rses.iter().map(|r| ready_held(r)).sum();
        let mut budget = (available - min_available).min(cleanup.max(0));
        for r in old_replicas.iter_mut() {
            let down = budget.clamp(0, *r);
            *r -= down;
            budget -= down;
        }
    }

    let mut writes = Vec::new();
    let owner = owner_ref("Deployment", &d.metadata);
    let mut template: PodTemplateSpec = spec.template.clone();
    let tm = template.metadata.get_or_insert_with(Default::default);
    tm.labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
    let mut selector: LabelSelector = spec.selector.clone();
    selector.match_labels.get_or_insert_with(Default::default).insert(HASH_LABEL.into(), hash.clone());
    let annotations = BTreeMap::from([
        (REVISION.to_owned(), new_revision.to_string()),
        ("deployment.kubernetes.io/desired-replicas".to_owned(), n.to_string()),
        ("deployment.kubernetes.io/max-replicas".to_owned(), (n + surge).to_string()),
    ]);
    let new_rs = ReplicaSet {
        metadata: ObjectMeta {
            name: Some(new_name.clone()),
            namespace: Some(ns.to_owned()),
            uid: existing_new.and_then(|r| r.metadata.uid.clone()),
            creation_timestamp: existing_new.and_then(|r| r.metadata.creation_timestamp.clone()),
            generation: existing_new.and_then(|r| r.metadata.generation),
            labels: tm.labels.clone(),
            annotations: Some(annotations),
            owner_references: Some(vec![owner.clone()]),
            ..ObjectMeta::default()
        },
        spec: ReplicaSetSpec {
            replicas: Some(new_replicas as i32),
            selector,
            template: Some(template),
            min_ready_seconds: spec.min_ready_seconds,
        },
        status: None,
    };
    writes.push(Write::put("ReplicaSet", ns, &new_name, serde_json::to_value(&new_rs).unwrap_or_default()));
    for (rs, replicas) in olds.iter().zip(&old_replicas) {
        if *replicas != replicas_of(rs) {
            let mut scaled = (*rs).clone();
            scaled.spec.replicas = Some(*replicas as i32);
            let name = rs.metadata.name.as_deref().unwrap_or("");
            writes.push(Write::put(
                "ReplicaSet",
                ns,
                name,
                serde_json::to_value(&scaled).unwrap_or_default(),
            ));
        }
    }
    // History: old ReplicaSets at 0 with no pods left, beyond the limit, oldest first.
    let limit = spec.revision_history_limit.map_or(10, i64::from).max(0) as usize;
    let idle: Vec<&&ReplicaSet> = olds
        .iter()
        .zip(&old_replicas)
        .filter(|(r, replicas)| **replicas == 0 && pods_of(r).is_empty())
        .map(|(r, _)| r)
        .collect();
    for rs in idle.iter().take(idle.len().saturating_sub(limit)) {
        writes.push(Write::delete("ReplicaSet", ns, rs.metadata.name.as_deref().unwrap_or("")));
    }

    // Status, as Kubernetes fills it.
    let all: Vec<&PodState> = rses.iter().flat_map(|r| pods_of(r).iter().copied()).collect();
    let ready = all.iter().filter(|p| p.ready).count() as i64;
    let available = all.iter().filter(|p| p.available(min_ready)).count() as i64;
    let updated = existing_new.map_or(0, |r| pods_of(r).len() as i64);
    let available_ok = available >= n - unavailable;
    let complete = updated == n && all.len() as i64 == n && available == n;
    let mut status = json!({
        "observedGeneration": d.metadata.generation.unwrap_or(1),
        "replicas": all.len(),
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "conditions": [
            if available_ok {
                condition("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability.")
            } else {
                condition("Available", false, "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
            },
            if complete {
                condition("Progressing", true, "NewReplicaSetAvailable", &format!("ReplicaSet \"{new_name}\" has successfully progressed."))
            } else {
                condition("Progressing", true, "ReplicaSetUpdated", &format!("ReplicaSet \"{new_name}\" is progressing."))
            },
        ],
    });
    if n - available > 0 {
        status["unavailableReplicas"] = json!(n - available);
    }
    writes.push(status_write("DeploymentStatus", &d.metadata, status));
    writes
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;

    fn dep(replicas: i32, image: &str, strategy: &str) -> Deployment {
        serde_yaml::from_str(&format!(
            "metadata: {{name: web, namespace: default, uid: d-1, generation: 1}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n{strategy}  template:\n    metadata: {{labels: {{app: web}}}}\n    spec: {{containers: [{{name: c, image: {image}}}]}}\n"
        ))
        .expect("deployment")
    }

    /// A fake mesh: applies the writes to the ReplicaSets, and lets every ReplicaSet's pods
    /// match its count, ready or not.
    #[derive(Default)]
    struct World {
        rses: BTreeMap<String, ReplicaSet>,
        pods: BTreeMap<String, Vec<PodState>>,
        /// The ReplicaSet controller's deletions wait for `catch_up` (it runs on another host).
        lag: bool,
    }

    impl World {
        fn step(&mut self, d: &Deployment, ready: bool) -> Vec<Write> {
            let rses: Vec<&ReplicaSet> = self.rses.values().collect();
            let pods: BTreeMap<String, Vec<&PodState>> =
                self.pods.iter().map(|(k, v)| (k.clone(), v.iter().collect())).collect();
            let writes = deployment(d, &rses, &pods);
            for w in &writes {
                match (w.kind, &w.body) {
                    ("ReplicaSet", Some(b)) => {
                        let mut rs: ReplicaSet = serde_json::from_value(b.clone()).expect("rs");
                        let uid = format!("u-{}", w.name);
                        rs.metadata.uid = Some(uid);
                        self.rses.insert(w.name.clone(), rs);
                    }
                    ("ReplicaSet", None) => {
                        self.rses.remove(&w.name);
                    }
                    _ => {}
                }
            }
            // Each ReplicaSet's pods follow its count (the ReplicaSet controller's part).
            for rs in self.rses.values() {
                let uid = rs.metadata.uid.clone().expect("uid");
                let n = replicas_of(rs) as usize;
                let pods = self.pods.entry(uid).or_default();
                // As `replica_set` deletes: pods not ready first, then the latest.
                while !self.lag && pods.len() > n {
                    let i = pods.iter().rposition(|p| !p.ready).unwrap_or(pods.len() - 1);
                    pods.remove(i);
                }
                while pods.len() < n {
                    pods.push(PodState { pod: Pod::default(), ready, ..PodState::default() });
                }
            }
            writes
        }
        fn counts(&self) -> Vec<(String, i64, usize)> {
            self.rses
                .values()
                .map(|r| {
                    let uid = r.metadata.uid.clone().unwrap_or_default();
                    (
                        r.metadata.name.clone().unwrap_or_default(),
                        replicas_of(r),
                        self.pods.get(&uid).map_or(0, Vec::len),
                    )
                })
                .collect()
        }
        /// The lagging deletions happen.
        fn catch_up(&mut self) {
            for rs in self.rses.values() {
                let uid = rs.metadata.uid.clone().unwrap_or_default();
                if let Some(pods) = self.pods.get_mut(&uid) {
                    while pods.len() > replicas_of(rs) as usize {
                        let i = pods.iter().rposition(|p| !p.ready).unwrap_or(pods.len() - 1);
                        pods.remove(i);
                    }
                }
            }
        }
        fn ready(&self) -> usize {
            self.pods.values().flatten().filter(|p| p.ready).count()
        }
        fn mark_ready(&mut self) {
            self.pods.values_mut().flatten().for_each(|p| p.ready = true);
        }
        /// `secs` pass: ready pods have been ready that much longer.
        fn age(&mut self, secs: u64) {
            self.pods.values_mut().flatten().filter(|p| p.ready).for_each(|p| p.ready_for_secs += secs);
        }
    }

    #[test]
    fn min_ready_seconds_holds_a_rollout_until_new_pods_have_been_ready_that_long() {
        let mut w = World::default();
        let min = "  minReadySeconds: 10\n";
        w.step(&dep(4, "app:1", min), true);
        w.step(&dep(4, "app:1", min), true);
        w.age(60);
        let v2 = dep(4, "app:2", min);
        for _ in 0..10 {
            w.step(&v2, true);
        }
        // New pods are ready but not yet available: the old ReplicaSet keeps 3 (4 - 25%).
        let c = w.counts();
        let old = c.iter().find(|c| revision_of(&w.rses[&c.0]) == 1);
        assert_eq!(old.map(|c| c.1), Some(3), "{c:?}");
        let writes = w.step(&v2, true);
        let status = writes.iter().find(|w| w.kind == "DeploymentStatus").and_then(|w| w.body.clone());
        let status = status.expect("status")["status"].clone();
        assert_eq!(
            (status["readyReplicas"].as_i64(), status["availableReplicas"].as_i64()),
            (Some(5), Some(3))
        );
        // Ten seconds later they are available and the rollout goes on to the end.
        for _ in 0..20 {
            w.age(10);
            w.step(&v2, true);
        }
        let c = w.counts();
        assert!(
            c.iter().any(|c| c.1 == 4 && c.2 == 4) && c.iter().filter(|c| c.1 == 0).count() == 1,
            "{c:?}"
        );
    }

    #[test]
    fn a_rolling_update_never_exceeds_surge_nor_drops_below_availability() {
        let mut w = World::default();
        let v1 = dep(4, "app:1", "");
        w.step(&v1, true);
        w.step(&v1, true);
        let c = w.counts();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].1, c[0].2), (4, 4));
        assert!(c[0].0.starts_with("web-"));
        // v2: 25% of 4 = surge 1, unavailable 1.
        let v2 = dep(4, "app:2", "");
        for _ in 0..20 {
            w.step(&v2, false);
            let total: usize = w.counts().iter().map(|c| c.2).sum();
            assert!(total <= 5, "surge exceeded: {:?}", w.counts());
            let ready = w.pods.values().flatten().filter(|p| p.ready).count();
            assert!(ready >= 3, "availability dropped: {:?}", w.counts());
            w.mark_ready();
        }
        let c = w.counts();
        let new = c.iter().find(|c| c.1 == 4).expect("new rs at 4");
        assert_eq!(new.2, 4);
        assert!(c.iter().filter(|c| c.0 != new.0).all(|c| c.1 == 0 && c.2 == 0), "{c:?}");
        // The new ReplicaSet has the next revision; the old one is kept as history.
        let old = c.iter().find(|c| c.0 != new.0).expect("old kept").0.clone();
        assert_eq!((revision_of(&w.rses[&old]), revision_of(&w.rses[&new.0])), (1, 2));
        // Rolling back to v1 reuses its ReplicaSet, now revision 3.
        for _ in 0..20 {
            w.step(&v1, true);
        }
        assert_eq!(revision_of(&w.rses[&old]), 3);
        assert_eq!(w.counts().iter().find(|c| c.0 == old).map(|c| c.2), Some(4));
    }

    #[test]
    fn old_pods_whose_deletion_lags_are_not_counted_as_availability() {
        let mut w = World::default();
        let strategy = "  strategy: {rollingUpdate: {maxSurge: 0, maxUnavailable: 1}}\n";
        let v1 = dep(4, "app:1", strategy);
        w.step(&v1, true);
        w.step(&v1, true);
        // The old ReplicaSet's deletions (another host's controller) are seen only every
        // other pass. A pod about to be deleted is no availability to count on: once the
        // deletions are done, at least 3 stay ready.
        let v2 = dep(4, "app:2", strategy);
        w.lag = true;
        for _ in 0..20 {
            w.step(&v2, false);
            w.step(&v2, false);
            w.catch_up();
            assert!(w.ready() >= 3, "availability dropped: {:?}", w.counts());
            w.mark_ready();
        }
        let c = w.counts();
        assert!(c.iter().any(|c| c.1 == 4 && c.2 == 4) && c.iter().any(|c| c.1 == 0 && c.2 == 0), "{c:?}");
    }

    #[test]
    fn unready_old_pods_go_first_and_ready_ones_only_as_availability_allows() {
        let mut w = World::default();
        let v1 = dep(4, "app:1", "");
        w.step(&v1, true);
        w.step(&v1, true);
        // Two of the four old pods stop being ready; a rollout begins (25%: surge 1,
        // unavailable 1: 3 must stay available). Kubernetes removes one unready old pod and
        // keeps both ready ones.
        for p in w.pods.values_mut().flatten().take(2) {
            p.ready = false;
        }
        w.step(&dep(4, "app:2", ""), false);
        let c = w.counts();
        let old = c.iter().find(|c| revision_of(&w.rses[&c.0]) == 1).expect("old");
        assert_eq!(old.1, 3, "{c:?}");
        assert_eq!(w.ready(), 2, "a ready pod was deleted: {c:?}");
    }

    #[test]
    fn recreate_stops_every_old_pod_before_starting_new_ones() {
        let mut w = World::default();
        let r = "  strategy: {type: Recreate}\n";
        w.step(&dep(3, "app:1", r), true);
        w.step(&dep(3, "app:2", r), true);
        let c = w.counts();
        assert!(c.iter().all(|c| c.1 == 0), "both at 0 while old pods go: {c:?}");
        w.step(&dep(3, "app:2", r), true);
        let c = w.counts();
        assert_eq!(c.iter().map(|c| c.2).sum::<usize>(), 3, "{c:?}");
    }

    #[test]
    fn history_keeps_the_limit_and_status_counts_like_kubernetes() {
        let mut w = World::default();
        let limit = "  revisionHistoryLimit: 1\n";
        for v in 1..=4 {
            for _ in 0..10 {
                w.step(&dep(2, &format!("app:{v}"), limit), true);
            }
        }
        assert_eq!(w.rses.len(), 2, "the current and one old: {:?}", w.counts());
        let writes = w.step(&dep(2, "app:4", limit), true);
        let status = writes
            .iter()
            .find(|w| w.kind == "DeploymentStatus")
            .and_then(|w| w.body.clone())
            .expect("status");
        let s = &status["status"];
        assert_eq!(
            (s["replicas"].as_i64(), s["updatedReplicas"].as_i64(), s["readyReplicas"].as_i64()),
            (Some(2), Some(2), Some(2))
        );
        assert_eq!(s["conditions"][0]["status"], "True");
        assert_eq!(s["conditions"][1]["reason"], "NewReplicaSetAvailable");
        assert_eq!(status["uid"], "d-1");
    }

    #[test]
    fn a_replica_set_creates_missing_replicas_and_drops_those_past_its_count() {
        let rs = |replicas: u32| -> ReplicaSet {
            serde_yaml::from_str(&format!(
                "metadata: {{name: web-abc, namespace: default, uid: r-1}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template: {{metadata: {{labels: {{app: web}}}}, spec: {{containers: [{{name: c, image: i}}]}}}}\n",
            ))
            .expect("rs")
        };
        let names = replica_names("web-abc", "r-1", 3);
        let pod = |name: &str, ready: bool| {
            let mut p = Pod::default();
            p.metadata.name = Some(name.into());
            PodState { pod: p, ready, ..PodState::default() }
        };
        let split = |writes: &[Write]| -> (Vec<String>, Vec<String>) {
            let pods = writes.iter().filter(|w| w.kind == "Pod");
            let (made, gone): (Vec<&Write>, Vec<&Write>) = pods.partition(|w| w.body.is_some());
            (made.iter().map(|w| w.name.clone()).collect(), gone.iter().map(|w| w.name.clone()).collect())
        };
        // Pods are counted, not names: two of two is enough, whichever names they have.
        let have = [pod(&names[0], true), pod(&names[2], true)];
        let refs: Vec<&PodState> = have.iter().collect();
        assert_eq!(split(&replica_set(&rs(2), &refs, None)), (vec![], vec![]));
        // A missing one gets the first name not in use.
        let writes = replica_set(&rs(3), &refs, None);
        assert_eq!(split(&writes), (vec![names[1].clone()], vec![]));
        // Past the count: the latest name goes, unless a pod is not ready: that one goes first.
        assert_eq!(split(&replica_set(&rs(1), &refs, None)), (vec![], vec![names[2].clone()]));
        let have = [pod(&names[0], false), pod(&names[2], true)];
        let refs: Vec<&PodState> = have.iter().collect();
        assert_eq!(split(&replica_set(&rs(1), &refs, None)), (vec![], vec![names[0].clone()]));
        let body = writes.iter().find(|w| w.name == names[1]).and_then(|w| w.body.clone()).expect("pod");
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "r-1");
        assert_eq!(body["metadata"]["labels"]["app"], "web");
    }
    #[test]
    fn a_scale_down_holds_at_what_a_disruption_budget_needs() {
        let rs: ReplicaSet = serde_yaml::from_str(
            "metadata: {name: web-abc, namespace: default, uid: r-1}\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: web}}\n  template: {metadata: {labels: {app: web}}, spec: {containers: [{name: c, image: i}]}}\n",
        )
        .expect("rs");
        let names = replica_names("web-abc", "r-1", 3);
        let pod = |name: &str, ready: bool| {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}}}))
            .expect("pod");
            PodState { pod, ready, phase: "Running".into(), ..PodState::default() }
        };
        let have = [pod(&names[0], true), pod(&names[1], false), pod(&names[2], true)];
        let refs: Vec<&PodState> = have.iter().collect();
        let min1: k8s_openapi::api::policy::v1::PodDisruptionBudget = serde_yaml::from_str(
            "metadata: {name: web, namespace: default}\nspec: {minAvailable: 1, selector: {matchLabels: {app: web}}}",
        )
        .expect("pdb");
        let gone = |budgets: Option<Budgets<'_>>| -> Vec<String> {
            replica_set(&rs, &refs, budgets)
                .into_iter()
                .filter(|w| w.kind == "Pod" && w.body.is_none())
                .map(|w| w.name)
                .collect()
        };
        // The unready pod and one ready one go; the last ready one is what the budget needs.
        let pdbs = [&min1];
        let budgets = Budgets { pdbs: &pdbs, pods: &refs };
        assert_eq!(gone(Some(budgets)), [names[1].clone(), names[2].clone()]);
        // A rollout's scale-down (no budgets) takes them all, as in Kubernetes.
        assert_eq!(gone(None).len(), 3);
    }
}
