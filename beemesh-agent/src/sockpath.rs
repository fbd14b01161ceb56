//! Unix socket paths that never outgrow `sun_path` (108 bytes), whatever the length of the
//! directory the socket lives in: a socket is bound and connected as
//! `/proc/self/fd/<fd of its directory>/<name>` (the kernel resolves the magic link to the
//! directory, so the socket file is created and found in the real directory). Used for the
//! admin socket (`<run-dir>`), a pod's `init.sock` (bound by `pod-init`, connected by the
//! agent) and its slirp4netns API socket (bound by slirp4netns, given the directory as an
//! inherited descriptor).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

/// A socket's short path, valid while this value (holding its directory open) lives.
#[derive(Debug)]
pub struct ShortPath {
    dir: File,
    name: std::ffi::OsString,
}

impl ShortPath {
    /// Opens the directory of `socket` (which need not exist yet).
    pub fn new(socket: &Path) -> io::Result<Self> {
        let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a socket path in a directory", socket.display()),
            ));
        };
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        // std opens close-on-exec: no child inherits it unless handed over on purpose.
        let dir = File::open(dir).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        Ok(Self { dir, name: name.to_owned() })
    }

    /// `/proc/self/fd/<fd>/<name>` in this process.
    pub fn path(&self) -> PathBuf {
        Self::through(self.dir.as_raw_fd(), &self.name)
    }

    /// The directory's descriptor (to hand to a child as a fixed number).
    pub fn dir_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.dir)
    }

    /// The path of `name` through descriptor `fd` of the process that uses it.
    pub fn through(fd: RawFd, name: &std::ffi::OsStr) -> PathBuf {
        Path::new("/proc/self/fd").join(fd.to_string()).join(name)
    }
}

/// Binds a listening socket at `socket` (any length).
pub fn bind(socket: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    let short = ShortPath::new(socket)?;
    std::os::unix::net::UnixListener::bind(short.path())
}

/// Connects to the socket at `socket` (any length).
pub fn connect(socket: &Path) -> io::Result<std::os::unix::net::UnixStream> {
    let short = ShortPath::new(socket)?;
    std::os::unix::net::UnixStream::connect(short.path())
}

/// Connects to the socket at `socket` (any length), for tokio.
pub async fn connect_async(socket: &Path) -> io::Result<tokio::net::UnixStream> {
    let short = ShortPath::new(socket)?;
    tokio::net::UnixStream::connect(short.path()).await
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn sockets_bind_and_connect_below_a_directory_longer_than_sun_path() {
        let tmp = tempfile::tempdir().expect("tmp");
        let deep = tmp.path().join("d".repeat(120)).join("e".repeat(120));
        std::fs::create_dir_all(&deep).expect("mkdir");
        let socket = deep.join("api.sock");
        assert!(socket.as_os_str().len() > 240);
        // The plain path is refused by the kernel (what used to fail pods)...
        assert!(std::os::unix::net::UnixListener::bind(&socket).is_err());
        // ...the short one works, and the socket file sits in the real directory.
        let listener = bind(&socket).expect("bind through the directory fd");
        assert!(socket.exists());
        let mut client = connect(&socket).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        client.write_all(b"hi").expect("write");
        drop(client);
        let mut got = String::new();
        server.read_to_string(&mut got).expect("read");
        assert_eq!(got, "hi");
        assert!(ShortPath::new(&socket).expect("open").path().as_os_str().len() < 40);
        assert!(connect(&tmp.path().join("missing/x.sock")).is_err());
    }
}
