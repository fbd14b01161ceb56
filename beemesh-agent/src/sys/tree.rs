//! Removing a directory tree that someone else filled: an image being unpacked (temporary
//! directories of the store), a container's root and upper directory, a pod's directory
//! (emptyDir volumes, logs, Secrets). Callers: `image`, `pod::rootfs`, `pod::sandbox`,
//! `app::pods`.
//!
//! `std::fs::remove_dir_all` recurses with one open descriptor and one stack frame per
//! level, so a tree built by `while mkdir a; do cd a; done` ends it with EMFILE or a stack
//! overflow. This walk keeps its stack on the heap and at most [`OPEN_DIRS`] directories
//! open (a deeper parent is opened again through `..` and checked to be the same directory),
//! never follows a symbolic link and never crosses into another mount (`openat2` with
//! `RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`: a mount point inside the tree is left, with an
//! error naming it, while everything else goes).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// Most directories of the walk held open at once (besides the tree's parent and one being
/// listed).
pub const OPEN_DIRS: usize = 32;

/// One directory on the walk's stack.
struct Frame {
    /// Its name in the directory below it on the stack (the tree's own name for the first).
    name: OsString,
    /// Open while the frame is among the top [`OPEN_DIRS`] of the stack.
    fd: Option<OwnedFd>,
    /// Device and inode: a directory opened again through `..` must be this one.
    id: (u64, u64),
    /// Subdirectories still to remove (listed once, when the frame was pushed).
    subdirs: Vec<OsString>,
}

fn open_dir(parent: &OwnedFd, name: &OsStr, resolve: ResolveFlag) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    openat2(parent, name, OpenHow::new().flags(flags).resolve(resolve))
}

/// A child of the directory: never through a link, never another mount.
fn child_resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

fn id_of(fd: &OwnedFd) -> nix::Result<(u64, u64)> {
    let st = nix::sys::stat::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Removes `path` and everything below it; a missing `path` is fine, one that is not a
/// directory (or a symbolic link) is unlinked. Goes on past an entry it cannot remove and
/// returns the first such failure, naming the entry (a mount point inside the tree is one:
/// it and its parents stay).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not removable", path.display()),
        ));
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let top = nix::fcntl::open(parent, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| at(path, e))?;
    let root = match open_dir(&top, name, child_resolve()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => {
            return nix::unistd::unlinkat(&top, name, UnlinkatFlags::NoRemoveDir).map_err(|e| at(path, e))
        }
        Err(Errno::EXDEV) => return Err(at_mount(path)),
        Err(e) => return Err(at(path, e)),
    };
    Walk { path, top, stack: Vec::new(), first_err: None }.run(root)
}

struct Walk<'a> {
    path: &'a Path,
    /// The tree's parent (an `O_PATH` descriptor), to remove the tree's own directory.
    top: OwnedFd,
    stack: Vec<Frame>,
    first_err: Option<io::Error>,
}

impl Walk<'_> {
    fn run(mut self, root: OwnedFd) -> io::Result<()> {
        let name = self.path.file_name().map(OsStr::to_os_string).unwrap_or_default();
        self.push(name, root)?;
        while let Some(frame) = self.stack.last_mut() {
            if let Some(child) = frame.subdirs.pop() {
                let fd = frame.fd.as_ref().expect("the top frame is open");
                match open_dir(fd, &child, child_resolve()) {
                    Ok(fd) => self.push(child, fd)?,
                    Err(Errno::ENOENT) => {}
                    // Replaced by a file or link since it was listed.
                    Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => {
                        if let Err(e) =
                            nix::unistd::unlinkat(fd, child.as_os_str(), UnlinkatFlags::NoRemoveDir)
                        {
                            self.fail(&child, e);
                        }
                    }
                    Err(Errno::EXDEV) => {
                        let e = at_mount(&self.shown(&child));
                        self.first_err.get_or_insert(e);
                    }
                    Err(e) => self.fail(&child, e),
                }
                continue;
            }
            let done = self.stack.pop().expect("the loop's frame");
            let Some(parent) = self.stack.last_mut() else {
                drop(done.fd);
                if let Err(e) =
                    nix::unistd::unlinkat(&self.top, done.name.as_os_str(), UnlinkatFlags::RemoveDir)
                {
                    self.first_err.get_or_insert(at(self.path, e));
                }
                break;
            };
            if parent.fd.is_none() {
                let child = done.fd.as_ref().expect("the top frame is open");
                let up = ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV;
                let reopened = open_dir(child, OsStr::new(".."), up);
                match reopened.and_then(|fd| Ok((id_of(&fd)?, fd))) {
                    Ok((id, fd)) if id == parent.id => parent.fd = Some(fd),
                    Ok(_) => {
                        let e = io::Error::other("moved while being removed");
                        return Err(self.with_path(&done.name, e));
                    }
                    Err(e) => return Err(self.with_path(&done.name, e.into())),
                }
            }
            drop(done.fd);
            let fd = self.stack.last().and_then(|f| f.fd.as_ref()).expect("reopened above");
            if let Err(e) = nix::unistd::unlinkat(fd, done.name.as_os_str(), UnlinkatFlags::RemoveDir) {
                // Not empty after a failure below it: that failure is the one to tell.
                self.fail(&done.name, e);
            }
        }
        self.first_err.map_or(Ok(()), Err)
    }

    /// Lists the directory `fd` (removing its other entries at once) and pushes it; closes
    /// the frame that leaves the open window.
    fn push(&mut self, name: OsString, fd: OwnedFd) -> io::Result<()> {
        let id = id_of(&fd).map_err(|e| self.with_path(&name, e.into()))?;
        self.stack.push(Frame { name, fd: Some(fd), id, subdirs: Vec::new() });
        let subdirs = self.list();
        self.stack.last_mut().expect("just pushed").subdirs = subdirs;
        if self.stack.len() > OPEN_DIRS {
            let n = self.stack.len() - OPEN_DIRS - 1;
            self.stack[n].fd = None;
        }
        Ok(())
    }

    /// Unlinks every entry of the top directory that is not a directory; returns the
    /// directories.
    fn list(&mut self) -> Vec<OsString> {
        let fd = self.stack.last().and_then(|f| f.fd.as_ref()).expect("the top frame is open");
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let names: Vec<(OsString, Option<nix::dir::Type>)> =
            match nix::dir::Dir::openat(fd, ".", flags, Mode::empty()) {
                Ok(mut dir) => dir
                    .iter()
                    .filter_map(Result::ok)
                    .map(|e| (OsStr::from_bytes(e.file_name().to_bytes()).to_os_string(), e.file_type()))
                    .filter(|(n, _)| n != "." && n != "..")
                    .collect(),
                Err(e) => {
                    self.fail(OsStr::new(""), e);
                    return Vec::new();
                }
            };
        let mut subdirs = Vec::new();
        let mut failed = Vec::new();
        for (name, kind) in names {
            if kind == Some(nix::dir::Type::Directory) {
                subdirs.push(name);
                continue;
            }
            // An unknown type is tried as a file first: unlink says EISDIR for a directory.
            match nix::unistd::unlinkat(fd, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(Errno::EISDIR) | Err(Errno::EPERM) if kind.is_none() => subdirs.push(name),
                Err(e) => failed.push((name, e)),
            }
        }
        for (name, e) in failed {
            self.fail(&name, e);
        }
        subdirs
    }

    fn fail(&mut self, name: &OsStr, e: Errno) {
        if self.first_err.is_none() {
            self.first_err = Some(self.with_path(name, e.into()));
        }
    }

    /// `e` naming the entry `name` of the top directory.
    fn with_path(&self, name: &OsStr, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("{}: {e}", self.shown(name).display()))
    }

    /// The entry `name` of the top directory, for errors: deep paths shortened to their
    /// first and last components.
    fn shown(&self, name: &OsStr) -> PathBuf {
        let mut names: Vec<&OsStr> = self.stack.iter().skip(1).map(|f| f.name.as_os_str()).collect();
        if !name.is_empty() {
            names.push(name);
        }
        let mut out = self.path.to_path_buf();
        if names.len() > 12 {
            let skipped = names.len() - 8;
            out.extend(&names[..4]);
            out.push(format!("({skipped} more levels)"));
            out.extend(&names[names.len() - 4..]);
        } else {
            out.extend(names);
        }
        out
    }
}

fn at(path: &Path, e: Errno) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn at_mount(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::ResourceBusy,
        format!("{}: a mount point, left in place (removal does not cross mounts)", path.display()),
    )
}

#[cfg(test)]
mod tests;
