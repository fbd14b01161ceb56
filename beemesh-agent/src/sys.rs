//! Thin, typed wrappers over the Linux interfaces the agent needs that no crate covers well:
//! socket diagnostics (dump and destroy TCP sockets) and cgroup2 helpers. The only module tree
//! where `unsafe` is allowed; callers elsewhere see safe functions.
pub mod cgroup;
pub mod diag;

use std::os::fd::{AsFd, AsRawFd};

/// Registers an fd-owning object with the tokio reactor.
pub fn async_fd<T: AsFd + AsRawFd>(inner: T) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T: AsFd` owns its descriptor (it can only lend it out), so the fd stays open and
    // refers to the same file for as long as the AsyncFd owns `inner`.
    unsafe { tokio::io::unix::AsyncFd::register(inner) }.map_err(std::io::Error::from)
}
