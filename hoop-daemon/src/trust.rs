//! What a job trusts, so that it needs no certificate flag: per job, a CA
//! bundle (the system's roots, the caller's own bundles, hoop's CA) in a
//! directory only the job's uid can read, removed when the job ends; and,
//! once per daemon, a Java truststore (Java's roots plus hoop's CA, made
//! with the JDK's keytool when there is one). `hoop run` points the
//! runtimes' variables at them (`cli::run`).
use std::{
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

/// The system's bundle on Debian (ca-certificates); elsewhere the native
/// store is read and written out.
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Java's roots on Debian (ca-certificates-java).
const JAVA_CACERTS: &str = "/etc/ssl/certs/java/cacerts";
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

/// Writes the job's bundle, owned by `uid` (mode 0600 in a 0700
/// directory): the system's roots, then `extra` (PEM, as the caller's own
/// bundles hold), then hoop's CA. Its path.
pub fn prepare_job(
    runtime_dir: &Path,
    job: &str,
    uid: u32,
    gid: u32,
    extra: &str,
    hoop_ca_pem: &str,
) -> Result<PathBuf, TrustError> {
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
    let file = dir.join("ca-bundle.pem");
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
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .map_err(io("writing", &file))?;
        f.write_all(text.as_bytes()).map_err(io("writing", &file))?;
    }
    for p in [&file, &dir] {
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
    Ok(file)
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

/// Java's truststore for jobs: `<state_dir>/trust/java-truststore.p12`,
/// Java's roots plus hoop's CA, made once (again when hoop's CA changed).
/// None where there is no JDK keytool or no Java roots to start from.
pub fn java_truststore(state_dir: &Path, hoop_ca_file: &Path) -> Option<PathBuf> {
    let keytool = which("keytool")?;
    let cacerts = Path::new(JAVA_CACERTS);
    if !cacerts.exists() {
        return None;
    }
    let dir = state_dir.join("trust");
    let store = dir.join("java-truststore.p12");
    let stamp = dir.join("java-truststore.ca.pem");
    let ca = std::fs::read(hoop_ca_file).ok()?;
    if store.exists() && std::fs::read(&stamp).ok().as_deref() == Some(&ca[..]) {
        return Some(store);
    }
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
    let tmp = dir.join("java-truststore.p12.new");
    let _ = std::fs::remove_file(&tmp);
    let run = |args: &[&str]| -> bool {
        Command::new(&keytool)
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let (tmp_s, ca_s) = (tmp.to_string_lossy(), hoop_ca_file.to_string_lossy());
    let ok = run(&[
        "-importkeystore",
        "-noprompt",
        "-srckeystore",
        JAVA_CACERTS,
        "-srcstorepass",
        JAVA_STORE_PASSWORD,
        "-destkeystore",
        &tmp_s,
        "-deststoretype",
        "PKCS12",
        "-deststorepass",
        JAVA_STORE_PASSWORD,
    ]) && run(&[
        "-importcert",
        "-noprompt",
        "-trustcacerts",
        "-alias",
        "hoop-local-ca",
        "-file",
        &ca_s,
        "-keystore",
        &tmp_s,
        "-storetype",
        "PKCS12",
        "-storepass",
        JAVA_STORE_PASSWORD,
    ]);
    if !ok {
        tracing::warn!(keytool = %keytool.display(), "cannot make the Java truststore for jobs; Java jobs need their own");
        let _ = std::fs::remove_file(&tmp);
        return None;
    }
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644));
    std::fs::rename(&tmp, &store).ok()?;
    std::fs::write(&stamp, &ca).ok()?;
    tracing::info!(store = %store.display(), "Java truststore for jobs (Java's roots and hoop's CA)");
    Some(store)
}

/// The Java truststore, made at most once per daemon: whoever asks first
/// (the daemon at start, or the first job) makes it, the rest wait for it.
pub async fn java_truststore_once(
    cell: &tokio::sync::OnceCell<Option<PathBuf>>,
    state_dir: &Path,
    hoop_ca_file: &Path,
) -> Option<PathBuf> {
    cell.get_or_init(|| {
        let (state, ca) = (state_dir.to_path_buf(), hoop_ca_file.to_path_buf());
        async move {
            tokio::task::spawn_blocking(move || java_truststore(&state, &ca))
                .await
                .ok()
                .flatten()
        }
    })
    .await
    .clone()
}

/// `name` on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
