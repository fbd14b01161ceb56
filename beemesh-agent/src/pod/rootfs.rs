//! A container's root filesystem: the image's unpacked layers (shared, read-only) as
//! overlayfs lower directories, with a private upper and work directory per container, so
//! layers are unpacked once and never written. For a pod with its own id range each layer
//! is first mounted idmapped (read-only, owners shifted into the pod's range) under the
//! container's `lower/<n>`, and upper/work belong to the pod's root.

use std::path::{Path, PathBuf};

use super::userns::IdMap;
use crate::image::ResolvedImage;

/// Shifts a root filesystem into a pod's id range.
#[derive(Clone, Copy, Debug)]
pub struct Shift<'a> {
    pub map: IdMap,
    /// The pod's user namespace (`/proc/<init pid>/ns/user`), which the layers are idmapped
    /// through.
    pub userns: &'a std::fs::File,
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image {0} has no layers")]
    NoLayers(String),
}

/// A mounted overlay root filesystem; unmounted and removed by [`Rootfs::remove`].
#[derive(Debug)]
pub struct Rootfs {
    dir: PathBuf,
    merged: PathBuf,
}

impl Rootfs {
    /// Mounts `image` under `dir` (`dir/merged` is the root; `dir/upper` takes the writes),
    /// shifted into a pod's id range if `shift` is given.
    pub fn mount(image: &ResolvedImage, dir: &Path, shift: Option<Shift<'_>>) -> Result<Self, RootfsError> {
        if image.layer_dirs.is_empty() {
            return Err(RootfsError::NoLayers(image.id.clone()));
        }
        let fs = Self { dir: dir.to_path_buf(), merged: dir.join("merged") };
        // Half a root (some layers mounted) is taken down again.
        fs.mount_parts(image, shift).inspect_err(|_| {
            let _ = Self::existing(dir).remove();
        })?;
        Ok(fs)
    }

    fn mount_parts(&self, image: &ResolvedImage, shift: Option<Shift<'_>>) -> Result<(), RootfsError> {
        let dir = &self.dir;
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), &self.merged);
        for d in [&upper, &work, merged] {
            std::fs::create_dir_all(d).map_err(io("create", d))?;
        }
        let mut lowers = image.layer_dirs.clone();
        if let Some(shift) = shift {
            let root = Some(shift.map.root());
            for d in [&upper, &work] {
                std::os::unix::fs::chown(d, root, root).map_err(io("chown", d))?;
            }
            for (n, layer) in image.layer_dirs.iter().enumerate() {
                let at = dir.join("lower").join(n.to_string());
                std::fs::create_dir_all(&at).map_err(io("create", &at))?;
                crate::sys::mount::bind_idmapped(layer, &at, shift.userns, true)
                    .map_err(io("mount the idmapped layer at", &at))?;
                lowers[n] = at;
            }
        }
        // overlayfs lists the top-most lower directory first; the store keeps bottom first.
        let lower: Vec<String> = lowers.iter().rev().map(|p| p.display().to_string()).collect();
        let options =
            format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
        nix::mount::mount(
            Some("overlay"),
            merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| io("mount overlay on", merged)(e.into()))
    }

    /// The root filesystem mounted earlier under `dir` (by an agent that restarted).
    pub fn existing(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), merged: dir.join("merged") }
    }

    /// The container's `/`.
    pub fn root(&self) -> &Path {
        &self.merged
    }

    /// Unmounts and deletes the container's private directories (the layers stay).
    pub fn remove(self) -> Result<(), RootfsError> {
        crate::sys::mount::unmount_all(&self.merged).map_err(io("unmount", &self.merged))?;
        if !self.dir.exists() {
            return Ok(());
        }
        // The idmapped layers: each unmounted, then removed with rmdir, never recursively (a
        // mount still there would be a shared layer).
        let lower = self.dir.join("lower");
        if let Ok(entries) = std::fs::read_dir(&lower) {
            for e in entries.flatten() {
                let at = e.path();
                crate::sys::mount::unmount_all(&at).map_err(io("unmount", &at))?;
                std::fs::remove_dir(&at).map_err(io("remove", &at))?;
            }
        }
        // The upper directory is the pod's: removed without recursion, links or mounts
        // followed (a pod may leave a tree thousands of levels deep).
        crate::sys::tree::remove_tree(&self.dir).map_err(io("remove", &self.dir))
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
    let path = path.to_path_buf();
    move |source| RootfsError::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{testdata, ImageStore};

    /// Root: the image's layers seen through overlayfs with whiteouts applied; writes land in
    /// the container's upper directory, never in the shared layers.
    #[test]
    fn overlay_root_applies_whiteouts_and_keeps_layers_pristine() {
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = tmp.path().join("web");
        testdata::oci_layout(&layout, "1");
        let store = ImageStore::new(&tmp.path().join("state"));
        store.import(&layout).expect("import");
        let image = store.resolve("web:1").expect("resolve");
        let fs = Rootfs::mount(&image, &tmp.path().join("pod/c1"), None).expect("mount");
        let root = fs.root().to_path_buf();
        assert!(root.join("bin/app").is_file(), "bottom layer visible");
        assert!(root.join("srv/index.html").is_file(), "top layer visible");
        assert!(!root.join("etc/old").exists(), "whiteout hides the lower file");
        assert!(!root.join("var/cache/x").exists(), "opaque directory hides the lower contents");
        std::fs::write(root.join("bin/app"), "changed").expect("write");
        assert_eq!(
            std::fs::read_to_string(image.layer_dirs[0].join("bin/app")).expect("layer"),
            "#!/bin/sh\n"
        );
        fs.remove().expect("remove");
        assert!(!tmp.path().join("pod/c1").exists());
        // A second container of the same image starts from the pristine layers.
        let fs2 = Rootfs::mount(&image, &tmp.path().join("pod/c2"), None).expect("mount");
        assert_eq!(std::fs::read_to_string(fs2.root().join("bin/app")).expect("read"), "#!/bin/sh\n");
        fs2.remove().expect("remove");
    }

    /// A user namespace mapping 0..65536 onto `base..` (a child in its own user namespace,
    /// mapped from here); killed on drop.
    struct UserNs(std::process::Child);

    impl UserNs {
        fn new(base: u32) -> Self {
            let own = std::fs::read_link("/proc/self/ns/user").expect("own userns");
            let child = std::process::Command::new("unshare")
                .args(["--user", "sleep", "60"])
                .spawn()
                .expect("unshare (util-linux)");
            let pid = child.id();
            let ns = format!("/proc/{pid}/ns/user");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while std::fs::read_link(&ns).is_ok_and(|l| l == own) {
                assert!(std::time::Instant::now() < deadline, "unshare made no user namespace");
                std::thread::yield_now();
            }
            for map in ["uid_map", "gid_map"] {
                std::fs::write(format!("/proc/{pid}/{map}"), format!("0 {base} 65536")).expect("map");
            }
            Self(child)
        }
        fn file(&self) -> std::fs::File {
            std::fs::File::open(format!("/proc/{}/ns/user", self.0.id())).expect("open userns")
        }
    }

    impl Drop for UserNs {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Root: through idmapped layers the image's root-owned files belong to the pod's root
    /// (host id `base`), whiteouts and opaque directories still apply, copies-up and upper
    /// belong to the pod, and the shared layers keep their owners and contents.
    #[test]
    fn idmapped_layers_shift_owners_and_keep_whiteouts() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().expect("tmp");
        let layout = tmp.path().join("web");
        testdata::oci_layout(&layout, "1");
        let store = ImageStore::new(&tmp.path().join("state"));
        store.import(&layout).expect("import");
        let image = store.resolve("web:1").expect("resolve");
        let base = 300_000;
        let ns = UserNs::new(base);
        let userns = ns.file();
        let shift = Shift { map: IdMap::pod(base), userns: &userns };
        let dir = tmp.path().join("pod/c1");
        let fs = Rootfs::mount(&image, &dir, Some(shift)).expect("mount");
        let root = fs.root().to_path_buf();
        let meta = |p: &Path| std::fs::metadata(p).expect("stat");
        assert_eq!(meta(&image.layer_dirs[0].join("bin/app")).uid(), 0, "the layer is root's");
        assert_eq!(meta(&root.join("bin/app")).uid(), base, "shown as the pod's root");
        assert_eq!(meta(&root.join("srv/index.html")).gid(), base);
        assert_eq!(meta(&root).uid(), base, "/ is the pod's root's");
        assert!(!root.join("etc/old").exists(), "whiteout hides the lower file");
        assert!(!root.join("var/cache/x").exists(), "opaque directory hides the lower contents");
        std::fs::write(root.join("bin/app"), "changed").expect("write");
        assert_eq!(meta(&dir.join("upper/bin/app")).uid(), base, "the copy-up is the pod's");
        assert_eq!(
            std::fs::read_to_string(image.layer_dirs[0].join("bin/app")).expect("layer"),
            "#!/bin/sh\n"
        );
        assert!(std::fs::write(dir.join("lower/0/bin/app"), "x").is_err(), "idmapped layers are read-only");
        fs.remove().expect("remove");
        assert!(!dir.exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        assert!(!mounts.contains(&tmp.path().display().to_string()), "mounts left: {mounts}");
        assert!(image.layer_dirs[0].join("bin/app").is_file(), "the layer survives removal");
    }
}
