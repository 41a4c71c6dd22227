use super::*;
use crate::header_block::HeaderBlock;
use crate::host::{LogLevel, Metric, init_shared_state};
use sessiongate_core::{Backend, Entry, GateConfig};
use sessiongate_core::{CREDENTIAL_KEY_PREFIX, ErrorCode, LIMITER_KEY, LimiterStore};
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
    /// How many times it read a credential the host keeps.
    credential_reads: std::cell::Cell<u32>,
    /// The VM's credential cache, shared by the mocks of one VM's requests.
    cache: std::rc::Rc<std::cell::RefCell<crate::lookup::CredentialCache>>,
    /// The VM's copy of the limiter's log, shared likewise.
    log_copy: std::rc::Rc<std::cell::RefCell<crate::vm_state::LogCopy>>,
    /// The VM's group commit, shared likewise.
    commits: std::rc::Rc<std::cell::RefCell<crate::vm_state::Commits>>,
    /// This mock's context id, and the one its calls act on (`act_for`).
    context: u32,
    acting: Option<u32>,
    /// Replies and resumptions made for other contexts (`act_for`).
    replies_for: HashMap<u32, SentReply>,
    resumed: Vec<u32>,
    /// Contexts that no longer exist.
    gone: Vec<u32>,
    /// Milliseconds past the mock's epoch.
    clock: u64,
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
        match self.acting {
            Some(context) => {
                self.replies_for.insert(context, (status, h, body.to_vec()));
            }
            None => self.reply = Some((status, h, body.to_vec())),
        }
    }
    fn shared_get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), String> {
        if self.fail_shared {
            return Err("down".into());
        }
        if key.starts_with(CREDENTIAL_KEY_PREFIX) {
            self.credential_reads.set(self.credential_reads.get() + 1);
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
        1_800_000_000_000 + self.clock
    }
    fn credential_cache(&self) -> &std::cell::RefCell<crate::lookup::CredentialCache> {
        &self.cache
    }
    fn log_copy(&self) -> &std::cell::RefCell<crate::vm_state::LogCopy> {
        &self.log_copy
    }
    fn context_id(&self) -> u32 {
        self.context
    }
    fn act_for(&mut self, context: u32) -> bool {
        if self.gone.contains(&context) {
            return false;
        }
        self.acting = (context != self.context).then_some(context);
        true
    }
    fn resume_request(&mut self) {
        if let Some(context) = self.acting {
            self.resumed.push(context);
        }
    }
    fn commits(&self) -> &std::cell::RefCell<crate::vm_state::Commits> {
        &self.commits
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
    ) -> Result<u32, String> {
        if self.refuse_calls {
            return Err("BadArgument".into());
        }
        let body = String::from_utf8_lossy(body).into_owned();
        self.calls
            .push((cluster.into(), path.into(), body, timeout_ms));
        self.tokens.push(token.map(str::to_owned));
        Ok(self.calls.len() as u32)
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
        credentials: sessiongate_core::fixtures::token_set(TOKEN, "t")
            .unwrap()
            .into(),
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

/// Where the host says every token it keeps carries a checksum, a token
/// whose checksum fails is refused without reading the host's store; a
/// checksummed token is read and admitted, and unmarked, every token is read.
#[test]
fn a_wrong_checksum_costs_no_read_of_the_hosts_store() {
    let random = "abcdefghijABCDEFGHIJ0123456789klmn";
    let checksum = sessiongate_core::token_checksum(random.as_bytes());
    let token = format!("fus_{random}{}", std::str::from_utf8(&checksum).unwrap());
    let record = sessiongate_core::fixtures::record(
        &token,
        sessiongate_core::Kind::Token,
        "checked",
        sessiongate_core::Sites::All,
        sessiongate_core::Level::Standard,
    );
    let key = format!("{CREDENTIAL_KEY_PREFIX}{}", record.hash);
    let json = serde_json::to_vec(&[&record]).unwrap();
    let changed = format!(
        "{}{}",
        &token[..43],
        if token.ends_with('a') { 'b' } else { 'a' }
    );
    let hosted = |marked: bool| {
        Gate::new(GateConfig {
            backend: Backend::Stub,
            checksummed_tokens: marked,
            ..Default::default()
        })
        .unwrap()
    };
    let run = |gate: &Gate, presented: &str| {
        let mut m = request(&[&format!("Bearer {presented}")]);
        m.shared.insert(key.clone(), (json.clone(), 1));
        on_request_headers(gate, &mut m, &mut None);
        (m.reply.clone().unwrap().0, m.credential_reads.get())
    };
    assert_eq!(run(&hosted(true), &token), (200, 1));
    assert_eq!(run(&hosted(true), &changed), (401, 0));
    assert_eq!(run(&hosted(false), &changed), (401, 1));
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
        credentials: sessiongate_core::fixtures::token_set(TOKEN, "t")
            .unwrap()
            .into(),
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
        credentials: sessiongate_core::fixtures::token_set(TOKEN, "t")
            .unwrap()
            .into(),
        limiter: LimiterStore::Etcd {
            cluster: "etcd".into(),
            key: "sg/limiter".into(),
            timeout_ms: 250,
            user: None,
            password: None,
            group_commit: false,
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

/// A txn's answer that won, at etcd revision `revision`.
fn won_at(revision: u64) -> String {
    format!(r#"{{"header":{{"revision":"{revision}"}},"succeeded":true}}"#)
}

/// A txn's answer that lost: the failure branch's read of `log` at `revision`.
fn lost_to(log: &[u8], revision: u64) -> String {
    format!(
        r#"{{"header":{{}},"responses":[{{"response_range":{{"kvs":[{{"mod_revision":"{revision}","value":"{}"}}]}}}}]}}"#,
        b64(log)
    )
}

/// Another request on the same VM: its mock shares the VM's copy of the log.
fn next_on_vm(m: &Mock) -> Mock {
    let mut next = request(&[&format!("Bearer {TOKEN}")]);
    next.log_copy = m.log_copy.clone();
    next.clock = m.clock;
    next
}

/// A VM keeps the log it last wrote: the next admission is one txn that
/// compares the revision its write made, with no read first.
#[test]
fn an_admission_on_the_vms_copy_of_the_log_is_one_txn() {
    let g = etcd_gate(false);
    let mut m = request(&[&format!("Bearer {TOKEN}")]);
    let mut waiting = None;
    on_request_headers(&g, &mut m, &mut waiting);
    on_callout_response(&g, &mut m, &mut waiting, Some(200), br#"{"header":{}}"#);
    let next = on_callout_response(&g, &mut m, &mut waiting, Some(200), won_at(2).as_bytes());
    assert_eq!(next, Next::Stop);
    assert_eq!(m.calls.len(), 2, "the first: a read and a create");
    for revision in [2u64, 3, 4] {
        let mut again = next_on_vm(&m);
        let mut waiting = None;
        assert_eq!(on_request_headers(&g, &mut again, &mut waiting), Next::Wait);
        assert_eq!(again.calls.len(), 1);
        assert_eq!(again.calls[0].1, "/v3/kv/txn", "no read: the VM's copy");
        let compare = &last_body(&again)["compare"][0];
        assert_eq!(compare["mod_revision"], revision.to_string());
        let answer = won_at(revision + 1);
        let next = on_callout_response(&g, &mut again, &mut waiting, Some(200), answer.as_bytes());
        assert_eq!(next, Next::Stop);
        assert_eq!(again.reply.as_ref().map(|r| r.0), Some(200));
        assert_eq!(again.calls.len(), 1, "one etcd request for the admission");
        m = again;
    }
}

/// The copy is stale (another instance wrote since): its txn loses and
/// brings the current log, and the retry compares that: two requests.
#[test]
fn a_stale_copy_costs_one_lost_txn() {
    let g = etcd_gate(false);
    let empty = sessiongate_core::limiter_log::encode(&[]);
    let mut m = request(&[&format!("Bearer {TOKEN}")]);
    m.log_copy
        .borrow_mut()
        .set(Some(Entry::borrowed(&empty, 4).into_owned()));
    let mut waiting = None;
    on_request_headers(&g, &mut m, &mut waiting);
    assert_eq!(last_body(&m)["compare"][0]["mod_revision"], "4");
    let elsewhere = sessiongate_core::limiter_log::encode(&[1_800_000_000_000 - 5]);
    let lost = lost_to(&elsewhere, 9);
    assert_eq!(
        on_callout_response(&g, &mut m, &mut waiting, Some(200), lost.as_bytes()),
        Next::Wait
    );
    assert_eq!(last_body(&m)["compare"][0]["mod_revision"], "9");
    let next = on_callout_response(&g, &mut m, &mut waiting, Some(200), won_at(10).as_bytes());
    assert_eq!(next, Next::Stop);
    assert_eq!(m.reply.as_ref().map(|r| r.0), Some(200));
    assert_eq!(m.calls.len(), 2);
}

/// A copy that is full is full now: the 429 (with its `RateLimit` state)
/// costs no etcd request, on a gate that never saw the window fill.
#[test]
fn a_full_copy_is_a_429_with_no_call() {
    let g = Gate::new(GateConfig {
        credentials: sessiongate_core::fixtures::token_set(TOKEN, "t")
            .unwrap()
            .into(),
        limit: sessiongate_core::LimitConfig {
            requests: 2,
            window_seconds: 60,
        },
        limiter: LimiterStore::Etcd {
            cluster: "etcd".into(),
            key: "k".into(),
            timeout_ms: 250,
            user: None,
            password: None,
            group_commit: false,
        },
        ..Default::default()
    })
    .unwrap();
    let now = 1_800_000_000_000u64;
    let full = sessiongate_core::limiter_log::encode(&[now - 2, now - 1]);
    let mut m = request(&[&format!("Bearer {TOKEN}")]);
    m.log_copy
        .borrow_mut()
        .set(Some(Entry::borrowed(&full, 3).into_owned()));
    assert_eq!(on_request_headers(&g, &mut m, &mut None), Next::Stop);
    assert_eq!(m.reply.as_ref().map(|r| r.0), Some(429));
    assert!(m.calls.is_empty());
}

/// Losing the log to other writers is not a failure: past the 64 lost
/// writes after which core gives up on a store, the request still wins
/// and is admitted; only after [`crate::fleet::CONTENDED_MS`] of losing
/// is it a 503.
#[test]
fn a_request_that_keeps_losing_keeps_trying_while_etcd_answers() {
    let g = etcd_gate(false);
    let empty = sessiongate_core::limiter_log::encode(&[]);
    let mut m = request(&[&format!("Bearer {TOKEN}")]);
    m.log_copy
        .borrow_mut()
        .set(Some(Entry::borrowed(&empty, 1).into_owned()));
    let mut waiting = None;
    on_request_headers(&g, &mut m, &mut waiting);
    for revision in 2..102u64 {
        let lost = lost_to(&empty, revision);
        let next = on_callout_response(&g, &mut m, &mut waiting, Some(200), lost.as_bytes());
        assert_eq!(next, Next::Wait, "lost {revision} times");
        assert_eq!(
            last_body(&m)["compare"][0]["mod_revision"],
            revision.to_string()
        );
    }
    let next = on_callout_response(&g, &mut m, &mut waiting, Some(200), won_at(200).as_bytes());
    assert_eq!(next, Next::Stop);
    assert_eq!(m.reply.as_ref().map(|r| r.0), Some(200));
    // Another request loses for longer than the bound: 503.
    let mut m = next_on_vm(&m);
    let mut waiting = None;
    on_request_headers(&g, &mut m, &mut waiting);
    let lost = lost_to(&empty, 300);
    assert_eq!(
        on_callout_response(&g, &mut m, &mut waiting, Some(200), lost.as_bytes()),
        Next::Wait
    );
    m.clock += crate::fleet::CONTENDED_MS;
    let lost = lost_to(&empty, 301);
    let next = on_callout_response(&g, &mut m, &mut waiting, Some(200), lost.as_bytes());
    assert_eq!(next, Next::Stop);
    assert_eq!(m.reply.as_ref().map(|r| r.0), Some(503));
}

/// A gate whose limit (`requests` a minute) is on etcd, by group commit.
fn committing_gate(requests: u32) -> Gate {
    Gate::new(GateConfig {
        credentials: sessiongate_core::fixtures::token_set(TOKEN, "t")
            .unwrap()
            .into(),
        limit: sessiongate_core::LimitConfig {
            requests,
            window_seconds: 60,
        },
        limiter: LimiterStore::Etcd {
            cluster: "etcd".into(),
            key: "sg/limiter".into(),
            timeout_ms: 250,
            user: None,
            password: None,
            group_commit: true,
        },
        ..Default::default()
    })
    .unwrap()
}

/// One VM: its root context (id 1) and the requests on it (from id 2),
/// sharing the VM's copy of the log and its group commit.
struct Vm {
    root: Mock,
}

impl Vm {
    fn new(log: &[u64], revision: u64) -> Vm {
        let root = Mock {
            context: 1,
            ..Mock::default()
        };
        let encoded = sessiongate_core::limiter_log::encode(log);
        root.log_copy
            .borrow_mut()
            .set(Some(Entry::borrowed(&encoded, revision).into_owned()));
        Vm { root }
    }

    fn request(&self, context: u32) -> Mock {
        let mut m = request(&[&format!("Bearer {TOKEN}")]);
        m.context = context;
        m.log_copy = self.root.log_copy.clone();
        m.commits = self.root.commits.clone();
        m.cache = self.root.cache.clone();
        m
    }

    fn tick(&mut self, g: &Gate) {
        crate::commit::on_tick(g, &mut self.root);
    }

    fn answer(&mut self, g: &Gate, body: &str) {
        crate::commit::on_response(g, &mut self.root, Some(200), body.as_bytes());
    }

    fn reply_to(&self, context: u32) -> Option<u16> {
        self.root.replies_for.get(&context).map(|r| r.0)
    }
}

/// The admissions waiting on a VM's write go in one txn: the first writes
/// on its own; the two that arrive meanwhile wait, and the root context's
/// next tick writes the log with both in it, compared on the revision the
/// first one's write made, and answers both.
#[test]
fn the_admissions_waiting_on_a_vm_go_in_one_txn() {
    let g = committing_gate(100);
    let now = 1_800_000_000_000u64;
    let mut vm = Vm::new(&[now - 10], 5);
    let mut a = vm.request(2);
    let mut waiting_a = None;
    assert_eq!(on_request_headers(&g, &mut a, &mut waiting_a), Next::Wait);
    assert_eq!(a.calls.len(), 1, "the first writes on its own");
    let mut b = vm.request(3);
    let mut c = vm.request(4);
    assert_eq!(on_request_headers(&g, &mut b, &mut None), Next::Wait);
    assert_eq!(on_request_headers(&g, &mut c, &mut None), Next::Wait);
    assert!(b.calls.is_empty() && c.calls.is_empty(), "they wait");
    assert_eq!(vm.root.commits.borrow().waiting(), 2);
    // While the first write is in flight, a tick sends nothing.
    vm.tick(&g);
    assert!(vm.root.calls.is_empty());
    let next = on_callout_response(&g, &mut a, &mut waiting_a, Some(200), won_at(6).as_bytes());
    assert_eq!(next, Next::Stop);
    assert_eq!(a.reply.as_ref().map(|r| r.0), Some(200));
    vm.tick(&g);
    assert_eq!(vm.root.calls.len(), 1, "one txn for both");
    let body = last_body(&vm.root);
    assert_eq!(body["compare"][0]["mod_revision"], "6");
    let put = &body["success"][0]["request_put"]["value"];
    use base64::Engine as _;
    let log = base64::engine::general_purpose::STANDARD
        .decode(put.as_str().unwrap())
        .unwrap();
    let log = sessiongate_core::limiter_log::decode(Some(&log)).unwrap();
    assert_eq!(
        log.len(),
        4,
        "the log before, the first's, and both of the batch"
    );
    vm.answer(&g, &won_at(7));
    assert_eq!(vm.reply_to(3), Some(200));
    assert_eq!(vm.reply_to(4), Some(200));
    assert_eq!(vm.root.commits.borrow().waiting(), 0);
    assert_eq!(vm.root.metrics.get("sessiongate_allowed"), Some(&2));
    // The next admission writes on the batch's revision, on its own.
    let mut d = vm.request(5);
    on_request_headers(&g, &mut d, &mut None);
    assert_eq!(last_body(&d)["compare"][0]["mod_revision"], "7");
}

/// A batch never over-admits: a request the batch's own admissions leave
/// no room for waits for the next batch, which finds the log full and
/// answers it 429 with no call.
#[test]
fn a_batch_takes_only_what_the_window_has_room_for() {
    let g = committing_gate(2);
    let now = 1_800_000_000_000u64;
    let mut vm = Vm::new(&[now - 10], 5);
    let mut a = vm.request(2);
    let mut waiting_a = None;
    on_request_headers(&g, &mut a, &mut waiting_a);
    let mut b = vm.request(3);
    let mut c = vm.request(4);
    on_request_headers(&g, &mut b, &mut None);
    on_request_headers(&g, &mut c, &mut None);
    // The first loses to another instance, which took the last slot.
    let other = sessiongate_core::limiter_log::encode(&[now - 10, now - 5]);
    let lost = lost_to(&other, 8);
    let next = on_callout_response(&g, &mut a, &mut waiting_a, Some(200), lost.as_bytes());
    assert_eq!(next, Next::Stop, "the log it came back with is full");
    assert_eq!(a.reply.as_ref().map(|r| r.0), Some(429));
    vm.tick(&g);
    assert!(vm.root.calls.is_empty(), "a full log: nothing to write");
    assert_eq!(vm.reply_to(3), Some(429));
    assert_eq!(vm.reply_to(4), Some(429));
    assert_eq!(vm.root.commits.borrow().waiting(), 0);
}

/// Room for one of two: the batch takes the first, the other waits, and
/// once the batch is written it is answered 429 from the log it left.
#[test]
fn the_request_a_batch_fills_the_window_for_waits_for_the_next() {
    let g = committing_gate(2);
    let now = 1_800_000_000_000u64;
    let mut vm = Vm::new(&[now - 10], 5);
    let mut a = vm.request(2);
    let mut waiting_a = None;
    on_request_headers(&g, &mut a, &mut waiting_a);
    let mut b = vm.request(3);
    let mut c = vm.request(4);
    on_request_headers(&g, &mut b, &mut None);
    on_request_headers(&g, &mut c, &mut None);
    let elsewhere = sessiongate_core::limiter_log::encode(&[now - 10]);
    let lost = lost_to(&elsewhere, 6);
    on_callout_response(&g, &mut a, &mut waiting_a, Some(200), lost.as_bytes());
    vm.tick(&g);
    assert_eq!(vm.root.calls.len(), 1);
    assert_eq!(
        vm.root.commits.borrow().waiting(),
        3,
        "one in the batch, two waiting"
    );
    vm.answer(&g, &won_at(7));
    assert_eq!(
        vm.reply_to(3),
        Some(200),
        "the oldest of those waiting first"
    );
    assert_eq!(vm.reply_to(2), Some(429));
    assert_eq!(vm.reply_to(4), Some(429));
    assert_eq!(vm.root.calls.len(), 1, "no second write");
}

/// A batch that loses its compare goes again at once on the log the loss
/// came back with; etcd failing it fails its members (503); a member whose
/// client has gone is not answered.
#[test]
fn a_lost_batch_goes_again_and_a_failed_one_fails_its_members() {
    let g = committing_gate(100);
    let now = 1_800_000_000_000u64;
    let mut vm = Vm::new(&[now - 10], 5);
    vm.root.commits.borrow_mut().own_write_sent(99);
    let mut b = vm.request(3);
    let mut c = vm.request(4);
    on_request_headers(&g, &mut b, &mut None);
    on_request_headers(&g, &mut c, &mut None);
    vm.root.commits.borrow_mut().own_write_answered(99);
    vm.tick(&g);
    assert_eq!(last_body(&vm.root)["compare"][0]["mod_revision"], "5");
    let other = sessiongate_core::limiter_log::encode(&[now - 10, now - 3]);
    vm.answer(&g, &lost_to(&other, 9));
    assert_eq!(vm.root.calls.len(), 2, "sent again at once");
    assert_eq!(last_body(&vm.root)["compare"][0]["mod_revision"], "9");
    // Request 3's client goes away; etcd fails the write.
    vm.root.gone.push(3);
    vm.root.commits.borrow_mut().forget(3);
    crate::commit::on_response(&g, &mut vm.root, None, b"");
    assert_eq!(vm.reply_to(4), Some(503));
    assert_eq!(vm.reply_to(3), None);
    assert_eq!(vm.root.commits.borrow().waiting(), 0);
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
        credentials: sessiongate_core::fixtures::token_set(TOKEN, "t")
            .unwrap()
            .into(),
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
            group_commit: false,
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
        credentials: sessiongate_core::fixtures::token_set(TOKEN, "t")
            .unwrap()
            .into(),
        limiter: LimiterStore::Etcd {
            cluster: "etcd".into(),
            key: "k".into(),
            timeout_ms: 250,
            user: Some("gate".into()),
            password: Some("pw".into()),
            group_commit: false,
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

/// A gate whose credentials are looked up in etcd (the limiter in shared data).
fn store_gate() -> Gate {
    Gate::from_json(
        br#"{"backend":"stub","credentials":{"store":"etcd","cluster":"etcd","prefix":"sg","tick_ms":100,"max_stale_ms":1000}}"#,
    )
    .unwrap()
}

/// etcd's answer to a lookup: the record (if any) and the credentials' revision.
fn lookup_answer(record: Option<&sessiongate_core::CredentialRecord>, revision: u64) -> String {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let digest = match record {
        Some(r) => format!(
            r#"{{"response_range":{{"header":{{}},"kvs":[{{"key":"eA==","mod_revision":"3","value":"{}"}}],"count":"1"}}}}"#,
            b64(&serde_json::to_vec(r).unwrap())
        ),
        None => r#"{"response_range":{"header":{}}}"#.to_owned(),
    };
    format!(
        r#"{{"header":{{}},"succeeded":true,"responses":[{digest},{{"response_range":{{"header":{{}},"kvs":[{{"key":"eQ==","mod_revision":"{revision}"}}],"count":"1"}}}}]}}"#
    )
}

fn token_record() -> sessiongate_core::CredentialRecord {
    sessiongate_core::fixtures::record(
        TOKEN,
        sessiongate_core::Kind::Token,
        "t",
        sessiongate_core::Sites::All,
        sessiongate_core::Level::Standard,
    )
}

/// One VM's next request: the same cache, a later time.
fn next_request(before: &Mock, clock: u64) -> Mock {
    let mut m = request(&[&format!("Bearer {TOKEN}")]);
    m.cache = before.cache.clone();
    m.clock = clock;
    m
}

/// With the etcd store marked checksummed, a token whose checksum fails is
/// refused with no call to etcd; unmarked, it is looked up as any token.
#[test]
fn a_wrong_checksum_costs_no_etcd_lookup_where_the_store_is_marked() {
    let random = "abcdefghijABCDEFGHIJ0123456789klmn";
    let checksum = sessiongate_core::token_checksum(random.as_bytes());
    let changed =
        format!("fus_{random}{}", std::str::from_utf8(&checksum).unwrap()).replace("abc", "abd");
    let config = |marked: bool| {
        format!(
            r#"{{"backend":"stub","checksummed_tokens":{marked},"credentials":{{"store":"etcd","cluster":"etcd","prefix":"sg"}}}}"#
        )
    };
    let marked = Gate::from_json(config(true).as_bytes()).unwrap();
    let mut m = request(&[&format!("Bearer {changed}")]);
    assert_eq!(on_request_headers(&marked, &mut m, &mut None), Next::Stop);
    assert_eq!(
        (m.reply.as_ref().map(|r| r.0), m.calls.len()),
        (Some(401), 0)
    );
    let unmarked = Gate::from_json(config(false).as_bytes()).unwrap();
    let mut m = request(&[&format!("Bearer {changed}")]);
    assert_eq!(on_request_headers(&unmarked, &mut m, &mut None), Next::Wait);
    assert_eq!(m.calls.len(), 1);
}

/// A credential is looked up by digest once, then answered from the VM's
/// cache; a tick that sees the credentials' revision move drops it, and the
/// next request looks it up again (here: deleted, so refused).
#[test]
fn store_credentials_are_looked_up_cached_and_dropped_on_a_change() {
    let g = store_gate();
    let mut m = request(&[&format!("Bearer {TOKEN}")]);
    let mut waiting = None;
    assert_eq!(on_request_headers(&g, &mut m, &mut waiting), Next::Wait);
    let (cluster, path, body, _) = m.calls[0].clone();
    assert_eq!((cluster.as_str(), path.as_str()), ("etcd", "/v3/kv/txn"));
    let key = sessiongate_etcd::digest_key("sg", &token_record().hash);
    use base64::Engine as _;
    assert!(body.contains(&base64::engine::general_purpose::STANDARD.encode(key)));
    let found = lookup_answer(Some(&token_record()), 5);
    let next = on_callout_response(&g, &mut m, &mut waiting, Some(200), found.as_bytes());
    assert_eq!(next, Next::Stop);
    assert_eq!(m.reply.as_ref().map(|r| r.0), Some(200));
    // Cached: no call.
    let mut m2 = next_request(&m, 50);
    assert_eq!(on_request_headers(&g, &mut m2, &mut None), Next::Stop);
    assert_eq!(
        (m2.reply.as_ref().map(|r| r.0), m2.calls.len()),
        (Some(200), 0)
    );
    // The tick: the revision moved.
    let mut tick = Tick::default();
    on_tick(&g, &mut m2, &mut tick);
    on_tick(&g, &mut m2, &mut tick);
    assert_eq!(m2.calls.len(), 1, "one read in flight at a time");
    assert_eq!(m2.calls[0].1, "/v3/kv/range");
    let moved =
        r#"{"header":{"revision":"9"},"kvs":[{"key":"eQ==","mod_revision":"6"}],"count":"1"}"#;
    on_tick_response(&g, &mut m2, &mut tick, Some(200), moved.as_bytes());
    assert!(m2.cache.borrow().is_empty());
    let mut m3 = next_request(&m2, 60);
    let mut waiting = None;
    assert_eq!(on_request_headers(&g, &mut m3, &mut waiting), Next::Wait);
    let gone = lookup_answer(None, 6);
    on_callout_response(&g, &mut m3, &mut waiting, Some(200), gone.as_bytes());
    assert_eq!(m3.reply.as_ref().map(|r| r.0), Some(401));
    // The miss is cached too.
    let mut m4 = next_request(&m3, 70);
    on_request_headers(&g, &mut m4, &mut None);
    assert_eq!(
        (m4.reply.as_ref().map(|r| r.0), m4.calls.len()),
        (Some(401), 0)
    );
}

/// etcd unreachable: what the cache holds is answered until it is
/// max_stale_ms old, then the request is 503, as is one it does not hold:
/// never a 401 that would read as a revocation.
#[test]
fn an_unreachable_store_is_503_never_401() {
    let g = store_gate();
    let mut m = request(&[&format!("Bearer {TOKEN}")]);
    let mut waiting = None;
    on_request_headers(&g, &mut m, &mut waiting);
    on_callout_response(&g, &mut m, &mut waiting, None, b"");
    let (status, _, body) = m.reply.clone().unwrap();
    assert_eq!(status, 503);
    assert!(String::from_utf8_lossy(&body).contains("limiter_unavailable"));
    // Held: answered while fresh, even with ticks failing.
    let mut m = next_request(&m, 0);
    let mut waiting = None;
    on_request_headers(&g, &mut m, &mut waiting);
    let found = lookup_answer(Some(&token_record()), 5);
    on_callout_response(&g, &mut m, &mut waiting, Some(200), found.as_bytes());
    let mut tick = Tick::default();
    on_tick(&g, &mut m, &mut tick);
    on_tick_response(&g, &mut m, &mut tick, None, b"");
    let mut m2 = next_request(&m, 900);
    on_request_headers(&g, &mut m2, &mut None);
    assert_eq!(m2.reply.as_ref().map(|r| r.0), Some(200));
    let mut m3 = next_request(&m, 1_100);
    let mut waiting = None;
    assert_eq!(
        on_request_headers(&g, &mut m3, &mut waiting),
        Next::Wait,
        "stale: looked up"
    );
    on_callout_response(&g, &mut m3, &mut waiting, Some(503), b"{}");
    assert_eq!(m3.reply.as_ref().map(|r| r.0), Some(503));
    // A request the decision ends before the credential asks etcd nothing.
    let mut m4 = next_request(&m, 1_200);
    m4.request[1].1 = b"/nowhere".to_vec();
    on_request_headers(&g, &mut m4, &mut None);
    assert_eq!(
        (m4.reply.as_ref().map(|r| r.0), m4.calls.len()),
        (Some(404), 0)
    );
    let mut m5 = next_request(&m, 1_200);
    m5.request.retain(|(n, _)| n != "authorization");
    on_request_headers(&g, &mut m5, &mut None);
    assert_eq!(
        (m5.reply.as_ref().map(|r| r.0), m5.calls.len()),
        (Some(401), 0)
    );
}

/// A VM whose peer read the credentials' revision within the tick period
/// takes that read (no call of its own), and drops its cache when it moved.
#[test]
fn a_pods_vms_share_one_revision_read_a_tick() {
    let g = store_gate();
    let mut vm1 = request(&[&format!("Bearer {TOKEN}")]);
    let mut tick1 = Tick::default();
    on_tick(&g, &mut vm1, &mut tick1);
    assert_eq!(vm1.calls.len(), 1);
    let moved =
        r#"{"header":{"revision":"9"},"kvs":[{"key":"eQ==","mod_revision":"7"}],"count":"1"}"#;
    on_tick_response(&g, &mut vm1, &mut tick1, Some(200), moved.as_bytes());
    // A second VM of the same proxy: the same shared data, its own cache.
    let mut vm2 = request(&[&format!("Bearer {TOKEN}")]);
    vm2.shared = vm1.shared.clone();
    vm2.clock = 50;
    let mut waiting = None;
    on_request_headers(&g, &mut vm2, &mut waiting);
    let found = lookup_answer(Some(&token_record()), 6);
    on_callout_response(&g, &mut vm2, &mut waiting, Some(200), found.as_bytes());
    assert_eq!(vm2.cache.borrow().len(), 1);
    let calls = vm2.calls.len();
    let mut tick2 = Tick::default();
    on_tick(&g, &mut vm2, &mut tick2);
    assert_eq!(vm2.calls.len(), calls, "the peer's read was taken: no call");
    assert!(
        vm2.cache.borrow().is_empty(),
        "revision 7 is past the cached 6"
    );
    // The peer's read is older than the tick period: its own call.
    vm2.clock = 200;
    on_tick(&g, &mut vm2, &mut tick2);
    assert_eq!(vm2.calls.len(), calls + 1);
}
