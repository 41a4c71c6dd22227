//! The root context's own life: its tick (`proxy_set_tick_period_milliseconds`,
//! `proxy_on_tick`) and the answers to the calls it makes then, as Envoy
//! delivers them. A root context has no stream; while one of its callbacks
//! runs it is given one, so the host calls a stream's callbacks use (a
//! callout, its answer) work for it too.

use std::time::Duration;

use anyhow::Result;

use crate::{CallResponse, Callout, ROOT_CONTEXT, Stream, Vm};

impl Vm {
    /// How often the filter asked to be ticked (`None`: never).
    pub fn tick_period(&self) -> Option<Duration> {
        let ms = self.store.data().tick_ms;
        (ms > 0).then(|| Duration::from_millis(u64::from(ms)))
    }

    /// Runs `proxy_on_tick`: the calls the root context made, for the host
    /// to send and answer with [`Vm::on_root_call_response`].
    pub fn on_tick(&mut self) -> Result<Vec<Callout>> {
        self.in_root(None, |vm| {
            vm.exports.on_tick.call(&mut vm.store, ROOT_CONTEXT)
        })
    }

    /// Delivers the answer to a call the root context made (`None`: it
    /// failed); returns the calls it made in turn.
    pub fn on_root_call_response(
        &mut self,
        token: u32,
        response: Option<CallResponse>,
    ) -> Result<Vec<Callout>> {
        let sizes = CallResponse::sizes(response.as_ref());
        self.in_root(response, |vm| vm.deliver_call_response(token, sizes))
    }

    fn in_root(
        &mut self,
        call_response: Option<CallResponse>,
        callback: impl FnOnce(&mut Vm) -> wasmtime::Result<()>,
    ) -> Result<Vec<Callout>> {
        let state = self.store.data_mut();
        state.effective = ROOT_CONTEXT;
        state.streams.insert(
            ROOT_CONTEXT,
            Stream {
                call_response,
                ..Stream::default()
            },
        );
        let result = self.call(callback);
        let state = self.store.data_mut();
        state.streams.remove(&ROOT_CONTEXT);
        let calls = std::mem::take(&mut state.calls);
        result.map(|()| calls)
    }
}
