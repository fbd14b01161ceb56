//! Image store: docker-archive and OCI layouts (directory and tarball) built here, imported,
//! resolved and unpacked with whiteouts; tampered and malformed archives refused; hostile
//! layers (absolute paths, `..`, symlinked parents, hard links out, devices, overlay xattrs,
//! sizes that lie, gzip bombs, sparse files, deep paths, too many entries, FIFOs) refused
//! without touching a canary file or leaving anything.

use std::path::{Path, PathBuf};

use super::testdata::*;
use super::*;

#[test]
fn oci_layout_directory_and_tarball_import_and_resolve() {
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = tmp.path().join("web");
    oci_layout(&layout, "1.0");
    let store = ImageStore::new(&tmp.path().join("state"));
    assert_eq!(store.import(&layout).expect("import dir"), vec!["web:1.0".to_string()]);
    let img = store.resolve("web:1.0").expect("resolve");
    assert_eq!(img.config.entrypoint, vec!["/bin/app"]);
    assert_eq!(img.config.working_dir, "/srv");
    assert_eq!(img.layer_dirs.len(), 2);
    assert!(img.layer_dirs[0].join("bin/app").is_file());
    assert!(img.layer_dirs[1].join("srv/index.html").is_file());
    // The whiteout became an overlay whiteout (0/0 character device).
    use std::os::unix::fs::FileTypeExt;
    let wh = std::fs::symlink_metadata(img.layer_dirs[1].join("etc/old")).expect("whiteout");
    assert!(wh.file_type().is_char_device());

    // The same layout as a tarball, full name in the annotation, shares the layers.
    let layout2 = tmp.path().join("web2");
    oci_layout(&layout2, "registry.local/shop/web:2");
    let tarball = tmp.path().join("web2.tar");
    tar_dir(&layout2, &tarball);
    assert_eq!(store.import(&tarball).expect("import tar"), vec!["registry.local/shop/web:2".to_string()]);
    let img2 = store.resolve("registry.local/shop/web:2").expect("resolve");
    assert_eq!(img2.layer_dirs, img.layer_dirs, "layers are unpacked once and shared");
    assert!(matches!(store.resolve("web:3"), Err(ImageError::NotFound(_))));
}

#[test]
fn docker_archive_imports_with_its_repo_tags() {
    let tmp = tempfile::tempdir().expect("tmp");
    let (base, _) = layers();
    let dir = tmp.path().join("save");
    std::fs::create_dir_all(dir.join("l1")).expect("mkdir");
    std::fs::write(dir.join("l1/layer.tar"), &base).expect("layer");
    std::fs::write(dir.join("cfg.json"), CONFIG).expect("config");
    std::fs::write(
        dir.join("manifest.json"),
        r#"[{"Config":"cfg.json","RepoTags":["busybox"],"Layers":["l1/layer.tar"]}]"#,
    )
    .expect("manifest");
    let tarball = tmp.path().join("busybox.tar");
    tar_dir(&dir, &tarball);
    let store = ImageStore::new(&tmp.path().join("state"));
    assert_eq!(store.import(&tarball).expect("import"), vec!["busybox:latest".to_string()]);
    assert_eq!(store.resolve("busybox").expect("resolve").config.cmd, vec!["--serve"]);
}

#[test]
fn tampered_and_malformed_archives_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = ImageStore::new(&tmp.path().join("state"));
    // A blob whose content does not match its digest.
    let layout = tmp.path().join("bad");
    oci_layout(&layout, "1");
    let (base, _) = layers();
    let mut tampered = base.clone();
    tampered[600] ^= 1;
    std::fs::write(layout.join("blobs/sha256").join(hex(&base)), &tampered).expect("tamper");
    assert!(matches!(store.import(&layout), Err(ImageError::DigestMismatch(_))));
    // Not an image at all.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    assert!(matches!(store.import(&empty), Err(ImageError::UnknownFormat(_))));
    // A docker manifest pointing outside the archive.
    let evil = tmp.path().join("evil");
    std::fs::create_dir_all(&evil).expect("mkdir");
    std::fs::write(
        evil.join("manifest.json"),
        r#"[{"Config":"../../etc/passwd","RepoTags":["x"],"Layers":[]}]"#,
    )
    .expect("manifest");
    let e = store.import(&evil).expect_err("escape");
    assert!(e.to_string().contains("leaves the archive"), "{e}");
    // Nothing half-imported is visible.
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn references_normalise_to_latest() {
    assert_eq!(normalize("busybox"), "busybox:latest");
    assert_eq!(normalize("busybox:1"), "busybox:1");
    assert_eq!(normalize("registry:5000/busybox"), "registry:5000/busybox:latest");
}

/// A canary outside the store, where hostile entries aim: `<tmp>/host/etc/shadow`.
fn canary(tmp: &Path) -> PathBuf {
    let etc = tmp.join("host/etc");
    std::fs::create_dir_all(&etc).expect("mkdir");
    std::fs::write(etc.join("shadow"), "canary").expect("canary");
    etc.join("shadow")
}

/// Imports a one-layer image of `layer` (gzip-compressed when `gz`); returns the error, after
/// checking that the canary is untouched and nothing of the import remains in the store.
fn refused(tmp: &Path, store: &ImageStore, layer: Vec<u8>, gz: bool) -> String {
    let shadow = tmp.join("host/etc/shadow");
    let layout = tempfile::tempdir_in(tmp).expect("tmp");
    let layer = if gz { gzip(&layer) } else { layer };
    layout_of(layout.path(), "1", &[layer], &[]);
    let e = store.import(layout.path()).expect_err("hostile layer must be refused").to_string();
    let meta = std::fs::symlink_metadata(&shadow).expect("canary still there");
    assert!(meta.is_file(), "canary replaced: {e}");
    assert_eq!(std::fs::read_to_string(&shadow).expect("canary"), "canary", "{e}");
    assert!(std::fs::read_dir(tmp.join("host/etc")).expect("etc").count() == 1, "{e}");
    let left = |d: &str| std::fs::read_dir(store.root().join(d)).map(|r| r.count()).unwrap_or(0);
    assert_eq!(left("layers"), 0, "half-unpacked layer left behind: {e}");
    assert_eq!(left("blobs/sha256"), 0, "blobs of a failed import left behind: {e}");
    assert!(store.list().expect("list").is_empty());
    e
}

#[test]
fn hostile_layers_never_touch_the_host_and_leave_nothing() {
    use tar::EntryType as T;
    let tmp = tempfile::tempdir().expect("tmp");
    let shadow = canary(tmp.path());
    let store = ImageStore::new(&tmp.path().join("state"));
    let abs_wh = format!("{}/.wh.shadow", shadow.parent().expect("etc").display());
    let abs = shadow.display().to_string();
    let host_etc = shadow.parent().expect("etc").display().to_string();
    // From layers/.<hex>.<pid>/, four `..` reach <tmp>.
    let up = b"../../../../host/etc/.wh.shadow";
    let cases: Vec<(Vec<Raw<'_>>, &str, &str)> = vec![
        (vec![Raw::file(up, b"")], "../../../../host/etc/.wh.shadow", "`..`"),
        (vec![Raw::file(b"a/../../x", b"")], "a/../../x", "`..`"),
        (vec![Raw::file(abs_wh.as_bytes(), b"")], &abs_wh, "absolute path"),
        (vec![Raw::file(abs.as_bytes(), b"pwned")], &abs, "absolute path"),
        (
            vec![Raw::link(b"etc", T::Symlink, host_etc.as_bytes()), Raw::file(b"etc/.wh.shadow", b"")],
            "etc/.wh.shadow",
            "symbolic link",
        ),
        (
            vec![Raw::link(b"etc", T::Symlink, host_etc.as_bytes()), Raw::file(b"etc/shadow", b"pwned")],
            "etc/shadow",
            "symbolic link",
        ),
        (
            vec![Raw::link(b"etc", T::Symlink, b"../../../../host/etc"), Raw::file(b"etc/.wh..wh..opq", b"")],
            "etc/.wh..wh..opq",
            "symbolic link",
        ),
        (
            vec![Raw::link(b"d", T::Symlink, b"/"), Raw::new(b"d/host/", T::Directory)],
            "d/host/",
            "symbolic link",
        ),
        (vec![Raw::link(b"x", T::Link, abs.as_bytes())], "x", "absolute path"),
        (vec![Raw::link(b"x", T::Link, b"../../../../host/etc/shadow")], "x", "`..`"),
        (
            vec![Raw::link(b"etc", T::Symlink, host_etc.as_bytes()), Raw::link(b"x", T::Link, b"etc/shadow")],
            "x",
            "symbolic link",
        ),
        (vec![Raw::link(b"x", T::Link, b"not/here")], "x", "not an earlier entry"),
        (vec![Raw { device: (1, 3), ..Raw::new(b"dev/null", T::Char) }], "dev/null", "character device 1:3"),
        (vec![Raw { device: (8, 0), ..Raw::new(b"dev/sda", T::Block) }], "dev/sda", "block device 8:0"),
        (
            vec![Raw { pax: &[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")], ..Raw::file(b"f", b"") }],
            "f",
            "trusted.overlay.redirect",
        ),
    ];
    for (i, (entries, entry, why)) in cases.into_iter().enumerate() {
        let e = refused(tmp.path(), &store, raw_layer(&entries), i % 2 == 0);
        assert!(e.contains(&format!("entry {entry:?}")), "case {i}: error must name the entry: {e}");
        assert!(e.contains(why), "case {i}: error must say why ({why}): {e}");
        assert!(e.contains("layer sha256:"), "case {i}: error must name the layer: {e}");
    }
}

#[test]
fn layers_keep_owners_modes_links_and_fifos_inside() {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::EntryType as T;
    let tmp = tempfile::tempdir().expect("tmp");
    let store = ImageStore::new(&tmp.path().join("state"));
    let layer = raw_layer(&[
        Raw { mode: 0o755, ..Raw::new(b"./bin/", T::Directory) },
        Raw { mode: 0o4755, uid: 1000, ..Raw::file(b"./bin/su", b"#!/bin/sh\n") },
        Raw::link(b"bin/su2", T::Link, b"bin/su"),
        // A link out is stored as a link (never followed: later entries through it fail).
        Raw::link(b"etc", T::Symlink, b"/etc"),
        Raw { mode: 0o600, ..Raw::new(b"run/fifo", T::Fifo) },
        Raw::new(b"gone", T::Char),
        Raw { pax: &[("SCHILY.xattr.user.note", b"hi")], ..Raw::file(b"noted", b"") },
        Raw::file(b"./.wh..wh.plnk", b""),
    ]);
    let layout = tmp.path().join("app");
    layout_of(&layout, "1", &[layer], &[]);
    assert_eq!(store.import(&layout).expect("import"), vec!["app:1".to_string()]);
    let dir = &store.resolve("app:1").expect("resolve").layer_dirs[0];
    let su = std::fs::metadata(dir.join("bin/su")).expect("su");
    assert_eq!((su.uid(), su.gid(), su.mode() & 0o7777), (1000, 1000, 0o4755));
    assert_eq!(std::fs::metadata(dir.join("bin/su2")).expect("su2").ino(), su.ino());
    assert_eq!(std::fs::read_link(dir.join("etc")).expect("link"), PathBuf::from("/etc"));
    let fifo = std::fs::symlink_metadata(dir.join("run/fifo")).expect("fifo");
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o777, 0o600);
    let gone = std::fs::symlink_metadata(dir.join("gone")).expect("whiteout");
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert!(!dir.join(".wh..wh.plnk").exists());
    // The store is root's alone.
    let mode = std::fs::metadata(store.root()).expect("store").mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn blobs_must_have_the_size_their_descriptor_says() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = ImageStore::new(&tmp.path().join("state"));
    let (base, _) = layers();
    for (name, claimed) in [("short", base.len() as u64 - 1), ("long", base.len() as u64 + 1)] {
        let layout = tmp.path().join(name);
        layout_of(&layout, "1", std::slice::from_ref(&base), &[claimed]);
        let e = store.import(&layout).expect_err("size mismatch");
        assert!(matches!(e, ImageError::SizeMismatch { expected, .. } if expected == claimed), "{e}");
    }
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn gzip_bombs_stop_at_the_unpacked_size_limit() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _ = canary(tmp.path());
    let store = ImageStore::new(&tmp.path().join("state")).max_unpacked(1 << 20);
    // 8 MiB of zeros: a few KiB compressed.
    let zeros = vec![0u8; 8 << 20];
    let bomb = layer(&[("zeros", &zeros)]);
    let e = refused(tmp.path(), &store, bomb, true);
    assert!(e.contains("past 1048576 unpacked bytes") && e.contains("imageMaxUnpackedBytes"), "{e}");
    // Headers the tar reader holds in memory (here a 17 MiB PAX record) have their own bound.
    let store_big = ImageStore::new(&tmp.path().join("state"));
    let big = vec![b'x'; 17 << 20];
    let pax = [("SCHILY.xattr.user.big", big.as_slice())];
    let e = refused(tmp.path(), &store_big, raw_layer(&[Raw { pax: &pax, ..Raw::file(b"f", b"") }]), true);
    assert!(e.contains("tar headers"), "{e}");
    // The limit holds for the image, not only per layer: two layers of 600 KiB each.
    let part = vec![1u8; 600 << 10];
    let (a, b) = (layer(&[("a", &part)]), layer(&[("b", &part)]));
    let layout = tmp.path().join("two");
    layout_of(&layout, "1", &[a, b], &[]);
    let e = store.import(&layout).expect_err("over the limit together").to_string();
    assert!(e.contains("past 1048576 unpacked bytes"), "{e}");
    assert_eq!(std::fs::read_dir(store.root().join("layers")).map(|r| r.count()).unwrap_or(0), 0);
}

#[test]
fn hostile_archive_tarballs_are_contained_too() {
    let tmp = tempfile::tempdir().expect("tmp");
    let shadow = canary(tmp.path());
    let store = ImageStore::new(&tmp.path().join("state"));
    // The archive's own entries: `..` out of the scratch directory.
    let tarball = tmp.path().join("evil.tar");
    std::fs::write(&tarball, raw_layer(&[Raw::file(b"../../../host/etc/shadow", b"pwned")])).expect("tar");
    let e = store.import(&tarball).expect_err("escape").to_string();
    assert!(e.contains("\"../../../host/etc/shadow\"") && e.contains("`..`"), "{e}");
    // A docker-archive whose manifest.json links to a host file: resolved inside the archive.
    let target = shadow.display().to_string();
    let tarball = tmp.path().join("link.tar");
    let layer = raw_layer(&[Raw::link(b"manifest.json", tar::EntryType::Symlink, target.as_bytes())]);
    std::fs::write(&tarball, layer).expect("tar");
    assert!(matches!(store.import(&tarball), Err(ImageError::UnknownFormat(_))));
    assert_eq!(std::fs::read_to_string(&shadow).expect("canary"), "canary");
    assert!(store.list().expect("list").is_empty());
}

#[test]
fn a_name_tags_an_image_whose_layout_has_only_a_bare_tag() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = ImageStore::new(&tmp.path().join("state"));
    let layout = tmp.path().join("web");
    oci_layout(&layout, "1.0");
    assert_eq!(store.import_as(&layout, Some("busybox")).expect("name"), vec!["busybox:1.0".to_string()]);
    assert_eq!(store.import_as(&layout, Some("shop/app:2")).expect("name"), vec!["shop/app:2".to_string()]);
    assert_eq!(store.import(&layout).expect("stem"), vec!["web:1.0".to_string()]);
    let e = store.import_as(&layout, Some("a b")).expect_err("bad name");
    assert!(matches!(e, ImageError::BadName { .. }), "{e}");
    let tags: Vec<String> = store.list().expect("list").into_iter().map(|(t, _)| t).collect();
    assert_eq!(tags, vec!["busybox:1.0", "shop/app:2", "web:1.0"]);
}

#[test]
fn entries_are_planned_from_their_headers() {
    use super::beneath::components;
    use super::layer::{plan, xattr_kept, Action, Kind};
    use tar::EntryType as T;
    let c = |p: &str| components(Path::new(p));
    assert_eq!(c("./a/./b/").expect("plain"), vec![std::ffi::OsString::from("a"), "b".into()]);
    assert!(c("/etc/x").expect_err("absolute").contains("absolute"));
    assert!(c("a/../b").expect_err("dotdot").contains("`..`"));
    let p = |path: &str, t: T, dev: Option<(u32, u32)>| plan(Kind::Layer, &c(path).expect("ok"), t, dev);
    assert_eq!(p("etc/.wh.old", T::Regular, None), Ok(Action::Whiteout("old".into())));
    assert_eq!(p("etc/.wh..wh..opq", T::Regular, None), Ok(Action::Opaque));
    assert_eq!(p("etc/.wh..wh.plnk", T::Directory, None), Ok(Action::Skip));
    assert!(p("etc/.wh.", T::Regular, None).is_err());
    assert!(p("etc/.wh..", T::Regular, None).is_err());
    assert_eq!(p("gone", T::Char, Some((0, 0))), Ok(Action::Whiteout("gone".into())));
    assert!(p("null", T::Char, Some((1, 3))).expect_err("device").contains("1:3"));
    assert_eq!(p("./", T::Directory, None), Ok(Action::Skip));
    assert!(p("./", T::Regular, None).is_err());
    // In an archive, whiteout names are plain files and FIFOs have no business.
    let a = |path: &str, t: T| plan(Kind::Archive, &c(path).expect("ok"), t, None);
    assert_eq!(a(".wh.x", T::Regular), Ok(Action::File));
    assert!(a("fifo", T::Fifo).is_err());
    assert_eq!(xattr_kept("user.x"), Ok(true));
    assert_eq!(xattr_kept("security.capability"), Ok(true));
    assert_eq!(xattr_kept("security.selinux"), Ok(false));
    assert!(xattr_kept("trusted.overlay.opaque").is_err());
}

/// A GNU sparse entry (type `S`) of `real` bytes, one byte of them stored (at the end).
fn gnu_sparse(name: &str, real: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path(name).expect("name");
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_mode(0o644);
    h.set_size(1);
    let gnu = h.as_gnu_mut().expect("a GNU header");
    gnu.set_real_size(real);
    gnu.sparse[0].set_offset(real - 1);
    gnu.sparse[0].set_length(1);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, [1u8].as_slice()).expect("entry");
    b.into_inner().expect("tar")
}

/// A sparse file's holes are written out in full by the tar reader: a few hundred bytes of
/// archive would fill the disk, so sparse entries (GNU `S`, PAX `GNU.sparse.*`) are refused,
/// in layers and in archive tarballs.
#[test]
fn sparse_files_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _ = canary(tmp.path());
    let store = ImageStore::new(&tmp.path().join("state")).max_unpacked(1 << 20);
    let e = refused(tmp.path(), &store, gnu_sparse("holes", 64 << 20), true);
    assert!(e.contains("entry \"holes\"") && e.contains("sparse file refused"), "{e}");
    let pax: [(&str, &[u8]); 2] = [("GNU.sparse.major", b"1"), ("GNU.sparse.realsize", b"67108864")];
    let layer = raw_layer(&[Raw { pax: &pax, ..Raw::file(b"GNUSparseFile.0/holes", b"0\n") }]);
    let e = refused(tmp.path(), &store, layer, false);
    assert!(e.contains("GNUSparseFile.0/holes") && e.contains("sparse file refused"), "{e}");
    let tarball = tmp.path().join("sparse.tar");
    std::fs::write(&tarball, gnu_sparse("index.json", 64 << 20)).expect("tar");
    let e = store.import(&tarball).expect_err("sparse archive").to_string();
    assert!(e.contains("sparse file refused"), "{e}");
    assert!(store.list().expect("list").is_empty());
}

/// A path of 16,000 components (a tree std's recursive removal cannot take down) or of more
/// than 4096 bytes is refused by name; 256 components are fine.
#[test]
fn deep_and_long_paths_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _ = canary(tmp.path());
    let store = ImageStore::new(&tmp.path().join("state"));
    let deep = |n: usize| "a/".repeat(n - 1) + "f";
    for (path, why) in [
        (deep(16_000), "path of 31999 bytes refused (at most 4096)"),
        (deep(257), "path deeper than 256 components refused"),
        (format!("{}/f", "d".repeat(4095)), "path of 4097 bytes refused"),
    ] {
        let pax = [("path", path.as_bytes())];
        // An ordinary file first: the refusal then sends the cleanup through a real tree.
        let layer = raw_layer(&[Raw::file(b"ok", b"x"), Raw { pax: &pax, ..Raw::file(b"x", b"") }]);
        let e = refused(tmp.path(), &store, layer, true);
        assert!(e.contains(why) && e.contains(&format!("entry \"{}...\"", &path[..200])), "{e}");
    }
    let path = deep(256);
    let pax = [("path", path.as_bytes())];
    let layout = tmp.path().join("deep");
    layout_of(&layout, "1", &[raw_layer(&[Raw { pax: &pax, ..Raw::file(b"x", b"x") }])], &[]);
    store.import(&layout).expect("256 components are fine");
    let dir = &store.resolve("deep:1").expect("resolve").layer_dirs[0];
    assert!(dir.join(&path).is_file());
}

/// Every entry is an inode, and so is every directory its path implies: an import makes at
/// most `imageMaxEntries` of them, over all its layers.
#[test]
fn entries_are_bounded() {
    let tmp = tempfile::tempdir().expect("tmp");
    let _ = canary(tmp.path());
    let store = ImageStore::new(&tmp.path().join("state")).max_entries(100);
    let names: Vec<String> = (0..101).map(|i| format!("f{i}")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), b"".as_slice())).collect();
    let e = refused(tmp.path(), &store, layer(&files), true);
    assert!(e.contains("past 100 entries") && e.contains("imageMaxEntries"), "{e}");
    // One entry whose path implies 149 directories.
    let path = "a/".repeat(149) + "f";
    let pax = [("path", path.as_bytes())];
    let e = refused(tmp.path(), &store, raw_layer(&[Raw { pax: &pax, ..Raw::file(b"x", b"") }]), false);
    assert!(e.contains("past 100 entries"), "{e}");
    // Two layers of 60 entries: each fits, the image does not.
    let (a, b) = (layer(&files[..60]), layer(&files[40..]));
    let layout = tmp.path().join("two");
    layout_of(&layout, "1", &[a.clone(), b], &[]);
    let e = store.import(&layout).expect_err("over the limit together").to_string();
    assert!(e.contains("past 100 entries"), "{e}");
    assert_eq!(std::fs::read_dir(store.root().join("layers")).map(|r| r.count()).unwrap_or(0), 0);
    let layout = tmp.path().join("one");
    layout_of(&layout, "1", &[a], &[]);
    store.import(&layout).expect("60 entries fit");
}

/// A FIFO where a layout's file should be: refused at once, not waited on (with the store
/// locked) for a writer that never comes.
#[test]
fn fifos_in_a_layout_directory_are_refused_not_opened() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = ImageStore::new(&tmp.path().join("state"));
    let layout = tmp.path().join("fifo");
    oci_layout(&layout, "1");
    let (base, _) = layers();
    let blob = layout.join("blobs/sha256").join(hex(&base));
    std::fs::remove_file(&blob).expect("rm");
    nix::unistd::mkfifo(&blob, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let (tx, rx) = std::sync::mpsc::channel();
    let importer = store.clone();
    std::thread::spawn(move || {
        let _ = tx.send(importer.import(&layout).map_err(|e| e.to_string()));
    });
    let result = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("the import hangs on a FIFO");
    let e = result.expect_err("a FIFO is not a blob");
    assert!(e.contains(&hex(&base)) && e.contains("not a regular file"), "{e}");
    assert!(store.list().expect("list").is_empty());
}
