//! `hoop export har SESSION`: a session's exchanges as HAR 1.2, which
//! browsers' developer tools import. Everything comes from the record, so
//! masked values stay masked and credentials stay redacted.
use std::collections::HashMap;

use serde_json::{Value, json};

use super::{
    entry::{MessagesData, RefusedData, RequestData, ResponseData, kind},
    query::{Stored, iso},
};

fn headers(h: &[[String; 2]]) -> Value {
    h.iter()
        .map(|[n, v]| json!({"name": n, "value": v}))
        .collect()
}

fn query_string(url: &str) -> Value {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            json!({"name": n, "value": v})
        })
        .collect()
}

fn header<'a>(h: &'a [[String; 2]], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|[n, _]| n.eq_ignore_ascii_case(name))
        .map(|[_, v]| v.as_str())
}

/// Body text as HAR wants it: text, or base64 with `encoding`.
fn content(body: Option<&[u8]>, mime: &str, size: u64) -> Value {
    let mut c = json!({"size": size, "mimeType": mime});
    if let Some(b) = body {
        match std::str::from_utf8(b) {
            Ok(t) => c["text"] = t.into(),
            Err(_) => {
                use base64::Engine;
                c["text"] = base64::engine::general_purpose::STANDARD.encode(b).into();
                c["encoding"] = "base64".into();
            }
        }
    }
    c
}

fn request(q: &RequestData, body: Option<&[u8]>, body_size: u64) -> Value {
    let mut r = json!({
        "method": q.method,
        "url": q.url,
        "httpVersion": q.version,
        "cookies": [],
        "headers": headers(&q.headers),
        "queryString": query_string(&q.url),
        "headersSize": -1,
        "bodySize": body_size,
    });
    if let Some(b) = body {
        let mime = header(&q.headers, "content-type").unwrap_or("application/octet-stream");
        let text = String::from_utf8_lossy(b);
        r["postData"] = json!({"mimeType": mime, "text": text});
    }
    r
}

fn status_text(code: u16) -> &'static str {
    http::StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

fn entry(started_ms: u64, time_ms: u64, request: Value, response: Value, extra: Value) -> Value {
    let mut e = json!({
        "startedDateTime": iso(started_ms),
        "time": time_ms,
        "request": request,
        "response": response,
        "cache": {},
        "timings": {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1,
                    "send": 0, "wait": time_ms, "receive": 0},
    });
    if let (Some(e), Some(x)) = (e.as_object_mut(), extra.as_object()) {
        for (k, v) in x {
            e.insert(k.clone(), v.clone());
        }
    }
    e
}

/// WebSocket messages by the upgrade request they follow, as Chrome's
/// `_webSocketMessages` HAR extension has them (`time` in seconds; binary
/// data in base64, as Chrome exports it).
fn websocket_messages(records: &[Stored]) -> HashMap<u64, Vec<Value>> {
    let mut out: HashMap<u64, Vec<Value>> = HashMap::new();
    for r in records.iter().filter(|r| r.kind == kind::MESSAGES) {
        let Some(b) = r.parse::<MessagesData>() else {
            continue;
        };
        out.entry(b.request_seq)
            .or_default()
            .extend(b.messages.iter().map(|m| {
                json!({"type": m.dir, "time": m.ts_ms as f64 / 1000.0, "opcode": m.opcode,
                       "data": m.data.as_deref().unwrap_or(""), "_size": m.size})
            }));
    }
    out
}

/// The HAR document for these records (one session's, in order).
pub fn har(records: &[Stored]) -> Value {
    let mut messages = websocket_messages(records);
    let responses: HashMap<u64, (&Stored, ResponseData)> = records
        .iter()
        .filter(|r| r.kind == kind::RESPONSE)
        .filter_map(|r| Some((r, r.parse::<ResponseData>()?)))
        .map(|(r, d)| (d.request_seq, (r, d)))
        .collect();
    let mut entries = Vec::new();
    for r in records {
        match r.kind.as_str() {
            kind::REQUEST => {
                let Some(q) = r.parse::<RequestData>() else {
                    continue;
                };
                let (resp, time, req_body, req_size) = match responses.get(&r.seq) {
                    Some((stored, p)) => {
                        let mime = header(&p.headers, "content-type").unwrap_or("");
                        let resp = json!({
                            "status": p.status.unwrap_or(0),
                            "statusText": p.status.map(status_text).unwrap_or(""),
                            "httpVersion": q.version,
                            "cookies": [],
                            "headers": headers(&p.headers),
                            "content": content(stored.resp_body.as_deref(), mime, p.response_bytes),
                            "redirectURL": header(&p.headers, "location").unwrap_or(""),
                            "headersSize": -1,
                            "bodySize": p.response_bytes,
                        });
                        (
                            resp,
                            p.duration_ms,
                            stored.req_body.as_deref(),
                            p.request_bytes,
                        )
                    }
                    // Recorded going up, never answered (the daemon died).
                    None => (
                        json!({
                            "status": 0, "statusText": "", "httpVersion": q.version,
                            "cookies": [], "headers": [],
                            "content": {"size": 0, "mimeType": ""},
                            "redirectURL": "", "headersSize": -1, "bodySize": -1,
                            "_error": "no response recorded",
                        }),
                        0,
                        None,
                        0,
                    ),
                };
                let mut extra = json!({
                    "_hoop": {"seq": r.seq, "identity": q.origin.identity_name(), "pid": q.origin.pid,
                              "connection": q.connection, "decision": q.decision, "approval": q.approval,
                              "masked": responses.get(&r.seq).map(|(_, p)| p.masked.clone())},
                });
                if let Some(m) = messages.remove(&r.seq) {
                    extra["_webSocketMessages"] = m.into();
                }
                entries.push(entry(
                    q.started_ms,
                    time,
                    request(&q, req_body, req_size),
                    resp,
                    extra,
                ));
            }
            kind::REFUSED => {
                let Some(x) = r.parse::<RefusedData>() else {
                    continue;
                };
                let resp = json!({
                    "status": x.status,
                    "statusText": status_text(x.status),
                    "httpVersion": x.request.version,
                    "cookies": [],
                    "headers": [{"name": "x-hoop-reason", "value": x.reason}],
                    "content": {"size": x.message.len(), "mimeType": "text/plain", "text": x.message},
                    "redirectURL": "",
                    "headersSize": -1,
                    "bodySize": x.message.len(),
                });
                let size = x.req_body.as_ref().map_or(0, |b| b.bytes);
                let extra = json!({
                    "_hoop": {"seq": r.seq, "identity": x.request.origin.identity_name(),
                              "pid": x.request.origin.pid, "connection": x.request.connection,
                              "decision": "refused", "reason": x.reason, "rule": x.rule},
                });
                entries.push(entry(
                    x.request.started_ms,
                    r.ts_ms.saturating_sub(x.request.started_ms),
                    request(&x.request, r.req_body.as_deref(), size),
                    resp,
                    extra,
                ));
            }
            _ => {}
        }
    }
    json!({
        "log": {
            "version": "1.2",
            "creator": {"name": "hoop", "version": env!("CARGO_PKG_VERSION")},
            "entries": entries,
        }
    })
}
