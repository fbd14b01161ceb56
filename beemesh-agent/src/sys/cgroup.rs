//! Small cgroup2 helpers: find the unified hierarchy, name cgroups by id and level, move, kill
//! and remove them. Used by the pod lifecycle (create, populate, tear down workload cgroups) and
//! by the socket sweep, which matches `diag::TcpSocket::cgroup_id` against `cgroup_id`.
//!
//! All functions take absolute filesystem paths of cgroup directories (under the mount returned
//! by [`cgroup2_mount`]) and report failures as `std::io::Error`; failures that are not syscall
//! errors are built from [`CgroupError`] and keep it as the inner error.

use std::fs;
use std::io::{self, ErrorKind};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

/// How long [`remove_cgroup_tree`] waits for a killed cgroup to empty. `cgroup.kill` is
/// asynchronous: tasks die as they return to user space, which can take a while for a task in an
/// uninterruptible sleep.
const EMPTY_TIMEOUT: Duration = Duration::from_secs(5);
const EMPTY_POLL: Duration = Duration::from_millis(10);

/// Failures of the helpers that are not plain syscall errors.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 mount in /proc/self/mounts")]
    NoCgroup2Mount,
    #[error("no cgroup v2 entry (0::) in /proc/self/cgroup")]
    NoV2Entry,
    #[error("malformed cgroup.events in {0}")]
    MalformedEvents(PathBuf),
    #[error("cgroup {path} still populated {waited:?} after cgroup.kill")]
    StillPopulated { path: PathBuf, waited: Duration },
}

impl From<CgroupError> for io::Error {
    fn from(e: CgroupError) -> Self {
        let kind = match e {
            CgroupError::NoCgroup2Mount | CgroupError::NoV2Entry => ErrorKind::NotFound,
            CgroupError::MalformedEvents(_) => ErrorKind::InvalidData,
            CgroupError::StillPopulated { .. } => ErrorKind::TimedOut,
        };
        io::Error::new(kind, e)
    }
}

/// The mount point of the cgroup2 (unified) hierarchy, from `/proc/self/mounts`. On a hybrid
/// host this is e.g. `/sys/fs/cgroup/unified`; on a pure v2 host `/sys/fs/cgroup`. If it is
/// mounted several times the first mount wins.
pub fn cgroup2_mount() -> io::Result<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts")?;
    parse_cgroup2_mount(&mounts).ok_or_else(|| CgroupError::NoCgroup2Mount.into())
}

fn parse_cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_ascii_whitespace();
        let (_source, target, fstype) = (fields.next()?, fields.next()?, fields.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount_field(target)))
    })
}

/// `/proc/self/mounts` escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')));
        match octal.and_then(|v| u8::try_from(v).ok()) {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 id of the cgroup directory at `path`: what `bpf_get_current_cgroup_id()`,
/// `bpf_skb_cgroup_id()` and the `INET_DIAG_CGROUP_ID` socket attribute report.
///
/// The kernel's `cgroup_id()` is the kernfs node id of the cgroup directory, and on 64-bit
/// kernels kernfs uses that id as the inode number (`kernfs_id_ino()`), so the id is the
/// directory's `st_ino`. The root cgroup has id 1. The tests check this against the kernfs file
/// handle from `name_to_handle_at` and against the id the kernel puts on sockets.
pub fn cgroup_id(path: &Path) -> io::Result<u64> {
    let meta = fs::metadata(path)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not a cgroup directory", path.display()),
        ));
    }
    Ok(meta.ino())
}

/// The cgroup2 level of `path` (the hierarchy root is 0, its children 1, ...), as used by
/// `bpf_skb_ancestor_cgroup_id()` / `bpf_get_current_ancestor_cgroup_id()`.
///
/// Purely lexical: `path` is stripped of `mount` if it starts with it; otherwise it is taken as
/// a path relative to the hierarchy root (such as the `0::/a/b` path of `/proc/<pid>/cgroup`).
/// `..` components step back up (never below 0). Note that inside a cgroup namespace
/// `/proc/self/cgroup` paths are relative to the namespace root, not to the real root.
pub fn cgroup_level(mount: &Path, path: &Path) -> usize {
    let rel = path.strip_prefix(mount).unwrap_or(path);
    rel.components().fold(0usize, |level, c| match c {
        Component::Normal(_) => level + 1,
        Component::ParentDir => level.saturating_sub(1),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => level,
    })
}

/// The absolute path of this process's cgroup in the v2 hierarchy: the `0::/...` line of
/// `/proc/self/cgroup` joined onto [`cgroup2_mount`].
pub fn own_cgroup_path() -> io::Result<PathBuf> {
    let mount = cgroup2_mount()?;
    let content = fs::read_to_string("/proc/self/cgroup")?;
    let rel = parse_v2_entry(&content).ok_or(CgroupError::NoV2Entry)?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

fn parse_v2_entry(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// This process's cgroup in the v1 hierarchy of `controller` (memory, cpu, pids): the
/// controller's mount point (from `/proc/self/mountinfo`) joined with our path in it (from
/// `/proc/self/cgroup`). `None` when the controller is not mounted as cgroup v1.
pub fn own_v1_path(controller: &str) -> io::Result<Option<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let cgroups = fs::read_to_string("/proc/self/cgroup")?;
    Ok(parse_v1_path(&mountinfo, &cgroups, controller))
}

fn parse_v1_path(mountinfo: &str, proc_cgroup: &str, controller: &str) -> Option<PathBuf> {
    let has = |list: &str| list.split(',').any(|c| c == controller);
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split_whitespace();
        let (fstype, _source, options) = (r.next()?, r.next()?, r.next()?);
        (fstype == "cgroup" && has(options))
            .then(|| left.split_whitespace().nth(4).map(unescape_mount_field))?
    })?;
    let rel = proc_cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_id, list, path) = (f.next()?, f.next()?, f.next()?);
        has(list).then_some(path)
    })?;
    Some(Path::new(&mount).join(rel.trim_start_matches('/')))
}

/// Removes a cgroup v1 directory tree (deepest first); its processes must be gone.
pub fn remove_v1_tree(path: &Path) -> io::Result<()> {
    remove_depth_first(path)
}

/// Kills every process in the cgroup and its descendants (`cgroup.kill`, Linux 5.14+). The kill
/// is asynchronous: wait for [`is_populated`] to turn false before removing the cgroup.
pub fn kill_cgroup(path: &Path) -> io::Result<()> {
    fs::write(path.join("cgroup.kill"), b"1")
}

/// Whether the cgroup or any descendant still holds a live process (`populated` in
/// `cgroup.events`).
pub fn is_populated(path: &Path) -> io::Result<bool> {
    let events_path = path.join("cgroup.events");
    let events = fs::read_to_string(&events_path)?;
    parse_populated(&events).ok_or_else(|| CgroupError::MalformedEvents(events_path).into())
}

fn parse_populated(events: &str) -> Option<bool> {
    events.lines().find_map(|l| match l.strip_prefix("populated ")? {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    })
}

/// Moves process `pid` (all its threads) into the cgroup.
pub fn move_pid(path: &Path, pid: u32) -> io::Result<()> {
    fs::write(path.join("cgroup.procs"), pid.to_string())
}

/// Removes the cgroup at `path` and all its descendants, deepest first. Only `rmdir`: the
/// interface files go with their directory. A populated cgroup is killed first and waited for
/// (bounded by [`EMPTY_TIMEOUT`]); a tree that is already gone is not an error.
pub fn remove_cgroup_tree(path: &Path) -> io::Result<()> {
    match is_populated(path) {
        Ok(true) => {
            kill_cgroup(path)?;
            wait_empty(path)?;
        }
        Ok(false) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    remove_depth_first(path)
}

fn wait_empty(path: &Path) -> io::Result<()> {
    let start = Instant::now();
    while is_populated(path)? {
        if start.elapsed() >= EMPTY_TIMEOUT {
            return Err(CgroupError::StillPopulated { path: path.to_owned(), waited: start.elapsed() }.into());
        }
        thread::sleep(EMPTY_POLL);
    }
    Ok(())
}

fn remove_depth_first(path: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        // Child cgroups are the only directories in a cgroup directory.
        if entry.file_type()?.is_dir() {
            remove_depth_first(&entry.path())?;
        }
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_among_v1_mounts() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/uni\\040fied cgroup2 rw 0 0\n";
        assert_eq!(parse_cgroup2_mount(mounts), Some(PathBuf::from("/sys/fs/cgroup/uni fied")));
        assert_eq!(parse_cgroup2_mount("proc /proc proc rw 0 0\n"), None);
        assert_eq!(unescape_mount_field("a\\\\b\\09"), "a\\\\b\\09");
        assert_eq!(unescape_mount_field("a\\134b"), "a\\b");
    }

    #[test]
    fn finds_v1_controller_paths() {
        let mountinfo = "35 27 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
            36 27 0:31 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n\
            37 27 0:32 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n";
        let proc_cgroup = "0::/agent\n4:memory:/system.slice/beemesh.service\n3:cpu,cpuacct:/\n";
        assert_eq!(
            parse_v1_path(mountinfo, proc_cgroup, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/system.slice/beemesh.service"))
        );
        assert_eq!(
            parse_v1_path(mountinfo, proc_cgroup, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(parse_v1_path(mountinfo, proc_cgroup, "pids"), None);
    }

    #[test]
    fn parses_proc_cgroup_and_events() {
        assert_eq!(parse_v2_entry("4:memory:/x\n0::/a/b\n"), Some("/a/b"));
        assert_eq!(parse_v2_entry("4:memory:/x\n"), None);
        assert_eq!(parse_populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(parse_populated("populated 0\nfrozen 0\n"), Some(false));
        assert_eq!(parse_populated("frozen 0\n"), None);
    }

    #[test]
    fn levels_count_from_the_root() {
        let m = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(cgroup_level(m, m), 0);
        assert_eq!(cgroup_level(m, &m.join("a")), 1);
        assert_eq!(cgroup_level(m, &m.join("a/b/")), 2);
        assert_eq!(cgroup_level(m, Path::new("/")), 0);
        assert_eq!(cgroup_level(m, Path::new("/a/b/c")), 3);
    }

    /// `cgroup_id` (the inode number) must equal the kernfs id the kernel hands out as the
    /// cgroup's file handle (`FILEID_KERNFS`, an 8-byte `u64`): the same value as
    /// `cgroup_id()` in the kernel, which `bpf_get_current_cgroup_id()` returns.
    #[test]
    fn cgroup_id_matches_kernfs_file_handle() {
        let mount = cgroup2_mount().expect("cgroup2 must be mounted");
        let dir = mount.join(format!("beemesh-cgidtest-{}", std::process::id()));
        fs::create_dir(&dir).expect("mkdir cgroup (run the tests as root)");
        let ids = [&mount, &dir].map(|p| (cgroup_id(p).expect("cgroup_id"), handle_id(p)));
        fs::remove_dir(&dir).expect("rmdir cgroup");
        for (ino, handle) in ids {
            assert_eq!(ino, handle);
        }
    }

    /// The kernfs file handle of `path`, as the kernel's `u64` cgroup id.
    fn handle_id(path: &Path) -> u64 {
        use std::os::unix::ffi::OsStrExt;
        // linux/exportfs.h: FILEID_KERNFS
        const FILEID_KERNFS: i32 = 0xfe;
        #[repr(C)]
        struct Handle {
            handle_bytes: u32,
            handle_type: i32,
            f_handle: [u8; 64],
        }
        let cpath = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in path");
        let mut handle = Handle { handle_bytes: 64, handle_type: 0, f_handle: [0; 64] };
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `cpath` is NUL-terminated; `handle` is a `struct file_handle` header followed by
        // `handle_bytes` (64) bytes of storage, as name_to_handle_at(2) requires; `mount_id` is a
        // valid `int` out-pointer. All outlive the call.
        let rc = unsafe {
            libc::name_to_handle_at(
                libc::AT_FDCWD,
                cpath.as_ptr(),
                (&mut handle as *mut Handle).cast::<libc::file_handle>(),
                &mut mount_id,
                0,
            )
        };
        assert_eq!(rc, 0, "name_to_handle_at: {}", io::Error::last_os_error());
        assert_eq!(handle.handle_type, FILEID_KERNFS);
        assert_eq!(handle.handle_bytes, 8);
        let mut id = [0u8; 8];
        id.copy_from_slice(&handle.f_handle[..8]);
        u64::from_ne_bytes(id)
    }

    /// Real kernel, as root: create, populate, kill and remove a small tree.
    #[test]
    fn tree_lifecycle_on_the_real_hierarchy() {
        let mount = cgroup2_mount().expect("cgroup2 must be mounted");
        let own = own_cgroup_path().expect("own cgroup");
        assert!(own.starts_with(&mount), "{own:?} not under {mount:?}");
        assert_eq!(cgroup_id(&mount).expect("root id"), 1, "root cgroup id is 1");

        let top = mount.join(format!("beemesh-cgtest-{}", std::process::id()));
        let leaf = top.join("a/b");
        fs::create_dir_all(&leaf).expect("mkdir cgroups (run the tests as root)");
        assert_eq!(cgroup_level(&mount, &leaf), 3);
        assert!(!is_populated(&top).expect("events"));

        let mut child = std::process::Command::new("sleep").arg("60").spawn().expect("spawn sleep");
        move_pid(&leaf, child.id()).expect("move into leaf");
        assert!(is_populated(&top).expect("events"));

        let removed = remove_cgroup_tree(&top);
        let status = child.wait().expect("reap sleep");
        removed.expect("remove tree");
        assert!(!status.success(), "sleep was killed");
        assert!(!top.exists());
        remove_cgroup_tree(&top).expect("removing a gone tree is fine");
    }
}
