//! Embeds the eBPF object built by `cargo xtask build-ebpf`. The object is
//! built by a different toolchain for a different target, which cargo can't
//! do from here; so this only finds it. When it isn't there yet (a fresh
//! clone, an editor running `cargo check`), an empty placeholder is
//! embedded instead, with a warning: everything builds and lints, and only
//! attaching the programs fails, saying how to build them.
use std::path::PathBuf;

fn main() {
    // A GNU build-id whatever the linker's default: `cargo xtask install`
    // files the debug info under it (/usr/lib/debug/.build-id/).
    println!("cargo:rustc-link-arg-bins=-Wl,--build-id");
    println!("cargo:rerun-if-env-changed=HOOP_EBPF_OBJECT");
    let path = match std::env::var_os("HOOP_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
            manifest.join("../target/bpfel-unknown-none/release/hoop-ebpf")
        }
    };
    // Watched even while missing, so building it triggers a rebuild.
    println!("cargo:rerun-if-changed={}", path.display());
    let embedded = if path.is_file() {
        path.canonicalize().expect("canonicalize eBPF object path")
    } else {
        println!(
            "cargo:warning=hoop's eBPF object is missing ({}); embedding an empty placeholder. \
             Build it with `cargo xtask build-ebpf` before running the daemon.",
            path.display()
        );
        let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap()).join("hoop-ebpf.missing");
        std::fs::write(&out, b"").expect("write the placeholder");
        out
    };
    println!("cargo:rustc-env=HOOP_EBPF_OBJECT={}", embedded.display());
}
