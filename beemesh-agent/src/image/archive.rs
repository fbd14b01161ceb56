//! Reading image archives: OCI image layouts (a directory or a tarball of one) and
//! docker-archive tarballs. Blobs are copied into the store, verified against their
//! digests; the result is each image with its tags.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::beneath::Beneath;
use super::layer::{self, Kind};
use super::{io, malformed, read_all, Found, ImageConfig, ImageError, ImageStore, StoredImage};

/// JSON documents (manifests, configs, indexes) are small; refuse absurd ones.
const JSON_LIMIT: u64 = 16 << 20;

/// An archive's directory (the user's, or the scratch copy of a tarball): every file is read
/// through [`Beneath::read`], so links inside it never lead outside.
struct Layout {
    dir: PathBuf,
    root: Beneath,
}

impl Layout {
    fn open(dir: &Path) -> Result<Self, ImageError> {
        Ok(Self { dir: dir.to_path_buf(), root: Beneath::open(dir).map_err(io(dir))? })
    }

    fn shown(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn file(&self, rel: &str) -> Result<std::fs::File, ImageError> {
        self.root.read(rel).map_err(io(&self.shown(rel)))
    }

    fn json<T: for<'de> Deserialize<'de>>(&self, rel: &str) -> Result<T, ImageError> {
        let shown = self.shown(rel).display().to_string();
        let bytes = read_all(self.file(rel)?, &shown, JSON_LIMIT)?;
        serde_json::from_slice(&bytes).map_err(|e| malformed(shown, e))
    }
}

/// Every image in `path`. Blobs copied into the store are appended to `added`.
pub(super) fn read(
    store: &ImageStore,
    path: &Path,
    added: &mut Vec<PathBuf>,
) -> Result<Vec<Found>, ImageError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_dir() {
        return read_dir(store, &Layout::open(path)?, &stem(path), added);
    }
    // A tarball: unpacked next to the store (same filesystem, every entry contained and the
    // whole bounded like a layer), then read as a directory.
    let scratch = store.root.join(format!(".import-{}", std::process::id()));
    let result = (|| {
        let file = std::fs::File::open(path).map_err(io(path))?;
        let what = path.display().to_string();
        layer::unpack(file, &scratch, Kind::Archive, &what, store.limits(), store.limits())?;
        read_dir(store, &Layout::open(&scratch)?, &stem(path), added)
    })();
    let _ = crate::sys::tree::remove_tree(&scratch);
    result
}

fn stem(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.split('.').next().unwrap_or_default().to_owned()
}

fn read_dir(
    store: &ImageStore,
    dir: &Layout,
    stem: &str,
    added: &mut Vec<PathBuf>,
) -> Result<Vec<Found>, ImageError> {
    if dir.root.is_file("oci-layout") && dir.root.is_file("index.json") {
        oci_layout(store, dir, stem, added)
    } else if dir.root.is_file("manifest.json") {
        docker_archive(store, dir, added)
    } else {
        Err(ImageError::UnknownFormat(dir.dir.clone()))
    }
}

/// What a blob must be: its sha256 (hex) and its size, when the archive says.
struct Expect<'a> {
    hex: Option<&'a str>,
    size: Option<u64>,
}

/// Copies `rel` into the store while hashing it, reading at most the expected size (or the
/// import limit) plus one byte; checks digest and size. Returns the hex digest.
fn put_file(
    store: &ImageStore,
    dir: &Layout,
    rel: &str,
    expect: Expect<'_>,
    added: &mut Vec<PathBuf>,
) -> Result<String, ImageError> {
    let blobs = store.root.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let tmp = blobs.join(format!(".import-{}.tmp", std::process::id()));
    let result = (|| {
        let src = dir.file(rel)?;
        let shown = dir.shown(rel);
        let mut dst = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let limit = expect.size.unwrap_or(store.max_unpacked);
        let mut src = src.take(limit.saturating_add(1));
        let mut len = 0u64;
        loop {
            let n = src.read(&mut buf).map_err(io(&shown))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            hasher.update(&buf[..n]);
            dst.write_all(&buf[..n]).map_err(io(&tmp))?;
        }
        let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let digest = format!("sha256:{}", expect.hex.unwrap_or(&hex));
        if len > limit {
            return Err(match expect.size {
                Some(expected) => {
                    ImageError::SizeMismatch { digest, expected, actual: format!("more than {limit}") }
                }
                None => ImageError::TooLarge { what: shown.display().to_string(), limit },
            });
        }
        if let Some(expected) = expect.size.filter(|s| *s != len) {
            return Err(ImageError::SizeMismatch { digest, expected, actual: len.to_string() });
        }
        if expect.hex.is_some_and(|e| e != hex) {
            return Err(ImageError::DigestMismatch(digest));
        }
        let dest = blobs.join(&hex);
        if !dest.exists() {
            std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
            added.push(dest);
        }
        Ok(hex)
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfigInner {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    config: Option<RawConfigInner>,
}

/// A JSON blob already in the store (verified on the way in).
fn stored_json<T: for<'de> Deserialize<'de>>(store: &ImageStore, hex: &str) -> Result<T, ImageError> {
    let path = store.blob_path(hex);
    let file = std::fs::File::open(&path).map_err(io(&path))?;
    let bytes = read_all(file, &format!("blob sha256:{hex}"), JSON_LIMIT)?;
    serde_json::from_slice(&bytes).map_err(|e| malformed(format!("blob sha256:{hex}"), e))
}

pub(super) fn config(store: &ImageStore, hex: &str) -> Result<ImageConfig, ImageError> {
    let raw: RawConfig = stored_json(store, hex)?;
    let c = raw.config.unwrap_or(RawConfigInner {
        entrypoint: None,
        cmd: None,
        env: None,
        working_dir: None,
        user: None,
    });
    Ok(ImageConfig {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
    })
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    /// Required by the OCI image spec; a blob of another size is refused.
    size: u64,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

fn hex_of(digest: &str, file: &str) -> Result<String, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .ok_or_else(|| malformed(file, format!("unsupported digest {digest:?} (sha256 only)")))
}

/// Copies the blob `desc` names into the store, checked against its digest and size.
fn put_blob(
    store: &ImageStore,
    dir: &Layout,
    desc: &Descriptor,
    file: &str,
    added: &mut Vec<PathBuf>,
) -> Result<String, ImageError> {
    let hex = hex_of(&desc.digest, file)?;
    put_file(
        store,
        dir,
        &format!("blobs/sha256/{hex}"),
        Expect { hex: Some(&hex), size: Some(desc.size) },
        added,
    )
}

fn oci_layout(
    store: &ImageStore,
    dir: &Layout,
    stem: &str,
    added: &mut Vec<PathBuf>,
) -> Result<Vec<Found>, ImageError> {
    let index_file = dir.shown("index.json").display().to_string();
    let index: OciIndex = dir.json("index.json")?;
    let mut out = Vec::new();
    for desc in index.manifests {
        let ann = &desc.annotations;
        let (tags, bare_tags) =
            match (ann.get("io.containerd.image.name"), ann.get("org.opencontainers.image.ref.name")) {
                (Some(full), _) => (vec![full.clone()], Vec::new()),
                (None, Some(r)) if r.contains(':') || r.contains('/') => (vec![r.clone()], Vec::new()),
                // A bare tag (umoci, skopeo `oci:DIR:TAG`): the layout's name is the image name.
                (None, Some(tag)) => (vec![format!("{stem}:{tag}")], vec![tag.clone()]),
                (None, None) => (Vec::new(), Vec::new()),
            };
        let mut manifest_desc = desc;
        if manifest_desc.media_type.contains("image.index")
            || manifest_desc.media_type.contains("manifest.list")
        {
            // A multi-platform index: take linux/amd64.
            let hex = put_blob(store, dir, &manifest_desc, &index_file, added)?;
            let nested: OciIndex = stored_json(store, &hex)?;
            manifest_desc = nested
                .manifests
                .into_iter()
                .find(|m| m.platform.as_ref().is_none_or(|p| p.os == "linux" && p.architecture == "amd64"))
                .ok_or_else(|| malformed(format!("blob sha256:{hex}"), "no linux/amd64 manifest"))?;
        }
        let hex = put_blob(store, dir, &manifest_desc, &index_file, added)?;
        let manifest: OciManifest = stored_json(store, &hex)?;
        let manifest_file = format!("manifest sha256:{hex}");
        let config_hex = put_blob(store, dir, &manifest.config, &manifest_file, added)?;
        let mut layers = Vec::new();
        for l in &manifest.layers {
            layers.push(put_blob(store, dir, l, &manifest_file, added)?);
        }
        let image =
            StoredImage { id: format!("sha256:{config_hex}"), config: config(store, &config_hex)?, layers };
        out.push(Found { tags, bare_tags, image });
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A path named by `manifest.json`: relative, without `..` (links inside the archive are
/// resolved by [`Beneath::read`] and cannot leave it either).
fn inside(rel: &str) -> Result<&str, ImageError> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(malformed("manifest.json", format!("path {rel:?} leaves the archive")));
    }
    Ok(rel)
}

fn docker_archive(
    store: &ImageStore,
    dir: &Layout,
    added: &mut Vec<PathBuf>,
) -> Result<Vec<Found>, ImageError> {
    let entries: Vec<DockerEntry> = dir.json("manifest.json")?;
    let mut out = Vec::new();
    let any = || Expect { hex: None, size: None };
    for e in entries {
        let config_hex = put_file(store, dir, inside(&e.config)?, any(), added)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            layers.push(put_file(store, dir, inside(l)?, any(), added)?);
        }
        let image =
            StoredImage { id: format!("sha256:{config_hex}"), config: config(store, &config_hex)?, layers };
        out.push(Found { tags: e.repo_tags.unwrap_or_default(), bare_tags: Vec::new(), image });
    }
    Ok(out)
}
