//! TLS on both sides: the local CA and per-host leaves toward the job, and a
//! verifying client toward the upstream.
pub mod ca;
pub mod error;
pub mod leaf;
pub mod upstream;

use std::sync::Arc;

pub use ca::Ca;
pub use error::TlsError;
pub use leaf::Leaves;
pub use upstream::UpstreamTls;

/// The crypto provider for every TLS config hoop builds.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN protocols hoop can speak on both sides.
pub const H2: &[u8] = b"h2";
pub const HTTP11: &[u8] = b"http/1.1";
