//! What a rule reads of a request body: decoded once (Content-Encoding
//! undone, bounded), parsed as JSON strictly (a duplicate key is read
//! differently by different parsers, so it is ambiguous), or as a form;
//! and structural conditions on its fields (`json = { "$.amount" = ">=
//! 100000" }`), which see `1e6`, `"\u0061mount"` and `"amount" :1000000`
//! as the upstream's parser will. Pure: no IO.
use std::fmt;

use bytes::Bytes;
use globset::{GlobBuilder, GlobMatcher};
use http::{HeaderMap, header};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::mask::{
    decode::{Decoded, decode},
    scan::FieldPath,
};

/// Why a body rule cannot decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The body can't be read as what the rule needs (encoding, syntax).
    Unreadable(String),
    /// The body reads differently to different parsers.
    Ambiguous(String),
}

/// A request body as rules read it.
pub struct Body {
    /// As sent.
    pub raw: Bytes,
    /// As decoded (Content-Encoding undone); the raw bytes when identity.
    pub decoded: Bytes,
    /// Why it could not be decoded; every body rule then refuses.
    pub decode_error: Option<String>,
    /// Parsed JSON, when it is JSON.
    pub json: Option<Value>,
    /// Why it is not readable as JSON although it claims to be.
    pub json_problem: Option<Problem>,
    /// Decoded form fields (application/x-www-form-urlencoded).
    pub form: Option<Vec<(String, String)>>,
    /// A multipart body that may name a method hoop can't read: `_method`
    /// spelled other than plainly, or a body that doesn't parse.
    pub multipart_method: bool,
    /// Methods the multipart body names in plain `_method` fields.
    pub multipart_methods: Vec<String>,
    pub multipart: bool,
}

impl Body {
    pub fn read(headers: &HeaderMap, raw: Bytes, limit: usize) -> Self {
        let text = |n| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_ascii_lowercase()
        };
        let (ctype, encoding) = (text(header::CONTENT_TYPE), text(header::CONTENT_ENCODING));
        let mut body = Body {
            raw: raw.clone(),
            decoded: Bytes::new(),
            decode_error: None,
            json: None,
            json_problem: None,
            form: None,
            multipart_method: false,
            multipart_methods: Vec::new(),
            multipart: ctype.contains("multipart/"),
        };
        body.decoded = if encoding.is_empty() || encoding == "identity" {
            raw
        } else {
            match decode(&encoding, &raw, limit) {
                Ok(Decoded::Body(b)) => b.into(),
                Ok(Decoded::TooLarge) => {
                    body.decode_error = Some(format!("decoded, it is over {limit} bytes"));
                    return body;
                }
                Err(e) => {
                    body.decode_error = Some(e.to_string());
                    return body;
                }
            }
        };
        let d = &body.decoded;
        let first = d.iter().find(|b| !b.is_ascii_whitespace()).copied();
        let declared_json = ctype.contains("json");
        if first.is_some() && (declared_json || matches!(first, Some(b'{' | b'['))) {
            match strict_json(d) {
                Ok(v) => body.json = Some(v),
                Err(p @ Problem::Ambiguous(_)) => body.json_problem = Some(p),
                Err(p) if declared_json => body.json_problem = Some(p),
                Err(_) => {}
            }
        }
        if ctype.contains("application/x-www-form-urlencoded") {
            body.form = Some(
                form_urlencoded::parse(d)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect(),
            );
        }
        if body.multipart {
            match multipart_methods(&ctype, d.clone()) {
                Ok(m) => body.multipart_methods = m,
                Err(()) => body.multipart_method = true,
            }
        }
        body
    }

    /// Methods the body names (`_method`, as a form field or a top-level
    /// JSON string), for the method readings.
    pub fn methods(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .form
            .iter()
            .flatten()
            .filter(|(k, _)| k == super::readings::METHOD_PARAM)
            .map(|(_, v)| v.clone())
            .collect();
        if let Some(Value::String(m)) = self
            .json
            .as_ref()
            .and_then(|j| j.get(super::readings::METHOD_PARAM))
        {
            out.push(m.clone());
        }
        out.extend(self.multipart_methods.iter().cloned());
        out
    }
}

/// The `_method` values of a multipart body's plain `name="_method"`
/// fields. `Err` when the body doesn't parse, or when a part's headers
/// name `_method` in any other spelling (`name*=`, percent-encoded, other
/// case): frameworks differ on those, so hoop can't know the method.
fn multipart_methods(ctype: &str, body: Bytes) -> Result<Vec<String>, ()> {
    use futures_util::FutureExt;
    let boundary = multer::parse_boundary(ctype).map_err(|_| ())?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut out = Vec::new();
    // The body is in memory: every future here is ready at once.
    async move {
        while let Some(field) = parts.next_field().await.map_err(|_| ())? {
            let plain = field.name() == Some(super::readings::METHOD_PARAM);
            let named = field.headers().values().any(|v| {
                let v = String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase();
                v.contains("_method") || v.contains("%5fmethod")
            });
            if plain {
                out.push(field.text().await.map_err(|_| ())?);
            } else if named {
                return Err(());
            }
        }
        Ok(out)
    }
    .now_or_never()
    .ok_or(())?
}

/// JSON with every duplicate key refused (serde_json keeps the last one,
/// other parsers the first).
fn strict_json(b: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice::<Strict>(b)
        .map(|s| s.0)
        .map_err(|e| {
            let m = e.to_string();
            if m.contains(DUPLICATE) {
                Problem::Ambiguous(format!("its JSON body {m}"))
            } else {
                Problem::Unreadable(format!("its body is not valid JSON ({m})"))
            }
        })
}

const DUPLICATE: &str = "repeats the key";

struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.into()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut v = Vec::new();
        while let Some(Strict(x)) = seq.next_element()? {
            v.push(x);
        }
        Ok(Value::Array(v))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut m = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if m.contains_key(&k) {
                return Err(de::Error::custom(format!("{DUPLICATE} {k:?}")));
            }
            let Strict(v) = map.next_value()?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
}

/// One condition on a field: a comparison, or a glob for text.
#[derive(Debug)]
enum Cond {
    Cmp(Op, f64),
    Eq(String),
    Ne(String),
    Glob(GlobMatcher),
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Ge,
    Gt,
    Le,
    Lt,
}

/// Why a `body.json` condition was refused.
#[derive(Debug, thiserror::Error)]
pub enum BadCondition {
    #[error("{0:?}: {1}")]
    Path(String, super::mask::scan::BadFieldPath),
    #[error("{0:?}: {1:?} is not a number")]
    Number(String, String),
    #[error("{0:?} is not a valid glob: {1}")]
    Glob(String, globset::Error),
}

#[derive(Debug)]
pub struct FieldCond {
    path: FieldPath,
    cond: Cond,
}

impl FieldCond {
    /// `path` is a JSONPath (`$.amount`, `$..iban`, `$.items[*].qty`);
    /// `spec` is `>= 100000`, `> 5`, `<= 5`, `< 5`, `== x`, `!= x`, or a
    /// glob for the value's text.
    pub fn parse(path: &str, spec: &str) -> Result<Self, BadCondition> {
        let path = FieldPath::parse(path).map_err(|e| BadCondition::Path(path.into(), e))?;
        let s = spec.trim();
        let num = |r: &str| {
            r.trim()
                .parse::<f64>()
                .map_err(|_| BadCondition::Number(spec.into(), r.trim().into()))
        };
        let cond = if let Some(r) = s.strip_prefix(">=") {
            Cond::Cmp(Op::Ge, num(r)?)
        } else if let Some(r) = s.strip_prefix("<=") {
            Cond::Cmp(Op::Le, num(r)?)
        } else if let Some(r) = s.strip_prefix("==") {
            Cond::Eq(r.trim().into())
        } else if let Some(r) = s.strip_prefix("!=") {
            Cond::Ne(r.trim().into())
        } else if let Some(r) = s.strip_prefix('>') {
            Cond::Cmp(Op::Gt, num(r)?)
        } else if let Some(r) = s.strip_prefix('<') {
            Cond::Cmp(Op::Lt, num(r)?)
        } else {
            Cond::Glob(
                GlobBuilder::new(s)
                    .build()
                    .map_err(|e| BadCondition::Glob(spec.into(), e))?
                    .compile_matcher(),
            )
        };
        Ok(Self { path, cond })
    }

    /// Whether any value the path names, in the JSON body, or (for a
    /// top-level `$.name`) in the form body or the query, satisfies it.
    fn any(&self, body: &Body, queries: &[Vec<(String, String)>]) -> bool {
        let in_json = body
            .json
            .iter()
            .flat_map(|j| self.path.select(j))
            .any(|v| self.test(&Field::of(v)));
        if in_json {
            return true;
        }
        let Some(key) = self.path.top_key() else {
            return false;
        };
        body.form
            .iter()
            .flatten()
            .chain(queries.iter().flatten())
            .filter(|(k, _)| k == key)
            .any(|(_, v)| self.test(&Field::text(v)))
    }

    fn test(&self, f: &Field) -> bool {
        match &self.cond {
            Cond::Cmp(op, n) => f.number.is_some_and(|x| match op {
                Op::Ge => x >= *n,
                Op::Gt => x > *n,
                Op::Le => x <= *n,
                Op::Lt => x < *n,
            }),
            Cond::Eq(want) => f.equals(want),
            Cond::Ne(want) => f.present && !f.equals(want),
            Cond::Glob(g) => f.text.as_deref().is_some_and(|t| g.is_match(t)),
        }
    }
}

/// A field's value as rules compare it: its text, and its number, which a
/// numeric string has too (most upstreams coerce `"1000000"`).
struct Field {
    present: bool,
    text: Option<String>,
    number: Option<f64>,
}

impl Field {
    fn of(v: &Value) -> Self {
        match v {
            Value::Number(n) => Self {
                present: true,
                text: Some(n.to_string()),
                number: n.as_f64(),
            },
            Value::String(s) => Self::text(s),
            Value::Bool(b) => Self {
                present: true,
                text: Some(b.to_string()),
                number: None,
            },
            Value::Null => Self {
                present: true,
                text: Some("null".into()),
                number: None,
            },
            _ => Self {
                present: true,
                text: None,
                number: None,
            },
        }
    }

    fn text(s: &str) -> Self {
        Self {
            present: true,
            text: Some(s.to_string()),
            number: s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        }
    }

    fn equals(&self, want: &str) -> bool {
        match (self.number, want.parse::<f64>()) {
            (Some(x), Ok(w)) => x == w,
            _ => self.text.as_deref() == Some(want),
        }
    }
}

/// Whether the body (and query) satisfies every condition; a problem when
/// the body can't be read the way the conditions need.
pub fn check(
    conds: &[FieldCond],
    body: &Body,
    queries: &[Vec<(String, String)>],
) -> Result<bool, Problem> {
    if let Some(e) = &body.decode_error {
        return Err(Problem::Unreadable(format!(
            "its body can't be decoded: {e}"
        )));
    }
    if let Some(p) = &body.json_problem {
        return Err(p.clone());
    }
    if body.multipart {
        return Err(Problem::Unreadable(
            "its body is multipart, which field rules don't parse".into(),
        ));
    }
    let empty = body.decoded.iter().all(u8::is_ascii_whitespace);
    if !empty && body.json.is_none() && body.form.is_none() {
        return Err(Problem::Unreadable(
            "its body is neither JSON nor a form, and a field rule must read it".into(),
        ));
    }
    Ok(conds.iter().all(|c| c.any(body, queries)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(ctype: &str, b: &str) -> Body {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, ctype.parse().unwrap());
        Body::read(&h, Bytes::copy_from_slice(b.as_bytes()), 1 << 20)
    }

    fn big(path: &str) -> Vec<FieldCond> {
        vec![FieldCond::parse(path, ">= 100000").unwrap()]
    }

    #[test]
    fn every_spelling_of_a_big_amount_is_seen() {
        let j = "application/json";
        let rule = big("$.amount");
        for b in [
            r#"{"amount":1000000}"#,
            r#"{"amount" :1000000}"#,
            r#"{"\u0061mount": 1000000}"#,
            r#"{"amount":1e6}"#,
            r#"{"amount":"1000000"}"#,
            r#"{"amount":" 100000.0 "}"#,
        ] {
            assert_eq!(check(&rule, &body(j, b), &[]), Ok(true), "{b}");
        }
        // Sniffed as JSON whatever the type says.
        assert_eq!(
            check(&rule, &body("text/plain", r#"{"amount":1e6}"#), &[]),
            Ok(true)
        );
        assert_eq!(
            check(&rule, &body(j, r#"{"amount":99999}"#), &[]),
            Ok(false)
        );
        // A form, and the query.
        let form = "application/x-www-form-urlencoded";
        assert_eq!(
            check(&rule, &body(form, "to=x&amount=1000000"), &[]),
            Ok(true)
        );
        assert_eq!(check(&rule, &body(form, "to=x&amount=5"), &[]), Ok(false));
        let q = vec![vec![("amount".to_string(), "2000000".to_string())]];
        assert_eq!(check(&rule, &body(j, r#"{"to":"x"}"#), &q), Ok(true));
        // Refused: ambiguous or unreadable.
        assert!(matches!(
            check(&rule, &body(j, r#"{"amount":1,"amount":1000000}"#), &[]),
            Err(Problem::Ambiguous(_))
        ));
        assert!(matches!(
            check(&rule, &body(j, r#"{"amount":1000000"#), &[]),
            Err(Problem::Unreadable(_))
        ));
        assert!(matches!(
            check(
                &rule,
                &body("application/xml", "<amount>1000000</amount>"),
                &[]
            ),
            Err(Problem::Unreadable(_))
        ));
        assert_eq!(check(&rule, &body(j, ""), &[]), Ok(false));
    }

    #[test]
    fn an_encoded_body_is_read_decoded_or_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        let gz = hoop_testkit::encode("gzip", br#"{"amount":1000000}"#);
        let b = Body::read(&h, gz.clone().into(), 1 << 20);
        assert_eq!(check(&big("$.amount"), &b, &[]), Ok(true));
        h.insert(header::CONTENT_ENCODING, "x-unknown".parse().unwrap());
        let b = Body::read(&h, gz.into(), 1 << 20);
        assert!(matches!(
            check(&big("$.amount"), &b, &[]),
            Err(Problem::Unreadable(_))
        ));
    }

    #[test]
    fn conditions_parse_and_compare() {
        let c = |p: &str, s: &str, b: &str| {
            check(
                &[FieldCond::parse(p, s).unwrap()],
                &body("application/json", b),
                &[],
            )
            .unwrap()
        };
        assert!(c("$.env", "prod*", r#"{"env":"production"}"#));
        assert!(!c("$.env", "prod*", r#"{"env":"staging"}"#));
        assert!(c("$..iban", "== DE1", r#"{"a":{"iban":"DE1"}}"#));
        assert!(c(
            "$.items[*].qty",
            "> 10",
            r#"{"items":[{"qty":1},{"qty":11}]}"#
        ));
        assert!(c("$.n", "== 5", r#"{"n":5.0}"#));
        assert!(c("$.n", "!= 5", r#"{"n":6}"#));
        assert!(!c("$.n", "!= 5", r#"{"m":6}"#));
        assert!(FieldCond::parse("amount", ">= 1").is_err());
        assert!(FieldCond::parse("$.a", ">= lots").is_err());
    }

    #[test]
    fn the_body_names_methods() {
        let b = body("application/x-www-form-urlencoded", "a=1&_method=delete");
        assert_eq!(b.methods(), ["delete"]);
        let b = body("application/json", r#"{"_method":"DELETE"}"#);
        assert_eq!(b.methods(), ["DELETE"]);
        let part = |disposition: &str, value: &str| {
            body(
                "multipart/form-data; boundary=x",
                &format!(
                    "--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n\
                     --x\r\nContent-Disposition: {disposition}\r\n\r\n{value}\r\n--x--\r\n"
                ),
            )
        };
        // Read: the plain spellings every framework agrees on.
        for d in ["form-data; name=\"_method\"", "form-data; name=_method"] {
            let b = part(d, "DELETE");
            assert_eq!(b.methods(), ["DELETE"], "{d}");
            assert!(!b.multipart_method, "{d}");
        }
        // Not a method at all: no `_method` anywhere in a part's headers.
        let b = part(
            "form-data; name=\"file\"; filename=\"x.txt\"",
            "_method=DELETE",
        );
        assert!(b.methods().is_empty() && !b.multipart_method);
        // Unknowable: other spellings of the name, and bodies that don't parse.
        for d in [
            "form-data; name*=UTF-8''_method",
            "form-data; name=\"%5Fmethod\"",
            "form-data; name=\"_METHOD\"",
            "form-data; name=\"x\"; filename=\"_method\"",
        ] {
            assert!(part(d, "DELETE").multipart_method, "{d}");
        }
        // Two names: whichever one a framework takes, hoop has seen it.
        for d in [
            "form-data; name=\"_method\"; name=\"a\"",
            "form-data; name=\"a\"; name=\"_method\"",
        ] {
            let b = part(d, "DELETE");
            assert!(b.multipart_method || b.methods() == ["DELETE"], "{d}");
        }
        let b = body("multipart/form-data", "--x\r\n");
        assert!(b.multipart_method, "no boundary");
        let b = body(
            "multipart/form-data; boundary=x",
            "--x\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE",
        );
        assert!(b.multipart_method, "truncated");
    }
}
