//! The proxy-wasm host (`sessiongate-filter-host`) running the filter the
//! binary embeds, without HTTP: VMs racing on shared data, and the callout
//! half of a paused request.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;

use sessiongate::serve::EMBEDDED_PLUGIN;
use sessiongate_core::{GateConfig, LimitConfig};
use sessiongate_filter_host::{CallResponse, HeaderList, Plugin, RequestPhase};

const TOKEN: &str = "fus_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123";

fn config(requests: u32) -> Arc<Vec<u8>> {
    let config = GateConfig {
        credentials: sessiongate_core::fixtures::token_set(TOKEN, "t")
            .unwrap()
            .into(),
        limit: LimitConfig {
            requests,
            window_seconds: 3600,
        },
        ..Default::default()
    };
    Arc::new(serde_json::to_vec(&config).unwrap())
}

fn request() -> HeaderList {
    vec![
        (":method".into(), b"GET".to_vec()),
        (
            ":path".into(),
            b"/v1/external/sessions/acme/s?startTime=9007199254740991".to_vec(),
        ),
        (
            "authorization".into(),
            format!("Bearer {TOKEN}").into_bytes(),
        ),
    ]
}

/// VMs on four threads racing on one shared-data key, no HTTP in
/// between: the global limit still admits exactly N.
#[test]
fn vms_on_many_threads_admit_exactly_the_limit() {
    let plugin = Plugin::compile(EMBEDDED_PLUGIN, Arc::new(|_, _| {})).unwrap();
    let config = config(150);
    let admitted: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let mut vm = plugin.start_vm(i, config.clone()).unwrap();
                s.spawn(move || {
                    (0..400)
                        .filter(|_| match vm.on_request(request(), None).unwrap() {
                            RequestPhase::Reply(reply, _) => reply.status == 200,
                            RequestPhase::Continue { .. } => panic!("stub backend forwarded"),
                            RequestPhase::Paused { .. } => {
                                panic!("shared data needs no callout")
                            }
                        })
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(admitted, 150);
    let denied = plugin
        .stats()
        .snapshot()
        .into_iter()
        .find(|(n, _)| n == "sessiongate_denied_rate_limited")
        .map(|(_, v)| v);
    assert_eq!(denied, Some(1600 - 150));
}

fn etcd_config() -> Arc<Vec<u8>> {
    let config = GateConfig {
        credentials: sessiongate_core::fixtures::token_set(TOKEN, "t")
            .unwrap()
            .into(),
        limiter: sessiongate_core::LimiterStore::Etcd {
            cluster: "etcd".into(),
            key: "sg/limiter".into(),
            timeout_ms: 250,
            user: None,
            password: None,
            group_commit: false,
        },
        ..Default::default()
    };
    Arc::new(serde_json::to_vec(&config).unwrap())
}

fn plugin_with(clusters: &[&str]) -> Plugin {
    let mut plugin = Plugin::compile(EMBEDDED_PLUGIN, Arc::new(|_, _| {})).unwrap();
    plugin.set_clusters(clusters.iter().map(|c| (*c).to_owned()));
    plugin
}

fn answer(status: &str, body: &str) -> Option<CallResponse> {
    Some(CallResponse {
        headers: vec![(":status".into(), status.as_bytes().to_vec())],
        body: body.as_bytes().to_vec(),
        trailers: Vec::new(),
    })
}

/// The real filter on the host's callout half: a paused request, its
/// call as Envoy would send it, answers handed back, then the reply.
#[test]
fn a_callout_pauses_the_request_until_its_answer() {
    let plugin = plugin_with(&["etcd"]);
    let mut vm = plugin.start_vm(0, etcd_config()).unwrap();
    let RequestPhase::Paused { context, calls } = vm.on_request(request(), None).unwrap() else {
        panic!("the filter should call etcd");
    };
    let [call] = &calls[..] else {
        panic!("one call: {calls:?}")
    };
    let header = |n: &str| {
        call.headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(call.cluster, "etcd");
    assert_eq!(header(":method").as_deref(), Some("POST"));
    assert_eq!(header(":path").as_deref(), Some("/v3/kv/range"));
    assert_eq!(header(":authority").as_deref(), Some("etcd"));
    assert_eq!(call.timeout_ms, 250);
    // Absent key: the filter creates it.
    let phase = vm
        .on_call_response(context, call.token, answer("200", r#"{"header":{}}"#))
        .unwrap();
    let RequestPhase::Paused { calls, .. } = phase else {
        panic!("a write should follow");
    };
    let phase = vm
        .on_call_response(
            context,
            calls[0].token,
            answer("200", r#"{"header":{},"succeeded":true}"#),
        )
        .unwrap();
    let RequestPhase::Reply(reply, _) = phase else {
        panic!("the stub answers");
    };
    assert_eq!(reply.status, 200);
}

/// A call that fails (no answer) or a cluster the host does not know
/// (BadArgument, as Envoy answers): 503, the stream ended.
#[test]
fn failed_calls_and_unknown_clusters_fail_closed() {
    let plugin = plugin_with(&["etcd"]);
    let mut vm = plugin.start_vm(0, etcd_config()).unwrap();
    let RequestPhase::Paused { context, calls } = vm.on_request(request(), None).unwrap() else {
        panic!("paused");
    };
    let RequestPhase::Reply(reply, _) = vm.on_call_response(context, calls[0].token, None).unwrap()
    else {
        panic!("answered");
    };
    assert_eq!(reply.status, 503);
    assert_eq!(vm.open_streams(), 0, "the stream ended");

    let mut vm = plugin_with(&[]).start_vm(0, etcd_config()).unwrap();
    let RequestPhase::Reply(reply, _) = vm.on_request(request(), None).unwrap() else {
        panic!("an unknown cluster is refused at once");
    };
    assert_eq!(reply.status, 503);
}
