//! The first-bytes classifier decides, from a prefix, whether a connection
//! is TLS, HTTP or refused. Beyond not panicking: a verdict is final (more
//! bytes never change it), and it never waits beyond MAX_SNIFF bytes.
#![no_main]
use hoop::pipeline::classify::{Kind, MAX_SNIFF, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = classify(data);
    if whole == Kind::NeedMore {
        assert!(data.len() < MAX_SNIFF, "NeedMore at {} bytes", data.len());
    }
    for cut in 0..data.len().min(MAX_SNIFF + 2) {
        let early = classify(&data[..cut]);
        if early != Kind::NeedMore {
            assert_eq!(early, whole, "verdict changed after {cut} bytes");
        }
    }
});
