//! Reading image archives: OCI image layouts (a directory or a tarball of one) and
//! docker-archive tarballs. Blobs are copied into the store, verified against their
//! digests; the result is each image with its tags.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{io, malformed, read_all, ImageConfig, ImageError, ImageStore, StoredImage};

/// JSON documents (manifests, configs, indexes) are small; refuse absurd ones.
const JSON_LIMIT: u64 = 16 << 20;

/// Every image in `path`, with its tags.
pub(super) fn read(store: &ImageStore, path: &Path) -> Result<Vec<(Vec<String>, StoredImage)>, ImageError> {
    let meta = std::fs::metadata(path).map_err(io(path))?;
    if meta.is_dir() {
        return read_dir(store, path, &stem(path));
    }
    // A tarball: unpack it next to the store (same filesystem), read it as a directory.
    let scratch = store.root.join(format!(".import-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).map_err(io(&scratch))?;
    let result = (|| {
        let file = std::fs::File::open(path).map_err(io(path))?;
        let mut archive = tar::Archive::new(file);
        for entry in archive.entries().map_err(io(path))? {
            let mut entry = entry.map_err(io(path))?;
            // `unpack_in` refuses paths escaping the directory (`..`, absolute).
            entry.unpack_in(&scratch).map_err(io(path))?;
        }
        read_dir(store, &scratch, &stem(path))
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn stem(path: &Path) -> String {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    name.split('.').next().unwrap_or_default().to_owned()
}

fn read_dir(
    store: &ImageStore,
    dir: &Path,
    stem: &str,
) -> Result<Vec<(Vec<String>, StoredImage)>, ImageError> {
    if dir.join("oci-layout").is_file() && dir.join("index.json").is_file() {
        oci_layout(store, dir, stem)
    } else if dir.join("manifest.json").is_file() {
        docker_archive(store, dir)
    } else {
        Err(ImageError::UnknownFormat(dir.to_path_buf()))
    }
}

fn json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ImageError> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    let bytes = read_all(file, &path.display().to_string(), JSON_LIMIT)?;
    serde_json::from_slice(&bytes).map_err(|e| malformed(path.display().to_string(), e))
}

/// Copies a file into the store while hashing it; checks `expected` (hex) when given.
fn put_file(store: &ImageStore, path: &Path, expected: Option<&str>) -> Result<String, ImageError> {
    let dir = store.root.join("blobs/sha256");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let tmp = dir.join(format!(".import-{}.tmp", std::process::id()));
    let mut src = std::fs::File::open(path).map_err(io(path))?;
    let mut dst = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = src.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n]).map_err(io(&tmp))?;
    }
    let hex: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if expected.is_some_and(|e| e != hex) {
        let _ = std::fs::remove_file(&tmp);
        return Err(ImageError::DigestMismatch(format!("sha256:{}", expected.unwrap_or_default())));
    }
    let dest = dir.join(&hex);
    std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
    Ok(hex)
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

fn config(store: &ImageStore, hex: &str) -> Result<ImageConfig, ImageError> {
    let raw: RawConfig = json(&store.blob_path(hex))?;
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

fn hex_of(digest: &str, file: &Path) -> Result<String, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_owned)
        .ok_or_else(|| {
            malformed(file.display().to_string(), format!("unsupported digest {digest:?} (sha256 only)"))
        })
}

fn oci_layout(
    store: &ImageStore,
    dir: &Path,
    stem: &str,
) -> Result<Vec<(Vec<String>, StoredImage)>, ImageError> {
    let index_path = dir.join("index.json");
    let index: OciIndex = json(&index_path)?;
    let blob = |hex: &str| dir.join("blobs/sha256").join(hex);
    let mut out = Vec::new();
    for desc in index.manifests {
        let ann = &desc.annotations;
        let tags: Vec<String> =
            match (ann.get("io.containerd.image.name"), ann.get("org.opencontainers.image.ref.name")) {
                (Some(full), _) => vec![full.clone()],
                (None, Some(r)) if r.contains(':') || r.contains('/') => vec![r.clone()],
                // A bare tag (umoci, skopeo `oci:DIR:TAG`): the layout's name is the image name.
                (None, Some(tag)) => vec![format!("{stem}:{tag}")],
                (None, None) => Vec::new(),
            };
        let mut hex = hex_of(&desc.digest, &index_path)?;
        let mut media = desc.media_type.clone();
        if media.contains("image.index") || media.contains("manifest.list") {
            // A multi-platform index: take linux/amd64.
            let nested: OciIndex = json(&blob(&hex))?;
            let pick = nested
                .manifests
                .into_iter()
                .find(|m| m.platform.as_ref().is_none_or(|p| p.os == "linux" && p.architecture == "amd64"))
                .ok_or_else(|| malformed(index_path.display().to_string(), "no linux/amd64 manifest"))?;
            hex = hex_of(&pick.digest, &index_path)?;
            media = pick.media_type;
        }
        let _ = media;
        let manifest_path = blob(&hex);
        let manifest: OciManifest = json(&manifest_path)?;
        put_file(store, &manifest_path, Some(&hex))?;
        let config_hex = hex_of(&manifest.config.digest, &manifest_path)?;
        put_file(store, &blob(&config_hex), Some(&config_hex))?;
        let mut layers = Vec::new();
        for l in &manifest.layers {
            let lh = hex_of(&l.digest, &manifest_path)?;
            layers.push(put_file(store, &blob(&lh), Some(&lh))?);
        }
        let image =
            StoredImage { id: format!("sha256:{config_hex}"), config: config(store, &config_hex)?, layers };
        out.push((tags, image));
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

fn inside(dir: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let p = Path::new(rel);
    if p.is_absolute() || p.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(malformed("manifest.json", format!("path {rel:?} leaves the archive")));
    }
    Ok(dir.join(p))
}

fn docker_archive(store: &ImageStore, dir: &Path) -> Result<Vec<(Vec<String>, StoredImage)>, ImageError> {
    let entries: Vec<DockerEntry> = json(&dir.join("manifest.json"))?;
    let mut out = Vec::new();
    for e in entries {
        let config_hex = put_file(store, &inside(dir, &e.config)?, None)?;
        let mut layers = Vec::new();
        for l in &e.layers {
            layers.push(put_file(store, &inside(dir, l)?, None)?);
        }
        let image =
            StoredImage { id: format!("sha256:{config_hex}"), config: config(store, &config_hex)?, layers };
        out.push((e.repo_tags.unwrap_or_default(), image));
    }
    Ok(out)
}
