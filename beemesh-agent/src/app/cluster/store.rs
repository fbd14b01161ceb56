//! The cluster state on disk: `<state-dir>/cluster/` (0700), one file per key (tombstones
//! included), named by the sha256 of the key, holding the postcard encoding of the
//! [`Object`] (files 0600: Secrets are among them). Written atomically (temporary file,
//! fsync, rename); read back whole at start, where a file that does not decode or check is an
//! error naming it.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use beemesh_state::{Key, Object};
use sha2::{Digest, Sha256};

use super::ClusterError;

/// Threads that save one batch's objects.
const SAVE_THREADS: usize = 8;
/// Extension of an object's file.
const EXT: &str = "obj";
/// Extension of a file being written (left behind only by a crash mid-write: removed at start).
const TMP: &str = "tmp";

/// The directory of one host's cluster state.
#[derive(Debug, Clone)]
pub(super) struct Store {
    dir: PathBuf,
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> ClusterError + 'a {
    move |source| ClusterError::Io { what, path: path.to_path_buf(), source }
}

impl Store {
    /// Opens (creating it 0700 if missing, and making it 0700 if it was not) `dir`.
    pub(super) fn open(dir: PathBuf) -> Result<Store, ClusterError> {
        match std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(&dir, "create")(e)),
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io(&dir, "chmod 0700"))?;
        Ok(Store { dir })
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &Key, ext: &str) -> PathBuf {
        let mut h = Sha256::new();
        for part in [&key.kind, &key.namespace, &key.name] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.dir.join(format!("{hex}.{ext}"))
    }

    /// Every object persisted here. A file that cannot be read or decoded is an error naming
    /// it: nothing is dropped silently (the replica checks each object again).
    pub(super) fn load(&self) -> Result<Vec<(PathBuf, Object)>, ClusterError> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(io(&self.dir, "read"))?;
        for entry in entries {
            let path = entry.map_err(io(&self.dir, "read"))?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some(EXT) => {
                    let bytes = std::fs::read(&path).map_err(io(&path, "read"))?;
                    let object: Object = postcard::from_bytes(&bytes)
                        .map_err(|e| ClusterError::Corrupt { path: path.clone(), why: e.to_string() })?;
                    if self.path(&object.key, EXT) != path {
                        return Err(ClusterError::Corrupt {
                            path,
                            why: "holds an object of another key than its name says".into(),
                        });
                    }
                    out.push((path, object));
                }
                Some(TMP) => std::fs::remove_file(&path).map_err(io(&path, "remove"))?,
                _ => {
                    return Err(ClusterError::Corrupt {
                        path,
                        why: format!("not a cluster state file (*.{EXT}); move it away"),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Writes `object` (a live body or a tombstone) in place of the key's previous state.
    pub(super) fn save(&self, object: &Object) -> Result<(), ClusterError> {
        let bytes = postcard::to_stdvec(object)
            .map_err(|e| ClusterError::Corrupt { path: self.path(&object.key, EXT), why: e.to_string() })?;
        let (tmp, path) = (self.path(&object.key, TMP), self.path(&object.key, EXT));
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io(&tmp, "create"))?;
        file.write_all(&bytes).map_err(io(&tmp, "write"))?;
        file.sync_all().map_err(io(&tmp, "fsync"))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io(&path, "rename into"))?;
        Ok(())
    }

    /// Saves `objects` and forgets `gone`: one batch of the cluster task. The saves run on up
    /// to [`SAVE_THREADS`] threads, so their fsyncs overlap and share the file system's
    /// journal commits (one after another, each write would wait for a commit of its own).
    pub(super) fn save_all(&self, objects: &[Object], gone: &[Key]) -> Result<(), ClusterError> {
        if objects.len() <= 1 {
            objects.iter().try_for_each(|o| self.save(o))?;
        } else {
            let per_thread = objects.len().div_ceil(SAVE_THREADS);
            std::thread::scope(|s| {
                let threads: Vec<_> = objects
                    .chunks(per_thread)
                    .map(|chunk| s.spawn(move || chunk.iter().try_for_each(|o| self.save(o))))
                    .collect();
                threads.into_iter().try_for_each(|t| {
                    t.join().unwrap_or_else(|_| {
                        Err(io(&self.dir, "persist (a saving thread panicked)")(std::io::Error::other(
                            "panic",
                        )))
                    })
                })
            })?;
        }
        gone.iter().try_for_each(|k| self.remove(k))
    }

    /// Forgets the key (its tombstone expired).
    pub(super) fn remove(&self, key: &Key) -> Result<(), ClusterError> {
        let path = self.path(key, EXT);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, "remove")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use beemesh_state::Version;
    use std::os::unix::fs::MetadataExt;

    fn object(name: &str, body: Option<&str>) -> Object {
        let version = Version { wall_ms: 1, logical: 0, node: "h1".into() };
        Object::new(Key::new("Secret", "default", name), version, body.map(|b| b.as_bytes().to_vec().into()))
    }

    #[test]
    fn objects_round_trip_with_private_modes_and_a_corrupt_file_is_named() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().join("cluster")).expect("open");
        let (a, b) = (object("a", Some("{\"x\":1}")), object("b", None));
        store.save(&a).expect("save");
        store.save(&b).expect("save");
        store.save(&a).expect("save again");
        let mut loaded: Vec<Object> = store.load().expect("load").into_iter().map(|(_, o)| o).collect();
        loaded.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(loaded, vec![a.clone(), b.clone()]);
        assert_eq!(std::fs::metadata(store.dir()).expect("stat").mode() & 0o777, 0o700);
        for (path, _) in store.load().expect("load") {
            assert_eq!(std::fs::metadata(&path).expect("stat").mode() & 0o777, 0o600);
        }
        store.remove(&b.key).expect("remove");
        store.remove(&b.key).expect("remove twice");
        assert_eq!(store.load().expect("load").len(), 1);

        // A leftover temporary file is cleared; a damaged object file is an error naming it.
        std::fs::write(store.path(&b.key, TMP), b"half").expect("write");
        assert_eq!(store.load().expect("load").len(), 1);
        let path = store.path(&a.key, EXT);
        std::fs::write(&path, b"\xff\xff\xff").expect("write");
        let err = store.load().expect_err("corrupt").to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        // An object under another key's file name too.
        std::fs::write(&path, postcard::to_stdvec(&b).expect("encode")).expect("write");
        let err = store.load().expect_err("misplaced").to_string();
        assert!(err.contains("another key"), "{err}");
    }

    #[test]
    fn a_batch_is_saved_in_parallel_and_reads_back_whole() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path().join("cluster")).expect("open");
        let objects: Vec<Object> = (0..50).map(|i| object(&format!("s{i}"), Some("{}"))).collect();
        store.save_all(&objects, &[]).expect("save all");
        assert_eq!(store.load().expect("load").len(), 50);
        let gone: Vec<Key> = objects[..10].iter().map(|o| o.key.clone()).collect();
        store.save_all(&objects[10..12], &gone).expect("save and remove");
        let mut loaded: Vec<Object> = store.load().expect("load").into_iter().map(|(_, o)| o).collect();
        loaded.sort_by(|x, y| x.key.cmp(&y.key));
        let mut want = objects[10..].to_vec();
        want.sort_by(|x, y| x.key.cmp(&y.key));
        assert_eq!(loaded, want);
    }
}
