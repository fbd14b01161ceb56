//! Live policy: watches policy.d with inotify and tells the agent actor when to rescan.
//! Bursts of events (an editor's write-rename-chmod) are coalesced over a short debounce.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// Inotify wrapper with the `AsRawFd` tokio needs.
struct Watch(Inotify);

impl AsFd for Watch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for Watch {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// Creates `dir` if needed and starts watching it; every change (file closed after
/// writing, moved in or out, deleted) sends, after `debounce` of quiet, when the burst's
/// first event was read (the receiver logs how long the change waited).
pub fn spawn(dir: &Path, debounce: Duration) -> std::io::Result<mpsc::Receiver<Instant>> {
    std::fs::create_dir_all(dir)?;
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
    let mask = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF;
    inotify.add_watch(dir, mask)?;
    let fd = crate::sys::async_fd(Watch(inotify))?;
    let (tx, rx) = mpsc::channel(1);
    let dir: PathBuf = dir.to_path_buf();
    tokio::spawn(async move {
        loop {
            let Ok(mut guard) = fd.readable().await else {
                return;
            };
            let seen = Instant::now();
            match guard.get_inner().0.read_events() {
                Ok(events) => {
                    if events.iter().any(|e| {
                        e.mask.intersects(AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF)
                    }) {
                        // Replaced or removed (`rm -rf; cp -r`, a directory swap): policies
                        // stay as they are until the directory is back, then watch it again.
                        warn!(dir = %dir.display(), "policy directory removed; policies unchanged until it is back");
                        loop {
                            if tx.is_closed() {
                                return;
                            }
                            if dir.is_dir() && guard.get_inner().0.add_watch(&dir, mask).is_ok() {
                                info!(dir = %dir.display(), "policy directory back; watching it again");
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                    debug!(events = events.len(), "policy.d changed");
                }
                Err(nix::errno::Errno::EAGAIN) => {
                    guard.clear_ready();
                    continue;
                }
                Err(e) => {
                    warn!(error = %e, "inotify read failed; live policy reload stops");
                    return;
                }
            }
            // Drain whatever else arrives within the debounce window.
            loop {
                tokio::time::sleep(debounce).await;
                match guard.get_inner().0.read_events() {
                    Ok(more) if !more.is_empty() => continue,
                    _ => break,
                }
            }
            guard.clear_ready();
            // A full channel already holds a pending rescan, which will see these changes.
            if tx.try_send(seen).is_err() && tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}
