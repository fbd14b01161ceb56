//! Terminals for containers with `tty: true`: a pseudo-terminal pair opened by the pod's init
//! (the master side stays with init, the slave side becomes the container's stdin, stdout,
//! stderr and controlling terminal), and the two ioctls the agent needs on the master side.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

/// Both ends of a new pseudo-terminal.
#[derive(Debug)]
pub struct Pty {
    /// Non-blocking, close-on-exec: what the container writes is read here, and what is
    /// written here is the container's input.
    pub master: OwnedFd,
    /// Close-on-exec (the container gets its own copies as 0, 1 and 2).
    pub slave: OwnedFd,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a pseudo-terminal of `rows` x `cols`. The slave side is reached from the master
/// (`TIOCGPTPEER`), never by a path in /dev/pts, so the mount namespace does not matter.
pub fn open(rows: u16, cols: u16) -> io::Result<Pty> {
    // SAFETY: plain syscalls on descriptors this function owns; each result is checked, and
    // every descriptor returned is wrapped in an OwnedFd exactly once.
    unsafe {
        let master =
            check(libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK))?;
        let master = OwnedFd::from_raw_fd(master);
        let unlock: libc::c_int = 0;
        check(libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock))?;
        let slave = check(libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        ))?;
        let slave = OwnedFd::from_raw_fd(slave);
        set_size(&master, rows, cols)?;
        Ok(Pty { master, slave })
    }
}

/// Sets the terminal's window size (the foreground process group gets SIGWINCH).
pub fn set_size(fd: &impl AsFd, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    check(unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &size) }).map(drop)
}

/// The window size of the terminal `fd`, if it is one.
pub fn size(fd: &impl AsFd) -> Option<(u16, u16)> {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize through the pointer, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}

/// Makes the terminal `slave` the calling process's controlling terminal (after `setsid`).
pub fn make_controlling(slave: &impl AsFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument, no pointer.
    check(unsafe { libc::ioctl(slave.as_fd().as_raw_fd(), libc::TIOCSCTTY, 0) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn what_the_slave_writes_the_master_reads_and_the_size_holds() {
        let pty = open(30, 100).expect("a pseudo-terminal");
        assert_eq!(size(&pty.slave), Some((30, 100)));
        set_size(&pty.master, 40, 120).expect("resize");
        assert_eq!(size(&pty.slave), Some((40, 120)));
        let mut slave = std::fs::File::from(pty.slave);
        slave.write_all(b"hi\n").expect("write");
        let mut master = std::fs::File::from(pty.master);
        let mut buf = [0u8; 16];
        let n = master.read(&mut buf).expect("read");
        // The line discipline turns \n into \r\n.
        assert_eq!(&buf[..n], b"hi\r\n");
        assert_eq!(size(&std::fs::File::open("/dev/null").expect("null")), None);
    }
}
