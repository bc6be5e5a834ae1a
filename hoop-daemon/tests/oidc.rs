//! The verifier against the testkit issuer, in-process: an unknown `kid`
//! refetches the JWKS, but not more often than `jwks_min_refresh_secs`;
//! `aud` lists are read as CI providers mint them.
use std::path::Path;

use hoop::{config::Config, policy::Policy};
use hoop_testkit::oidc::{self, Alg, Issuer, SigningKey};

async fn policy(issuer: &Issuer, dir: &Path, min_refresh: u64) -> Policy {
    policy_with(issuer, dir, min_refresh, "").await
}

async fn policy_with(issuer: &Issuer, dir: &Path, min_refresh: u64, extra: &str) -> Policy {
    let ca = dir.join("issuer-ca.pem");
    std::fs::write(&ca, &issuer.ca.cert_pem).unwrap();
    let text = format!(
        "[daemon]\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\n[capture]\nenabled = false\n\
         [[identity.oidc]]\nname = \"ci\"\nissuer = \"{}\"\naudience = \"hoop\"\nalgorithms = [\"ES256\"]\n\
         ca_files = [\"{}\"]\njwks_min_refresh_secs = {min_refresh}\n{extra}\n",
        issuer.url,
        ca.display(),
        d = dir.display()
    );
    Policy::compile(&Config::parse(&text, &dir.join("hoop.toml")).unwrap(), None).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_refetch_the_jwks_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start("127.0.0.1", Alg::Es256).await;
    let p = policy(&issuer, dir.path(), 3600).await;
    let id = p.issuers.verify(&issuer.token("a")).await.unwrap();
    assert_eq!(id.name, "ci:a");
    let after_first = issuer.jwks_fetches();
    assert_eq!(after_first, 1);

    // A rogue kid right after: the JWKS was fetched just now, so no refetch.
    let rogue = SigningKey::generate("rogue", Alg::Es256);
    for _ in 0..5 {
        let e = p
            .issuers
            .verify(&oidc::sign(&rogue, &issuer.claims("a")))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "token-key-unknown", "{e}");
        assert!(e.to_string().contains("too recently"), "{e}");
    }
    assert_eq!(
        issuer.jwks_fetches(),
        after_first,
        "unknown kids hammered the issuer"
    );

    // With no minimum interval, a rotated key is picked up by one refetch.
    let p = policy(&issuer, dir.path(), 0).await;
    p.issuers.verify(&issuer.token("a")).await.unwrap();
    issuer.rotate("key-2");
    let before = issuer.jwks_fetches();
    assert_eq!(
        p.issuers.verify(&issuer.token("b")).await.unwrap().name,
        "ci:b"
    );
    assert_eq!(issuer.jwks_fetches(), before + 1);
}

/// An issuer whose keys are not cached (its fetch failed) is asked again
/// once per `jwks_min_refresh_secs`, not once per token. The issuer here is
/// configured with a trailing slash its discovery document does not name,
/// so every fetch fails after the (counted) discovery request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncached_issuer_is_fetched_at_most_once_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start("127.0.0.1", Alg::Es256).await;
    let ca = dir.path().join("issuer-ca.pem");
    std::fs::write(&ca, &issuer.ca.cert_pem).unwrap();
    let slashed = format!("{}/", issuer.url);
    let compile = |min_refresh: u64| {
        let text = format!(
            "[daemon]\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\n[capture]\nenabled = false\n\
             [[identity.oidc]]\nname = \"ci\"\nissuer = \"{slashed}\"\naudience = \"hoop\"\n\
             algorithms = [\"ES256\"]\nca_files = [\"{}\"]\njwks_min_refresh_secs = {min_refresh}\n",
            ca.display(),
            d = dir.path().display()
        );
        Policy::compile(
            &Config::parse(&text, &dir.path().join("hoop.toml")).unwrap(),
            None,
        )
        .unwrap()
    };
    let mut claims = issuer.claims("a");
    claims["iss"] = slashed.clone().into();
    let token = issuer.token_with(&claims);

    // Positive control: without an interval every token fetches (and fails).
    let p = compile(0);
    for n in 1..=3 {
        let e = p.issuers.verify(&token).await.unwrap_err();
        assert_eq!(e.reason(), "token-keys-unavailable", "{e}");
        assert!(e.to_string().contains("names issuer"), "{e}");
        assert_eq!(issuer.discovery_fetches(), n);
    }

    let p = compile(3600);
    let before = issuer.discovery_fetches();
    for _ in 0..20 {
        let e = p.issuers.verify(&token).await.unwrap_err();
        assert_eq!(e.reason(), "token-keys-unavailable", "{e}");
        assert!(e.to_string().contains("names issuer"), "{e}");
    }
    let e = p.issuers.verify(&token).await.unwrap_err().to_string();
    assert!(e.contains("not again before 3600 s"), "{e}");
    assert_eq!(
        issuer.discovery_fetches(),
        before + 1,
        "tokens for an uncached issuer hammered it"
    );
    assert_eq!(issuer.jwks_fetches(), 0);
}

/// GitLab `id_tokens` can name several audiences in one token: one of
/// them being hoop's is enough, unless the issuer is `strict_audience`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audience_list_naming_hoop_is_accepted_unless_strict() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::start("127.0.0.1", Alg::Es256).await;
    let token = |aud: serde_json::Value| {
        let mut c = issuer.claims("a");
        c["aud"] = aud;
        issuer.token_with(&c)
    };
    let both = token(serde_json::json!(["vault", "hoop"]));
    let neither = token(serde_json::json!(["vault", "other"]));
    let p = policy(&issuer, dir.path(), 3600).await;
    assert_eq!(p.issuers.verify(&both).await.unwrap().name, "ci:a");
    let e = p.issuers.verify(&neither).await.unwrap_err();
    assert_eq!(e.reason(), "token-audience-wrong", "{e}");
    let strict = policy_with(&issuer, dir.path(), 3600, "strict_audience = true").await;
    let e = strict.issuers.verify(&both).await.unwrap_err();
    assert_eq!(e.reason(), "token-audience-wrong", "{e}");
    assert!(e.to_string().contains("vault"), "{e}");
    assert_eq!(
        strict
            .issuers
            .verify(&token(serde_json::json!(["hoop"])))
            .await
            .unwrap()
            .name,
        "ci:a"
    );
}
