//! A batch's stored bytes come from a file that someone with write access
//! may have forged: unpacking, splitting and decoding them never panics
//! and never allocates past the caps, and what decodes re-encodes to the
//! same bytes (the bytes the chain hashes are the only form there is).
#![no_main]
use hoop::audit::seal::{self, CODEC_RAW, CODEC_ZSTD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&codec, rest)) = data.split_first() else {
        return;
    };
    let codec = match codec % 3 {
        0 => CODEC_RAW,
        1 => CODEC_ZSTD,
        _ => codec,
    };
    let Ok(records) = seal::unpack(codec, rest) else {
        return;
    };
    for rec in seal::split(&records) {
        let Ok((_, bytes)) = rec else { break };
        let kind = seal::kind(bytes);
        if let Ok(f) = seal::fields(bytes) {
            assert_eq!(f.encode(), bytes, "decoded fields re-encode to other bytes");
            assert_eq!(kind.ok(), Some(f.kind.as_str()));
        }
    }
});
