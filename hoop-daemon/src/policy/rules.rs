//! Request matchers shared by guardrails (deny) and, later, approvals:
//! method, path glob (`*` within a segment, `**` across), query parameters,
//! headers, and the request body (substring or regex, bounded). Compiled
//! once at config load; matching is a pure function of the request.
use std::collections::BTreeMap;

use globset::{GlobBuilder, GlobMatcher};
use http::{HeaderMap, HeaderName, Method};
use serde::Deserialize;

/// A rule as written in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// One method or a list; empty: any.
    #[serde(default)]
    pub method: OneOrMany,
    /// Path glob, matched against the normalised path (no query).
    #[serde(default)]
    pub path: Option<String>,
    /// Query parameter → value glob; all must match.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Header → value glob; all must match.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request body: `{ contains = "…" }` or `{ regex = "…" }`.
    #[serde(default)]
    pub body: Option<BodyConfig>,
    /// What the job is told.
    #[serde(default)]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyConfig {
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

/// How much of a request body a rule may look at. Larger bodies are not
/// guessed at: a rule that needs the body refuses them (fail closed).
pub const MAX_INSPECTED_BODY: usize = 1 << 20;

enum BodyPattern {
    Contains(Vec<u8>),
    Regex(regex::bytes::Regex),
}

pub struct Rule {
    pub name: String,
    pub message: String,
    methods: Vec<Method>,
    path: Option<GlobMatcher>,
    query: Vec<(String, GlobMatcher)>,
    headers: Vec<(HeaderName, GlobMatcher)>,
    body: Option<BodyPattern>,
}

/// What a rule sees of a request.
pub struct Head<'a> {
    pub method: &'a Method,
    /// The path as sent, query excluded.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl Rule {
    /// Compiles `c`; errors name the offending field (relative key).
    pub fn compile(c: &RuleConfig) -> Result<Self, (String, String)> {
        let methods = match &c.method {
            OneOrMany::None => vec![],
            OneOrMany::One(m) => vec![m.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
        .into_iter()
        .map(|m| {
            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                .map_err(|_| ("method".to_string(), format!("{m:?} is not an HTTP method")))
        })
        .collect::<Result<Vec<_>, _>>()?;
        let glob = |key: String, g: &str, sep: bool| {
            GlobBuilder::new(g)
                .literal_separator(sep)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| (key, format!("is not a valid glob: {e}")))
        };
        let path = match &c.path {
            Some(p) if !p.starts_with('/') => {
                return Err((
                    "path".into(),
                    "must start with '/', like \"/v1/prod/**\"".into(),
                ));
            }
            Some(p) => Some(glob("path".into(), p, true)?),
            None => None,
        };
        let query = c
            .query
            .iter()
            .map(|(k, v)| Ok((k.clone(), glob(format!("query.{k}"), v, false)?)))
            .collect::<Result<Vec<_>, (String, String)>>()?;
        let headers = c
            .headers
            .iter()
            .map(|(k, v)| {
                let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|_| (format!("headers.{k}"), "is not a header name".to_string()))?;
                Ok((name, glob(format!("headers.{k}"), v, false)?))
            })
            .collect::<Result<Vec<_>, (String, String)>>()?;
        let body = match &c.body {
            None => None,
            Some(BodyConfig {
                contains: Some(s),
                regex: None,
            }) if !s.is_empty() => Some(BodyPattern::Contains(s.as_bytes().to_vec())),
            Some(BodyConfig {
                contains: None,
                regex: Some(r),
            }) => Some(BodyPattern::Regex(
                regex::bytes::RegexBuilder::new(r)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| {
                        (
                            "body.regex".to_string(),
                            format!("is not a valid regex: {e}"),
                        )
                    })?,
            )),
            Some(_) => {
                return Err((
                    "body".into(),
                    "needs exactly one of { contains = \"…\" } or { regex = \"…\" }".into(),
                ));
            }
        };
        if methods.is_empty()
            && path.is_none()
            && query.is_empty()
            && headers.is_empty()
            && body.is_none()
        {
            return Err((
                "name".into(),
                format!(
                    "rule {:?} matches nothing in particular: give a method, path, query, headers or body",
                    c.name
                ),
            ));
        }
        Ok(Self {
            name: c.name.clone(),
            message: c
                .message
                .clone()
                .unwrap_or_else(|| format!("refused by rule {}", c.name)),
            methods,
            path,
            query,
            headers,
            body,
        })
    }

    /// Whether the head matches (the body, if the rule has a part for it,
    /// is checked separately).
    pub fn matches_head(&self, h: &Head<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(h.method) {
            return false;
        }
        if let Some(p) = &self.path
            && !p.is_match(normalize_path(h.path))
        {
            return false;
        }
        for (name, want) in &self.query {
            let found = h
                .query
                .map(|q| {
                    form_urlencoded::parse(q.as_bytes())
                        .any(|(k, v)| k == name.as_str() && want.is_match(&*v))
                })
                .unwrap_or(false);
            if !found {
                return false;
            }
        }
        for (name, want) in &self.headers {
            if !h
                .headers
                .get_all(name)
                .iter()
                .any(|v| want.is_match(String::from_utf8_lossy(v.as_bytes()).as_ref()))
            {
                return false;
            }
        }
        true
    }

    pub fn needs_body(&self) -> bool {
        self.body.is_some()
    }

    pub fn matches_body(&self, body: &[u8]) -> bool {
        match &self.body {
            None => true,
            Some(BodyPattern::Contains(s)) => memchr::memmem::find(body, s).is_some(),
            Some(BodyPattern::Regex(r)) => r.is_match(body),
        }
    }
}

/// The path as an upstream will read it: percent-decoded where that is
/// harmless (not `/`), duplicate slashes and dot segments resolved. Rules
/// match this, so `/v1/./prod//x` or `/v1/%70rod/x` can't slip past
/// `/v1/prod/**`.
pub fn normalize_path(path: &str) -> String {
    // Bytes, not chars: non-ASCII UTF-8 passes through untouched.
    let mut decoded: Vec<u8> = Vec::with_capacity(path.len());
    let b = path.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            let c = h * 16 + l;
            // An encoded '/' stays encoded: it is not a separator upstream.
            if c != b'/' && c.is_ascii() && !c.is_ascii_control() {
                decoded.push(c);
                i += 3;
                continue;
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    // Only ASCII was decoded, so this is the input's own valid UTF-8.
    let decoded = String::from_utf8(decoded).expect("UTF-8 in, UTF-8 out");
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = format!("/{}", out.join("/"));
    if decoded.ends_with('/') && p.len() > 1 {
        p.push('/');
    }
    p
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> Rule {
        let c: RuleConfig = toml::from_str(toml_text).unwrap();
        Rule::compile(&c).unwrap()
    }

    fn head<'a>(
        m: &'a Method,
        path: &'a str,
        query: Option<&'a str>,
        h: &'a HeaderMap,
    ) -> Head<'a> {
        Head {
            method: m,
            path,
            query,
            headers: h,
        }
    }

    #[test]
    fn table_of_matches() {
        let none = HeaderMap::new();
        let mut prod = HeaderMap::new();
        prod.insert("x-env", "prod".parse().unwrap());
        let r = rule("name = \"r\"\nmethod = \"DELETE\"\npath = \"/v1/prod/**\"\n");
        let q = rule("name = \"q\"\nmethod = [\"POST\", \"put\"]\nquery = { force = \"tr*\" }\n");
        let h = rule("name = \"h\"\nheaders = { \"X-Env\" = \"prod\" }\n");
        let seg = rule("name = \"s\"\npath = \"/v1/*/items\"\n");
        type Case<'a> = (
            &'a Rule,
            &'a str,
            &'a str,
            Option<&'a str>,
            &'a HeaderMap,
            bool,
        );
        let cases: Vec<Case> = vec![
            (&r, "DELETE", "/v1/prod/users/7", None, &none, true),
            (&r, "DELETE", "/v1/prod", None, &none, false),
            (&r, "GET", "/v1/prod/users/7", None, &none, false),
            (&r, "DELETE", "/v1/staging/users/7", None, &none, false),
            // Evasions: dot segments, double slashes, percent-encoding.
            (&r, "DELETE", "/v1/staging/../prod/users", None, &none, true),
            (&r, "DELETE", "//v1//prod/./users", None, &none, true),
            (&r, "DELETE", "/v1/%70rod/users", None, &none, true),
            (&q, "POST", "/x", Some("a=1&force=true"), &none, true),
            (&q, "PUT", "/x", Some("force=tr%75e"), &none, true),
            (&q, "POST", "/x", Some("force=false"), &none, false),
            (&q, "DELETE", "/x", Some("force=true"), &none, false),
            (&h, "GET", "/", None, &prod, true),
            (&h, "GET", "/", None, &none, false),
            (&seg, "GET", "/v1/a/items", None, &none, true),
            (&seg, "GET", "/v1/a/b/items", None, &none, false),
        ];
        for (i, (rule, m, p, q, hs, want)) in cases.into_iter().enumerate() {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert_eq!(
                rule.matches_head(&head(&m, p, q, hs)),
                want,
                "case {i}: {m} {p} {q:?}"
            );
        }
    }

    #[test]
    fn bodies_by_substring_and_regex() {
        let c = rule("name = \"c\"\nbody = { contains = \"\\\"env\\\":\\\"prod\\\"\" }\n");
        assert!(c.needs_body());
        assert!(c.matches_body(br#"{"a":1,"env":"prod"}"#));
        assert!(!c.matches_body(br#"{"env":"staging"}"#));
        let r = rule("name = \"r\"\nbody = { regex = \"amount\\\":\\\\s*[0-9]{5,}\" }\n");
        assert!(r.matches_body(br#"{"amount": 250000}"#));
        assert!(!r.matches_body(br#"{"amount": 25}"#));
    }

    #[test]
    fn bad_rules_name_their_field() {
        for (text, key) in [
            ("name = \"x\"\npath = \"v1/**\"\n", "path"),
            ("name = \"x\"\nmethod = \"GE T\"\n", "method"),
            ("name = \"x\"\nbody = { regex = \"(\" }\n", "body.regex"),
            (
                "name = \"x\"\nbody = { contains = \"a\", regex = \"b\" }\n",
                "body",
            ),
            ("name = \"x\"\npath = \"/a/[\"\n", "path"),
            ("name = \"x\"\n", "name"),
        ] {
            let c: RuleConfig = toml::from_str(text).unwrap();
            let e = Rule::compile(&c)
                .err()
                .unwrap_or_else(|| panic!("accepted {text}"));
            assert_eq!(e.0, key, "{text}: {e:?}");
        }
    }

    #[test]
    fn normalisation() {
        assert_eq!(normalize_path("/a/./b/../c//d/"), "/a/c/d/");
        assert_eq!(normalize_path("/a%2Fb"), "/a%2Fb");
        assert_eq!(normalize_path("/../../etc"), "/etc");
        assert_eq!(normalize_path(""), "/");
        // Found by the fuzzer: non-ASCII must survive as itself.
        assert_eq!(normalize_path("/v1/шtaging/%70x"), "/v1/шtaging/px");
    }
}
