//! Test images built from the host's busybox-static (no registry here): an OCI image layout
//! with `/bin/busybox`, its applets as links, and /etc/passwd and /etc/group.

use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

const APPLETS: &[&str] = &[
    "sh", "cat", "echo", "env", "hostname", "id", "ip", "ls", "mkdir", "nc", "ps", "sleep", "wget", "httpd",
    "head", "dd", "grep", "test", "true", "false", "touch", "sed", "tail", "wc", "rm", "cp", "tr", "seq",
    "tftp", "nslookup", "timeout",
];

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn layer() -> Result<Vec<u8>> {
    let busybox =
        std::fs::read("/bin/busybox").context("read /bin/busybox (apt-get install busybox-static)")?;
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = |path: &str| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_cksum();
        b.append_data(&mut h, path, std::io::empty())?;
        Ok(())
    };
    for d in ["bin/", "etc/", "tmp/", "srv/", "www/"] {
        dir(d)?;
    }
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_cksum();
        b.append_data(&mut h, path, data)?;
        Ok(())
    };
    file(&mut b, "bin/busybox", 0o755, &busybox)?;
    file(
        &mut b,
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    file(&mut b, "etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n")?;
    file(&mut b, "www/index.html", 0o644, b"hello from a pod\n")?;
    for applet in APPLETS {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    Ok(b.into_inner()?)
}

/// Writes an OCI image layout at `dir` holding one busybox image tagged `reference`
/// (`Cmd: ["sh"]`, `PATH=/bin`, running as root).
pub fn busybox_layout(dir: &Path, reference: &str) -> Result<()> {
    busybox_layout_as(dir, reference, "")
}

/// [`busybox_layout`] with the image's `User` set (`""` is root).
pub fn busybox_layout_as(dir: &Path, reference: &str, user: &str) -> Result<()> {
    layout(dir, reference, user, None).map(|_| ())
}

/// [`busybox_layout`] with a second layer holding `/payload`: `bytes` of random data (from
/// /dev/urandom, so no compression helps), for transfer tests and benches. Returns the
/// payload layer's digest (`sha256:<hex>`) and size.
pub fn busybox_layout_with_payload(dir: &Path, reference: &str, bytes: u64) -> Result<(String, u64)> {
    layout(dir, reference, "", Some(bytes)).map(|p| p.expect("a payload was asked for"))
}

/// A layer with one file, `payload`, of `bytes` random bytes, written into `blobs`; its hex
/// digest (by `sha256sum`: a debug build's hashing is slow) and size.
fn payload_layer(blobs: &Path, bytes: u64) -> Result<(String, u64)> {
    use std::io::Read;
    let tmp = blobs.join("payload.tmp");
    let mut b = tar::Builder::new(std::fs::File::create(&tmp)?);
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes);
    h.set_mode(0o644);
    h.set_cksum();
    let random = std::fs::File::open("/dev/urandom")?.take(bytes);
    b.append_data(&mut h, "payload", random)?;
    b.into_inner()?.sync_all()?;
    let out = std::process::Command::new("sha256sum").arg(&tmp).output().context("run sha256sum")?;
    anyhow::ensure!(out.status.success(), "sha256sum: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    let hex = text.split_whitespace().next().context("sha256sum output")?.to_owned();
    let size = std::fs::metadata(&tmp)?.len();
    std::fs::rename(&tmp, blobs.join(&hex))?;
    Ok((hex, size))
}

fn layout(dir: &Path, reference: &str, user: &str, payload: Option<u64>) -> Result<Option<(String, u64)>> {
    let layer = layer()?;
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let mut layers = vec![(hex(&layer), layer.len() as u64)];
    std::fs::write(blobs.join(hex(&layer)), &layer)?;
    if let Some(bytes) = payload {
        layers.push(payload_layer(&blobs, bytes)?);
    }
    let diff_ids: Vec<String> = layers.iter().map(|(h, _)| format!("\"sha256:{h}\"")).collect();
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"],"Env":["PATH=/bin"],"User":"{user}"}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
        diff_ids.join(",")
    );
    std::fs::write(blobs.join(hex(config.as_bytes())), &config)?;
    let descriptors: Vec<String> = layers
        .iter()
        .map(|(h, size)| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{h}","size":{size}}}"#)
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{}]}}"#,
        hex(config.as_bytes()),
        config.len(),
        descriptors.join(",")
    );
    std::fs::write(blobs.join(hex(manifest.as_bytes())), &manifest)?;
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"{reference}"}}}}]}}"#,
        hex(manifest.as_bytes()),
        manifest.len()
    );
    std::fs::write(dir.join("index.json"), index)?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(payload.and(layers.get(1).map(|(h, size)| (format!("sha256:{h}"), *size))))
}
