//! Builds the kernel programs and hands their path to `include_bytes_aligned!` so the
//! agent binary embeds them and needs nothing else at run time.

include!("../beemesh-ebpf/build_ebpf.rs");

fn main() {
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.parent().expect("agent crate sits in the workspace").to_path_buf();
    let ebpf_dir = root.join("beemesh-ebpf");
    for dir in ["beemesh-ebpf/src", "beemesh-common/src"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for file in ["beemesh-ebpf/Cargo.toml", "beemesh-ebpf/Cargo.lock", "beemesh-ebpf/build_ebpf.rs"] {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    println!("cargo:rerun-if-env-changed=BEEMESH_EBPF_OBJECT");
    let object = match std::env::var("BEEMESH_EBPF_OBJECT") {
        Ok(prebuilt) => {
            println!("cargo:rerun-if-changed={prebuilt}");
            std::path::PathBuf::from(prebuilt)
        }
        Err(_) => match build_ebpf(&ebpf_dir) {
            Ok(path) => path,
            Err(e) => panic!("{e}"),
        },
    };
    let out =
        std::path::PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("beemesh-ebpf.o");
    std::fs::copy(&object, &out).unwrap_or_else(|e| panic!("copy {}: {e}", object.display()));
}
