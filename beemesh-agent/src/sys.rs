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

/// Marks `path` as an overlayfs whiteout (a 0/0 character device): the file of that name in
/// lower layers is hidden.
pub fn overlay_whiteout(path: &std::path::Path) -> std::io::Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    let _ = std::fs::remove_file(path);
    mknod(path, SFlag::S_IFCHR, Mode::empty(), nix::sys::stat::makedev(0, 0)).map_err(std::io::Error::from)
}

/// Marks directory `dir` opaque for overlayfs (`trusted.overlay.opaque=y`): lower layers'
/// contents of that directory are hidden.
pub fn overlay_opaque(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: both strings are NUL-terminated and outlive the call; the value is 1 byte.
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
