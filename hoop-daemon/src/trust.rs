//! What a job trusts, so that it needs no certificate flag: per job, a CA
//! bundle (the system's roots, the caller's own bundles, hoop's CA) in a
//! directory only the job's uid can read, removed when the job ends, and
//! beside it the same certificates as a PKCS#12 truststore for Java.
//! `hoop run` points the runtimes' variables at them (`cli::run`).
use std::{
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// The system's bundle on Debian (ca-certificates); elsewhere the native
/// store is read and written out.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// keytool's well-known default; the store holds public certificates only.
pub const JAVA_STORE_PASSWORD: &str = "changeit";
/// Extra bundles from the caller are capped: they are copied per job.
pub const MAX_EXTRA_PEM: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the caller's CA bundles are over {MAX_EXTRA_PEM} bytes")]
    TooLarge,
    #[error("the caller's CA bundles hold something that is not a PEM certificate")]
    NotPem,
    #[error("writing the job's Java truststore: {0}")]
    JavaStore(String),
    #[error("preparing the job's trust stopped: {0}")]
    Stopped(String),
}

/// Where a job's trust was put.
#[derive(Debug)]
pub struct JobTrust {
    /// PEM: the system's roots, the caller's, hoop's CA.
    pub bundle: PathBuf,
    /// The same certificates as PKCS#12, for Java.
    pub java_truststore: PathBuf,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TrustError + 'a {
    move |source| TrustError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The per-job directory: `<runtime_dir>/trust/<job>`.
pub fn job_dir(runtime_dir: &Path, job: &str) -> PathBuf {
    runtime_dir.join("trust").join(job)
}

/// Writes the job's bundle and its Java truststore, owned by `uid` (mode
/// 0600 in a 0700 directory): the system's roots, then `extra` (PEM, as
/// the caller's own bundles hold), then hoop's CA.
pub fn prepare_job(
    runtime_dir: &Path,
    job: &str,
    uid: u32,
    gid: u32,
    extra: &str,
    hoop_ca_pem: &str,
) -> Result<JobTrust, TrustError> {
    if extra.len() > MAX_EXTRA_PEM {
        return Err(TrustError::TooLarge);
    }
    use rustls::pki_types::pem::PemObject;
    if !extra.trim().is_empty()
        && rustls::pki_types::CertificateDer::pem_slice_iter(extra.as_bytes()).any(|c| c.is_err())
    {
        return Err(TrustError::NotPem);
    }
    let parent = runtime_dir.join("trust");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&parent)
        .map_err(io("creating", &parent))?;
    let dir = job_dir(runtime_dir, job);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(io("creating", &dir))?;
    let bundle = dir.join("ca-bundle.pem");
    let mut text = system_roots();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(extra);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("# hoop's local CA\n");
    text.push_str(hoop_ca_pem);
    let java_truststore = dir.join("ca-truststore.p12");
    let store = java_store(&text)?;
    for (file, bytes) in [(&bundle, text.as_bytes()), (&java_truststore, &store[..])] {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
            .and_then(|mut f| f.write_all(bytes))
            .map_err(io("writing", file))?;
    }
    for p in [&bundle, &java_truststore, &dir] {
        nix::unistd::chown(
            p.as_path(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(|e| TrustError::Io {
            what: "handing to the job's user",
            path: p.to_path_buf(),
            source: e.into(),
        })?;
    }
    Ok(JobTrust {
        bundle,
        java_truststore,
    })
}

/// The certificates of a PEM bundle as a PKCS#12 truststore Java reads
/// (each a trusted-certificate entry). Made here, in milliseconds: the
/// JDK's keytool takes seconds of JVM start, which a job would wait for.
/// A certificate Java's parser would not take either is left out.
fn java_store(pem_text: &str) -> Result<Vec<u8>, TrustError> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry};
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut store = KeyStore::new();
    let certs = CertificateDer::pem_slice_iter(pem_text.as_bytes()).filter_map(Result::ok);
    for (i, der) in certs.enumerate() {
        if let Ok(c) = Certificate::from_der(&der) {
            store.add_entry(&format!("ca-{i}"), KeyStoreEntry::Certificate(c));
        }
    }
    store
        .writer(JAVA_STORE_PASSWORD)
        .write()
        .map_err(|e| TrustError::JavaStore(e.to_string()))
}

/// Removes a job's directory (the job ended).
pub fn remove_job(runtime_dir: &Path, job: &str) {
    let dir = job_dir(runtime_dir, job);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the job's trust directory")
        }
    }
}

/// The system's trusted roots as PEM text.
fn system_roots() -> String {
    if let Ok(t) = std::fs::read_to_string(SYSTEM_BUNDLE) {
        return t;
    }
    let certs = rustls_native_certs::load_native_certs().certs;
    pem(certs.iter().map(|c| c.as_ref()))
}

/// Certificates (DER) as PEM text.
pub fn pem<'a>(certs: impl Iterator<Item = &'a [u8]>) -> String {
    use base64::Engine;
    let mut out = String::new();
    for der in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or_default());
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(name: &str) -> String {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn the_java_store_holds_every_certificate_of_the_bundle() {
        let (a, b) = (ca_pem("roots' stand-in"), ca_pem("hoop's local CA"));
        let text = format!("{a}# a comment line between\n{b}");
        let store = java_store(&text).unwrap();
        let read = p12_keystore::KeyStore::from_pkcs12(
            &store,
            JAVA_STORE_PASSWORD,
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .unwrap();
        let mut subjects: Vec<String> = read
            .entries()
            .filter_map(|(_, e)| match e {
                p12_keystore::KeyStoreEntry::Certificate(c) => Some(c.subject().to_string()),
                _ => None,
            })
            .collect();
        subjects.sort();
        assert_eq!(
            subjects,
            ["CN=hoop's local CA", "CN=roots' stand-in"],
            "{subjects:?}"
        );
        // (Strict import skips certificates without the trusted-usage mark
        // Java looks for: both have it.) Another password does not open it:
        // it is the one `hoop run` names.
        assert!(
            p12_keystore::KeyStore::from_pkcs12(
                &store,
                "not-changeit",
                p12_keystore::Pkcs12ImportPolicy::Strict
            )
            .is_err()
        );
    }

    #[test]
    fn a_job_gets_both_files_its_own_and_nobody_elses() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (uid, gid) = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        let extra = ca_pem("the caller's own CA");
        let hoop = ca_pem("hoop's local CA");
        let t = prepare_job(dir.path(), "j1", uid, gid, &extra, &hoop).unwrap();
        let text = std::fs::read_to_string(&t.bundle).unwrap();
        assert!(text.contains(extra.trim()) && text.ends_with(&hoop));
        for p in [&t.bundle, &t.java_truststore] {
            let m = std::fs::metadata(p).unwrap();
            assert_eq!((m.mode() & 0o777, m.uid()), (0o600, uid), "{}", p.display());
        }
        let store = std::fs::read(&t.java_truststore).unwrap();
        let read = p12_keystore::KeyStore::from_pkcs12(
            &store,
            JAVA_STORE_PASSWORD,
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .unwrap();
        // The system's roots, the caller's CA and hoop's: as many entries
        // as the bundle has certificates.
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let in_bundle = CertificateDer::pem_slice_iter(text.as_bytes()).count();
        assert!(in_bundle >= 2);
        assert_eq!(read.entries_len(), in_bundle);
        // Not PEM: refused, nothing written for the job.
        assert!(matches!(
            prepare_job(
                dir.path(),
                "j2",
                uid,
                gid,
                "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
                &hoop
            ),
            Err(TrustError::NotPem)
        ));
        assert!(!job_dir(dir.path(), "j2").exists());
    }
}
