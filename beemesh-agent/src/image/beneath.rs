//! Filesystem access confined to one directory, for `layer.rs` (a layer being unpacked) and
//! `archive.rs` (an image archive being read): paths are checked to be plain relative paths,
//! then walked from the directory's descriptor with `openat2`, so neither an absolute path, a
//! `..` nor a symbolic link planted by the archive itself can reach a file outside.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{Mode, SFlag};

/// Most components of an entry's path: deeper trees are refused (they cost the removal of a
/// failed import, and a pod's tools, more than any real image needs).
pub(super) const MAX_DEPTH: usize = 256;

/// Most bytes of an entry's path (the kernel's PATH_MAX).
pub(super) const MAX_PATH: usize = 4096;

/// The plain components of an archive entry's path (`./` and inner `.` dropped); an absolute
/// path, a `..` component, a path longer than [`MAX_PATH`] bytes or deeper than [`MAX_DEPTH`]
/// components is refused with the reason. Empty means the directory itself.
pub(super) fn components(path: &Path) -> Result<Vec<OsString>, String> {
    let len = path.as_os_str().len();
    if len > MAX_PATH {
        return Err(format!("path of {len} bytes refused (at most {MAX_PATH})"));
    }
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => {
                if out.len() == MAX_DEPTH {
                    return Err(format!("path deeper than {MAX_DEPTH} components refused"));
                }
                out.push(n.to_os_string())
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute path refused (entries must stay inside the layer)".into())
            }
            Component::ParentDir => {
                return Err("`..` component refused (entries must stay inside the layer)".into())
            }
        }
    }
    Ok(out)
}

/// A directory that every operation stays beneath.
#[derive(Debug)]
pub(super) struct Beneath {
    root: OwnedFd,
    /// Directories [`Beneath::dir`] created (parents no entry named).
    created: Cell<u64>,
}

fn how(flags: OFlag, resolve: ResolveFlag) -> OpenHow {
    OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(resolve)
}

/// One step of a walk: never a link, never above the step's directory, never another mount.
fn step() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_XDEV
}

impl Beneath {
    pub(super) fn open(dir: &Path) -> io::Result<Self> {
        let root =
            nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(Self { root, created: Cell::new(0) })
    }

    /// How many directories [`Beneath::dir`] has created.
    pub(super) fn created(&self) -> u64 {
        self.created.get()
    }

    /// The directory at `comps` (an `O_PATH` descriptor), created (mode 0755, fixed later by
    /// the entry that names it) where missing when `create`. A component that is a symbolic
    /// link fails with `ELOOP`, one that is not a directory with `ENOTDIR`.
    pub(super) fn dir(&self, comps: &[OsString], create: bool) -> io::Result<OwnedFd> {
        let mut dir = openat2(&self.root, ".", how(OFlag::O_PATH | OFlag::O_DIRECTORY, step()))?;
        for name in comps {
            if create {
                match nix::sys::stat::mkdirat(&dir, name.as_os_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) => self.created.set(self.created.get() + 1),
                    Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            dir = openat2(&dir, name.as_os_str(), how(OFlag::O_PATH | OFlag::O_DIRECTORY, step()))?;
        }
        Ok(dir)
    }

    /// Opens the regular file at `rel` for reading, resolving links as if the directory were
    /// `/` (an OCI layout or docker-archive may link blobs to each other, never outside).
    /// Looked at before it is opened: opening a FIFO would wait for a writer (forever, with
    /// the store locked), opening a device could act on it.
    pub(super) fn read(&self, rel: &str) -> io::Result<std::fs::File> {
        let resolve =
            ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV;
        let path = openat2(&self.root, rel, how(OFlag::O_PATH, resolve))?;
        let st = nix::sys::stat::fstat(&path)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        // Reopened through the descriptor: the very file just looked at.
        std::fs::File::open(format!("/proc/self/fd/{}", path.as_raw_fd()))
    }

    /// Whether `rel` names a regular file (see [`Beneath::read`]).
    pub(super) fn is_file(&self, rel: &str) -> bool {
        self.read(rel).is_ok()
    }
}

/// Reopens the directory `dir` (an `O_PATH` descriptor) for reading, so that its mode, owner,
/// times and extended attributes can be set through the descriptor.
pub(super) fn reopen_dir(dir: &OwnedFd) -> io::Result<OwnedFd> {
    Ok(openat2(dir, ".", how(OFlag::O_RDONLY | OFlag::O_DIRECTORY, step()))?)
}

/// Opens the directory `name` in `parent` for reading, never through a link.
pub(super) fn open_child_dir(parent: &OwnedFd, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(openat2(parent, name, how(OFlag::O_RDONLY | OFlag::O_DIRECTORY, step()))?)
}
