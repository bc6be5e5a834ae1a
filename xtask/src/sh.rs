//! Small process helpers: run, check, report.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

pub fn root_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn step(what: &str) {
    eprintln!("\n==> {what}");
}

/// Runs a command, failing with its command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its stdout.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `cargo` for the workspace toolchain (rust-toolchain.toml at the root).
pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_env(args, &[])
}

pub fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(args).current_dir(root_dir());
    for (k, v) in env {
        c.env(k, v);
    }
    run(&mut c)
}

/// Sums the `test result:` lines of cargo test runs.
#[derive(Default)]
pub struct Tally {
    pub passed: u64,
    pub failed: u64,
}

impl Tally {
    /// Runs `cargo test …`, echoing its output and counting the results.
    pub fn cargo_test(&mut self, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
        use std::io::{BufRead, BufReader};
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.args(args)
            .current_dir(root_dir())
            .stdout(std::process::Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().with_context(|| format!("starting {c:?}"))?;
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let num = |key: &str| -> u64 {
                    rest.split(';')
                        .find_map(|p| {
                            p.trim()
                                .trim_start_matches("ok. ")
                                .trim_start_matches("FAILED. ")
                                .strip_suffix(key)
                        })
                        .and_then(|n| n.trim().parse().ok())
                        .unwrap_or(0)
                };
                self.passed += num(" passed");
                self.failed += num(" failed");
            }
        }
        let status = child.wait()?;
        if !status.success() {
            bail!("{c:?} failed: {status}");
        }
        Ok(())
    }
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

pub fn require_root(why: &str) -> Result<()> {
    if !is_root() {
        bail!("must run as root: {why} (try `sudo -E cargo xtask ...`)");
    }
    Ok(())
}

/// Installs Debian packages that are missing (binary name, package name).
pub fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Says up front when the disk looks too small for what follows: running
/// out mid-build shows up as a linker crash, which names neither the cause
/// nor the remedy.
pub fn check_disk(need_gib: u64, what: &str) {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root_dir().join("target"));
    let probe = if dir.exists() { dir } else { root_dir() };
    let Ok(df) = output(Command::new("df").arg("-Pk").arg(&probe)) else {
        return;
    };
    let free_kib = df
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(kib) = free_kib
        && kib < need_gib << 20
    {
        eprintln!(
            "xtask: warning: {:.1} GiB free under {}; {what} needs about {need_gib} GiB \
             (a full disk shows up as a linker crash)",
            kib as f64 / f64::from(1 << 20),
            probe.display()
        );
    }
}

/// `npm ci` in each of `dirs` (relative to the repository), installing
/// Debian's nodejs and npm first when missing.
pub fn npm_ci(dirs: &[&str]) -> Result<()> {
    apt_install(&["nodejs"])?;
    // Debian's nodejs ships npm separately; other builds bundle it.
    if Command::new("npm").arg("--version").output().is_err() {
        apt_install(&["npm"])?;
    }
    for dir in dirs {
        step(&format!("npm ci in {dir}"));
        run(Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(root_dir().join(dir)))?;
    }
    Ok(())
}
