//! The page's login sessions: a random id in an `HttpOnly`, `SameSite=Strict`
//! cookie, and a CSRF token the page sends back on every change. Kept in
//! this process's memory, by the id's SHA-256 (a restart logs everyone out).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use sessiongate_core::{hash_hex, hash_secret};

/// The session cookie's name.
pub const COOKIE: &str = "sessiongate_session";
/// A session ends this long after its login, used or not.
pub const LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);
/// The header a change made with the cookie carries the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    started: Instant,
}

impl Session {
    pub fn csrf_matches(&self, headers: &HeaderMap) -> bool {
        headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|sent| constant_time_eq(sent.as_bytes(), self.csrf.as_bytes()))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Default)]
pub struct Sessions {
    by_digest: Mutex<HashMap<String, Session>>,
}

/// 32 random bytes, hex.
fn random_hex() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn digest(id: &str) -> String {
    hash_hex(&hash_secret(id.as_bytes()))
}

/// The session id a request's `Cookie` headers carry, if any.
fn cookie_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

impl Sessions {
    /// Starts a session for `user`: the cookie's id and the CSRF token.
    pub fn start(&self, user: &str) -> Option<(String, String)> {
        let id = random_hex()?;
        let csrf = random_hex()?;
        let mut map = self.by_digest.lock().ok()?;
        map.retain(|_, s| s.started.elapsed() < LIFETIME);
        map.insert(
            digest(&id),
            Session {
                user: user.to_owned(),
                csrf: csrf.clone(),
                started: Instant::now(),
            },
        );
        Some((id, csrf))
    }

    /// The live session a request's cookie names.
    pub fn find(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie_id(headers)?;
        let map = self.by_digest.lock().ok()?;
        map.get(&digest(&id))
            .filter(|s| s.started.elapsed() < LIFETIME)
            .cloned()
    }

    /// Ends the session a request's cookie names (log out).
    pub fn end(&self, headers: &HeaderMap) {
        if let (Some(id), Ok(mut map)) = (cookie_id(headers), self.by_digest.lock()) {
            map.remove(&digest(&id));
        }
    }
}

/// The `Set-Cookie` value of a new session.
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes it.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_cookie_and_ended() {
        let sessions = Sessions::default();
        let (id, csrf) = sessions.start("ann").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            format!("a=b; {COOKIE}={id}; c=d").parse().unwrap(),
        );
        let found = sessions.find(&headers).unwrap();
        assert_eq!(found.user, "ann");
        assert!(!found.csrf_matches(&headers));
        headers.insert(CSRF_HEADER, csrf.parse().unwrap());
        assert!(found.csrf_matches(&headers));
        assert!(
            !sessions.by_digest.lock().unwrap().contains_key(&id),
            "kept by digest"
        );
        sessions.end(&headers);
        assert!(sessions.find(&headers).is_none());
    }
}
