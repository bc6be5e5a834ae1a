//! `cargo xtask fuzz`: libFuzzer runs of hoop's own parsers (fuzz/), with
//! cargo-fuzz and the dated nightly shared with the eBPF crate. Installs
//! cargo-fuzz into target/tools on first use. The seeds in fuzz/corpus are
//! read-only; new inputs and crashes go under target/fuzz.
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{
    ebpf,
    sh::{self, root_dir, step},
};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
pub const TARGETS: [&str; 7] = [
    "classify",
    "socks5",
    "config",
    "matchers",
    "mask",
    "websocket",
    "audit_batch",
];

pub fn run(seconds: u32, only: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}; there are: {}", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    // The daemon crate embeds the eBPF object, so it must exist; this also
    // installs the nightly the fuzz crate builds with.
    ebpf::build()?;
    let channel = ebpf::nightly()?;
    let tools = root_dir().join("target/tools");
    let bin = tools.join("bin/cargo-fuzz");
    let have = sh::output(Command::new(&bin).args(["fuzz", "--version"])).unwrap_or_default();
    if !have.contains(CARGO_FUZZ_VERSION) {
        step(&format!(
            "installing cargo-fuzz {CARGO_FUZZ_VERSION} into target/tools (once)"
        ));
        sh::cargo(&[
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
            "--root",
            tools.to_str().context("non-UTF-8 path")?,
        ])?;
    }
    for t in targets {
        step(&format!("fuzzing {t} for {seconds} s"));
        let work = root_dir().join("target/fuzz/corpus").join(t);
        let artifacts = root_dir().join("target/fuzz/artifacts").join(t);
        std::fs::create_dir_all(&work)?;
        std::fs::create_dir_all(&artifacts)?;
        sh::run(
            Command::new(&bin)
                .args(["fuzz", "run", "--fuzz-dir"])
                .arg(root_dir().join("fuzz"))
                .arg(t)
                .arg(&work)
                .arg(root_dir().join("fuzz/corpus").join(t))
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg(format!("-artifact_prefix={}/", artifacts.display()))
                .env("RUSTUP_TOOLCHAIN", &channel)
                .current_dir(root_dir().join("fuzz")),
        )
        .with_context(|| {
            format!(
                "fuzz target {t} failed; the input is in {}",
                artifacts.display()
            )
        })?;
    }
    Ok(())
}
