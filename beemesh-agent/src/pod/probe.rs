//! Lifecycle hooks and probes, as the kubelet runs them: exec (a command inside the
//! container, entered with `pod-exec`), tcpSocket (a connect) and httpGet (a GET whose status
//! must be 2xx or 3xx), from a socket made in the pod's network namespace. One task per
//! container run ([`watch`]): the postStart hook, then the startup probe until its first
//! success, then readiness and liveness side by side, each reporting a change of verdict
//! once the thresholds agree. preStop hooks run on their own ([`run_hook`]).

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::proto::SecuritySpec;
use super::spec::{Hook, ProbeAction, ProbePlan};

/// The container a probe checks.
#[derive(Clone, Debug)]
pub struct Target {
    /// Host pid of the pod's init (its network namespace).
    pub init_pid: u32,
    /// Host pid of the container's process (its mount namespace, for exec).
    pub host_pid: u32,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: (u32, u32),
    pub cgroups: Vec<PathBuf>,
    /// What the container is confined with (exec probes run under the same).
    pub security: SecuritySpec,
}

/// What a container run's checks tell the actor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// The postStart hook failed (why): the container is killed, and restarted as its
    /// policy says.
    PostStartFailed(String),
    /// The startup probe failed `failureThreshold` times in a row: the container is killed.
    StartupFailed,
    /// postStart and the startup probe are through (at once when there are none): the
    /// container counts as started; readiness and liveness begin.
    Started,
    Ready(bool),
    Live(bool),
}

/// What runs for one container run.
#[derive(Clone, Debug, Default)]
pub struct Checks {
    pub post_start: Option<Hook>,
    pub startup: Option<ProbePlan>,
    pub readiness: Option<ProbePlan>,
    pub liveness: Option<ProbePlan>,
}

/// Runs a container run's checks in the kubelet's order until aborted (or a failure that
/// kills the container), telling `report` what changes.
pub async fn watch<F, Fut>(checks: Checks, target: Target, report: F)
where
    F: Fn(Report) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(hook) = &checks.post_start {
        if let Err(e) = run_hook(hook, &target).await {
            return report(Report::PostStartFailed(e)).await;
        }
    }
    if let Some(plan) = &checks.startup {
        tokio::time::sleep(plan.initial_delay).await;
        let mut failures = 0u32;
        while !tokio::time::timeout(plan.timeout, check(&plan.action, &target)).await.unwrap_or(false) {
            failures += 1;
            if failures >= plan.failure_threshold.max(1) {
                return report(Report::StartupFailed).await;
            }
            tokio::time::sleep(plan.period).await;
        }
    }
    report(Report::Started).await;
    let probe = |plan: Option<ProbePlan>, verdict: fn(bool) -> Report| {
        let (target, report) = (&target, &report);
        async move {
            if let Some(plan) = plan {
                run(plan, target, |ok| report(verdict(ok))).await;
            }
        }
    };
    tokio::join!(probe(checks.readiness, Report::Ready), probe(checks.liveness, Report::Live));
}

/// Probes until aborted; calls `report` with the new verdict whenever it changes.
async fn run<F, Fut>(plan: ProbePlan, target: &Target, report: F)
where
    F: Fn(bool) -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::time::sleep(plan.initial_delay).await;
    let (mut successes, mut failures, mut last) = (0u32, 0u32, None);
    loop {
        let ok = tokio::time::timeout(plan.timeout, check(&plan.action, target)).await.unwrap_or(false);
        if ok {
            successes += 1;
            failures = 0;
            if successes >= plan.success_threshold.max(1) && last != Some(true) {
                last = Some(true);
                report(true).await;
            }
        } else {
            failures += 1;
            successes = 0;
            if failures >= plan.failure_threshold.max(1) && last != Some(false) {
                last = Some(false);
                report(false).await;
            }
        }
        tokio::time::sleep(plan.period).await;
    }
}

/// Runs a lifecycle hook to its end: an exec hook must exit 0 (its output's tail is the
/// error otherwise), an httpGet hook must get a 2xx or 3xx answer; a sleep sleeps.
pub async fn run_hook(hook: &Hook, target: &Target) -> Result<(), String> {
    match hook {
        Hook::Sleep(d) => {
            tokio::time::sleep(*d).await;
            Ok(())
        }
        Hook::Action(ProbeAction::Exec(argv)) => {
            let mut cmd =
                tokio::process::Command::from(enter_command(target, argv).map_err(|e| e.to_string())?);
            cmd.stdin(Stdio::null()).kill_on_drop(true);
            let out = cmd.output().await.map_err(|e| format!("cannot run {argv:?}: {e}"))?;
            if out.status.success() {
                return Ok(());
            }
            let text = String::from_utf8_lossy(&[out.stdout, out.stderr].concat()).into_owned();
            let tail =
                text.char_indices().rev().nth(HOOK_OUTPUT_KEPT).map_or(text.as_str(), |(i, _)| &text[i..]);
            Err(format!("{argv:?} {}: {}", out.status, tail.trim()))
        }
        Hook::Action(action) => {
            if check(action, target).await {
                Ok(())
            } else {
                Err(format!("{action:?} failed"))
            }
        }
    }
}

/// How much of a failed exec hook's output its error keeps (characters, the last ones).
const HOOK_OUTPUT_KEPT: usize = 1024;

async fn check(action: &ProbeAction, target: &Target) -> bool {
    match action {
        ProbeAction::Exec(argv) => {
            let Ok(mut cmd) = enter_command(target, argv) else {
                return false;
            };
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            let mut cmd = tokio::process::Command::from(cmd);
            cmd.kill_on_drop(true);
            cmd.status().await.is_ok_and(|s| s.success())
        }
        ProbeAction::Tcp { port, host } => connect(target.init_pid, host.as_deref(), *port).await.is_some(),
        ProbeAction::Grpc { port, service } => match connect(target.init_pid, None, *port).await {
            Some(stream) => grpc_serving(stream, service).await,
            None => false,
        },
        ProbeAction::Http { port, path, host, headers, .. } => {
            let Some(mut stream) = connect(target.init_pid, host.as_deref(), *port).await else {
                return false;
            };
            let mut request = format!(
                "GET {path} HTTP/1.0\r\nHost: {}:{port}\r\nUser-Agent: beemesh-probe\r\n",
                host.as_deref().unwrap_or("localhost")
            );
            for (k, v) in headers {
                request.push_str(&format!("{k}: {v}\r\n"));
            }
            request.push_str("\r\n");
            if stream.write_all(request.as_bytes()).await.is_err() {
                return false;
            }
            let mut head = [0u8; 64];
            let mut n = 0;
            while n < 12 {
                match stream.read(&mut head[n..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            http_status_ok(&head[..n])
        }
    }
}

/// The most of a health answer's body read.
const GRPC_BODY_MAX: usize = 1024;

/// `grpc.health.v1.Health/Check` for `service` over HTTP/2 without TLS, as the kubelet calls
/// it: success is a `SERVING` answer (status 1) with `grpc-status: 0`.
pub(crate) async fn grpc_serving<S>(io: S, service: &str) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Ok((client, connection)) = h2::client::handshake(io).await else { return false };
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let serving = grpc_check(client, service).await == Some(1);
    driver.abort();
    serving
}

/// The health status the server answered, if it answered well.
async fn grpc_check(client: h2::client::SendRequest<bytes::Bytes>, service: &str) -> Option<u64> {
    let mut client = client.ready().await.ok()?;
    let request = http::Request::builder()
        .method("POST")
        .uri("http://localhost/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "beemesh-probe")
        .body(())
        .ok()?;
    let (response, mut send) = client.send_request(request, false).ok()?;
    // HealthCheckRequest { service = 1 }, in a gRPC frame (uncompressed, length-prefixed).
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(message.len()).ok()?.to_be_bytes());
    frame.extend_from_slice(&message);
    send.send_data(bytes::Bytes::from(frame), true).ok()?;
    let response = response.await.ok()?;
    if response.status() != http::StatusCode::OK {
        return None;
    }
    let mut body = response.into_body();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
        if data.len() > GRPC_BODY_MAX {
            return None;
        }
    }
    let trailers = body.trailers().await.ok()??;
    if trailers.get("grpc-status").map(|v| v.as_bytes()) != Some(b"0") {
        return None;
    }
    health_status(&data)
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// `HealthCheckResponse.status` (field 1) of one gRPC frame; absent means 0 (UNKNOWN).
fn health_status(frame: &[u8]) -> Option<u64> {
    let (&compressed, rest) = frame.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let message = rest.get(4..4 + len)?;
    if compressed != 0 {
        return None;
    }
    let (mut at, mut status) = (0, 0);
    while at < message.len() {
        let tag = get_varint(message, &mut at)?;
        match tag & 7 {
            0 => {
                let v = get_varint(message, &mut at)?;
                if tag >> 3 == 1 {
                    status = v;
                }
            }
            2 => {
                let n = get_varint(message, &mut at)? as usize;
                at = at.checked_add(n).filter(|e| *e <= message.len())?;
            }
            _ => return None,
        }
    }
    Some(status)
}

/// "HTTP/1.x NNN": success is 200-399, as the kubelet counts it.
fn http_status_ok(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let mut parts = text.split_whitespace();
    parts.next().is_some_and(|v| v.starts_with("HTTP/"))
        && parts.next().and_then(|c| c.parse::<u16>().ok()).is_some_and(|c| (200..400).contains(&c))
}

async fn connect(init_pid: u32, host: Option<&str>, port: u16) -> Option<tokio::net::TcpStream> {
    let ip: IpAddr = host.and_then(|h| h.parse().ok()).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let fd = tokio::task::spawn_blocking(move || {
        crate::sys::process::tcp_socket_in_netns_of(init_pid, ip.is_ipv6())
    })
    .await
    .ok()?
    .ok()?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    socket.connect(SocketAddr::new(ip, port)).await.ok()
}

/// A command that runs `argv` inside the container of host process `pid` (`beemesh-agent
/// pod-exec`): its namespaces, root and cgroups, `env` as its whole environment, as `uid`/`gid`
/// with the container's capabilities, no_new_privs and seccomp filter.
pub fn enter_command(target: &Target, argv: &[String]) -> std::io::Result<std::process::Command> {
    let Target { host_pid: pid, user, cwd, env, cgroups, security, .. } = target;
    let security = serde_json::to_string(security).map_err(std::io::Error::other)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("pod-exec")
        .arg("--target")
        .arg(pid.to_string())
        .arg("--uid")
        .arg(user.0.to_string())
        .arg("--gid")
        .arg(user.1.to_string())
        .arg("--cwd")
        .arg(cwd);
    for c in cgroups {
        cmd.arg("--cgroup").arg(c);
    }
    cmd.arg("--security").arg(security);
    cmd.arg("--").args(argv).env_clear().envs(env.iter().filter_map(|e| e.split_once('=')));
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gRPC health server on loopback (h2): `web` is SERVING, `db` NOT_SERVING, the
    /// server itself ("") SERVING; any other service NOT_FOUND (grpc-status 5).
    async fn health_server() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(socket).await else { return };
                    while let Some(Ok((request, mut respond))) = conn.accept().await {
                        let mut body = request.into_body();
                        let mut data = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            data.extend_from_slice(&chunk);
                        }
                        let service = String::from_utf8_lossy(data.get(7..).unwrap_or_default()).into_owned();
                        let status = match service.as_str() {
                            "" | "web" => Some(1u8),
                            "db" => Some(2),
                            _ => None,
                        };
                        let response = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .body(())
                            .expect("response");
                        let Ok(mut send) = respond.send_response(response, false) else { return };
                        let mut trailers = http::HeaderMap::new();
                        match status {
                            Some(s) => {
                                let frame = vec![0, 0, 0, 0, 2, 0x08, s];
                                let _ = send.send_data(bytes::Bytes::from(frame), false);
                                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            }
                            None => {
                                trailers.insert("grpc-status", http::HeaderValue::from_static("5"));
                            }
                        }
                        let _ = send.send_trailers(trailers);
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn grpc_health_checks_pass_only_when_serving() {
        let addr = health_server().await;
        let call = |service: &'static str| async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            grpc_serving(stream, service).await
        };
        assert!(call("").await, "the server as a whole");
        assert!(call("web").await);
        assert!(!call("db").await, "NOT_SERVING");
        assert!(!call("nope").await, "NOT_FOUND");
        // Not HTTP/2 at all: a plain TCP listener that closes.
        let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let plain_addr = plain.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = plain.accept().await {
                drop(s);
            }
        });
        let stream = tokio::net::TcpStream::connect(plain_addr).await.expect("connect");
        assert!(!grpc_serving(stream, "").await);
        assert_eq!(health_status(&[0, 0, 0, 0, 0]), Some(0), "an empty answer is UNKNOWN");
        let mut v = Vec::new();
        put_varint(&mut v, 300);
        assert_eq!(get_varint(&v, &mut 0), Some(300));
    }

    #[test]
    fn http_status_codes_count_as_kubelet_does() {
        assert!(http_status_ok(b"HTTP/1.1 200 OK\r\n"));
        assert!(http_status_ok(b"HTTP/1.0 302 Found"));
        assert!(!http_status_ok(b"HTTP/1.1 404 Not Found"));
        assert!(!http_status_ok(b"HTTP/1.1 500 Oops"));
        assert!(!http_status_ok(b"garbage"));
        assert!(!http_status_ok(b""));
    }
}
