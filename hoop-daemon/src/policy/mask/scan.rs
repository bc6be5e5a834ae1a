//! Masking JSON in place, without building a tree: one pass over the bytes
//! keeps the current path (keys as byte ranges, array indexes), and every
//! value a field path names, or a detector fires on, is overwritten with a
//! same-length replacement that keeps the document valid JSON:
//! - a string keeps its quotes and length: `"****…1111"`;
//! - a number becomes its kept digits (or `0`) padded with spaces;
//! - an object or array becomes a string of its length: `"*****"`.
//!
//! A DOM (serde_json::Value) costs a parse, allocations per node and a
//! serialisation; this costs a scan. The field-path language is the subset
//! hoop documents: `$`, `.key`, `['key']`, `[n]`, `[*]`, `.*`, `..key`.

use super::{Counts, detect::Detector};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(Vec<u8>),
    AnyKey,
    Index(usize),
    AnyIndex,
    /// `..key`: this key at any depth below.
    Descend(Vec<u8>),
}

/// Why a field path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadFieldPath {
    #[error("must start with `$`")]
    NoRoot,
    #[error("empty name at byte {0}")]
    EmptyName(usize),
    #[error("unclosed `[`")]
    UnclosedBracket,
    #[error("`[{0}]` is not an index, `*` or a quoted name")]
    Index(String),
    #[error("unexpected `{1}` at byte {0}")]
    Unexpected(usize, char),
    #[error("`$` alone would mask the whole document")]
    WholeDocument,
}

/// Where a body stopped being JSON as far as the scan can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotJson {
    #[error("`,` outside a container at byte {0}")]
    CommaOutside(usize),
    #[error("unbalanced `{1}` at byte {0}")]
    Unbalanced(usize, char),
    #[error("expected a key at byte {0}")]
    ExpectedKey(usize),
    #[error("a value without a key at byte {0}")]
    ValueWithoutKey(usize),
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    #[error("unexpected token at byte {0}")]
    UnexpectedToken(usize),
    #[error("truncated document")]
    Truncated,
    #[error("unterminated string at byte {0}")]
    UnterminatedString(usize),
    #[error("unterminated container at byte {0}")]
    UnterminatedContainer(usize),
}

/// A compiled field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<Seg>);

impl FieldPath {
    pub fn parse(s: &str) -> Result<Self, BadFieldPath> {
        let b = s.as_bytes();
        if b.first() != Some(&b'$') {
            return Err(BadFieldPath::NoRoot);
        }
        let mut i = 1;
        let mut segs = Vec::new();
        let ident = |i: &mut usize| -> Result<Vec<u8>, BadFieldPath> {
            let start = *i;
            while *i < b.len() && !matches!(b[*i], b'.' | b'[') {
                *i += 1;
            }
            if *i == start {
                return Err(BadFieldPath::EmptyName(start));
            }
            Ok(b[start..*i].to_vec())
        };
        while i < b.len() {
            match b[i] {
                b'.' if b.get(i + 1) == Some(&b'.') => {
                    i += 2;
                    segs.push(Seg::Descend(ident(&mut i)?));
                }
                b'.' if b.get(i + 1) == Some(&b'*') => {
                    i += 2;
                    segs.push(Seg::AnyKey);
                }
                b'.' => {
                    i += 1;
                    segs.push(Seg::Key(ident(&mut i)?));
                }
                b'[' => {
                    let end = s[i..].find(']').ok_or(BadFieldPath::UnclosedBracket)? + i;
                    let inner = s[i + 1..end].trim();
                    segs.push(if inner == "*" {
                        Seg::AnyIndex
                    } else if let Some(q) = inner
                        .strip_prefix('\'')
                        .and_then(|x| x.strip_suffix('\''))
                        .or_else(|| inner.strip_prefix('"').and_then(|x| x.strip_suffix('"')))
                    {
                        Seg::Key(q.as_bytes().to_vec())
                    } else {
                        Seg::Index(
                            inner
                                .parse()
                                .map_err(|_| BadFieldPath::Index(inner.into()))?,
                        )
                    });
                    i = end + 1;
                }
                c => return Err(BadFieldPath::Unexpected(i, c as char)),
            }
        }
        if segs.is_empty() {
            return Err(BadFieldPath::WholeDocument);
        }
        Ok(Self(segs))
    }

    /// Whether the path of the current value matches.
    /// The values this path names in a parsed document (guardrails read
    /// request bodies this way).
    pub fn select<'v>(&self, v: &'v serde_json::Value) -> Vec<&'v serde_json::Value> {
        use serde_json::Value;
        fn descend<'v>(v: &'v Value, key: &[u8], out: &mut Vec<&'v Value>) {
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        if k.as_bytes() == key {
                            out.push(x);
                        }
                        descend(x, key, out);
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| descend(x, key, out)),
                _ => {}
            }
        }
        let mut cur = vec![v];
        for seg in &self.0 {
            let mut next = Vec::new();
            for v in cur {
                match (seg, v) {
                    (Seg::Key(k), Value::Object(m)) => {
                        next.extend(m.iter().filter(|(n, _)| n.as_bytes() == k).map(|(_, x)| x))
                    }
                    (Seg::AnyKey, Value::Object(m)) => next.extend(m.values()),
                    (Seg::Index(i), Value::Array(a)) => next.extend(a.get(*i)),
                    (Seg::AnyIndex, Value::Array(a)) => next.extend(a.iter()),
                    (Seg::Descend(k), _) => descend(v, k, &mut next),
                    _ => {}
                }
            }
            cur = next;
        }
        cur
    }

    /// `$.name`: a top-level field, which form bodies and query strings
    /// can carry too.
    pub fn top_key(&self) -> Option<&str> {
        match &self.0[..] {
            [Seg::Key(k)] => std::str::from_utf8(k).ok(),
            _ => None,
        }
    }

    fn matches(&self, buf: &[u8], path: &[Elem]) -> bool {
        fn go(segs: &[Seg], buf: &[u8], path: &[Elem]) -> bool {
            let Some((seg, rest)) = segs.split_first() else {
                return path.is_empty();
            };
            match seg {
                Seg::Descend(k) => {
                    (0..path.len()).any(|i| path[i].is_key(buf, k) && go(rest, buf, &path[i + 1..]))
                }
                _ => {
                    let Some((e, tail)) = path.split_first() else {
                        return false;
                    };
                    let ok = match (seg, e) {
                        (Seg::Key(k), e) => e.is_key(buf, k),
                        (Seg::AnyKey, Elem::Key(..)) => true,
                        (Seg::Index(n), Elem::Index(m)) => n == m,
                        (Seg::AnyIndex, Elem::Index(_)) => true,
                        _ => false,
                    };
                    ok && go(rest, buf, tail)
                }
            }
        }
        go(&self.0, buf, path)
    }
}

/// One step of the current path: a key (byte range of its raw text inside
/// the quotes, and whether it has escapes) or an array index.
#[derive(Debug, Clone, Copy)]
enum Elem {
    Key(usize, usize, bool),
    Index(usize),
}

impl Elem {
    fn is_key(&self, buf: &[u8], k: &[u8]) -> bool {
        match *self {
            Elem::Key(a, b, false) => &buf[a..b] == k,
            Elem::Key(a, b, true) => serde_json::from_slice::<String>(&buf[a - 1..b + 1])
                .is_ok_and(|s| s.as_bytes() == k),
            Elem::Index(_) => false,
        }
    }
}

enum Frame {
    Object { key: Option<Elem> },
    Array { index: usize },
}

const MAX_DEPTH: usize = 512;

/// Masks `buf` (a JSON document, or a sequence of them) in place. Err if
/// it is not JSON as far as the scan can tell.
pub fn mask_json_in_place(
    buf: &mut [u8],
    paths: &[(String, FieldPath)],
    detectors: &[Detector],
    keep_last: usize,
    counts: &mut Counts,
) -> Result<(), NotJson> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut path: Vec<Elem> = Vec::new();
    // Start of a container whose whole value a field path named.
    let mut i = 0;
    let n = buf.len();
    let mut seen_root = false;
    while i < n {
        let c = buf[i];
        match c {
            // RS (0x1e) separates the values of a JSON text sequence.
            b' ' | b'\n' | b'\r' | b'\t' | 0x1e => {
                i += 1;
                continue;
            }
            b',' => {
                match stack.last_mut() {
                    Some(Frame::Array { index }) => *index += 1,
                    Some(Frame::Object { key }) => *key = None,
                    None => return Err(NotJson::CommaOutside(i)),
                }
                i += 1;
                continue;
            }
            b':' => {
                i += 1;
                continue;
            }
            b'}' | b']' => {
                stack.pop().ok_or(NotJson::Unbalanced(i, c as char))?;
                i += 1;
                continue;
            }
            _ => {}
        }
        // A key, or the start of a value.
        if let Some(Frame::Object { key: k @ None }) = stack.last_mut() {
            if c != b'"' {
                return Err(NotJson::ExpectedKey(i));
            }
            let (end, esc) = string_end(buf, i)?;
            *k = Some(Elem::Key(i + 1, end, esc));
            i = end + 1;
            continue;
        }
        // Another value after a whole one: a sequence (NDJSON, json-seq,
        // concatenated JSON), each masked as a document of its own.
        seen_root = true;
        // The value's own path.
        path.clear();
        for f in &stack {
            path.push(match f {
                Frame::Object { key } => key.ok_or(NotJson::ValueWithoutKey(i))?,
                Frame::Array { index } => Elem::Index(*index),
            });
        }
        let named = paths
            .iter()
            .find(|(_, p)| p.matches(buf, &path))
            .map(|(name, _)| name);
        match c {
            b'{' | b'[' => {
                if let Some(name) = named {
                    // The whole container becomes a string of its length.
                    let end = container_end(buf, i)?;
                    buf[i] = b'"';
                    buf[i + 1..end].fill(b'*');
                    buf[end] = b'"';
                    counts.add(name, 1);
                    i = end + 1;
                    continue;
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(NotJson::TooDeep);
                }
                stack.push(if c == b'{' {
                    Frame::Object { key: None }
                } else {
                    Frame::Array { index: 0 }
                });
                i += 1;
            }
            b'"' => {
                let (end, _) = string_end(buf, i)?;
                let body = &mut buf[i + 1..end];
                if let Some(name) = named {
                    // Keep only plain ASCII at the end: never half an
                    // escape or half a UTF-8 character.
                    let keep = body
                        .iter()
                        .rev()
                        .take(keep_last)
                        .take_while(|b| b.is_ascii_alphanumeric())
                        .count();
                    let cut = body.len() - keep;
                    body[..cut].fill(b'*');
                    counts.add(name, 1);
                } else {
                    detect_in_place(body, detectors, counts);
                }
                repair_string(body);
                i = end + 1;
            }
            _ => {
                // A number or a literal.
                let start = i;
                while i < n
                    && !matches!(
                        buf[i],
                        b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t' | 0x1e
                    )
                {
                    i += 1;
                }
                let tok = &mut buf[start..i];
                let number = tok
                    .first()
                    .is_some_and(|b| b.is_ascii_digit() || *b == b'-');
                if !number && !matches!(&tok[..], b"true" | b"false" | b"null") {
                    return Err(NotJson::UnexpectedToken(start));
                }
                if number {
                    if let Some(name) = named {
                        mask_number(tok, keep_last);
                        counts.add(name, 1);
                    } else if !detectors.is_empty() && tok.iter().all(u8::is_ascii_digit) {
                        let before = counts.total();
                        let mut digits = tok.to_vec();
                        detect_in_place(&mut digits, detectors, counts);
                        if counts.total() > before {
                            mask_number(tok, keep_last_kept(&digits));
                        }
                    }
                }
            }
        }
    }
    if !stack.is_empty() || !seen_root {
        return Err(NotJson::Truncated);
    }
    Ok(())
}

/// After masking, the content of a string must still be valid JSON: an
/// escape whose escaped character was masked (`\*`), or a quote whose
/// backslash was (`*"`), becomes a star too.
fn repair_string(b: &mut [u8]) {
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                let ok = match b.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => 2,
                    Some(b'u')
                        if b.len() >= i + 6
                            && b[i + 2..i + 6].iter().all(u8::is_ascii_hexdigit) =>
                    {
                        6
                    }
                    _ => 0,
                };
                if ok == 0 {
                    b[i] = b'*';
                    i += 1;
                } else {
                    i += ok;
                }
            }
            b'"' => {
                b[i] = b'*';
                i += 1;
            }
            c if c < 0x20 => {
                b[i] = b'*';
                i += 1;
            }
            _ => i += 1,
        }
    }
}

/// How many trailing digits a detector left unmasked.
fn keep_last_kept(masked: &[u8]) -> usize {
    masked
        .iter()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count()
}

/// The number keeps its last `keep` digits (or becomes 0), padded with
/// spaces to its old length: still a number, still valid JSON.
fn mask_number(tok: &mut [u8], keep: usize) {
    let digits: Vec<u8> = tok.iter().copied().filter(u8::is_ascii_digit).collect();
    let keep = keep.min(digits.len());
    let mut kept: Vec<u8> = digits[digits.len() - keep..].to_vec();
    while kept.len() > 1 && kept[0] == b'0' {
        kept.remove(0);
    }
    if kept.is_empty() {
        kept.push(b'0');
    }
    tok.fill(b' ');
    tok[..kept.len()].copy_from_slice(&kept);
}

/// Runs the detectors over a string's raw bytes and writes hits back (the
/// detectors keep lengths; an escape they cover becomes stars, which keeps
/// the string valid).
fn detect_in_place(body: &mut [u8], detectors: &[Detector], counts: &mut Counts) {
    if detectors.is_empty() {
        return;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let mut cur: Option<String> = None;
    for d in detectors {
        let src = cur.as_deref().unwrap_or(text);
        if let std::borrow::Cow::Owned(o) = d.apply(src, counts) {
            cur = Some(o);
        }
    }
    if let Some(o) = cur {
        body.copy_from_slice(o.as_bytes());
    }
}

/// The index of the closing quote of the string opening at `start`, and
/// whether it holds escapes.
fn string_end(buf: &[u8], start: usize) -> Result<(usize, bool), NotJson> {
    let mut i = start + 1;
    let mut esc = false;
    loop {
        match memchr::memchr2(b'"', b'\\', &buf[i..]) {
            None => return Err(NotJson::UnterminatedString(start)),
            Some(o) if buf[i + o] == b'"' => return Ok((i + o, esc)),
            Some(o) => {
                esc = true;
                i += o + 2;
                if i > buf.len() {
                    return Err(NotJson::UnterminatedString(start));
                }
            }
        }
    }
}

/// The index of the bracket closing the container opening at `start`.
fn container_end(buf: &[u8], start: usize) -> Result<usize, NotJson> {
    let mut depth = 0usize;
    let mut i = start;
    while i < buf.len() {
        match buf[i] {
            b'"' => {
                i = string_end(buf, i)?.0;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    Err(NotJson::UnterminatedContainer(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(doc: &str, paths: &[&str], dets: &[&str], keep: usize) -> (String, Counts) {
        let paths: Vec<(String, FieldPath)> = paths
            .iter()
            .map(|p| (p.to_string(), FieldPath::parse(p).unwrap()))
            .collect();
        let dets: Vec<Detector> = dets
            .iter()
            .map(|d| Detector::built_in(d, keep).unwrap())
            .collect();
        let mut buf = doc.as_bytes().to_vec();
        let mut c = Counts::default();
        mask_json_in_place(&mut buf, &paths, &dets, keep, &mut c).unwrap();
        let out = String::from_utf8(buf).unwrap();
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap_or_else(|e| panic!("invalid JSON {e}: {out}"));
        (out, c)
    }

    #[test]
    fn paths_of_every_kind() {
        let doc = r#"{"a":{"b":"secret","c":1},"list":[{"x":"1"},{"x":"22"}],"deep":{"k":{"name":"n1"},"m":[{"name":"n2"}]},"name":"top","obj":{"z":[1,2]}}"#;
        let (out, c) = run(
            doc,
            &["$.a.b", "$.list[*].x", "$..name", "$['obj']", "$.list[1].x"],
            &[],
            0,
        );
        assert!(out.contains(r#""b":"******""#), "{out}");
        assert!(
            out.contains(r#""x":"*""#) && out.contains(r#""x":"**""#),
            "{out}"
        );
        assert!(
            !out.contains("n1") && !out.contains("n2") && !out.contains("top"),
            "{out}"
        );
        // A container keeps its length as a string: {"z":[1,2]} is 11 bytes.
        assert!(out.contains(r#""obj":"*********""#), "{out}");
        assert_eq!(out.len(), doc.len());
        assert_eq!(c.get("$..name"), 3);
        assert_eq!(c.get("$.list[*].x"), 2);
    }

    #[test]
    fn numbers_stay_numbers() {
        let (out, _) = run(r#"{"card":4111111111111111,"n":12}"#, &["$.card"], &[], 4);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["card"], 1111);
        let (out, c) = run(
            r#"[4111111111111111, 4111111111111112]"#,
            &[],
            &["credit_card"],
            0,
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v[0], 0);
        assert_eq!(v[1], 4111111111111112u64);
        assert_eq!(c.get("credit_card"), 1);
    }

    #[test]
    fn escapes_in_keys_and_strings() {
        let doc = r#"{"a\"b":"x","n\u0061me":"hidden","s":"say \"hi\" to 4111 1111 1111 1111"}"#;
        let (out, _) = run(doc, &["$..name"], &["credit_card"], 0);
        assert!(!out.contains("hidden"), "{out}");
        assert!(!out.contains("4111"), "{out}");
        assert!(out.contains(r#"say \"hi\""#), "{out}");
    }

    #[test]
    fn masking_never_breaks_escapes_or_characters() {
        // keep_last must not keep half an escape or half a character.
        let doc = r#"{"secret":"x\"a","s2":"abcé","s3":"q\u00e9"}"#;
        let (out, _) = run(doc, &["$.secret", "$.s2", "$.s3"], &[], 2);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(v["secret"].as_str().unwrap().starts_with('*'), "{out}");
        // A custom pattern cutting through an escape leaves valid JSON.
        let det = Detector::custom("q", r#""sec"#).unwrap();
        let mut buf = br#"{"a":"x\"sec\"y"}"#.to_vec();
        mask_json_in_place(&mut buf, &[], &[det], 0, &mut Counts::default()).unwrap();
        serde_json::from_slice::<serde_json::Value>(&buf)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&buf)));
    }

    #[test]
    fn not_json_is_an_error() {
        for bad in [
            "{",
            "[1,2",
            "nope",
            r#"{"a":1}x"#,
            r#"{"a":1} {"#,
            r#""unterminated"#,
            "",
            "]",
        ] {
            let mut b = bad.as_bytes().to_vec();
            assert!(
                mask_json_in_place(&mut b, &[], &[], 0, &mut Counts::default()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn path_syntax() {
        for ok in [
            "$.a",
            "$.a.b",
            "$.a[*].b",
            "$..name",
            "$['a b'][0]",
            "$.*",
            "$[\"x\"]",
        ] {
            FieldPath::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["a.b", "$", "$.", "$[", "$[x]", "$.."] {
            assert!(FieldPath::parse(bad).is_err(), "{bad}");
        }
    }
}
