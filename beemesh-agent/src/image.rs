//! Local container images, no registry: `beemesh-agent image import FILE` takes an OCI image
//! layout (directory or tarball) or a docker-archive tarball (`docker save`, `podman save`)
//! into a content-addressed store under `<state-dir>/images`, unpacks each layer once (shared
//! by every image and pod that uses it, as overlayfs lower directories) and records its tags.
//! The pod runtime resolves `image: NAME:TAG` here.

mod archive;
mod beneath;
mod layer;
mod share;

pub use share::{digest_hex, BlobRef, HeldImage};

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not an OCI image layout or docker-archive (no oci-layout/index.json or manifest.json)")]
    UnknownFormat(PathBuf),
    #[error("{file}: {reason}")]
    Malformed { file: String, reason: String },
    #[error("image {0:?} not found in the local store (import it with `beemesh-agent image import FILE`)")]
    NotFound(String),
    #[error("blob {0} does not match its digest")]
    DigestMismatch(String),
    #[error("blob {digest} is {actual} bytes, but its descriptor says {expected}")]
    SizeMismatch { digest: String, expected: u64, actual: String },
    #[error("{what}: entry {entry:?}: {reason}")]
    Entry { what: String, entry: String, reason: String },
    #[error("{what} takes the import past {limit} unpacked bytes (the imageMaxUnpackedBytes limit)")]
    TooLarge { what: String, limit: u64 },
    #[error(
        "{what} takes the import past {limit} entries (files, directories, links, with the \
         directories their paths imply; the imageMaxEntries limit)"
    )]
    TooManyEntries { what: String, limit: u64 },
    #[error("--name {name:?}: {reason}")]
    BadName { name: String, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_path_buf(), source }
}

fn malformed(file: impl Into<String>, reason: impl std::fmt::Display) -> ImageError {
    ImageError::Malformed { file: file.into(), reason: reason.to_string() }
}

/// What the runtime needs from an image's config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// An image as stored: its config and its layers (blob digests, bottom first).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredImage {
    /// `sha256:<hex>` of the image config blob: the image id.
    pub id: String,
    pub config: ImageConfig,
    pub layers: Vec<String>,
}

/// A resolved image: its config and the unpacked layer directories, bottom first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedImage {
    pub id: String,
    pub config: ImageConfig,
    pub layer_dirs: Vec<PathBuf>,
}

/// `name` -> `name:latest`; a tag or digest is kept.
pub fn normalize(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if last.contains(':') || last.contains('@') {
        reference.to_owned()
    } else {
        format!("{reference}:latest")
    }
}

/// Default of the `imageMaxUnpackedBytes` setting: what one import may unpack (8 GiB).
pub const DEFAULT_MAX_UNPACKED_BYTES: u64 = 8 << 30;

/// Default of the `imageMaxEntries` setting: how many files, directories and links one import
/// may create (each tar header is one inode, and gzip makes headers almost free to send).
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;

/// What one import may still unpack, or what an unpack used: bytes written and inodes made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Budget {
    pub bytes: u64,
    pub entries: u64,
}

impl Budget {
    fn minus(self, used: Budget) -> Budget {
        Budget {
            bytes: self.bytes.saturating_sub(used.bytes),
            entries: self.entries.saturating_sub(used.entries),
        }
    }
}

/// The store on disk: `blobs/sha256/<hex>`, `layers/<hex>/` (unpacked), `images.json`
/// (tag -> image). Every write is a temp file or directory renamed into place, under an
/// exclusive lock (`.lock`), so imports by the agent and offline ones never interleave. The
/// store is root's alone (0700): image files may be setuid.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
    max_unpacked: u64,
    max_entries: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    tags: BTreeMap<String, StoredImage>,
}

/// One image found in an archive: the tags it carries, the bare tags of its OCI layout (the
/// `NAME` of `--name NAME` completes them), and the image.
#[derive(Debug)]
struct Found {
    tags: Vec<String>,
    bare_tags: Vec<String>,
    image: StoredImage,
}

/// Checks a `--name` reference: `name[:tag]`, registry hosts and paths allowed.
fn check_name(name: &str) -> Result<(), ImageError> {
    let bad = |reason: &str| ImageError::BadName { name: name.to_owned(), reason: reason.to_owned() };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b)) {
        return Err(bad("use letters, digits and . _ - / : @ only"));
    }
    if name.starts_with(['/', ':', '-', '.']) || name.ends_with(['/', ':']) || name.contains("//") {
        return Err(bad("not an image reference (NAME or NAME:TAG)"));
    }
    Ok(())
}

/// The tags of the one image in `found` when it is named `name`.
fn tags_for(name: &str, found: &[Found]) -> Result<Vec<String>, ImageError> {
    check_name(name)?;
    let Some(first) = found.first() else { return Ok(Vec::new()) };
    if found.iter().any(|f| f.image != first.image) {
        let reason = format!("the archive holds {} images; --name names exactly one", found.len());
        return Err(ImageError::BadName { name: name.to_owned(), reason });
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') {
        return Ok(vec![name.to_owned()]);
    }
    let bare: Vec<String> =
        found.iter().flat_map(|f| f.bare_tags.iter()).map(|t| format!("{name}:{t}")).collect();
    Ok(if bare.is_empty() { vec![normalize(name)] } else { bare })
}

impl ImageStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("images"),
            max_unpacked: DEFAULT_MAX_UNPACKED_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
        }
    }

    /// Bounds what one import may unpack (all its new layers together, and an archive
    /// tarball's own contents).
    pub fn max_unpacked(mut self, bytes: u64) -> Self {
        self.max_unpacked = bytes;
        self
    }

    /// Bounds how many entries (inodes) one import may create, counted as
    /// [`ImageStore::max_unpacked`] counts bytes.
    pub fn max_entries(mut self, entries: u64) -> Self {
        self.max_entries = entries;
        self
    }

    /// Both limits of one import.
    fn limits(&self) -> Budget {
        Budget { bytes: self.max_unpacked, entries: self.max_entries }
    }

    /// The store's directory (`<state-dir>/images`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn load_index(&self) -> Result<Index, ImageError> {
        let path = self.index_path();
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| malformed(path.display().to_string(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn save_index(&self, index: &Index) -> Result<(), ImageError> {
        let path = self.index_path();
        let tmp = self.root.join(".images.json.tmp");
        let text = serde_json::to_string_pretty(index).expect("plain data serialises");
        std::fs::write(&tmp, text).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    fn blob_path(&self, hex: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(hex)
    }

    /// Creates the store root-only (0700), also narrowing one an older version made wider.
    pub fn secure(&self) -> std::io::Result<()> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.root)?;
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o700))
    }

    /// Secures the store, takes its lock and removes what an interrupted import left
    /// (dot-named temporaries).
    fn lock(&self) -> Result<nix::fcntl::Flock<std::fs::File>, ImageError> {
        self.secure().map_err(io(&self.root))?;
        let path = self.root.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        let lock = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io(&path)(e.into()))?;
        for dir in [self.root.clone(), self.root.join("layers"), self.root.join("blobs/sha256")] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for e in entries.flatten() {
                let name = e.file_name();
                if name.as_encoded_bytes().starts_with(b".") && name != ".lock" {
                    let p = e.path();
                    let _ = crate::sys::tree::remove_tree(&p);
                }
            }
        }
        Ok(lock)
    }

    /// Imports every tagged image of an OCI layout (directory or tar) or docker-archive.
    /// Returns the tags imported.
    pub fn import(&self, path: &Path) -> Result<Vec<String>, ImageError> {
        self.import_as(path, None)
    }

    /// [`ImageStore::import`]; `name` (`NAME:TAG`, or `NAME` completed by the layout's bare
    /// tag) names the archive's one image instead of the names it carries. All or nothing:
    /// on failure, the blobs and layers this import added are removed again.
    pub fn import_as(&self, path: &Path, name: Option<&str>) -> Result<Vec<String>, ImageError> {
        if let Some(name) = name {
            check_name(name)?;
        }
        let _lock = self.lock()?;
        let mut added = Vec::new();
        let result = self.import_locked(path, name, &mut added);
        if result.is_err() {
            for p in added.iter().rev() {
                let _ = crate::sys::tree::remove_tree(p);
            }
        }
        result
    }

    fn import_locked(
        &self,
        path: &Path,
        name: Option<&str>,
        added: &mut Vec<PathBuf>,
    ) -> Result<Vec<String>, ImageError> {
        let found = archive::read(self, path, added)?;
        let mut index = self.load_index()?;
        let mut budget = self.limits();
        let named = name.map(|n| tags_for(n, &found)).transpose()?;
        let mut tags = Vec::new();
        for (i, f) in found.iter().enumerate() {
            for layer in &f.image.layers {
                let dest = self.root.join("layers").join(layer);
                let fresh = !dest.is_dir();
                let used = layer::unpack_once(&self.blob_path(layer), &dest, budget, self.limits())?;
                if fresh {
                    added.push(dest);
                }
                budget = budget.minus(used);
            }
            let names = match &named {
                Some(n) if i == 0 => n.clone(),
                Some(_) => Vec::new(),
                None => f.tags.clone(),
            };
            for tag in names {
                let tag = normalize(&tag);
                index.tags.insert(tag.clone(), f.image.clone());
                tags.push(tag);
            }
        }
        if tags.is_empty() {
            return Err(malformed(
                path.display().to_string(),
                "no tagged image inside (give the image a name when saving it, or import it with --name NAME:TAG)",
            ));
        }
        self.save_index(&index)?;
        Ok(tags)
    }

    /// Finds `reference` (`name`, `name:tag`).
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, ImageError> {
        let index = self.load_index()?;
        let image = index
            .tags
            .get(&normalize(reference))
            .ok_or_else(|| ImageError::NotFound(reference.to_owned()))?;
        Ok(ResolvedImage {
            id: image.id.clone(),
            config: image.config.clone(),
            layer_dirs: image.layers.iter().map(|l| self.root.join("layers").join(l)).collect(),
        })
    }

    /// Tags in the store.
    pub fn list(&self) -> Result<Vec<(String, String)>, ImageError> {
        Ok(self.load_index()?.tags.into_iter().map(|(tag, image)| (tag, image.id)).collect())
    }
}

/// Reads a whole (bounded) file.
pub(crate) fn read_all(mut r: impl Read, what: &str, limit: u64) -> Result<Vec<u8>, ImageError> {
    let mut buf = Vec::new();
    r.by_ref().take(limit + 1).read_to_end(&mut buf).map_err(|e| malformed(what, e))?;
    if buf.len() as u64 > limit {
        return Err(malformed(what, format!("larger than {limit} bytes")));
    }
    Ok(buf)
}

#[cfg(test)]
pub(crate) mod testdata;
#[cfg(test)]
mod tests;
