//! Routing (contract section 1): which route a raw request target names.

/// The API prefix whose responses carry the rate-limit headers.
pub(crate) const API_PREFIX: &str = "/v1/external/";
const SESSIONS_PREFIX: &str = "/v1/external/sessions/";
/// Longest allowed id segment.
pub(crate) const MAX_ID_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    /// `GET /v1/external/sessions/{customerId}/{siteId}`
    Sessions {
        customer: &'a str,
        site: &'a str,
    },
    /// `GET /me`, answered by the gate itself.
    Me,
    NotFound,
}

/// Splits a request target into its path and its raw query (without the `?`).
pub(crate) fn split_target(target: &str) -> (&str, Option<&str>) {
    match split_at_ascii(target, b'?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    }
}

/// `str::split_once` for one ASCII byte, as a byte search (`split_once`
/// runs the general pattern searcher). An ASCII byte is a char boundary, so
/// both halves are whole text.
fn split_at_ascii(s: &str, byte: u8) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == byte)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

/// `[A-Za-z0-9._-]{1,128}`, not `.` or `..`. Anything percent-encoded fails here,
/// so `%2F` can never smuggle a slash into an id.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Routes a path (no query). Exact match only: no trailing slash, no extra segment,
/// no normalisation of dot segments or doubled slashes.
pub(crate) fn route(path: &str) -> Route<'_> {
    if path == "/me" {
        return Route::Me;
    }
    let Some(rest) = path.strip_prefix(SESSIONS_PREFIX) else {
        return Route::NotFound;
    };
    let Some((customer, site)) = split_at_ascii(rest, b'/') else {
        return Route::NotFound;
    };
    if is_valid_id(customer) && is_valid_id(site) {
        Route::Sessions { customer, site }
    } else {
        Route::NotFound
    }
}

/// Whether a response to this path belongs to the rate-limited API.
pub(crate) fn is_limited_api(path: &str) -> bool {
    path.starts_with(API_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sessions_route() {
        assert_eq!(
            route("/v1/external/sessions/acme/site-1"),
            Route::Sessions {
                customer: "acme",
                site: "site-1"
            }
        );
        assert_eq!(
            route("/v1/external/sessions/A.b_c-9/x.y"),
            Route::Sessions {
                customer: "A.b_c-9",
                site: "x.y"
            }
        );
    }

    #[test]
    fn me_is_exact() {
        assert_eq!(route("/me"), Route::Me);
        assert_eq!(route("/me/"), Route::NotFound);
        assert_eq!(route("/ME"), Route::NotFound);
    }

    #[test]
    fn anything_else_is_not_found() {
        for path in [
            "",
            "/",
            "/v1/external/sessions",
            "/v1/external/sessions/",
            "/v1/external/sessions/acme",
            "/v1/external/sessions/acme/",
            "/v1/external/sessions/acme/site/",
            "/v1/external/sessions/acme/site/extra",
            "/v1/external/sessions//site",
            "/v1/external/sessions/acme//site",
            "/v1/external/sessions/acme%2Fsite/x",
            "/v1/external/sessions/acme/site%2Fx",
            "/v1/external/sessions/./site",
            "/v1/external/sessions/acme/..",
            "/v1/external/sessions/ac me/site",
            "/v1/external/sessions/acmé/site",
            "//v1/external/sessions/acme/site",
            "/v1/external//sessions/acme/site",
            "/V1/external/sessions/acme/site",
            "http://host/v1/external/sessions/acme/site",
            "/v1/external/other",
        ] {
            assert_eq!(route(path), Route::NotFound, "{path:?}");
        }
    }

    #[test]
    fn id_length_bounds() {
        let ok = "a".repeat(MAX_ID_LEN);
        let long = "a".repeat(MAX_ID_LEN + 1);
        assert!(is_valid_id(&ok));
        assert!(!is_valid_id(&long));
        assert!(is_valid_id("..."));
        assert!(!is_valid_id(""));
    }

    #[test]
    fn targets_split_at_the_first_question_mark() {
        assert_eq!(split_target("/me"), ("/me", None));
        assert_eq!(split_target("/a?b=1?c"), ("/a", Some("b=1?c")));
        assert_eq!(split_target("/a?"), ("/a", Some("")));
    }
}
