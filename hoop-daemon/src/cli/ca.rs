//! `hoop ca …`: what a job's browser needs to trust hoop's CA. Reads only
//! the public certificate, so any user who can read the state dir can run it.
use std::{
    io::Write,
    os::unix::{fs::DirBuilderExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use base64::Engine;

use crate::{config::Config, tls::ca::CERT_FILE, users::Account};

pub fn cert_path(cfg: &Config) -> PathBuf {
    cfg.daemon.state_dir.join(CERT_FILE)
}

pub fn read_pem(cfg: &Config) -> Result<String> {
    let p = cert_path(cfg);
    std::fs::read_to_string(&p).with_context(|| {
        format!(
            "cannot read the hoop CA {}; the daemon creates it on its first start",
            p.display()
        )
    })
}

/// base64(SHA-256(SPKI)) of the CA certificate.
pub fn spki(pem: &str) -> Result<String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("invalid CA PEM: {e}"))?;
    let cert = p
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("invalid CA certificate: {e}"))?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Ok(base64::engine::general_purpose::STANDARD
        .encode(ring::digest::digest(&ring::digest::SHA256, spki)))
}

/// Adds the CA to an NSS database (Chromium, Firefox) with certutil,
/// creating the database if needed. For `--user`, everything below the
/// user's home happens as that user (a child process with the user's uid
/// and gid, and no supplementary groups): a path the user controls is
/// never opened, created or chowned by root, so a planted symlink gets
/// the user nothing they couldn't do themselves.
pub fn install_nss(cfg: &Config, user: Option<&str>, dir: Option<&Path>) -> Result<PathBuf> {
    let pem = read_pem(cfg)?;
    match (user, dir) {
        (Some(u), _) => {
            let a = Account::by_name(u)
                .with_context(|| format!("--user {u}: no such account in the user database"))?;
            let db = a.home.join(".pki/nssdb");
            as_user(&a, &db, &pem)?;
            Ok(db)
        }
        (None, Some(d)) => {
            add_to_nss(d, &pem)?;
            Ok(d.to_path_buf())
        }
        (None, None) => {
            let home = std::env::var_os("HOME").context("HOME is not set; pass --user or --dir")?;
            let db = PathBuf::from(home).join(".pki/nssdb");
            add_to_nss(&db, &pem)?;
            Ok(db)
        }
    }
}

/// Adds the CA to `db` as `a`: directly when that is who runs this, else
/// through [`as_user`].
pub fn install_as(a: &Account, db: &Path, pem: &str) -> Result<()> {
    if a.uid == nix::unistd::getuid().as_raw() {
        add_to_nss(db, pem)
    } else {
        as_user(a, db, pem)
    }
}

/// Runs `hoop ca install-nss --dir DB --pem-stdin` as `a`. Through
/// /proc/self/exe, which the user can run even when the directories above
/// hoop's binary are closed to them.
fn as_user(a: &Account, db: &Path, pem: &str) -> Result<()> {
    let mut child = Command::new("/proc/self/exe")
        .args(["ca", "install-nss", "--pem-stdin", "--dir"])
        .arg(db)
        .uid(a.uid)
        .gid(a.gid)
        .env("HOME", &a.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting hoop as {}", a.name))?;
    child
        .stdin
        .take()
        .context("child stdin")?
        .write_all(pem.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "as {}: {}",
            a.name,
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .trim_start_matches("hoop: ")
        );
    }
    Ok(())
}

/// Creates the database (a private directory) if needed and adds the CA,
/// as whoever runs this.
pub fn add_to_nss(db: &Path, pem: &str) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(db)
        .with_context(|| format!("creating {}", db.display()))?;
    let sql = format!("sql:{}", db.display());
    let certutil = |args: &[&str], input: Option<&str>| -> Result<()> {
        let mut child = Command::new("certutil")
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run certutil ({e}); install it with `apt-get install libnss3-tools`"
                )
            })?;
        if let (Some(text), Some(mut w)) = (input, child.stdin.take()) {
            w.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "certutil {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    if !db.join("cert9.db").exists() {
        certutil(&["-d", &sql, "-N", "--empty-password"], None)?;
    }
    // -a: the certificate on stdin is PEM.
    certutil(
        &["-d", &sql, "-A", "-a", "-t", "C,,", "-n", "hoop local CA"],
        Some(pem),
    )
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use crate::tls::ca::{CERT_FILE, Ca};

    /// The pin Chromium is given: the CLI (from the PEM) and the daemon
    /// (from the loaded key) agree with openssl's own computation.
    #[test]
    fn the_spki_pin_matches_openssl() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(d.path()).unwrap();
        let pem = std::fs::read_to_string(d.path().join(CERT_FILE)).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(
                "openssl x509 -pubkey -noout -in \"$1\" | openssl pkey -pubin -outform der \
                 | openssl dgst -sha256 -binary | base64",
            )
            .arg("sh")
            .arg(d.path().join(CERT_FILE))
            .output()
            .unwrap();
        let want = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(want.len(), 44, "openssl: {out:?}");
        assert_eq!(super::spki(&pem).unwrap(), want);
        assert_eq!(ca.spki_sha256_base64(), want);
        // Positive control: another CA has another pin.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            Ca::load_or_create(other.path())
                .unwrap()
                .spki_sha256_base64(),
            want
        );
    }
}
