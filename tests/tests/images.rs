//! End-to-end image imports: `image import --name` through a running agent's admin socket
//! (a relative path, resolved by the CLI), the image then run by a pod; a CLI pointed at
//! another state directory refused; a hostile layer refused by the agent without touching a
//! host file; `image list` offline once the agent is gone.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Result};
use beemesh_tests::{image, Agent};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// An OCI layout tagged with the bare tag `1` whose one layer is a single whiteout entry named
/// `name` as given (here an absolute path aimed at a host file).
fn hostile_layout(dir: &Path, name: &str) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(0);
    h.set_mode(0o644);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, std::io::empty())?;
    let layer = b.into_inner()?;
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]}}"#;
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{}","size":{}}}]}}"#,
        hex(config),
        config.len(),
        hex(&layer),
        layer.len()
    );
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    for blob in [&layer[..], config, manifest.as_bytes()] {
        std::fs::write(blobs.join(hex(blob)), blob)?;
    }
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"1"}}}}]}}"#,
        hex(manifest.as_bytes()),
        manifest.len()
    );
    std::fs::write(dir.join("index.json"), index)?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(())
}

#[test]
fn image_import_goes_through_the_running_agent_and_refuses_hostile_layers() -> Result<()> {
    let mut agent = Agent::start("images", &[])?;
    let work = agent.dir.path().join("work");
    // A layout carrying only the bare tag `1`, in a directory whose name is not the image's.
    image::busybox_layout(&work.join("layout-dir"), "1")?;

    // A relative path: the CLI resolves it before handing it to the agent.
    let out = agent
        .cli()
        .current_dir(&work)
        .args(["image", "import", "--name", "tools/bb", "layout-dir"])
        .output()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "import failed: {stderr}");
    ensure!(stdout.trim() == "imported tools/bb:1", "unexpected output: {stdout}");
    ensure!(agent.log().contains("image imported"), "the agent did not do the import:\n{}", agent.log());
    let (ok, list, err) = agent.run_cli(&["image", "import", "--name", "bb:2", "layout-dir"], None)?;
    ensure!(!ok && err.contains("layout-dir"), "a path relative to the test's cwd must fail: {list} {err}");
    let (ok, list, err) = agent.run_cli(&["image", "list"], None)?;
    ensure!(ok && list.contains("tools/bb:1"), "image list: {list} {err}");
    let mode = std::fs::metadata(agent.state_dir().join("images"))?.permissions().mode();
    ensure!(mode & 0o777 == 0o700, "the store is {:o}, not root-only", mode & 0o777);

    // A CLI given another state directory never imports beside the running agent's store.
    let other = agent.dir.path().join("other-state");
    let out = agent
        .cli()
        .env("BEEMESH_STATE_DIR", &other)
        .args(["image", "import", "--name", "bb:3"])
        .arg(work.join("layout-dir"))
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && stderr.contains("same --state-dir"), "mismatch not refused: {stderr}");
    ensure!(!other.exists(), "an import went into {}", other.display());

    // The imported image runs.
    agent.apply(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: bb}
spec:
  containers:
  - name: c
    image: tools/bb:1
    command: [sh, -c, "touch /tmp/ready; exec sleep 1000"]
    readinessProbe: {exec: {command: [test, -f, /tmp/ready]}, periodSeconds: 1}
"#,
    )?;
    agent.wait_ready("bb", Duration::from_secs(30))?;

    // The issue's attack: a whiteout aimed at a host file by its absolute path.
    let host = agent.dir.path().join("host/etc");
    std::fs::create_dir_all(&host)?;
    std::fs::write(host.join("shadow"), "canary")?;
    let entry = format!("{}/.wh.shadow", host.display());
    hostile_layout(&work.join("evil"), &entry)?;
    let layers_before = std::fs::read_dir(agent.state_dir().join("images/layers"))?.count();
    let (ok, out, err) = agent
        .run_cli(&["image", "import", "--name", "evil:1", &work.join("evil").display().to_string()], None)?;
    ensure!(!ok, "hostile layer imported: {out}");
    ensure!(
        err.contains(&format!("entry {entry:?}")) && err.contains("absolute path"),
        "unclear error: {err}"
    );
    let canary = std::fs::symlink_metadata(host.join("shadow"))?;
    ensure!(
        canary.is_file() && std::fs::read_to_string(host.join("shadow"))? == "canary",
        "host file touched"
    );
    let layers_after = std::fs::read_dir(agent.state_dir().join("images/layers"))?.count();
    ensure!(layers_after == layers_before, "a half-unpacked layer was left behind");

    // Without an agent, the CLI works on --state-dir itself.
    agent.run_cli(&["delete", "pod", "bb"], None)?;
    ensure!(agent.stop()?, "agent did not stop cleanly:\n{}", agent.log());
    let (ok, list, err) = agent.run_cli(&["image", "list"], None)?;
    ensure!(ok && list.contains("tools/bb:1") && !list.contains("evil"), "offline list: {list} {err}");
    Ok(())
}
