//! An I/O error with what was being done and to which path: the one shape
//! every layer's error type wraps for file and directory failures.
use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct PathError {
    pub what: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

/// For `map_err`: `fs::read(p).map_err(path_error::at("reading", p))`.
pub fn at(what: &'static str, path: &std::path::Path) -> impl FnOnce(io::Error) -> PathError {
    let path = path.to_path_buf();
    move |source| PathError { what, path, source }
}
