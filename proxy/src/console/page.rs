//! The console's web page: a login form, then the API Tokens and API Keys
//! settings (and, for admins, the audit log), all of it in the binary. The
//! page is plain HTML, CSS and a script of its own that calls the JSON API
//! with the session cookie and the CSRF token the server writes into it.

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode, header};

use super::{Console, Reply, reply, session};
use sessiongate_store::users;

const APP: &str = include_str!("page/app.html");
const LOGIN: &str = include_str!("page/login.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

/// Where the CSRF token goes in the app's HTML.
const CSRF_SLOT: &str = "{{csrf}}";
/// Where a failed login's message goes in the login form.
const MESSAGE_SLOT: &str = "{{message}}";

pub(super) fn serve(console: &Console, parts: &Parts, body: &Bytes) -> Reply {
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/") => match console.sessions.find(&parts.headers) {
            Some(s) => html(StatusCode::OK, APP.replace(CSRF_SLOT, &s.csrf)),
            None => redirect("/login", None),
        },
        (&Method::GET, "/login") => login_form(StatusCode::OK, ""),
        (&Method::POST, "/login") => log_in(console, parts, body),
        (&Method::POST, "/logout") => log_out(console, parts, body),
        (&Method::GET, "/assets/app.js") => {
            reply(StatusCode::OK, "text/javascript; charset=utf-8", SCRIPT)
        }
        (&Method::GET, "/assets/app.css") => {
            reply(StatusCode::OK, "text/css; charset=utf-8", STYLE)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    }
}

/// Every page forbids framing and anything not from the console itself.
fn html(status: StatusCode, text: String) -> Reply {
    let mut r = reply(status, "text/html; charset=utf-8", text);
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn login_form(status: StatusCode, message: &str) -> Reply {
    html(status, LOGIN.replace(MESSAGE_SLOT, &escape(message)))
}

fn redirect(to: &'static str, cookie: Option<String>) -> Reply {
    let mut r = reply(StatusCode::SEE_OTHER, "text/plain; charset=utf-8", "");
    r.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static(to));
    if let Some(cookie) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    r
}

/// A form post from another site is refused. Browsers say where a request
/// comes from in `Sec-Fetch-Site` (Chromium sends `Origin: null` on some
/// same-origin form posts, so that header alone would refuse the page's
/// own); older ones only in `Origin`. A request with neither is no
/// browser's, and carries no cookie it did not mean to.
fn same_origin(parts: &Parts) -> bool {
    let header = |name| {
        parts
            .headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if let Some(site) = header("sec-fetch-site") {
        return site == "same-origin";
    }
    let Some(origin) = header(header::ORIGIN.as_str()) else {
        return true;
    };
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    header(header::HOST.as_str()).is_some_and(|host| origin_host == Some(host))
}

fn log_in(console: &Console, parts: &Parts, body: &Bytes) -> Reply {
    if !same_origin(parts) {
        return login_form(
            StatusCode::FORBIDDEN,
            "This form was sent from another site.",
        );
    }
    let secret = form_field(body, "secret").unwrap_or_default();
    let stored = match users::load(&console.store) {
        Ok(stored) => stored,
        Err(e) => {
            crate::log::error(format_args!("console: the token store failed: {e:#}"));
            return login_form(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The store cannot be read; try again.",
            );
        }
    };
    let Some(user) = users::authenticate(&stored, secret.trim()) else {
        return login_form(StatusCode::UNAUTHORIZED, "That login secret is unknown.");
    };
    match console.sessions.start(&user.name) {
        Some((id, _)) => redirect("/", Some(session::set_cookie(&id, console.secure_cookie))),
        None => login_form(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No session could be started.",
        ),
    }
}

fn log_out(console: &Console, parts: &Parts, body: &Bytes) -> Reply {
    let Some(s) = console.sessions.find(&parts.headers) else {
        return redirect("/login", Some(session::clear_cookie(console.secure_cookie)));
    };
    let sent = form_field(body, "csrf").unwrap_or_default();
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&sent) {
        headers.insert(session::CSRF_HEADER, v);
    }
    if !same_origin(parts) || !s.csrf_matches(&headers) {
        return reply(
            StatusCode::FORBIDDEN,
            "text/plain; charset=utf-8",
            "log out from the page\n",
        );
    }
    console.sessions.end(&parts.headers);
    redirect("/login", Some(session::clear_cookie(console.secure_cookie)))
}

/// One field of an `application/x-www-form-urlencoded` body.
fn form_field(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name)
            .then(|| super::percent_decode(v, true))
            .flatten()
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(
            form_field(b"a=1&secret=sgu_a%2Fb+c&x", "secret").as_deref(),
            Some("sgu_a/b c")
        );
        assert_eq!(form_field(b"a=1", "secret"), None);
    }
}
