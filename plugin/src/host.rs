//! What the filter needs from its host, behind a trait so the filter is
//! tested natively against a mock: header and reply calls, shared data (and
//! shared data as the gate's [`Kv`]), the clock, logs, counters and callouts.

use std::borrow::Cow;

use sessiongate_core::{Entry, ErrorCode, Kv, KvError, LIMITER_KEY, Version};

use crate::header_block::HeaderBlock;

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
    /// `on_callout_response` with the token returned. `Err`: the host
    /// refused to send it.
    fn http_call(
        &mut self,
        cluster: &str,
        path: &str,
        body: &[u8],
        timeout_ms: u32,
        token: Option<&str>,
    ) -> Result<u32, String>;
    /// The context this host's calls are made for (a stream's, or the root's).
    #[cfg(feature = "fleet")]
    fn context_id(&self) -> u32;
    /// Makes the host calls that follow act on `context`'s stream
    /// (`proxy_set_effective_context`); `false`: no such stream any more.
    #[cfg(feature = "fleet")]
    fn act_for(&mut self, context: u32) -> bool;
    /// Lets the stream acted on go on upstream (`proxy_continue_stream`).
    #[cfg(feature = "fleet")]
    fn resume_request(&mut self);
    /// This VM's group commit of the limiter's log.
    #[cfg(feature = "fleet")]
    fn commits(&self) -> &std::cell::RefCell<crate::vm_state::Commits>;
    /// This VM's cache of credentials looked up in the store.
    #[cfg(feature = "fleet")]
    fn credential_cache(&self) -> &std::cell::RefCell<crate::lookup::CredentialCache>;
    /// This VM's copy of the limiter's log in etcd.
    #[cfg(feature = "fleet")]
    fn log_copy(&self) -> &std::cell::RefCell<crate::vm_state::LogCopy>;
    /// The etcd token this VM logged in for, if any (kept across requests).
    fn etcd_token(&self) -> Option<String>;
    fn set_etcd_token(&mut self, token: Option<String>);
}

/// Envoy's shared data as the gate's [`Kv`].
pub(crate) struct SharedKv<'h, H: Host>(pub(crate) &'h mut H);

impl<H: Host> Kv for SharedKv<'_, H> {
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
