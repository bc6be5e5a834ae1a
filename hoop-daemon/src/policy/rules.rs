//! Request matchers shared by guardrails (deny) and approvals: method,
//! path glob (`*` within a segment, `**` across), query parameters,
//! headers, and the request body (substring or regex over raw bytes, or
//! conditions on JSON and form fields). Compiled once at config load;
//! matching is a pure function of the request's readings (`readings.rs`):
//! a rule that holds for some readings and not others makes the request
//! ambiguous, which is refused.

use globset::{GlobBuilder, GlobMatcher};
use http::{HeaderMap, HeaderName, Method};

use crate::config::policy::Problem as ConfigProblem;

use super::{
    fields::{self, Body, FieldCond, Problem},
    readings::Readings,
};

pub use crate::config::rules::{BodyConfig, OneOrMany, RuleConfig};

/// How much of a request body a rule may look at. Larger bodies are not
/// guessed at: a rule that needs the body refuses them (fail closed).
pub const MAX_INSPECTED_BODY: usize = 1 << 20;

enum BodyPattern {
    Contains(Vec<u8>),
    Regex(regex::bytes::Regex),
    Fields(Vec<FieldCond>),
}

pub struct Rule {
    pub name: String,
    pub message: String,
    /// Upper case: `delete` is DELETE to many upstreams.
    methods: Vec<String>,
    /// As written, and without case (some servers ignore it).
    path: Option<(GlobMatcher, GlobMatcher)>,
    query: Vec<(String, GlobMatcher)>,
    headers: Vec<(HeaderName, GlobMatcher)>,
    body: Option<BodyPattern>,
}

/// A rule's decision on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    No,
    Yes,
    /// Its readings disagree (named: method, path, query); refused.
    Ambiguous(&'static str),
    /// The head matches as far as it can tell; the body decides.
    NeedsBody,
    /// The body can't be read the way the rule needs; refused.
    Unreadable(String),
    /// The body reads differently to different parsers; refused.
    AmbiguousBody(String),
}

/// How one part of a rule fared over all readings.
#[derive(Default, Clone, Copy)]
struct Seen {
    yes: bool,
    no: bool,
}

impl Seen {
    fn of(it: impl IntoIterator<Item = bool>) -> Self {
        it.into_iter().fold(Self::default(), |s, b| Self {
            yes: s.yes || b,
            no: s.no || !b,
        })
    }
}

impl Rule {
    /// Compiles `c`; errors name the offending field (relative key).
    pub fn compile(c: &RuleConfig) -> Result<Self, ConfigProblem> {
        let methods = match &c.method {
            OneOrMany::None => vec![],
            OneOrMany::One(m) => vec![m.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
        .into_iter()
        .map(|m| {
            let up = m.to_ascii_uppercase();
            Method::from_bytes(up.as_bytes())
                .map(|_| up)
                .map_err(|_| ConfigProblem::at("method", format!("{m:?} is not an HTTP method")))
        })
        .collect::<Result<Vec<_>, _>>()?;
        let glob_case = |key: String, g: &str, sep: bool, nocase: bool| {
            GlobBuilder::new(g)
                .literal_separator(sep)
                .case_insensitive(nocase)
                .build()
                .map(|g| g.compile_matcher())
                .map_err(|e| ConfigProblem::at(key, format!("is not a valid glob: {e}")))
        };
        let glob = |key: String, g: &str, sep: bool| glob_case(key, g, sep, false);
        let path = match &c.path {
            Some(p) if !p.starts_with('/') => {
                return Err(ConfigProblem::at(
                    "path",
                    "must start with '/', like \"/v1/prod/**\"",
                ));
            }
            Some(p) => Some((
                glob("path".into(), p, true)?,
                glob_case("path".into(), p, true, true)?,
            )),
            None => None,
        };
        let query = c
            .query
            .iter()
            .map(|(k, v)| Ok((k.clone(), glob(format!("query.{k}"), v, false)?)))
            .collect::<Result<Vec<_>, ConfigProblem>>()?;
        let headers =
            c.headers
                .iter()
                .map(|(k, v)| {
                    let name = HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).map_err(
                        |_| ConfigProblem::at(format!("headers.{k}"), "is not a header name"),
                    )?;
                    Ok((name, glob(format!("headers.{k}"), v, false)?))
                })
                .collect::<Result<Vec<_>, ConfigProblem>>()?;
        let body = match &c.body {
            None => None,
            Some(b) => Some(body_pattern(b)?),
        };
        if methods.is_empty()
            && path.is_none()
            && query.is_empty()
            && headers.is_empty()
            && body.is_none()
        {
            return Err(ConfigProblem::at(
                "name",
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

    /// Whether the rule holds for the request, over all its readings.
    /// Without `body` (the head phase), a rule whose decision may depend
    /// on the body says `NeedsBody`.
    pub fn check(&self, r: &Readings, headers: &HeaderMap, body: Option<&Body>) -> Verdict {
        let method = if self.methods.is_empty() {
            None
        } else if body.is_none() && r.body_may_override {
            // `_method` in the body may name any method: ask for it.
            Some(Seen {
                yes: true,
                no: true,
            })
        } else {
            let mut s = Seen::of(r.methods.iter().map(|m| self.methods.contains(m)));
            if r.unknown_method {
                s = Seen {
                    yes: true,
                    no: true,
                };
            }
            Some(s)
        };
        let path = self.path.as_ref().map(|(exact, nocase)| {
            Seen::of(
                r.paths
                    .iter()
                    .flat_map(|p| [exact.is_match(p), nocase.is_match(p)]),
            )
        });
        let query = (!self.query.is_empty()).then(|| {
            Seen::of(r.queries.iter().map(|q| {
                self.query
                    .iter()
                    .all(|(name, want)| q.iter().any(|(k, v)| k == name && want.is_match(v)))
            }))
        });
        let headers = Seen::of([self.headers.iter().all(|(name, want)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| want.is_match(String::from_utf8_lossy(v.as_bytes()).as_ref()))
        })]);
        let parts = [
            ("method", method),
            ("path", path),
            ("query", query),
            ("headers", Some(headers)),
        ];
        if parts.iter().any(|(_, s)| s.is_some_and(|s| !s.yes)) {
            return Verdict::No;
        }
        let head_only = body.is_none() && r.body_may_override && method.is_some();
        if head_only || (self.body.is_some() && body.is_none()) {
            return Verdict::NeedsBody;
        }
        if let Some((name, _)) = parts.iter().find(|(_, s)| s.is_some_and(|s| s.no)) {
            return Verdict::Ambiguous(name);
        }
        match (&self.body, body) {
            (None, _) | (Some(_), None) => Verdict::Yes,
            (Some(p), Some(b)) => match body_matches(p, b, &r.queries) {
                Ok(true) => Verdict::Yes,
                Ok(false) => Verdict::No,
                Err(Problem::Unreadable(e)) => Verdict::Unreadable(e),
                Err(Problem::Ambiguous(e)) => Verdict::AmbiguousBody(e),
            },
        }
    }
}

/// A body pattern over the body as sent and as decoded; field conditions
/// over the decoded, parsed body.
fn body_matches(
    p: &BodyPattern,
    b: &Body,
    queries: &[Vec<(String, String)>],
) -> Result<bool, Problem> {
    let raw = |f: &dyn Fn(&[u8]) -> bool| -> Result<bool, Problem> {
        if let Some(e) = &b.decode_error {
            return Err(Problem::Unreadable(format!(
                "its body can't be decoded: {e}"
            )));
        }
        Ok(f(&b.raw) || f(&b.decoded))
    };
    match p {
        BodyPattern::Contains(s) => raw(&|x| memchr::memmem::find(x, s).is_some()),
        BodyPattern::Regex(r) => raw(&|x| r.is_match(x)),
        BodyPattern::Fields(conds) => fields::check(conds, b, queries),
    }
}

fn body_pattern(b: &BodyConfig) -> Result<BodyPattern, ConfigProblem> {
    match (&b.contains, &b.regex, b.json.is_empty()) {
        (Some(s), None, true) if !s.is_empty() => Ok(BodyPattern::Contains(s.as_bytes().to_vec())),
        (None, Some(r), true) => Ok(BodyPattern::Regex(
            regex::bytes::RegexBuilder::new(r)
                .size_limit(1 << 20)
                .build()
                .map_err(|e| {
                    ConfigProblem::at("body.regex", format!("is not a valid regex: {e}"))
                })?,
        )),
        (None, None, false) => b
            .json
            .iter()
            .map(|(path, spec)| {
                FieldCond::parse(path, spec)
                    .map_err(|e| ConfigProblem::at(format!("body.json.{path:?}"), e))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(BodyPattern::Fields),
        _ => Err(ConfigProblem::at(
            "body",
            "needs exactly one of { contains = \"…\" }, { regex = \"…\" } or { json = { \"$.field\" = \">= 100\" } }",
        )),
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

    fn verdict(rule: &Rule, m: &str, target: &str, h: &HeaderMap) -> Verdict {
        let m = Method::from_bytes(m.as_bytes()).unwrap();
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        rule.check(&Readings::of(&m, path, query, h), h, None)
    }

    #[test]
    fn table_of_matches() {
        use Verdict::*;
        let none = HeaderMap::new();
        let mut prod = HeaderMap::new();
        prod.insert("x-env", "prod".parse().unwrap());
        let r = rule("name = \"r\"\nmethod = \"DELETE\"\npath = \"/v1/prod/**\"\n");
        let q = rule("name = \"q\"\nmethod = [\"POST\", \"put\"]\nquery = { force = \"tr*\" }\n");
        let h = rule("name = \"h\"\nheaders = { \"X-Env\" = \"prod\" }\n");
        let seg = rule("name = \"s\"\npath = \"/v1/*/items\"\n");
        let mut over = HeaderMap::new();
        over.insert("x-http-method-override", "DELETE".parse().unwrap());
        let mut patch = HeaderMap::new();
        patch.insert("x-http-method-override", "PATCH".parse().unwrap());
        let cases: Vec<(&Rule, &str, &str, &HeaderMap, Verdict)> = vec![
            (&r, "DELETE", "/v1/prod/users/7", &none, Yes),
            (&r, "DELETE", "/v1/prod", &none, No),
            (&r, "GET", "/v1/prod/users/7", &none, No),
            (&r, "DELETE", "/v1/staging/users/7", &none, No),
            // Evasions: the same request to the upstream.
            (&r, "DELETE", "/v1/staging/../prod/users", &none, Yes),
            (&r, "DELETE", "//v1//prod/./users", &none, Yes),
            (&r, "DELETE", "/v1/%70rod/users", &none, Yes),
            (&r, "delete", "/v1/prod/users/7", &none, Yes),
            // Readings that disagree: refused as ambiguous.
            (&r, "DELETE", "/v1%2Fprod/users", &none, Ambiguous("path")),
            (&r, "DELETE", "/v1/prod;x=1/users", &none, Ambiguous("path")),
            (
                &r,
                "DELETE",
                "/v1/staging/..;/prod/users",
                &none,
                Ambiguous("path"),
            ),
            (&r, "DELETE", "/v1\\prod\\users", &none, Ambiguous("path")),
            (&r, "DELETE", "/V1/PROD/users", &none, Ambiguous("path")),
            (&r, "POST", "/v1/prod/users", &over, Ambiguous("method")),
            (
                &r,
                "POST",
                "/v1/prod/users?_method=DELETE",
                &none,
                Ambiguous("method"),
            ),
            (
                &r,
                "POST",
                "/v1/prod/users?a=1;_method=delete",
                &none,
                Ambiguous("method"),
            ),
            // An override to a method no rule names is just that.
            (&r, "POST", "/v1/prod/users", &patch, No),
            (&q, "POST", "/x?a=1&force=true", &none, Yes),
            (&q, "PUT", "/x?force=tr%75e", &none, Yes),
            (&q, "POST", "/x?force=false", &none, No),
            (
                &q,
                "POST",
                "/x?force=false;force=true",
                &none,
                Ambiguous("query"),
            ),
            (&q, "DELETE", "/x?force=true", &none, No),
            (&h, "GET", "/", &prod, Yes),
            (&h, "GET", "/", &none, No),
            (&seg, "GET", "/v1/a/items", &none, Yes),
            (&seg, "GET", "/v1/a/b/items", &none, No),
        ];
        for (i, (rule, m, p, hs, want)) in cases.into_iter().enumerate() {
            assert_eq!(verdict(rule, m, p, hs), want, "case {i}: {m} {p}");
        }
    }

    #[test]
    fn a_form_or_json_post_may_name_its_method_in_the_body() {
        let r = rule("name = \"r\"\nmethod = \"DELETE\"\npath = \"/v1/prod/**\"\n");
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert_eq!(verdict(&r, "POST", "/v1/prod/x", &h), Verdict::NeedsBody);
        assert_eq!(verdict(&r, "POST", "/v1/staging/x", &h), Verdict::No);
        let read = |b: &'static str| {
            let body = Body::read(&h, bytes::Bytes::from_static(b.as_bytes()), 1 << 20);
            let mut rd = Readings::of(&Method::POST, "/v1/prod/x", None, &h);
            for m in body.methods() {
                rd.add_method(&m);
            }
            r.check(&rd, &h, Some(&body))
        };
        assert_eq!(read("a=1&_method=delete"), Verdict::Ambiguous("method"));
        assert_eq!(read("a=1"), Verdict::No);
    }

    #[test]
    fn bodies_by_substring_regex_and_fields() {
        let h = HeaderMap::new();
        let body =
            |b: &'static str| Body::read(&h, bytes::Bytes::from_static(b.as_bytes()), 1 << 20);
        let rd = Readings::of(&Method::POST, "/", None, &h);
        let c = rule("name = \"c\"\nbody = { contains = \"\\\"env\\\":\\\"prod\\\"\" }\n");
        assert_eq!(c.check(&rd, &h, None), Verdict::NeedsBody);
        assert_eq!(
            c.check(&rd, &h, Some(&body(r#"{"a":1,"env":"prod"}"#))),
            Verdict::Yes
        );
        assert_eq!(
            c.check(&rd, &h, Some(&body(r#"{"env":"staging"}"#))),
            Verdict::No
        );
        let r = rule("name = \"r\"\nbody = { regex = \"amount\\\":\\\\s*[0-9]{5,}\" }\n");
        assert_eq!(
            r.check(&rd, &h, Some(&body(r#"{"amount": 250000}"#))),
            Verdict::Yes
        );
        assert_eq!(
            r.check(&rd, &h, Some(&body(r#"{"amount": 25}"#))),
            Verdict::No
        );
        let f = rule("name = \"f\"\nbody = { json = { \"$.amount\" = \">= 100000\" } }\n");
        assert_eq!(
            f.check(&rd, &h, Some(&body(r#"{"amount": 1e6}"#))),
            Verdict::Yes
        );
        assert!(matches!(
            f.check(&rd, &h, Some(&body(r#"{"amount":1,"amount":1e6}"#))),
            Verdict::AmbiguousBody(_)
        ));
    }

    /// Any spelling of a path that the upstream reads as a guarded one is
    /// refused (denied, or ambiguous), never allowed.
    mod equivalent_spellings {
        use proptest::prelude::*;

        use super::*;

        fn spell(seg: &str, style: u8) -> String {
            seg.bytes()
                .map(|b| match style % 4 {
                    0 => (b as char).to_string(),
                    1 => format!("%{b:02X}"),
                    2 => format!("%{b:02x}"),
                    _ if b.is_ascii_alphabetic() => (b as char).to_ascii_uppercase().to_string(),
                    _ => (b as char).to_string(),
                })
                .collect()
        }

        proptest! {
            #[test]
            fn guarded_paths_are_never_allowed(
                segs in proptest::collection::vec("[a-z0-9]{1,6}", 0..4),
                styles in proptest::collection::vec(0u8..8, 8),
                sep in 0u8..6,
                method in prop_oneof![Just("DELETE"), Just("delete"), Just("Delete")],
                via in 0u8..4,
            ) {
                let r = rule("name = \"r\"\nmethod = \"DELETE\"\npath = \"/v1/prod/**\"\n");
                let slash = ["/", "//", "%2F", "%2f", "\\", "/./"][sep as usize];
                let mut path = format!("/{}{slash}{}", spell("v1", styles[0]), spell("prod", styles[1]));
                for (i, s) in segs.iter().enumerate() {
                    let s = spell(s, styles[2 + i]);
                    path.push_str(if styles[6] % 3 == 0 { "/x/../" } else { "/" });
                    path.push_str(&s);
                    if styles[7] % 4 == 0 {
                        path.push_str(";jsessionid=1");
                    }
                }
                path.push_str("/leaf");
                let mut h = HeaderMap::new();
                let (m, target) = match via {
                    0 => (method.to_string(), path.clone()),
                    1 => {
                        h.insert("x-http-method-override", method.parse().unwrap());
                        ("POST".into(), path.clone())
                    }
                    2 => ("POST".into(), format!("{path}?_method={method}")),
                    _ => ("PUT".into(), format!("{path}?a=1;_method={method}")),
                };
                let v = verdict(&r, &m, &target, &h);
                prop_assert!(
                    matches!(v, Verdict::Yes | Verdict::Ambiguous(_)),
                    "{m} {target}: {v:?}"
                );
            }
        }
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
            (
                "name = \"x\"\nbody = { json = { \"amount\" = \">= 1\" } }\n",
                "body.json.\"amount\"",
            ),
            (
                "name = \"x\"\nbody = { json = { \"$.a\" = \">= 1\" }, regex = \"b\" }\n",
                "body",
            ),
            ("name = \"x\"\n", "name"),
        ] {
            let c: RuleConfig = toml::from_str(text).unwrap();
            let e = Rule::compile(&c)
                .err()
                .unwrap_or_else(|| panic!("accepted {text}"));
            assert_eq!(e.key, key, "{text}: {e:?}");
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
