//! Real parts for hoop's tests and benchmarks: a test CA that issues server
//! certificates, and an HTTPS (or plain) origin speaking h1 and h2 with the
//! routes the suites need, and a local OIDC issuer. Everything listens on loopback only.
mod ca;
pub mod cdp;
pub mod idp;
pub mod leak;
pub mod oidc;
mod origin;
pub mod postgres;
pub mod seed;
pub mod wsclient;

pub use ca::TestCa;
pub use origin::{Origin, OriginOpts, Seen, reflected_forms};

/// Peak resident memory (VmHWM, KiB) of a process: a pid, or "self".
pub fn peak_rss_kib(pid: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let v = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .expect("VmHWM in /proc status");
    v.trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// `data` compressed with a Content-Encoding: gzip, deflate (zlib), br or
/// zstd; anything else leaves it as is.
pub fn encode(encoding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match encoding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            brotli::CompressorWriter::new(&mut out, 4096, 5, 22)
                .write_all(data)
                .unwrap();
            out
        }
        "zstd" => zstd::stream::encode_all(data, 3).unwrap(),
        _ => data.to_vec(),
    }
}
