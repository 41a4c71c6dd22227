//! End to end for the Spin builds: the wasi:http 0.3 and 0.2 components
//! that `proxy/build.rs` builds from `spin/` and `spin/wasip2/` for
//! wasm32-wasip2, served by the real binary with `serve --component`, on a
//! key-value store that is strict or behaves as Spin's SQLite or Redis store,
//! credentials minted with the real CLI.
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

/// The builds shipped: the file, the world of `wit/gate.wit` it targets,
/// and what it imports directly (beyond Rust's std runtime).
struct Build {
    name: &'static str,
    /// Builds it on first use (`common::components`).
    file: fn() -> &'static str,
    world: &'static str,
    imports: &'static [&'static str],
}

const P3: Build = Build {
    name: "wasi:http 0.3",
    file: common::components::p3,
    world: "gate",
    imports: &[
        "wasi:keyvalue/store@0.2.0-draft2",
        "wasi:keyvalue/atomics@0.2.0-draft2",
        "wasi:http/client@0.3.0",
    ],
};

const P2: Build = Build {
    name: "wasi:http 0.2",
    file: common::components::p2,
    world: "gate-p2",
    imports: &[
        "wasi:keyvalue/store@0.2.0-draft2",
        "wasi:keyvalue/atomics@0.2.0-draft2",
        "wasi:http/outgoing-handler@0.2.0",
    ],
};

const BUILDS: [Build; 2] = [P3, P2];
const SESSIONS: &str = "/v1/external/sessions/acme/site-a";

/// How `serve --component` can make its key-value swap behave: strictly,
/// and as Spin's SQLite and Redis stores do. The component must be exact on
/// all of them.
const SEMANTICS: [&str; 3] = ["strict", "spin-sqlite", "spin-redis"];

fn start(fx: &Fixture, config: &str, build: &Build) -> Server {
    start_on(fx, config, build, "strict")
}

fn start_on(fx: &Fixture, config: &str, build: &Build, semantics: &str) -> Server {
    let args = [
        "--component",
        (build.file)(),
        "--key-value-semantics",
        semantics,
    ];
    Server::start_with(&fx.dir, &fx.store, config, 2, &args)
}

/// Every build on every store's semantics.
fn each(mut test: impl FnMut(&Build, &str)) {
    for build in &BUILDS {
        for semantics in SEMANTICS {
            test(build, semantics);
        }
    }
}

#[test]
fn conformance_suite_against_the_component() {
    each(|build, semantics| {
        let mut fx = fixture();
        // The suite sends many invalid credentials on purpose: the guard is tested apart.
        let config = "[limit]\nrequests = 100000\nwindow_seconds = 60\n[guard]\nfailures = 0\n";
        let server = start_on(&fx, config, build, semantics);
        // The log is read by another thread: wait for the line, not just look.
        server.wait_for_log(
            &format!("component ({})", build.name),
            "serve did not say it runs the component",
        );
        sessiongate_conformance::http::start_transcript();
        assert_functional_suite(&mut Local {
            server: &server,
            fixture: &mut fx,
        });
        assert_no_secret_in_transcript(&fx.secrets);
        assert_no_secret("the server log", &server.log_text(), &fx.secrets);
    });
}

/// Concurrent requests run on instances of their own: only the key-value
/// store keeps the count. Each run starts on a fresh store, where the
/// limiter's key is created by the burst itself (Spin's SQLite store lets
/// every racer "create" it; its Redis store reports lost swaps as won). The
/// limit of 20 with 60 at once is the shape in which real Spin's SQLite
/// store once recorded admissions and answered them 429 (more writes came
/// between a write and its read-back than a record named).
#[test]
fn exactly_n_admitted_out_of_many_concurrent_instances_on_a_fresh_store() {
    each(|build, semantics| {
        for (limit, concurrent) in [(10, 64), (10, 64), (10, 64), (20, 60), (20, 60)] {
            let mut fx = fixture();
            let config = format!(
                "[limit]\nrequests = {limit}\nwindow_seconds = 60\n[guard]\nfailures = 0\n"
            );
            let server = start_on(&fx, &config, build, semantics);
            let mut h = Local {
                server: &server,
                fixture: &mut fx,
            };
            suite::exact_global_limit(&mut h, limit, 60, concurrent)
                .unwrap_or_else(|e| panic!("{} on {semantics}, limit {limit}: {e}", build.name));
        }
    });
}

/// Many wrong credentials from one client at once, on a fresh store: it is
/// told 401 exactly as often as the guard allows, then held.
#[test]
fn concurrent_failures_get_exactly_the_guards_allowance() {
    each(|build, semantics| {
        let fx = fixture();
        let config = "[guard]\nfailures = 5\nwindow_seconds = 60\n";
        let server = start_on(&fx, config, build, semantics);
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
        assert_eq!(
            (told_401, held),
            (5, 19),
            "{} on {semantics}: {statuses:?}",
            build.name
        );
    });
}

#[test]
fn forwards_over_wasi_http_and_maps_upstream_failure_to_502() {
    for build in &BUILDS {
        forwards_and_maps_upstream_failure_on(build);
    }
}

fn forwards_and_maps_upstream_failure_on(build: &Build) {
    let fx = fixture();
    let (up, seen) = upstream();
    let config =
        format!("backend = \"http://{up}\"\n[limit]\nrequests = 1000\nwindow_seconds = 60\n");
    let server = start(&fx, &config, build);
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
    let server = start(&fx, &config, build);
    let auth = format!("Bearer {}", fx.creds.token_all);
    let r = get(server.addr, SESSIONS, Some(&auth)).unwrap();
    suite::expect_error(&r, 502, "upstream_unavailable").unwrap();
    assert_eq!(r.header("ratelimit-policy"), Some("20;w=60"));
}

#[test]
fn a_failing_key_value_store_fails_closed() {
    for build in &BUILDS {
        let fx = fixture();
        let server = start(&fx, "[testing]\nfail_limiter_store = true\n", build);
        let auth = format!("Bearer {}", fx.creds.token_all);
        let r = get(server.addr, SESSIONS, Some(&auth)).unwrap();
        suite::expect_error(&r, 503, "limiter_unavailable").unwrap();
        assert_eq!(get(server.addr, "/me", Some(&auth)).unwrap().status, 200);
    }
}

/// The CLI's checksummed tokens through the component: the token is
/// admitted, and each one-character change of its random part is refused
/// before it is hashed, with the body of an unknown credential.
#[test]
fn a_changed_checksummed_token_is_refused_as_an_unknown_one() {
    for build in &BUILDS {
        let fx = fixture();
        let server = start(&fx, "", build);
        let token = &fx.creds.token_all;
        assert!(sessiongate_core::is_checksummed_token(token));
        let me = |t: &str| get(server.addr, "/me", Some(&format!("Bearer {t}"))).unwrap();
        assert_eq!(me(token).status, 200, "{}", build.name);
        let unknown = me("fus_0000000000000000000000000000000000000000");
        suite::expect_error(&unknown, 401, "invalid_credentials").unwrap();
        for at in [4, 20, 37, 38, 43] {
            let mut changed = token.clone().into_bytes();
            changed[at] = if changed[at] == b'q' { b'r' } else { b'q' };
            let r = me(&String::from_utf8(changed).unwrap());
            suite::expect_error(&r, 401, "invalid_credentials").unwrap();
            assert_eq!(r.text(), unknown.text(), "{} at {at}", build.name);
        }
    }
}

/// The guard keys on the address the host puts in `spin-client-addr`. The
/// host appends it after a value the client sent, as Spin does; the
/// component trusts the last, so rotating the header buys no fresh guesses.
#[test]
fn the_guard_sees_the_real_client_whatever_header_it_sends() {
    each(the_guard_sees_the_real_client_on);
}

fn the_guard_sees_the_real_client_on(build: &Build, semantics: &str) {
    let fx = fixture();
    let config =
        "[limit]\nrequests = 20\nwindow_seconds = 60\n[guard]\nfailures = 3\nwindow_seconds = 60\n";
    let server = start_on(&fx, config, build, semantics);
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

/// An interface name with a `0.x.y` version cut to its semver track
/// (`@0.x`): wit-component names an import at the newest 0.2 version any part
/// of the build declares (Rust's std brings 0.2.12), and wasmtime, so Spin
/// and `serve`, links any version on the same track as long as the guest
/// uses only what the host's has (wasmtime's semver-aware Linker, PR #7994).
fn track(name: &str) -> String {
    if let Some((base, version)) = name.rsplit_once('@') {
        let parts: Vec<&str> = version.split('.').collect();
        if let [major @ "0", minor, patch] = parts[..]
            && [minor, patch]
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            return format!("{base}@{major}.{minor}");
        }
    }
    name.to_owned()
}

/// `wit/` is what the components are built against: every import and
/// export of each built component, apart from the WASI 0.2 runtime Rust's
/// std links on wasm32-wasip2, is in its world (`gate`, `gate-p2`), and the
/// world names nothing the component does not use. Editing one without the
/// other fails here.
#[test]
fn the_components_and_wit_do_not_drift_apart() {
    for build in &BUILDS {
        component_and_world_agree(build);
    }
}

fn component_and_world_agree(build: &Build) {
    let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve.push_dir(&wit).unwrap();
    let world = resolve.select_world(&[package], Some(build.world)).unwrap();
    let names = |items: &wit_parser::IndexMap<wit_parser::WorldKey, wit_parser::WorldItem>| {
        items
            .iter()
            .filter(|(_, item)| matches!(item, wit_parser::WorldItem::Interface { .. }))
            .map(|(key, _)| track(&resolve.name_world_key(key)))
            .collect::<BTreeSet<String>>()
    };
    let world_imports = names(&resolve.worlds[world].imports);
    let world_exports = names(&resolve.worlds[world].exports);

    let mut config = wasmtime::Config::new();
    config.wasm_component_model_async(true);
    let engine = wasmtime::Engine::new(&config).unwrap();
    let component = wasmtime::component::Component::from_file(&engine, (build.file)()).unwrap();
    let ty = component.component_type();
    let std_runtime = |name: &str| {
        ["cli", "io", "clocks", "filesystem", "random", "sockets"]
            .iter()
            .any(|p| name.starts_with(&format!("wasi:{p}/")) && name.contains("@0.2"))
    };
    let imports: BTreeSet<String> = ty
        .imports(&engine)
        .map(|(name, _)| track(name))
        .filter(|name| !std_runtime(name))
        .collect();
    let exports: BTreeSet<String> = ty.exports(&engine).map(|(n, _)| track(n)).collect();

    assert_eq!(
        exports, world_exports,
        "{}: exports: component vs wit/gate.wit",
        build.name
    );
    let undeclared: Vec<_> = imports.difference(&world_imports).collect();
    assert!(
        undeclared.is_empty(),
        "{}: the component imports {undeclared:?}, which wit/gate.wit does not name",
        build.name
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
                Some(track(&resolve.name_world_key(key)))
            }
            _ => None,
        })
        .filter(|name| !std_runtime(name))
        .collect();
    let unused: Vec<_> = with_functions.difference(&imports).collect();
    assert!(
        unused.is_empty(),
        "{}: wit/gate.wit names {unused:?}, which the component does not import",
        build.name
    );
    for direct in build.imports {
        assert!(
            imports.contains(&track(direct)),
            "{}: the component does not import {direct}",
            build.name
        );
    }
}

/// `spin/spin.toml` (0.2) and `spin/spin-wasip3.toml` (0.3) run what the builds
/// make, with the store the components open.
#[test]
fn spin_toml_matches_the_build() {
    // spin.toml: the 0.2 build, for released Spin; spin-wasip3.toml: the 0.3 one.
    for (manifest, build, package) in [
        ("spin.toml", &P2, "sessiongate-spin-wasip2"),
        ("spin-wasip3.toml", &P3, "sessiongate-spin "),
    ] {
        manifest_matches(manifest, build, package);
    }
}

fn manifest_matches(file: &str, build: &Build, package: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../spin");
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(manifest["spin_manifest_version"].as_integer(), Some(2));
    let trigger = &manifest["trigger"]["http"].as_array().unwrap()[0];
    assert_eq!(trigger["route"].as_str(), Some("/..."));
    let name = trigger["component"].as_str().unwrap();
    let component = &manifest["component"][name];
    let source = component["source"].as_str().unwrap();
    // The path the build command writes, relative to spin/.
    let artifact = Path::new((build.file)())
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let built = format!("wasm32-wasip2/component/{artifact}");
    assert!(
        source.ends_with(&built) && (build.file)().ends_with(&built),
        "{file}: {source} vs {}",
        (build.file)()
    );
    let stores: Vec<&str> = component["key_value_stores"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(stores, ["default"], "the component opens the default store");
    let command = component["build"]["command"].as_str().unwrap();
    for part in [package, "wasm32-wasip2", "--profile component"] {
        assert!(command.contains(part), "{file}: {command}");
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

/// Sequential requests reuse one 0.3 instance, so the component parses its
/// configuration once (it keeps the parsed gate while the bytes match); a
/// 0.2 instance serves one request, as Spin runs them.
#[test]
fn sequential_requests_reuse_one_instance() {
    let fx = fixture();
    let created = |server: &Server| {
        let text = server.admin_get("/metrics").text();
        text.lines()
            .find_map(|l| l.strip_prefix("sessiongate_component_instances_created_total "))
            .map(str::to_owned)
    };
    let server = start(&fx, "", &P2);
    let auth = format!("Bearer {}", fx.creds.token_all);
    for _ in 0..3 {
        assert_eq!(get(server.addr, "/me", Some(&auth)).unwrap().status, 200);
    }
    assert_eq!(created(&server).as_deref(), Some("3"));

    let server = start(&fx, "", &P3);
    let auth = format!("Bearer {}", fx.creds.token_all);
    for _ in 0..30 {
        assert_eq!(get(server.addr, "/me", Some(&auth)).unwrap().status, 200);
    }
    assert_eq!(created(&server).as_deref(), Some("1"));
}
