//! Built-in detectors for sensitive values in text: payment cards (Luhn
//! checked), JWTs, AWS access keys, private-key PEM blocks, bearer tokens
//! and API-key shapes, e-mail addresses; plus custom regexes. Each hit is
//! replaced in place by `*` (cards keep their last digits when asked), so
//! the text keeps its shape: JSON strings stay strings.
use std::borrow::Cow;

use regex::Regex;

use super::Counts;

pub const BUILT_IN: [&str; 6] = [
    "credit_card",
    "jwt",
    "aws_key",
    "private_key",
    "bearer",
    "email",
];

pub enum Detector {
    Card {
        keep_last: usize,
    },
    Pattern {
        name: String,
        re: Regex,
        group: usize,
    },
}

impl Detector {
    /// A built-in detector by name.
    pub fn built_in(name: &str, keep_last: usize) -> Option<Self> {
        let (re, group) = match name {
            "credit_card" => return Some(Self::Card { keep_last }),
            "jwt" => (
                r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
                0,
            ),
            "aws_key" => (r"\b(?:AKIA|ASIA|AIDA|AROA)[0-9A-Z]{16}\b", 0),
            "private_key" => (
                r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY-----",
                0,
            ),
            // The token after "Bearer", and well-known API key prefixes.
            "bearer" => (
                r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{16,}=*)|\b((?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{36,}|xox[abpr]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})",
                usize::MAX,
            ),
            "email" => (
                r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
                0,
            ),
            _ => return None,
        };
        Some(Self::Pattern {
            name: name.into(),
            re: Regex::new(re).expect("built-in detector compiles"),
            group,
        })
    }

    pub fn custom(name: &str, re: &str) -> Result<Self, regex::Error> {
        let re = regex::RegexBuilder::new(re).size_limit(1 << 20).build()?;
        Ok(Self::Pattern {
            name: name.into(),
            re,
            group: 0,
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Card { .. } => "credit_card",
            Self::Pattern { name, .. } => name,
        }
    }

    /// Masks every hit in `s`; counts them under the detector's name.
    pub fn apply<'a>(&self, s: &'a str, counts: &mut Counts) -> Cow<'a, str> {
        match self {
            Self::Card { keep_last } => mask_cards(s, *keep_last, counts),
            Self::Pattern { name, re, group } => {
                let mut spans = Vec::new();
                for c in re.captures_iter(s) {
                    let m = if *group == usize::MAX {
                        // The first participating group.
                        c.iter().skip(1).flatten().next()
                    } else {
                        c.get(*group)
                    };
                    if let Some(m) = m {
                        spans.push((m.start(), m.end()));
                    }
                }
                if spans.is_empty() {
                    return Cow::Borrowed(s);
                }
                counts.add(name, spans.len() as u64);
                let mut out = s.as_bytes().to_vec();
                for (a, b) in spans {
                    star(&mut out[a..b]);
                }
                Cow::Owned(String::from_utf8(out).expect("ASCII over ASCII-bounded spans"))
            }
        }
    }
}

/// Overwrites with `*`, keeping byte length. Multi-byte characters become
/// several stars, which keeps UTF-8 valid.
fn star(b: &mut [u8]) {
    b.fill(b'*');
}

pub fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = (d - b'0') as u32;
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Card numbers: 13 to 19 digits passing Luhn, written plain or grouped
/// by single spaces or dashes. In a longer run of groups, every stretch of
/// whole groups is a candidate (so "ref 99 4111 1111 1111 1111" is found),
/// but digits are never cut out of the middle of a group: that would mask
/// one in ten long numbers by chance.
fn mask_cards<'a>(s: &'a str, keep_last: usize, counts: &mut Counts) -> Cow<'a, str> {
    let b = s.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() || (i > 0 && b[i - 1].is_ascii_digit()) {
            i += 1;
            continue;
        }
        // A run of digit groups separated by single spaces or dashes.
        let mut groups: Vec<(usize, usize)> = Vec::new();
        let mut j = i;
        loop {
            let g = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            groups.push((g, j));
            if j + 1 < b.len() && (b[j] == b' ' || b[j] == b'-') && b[j + 1].is_ascii_digit() {
                j += 1;
            } else {
                break;
            }
        }
        let mut masked = vec![false; groups.len()];
        let mut found = 0;
        for a in 0..groups.len() {
            let mut digits = Vec::new();
            for (z, &(gs, ge)) in groups.iter().enumerate().skip(a) {
                digits.extend_from_slice(&b[gs..ge]);
                if digits.len() > 19 {
                    break;
                }
                if digits.len() >= 13 && luhn(&digits) {
                    found += 1;
                    masked[a..=z].iter_mut().for_each(|m| *m = true);
                }
            }
        }
        if found > 0 {
            counts.add("credit_card", found);
            let o = out.get_or_insert_with(|| b.to_vec());
            let positions: Vec<usize> = groups
                .iter()
                .zip(&masked)
                .filter(|(_, m)| **m)
                .flat_map(|(&(gs, ge), _)| gs..ge)
                .collect();
            let keep = keep_last.min(positions.len());
            for &p in &positions[..positions.len() - keep] {
                o[p] = b'*';
            }
        }
        i = j.max(i + 1);
    }
    match out {
        None => Cow::Borrowed(s),
        Some(v) => Cow::Owned(String::from_utf8(v).expect("digits replaced by ASCII")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, s: &str) -> (String, u64) {
        let d = Detector::built_in(name, 0).unwrap();
        let mut c = Counts::default();
        let out = d.apply(s, &mut c).into_owned();
        (out, c.get(name))
    }

    #[test]
    fn cards_luhn_checked_with_true_and_false_positives() {
        assert_eq!(
            run("credit_card", "card 4111111111111111 ok").0,
            "card **************** ok"
        );
        assert_eq!(
            run("credit_card", "4111 1111 1111 1111").0,
            "**** **** **** ****"
        );
        assert_eq!(
            run("credit_card", "5500-0000-0000-0004").0,
            "****-****-****-****"
        );
        // Luhn-invalid 16 digits: an order number, left alone.
        assert_eq!(run("credit_card", "order 4111111111111112").1, 0);
        // Too short, and phone-like groups.
        assert_eq!(run("credit_card", "id 411111111111").1, 0);
        assert_eq!(run("credit_card", "+1 555 0100 2233").1, 0);
        // A card glued to other digits is still found.
        let (out, n) = run("credit_card", "x 99 4111111111111111");
        assert!(n >= 1 && !out.contains("4111111111111111"), "{out}");
        let d = Detector::built_in("credit_card", 4).unwrap();
        let mut c = Counts::default();
        assert_eq!(d.apply("4111111111111111", &mut c), "************1111");
    }

    #[test]
    fn token_and_key_shapes() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        assert_eq!(
            run("jwt", &format!("t={jwt};")).0,
            format!("t={};", "*".repeat(jwt.len()))
        );
        assert_eq!(run("jwt", "eyJ alone").1, 0);
        assert_eq!(run("aws_key", "AKIAIOSFODNN7EXAMPLE").0, "*".repeat(20));
        assert_eq!(run("aws_key", "AKIA-short").1, 0);
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----";
        assert_eq!(run("private_key", &format!("k: {pem} end")).1, 1);
        assert_eq!(run("private_key", "-----BEGIN CERTIFICATE-----").1, 0);
        assert_eq!(
            run("bearer", "Authorization: Bearer abcdefghijklmnop1234").0,
            "Authorization: Bearer ********************"
        );
        assert_eq!(
            run("bearer", "key sk_live_0123456789abcdefXYZ").0,
            format!("key {}", "*".repeat(27))
        );
        assert_eq!(run("bearer", "the bearer of news").1, 0);
        let addr = "ann.lee+x@mail.example.com";
        assert_eq!(
            run("email", &format!("mail {addr}.")).0,
            format!("mail {}.", "*".repeat(addr.len()))
        );
        assert_eq!(run("email", "not@an-email").1, 0);
    }

    #[test]
    fn luhn_reference_values() {
        assert!(luhn(b"79927398713"));
        assert!(!luhn(b"79927398710"));
        assert!(luhn(b"4111111111111111"));
    }
}
