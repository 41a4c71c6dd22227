//! The step every path of a decision shares: which gate decides (the
//! configured one or one over a record kept in shared data), and carrying
//! the decision out on the host (counters, reply or forwarded headers).

use sessiongate_core::{
    Action, CREDENTIAL_KEY_PREFIX, CredentialSet, Decision, ErrorCode, Forward, Gate, Outcome,
    hash_hex,
};

use crate::header_block::HeaderBlock;
use crate::host::{Host, LogLevel, Metric};

/// What the filter does next with the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// A reply was sent: stop the request.
    Stop,
    /// Continue upstream; add these headers to the response.
    Continue(Vec<(&'static str, String)>),
    /// A callout to the limiter's store is in flight: pause the request.
    Wait,
}

/// The gate a request is decided with: the configured one, or, when the
/// configuration holds no credentials, one over the record the host keeps
/// under the presented digest in shared data ([`CREDENTIAL_KEY_PREFIX`]:
/// `serve` with a large store keeps them all itself rather than copying
/// them into every VM's configuration). Under Envoy nothing is kept there,
/// so the configuration decides alone.
pub(crate) enum DecidingGate<'g> {
    Configured(&'g Gate),
    LookedUp(std::rc::Rc<Gate>),
}

impl std::ops::Deref for DecidingGate<'_> {
    type Target = Gate;

    fn deref(&self) -> &Gate {
        match self {
            DecidingGate::Configured(gate) => gate,
            DecidingGate::LookedUp(gate) => gate,
        }
    }
}

pub(crate) fn choose<'g, H: Host>(
    gate: &'g Gate,
    host: &H,
    authorization: &[&[u8]],
) -> DecidingGate<'g> {
    // A host keeps every credential or none (`serve` configures its VMs
    // with none when it keeps them). Asking it with credentials configured
    // would hash the secret a second time, the decision hashing it again.
    if !gate.credentials().is_empty() {
        return DecidingGate::Configured(gate);
    }
    // Bearer presents one digest; Basic two at most, of which one can be a key.
    for digest in gate.missing_digests(authorization) {
        let key = CREDENTIAL_KEY_PREFIX.to_owned() + &hash_hex(&digest);
        let Ok((Some(value), _)) = host.shared_get(&key) else {
            continue;
        };
        if let Ok(set) = CredentialSet::from_json(&value) {
            return DecidingGate::LookedUp(std::rc::Rc::new(gate.with_credentials(set)));
        }
    }
    DecidingGate::Configured(gate)
}

/// Counts the decision, and answers the request or lets it through.
pub(crate) fn carry_out<H: Host>(decision: Decision<'_>, host: &mut H) -> Next {
    if let Some(name) = &decision.credential {
        host.set_credential(name);
    }
    match decision.outcome {
        Outcome::Allowed => host.increment(Metric::ALLOWED),
        Outcome::AllowedFailOpen => {
            host.increment(Metric::ALLOWED_FAIL_OPEN);
            host.log(
                LogLevel::Warn,
                "limiter unavailable: admitted because fail_open is set",
            );
        }
        Outcome::Denied(code) => {
            host.increment(Metric::denied(code));
            if code == ErrorCode::LimiterUnavailable {
                host.log(
                    LogLevel::Error,
                    "limiter unavailable: request refused (fail closed)",
                );
            }
        }
    }
    match decision.action {
        Action::Reply(reply) => {
            let headers =
                HeaderBlock::encode(reply.headers.iter().map(|(n, v)| (*n, v.as_bytes())));
            host.send_reply(reply.status, &headers, reply.body.as_bytes());
            Next::Stop
        }
        Action::Forward(forward) => {
            for name in Forward::REMOVED_REQUEST_HEADERS {
                host.set_request_header(name, None);
            }
            // Replace, never append: a client cannot smuggle its own identity
            // headers. Removed first, then set: a host may replace several
            // copies by clearing them all (ngx_wasm_module does, then adds
            // nothing), and the service would get no identity at all.
            for (name, value) in &forward.add_request_headers {
                host.set_request_header(name, None);
                host.set_request_header(name, Some(value));
            }
            // Kept until the response: owned, as the gate may be
            // reconfigured in between.
            let response = forward.response_headers.into_iter();
            Next::Continue(response.map(|(n, v)| (n, v.as_str().to_owned())).collect())
        }
    }
}
