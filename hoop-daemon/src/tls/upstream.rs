//! The client side toward the upstream: verified TLS against the system's
//! trust store (honouring SSL_CERT_FILE / SSL_CERT_DIR) plus configured CA
//! files, to the name the job asked for (SNI) or the original IP.
use std::{collections::HashMap, path::PathBuf, sync::Arc};

use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};

use super::{
    H2, HTTP11,
    error::{Result, TlsError},
};

pub struct UpstreamTls {
    /// One config per ALPN offer, so session resumption is shared.
    configs: HashMap<Vec<Vec<u8>>, Arc<ClientConfig>>,
    pub roots: usize,
}

impl UpstreamTls {
    pub fn new(extra_ca_files: &[PathBuf]) -> Result<Self> {
        let mut roots = RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!(error = %e, "skipping part of the system trust store");
        }
        let (added, _) = roots.add_parsable_certificates(native.certs);
        for f in extra_ca_files {
            use rustls::pki_types::pem::PemObject;
            let bad = |detail: String| TlsError::UpstreamCa {
                path: f.clone(),
                detail,
            };
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(f)
                .and_then(|certs| certs.collect())
                .map_err(|e| bad(format!("{e:?}")))?;
            if certs.is_empty() {
                return Err(bad("holds no certificate".into()));
            }
            for c in certs {
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
        }
        if roots.is_empty() {
            tracing::warn!(
                "no trusted CA for upstreams: every upstream TLS connection will fail verification"
            );
        }
        tracing::debug!(system = added, total = roots.len(), "upstream trust store");
        let roots = Arc::new(roots);
        let offers: [&[&[u8]]; 5] = [&[], &[H2], &[HTTP11], &[H2, HTTP11], &[HTTP11, H2]];
        let mut configs = HashMap::new();
        for offer in offers {
            let mut c = ClientConfig::builder_with_provider(super::provider())
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = offer.iter().map(|p| p.to_vec()).collect();
            configs.insert(c.alpn_protocols.clone(), Arc::new(c));
        }
        Ok(Self {
            configs,
            roots: roots.len(),
        })
    }

    /// The config offering what the job offered, limited to what hoop speaks.
    pub fn config_for(&self, job_alpn: &[Vec<u8>]) -> Arc<ClientConfig> {
        let mut offer: Vec<Vec<u8>> = Vec::new();
        for p in job_alpn {
            if (p == H2 || p == HTTP11) && !offer.contains(p) {
                offer.push(p.clone());
            }
        }
        self.configs
            .get(&offer)
            .cloned()
            .unwrap_or_else(|| self.configs[&Vec::new()].clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_offer_mirrors_the_job_within_what_hoop_speaks() {
        let u = UpstreamTls::new(&[]).unwrap();
        let c = u.config_for(&[b"h2".to_vec(), b"spdy/3".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(c.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
        let c = u.config_for(&[b"http/1.1".to_vec()]);
        assert_eq!(c.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(u.config_for(&[]).alpn_protocols.is_empty());
    }

    #[test]
    fn a_missing_ca_file_is_a_clear_error() {
        let e = UpstreamTls::new(&["/nonexistent/ca.pem".into()])
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("/nonexistent/ca.pem"));
    }
}
