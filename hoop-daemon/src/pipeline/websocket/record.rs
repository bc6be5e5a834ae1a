//! The WebSocket's part of the audit log: every message, as it was passed
//! on (masked), as `messages` records of the upgrade's exchange. Sizes are
//! always kept, payloads up to the connection's body cap per message.
//! Messages are batched (a record per tiny frame would cost the writer a
//! record each): a batch is written when it holds 64 messages or 256 KiB
//! of payload, when its first message is a second old, and at the end,
//! with how the WebSocket ended.
use std::{sync::Arc, time::Instant};

use base64::Engine;
use tokio_tungstenite::tungstenite::Message;

use super::inspect::Dir;
use crate::{
    audit::{
        Audit, Entry,
        entry::{MessageData, MessagesData, MessagesEnd},
    },
    jobs::Jobs,
    pipeline::record::Exchange,
    policy::mask::Counts,
};

const BATCH_MESSAGES: usize = 64;
const BATCH_BYTES: usize = 256 << 10;
pub const BATCH_AGE: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Recorder {
    audit: Audit,
    metrics: Arc<crate::metrics::Metrics>,
    session: String,
    /// The upgrade request's record; None when nothing is recorded.
    request_seq: Option<u64>,
    pub cap: usize,
    batch: Vec<MessageData>,
    batch_bytes: usize,
    since: Option<Instant>,
    sent: u64,
    received: u64,
    /// Who sent the first close frame, and its code.
    first_close: Option<(Dir, Option<u16>)>,
}

/// A message's opcode, payload (a close frame's reason) and close code.
pub fn parts(msg: &Message) -> (u8, &[u8], Option<u16>) {
    match msg {
        Message::Text(t) => (1, t.as_bytes(), None),
        Message::Binary(b) => (2, b, None),
        Message::Ping(b) => (9, b, None),
        Message::Pong(b) => (10, b, None),
        Message::Close(Some(f)) => (8, f.reason.as_bytes(), Some(f.code.into())),
        Message::Close(None) => (8, &[], None),
        Message::Frame(f) => (f.header().opcode.into(), f.payload(), None),
    }
}

impl Recorder {
    pub fn new(x: &Exchange) -> Self {
        Self {
            audit: x.audit.clone(),
            metrics: x.metrics.clone(),
            session: x.data.origin.session.clone(),
            request_seq: x.seq.filter(|_| x.audit.enabled()),
            cap: x.cap,
            batch: Vec::new(),
            batch_bytes: 0,
            since: None,
            sent: 0,
            received: 0,
            first_close: None,
        }
    }

    /// A message passed on: `kept` is the record's copy of its payload.
    pub fn add(&mut self, dir: Dir, msg: &Message, kept: Vec<u8>, masked: Counts) {
        let (opcode, payload, code) = parts(msg);
        match dir {
            Dir::Send => self.sent += 1,
            Dir::Receive => self.received += 1,
        }
        if opcode == 8 && self.first_close.is_none() {
            self.first_close = Some((dir, code));
        }
        self.metrics.masked(&masked.0);
        if self.request_seq.is_none() {
            return;
        }
        let size = payload.len() + if code.is_some() { 2 } else { 0 };
        self.batch_bytes += kept.len();
        let (data, base64, recorded) = encode(kept, opcode);
        self.batch.push(MessageData {
            ts_ms: Jobs::now_ms(),
            dir: dir.as_str().into(),
            opcode,
            size: size as u64,
            recorded: recorded as u64,
            data,
            base64,
            code,
            masked: masked.0,
        });
        self.since.get_or_insert_with(Instant::now);
        if self.batch.len() >= BATCH_MESSAGES || self.batch_bytes >= BATCH_BYTES {
            self.flush(None);
        }
    }

    /// Writes the batch if its first message has waited long enough.
    pub fn flush_if_due(&mut self) {
        if self.since.is_some_and(|t| t.elapsed() >= BATCH_AGE) {
            self.flush(None);
        }
    }

    fn flush(&mut self, end: Option<MessagesEnd>) {
        let Some(request_seq) = self.request_seq else {
            return;
        };
        if self.batch.is_empty() && end.is_none() {
            return;
        }
        self.audit.record(Entry::of(&MessagesData {
            session: self.session.clone(),
            request_seq,
            messages: std::mem::take(&mut self.batch),
            end,
        }));
        self.batch_bytes = 0;
        self.since = None;
    }

    /// The last batch, with how the WebSocket ended: refused by hoop
    /// (`reason`), else closed by whoever sent the first close frame, else
    /// by the side that went away (`gone`).
    pub fn finish(&mut self, reason: Option<&'static str>, gone: Dir, detail: String) {
        let who = |d: Dir| match d {
            Dir::Send => "job",
            Dir::Receive => "upstream",
        };
        let (by, detail) = match (reason, self.first_close) {
            (Some(_), _) => ("gateway", detail),
            (None, Some((d, code))) => (
                who(d),
                match code {
                    Some(c) => format!("closed ({c})"),
                    None => "closed".into(),
                },
            ),
            (None, None) => (who(gone), detail),
        };
        tracing::info!(
            session = %self.session, by, reason = reason.unwrap_or("-"), detail = %detail,
            sent = self.sent, received = self.received, "websocket ended"
        );
        let end = MessagesEnd {
            by: by.into(),
            reason: reason.map(str::to_owned),
            detail,
            sent: self.sent,
            received: self.received,
        };
        self.flush(Some(end));
    }
}

/// A kept payload for the record, and how many payload bytes that is:
/// text (and a close reason) as it is, a cap through a character moved
/// back before it; anything else in base64.
fn encode(mut kept: Vec<u8>, opcode: u8) -> (Option<String>, bool, usize) {
    if kept.is_empty() {
        return (None, false, 0);
    }
    if matches!(opcode, 1 | 8) {
        let valid = match std::str::from_utf8(&kept) {
            Ok(_) => kept.len(),
            // Only the cut is incomplete: keep what precedes it.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => 0,
        };
        kept.truncate(valid);
        return match String::from_utf8(kept) {
            Ok(s) if !s.is_empty() => (Some(s), false, valid),
            _ => (None, false, 0),
        };
    }
    let n = kept.len();
    (
        Some(base64::engine::general_purpose::STANDARD.encode(&kept)),
        true,
        n,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_kept_as_text_cut_at_a_character_and_bytes_as_base64() {
        assert_eq!(
            encode(b"hello".to_vec(), 1),
            (Some("hello".to_string()), false, 5)
        );
        // "é" is two bytes: a cap through it keeps the text before it.
        assert_eq!(
            encode("abé".as_bytes()[..3].to_vec(), 1),
            (Some("ab".to_string()), false, 2)
        );
        assert_eq!(
            encode(vec![0xff, 1], 2),
            (Some("/wE=".to_string()), true, 2)
        );
        assert_eq!(
            encode(b"text".to_vec(), 2),
            (Some("dGV4dA==".into()), true, 4)
        );
        assert_eq!(encode(Vec::new(), 1), (None, false, 0));
    }
}
