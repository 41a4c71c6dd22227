//! The filter's entry points, independent of the proxy-wasm SDK: it holds no
//! contract rule: it reads the request, asks `core`, and carries the
//! decision out ([`crate::decide`]); with the fleet feature a decision on
//! etcd's limiter pauses the request ([`crate::fleet`]).

use sessiongate_core::{Gate, Request};

pub use crate::decide::Next;
use crate::decide::{carry_out, choose};
use crate::host::{Host, SharedKv};

#[cfg(feature = "fleet")]
pub use crate::fleet::{CONTENDED_MS, on_callout_response};
#[cfg(feature = "fleet")]
pub use crate::tick::{Tick, on_tick, on_tick_response};
#[cfg(feature = "fleet")]
pub use crate::vm_state::{LogCopy, PausedRequest};

/// Without the fleet feature no request ever waits on a callout.
#[cfg(not(feature = "fleet"))]
#[derive(Debug)]
pub enum PausedRequest {}

/// The request-headers phase.
pub fn on_request_headers<H: Host>(
    gate: &Gate,
    host: &mut H,
    waiting: &mut Option<PausedRequest>,
) -> Next {
    let headers = host.request_headers();
    let pseudo = |name: &str| {
        headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or("")
    };
    let method = pseudo(":method");
    let target = pseudo(":path");
    let authorization: Vec<&[u8]> = headers
        .pairs()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"authorization"))
        .map(|(_, v)| v)
        .collect();
    let now = host.now_ms();
    // A property read is a call into the host and back into the guest's
    // allocator: made only when the decision will use the address.
    let client = if gate.uses_client_address() {
        host.source_address()
    } else {
        None
    };
    // Without the fleet feature the root context refuses an etcd limiter.
    #[cfg(not(feature = "fleet"))]
    let _: &mut Option<PausedRequest> = waiting;
    #[cfg(feature = "fleet")]
    if let Some(next) = crate::fleet::begin(
        gate,
        host,
        waiting,
        method,
        target,
        &authorization,
        now,
        &client,
    ) {
        return next;
    }
    let gate = choose(gate, host, &authorization);
    let decision = gate.decide(
        &Request {
            method,
            target,
            authorization: &authorization,
            client: client.as_deref(),
        },
        now,
        &mut SharedKv(host),
    );
    carry_out(decision, host)
}

/// The response-headers phase of a forwarded request.
pub fn on_response_headers<H: Host>(host: &mut H, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        host.set_response_header(name, value);
    }
}

#[cfg(test)]
mod tests;
