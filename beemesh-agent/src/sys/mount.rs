//! The new mount API (`open_tree`, `mount_setattr`, `move_mount`), which neither nix 0.30 nor
//! util-linux 2.38 offer. `pod::rootfs` uses it to show a shared image layer to one pod with
//! the owners shifted into the pod's id range, without copying or chowning the layer;
//! `pod::sandbox` to make a hostPath volume's mount from a descriptor the agent opened and
//! checked, which pod init attaches in the container (`move_tree`).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Mounts a copy of directory `source` at `target` with its owners mapped through the user
/// namespace `userns` (an open `/proc/<pid>/ns/user`): a file owned by 0 shows as the host id
/// that namespace maps 0 to. `read_only` also makes the mount read-only.
pub fn bind_idmapped(source: &Path, target: &Path, userns: &impl AsRawFd, read_only: bool) -> io::Result<()> {
    let (src, dst) = (c_path(source)?, c_path(target)?);
    let flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    // SAFETY: `src` is NUL-terminated and outlives the call; open_tree returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, src.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_IDMAP | if read_only { libc::MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: the path is an empty NUL-terminated string (AT_EMPTY_PATH: the fd itself), and
    // `attr` is a valid mount_attr whose size is passed; both outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both paths are NUL-terminated and outlive the call; the detached tree is
    // attached at `target` (or stays detached and goes with the fd on error).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A detached copy of the mount tree at `fd` (an open file or directory, submounts
/// included), `nosuid` and `nodev` and, if `read_only`, read-only throughout: a mount to
/// hand to a pod, which attaches it with [`move_tree`] wherever it likes but can no longer
/// pick what it shows.
pub fn clone_tree(fd: &impl AsFd, read_only: bool) -> io::Result<OwnedFd> {
    let flags = libc::OPEN_TREE_CLONE
        | libc::OPEN_TREE_CLOEXEC
        | libc::AT_EMPTY_PATH as libc::c_uint
        | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: the descriptor is borrowed for the call and the path is an empty NUL-terminated
    // string (AT_EMPTY_PATH: the descriptor itself); open_tree returns a new fd or -1.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_fd().as_raw_fd(), c"".as_ptr(), flags) };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor and nothing else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let mut attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_NOSUID
            | libc::MOUNT_ATTR_NODEV
            | if read_only { libc::MOUNT_ATTR_RDONLY } else { 0 },
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: as in `bind_idmapped`: an empty path with AT_EMPTY_PATH, a valid mount_attr
    // and its size, all outliving the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_RECURSIVE,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Attaches the detached mount `tree` ([`clone_tree`]) onto the file or directory `target`
/// (an open descriptor: no path is resolved again).
pub fn move_tree(tree: &impl AsFd, target: &impl AsFd) -> io::Result<()> {
    // SAFETY: both descriptors are borrowed for the call; both paths are empty
    // NUL-terminated strings, meaning the descriptors themselves.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_fd().as_raw_fd(),
            c"".as_ptr(),
            target.as_fd().as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts everything stacked at `path` (lazily: MNT_DETACH); not mounted is fine.
pub fn unmount_all(path: &Path) -> io::Result<()> {
    // A bounded number of layers: a mount stacked over and over is an error, not a loop.
    for _ in 0..16 {
        match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(format!("{}: still mounted after 16 unmounts", path.display())))
}
