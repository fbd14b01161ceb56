//! Unpacking a tar stream into a fresh directory: a layer blob (tar, optionally gzip) once into
//! `layers/<hex>/`, ready to be an overlayfs lower directory (OCI whiteouts become overlay
//! whiteouts: `.wh.NAME` -> a 0/0 character device, `.wh..wh..opq` -> the
//! `trusted.overlay.opaque` xattr), or an image archive into a scratch directory.
//!
//! Every entry is created from descriptors by `beneath.rs`: absolute paths, `..`, parents that
//! are symbolic links, hard links to anything outside the layer, device nodes (other than the
//! 0/0 whiteout form), `trusted.overlay.*` xattrs, sparse files (GNU `S` entries, PAX
//! `GNU.sparse.*`: a few bytes of archive would write out gigabytes of holes) and paths deeper
//! than 256 components or longer than 4096 bytes are refused with an error naming the entry;
//! the bytes written are bounded (`imageMaxUnpackedBytes`, a gzip bomb stops there), and so
//! are the inodes made (`imageMaxEntries`: entries and the parent directories their paths
//! imply).
//! A failed unpack leaves nothing: the temporary directory is removed.

use std::cell::Cell;
use std::ffi::{OsStr, OsString};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid};
use tar::EntryType;
use tracing::warn;

use super::beneath::{components, open_child_dir, reopen_dir, Beneath};
use super::{io, Budget, ImageError};

/// What is being unpacked: an image layer (ownership, modes, xattrs and whiteouts kept) or an
/// image archive (plain files, directories and links only; read, never run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Layer,
    Archive,
}

/// What one entry becomes (decided from its header alone: [`plan`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Skip,
    Dir,
    File,
    Symlink,
    HardLink,
    Fifo,
    /// An overlay whiteout (0/0 character device) of this name in the entry's parent.
    Whiteout(OsString),
    /// The entry's parent directory becomes opaque.
    Opaque,
}

/// Decides what an entry at `comps` (checked by `beneath::components`) of type `kind` becomes;
/// `Err` is the reason it is refused.
pub(super) fn plan(
    kind: Kind,
    comps: &[OsString],
    entry_type: EntryType,
    device: Option<(u32, u32)>,
) -> Result<Action, String> {
    if entry_type == EntryType::XGlobalHeader {
        return Ok(Action::Skip);
    }
    let Some(name) = comps.last() else {
        // `./` itself: the directory exists already and keeps its mode.
        return match entry_type {
            EntryType::Directory => Ok(Action::Skip),
            _ => Err("empty path".into()),
        };
    };
    if kind == Kind::Layer {
        let name = name.as_bytes();
        if name == b".wh..wh..opq" {
            return Ok(Action::Opaque);
        }
        if name.starts_with(b".wh..wh.") {
            // AUFS bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`), skipped as Docker does.
            return Ok(Action::Skip);
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err("whiteout without a file name".into());
            }
            return Ok(Action::Whiteout(OsStr::from_bytes(hidden).to_os_string()));
        }
    }
    match entry_type {
        EntryType::Regular | EntryType::Continuous => Ok(Action::File),
        EntryType::GNUSparse => Err(SPARSE.into()),
        EntryType::Directory => Ok(Action::Dir),
        EntryType::Symlink => Ok(Action::Symlink),
        EntryType::Link => Ok(Action::HardLink),
        EntryType::Fifo if kind == Kind::Layer => Ok(Action::Fifo),
        EntryType::Char if kind == Kind::Layer && device == Some((0, 0)) => {
            Ok(Action::Whiteout(name.clone()))
        }
        EntryType::Char | EntryType::Block => {
            let (major, minor) = device.unwrap_or_default();
            let what = if entry_type == EntryType::Char { "character" } else { "block" };
            Err(format!("{what} device {major}:{minor} refused (a pod must not gain host devices)"))
        }
        other => Err(format!("entry type {other:?} is not supported here")),
    }
}

const SPARSE: &str = "sparse file refused (its holes would be written out in full)";

/// Refuses an entry whose PAX records describe a sparse file (`GNU.sparse.*`, written by GNU
/// tar `--sparse --format=posix`): its data is a map and fragments, not the file.
fn refuse_pax_sparse(entry: &mut tar::Entry<'_, impl Read>) -> Result<(), Fail> {
    let Some(exts) = entry.pax_extensions().map_err(|e| Fail::Io("read PAX records", e))? else {
        return Ok(());
    };
    for ext in exts {
        let ext = ext.map_err(|e| Fail::Io("read PAX records", e))?;
        if ext.key_bytes().starts_with(b"GNU.sparse.") {
            return Err(Fail::Reason(SPARSE.into()));
        }
    }
    Ok(())
}

/// Which extended attributes of an image file are kept: `Ok(true)` set, `Ok(false)` skipped
/// (with a warning), `Err` refused.
pub(super) fn xattr_kept(name: &str) -> Result<bool, String> {
    if name.starts_with("trusted.overlay.") {
        return Err(format!("extended attribute {name} refused (overlay metadata is the store's own)"));
    }
    Ok(name.starts_with("user.") || name == "security.capability")
}

/// Unpacks `blob` into `dest` unless already there (a finished unpack is renamed into place),
/// within `budget` (what remains of the import's `limits`); returns what it used.
pub(super) fn unpack_once(
    blob: &Path,
    dest: &Path,
    budget: Budget,
    limits: Budget,
) -> Result<Budget, ImageError> {
    if dest.is_dir() {
        return Ok(Budget::default());
    }
    let parent = dest.parent().expect("layer directories live under layers/");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join(format!(
        ".{}.{}",
        dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let what = format!("layer sha256:{}", dest.file_name().unwrap_or_default().to_string_lossy());
    let result = (|| {
        let file = std::fs::File::open(blob).map_err(io(blob))?;
        let mut reader = BufReader::new(file);
        let gzip = reader.fill_buf().map_err(io(blob))?.starts_with(&[0x1f, 0x8b]);
        let stream: Box<dyn Read> =
            if gzip { Box::new(flate2::read::GzDecoder::new(reader)) } else { Box::new(reader) };
        let used = unpack(stream, &tmp, Kind::Layer, &what, budget, limits)?;
        std::fs::rename(&tmp, dest).map_err(io(dest))?;
        Ok(used)
    })();
    if result.is_err() {
        let _ = crate::sys::tree::remove_tree(&tmp);
    }
    result
}

/// Most bytes of tar headers read between two entries: long names and PAX records are held in
/// memory by the tar reader, so they get a bound of their own, far below the unpacked limit.
const HEADERS_LIMIT: u64 = 16 << 20;

/// What has been read of the tar stream (after decompression): all of it, and (while
/// `in_headers`) of the headers before the next entry; and what has been written to files.
#[derive(Default)]
struct Meter {
    used: Cell<u64>,
    headers: Cell<u64>,
    in_headers: Cell<bool>,
    written: Cell<u64>,
}

/// Counts through a [`Meter`] and fails past either limit.
struct Counted<R> {
    inner: R,
    meter: Rc<Meter>,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let m = &self.meter;
        m.used.set(m.used.get() + n as u64);
        if m.used.get() > self.limit {
            return Err(io::Error::other("unpacked size limit reached"));
        }
        if m.in_headers.get() {
            m.headers.set(m.headers.get() + n as u64);
            if m.headers.get() > HEADERS_LIMIT {
                return Err(io::Error::other(format!(
                    "tar headers (long names, PAX records) larger than {HEADERS_LIMIT} bytes"
                )));
            }
        }
        Ok(n)
    }
}

/// Why one entry failed.
enum Fail {
    Reason(String),
    Io(&'static str, io::Error),
}

impl From<Errno> for Fail {
    fn from(e: Errno) -> Self {
        Fail::Io("create", e.into())
    }
}

/// An entry's path for errors: a long one shortened (the refusal says how long it is).
fn shown(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.into_owned(),
    }
}

/// Unpacks the tar `stream` into `dir` (created here; removed by the caller on failure),
/// reading and writing at most `budget.bytes` bytes and making at most `budget.entries`
/// inodes (of the import's `limits`, which errors name). `what` names the layer or archive
/// in errors. Returns what it used.
pub(super) fn unpack(
    stream: impl Read,
    dir: &Path,
    kind: Kind,
    what: &str,
    budget: Budget,
    limits: Budget,
) -> Result<Budget, ImageError> {
    crate::sys::tree::remove_tree(dir).map_err(io(dir))?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let root = Beneath::open(dir).map_err(io(dir))?;
    let meter = Rc::new(Meter::default());
    let mut archive = tar::Archive::new(Counted { inner: stream, meter: meter.clone(), limit: budget.bytes });
    let over = || meter.used.get() > budget.bytes || meter.written.get() > budget.bytes;
    let too_large = || ImageError::TooLarge { what: what.to_owned(), limit: limits.bytes };
    let too_many = || ImageError::TooManyEntries { what: what.to_owned(), limit: limits.entries };
    // Entries seen; the directories their paths implied are counted by `root`.
    let mut entries_seen = 0u64;
    let inodes = |seen: u64| seen.saturating_add(root.created());
    let stream_err = |e: io::Error| if over() { too_large() } else { super::malformed(what, e) };
    // Directory times are set last: creating their children would change them.
    let mut dir_times: Vec<(Vec<OsString>, u64)> = Vec::new();
    let mut entries = archive.entries().map_err(stream_err)?;
    loop {
        meter.headers.set(0);
        meter.in_headers.set(true);
        let Some(entry) = entries.next() else { break };
        meter.in_headers.set(false);
        let mut entry = entry.map_err(stream_err)?;
        entries_seen += 1;
        if inodes(entries_seen) > budget.entries {
            return Err(too_many());
        }
        let raw = entry.path_bytes().into_owned();
        let shown = shown(&raw);
        let bad = |reason: String| ImageError::Entry { what: what.to_owned(), entry: shown.clone(), reason };
        let comps = components(Path::new(OsStr::from_bytes(&raw))).map_err(bad)?;
        let header = entry.header();
        let device = match (header.device_major(), header.device_minor()) {
            (Ok(Some(major)), Ok(Some(minor))) => Some((major, minor)),
            _ => None,
        };
        let action = plan(kind, &comps, header.entry_type(), device).map_err(bad)?;
        match refuse_pax_sparse(&mut entry) {
            Ok(()) => {}
            Err(Fail::Reason(reason)) => return Err(bad(reason)),
            Err(Fail::Io(doing, e)) => return Err(bad(format!("{doing}: {e}"))),
        }
        // A file that cannot fit is refused before a byte of it is written.
        let room = budget.bytes.saturating_sub(meter.written.get());
        if action == Action::File && entry.size() > room {
            return Err(too_large());
        }
        let applied = apply(&root, &mut entry, kind, &comps, action, &mut dir_times, (&meter, room))
            // What the entry did not use is skipped here, not counted as headers.
            .and_then(|()| std::io::copy(&mut entry, &mut std::io::sink()).map_err(|e| Fail::Io("read", e)));
        match applied {
            Ok(_) => {}
            Err(_) if over() => return Err(too_large()),
            Err(Fail::Reason(reason)) => return Err(bad(reason)),
            Err(Fail::Io(doing, e)) => return Err(bad(format!("{doing}: {e}"))),
        }
        if inodes(entries_seen) > budget.entries {
            return Err(too_many());
        }
    }
    for (comps, secs) in dir_times.iter().rev() {
        let t = TimeSpec::new(i64::try_from(*secs).unwrap_or(0), 0);
        if let Ok(rw) = root.dir(comps, false).and_then(|d| reopen_dir(&d)) {
            let _ = nix::sys::stat::futimens(&rw, &t, &t);
        }
    }
    Ok(Budget { bytes: meter.used.get().max(meter.written.get()), entries: inodes(entries_seen) })
}

/// A parent walk's failure, said plainly.
fn walk_err(e: io::Error) -> Fail {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ELOOP) => Fail::Reason(
            "a parent directory is a symbolic link (refused: entries must stay inside the layer)".into(),
        ),
        Some(Errno::ENOTDIR) => Fail::Reason("a parent is not a directory".into()),
        Some(Errno::EXDEV) => Fail::Reason("a parent crosses a mount point".into()),
        _ => Fail::Io("open the parent directory", e),
    }
}

/// Removes what `name` in `parent` holds (a later entry replaces an earlier one, as tar does).
fn clear(parent: &OwnedFd, name: &OsStr) -> Result<(), Fail> {
    use nix::unistd::{unlinkat, UnlinkatFlags};
    match nix::sys::stat::fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(Fail::Io("inspect an earlier entry", e.into())),
        Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
            match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
                Ok(()) => Ok(()),
                Err(Errno::ENOTEMPTY) => {
                    Err(Fail::Reason("replaces a non-empty directory of the same layer".into()))
                }
                Err(e) => Err(Fail::Io("replace an earlier entry", e.into())),
            }
        }
        Ok(_) => unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
            .map_err(|e| Fail::Io("replace an earlier entry", e.into())),
    }
}

fn link_target(entry: &tar::Entry<'_, impl Read>) -> Result<OsString, Fail> {
    match entry.link_name_bytes() {
        Some(t) if !t.is_empty() => Ok(OsString::from_vec(t.into_owned())),
        _ => Err(Fail::Reason("link without a target".into())),
    }
}

/// Owner and group from the header (an empty field, as some writers leave it, is root).
fn ids(h: &tar::Header) -> Result<(Uid, Gid), Fail> {
    let id = |v: io::Result<u64>, raw: &[u8], what: &str| {
        if raw.iter().all(|b| *b == 0 || *b == b' ') {
            return Ok(0);
        }
        v.ok()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| Fail::Reason(format!("{what} is not a 32-bit id")))
    };
    let old = h.as_old();
    Ok((Uid::from_raw(id(h.uid(), &old.uid, "uid")?), Gid::from_raw(id(h.gid(), &old.gid, "gid")?)))
}

fn mode(h: &tar::Header) -> Result<Mode, Fail> {
    let m = h.mode().map_err(|e| Fail::Io("read the mode", e))?;
    Ok(Mode::from_bits_truncate(m & 0o7777))
}

/// Gives `name` in `parent` the entry's owner, without following it if it is a link.
fn chown_name(parent: &OwnedFd, name: &OsStr, h: &tar::Header) -> Result<(), Fail> {
    let (uid, gid) = ids(h)?;
    nix::unistd::fchownat(parent, name, Some(uid), Some(gid), AtFlags::AT_SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn mtime(h: &tar::Header) -> TimeSpec {
    TimeSpec::new(h.mtime().ok().and_then(|t| i64::try_from(t).ok()).unwrap_or(0), 0)
}

/// The entry's kept extended attributes (PAX `SCHILY.xattr.NAME` records).
fn xattrs(entry: &mut tar::Entry<'_, impl Read>) -> Result<Vec<(String, Vec<u8>)>, Fail> {
    let mut out = Vec::new();
    let Some(exts) = entry.pax_extensions().map_err(|e| Fail::Io("read PAX records", e))? else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(|e| Fail::Io("read PAX records", e))?;
        let Some(name) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) else { continue };
        if xattr_kept(name).map_err(Fail::Reason)? {
            out.push((name.to_owned(), ext.value_bytes().to_vec()));
        } else {
            warn!(xattr = name, "extended attribute of an image file skipped");
        }
    }
    Ok(out)
}

/// Owner, mode (after the owner: chown clears setuid bits), xattrs (after the owner: chown
/// clears file capabilities) of a file or directory we hold open.
fn finish(fd: &OwnedFd, h: &tar::Header, xattrs: &[(String, Vec<u8>)]) -> Result<(), Fail> {
    let (uid, gid) = ids(h)?;
    nix::unistd::fchown(fd, Some(uid), Some(gid)).map_err(|e| Fail::Io("set the owner", e.into()))?;
    nix::sys::stat::fchmod(fd, mode(h)?).map_err(|e| Fail::Io("set the mode", e.into()))?;
    for (name, value) in xattrs {
        crate::sys::fsetxattr(fd, name, value).map_err(|e| Fail::Io("set an extended attribute", e))?;
    }
    Ok(())
}

fn apply(
    root: &Beneath,
    entry: &mut tar::Entry<'_, impl Read>,
    kind: Kind,
    comps: &[OsString],
    action: Action,
    dir_times: &mut Vec<(Vec<OsString>, u64)>,
    (meter, room): (&Meter, u64),
) -> Result<(), Fail> {
    let layer = kind == Kind::Layer;
    let xattrs = if layer { xattrs(entry)? } else { Vec::new() };
    let h = entry.header().clone();
    let Some((name, parent_comps)) = comps.split_last() else { return Ok(()) };
    let parent = || root.dir(parent_comps, true).map_err(walk_err);
    match action {
        Action::Skip => {}
        Action::Opaque => {
            let dir = reopen_dir(&parent()?).map_err(|e| Fail::Io("open the directory", e))?;
            crate::sys::fsetxattr(&dir, "trusted.overlay.opaque", b"y")
                .map_err(|e| Fail::Io("mark the directory opaque", e))?;
        }
        Action::Whiteout(hidden) => {
            let parent = parent()?;
            clear(&parent, &hidden)?;
            nix::sys::stat::mknodat(&parent, hidden.as_os_str(), SFlag::S_IFCHR, Mode::empty(), 0)?;
        }
        Action::Dir => {
            let parent = parent()?;
            match nix::sys::stat::mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o700)) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {
                    if open_child_dir(&parent, name).is_err() {
                        clear(&parent, name)?;
                        nix::sys::stat::mkdirat(&parent, name.as_os_str(), Mode::from_bits_truncate(0o700))?;
                    }
                }
                Err(e) => return Err(e.into()),
            }
            let dir = open_child_dir(&parent, name).map_err(|e| Fail::Io("open the directory", e))?;
            if layer {
                finish(&dir, &h, &xattrs)?;
                dir_times.push((comps.to_vec(), h.mtime().unwrap_or(0)));
            }
        }
        Action::File => {
            let parent = parent()?;
            clear(&parent, name)?;
            let flags =
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let fd = nix::fcntl::openat(&parent, name.as_os_str(), flags, Mode::from_bits_truncate(0o600))?;
            let mut file = std::fs::File::from(fd);
            // What is written counts, whatever the tar reader makes of the stream.
            let n = std::io::copy(&mut entry.take(room.saturating_add(1)), &mut file)
                .map_err(|e| Fail::Io("write the file", e))?;
            meter.written.set(meter.written.get().saturating_add(n));
            if n > room {
                return Err(Fail::Reason("larger than the unpacked size limit".into()));
            }
            let fd = OwnedFd::from(file);
            if layer {
                finish(&fd, &h, &xattrs)?;
                let t = mtime(&h);
                nix::sys::stat::futimens(&fd, &t, &t).map_err(|e| Fail::Io("set the times", e.into()))?;
            }
        }
        Action::Symlink => {
            let target = link_target(entry)?;
            let parent = parent()?;
            clear(&parent, name)?;
            nix::unistd::symlinkat(target.as_os_str(), &parent, name.as_os_str())?;
            if layer {
                chown_name(&parent, name, &h)?;
                let t = mtime(&h);
                nix::sys::stat::utimensat(
                    &parent,
                    name.as_os_str(),
                    &t,
                    &t,
                    UtimensatFlags::NoFollowSymlink,
                )?;
            }
        }
        Action::HardLink => {
            let target = link_target(entry)?;
            let shown = target.to_string_lossy().into_owned();
            let tcomps = components(Path::new(&target))
                .map_err(|r| Fail::Reason(format!("hard link target {shown:?}: {r}")))?;
            let Some((tname, tparent_comps)) = tcomps.split_last() else {
                return Err(Fail::Reason("hard link to the layer's root".into()));
            };
            if tcomps == comps {
                return Err(Fail::Reason("hard link to itself".into()));
            }
            let missing =
                || Fail::Reason(format!("hard link target {shown:?} is not an earlier entry of this layer"));
            let tparent = root.dir(tparent_comps, false).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT) => missing(),
                _ => walk_err(e),
            })?;
            let parent = parent()?;
            clear(&parent, name)?;
            match nix::unistd::linkat(
                &tparent,
                tname.as_os_str(),
                &parent,
                name.as_os_str(),
                AtFlags::empty(),
            ) {
                Ok(()) => {}
                Err(Errno::ENOENT) => return Err(missing()),
                Err(e) => return Err(Fail::Io("link", e.into())),
            }
        }
        Action::Fifo => {
            let parent = parent()?;
            clear(&parent, name)?;
            nix::sys::stat::mknodat(
                &parent,
                name.as_os_str(),
                SFlag::S_IFIFO,
                Mode::from_bits_truncate(0o600),
                0,
            )?;
            chown_name(&parent, name, &h)?;
            // Just made by us in a directory we hold: the name is this FIFO, not a link.
            nix::sys::stat::fchmodat(
                &parent,
                name.as_os_str(),
                mode(&h)?,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            )?;
        }
    }
    Ok(())
}
