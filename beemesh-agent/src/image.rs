//! Local container images, no registry: `beemesh-agent image import FILE` takes an OCI image
//! layout (directory or tarball) or a docker-archive tarball (`docker save`, `podman save`)
//! into a content-addressed store under `<state-dir>/images`, unpacks each layer once (shared
//! by every image and pod that uses it, as overlayfs lower directories) and records its tags.
//! The pod runtime resolves `image: NAME:TAG` here.

mod archive;
mod layer;

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

/// The store on disk: `blobs/sha256/<hex>`, `layers/<hex>/` (unpacked), `images.json`
/// (tag -> image). Every write is a temp file or directory renamed into place.
#[derive(Clone, Debug)]
pub struct ImageStore {
    root: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    tags: BTreeMap<String, StoredImage>,
}

impl ImageStore {
    pub fn new(state_dir: &Path) -> Self {
        Self { root: state_dir.join("images") }
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

    /// Imports every tagged image of an OCI layout (directory or tar) or docker-archive.
    /// Returns the tags imported.
    pub fn import(&self, path: &Path) -> Result<Vec<String>, ImageError> {
        let images = archive::read(self, path)?;
        let mut index = self.load_index()?;
        let mut tags = Vec::new();
        for (tag_list, image) in images {
            for layer in &image.layers {
                layer::unpack_once(&self.blob_path(layer), &self.root.join("layers").join(layer))?;
            }
            for tag in tag_list {
                let tag = normalize(&tag);
                index.tags.insert(tag.clone(), image.clone());
                tags.push(tag);
            }
        }
        if tags.is_empty() {
            return Err(malformed(
                path.display().to_string(),
                "no tagged image inside (give the image a name when saving it)",
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
