//! Unpacking a layer blob (tar, optionally gzip) once into its own directory, ready to be an
//! overlayfs lower directory: OCI whiteouts become overlay whiteouts (`.wh.NAME` -> a 0/0
//! character device, `.wh..wh..opq` -> the `trusted.overlay.opaque` xattr).

use std::io::{BufRead, BufReader};
use std::path::Path;

use super::{io, malformed, ImageError};

/// Unpacks `blob` into `dest` unless already there (a finished unpack is renamed into place).
pub(super) fn unpack_once(blob: &Path, dest: &Path) -> Result<(), ImageError> {
    if dest.is_dir() {
        return Ok(());
    }
    let parent = dest.parent().expect("layer directories live under layers/");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join(format!(
        ".{}.{}",
        dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = unpack(blob, &tmp).and_then(|()| std::fs::rename(&tmp, dest).map_err(io(dest)));
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn unpack(blob: &Path, dir: &Path) -> Result<(), ImageError> {
    let file = std::fs::File::open(blob).map_err(io(blob))?;
    let mut reader = BufReader::new(file);
    let gzip = reader.fill_buf().map_err(io(blob))?.starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn std::io::Read> =
        if gzip { Box::new(flate2::read::GzDecoder::new(reader)) } else { Box::new(reader) };
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(true);
    archive.set_unpack_xattrs(true);
    let what = blob.display().to_string();
    for entry in archive.entries().map_err(|e| malformed(&what, e))? {
        let mut entry = entry.map_err(|e| malformed(&what, e))?;
        let path = entry.path().map_err(|e| malformed(&what, e))?.into_owned();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name == ".wh..wh..opq" {
            let target = dir.join(path.parent().unwrap_or(Path::new("")));
            std::fs::create_dir_all(&target).map_err(io(&target))?;
            crate::sys::overlay_opaque(&target).map_err(io(&target))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let target = dir.join(path.parent().unwrap_or(Path::new(""))).join(hidden);
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p).map_err(io(p))?;
            }
            crate::sys::overlay_whiteout(&target).map_err(io(&target))?;
            continue;
        }
        // `unpack_in` refuses entries that would escape `dir`.
        entry.unpack_in(dir).map_err(|e| malformed(&what, e))?;
    }
    Ok(())
}
