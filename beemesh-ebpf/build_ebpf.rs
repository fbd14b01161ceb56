// How the eBPF object is built; `include!`d by beemesh-agent's build.rs (which embeds the
// object) and by xtask (`cargo xtask build-ebpf`), so both build it the same way.
//
// The object needs Debian's rustc 1.96 with `-Z build-std=core` (rustup's toolchains have
// no rust-src here) and bpf-linker on PATH; `scripts/setup.sh` installs both. The outer
// cargo's environment must not leak into the nested build.

/// Builds `beemesh-ebpf` in release mode and returns the path of the object.
#[allow(dead_code)]
fn build_ebpf(ebpf_dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
    use std::process::Command;
    let cargo = std::env::var("BEEMESH_EBPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
    let rustc = std::env::var("BEEMESH_EBPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    if !std::path::Path::new(&rustc).exists() {
        return Err(format!(
            "{rustc} not found: the eBPF toolchain is missing; run `sudo scripts/setup.sh` \
             (or `cargo xtask setup`)"
        ));
    }
    let mut cmd = Command::new(&cargo);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let keep = key == "CARGO_HOME"
            || key.starts_with("CARGO_HTTP")
            || key.starts_with("CARGO_NET")
            || key.starts_with("CARGO_REGISTRIES");
        let drop = (key.starts_with("CARGO") && !keep)
            || key.starts_with("RUSTC")
            || key.starts_with("RUSTUP")
            || key.starts_with("RUSTFLAGS")
            || key.starts_with("RUSTDOC")
            || key == "TARGET"
            || key == "OUT_DIR"
            || key == "HOST"
            || key == "PROFILE"
            || key == "OPT_LEVEL"
            || key == "DEBUG"
            || key == "NUM_JOBS";
        if drop {
            cmd.env_remove(&key);
        }
    }
    let status = cmd
        .current_dir(ebpf_dir)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
        ])
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}; run `sudo scripts/setup.sh`"))?;
    if !status.success() {
        return Err(format!("eBPF build failed ({status}); is bpf-linker installed? run `sudo scripts/setup.sh`"));
    }
    Ok(ebpf_dir.join("target/bpfel-unknown-none/release/beemesh-ebpf"))
}
