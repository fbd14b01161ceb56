//! Tree removal: links not followed, mounts not crossed, deep trees removed with few open
//! descriptors and a small stack.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::remove_tree;

#[test]
fn removes_everything_but_what_links_point_to() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("tmp");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("keep"), "x").expect("write");
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b/c")).expect("mkdir");
    std::fs::write(tree.join("a/b/c/f"), "x").expect("write");
    std::fs::write(tree.join("a/g"), "x").expect("write");
    std::os::unix::fs::symlink(&outside, tree.join("a/b/link")).expect("symlink");
    nix::unistd::mkfifo(&tree.join("a/fifo"), Mode::from_bits_truncate(0o600)).expect("mkfifo");
    // A directory its owner locked: root removes it all the same.
    std::fs::create_dir_all(tree.join("locked/inner")).expect("mkdir");
    std::fs::set_permissions(tree.join("locked"), std::fs::Permissions::from_mode(0o000)).expect("chmod");
    remove_tree(&tree).expect("remove");
    assert!(!tree.exists());
    assert!(outside.join("keep").is_file(), "a link's target was removed");
    // Missing: nothing to do. A link: the link goes, not its target.
    remove_tree(&tree).expect("missing is fine");
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&outside, &link).expect("symlink");
    remove_tree(&link).expect("remove the link");
    assert!(link.symlink_metadata().is_err() && outside.join("keep").is_file());
}

/// Root: a mount point inside the tree is not crossed; the rest of the tree goes and the
/// error names the mount point.
#[test]
fn stops_at_mount_points() {
    let tmp = tempfile::tempdir().expect("tmp");
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).expect("mkdir");
    std::fs::write(other.join("keep"), "x").expect("write");
    let tree = tmp.path().join("tree");
    std::fs::create_dir_all(tree.join("d/m")).expect("mkdir");
    std::fs::write(tree.join("d/f"), "x").expect("write");
    std::fs::create_dir_all(tree.join("e/deeper")).expect("mkdir");
    nix::mount::mount(
        Some(&other),
        &tree.join("d/m"),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .expect("bind mount");
    let result = remove_tree(&tree);
    let mounted = tree.join("d/m").join("keep").is_file();
    nix::mount::umount2(&tree.join("d/m"), nix::mount::MntFlags::MNT_DETACH).expect("umount");
    let e = result.expect_err("a mount point inside").to_string();
    assert!(e.contains("d/m") && e.contains("mount point"), "{e}");
    assert!(mounted, "removed through the mount");
    assert!(other.join("keep").is_file());
    assert!(!tree.join("d/f").exists() && !tree.join("e").exists(), "the rest stays");
    remove_tree(&tree).expect("remove once unmounted");
    assert!(!tree.exists());
}

fn open_dir(parent: &OwnedFd, name: &str) -> OwnedFd {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(parent, OsStr::new(name), flags, Mode::empty()).expect("open")
}

/// Builds a chain of `depth` directories `a/a/...` under `dir` with one descriptor at a time
/// (the path is far longer than PATH_MAX).
fn deep_tree(dir: &Path, depth: usize) {
    let mut fd = nix::fcntl::open(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).expect("open");
    for _ in 0..depth {
        nix::sys::stat::mkdirat(&fd, "a", Mode::from_bits_truncate(0o755)).expect("mkdirat");
        nix::unistd::mkfifoat(&fd, "p", Mode::from_bits_truncate(0o600)).expect("mkfifoat");
        fd = open_dir(&fd, "a");
    }
}

const DEPTH: usize = 5000;

/// Run by [`deep_trees_go_with_few_descriptors_and_a_small_stack`] in a child process whose
/// descriptors and stack are small; does nothing in the ordinary test run.
#[test]
fn deep_tree_child() {
    let Some(dir) = std::env::var_os("BEEMESH_TREE_CHILD") else { return };
    let tree = Path::new(&dir).join("tree");
    std::fs::create_dir(&tree).expect("mkdir");
    deep_tree(&tree, DEPTH);
    remove_tree(&tree).expect("remove the deep tree");
    assert!(!tree.exists());
}

/// A tree deeper than the process may open descriptors (64) is removed on a 256 KiB stack.
#[test]
fn deep_trees_go_with_few_descriptors_and_a_small_stack() {
    let tmp = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new("prlimit")
        .arg("--nofile=64")
        .arg(std::env::current_exe().expect("test binary"))
        .args(["--exact", "sys::tree::tests::deep_tree_child", "--test-threads=1", "--nocapture"])
        .env("BEEMESH_TREE_CHILD", tmp.path())
        .env("RUST_MIN_STACK", (256 << 10).to_string())
        .output()
        .expect("run prlimit (util-linux)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
    assert!(!tmp.path().join("tree").exists());
}
