//! Thin, typed wrappers over the Linux interfaces the agent needs that no crate covers well:
//! socket diagnostics (dump and destroy TCP sockets) and cgroup2 helpers. The only module tree
//! where `unsafe` is allowed; callers elsewhere see safe functions.
pub mod cgroup;
pub mod diag;
pub mod mount;
pub mod process;
pub mod pty;
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

/// The hidden subcommand of this binary that joins cgroups, then becomes another program
/// ([`cgroup_exec`]).
pub const CGROUP_EXEC: &str = "cgroup-exec";

/// The command line that runs `program` inside the cgroup directories `cgroups` (one per
/// hierarchy: cgroup2 and v1 controllers) from its first instruction, so that a program such
/// as slirp4netns creates every socket inside them (a socket keeps the cgroup it was created
/// in; moving the process later would let its first sockets escape policy). Its arguments
/// follow.
///
/// The agent never forks: `fork` copies its page tables under its memory map lock and
/// glibc's allocator locks, stalling every agent thread (the policy engine's included) for
/// milliseconds per pod. It starts this binary instead (`/proc/self/exe cgroup-exec`, by
/// posix_spawn, a vfork), which joins the cgroups and execs `program`.
///
/// With `slave_mounts` the program starts in a mount namespace of its own whose mounts are
/// slaves of the host's: it sees the host's mounts, and nothing it unmounts reaches the host.
/// slirp4netns needs it: its `--enable-sandbox` makes only `/` private before it pivots and
/// detaches the old root, which would unmount shared submounts (`ip netns`' `/run/netns/*`)
/// on the host where `/run` is not a mount of its own.
pub fn cgroup_exec_argv(
    cgroups: &[std::path::PathBuf],
    slave_mounts: bool,
    program: impl AsRef<std::ffi::OsStr>,
) -> Vec<std::ffi::OsString> {
    #[cfg(not(test))]
    let mut argv: Vec<std::ffi::OsString> = vec!["/proc/self/exe".into(), CGROUP_EXEC.into()];
    // A unit test's binary is not the agent: a shell does the same two steps.
    #[cfg(test)]
    let mut argv: Vec<std::ffi::OsString> = vec![
        "/bin/sh".into(),
        "-c".into(),
        r#"[ "$1" = --slave-mounts ] && shift; while [ "$1" = --cgroup ]; do echo 0 > "$2/cgroup.procs" || exit 127; shift 2; done; shift; exec "$@""#
            .into(),
        CGROUP_EXEC.into(),
    ];
    if slave_mounts {
        argv.push("--slave-mounts".into());
    }
    for c in cgroups {
        argv.push("--cgroup".into());
        argv.push(c.into());
    }
    argv.push("--".into());
    argv.push(program.as_ref().to_owned());
    argv
}

/// A [`std::process::Command`] for [`cgroup_exec_argv`]: with no `pre_exec` hook, std starts
/// it by posix_spawn.
pub fn command_in_cgroups(
    cgroups: &[std::path::PathBuf],
    program: impl AsRef<std::ffi::OsStr>,
) -> std::process::Command {
    let argv = cgroup_exec_argv(cgroups, false, program);
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// `beemesh-agent cgroup-exec`: moves this (single-threaded) process into each cgroup (and,
/// with `slave_mounts`, into a mount namespace whose mounts are slaves of the host's), then
/// execs `command` (searched in PATH); returns only the error that stopped it.
pub fn cgroup_exec(
    cgroups: &[std::path::PathBuf],
    slave_mounts: bool,
    command: &[std::ffi::OsString],
) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    if slave_mounts {
        let none: Option<&str> = None;
        let isolated = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).and_then(|()| {
            nix::mount::mount(
                none,
                "/",
                none,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_SLAVE,
                none,
            )
        });
        if let Err(e) = isolated {
            return std::io::Error::other(format!("a mount namespace of slave mounts: {e}"));
        }
    }
    for c in cgroups {
        if let Err(e) = std::fs::write(c.join("cgroup.procs"), b"0") {
            return std::io::Error::new(e.kind(), format!("join cgroup {}: {e}", c.display()));
        }
    }
    let Some((program, args)) = command.split_first() else {
        return std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command to run");
    };
    let e = std::process::Command::new(program).args(args).exec();
    std::io::Error::new(e.kind(), format!("run {}: {e}", program.to_string_lossy()))
}

/// Starts `argv` (`argv[0]` a path) by posix_spawn, with this process's environment, `stdio`
/// as its descriptors 0, 1 and 2, and each `(fd, at)` of `fds` as number `at` (without
/// close-on-exec): the parent's descriptors keep their flags, so no other child inherits
/// them. Signals start unblocked, SIGPIPE at its default. Returns the pid; the caller reaps it.
pub fn spawn_with_fds(
    argv: &[std::ffi::OsString],
    stdio: [std::os::fd::BorrowedFd<'_>; 3],
    fds: &[(std::os::fd::BorrowedFd<'_>, std::os::fd::RawFd)],
) -> std::io::Result<nix::unistd::Pid> {
    use nix::spawn::{posix_spawn, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
    use std::os::unix::ffi::OsStrExt;
    let cstr = |s: &std::ffi::OsStr| {
        std::ffi::CString::new(s.as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in an argument"))
    };
    let args = argv.iter().map(|a| cstr(a)).collect::<Result<Vec<_>, _>>()?;
    let path = args.first().ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let env = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            cstr(&kv)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pairs: Vec<_> = stdio.iter().zip(0..).map(|(fd, at)| (*fd, at)).chain(fds.iter().copied()).collect();
    // Every source is first copied above every target, so a source whose number is another
    // pair's target is never clobbered by the child's dup2 sequence.
    let above = pairs.iter().map(|(_, at)| *at).max().unwrap_or(0) + 1;
    let copies = pairs
        .iter()
        .map(|(fd, _)| {
            let copy = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(above))?;
            // SAFETY: fcntl just made this descriptor for us; nothing else owns it.
            Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(copy) })
        })
        .collect::<Result<Vec<_>, nix::Error>>()?;
    let mut actions = PosixSpawnFileActions::init()?;
    for (copy, (_, at)) in copies.iter().zip(&pairs) {
        actions.add_dup2(copy.as_raw_fd(), *at)?;
    }
    let mut attr = PosixSpawnAttr::init()?;
    attr.set_flags(PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF)?;
    attr.set_sigmask(&nix::sys::signal::SigSet::empty())?;
    let mut default = nix::sys::signal::SigSet::empty();
    default.add(nix::sys::signal::Signal::SIGPIPE);
    attr.set_sigdefault(&default)?;
    Ok(posix_spawn(path.as_c_str(), &actions, &attr, &args, &env)?)
}
