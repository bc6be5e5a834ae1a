//! A WebSocket after hoop let its upgrade through (see `upgrade.rs`): hoop
//! is the server toward the job and the client toward the upstream, and
//! every message is parsed (tungstenite, RFC 6455, no extensions), passed
//! through the connection's policy (`inspect.rs`) and recorded
//! (`record.rs`) before it goes on. Fragmented messages are reassembled,
//! so masking and the canary see each message whole, and sent on as one
//! frame. Messages are bounded in size. What hoop can't read fails closed
//! (`close.rs`): a frame with reserved bits set (a compressed one), an
//! unmasked frame from the job, a masked one from the upstream, text that
//! is not UTF-8 or a message over the bound closes both sides with a close
//! frame naming why. Ping, pong and close pass through, checked like the
//! rest (tungstenite also answers pings and closes itself, so a side may
//! see a pong or a close twice: harmless, RFC 6455 allows unsolicited
//! pongs).
mod close;
pub mod inspect;
mod record;

use std::{pin::pin, sync::Arc, time::Duration};

use futures_util::{SinkExt, Stream, StreamExt, stream::SplitSink};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;
pub use tokio_tungstenite::tungstenite;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Error as WsError, Message,
        protocol::{CloseFrame, Role, WebSocketConfig, frame::coding::CloseCode},
    },
};

pub use close::{Refusal, refusal};
pub use inspect::{Dir, Inspector};
pub(super) use record::Recorder;

use crate::{
    flow::Flow,
    policy::{Connection, enforce::CANARY, mask::Counts},
};

/// The largest message (and frame) hoop reads whole: a connection that
/// masks reads no more than its `mask.max_body`.
pub const MAX_MESSAGE: usize = 16 << 20;

/// How long the other side has to finish closing once one side ended.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The message size bound for `c`.
pub fn max_message(c: &Connection) -> usize {
    c.guard
        .mask
        .as_ref()
        .map_or(MAX_MESSAGE, |m| m.max_body.min(MAX_MESSAGE))
}

/// Both sides' parser settings: bounded, and unmasked client frames
/// refused (RFC 6455 requires the mask; tungstenite's default).
pub fn config(max: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .accept_unmasked_frames(false)
}

type Sink = Mutex<SplitSink<WebSocketStream<TokioIo<Upgraded>>, Message>>;

/// One WebSocket between the job and the upstream.
struct Relay {
    route: Arc<Connection>,
    flow: Arc<Flow>,
    stands: Option<Stands>,
    rec: std::sync::Mutex<Recorder>,
    job: Sink,
    up: Sink,
}

/// How one direction's reading ended.
enum Ended {
    /// The sender's stream ended (after a close, or it went away).
    Done(Dir, String),
    /// hoop refused a frame the sender sent.
    Refused(Refusal),
}

/// Whether the route a WebSocket was opened on still stands: `Some(why)`
/// once it does not (observe mode ended for it).
pub(super) type Stands = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// Runs the WebSocket once both sides have switched; to its end.
pub(super) async fn run(
    job: OnUpgrade,
    up: OnUpgrade,
    route: Arc<Connection>,
    flow: Arc<Flow>,
    mut rec: Recorder,
    stands: Option<Stands>,
) {
    let (j, u) = match tokio::try_join!(job, up) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(flow = flow.id, error = %e, "upgrade failed");
            rec.finish(None, Dir::Send, format!("the upgrade failed: {e}"));
            return;
        }
    };
    let cfg = config(max_message(&route));
    let job = WebSocketStream::from_raw_socket(TokioIo::new(j), Role::Server, Some(cfg)).await;
    let up = WebSocketStream::from_raw_socket(TokioIo::new(u), Role::Client, Some(cfg)).await;
    let (job_tx, job_rx) = job.split();
    let (up_tx, up_rx) = up.split();
    let relay = Relay {
        route,
        flow,
        stands,
        rec: std::sync::Mutex::new(rec),
        job: Mutex::new(job_tx),
        up: Mutex::new(up_tx),
    };
    let ended = relay.both(job_rx, up_rx).await;
    let mut rec = relay.rec.into_inner().unwrap_or_else(|p| p.into_inner());
    match ended {
        Ended::Refused(r) => rec.finish(Some(r.reason), Dir::Send, r.detail),
        Ended::Done(dir, detail) => rec.finish(None, dir, detail),
    }
}

impl Relay {
    /// Both directions at once (in this one task: neither waits for the
    /// other), flushing the record's batches as they age. When one ends the
    /// other gets `CLOSE_GRACE` to finish its close handshake.
    async fn both<J, U>(&self, job_rx: J, up_rx: U) -> Ended
    where
        J: Stream<Item = Result<Message, WsError>> + Unpin,
        U: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let mut send = pin!(self.pump(Dir::Send, job_rx));
        let mut recv = pin!(self.pump(Dir::Receive, up_rx));
        let mut tick = tokio::time::interval(record::BATCH_AGE);
        let (first, send_first) = loop {
            tokio::select! {
                e = &mut send => break (e, true),
                e = &mut recv => break (e, false),
                _ = tick.tick() => {
                    self.rec.lock().unwrap().flush_if_due();
                    if let Some(r) = self.ended_by_policy().await {
                        break (Ended::Refused(r), true);
                    }
                }
            }
        };
        let rest = async { if send_first { recv.await } else { send.await } };
        let second = tokio::time::timeout(CLOSE_GRACE, rest).await;
        // A refusal on either side is what the record must say.
        match (first, second) {
            (Ended::Refused(r), _) | (_, Ok(Ended::Refused(r))) => Ended::Refused(r),
            (first, _) => first,
        }
    }

    /// Observe mode is bounded by `until` and the policy in force, not by
    /// how long a WebSocket stays open: checked at every tick, it closes
    /// both sides once it ends.
    async fn ended_by_policy(&self) -> Option<Refusal> {
        let why = self.stands.as_ref().and_then(|s| s())?;
        let r = Refusal {
            reason: "no-connection",
            code: CloseCode::Policy,
            detail: why,
        };
        tracing::info!(flow = self.flow.id, detail = %r.detail, "websocket closed: observe mode ended");
        for side in [&self.job, &self.up] {
            let _ = send(side, Message::Close(Some(r.frame()))).await;
        }
        Some(r)
    }

    /// One direction: each message from `from` checked, recorded and
    /// passed on, to the end of `from`.
    async fn pump<S>(&self, dir: Dir, mut from: S) -> Ended
    where
        S: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let (to, back) = match dir {
            Dir::Send => (&self.up, &self.job),
            Dir::Receive => (&self.job, &self.up),
        };
        while let Some(read) = from.next().await {
            let msg = match read {
                Ok(m) => m,
                Err(e) => return self.read_failed(dir, &e).await,
            };
            let out = self.inspect(dir, msg);
            let closing = out.is_close();
            if let Err(e) = send(to, out).await
                && !closing
            {
                // The other side is gone: so is this WebSocket.
                let other = match dir {
                    Dir::Send => "the upstream",
                    Dir::Receive => "the job",
                };
                close_with(back, CloseCode::Away, format!("hoop: {other} went away")).await;
                let gone = match dir {
                    Dir::Send => Dir::Receive,
                    Dir::Receive => Dir::Send,
                };
                return Ended::Done(gone, format!("{other} went away: {e}"));
            }
            // After a close the sender's stream still ends by itself.
        }
        Ended::Done(dir, "the connection ended".into())
    }

    /// Policy and the record, for one message.
    fn inspect(&self, dir: Dir, msg: Message) -> Message {
        let i = Inspector::of(&self.route);
        let mut masked = Counts::default();
        let out = i.pass(dir, msg, &mut masked);
        let hits = masked.get(CANARY);
        if hits > 0 {
            tracing::warn!(
                target: "hoop::audit",
                flow = self.flow.id, connection = %self.route.name,
                identity = %self.flow.identity_name(), place = "websocket message", hits,
                "credential leak masked: the upstream echoed the connection's credential"
            );
        }
        let mut rec = self.rec.lock().unwrap();
        let kept = i.recorded(record::parts(&out).1, rec.cap);
        rec.add(dir, &out, kept, masked);
        out
    }

    /// A read error: a refused frame closes both sides; a peer gone closes
    /// the other side.
    async fn read_failed(&self, dir: Dir, e: &WsError) -> Ended {
        let Some(r) = refusal(e) else {
            let (other, who) = match dir {
                Dir::Send => (&self.up, "the job"),
                Dir::Receive => (&self.job, "the upstream"),
            };
            close_with(other, CloseCode::Away, format!("hoop: {who} went away")).await;
            return Ended::Done(dir, format!("{who} went away: {e}"));
        };
        tracing::warn!(
            flow = self.flow.id, connection = %self.route.name, from = dir.as_str(),
            reason = r.reason, detail = %r.detail, "websocket refused: closing both sides"
        );
        let _ = tokio::join!(
            send(&self.job, Message::Close(Some(r.frame()))),
            send(&self.up, Message::Close(Some(r.frame())))
        );
        Ended::Refused(r)
    }
}

/// Sends on one side, for at most `CLOSE_GRACE` when that side stalls.
async fn send(to: &Sink, m: Message) -> Result<(), WsError> {
    let mut s = to.lock().await;
    match tokio::time::timeout(CLOSE_GRACE, s.send(m)).await {
        Ok(r) => r,
        Err(_) => Err(WsError::Io(std::io::ErrorKind::TimedOut.into())),
    }
}

async fn close_with(to: &Sink, code: CloseCode, reason: String) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = send(to, Message::Close(Some(frame))).await;
}
