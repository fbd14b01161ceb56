//! The kubectl-like verbs: `apply`, `get pods` (other kinds: `get.rs`), `logs`, `exec POD`, `delete`, `wait`.
//! Clients of the agent's admin socket. For a pod of this host `logs` reads the container's log file and `exec`
//! enters the container with nsenter, both as root on the agent's host.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::get::{age, print_value, Output, Selector};
use super::{fail, unexpected};
use crate::api::client;
use crate::api::{PodInfo, Request, Response, WaitFor};

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
    // The instances deleted: a controller may make new pods of the same names at once.
    let mut uids = std::collections::BTreeMap::new();
    if wait {
        let namespaces: std::collections::BTreeSet<&String> = pods.iter().map(|(ns, _)| ns).collect();
        for ns in namespaces {
            if let Ok(Response::Pods { items }) =
                client::call(socket, &Request::ListPods { namespace: Some(ns.clone()) }).await
            {
                for p in items {
                    let uid = p.object["metadata"]["uid"].as_str().map(str::to_owned);
                    uids.insert((p.namespace, p.name), uid);
                }
            }
        }
    }
    match client::call(socket, &req).await {
        Ok(Response::Applied { lines }) => lines.iter().for_each(|l| outln!("{l}")),
        other => return unexpected(other),
    }
    if wait {
        for (namespace, name) in pods {
            let uid = uids.get(&(namespace.clone(), name.clone())).cloned().flatten();
            let req =
                Request::WaitPod { namespace, name, condition: WaitFor::Deleted, timeout_ms: 600_000, uid };
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
        uid: None,
    };
    match client::call(socket, &req).await {
        Ok(Response::Done) => {
            outln!("pod/{name} condition met");
            ExitCode::SUCCESS
        }
        other => unexpected(other),
    }
}

/// `get pods`: the pods of this host.
pub async fn get_pods(socket: &Path, selector: Selector) -> ExitCode {
    let Selector { name, namespace, all_namespaces, output } = selector;
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
        Output::Json | Output::Yaml => {
            print_value(&items.iter().map(|p| p.object.clone()).collect::<Vec<_>>(), name.is_some(), output)
        }
        Output::Table | Output::Wide => print_pods(&items, all_namespaces, output == Output::Wide),
    }
    ExitCode::SUCCESS
}

/// NAME READY STATUS RESTARTS AGE NODE IDENTITY (wide: and the pod's IP, the same for
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
        "NODE",
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
            age(Some(p.age_secs)),
            ip(pod_ip),
            p.host,
            p.identity
        );
    }
}

/// Where a container is: on this host (how to read and enter it), or on another host.
pub(super) enum Place {
    Here(Box<crate::api::ContainerInfo>),
    Remote,
}

pub(super) async fn container(
    socket: &Path,
    namespace: &str,
    pod: &str,
    container: Option<String>,
) -> Result<Place, ExitCode> {
    let req = Request::PodContainer { namespace: namespace.to_owned(), name: pod.to_owned(), container };
    match client::call(socket, &req).await {
        Ok(Response::Container(c)) => Ok(Place::Here(Box::new(c))),
        Ok(Response::Remote { .. }) => Ok(Place::Remote),
        other => Err(unexpected(other)),
    }
}

fn unbase64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default()
}

/// `logs` of a pod on another host: chunks from its host through this agent; `-f` asks again
/// every half second while the container runs.
async fn remote_logs(
    socket: &Path,
    namespace: &str,
    pod: &str,
    container: Option<String>,
    follow: bool,
    previous: bool,
) -> ExitCode {
    let mut out = std::io::stdout();
    let mut offset = 0;
    loop {
        let req = Request::PodLogs {
            namespace: namespace.to_owned(),
            name: pod.to_owned(),
            container: container.clone(),
            previous,
            offset,
            from_end: false,
        };
        let (data, next, running) = match client::call(socket, &req).await {
            Ok(Response::Log { data, next, running }) => (unbase64(&data), next, running),
            other => return unexpected(other),
        };
        if out.write_all(&data).is_err() {
            return ExitCode::SUCCESS;
        }
        offset = next;
        if data.is_empty() {
            if !follow || !running {
                return ExitCode::SUCCESS;
            }
            let _ = out.flush();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
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
    let info = match container(socket, namespace, pod, c.clone()).await {
        Ok(Place::Here(i)) => i,
        Ok(Place::Remote) => return remote_logs(socket, namespace, pod, c, follow, previous).await,
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

/// `exec` of a pod on another host: run there to completion (no stdin), its output printed here.
async fn remote_exec(
    socket: &Path,
    namespace: &str,
    pod: &str,
    container: Option<String>,
    command: &[String],
) -> ExitCode {
    let req = Request::ExecPod {
        namespace: namespace.to_owned(),
        name: pod.to_owned(),
        container,
        command: command.to_vec(),
    };
    match client::call(socket, &req).await {
        Ok(Response::Exec { stdout, stderr, code }) => {
            let _ = std::io::stdout().write_all(&unbase64(&stdout));
            let _ = std::io::stderr().write_all(&unbase64(&stderr));
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        other => unexpected(other),
    }
}

/// Runs `command` inside the container and exits with its status (on another host: run
/// there, its output returned).
pub async fn exec(
    socket: &Path,
    namespace: &str,
    pod: &str,
    c: Option<String>,
    command: &[String],
) -> ExitCode {
    let info = match container(socket, namespace, pod, c.clone()).await {
        Ok(Place::Here(i)) => i,
        Ok(Place::Remote) => return remote_exec(socket, namespace, pod, c, command).await,
        Err(code) => return code,
    };
    let Some(target) = info.exec_target() else {
        return fail(format!("container {:?} of pod {pod} is not running", info.container));
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
