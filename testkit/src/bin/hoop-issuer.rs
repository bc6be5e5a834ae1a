//! A standalone local OIDC issuer for benchmarks and demos: discovery and
//! JWKS over HTTPS (its own CA, written to --ca-out), and a token for
//! --sub written to --token-out.
//!
//!   hoop-issuer --bind 127.0.0.4 --ca-out ca.pem --token-out token --sub demo
//!
//! Prints `listening <issuer URL>` once ready, then serves until killed.
use hoop_testkit::oidc::{Alg, Issuer};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let bind = get("--bind").unwrap_or_else(|| "127.0.0.4".into());
    let issuer = Issuer::start_background(&bind, Alg::Es256);
    if let Some(out) = get("--ca-out") {
        std::fs::write(&out, &issuer.ca.cert_pem).expect("write --ca-out");
    }
    if let Some(out) = get("--token-out") {
        let sub = get("--sub").unwrap_or_else(|| "local".into());
        // Long-lived: a benchmark or demo may run for a while.
        let mut claims = issuer.claims(&sub);
        claims["exp"] = (hoop_testkit::oidc::now() + 24 * 3600).into();
        std::fs::write(&out, issuer.token_with(&claims)).expect("write --token-out");
    }
    println!("listening {}", issuer.url);
    loop {
        std::thread::park();
    }
}
