//! A standalone origin for benchmarks and demos: one tokio worker, TLS with
//! a fresh test CA (written to --ca-out for hoop to trust), h1 + h2.
//!
//!   hoop-origin --bind 127.0.0.2:0 --names partner.test,127.0.0.2 --ca-out ca.pem
//!
//! Prints `listening <addr>` once ready, then serves until killed.
use hoop_testkit::{Origin, OriginOpts, TestCa};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let bind = get("--bind").unwrap_or_else(|| "127.0.0.2:0".into());
    let names = get("--names").unwrap_or_else(|| "partner.test,127.0.0.2".into());
    let names: Vec<&str> = names.split(',').collect();
    let tls = if args.iter().any(|a| a == "--plain") {
        None
    } else {
        let ca = TestCa::new("hoop-origin CA");
        if let Some(out) = get("--ca-out") {
            std::fs::write(&out, &ca.cert_pem).expect("write --ca-out");
        }
        Some(ca.server_config(&names, &[b"h2", b"http/1.1"]))
    };
    let origin = Origin::start_background(OriginOpts {
        tls,
        bind: Some(bind.parse().expect("--bind ADDR:PORT")),
        also_v6: false,
    });
    println!("listening {}", origin.addr);
    loop {
        std::thread::park();
    }
}
