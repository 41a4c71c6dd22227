//! One request through the real filter `.wasm` under wasmtime, host calls
//! included, no sockets: `cargo bench -p sessiongate --bench filter`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use sessiongate::serve::EMBEDDED_PLUGIN;
use sessiongate_core::{Backend, GateConfig, LimitConfig};
use sessiongate_filter_host::{HeaderList, Plugin, RequestPhase};

const TOKEN: &str = "fus_0123456789012345678901234567890123456789";

fn config(requests: u32, backend: Backend) -> Arc<Vec<u8>> {
    let config = GateConfig {
        credentials: sessiongate_core::fixtures::token_set(TOKEN, "bench")
            .unwrap()
            .into(),
        limit: LimitConfig {
            requests,
            window_seconds: 60,
        },
        backend,
        ..Default::default()
    };
    Arc::new(serde_json::to_vec(&config).unwrap())
}

fn headers() -> HeaderList {
    vec![
        (":method".into(), b"GET".to_vec()),
        (
            ":path".into(),
            b"/v1/external/sessions/acme/site-1".to_vec(),
        ),
        (":authority".into(), b"gate".to_vec()),
        (
            "authorization".into(),
            format!("Bearer {TOKEN}").into_bytes(),
        ),
        ("user-agent".into(), b"bench".to_vec()),
    ]
}

fn filter(c: &mut Criterion) {
    // SESSIONGATE_BENCH_PLUGIN=path measures another build of the filter
    // (a profile or wasm-opt level) without rebuilding the bench.
    let wasm = match std::env::var_os("SESSIONGATE_BENCH_PLUGIN") {
        Some(path) => std::fs::read(path).unwrap(),
        None => EMBEDDED_PLUGIN.to_vec(),
    };
    let plugin = Plugin::compile(&wasm, Arc::new(|_, _| {})).unwrap();
    // Over the limit: the request phase answers 429 itself.
    let mut vm = plugin.start_vm(0, config(1, Backend::Stub)).unwrap();
    let _ = vm.on_request(headers(), None).unwrap();
    c.bench_function("filter/on_request_headers/rate_limited", |b| {
        b.iter(
            || match vm.on_request(black_box(headers()), None).unwrap() {
                RequestPhase::Reply(reply, _) => assert_eq!(reply.status, 429),
                RequestPhase::Continue { .. } | RequestPhase::Paused { .. } => {
                    panic!("expected 429")
                }
            },
        )
    });
    // Admitted and forwarded: request phase plus response phase (the
    // rate-limit headers), the whole stream. The default limit (20 a minute)
    // with a clock that moves a minute per request: every request is
    // admitted and the limiter's state stays small, as in production.
    let mut plugin = plugin;
    let tick = Arc::new(std::sync::atomic::AtomicU64::new(1_800_000_000_000_000_000));
    let clock = tick.clone();
    plugin.set_clock(Arc::new(move || {
        clock.fetch_add(61_000_000_000, std::sync::atomic::Ordering::Relaxed)
    }));
    let mut vm = plugin
        .start_vm(1, config(20, Backend::Upstream(None)))
        .unwrap();
    c.bench_function("filter/stream/admitted_forward", |b| {
        b.iter(
            || match vm.on_request(black_box(headers()), None).unwrap() {
                RequestPhase::Continue { context, .. } => {
                    let response = vec![(":status".to_owned(), b"200".to_vec())];
                    black_box(vm.on_response(context, response).unwrap());
                }
                RequestPhase::Reply(r, _) => panic!("expected a forward, got {}", r.status),
                RequestPhase::Paused { .. } => panic!("shared data needs no callout"),
            },
        )
    });
}

criterion_group!(benches, filter);
criterion_main!(benches);
