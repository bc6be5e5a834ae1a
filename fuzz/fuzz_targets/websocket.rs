//! WebSocket frames from either side, through the parser and the policy
//! the daemon runs after an upgrade (bounded, no extensions, the leak
//! canary and masking toward the job). Beyond not panicking: a read error
//! is a refusal with a close frame that fits, or a peer gone; every message
//! passed on re-encodes as a frame the other side parses back to the same
//! message; the secret never reaches the job; the canary keeps a control
//! frame's length (so it stays a control frame, under 126 bytes).
#![no_main]
use std::{
    io::{Cursor, Read, Write},
    sync::Arc,
};

use hoop::{
    config::policy::CredentialConfig,
    pipeline::websocket::{
        Dir, Inspector, config, refusal,
        tungstenite::{Message, WebSocket, protocol::Role},
    },
    policy::{
        canary::Canary,
        credential::Credential,
        mask::{Counts, MaskConfig, Masker},
    },
};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret-0123456789";
const MAX: usize = 4096;

/// Reads from a fixed input, writes into a buffer.
struct Io {
    r: Cursor<Vec<u8>>,
    w: Vec<u8>,
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn io(input: Vec<u8>) -> Io {
    Io {
        r: Cursor::new(input),
        w: Vec::new(),
    }
}

fn policy() -> (Arc<Canary>, Masker) {
    let secret = std::env::temp_dir().join(format!("hoop-fuzz-ws-{}", std::process::id()));
    std::fs::write(&secret, SECRET).unwrap();
    let c: CredentialConfig =
        toml::from_str(&format!("secret = {{ file = \"{}\" }}", secret.display())).unwrap();
    let canary = Credential::new(&c).unwrap().canary.clone();
    let m: MaskConfig =
        toml::from_str("json = [\"$..card\"]\ndetectors = [\"credit_card\", \"email\"]\n").unwrap();
    (canary, Masker::compile(&m).unwrap())
}

fn opposite(r: Role) -> Role {
    match r {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    }
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static P: (Arc<Canary>, Masker) = policy();
    }
    let Some((&first, frames)) = data.split_first() else {
        return;
    };
    // The first byte picks the sender: the job (hoop reads as the server,
    // frames must be masked) or the upstream (as the client, unmasked).
    let (dir, role) = if first & 1 == 0 {
        (Dir::Send, Role::Server)
    } else {
        (Dir::Receive, Role::Client)
    };
    P.with(|(canary, masker)| {
        let inspect = Inspector::new(Some(&**canary), Some(masker));
        let mut ws = WebSocket::from_raw_socket(io(frames.to_vec()), role, Some(config(MAX)));
        for _ in 0..64 {
            let msg = match ws.read() {
                Ok(m) => m,
                Err(e) => {
                    if let Some(r) = refusal(&e) {
                        assert!(r.frame().reason.len() <= 123, "{r:?}");
                    }
                    return;
                }
            };
            // Toward the other side hoop plays the other role.
            check(&inspect, dir, opposite(role), msg);
        }
    });
});

/// One message through policy, sent on as hoop does (in role `sender`)
/// and read back by the other side.
fn check(inspect: &Inspector<'_>, dir: Dir, sender: Role, msg: Message) {
    let mut counts = Counts::default();
    let before = msg.clone();
    let out = inspect.pass(dir, msg, &mut counts);
    if dir == Dir::Receive {
        let payload = match &out {
            Message::Close(Some(f)) => f.reason.as_bytes().to_vec(),
            m => m.clone().into_data().to_vec(),
        };
        assert!(
            !payload
                .windows(SECRET.len())
                .any(|w| w == SECRET.as_bytes()),
            "the secret reached the job: {out:?}"
        );
        if matches!(
            before,
            Message::Ping(_) | Message::Pong(_) | Message::Close(_)
        ) {
            assert_eq!(before.len(), out.len(), "a control frame changed length");
        }
    } else {
        assert_eq!(before, out, "a job's message was changed on its way up");
    }
    let mut tx = WebSocket::from_raw_socket(io(Vec::new()), sender, None);
    if tx.send(out.clone()).is_err() {
        return;
    }
    let wire = std::mem::take(&mut tx.get_mut().w);
    let mut rx = WebSocket::from_raw_socket(io(wire), opposite(sender), Some(config(MAX)));
    let back = rx.read().expect("hoop's frame parses on the other side");
    assert_eq!(
        back, out,
        "the frame hoop sent reads back as another message"
    );
}
