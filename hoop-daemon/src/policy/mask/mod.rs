//! Response masking, per connection: JSON field paths (a JSONPath subset:
//! `$.a.b`, `$.a[*].b`, `$..name`, `['k']`, `[n]`, `.*`; see scan.rs), built-in
//! detectors and custom regexes over text, on headers and bodies. Bodies
//! arrive decoded (gzip, deflate, br, zstd) and leave as identity. Masked
//! values keep the JSON valid and their type: strings stay strings of the
//! same length, numbers stay numbers. Counts by rule (never values) go to
//! the exchange record.
pub mod decode;
pub mod detect;
pub mod scan;

use std::collections::BTreeMap;

use http::{HeaderValue, response};
use serde_json::Value;

pub use detect::Detector;
use scan::FieldPath;

use crate::config::policy::Problem;

/// A body that must be masked as JSON (JSON paths are configured, and its
/// type or first byte says JSON) but does not scan as JSON.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the body should be JSON and is not ({0})")]
pub struct ShouldBeJson(pub scan::NotJson);

pub use crate::config::mask::{CustomDetector, MaskConfig, OverLimit};

/// What was masked, by rule. Never the values.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub BTreeMap<String, u64>);

impl Counts {
    pub fn add(&mut self, rule: &str, n: u64) {
        if n == 0 {
            return;
        }
        // No allocation on the hot path: the rule is usually counted already.
        match self.0.get_mut(rule) {
            Some(c) => *c += n,
            None => {
                self.0.insert(rule.to_string(), n);
            }
        }
    }

    pub fn get(&self, rule: &str) -> u64 {
        self.0.get(rule).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    pub fn merge(&mut self, o: Counts) {
        for (k, v) in o.0 {
            self.add(&k, v);
        }
    }
}

pub struct Masker {
    paths: Vec<(String, FieldPath)>,
    detectors: Vec<Detector>,
    keep_last: usize,
    pub max_body: usize,
    pub over_limit: OverLimit,
}

impl Masker {
    /// Compiles `c`; errors name the field (relative key) and the problem.
    pub fn compile(c: &MaskConfig) -> Result<Self, Problem> {
        let paths = c
            .json
            .iter()
            .enumerate()
            .map(|(i, p)| {
                FieldPath::parse(p)
                    .map(|jp| (format!("json:{p}"), jp))
                    .map_err(|e| {
                        Problem::at(
                            format!("json[{i}]"),
                            format!("is not a supported JSONPath ({e})"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut detectors = Vec::new();
        for (i, d) in c.detectors.iter().enumerate() {
            detectors.push(Detector::built_in(d, c.keep_last).ok_or_else(|| {
                Problem::at(
                    format!("detectors[{i}]"),
                    format!(
                        "{d:?} is not a detector; there are: {}",
                        detect::BUILT_IN.join(", ")
                    ),
                )
            })?);
        }
        for (i, d) in c.custom.iter().enumerate() {
            detectors.push(Detector::custom(&d.name, &d.regex).map_err(|e| {
                Problem::at(
                    format!("custom[{i}].regex"),
                    format!("is not a valid regex: {e}"),
                )
            })?);
        }
        if paths.is_empty() && detectors.is_empty() {
            return Err(Problem::at(
                "json",
                "a mask needs json paths, detectors or custom regexes",
            ));
        }
        if c.max_body == 0 {
            return Err(Problem::at("max_body", "must be at least 1"));
        }
        Ok(Self {
            paths,
            detectors,
            keep_last: c.keep_last,
            max_body: c.max_body,
            over_limit: c.over_limit,
        })
    }

    /// Runs the detectors over text.
    pub fn mask_text(&self, s: &str, counts: &mut Counts) -> Option<String> {
        let mut cur: Option<String> = None;
        for d in &self.detectors {
            let src = cur.as_deref().unwrap_or(s);
            if let std::borrow::Cow::Owned(o) = d.apply(src, counts) {
                cur = Some(o);
            }
        }
        cur
    }

    /// Masks a JSON value (through its serialisation; bodies take the
    /// in-place path directly).
    pub fn mask_json(&self, v: &mut Value, counts: &mut Counts) {
        let mut buf = serde_json::to_vec(v).expect("JSON serialises");
        if scan::mask_json_in_place(
            &mut buf,
            &self.paths,
            &self.detectors,
            self.keep_last,
            counts,
        )
        .is_ok()
        {
            *v = serde_json::from_slice(&buf).expect("masking keeps JSON valid");
        }
    }

    /// Masks a whole (decoded) body. A body that parses as JSON (or a
    /// sequence of JSON values: NDJSON, `json-seq`) is masked as JSON
    /// whatever its content type says, since the job can often choose the
    /// type it is served; anything else gets the detectors over its text,
    /// in place, around any bytes that are not UTF-8. Err (fail closed)
    /// when the body should be JSON (by type or by its first byte) and
    /// isn't, while JSON paths are configured: a slice or a broken
    /// document must not pass with its named fields unmasked.
    pub fn mask_body(
        &self,
        content_type: Option<&str>,
        body: &[u8],
        counts: &mut Counts,
    ) -> Result<Option<Vec<u8>>, ShouldBeJson> {
        let first = body
            .iter()
            .find(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t' | 0x1e));
        let Some(&first) = first else {
            return Ok(None);
        };
        let declared = content_type.is_some_and(|c| c.to_ascii_lowercase().contains("json"));
        let looks = matches!(first, b'{' | b'[');
        if declared || looks {
            // In place, one pass; see scan.rs.
            let mut buf = body.to_vec();
            let mut found = Counts::default();
            match scan::mask_json_in_place(
                &mut buf,
                &self.paths,
                &self.detectors,
                self.keep_last,
                &mut found,
            ) {
                Ok(()) => {
                    let changed = found.total() > 0;
                    counts.merge(found);
                    return Ok(changed.then_some(buf));
                }
                Err(e) if !self.paths.is_empty() && (looks || declared) => {
                    return Err(ShouldBeJson(e));
                }
                Err(_) => {}
            }
        }
        let mut buf = body.to_vec();
        let before = counts.total();
        let mut at = 0;
        // Detectors over each valid UTF-8 run: bytes that are not text
        // can't hide a card number from them.
        for chunk in body.utf8_chunks() {
            let valid = chunk.valid();
            if let Some(o) = self.mask_text(valid, counts) {
                buf[at..at + valid.len()].copy_from_slice(o.as_bytes());
            }
            at += valid.len() + chunk.invalid().len();
        }
        Ok((counts.total() > before).then_some(buf))
    }

    /// Runs the detectors over header values.
    pub fn mask_headers(&self, parts: &mut response::Parts, counts: &mut Counts) {
        for v in parts.headers.values_mut() {
            let Ok(s) = v.to_str() else { continue };
            if let Some(o) = self.mask_text(s, counts)
                && let Ok(nv) = HeaderValue::from_str(&o)
            {
                *v = nv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn masker(text: &str) -> Masker {
        let c: MaskConfig = toml::from_str(text).unwrap();
        Masker::compile(&c).unwrap()
    }

    #[test]
    fn json_paths_mask_by_type_and_count_by_rule() {
        let m = masker(
            "json = [\"$.user.ssn\", \"$.cards[*].number\", \"$..api_secret\"]\nkeep_last = 4\n",
        );
        let mut v = json!({
            "user": {"ssn": "123-45-6789", "name": "Ann"},
            "cards": [{"number": "4111111111111111"}, {"number": 5500000000000004u64}],
            "deep": {"x": [{"api_secret": "s3cr3t"}, {"api_secret": {"nested": 1}}]}
        });
        let mut c = Counts::default();
        m.mask_json(&mut v, &mut c);
        assert_eq!(v["user"]["ssn"], "*******6789");
        assert_eq!(v["user"]["name"], "Ann");
        assert_eq!(v["cards"][0]["number"], "************1111");
        assert_eq!(v["cards"][1]["number"], 4);
        assert_eq!(v["deep"]["x"][0]["api_secret"], "**cr3t");
        // An object named by a path becomes a string of stars.
        assert_eq!(
            v["deep"]["x"][1]["api_secret"],
            "*".repeat(r#"{"nested":1}"#.len() - 2)
        );
        assert_eq!(c.get("json:$.cards[*].number"), 2);
        assert_eq!(c.get("json:$..api_secret"), 2);
    }

    #[test]
    fn detectors_reach_every_string_and_card_numbers() {
        let m = masker("detectors = [\"credit_card\", \"email\"]\n");
        let mut v = json!({"a": ["pay 4111 1111 1111 1111 now", {"b": "x@y.example"}], "n": 4111111111111111u64, "ok": 42});
        let mut c = Counts::default();
        m.mask_json(&mut v, &mut c);
        let s = v.to_string();
        assert!(!s.contains("4111"), "{s}");
        assert!(!s.contains("x@y.example"), "{s}");
        assert_eq!(v["ok"], 42);
        assert!(v["n"].is_number());
        assert_eq!(c.get("credit_card"), 2);
        assert_eq!(c.get("email"), 1);
    }

    #[test]
    fn bodies_and_headers() {
        let m = masker(
            "detectors = [\"aws_key\"]\n[[custom]]\nname = \"ssn\"\nregex = '\\b\\d{3}-\\d{2}-\\d{4}\\b'\n",
        );
        let mut c = Counts::default();
        let out = m
            .mask_body(
                Some("application/json"),
                br#"{"k":"AKIAIOSFODNN7EXAMPLE","s":"123-45-6789"}"#,
                &mut c,
            )
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["k"], "*".repeat(20));
        assert_eq!(v["s"], "***********");
        let out = m
            .mask_body(Some("text/plain"), b"ssn 123-45-6789.", &mut c)
            .unwrap()
            .unwrap();
        assert_eq!(out, b"ssn ***********.");
        assert!(
            m.mask_body(Some("text/plain"), b"nothing here", &mut c)
                .unwrap()
                .is_none()
        );
        let mut p = http::Response::builder()
            .header("x-key", "AKIAIOSFODNN7EXAMPLE")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        m.mask_headers(&mut p, &mut c);
        assert_eq!(p.headers["x-key"], "*".repeat(20));
        assert_eq!(c.get("aws_key"), 2);
        assert_eq!(c.get("ssn"), 2);
    }

    #[test]
    fn json_sequences_stay_json_and_broken_json_fails_closed() {
        let m = masker("json = [\"$..pan\"]\nkeep_last = 4\n");
        for (ctype, sep) in [
            ("application/x-ndjson", "\n"),
            ("application/json-seq", "\u{1e}"),
            ("application/json", "\r\n"),
        ] {
            let doc = format!("{{\"pan\":4111111111111111}}{sep}{{\"pan\":5500000000000004}}\n");
            let out = m
                .mask_body(Some(ctype), doc.as_bytes(), &mut Counts::default())
                .unwrap()
                .unwrap();
            let text = String::from_utf8(out).unwrap();
            let docs: Vec<Value> = text
                .split(['\n', '\u{1e}'])
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{ctype}: {l}: {e}")))
                .collect();
            assert_eq!(docs.len(), 2, "{ctype}: {text}");
            assert!(!text.contains("4111111111111111") && !text.contains("5500000000000004"));
        }
        // A slice of JSON (what a Range answer would be) is not masked as
        // text: it is refused.
        let slice = br#"ds":[{"number":"4111111111111111","pan":4111111111111111}]"#;
        assert!(
            m.mask_body(Some("application/json"), &slice[..], &mut Counts::default())
                .is_err()
        );
        assert!(
            m.mask_body(None, br#"{"pan":41111"#, &mut Counts::default())
                .is_err()
        );
        // JSON served as text is still masked as JSON.
        let out = m
            .mask_body(
                Some("text/plain"),
                br#"{"pan":4111111111111111}"#,
                &mut Counts::default(),
            )
            .unwrap()
            .unwrap();
        assert!(!String::from_utf8(out).unwrap().contains("41111111111"));
        // Not UTF-8 around a card: the detectors still see it.
        let d = masker("detectors = [\"credit_card\"]\n");
        let mut bin = b"\xff\xfe card 4111111111111111 \xc3".to_vec();
        let out = d
            .mask_body(None, &bin, &mut Counts::default())
            .unwrap()
            .unwrap();
        assert_eq!(out.len(), bin.len());
        let at = bin
            .windows(16)
            .position(|w| w == b"4111111111111111")
            .unwrap();
        bin.splice(at..at + 16, std::iter::repeat_n(b'*', 16));
        assert_eq!(out, bin);
    }

    #[test]
    fn bad_mask_config_names_the_field() {
        for (text, key) in [
            ("json = [\"$.a[\"]\n", "json[0]"),
            ("detectors = [\"nope\"]\n", "detectors[0]"),
            (
                "[[custom]]\nname = \"x\"\nregex = \"(\"\n",
                "custom[0].regex",
            ),
            ("", "json"),
        ] {
            let c: MaskConfig = toml::from_str(text).unwrap();
            let e = Masker::compile(&c)
                .err()
                .unwrap_or_else(|| panic!("accepted {text}"));
            assert_eq!(e.key, key, "{text}");
        }
    }

    mod props {
        use proptest::prelude::*;
        use serde_json::{Value, json};

        use super::super::{Counts, detect::luhn};
        use super::masker;

        /// A Luhn-valid number of 13 to 19 digits.
        fn card() -> impl Strategy<Value = String> {
            (12usize..=18, any::<u64>(), any::<u64>()).prop_map(|(len, a, b)| {
                let mut d: Vec<u8> = format!("{a:020}{b:020}").bytes().take(len).collect();
                d[0] = b'4';
                let check = (0..10u8).find(|c| {
                    let mut t = d.clone();
                    t.push(b'0' + c);
                    luhn(&t)
                });
                d.push(b'0' + check.unwrap());
                String::from_utf8(d).unwrap()
            })
        }

        /// How a card is written: plain, or in groups of four.
        fn written(c: &str, style: u8) -> String {
            match style % 3 {
                0 => c.to_string(),
                s => {
                    let sep = if s == 1 { " " } else { "-" };
                    c.as_bytes()
                        .chunks(4)
                        .map(|g| std::str::from_utf8(g).unwrap())
                        .collect::<Vec<_>>()
                        .join(sep)
                }
            }
        }

        fn doc() -> impl Strategy<Value = (Value, Vec<String>)> {
            let leaf = (card(), any::<u8>(), "[a-z ]{0,8}", any::<u8>()).prop_map(
                |(c, style, word, kind)| {
                    let v = match kind % 4 {
                        0 => Value::String(written(&c, style)),
                        1 => Value::String(format!("{word} {} {word}", written(&c, style))),
                        2 => c
                            .parse::<u64>()
                            .map(Value::from)
                            .unwrap_or_else(|_| Value::String(c.clone())),
                        _ => Value::String(word.clone()),
                    };
                    let cards = if kind % 4 == 3 { vec![] } else { vec![c] };
                    (v, cards)
                },
            );
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(|items| {
                        let cards = items.iter().flat_map(|(_, c)| c.clone()).collect();
                        (
                            Value::Array(items.into_iter().map(|(v, _)| v).collect()),
                            cards,
                        )
                    }),
                    prop::collection::vec(("[a-z]{1,6}", inner), 0..6).prop_map(|items| {
                        let cards = items.iter().flat_map(|(_, (_, c))| c.clone()).collect();
                        let m: serde_json::Map<String, Value> =
                            items.into_iter().map(|(k, (v, _))| (k, v)).collect();
                        (Value::Object(m), cards)
                    }),
                ]
            })
        }

        proptest! {
            #[test]
            fn no_card_survives_masking((mut v, cards) in doc()) {
                let m = masker("detectors = [\"credit_card\"]\n");
                let mut c = Counts::default();
                m.mask_json(&mut v, &mut c);
                let out = json!(v).to_string();
                for card in &cards {
                    prop_assert!(!out.contains(card.as_str()), "{card} survived in {out}");
                    for style in 1..3u8 {
                        let w = written(card, style);
                        prop_assert!(!out.contains(w.as_str()), "{w} survived in {out}");
                    }
                }
            }
        }
    }
}
