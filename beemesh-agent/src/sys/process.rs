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
    let mut stack = vec![0u8; 256 * 1024];
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

/// Brings the loopback interface of the current network namespace up.
pub fn loopback_up() -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
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
    let sock = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Datagram,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )?;
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
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)?;
        let family =
            if v6 { nix::sys::socket::AddressFamily::Inet6 } else { nix::sys::socket::AddressFamily::Inet };
        nix::sys::socket::socket(
            family,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC | nix::sys::socket::SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(io::Error::from)
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}
