//! Client side of the admin API, used by the CLI subcommands and the tests.

use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{Request, Response, MAX_REQUEST_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the agent at {path} (is `beemesh-agent run` running with this --run-dir?): {source}"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad response from the agent: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("the agent closed the connection without answering")]
    Closed,
    #[error("request of {size} bytes is larger than the agent accepts ({max} bytes, 3 MiB)")]
    TooLarge { size: usize, max: usize },
    #[error("{0}")]
    Agent(String),
}

/// A connection carrying one request.
#[derive(Debug)]
pub struct Client {
    lines: tokio::io::Lines<BufReader<UnixStream>>,
}

impl Client {
    /// Connects and sends `req`.
    pub async fn send(socket: &Path, req: &Request) -> Result<Self, ClientError> {
        let mut stream = crate::sockpath::connect_async(socket)
            .await
            .map_err(|source| ClientError::Connect { path: socket.to_path_buf(), source })?;
        let mut line = serde_json::to_vec(req)?;
        if line.len() > MAX_REQUEST_BYTES {
            return Err(ClientError::TooLarge { size: line.len(), max: MAX_REQUEST_BYTES });
        }
        line.push(b'\n');
        // If the agent refuses the request half-way it answers why before closing: a failed
        // write still leaves that answer to read.
        let written = stream.write_all(&line).await;
        let lines = BufReader::new(stream).lines();
        match written {
            Ok(()) => Ok(Self { lines }),
            Err(e) => {
                let mut c = Self { lines };
                match c.next().await {
                    Err(ClientError::Agent(message)) => Err(ClientError::Agent(message)),
                    _ => Err(ClientError::Io(e)),
                }
            }
        }
    }

    /// Next response; `Ok(None)` at the end of a stream. Agent errors become `Err`.
    pub async fn next(&mut self) -> Result<Option<Response>, ClientError> {
        match self.lines.next_line().await? {
            None => Ok(None),
            Some(line) => match serde_json::from_str(&line)? {
                Response::Error { message } => Err(ClientError::Agent(message)),
                other => Ok(Some(other)),
            },
        }
    }
}

/// One request, one response.
pub async fn call(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let mut c = Client::send(socket, req).await?;
    c.next().await?.ok_or(ClientError::Closed)
}
