//! What can go wrong with hoop's certificates, each naming its file.
use std::path::PathBuf;

use super::ca::{CERT_FILE, KEY_FILE};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "incomplete CA in {}: {CERT_FILE} and {KEY_FILE} must both exist. Restore the missing file, or remove both to generate a new CA (jobs must then trust the new one)",
        dir.display()
    )]
    IncompleteCa { dir: PathBuf },
    #[error(transparent)]
    Io(#[from] crate::path_error::PathError),
    #[error("invalid CA key {} (not a PEM private key): {source}", path.display())]
    CaKey { path: PathBuf, source: rcgen::Error },
    #[error("invalid CA certificate {}: {detail}", path.display())]
    CaCert { path: PathBuf, detail: String },
    #[error("CA certificate {} does not belong to the key {}", cert.display(), key.display())]
    CaMismatch { cert: PathBuf, key: PathBuf },
    #[error("upstream CA file {}: {detail}", path.display())]
    UpstreamCa { path: PathBuf, detail: String },
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

pub type Result<T> = std::result::Result<T, TlsError>;
