//! `/metrics` against what a client saw: the whole conformance suite run
//! through `serve`, every response recorded, and the scrape parsed by the
//! text format's rules. Its own test binary: the suite's transcript records
//! every response of the process, so nothing else may run beside it.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;

mod common;

use common::{Local, Server, assert_functional_suite, fixture, parse_response, sample, scrape};
use sessiongate_conformance::http;

/// Every response of a run, from the client's side: counts by status, and
/// by the filter's outcome (`allowed`, or the error code; hyper's own parse
/// errors never reach the filter).
fn outcomes(transcript: &[u8]) -> (BTreeMap<u16, u64>, BTreeMap<String, u64>) {
    let mut by_status = BTreeMap::new();
    let mut by_outcome = BTreeMap::new();
    let mut rest = transcript;
    while !rest.is_empty() {
        let (status, _head, body, used) = parse_response(rest).expect("a whole response");
        rest = &rest[used..];
        *by_status.entry(status).or_insert(0) += 1;
        let outcome = if status == 200 {
            "sessiongate_allowed".to_owned()
        } else if body.is_empty() {
            // HEAD: the suite's only bodiless refusal.
            assert_eq!(status, 405);
            "sessiongate_denied_method_not_allowed".to_owned()
        } else {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "status {status}: {e}: {:?}\n{}",
                    String::from_utf8_lossy(&body),
                    _head
                )
            });
            let message = v["error"]["message"].as_str().unwrap_or_default();
            if message.starts_with("The request is not valid HTTP/1.1") {
                continue;
            }
            format!(
                "sessiongate_denied_{}",
                v["error"]["code"].as_str().unwrap()
            )
        };
        *by_outcome.entry(outcome).or_insert(0) += 1;
    }
    (by_status, by_outcome)
}

#[test]
fn metrics_match_a_conformance_run_exactly() {
    let mut fx = fixture();
    let config = "[limit]\nrequests = 100000\n[guard]\nfailures = 0\n";
    let server = Server::start(&fx.dir, &fx.store, config, 2);
    http::start_transcript();
    assert_functional_suite(&mut Local {
        server: &server,
        fixture: &mut fx,
    });
    let transcript = http::take_transcript();
    let (by_status, by_outcome) = outcomes(&transcript);
    // The harness returned from the suite's last store change once the
    // gate had reloaded it: its reload is counted already.
    let metrics = scrape(&server);
    let mut total = 0;
    for (status, n) in &by_status {
        let code = status.to_string();
        assert_eq!(
            sample(
                &metrics,
                "sessiongate_http_requests_total",
                Some(("code", &code))
            ),
            *n as f64,
            "status {status}"
        );
        total += n;
    }
    let counted: f64 = metrics
        .samples
        .iter()
        .filter(|s| s.metric == "sessiongate_http_requests_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(counted, total as f64, "statuses the client never saw");
    let mut through_filter = 0;
    for (name, n) in &by_outcome {
        assert_eq!(sample(&metrics, name, None), *n as f64, "{name}");
        through_filter += n;
    }
    // Every counter the filter defined is there, and sums to what it saw.
    let filter_total: f64 = metrics
        .samples
        .iter()
        .filter(|s| {
            s.metric.starts_with("sessiongate_allowed")
                || s.metric.starts_with("sessiongate_denied_")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(filter_total, through_filter as f64);
    let histogram = metrics
        .samples
        .iter()
        .find(|s| s.metric == "sessiongate_http_request_duration_seconds")
        .expect("the latency histogram");
    let prometheus_parse::Value::Histogram(buckets) = &histogram.value else {
        panic!("not a histogram: {:?}", histogram.value);
    };
    let inf = buckets.last().unwrap();
    assert!(inf.less_than.is_infinite());
    assert_eq!(inf.count, through_filter as f64);
    let store: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&fx.store).unwrap()).unwrap();
    let records = store["credentials"].as_array().unwrap().len();
    assert!(records > 0);
    assert_eq!(
        sample(&metrics, "sessiongate_credentials", None),
        records as f64
    );
    assert!(
        sample(
            &metrics,
            "sessiongate_store_reloads_total",
            Some(("result", "ok"))
        ) >= 1.0
    );
    assert_eq!(sample(&metrics, "sessiongate_vm_traps_total", None), 0.0);
    assert_eq!(
        sample(&metrics, "sessiongate_limiter_store_errors_total", None),
        0.0
    );
    let admin_404 = server.admin_get("/nope");
    assert_eq!(admin_404.status, 404);
    assert_eq!(admin_404.json().unwrap()["error"]["code"], "not_found");
}
