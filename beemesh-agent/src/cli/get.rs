//! `get KIND [NAME] [-n NS|-A] [-o wide|json|yaml]` for the kinds of the cluster state
//! (ConfigMaps, Secrets, Namespaces, Services, NetworkPolicies, Deployments, StatefulSets,
//! ReplicaSets, DaemonSets) with
//! kubectl's columns and aliases, and the printing `get pods` shares (`-o json|yaml`: the
//! object, or a `List`; ages). Client of the agent's `listObjects`; the tables are pure
//! functions of the entries (`table`).

use std::path::Path;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use serde_json::Value;

use super::unexpected;
use crate::api::client;
use crate::api::{ObjectEntry, Request, Response};
use crate::manifest::kind_info;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Wide,
    Json,
    Yaml,
}

/// What `get KIND` lists: one object or all, of a namespace or all of them, and how.
#[derive(Debug, clap::Args)]
pub struct Selector {
    pub name: Option<String>,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// Pods of the mesh (any host): NAME READY STATUS RESTARTS AGE NODE IDENTITY (wide: and IP).
    #[command(alias = "pod", alias = "po")]
    Pods(Selector),
    /// ConfigMaps of the cluster state (applied on any host): NAME DATA AGE.
    #[command(alias = "configmap", alias = "cm")]
    Configmaps(Selector),
    /// Secrets of the cluster state: NAME TYPE DATA AGE.
    #[command(alias = "secret")]
    Secrets(Selector),
    /// Namespaces (cluster-scoped; default and kube-system always exist): NAME STATUS AGE.
    #[command(alias = "namespace", alias = "ns")]
    Namespaces(Selector),
    /// Services: NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE (wide: SELECTOR).
    #[command(alias = "service", alias = "svc")]
    Services(Selector),
    /// NetworkPolicies applied to the mesh: NAME POD-SELECTOR AGE.
    #[command(alias = "networkpolicy", alias = "netpol")]
    Networkpolicies(Selector),
    /// Deployments: NAME READY UP-TO-DATE AVAILABLE AGE (wide: CONTAINERS IMAGES SELECTOR).
    #[command(alias = "deployment", alias = "deploy")]
    Deployments(Selector),
    /// StatefulSets: NAME READY AGE (wide: CONTAINERS IMAGES).
    #[command(alias = "statefulset", alias = "sts")]
    Statefulsets(Selector),
    /// ReplicaSets (a Deployment's, one per pod template): NAME DESIRED CURRENT READY AGE
    /// (wide: CONTAINERS IMAGES SELECTOR).
    #[command(alias = "replicaset", alias = "rs")]
    Replicasets(Selector),
    /// DaemonSets: NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE NODE SELECTOR AGE (wide:
    /// CONTAINERS IMAGES SELECTOR).
    #[command(alias = "daemonset", alias = "ds")]
    Daemonsets(Selector),
    /// PersistentVolumeClaims (local volumes on the host named by
    /// `volume.kubernetes.io/selected-node`, bound where their first pod is placed): NAME STATUS
    /// VOLUME CAPACITY ACCESS MODES STORAGECLASS AGE.
    #[command(alias = "persistentvolumeclaim", alias = "pvc")]
    Persistentvolumeclaims(Selector),
    /// PodDisruptionBudgets (honoured by `drain`'s evictions): NAME MIN AVAILABLE MAX
    /// UNAVAILABLE ALLOWED DISRUPTIONS AGE.
    #[command(alias = "poddisruptionbudget", alias = "pdb")]
    Poddisruptionbudgets(Selector),
    /// StorageClasses (kept as written: a claim of any class is a local volume on one host):
    /// NAME PROVISIONER RECLAIMPOLICY VOLUMEBINDINGMODE ALLOWVOLUMEEXPANSION AGE.
    #[command(alias = "storageclass", alias = "sc")]
    Storageclasses(Selector),
    /// Jobs: NAME STATUS COMPLETIONS DURATION AGE (wide: CONTAINERS IMAGES).
    #[command(alias = "job")]
    Jobs(Selector),
    /// CronJobs: NAME SCHEDULE TIMEZONE SUSPEND ACTIVE LAST SCHEDULE AGE (wide: CONTAINERS
    /// IMAGES).
    #[command(alias = "cronjob", alias = "cj")]
    Cronjobs(Selector),
    /// ServiceAccounts (each the identity of the pods that name it): NAME AGE.
    #[command(alias = "serviceaccount", alias = "sa")]
    Serviceaccounts(Selector),
    /// Nodes of the mesh (their Node records): NAME STATUS ROLES AGE VERSION.
    #[command(alias = "node", alias = "no")]
    Nodes(super::nodes::NodesArgs),
    /// Events (what the scheduler, controllers and pod runtimes did): LAST SEEN TYPE REASON
    /// OBJECT MESSAGE, as `events` prints them.
    #[command(alias = "event", alias = "ev")]
    Events(Selector),
    /// `exec --identity` workloads of every host (as each host publishes them): NAME
    /// (`<node>.<workload>`) NODE IDENTITY LABELS AGE.
    #[command(alias = "execworkload", alias = "ew")]
    Execworkloads(Selector),
}

pub async fn get(socket: &Path, cmd: GetCommand) -> ExitCode {
    let (kind, selector) = match cmd {
        GetCommand::Pods(selector) => return super::pods::get_pods(socket, selector).await,
        GetCommand::Configmaps(s) => ("ConfigMap", s),
        GetCommand::Secrets(s) => ("Secret", s),
        GetCommand::Namespaces(s) => ("Namespace", s),
        GetCommand::Services(s) => ("Service", s),
        GetCommand::Networkpolicies(s) => ("NetworkPolicy", s),
        GetCommand::Deployments(s) => ("Deployment", s),
        GetCommand::Statefulsets(s) => ("StatefulSet", s),
        GetCommand::Replicasets(s) => ("ReplicaSet", s),
        GetCommand::Daemonsets(s) => ("DaemonSet", s),
        GetCommand::Persistentvolumeclaims(s) => ("PersistentVolumeClaim", s),
        GetCommand::Serviceaccounts(s) => ("ServiceAccount", s),
        GetCommand::Jobs(s) => ("Job", s),
        GetCommand::Storageclasses(s) => ("StorageClass", s),
        GetCommand::Poddisruptionbudgets(s) => ("PodDisruptionBudget", s),
        GetCommand::Cronjobs(s) => ("CronJob", s),
        GetCommand::Nodes(args) => return super::nodes::get(socket, args).await,
        GetCommand::Events(s) if matches!(s.output, Output::Table | Output::Wide) && s.name.is_none() => {
            return super::events::events(socket, &s.namespace, s.all_namespaces, None).await
        }
        GetCommand::Events(s) => ("Event", s),
        GetCommand::Execworkloads(s) => (crate::app::cluster::execs::KIND, s),
    };
    get_objects(socket, kind, selector).await
}

/// `get KIND`: from the cluster state, so what any host applied.
async fn get_objects(socket: &Path, kind: &str, selector: Selector) -> ExitCode {
    let Selector { name, namespace, all_namespaces, output } = selector;
    // A cluster-scoped kind has no namespace to filter on, as with kubectl.
    let cluster_scoped =
        kind_info(kind).is_some_and(|k| !k.namespaced) || kind == crate::app::cluster::execs::KIND;
    let all = all_namespaces || cluster_scoped;
    let req = Request::ListObjects { kind: kind.to_owned(), namespace: (!all).then_some(namespace.clone()) };
    let mut items = match client::call(socket, &req).await {
        Ok(Response::Objects { items }) => items,
        other => return unexpected(other),
    };
    if let Some(n) = &name {
        items.retain(|o| &o.name == n);
        if items.is_empty() {
            let plural = kind_info(kind).map_or(kind, |k| k.plural);
            eprintln!("Error from server (NotFound): {plural} {n:?} not found");
            return ExitCode::FAILURE;
        }
    }
    match output {
        Output::Json | Output::Yaml => {
            print_value(&items.iter().map(|o| o.object.clone()).collect::<Vec<_>>(), name.is_some(), output)
        }
        // As kubectl: no header for nothing, and a note on stderr.
        Output::Table | Output::Wide if items.is_empty() => match all {
            true => eprintln!("No resources found"),
            false => eprintln!("No resources found in {namespace} namespace."),
        },
        Output::Table | Output::Wide => {
            out!("{}", table(kind, &items, all_namespaces && !cluster_scoped, output == Output::Wide))
        }
    }
    ExitCode::SUCCESS
}

/// `-o json|yaml`: the one object asked for by name, or a Kubernetes `List`.
pub fn print_value(items: &[Value], one: bool, output: Output) {
    out!("{}", render_value(items, one, output));
}

fn render_value(items: &[Value], one: bool, output: Output) -> String {
    let value = match items {
        [item] if one => item.clone(),
        _ => serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items }),
    };
    if output == Output::Json {
        serde_json::to_string_pretty(&value).expect("json values serialise") + "\n"
    } else {
        serde_yaml::to_string(&value).expect("json values serialise as yaml")
    }
}

/// kubectl's AGE: `42s`, `5m`, `3h`, `2d`, `<unknown>`.
pub fn age(secs: Option<u64>) -> String {
    match secs {
        None => "<unknown>".to_owned(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) if s < 172_800 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86_400),
    }
}

/// The table of `get KIND` (`namespaces`: a NAMESPACE column first; `wide`: kubectl's extra
/// columns), aligned as kubectl aligns it: each column as wide as its widest cell, three
/// spaces apart.
pub fn table(kind: &str, items: &[ObjectEntry], namespaces: bool, wide: bool) -> String {
    let (mut header, wide_header): (Vec<&str>, Vec<&str>) = match kind {
        "ConfigMap" => (vec!["NAME", "DATA", "AGE"], vec![]),
        "Secret" => (vec!["NAME", "TYPE", "DATA", "AGE"], vec![]),
        "Namespace" => (vec!["NAME", "STATUS", "AGE"], vec![]),
        "Service" => (vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], vec!["SELECTOR"]),
        "NetworkPolicy" => (vec!["NAME", "POD-SELECTOR", "AGE"], vec![]),
        "Deployment" => (
            vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
            vec!["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        "StatefulSet" => (vec!["NAME", "READY", "AGE"], vec!["CONTAINERS", "IMAGES"]),
        "ReplicaSet" => {
            (vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"], vec!["CONTAINERS", "IMAGES", "SELECTOR"])
        }
        "DaemonSet" => (
            vec!["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE SELECTOR", "AGE"],
            vec!["CONTAINERS", "IMAGES", "SELECTOR"],
        ),
        "PersistentVolumeClaim" => {
            (vec!["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "AGE"], vec![])
        }
        "Job" => (vec!["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"], vec!["CONTAINERS", "IMAGES"]),
        "PodDisruptionBudget" => {
            (vec!["NAME", "MIN AVAILABLE", "MAX UNAVAILABLE", "ALLOWED DISRUPTIONS", "AGE"], vec![])
        }
        "StorageClass" => (
            vec!["NAME", "PROVISIONER", "RECLAIMPOLICY", "VOLUMEBINDINGMODE", "ALLOWVOLUMEEXPANSION", "AGE"],
            vec![],
        ),
        "CronJob" => (
            vec!["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE"],
            vec!["CONTAINERS", "IMAGES"],
        ),
        crate::app::cluster::execs::KIND => (vec!["NAME", "NODE", "IDENTITY", "LABELS", "AGE"], vec![]),
        _ => (vec!["NAME", "AGE"], vec![]),
    };
    if wide {
        header.extend(wide_header);
    }
    if namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for o in items {
        let mut row = if namespaces { vec![o.namespace.clone()] } else { Vec::new() };
        row.push(o.name.clone());
        row.extend(columns(kind, &o.object, wide));
        row.insert(row.len() - wide_count(kind, wide), age(o.age_secs));
        rows.push(row);
    }
    align(&rows)
}

/// How many wide columns come after AGE.
fn wide_count(kind: &str, wide: bool) -> usize {
    match (kind, wide) {
        (_, false) => 0,
        ("Service", true) => 1,
        ("Deployment" | "ReplicaSet" | "DaemonSet", true) => 3,
        ("StatefulSet" | "Job" | "CronJob", true) => 2,
        _ => 0,
    }
}

/// The cells between NAME and AGE, then the wide ones.
fn columns(kind: &str, o: &Value, wide: bool) -> Vec<String> {
    let none = || "<none>".to_owned();
    let spec = &o["spec"];
    let replicas = || spec["replicas"].as_i64().unwrap_or(1);
    let status = |f: &str| o["status"][f].as_i64().unwrap_or(0);
    let mut cells = match kind {
        "ConfigMap" | "Secret" => {
            let count = |field: &str| o[field].as_object().map_or(0, |m| m.len());
            let data = (count("data") + count("binaryData") + count("stringData")).to_string();
            if kind == "Secret" {
                vec![o["type"].as_str().unwrap_or("Opaque").to_owned(), data]
            } else {
                vec![data]
            }
        }
        "Namespace" => vec![o["status"]["phase"].as_str().unwrap_or("Active").to_owned()],
        "Service" => {
            let ty = spec["type"].as_str().unwrap_or("ClusterIP");
            let ip = spec["clusterIP"].as_str().filter(|s| !s.is_empty()).map_or_else(none, str::to_owned);
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let proto = p["protocol"].as_str().unwrap_or("TCP");
                    match p["nodePort"].as_i64() {
                        Some(node) => format!("{}:{node}/{proto}", p["port"]),
                        None => format!("{}/{proto}", p["port"]),
                    }
                })
                .collect();
            let ports = if ports.is_empty() { none() } else { ports.join(",") };
            vec![ty.to_owned(), ip, none(), ports]
        }
        "NetworkPolicy" => vec![selector(&spec["podSelector"]).unwrap_or_else(none)],
        crate::app::cluster::execs::KIND => {
            let text = |f: &str| o[f].as_str().filter(|s| !s.is_empty()).map_or_else(none, str::to_owned);
            let labels: Vec<String> = o["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            let labels = if labels.is_empty() { none() } else { labels.join(",") };
            vec![text("node"), text("identity"), labels]
        }
        "Deployment" => vec![
            format!("{}/{}", status("readyReplicas"), replicas()),
            status("updatedReplicas").to_string(),
            status("availableReplicas").to_string(),
        ],
        "StatefulSet" => vec![format!("{}/{}", status("readyReplicas"), replicas())],
        "ReplicaSet" => {
            vec![replicas().to_string(), status("replicas").to_string(), status("readyReplicas").to_string()]
        }
        "PersistentVolumeClaim" => {
            let modes: Vec<&str> = o["status"]["accessModes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let short: Vec<&str> = modes
                .iter()
                .map(|m| match *m {
                    "ReadWriteOnce" => "RWO",
                    "ReadOnlyMany" => "ROX",
                    "ReadWriteMany" => "RWX",
                    "ReadWriteOncePod" => "RWOP",
                    other => other,
                })
                .collect();
            let node =
                o["metadata"]["annotations"]["volume.kubernetes.io/selected-node"].as_str().unwrap_or("");
            vec![
                o["status"]["phase"].as_str().unwrap_or("Pending").to_owned(),
                if node.is_empty() { none() } else { format!("local:{node}") },
                o["status"]["capacity"]["storage"].as_str().map_or_else(none, str::to_owned),
                short.join(","),
                spec["storageClassName"].as_str().unwrap_or("local").to_owned(),
            ]
        }
        "DaemonSet" => {
            let mut cells: Vec<String> = [
                "desiredNumberScheduled",
                "currentNumberScheduled",
                "numberReady",
                "updatedNumberScheduled",
                "numberAvailable",
            ]
            .iter()
            .map(|f| status(f).to_string())
            .collect();
            let sel = spec["template"]["spec"]["nodeSelector"].as_object().filter(|m| !m.is_empty());
            cells.push(sel.map(labels).unwrap_or_else(none));
            cells
        }
        "Job" => job_cells(o, now_secs()),
        "PodDisruptionBudget" => {
            let cell = |v: &Value| match v {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.clone(),
                _ => "N/A".to_owned(),
            };
            vec![
                cell(&spec["minAvailable"]),
                cell(&spec["maxUnavailable"]),
                o["status"]["disruptionsAllowed"].as_i64().unwrap_or(0).to_string(),
            ]
        }
        // Whatever the provisioner, a claim of the class is a local volume on one host.
        "StorageClass" => vec![
            format!("{} (local volumes)", o["provisioner"].as_str().unwrap_or_default()),
            o["reclaimPolicy"].as_str().unwrap_or("Delete").to_owned(),
            o["volumeBindingMode"].as_str().unwrap_or("Immediate").to_owned(),
            o["allowVolumeExpansion"].as_bool().unwrap_or(false).to_string(),
        ],
        "CronJob" => {
            let last = o["status"]["lastScheduleTime"].as_str().and_then(secs_of);
            vec![
                spec["schedule"].as_str().unwrap_or_default().to_owned(),
                spec["timeZone"].as_str().map_or_else(none, str::to_owned),
                spec["suspend"].as_bool().unwrap_or(false).to_string(),
                o["status"]["active"].as_array().map_or(0, Vec::len).to_string(),
                last.map_or_else(none, |t| age(Some(now_secs().saturating_sub(t)))),
            ]
        }
        _ => Vec::new(),
    };
    if wide {
        let template = match kind {
            "CronJob" => &spec["jobTemplate"]["spec"]["template"],
            _ => &spec["template"],
        };
        let containers = template["spec"]["containers"].as_array().cloned().unwrap_or_default();
        let join = |f: &str| containers.iter().filter_map(|c| c[f].as_str()).collect::<Vec<_>>().join(",");
        match kind {
            "Service" => cells.push(
                spec["selector"].as_object().filter(|m| !m.is_empty()).map(labels).unwrap_or_else(none),
            ),
            "Deployment" | "ReplicaSet" | "DaemonSet" => {
                cells.extend([join("name"), join("image"), selector(&spec["selector"]).unwrap_or_else(none)])
            }
            "StatefulSet" | "Job" | "CronJob" => cells.extend([join("name"), join("image")]),
            _ => {}
        }
    }
    cells
}

/// A Job's STATUS, COMPLETIONS and DURATION at `now` (seconds since the epoch), as kubectl
/// prints them.
fn job_cells(o: &Value, now: u64) -> Vec<String> {
    let (spec, status) = (&o["spec"], &o["status"]);
    let condition = |ty: &str| {
        status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == ty && c["status"] == "True")
    };
    let state = ["Complete", "Failed", "Suspended"].into_iter().find(|c| condition(c)).unwrap_or("Running");
    let succeeded = status["succeeded"].as_i64().unwrap_or(0);
    let parallelism = spec["parallelism"].as_i64().unwrap_or(1);
    let completions = match spec["completions"].as_i64() {
        Some(c) => format!("{succeeded}/{c}"),
        None if parallelism > 1 => format!("{succeeded}/1 of {parallelism}"),
        None => format!("{succeeded}/1"),
    };
    let start = status["startTime"].as_str().and_then(secs_of);
    let end = status["completionTime"].as_str().and_then(secs_of).unwrap_or(now);
    let duration = start.map_or_else(String::new, |s| age(Some(end.saturating_sub(s))));
    vec![state.to_owned(), completions, duration]
}

fn secs_of(rfc3339: &str) -> Option<u64> {
    let t: k8s_openapi::jiff::Timestamp = rfc3339.parse().ok()?;
    u64::try_from(t.as_second()).ok()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn labels(m: &serde_json::Map<String, Value>) -> String {
    m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect::<Vec<_>>().join(",")
}

/// A label selector as kubectl prints it (`app=web,tier in (a,b)`); `None` when it selects
/// everything.
fn selector(sel: &Value) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(m) = sel["matchLabels"].as_object() {
        parts.push(labels(m));
    }
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default();
        let values = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(",");
        parts.push(match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({values})"),
            "NotIn" => format!("{key} notin ({values})"),
            "Exists" => key.to_owned(),
            "DoesNotExist" => format!("!{key}"),
            other => format!("{key} {other} ({values})"),
        });
    }
    parts.retain(|p| !p.is_empty());
    (!parts.is_empty()).then(|| parts.join(","))
}

/// Rows padded to each column's widest cell, three spaces apart, no trailing spaces.
pub fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[path = "get_tests.rs"]
mod tests;
