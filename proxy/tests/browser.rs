//! The console's page in real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs), driven over WebDriver:
//! an Architect logs in, creates a token, reads it from the one-time
//! reveal, calls a running `serve` with it (200), sees its obfuscated row,
//! finds no Admin level offered (and the API refusing one), deletes the
//! token, and the gate answers 401. The screenshots in the README are the
//! ones this test takes (`SESSIONGATE_UPDATE_SCREENSHOTS=1` writes them
//! to docs/screenshots/).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Server;
use common::console::{create_user, gate_answers, start_console};
use fantoccini::wd::Capabilities;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use sessiongate_conformance as suite;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_driver() -> Driver {
    for program in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(program).exists(),
            "{program} is missing: apt-get install chromium chromium-driver (.ci/run does)"
        );
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < suite::PATIENCE,
            "chromedriver did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    driver
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut capabilities = Capabilities::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                // The machine's network is closed: no background calls home.
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic",
                format!("--user-data-dir={}", profile.display()),
                "--window-size=1280,900",
            ],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session")
}

async fn click(page: &Client, css: &str) {
    page.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

async fn text(page: &Client, css: &str) -> String {
    page.find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn visible(page: &Client, css: &str) {
    let started = Instant::now();
    loop {
        if let Ok(e) = page.find(Locator::Css(css)).await
            && e.is_displayed().await.unwrap_or(false)
        {
            return;
        }
        assert!(started.elapsed() < suite::PATIENCE, "{css} never showed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for the app to have loaded who the user is (the script marks the body).
async fn ready(page: &Client) {
    let started = Instant::now();
    while page.find(Locator::Css("body[data-ready]")).await.is_err() {
        if started.elapsed() > suite::PATIENCE {
            panic!(
                "the page never got ready at {}: {}",
                page.current_url().await.unwrap(),
                page.source().await.unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn gone(page: &Client, css: &str) {
    let started = Instant::now();
    while !page.find_all(Locator::Css(css)).await.unwrap().is_empty() {
        assert!(started.elapsed() < suite::PATIENCE, "{css} stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Saves a screenshot where the test's files go, and (asked to) into
/// docs/screenshots/ for the README.
fn keep_screenshot(png: &[u8], name: &str) {
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{name} is not a screenshot"
    );
    std::fs::write(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name), png).unwrap();
    if std::env::var_os("SESSIONGATE_UPDATE_SCREENSHOTS").is_some() {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(name), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_architect_manages_a_token_in_chromium_and_the_gate_follows() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tokens.json");
    let all = ["api_tokens:view", "api_tokens:create", "api_tokens:delete"];
    let login = create_user(&store, suite::CUSTOMER, "archie", "architect", &all);
    let admin_login = create_user(&store, suite::CUSTOMER, "ada", "admin", &[]);
    // A key of someone else's, which an architect must not see.
    common::mint_key(&store, "operators-key", "admin");
    let mut console = start_console(&store);
    let last_use = "[last_use]\nflush_seconds = 1\ninstance = \"gate-a\"\n";
    let mut serve = Server::start(dir.path(), &store, last_use, 1);
    let origin = format!("http://{}", console.addr);
    let driver = start_driver();
    let page = browser(&driver, &dir.path().join("chromium")).await;

    // Log in with the form, from the keyboard.
    page.goto(&format!("{origin}/")).await.unwrap();
    assert!(page.current_url().await.unwrap().path().ends_with("/login"));
    let secret_field = page.find(Locator::Id("secret")).await.unwrap();
    secret_field
        .send_keys(&format!("{login}\u{E007}"))
        .await
        .unwrap();
    ready(&page).await;
    assert_eq!(
        text(&page, "#who").await,
        format!("archie · architect · {}", suite::CUSTOMER)
    );

    // Create a token: name, Enter; the one-time reveal with the documents' words.
    click(&page, "#new-token").await;
    let name = page.find(Locator::Id("token-name")).await.unwrap();
    name.send_keys("browser-token").await.unwrap();
    page.find(Locator::Id("token-description"))
        .await
        .unwrap()
        .send_keys("made in Chromium\u{E007}")
        .await
        .unwrap();
    visible(&page, "#token-reveal").await;
    assert_eq!(
        text(&page, "#token-reveal .once").await,
        "You will only see the token ONCE, so make sure to copy it now."
    );
    let token = page
        .find(Locator::Id("token-secret"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(sessiongate_core::is_token(&token), "{token}");
    // This token lives only in this test's store, and is deleted below.
    keep_screenshot(
        &page.screenshot().await.unwrap(),
        "console-token-reveal.png",
    );
    click(&page, "#token-reveal .copy").await;

    // The gate admits it.
    gate_answers(&serve, &token, 200);

    // Done: the value is gone from the page; the list shows it obfuscated.
    click(&page, "#token-reveal .done").await;
    let hint = format!("fus_****{}", &token[token.len() - 3..]);
    let row = r#"#token-list tr[data-name="browser-token"]"#;
    visible(&page, row).await;
    let cells = text(&page, row).await;
    assert!(
        cells.contains(&hint) && cells.contains("All") && cells.contains("archie"),
        "{cells}"
    );
    assert!(
        !page.source().await.unwrap().contains(&token),
        "the value stays only until Done"
    );
    // Its use by the gate shows once serve has flushed it (issue 46): the
    // list is read again each time its screen is opened.
    let started = Instant::now();
    loop {
        click(&page, "#nav-keys").await;
        click(&page, "#nav-tokens").await;
        visible(&page, row).await;
        let cells = text(&page, row).await;
        if cells.contains("(gate-a)") {
            break;
        }
        assert!(
            started.elapsed() < suite::PATIENCE,
            "never shown used: {cells}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    keep_screenshot(&page.screenshot().await.unwrap(), "console-tokens.png");

    // Keys: no Admin level on offer, and the API refuses one all the same.
    click(&page, "#nav-keys").await;
    visible(&page, "#new-key").await;
    click(&page, "#new-key").await;
    let options = page
        .find_all(Locator::Css("#key-level option"))
        .await
        .unwrap();
    let mut levels = Vec::new();
    for o in options {
        levels.push(o.attr("value").await.unwrap().unwrap());
    }
    assert_eq!(
        levels,
        ["standard", "architect"],
        "an admin key is not even offered"
    );
    let refused = page
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               fetch("/api/v1/keys", {method: "POST",
                 headers: {"Content-Type": "application/json",
                   "X-CSRF-Token": document.querySelector('meta[name="csrf-token"]').content},
                 body: JSON.stringify({name: "sneaky", level: "admin", sites: "all"})})
               .then(async r => done([r.status, await r.json()]));"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(refused[0], 403, "{refused}");
    assert_eq!(refused[1]["error"]["code"], "forbidden");
    page.find(Locator::Id("key-name"))
        .await
        .unwrap()
        .send_keys("browser-key")
        .await
        .unwrap();
    page.find(Locator::Id("key-level"))
        .await
        .unwrap()
        .select_by_value("architect")
        .await
        .unwrap();
    // Opt-in expiry (issue 46): in 90 days, which the list then shows.
    let in_90_days = || {
        let at = std::time::SystemTime::now() + Duration::from_secs(90 * 86_400);
        humantime::format_rfc3339(at).to_string()[..10].to_string()
    };
    let day_before = in_90_days();
    page.find(Locator::Id("key-expiry"))
        .await
        .unwrap()
        .select_by_value("90")
        .await
        .unwrap();
    click(&page, "#create-key").await;
    visible(&page, "#key-reveal").await;
    click(&page, "#key-reveal .done").await;
    visible(&page, r#"#key-list tr[data-name="browser-key"]"#).await;
    let expires = text(
        &page,
        r#"#key-list tr[data-name="browser-key"] td:nth-child(6)"#,
    )
    .await;
    assert!(
        expires.starts_with(&day_before) || expires.starts_with(&in_90_days()),
        "{expires}"
    );
    assert!(
        page.find_all(Locator::Css(r#"#key-list tr[data-name="operators-key"]"#))
            .await
            .unwrap()
            .is_empty(),
        "an architect sees only their own keys"
    );
    // Update API Key: rename it and move it down a level, from the
    // keyboard (its Edit button, then Enter); its suffix stays.
    let suffix = text(
        &page,
        r#"#key-list tr[data-name="browser-key"] td:nth-child(2)"#,
    )
    .await;
    click(
        &page,
        r#"#key-list tr[data-name="browser-key"] button:not(.danger)"#,
    )
    .await;
    visible(&page, "#key-update").await;
    let update_levels = page
        .find_all(Locator::Css("#update-level option"))
        .await
        .unwrap();
    assert_eq!(
        update_levels.len(),
        2,
        "no admin level to move it to either"
    );
    page.find(Locator::Id("update-level"))
        .await
        .unwrap()
        .select_by_value("standard")
        .await
        .unwrap();
    let rename = page.find(Locator::Id("update-name")).await.unwrap();
    rename.clear().await.unwrap();
    rename.send_keys("browser-key-2\u{E007}").await.unwrap();
    let renamed = r#"#key-list tr[data-name="browser-key-2"]"#;
    visible(&page, renamed).await;
    let cells = text(&page, renamed).await;
    assert!(
        cells.contains(&suffix) && cells.contains("standard"),
        "{cells}"
    );
    keep_screenshot(&page.screenshot().await.unwrap(), "console-keys.png");

    // Readable on a phone: nothing wider than the screen.
    page.set_window_size(390, 844).await.unwrap();
    let overflow = page
        .execute(
            "return document.documentElement.scrollWidth - window.innerWidth;",
            vec![],
        )
        .await
        .unwrap();
    keep_screenshot(&page.screenshot().await.unwrap(), "console-keys-phone.png");
    let widest = page
        .execute(
            "return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > window.innerWidth).map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 8).join(' ');",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page is {overflow} px wider than a phone: {widest}"
    );
    page.set_window_size(1280, 900).await.unwrap();

    // Delete the token, confirming; the gate refuses it on its next request.
    click(&page, "#nav-tokens").await;
    visible(&page, row).await;
    click(&page, &format!("{row} button.danger")).await;
    visible(&page, "#confirm").await;
    assert!(text(&page, "#confirm-text").await.contains(&hint));
    click(&page, "#confirm-yes").await;
    gone(&page, row).await;
    gate_answers(&serve, &token, 401);
    assert!(
        page.find_all(Locator::Css("#nav-audit:not([hidden])"))
            .await
            .unwrap()
            .is_empty(),
        "the audit log is for admins"
    );

    // Log out; an admin logs in and reads what happened in the audit log.
    click(&page, ".logout button").await;
    let secret_field = page
        .wait()
        .for_element(Locator::Id("secret"))
        .await
        .unwrap();
    secret_field
        .send_keys(&format!("{admin_login}\u{E007}"))
        .await
        .unwrap();
    ready(&page).await;
    click(&page, "#nav-audit").await;
    let deleted = "#audit-list tbody tr:nth-child(5)";
    visible(&page, deleted).await;
    let log = text(&page, "#audit-list tbody").await;
    for line in [
        "archie create token browser-token",
        "archie create key browser-key",
        "archie update key browser-key-2",
        "archie delete token browser-token",
    ] {
        let mut words = line.split(' ');
        let (who, action, subject, name) = (
            words.next().unwrap(),
            words.next().unwrap(),
            words.next().unwrap(),
            words.next().unwrap(),
        );
        assert!(
            log.lines().any(|row| row.contains(who)
                && row.contains(&format!("{action} {subject}"))
                && row.contains(name)),
            "{line} not in the page's audit log:\n{log}"
        );
    }
    assert!(log.contains(&hint) && !log.contains(&token));
    keep_screenshot(&page.screenshot().await.unwrap(), "console-audit.png");

    page.close().await.unwrap();
    serve.terminate();
    console.terminate();
}
