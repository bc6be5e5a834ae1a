//! Leaf certificates toward the job: ECDSA P-256, one key per daemon run,
//! SAN = the SNI (or the original IP without SNI), minted on demand and
//! cached per name.
use std::{net::IpAddr, sync::Arc, time::Duration};

use moka::sync::Cache;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::{
    pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};

use super::{Ca, error::Result};

/// Leaves live a day in the cache and are valid for two, starting an hour
/// in the past so a job's slightly wrong clock still accepts them.
const CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
const BACKDATE: time::Duration = time::Duration::hours(1);
const VALIDITY: time::Duration = time::Duration::days(2);

pub struct Leaves {
    ca: Arc<Ca>,
    key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    cache: Cache<String, Arc<CertifiedKey>>,
}

/// What a leaf is for: a DNS name from SNI, or an IP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafName {
    Dns(String),
    Ip(IpAddr),
}

impl LeafName {
    fn cache_key(&self) -> String {
        match self {
            Self::Dns(d) => d.to_ascii_lowercase(),
            Self::Ip(ip) => ip.to_string(),
        }
    }
}

impl std::fmt::Debug for Leaves {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaves")
            .field("cached", &self.cache.entry_count())
            .finish_non_exhaustive()
    }
}

impl Leaves {
    pub fn new(ca: Arc<Ca>) -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = super::provider().key_provider.load_private_key(der)?;
        let cache = Cache::builder()
            .max_capacity(10_000)
            .time_to_live(CACHE_TTL)
            .build();
        Ok(Self {
            ca,
            key,
            signing_key,
            cache,
        })
    }

    /// The certificate chain and key for `name`, minted once per name.
    pub fn get(&self, name: &LeafName) -> Result<Arc<CertifiedKey>> {
        let k = name.cache_key();
        if let Some(c) = self.cache.get(&k) {
            return Ok(c);
        }
        let minted = Arc::new(self.mint(name)?);
        self.cache.insert(k, minted.clone());
        Ok(minted)
    }

    fn mint(&self, name: &LeafName) -> Result<CertifiedKey> {
        let mut params = CertificateParams::default();
        let (cn, san) = match name {
            LeafName::Dns(d) => (d.clone(), SanType::DnsName(d.clone().try_into()?)),
            LeafName::Ip(ip) => (ip.to_string(), SanType::IpAddress(*ip)),
        };
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = vec![san];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE;
        params.not_after = now + VALIDITY;
        params.use_authority_key_identifier_extension = true;
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&self.key, &self.ca.issuer)?;
        let chain = vec![cert.der().clone(), self.ca.cert_der.clone()];
        Ok(CertifiedKey::new(chain, self.signing_key.clone()))
    }

    pub fn cached(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_cached_per_name_and_carry_the_ca() {
        let d = tempfile::tempdir().unwrap();
        let ca = Arc::new(Ca::load_or_create(d.path()).unwrap());
        let leaves = Leaves::new(ca.clone()).unwrap();
        let a = leaves
            .get(&LeafName::Dns("api.partner.test".into()))
            .unwrap();
        let b = leaves
            .get(&LeafName::Dns("API.partner.test".into()))
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "same name minted twice");
        assert_eq!(a.cert.len(), 2);
        assert_eq!(a.cert[1], ca.cert_der);
        let ip = leaves
            .get(&LeafName::Ip("127.0.0.2".parse().unwrap()))
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &ip));
        assert_eq!(leaves.cached(), 2);
    }
}
