//! The canary against every encoding of the secret, every credential
//! kind, and every place and split point it can come back in. Whether a
//! text still holds the secret is judged by the testkit's own decoders
//! (`leak::leaks`), not the canary's.
use std::sync::atomic::{AtomicUsize, Ordering};

use hoop_testkit::leak::{self, Which};

use super::*;
use crate::{
    config::policy::CredentialConfig,
    policy::credential::{Credential, base64_forms},
};

fn credential(extra: &str, secret: &str) -> (Credential, tempfile::NamedTempFile) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), secret).unwrap();
    let text = format!(
        "{extra}\nsecret = {{ file = \"{}\" }}\n",
        f.path().display()
    );
    let c: CredentialConfig = toml::from_str(&text).unwrap();
    (Credential::new(&c).unwrap(), f)
}

fn canary(secret: &str) -> (Arc<Canary>, tempfile::NamedTempFile) {
    let (c, f) = credential("", secret);
    (c.canary.clone(), f)
}

/// What the upstream receives for this credential: the header value, or
/// the query parameter's value as sent.
fn sent(c: &Credential) -> String {
    let mut p = http::Request::builder()
        .uri("https://a.test/x")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    c.inject(&mut p);
    match c.header() {
        Some(h) => p.headers[h].to_str().unwrap().to_string(),
        None => {
            let q = p.uri.query().unwrap();
            q.split_once('=').unwrap().1.to_string()
        }
    }
}

/// `body` through a `CanaryBody` in pieces cut at `cuts`: what comes out,
/// and the hits it reported.
fn stream(c: &Arc<Canary>, body: &[u8], cuts: &[usize]) -> (Vec<u8>, usize) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let mut t = CanaryBody::new(
        c.clone(),
        Box::new(move |n| {
            h.fetch_add(n, Ordering::SeqCst);
        }),
    );
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([&body.len()]) {
        out.extend_from_slice(&t.chunk(Bytes::copy_from_slice(&body[at..cut])));
        at = cut;
    }
    out.extend_from_slice(&t.finish());
    (out, hits.load(Ordering::SeqCst))
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_secret_split_across_chunks_at_every_offset_is_masked() {
    let secret = "tok-0123456789abcdef";
    let (c, _f) = canary(secret);
    let body = format!("{{\"headers\":{{\"authorization\":\"Bearer {secret}\"}},\"n\":1}}");
    for cut1 in 0..body.len() {
        for cut2 in [cut1, (cut1 + 7).min(body.len())] {
            let (out, hits) = stream(&c, body.as_bytes(), &[cut1, cut2]);
            let out = String::from_utf8(out).unwrap();
            assert_eq!(out.len(), body.len());
            assert!(!out.contains(secret), "cut at {cut1}/{cut2}: {out}");
            assert!(out.contains("Bearer [hoop:credential]***"), "{out}");
            assert_eq!(hits, 1);
        }
    }
}

#[test]
fn headers_are_masked() {
    let (c, _f) = canary("tok-0123456789abcdef");
    let mut p = http::Response::builder()
        .header("x-echo", "Bearer tok-0123456789abcdef")
        .header("x-other", "fine")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    assert_eq!(mask_headers(&c, &mut p), 1);
    assert_eq!(p.headers["x-echo"], "Bearer [hoop:credential]***");
    assert_eq!(p.headers["x-other"], "fine");
}

/// Each kind of credential, and each form of its secret and of the value
/// the upstream received, echoed in a body and in a header: masked, and
/// nothing left reads back as the secret.
#[test]
fn every_form_of_every_kind_of_credential_is_masked() {
    const SECRET: &str = "sk-live/5f2d+9c0e 7b1a%4f\"q";
    for kind in [
        "",
        "header = \"x-api-key\"\nformat = \"key={secret};\"",
        "basic_user = \"svc\"",
        "query = \"api_key\"",
    ] {
        let (cred, _f) = credential(kind, SECRET);
        let c = &cred.canary;
        let value = sent(&cred);
        assert!(
            leak::leaks(value.as_bytes(), SECRET.as_bytes()).is_some(),
            "{kind}: {value}"
        );
        for (name, form) in leak::forms(SECRET).into_iter().chain(
            leak::forms(&value)
                .into_iter()
                .map(|(n, f)| (format!("sent {n}"), f)),
        ) {
            // Encoding what was sent (already base64 for Basic, already
            // percent-encoded in a query) can take it past two layers or
            // base64 of base64, out of reach of the testkit's reading and
            // the canary's alike: only forms that read back count.
            if leak::leaks(form.as_bytes(), SECRET.as_bytes()).is_none() {
                assert!(name.starts_with("sent "), "{kind} / {name}");
                continue;
            }
            let body = format!("{{\"echo\":\"{form}\",\"n\":1}}");
            let mut out = body.clone().into_bytes();
            let hits = c.mask(&mut out);
            assert!(hits >= 1, "{kind} / {name}: not found in {body}");
            assert_eq!(out.len(), body.len());
            if let Some(how) = leak::leaks(&out, SECRET.as_bytes()) {
                panic!("{kind} / {name}: reads back ({how}) from {}", show(&out));
            }
            // The same in a header value.
            if let Ok(v) = HeaderValue::from_str(&form) {
                let mut h = HeaderMap::new();
                h.insert("x-echo", v);
                assert!(mask_header_map(c, &mut h) >= 1, "{kind} / {name}");
                let v = h["x-echo"].as_bytes();
                assert!(leak::leaks(v, SECRET.as_bytes()).is_none(), "{name}");
            }
        }
    }
}

#[test]
fn a_non_ascii_secret_is_masked_in_utf8_percent_and_surrogate_escapes() {
    const SECRET: &str = "pässwörd-😀-0123";
    let (c, _f) = canary(SECRET);
    let forms = leak::forms(SECRET);
    assert!(forms.iter().any(|(_, f)| f.contains("\\ud83d\\ude00")));
    for (name, form) in forms {
        let mut out = format!("[{form}]").into_bytes();
        assert!(c.mask(&mut out) >= 1, "{name}: {form}");
        assert!(
            leak::leaks(&out, SECRET.as_bytes()).is_none(),
            "{name}: {}",
            show(&out)
        );
    }
}

/// Reviewers' variants, spelled out.
#[test]
fn mixed_escapes_are_masked_and_what_is_left_is_the_mask() {
    const SECRET: &str = "ab/cd ef+gh\\ij";
    let (c, _f) = canary(SECRET);
    for form in [
        r"ab\/cd ef+gh\\ij",              // JSON \/ and \\
        r"ab\u002Fcd ef+gh\\ij",          // \u002F
        r"ab\u002fcd ef+gh\\ij",          // lowercase hex
        r"\u0061b/cd\u0020ef+gh\u005cij", // some characters only
        "ab%2fcd%20ef%2Bgh%5Cij",         // mixed-case hex
        "ab/cd+ef%2bgh%5cij",             // + for space
        "ab/cd ef%2Bgh\\ij",              // one byte only
        "ab%2Fcd%2520ef%2Bgh%5Cij",       // one byte percent-encoded twice
        r"ab\\\/cd ef+gh\\\\ij",          // JSON in a JSON string
        r"ab\x2fcd ef+gh\\ij",            // JavaScript \xXX
        r"ab\u{2f}cd ef+gh\\ij",          // JavaScript \u{…}
    ] {
        let mut out = format!("x={form};").into_bytes();
        assert_eq!(c.mask(&mut out), 1, "{form}: {}", show(&out));
        let out = show(&out);
        let masked = &out[2..out.len() - 1];
        assert!(
            masked.starts_with("[hoop:credential]") || masked.bytes().all(|b| b == b'*'),
            "{form}: {out}"
        );
    }
}

#[test]
fn plain_text_and_near_misses_are_left_alone() {
    let (c, _f) = canary("sk-live/5f2d+9c0e 7b1a");
    for text in [
        "nothing to see here",
        r"sk-live\/5f2d+9c0e 7b1b",
        "sk-live%2F5f2d%2B9c0e%207b1",
        "%%%%\\\\\\\\++++",
    ] {
        let mut out = text.as_bytes().to_vec();
        assert_eq!(c.mask(&mut out), 0, "{text}");
        assert_eq!(out, text.as_bytes());
    }
}

/// The held-back bytes grow with the longest way to write a needle, and no
/// more: a `\u`-escaped secret split anywhere, across three chunks.
#[test]
fn escaped_secrets_split_anywhere_are_masked() {
    const SECRET: &str = "tok-0123456789abcdef";
    let (c, _f) = canary(SECRET);
    let escaped = leak::json(SECRET, Some((Which::All, false)));
    let twice = leak::json(&escaped, Some((Which::Seed(0x1234_5678), true)));
    for form in [escaped, twice] {
        let body = format!("{{\"a\":\"{form}\",\"b\":\"\\\\\"}}");
        for cut1 in 0..body.len() {
            for cut2 in [cut1, (cut1 + 5).min(body.len())] {
                let (out, hits) = stream(&c, body.as_bytes(), &[cut1, cut2]);
                assert_eq!(out.len(), body.len());
                assert_eq!(hits, 1, "cut at {cut1}/{cut2}: {}", show(&out));
                assert!(leak::leaks(&out, SECRET.as_bytes()).is_none());
            }
        }
    }
    // Plain text is held back by a needle's length, as before views.
    let mut plain = vec![b'x'; 4096];
    let (_, settled) = c.mask_stream(&mut plain);
    assert_eq!(settled, 4096 - (c.max_len - 1));
}

/// A run of backslashes: whether the next `\u` is an escape depends on
/// how many came before, so the canary never resumes inside a run.
#[test]
fn backslash_runs_split_anywhere_keep_their_reading() {
    const SECRET: &str = "secret-value-0001";
    let (c, _f) = canary(SECRET);
    // n backslashes, then u0073: one (\u0073), three (\\ then \u0073)
    // and five read as the secret once unescaped; two and six twice
    // unescaped (a JSON string inside a JSON string); four neither way.
    for (n, expect) in [(1, 1), (2, 1), (3, 1), (4, 0), (5, 1), (6, 1)] {
        let body = format!("x{}u0073ecret-value-0001 end", "\\".repeat(n));
        let mut whole = body.clone().into_bytes();
        assert_eq!(c.mask(&mut whole), expect, "{n}: {body}");
        for cut in 0..body.len() {
            let (out, hits) = stream(&c, body.as_bytes(), &[cut]);
            assert_eq!(hits, expect, "{n}, cut {cut}: {}", show(&out));
        }
    }
}

#[test]
fn header_names_reason_phrases_and_trailers_are_masked() {
    const SECRET: &str = "tok-0123456789abcdef";
    let (c, _f) = canary(SECRET);
    let mut p = http::Response::builder()
        .header("x-tok-0123456789ABCDEF", "1")
        .header("x-fine", "tok-0123456789abcdef")
        .body(())
        .unwrap()
        .into_parts()
        .0;
    p.extensions
        .insert(hyper::ext::ReasonPhrase::try_from(b"OK tok%2D0123456789abcdef".to_vec()).unwrap());
    assert_eq!(mask_headers(&c, &mut p), 3);
    let names: Vec<&str> = p.headers.keys().map(|k| k.as_str()).collect();
    assert_eq!(names, ["x-*hoop*credential****", "x-fine"]);
    assert_eq!(p.headers["x-fine"], "[hoop:credential]***");
    let reason = p.extensions.get::<hyper::ext::ReasonPhrase>().unwrap();
    assert_eq!(reason.as_bytes(), b"OK [hoop:credential]*****");

    let mut t = CanaryBody::new(c.clone(), Box::new(|_| {}));
    let mut trailers = HeaderMap::new();
    trailers.insert("x-echo", HeaderValue::from_static("tok%2d0123456789abcdef"));
    t.trailers(&mut trailers);
    assert_eq!(trailers["x-echo"], "[hoop:credential]*****");
    assert_eq!(t.masked().get(crate::policy::enforce::CANARY), 1);
}

/// Large buffers go window by window: a hit on a window's edge is found.
#[test]
fn hits_on_window_edges_are_found() {
    const SECRET: &str = "tok-0123456789abcdef";
    let (c, _f) = canary(SECRET);
    let form = leak::json(SECRET, Some((Which::All, true)));
    let window = WINDOW.max(256 * c.max_len);
    for at in [window - 40, window - 1, window, 2 * window - 7] {
        let mut body = vec![b'.'; 3 * window];
        body[at..at + form.len()].copy_from_slice(form.as_bytes());
        body[5] = b'\\';
        assert_eq!(c.mask(&mut body), 1, "at {at}");
        assert!(leak::leaks(&body, SECRET.as_bytes()).is_none());
    }
}

mod prop {
    use base64::{
        Engine,
        engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
    };
    use proptest::prelude::*;

    use super::*;

    const ENCODINGS: usize = 16;

    /// Encoding `e` of `s`; `seed` picks subsets and hex case, `lead` the
    /// secret's offset inside a longer base64 text.
    fn encode(s: &[u8], e: usize, seed: u64, lead: usize) -> String {
        let text = std::str::from_utf8(s).unwrap();
        let mut blob = b"xy:"[..lead].to_vec();
        blob.extend_from_slice(s);
        blob.extend_from_slice(b"-t");
        let some = Which::Seed(seed);
        match e {
            0 => text.to_string(),
            1 => STANDARD.encode(&blob),
            2 => STANDARD_NO_PAD.encode(&blob),
            3 => URL_SAFE.encode(&blob),
            4 => URL_SAFE_NO_PAD.encode(&blob),
            5 => leak::percent(s, Which::All, true),
            6 => leak::percent(s, Which::All, false),
            7 => leak::percent(s, some, seed & 1 == 0),
            8 => leak::form(s),
            9 => leak::json(text, None),
            10 => leak::json(text, Some((Which::All, seed & 1 == 0))),
            11 => leak::json(text, Some((some, seed & 2 == 0))),
            12 => leak::json(&leak::percent(s, some, true), Some((some, false))),
            13 => leak::percent(leak::json(text, Some((some, true))).as_bytes(), some, false),
            // Mixed-case hex within one form.
            14 => leak::percent(s, Which::All, true)
                .chars()
                .enumerate()
                .map(|(i, ch)| {
                    if seed.rotate_left(i as u32 % 64) & 1 == 1 {
                        ch.to_ascii_lowercase()
                    } else {
                        ch
                    }
                })
                .collect(),
            _ => leak::json(&STANDARD.encode(&blob), None),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn every_encoding_split_anywhere_is_masked(
            secret in proptest::collection::vec(0x20u8..=0x7e, 8..40),
            e in 0..ENCODINGS,
            seed in any::<u64>(),
            lead in 0usize..3,
            pre in "[a-zA-Z0-9 ,:{}\"]{0,12}",
            post in "[a-zA-Z0-9 ,:{}\"]{0,12}",
        ) {
            let c = Arc::new(Canary::new(&secret, base64_forms(&secret)));
            let form = encode(&secret, e, seed, lead);
            prop_assume!(leak::leaks(form.as_bytes(), &secret).is_some());
            let body = format!("{pre}{form}{post}").into_bytes();
            let mut whole = body.clone();
            prop_assert!(c.mask(&mut whole) >= 1, "not found: {}", show(&body));
            prop_assert!(leak::leaks(&whole, &secret).is_none(), "left: {}", show(&whole));
            for cut in 0..=body.len() {
                let (out, hits) = stream(&c, &body, &[cut]);
                prop_assert_eq!(out.len(), body.len());
                prop_assert!(hits >= 1, "cut {}: not found in {}", cut, show(&body));
                if let Some(how) = leak::leaks(&out, &secret) {
                    prop_assert!(false, "cut {}: reads back ({}) from {}", cut, how, show(&out));
                }
            }
        }
    }
}
