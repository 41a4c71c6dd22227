//! What one decision costs: parse, hash, look up, scope, one limiter step on
//! an in-memory CAS store, for credential sets of 10, 1,000 and 1,000,000.
//! `cargo bench -p sessiongate-core --bench decision`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sessiongate_core::fixtures;
use sessiongate_core::{
    Backend, CredentialSet, Gate, GateConfig, Kind, LIMITER_KEY, Level, LimitConfig, MemoryKv,
    Request, Sites, hash_secret, is_checksummed_token, limiter_log, token_checksum,
};
use std::hint::black_box;

fn token(i: usize) -> String {
    format!("fus_{:0>40}", i)
}

fn gate(n: usize) -> Gate {
    gate_with_limit(n, 20, 60)
}

fn gate_with_limit(n: usize, requests: u32, window_seconds: u32) -> Gate {
    let credentials = (0..n)
        .map(|i| {
            fixtures::record(
                &token(i),
                Kind::Token,
                &format!("t{i}"),
                Sites::All,
                Level::Standard,
            )
        })
        .collect();
    Gate::new(GateConfig {
        credentials: CredentialSet::new(credentials).unwrap().into(),
        limit: LimitConfig {
            requests,
            window_seconds,
        },
        // Forward: the decision without the stub's page of JSON.
        backend: Backend::Upstream(None),
        ..Default::default()
    })
    .unwrap()
}

fn decision(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for n in [10usize, 1_000, 1_000_000] {
        let gate = gate(n);
        let auth = format!("Bearer {}", token(n / 2));
        let values = [auth.as_bytes()];
        let req = Request {
            method: "GET",
            target: "/v1/external/sessions/acme/site-1?startTime=1717200000000",
            authorization: &values,
            client: None,
        };
        let mut store = MemoryKv::default();
        // A minute and a bit between requests: every one is admitted, and the
        // limiter's state stays at one entry, as under a steady light load.
        let mut now = 1_800_000_000_000u64;
        group.bench_with_input(BenchmarkId::new("admitted", n), &n, |b, _| {
            b.iter(|| {
                now += 61_000;
                black_box(gate.decide(black_box(&req), now, &mut store))
            })
        });
        let mut store = MemoryKv::default();
        for _ in 0..20 {
            gate.decide(&req, 0, &mut store);
        }
        // The gate remembers the log is full until the oldest admission
        // expires: a 429 reads nothing.
        group.bench_with_input(BenchmarkId::new("rate_limited", n), &n, |b, _| {
            b.iter(|| black_box(gate.decide(black_box(&req), 1, &mut store)))
        });
    }
    group.finish();
    c.bench_function("sha256_44_bytes", |b| {
        let t = token(7);
        b.iter(|| black_box(hash_secret(black_box(t.as_bytes()))))
    });
    // What a gate whose tokens all carry a checksum adds to each admitted
    // token (and what a wrong one costs instead of the hash): beside SHA-256.
    c.bench_function("checksum_44_bytes", |b| {
        let random = b"abcdefghijABCDEFGHIJ0123456789klmn";
        let checksum = token_checksum(random);
        let t = format!(
            "fus_{}{}",
            std::str::from_utf8(random).unwrap(),
            std::str::from_utf8(&checksum).unwrap()
        );
        b.iter(|| black_box(is_checksummed_token(black_box(&t))))
    });
}

/// One admitted decision whose limiter state is full-ish under a high limit
/// (100,000 a second, as the load bench configures to admit everything):
/// 20,000 live admissions, one per millisecond (20,000 runs) or fifty per
/// millisecond (400 runs), as a 50,000 req/s load leaves them. Every step
/// reads, checks and rewrites the whole state, so its cost follows the runs,
/// not the admissions. Each iteration also copies the state into the store,
/// as a host's shared-data read copies it into the guest.
fn limiter(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_with_20000_admissions");
    let gate = gate_with_limit(10, 100_000, 1);
    let auth = format!("Bearer {}", token(5));
    let values = [auth.as_bytes()];
    let req = Request {
        method: "GET",
        target: "/v1/external/sessions/acme/site-1",
        authorization: &values,
        client: None,
    };
    for per_ms in [1u64, 50] {
        let start = 1_800_000_000_000u64;
        let times: Vec<u64> = (0..20_000u64).map(|i| start + i / per_ms).collect();
        let state = limiter_log::encode(&times);
        let now = *times.last().unwrap();
        let runs = 20_000 / per_ms;
        group.bench_with_input(BenchmarkId::new("runs", runs), &state, |b, state| {
            let mut store = MemoryKv::default();
            b.iter(|| {
                store.put(LIMITER_KEY, state.clone());
                black_box(gate.decide(black_box(&req), now, &mut store))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decision, limiter);
criterion_main!(benches);
