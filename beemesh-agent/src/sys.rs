//! Thin, typed wrappers over the Linux interfaces the agent needs that no crate covers well:
//! socket diagnostics (dump and destroy TCP sockets) and cgroup2 helpers. The only module tree
//! where `unsafe` is allowed; callers elsewhere see safe functions.
pub mod cgroup;
pub mod diag;
pub mod process;

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

/// Makes `cmd` join the cgroup2 directory `cgroup` between fork and exec, so that the program
/// (slirp4netns) creates every socket inside it: a socket keeps the cgroup it was created in,
/// and moving the process later would let its first sockets escape policy.
pub fn exec_in_cgroup(cmd: &mut std::process::Command, cgroup: &std::path::Path) -> std::io::Result<()> {
    exec_in_cgroups(cmd, &[cgroup.to_path_buf()])
}

/// Gives the child of `cmd` each descriptor `fd` as number `at` (without close-on-exec), for
/// every `(fd, at)` pair; the parent's descriptors keep their flags, so no other child
/// inherits them. A source whose number is another pair's target is never clobbered: all
/// sources are first copied above every target.
pub fn pass_fds(cmd: &mut std::process::Command, pairs: &[(std::os::fd::RawFd, std::os::fd::RawFd)]) {
    use std::os::unix::process::CommandExt;
    let pairs = pairs.to_vec();
    let above = pairs.iter().map(|(_, at)| *at).max().unwrap_or(0) + 1;
    // Filled in the child; allocated here, before the fork.
    let mut copies = vec![0; pairs.len()];
    // SAFETY: fcntl and dup2 are async-signal-safe and touch only descriptors; the closure
    // writes into memory allocated before the fork and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for (copy, (fd, _)) in copies.iter_mut().zip(&pairs) {
                *copy = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, above);
                if *copy < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (copy, (_, at)) in copies.iter().zip(&pairs) {
                if libc::dup2(*copy, *at) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// [`exec_in_cgroup`] for several cgroups (one per hierarchy: cgroup2 and v1 controllers).
pub fn exec_in_cgroups(
    cmd: &mut std::process::Command,
    cgroups: &[std::path::PathBuf],
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let procs = cgroups
        .iter()
        .map(|c| std::ffi::CString::new(c.join("cgroup.procs").as_os_str().as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: the closure only calls open/write/close (async-signal-safe) on memory prepared
    // before the fork; writing "0" moves the calling process, the child.
    unsafe {
        cmd.pre_exec(move || {
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
    Ok(())
}
