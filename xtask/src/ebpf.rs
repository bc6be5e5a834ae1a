//! Building the eBPF object. Needs, and installs when missing:
//! - the dated nightly pinned in hoop-ebpf/rust-toolchain.toml, with rust-src;
//! - bpf-linker, built against that nightly's own libLLVM (a bpf-linker
//!   linking another LLVM major fails on the bitcode rustc emits).
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::sh::{output, root_dir, run, step};

const BPF_LINKER_VERSION: &str = "0.13.0";
const TARGET: &str = "bpfel-unknown-none";

/// The nightly channel named in hoop-ebpf/rust-toolchain.toml.
pub fn nightly() -> Result<String> {
    let p = root_dir().join("hoop-ebpf/rust-toolchain.toml");
    let text = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|r| r.split('"').nth(1))
        .map(str::to_string)
        .with_context(|| format!("no channel in {}", p.display()))
}

fn rustup() -> Command {
    let mut c = Command::new("rustup");
    // `cargo xtask` runs under the workspace toolchain; don't let that leak.
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

fn ensure_nightly(channel: &str) -> Result<PathBuf> {
    let has = |component: &str| -> bool {
        rustup()
            .args(["component", "list", "--installed", "--toolchain", channel])
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains(component)
            })
    };
    const COMPONENTS: [&str; 3] = ["rust-src", "clippy", "rustfmt"];
    if !COMPONENTS.iter().all(|c| has(c)) {
        step(&format!(
            "installing toolchain {channel} with {}",
            COMPONENTS.join(", ")
        ));
        let mut c = rustup();
        c.args(["toolchain", "install", channel, "--profile", "minimal"]);
        for comp in COMPONENTS {
            c.args(["--component", comp]);
        }
        run(&mut c)?;
    }
    let sysroot = output(rustup().args(["run", channel, "rustc", "--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()))
}

/// The nightly's libLLVM file and its major version.
fn nightly_llvm(channel: &str, sysroot: &Path) -> Result<(PathBuf, String)> {
    let vv = output(rustup().args(["run", channel, "rustc", "-vV"]))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc -vV printed no LLVM version")?;
    let major = version.split('.').next().unwrap().to_string();
    let lib = fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}/lib", sysroot.display()))?;
    Ok((lib, major))
}

/// bpf-linker in target/tools/bin, built against the nightly's LLVM.
fn ensure_bpf_linker(channel: &str, sysroot: &Path) -> Result<PathBuf> {
    let tools = root_dir().join("target/tools");
    let bin = tools.join("bin/bpf-linker");
    let (lib, major) = nightly_llvm(channel, sysroot)?;
    let stamp = tools.join("bpf-linker.stamp");
    let want = format!(
        "bpf-linker {BPF_LINKER_VERSION} llvm {major} {}\n",
        lib.display()
    );
    // The binary's rpath points into the prefix below: check it still resolves.
    let prefix = tools.join(format!("llvm-{channel}"));
    let prefix_ok = prefix.join("lib/libLLVM.so").exists();
    if bin.exists() && prefix_ok && fs::read_to_string(&stamp).ok().as_deref() == Some(&want) {
        return Ok(bin);
    }
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {channel}'s LLVM {major} (about a minute, once)"
    ));
    let libdir = prefix.join("lib");
    fs::create_dir_all(&libdir)?;
    for name in ["libLLVM.so".into(), lib.file_name().unwrap().to_os_string()] {
        let link = libdir.join(name);
        let _ = fs::remove_file(&link);
        symlink(&lib, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo)
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .arg("--root")
        .arg(&tools)
        .env("LLVM_PREFIX", &prefix)
        .current_dir(root_dir()))?;
    fs::write(&stamp, want)?;
    Ok(bin)
}

/// `cargo fmt --check` and `cargo clippy -D warnings` on the eBPF crate.
pub fn lint() -> Result<()> {
    let channel = nightly()?;
    let sysroot = ensure_nightly(&channel)?;
    let linker = ensure_bpf_linker(&channel, &sysroot)?;
    let mut fmt = nightly_cargo(&channel, &linker);
    run(fmt.args(["fmt", "--check"]))?;
    let mut clippy = nightly_cargo(&channel, &linker);
    clippy.args([
        "clippy",
        "--release",
        "--target",
        TARGET,
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]);
    run(&mut clippy)
}

/// `cargo` of the pinned nightly, in hoop-ebpf, with bpf-linker on PATH.
fn nightly_cargo(channel: &str, linker: &Path) -> Command {
    let path = std::env::var("PATH").unwrap_or_default();
    let mut c = rustup();
    c.args(["run", channel, "cargo"])
        .current_dir(root_dir().join("hoop-ebpf"))
        .env("CARGO_TARGET_DIR", root_dir().join("target"))
        .env(
            "PATH",
            format!("{}:{path}", linker.parent().unwrap().display()),
        );
    // Variables set by the outer (stable) cargo must not steer the nightly build.
    for v in [
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO",
    ] {
        c.env_remove(v);
    }
    c
}

/// Builds hoop-ebpf; returns the object's path.
/// The object hoop-daemon's build embeds: `HOOP_EBPF_OBJECT` when it names
/// a file (a prebuilt object, as build.rs takes it), else built here.
pub fn prebuilt_or_build() -> Result<PathBuf> {
    if let Some(obj) = std::env::var_os("HOOP_EBPF_OBJECT").map(PathBuf::from)
        && obj.is_file()
    {
        eprintln!("eBPF object: {} (HOOP_EBPF_OBJECT)", obj.display());
        return Ok(obj);
    }
    build()
}

pub fn build() -> Result<PathBuf> {
    let channel = nightly()?;
    let sysroot = ensure_nightly(&channel)?;
    let linker = ensure_bpf_linker(&channel, &sysroot)?;
    step("building the eBPF object");
    let target_dir = root_dir().join("target");
    let mut c = nightly_cargo(&channel, &linker);
    c.args([
        "build",
        "--release",
        "--target",
        TARGET,
        "-Z",
        "build-std=core",
    ]);
    run(&mut c)?;
    let obj = target_dir.join(TARGET).join("release/hoop-ebpf");
    if !obj.is_file() {
        bail!("the eBPF build succeeded but {} is missing", obj.display());
    }
    eprintln!("eBPF object: {}", obj.display());
    Ok(obj)
}
