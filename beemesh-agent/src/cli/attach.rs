//! `attach POD [-i] [-t]`: the output a running container writes from now on, and with `-i`
//! what this process reads as the container's input, until the container ends.
//!
//! Output is the container's log followed from its current end (for a pod of this host the
//! file itself, else chunks through the agent from the pod's host). Input goes in chunks as
//! `PodInput` requests, each answered once the container's input took it, so a container
//! that does not read holds the client back instead of a buffer growing. With `-t` and a
//! terminal here, the terminal is raw for the session (keys such as ^C go to the container,
//! as with kubectl) and its size follows this one's.

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use tokio::sync::mpsc;

use super::pods::{container, Place};
use super::{fail, unexpected};
use crate::api::client::{self, ClientError};
use crate::api::{Request, Response};

/// How often the log is read again while the container is quiet (this host's file).
const LOCAL_POLL: Duration = Duration::from_millis(20);
/// How often the pod's host is asked for more (a pod of another host).
const REMOTE_POLL: Duration = Duration::from_millis(100);
/// The most input one request carries.
const INPUT_CHUNK: usize = 32 * 1024;

/// Which container, and what the session does.
pub struct Session {
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub stdin: bool,
    pub tty: bool,
    pub quiet: bool,
}

pub async fn attach(socket: &Path, s: Session) -> ExitCode {
    let place = match container(socket, &s.namespace, &s.pod, s.container.clone()).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    // Where the output is read from, and from which offset: what the container writes after
    // this point is shown, nothing before.
    let output = match &place {
        Place::Here(info) => {
            let Some(pid) = info.host_pid else {
                return fail(format!("container {:?} of pod {} is not running", info.container, s.pod));
            };
            let path = PathBuf::from(&info.log);
            let offset = std::fs::metadata(&path).map_or(0, |m| m.len());
            let exited = match crate::sys::process::pidfd(pid) {
                Ok(fd) => fd,
                Err(e) => return fail(format!("container {:?} is not running: {e}", info.container)),
            };
            Output::Local { path, offset, exited }
        }
        Place::Remote => match client::call(socket, &log_request(&s, 0, true)).await {
            Ok(Response::Log { next, .. }) => Output::Remote { offset: next },
            other => return unexpected(other),
        },
    };
    let mut tty = s.tty;
    if let (Place::Here(info), true) = (&place, tty) {
        if !info.io.tty {
            eprintln!("Unable to use a TTY - container {} did not allocate one", info.container);
            tty = false;
        }
    }
    let raw = tty && s.stdin && nix::unistd::isatty(std::io::stdin()).unwrap_or(false);
    let size = if tty { crate::sys::pty::size(&std::io::stdout().as_fd()) } else { None };
    if s.stdin {
        // An empty first chunk: the container must take input (else the answer says why), and
        // its terminal gets this one's size.
        if let Err(e) = send_input(socket, &s, Vec::new(), false, size).await {
            return fail(e);
        }
    }
    let _restore = if raw {
        match RawMode::enter() {
            Ok(r) => Some(r),
            Err(e) => return fail(format!("cannot make this terminal raw: {e}")),
        }
    } else {
        None
    };
    if tty && s.stdin && !s.quiet {
        eprint!("If you don't see a command prompt, try pressing enter.{}", if raw { "\r\n" } else { "\n" });
    }
    let input = s.stdin.then(|| {
        let socket = socket.to_path_buf();
        let session = Session {
            container: s.container.clone(),
            namespace: s.namespace.clone(),
            pod: s.pod.clone(),
            ..s
        };
        tokio::spawn(forward_input(socket, session, tty, raw))
    });
    let result = output.follow(socket, &s).await;
    if let Some(task) = input {
        task.abort();
    }
    drop(_restore);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn log_request(s: &Session, offset: u64, from_end: bool) -> Request {
    Request::PodLogs {
        namespace: s.namespace.clone(),
        name: s.pod.clone(),
        container: s.container.clone(),
        previous: false,
        offset,
        from_end,
    }
}

async fn send_input(
    socket: &Path,
    s: &Session,
    data: Vec<u8>,
    eof: bool,
    size: Option<(u16, u16)>,
) -> Result<(), String> {
    let req = Request::PodInput {
        namespace: s.namespace.clone(),
        name: s.pod.clone(),
        container: s.container.clone(),
        data: base64::engine::general_purpose::STANDARD.encode(data),
        eof,
        size,
    };
    match client::call(socket, &req).await {
        Ok(Response::Done) => Ok(()),
        Ok(other) => Err(format!("unexpected answer from the agent: {other:?}")),
        Err(ClientError::Agent(message)) => Err(message),
        Err(e) => Err(e.to_string()),
    }
}

/// Copies this process's stdin to the container's input, a chunk per request, then says the
/// input ended; with a terminal, also its new size after each SIGWINCH. A chunk that cannot
/// be written (the container ended, or does not read) ends the input with a warning; the
/// output is followed on until the container ends.
async fn forward_input(socket: PathBuf, s: Session, tty: bool, raw: bool) {
    let (tx, mut chunks) = mpsc::channel::<Vec<u8>>(4);
    // A blocking read of stdin on a thread of its own; it ends with the process.
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; INPUT_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(Vec::new());
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut resized = tty
        .then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok())
        .flatten();
    loop {
        let winch = async {
            match resized.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        let sent = tokio::select! {
            chunk = chunks.recv() => match chunk {
                // End of input: said once, then only output is followed.
                Some(c) if c.is_empty() => {
                    let r = send_input(&socket, &s, c, true, None).await;
                    if r.is_ok() {
                        std::future::pending::<()>().await;
                    }
                    r
                }
                Some(c) => send_input(&socket, &s, c, false, None).await,
                None => return,
            },
            Some(()) = winch => {
                let size = crate::sys::pty::size(&std::io::stdout().as_fd());
                send_input(&socket, &s, Vec::new(), false, size).await
            }
        };
        if let Err(e) = sent {
            eprint!("beemesh-agent: input not delivered: {e}{}", if raw { "\r\n" } else { "\n" });
            return;
        }
    }
}

enum Output {
    /// This host's log file from `offset`, until the process `exited` (a pidfd) has ended.
    Local { path: PathBuf, offset: u64, exited: std::os::fd::OwnedFd },
    /// Chunks from the pod's host from `offset`, until it says the container stopped.
    Remote { offset: u64 },
}

impl Output {
    async fn follow(self, socket: &Path, s: &Session) -> Result<(), String> {
        let mut out = std::io::stdout();
        match self {
            Output::Local { path, offset, exited } => {
                let mut file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                file.seek(SeekFrom::Start(offset)).map_err(|e| format!("{}: {e}", path.display()))?;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    // Checked before the read: what the container wrote before it ended is
                    // all in the file by the time its exit is seen.
                    let gone = ended(&exited);
                    let n = file.read(&mut buf).map_err(|e| format!("read {}: {e}", path.display()))?;
                    if n > 0 {
                        if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                            return Ok(());
                        }
                        continue;
                    }
                    if gone {
                        return Ok(());
                    }
                    // The log was cut down (`containerLogMaxBytes`): on from its new end.
                    if std::fs::metadata(&path).is_ok_and(|m| m.len() < file.stream_position().unwrap_or(0)) {
                        file.seek(SeekFrom::End(0)).map_err(|e| format!("{}: {e}", path.display()))?;
                    }
                    tokio::time::sleep(LOCAL_POLL).await;
                }
            }
            Output::Remote { mut offset } => loop {
                let (data, next, running) = match client::call(socket, &log_request(s, offset, false)).await {
                    Ok(Response::Log { data, next, running }) => (
                        base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_default(),
                        next,
                        running,
                    ),
                    Ok(other) => return Err(format!("unexpected answer from the agent: {other:?}")),
                    Err(e) => return Err(e.to_string()),
                };
                if out.write_all(&data).and_then(|()| out.flush()).is_err() {
                    return Ok(());
                }
                offset = next;
                if data.is_empty() {
                    if !running {
                        return Ok(());
                    }
                    tokio::time::sleep(REMOTE_POLL).await;
                }
            },
        }
    }
}

/// Whether the process of the pidfd `fd` has ended (its pidfd reads ready).
fn ended(fd: &std::os::fd::OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0)
}

/// This terminal in raw mode until dropped.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> nix::Result<Self> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let saved = tcgetattr(std::io::stdin())?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(std::io::stdin(), SetArg::TCSANOW, &raw)?;
        Ok(Self(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.0);
    }
}
