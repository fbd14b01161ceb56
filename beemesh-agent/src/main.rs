#[tokio::main]
async fn main() {
    let dir = std::path::PathBuf::from("/sys/fs/cgroup/unified/bmtest");
    std::fs::create_dir_all(&dir).unwrap();
    let (mut k, _f, _l) = beemesh_agent::kernel::Kernel::load(beemesh_agent::kernel::KernelOptions {
        cgroup_root: dir.clone(),
        pin_dir: "/sys/fs/bpf/beemesh/bmtest".into(),
    }).unwrap();
    k.attach().unwrap();
    println!("attached");
    k.detach();
}
