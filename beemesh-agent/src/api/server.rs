//! Server side of the admin API: accepts on the unix socket (at most [`MAX_CONNECTIONS`]
//! at once), reads one bounded request line within [`READ_TIMEOUT`], and answers from the
//! agent actor (or the flow hub for `flows`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, Semaphore};
use tracing::{debug, warn};

use super::{Request, Response, MAX_CONNECTIONS, MAX_REQUEST_BYTES, READ_TIMEOUT};
use crate::app::AgentHandle;
use crate::flows::FlowHub;

/// Binds the socket (root-only), replacing a stale one but refusing to steal a live one.
pub async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if crate::sockpath::connect_async(path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another agent is serving {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Through the directory's descriptor: a run dir of any length fits in `sun_path`.
    let listener = crate::sockpath::bind(path)?;
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// What one admin connection may cost the agent.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request line, in bytes.
    pub max_request: usize,
    /// Time allowed for the whole request line to arrive.
    pub read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog until one ends.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_request: MAX_REQUEST_BYTES, read_timeout: READ_TIMEOUT, max_connections: MAX_CONNECTIONS }
    }
}

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: UnixListener,
    agent: AgentHandle,
    flows: FlowHub,
    limits: Limits,
    mut shutdown: broadcast::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        // A free slot first, then accept: the connections beyond the limit wait in the
        // kernel's backlog (and a client's connect blocks or fails there), costing nothing.
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.recv() => return,
        };
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let agent = agent.clone();
                    let flows = flows.clone();
                    let stop = shutdown.resubscribe();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, agent, flows, limits, stop).await {
                            debug!(error = %e, "admin connection ended");
                        }
                        drop(permit);
                    });
                }
                Err(e) => warn!(error = %e, "admin socket accept failed"),
            },
            _ = shutdown.recv() => return,
        }
    }
}

async fn write(stream: &mut (impl AsyncWriteExt + Unpin), resp: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(resp).expect("responses always serialise");
    line.push(b'\n');
    stream.write_all(&line).await
}

async fn handle(
    stream: UnixStream,
    agent: AgentHandle,
    flows: FlowHub,
    limits: Limits,
    mut shutdown: broadcast::Receiver<()>,
) -> std::io::Result<()> {
    let (read, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read).take(limits.max_request as u64 + 1);
    let mut line = Vec::new();
    match tokio::time::timeout(limits.read_timeout, reader.read_until(b'\n', &mut line)).await {
        Ok(read) => {
            read?;
        }
        Err(_) => {
            let message = format!(
                "no complete request within {} s; closing the connection",
                limits.read_timeout.as_secs_f64()
            );
            return write(&mut write_half, &Response::Error { message }).await;
        }
    }
    if line.len() > limits.max_request {
        let message = format!(
            "request larger than {} bytes ({} MiB): refused, connection closed",
            limits.max_request,
            limits.max_request / (1024 * 1024)
        );
        return write(&mut write_half, &Response::Error { message }).await;
    }
    let req: Request = match serde_json::from_slice(&line) {
        Ok(r) => r,
        Err(e) => {
            let message = format!("malformed request: {e}");
            return write(&mut write_half, &Response::Error { message }).await;
        }
    };
    match req {
        Request::Flows { follow, limit } => {
            let mut live = follow.then(|| flows.subscribe());
            for record in flows.recent(limit) {
                write(&mut write_half, &Response::Flow(record)).await?;
            }
            if let Some(rx) = live.as_mut() {
                loop {
                    tokio::select! {
                        next = rx.recv() => match next {
                            Ok(record) => write(&mut write_half, &Response::Flow(record)).await?,
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                warn!(skipped = n, "flow follower too slow; events skipped");
                            }
                            Err(broadcast::error::RecvError::Closed) => break,
                        },
                        _ = shutdown.recv() => break,
                    }
                }
            }
            write(&mut write_half, &Response::Done).await
        }
        other => {
            let resp = agent.call(other).await;
            write(&mut write_half, &resp).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Call, Command};
    use tokio::sync::mpsc;

    /// A server on a socket in a temp dir, answered by a stand-in for the actor that
    /// reports what it was asked.
    struct Served {
        _dir: tempfile::TempDir,
        socket: std::path::PathBuf,
        stop: broadcast::Sender<()>,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            let _ = self.stop.send(());
        }
    }

    async fn serve_with(limits: Limits) -> Served {
        let dir = tempfile::tempdir().expect("temp dir");
        let socket = dir.path().join("agent.sock");
        let listener = bind(&socket).await.expect("bind");
        let (tx, mut rx) = mpsc::channel::<Call>(8);
        tokio::spawn(async move {
            while let Some((cmd, reply)) = rx.recv().await {
                let resp = match cmd {
                    Command::Api(Request::ImportImage { path, .. }) => {
                        Response::Applied { lines: vec![format!("{} bytes", path.len())] }
                    }
                    Command::Api(Request::Status) => Response::Done,
                    other => Response::Error { message: format!("unexpected {other:?}") },
                };
                let _ = reply.send(resp);
            }
        });
        let (stop, rx) = broadcast::channel(1);
        tokio::spawn(serve(listener, AgentHandle::new(tx), FlowHub::new(10), limits, rx));
        Served { _dir: dir, socket, stop }
    }

    async fn answer(stream: &mut UnixStream) -> Option<Response> {
        let mut line = Vec::new();
        BufReader::new(stream).read_until(b'\n', &mut line).await.ok()?;
        serde_json::from_slice(&line).ok()
    }

    const DEADLINE: Duration = Duration::from_secs(10);

    #[test]
    fn defaults_are_the_documented_limits() {
        let l = Limits::default();
        assert_eq!(l.max_request, 3 * 1024 * 1024);
        assert_eq!(l.read_timeout, Duration::from_secs(30));
        assert_eq!(l.max_connections, 256);
    }

    #[tokio::test]
    async fn a_one_mib_request_is_served() {
        let served = serve_with(Limits::default()).await;
        let req = Request::ImportImage { path: "x".repeat(1024 * 1024), name: None, state_dir: None };
        let resp = tokio::time::timeout(DEADLINE, crate::api::client::call(&served.socket, &req))
            .await
            .expect("answered in time")
            .expect("applied");
        assert_eq!(resp, Response::Applied { lines: vec![format!("{} bytes", 1024 * 1024)] });
    }

    #[tokio::test]
    async fn an_oversized_request_gets_an_error_and_the_connection_closes() {
        let served = serve_with(Limits { max_request: 4096, ..Limits::default() }).await;
        let mut stream = UnixStream::connect(&served.socket).await.expect("connect");
        // The server may stop reading (and close) before all of it is written.
        let _ = stream.write_all(&vec![b'{'; 64 * 1024]).await;
        let resp = tokio::time::timeout(DEADLINE, answer(&mut stream)).await.expect("answered in time");
        match resp {
            Some(Response::Error { message }) => {
                assert!(message.contains("larger than 4096 bytes"), "{message}")
            }
            other => panic!("expected an error, got {other:?}"),
        }
        let mut rest = Vec::new();
        let n = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await.expect("closed in time");
        assert!(matches!(n, Ok(0) | Err(_)), "nothing after the error: {rest:?}");
        // The client refuses to send such a request at all, with the same reason.
        let huge = Request::Apply { file: "f".into(), text: "y".repeat(MAX_REQUEST_BYTES + 1) };
        let err = crate::api::client::call(&served.socket, &huge).await.expect_err("refused");
        assert!(err.to_string().contains("larger than"), "{err}");
    }

    #[tokio::test]
    async fn a_slow_request_times_out() {
        let served =
            serve_with(Limits { read_timeout: Duration::from_millis(200), ..Limits::default() }).await;
        let mut stream = UnixStream::connect(&served.socket).await.expect("connect");
        stream.write_all(b"{\"op\":").await.expect("partial request");
        let resp = tokio::time::timeout(DEADLINE, answer(&mut stream)).await.expect("answered in time");
        match resp {
            Some(Response::Error { message }) => {
                assert!(message.contains("no complete request"), "{message}")
            }
            other => panic!("expected a timeout error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let served = serve_with(Limits { max_connections: 2, ..Limits::default() }).await;
        let status = b"{\"op\":\"status\"}\n";
        // Two idle connections take both slots.
        let idle1 = UnixStream::connect(&served.socket).await.expect("connect");
        let mut idle2 = UnixStream::connect(&served.socket).await.expect("connect");
        // Prove the second is being served (so both slots are taken) before the third.
        idle2.write_all(status).await.expect("write");
        assert_eq!(answer(&mut idle2).await, Some(Response::Done));
        let idle3 = UnixStream::connect(&served.socket).await.expect("connect");
        drop(idle2);
        // idle2's slot went to idle3; a fourth waits while idle1 and idle3 hold theirs.
        let mut waiting = UnixStream::connect(&served.socket).await.expect("connect (backlog)");
        waiting.write_all(status).await.expect("write");
        let early = tokio::time::timeout(Duration::from_millis(300), answer(&mut waiting)).await;
        assert!(early.is_err(), "served beyond the limit: {early:?}");
        drop(idle1);
        let resp =
            tokio::time::timeout(DEADLINE, answer(&mut waiting)).await.expect("served once a slot frees");
        assert_eq!(resp, Some(Response::Done));
        drop(idle3);
    }
}
