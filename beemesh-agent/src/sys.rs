//! Thin, typed wrappers over the Linux interfaces the agent needs that no crate covers well:
//! socket diagnostics (dump and destroy TCP sockets) and cgroup2 helpers. The only module tree
//! where `unsafe` is allowed; callers elsewhere see safe functions.
pub mod cgroup;
pub mod diag;
pub mod mount;
pub mod process;
pub mod tree;

use std::os::fd::{AsFd, AsRawFd};

/// Registers an fd-owning object with the tokio reactor.
pub fn async_fd<T: AsFd + AsRawFd>(inner: T) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `T: AsFd` owns its descriptor (it can only lend it out), so the fd stays open and
    // refers to the same file for as long as the AsyncFd owns `inner`.
    unsafe { tokio::io::unix::AsyncFd::register(inner) }.map_err(std::io::Error::from)
}

/// Sets the extended attribute `name` of the open file `fd` (a layer's opaque-directory marker
/// `trusted.overlay.opaque`, an image file's `user.*` or `security.capability`).
pub fn fsetxattr(fd: &impl AsFd, name: &str, value: &[u8]) -> std::io::Result<()> {
    let name =
        std::ffi::CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is open for the duration of the call (borrowed), the name is
    // NUL-terminated and the value pointer/length pair comes from one live slice.
    let rc = unsafe {
        libc::fsetxattr(fd.as_fd().as_raw_fd(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Most descriptors one message carries ([`recv_with_fds`]).
pub const MAX_FDS: usize = 64;

/// Sends `data` on the connected Unix socket `sock` with `fds` attached (SCM_RIGHTS) to its
/// first byte; returns how many bytes went (the caller writes the rest plainly).
pub fn send_with_fds(
    sock: &impl AsFd,
    data: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> std::io::Result<usize> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    if fds.len() > MAX_FDS {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("more than {MAX_FDS} descriptors"),
        ));
    }
    let raw: Vec<std::os::fd::RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs = if raw.is_empty() { Vec::new() } else { vec![ControlMessage::ScmRights(&raw)] };
    let iov = [std::io::IoSlice::new(data)];
    sendmsg::<UnixAddr>(sock.as_fd().as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)
        .map_err(std::io::Error::from)
}

/// Reads from the Unix socket `sock` into `buf`; descriptors that came with the bytes
/// (close-on-exec) are appended to `fds`. Returns the byte count (0: end of stream).
pub fn recv_with_fds(
    sock: &impl AsFd,
    buf: &mut [u8],
    fds: &mut Vec<std::os::fd::OwnedFd>,
) -> std::io::Result<usize> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::FromRawFd;
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS]);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg =
        recvmsg::<UnixAddr>(sock.as_fd().as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(std::io::Error::from)?;
    let n = msg.bytes;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(received) = c {
            for fd in received {
                // SAFETY: the kernel installed these descriptors in this process for this
                // message; nothing else knows or owns them.
                fds.push(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
        return Err(std::io::Error::other("descriptors were cut off (too many in one message)"));
    }
    Ok(n)
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
