//! The one login policy for a cluster with authentication on, as a state
//! machine a driver feeds: the filter (its callouts), `serve`'s client and
//! the CLI (through that client) all go through [`Attempt`].
//!
//! A call goes with the token the driver holds; with none, a login first.
//! A call that etcd refuses for its token (expired, or etcd restarted)
//! forgets it and goes once more after a fresh login; a second refusal is
//! the answer. The driver keeps the token between calls (a VM's, a
//! client's): the policy keeps only where one call is.

use crate::codec::{excerpt, string_field, text};

/// The gateway's path of a login.
pub const AUTHENTICATE: &str = "/v3/auth/authenticate";

/// The shortest deadline a login gets. etcd checks the password with
/// bcrypt (cost 10: ~90 ms on an idle core here, ~230 ms with the cores
/// three times over-subscribed), so the limiter's step deadline (250 ms by
/// default) would fail logins exactly when the machine is busy, and each
/// request that follows would try again, adding bcrypt load to the cluster.
pub const LOGIN_TIMEOUT_MS: u32 = 2_000;

/// etcd's user and password, for a cluster with authentication on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// etcd's user name.
    pub user: &'a str,
    /// Its password (never logged).
    pub password: &'a str,
}

impl<'a> Credentials<'a> {
    /// Both or neither: a user without a password is no login.
    pub fn of(user: Option<&'a str>, password: Option<&'a str>) -> Option<Credentials<'a>> {
        Some(Credentials {
            user: user?,
            password: password?,
        })
    }
}

/// What the driver does next for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'t> {
    /// `POST` [`AUTHENTICATE`] with `body` within `timeout_ms`, hand the
    /// answer to [`Attempt::logged_in`], and ask again.
    LogIn {
        /// The login's JSON body.
        body: String,
        /// The login's deadline: at least [`LOGIN_TIMEOUT_MS`].
        timeout_ms: u32,
    },
    /// Send the call with this token (`None`: no authentication) and hand
    /// the answer to [`Attempt::answered`].
    Send {
        /// The `Authorization` value, when the cluster has a login.
        token: Option<&'t str>,
    },
}

/// What an answer means for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// The answer is the call's (whatever its status).
    Done,
    /// etcd refused the token: the driver forgets it and asks
    /// [`Attempt::next`] again (a login, then the same call).
    Again,
}

/// Where one call is in the login policy. Owns nothing, so a paused
/// request (the filter's) keeps it across callouts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attempt {
    relogged: bool,
}

impl Attempt {
    /// A call not yet sent.
    pub fn new() -> Attempt {
        Attempt::default()
    }

    /// The next step of the call: a login when the cluster has one and the
    /// driver holds no token, else the call itself.
    pub fn next<'t>(
        &self,
        login: Option<Credentials<'_>>,
        token: Option<&'t str>,
        timeout_ms: u32,
    ) -> Step<'t> {
        match (login, token) {
            (Some(login), None) => Step::LogIn {
                body: authenticate(login),
                timeout_ms: timeout_ms.max(LOGIN_TIMEOUT_MS),
            },
            (Some(_), token) => Step::Send { token },
            (None, _) => Step::Send { token: None },
        }
    }

    /// The token in a login's answer (`status`: `None` when it got none),
    /// for the driver to keep; an error is the call's failure.
    pub fn logged_in(&self, status: Option<u16>, body: &[u8]) -> Result<String, String> {
        token(status, body)
    }

    /// What the call's answer means: [`After::Again`] once, when etcd
    /// refused the token of a cluster with a login.
    pub fn answered(
        &mut self,
        login: Option<Credentials<'_>>,
        status: Option<u16>,
        body: &[u8],
    ) -> After {
        if login.is_some() && !self.relogged && needs_login(status, body) {
            self.relogged = true;
            After::Again
        } else {
            After::Done
        }
    }
}

/// The login call's body.
fn authenticate(login: Credentials<'_>) -> String {
    // Serialising a str cannot fail.
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    format!(
        r#"{{"name":{},"password":{}}}"#,
        quote(login.user),
        quote(login.password)
    )
}

/// The token in an answer to a login.
fn token(status: Option<u16>, body: &[u8]) -> Result<String, String> {
    match status {
        Some(200) => string_field(text(body)?, "token")
            .map(str::to_owned)
            .ok_or_else(|| format!("etcd's login answer has no token: {}", excerpt(body))),
        Some(status) => Err(format!(
            "etcd refused the login ({status}): {}",
            excerpt(body)
        )),
        None => Err("etcd did not answer the login".to_owned()),
    }
}

/// Whether an answer says the call's token is missing, expired or invalid
/// (log in again and retry), rather than anything about the key.
fn needs_login(status: Option<u16>, body: &[u8]) -> bool {
    if status == Some(401) {
        return true;
    }
    let text = String::from_utf8_lossy(body);
    status != Some(200)
        && (text.contains("invalid auth token")
            || text.contains("user name is empty")
            || text.contains("\"code\":16"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: Credentials<'static> = Credentials {
        user: "root",
        password: "p\"w",
    };
    const EXPIRED: &[u8] = br#"{"error":"etcdserver: invalid auth token","code":16}"#;

    #[test]
    fn without_a_login_a_call_goes_as_it_is() {
        let mut a = Attempt::new();
        assert_eq!(a.next(None, None, 250), Step::Send { token: None });
        // Even a refusal is the answer: there is nothing to log in with.
        assert_eq!(a.answered(None, Some(401), EXPIRED), After::Done);
    }

    #[test]
    fn with_a_login_and_no_token_a_login_comes_first() {
        let a = Attempt::new();
        let Step::LogIn { body, timeout_ms } = a.next(Some(ROOT), None, 250) else {
            panic!("no login");
        };
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (body["name"].as_str(), body["password"].as_str()),
            (Some("root"), Some("p\"w"))
        );
        assert_eq!(
            timeout_ms, LOGIN_TIMEOUT_MS,
            "a login gets its own deadline"
        );
        assert_eq!(
            a.next(Some(ROOT), Some("t.1"), 250),
            Step::Send { token: Some("t.1") }
        );
    }

    #[test]
    fn a_login_gets_at_least_its_own_deadline() {
        let deadline = |step: u32| match Attempt::new().next(Some(ROOT), None, step) {
            Step::LogIn { timeout_ms, .. } => timeout_ms,
            Step::Send { .. } => 0,
        };
        assert_eq!(deadline(0), LOGIN_TIMEOUT_MS);
        assert_eq!(deadline(250), LOGIN_TIMEOUT_MS);
        assert_eq!(deadline(5_000), 5_000);
    }

    #[test]
    fn a_refused_token_is_logged_in_again_once() {
        let mut a = Attempt::new();
        assert_eq!(a.answered(Some(ROOT), Some(401), EXPIRED), After::Again);
        assert_eq!(a.answered(Some(ROOT), Some(400), EXPIRED), After::Done);
        let mut b = Attempt::new();
        assert_eq!(b.answered(Some(ROOT), Some(400), EXPIRED), After::Again);
        // Anything else is about the key or the cluster, not the token.
        let mut c = Attempt::new();
        assert_eq!(
            c.answered(Some(ROOT), Some(200), br#"{"header":{}}"#),
            After::Done
        );
        let timed_out = br#"{"error":"etcdserver: request timed out","code":14}"#;
        assert_eq!(c.answered(Some(ROOT), Some(503), timed_out), After::Done);
        assert_eq!(c.answered(Some(ROOT), None, b""), After::Done);
    }

    #[test]
    fn login_answers() {
        let a = Attempt::new();
        assert_eq!(
            a.logged_in(Some(200), br#"{"header":{},"token":"abc.42"}"#),
            Ok("abc.42".to_owned())
        );
        let failed = br#"{"error":"etcdserver: authentication failed"}"#;
        assert!(a.logged_in(Some(400), failed).is_err());
        assert!(a.logged_in(None, b"").is_err());
        assert!(a.logged_in(Some(200), b"{}").is_err());
    }

    #[test]
    fn credentials_are_both_or_neither() {
        assert_eq!(Credentials::of(Some("u"), None), None);
        assert_eq!(Credentials::of(None, Some("p")), None);
        assert!(Credentials::of(Some("u"), Some("p")).is_some());
    }

    proptest::proptest! {
        /// Whatever a member sends back, a login's answer is read without
        /// a panic: a proxy-wasm VM must not panic on it.
        #[test]
        fn any_login_answer_is_read_without_a_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            status in proptest::option::of(100u16..600),
        ) {
            let mut a = Attempt::new();
            let _ = a.logged_in(status, &body);
            let _ = a.answered(Some(ROOT), status, &body);
        }
    }
}
