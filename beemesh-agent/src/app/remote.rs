//! `logs` and `exec` for a pod on any host. The cluster state says which host runs a pod
//! (`spec.nodeName`); for a pod of this host the CLI reads the log file and enters the container
//! itself, as before; for a pod of another host the agent forwards `PodLogs` (a chunk of the log
//! from an offset; `logs -f` polls) or `ExecPod` (the command run to completion, output captured)
//! as a mesh request of kind [`REQUEST_KIND`] to that host, which serves it for its own pods
//! only. Every attested member may ask (the trust model: members are trusted alike, as
//! Kubernetes trusts its API server with the kubelet's API).

use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use base64::Engine;
use libp2p::PeerId;

use super::cluster::pods as cpods;
use super::{mesh, AgentHandle, Command};
use crate::api::{ContainerInfo, InputFd, Request, Response};
use crate::mesh::swarm::{AttestedHost, MeshResponse};

/// The mesh request kind of forwarded `PodLogs` / `ExecPod`.
pub const REQUEST_KIND: &str = "pod";
/// The most of a log one chunk carries.
const LOG_CHUNK: u64 = 2 * 1024 * 1024;
/// The most of each output stream a forwarded exec returns.
const EXEC_OUTPUT: usize = 2 * 1024 * 1024;
/// How long writing an attach's input may wait for the container to read.
const INPUT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a forwarded exec may run (the mesh request gives up at 30 s).
const EXEC_TIMEOUT: Duration = Duration::from_secs(25);

/// The pod a `PodLogs` / `ExecPod` is for; `None` for any other request.
fn io_pod(req: &Request) -> Option<(String, String)> {
    match req {
        Request::PodLogs { namespace, name, .. }
        | Request::ExecPod { namespace, name, .. }
        | Request::PodInput { namespace, name, .. } => Some((namespace.clone(), name.clone())),
        _ => None,
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl AgentHandle {
    /// The node a pod is placed on, from the cluster state.
    async fn pod_node(&self, namespace: &str, name: &str) -> Result<String, String> {
        let m = self.mesh.as_ref().ok_or("the cluster state is not running")?;
        let body = m
            .cluster
            .get(cpods::pod_key(namespace, name))
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("pod {namespace}/{name} not found"))?;
        let pod = cpods::decode(&body)?;
        Ok(cpods::placement(&pod).0.to_owned())
    }

    fn this_node(&self) -> &str {
        self.mesh.as_ref().map_or("", |m| m.cluster.node())
    }

    /// `PodContainer`: this host's pods from the actor; for another host's, where it runs.
    pub(super) async fn pod_container(&self, req: Request) -> Response {
        let Request::PodContainer { namespace, name, .. } = &req else {
            return Response::Error { message: "not a PodContainer request".into() };
        };
        match self.pod_node(namespace, name).await {
            Ok(node) if node != self.this_node() => Response::Remote { node },
            // Gone from the state, it may still be terminating here.
            _ => self.actor(Command::Api(req)).await,
        }
    }

    /// `PodLogs` / `ExecPod`: served here for this host's pods, else forwarded to the pod's host.
    pub(super) async fn pod_io(&self, req: Request) -> Response {
        let Some((namespace, name)) = io_pod(&req) else {
            return Response::Error { message: "not a pod I/O request".into() };
        };
        match self.pod_node(&namespace, &name).await {
            Ok(node) if node != self.this_node() => {
                self.forward(&node, &req).await.unwrap_or_else(|message| Response::Error { message })
            }
            // Here, or gone from the state and perhaps still terminating here.
            _ => self.local_pod_io(req).await,
        }
    }

    async fn forward(&self, node: &str, req: &Request) -> Result<Response, String> {
        let m = self.mesh.as_ref().ok_or("the mesh is not running")?;
        let peers = mesh::peers(m).await?;
        let peer = peers
            .iter()
            .find(|p| p.attested && !p.this_host && p.name.as_deref() == Some(node))
            .and_then(|p| p.peer.parse::<PeerId>().ok())
            .ok_or_else(|| format!("the pod runs on {node}, which is not connected to this host"))?;
        let body = serde_json::to_vec(req).map_err(|e| e.to_string())?;
        match m.client.request(peer, REQUEST_KIND, body).await {
            Ok(MeshResponse::App(bytes)) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{node} answered with something that is not a response: {e}")),
            Ok(MeshResponse::Refused(why)) => Err(format!("{node} refused: {why}")),
            Ok(other) => Err(format!("{node} answered {other:?}")),
            Err(e) => Err(format!("{node}: {e}")),
        }
    }

    /// A forwarded request from `from`: only `PodLogs` / `ExecPod` for a pod of this host.
    pub(crate) async fn serve_remote(&self, from: &AttestedHost, body: &[u8]) -> Vec<u8> {
        let resp = match serde_json::from_slice::<Request>(body) {
            Ok(req) => match io_pod(&req) {
                Some((namespace, name)) => {
                    if let Request::ExecPod { command, .. } = &req {
                        tracing::info!(from = %from.node_name, pod = %format!("{namespace}/{name}"), ?command, "exec forwarded by a peer");
                    }
                    match self.pod_node(&namespace, &name).await {
                        Ok(node) if node == self.this_node() => self.local_pod_io(req).await,
                        Ok(node) => Response::Error {
                            message: format!("pod {namespace}/{name} runs on {node}, not here"),
                        },
                        Err(message) => Response::Error { message },
                    }
                }
                None => Response::Error { message: format!("{req:?} is not served to peers") },
            },
            Err(e) => Response::Error { message: format!("not a request: {e}") },
        };
        serde_json::to_vec(&resp).unwrap_or_default()
    }

    async fn local_pod_io(&self, req: Request) -> Response {
        match req {
            Request::PodLogs { namespace, name, container, previous, offset, from_end } => {
                let info = match self.local_container(&namespace, &name, container).await {
                    Ok(i) => i,
                    Err(r) => return r,
                };
                let path = if previous { info.previous_log.clone() } else { info.log.clone() };
                let running = !previous && info.host_pid.is_some();
                let read = tokio::task::spawn_blocking(move || {
                    if from_end {
                        Ok((Vec::new(), std::fs::metadata(&path).map_or(0, |m| m.len())))
                    } else {
                        read_chunk(&path, offset)
                    }
                })
                .await;
                match read {
                    Ok(Ok((data, next))) => Response::Log { data: b64(&data), next, running },
                    Ok(Err(e)) => Response::Error { message: e },
                    Err(e) => Response::Error { message: format!("log reader failed: {e}") },
                }
            }
            Request::ExecPod { namespace, name, container, command } => {
                let info = match self.local_container(&namespace, &name, container).await {
                    Ok(i) => i,
                    Err(r) => return r,
                };
                exec(&info, &command).await.unwrap_or_else(|message| Response::Error { message })
            }
            Request::PodInput { namespace, name, container, data, eof, size } => {
                let info = match self.local_container(&namespace, &name, container.clone()).await {
                    Ok(i) => i,
                    Err(r) => return r,
                };
                let data = match base64::engine::general_purpose::STANDARD.decode(&data) {
                    Ok(d) => d,
                    Err(e) => return Response::Error { message: format!("input is not base64: {e}") },
                };
                let input = match input_of(&info, &namespace, &name) {
                    Ok(i) => i,
                    Err(message) => return Response::Error { message },
                };
                // The end alone needs no descriptor: the container may have ended already.
                if !data.is_empty() || size.is_some() {
                    let tty = info.io.tty;
                    let wrote =
                        tokio::task::spawn_blocking(move || write_input(input, tty, size, &data)).await;
                    if let Err(message) = wrote.unwrap_or_else(|e| Err(format!("input writer failed: {e}"))) {
                        return Response::Error { message };
                    }
                }
                if eof && info.io.stdin_once {
                    let close = Request::PodInput {
                        namespace,
                        name,
                        container,
                        data: String::new(),
                        eof,
                        size: None,
                    };
                    return self.actor(Command::Api(close)).await;
                }
                Response::Done
            }
            _ => Response::Error { message: "not a pod I/O request".into() },
        }
    }

    async fn local_container(
        &self,
        namespace: &str,
        name: &str,
        container: Option<String>,
    ) -> Result<ContainerInfo, Response> {
        let req = Request::PodContainer { namespace: namespace.to_owned(), name: name.to_owned(), container };
        match self.actor(Command::Api(req)).await {
            Response::Container(c) => Ok(c),
            Response::Error { message } => Err(Response::Error { message }),
            other => Err(Response::Error { message: format!("unexpected {other:?}") }),
        }
    }
}

/// Where the input of the container `info` is, or why it takes none.
fn input_of(info: &ContainerInfo, namespace: &str, name: &str) -> Result<InputFd, String> {
    let c = &info.container;
    if !info.io.stdin {
        return Err(format!("container {c:?} of pod {namespace}/{name} takes no input: its manifest does not set `stdin: true`"));
    }
    match info.io.input {
        Some(input) => Ok(input),
        None if info.host_pid.is_some() && info.io.stdin_once => Err(format!(
            "the input of container {c:?} of pod {namespace}/{name} was closed when its first attach ended (stdinOnce)"
        )),
        None => Err(format!("container {c:?} of pod {namespace}/{name} is not running")),
    }
}

/// Writes `data` into a container's input: a copy of init's descriptor, checked to be a pipe
/// (or, for a terminal, a character device), resized first if asked. Waits at most
/// [`INPUT_TIMEOUT`] for a container that does not read.
fn write_input(input: InputFd, tty: bool, size: Option<(u16, u16)>, data: &[u8]) -> Result<(), String> {
    use nix::sys::stat::SFlag;
    let fd =
        crate::sys::process::copy_fd_of(input.init_pid, input.fd).map_err(|e| match e.raw_os_error() {
            // Init closed it: the run ended a moment ago.
            Some(libc::EBADF) | Some(libc::ESRCH) => "the container is not running".to_owned(),
            _ => format!("cannot reach the container's input: {e}"),
        })?;
    let kind = nix::sys::stat::fstat(&fd).map_err(|e| format!("the container's input: {e}"))?.st_mode;
    let want = if tty { SFlag::S_IFCHR } else { SFlag::S_IFIFO };
    if SFlag::from_bits_truncate(kind) & SFlag::S_IFMT != want {
        return Err("the pod's init holds no input for the container there any more".into());
    }
    if let (true, Some((rows, cols))) = (tty, size) {
        crate::sys::pty::set_size(&fd, rows, cols).map_err(|e| format!("resize the terminal: {e}"))?;
    }
    let deadline = std::time::Instant::now() + INPUT_TIMEOUT;
    let mut rest = data;
    while !rest.is_empty() {
        match nix::unistd::write(&fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EAGAIN) => {
                use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(format!(
                        "the container did not read its input for {}s",
                        INPUT_TIMEOUT.as_secs()
                    ));
                }
                let ms =
                    PollTimeout::try_from(left.as_millis().min(10_000) as i32).unwrap_or(PollTimeout::NONE);
                let _ = poll(&mut [PollFd::new(std::os::fd::AsFd::as_fd(&fd), PollFlags::POLLOUT)], ms);
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::EPIPE) => return Err("the container closed its input".into()),
            Err(e) => return Err(format!("write to the container's input: {e}")),
        }
    }
    Ok(())
}

/// Up to [`LOG_CHUNK`] bytes of `path` from `offset`; a log shorter than `offset` was rotated
/// and is read from its start. A log not written yet is empty.
fn read_chunk(path: &str, offset: u64) -> Result<(Vec<u8>, u64), String> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(format!("open {path}: {e}")),
    };
    let len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    let from = if offset > len { 0 } else { offset };
    file.seek(SeekFrom::Start(from)).map_err(|e| format!("{path}: {e}"))?;
    let mut data = Vec::new();
    file.take(LOG_CHUNK).read_to_end(&mut data).map_err(|e| format!("read {path}: {e}"))?;
    let next = from + data.len() as u64;
    Ok((data, next))
}

/// Runs `command` in the container to completion (at most [`EXEC_TIMEOUT`]; killed then).
async fn exec(info: &ContainerInfo, command: &[String]) -> Result<Response, String> {
    let target =
        info.exec_target().ok_or_else(|| format!("container {:?} is not running", info.container))?;
    let cmd = crate::pod::probe::enter_command(&target, command).map_err(|e| e.to_string())?;
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(EXEC_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("the command ran longer than {}s and was killed", EXEC_TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot enter the container: {e}"))?;
    let code = out
        .status
        .code()
        .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&out.status).unwrap_or(0));
    let cut = |b: &[u8]| b64(&b[..b.len().min(EXEC_OUTPUT)]);
    Ok(Response::Exec { stdout: cut(&out.stdout), stderr: cut(&out.stderr), code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_chunks_follow_offsets_and_start_over_after_a_rotation() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("c.log");
        let p = path.to_str().expect("utf-8");
        assert_eq!(read_chunk(p, 0).expect("missing"), (Vec::new(), 0));
        std::fs::write(&path, b"hello\n").expect("write");
        assert_eq!(read_chunk(p, 0).expect("read"), (b"hello\n".to_vec(), 6));
        assert_eq!(read_chunk(p, 6).expect("read"), (Vec::new(), 6));
        std::fs::write(&path, b"hi\n").expect("rotated");
        assert_eq!(read_chunk(p, 6).expect("read"), (b"hi\n".to_vec(), 3));
    }
}
