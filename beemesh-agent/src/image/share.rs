//! The store's side of sharing images peer to peer (`app::images`): what this store holds
//! (tags, image ids, config and layer blobs with their sizes) for the holder record it
//! publishes, the blob files it serves (named by a checked digest only), the directory where
//! pulled blobs grow (`partial/`, kept by the lock's cleanup so a pull resumes after a
//! restart), admission of a pulled blob (sha256 and size checked before it enters
//! `blobs/sha256/`), and installing a pulled image (config read, layers unpacked under the
//! store's limits, tag recorded), all under the store's lock like an import.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{archive, io, layer, malformed, normalize, ImageError, ImageStore, StoredImage};

/// A blob by digest (`sha256:<64 lowercase hex>`) and size in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

/// One tag this store holds, with everything a peer needs to fetch the image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldImage {
    pub tag: String,
    /// `sha256:<hex>` of the config blob.
    pub id: String,
    pub config: BlobRef,
    /// Bottom first.
    pub layers: Vec<BlobRef>,
}

impl HeldImage {
    /// Every blob of the image, config first.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobRef> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }

    /// The bytes of all its blobs together.
    pub fn total_size(&self) -> u64 {
        self.blobs().map(|b| b.size).fold(0u64, u64::saturating_add)
    }
}

/// The hex of `digest` when it is `sha256:` and 64 lowercase hex digits: nothing else ever
/// becomes part of a path.
pub fn digest_hex(digest: &str) -> Result<&str, ImageError> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or_else(|| {
            malformed("blob digest", format!("{digest:?} is not sha256:<64 lowercase hex digits>"))
        })
}

impl ImageStore {
    /// Every tag of the store with its blobs and their sizes; a tag whose blobs are not all
    /// present (a store from before blobs were kept) is left out.
    pub fn holdings(&self) -> Result<Vec<HeldImage>, ImageError> {
        let index = self.load_index()?;
        let size =
            |hex: &str| std::fs::metadata(self.blob_path(hex)).ok().filter(|m| m.is_file()).map(|m| m.len());
        let mut out = Vec::new();
        for (tag, image) in index.tags {
            let Some(config_hex) = image.id.strip_prefix("sha256:") else { continue };
            let Some(config_size) = size(config_hex) else { continue };
            let layers: Option<Vec<BlobRef>> = image
                .layers
                .iter()
                .map(|hex| size(hex).map(|s| BlobRef { digest: format!("sha256:{hex}"), size: s }))
                .collect();
            let Some(layers) = layers else { continue };
            out.push(HeldImage {
                tag,
                id: image.id.clone(),
                config: BlobRef { digest: image.id.clone(), size: config_size },
                layers,
            });
        }
        Ok(out)
    }

    /// The file of blob `digest` when this store holds it.
    pub fn blob_file(&self, digest: &str) -> Result<PathBuf, ImageError> {
        let path = self.blob_path(digest_hex(digest)?);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            Ok(_) => Err(malformed(path.display().to_string(), "not a regular file")),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Whether blob `digest` is in the store.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_file(digest).is_ok()
    }

    /// Where pulled blobs grow: `partial/<hex>` and its record of the chunks done. Not
    /// dot-named: the lock's cleanup leaves it, so a pull resumes after a restart.
    pub fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    /// Admits a pulled blob: `file`'s sha256 and size are checked against `blob`, then it
    /// is renamed into `blobs/sha256/`. A file that does not match is removed.
    pub fn admit_blob(&self, file: &Path, blob: &BlobRef) -> Result<(), ImageError> {
        let hex = digest_hex(&blob.digest)?.to_owned();
        let checked = (|| {
            let f = std::fs::File::open(file).map_err(io(file))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut len = 0u64;
            let mut f = f.take(blob.size.saturating_add(1));
            loop {
                let n = f.read(&mut buf).map_err(io(file))?;
                if n == 0 {
                    break;
                }
                len += n as u64;
                hasher.update(&buf[..n]);
            }
            if len != blob.size {
                return Err(ImageError::SizeMismatch {
                    digest: blob.digest.clone(),
                    expected: blob.size,
                    actual: len.to_string(),
                });
            }
            let got: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if got != hex {
                return Err(ImageError::DigestMismatch(blob.digest.clone()));
            }
            Ok(())
        })();
        if let Err(e) = checked {
            let _ = std::fs::remove_file(file);
            return Err(e);
        }
        let blobs = self.root.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        let dest = blobs.join(&hex);
        std::fs::rename(file, &dest).map_err(io(&dest))
    }

    /// Installs a pulled image whose blobs are all in the store: its config is read, its
    /// layers unpacked (within `imageMaxUnpackedBytes` and `imageMaxEntries`, as an import)
    /// and `image.tag` recorded, under the store's lock. On failure the layers it unpacked
    /// are removed again (the verified blobs stay, for the next attempt).
    pub fn install_pulled(&self, image: &HeldImage) -> Result<String, ImageError> {
        let _lock = self.lock()?;
        let config_hex = digest_hex(&image.config.digest)?.to_owned();
        if image.id != image.config.digest {
            return Err(malformed(&image.tag, "the image id is not its config's digest"));
        }
        let mut layers = Vec::new();
        for l in &image.layers {
            let hex = digest_hex(&l.digest)?.to_owned();
            self.blob_file(&l.digest)?;
            layers.push(hex);
        }
        let config = archive::config(self, &config_hex)?;
        let mut added = Vec::new();
        let result = (|| {
            let mut budget = self.limits();
            for hex in &layers {
                let dest = self.root.join("layers").join(hex);
                let fresh = !dest.is_dir();
                let used = layer::unpack_once(&self.blob_path(hex), &dest, budget, self.limits())?;
                if fresh {
                    added.push(dest);
                }
                budget = budget.minus(used);
            }
            let mut index = self.load_index()?;
            let tag = normalize(&image.tag);
            index
                .tags
                .insert(tag.clone(), StoredImage { id: image.id.clone(), config, layers: layers.clone() });
            self.save_index(&index)?;
            Ok(tag)
        })();
        if result.is_err() {
            for p in added.iter().rev() {
                let _ = crate::sys::tree::remove_tree(p);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_they_name_a_file() {
        let good = format!("sha256:{}", "a".repeat(64));
        assert!(digest_hex(&good).is_ok());
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha512:{}", "a".repeat(64)),
            format!("sha256:../{}", "a".repeat(61)),
            "sha256:".to_string(),
            "a".repeat(64),
        ] {
            assert!(digest_hex(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_blob_enters_the_store_only_with_its_digest_and_size() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = ImageStore::new(dir.path());
        store.secure().expect("secure");
        let data = b"hello blob".to_vec();
        let hex: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
        let blob = BlobRef { digest: format!("sha256:{hex}"), size: data.len() as u64 };
        let partial = dir.path().join("p");
        std::fs::write(&partial, b"hello blub").expect("write");
        assert!(matches!(store.admit_blob(&partial, &blob), Err(ImageError::DigestMismatch(_))));
        assert!(!partial.exists(), "a bad partial file is removed");
        std::fs::write(&partial, b"hello blob!").expect("write");
        assert!(matches!(store.admit_blob(&partial, &blob), Err(ImageError::SizeMismatch { .. })));
        assert!(!store.has_blob(&blob.digest));
        std::fs::write(&partial, &data).expect("write");
        store.admit_blob(&partial, &blob).expect("admitted");
        assert!(store.has_blob(&blob.digest));
        assert_eq!(std::fs::read(store.blob_file(&blob.digest).expect("file")).expect("read"), data);
    }

    #[test]
    fn holdings_name_every_blob_and_a_pulled_image_installs_from_them() {
        let src = tempfile::tempdir().expect("tmp");
        let store = ImageStore::new(src.path());
        let layout = src.path().join("layout");
        super::super::testdata::oci_layout(&layout, "1");
        store.import_as(&layout, Some("tools/bb:1")).expect("import");
        let held = store.holdings().expect("holdings");
        assert_eq!(held.len(), 1);
        let image = &held[0];
        assert_eq!(image.tag, "tools/bb:1");
        assert_eq!(image.config.digest, image.id);
        assert!(!image.layers.is_empty());

        // Another store gets the blobs by digest (as a pull does) and installs the image.
        let dst = tempfile::tempdir().expect("tmp");
        let other = ImageStore::new(dst.path());
        other.secure().expect("secure");
        std::fs::create_dir_all(other.partial_dir()).expect("partial");
        for blob in image.blobs() {
            let tmp = other.partial_dir().join("x");
            std::fs::copy(store.blob_file(&blob.digest).expect("held"), &tmp).expect("copy");
            other.admit_blob(&tmp, blob).expect("admit");
        }
        assert_eq!(other.install_pulled(image).expect("install"), "tools/bb:1");
        let resolved = other.resolve("tools/bb:1").expect("resolves");
        assert_eq!(resolved.id, image.id);
        assert_eq!(resolved.config, store.resolve("tools/bb:1").expect("source").config);
        assert!(resolved.layer_dirs.iter().all(|d| d.is_dir()));
        assert_eq!(other.holdings().expect("holdings"), held);
        // The lock's cleanup keeps partial/.
        assert!(other.partial_dir().is_dir());
    }
}
