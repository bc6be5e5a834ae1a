//! What policy does to one WebSocket message, and what the record keeps of
//! it. Pure and synchronous, so that it can be tested and fuzzed apart
//! from the sockets.
//!
//! Toward the job (`Receive`) a message gets what an HTTP response body
//! gets: the connection's masking on data messages, text and binary alike
//! (JSON paths when the payload parses as JSON, detectors when it is
//! UTF-8 text; other bytes pass, as a binary body's do), then the leak
//! canary on every message, control frames included (the secret, raw or
//! encoded, could be anywhere). Toward the upstream (`Send`) the job's
//! message passes as it is: masking protects what the job reads, and the
//! job never had the secret; only the record's copy is canary-masked.
use bytes::Bytes;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes, protocol::CloseFrame};

use crate::policy::{
    Connection,
    canary::Canary,
    enforce::CANARY,
    mask::{Counts, Masker},
};

/// Which way a message goes, in HAR's `_webSocketMessages` words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the job to the upstream.
    Send,
    /// From the upstream to the job.
    Receive,
}

impl Dir {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Receive => "receive",
        }
    }
}

/// A connection's policy over WebSocket messages.
#[derive(Clone, Copy, Default)]
pub struct Inspector<'a> {
    canary: Option<&'a Canary>,
    mask: Option<&'a Masker>,
}

impl<'a> Inspector<'a> {
    pub fn new(canary: Option<&'a Canary>, mask: Option<&'a Masker>) -> Self {
        Self { canary, mask }
    }

    pub fn of(c: &'a Connection) -> Self {
        Self::new(
            c.credential.as_ref().map(|c| &*c.canary),
            c.guard.mask.as_ref(),
        )
    }

    /// The message to pass on; `counts` gets what was masked, by rule.
    pub fn pass(&self, dir: Dir, msg: Message, counts: &mut Counts) -> Message {
        if dir == Dir::Send {
            return msg;
        }
        match msg {
            Message::Text(t) => match self.data(t.as_bytes(), counts) {
                Some(b) => Message::Text(text(b)),
                None => Message::Text(t),
            },
            Message::Binary(b) => match self.data(&b, counts) {
                Some(v) => Message::Binary(v.into()),
                None => Message::Binary(b),
            },
            Message::Ping(b) => Message::Ping(self.canary_only(b, counts)),
            Message::Pong(b) => Message::Pong(self.canary_only(b, counts)),
            Message::Close(Some(f)) => {
                let reason = match self.canaried(f.reason.as_bytes(), counts) {
                    Some(b) => text(b),
                    None => f.reason,
                };
                Message::Close(Some(CloseFrame {
                    code: f.code,
                    reason,
                }))
            }
            other => other,
        }
    }

    /// The masked data payload, if masking or the canary changed it.
    fn data(&self, payload: &[u8], counts: &mut Counts) -> Option<Vec<u8>> {
        // JSON when it parses as JSON; text through the detectors when it
        // doesn't (a message its receiver can't parse as JSON has no
        // fields for JSON paths to name).
        let masked = self
            .mask
            .and_then(|m| match m.mask_body(None, payload, counts) {
                Ok(out) => out,
                Err(_) => std::str::from_utf8(payload)
                    .ok()
                    .and_then(|t| m.mask_text(t, counts))
                    .map(String::into_bytes),
            });
        match masked {
            Some(mut out) => {
                self.canary_in_place(&mut out, counts);
                Some(out)
            }
            None => self.canaried(payload, counts),
        }
    }

    fn canary_only(&self, b: Bytes, counts: &mut Counts) -> Bytes {
        self.canaried(&b, counts).map_or(b, Bytes::from)
    }

    /// A copy with the canary's hits masked, if there were any.
    fn canaried(&self, payload: &[u8], counts: &mut Counts) -> Option<Vec<u8>> {
        let c = self.canary?;
        let mut out = payload.to_vec();
        let hits = c.mask(&mut out);
        counts.add(CANARY, hits as u64);
        (hits > 0).then_some(out)
    }

    fn canary_in_place(&self, buf: &mut [u8], counts: &mut Counts) {
        if let Some(c) = self.canary {
            counts.add(CANARY, c.mask(buf) as u64);
        }
    }

    /// What the record keeps of a payload that was passed on: its first
    /// `cap` bytes, canary-masked whichever way it went (the log never
    /// keeps the secret).
    pub fn recorded(&self, payload: &[u8], cap: usize) -> Vec<u8> {
        let Some(c) = self.canary else {
            return payload[..cap.min(payload.len())].to_vec();
        };
        // A secret across the cut (raw or in an escaped form, which can be
        // many times longer) is masked before the cut is made: the whole
        // message, which its size limit bounds.
        let mut out = payload.to_vec();
        c.mask(&mut out);
        out.truncate(cap);
        out
    }
}

/// Masked text back as text. Masking writes ASCII over whole values, so it
/// stays UTF-8; were it ever not, the lossy form still holds no secret.
fn text(b: Vec<u8>) -> Utf8Bytes {
    match String::from_utf8(b) {
        Ok(s) => s.into(),
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned().into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    use super::*;
    use crate::{config::policy::CredentialConfig, policy::credential::Credential};

    const SECRET: &str = "tok-0123456789abcdef";

    fn canary() -> Arc<Canary> {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), SECRET).unwrap();
        let c: CredentialConfig =
            toml::from_str(&format!("secret = {{ file = \"{}\" }}", f.path().display())).unwrap();
        Credential::new(&c).unwrap().canary.clone()
    }

    fn masker() -> Masker {
        let c: crate::policy::mask::MaskConfig =
            toml::from_str("json = [\"$..card\"]\ndetectors = [\"email\"]\nkeep_last = 4\n")
                .unwrap();
        Masker::compile(&c).unwrap()
    }

    fn payload(m: &Message) -> Vec<u8> {
        match m {
            Message::Close(Some(f)) => f.reason.as_bytes().to_vec(),
            m => m.clone().into_data().to_vec(),
        }
    }

    #[test]
    fn toward_the_job_masking_and_the_canary_apply_to_every_kind_of_message() {
        let (c, m) = (canary(), masker());
        let i = Inspector::new(Some(&c), Some(&m));
        let echoed = format!("{{\"authorization\":\"Bearer {SECRET}\"}}");
        let json = r#"{"card":"4111111111111111","who":"ann@example.com"}"#;
        let cases = [
            Message::text(echoed.clone()),
            Message::binary(echoed.clone().into_bytes()),
            Message::Ping(Bytes::from(SECRET)),
            Message::Pong(Bytes::from(SECRET)),
            Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: format!("bye {SECRET}").into(),
            })),
        ];
        for msg in cases {
            let mut counts = Counts::default();
            let before = payload(&msg);
            let out = i.pass(Dir::Receive, msg, &mut counts);
            let after = payload(&out);
            assert_eq!(before.len(), after.len(), "{out:?}");
            assert!(!String::from_utf8_lossy(&after).contains(SECRET), "{out:?}");
            assert_eq!(counts.get(CANARY), 1, "{out:?}");
        }
        let mut counts = Counts::default();
        let out = i.pass(Dir::Receive, Message::text(json), &mut counts);
        let v: serde_json::Value = serde_json::from_str(out.to_text().unwrap()).unwrap();
        assert_eq!(v["card"], "************1111");
        assert!(!out.to_text().unwrap().contains("ann@example.com"));
        assert_eq!(counts.total(), 2, "{counts:?}");
        // Binary that is text is masked as text; other bytes pass.
        let mut counts = Counts::default();
        let out = i.pass(
            Dir::Receive,
            Message::binary(json.as_bytes().to_vec()),
            &mut counts,
        );
        assert!(out.is_binary());
        assert!(!String::from_utf8_lossy(&out.into_data()).contains("4111111111111111"));
        let raw = Message::binary(vec![0xff, 0x00, 0x41]);
        assert_eq!(i.pass(Dir::Receive, raw.clone(), &mut counts), raw);
    }

    #[test]
    fn toward_the_upstream_messages_pass_and_the_record_is_still_canary_masked() {
        let (c, m) = (canary(), masker());
        let i = Inspector::new(Some(&c), Some(&m));
        let msg = Message::text(format!("card 4111111111111111 {SECRET}"));
        let mut counts = Counts::default();
        assert_eq!(i.pass(Dir::Send, msg.clone(), &mut counts), msg);
        assert_eq!(counts.total(), 0);
        let full = payload(&msg);
        // The secret straddles every cut: never a prefix of it in the record.
        for cap in 0..full.len() + 2 {
            let kept = i.recorded(&full, cap);
            assert_eq!(kept.len(), cap.min(full.len()));
            let s = String::from_utf8_lossy(&kept);
            assert!(!s.contains("tok-0123456789"), "cap {cap}: {s}");
        }
        // Without a credential, the record is the payload's prefix.
        assert_eq!(Inspector::default().recorded(b"abcdef", 3), b"abc");
    }

    #[test]
    fn nothing_to_apply_passes_the_message_untouched() {
        let i = Inspector::default();
        let msg = Message::text("4111111111111111");
        let mut counts = Counts::default();
        assert_eq!(i.pass(Dir::Receive, msg.clone(), &mut counts), msg);
        assert_eq!(counts.total(), 0);
    }
}
