//! A secret's encoded forms, as an upstream might echo it, and a check that
//! no reading of a text gives the secret back: for the leak canary's tests
//! (unit, property, in-process and privileged), written apart from the
//! canary's own decoders so the two check each other.
use base64::{
    Engine,
    alphabet::{STANDARD, URL_SAFE},
    engine::{
        DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig,
        general_purpose::{STANDARD as B64, STANDARD_NO_PAD, URL_SAFE as B64URL, URL_SAFE_NO_PAD},
    },
};

/// Which bytes an encoder escapes: all, none, or those whose index has
/// its bit set in a seed (a random subset).
#[derive(Clone, Copy, Debug)]
pub enum Which {
    All,
    Seed(u64),
    /// Only bytes that aren't ASCII letters or digits.
    Special,
}

impl Which {
    fn pick(self, i: usize, b: u8) -> bool {
        match self {
            Which::All => true,
            Which::Seed(s) => s.rotate_left(i as u32 % 64) & 1 == 1,
            Which::Special => !b.is_ascii_alphanumeric(),
        }
    }
}

/// `%XX` for the chosen bytes (and always for those a URL can't hold
/// plain), upper- or lowercase hex.
pub fn percent(s: &[u8], which: Which, upper: bool) -> String {
    let mut out = String::new();
    for (i, &b) in s.iter().enumerate() {
        let must = !(b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if must || which.pick(i, b) {
            if upper {
                out += &format!("%{b:02X}");
            } else {
                out += &format!("%{b:02x}");
            }
        } else {
            out.push(b as char);
        }
    }
    out
}

/// A form body: space as `+`, everything not unreserved as `%XX`.
pub fn form(s: &[u8]) -> String {
    s.iter()
        .map(|&b| match b {
            b' ' => "+".to_string(),
            b if b.is_ascii_alphanumeric() || b"-._*".contains(&b) => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

/// A JSON string's content: `"`, `\` and `/` escaped with a backslash
/// (`\/` is PHP's habit), and with `u`, the characters it picks as
/// `\uXXXX` (non-BMP ones as surrogate pairs), upper- or lowercase hex.
pub fn json(s: &str, u: Option<(Which, bool)>) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        let b = if c.is_ascii() { c as u8 } else { 0x80 };
        let upper = match u {
            Some((which, upper)) if which.pick(i, b) => Some(upper),
            _ if c.is_ascii_control() => Some(false),
            _ => None,
        };
        if let Some(upper) = upper {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                if upper {
                    out += &format!("\\u{u:04X}");
                } else {
                    out += &format!("\\u{u:04x}");
                }
            }
        } else if matches!(c, '"' | '\\' | '/') {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

/// The forms of `secret` an echo might hand back, each with a name: raw,
/// base64 (standard and URL-safe, padded or not, at each alignment inside
/// a longer text), percent-encoding (all bytes in either case, some bytes,
/// `+` for space), JSON escapes (`\/`, `\uXXXX` for all or some
/// characters), and a few of these composed.
pub fn forms(secret: &str) -> Vec<(String, String)> {
    let s = secret.as_bytes();
    let mut out = vec![("raw".to_string(), secret.to_string())];
    for lead in 0..3 {
        let mut text = b"xy:"[..lead].to_vec();
        text.extend_from_slice(s);
        text.extend_from_slice(b"-tail");
        out.push((format!("b64-{lead}"), B64.encode(&text)));
        out.push((format!("b64-nopad-{lead}"), STANDARD_NO_PAD.encode(&text)));
        out.push((format!("b64url-{lead}"), B64URL.encode(&text)));
        out.push((
            format!("b64url-nopad-{lead}"),
            URL_SAFE_NO_PAD.encode(&text),
        ));
    }
    out.extend([
        ("pct-upper".into(), percent(s, Which::All, true)),
        ("pct-lower".into(), percent(s, Which::All, false)),
        (
            "pct-some".into(),
            percent(s, Which::Seed(0x5a5a_33cc), true),
        ),
        ("pct-special".into(), percent(s, Which::Special, false)),
        ("form".into(), form(s)),
        ("json-slash".into(), json(secret, None)),
        (
            "json-u-lower".into(),
            json(secret, Some((Which::All, false))),
        ),
        (
            "json-u-upper".into(),
            json(secret, Some((Which::All, true))),
        ),
        (
            "json-u-some".into(),
            json(secret, Some((Which::Seed(0x0f0f_a5a5), false))),
        ),
        (
            "json-of-pct".into(),
            json(
                &percent(s, Which::All, false),
                Some((Which::Seed(0x3333), true)),
            ),
        ),
        (
            "pct-of-json".into(),
            percent(json(secret, None).as_bytes(), Which::All, true),
        ),
        ("b64-in-json".into(), json(&B64.encode(s), None)),
        (
            "b64-pct".into(),
            percent(B64.encode(s).as_bytes(), Which::All, false),
        ),
    ]);
    out
}

/// The first reading of `hay` that holds `secret`, named: as is, after up
/// to two rounds of JSON unescaping and percent-decoding (with and without
/// `+` for space) in any order, and base64 (either alphabet, any
/// alignment) of each of those.
pub fn leaks(hay: &[u8], secret: &[u8]) -> Option<String> {
    let mut readings = vec![("as is".to_string(), hay.to_vec())];
    for _ in 0..2 {
        let mut next = Vec::new();
        for (name, r) in &readings {
            next.push((format!("{name}, json"), unjson(r)));
            next.push((format!("{name}, pct"), unpercent(r, false)));
            next.push((format!("{name}, form"), unpercent(r, true)));
        }
        readings.extend(next);
    }
    for (name, r) in &readings {
        if contains(r, secret) {
            return Some(name.clone());
        }
        for b in unbase64(r) {
            if contains(&b, secret) {
                return Some(format!("{name}, base64"));
            }
        }
    }
    None
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn hexval(d: &[u8]) -> Option<u32> {
    u32::from_str_radix(std::str::from_utf8(d).ok()?, 16).ok()
}

/// JSON string unescaping, lenient: what isn't a valid escape stays.
fn unjson(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' || i + 1 >= b.len() {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let simple = match b[i + 1] {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'n' => Some(b'\n'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        let unit = |at: usize| {
            b.get(at..at + 6)
                .filter(|t| t.starts_with(b"\\u"))
                .and_then(|t| hexval(&t[2..]))
        };
        let Some(u) = unit(i) else {
            out.push(b'\\');
            i += 1;
            continue;
        };
        let (units, used) = match unit(i + 6) {
            Some(lo) if (0xD800..0xDC00).contains(&u) => (vec![u as u16, lo as u16], 12),
            _ => (vec![u as u16], 6),
        };
        match char::decode_utf16(units).collect::<Result<String, _>>() {
            Ok(s) => {
                out.extend_from_slice(s.as_bytes());
                i += used;
            }
            Err(_) => {
                out.push(b'\\');
                i += 1;
            }
        }
    }
    out
}

fn unpercent(b: &[u8], plus: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match b.get(i + 1..i + 3).and_then(hexval) {
                Some(v) => {
                    out.push(v as u8);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Every run of base64 characters, decoded from each of its first four
/// offsets, in either alphabet.
fn unbase64(b: &[u8]) -> Vec<Vec<u8>> {
    let cfg = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    let engines = [
        GeneralPurpose::new(&STANDARD, cfg),
        GeneralPurpose::new(&URL_SAFE, cfg),
    ];
    let mut out = Vec::new();
    let is_b64 = |c: &u8| c.is_ascii_alphanumeric() || b"+/-_".contains(c);
    for run in b.split(|c| !is_b64(c)).filter(|r| r.len() >= 4) {
        for off in 0..4.min(run.len()) {
            let r = &run[off..];
            // Whole groups, and a last partial one base64 can end on.
            let cut = if r.len() % 4 == 1 {
                r.len() - 1
            } else {
                r.len()
            };
            for e in &engines {
                if let Ok(d) = e.decode(&r[..cut]) {
                    out.push(d);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_reads_back_as_the_secret() {
        for secret in ["sk-live/5f2d+9c0e 7b1a%4f\\\"q", "pässwörd-😀-0123"] {
            for (name, f) in forms(secret) {
                assert!(
                    leaks(f.as_bytes(), secret.as_bytes()).is_some(),
                    "{name}: {f}"
                );
            }
        }
        assert!(leaks(b"nothing here", b"sk-live").is_none());
    }
}
