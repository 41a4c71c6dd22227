//! A credential's life on a build: admitted on the next request after its
//! mint, refused on the next after its revocation, and from its expiry on
//! refused with the body of one that never existed.

use std::time::{Duration, Instant};

use crate::http::get;
use crate::{Harness, PATIENCE, SESSIONS, bearer, ensure, eventually, expect_error, expect_ok};

pub(crate) fn revocation(h: &mut dyn Harness) -> Result<(), String> {
    let name = format!("revoke-me-{}", std::process::id());
    let token = h.mint(&name)?;
    let addr = h.addr();
    // `mint` and `revoke` return once the build has the change: the next
    // request sees it, without polling.
    expect_ok(&get(addr, "/me", Some(&bearer(&token)))?)
        .map_err(|e| format!("a new token did not work on the next request: {e}"))?;
    expect_ok(&get(addr, SESSIONS, Some(&bearer(&token)))?)?;
    h.revoke(&name)?;
    expect_error(
        &get(addr, "/me", Some(&bearer(&token)))?,
        401,
        "invalid_credentials",
    )
    .map_err(|e| format!("the next request after the revocation: {e}"))?;
    expect_error(
        &get(addr, SESSIONS, Some(&bearer(&token)))?,
        401,
        "invalid_credentials",
    )
    .map(|_| ())
}

/// A token minted to expire shortly: admitted before (its mint returned in
/// time, or the case tries again with a longer time), refused after with the
/// body of a token that never existed, and never refused before.
pub(crate) fn expiry(h: &mut dyn Harness) -> Result<(), String> {
    let addr = h.addr();
    let unknown = get(
        addr,
        SESSIONS,
        Some(&bearer(&format!("fus_{}", "0".repeat(40)))),
    )?;
    expect_error(&unknown, 401, "invalid_credentials")?;
    let mut expires_in = Duration::from_secs(4);
    for attempt in 0..4 {
        let minting = Instant::now();
        let name = format!("expires-{attempt}-{}", std::process::id());
        let token = h.mint_with(&name, Some(expires_in))?;
        let me = get(addr, "/me", Some(&bearer(&token)))?;
        let page = get(addr, SESSIONS, Some(&bearer(&token)))?;
        if me.status != 200 || page.status != 200 {
            // The expiry is at least `expires_in` after `minting`.
            if minting.elapsed() < expires_in {
                return Err(format!(
                    "refused before it expired: /me {}, sessions {} {}",
                    me.status,
                    page.status,
                    page.text()
                ));
            }
            expires_in *= 2;
            continue;
        }
        let refused = eventually(expires_in + PATIENCE, || {
            let r = get(addr, SESSIONS, Some(&bearer(&token)))?;
            match r.status {
                200 => Err("still admitted".to_owned()),
                _ => Ok(r),
            }
        })?;
        if minting.elapsed() < expires_in {
            return Err(format!(
                "refused before it expired: {} {}",
                refused.status,
                refused.text()
            ));
        }
        expect_error(&refused, 401, "invalid_credentials")?;
        let me = get(addr, "/me", Some(&bearer(&token)))?;
        expect_error(&me, 401, "invalid_credentials")?;
        return ensure(
            refused.body == unknown.body && me.body == unknown.body,
            || {
                format!(
                    "an expired token's body differs from an unknown one's: {} vs {}",
                    refused.text(),
                    unknown.text()
                )
            },
        );
    }
    Err(format!(
        "no mint returned before its token expired, the last after {expires_in:?}"
    ))
}
