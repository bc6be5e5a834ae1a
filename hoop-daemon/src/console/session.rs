//! Who is signed in, kept in the daemon's memory only: the cookie carries a
//! random 256-bit id and nothing else, so it can't be forged or edited
//! into someone else's, and a restart signs everyone out. Each session has
//! its own CSRF token. Sign-ins in progress (the provider's round trip)
//! are kept the same way, keyed by their `state`, and are taken once.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use crate::approval::Person;

/// The cookie's name: `__Host-` makes the browser refuse it unless it is
/// Secure, for path /, and without a Domain.
pub const COOKIE: &str = "__Host-hoop-console";
/// The sign-in under way in this browser: its `state`, so that a callback
/// URL made in another browser (login CSRF) is refused. SameSite=Lax: it
/// must ride along the provider's redirect back.
pub const LOGIN_COOKIE: &str = "__Host-hoop-login";
/// Sessions one person may hold at once (their oldest goes first).
const PER_PERSON: usize = 8;
/// A sign-in must come back from the provider within this.
const LOGIN_WINDOW: Duration = Duration::from_secs(600);
/// Bounds on what an unauthenticated visitor can make the daemon keep.
const MAX_PENDING: usize = 1024;
const MAX_SESSIONS: usize = 4096;

#[derive(Debug, Clone)]
pub struct Session {
    pub person: Person,
    pub csrf: String,
    pub expires: Instant,
}

/// A sign-in between the redirect to the provider and its callback.
pub struct Pending {
    pub pkce_verifier: String,
    pub nonce: String,
    pub expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
    pending: Mutex<HashMap<String, Pending>>,
}

pub fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source works");
    URL_SAFE_NO_PAD.encode(b)
}

impl Sessions {
    /// Remembers a sign-in under way; its `state`. None when too many
    /// are under way: a flood of unfinished sign-ins neither grows memory
    /// nor pushes out someone else's.
    pub fn begin(&self, pkce_verifier: String, nonce: String) -> Option<String> {
        let state = random_token();
        let mut p = self.pending.lock().unwrap();
        let now = Instant::now();
        p.retain(|_, v| v.expires > now);
        if p.len() >= MAX_PENDING {
            return None;
        }
        p.insert(
            state.clone(),
            Pending {
                pkce_verifier,
                nonce,
                expires: now + LOGIN_WINDOW,
            },
        );
        Some(state)
    }

    /// The sign-in `state` names, once.
    pub fn finish(&self, state: &str) -> Option<Pending> {
        let p = self.pending.lock().unwrap().remove(state)?;
        (p.expires > Instant::now()).then_some(p)
    }

    /// A new session for `person`: its id (the cookie's value). A person
    /// over their share loses their own oldest session; when every slot is
    /// taken by others, None.
    pub fn open(&self, person: Person, ttl: Duration) -> Option<(String, Session)> {
        let id = random_token();
        let mut live = self.live.lock().unwrap();
        let now = Instant::now();
        live.retain(|_, v| v.expires > now);
        let mine: Vec<(String, Instant)> = live
            .iter()
            .filter(|(_, v)| v.person.issuer == person.issuer && v.person.sub == person.sub)
            .map(|(k, v)| (k.clone(), v.expires))
            .collect();
        if mine.len() >= PER_PERSON
            && let Some((k, _)) = mine.iter().min_by_key(|(_, e)| *e)
        {
            live.remove(k);
        }
        if live.len() >= MAX_SESSIONS {
            return None;
        }
        let s = Session {
            person,
            csrf: random_token(),
            expires: now + ttl,
        };
        live.insert(id.clone(), s.clone());
        Some((id, s))
    }

    /// The live session a cookie header names, if any.
    pub fn get(&self, cookie_header: Option<&str>) -> Option<(String, Session)> {
        let id = cookie_value(cookie_header?, COOKIE)?;
        let live = self.live.lock().unwrap();
        let s = live.get(id)?;
        (s.expires > Instant::now()).then(|| (id.to_string(), s.clone()))
    }

    pub fn close(&self, id: &str) {
        self.live.lock().unwrap().remove(id);
    }
}

/// `name`'s value in a Cookie header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The Set-Cookie value for a session.
pub fn set_cookie(id: &str, ttl: Duration) -> String {
    format!(
        "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        ttl.as_secs()
    )
}

pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The Set-Cookie value binding a sign-in's `state` to this browser.
pub fn login_cookie(state: &str) -> String {
    format!(
        "{LOGIN_COOKIE}={state}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        LOGIN_WINDOW.as_secs()
    )
}

pub fn clear_login_cookie() -> String {
    format!("{LOGIN_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// Compares secrets without stopping at the first difference. (The tokens
/// have one length; only their contents are secret.)
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Person {
        Person {
            issuer: "https://idp".into(),
            sub: "a".into(),
            email: Some("alice@acme.example".into()),
            name: None,
            groups: vec![],
        }
    }

    #[test]
    fn a_cookie_names_a_session_only_as_issued() {
        let s = Sessions::default();
        let (id, sess) = s.open(alice(), Duration::from_secs(60)).unwrap();
        let header = format!("other=1; {COOKIE}={id}");
        let (got, found) = s.get(Some(&header)).unwrap();
        assert_eq!(
            (got.as_str(), found.person.sub.as_str()),
            (id.as_str(), "a")
        );
        assert_eq!(found.csrf, sess.csrf);
        // One character changed, a prefix, someone else's name: nothing.
        let mut tampered = id.clone().into_bytes();
        tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        for h in [
            format!("{COOKIE}={tampered}"),
            format!("{COOKIE}={}", &id[..20]),
            format!("hoop-console={id}"),
            String::new(),
        ] {
            assert!(s.get(Some(&h)).is_none(), "{h}");
        }
        s.close(&id);
        assert!(s.get(Some(&header)).is_none(), "signed out");
        let (id, _) = s.open(alice(), Duration::ZERO).unwrap();
        assert!(s.get(Some(&format!("{COOKIE}={id}"))).is_none(), "expired");
    }

    #[test]
    fn a_sign_in_state_is_taken_once() {
        let s = Sessions::default();
        let state = s.begin("v".into(), "n".into()).unwrap();
        assert!(s.finish("forged").is_none());
        assert_eq!(s.finish(&state).unwrap().pkce_verifier, "v");
        assert!(s.finish(&state).is_none(), "replayed");
        // A flood of sign-ins never started fills up, and is refused, not
        // let push out those under way.
        let mine = s.begin("mine".into(), "n".into()).unwrap();
        let mut refused = 0;
        for _ in 0..MAX_PENDING + 10 {
            refused += s.begin("x".into(), "n".into()).is_none() as usize;
        }
        assert_eq!(refused, 11);
        assert_eq!(s.finish(&mine).unwrap().pkce_verifier, "mine");
    }

    #[test]
    fn a_person_over_their_share_loses_their_own_oldest_session() {
        let s = Sessions::default();
        let ids: Vec<String> = (0..PER_PERSON + 1)
            .map(|_| s.open(alice(), Duration::from_secs(60)).unwrap().0)
            .collect();
        let live = |id: &String| s.get(Some(&format!("{COOKIE}={id}"))).is_some();
        assert!(!live(&ids[0]), "the oldest stays");
        assert!(ids[1..].iter().all(live));
    }
}
