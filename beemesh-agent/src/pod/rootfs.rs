//! A container's root filesystem: the image's unpacked layers (shared, read-only) as
//! overlayfs lower directories, with a private upper and work directory per container, so
//! layers are unpacked once and never written.

use std::path::{Path, PathBuf};

use crate::image::ResolvedImage;

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
    /// Mounts `image` under `dir` (`dir/merged` is the root; `dir/upper` takes the writes).
    pub fn mount(image: &ResolvedImage, dir: &Path) -> Result<Self, RootfsError> {
        if image.layer_dirs.is_empty() {
            return Err(RootfsError::NoLayers(image.id.clone()));
        }
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| RootfsError::Io { what, path, source }
        };
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(io("create", d))?;
        }
        // overlayfs lists the top-most lower directory first; the store keeps bottom first.
        let lower: Vec<String> = image.layer_dirs.iter().rev().map(|p| p.display().to_string()).collect();
        let options =
            format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), upper.display(), work.display());
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(|e| io("mount overlay on", &merged)(e.into()))?;
        Ok(Self { dir: dir.to_path_buf(), merged })
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
        match nix::mount::umount2(&self.merged, nix::mount::MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(RootfsError::Io { what: "unmount", path: self.merged.clone(), source: e.into() })
            }
        }
        if !self.dir.exists() {
            return Ok(());
        }
        std::fs::remove_dir_all(&self.dir).map_err(|source| RootfsError::Io {
            what: "remove",
            path: self.dir.clone(),
            source,
        })
    }
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
        let fs = Rootfs::mount(&image, &tmp.path().join("pod/c1")).expect("mount");
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
        let fs2 = Rootfs::mount(&image, &tmp.path().join("pod/c2")).expect("mount");
        assert_eq!(std::fs::read_to_string(fs2.root().join("bin/app")).expect("read"), "#!/bin/sh\n");
        fs2.remove().expect("remove");
    }
}
