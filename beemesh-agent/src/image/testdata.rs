//! Test images built in code: a two-layer image (the top layer gzip-compressed, with a file
//! whiteout and an opaque directory) as an OCI layout, and raw tar entries (any name, `..` and
//! absolute ones included) for hostile layers. Used by the image and pod tests.

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
    layout_of(dir, ref_name, &[base, top], &[]);
}

/// An OCI image layout directory with one image of `layers`, tagged by `ref_name`; `sizes`
/// (when not empty) are the layer sizes the manifest claims.
pub(crate) fn layout_of(dir: &Path, ref_name: &str, layers: &[Vec<u8>], sizes: &[u64]) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    for b in layers.iter().chain([&CONFIG.to_vec()]) {
        std::fs::write(blobs.join(hex(b)), b).expect("blob");
    }
    let descriptors: Vec<String> = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let media = if l.starts_with(&[0x1f, 0x8b]) { "tar+gzip" } else { "tar" };
            let size = sizes.get(i).copied().unwrap_or(l.len() as u64);
            format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.{media}","digest":"sha256:{}","size":{size}}}"#,
                hex(l)
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},
        "layers":[{}]}}"#,
        hex(CONFIG),
        CONFIG.len(),
        descriptors.join(",")
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

/// One raw tar entry, for hostile layers: `name` and `link` are written as given (tar's
/// builder refuses `..`), owned by `uid`, with `mode`, and `device` for device nodes.
#[derive(Clone, Debug)]
pub(crate) struct Raw<'a> {
    pub name: &'a [u8],
    pub kind: tar::EntryType,
    pub link: &'a [u8],
    pub data: &'a [u8],
    pub mode: u32,
    pub uid: u64,
    pub device: (u32, u32),
    /// PAX records (`key`, `value`) written before the entry.
    pub pax: &'a [(&'a str, &'a [u8])],
}

impl<'a> Raw<'a> {
    pub(crate) fn new(name: &'a [u8], kind: tar::EntryType) -> Self {
        Self { name, kind, link: b"", data: b"", mode: 0o644, uid: 0, device: (0, 0), pax: &[] }
    }
    pub(crate) fn file(name: &'a [u8], data: &'a [u8]) -> Self {
        Self { data, ..Self::new(name, tar::EntryType::Regular) }
    }
    pub(crate) fn link(name: &'a [u8], kind: tar::EntryType, link: &'a [u8]) -> Self {
        Self { link, ..Self::new(name, kind) }
    }
}

/// A tar stream of raw entries.
pub(crate) fn raw_layer(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.pax.is_empty() {
            let mut records = Vec::new();
            for (k, v) in e.pax {
                let body = [b" ".as_slice(), k.as_bytes(), b"=", v, b"\n"].concat();
                // The record's length counts its own digits.
                let mut len = body.len() + 1;
                while len.to_string().len() + body.len() != len {
                    len += 1;
                }
                records.extend_from_slice(len.to_string().as_bytes());
                records.extend_from_slice(&body);
            }
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_size(records.len() as u64);
            h.set_mode(0o644);
            h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            h.set_cksum();
            b.append(&h, records.as_slice()).expect("pax");
        }
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link);
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(e.uid);
        h.set_gid(e.uid);
        h.set_mtime(1_700_000_000);
        h.set_device_major(e.device.0).expect("major");
        h.set_device_minor(e.device.1).expect("minor");
        h.set_cksum();
        b.append(&h, e.data).expect("entry");
    }
    b.into_inner().expect("tar")
}

pub(crate) fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(std::fs::File::create(out).expect("create"));
    b.append_dir_all(".", dir).expect("tar dir");
    b.finish().expect("finish");
}
