//! How a WebSocket ends when hoop ends it. After the switch there is no
//! HTTP answer left to give: a frame hoop refuses closes both sides with a
//! close frame whose reason names why (`hoop: <reason>`, the
//! `x-hoop-reason` of WebSockets), and the record says so.
use tokio_tungstenite::tungstenite::{
    Error as WsError,
    error::ProtocolError,
    protocol::{CloseFrame, frame::coding::CloseCode},
};

/// Why hoop closed a WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable, machine-readable, like `x-hoop-reason`.
    pub reason: &'static str,
    pub code: CloseCode,
    pub detail: String,
}

impl Refusal {
    /// The close frame both sides get.
    pub fn frame(&self) -> CloseFrame {
        CloseFrame {
            code: self.code,
            reason: format!("hoop: {}", self.reason).into(),
        }
    }
}

/// What a read error means: a frame hoop refuses (`Some`), or the peer
/// going away (`None`: a reset, a close without a close frame).
pub fn refusal(e: &WsError) -> Option<Refusal> {
    let (reason, code) = match e {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Io(_)
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return None,
        // An extension's frame (permessage-deflate sets RSV1): hoop
        // negotiated none and can't read it.
        WsError::Protocol(ProtocolError::NonZeroReservedBits) => {
            ("frame-not-inspectable", CloseCode::Unsupported)
        }
        WsError::Capacity(_) => ("message-too-big", CloseCode::Size),
        WsError::Utf8(_) => ("websocket-protocol-error", CloseCode::Invalid),
        _ => ("websocket-protocol-error", CloseCode::Protocol),
    };
    Some(Refusal {
        reason,
        code,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::error::CapacityError;

    use super::*;

    #[test]
    fn read_errors_become_refusals_with_a_close_code_or_a_peer_gone() {
        let cases = [
            (
                WsError::Protocol(ProtocolError::NonZeroReservedBits),
                Some(("frame-not-inspectable", 1003)),
            ),
            (
                WsError::Protocol(ProtocolError::UnmaskedFrameFromClient),
                Some(("websocket-protocol-error", 1002)),
            ),
            (
                WsError::Protocol(ProtocolError::MaskedFrameFromServer),
                Some(("websocket-protocol-error", 1002)),
            ),
            (
                WsError::Capacity(CapacityError::MessageTooLong {
                    size: 2,
                    max_size: 1,
                }),
                Some(("message-too-big", 1009)),
            ),
            (
                WsError::Utf8("bad".into()),
                Some(("websocket-protocol-error", 1007)),
            ),
            (WsError::ConnectionClosed, None),
            (
                WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                None,
            ),
        ];
        for (e, want) in cases {
            let got = refusal(&e).map(|r| (r.reason, u16::from(r.code)));
            assert_eq!(got, want, "{e}");
        }
        let r = refusal(&WsError::Protocol(ProtocolError::NonZeroReservedBits)).unwrap();
        assert_eq!(r.frame().reason.as_str(), "hoop: frame-not-inspectable");
    }
}
