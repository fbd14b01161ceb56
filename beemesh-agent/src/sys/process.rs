//! Process creation for the pod runtime: cloning a pod's init into fresh namespaces,
//! forking its containers, and the few raw calls around them. Only `pod::init` calls these,
//! from a process that has a single thread (fork and clone are then safe to use freely).

use std::io;

use nix::sched::CloneFlags;
use nix::unistd::Pid;

/// Clones the calling process into new namespaces (`flags`); the child runs `child` on its
/// own stack and exits with its return value. The parent gets the child's pid and receives
/// SIGCHLD when it ends.
///
/// Must only be called while the process has one thread.
pub fn clone_into_namespaces(flags: CloneFlags, child: impl FnMut() -> isize) -> io::Result<Pid> {
    // The pod's init runs on this stack for the pod's whole life: 8 MiB, like a main
    // thread's (untouched pages cost nothing).
    let mut stack = vec![0u8; 8 << 20];
    let child: Box<dyn FnMut() -> isize> = Box::new(child);
    // SAFETY: without CLONE_VM the child gets a copy of our memory (like fork) and runs
    // `child` on a copy of `stack`; with a single thread in the parent there is no lock
    // another thread could hold across the copy.
    unsafe { nix::sched::clone(child, &mut stack, flags, Some(libc::SIGCHLD)) }.map_err(io::Error::from)
}

#[derive(Debug)]
pub enum Forked {
    Parent(Pid),
    Child,
}

/// fork(2). Must only be called while the process has one thread.
pub fn fork() -> io::Result<Forked> {
    // SAFETY: the caller is single-threaded, so the child can run any code (allocation
    // included): no other thread can hold a lock at the time of the fork.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Ends the process at once, without running exit handlers or flushing buffers that belong
/// to the parent (for a forked child whose exec failed).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no process state.
    unsafe { libc::_exit(code) }
}

/// A throwaway IPv4 datagram socket, for ioctls and socket options about the namespace.
fn udp_socket() -> io::Result<std::os::fd::OwnedFd> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(io::Error::from)
}

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = udp_socket()?;
    // SAFETY: an all-zero ifreq is valid; the name fits (3 bytes and NUL).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write `req`, which lives across the calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Signals `pid`'s whole process group (`pid` leads it: containers call setsid), or the
/// process alone if it has no group of its own.
pub fn signal_group(pid: Pid, signal: i32) -> io::Result<()> {
    let sig = nix::sys::signal::Signal::try_from(signal).map_err(io::Error::from)?;
    match nix::sys::signal::killpg(pid, sig) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::ESRCH) => nix::sys::signal::kill(pid, sig).map_err(io::Error::from),
        Err(e) => Err(e.into()),
    }
}

/// The network namespace cookie of the calling thread (SO_NETNS_COOKIE), which the kernel
/// programs compare against to tell host sockets from sockets inside pods.
pub fn netns_cookie() -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let sock = udp_socket()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cookie)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A TCP socket (not yet connected, non-blocking) in the network namespace of process `pid`,
/// made on a short-lived thread that enters that namespace and then ends, so no thread of
/// the agent ever stays in a pod's namespace.
pub fn tcp_socket_in_netns_of(pid: u32, v6: bool) -> io::Result<std::os::fd::OwnedFd> {
    socket_in_netns_of(pid, v6, nix::sys::socket::SockType::Stream)
}

/// A UDP socket (unbound, non-blocking) in the network namespace of process `pid`, made as
/// [`tcp_socket_in_netns_of`] makes its socket.
pub fn udp_socket_in_netns_of(pid: u32, v6: bool) -> io::Result<std::os::fd::OwnedFd> {
    socket_in_netns_of(pid, v6, nix::sys::socket::SockType::Datagram)
}

fn socket_in_netns_of(
    pid: u32,
    v6: bool,
    kind: nix::sys::socket::SockType,
) -> io::Result<std::os::fd::OwnedFd> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
        let family =
            if v6 { nix::sys::socket::AddressFamily::Inet6 } else { nix::sys::socket::AddressFamily::Inet };
        nix::sys::socket::socket(
            family,
            kind,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(io::Error::from)
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// Capabilities a container keeps (Docker's and containerd's default set): no CAP_SYS_ADMIN,
/// so no mounts, and no CAP_SYS_PTRACE.
pub const CONTAINER_CAPS: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW
    18, // CAP_SYS_CHROOT
    27, // CAP_MKNOD
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

/// The highest capability number this kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drops every capability outside `keep` from the bounding set and clears the ambient set:
/// after the next exec the process holds at most `keep` (root's permitted set is the
/// bounding set). `last` is [`last_capability`] (read before leaving the host's /proc).
pub fn restrict_capabilities(keep: &[u32], last: u32) -> io::Result<()> {
    for cap in 0..=last {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) }
        != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Restores the default disposition of every signal (the Rust runtime ignores SIGPIPE, and
/// ignored signals survive exec) and unblocks them all.
pub fn default_signals() -> io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL never runs code of ours.
        unsafe { sigaction(sig, &default) }?;
    }
    SigSet::empty().thread_set_mask()?;
    Ok(())
}

/// Asks the kernel to SIGKILL the calling process when its parent exits.
pub fn die_with_parent() -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(io::Error::from)
}

/// Makes this process the reaper of its orphaned descendants: a pod's init, whose parent
/// exits right after cloning it, becomes the agent's child, so the agent can reap it (a
/// host whose PID 1 does not reap would otherwise keep its namespaces alive as a zombie).
pub fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(io::Error::from)
}

/// Waits up to `timeout` for child `pid` to end and reaps it; false if it still runs.
/// A pid that is not our child counts as reaped.
pub fn reap(pid: u32, timeout: std::time::Duration) -> bool {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) | Err(_) => return true,
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// A pidfd of process `pid` (close-on-exec): it turns readable when the process exits.
pub fn pidfd(pid: u32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor, owned here once.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor from the kernel, owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// A copy of descriptor `fd` of process `pid` (`pidfd_getfd`: needs the right to ptrace it,
/// which the host's root has over every pod process), close-on-exec. It shares the open file
/// with the original (offset, status flags).
pub fn copy_fd_of(pid: u32, fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let pidfd = pidfd(pid)?;
    // SAFETY: pidfd_getfd takes a live pidfd, a descriptor number and flags (0); it returns a
    // new descriptor of this process, owned here once.
    let copy = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor from the kernel, owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(copy as i32) })
}

/// The command line of process `pid`, one entry per argument (`None` if it is gone).
pub fn cmdline(pid: u32) -> Option<Vec<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| std::ffi::OsStr::from_bytes(a).to_owned())
            .collect(),
    )
}

/// Puts the calling thread (Linux: by its tid) in the round-robin real-time class at
/// `priority` (1 = the lowest real-time level), so it runs as soon as it is runnable, ahead
/// of every ordinary thread of the agent, of the pods and of the processes they start; what it
/// starts or forks falls back to the ordinary class (SCHED_RESET_ON_FORK). The kernel's
/// real-time throttling (by default 95% of each second) keeps a runaway from taking a CPU.
pub fn realtime_thread(priority: i32) -> io::Result<()> {
    let tid = nix::unistd::gettid().as_raw();
    let param = libc::sched_param { sched_priority: priority };
    // SAFETY: sched_setscheduler reads the parameter struct, alive for the call; a tid names
    // this one thread.
    let rc = unsafe { libc::sched_setscheduler(tid, libc::SCHED_RR | libc::SCHED_RESET_ON_FORK, &param) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the calling thread's nice value (Linux: a thread's own priority, by its tid); the
/// fallback where real-time scheduling is not allowed.
pub fn raise_thread_priority(nice: i32) -> io::Result<()> {
    let tid = nix::unistd::gettid().as_raw();
    // SAFETY: setpriority only reads its integer arguments; PRIO_PROCESS with a tid names
    // this one thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// For tests of seccomp filters: forks a child that installs `filters` (in order) and calls
/// syscall `nr` with all-zero arguments; the errno the call failed with, 0 if it succeeded
/// (255: the filters could not be installed).
#[cfg(test)]
pub fn errno_under_filters(filters: &[seccompiler::BpfProgram], nr: libc::c_long) -> io::Result<i32> {
    use nix::sys::wait::{waitpid, WaitStatus};
    // SAFETY: the test harness has other threads, so the child only makes raw syscalls
    // (installing a filter allocates nothing on success) and leaves with _exit.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Child => {
            if filters.iter().any(|f| seccompiler::apply_filter(f).is_err()) {
                exit_now(255);
            }
            // SAFETY: with zero arguments no pointer is passed; a syscall that wants one
            // fails with EFAULT.
            let rc = unsafe { libc::syscall(nr, 0, 0, 0, 0, 0, 0) };
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            exit_now(if rc == -1 { errno } else { 0 })
        }
        nix::unistd::ForkResult::Parent { child } => match waitpid(child, None).map_err(io::Error::from)? {
            WaitStatus::Exited(_, code) => Ok(code),
            other => Err(io::Error::other(format!("filtered child ended with {other:?}"))),
        },
    }
}

/// Marks every descriptor from 3 up close-on-exec. What the agent's parent left open (a
/// lock a build tool holds for its child, a shell's extra descriptors) must not reach the
/// pods, slirp4netns and helpers the agent starts: they would hold it for their whole life.
/// Descriptors the agent hands on on purpose are set up in the child after this.
pub fn cloexec_inherited() -> io::Result<()> {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors of
    // this process; it closes none and touches no memory.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
