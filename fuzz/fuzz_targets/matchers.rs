//! The request matchers guardrails rely on. Path normalisation leaves no
//! empty, `.` or `..` segment for a rule to be fooled by, and is a fixed
//! point once nothing is left to decode (it decodes once, as upstreams do);
//! host patterns parse or refuse any text, and match without panicking.
#![no_main]
use hoop::policy::{HostPattern, rules::normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let n = normalize_path(text);
    assert!(n.starts_with('/'), "{n:?}");
    if !n.contains('%') {
        assert_eq!(normalize_path(&n), n, "not idempotent for {text:?}");
    }
    let inner = n.trim_end_matches('/');
    for seg in inner.split('/').skip(1) {
        assert!(!seg.is_empty() && seg != "." && seg != "..", "{text:?} → {n:?}");
    }
    let (pattern, host) = text.split_once('\n').unwrap_or((text, "api.partner.example"));
    if let Ok(p) = HostPattern::parse(pattern) {
        let _ = p.matches(host, 443);
    }
});
