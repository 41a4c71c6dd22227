//! Entry points shared by the fuzz targets (`fuzz/`) and the regression tests
//! that replay their corpus (`core/tests/fuzz_regressions.rs`). Each one
//! feeds arbitrary bytes to a parser or to the whole decision and checks what
//! must hold for any input; a violation panics, which is what a fuzzer finds.
#![allow(clippy::panic)] // a broken invariant must stop the fuzzer

use std::sync::OnceLock;

use crate::credential::{Kind, Level, Sites};
use crate::credential_set::CredentialSet;
use crate::decision::{Action, Outcome, Request};
use crate::gate::Gate;
use crate::kv::MemoryKv;
use crate::limiter::{self, Limit, LimiterError, Step};
use crate::{ErrorCode, GateConfig};

const TOKEN: &str = "fus_FuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzzFuzz";
const KEY: &str = "FuzzKeyFuzzKeyFuzzKeyFuzzKeyFuzzKey01/FUZZ001";

fn gate() -> &'static Gate {
    static GATE: OnceLock<Gate> = OnceLock::new();
    GATE.get_or_init(|| {
        let rec = crate::fixtures::record;
        let credentials = match CredentialSet::new(vec![
            rec(
                TOKEN,
                Kind::Token,
                "t",
                Sites::List(vec!["s".into()]),
                Level::Standard,
            ),
            rec(KEY, Kind::Key, "k", Sites::All, Level::Admin),
        ]) {
            Ok(c) => c,
            Err(e) => panic!("fuzz credentials: {e}"),
        };
        let config = GateConfig {
            credentials: credentials.into(),
            // Small pages: the fuzzer's time goes to parsing, not to JSON output.
            stub_sessions_per_site: 3,
            ..Default::default()
        };
        match Gate::new(config) {
            Ok(g) => g,
            Err(e) => panic!("fuzz gate: {e}"),
        }
    })
}

/// Splits `data` at 0xFF bytes into method, target, then Authorization values.
/// An input that begins with a digit gets a valid credential first (token for
/// 0–4, key for 5–9), so the fuzzer reaches scope, the limiter and the stub.
pub fn decision(data: &[u8]) {
    let rest = match data.first() {
        Some(b'0'..=b'9') => data.get(1..).unwrap_or_default(),
        _ => data,
    };
    let mut parts = rest.split(|&b| b == 0xff);
    let method = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let target = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let mut auth: Vec<Vec<u8>> = parts.map(<[u8]>::to_vec).collect();
    match data.first() {
        Some(b'0'..=b'4') => auth.insert(0, format!("Bearer {TOKEN}").into_bytes()),
        Some(b'5'..=b'9') => auth.insert(0, format!("Basic {KEY}").into_bytes()),
        _ => {}
    }
    let authorization: Vec<&[u8]> = auth.iter().map(Vec::as_slice).collect();
    let mut store = MemoryKv::default();
    let request = Request {
        method: &method,
        target: &target,
        authorization: &authorization,
        client: Some("192.0.2.1:9"),
    };
    // Twice at the same instant: the second sees the state the first wrote.
    for _ in 0..2 {
        let d = gate().decide(&request, 1_800_000_000_000, &mut store);
        let Action::Reply(reply) = d.action else {
            panic!("the stub backend never forwards");
        };
        let body: serde_json::Value = match serde_json::from_str(&reply.body) {
            Ok(v) => v,
            Err(e) => panic!("a reply body is not JSON ({e}): {}", reply.body.as_str()),
        };
        match d.outcome {
            Outcome::Denied(code) => {
                assert_eq!(reply.status, code.status());
                assert_eq!(
                    body.pointer("/error/code")
                        .and_then(serde_json::Value::as_str),
                    Some(code.as_str())
                );
                assert_ne!(code, ErrorCode::UpstreamUnavailable);
            }
            Outcome::Allowed => assert_eq!(reply.status, 200),
            Outcome::AllowedFailOpen => panic!("fail-open is off"),
        }
        assert!(
            reply
                .headers
                .iter()
                .any(|(n, v)| *n == "content-type" && v == "application/json")
        );
        for secret in [TOKEN, KEY] {
            assert!(!reply.body.contains(secret), "a reply leaks a secret");
        }
    }
}

/// Any bytes as the gate's configuration: an error or a gate, never a panic.
pub fn config(data: &[u8]) {
    if let Ok(gate) = Gate::from_json(data) {
        assert!(gate.limit().requests >= 1);
    }
}

/// A limiter state as a shared store may hold it: anything. The first byte
/// picks a limit of 1 to 50; the rest is the stored value. One step never
/// panics; it refuses the state as corrupt exactly when `decode` does, and
/// otherwise what it leaves behind decodes, holds no more than the limit when
/// it wrote, ends at the step's time when it admitted, and is untouched when
/// it did not.
pub fn limiter_state(data: &[u8]) {
    let Some((first, state)) = data.split_first() else {
        return;
    };
    let limit = Limit::new(u32::from(*first % 50) + 1, 60);
    let now = 1_800_000_000_000u64;
    let before = limiter::decode(Some(state));
    match (limiter::step(Some(state), now, limit), before) {
        (Err(LimiterError::Corrupt), Err(_)) => {}
        (Err(e), before) => panic!("step failed ({e:?}) on a state decode read as {before:?}"),
        (Ok((step, _)), Err(e)) => {
            panic!("step decided {step:?} on a state decode refused ({e:?})")
        }
        (Ok((Step::Full(v), _)), Ok(times)) => {
            assert!(
                !v.admitted && v.remaining == 0,
                "a full log with room: {v:?}"
            );
            assert!(
                times.len() >= limit.requests as usize,
                "full with room left"
            );
        }
        (Ok((Step::Admit { next, verdict }, _)), Ok(times)) => {
            assert!(
                verdict.admitted && verdict.remaining < limit.requests,
                "{verdict:?}"
            );
            let after = match limiter::decode(Some(&next)) {
                Ok(t) => t,
                Err(e) => panic!("the step left a state that does not decode: {e:?}"),
            };
            let at = times.last().map_or(now, |&newest| now.max(newest));
            assert_eq!(
                after.last(),
                Some(&at),
                "the admission is not the newest entry"
            );
            assert!(
                after.len() <= limit.requests as usize,
                "more kept than the limit"
            );
        }
    }
}

/// A failed-credential guard bucket as a shared store may hold it: anything.
/// The first byte picks how many failures the guard allows (0 to 15, 0 being
/// off); the rest is the stored bucket of the address under test. Checking
/// and recording a failure never panic; a hold is at least a second; and a
/// bucket that parsed before the failure was recorded holds the address
/// afterwards, its newest time the failure's, no more than `failures + 1`
/// times kept.
pub fn guard_state(data: &[u8]) {
    use crate::guard::{self, GuardConfig};

    let Some((first, state)) = data.split_first() else {
        return;
    };
    let cfg = GuardConfig {
        failures: u32::from(*first % 16),
        window_seconds: 60,
    };
    let (address, now) = ("10.0.0.1", 1_800_000_000_000u64);
    if let Some(seconds) = guard::held(Some(state), address, now, &cfg) {
        assert!(seconds >= 1, "a hold of no time");
    }
    let parsed_before =
        state.is_empty() || serde_json::from_slice::<Vec<(String, Vec<u64>)>>(state).is_ok();
    let recorded = guard::with_failure(Some(state), address, now, &cfg);
    if !cfg.enabled() || !parsed_before {
        return;
    }
    let after: Vec<(String, Vec<u64>)> = match recorded.as_deref().map(serde_json::from_slice) {
        Some(Ok(b)) => b,
        other => panic!("the recorded bucket does not parse: {other:?}"),
    };
    let Some((_, times)) = after.iter().find(|(a, _)| a == address) else {
        panic!("the failure was not recorded: {after:?}");
    };
    assert_eq!(
        times.last(),
        Some(&now),
        "the newest time is not the failure's"
    );
    assert!(
        times.len() <= cfg.failures as usize + 1,
        "more times kept than can block"
    );
}
