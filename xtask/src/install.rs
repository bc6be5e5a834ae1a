//! `cargo xtask install [--root DIR]`: a release build put where the units
//! expect it. `--root` stages into a directory instead (packaging, tests);
//! only an install into `/` touches the running system (sysusers, a
//! daemon-reload), and nothing is enabled or started: that stays the
//! operator's `systemctl enable --now hoop`. The binary is installed
//! without its debug info, which goes to `/usr/lib/debug/.build-id/`
//! (see `debuginfo`).
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{
    debuginfo, ebpf,
    sh::{self, root_dir, step},
};

/// What goes where, relative to the root: (source, destination, mode).
fn files(bin: &Path) -> Vec<(PathBuf, &'static str, u32)> {
    let r = root_dir();
    vec![
        (bin.to_path_buf(), "usr/local/bin/hoop", 0o755),
        (
            r.join("systemd/hoop.service"),
            "etc/systemd/system/hoop.service",
            0o644,
        ),
        (
            r.join("systemd/hoop.slice"),
            "etc/systemd/system/hoop.slice",
            0o644,
        ),
        (
            r.join("systemd/hoop.sysusers"),
            "usr/lib/sysusers.d/hoop.conf",
            0o644,
        ),
        // The units' Documentation= points here; README links into docs/.
        (r.join("README.md"), "usr/share/doc/hoop/README.md", 0o644),
        (
            r.join("docs/architecture.md"),
            "usr/share/doc/hoop/docs/architecture.md",
            0o644,
        ),
        (
            r.join("docs/threat-model.md"),
            "usr/share/doc/hoop/docs/threat-model.md",
            0o644,
        ),
        (
            r.join("docs/configuration.md"),
            "usr/share/doc/hoop/docs/configuration.md",
            0o644,
        ),
        (
            r.join("docs/policy.md"),
            "usr/share/doc/hoop/docs/policy.md",
            0o644,
        ),
        (
            r.join("docs/http.md"),
            "usr/share/doc/hoop/docs/http.md",
            0o644,
        ),
        (
            r.join("docs/audit.md"),
            "usr/share/doc/hoop/docs/audit.md",
            0o644,
        ),
        (
            r.join("docs/operations.md"),
            "usr/share/doc/hoop/docs/operations.md",
            0o644,
        ),
    ]
}

pub fn run(root: &Path, bin: Option<&Path>) -> Result<()> {
    let bin = match bin {
        Some(b) => b.to_path_buf(),
        None => {
            ebpf::build()?;
            step("building hoop (release)");
            sh::cargo(&["build", "--release", "-p", "hoop-daemon"])?;
            root_dir().join("target/release/hoop")
        }
    };
    sh::apt_install(&debuginfo::PACKAGES)?;
    step("splitting the debug info off the binary");
    let work = tempfile::tempdir()?;
    let split = debuginfo::split(&bin, root, work.path())?;
    let size = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.len() / 1_000_000)
            .unwrap_or(0)
    };
    println!(
        "{} MB → {} MB installed, {} MB of debug info in {} (build-id {})",
        size(&bin),
        size(&split.stripped),
        size(&split.debug_file),
        split.debug_file.display(),
        split.build_id
    );
    step(&format!("installing into {}", root.display()));
    for line in place(root, &split.stripped)? {
        println!("{line}");
    }
    if root == Path::new("/") {
        if Path::new("/run/systemd/system").exists() {
            sh::run(Command::new("systemd-sysusers").arg("/usr/lib/sysusers.d/hoop.conf"))?;
            sh::run(Command::new("systemctl").arg("daemon-reload"))?;
            println!("\nnext: systemctl enable --now hoop");
        } else {
            println!(
                "\nsystemd is not running here: create the hoop group (groupadd --system hoop) and start `hoop daemon` yourself"
            );
        }
    }
    Ok(())
}

/// Copies the files under `root`; the config only if there is none.
/// Returns what it did, one line each.
pub fn place(root: &Path, bin: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for (src, dst, mode) in files(bin) {
        let to = root.join(dst);
        write(
            &to,
            &std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?,
            mode,
        )?;
        done.push(format!("{:o} {}", mode, to.display()));
    }
    let config = root.join("etc/hoop/hoop.toml");
    if config.exists() {
        done.push(format!("kept {}", config.display()));
    } else {
        write(
            &config,
            &std::fs::read(root_dir().join("systemd/hoop.toml"))?,
            0o640,
        )?;
        done.push(format!("640 {}", config.display()));
    }
    Ok(done)
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = to.parent().unwrap();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Replace, never write through: the binary may be running.
    let tmp = to.with_extension("hoop-install");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_the_units_binary_docs_and_a_config_it_never_overwrites() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("built-hoop");
        std::fs::write(&bin, b"\x7fELF stand-in").unwrap();
        place(root.path(), &bin).unwrap();
        let mode = |p: &str| {
            std::fs::metadata(root.path().join(p))
                .unwrap_or_else(|e| panic!("{p}: {e}"))
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("usr/local/bin/hoop"), 0o755);
        assert_eq!(mode("etc/systemd/system/hoop.service"), 0o644);
        assert_eq!(mode("etc/systemd/system/hoop.slice"), 0o644);
        assert_eq!(mode("usr/lib/sysusers.d/hoop.conf"), 0o644);
        assert_eq!(mode("etc/hoop/hoop.toml"), 0o640);
        // The unit runs what was installed, and documents what was installed.
        let unit =
            std::fs::read_to_string(root.path().join("etc/systemd/system/hoop.service")).unwrap();
        assert!(
            unit.contains("ExecStart=/usr/local/bin/hoop daemon"),
            "{unit}"
        );
        for doc in unit
            .lines()
            .filter_map(|l| l.strip_prefix("Documentation=file:/"))
        {
            assert!(root.path().join(doc).exists(), "{doc} not installed");
        }
        // An operator's config survives a reinstall.
        std::fs::write(root.path().join("etc/hoop/hoop.toml"), "# mine\n").unwrap();
        let done = place(root.path(), &bin).unwrap();
        assert!(done.iter().any(|l| l.starts_with("kept ")), "{done:?}");
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/hoop/hoop.toml")).unwrap(),
            "# mine\n"
        );
    }
}
