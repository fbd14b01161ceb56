//! The host side of a pod, as the agent builds it: the pod's directory (logs, volumes,
//! container roots, /etc files), its cgroup v1 limits, its init process and slirp4netns, and
//! each container's start specification. Blocking file-system and process calls; the agent
//! actor (`app::pods`) decides when to make them.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::dns::DnsPlan;
use super::proto::{BindMount, ContainerSpec};
use super::security;
use super::spec::{ContainerPlan, Objects, PodPlan, VolumePlan};
use super::userns::IdMap;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("volume {volume:?}: {reason}")]
    Volume { volume: String, reason: String },
    #[error("pod init: {0}")]
    Init(String),
    #[error("cannot remove what an earlier pod of this name left: {0}")]
    Leftover(String),
    #[error(
        "{path} (mode {mode:o}) is not searchable by other users: pods with their own id range \
         reach their files through it (make it 0711 or 0755)"
    )]
    Unreachable { path: PathBuf, mode: u32 },
    /// The container's settings cannot be honoured (runAsNonRoot, a seccomp profile).
    #[error("{0}")]
    Config(String),
}

/// Gives `paths` to the pod's root (host id `ids.root()`, uid and gid), not following links;
/// nothing to do for a pod whose ids are the host's.
pub fn give_to_pod(paths: &[PathBuf], ids: IdMap) -> Result<(), SandboxError> {
    if ids.is_identity() {
        return Ok(());
    }
    for p in paths {
        std::os::unix::fs::lchown(p, Some(ids.root()), Some(ids.root())).map_err(io_err("chown", p))?;
    }
    Ok(())
}

/// [`give_to_pod`] for `dir` and everything in it.
fn give_tree_to_pod(dir: &Path, ids: IdMap) -> Result<(), SandboxError> {
    give_to_pod(&[dir.to_path_buf()], ids)?;
    for e in std::fs::read_dir(dir).map_err(io_err("read", dir))? {
        let path = e.map_err(io_err("read", dir))?.path();
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            give_tree_to_pod(&path, ids)?;
        } else {
            give_to_pod(&[path], ids)?;
        }
    }
    Ok(())
}

/// Makes a claim's volume `dir` the pod's: created on first use (mode 0777, its root the
/// pod's root, as an emptyDir), and when an earlier pod with another id range used it, every
/// file's owner moved from that range to this pod's, in-pod ids kept (so data written by a
/// pod's uid 999 is uid 999's again in the next pod). The range last used is kept beside the
/// directory (`<claim>.ids`).
fn claim_for_pod(dir: &Path, ids: IdMap) -> Result<(), SandboxError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let record = dir.with_extension("ids");
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
            .map_err(io_err("chmod", dir))?;
        give_to_pod(&[dir.to_path_buf()], ids)?;
    } else if !ids.is_identity() {
        let before: Option<u32> = std::fs::read_to_string(&record).ok().and_then(|s| s.trim().parse().ok());
        if let Some(old) = before.filter(|b| *b != ids.host) {
            let shift = |id: u32| match id.checked_sub(old) {
                Some(off) if off < ids.count => ids.host + off,
                _ => id,
            };
            let mut stack = vec![dir.to_path_buf()];
            while let Some(p) = stack.pop() {
                let m = std::fs::symlink_metadata(&p).map_err(io_err("stat", &p))?;
                std::os::unix::fs::lchown(&p, Some(shift(m.uid())), Some(shift(m.gid())))
                    .map_err(io_err("chown", &p))?;
                if m.is_dir() {
                    for e in std::fs::read_dir(&p).map_err(io_err("read", &p))? {
                        stack.push(e.map_err(io_err("read", &p))?.path());
                    }
                }
            }
        }
    }
    if !ids.is_identity() {
        std::fs::write(&record, ids.host.to_string()).map_err(io_err("write", &record))?;
    }
    Ok(())
}

/// The kubelet's bounds on a termination message: from the file, and from the log.
const TERMINATION_MESSAGE_MAX: u64 = 4096;
const LOG_FALLBACK_MAX: u64 = 2048;
const LOG_FALLBACK_LINES: usize = 80;

/// Opens a file the pod may have written without following a link or blocking on a FIFO.
fn open_plain(path: &Path) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    file.metadata().ok().filter(std::fs::Metadata::is_file).map(|_| file)
}

/// The first `max` bytes of `path` (nothing if it cannot be read).
fn read_head(path: &Path, max: u64) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if let Some(f) = open_plain(path) {
        let _ = f.take(max).read_to_end(&mut out);
    }
    out
}

/// The last `max` bytes of `path` (nothing if it cannot be read).
fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut out = Vec::new();
    if let Some(mut f) = open_plain(path) {
        let len = f.metadata().map_or(0, |m| m.len());
        if f.seek(SeekFrom::Start(len.saturating_sub(max))).is_ok() {
            let _ = f.take(max).read_to_end(&mut out);
        }
    }
    out
}

/// Every directory above `dir` must let other users through (search permission): a pod's
/// processes (host ids of its own range) open the container root, logs and volumes by path.
fn check_reachable(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    for a in dir.ancestors().skip(1) {
        let mode = std::fs::metadata(a).map_err(io_err("stat", a))?.permissions().mode();
        if mode & 0o001 == 0 {
            return Err(SandboxError::Unreachable { path: a.to_path_buf(), mode: mode & 0o7777 });
        }
    }
    Ok(())
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SandboxError {
    let path = path.to_path_buf();
    move |source| SandboxError::Io { what, path, source }
}

/// Where containers find their pod's X.509 SVID (`svid.pem`, `svid_key.pem`, `bundle.pem`).
pub const SVID_MOUNT: &str = "/var/run/secrets/beemesh.io";

/// Where a pod's files live: `<state-dir>/pods/<workload>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(state_dir: &Path, workload: &str) -> Self {
        Self { dir: state_dir.join("pods").join(workload) }
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join(super::init::SOCKET)
    }
    pub fn slirp_api(&self) -> PathBuf {
        self.dir.join("slirp.sock")
    }
    pub fn log(&self, container: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{container}.log"))
    }
    /// The tail of the live log when it was last cut to `containerLogMaxBytes` (`pod::logs`).
    pub fn rotated_log(&self, container: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{container}.log.1"))
    }
    /// The log of the container's previous run (`logs --previous`).
    /// The file bound at the container's `terminationMessagePath`, new for every run.
    pub fn termination_file(&self, container: &str) -> PathBuf {
        self.dir.join("termination").join(container)
    }

    /// A run's termination message, as the kubelet reads it: at most 4 KiB of what the
    /// container left in its termination file; when that is empty, the run failed and
    /// `from_logs` (`FallbackToLogsOnError`), the last 80 lines (at most 2 KiB) of its log.
    pub fn termination_message(&self, plan: &ContainerPlan, exit_code: i32) -> Option<String> {
        let message = read_head(&self.termination_file(&plan.name), TERMINATION_MESSAGE_MAX);
        if !message.is_empty() {
            return Some(String::from_utf8_lossy(&message).into_owned());
        }
        if !plan.termination_message_from_logs || exit_code == 0 {
            return None;
        }
        let tail = read_tail(&self.log(&plan.name), LOG_FALLBACK_MAX);
        let text = String::from_utf8_lossy(&tail);
        let lines: Vec<&str> = text.lines().collect();
        let kept = lines[lines.len().saturating_sub(LOG_FALLBACK_LINES)..].join("\n");
        (!kept.is_empty()).then_some(kept)
    }

    pub fn previous_log(&self, container: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{container}.previous.log"))
    }
    pub fn container(&self, container: &str) -> PathBuf {
        self.dir.join("containers").join(container)
    }
    pub fn volume(&self, volume: &str) -> PathBuf {
        self.dir.join("volumes").join(volume)
    }
    /// A claim's local volume: `<state-dir>/volumes/<namespace>/<claim>` (beside `pods/`, so
    /// it outlives the pod).
    pub fn claim(&self, namespace: &str, claim: &str) -> PathBuf {
        let state = self.dir.parent().and_then(Path::parent).unwrap_or(&self.dir);
        state.join("volumes").join(namespace).join(claim)
    }
    fn etc(&self, file: &str) -> PathBuf {
        self.dir.join("etc").join(file)
    }
    /// The pod's X.509 SVID, key and trust bundle, mounted read-only into every container at
    /// [`SVID_MOUNT`].
    pub fn svid_dir(&self) -> PathBuf {
        self.dir.join("svid")
    }

    /// Writes (or renews) the pod's SVID files, each replaced atomically so a reader never
    /// sees half a file or a certificate with the wrong key for long.
    pub fn write_svid(&self, cert_pem: &str, key_pem: &str, bundle_pem: &str) -> Result<(), SandboxError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.svid_dir();
        std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .map_err(io_err("chmod", &dir))?;
        // The key before the certificate: a workload that reloads on a new certificate
        // finds its key already there.
        for (name, text) in [("svid_key.pem", key_pem), ("bundle.pem", bundle_pem), ("svid.pem", cert_pem)] {
            let (tmp, path) = (dir.join(format!(".{name}.tmp")), dir.join(name));
            std::fs::write(&tmp, text).map_err(io_err("write", &tmp))?;
            // Readable by every user of the pod (containers may run as any uid); the pod
            // directory above is root-only on the host.
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
                .map_err(io_err("chmod", &tmp))?;
            std::fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        }
        Ok(())
    }

    /// Creates the directories and the pod's /etc/hosts, /etc/hostname and /etc/resolv.conf
    /// (`pod::dns`: slirp4netns takes DNS at 10.0.2.3, where the kernel sends it on to the
    /// agent's resolver; the search domains are Kubernetes' for a pod in `namespace`, then
    /// the host's; the pod's own address is 10.0.2.100).
    ///
    /// The pod directory is root's, mode 0700, or, for a pod with its own id range, group
    /// `ids.root()` with mode 0710: the pod's root may pass through it (to its container
    /// roots, logs, volumes, /etc files and SVID) but not list or change it, and other host
    /// users may not enter at all (volumes hold Secrets, the SVID directory its key). What
    /// the pod writes (logs, /etc files) belongs to the pod's root.
    pub fn create(
        &self,
        hostname: &str,
        namespace: &str,
        dns: &DnsPlan,
        ids: IdMap,
    ) -> Result<(), SandboxError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let pods = self.dir.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(pods).map_err(io_err("create", pods))?;
        if !ids.is_identity() {
            std::fs::set_permissions(pods, std::fs::Permissions::from_mode(0o711))
                .map_err(io_err("chmod", pods))?;
            check_reachable(&self.dir)?;
        }
        // A new pod starts from nothing: what a pod of the same name left (emptyDir data,
        // Secrets) is removed first, and a directory that cannot be is an error.
        crate::sys::tree::remove_tree(&self.dir).map_err(|e| SandboxError::Leftover(e.to_string()))?;
        std::fs::DirBuilder::new().mode(0o700).create(&self.dir).map_err(io_err("create", &self.dir))?;
        if !ids.is_identity() {
            std::os::unix::fs::chown(&self.dir, Some(0), Some(ids.root()))
                .map_err(io_err("chown", &self.dir))?;
            std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o710))
                .map_err(io_err("chmod", &self.dir))?;
        }
        for d in ["logs", "containers", "volumes", "etc"] {
            let p = self.dir.join(d);
            std::fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        // Container processes create their log files.
        give_to_pod(&[self.dir.join("logs")], ids)?;
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let files = [
            ("hosts", dns.hosts(hostname, namespace)),
            ("hostname", format!("{hostname}\n")),
            ("resolv.conf", dns.resolv_conf(namespace, &host_resolv)),
        ];
        for (name, text) in files {
            let p = self.etc(name);
            std::fs::write(&p, text).map_err(io_err("write", &p))?;
            give_to_pod(&[p], ids)?;
        }
        Ok(())
    }

    /// Writes the pod's volumes: emptyDir directories, configMap, secret, downwardAPI and
    /// projected files (all the
    /// pod's root's, group-owned by the pod's fsGroup if it has one); checks hostPath volumes
    /// against the agent's `rules` (again: a link may have changed since apply) and by their
    /// type (their files keep their host owners: ids outside the pod's range show as `nobody`).
    pub fn prepare_volumes(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
        plan: &PodPlan,
        objects: &dyn Objects,
        ids: IdMap,
        rules: &security::Rules,
    ) -> Result<(), SandboxError> {
        use std::os::unix::fs::PermissionsExt;
        for (name, volume) in &plan.volumes {
            let dir = self.volume(name);
            let bad = |reason: String| SandboxError::Volume { volume: name.clone(), reason };
            match volume {
                VolumePlan::EmptyDir { .. } => {
                    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                        .map_err(io_err("chmod", &dir))?;
                    give_to_pod(std::slice::from_ref(&dir), ids)?;
                    if let Some(gid) = plan.fs_group {
                        group_own(&dir, host_gid(ids, gid)?, true)?;
                    }
                }
                VolumePlan::ConfigMap { .. } | VolumePlan::Secret { .. } | VolumePlan::Projected { .. } => {
                    let files = match volume {
                        VolumePlan::Projected { sources, default_mode } => {
                            super::spec::projected_files(pod, name, sources, *default_mode, objects)
                        }
                        _ => super::spec::volume_files(&plan.namespace, name, volume, objects),
                    }
                    .map_err(|e| bad(e.to_string()))?;
                    crate::sys::tree::remove_tree(&dir).map_err(io_err("clear", &dir))?;
                    std::fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
                    for f in files {
                        let path = dir.join(&f.path);
                        if let Some(parent) = path.parent() {
                            std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                        }
                        std::fs::write(&path, &f.data).map_err(io_err("write", &path))?;
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))
                            .map_err(io_err("chmod", &path))?;
                    }
                    // The file modes apply to the pod's root as their owner (as in Kubernetes).
                    give_tree_to_pod(&dir, ids)?;
                    if let Some(gid) = plan.fs_group {
                        group_own(&dir, host_gid(ids, gid)?, false)?;
                    }
                }
                VolumePlan::Claim { claim, .. } => {
                    let dir = self.claim(&plan.namespace, claim);
                    claim_for_pod(&dir, ids)?;
                    if let Some(gid) = plan.fs_group {
                        group_own(&dir, host_gid(ids, gid)?, true)?;
                    }
                }
                VolumePlan::HostPath { path, kind } => {
                    // Checked (and created, for the *OrCreate types) here and again at every
                    // container start, each time through descriptors (`open_host_path`).
                    let resolved = security::resolve_host_path(Path::new(path));
                    security::check_host_path(&resolved, rules).map_err(bad)?;
                    if kind.as_deref().is_some_and(|k| !k.is_empty()) {
                        open_host_path(path, kind.as_deref(), rules).map_err(bad)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves the container's last log aside (`logs --previous`) before a new run writes.
    pub fn rotate_log(&self, container: &str) {
        let _ = std::fs::rename(self.log(container), self.previous_log(container));
    }

    /// The start specification of one container run, with the mounts of its hostPath
    /// volumes (`from_fd` bind mounts, in order): each hostPath is resolved and checked
    /// against `rules` again now (a link may have appeared since apply), opened without
    /// following links, and handed over as a detached `nosuid,nodev` mount the agent made,
    /// so neither the pod's ids (which may not traverse the host directories above it) nor a
    /// path resolved later decides what the container gets.
    pub fn container_spec(
        &self,
        pod: &PodPlan,
        plan: &ContainerPlan,
        run: u64,
        rootfs: &Path,
        (cgroups, cgroup2): (Vec<PathBuf>, PathBuf),
        rules: &security::Rules,
    ) -> Result<(ContainerSpec, Vec<OwnedFd>), SandboxError> {
        let svid = BindMount {
            source: self.svid_dir(),
            target: SVID_MOUNT.into(),
            read_only: true,
            sub_path: None,
            from_fd: false,
        };
        let mut mounts: Vec<BindMount> = ["hosts", "hostname", "resolv.conf"]
            .iter()
            .map(|f| BindMount {
                source: self.etc(f),
                target: format!("/etc/{f}"),
                read_only: false,
                sub_path: None,
                from_fd: false,
            })
            .chain(self.svid_dir().is_dir().then_some(svid))
            .collect();
        let mut trees = Vec::new();
        for m in &plan.mounts {
            let bad = |reason: String| SandboxError::Volume { volume: m.volume.clone(), reason };
            match pod.volumes.get(&m.volume) {
                None => return Err(bad("no such volume".into())),
                Some(VolumePlan::HostPath { path, kind }) => {
                    if trees.len() == crate::sys::MAX_FDS {
                        return Err(bad(format!("more than {} hostPath mounts", crate::sys::MAX_FDS)));
                    }
                    let (mut fd, resolved) = open_host_path(path, kind.as_deref(), rules).map_err(bad)?;
                    let mut shown = resolved;
                    if let Some(sub) = &m.sub_path {
                        fd = open_beneath(fd, sub).map_err(|e| bad(format!("subPath {sub}: {e}")))?;
                        shown.push(sub);
                    }
                    let tree = crate::sys::mount::clone_tree(&fd, m.read_only)
                        .map_err(|e| bad(format!("mount {}: {e}", shown.display())))?;
                    trees.push(tree);
                    mounts.push(BindMount {
                        source: shown,
                        target: m.target.clone(),
                        read_only: m.read_only,
                        sub_path: None,
                        from_fd: true,
                    });
                }
                Some(VolumePlan::Claim { claim, read_only }) => mounts.push(BindMount {
                    source: self.claim(&pod.namespace, claim),
                    target: m.target.clone(),
                    read_only: m.read_only || *read_only,
                    sub_path: m.sub_path.clone(),
                    from_fd: false,
                }),
                Some(_) => mounts.push(BindMount {
                    source: self.volume(&m.volume),
                    target: m.target.clone(),
                    read_only: m.read_only,
                    sub_path: m.sub_path.clone(),
                    from_fd: false,
                }),
            }
        }
        // A fresh termination file for this run, writable by any user of the pod (as the
        // kubelet makes it), bound over whatever the volumes put at its path.
        let termination = self.termination_file(&plan.name);
        if let Some(dir) = termination.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let _ = std::fs::remove_file(&termination);
        std::fs::write(&termination, b"").map_err(io_err("write", &termination))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&termination, std::fs::Permissions::from_mode(0o666))
                .map_err(io_err("chmod", &termination))?;
        }
        mounts.push(BindMount {
            source: termination,
            target: plan.termination_message_path.clone(),
            read_only: false,
            sub_path: None,
            from_fd: false,
        });
        let user_err = |reason: String| SandboxError::Volume { volume: "(image user)".into(), reason };
        let (image_uid, image_gid) = resolve_user(rootfs, &plan.user).map_err(user_err)?;
        let sec = &plan.security;
        // runAsUser replaces the image's user, and with it its group unless runAsGroup says.
        let uid = sec.run_as_user.unwrap_or(image_uid);
        let gid = match (sec.run_as_group, sec.run_as_user) {
            (Some(g), _) => g,
            (None, Some(u)) => primary_group(rootfs, u).map_err(user_err)?.unwrap_or(0),
            (None, None) => image_gid,
        };
        let pod_name = format!("{}_{}", pod.name, pod.namespace);
        if let Some(message) = security::non_root_error(uid, sec, &pod_name, &plan.name) {
            return Err(SandboxError::Config(message));
        }
        let security =
            security::spec_for(sec, &rules.seccomp_dir).map_err(|e| SandboxError::Config(e.to_string()))?;
        let spec = ContainerSpec {
            name: plan.name.clone(),
            run,
            argv: plan.argv.clone(),
            env: plan.env.clone(),
            cwd: plan.cwd.clone(),
            rootfs: rootfs.to_path_buf(),
            mounts,
            cgroups,
            cgroup2: Some(cgroup2),
            log: self.log(&plan.name),
            share_process_namespace: pod.share_process_namespace,
            stdin: plan.io.stdin,
            tty: plan.io.tty,
            uid,
            gid,
            security,
        };
        Ok((spec, trees))
    }
}

/// Opens hostPath volume `path` for pod creation or a container start. It is resolved (links
/// followed as far as it exists) and checked against `rules` now, then opened from `/`
/// without following any link: a link planted after the check makes the open fail, never
/// leads elsewhere. The `*OrCreate` types create what is missing (directories 0755, an
/// empty file 0644, as the kubelet does), each component under the descriptor of its parent
/// and never through a link. The result is checked against the `kind`; returns the
/// descriptor (O_PATH) and the resolved path.
pub fn open_host_path(
    path: &str,
    kind: Option<&str>,
    rules: &security::Rules,
) -> Result<(OwnedFd, PathBuf), String> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let resolved = security::resolve_host_path(Path::new(path));
    security::check_host_path(&resolved, rules)?;
    let shown = resolved.display();
    let kind = kind.unwrap_or("");
    let known =
        ["", "Directory", "DirectoryOrCreate", "File", "FileOrCreate", "Socket", "CharDevice", "BlockDevice"];
    if !known.contains(&kind) {
        return Err(format!("unknown hostPath type {kind:?}"));
    }
    let root: OwnedFd = std::fs::File::open("/").map_err(|e| format!("open /: {e}"))?.into();
    let rel = resolved.strip_prefix("/").unwrap_or(&resolved);
    let how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_BENEATH,
    );
    let fd = match openat2(&root, rel, how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) if matches!(kind, "DirectoryOrCreate" | "FileOrCreate") => {
            create_beneath(root, rel, kind == "FileOrCreate").map_err(|e| format!("create {shown}: {e}"))?
        }
        Err(nix::errno::Errno::ELOOP) => {
            return Err(format!("{shown}: a symbolic link appeared in the path after it was checked"))
        }
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    let meta = std::fs::File::from(fd.try_clone().map_err(|e| format!("{shown}: {e}"))?)
        .metadata()
        .map_err(|e| format!("{shown}: {e}"))?;
    check_kind(&meta, kind).map_err(|what| format!("{shown} is not a {what}"))?;
    Ok((fd, resolved))
}

/// Whether `meta` fits hostPath type `kind`; the wanted file type otherwise.
fn check_kind(meta: &std::fs::Metadata, kind: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let (ok, what) = match kind {
        "" => (true, ""),
        "Directory" | "DirectoryOrCreate" => (t.is_dir(), "directory"),
        "File" | "FileOrCreate" => (t.is_file(), "file"),
        "Socket" => (t.is_socket(), "socket"),
        "CharDevice" => (t.is_char_device(), "character device"),
        "BlockDevice" => (t.is_block_device(), "block device"),
        _ => (false, "known hostPath type"),
    };
    if ok {
        Ok(())
    } else {
        Err(what.to_owned())
    }
}

/// `rel` below the directory `dir`, created where missing (directories 0755; the last
/// component an empty file 0644 if `last_is_file`), one component at a time from the
/// descriptor of its parent, never through a link; an O_PATH descriptor.
fn create_beneath(mut dir: OwnedFd, rel: &Path, last_is_file: bool) -> io::Result<OwnedFd> {
    use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
    use nix::sys::stat::Mode;
    let names: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            std::path::Component::Normal(n) => Ok(n),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "only plain path components")),
        })
        .collect::<Result<_, _>>()?;
    for (i, name) in names.iter().enumerate() {
        let file = last_is_file && i + 1 == names.len();
        let created = if file {
            let flags =
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
            openat(&dir, *name, flags, Mode::from_bits_truncate(0o644)).map(drop)
        } else {
            nix::sys::stat::mkdirat(&dir, *name, Mode::from_bits_truncate(0o755))
        };
        match created {
            Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let flags = if file { OFlag::O_PATH } else { OFlag::O_PATH | OFlag::O_DIRECTORY };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        dir = openat2(&dir, *name, how)?;
    }
    Ok(dir)
}

/// `sub` inside directory `base` (a descriptor) as an O_PATH descriptor, created (as
/// directories) where missing, as Kubernetes does for a subPath. Walked one component at a
/// time from descriptors and refusing links, so whoever writes the volume can neither point
/// it outside nor make the caller create anything outside.
pub fn open_beneath(base: OwnedFd, sub: &str) -> io::Result<OwnedFd> {
    create_beneath(base, Path::new(sub), false)
}

/// The host gid of the pod's `gid` (an fsGroup), which must lie inside the pod's range.
fn host_gid(ids: IdMap, gid: u32) -> Result<u32, SandboxError> {
    ids.host_id(gid)
        .ok_or_else(|| SandboxError::Config(format!("fsGroup {gid} is outside the pod's {} ids", ids.count)))
}

/// Gives a volume to group `gid` (Kubernetes' fsGroup): every directory setgid, so what the
/// containers create inherits the group; a writable volume's directories group-writable,
/// files group-readable.
fn group_own(dir: &Path, gid: u32, writable: bool) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(dir).map_err(io_err("stat", dir))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(dir, None, Some(gid)).map_err(io_err("chown", dir))?;
    let mode = meta.permissions().mode() & 0o7777;
    let extra = match (meta.is_dir(), writable) {
        (true, true) => 0o2070,
        (true, false) => 0o2050,
        (false, true) => 0o060,
        (false, false) => 0o040,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | extra))
        .map_err(io_err("chmod", dir))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).map_err(io_err("read", dir))? {
            let entry = entry.map_err(io_err("read", dir))?;
            group_own(&entry.path(), gid, writable)?;
        }
    }
    Ok(())
}

/// Largest image file read to resolve a user (/etc/passwd, /etc/group).
const MAX_USER_FILE: u64 = 1 << 20;

/// The image's `/etc/<name>` in the container root `rootfs`, `None` if it is not there.
/// Opened from a descriptor of the root with every link resolved inside it (an image's
/// `etc -> /etc` is the image's own /etc, never the host's), without crossing into another
/// mount, without blocking (a FIFO opens at once, and is refused), and read only if it is a
/// regular file of at most 1 MiB: a hostile image can neither hang nor exhaust the agent.
fn read_image_file(rootfs: &Path, name: &str) -> Result<Option<String>, String> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    use std::io::Read;
    let shown = format!("the image's /etc/{name}");
    let root = std::fs::File::open(rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(
            ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV,
        );
    let fd = match openat2(&root, Path::new("etc").join(name).as_path(), how) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(format!("{shown}: {e}")),
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let mut data = Vec::new();
    file.take(MAX_USER_FILE + 1).read_to_end(&mut data).map_err(|e| format!("{shown}: {e}"))?;
    if data.len() as u64 > MAX_USER_FILE {
        return Err(format!("{shown} is larger than {MAX_USER_FILE} bytes"));
    }
    Ok(Some(String::from_utf8_lossy(&data).into_owned()))
}

/// The primary group of `uid` in the image's /etc/passwd, if it is there.
fn primary_group(rootfs: &Path, uid: u32) -> Result<Option<u32>, String> {
    let passwd = read_image_file(rootfs, "passwd")?.unwrap_or_default();
    Ok(passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[2].parse::<u32>().ok() == Some(uid)).then(|| f[3].parse().ok())?
    }))
}

/// The image's `User` (`uid`, `uid:gid`, `name` or `name:group`), looked up in the
/// container's own /etc/passwd and /etc/group ([`read_image_file`]); empty means root.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32), String> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let find = |file: &str, name: &str| -> Result<Option<(u32, Option<u32>)>, String> {
        let text = read_image_file(rootfs, file)?.unwrap_or_default();
        Ok(text.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok())))?
        }))
    };
    let (uid, primary) = match u.parse::<u32>() {
        Ok(n) => (n, None),
        Err(_) => {
            find("passwd", u)?.ok_or_else(|| format!("user {u:?} is not in the image's /etc/passwd"))?
        }
    };
    let gid = match g {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => find("group", g)?
                .map(|(n, _)| n)
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        },
        None => primary.unwrap_or(0),
    };
    Ok((uid, gid))
}

/// The cgroup v1 controllers (memory, cpu, pids) under the agent's own cgroups:
/// `<own>/<cgroup-name>/<workload>/<container>` per container.
#[derive(Clone, Debug, Default)]
pub struct Limits {
    bases: Vec<(&'static str, PathBuf)>,
}

/// Each container may fork this many processes at most.
pub const PIDS_MAX: u32 = 4096;

impl Limits {
    /// Finds the controllers; one that is not mounted as cgroup v1 is left out.
    pub fn discover(cgroup_name: &str) -> io::Result<Self> {
        let mut bases = Vec::new();
        for controller in ["memory", "cpu", "pids"] {
            if let Some(own) = crate::sys::cgroup::own_v1_path(controller)? {
                bases.push((controller, own.join(cgroup_name)));
            }
        }
        Ok(Self { bases })
    }

    fn dir(&self, controller: &str, workload: &str, container: &str) -> Option<PathBuf> {
        self.bases.iter().find(|(c, _)| *c == controller).map(|(_, b)| b.join(workload).join(container))
    }

    /// Fresh cgroups for a container run, with its limits written; returns the directories
    /// the container joins (their `cgroup.procs` the pod's root's, so it can join them).
    /// Fresh, so that the OOM kill counter counts this run only.
    pub fn prepare(
        &self,
        workload: &str,
        plan: &ContainerPlan,
        ids: IdMap,
    ) -> Result<Vec<PathBuf>, SandboxError> {
        let mut dirs = Vec::new();
        for (controller, base) in &self.bases {
            let dir = base.join(workload).join(&plan.name);
            // The last run's processes die asynchronously (cgroup.kill): wait for the group
            // to empty so the new run starts with fresh counters.
            for _ in 0..50 {
                match std::fs::remove_dir(&dir) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(2))
                    }
                    _ => break,
                }
            }
            std::fs::create_dir_all(&dir).map_err(io_err("create cgroup", &dir))?;
            let mut settings: Vec<(&str, String)> = Vec::new();
            match *controller {
                "memory" => {
                    if let Some(limit) = plan.memory_limit {
                        settings.push(("memory.limit_in_bytes", limit.to_string()));
                        // Without swap the limit is the limit: OOM kills, as on a kubelet.
                        settings.push(("memory.swappiness", "0".into()));
                    }
                }
                "cpu" => {
                    if let Some(m) = plan.cpu_limit_millis {
                        settings.push(("cpu.cfs_period_us", "100000".into()));
                        settings.push(("cpu.cfs_quota_us", (m.max(1) * 100).to_string()));
                    }
                    if let Some(m) = plan.cpu_request_millis {
                        settings.push(("cpu.shares", (m * 1024 / 1000).max(2).to_string()));
                    }
                }
                _ => settings.push(("pids.max", PIDS_MAX.to_string())),
            }
            for (file, value) in settings {
                let p = dir.join(file);
                std::fs::write(&p, value).map_err(io_err("write", &p))?;
            }
            give_to_pod(&[dir.join("cgroup.procs")], ids)?;
            dirs.push(dir);
        }
        Ok(dirs)
    }

    /// Whether the kernel's OOM killer killed a process of the container's current run.
    pub fn oom_killed(&self, workload: &str, container: &str) -> bool {
        let Some(dir) = self.dir("memory", workload, container) else { return false };
        std::fs::read_to_string(dir.join("memory.oom_control"))
            .is_ok_and(|s| s.lines().any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0")))
    }

    /// The cgroup directories of a container (as `prepare` makes them), not touched.
    pub fn dirs(&self, workload: &str, container: &str) -> Vec<PathBuf> {
        self.bases.iter().map(|(_, b)| b.join(workload).join(container)).collect()
    }

    /// Removes the pod's cgroups (its processes are gone).
    pub fn remove(&self, workload: &str) {
        for (_, base) in &self.bases {
            let _ = crate::sys::cgroup::remove_v1_tree(&base.join(workload));
        }
    }
}

/// Starts the pod's init process inside the cgroup2 directory `cgroup` and returns its pid;
/// it runs in the pod's namespaces, its ids mapped from `id_base` on, once this returns.
pub fn spawn_init(
    layout: &Layout,
    hostname: &str,
    cgroup: &Path,
    id_base: Option<u32>,
) -> Result<u32, SandboxError> {
    let exe = std::env::current_exe().map_err(io_err("find", Path::new("/proc/self/exe")))?;
    let log_path = layout.dir.join("init.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err("open", &log_path))?;
    let mut cmd = crate::sys::command_in_cgroups(&[cgroup.to_path_buf()], exe);
    cmd.arg("pod-init")
        .arg("--dir")
        .arg(&layout.dir)
        .arg("--hostname")
        .arg(hostname)
        .args(id_base.map(|b| format!("--id-base={b}")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    let out = cmd.output().map_err(io_err("start pod init for", &layout.dir))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match (out.status.success(), text.trim().parse::<u32>()) {
        (true, Ok(pid)) => Ok(pid),
        _ => {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            Err(SandboxError::Init(log.lines().last().unwrap_or("exited without a pid").to_owned()))
        }
    }
}

/// Whether host process `pid` is a process of the pod whose init is `init_pid`: it lives in
/// the pod's user namespace (every process of the pod does, no host process does). The
/// agent checks this before anything of the host's root enters a pid it was told about.
pub fn in_pod(init_pid: u32, pid: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ns = |p: &str| std::fs::metadata(format!("/proc/{p}/ns/user")).map(|m| (m.dev(), m.ino()));
    match (ns(&init_pid.to_string()), ns(&pid.to_string()), ns("self")) {
        (Ok(pod), Ok(of_pid), Ok(host)) => pod == of_pid && pod != host,
        _ => false,
    }
}

/// Whether `pid` is this pod's init (after an agent restart: the pid may have been reused).
pub fn init_alive(layout: &Layout, pid: u32) -> bool {
    crate::sys::process::cmdline(pid).is_some_and(|args| {
        args.iter().any(|a| a == "pod-init") && args.iter().any(|a| a == layout.dir.as_os_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_users_resolve_through_the_image_files() {
        let root = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(root.path().join("etc")).expect("mkdir");
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:101:102::/:/bin/false\n",
        )
        .expect("write");
        std::fs::write(root.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").expect("write");
        assert_eq!(resolve_user(root.path(), ""), Ok((0, 0)));
        assert_eq!(resolve_user(root.path(), "1000"), Ok((1000, 0)));
        assert_eq!(resolve_user(root.path(), "1000:7"), Ok((1000, 7)));
        assert_eq!(resolve_user(root.path(), "web"), Ok((101, 102)));
        assert_eq!(resolve_user(root.path(), "web:staff"), Ok((101, 50)));
        assert!(resolve_user(root.path(), "nobody").is_err());
    }

    #[test]
    fn image_user_files_are_read_inside_the_root_bounded_and_never_block() {
        let root = tempfile::tempdir().expect("tmp");
        let r = root.path();
        // `etc` is a link to the host's /etc: resolved inside the root (to itself), never to
        // the host's files, which know root.
        std::os::unix::fs::symlink("/etc", r.join("etc")).expect("link");
        assert!(resolve_user(r, "root").is_err(), "the host's /etc/passwd was read");
        std::fs::remove_file(r.join("etc")).expect("rm");
        std::fs::create_dir(r.join("etc")).expect("mkdir");
        // A FIFO answers at once with an error instead of blocking the agent.
        nix::unistd::mkfifo(&r.join("etc/passwd"), nix::sys::stat::Mode::from_bits_truncate(0o644))
            .expect("fifo");
        let e = resolve_user(r, "app").expect_err("a FIFO is refused");
        assert!(e.contains("/etc/passwd is not a regular file"), "{e}");
        assert!(primary_group(r, 5).is_err());
        // A link to a device of the host resolves inside the root: not there.
        std::fs::remove_file(r.join("etc/passwd")).expect("rm");
        std::os::unix::fs::symlink("/dev/zero", r.join("etc/passwd")).expect("link");
        assert!(resolve_user(r, "app").expect_err("missing").contains("not in the image's /etc/passwd"));
        // Bounded: a huge file is an error, not a read until memory runs out.
        std::fs::remove_file(r.join("etc/passwd")).expect("rm");
        let big = std::fs::File::create(r.join("etc/passwd")).expect("create");
        big.set_len(MAX_USER_FILE + 1).expect("truncate");
        assert!(resolve_user(r, "app").expect_err("too large").contains("larger than"));
        // Numeric users need no file.
        assert_eq!(resolve_user(r, "7:8"), Ok((7, 8)));
    }

    fn no_rules() -> security::Rules {
        security::Rules::default()
    }

    #[test]
    fn host_path_types_are_checked_and_created_through_descriptors() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("d");
        let at = |p: &Path| p.to_str().expect("utf-8").to_owned();
        assert!(open_host_path(&at(&dir), Some("Directory"), &no_rules()).is_err());
        open_host_path(&at(&dir.join("a/b")), Some("DirectoryOrCreate"), &no_rules()).expect("created");
        assert!(dir.join("a/b").is_dir());
        assert!(open_host_path(&at(&dir), Some("File"), &no_rules()).is_err());
        open_host_path(&at(&tmp.path().join("f")), Some("FileOrCreate"), &no_rules()).expect("created");
        assert!(tmp.path().join("f").is_file());
        assert!(open_host_path(&at(&tmp.path().join("missing")), None, &no_rules()).is_err());
        let e = open_host_path(&at(tmp.path()), Some("Dir"), &no_rules()).expect_err("unknown type");
        assert_eq!(e, "unknown hostPath type \"Dir\"");
        // A link is resolved and the real place checked: a protected directory stays out of
        // reach, and nothing is created in it.
        let protected = tmp.path().join("agent-state");
        std::fs::create_dir(&protected).expect("mkdir");
        std::os::unix::fs::symlink(&protected, tmp.path().join("link")).expect("link");
        let rules = security::Rules { protected: vec![protected.clone()], ..no_rules() };
        let e = open_host_path(&at(&tmp.path().join("link/x")), Some("DirectoryOrCreate"), &rules)
            .expect_err("resolves into the protected directory");
        assert!(e.contains("would expose the agent's own directory"), "{e}");
        assert!(!protected.join("x").exists());
    }

    #[test]
    fn a_link_planted_after_the_check_is_never_followed() {
        let tmp = tempfile::tempdir().expect("tmp");
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::os::unix::fs::symlink(&elsewhere, tmp.path().join("d")).expect("link");
        // What `open_host_path` does after its check, on a path that now holds a link.
        let root: OwnedFd = std::fs::File::open("/").expect("open /").into();
        let rel = tmp.path().join("d/x");
        let rel = rel.strip_prefix("/").expect("absolute");
        assert!(create_beneath(root, rel, false).is_err(), "created through a link");
        assert!(!elsewhere.join("x").exists());
        // subPath: the same inside a volume.
        let base: OwnedFd = std::fs::File::open(tmp.path()).expect("open").into();
        assert!(open_beneath(base, "d/y").is_err());
        let base: OwnedFd = std::fs::File::open(tmp.path()).expect("open").into();
        open_beneath(base, "real/sub").expect("created");
        assert!(tmp.path().join("real/sub").is_dir());
    }

    /// A new pod never starts on what an earlier pod of its name left (emptyDir data,
    /// Secrets); a leftover that cannot be removed (a mount inside) fails the creation.
    #[test]
    fn a_new_pod_directory_starts_empty() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = Layout::new(tmp.path(), "pod-default-x");
        let old = layout.volume("scratch").join("a/b");
        std::fs::create_dir_all(&old).expect("mkdir");
        std::fs::write(old.join("data"), "old").expect("write");
        layout.create("x", "default", &DnsPlan::default(), IdMap::IDENTITY).expect("create over a leftover");
        assert!(!layout.volume("scratch").exists(), "leftover emptyDir kept");
        assert!(layout.etc("hostname").is_file());
        // Root: a mount inside a leftover is neither crossed nor reused.
        let other = tempfile::tempdir().expect("tmp");
        std::fs::write(other.path().join("keep"), "x").expect("write");
        let target = layout.volume("scratch");
        std::fs::create_dir_all(&target).expect("mkdir");
        nix::mount::mount(
            Some(other.path()),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind");
        let result = layout.create("x", "default", &DnsPlan::default(), IdMap::IDENTITY);
        nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH).expect("umount");
        let e = result.expect_err("a mount in the leftover").to_string();
        assert!(e.contains("earlier pod") && e.contains("volumes/scratch"), "{e}");
        assert!(other.path().join("keep").is_file());
    }
}
