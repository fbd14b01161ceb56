//! Test images built in code: a two-layer image (the top layer gzip-compressed, with a file
//! whiteout and an opaque directory) as an OCI layout. Used by the image and pod tests.

use std::io::Write;
use std::path::Path;

/// A layer tarball with the given (path, contents) files.
pub(crate) fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, path, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

pub(crate) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) const CONFIG: &[u8] =
    br#"{"config":{"Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["PATH=/bin"],"WorkingDir":"/srv"}}"#;

pub(crate) fn layers() -> (Vec<u8>, Vec<u8>) {
    let base = layer(&[("bin/app", b"#!/bin/sh\n"), ("etc/old", b"gone"), ("var/cache/x", b"x")]);
    let top =
        gzip(&layer(&[("etc/.wh.old", b""), ("var/cache/.wh..wh..opq", b""), ("srv/index.html", b"hi")]));
    (base, top)
}

/// An OCI image layout directory with one image, tagged by `ref_name`.
pub(crate) fn oci_layout(dir: &Path, ref_name: &str) {
    let (base, top) = layers();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    for b in [&base, &top, &CONFIG.to_vec()] {
        std::fs::write(blobs.join(hex(b)), b).expect("blob");
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},
        "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}},
                  {{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:{}","size":{}}}]}}"#,
        hex(CONFIG),
        CONFIG.len(),
        hex(&base),
        base.len(),
        hex(&top),
        top.len()
    );
    std::fs::write(blobs.join(hex(manifest.as_bytes())), &manifest).expect("manifest");
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "digest":"sha256:{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{ref_name}"}}}}]}}"#,
        hex(manifest.as_bytes()),
        manifest.len()
    );
    std::fs::write(dir.join("index.json"), index).expect("index");
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).expect("layout");
}

pub(crate) fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).expect("create"));
    b.append_dir_all(".", dir).expect("tar dir");
    b.finish().expect("finish");
}
