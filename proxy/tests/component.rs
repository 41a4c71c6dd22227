//! End to end for the Spin build: the wasi:http 0.3 component that
//! `proxy/build.rs` builds from `spin/` for wasm32-wasip2, served by the real
//! binary with `serve --component`, credentials minted with the real CLI.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::Path;

mod common;

use common::{
    Fixture, Local, Server, assert_forwarded, assert_functional_suite, assert_no_secret,
    assert_no_secret_in_transcript, assert_relayed, cli, fixture, request_to_forward, upstream,
};
use sessiongate_conformance::http::{get, request};
use sessiongate_conformance::{self as suite};

const COMPONENT: &str = env!("SESSIONGATE_COMPONENT_WASM");
const SESSIONS: &str = "/v1/external/sessions/acme/site-a";

/// How `serve --component` can make its key-value swap behave: strictly,
/// and as Spin's SQLite and Redis stores do. The component must be exact on
/// all of them.
const SEMANTICS: [&str; 3] = ["strict", "spin-sqlite", "spin-redis"];

fn start(fx: &Fixture, config: &str) -> Server {
    start_on(fx, config, "strict")
}

fn start_on(fx: &Fixture, config: &str, semantics: &str) -> Server {
    let args = ["--component", COMPONENT, "--key-value-semantics", semantics];
    Server::start_with(&fx.dir, &fx.store, config, 2, &args)
}

#[test]
fn conformance_suite_against_the_component() {
    for semantics in SEMANTICS {
        let mut fx = fixture();
        // The suite sends many invalid credentials on purpose: the guard is tested apart.
        let config = "[limit]\nrequests = 100000\nwindow_seconds = 60\n[guard]\nfailures = 0\n";
        let server = start_on(&fx, config, semantics);
        // The log is read by another thread: wait for the line, not just look.
        server.wait_for_log(
            "component, instances reused",
            "serve did not say it runs the component",
        );
        sessiongate_conformance::http::start_transcript();
        assert_functional_suite(&mut Local {
            server: &server,
            fixture: &mut fx,
        });
        assert_no_secret_in_transcript(&fx.secrets);
        assert_no_secret("the server log", &server.log_text(), &fx.secrets);
    }
}

/// Concurrent requests run on instances of their own: only the key-value
/// store keeps the count. Each run starts on a fresh store, where the
/// limiter's key is created by the burst itself (Spin's SQLite store lets
/// every racer "create" it; its Redis store reports lost swaps as won).
#[test]
fn exactly_n_admitted_out_of_many_concurrent_instances_on_a_fresh_store() {
    for semantics in SEMANTICS {
        for _ in 0..3 {
            let mut fx = fixture();
            let config = "[limit]\nrequests = 10\nwindow_seconds = 60\n[guard]\nfailures = 0\n";
            let server = start_on(&fx, config, semantics);
            let mut h = Local {
                server: &server,
                fixture: &mut fx,
            };
            suite::exact_global_limit(&mut h, 10, 60, 64)
                .unwrap_or_else(|e| panic!("{semantics}: {e}"));
        }
    }
}

/// Many wrong credentials from one client at once, on a fresh store: it is
/// told 401 exactly as often as the guard allows, then held.
#[test]
fn concurrent_failures_get_exactly_the_guards_allowance() {
    for semantics in SEMANTICS {
        let fx = fixture();
        let config = "[guard]\nfailures = 5\nwindow_seconds = 60\n";
        let server = start_on(&fx, config, semantics);
        let wrong = "Bearer fus_0000000000000000000000000000000000000000";
        let barrier = std::sync::Barrier::new(24);
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..24)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        get(server.addr, SESSIONS, Some(wrong)).unwrap().status
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let told_401 = statuses.iter().filter(|s| **s == 401).count();
        let held = statuses.iter().filter(|s| **s == 429).count();
        assert_eq!((told_401, held), (5, 19), "{semantics}: {statuses:?}");
    }
}

#[test]
fn forwards_over_wasi_http_and_maps_upstream_failure_to_502() {
    let fx = fixture();
    let (up, seen) = upstream();
    let config =
        format!("backend = \"http://{up}\"\n[limit]\nrequests = 1000\nwindow_seconds = 60\n");
    let server = start(&fx, &config);
    let r = request_to_forward(server.addr, &fx.creds.token_all);
    assert_relayed(&r);
    let received = seen.lock().unwrap().join("\n");
    assert_forwarded(&received, &fx.secrets);
    assert!(
        !received.to_ascii_lowercase().contains("spin-client-addr"),
        "{received}"
    );

    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = format!("backend = \"http://{dead}\"\nupstream_timeout_ms = 2000\n");
    let server = start(&fx, &config);
    let auth = format!("Bearer {}", fx.creds.token_all);
    let r = get(server.addr, SESSIONS, Some(&auth)).unwrap();
    suite::expect_error(&r, 502, "upstream_unavailable").unwrap();
    assert_eq!(r.header("ratelimit-policy"), Some("20;w=60"));
}

#[test]
fn a_failing_key_value_store_fails_closed() {
    let fx = fixture();
    let server = start(&fx, "[testing]\nfail_limiter_store = true\n");
    let auth = format!("Bearer {}", fx.creds.token_all);
    let r = get(server.addr, SESSIONS, Some(&auth)).unwrap();
    suite::expect_error(&r, 503, "limiter_unavailable").unwrap();
    assert_eq!(get(server.addr, "/me", Some(&auth)).unwrap().status, 200);
}

/// The guard keys on the address the host puts in `spin-client-addr`. The
/// host appends it after a value the client sent, as Spin does; the
/// component trusts the last, so rotating the header buys no fresh guesses.
#[test]
fn the_guard_sees_the_real_client_whatever_header_it_sends() {
    for semantics in SEMANTICS {
        the_guard_sees_the_real_client_on(semantics);
    }
}

fn the_guard_sees_the_real_client_on(semantics: &str) {
    let fx = fixture();
    let config =
        "[limit]\nrequests = 20\nwindow_seconds = 60\n[guard]\nfailures = 3\nwindow_seconds = 60\n";
    let server = start_on(&fx, config, semantics);
    let wrong = "Bearer fus_0000000000000000000000000000000000000000";
    for i in 0..3 {
        let spoof = format!("10.0.0.{i}:1234");
        let r = request(
            server.addr,
            "GET",
            SESSIONS,
            &[("Authorization", wrong), ("spin-client-addr", &spoof)],
        )
        .unwrap();
        suite::expect_error(&r, 401, "invalid_credentials").unwrap();
    }
    let r = request(
        server.addr,
        "GET",
        SESSIONS,
        &[("Authorization", wrong), ("spin-client-addr", "10.9.9.9:1")],
    )
    .unwrap();
    suite::guard_refusal_claims_no_budget(&r, 20).unwrap();
}

/// `wit/` is what the component is built against: every import and export
/// of the built component, apart from the WASI 0.2 runtime Rust's std links
/// on wasm32-wasip2, is in the `sessiongate:gate/gate` world, and the world
/// names nothing the component does not use. Editing one without the other
/// fails here.
#[test]
fn the_component_and_wit_do_not_drift_apart() {
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(&wit).unwrap();
    let world = resolve.select_world(&[package], Some("gate")).unwrap();
    let names = |items: &wit_parser::IndexMap<wit_parser::WorldKey, wit_parser::WorldItem>| {
        items
            .iter()
            .filter(|(_, item)| matches!(item, wit_parser::WorldItem::Interface { .. }))
            .map(|(key, _)| resolve.name_world_key(key))
            .collect::<BTreeSet<String>>()
    };
    let world_imports = names(&resolve.worlds[world].imports);
    let world_exports = names(&resolve.worlds[world].exports);

    let mut config = wasmtime::Config::new();
    config.wasm_component_model_async(true);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let component = wasmtime::component::Component::from_file(&engine, COMPONENT).unwrap();
    let ty = component.component_type();
    let std_runtime = |name: &str| {
        ["cli", "io", "clocks", "filesystem", "random", "sockets"]
            .iter()
            .any(|p| name.starts_with(&format!("wasi:{p}/")) && name.contains("@0.2."))
    };
    let imports: BTreeSet<String> = ty
        .imports(&engine)
        .map(|(name, _)| name.to_owned())
        .filter(|name| !std_runtime(name))
        .collect();
    let exports: BTreeSet<String> = ty.exports(&engine).map(|(n, _)| n.to_owned()).collect();

    assert_eq!(exports, world_exports, "exports: component vs wit/gate.wit");
    let undeclared: Vec<_> = imports.difference(&world_imports).collect();
    assert!(
        undeclared.is_empty(),
        "the component imports {undeclared:?}, which wit/gate.wit does not name"
    );
    // And the world names nothing the component leaves unused, but for
    // interfaces of types only (they come along with the ones that use them).
    let with_functions: BTreeSet<String> = resolve.worlds[world]
        .imports
        .iter()
        .filter_map(|(key, item)| match item {
            wit_parser::WorldItem::Interface { id, .. }
                if !resolve.interfaces[*id].functions.is_empty() =>
            {
                Some(resolve.name_world_key(key))
            }
            _ => None,
        })
        .collect();
    let unused: Vec<_> = with_functions.difference(&imports).collect();
    assert!(
        unused.is_empty(),
        "wit/gate.wit names {unused:?}, which the component does not import"
    );
    for direct in [
        "wasi:keyvalue/store@0.2.0-draft2",
        "wasi:keyvalue/atomics@0.2.0-draft2",
        "wasi:clocks/system-clock@0.3.0",
        "wasi:http/client@0.3.0",
    ] {
        assert!(
            imports.contains(direct),
            "the component does not import {direct}"
        );
    }
}

/// `spin/spin.toml` runs what the build makes, with the store the component opens.
#[test]
fn spin_toml_matches_the_build() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spin");
    let text = std::fs::read_to_string(dir.join("spin.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(manifest["spin_manifest_version"].as_integer(), Some(2));
    let trigger = &manifest["trigger"]["http"].as_array().unwrap()[0];
    assert_eq!(trigger["route"].as_str(), Some("/..."));
    let name = trigger["component"].as_str().unwrap();
    let component = &manifest["component"][name];
    let source = component["source"].as_str().unwrap();
    // The path the build command writes, relative to spin/.
    let built = Path::new(COMPONENT);
    assert!(
        source.ends_with("wasm32-wasip2/component/sessiongate_spin.wasm")
            && built.ends_with("wasm32-wasip2/component/sessiongate_spin.wasm"),
        "{source} vs {COMPONENT}"
    );
    let stores: Vec<&str> = component["key_value_stores"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(stores, ["default"], "the component opens the default store");
    let build = component["build"]["command"].as_str().unwrap();
    for part in ["sessiongate-spin", "wasm32-wasip2", "--profile component"] {
        assert!(build.contains(part), "{build}");
    }
}

/// `spin-config` prints what the component accepts: a gate configuration
/// holding hashes, never a secret.
#[test]
fn spin_config_holds_hashes_only() {
    let fx = fixture();
    let json = cli(&["spin-config", "--store", fx.store.to_str().unwrap()]);
    sessiongate_core::GateConfig::from_json(json.as_bytes()).unwrap();
    assert!(json.contains("\"hash\""));
    assert_no_secret("spin-config", &json, &fx.secrets);
    // The guard's settings, as `serve` takes them in its TOML.
    let store = fx.store.to_str().unwrap();
    let guarded = cli(&[
        "spin-config",
        "--store",
        store,
        "--guard-failures",
        "3",
        "--guard-window-seconds",
        "30",
    ]);
    let config = sessiongate_core::GateConfig::from_json(guarded.as_bytes()).unwrap();
    assert_eq!(
        (config.guard.failures, config.guard.window_seconds),
        (3, 30)
    );
    let off = cli(&["spin-config", "--store", store, "--guard-failures", "0"]);
    let config = sessiongate_core::GateConfig::from_json(off.as_bytes()).unwrap();
    assert!(!config.guard.enabled());
}

/// Sequential requests reuse one instance, so the component parses its
/// configuration once (it keeps the parsed gate while the bytes match).
#[test]
fn sequential_requests_reuse_one_instance() {
    let fx = fixture();
    let mut server = start(&fx, "");
    let auth = format!("Bearer {}", fx.creds.token_all);
    for _ in 0..30 {
        assert_eq!(get(server.addr, "/me", Some(&auth)).unwrap().status, 200);
    }
    assert!(server.terminate().success());
    server.wait_for_log(
        "component_instances_created",
        "no instance metric at shutdown",
    );
    let log = server.log_text();
    assert!(
        log.lines()
            .any(|l| l == "sessiongate metric: component_instances_created 1"),
        "{log}"
    );
}
