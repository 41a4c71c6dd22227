//! The filter, independent of the proxy-wasm SDK: host calls sit behind
//! [`Host`], so the adapter is tested natively against a mock. It holds no
//! contract rule: it reads, asks `core`, and carries the decision out.

use std::borrow::Cow;

use sessiongate_core::{
    Action, CREDENTIAL_KEY_PREFIX, CredentialSet, Decision, Entry, ErrorCode, Forward, Gate, Kv,
    KvError, Outcome, Request, Version, hash_hex,
};

use crate::header_block::HeaderBlock;

pub use sessiongate_core::LIMITER_KEY;

/// A counter: one per outcome and per error code. An index, not a name, so
/// counting a request formats and hashes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric(usize);

impl Metric {
    pub const ALLOWED: Metric = Metric(0);
    pub const ALLOWED_FAIL_OPEN: Metric = Metric(1);
    pub const COUNT: usize = 2 + ErrorCode::ALL.len();

    pub fn denied(code: ErrorCode) -> Metric {
        // `ALL` is in declaration order (tested), so the discriminant indexes it.
        Metric(2 + code as usize)
    }

    pub fn all() -> impl Iterator<Item = Metric> {
        (0..Metric::COUNT).map(Metric)
    }

    pub fn index(self) -> usize {
        self.0
    }

    /// The name the host shows: `sessiongate_allowed`, `sessiongate_denied_<code>`.
    pub fn name(self) -> String {
        match self.0.checked_sub(2) {
            None if self == Metric::ALLOWED => "sessiongate_allowed".to_owned(),
            None => "sessiongate_allowed_fail_open".to_owned(),
            Some(i) => format!(
                "sessiongate_denied_{}",
                ErrorCode::ALL.get(i).map_or("unknown", |c| c.as_str())
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// What the filter needs from its host.
pub trait Host {
    /// Every request header, raw value bytes (names are lowercase).
    fn request_headers(&self) -> HeaderBlock;
    fn set_request_header(&mut self, name: &str, value: Option<&str>);
    fn set_response_header(&mut self, name: &str, value: &str);
    fn send_reply(&mut self, status: u16, headers: &HeaderBlock, body: &[u8]);
    /// `(value, cas)`: cas 0 when absent.
    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), String>;
    /// Ok(false) on CAS mismatch.
    fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, String>;
    fn now_ms(&self) -> u64;
    fn log(&self, level: LogLevel, message: &str);
    fn increment(&mut self, metric: Metric);
    /// The downstream address (`source.address`), if the host knows it.
    fn source_address(&self) -> Option<String>;
    /// Records the authenticated credential's name for the access log
    /// (Envoy: filter state `wasm.sessiongate_credential`).
    fn set_credential(&mut self, name: &str);
    /// Sends `POST path` with a JSON `body` to the host's `cluster`
    /// (`proxy_http_call`); its answer comes back through
    /// [`on_callout_response`]. `Err`: the host refused to send it.
    fn http_call(
        &mut self,
        cluster: &str,
        path: &str,
        body: &[u8],
        timeout_ms: u32,
        token: Option<&str>,
    ) -> Result<(), String>;
    /// The etcd token this VM logged in for, if any (kept across requests).
    fn etcd_token(&self) -> Option<String>;
    fn set_etcd_token(&mut self, token: Option<String>);
}

/// Envoy's shared data as the gate's [`Kv`].
pub(crate) struct SharedData<'h, H: Host>(pub(crate) &'h mut H);

impl<H: Host> Kv for SharedData<'_, H> {
    fn get(&mut self, key: &str) -> Result<Option<Entry<'_>>, KvError> {
        let (value, cas) = self.0.shared_get(key).map_err(KvError)?;
        Ok(value.map(|v| Entry {
            value: Cow::Owned(v),
            version: Version::from(cas),
        }))
    }

    fn swap(&mut self, key: &str, version: Version, value: &[u8]) -> Result<bool, KvError> {
        // Envoy's cas is a u32, and 0 means "unconditional": neither is a
        // version this store handed out, so neither may write.
        match u32::try_from(version) {
            Ok(cas) if cas != 0 => self.0.shared_set(key, value, cas).map_err(KvError),
            _ => Ok(false),
        }
    }

    /// Envoy has no atomic create (cas 0 overwrites): a key absent now is
    /// written unconditionally, so two workers that both saw it absent both
    /// write. The limiter's key is created when the filter is configured
    /// ([`init_shared_state`]), so only a guard bucket's first write can
    /// race, and the guard is a brake, not the lock.
    fn create(&mut self, key: &str, value: &[u8]) -> Result<bool, KvError> {
        if self.0.shared_get(key).map_err(KvError)?.0.is_some() {
            return Ok(false);
        }
        self.0.shared_set(key, value, 0).map_err(KvError)
    }
}

/// Creates the limiter's key if it is absent, so every later write is a real CAS.
pub fn init_shared_state<H: Host>(host: &mut H) {
    if let Ok((None, _)) = host.shared_get(LIMITER_KEY) {
        let empty = sessiongate_core::limiter_log::encode(&[]);
        if let Err(e) = host.shared_set(LIMITER_KEY, &empty, 0) {
            host.log(
                LogLevel::Error,
                &format!("cannot create the limiter state: {e}"),
            );
        }
    }
}

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

#[cfg(feature = "fleet")]
pub use crate::fleet::{Waiting, on_callout_response};

/// Without the fleet feature no request ever waits on a callout.
#[cfg(not(feature = "fleet"))]
#[derive(Debug)]
pub enum Waiting {}

/// The gate a request is decided with: the configured one, or, when the
/// configuration holds no credentials, one over the record the host keeps
/// under the presented digest in shared data ([`CREDENTIAL_KEY_PREFIX`]:
/// `serve` with a large store keeps them all itself rather than copying
/// them into every VM's configuration). Under Envoy nothing is kept there,
/// so the configuration decides alone.
pub(crate) enum Chosen<'g> {
    Configured(&'g Gate),
    LookedUp(Box<Gate>),
}

impl std::ops::Deref for Chosen<'_> {
    type Target = Gate;

    fn deref(&self) -> &Gate {
        match self {
            Chosen::Configured(gate) => gate,
            Chosen::LookedUp(gate) => gate,
        }
    }
}

pub(crate) fn choose<'g, H: Host>(gate: &'g Gate, host: &H, authorization: &[&[u8]]) -> Chosen<'g> {
    // A host keeps every credential or none (`serve` configures its VMs
    // with none when it keeps them). Asking it with credentials configured
    // would hash the secret a second time, the decision hashing it again.
    if !gate.credentials().is_empty() {
        return Chosen::Configured(gate);
    }
    // Bearer presents one digest; Basic two at most, of which one can be a key.
    for digest in gate.missing_digests(authorization) {
        let key = CREDENTIAL_KEY_PREFIX.to_owned() + &hash_hex(&digest);
        let Ok((Some(value), _)) = host.shared_get(&key) else {
            continue;
        };
        if let Ok(set) = CredentialSet::from_json(&value) {
            return Chosen::LookedUp(Box::new(gate.with_credentials(set)));
        }
    }
    Chosen::Configured(gate)
}

/// The request-headers phase.
pub fn on_request_headers<H: Host>(
    gate: &Gate,
    host: &mut H,
    waiting: &mut Option<Waiting>,
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
    let _: &mut Option<Waiting> = waiting;
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
        &mut SharedData(host),
    );
    carry_out(decision, host)
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

/// The response-headers phase of a forwarded request.
pub fn on_response_headers<H: Host>(host: &mut H, headers: &[(&'static str, String)]) {
    for (name, value) in headers {
        host.set_response_header(name, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sessiongate_core::LimiterStore;
    use sessiongate_core::{Backend, GateConfig};
    use std::collections::HashMap;

    const TOKEN: &str = "fus_0123456789012345678901234567890123456789";

    type SentReply = (u16, Vec<(String, String)>, Vec<u8>);

    #[derive(Default)]
    struct Mock {
        request: Vec<(String, Vec<u8>)>,
        response: Vec<(String, String)>,
        reply: Option<SentReply>,
        shared: HashMap<String, (Vec<u8>, u32)>,
        metrics: HashMap<String, u64>,
        logs: Vec<String>,
        fail_shared: bool,
        /// Callouts sent: cluster, path, body, timeout.
        calls: Vec<(String, String, String, u32)>,
        /// The token each callout carried.
        tokens: Vec<Option<String>>,
        refuse_calls: bool,
        etcd_token: Option<String>,
        /// How many times the filter asked for `source.address`.
        address_reads: std::cell::Cell<u32>,
    }

    impl Host for Mock {
        fn request_headers(&self) -> HeaderBlock {
            HeaderBlock::encode(self.request.iter().map(|(n, v)| (n.as_str(), v.as_slice())))
        }
        fn set_request_header(&mut self, name: &str, value: Option<&str>) {
            self.request.retain(|(n, _)| n != name);
            if let Some(v) = value {
                self.request.push((name.into(), v.as_bytes().to_vec()));
            }
        }
        fn set_response_header(&mut self, name: &str, value: &str) {
            self.response.push((name.into(), value.into()));
        }
        fn send_reply(&mut self, status: u16, headers: &HeaderBlock, body: &[u8]) {
            let h = headers
                .pairs()
                .map(|(n, v)| {
                    (
                        String::from_utf8_lossy(n).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            self.reply = Some((status, h, body.to_vec()));
        }
        fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), String> {
            if self.fail_shared {
                return Err("down".into());
            }
            Ok(self
                .shared
                .get(key)
                .map_or((None, 0), |(v, c)| (Some(v.clone()), *c)))
        }
        fn shared_set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, String> {
            if self.fail_shared {
                return Err("down".into());
            }
            let current = self.shared.get(key).map_or(0, |(_, c)| *c);
            if cas != 0 && cas != current {
                return Ok(false);
            }
            self.shared
                .insert(key.into(), (value.to_vec(), current + 1));
            Ok(true)
        }
        fn now_ms(&self) -> u64 {
            1_800_000_000_000
        }
        fn log(&self, _: LogLevel, _: &str) {}
        fn increment(&mut self, metric: Metric) {
            *self.metrics.entry(metric.name()).or_default() += 1;
        }
        fn set_credential(&mut self, name: &str) {
            self.logs.push(format!("credential={name}"));
        }
        fn source_address(&self) -> Option<String> {
            self.address_reads.set(self.address_reads.get() + 1);
            Some("10.0.0.9:4000".into())
        }
        fn http_call(
            &mut self,
            cluster: &str,
            path: &str,
            body: &[u8],
            timeout_ms: u32,
            token: Option<&str>,
        ) -> Result<(), String> {
            if self.refuse_calls {
                return Err("BadArgument".into());
            }
            let body = String::from_utf8_lossy(body).into_owned();
            self.calls
                .push((cluster.into(), path.into(), body, timeout_ms));
            self.tokens.push(token.map(str::to_owned));
            Ok(())
        }
        fn etcd_token(&self) -> Option<String> {
            self.etcd_token.clone()
        }
        fn set_etcd_token(&mut self, token: Option<String>) {
            self.etcd_token = token;
        }
    }

    fn gate(backend: Backend) -> Gate {
        Gate::new(GateConfig {
            credentials: sessiongate_core::fixtures::token_set(TOKEN, "t").unwrap(),
            backend,
            ..Default::default()
        })
        .unwrap()
    }

    fn request(auth: &[&str]) -> Mock {
        let mut m = Mock::default();
        m.request.push((":method".into(), b"GET".to_vec()));
        m.request
            .push((":path".into(), b"/v1/external/sessions/acme/s".to_vec()));
        m.request
            .push(("x-sessiongate-credential".into(), b"spoofed".to_vec()));
        for a in auth {
            m.request
                .push(("authorization".into(), a.as_bytes().to_vec()));
        }
        init_shared_state(&mut m);
        m
    }

    #[test]
    fn metrics_are_indexed_in_the_error_tables_order() {
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, i);
            assert_eq!(
                Metric::denied(*code).name(),
                format!("sessiongate_denied_{}", code.as_str())
            );
        }
        let names: std::collections::HashSet<String> = Metric::all().map(Metric::name).collect();
        assert_eq!(names.len(), Metric::COUNT);
        assert_eq!(Metric::ALLOWED.name(), "sessiongate_allowed");
        assert_eq!(
            Metric::ALLOWED_FAIL_OPEN.name(),
            "sessiongate_allowed_fail_open"
        );
    }

    /// A filter configured with no credentials looks each presented digest
    /// up where the host keeps them: admitted as if configured; a digest the
    /// host lacks, and a record that does not parse, are refused. One
    /// configured with credentials decides alone, asking the host nothing.
    #[test]
    fn credentials_the_host_keeps_by_digest_are_looked_up() {
        const KEPT: &str = "fus_kept0kept0kept0kept0kept0kept0kept0kept0";
        let record = sessiongate_core::fixtures::record(
            KEPT,
            sessiongate_core::Kind::Token,
            "kept",
            sessiongate_core::Sites::All,
            sessiongate_core::Level::Standard,
        );
        let key = format!("{CREDENTIAL_KEY_PREFIX}{}", record.hash);
        let json = serde_json::to_vec(&[&record]).unwrap();
        let hosted = Gate::new(GateConfig {
            backend: Backend::Stub,
            ..Default::default()
        })
        .unwrap();
        let mut m = request(&[&format!("Bearer {KEPT}")]);
        m.shared.insert(key.clone(), (json.clone(), 1));
        assert_eq!(on_request_headers(&hosted, &mut m, &mut None), Next::Stop);
        assert_eq!(m.reply.clone().unwrap().0, 200);
        assert_eq!(m.logs, ["credential=kept"]);
        let mut m = request(&[&format!("Bearer {KEPT}")]);
        on_request_headers(&hosted, &mut m, &mut None);
        assert_eq!(m.reply.clone().unwrap().0, 401);
        let mut m = request(&[&format!("Bearer {KEPT}")]);
        m.shared
            .insert(key.clone(), (b"{ not a record".to_vec(), 1));
        on_request_headers(&hosted, &mut m, &mut None);
        assert_eq!(m.reply.clone().unwrap().0, 401);
        // Configured with a credential: the host's record is not consulted.
        let mut m = request(&[&format!("Bearer {KEPT}")]);
        m.shared.insert(key, (json, 1));
        on_request_headers(&gate(Backend::Stub), &mut m, &mut None);
        assert_eq!(m.reply.clone().unwrap().0, 401);
    }

    #[test]
    fn stub_reply_and_metrics() {
        let mut m = request(&[&format!("Bearer {TOKEN}")]);
        assert_eq!(
            on_request_headers(&gate(Backend::Stub), &mut m, &mut None),
            Next::Stop
        );
        let (status, _, body) = m.reply.clone().unwrap();
        assert_eq!(status, 200);
        assert!(body.starts_with(b"{\"data\""));
        assert_eq!(m.metrics.get("sessiongate_allowed"), Some(&1));
        assert_eq!(m.logs, ["credential=t"]);
    }

    #[test]
    fn forward_strips_the_secret_and_replaces_identity_headers() {
        let mut m = request(&[&format!("Bearer {TOKEN}")]);
        let next = on_request_headers(&gate(Backend::Upstream(None)), &mut m, &mut None);
        let Next::Continue(response_headers) = next else {
            panic!("{next:?}")
        };
        assert!(m.reply.is_none());
        assert!(!m.request.iter().any(|(n, _)| n == "authorization"));
        let cred: Vec<_> = m
            .request
            .iter()
            .filter(|(n, _)| n == "x-sessiongate-credential")
            .collect();
        assert_eq!(cred.len(), 1);
        assert_eq!(cred[0].1, b"t");
        on_response_headers(&mut m, &response_headers);
        assert!(
            m.response
                .iter()
                .any(|(n, v)| n == "ratelimit" && v.contains("remaining=19"))
        );
    }

    #[test]
    fn denials_count_by_code() {
        let mut m = request(&[]);
        on_request_headers(&gate(Backend::Stub), &mut m, &mut None);
        assert_eq!(m.reply.as_ref().map(|r| r.0), Some(401));
        assert_eq!(m.metrics.get("sessiongate_denied_unauthorized"), Some(&1));
    }

    #[test]
    fn shared_data_failure_is_503() {
        let mut m = request(&[&format!("Bearer {TOKEN}")]);
        m.fail_shared = true;
        on_request_headers(&gate(Backend::Stub), &mut m, &mut None);
        assert_eq!(m.reply.as_ref().map(|r| r.0), Some(503));
        assert_eq!(
            m.metrics.get("sessiongate_denied_limiter_unavailable"),
            Some(&1)
        );
    }

    /// The address is a property read (a host call and a guest allocation):
    /// asked for only when the guard, its one user, is on.
    #[test]
    fn the_address_is_read_only_for_the_guard() {
        let guarded = gate(Backend::Stub);
        let open = Gate::new(GateConfig {
            credentials: sessiongate_core::fixtures::token_set(TOKEN, "t").unwrap(),
            backend: Backend::Stub,
            guard: sessiongate_core::GuardConfig {
                failures: 0,
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        for (g, reads) in [(&guarded, 1), (&open, 0)] {
            let mut m = request(&[&format!("Bearer {TOKEN}")]);
            on_request_headers(g, &mut m, &mut None);
            assert_eq!(m.reply.as_ref().map(|r| r.0), Some(200));
            assert_eq!(m.address_reads.get(), reads);
        }
    }

    /// One `Authorization` value or several, the gate sees them all.
    #[test]
    fn every_authorization_value_reaches_the_gate() {
        let g = gate(Backend::Stub);
        let valid = format!("Bearer {TOKEN}");
        for (values, status) in [
            (vec![valid.as_str()], 200),
            (vec![valid.as_str(), valid.as_str()], 400),
            (vec![valid.as_str(), valid.as_str(), "Basic eA=="], 400),
        ] {
            let mut m = request(&values);
            on_request_headers(&g, &mut m, &mut None);
            assert_eq!(m.reply.as_ref().map(|r| r.0), Some(status), "{values:?}");
        }
    }

    #[test]
    fn repeated_invalid_credentials_from_one_address_are_slowed() {
        let g = gate(Backend::Stub);
        let mut m = request(&["Bearer fus_0000000000000000000000000000000000000000"]);
        for _ in 0..10 {
            on_request_headers(&g, &mut m, &mut None);
            assert_eq!(m.reply.as_ref().map(|r| r.0), Some(401));
        }
        on_request_headers(&g, &mut m, &mut None);
        let (status, headers, _) = m.reply.clone().unwrap();
        assert_eq!(status, 429);
        assert!(headers.iter().any(|(n, _)| n == "retry-after"));
        // Even a valid credential waits: the guard answers before any lookup.
        let mut valid = request(&[&format!("Bearer {TOKEN}")]);
        valid.shared = m.shared.clone();
        on_request_headers(&g, &mut valid, &mut None);
        assert_eq!(valid.reply.as_ref().map(|r| r.0), Some(429));
        // And none of it spent the global budget.
        let state = valid
            .shared
            .get(LIMITER_KEY)
            .map(|(v, _)| v.clone())
            .unwrap_or_default();
        assert_eq!(
            sessiongate_core::limiter_log::decode(Some(&state))
                .unwrap()
                .len(),
            0
        );
    }

    #[test]
    fn non_utf8_headers_do_not_panic() {
        let mut m = request(&[]);
        m.request
            .push(("authorization".into(), vec![0xff, 0xfe, b' ', 0x80]));
        m.request[1].1 = vec![b'/', 0xff];
        on_request_headers(&gate(Backend::Stub), &mut m, &mut None);
        assert_eq!(m.reply.as_ref().map(|r| r.0), Some(404));
    }

    fn etcd_gate(fail_open: bool) -> Gate {
        Gate::new(GateConfig {
            credentials: sessiongate_core::fixtures::token_set(TOKEN, "t").unwrap(),
            limiter: LimiterStore::Etcd {
                cluster: "etcd".into(),
                key: "sg/limiter".into(),
                timeout_ms: 250,
                user: None,
                password: None,
            },
            fail_open,
            ..Default::default()
        })
        .unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn last_body(m: &Mock) -> serde_json::Value {
        serde_json::from_str(&m.calls.last().unwrap().2).unwrap()
    }

    /// The limiter on etcd: a read, then a create (absent key), each a
    /// callout that pauses the request; the answer admits it.
    #[test]
    fn the_limiter_on_etcd_pauses_for_each_callout_and_admits() {
        let g = etcd_gate(false);
        let mut m = request(&[&format!("Bearer {TOKEN}")]);
        let mut waiting = None;
        assert_eq!(on_request_headers(&g, &mut m, &mut waiting), Next::Wait);
        // The guard read its bucket in shared data first, at once: one callout only.
        assert_eq!(m.calls.len(), 1);
        let (cluster, path, _, timeout) = m.calls[0].clone();
        assert_eq!(
            (cluster.as_str(), path.as_str(), timeout),
            ("etcd", "/v3/kv/range", 250)
        );
        assert_eq!(last_body(&m)["key"], b64(b"sg/limiter"));
        let absent = br#"{"header":{"revision":"1"}}"#;
        assert_eq!(
            on_callout_response(&g, &mut m, &mut waiting, Some(200), absent),
            Next::Wait
        );
        assert_eq!(m.calls[1].1, "/v3/kv/txn");
        assert_eq!(last_body(&m)["compare"][0]["target"], "CREATE");
        assert!(m.reply.is_none(), "still waiting");
        let won = br#"{"header":{"revision":"2"},"succeeded":true}"#;
        assert_eq!(
            on_callout_response(&g, &mut m, &mut waiting, Some(200), won),
            Next::Stop
        );
        assert_eq!(m.reply.as_ref().map(|r| r.0), Some(200), "the stub's page");
        assert_eq!(m.metrics.get("sessiongate_allowed"), Some(&1));
        assert!(waiting.is_none());
    }

    /// A lost txn comes back with the winner's value: the next write
    /// compares its revision, with no read in between.
    #[test]
    fn a_lost_write_retries_on_the_value_it_came_back_with() {
        let g = etcd_gate(false);
        let mut m = request(&[&format!("Bearer {TOKEN}")]);
        let mut waiting = None;
        on_request_headers(&g, &mut m, &mut waiting);
        let empty = sessiongate_core::limiter_log::encode(&[]);
        let found = format!(
            r#"{{"header":{{}},"kvs":[{{"mod_revision":"7","value":"{}"}}]}}"#,
            b64(&empty)
        );
        on_callout_response(&g, &mut m, &mut waiting, Some(200), found.as_bytes());
        assert_eq!(last_body(&m)["compare"][0]["mod_revision"], "7");
        let lost = format!(
            r#"{{"header":{{}},"responses":[{{"response_range":{{"kvs":[{{"mod_revision":"9","value":"{}"}}]}}}}]}}"#,
            b64(&empty)
        );
        let next = on_callout_response(&g, &mut m, &mut waiting, Some(200), lost.as_bytes());
        assert_eq!(next, Next::Wait);
        assert_eq!(m.calls.len(), 3, "read, write, write: no second read");
        assert_eq!(last_body(&m)["compare"][0]["mod_revision"], "9");
    }

    /// Every way a callout can fail is a 503 (fail closed), or an admission
    /// with fail_open; a call the host refuses to send fails at once.
    #[test]
    fn every_callout_failure_fails_closed_or_open() {
        let failures: [(Option<u16>, &[u8]); 4] = [
            (None, b""),
            (Some(503), b"{\"error\":\"etcdserver: request timed out\"}"),
            (Some(200), b"not json"),
            (Some(200), b"{\"kvs\":[{\"mod_revision\":\"x\"}]}"),
        ];
        for fail_open in [false, true] {
            let g = etcd_gate(fail_open);
            for (status, body) in failures {
                let mut m = request(&[&format!("Bearer {TOKEN}")]);
                let mut waiting = None;
                on_request_headers(&g, &mut m, &mut waiting);
                let next = on_callout_response(&g, &mut m, &mut waiting, status, body);
                assert_eq!(next, Next::Stop);
                let expected = if fail_open { 200 } else { 503 };
                assert_eq!(m.reply.as_ref().map(|r| r.0), Some(expected), "{status:?}");
            }
            let mut m = request(&[&format!("Bearer {TOKEN}")]);
            m.refuse_calls = true;
            assert_eq!(on_request_headers(&g, &mut m, &mut None), Next::Stop);
            let expected = if fail_open { 200 } else { 503 };
            assert_eq!(m.reply.as_ref().map(|r| r.0), Some(expected));
        }
    }

    /// Answers that belong to no waiting request change nothing.
    #[test]
    fn a_stray_callout_answer_is_ignored() {
        let g = etcd_gate(false);
        let mut m = request(&[]);
        assert_eq!(
            on_callout_response(&g, &mut m, &mut None, Some(200), b"{}"),
            Next::Stop
        );
        assert!(m.reply.is_none());
    }

    /// Once the window is known full, a 429 makes no call: the flood stays
    /// local to the instance.
    #[test]
    fn a_known_full_window_is_answered_without_a_callout() {
        let g = Gate::new(GateConfig {
            credentials: sessiongate_core::fixtures::token_set(TOKEN, "t").unwrap(),
            limit: sessiongate_core::LimitConfig {
                requests: 1,
                window_seconds: 3600,
            },
            limiter: LimiterStore::Etcd {
                cluster: "etcd".into(),
                key: "k".into(),
                timeout_ms: 250,
                user: None,
                password: None,
            },
            ..Default::default()
        })
        .unwrap();
        let now = 1_800_000_000_000u64;
        let full = sessiongate_core::limiter_log::encode(&[now - 1]);
        let found = format!(
            r#"{{"header":{{}},"kvs":[{{"mod_revision":"3","value":"{}"}}]}}"#,
            b64(&full)
        );
        let mut m = request(&[&format!("Bearer {TOKEN}")]);
        let mut waiting = None;
        assert_eq!(on_request_headers(&g, &mut m, &mut waiting), Next::Wait);
        let next = on_callout_response(&g, &mut m, &mut waiting, Some(200), found.as_bytes());
        assert_eq!(next, Next::Stop);
        assert_eq!(m.reply.as_ref().map(|r| r.0), Some(429));
        let mut again = request(&[&format!("Bearer {TOKEN}")]);
        assert_eq!(on_request_headers(&g, &mut again, &mut None), Next::Stop);
        assert_eq!(again.reply.as_ref().map(|r| r.0), Some(429));
        assert!(
            again.calls.is_empty(),
            "no callout while the window is full"
        );
    }

    /// With etcd's authentication on: log in first, send the token with each
    /// step, and when etcd refuses it (expired), log in again once and send
    /// the same step.
    #[test]
    fn etcd_authentication_logs_in_and_again_when_the_token_expires() {
        let g = Gate::new(GateConfig {
            credentials: sessiongate_core::fixtures::token_set(TOKEN, "t").unwrap(),
            limiter: LimiterStore::Etcd {
                cluster: "etcd".into(),
                key: "k".into(),
                timeout_ms: 250,
                user: Some("gate".into()),
                password: Some("pw".into()),
            },
            ..Default::default()
        })
        .unwrap();
        let mut m = request(&[&format!("Bearer {TOKEN}")]);
        let mut waiting = None;
        assert_eq!(on_request_headers(&g, &mut m, &mut waiting), Next::Wait);
        assert_eq!(m.calls[0].1, "/v3/auth/authenticate");
        assert_eq!(
            m.calls[0].3,
            sessiongate_etcd::LOGIN_TIMEOUT_MS,
            "a login's bcrypt gets its own deadline"
        );
        assert_eq!(last_body(&m)["name"], "gate");
        assert_eq!(m.tokens[0], None, "a login carries no token");
        let login = br#"{"header":{},"token":"t1"}"#;
        on_callout_response(&g, &mut m, &mut waiting, Some(200), login);
        assert_eq!(m.calls[1].1, "/v3/kv/range");
        assert_eq!(m.calls[1].3, 250, "a step keeps the limiter's deadline");
        assert_eq!(m.tokens[1].as_deref(), Some("t1"));
        let expired = br#"{"error":"etcdserver: invalid auth token","code":16}"#;
        on_callout_response(&g, &mut m, &mut waiting, Some(401), expired);
        assert_eq!(m.calls[2].1, "/v3/auth/authenticate", "logged in again");
        on_callout_response(&g, &mut m, &mut waiting, Some(200), br#"{"token":"t2"}"#);
        assert_eq!(m.calls[3].1, "/v3/kv/range", "the same step again");
        assert_eq!(m.tokens[3].as_deref(), Some("t2"));
        // Refused again: no endless loop; the request fails closed.
        let next = on_callout_response(&g, &mut m, &mut waiting, Some(401), expired);
        assert_eq!(next, Next::Stop);
        assert_eq!(m.reply.as_ref().map(|r| r.0), Some(503));
        // A wrong password: 503 too.
        let mut m = request(&[&format!("Bearer {TOKEN}")]);
        let mut waiting = None;
        on_request_headers(&g, &mut m, &mut waiting);
        let refused = br#"{"error":"etcdserver: authentication failed"}"#;
        let next = on_callout_response(&g, &mut m, &mut waiting, Some(400), refused);
        assert_eq!(next, Next::Stop);
        assert_eq!(m.reply.as_ref().map(|r| r.0), Some(503));
    }
}
