//! `cordon NODE`, `uncordon NODE` and `drain NODE`, as kubectl's: a cordoned node takes no new
//! pods (its record's `spec.unschedulable`, Kubernetes' unschedulable taint to the scheduler);
//! `drain` cordons it, then evicts its pods one by one through the mesh's eviction
//! (`EvictPod`: refused while a PodDisruptionBudget covering the pod allows no disruption),
//! retrying the refused ones every second until `--timeout`. DaemonSet pods are left (they
//! belong on every host); pods no controller keeps are refused unless `--force` (they would
//! not come back).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{fail, unexpected};
use crate::api::client;
use crate::api::{PodInfo, Request, Response};

/// How often refused evictions are tried again.
const RETRY: Duration = Duration::from_secs(1);

pub async fn cordon(socket: &Path, node: &str, unschedulable: bool) -> ExitCode {
    match client::call(socket, &Request::CordonNode { node: node.to_owned(), unschedulable }).await {
        Ok(Response::Applied { lines }) => {
            lines.iter().for_each(|l| outln!("{l}"));
            ExitCode::SUCCESS
        }
        other => unexpected(other),
    }
}

/// What `drain` does with a pod of the node.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    Evict,
    /// A DaemonSet's: left where it is.
    Keep,
    /// No controller: evicted only with `--force`.
    Unmanaged,
    /// Finished: nothing to evict.
    Done,
}

fn fate(p: &PodInfo) -> Fate {
    let o = &p.object;
    if matches!(o["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
        return Fate::Done;
    }
    let owner =
        o["metadata"]["ownerReferences"].as_array().into_iter().flatten().find(|r| r["controller"] == true);
    match owner.and_then(|r| r["kind"].as_str()) {
        Some("DaemonSet") => Fate::Keep,
        Some(_) => Fate::Evict,
        None => Fate::Unmanaged,
    }
}

pub async fn drain(socket: &Path, node: &str, force: bool, timeout_secs: u64) -> ExitCode {
    let code = cordon(socket, node, true).await;
    if code != ExitCode::SUCCESS {
        return code;
    }
    let items = match client::call(socket, &Request::ListPods { namespace: None }).await {
        Ok(Response::Pods { items }) => items,
        other => return unexpected(other),
    };
    let on: Vec<&PodInfo> = items.iter().filter(|p| p.object["spec"]["nodeName"] == node).collect();
    let shown = |p: &PodInfo| format!("{}/{}", p.namespace, p.name);
    let kept: Vec<String> = on.iter().filter(|p| fate(p) == Fate::Keep).map(|p| shown(p)).collect();
    if !kept.is_empty() {
        eprintln!("Warning: ignoring DaemonSet-managed Pods: {}", kept.join(", "));
    }
    let unmanaged: Vec<String> = on.iter().filter(|p| fate(p) == Fate::Unmanaged).map(|p| shown(p)).collect();
    if !unmanaged.is_empty() && !force {
        return fail(format!(
            "unable to drain node {node:?} due to error: cannot delete Pods that declare no controller (use --force to override): {}",
            unmanaged.join(", ")
        ));
    }
    let mut todo: Vec<(String, String)> = on
        .iter()
        .filter(|p| matches!(fate(p), Fate::Evict | Fate::Unmanaged))
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    for (ns, name) in &todo {
        outln!("evicting pod {ns}/{name}");
    }
    let deadline = (timeout_secs > 0).then(|| Instant::now() + Duration::from_secs(timeout_secs));
    loop {
        let mut left = Vec::new();
        for (ns, name) in todo {
            let req = Request::EvictPod { namespace: ns.clone(), name: name.clone() };
            match client::call(socket, &req).await {
                Ok(Response::Applied { lines }) => lines.iter().for_each(|l| outln!("{l}")),
                // Gone meanwhile: nothing left to evict.
                Err(client::ClientError::Agent(message)) if message.ends_with("not found") => {}
                Err(client::ClientError::Agent(message)) => {
                    eprintln!("error when evicting pods/{name:?} -n {ns:?} (will retry after 1s): {message}");
                    left.push((ns, name));
                }
                other => return unexpected(other),
            }
        }
        if left.is_empty() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let pending: Vec<String> = left.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
            return fail(format!(
                "unable to drain node {node:?} due to error: global timeout reached: {timeout_secs}s; pods left: {}",
                pending.join(", ")
            ));
        }
        todo = left;
        tokio::time::sleep(RETRY).await;
    }
    outln!("node/{node} drained");
    ExitCode::SUCCESS
}
