//! Image store: docker-archive and OCI layouts (directory and tarball) built here, imported,
//! resolved and unpacked with whiteouts; tampered and malformed archives refused.

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
    std::fs::write(layout.join("blobs/sha256").join(hex(&base)), b"tampered").expect("tamper");
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
