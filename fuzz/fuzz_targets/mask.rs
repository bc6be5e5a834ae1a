//! The in-place JSON masker rewrites response bodies. For any input it must
//! not panic or change the length; for valid JSON it must yield valid JSON
//! in which every value named by `$..secret` is masked.
#![no_main]
use hoop::policy::mask::{Counts, MaskConfig, Masker};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static M: Masker = {
            let c: MaskConfig = toml::from_str(
                "json = [\"$..secret\", \"$.a[*].b\"]\ndetectors = [\"credit_card\", \"email\"]\nkeep_last = 2\n",
            )
            .unwrap();
            Masker::compile(&c).unwrap()
        };
    }
    M.with(|m| {
        let mut counts = Counts::default();
        // Err: not JSON though it should be (refused by the pipeline).
        let Ok(Some(out)) = m.mask_body(Some("application/json"), data, &mut counts) else {
            return;
        };
        if let Ok(before) = serde_json::from_slice::<serde_json::Value>(data) {
            assert_eq!(out.len(), data.len(), "length changed");
            let after: serde_json::Value =
                serde_json::from_slice(&out).expect("masking valid JSON keeps it valid");
            assert!(!has_unmasked_secret(&after), "a secret survived: {after}");
            let _ = before;
        }
    });
});

fn has_unmasked_secret(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(m) => m.iter().any(|(k, x)| {
            (k == "secret" && matches!(x, serde_json::Value::String(s) if s.chars().rev().skip(2).any(|c| c != '*')))
                || has_unmasked_secret(x)
        }),
        serde_json::Value::Array(a) => a.iter().any(has_unmasked_secret),
        _ => false,
    }
}
