//! `cargo xtask`: only what cargo can't do by itself.
//!
//! - `build-ebpf`: the eBPF crate needs a dated nightly with rust-src and a
//!   bpf-linker built against that nightly's own LLVM. Both are installed on
//!   first use (into rustup and `target/tools`), then reused.
//! - `test`: lint and the layer check, unit tests, then the privileged
//!   suites (real kernel programs), which fail rather than skip when they
//!   can't run.
//! - `layers`: no module of hoop-daemon imports from a layer above it.
//! - `demo`: the seed scenario, step by step, through the real gateway.
//! - `install`: the release binary, units and a starter config in place.
//! - `fuzz`: libFuzzer runs of the parsers (cargo-fuzz, nightly).
//! - `bench`: hoop against the direct path, a no-op MITM peer and mitmproxy,
//!   throughput, latency and proxy CPU per request, into BENCHMARKS.md.
mod bench;
mod bench_idle;
mod bench_report;
mod debuginfo;
mod demo;
mod ebpf;
mod fuzz;
mod install;
mod layers;
mod proc_cpu;
mod sh;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the eBPF object (installs the pinned nightly and bpf-linker if missing).
    BuildEbpf,
    /// Check that hoop-daemon's modules import only from layers below them.
    Layers,
    /// Build everything and run all tests, privileged suites included (as root).
    Test {
        /// Extra arguments for the privileged test run (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build everything and run a demo job through the gateway (as root).
    Demo,
    /// Install a release build, the systemd units and a starter config (as root).
    Install {
        /// Stage into this directory instead of / (packaging).
        #[arg(long, default_value = "/")]
        root: std::path::PathBuf,
        /// Install this binary instead of building a release one.
        #[arg(long)]
        bin: Option<std::path::PathBuf>,
    },
    /// Benchmark hoop against the direct path, a no-op MITM peer and mitmproxy; writes BENCHMARKS.md (as root).
    Bench(bench::Opts),
    /// Memory per idle job connection: N held through hoop vs straight to the origin (as root).
    BenchIdle(bench_idle::Opts),
    /// Fuzz hoop's parsers with libFuzzer (installs cargo-fuzz if missing).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
        /// Only this target (classify, socks5, config, matchers, mask).
        target: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    // hoop run's seccomp filter links libseccomp: every build of the
    // daemon needs its headers and library.
    let needs_daemon = !matches!(cli.cmd, Cmd::BuildEbpf | Cmd::Layers);
    if needs_daemon && let Err(e) = sh::apt_install(&["libseccomp-dev"]) {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
    let r: Result<()> = match cli.cmd {
        Cmd::BuildEbpf => ebpf::build().map(|_| ()),
        Cmd::Layers => layers::run(),
        Cmd::Test { args } => test(&args),
        Cmd::Demo => demo::run(),
        Cmd::Install { root, bin } => install::run(&root, bin.as_deref()),
        Cmd::Bench(o) => bench::run(&o),
        Cmd::BenchIdle(o) => bench_idle::run(&o),
        Cmd::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()),
    };
    if let Err(e) = r {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

/// Measured on a clean clone (target/ and fuzz/target/ after `./x test`),
/// with some room to spare.
const TEST_DISK_GIB: u64 = 10;

fn test(args: &[String]) -> Result<()> {
    sh::require_root("the privileged suites attach eBPF programs to test cgroups")?;
    sh::check_disk(TEST_DISK_GIB, "a clean build and test run");
    sh::apt_install(&[
        "curl",
        "util-linux",
        "procps",
        "iproute2",
        "chromium",
        "libnss3-tools",
        "nodejs",
        // The audit suite tampers with copies of the log with the CLI.
        "sqlite3",
        // The systemd suite verifies the units (systemd-analyze).
        "systemd",
        // The trust suite: every common runtime fetches through hoop with
        // no certificate flag (java runs a source file: the JDK).
        "git",
        "python3",
        "python3-requests",
        "default-jdk-headless",
        // The fleet suite starts a real PostgreSQL server (initdb, pg_ctl).
        "postgresql",
        // The learn suite's page loads a real font from a second host.
        "fonts-dejavu-core",
    ])?;
    // Pinned by their lockfiles: a real OpenID provider (identity and
    // console suites) and a HAR 1.2 schema validator (audit suite).
    sh::npm_ci(&["tests/oidc-provider", "tests/har-validator"])?;
    ebpf::build()?;
    sh::step("lint: rustfmt and clippy -D warnings, both workspaces");
    sh::cargo(&["fmt", "--all", "--check"])?;
    sh::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    ebpf::lint()?;
    sh::step("layers: hoop-daemon's modules import only from the layers below them");
    layers::run()?;
    sh::step("unit and in-process tests");
    let mut tally = sh::Tally::default();
    tally.cargo_test(&["test", "--workspace", "--exclude", "hoop-tests"], &[])?;
    sh::step("fuzz smoke: each libFuzzer target for 10 s");
    fuzz::run(10, None)?;
    sh::step("privileged suites (real kernel programs, as root)");
    sh::cargo(&["build", "-p", "hoop-daemon", "-p", "hoop-tests", "--bins"])?;
    let mut a = vec!["test", "-p", "hoop-tests", "--", "--test-threads=1"];
    a.extend(args.iter().map(String::as_str));
    let r = tally.cargo_test(&a, &[("HOOP_REQUIRE_PRIVILEGED", "1")]);
    // One closing line for the whole run, whatever the last binary was.
    println!(
        "\nall suites: {} passed, {} failed",
        tally.passed, tally.failed
    );
    r
}
