//! `hoop ca …`: what a job's browser needs to trust hoop's CA. Reads only
//! the public certificate, so any user who can read the state dir can run it.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::{config::Config, tls::ca::CERT_FILE};

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
    Ok(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(spki)))
}

/// Adds the CA to an NSS database (Chromium, Firefox) with certutil,
/// creating the database if needed.
pub fn install_nss(cfg: &Config, user: Option<&str>, dir: Option<&Path>) -> Result<PathBuf> {
    let (db, owner) = match (user, dir) {
        (_, Some(d)) => (d.to_path_buf(), None),
        (Some(u), None) => {
            let (home, uid, gid) = passwd(u)?;
            (home.join(".pki/nssdb"), Some((uid, gid)))
        }
        (None, None) => {
            let home = std::env::var_os("HOME").context("HOME is not set; pass --user or --dir")?;
            (PathBuf::from(home).join(".pki/nssdb"), None)
        }
    };
    let ca = cert_path(cfg);
    read_pem(cfg)?;
    std::fs::create_dir_all(&db).with_context(|| format!("creating {}", db.display()))?;
    let sql = format!("sql:{}", db.display());
    let certutil = |args: &[&str]| -> Result<()> {
        let out = Command::new("certutil").args(args).output().map_err(|e| {
            anyhow::anyhow!(
                "cannot run certutil ({e}); install it with `apt-get install libnss3-tools`"
            )
        })?;
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
        certutil(&["-d", &sql, "-N", "--empty-password"])?;
    }
    certutil(&[
        "-d",
        &sql,
        "-A",
        "-t",
        "C,,",
        "-n",
        "hoop local CA",
        "-i",
        ca.to_str().context("CA path")?,
    ])?;
    if let Some((uid, gid)) = owner {
        chown_tree(&db, uid, gid)?;
    }
    Ok(db)
}

fn passwd(user: &str) -> Result<(PathBuf, u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd")?;
    for l in text.lines() {
        let f: Vec<&str> = l.split(':').collect();
        if f.len() >= 6 && f[0] == user {
            return Ok((PathBuf::from(f[5]), f[2].parse()?, f[3].parse()?));
        }
    }
    bail!("no such user {user}")
}

fn chown_tree(p: &Path, uid: u32, gid: u32) -> Result<()> {
    // The db and its parent .pki are the user's, as if they made them.
    for d in [p.parent(), Some(p)].into_iter().flatten() {
        std::os::unix::fs::chown(d, Some(uid), Some(gid))?;
    }
    for e in std::fs::read_dir(p)? {
        std::os::unix::fs::chown(e?.path(), Some(uid), Some(gid))?;
    }
    Ok(())
}
