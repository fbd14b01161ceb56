//! Server side of the admin API: accepts on the unix socket, reads one bounded request
//! line, and answers from the agent actor (or the flow hub for `flows`).

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::{Request, Response, MAX_REQUEST_BYTES};
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

/// Serves until `shutdown` fires.
pub async fn serve(
    listener: UnixListener,
    agent: AgentHandle,
    flows: FlowHub,
    mut shutdown: broadcast::Receiver<()>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let agent = agent.clone();
                    let flows = flows.clone();
                    let stop = shutdown.resubscribe();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, agent, flows, stop).await {
                            debug!(error = %e, "admin connection ended");
                        }
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
    mut shutdown: broadcast::Receiver<()>,
) -> std::io::Result<()> {
    let (read, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await?;
    if line.len() > MAX_REQUEST_BYTES {
        let message = format!("request larger than {MAX_REQUEST_BYTES} bytes");
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
