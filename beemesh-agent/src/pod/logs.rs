//! Bounded container logs. A container's stdout and stderr go to `logs/<c>.log`, opened by the
//! pod's init with O_APPEND; the agent's tick (`app::pods`, on a blocking thread) calls `bound`
//! for each live log: past `containerLogMaxBytes` its last `containerLogMaxBytes` bytes are
//! copied to `logs/<c>.log.1` (replacing the earlier one) and the live file is truncated. The
//! container carries on writing at the new end (O_APPEND), so no hole of zeros is left.

use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// How many bytes of a live log of `len` bytes to keep in the rotated file; `None` while it is
/// within `max`.
pub fn tail_to_keep(len: u64, max: u64) -> Option<u64> {
    (len > max).then_some(max)
}

/// Cuts the live log `live` down if it is larger than `max` bytes, keeping its tail in
/// `rotated`. True if it was cut; a missing log is not an error. Never follows a link, never
/// blocks on something that is not a regular file. Bytes written between the copy and the
/// truncation are lost (as with logrotate's copytruncate).
pub fn bound(live: &Path, rotated: &Path, max: u64) -> io::Result<bool> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(live)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!("{} is not a regular file", live.display())));
    }
    let Some(keep) = tail_to_keep(meta.len(), max) else { return Ok(false) };
    let mut name = rotated.as_os_str().to_owned();
    name.push(".tmp");
    let tmp = Path::new(&name);
    match std::fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // create_new: O_EXCL, so nothing planted at the name is followed.
    let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o640).open(tmp)?;
    let mut from = &file;
    from.seek(SeekFrom::Start(meta.len() - keep))?;
    io::copy(&mut io::Read::take(from, keep), &mut out)?;
    std::fs::rename(tmp, rotated)?;
    file.set_len(0)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn logs_within_the_limit_are_left_alone() {
        assert_eq!(tail_to_keep(100, 100), None);
        assert_eq!(tail_to_keep(101, 100), Some(100));
        let tmp = tempfile::tempdir().expect("tempdir");
        let (live, rotated) = (tmp.path().join("c.log"), tmp.path().join("c.log.1"));
        assert!(!bound(&live, &rotated, 10).expect("missing is fine"));
        std::fs::write(&live, "0123456789").expect("write");
        assert!(!bound(&live, &rotated, 10).expect("at the limit"));
        assert_eq!(std::fs::read(&live).expect("read"), b"0123456789");
        assert!(!rotated.exists());
    }

    #[test]
    fn a_log_past_the_limit_keeps_its_tail_and_the_writer_carries_on_at_the_start() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (live, rotated) = (tmp.path().join("c.log"), tmp.path().join("c.log.1"));
        // The container's stdout, as init opens it.
        let mut writer = std::fs::OpenOptions::new().create(true).append(true).open(&live).expect("open");
        for i in 0..100 {
            writeln!(writer, "line {i:03}").expect("write");
        }
        assert!(bound(&live, &rotated, 18).expect("cut"));
        assert_eq!(std::fs::read_to_string(&rotated).expect("rotated"), "line 098\nline 099\n");
        assert_eq!(std::fs::metadata(&live).expect("live").len(), 0);
        writeln!(writer, "after").expect("write");
        assert_eq!(std::fs::read(&live).expect("live"), b"after\n", "no hole of zeros before it");
        // The next cut replaces the rotated file.
        writer.write_all(&[b'x'; 30]).expect("write");
        assert!(bound(&live, &rotated, 18).expect("cut again"));
        assert_eq!(std::fs::read(&rotated).expect("rotated"), vec![b'x'; 18]);
    }

    #[test]
    fn links_and_fifos_are_refused_without_blocking() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let target = tmp.path().join("elsewhere");
        std::fs::write(&target, [b'y'; 64]).expect("write");
        let link = tmp.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        assert!(bound(&link, &tmp.path().join("link.log.1"), 10).is_err());
        assert_eq!(std::fs::metadata(&target).expect("target").len(), 64, "the link's target is untouched");
        let fifo = tmp.path().join("fifo.log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        let err = bound(&fifo, &tmp.path().join("fifo.log.1"), 10).expect_err("a fifo");
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // A link planted at the rotated file's name is replaced, not followed.
        let live = tmp.path().join("c.log");
        std::fs::write(&live, [b'z'; 20]).expect("write");
        let rotated = tmp.path().join("c.log.1");
        std::os::unix::fs::symlink(&target, &rotated).expect("symlink");
        assert!(bound(&live, &rotated, 10).expect("cut"));
        assert_eq!(std::fs::read(&rotated).expect("rotated"), vec![b'z'; 10]);
        assert_eq!(std::fs::read(&target).expect("target"), vec![b'y'; 64]);
    }
}
