//! The local CA: generated on first start into the state dir (key mode 0600),
//! loaded on later starts. A CA file that exists but can't be used is an
//! error, never a reason to silently mint a new CA that no browser trusts.
use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};

use super::error::{Result, TlsError};

pub const CERT_FILE: &str = "ca.pem";
pub const KEY_FILE: &str = "ca.key";

pub struct Ca {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub issuer: Issuer<'static, KeyPair>,
    pub cert_path: PathBuf,
}

impl Ca {
    /// Loads the CA from `dir`, or creates it there if neither file exists.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Self::load(&cert_path, &key_path),
            (false, false) => {
                Self::create(&cert_path, &key_path)?;
                Self::load(&cert_path, &key_path)
            }
            (true, false) | (false, true) => Err(TlsError::IncompleteCa { dir: dir.into() }),
        }
    }

    /// Loads an existing CA; only `load_or_create` may decide to make one.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self> {
        let cert_pem = fs::read_to_string(cert_path).map_err(crate::path_error::at(
            "cannot read the hoop CA certificate",
            cert_path,
        ))?;
        let key_pem = fs::read_to_string(key_path).map_err(crate::path_error::at(
            "cannot read the hoop CA key",
            key_path,
        ))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| TlsError::CaKey {
            path: key_path.into(),
            source,
        })?;
        let bad_cert = |detail: String| TlsError::CaCert {
            path: cert_path.into(),
            detail,
        };
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad_cert(format!("{e:?}")))?;
        let issuer =
            Issuer::from_ca_cert_der(&cert_der, key).map_err(|e| bad_cert(e.to_string()))?;
        if !cert_matches_key(&cert_der, issuer.key()) {
            return Err(TlsError::CaMismatch {
                cert: cert_path.into(),
                key: key_path.into(),
            });
        }
        Ok(Self {
            cert_pem,
            cert_der,
            issuer,
            cert_path: cert_path.to_owned(),
        })
    }

    fn create(cert_path: &Path, key_path: &Path) -> Result<()> {
        let dir = cert_path.parent().unwrap();
        fs::create_dir_all(dir).map_err(crate::path_error::at("creating", dir))?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("hoop local CA ({})", hostname()),
        );
        dn.push(DnType::OrganizationName, "hoop");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&key)?;
        // Key first, created 0600 from the start: never world-readable.
        write_new(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(cert_path, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(cert = %cert_path.display(), "generated a new hoop CA");
        Ok(())
    }

    /// base64(SHA-256(SubjectPublicKeyInfo)), for Chromium's
    /// `--ignore-certificate-errors-spki-list`.
    pub fn spki_sha256_base64(&self) -> String {
        let spki = self.issuer.key().subject_public_key_info();
        base64::engine::general_purpose::STANDARD
            .encode(ring::digest::digest(&ring::digest::SHA256, &spki))
    }
}

pub fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(crate::path_error::at("creating", path))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .map_err(crate::path_error::at("writing", path))?;
    Ok(())
}

/// Replaces `path` whole with `data`, created with `mode`: written beside
/// it, then renamed over it, so a reader never sees half of it.
pub fn replace(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, data, mode)?;
    fs::rename(&tmp, path).map_err(crate::path_error::at("replacing", path))?;
    Ok(())
}

fn cert_matches_key(cert: &CertificateDer<'_>, key: &KeyPair) -> bool {
    // The certificate's SPKI bytes appear verbatim in its DER.
    let spki = key.subject_public_key_info();
    cert.as_ref()
        .windows(spki.len())
        .any(|w| w == spki.as_slice())
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_a_private_key() {
        let d = tempfile::tempdir().unwrap();
        let a = Ca::load_or_create(d.path()).unwrap();
        let mode = fs::metadata(d.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Ca::load_or_create(d.path()).unwrap();
        assert_eq!(a.cert_pem, b.cert_pem, "second start made a new CA");
        assert_eq!(a.spki_sha256_base64(), b.spki_sha256_base64());
        assert_eq!(a.spki_sha256_base64().len(), 44);
    }

    #[test]
    fn broken_ca_files_are_errors_not_regenerated() {
        let d = tempfile::tempdir().unwrap();
        Ca::load_or_create(d.path()).unwrap();
        let before = fs::read_to_string(d.path().join(CERT_FILE)).unwrap();
        fs::write(d.path().join(KEY_FILE), "garbage").unwrap();
        let e = Ca::load_or_create(d.path()).err().unwrap().to_string();
        assert!(e.contains("invalid CA key"), "{e}");
        assert_eq!(
            fs::read_to_string(d.path().join(CERT_FILE)).unwrap(),
            before
        );

        fs::remove_file(d.path().join(KEY_FILE)).unwrap();
        let e = Ca::load_or_create(d.path()).err().unwrap().to_string();
        assert!(e.contains("incomplete CA"), "{e}");

        // A key that belongs to another CA.
        let other = tempfile::tempdir().unwrap();
        Ca::load_or_create(other.path()).unwrap();
        fs::copy(other.path().join(KEY_FILE), d.path().join(KEY_FILE)).unwrap();
        let e = Ca::load_or_create(d.path()).err().unwrap().to_string();
        assert!(e.contains("does not belong"), "{e}");
    }
}
