//! The filter reads its credentials from the fleet's store in etcd (a real
//! three-member cluster): `serve --credentials-from-store` looks each
//! presented credential up by digest, caches it per VM, and a tick drops
//! what changed. A credential minted or deleted with the CLI holds in every
//! VM of every instance within the bound; 100,000 credentials in etcd with
//! a configuration under 4 KB; etcd gone, the cache answers what it holds and
//! an unknown credential is 503; the digest index never disagrees with the
//! records under concurrent CLI writers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::etcd::Etcd;
use common::{Server, fixture};
use sessiongate_conformance::http::get;
use sessiongate_conformance::{self as suite};

/// Where the limit is kept does not matter here: each instance's own.
const CONFIG: &str = "credentials_from_store = true\n[guard]\nfailures = 0\n";

fn store_url(etcd: &Etcd, prefix: &str) -> String {
    let members: Vec<String> = etcd
        .clients
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    format!("etcd://{}/{prefix}", members.join(","))
}

/// Polls every instance (a fresh connection each time, so each of its VMs
/// answers in turn) until `ok` holds for 32 answers in a row of each;
/// how long that took.
fn until_every_vm(
    servers: &[Server],
    auth: &str,
    what: &str,
    ok: &dyn Fn(u16) -> bool,
) -> Duration {
    let start = Instant::now();
    for server in servers {
        let mut in_a_row = 0;
        // 32 in a row on fresh connections: every VM (each its own
        // listener, SO_REUSEPORT) has answered, but for a 2^-31 chance.
        while in_a_row < 32 {
            let status = get(server.addr, "/me", Some(auth)).map_or(0, |r| r.status);
            in_a_row = if ok(status) { in_a_row + 1 } else { 0 };
            assert!(
                start.elapsed() < suite::PATIENCE,
                "{what}: still {status} after {:?}",
                start.elapsed()
            );
        }
    }
    start.elapsed()
}

fn status(addr: SocketAddr, auth: &str) -> u16 {
    get(addr, "/me", Some(auth)).map_or(0, |r| r.status)
}

/// Two instances of two VMs each: a token minted with the CLI is admitted
/// by every VM, deleted is refused by every VM, each within the bound (one
/// tick, 250 ms, and a call); no push, no reload. With etcd gone, what a
/// VM holds is answered, and what it does not is 503, never 401.
#[test]
fn minted_and_deleted_credentials_hold_in_every_vm_within_the_bound() {
    let fx = fixture();
    let mut etcd = Etcd::start(&fx.dir, 3);
    let store = store_url(&etcd, "lookup-test");
    let store_path = Path::new(&store);
    let servers: Vec<Server> = (0..2)
        .map(|_| Server::start(&fx.dir, store_path, CONFIG, 2))
        .collect();
    for server in &servers {
        assert!(
            server.log_text().contains("looked up by digest"),
            "{}",
            server.log_text()
        );
    }
    let token = common::mint_token(store_path, "lookup-ci", &[]);
    let auth = format!("Bearer {token}");
    let appeared = until_every_vm(&servers, &auth, "minted", &|s| s == 200);
    common::cli(&["token", "delete", "--store", &store, "lookup-ci"]);
    let gone = until_every_vm(&servers, &auth, "deleted", &|s| s == 401);
    eprintln!("minted: admitted by every VM within {appeared:?}; deleted: refused within {gone:?}");
    assert!(
        gone < Duration::from_secs(5),
        "a deletion took {gone:?} to reach every VM"
    );
    let check = common::cli(&["check", "--store", &store]);
    assert!(check.contains("digest index: agrees"), "{check}");

    // etcd gone: a credential every VM holds is answered, an unknown one is 503.
    let kept = common::mint_token(store_path, "kept", &[]);
    let kept = format!("Bearer {kept}");
    until_every_vm(&servers, &kept, "kept minted", &|s| s == 200);
    for i in 0..3 {
        etcd.kill(i);
    }
    let unknown = "Bearer fus_0000000000000000000000000000000000000000";
    for server in &servers {
        for _ in 0..8 {
            assert_eq!(
                status(server.addr, &kept),
                200,
                "a held credential, etcd down"
            );
            assert_eq!(
                status(server.addr, unknown),
                503,
                "an unknown one, etcd down"
            );
        }
    }
}

/// 100,000 credentials in etcd (written as the store writes them, index
/// included): the filter's configuration stays under 4 KB, a VM starts and
/// answers without reading them, and `check` verifies the index.
#[test]
fn a_hundred_thousand_credentials_and_a_configuration_under_4_kb() {
    let fx = fixture();
    let etcd = Etcd::start(&fx.dir, 3);
    let prefix = "big";
    let store = store_url(&etcd, prefix);
    const TOKEN: &str = "fus_bigstorebigstorebigstorebigstorebigstore";
    let written = Instant::now();
    common::etcd::write_credentials(&etcd, prefix, 100_000, TOKEN);
    eprintln!("100,000 credentials written in {:?}", written.elapsed());
    let config = common::cli(&[
        "envoy-config",
        "--store",
        &store,
        "--credentials-from-store",
    ]);
    assert!(config.len() < 4096, "{} bytes: {config}", config.len());
    assert!(
        !config.contains("c000001"),
        "the configuration lists credentials"
    );
    let started = Instant::now();
    let server = Server::start(&fx.dir, Path::new(&store), CONFIG, 2);
    let first = get(server.addr, "/me", Some(&format!("Bearer {TOKEN}"))).unwrap();
    eprintln!(
        "serve started and answered its first request in {:?}",
        started.elapsed()
    );
    assert_eq!(first.status, 200);
    assert!(
        !server.log_text().contains("100000 credentials"),
        "{}",
        server.log_text()
    );
    // A CLI change on a store this size: one pass, not one per record.
    let minted = Instant::now();
    let token = common::mint_token(Path::new(&store), "one-more", &[]);
    eprintln!("a token minted into 100,000 in {:?}", minted.elapsed());
    let auth = format!("Bearer {token}");
    assert_eq!(get(server.addr, "/me", Some(&auth)).unwrap().status, 200);
    let check = common::cli(&["check", "--store", &store]);
    assert!(
        check.contains("digest index: agrees with the 100001 records"),
        "{check}"
    );
}

/// Four CLI writers at once, creating and deleting on one store in etcd:
/// the digest index agrees with the records after every one of them. A
/// record written without its index entry (a store from before the index)
/// is found by `check`, and `check --repair` writes it.
#[test]
fn the_index_never_disagrees_with_the_records_under_concurrent_writers() {
    let fx = fixture();
    let etcd = Etcd::start(&fx.dir, 3);
    let store = store_url(&etcd, "writers");
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..6 {
                    let name = format!("w{w}-{i}");
                    let out = Command::new(common::BIN)
                        .args(["token", "create", "--store", &store, "--name", &name])
                        .args(["--customer", "acme", "--all-sites"])
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    if i % 2 == 0 {
                        let out = Command::new(common::BIN)
                            .args(["token", "delete", "--store", &store, &name])
                            .output()
                            .unwrap();
                        assert!(
                            out.status.success(),
                            "{}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let check = common::cli(&["check", "--store", &store]);
    assert!(check.contains("12 credentials"), "{check}");
    assert!(
        check.contains("digest index: agrees with the 12 records"),
        "{check}"
    );

    // A record without its index entry.
    let secret = "fus_unindexedunindexedunindexedunindexedun";
    let record = common::etcd::token_record("old", secret);
    let call = sessiongate_etcd::Txn::new()
        .put(
            "writers/credentials/old",
            &serde_json::to_vec(&record).unwrap(),
        )
        .call();
    etcd.post(0, call.path, &call.body).unwrap();
    let out = Command::new(common::BIN)
        .args(["check", "--store", &store])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains("\"old\" is not indexed") && said.contains("--repair"),
        "{said}"
    );
    let repaired = common::cli(&["check", "--store", &store, "--repair"]);
    assert!(repaired.contains("1 entries written"), "{repaired}");
    assert!(
        repaired.contains("agrees with the 13 records"),
        "{repaired}"
    );
}

/// Credentials made and changed in the console reach a filter that reads
/// the store, as the CLI's do: the console writes the digest index in the
/// same txn (one `Store` for every writer).
#[test]
fn the_consoles_credentials_reach_a_filter_that_reads_the_store() {
    use common::console::{As, create_user, gate_answers, start_console};
    use serde_json::json;

    let fx = fixture();
    let etcd = Etcd::start(&fx.dir, 1);
    let store = format!("etcd://127.0.0.1:{}/lookup-console", etcd.clients[0]);
    let store_path = Path::new(&store);
    let all = ["api_tokens:view", "api_tokens:create", "api_tokens:delete"];
    let login = create_user(store_path, "acme", "ada", "admin", &all);
    let console = start_console(store_path);
    let serve = Server::start(&fx.dir, store_path, CONFIG, 2);
    let ada = As::new(console.addr, &login);
    let made = ada.ok(
        "POST",
        "tokens",
        Some(json!({"name": "from-console", "sites": "all"})),
        201,
    );
    let token = made["secret"].as_str().unwrap().to_owned();
    gate_answers(&serve, &token, 200);
    let key = ada.ok(
        "POST",
        "keys",
        Some(json!({"name": "console-key", "level": "admin", "sites": "all"})),
        201,
    );
    let key_secret = key["secret"].as_str().unwrap().to_owned();
    let key_auth = format!("Basic {key_secret}");
    let role = || get(serve.addr, "/me", Some(&key_auth)).unwrap().text();
    assert!(role().contains("ADMIN"), "{}", role());
    // A cached key's level changed in the console: the new level holds.
    ada.ok(
        "PATCH",
        "keys/console-key",
        Some(json!({"level": "architect"})),
        200,
    );
    suite::eventually(suite::PATIENCE, || {
        let now = role();
        if now.contains("ARCHITECT") {
            Ok(())
        } else {
            Err(now)
        }
    })
    .unwrap();
    let check = common::cli(&["check", "--store", &store]);
    assert!(
        check.contains("digest index: agrees with the 2 records"),
        "{check}"
    );
    ada.ok("DELETE", "tokens/from-console", None, 204);
    gate_answers(&serve, &token, 401);
}

/// etcd with authentication on: the filter logs in for its lookups and
/// ticks as it does for the limiter (the store's user in its URL, the
/// password in the environment, as for every etcd client).
#[test]
fn lookups_log_in_to_an_etcd_with_authentication() {
    let fx = fixture();
    let etcd = Etcd::start_with(
        &fx.dir,
        1,
        &["--auth-token", "simple", "--auth-token-ttl", "2"],
    );
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let grant = format!(
        r#"{{"name":"gate","perm":{{"permType":"READWRITE","key":"{}","range_end":"{}"}}}}"#,
        b64("authed/"),
        b64("authed0")
    );
    for (path, body) in [
        (
            "/v3/auth/user/add",
            r#"{"name":"root","password":"rootpw"}"#,
        ),
        ("/v3/auth/user/grant", r#"{"user":"root","role":"root"}"#),
        ("/v3/auth/role/add", r#"{"name":"gate"}"#),
        ("/v3/auth/role/grant", grant.as_str()),
        (
            "/v3/auth/user/add",
            r#"{"name":"gate","password":"gatepw"}"#,
        ),
        ("/v3/auth/user/grant", r#"{"user":"gate","role":"gate"}"#),
        ("/v3/auth/enable", "{}"),
    ] {
        assert!(
            etcd.post(0, path, body).is_some(),
            "etcd refused {path} {body}"
        );
    }
    let store = format!("etcd://gate@127.0.0.1:{}/authed", etcd.clients[0]);
    let cli = |args: &[&str]| {
        let out = Command::new(common::BIN)
            .args(args)
            .env("SESSIONGATE_ETCD_PASSWORD", "gatepw")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let mint = |name: &str| {
        cli(&[
            "token",
            "create",
            "--store",
            &store,
            "--name",
            name,
            "--customer",
            "acme",
            "--all-sites",
        ])
    };
    let first = mint("first");
    let (mut command, path) = Server::command(&fx.dir, Path::new(&store), CONFIG, 2, &[]);
    command.env("SESSIONGATE_ETCD_PASSWORD", "gatepw");
    let server = Server::spawn(command, path);
    let auth = format!("Bearer {first}");
    assert_eq!(status(server.addr, &auth), 200, "{}", server.log_text());
    let second = format!("Bearer {}", mint("second"));
    until_every_vm(std::slice::from_ref(&server), &second, "minted", &|s| {
        s == 200
    });
    cli(&["token", "delete", "--store", &store, "first"]);
    until_every_vm(std::slice::from_ref(&server), &auth, "deleted", &|s| {
        s == 401
    });
}
