//! The kubectl-like verbs: `apply`, `get pods|configmaps|secrets`, `logs`, `exec POD`, `delete`, `wait`.
//! Clients of the agent's admin socket; `logs` reads the container's log file and `exec`
//! enters the container with nsenter, both as root on the agent's host.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};

use super::{fail, unexpected};
use crate::api::client;
use crate::api::{PodInfo, Request, Response, WaitFor};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum PodOutput {
    #[default]
    Table,
    Wide,
    Json,
    Yaml,
}

/// What `get KIND` lists: one object or all, of a namespace or all of them, and how.
#[derive(Debug, clap::Args)]
pub struct Selector {
    name: Option<String>,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[arg(short, long, value_enum, default_value_t)]
    output: PodOutput,
}

#[derive(Debug, Subcommand)]
pub enum GetCommand {
    /// Pods on this host: NAME READY STATUS RESTARTS AGE HOST IDENTITY (wide: and IP).
    #[command(alias = "pod", alias = "po")]
    Pods(Selector),
    /// ConfigMaps of the cluster state (applied on any host): NAME DATA AGE.
    #[command(alias = "configmap", alias = "cm")]
    Configmaps(Selector),
    /// Secrets of the cluster state (applied on any host): NAME TYPE DATA AGE.
    #[command(alias = "secret")]
    Secrets(Selector),
    /// Nodes of the mesh (their Node records): NAME STATUS ROLES AGE VERSION.
    #[command(alias = "node", alias = "no")]
    Nodes(super::nodes::NodesArgs),
}

#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Delete a pod by name.
    #[command(alias = "pods", alias = "po")]
    Pod {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

fn read_manifest(file: &Path) -> Result<(String, String), String> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| format!("read stdin: {e}"))?;
        s
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?
    };
    Ok((file.display().to_string(), text))
}

pub async fn apply(socket: &Path, file: &Path) -> ExitCode {
    let (file, text) = match read_manifest(file) {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    match client::call(socket, &Request::Apply { file, text }).await {
        Ok(Response::Applied { lines }) => {
            lines.iter().for_each(|l| outln!("{l}"));
            ExitCode::SUCCESS
        }
        other => unexpected(other),
    }
}

/// Deletes by file or name and, unless `wait` is off, waits until the pods are gone.
pub async fn delete(
    socket: &Path,
    file: Option<&Path>,
    pod: Option<(String, String)>,
    wait: bool,
) -> ExitCode {
    let mut pods = Vec::new();
    let req = match (file, pod) {
        (Some(file), _) => {
            let (name, text) = match read_manifest(file) {
                Ok(v) => v,
                Err(e) => return fail(e),
            };
            if let Ok(objects) = crate::manifest::parse(&name, &text) {
                for o in objects.iter().filter(|o| o.kind() == "Pod") {
                    pods.push((o.namespace().to_owned(), o.name().to_owned()));
                }
            }
            Request::DeleteObjects { file: name, text }
        }
        (None, Some((namespace, name))) => {
            pods.push((namespace.clone(), name.clone()));
            Request::DeletePod { namespace, name }
        }
        (None, None) => return fail("delete needs -f FILE or `pod NAME`"),
    };
    match client::call(socket, &req).await {
        Ok(Response::Applied { lines }) => lines.iter().for_each(|l| outln!("{l}")),
        other => return unexpected(other),
    }
    if wait {
        for (namespace, name) in pods {
            let req = Request::WaitPod { namespace, name, condition: WaitFor::Deleted, timeout_ms: 600_000 };
            if let Err(e) | Ok(Response::Error { message: e }) =
                client::call(socket, &req).await.map_err(|e| e.to_string())
            {
                return fail(e);
            }
        }
    }
    ExitCode::SUCCESS
}

pub async fn wait(
    socket: &Path,
    namespace: String,
    name: String,
    condition: WaitFor,
    timeout: u64,
) -> ExitCode {
    let req = Request::WaitPod {
        namespace: namespace.clone(),
        name: name.clone(),
        condition,
        timeout_ms: timeout * 1000,
    };
    match client::call(socket, &req).await {
        Ok(Response::Done) => {
            outln!("pod/{name} condition met");
            ExitCode::SUCCESS
        }
        other => unexpected(other),
    }
}

pub async fn get(socket: &Path, cmd: GetCommand) -> ExitCode {
    let Selector { name, namespace, all_namespaces, output } = match cmd {
        GetCommand::Pods(selector) => selector,
        GetCommand::Configmaps(selector) => return get_objects(socket, "ConfigMap", selector).await,
        GetCommand::Secrets(selector) => return get_objects(socket, "Secret", selector).await,
        GetCommand::Nodes(args) => return super::nodes::get(socket, args).await,
    };
    let req = Request::ListPods { namespace: (!all_namespaces).then_some(namespace.clone()) };
    let mut items = match client::call(socket, &req).await {
        Ok(Response::Pods { items }) => items,
        other => return unexpected(other),
    };
    if let Some(n) = &name {
        items.retain(|p| &p.name == n);
        if items.is_empty() {
            return fail(format!("pod {namespace}/{n} not found"));
        }
    }
    match output {
        PodOutput::Json | PodOutput::Yaml => {
            print_value(&items.iter().map(|p| p.object.clone()).collect::<Vec<_>>(), name.is_some(), output)
        }
        PodOutput::Table | PodOutput::Wide => print_pods(&items, all_namespaces, output == PodOutput::Wide),
    }
    ExitCode::SUCCESS
}

/// `get configmaps|secrets`: from the cluster state, so what any host applied.
async fn get_objects(socket: &Path, kind: &str, selector: Selector) -> ExitCode {
    let Selector { name, namespace, all_namespaces, output } = selector;
    let req = Request::ListObjects {
        kind: kind.to_owned(),
        namespace: (!all_namespaces).then_some(namespace.clone()),
    };
    let mut items = match client::call(socket, &req).await {
        Ok(Response::Objects { items }) => items,
        other => return unexpected(other),
    };
    if let Some(n) = &name {
        items.retain(|o| &o.name == n);
        if items.is_empty() {
            return fail(format!("{} {namespace}/{n} not found", kind.to_lowercase()));
        }
    }
    match output {
        PodOutput::Json | PodOutput::Yaml => {
            print_value(&items.iter().map(|o| o.object.clone()).collect::<Vec<_>>(), name.is_some(), output)
        }
        PodOutput::Table | PodOutput::Wide => {
            let ns = |s: &str| if all_namespaces { format!("{s:<16} ") } else { String::new() };
            let secret = kind == "Secret";
            let ty = |s: &str| if secret { format!("{s:<36} ") } else { String::new() };
            outln!("{}{:<32} {}{:<6} AGE", ns("NAMESPACE"), "NAME", ty("TYPE"), "DATA");
            for o in &items {
                let count = |field: &str| o.object[field].as_object().map_or(0, |m| m.len());
                let data = count("data") + count("binaryData") + count("stringData");
                let t = o.object["type"].as_str().unwrap_or("Opaque");
                outln!("{}{:<32} {}{:<6} {}", ns(&o.namespace), o.name, ty(t), data, age(o.age_secs));
            }
        }
    }
    ExitCode::SUCCESS
}

/// `-o json|yaml`: the one object asked for by name, or a Kubernetes `List`.
pub(super) fn print_value(items: &[serde_json::Value], one: bool, output: PodOutput) {
    let value = if one {
        items[0].clone()
    } else {
        serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items })
    };
    if output == PodOutput::Json {
        outln!("{}", serde_json::to_string_pretty(&value).expect("json values serialise"));
    } else {
        out!("{}", serde_yaml::to_string(&value).expect("json values serialise as yaml"));
    }
}

/// NAME READY STATUS RESTARTS AGE HOST IDENTITY (wide: and the pod's IP, the same for
/// every pod: each has its own network namespace behind slirp4netns).
fn print_pods(items: &[PodInfo], namespaces: bool, wide: bool) {
    let ns = |s: &str| if namespaces { format!("{s:<16}") } else { String::new() };
    let ip = |s: &str| if wide { format!(" {s:<12}") } else { String::new() };
    outln!(
        "{}{:<32} {:<7} {:<26} {:<9} {:<6}{} {:<16} IDENTITY",
        ns("NAMESPACE"),
        "NAME",
        "READY",
        "STATUS",
        "RESTARTS",
        "AGE",
        ip("IP"),
        "HOST",
    );
    for p in items {
        let pod_ip = p.object["status"]["podIP"].as_str().unwrap_or("");
        outln!(
            "{}{:<32} {:<7} {:<26} {:<9} {:<6}{} {:<16} {}",
            ns(&p.namespace),
            p.name,
            p.ready,
            p.status,
            p.restarts,
            age(p.age_secs),
            ip(pod_ip),
            p.host,
            p.identity
        );
    }
}

pub(super) fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

async fn container(
    socket: &Path,
    namespace: &str,
    pod: &str,
    container: Option<String>,
) -> Result<crate::api::ContainerInfo, ExitCode> {
    let req = Request::PodContainer { namespace: namespace.to_owned(), name: pod.to_owned(), container };
    match client::call(socket, &req).await {
        Ok(Response::Container(c)) => Ok(c),
        other => Err(unexpected(other)),
    }
}

pub async fn logs(
    socket: &Path,
    namespace: &str,
    pod: &str,
    c: Option<String>,
    follow: bool,
    previous: bool,
) -> ExitCode {
    let info = match container(socket, namespace, pod, c).await {
        Ok(i) => i,
        Err(code) => return code,
    };
    let path = PathBuf::from(if previous { &info.previous_log } else { &info.log });
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !previous => return ExitCode::SUCCESS,
        Err(e) => {
            return fail(format!(
                "container {:?} has no {}log: {e}",
                info.container,
                if previous { "previous " } else { "" }
            ))
        }
    };
    let mut out = std::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match file.read(&mut buf) {
            Ok(0) => {
                if !follow {
                    return ExitCode::SUCCESS;
                }
                let _ = out.flush();
                tokio::time::sleep(Duration::from_millis(200)).await;
                // A restart rotates the log: follow the new file, and stop with the pod.
                match std::fs::metadata(&path) {
                    Ok(m) if m.len() < file.stream_position().unwrap_or(0) || !same_file(&file, &m) => {
                        match std::fs::File::open(&path) {
                            Ok(f) => file = f,
                            Err(_) => return ExitCode::SUCCESS,
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return ExitCode::SUCCESS,
                }
            }
            Ok(n) => {
                if out.write_all(&buf[..n]).is_err() {
                    return ExitCode::SUCCESS;
                }
            }
            Err(e) => return fail(format!("read {}: {e}", path.display())),
        }
    }
}

fn same_file(file: &std::fs::File, meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    file.metadata().is_ok_and(|m| m.ino() == meta.ino() && m.dev() == meta.dev())
}

/// Runs `command` inside the container and exits with its status.
pub async fn exec(
    socket: &Path,
    namespace: &str,
    pod: &str,
    c: Option<String>,
    command: &[String],
) -> ExitCode {
    let info = match container(socket, namespace, pod, c).await {
        Ok(i) => i,
        Err(code) => return code,
    };
    let Some(pid) = info.host_pid else {
        return fail(format!("container {:?} of pod {pod} is not running", info.container));
    };
    let cgroups: Vec<PathBuf> = info.cgroups.iter().map(PathBuf::from).collect();
    let target = crate::pod::probe::Target {
        init_pid: 0,
        host_pid: pid,
        env: info.env,
        cwd: info.cwd,
        user: (info.uid, info.gid),
        cgroups,
        security: info.security,
    };
    let mut cmd = match crate::pod::probe::enter_command(&target, command) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match cmd.status() {
        Ok(s) => match s.code() {
            Some(code) => ExitCode::from(code as u8),
            None => {
                ExitCode::from(128 + std::os::unix::process::ExitStatusExt::signal(&s).unwrap_or(0) as u8)
            }
        },
        Err(e) => fail(format!("cannot enter the container: {e}")),
    }
}
