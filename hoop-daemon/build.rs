//! Embeds the eBPF object built by `cargo xtask build-ebpf`. The object is
//! built by a different toolchain for a different target, which cargo can't
//! do from here; so this only finds it, or says how to make it.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=HOOP_EBPF_OBJECT");
    let path = match std::env::var_os("HOOP_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/bpfel-unknown-none/release/hoop-ebpf")
        }
    };
    println!("cargo:rerun-if-changed={}", path.display());
    if !path.is_file() {
        eprintln!();
        eprintln!("error: hoop's eBPF object is missing: {}", path.display());
        eprintln!("       build it first with:  cargo xtask build-ebpf");
        eprintln!("       (or point HOOP_EBPF_OBJECT at a prebuilt object)");
        eprintln!();
        panic!(
            "eBPF object not found at {}; run `cargo xtask build-ebpf`",
            path.display()
        );
    }
    let path = path.canonicalize().expect("canonicalize eBPF object path");
    println!("cargo:rustc-env=HOOP_EBPF_OBJECT={}", path.display());
}
