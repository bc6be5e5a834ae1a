//! Every reading of a request's head that a common upstream might take.
//! A guardrail must see the request as the upstream will, and upstreams
//! disagree: many decode `%2F` in paths, servlet containers drop `;`
//! parameters (so `/..;/` climbs), IIS reads `\` as `/`, frameworks honour
//! `X-HTTP-Method-Override` and a `_method` parameter, and some compare
//! paths without case. Rules are evaluated over all readings; when they
//! disagree about a decision, the request is ambiguous and refused
//! (see `rules.rs`). Computed once per request; pure.
use http::{HeaderMap, Method};

/// Headers that some frameworks read as the request's method.
pub const METHOD_OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
/// The parameter Rails, Laravel, Rack and Symfony read as the method.
pub const METHOD_PARAM: &str = "_method";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Readings {
    /// Upper case, deduplicated; the request line's own method first.
    pub methods: Vec<String>,
    /// Some part of the request (a multipart body) may name a method hoop
    /// does not parse: any method rule is undecided.
    pub unknown_method: bool,
    /// Normalised paths, deduplicated; the conservative reading first.
    pub paths: Vec<String>,
    /// Query parameters, decoded: split on `&`, and on `&` and `;`.
    pub queries: Vec<Vec<(String, String)>>,
    /// A form or JSON POST: its body may carry `_method`.
    pub body_may_override: bool,
}

impl Readings {
    pub fn of(method: &Method, path: &str, query: Option<&str>, headers: &HeaderMap) -> Self {
        let mut r = Readings {
            paths: path_readings(path),
            queries: query_readings(query),
            ..Default::default()
        };
        r.add_method(method.as_str());
        for h in METHOD_OVERRIDE_HEADERS {
            for v in headers.get_all(h) {
                r.add_method(&String::from_utf8_lossy(v.as_bytes()));
            }
        }
        let params: Vec<String> = r
            .queries
            .iter()
            .flatten()
            .filter(|(k, _)| k == METHOD_PARAM)
            .map(|(_, v)| v.clone())
            .collect();
        for v in params {
            r.add_method(&v);
        }
        let ctype = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        r.body_may_override = *method != Method::GET
            && *method != Method::HEAD
            && (ctype.contains("form") || ctype.contains("json"));
        r
    }

    /// A method some part of the request names (trimmed, upper-cased).
    pub fn add_method(&mut self, m: &str) {
        let m = m.trim().to_ascii_uppercase();
        if !m.is_empty() && !self.methods.contains(&m) {
            self.methods.push(m);
        }
    }
}

/// The path readings: the conservative one (ASCII decoded except `/`, dot
/// segments and duplicate slashes resolved), and the ones that also
/// decode `%2F`/`%5C` (twice encoded too), read `\` as `/`, or drop
/// `;parameters` from segments.
pub fn path_readings(path: &str) -> Vec<String> {
    let mut out = vec![super::rules::normalize_path(path)];
    let exotic = path.contains(['%', ';', '\\']);
    if exotic {
        let (conservative, decoded) = (out[0].clone(), decode_all(path));
        for (text, semi) in [
            (conservative.as_str(), true),
            (decoded.as_str(), false),
            (decoded.as_str(), true),
        ] {
            let p = resolve(text, semi);
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out
}

/// Percent-decodes everything, up to three times (a server or a proxy in
/// front of it may decode again), and reads `\` as `/`.
fn decode_all(p: &str) -> String {
    let mut cur = p.as_bytes().to_vec();
    for _ in 0..3 {
        if !cur.contains(&b'%') {
            break;
        }
        let next = percent_decode(&cur);
        if next == cur {
            break;
        }
        cur = next;
    }
    String::from_utf8_lossy(&cur).replace('\\', "/")
}

fn percent_decode(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Dot segments and empty segments resolved; with `semi`, each segment
/// cut at its first `;` first (so `..;x` is `..`).
fn resolve(p: &str, semi: bool) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        let seg = if semi {
            seg.split(';').next().unwrap_or("")
        } else {
            seg
        };
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut r = format!("/{}", out.join("/"));
    if p.ends_with('/') && r.len() > 1 {
        r.push('/');
    }
    r
}

fn query_readings(q: Option<&str>) -> Vec<Vec<(String, String)>> {
    let Some(q) = q else {
        return vec![Vec::new()];
    };
    let parse = |s: &str| -> Vec<(String, String)> {
        form_urlencoded::parse(s.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    };
    let mut out = vec![parse(q)];
    if q.contains(';') {
        out.push(parse(&q.replace(';', "&")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(p: &str) -> Vec<String> {
        path_readings(p)
    }

    #[test]
    fn path_readings_cover_what_upstreams_decode() {
        assert_eq!(paths("/v1/prod/x"), ["/v1/prod/x"]);
        assert!(paths("/v1%2Fprod/x").contains(&"/v1/prod/x".to_string()));
        assert!(paths("/v1%252Fprod/x").contains(&"/v1/prod/x".to_string()));
        assert!(paths("/v1\\prod\\x").contains(&"/v1/prod/x".to_string()));
        assert!(paths("/v1/prod;a=b/x").contains(&"/v1/prod/x".to_string()));
        assert!(paths("/v1/staging/..;/prod/x").contains(&"/v1/prod/x".to_string()));
        assert!(paths("/v1/x/%2e%2e%2fprod/y").contains(&"/v1/prod/y".to_string()));
        // The conservative reading stays first.
        assert_eq!(paths("/a%2Fb")[0], "/a%2Fb");
    }

    #[test]
    fn methods_from_every_place_that_names_one() {
        let mut h = HeaderMap::new();
        h.insert("x-http-method-override", "delete".parse().unwrap());
        h.append("x-method-override", "PATCH".parse().unwrap());
        let r = Readings::of(&Method::POST, "/", Some("a=1&_method=put"), &h);
        assert_eq!(r.methods, ["POST", "DELETE", "PATCH", "PUT"]);
        let m = Method::from_bytes(b"delete").unwrap();
        let r = Readings::of(&m, "/", Some("x=1;_method=GET"), &HeaderMap::new());
        assert_eq!(r.methods, ["DELETE", "GET"]);
        assert!(!r.body_may_override);
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert!(Readings::of(&Method::POST, "/", None, &h).body_may_override);
    }
}
