//! Protocol upgrades. After a switch hoop can only keep its promises for a
//! protocol it parses, and the only one it parses is WebSocket (see
//! `websocket/`). So: an HTTP/1.1 upgrade to exactly `websocket` passes,
//! with no extensions offered (a compressed frame can't be checked for the
//! credential or masked); every other upgrade (`h2c`, `TLS/1.0`, a list
//! that leaves the upstream a choice, …) and every tunnel (`CONNECT`, the
//! HTTP/2 extended CONNECT of RFC 8441) is refused before anything goes
//! upstream. The upstream's `101` must then be the switch that was asked
//! for, or the job gets a 502 and the upgraded connection is dropped.
use http::{HeaderMap, HeaderValue, Method, StatusCode, Version, header};

use super::{PipelineError, headers::is_upgrade};

const SEC_WEBSOCKET_KEY: &str = "sec-websocket-key";
const SEC_WEBSOCKET_VERSION: &str = "sec-websocket-version";
const SEC_WEBSOCKET_ACCEPT: &str = "sec-websocket-accept";
const SEC_WEBSOCKET_EXTENSIONS: &str = "sec-websocket-extensions";

/// A WebSocket handshake hoop lets through: the key the upstream's accept
/// must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSocket {
    key: HeaderValue,
}

fn refuse(detail: impl Into<String>) -> PipelineError {
    PipelineError::UpgradeRefused {
        detail: detail.into(),
    }
}

/// The comma-separated tokens of every `name` header, trimmed, empty ones
/// dropped; None when a value is not text.
fn tokens(h: &HeaderMap, name: header::HeaderName) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for v in h.get_all(name) {
        let v = v.to_str().ok()?;
        out.extend(
            v.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
        );
    }
    Some(out)
}

/// What the job's request may do: stay a plain request (`None`), become a
/// WebSocket, or be refused (400 `upgrade-refused`).
pub fn check(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    extended_connect: bool,
) -> Result<Option<WebSocket>, PipelineError> {
    if extended_connect {
        return Err(refuse(
            "HTTP/2 extended CONNECT (RFC 8441) is not supported: what it carries can't be inspected",
        ));
    }
    if method == Method::CONNECT {
        return Err(refuse(
            "CONNECT inside a connection hoop intercepts would open a tunnel nothing inspects",
        ));
    }
    if !headers.contains_key(header::UPGRADE) {
        return Ok(None);
    }
    if version >= Version::HTTP_2 {
        return Err(refuse("HTTP/2 has no Upgrade"));
    }
    if !is_upgrade(headers) {
        // Not an upgrade: `Upgrade` is hop-by-hop and never forwarded
        // unless `Connection` names it.
        return Ok(None);
    }
    let offered =
        tokens(headers, header::UPGRADE).ok_or_else(|| refuse("the Upgrade header is not text"))?;
    match offered.as_slice() {
        [p] if p.eq_ignore_ascii_case("websocket") => {}
        [] => return Err(refuse("an empty Upgrade header")),
        _ => {
            return Err(refuse(format!(
                "Upgrade: {}; hoop only lets a WebSocket upgrade (alone) through, as it can inspect nothing else",
                offered.join(", ")
            )));
        }
    }
    if method != Method::GET || version != Version::HTTP_11 {
        return Err(refuse(format!(
            "a WebSocket handshake is a GET over HTTP/1.1, not {method} over {version:?}"
        )));
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .filter(|k| valid_key(k.as_bytes()))
        .ok_or_else(|| refuse("a WebSocket handshake needs a valid Sec-WebSocket-Key"))?;
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(refuse(
            "hoop speaks WebSocket version 13 (RFC 6455) only: Sec-WebSocket-Version must be 13",
        ));
    }
    Ok(Some(WebSocket { key: key.clone() }))
}

/// RFC 6455: the key is 16 random bytes, base64-encoded.
fn valid_key(k: &[u8]) -> bool {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(k)
        .is_ok_and(|d| d.len() == 16)
}

/// The request's upgrade headers as they go upstream (after hop-by-hop
/// stripping kept `Connection: upgrade` and `Upgrade`): the protocol in
/// its canonical spelling, and no extensions offered.
pub fn prepare_request(h: &mut HeaderMap) {
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.remove(SEC_WEBSOCKET_EXTENSIONS);
}

/// Checks the upstream's answer against what was asked: a `101` must be
/// the WebSocket switch the job requested, with the accept for its key,
/// and no extension (hoop offered none, and could not inspect one).
pub fn check_switch(
    asked: Option<&WebSocket>,
    status: StatusCode,
    h: &HeaderMap,
) -> Result<(), PipelineError> {
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(());
    }
    let bad = |detail: String| PipelineError::UpstreamProtocol { detail };
    let Some(ws) = asked else {
        return Err(bad(
            "the upstream answered 101 Switching Protocols to a request that asked for no upgrade"
                .into(),
        ));
    };
    let protocols = tokens(h, header::UPGRADE).unwrap_or_default();
    if !is_upgrade(h) || !matches!(protocols.as_slice(), [p] if p.eq_ignore_ascii_case("websocket"))
    {
        return Err(bad(format!(
            "the upstream switched to {:?}, not the websocket that was asked for",
            protocols.join(", ")
        )));
    }
    let extensions = tokens(h, header::HeaderName::from_static(SEC_WEBSOCKET_EXTENSIONS))
        .unwrap_or_else(|| vec!["(not text)".into()]);
    if !extensions.is_empty() {
        return Err(PipelineError::Uninspectable {
            detail: format!(
                "the upstream's WebSocket switch names extensions hoop did not offer ({}); their frames can't be inspected",
                extensions.join(", ")
            ),
        });
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(ws.key.as_bytes());
    if h.get(SEC_WEBSOCKET_ACCEPT)
        .is_none_or(|a| a.as_bytes() != accept.as_bytes())
    {
        return Err(bad(
            "the upstream's Sec-WebSocket-Accept does not answer the job's key".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::headers::tests::map;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    /// A WebSocket handshake's other headers, with `upgrade`/`connection`.
    fn ws(upgrade: &str, connection: &str) -> HeaderMap {
        map(&[
            ("upgrade", upgrade),
            ("connection", connection),
            ("sec-websocket-key", KEY),
            ("sec-websocket-version", "13"),
        ])
    }

    enum Want {
        Plain,
        WebSocket,
        Refused,
    }

    fn verdict(r: &Result<Option<WebSocket>, PipelineError>) -> Want {
        match r {
            Ok(None) => Want::Plain,
            Ok(Some(_)) => Want::WebSocket,
            Err(e) => {
                assert_eq!(e.reason(), "upgrade-refused");
                assert_eq!(e.status(), StatusCode::BAD_REQUEST);
                Want::Refused
            }
        }
    }

    #[test]
    fn only_a_websocket_upgrade_alone_passes() {
        use Want::*;
        let h11 = Version::HTTP_11;
        let get = || Method::GET;
        let cases: Vec<(&str, Method, Version, HeaderMap, bool, Want)> = vec![
            (
                "websocket",
                get(),
                h11,
                ws("websocket", "Upgrade"),
                false,
                WebSocket,
            ),
            (
                "odd case",
                get(),
                h11,
                ws("WebSocket", "keep-alive, UPGRADE"),
                false,
                WebSocket,
            ),
            ("h2c", get(), h11, ws("h2c", "Upgrade"), false, Refused),
            (
                "h2c with settings",
                get(),
                h11,
                map(&[
                    ("upgrade", "h2c"),
                    ("connection", "Upgrade, HTTP2-Settings"),
                    ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
                ]),
                false,
                Refused,
            ),
            ("H2C", get(), h11, ws("H2C", "upgrade"), false, Refused),
            (
                "websocket, h2c",
                get(),
                h11,
                ws("websocket, h2c", "upgrade"),
                false,
                Refused,
            ),
            (
                "h2c, websocket",
                get(),
                h11,
                ws("h2c, websocket", "upgrade"),
                false,
                Refused,
            ),
            (
                "two Upgrade headers",
                get(),
                h11,
                {
                    let mut h = ws("websocket", "upgrade");
                    h.append(header::UPGRADE, "h2c".parse().unwrap());
                    h
                },
                false,
                Refused,
            ),
            (
                "TLS/1.0",
                get(),
                h11,
                ws("TLS/1.0", "Upgrade"),
                false,
                Refused,
            ),
            (
                "versioned websocket",
                get(),
                h11,
                ws("websocket/13", "Upgrade"),
                false,
                Refused,
            ),
            (
                "arbitrary token",
                get(),
                h11,
                ws("x-tunnel", "Upgrade"),
                false,
                Refused,
            ),
            ("empty", get(), h11, ws(",", "Upgrade"), false, Refused),
            // Not an upgrade at all: stripped as hop-by-hop, sent as a request.
            (
                "h2c without Connection",
                get(),
                h11,
                map(&[("upgrade", "h2c")]),
                false,
                Plain,
            ),
            (
                "websocket without Connection",
                get(),
                h11,
                ws("websocket", "keep-alive"),
                false,
                Plain,
            ),
            (
                "Connection: upgrade alone",
                get(),
                h11,
                map(&[("connection", "upgrade")]),
                false,
                Plain,
            ),
            ("nothing", get(), h11, HeaderMap::new(), false, Plain),
            // A WebSocket handshake must be one.
            (
                "POST",
                Method::POST,
                h11,
                ws("websocket", "Upgrade"),
                false,
                Refused,
            ),
            (
                "HTTP/1.0",
                get(),
                Version::HTTP_10,
                ws("websocket", "Upgrade"),
                false,
                Refused,
            ),
            (
                "no key",
                get(),
                h11,
                map(&[
                    ("upgrade", "websocket"),
                    ("connection", "upgrade"),
                    ("sec-websocket-version", "13"),
                ]),
                false,
                Refused,
            ),
            (
                "bad key",
                get(),
                h11,
                map(&[
                    ("upgrade", "websocket"),
                    ("connection", "upgrade"),
                    ("sec-websocket-key", "short"),
                    ("sec-websocket-version", "13"),
                ]),
                false,
                Refused,
            ),
            (
                "version 8",
                get(),
                h11,
                map(&[
                    ("upgrade", "websocket"),
                    ("connection", "upgrade"),
                    ("sec-websocket-key", KEY),
                    ("sec-websocket-version", "8"),
                ]),
                false,
                Refused,
            ),
            // HTTP/2: no Upgrade, and no tunnels.
            (
                "h2 with Upgrade",
                get(),
                Version::HTTP_2,
                ws("websocket", "Upgrade"),
                false,
                Refused,
            ),
            (
                "h2 extended CONNECT",
                Method::CONNECT,
                Version::HTTP_2,
                HeaderMap::new(),
                true,
                Refused,
            ),
            (
                "h2 CONNECT",
                Method::CONNECT,
                Version::HTTP_2,
                HeaderMap::new(),
                false,
                Refused,
            ),
            (
                "h1 CONNECT",
                Method::CONNECT,
                h11,
                HeaderMap::new(),
                false,
                Refused,
            ),
        ];
        for (name, method, version, h, xconnect, want) in cases {
            let r = check(&method, version, &h, xconnect);
            assert!(
                std::mem::discriminant(&verdict(&r)) == std::mem::discriminant(&want),
                "{name}: {r:?}"
            );
        }
    }

    #[test]
    fn the_request_offers_no_extension_and_names_websocket_canonically() {
        let mut h = ws("WebSocket", "Upgrade");
        h.insert(
            SEC_WEBSOCKET_EXTENSIONS,
            "permessage-deflate; client_max_window_bits"
                .parse()
                .unwrap(),
        );
        prepare_request(&mut h);
        assert_eq!(h[header::UPGRADE], "websocket");
        assert!(!h.contains_key(SEC_WEBSOCKET_EXTENSIONS));
    }

    #[test]
    fn the_upstreams_switch_must_be_the_one_asked_for() {
        let asked = check(
            &Method::GET,
            Version::HTTP_11,
            &ws("websocket", "upgrade"),
            false,
        )
        .unwrap()
        .unwrap();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(KEY.as_bytes());
        let good = || {
            map(&[
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-accept", &accept),
            ])
        };
        let s101 = StatusCode::SWITCHING_PROTOCOLS;
        assert!(check_switch(Some(&asked), s101, &good()).is_ok());
        // Not a switch: nothing to check.
        assert!(check_switch(None, StatusCode::OK, &HeaderMap::new()).is_ok());
        assert!(check_switch(Some(&asked), StatusCode::BAD_REQUEST, &HeaderMap::new()).is_ok());
        let reason = |asked: Option<&WebSocket>, h: &HeaderMap| {
            let e = check_switch(asked, s101, h).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
            e.reason()
        };
        // 101 to a request that asked for nothing.
        assert_eq!(reason(None, &good()), "upstream-protocol-error");
        // Another protocol than asked.
        let mut h = good();
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        assert_eq!(reason(Some(&asked), &h), "upstream-protocol-error");
        // A wrong accept.
        let mut h = good();
        h.insert(SEC_WEBSOCKET_ACCEPT, "bm9wZQ==".parse().unwrap());
        assert_eq!(reason(Some(&asked), &h), "upstream-protocol-error");
        // Extensions hoop never offered: compressed frames it can't read.
        let mut h = good();
        h.insert(
            SEC_WEBSOCKET_EXTENSIONS,
            "permessage-deflate".parse().unwrap(),
        );
        assert_eq!(reason(Some(&asked), &h), "response-not-inspectable");
    }
}
