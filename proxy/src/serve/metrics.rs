//! `serve`'s metrics and their exposition in Prometheus's text format 0.0.4,
//! the format Envoy's `/stats/prometheus` serves. That is why it is written
//! here and not with `prometheus-client`: that crate speaks OpenMetrics,
//! whose counters gain `_total`, so the filter's `sessiongate_allowed` would
//! be `sessiongate_allowed_total` under `serve` and `sessiongate_allowed`
//! under Envoy. Here the filter's counters keep the names Envoy shows (it
//! strips its `wasmcustom` namespace and adds no prefix); the host's own
//! counters follow Prometheus's naming (`_total`, base units).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Request latency buckets, seconds: the gate answers in tens of
/// microseconds, an upstream in milliseconds to seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Statuses 100..=599, one counter each.
const STATUSES: usize = 500;

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// The host's own counters and gauges; the filter's are its host's.
pub(crate) struct Metrics {
    requests: Box<[AtomicU64; STATUSES]>,
    latency: Histogram,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) refused_full: AtomicU64,
    pub(crate) refused_address: AtomicU64,
    pub(crate) header_timeouts: AtomicU64,
    pub(crate) idle_timeouts: AtomicU64,
    pub(crate) accept_errors: AtomicU64,
    pub(crate) vm_traps: AtomicU64,
    pub(crate) vm_replacements_ok: AtomicU64,
    pub(crate) vm_replacements_failed: AtomicU64,
    pub(crate) store_reloads_ok: AtomicU64,
    pub(crate) store_reloads_failed: AtomicU64,
    pub(crate) config_reloads_ok: AtomicU64,
    pub(crate) config_reloads_failed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            latency: Histogram::default(),
            connections_accepted: AtomicU64::new(0),
            refused_full: AtomicU64::new(0),
            refused_address: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            idle_timeouts: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            vm_traps: AtomicU64::new(0),
            vm_replacements_ok: AtomicU64::new(0),
            vm_replacements_failed: AtomicU64::new(0),
            store_reloads_ok: AtomicU64::new(0),
            store_reloads_failed: AtomicU64::new(0),
            config_reloads_ok: AtomicU64::new(0),
            config_reloads_failed: AtomicU64::new(0),
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    /// One response written, with its status.
    pub(crate) fn responded(&self, status: u16) {
        if let Some(c) = usize::from(status)
            .checked_sub(100)
            .and_then(|i| self.requests.get(i))
        {
            bump(c);
        }
    }

    /// One request through the gate, from its headers to its response.
    pub(crate) fn took(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&le| seconds <= le)
            && let Some(b) = self.latency.buckets.get(i)
        {
            bump(b);
        }
        bump(&self.latency.count);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.latency.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// What the exposition reads besides [`Metrics`], at the moment of a scrape.
pub(crate) struct Scrape {
    /// The filter's counters, by the names it defined.
    pub(crate) filter: Vec<(String, i64)>,
    /// Component instances created, under `--component`.
    pub(crate) component_instances: Option<u64>,
    pub(crate) connections_open: usize,
    pub(crate) credentials: usize,
    pub(crate) limiter_store_errors: u64,
    /// Flushes of last use that wrote, and that failed.
    pub(crate) last_use_flushes: (u64, u64),
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

/// One metric family: `# HELP`, `# TYPE`, then its samples.
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(&str, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

fn one(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help, &[("", value.to_string())]);
}

impl Metrics {
    /// The text exposition (`text/plain; version=0.0.4`).
    pub(crate) fn render(&self, scrape: &Scrape) -> String {
        let mut out = String::new();
        for (name, value) in &scrape.filter {
            // Defined by the filter: only names Prometheus accepts pass.
            if valid_name(name) {
                one(
                    &mut out,
                    name,
                    "counter",
                    "A counter the filter defines (proxy_define_metric), named as in Envoy.",
                    u64::try_from(*value).unwrap_or(0),
                );
            }
        }
        if let Some(created) = scrape.component_instances {
            one(
                &mut out,
                "sessiongate_component_instances_created_total",
                "counter",
                "Component instances created (a 0.3 instance serves many requests, a 0.2 one only one).",
                created,
            );
        }
        let by_status: Vec<(String, String)> = self
            .requests
            .iter()
            .enumerate()
            .filter(|(_, c)| load(c) > 0)
            .map(|(i, c)| (format!("{{code=\"{}\"}}", i + 100), load(c).to_string()))
            .collect();
        let by_status: Vec<(&str, String)> = by_status
            .iter()
            .map(|(l, v)| (l.as_str(), v.clone()))
            .collect();
        family(
            &mut out,
            "sessiongate_http_requests_total",
            "counter",
            "Responses written, by status code (hyper's own parse errors included).",
            &by_status,
        );
        self.render_latency(&mut out);
        one(
            &mut out,
            "sessiongate_connections_open",
            "gauge",
            "Client connections open now.",
            scrape.connections_open as u64,
        );
        one(
            &mut out,
            "sessiongate_connections_accepted_total",
            "counter",
            "Client connections admitted.",
            load(&self.connections_accepted),
        );
        family(
            &mut out,
            "sessiongate_connections_refused_total",
            "counter",
            "Client connections closed at once, by the cap they met.",
            &[
                (
                    "{cap=\"max_connections\"}",
                    load(&self.refused_full).to_string(),
                ),
                (
                    "{cap=\"max_per_address\"}",
                    load(&self.refused_address).to_string(),
                ),
            ],
        );
        family(
            &mut out,
            "sessiongate_connections_timed_out_total",
            "counter",
            "Client connections closed for a timeout: headers not in (header) or idle too long (idle).",
            &[
                (
                    "{timeout=\"header\"}",
                    load(&self.header_timeouts).to_string(),
                ),
                ("{timeout=\"idle\"}", load(&self.idle_timeouts).to_string()),
            ],
        );
        one(
            &mut out,
            "sessiongate_accept_errors_total",
            "counter",
            "Failed accepts (out of file descriptors, for one).",
            load(&self.accept_errors),
        );
        one(
            &mut out,
            "sessiongate_vm_traps_total",
            "counter",
            "Filter VMs that trapped (each is replaced by a fresh one).",
            load(&self.vm_traps),
        );
        family(
            &mut out,
            "sessiongate_vm_replacements_total",
            "counter",
            "Fresh filter VMs started in place of a trapped one, by result.",
            &[
                (
                    "{result=\"ok\"}",
                    load(&self.vm_replacements_ok).to_string(),
                ),
                (
                    "{result=\"failed\"}",
                    load(&self.vm_replacements_failed).to_string(),
                ),
            ],
        );
        family(
            &mut out,
            "sessiongate_store_reloads_total",
            "counter",
            "Token store reloads, by result (a failed one keeps the last good credentials).",
            &[
                ("{result=\"ok\"}", load(&self.store_reloads_ok).to_string()),
                (
                    "{result=\"failed\"}",
                    load(&self.store_reloads_failed).to_string(),
                ),
            ],
        );
        family(
            &mut out,
            "sessiongate_last_use_flushes_total",
            "counter",
            "Flushes of last use to the token store that wrote, or failed (kept for the next); never one a request.",
            &[
                (
                    "{result=\"written\"}",
                    scrape.last_use_flushes.0.to_string(),
                ),
                ("{result=\"failed\"}", scrape.last_use_flushes.1.to_string()),
            ],
        );
        one(
            &mut out,
            "sessiongate_credentials",
            "gauge",
            "Credentials the gate holds now.",
            scrape.credentials as u64,
        );
        family(
            &mut out,
            "sessiongate_config_reloads_total",
            "counter",
            "Configuration reloads on SIGHUP, by result (a failed one changes nothing).",
            &[
                ("{result=\"ok\"}", load(&self.config_reloads_ok).to_string()),
                (
                    "{result=\"failed\"}",
                    load(&self.config_reloads_failed).to_string(),
                ),
            ],
        );
        one(
            &mut out,
            "sessiongate_limiter_store_errors_total",
            "counter",
            "Calls to the limiter's store that failed (shared data, or etcd with no member answering in time).",
            scrape.limiter_store_errors,
        );
        out
    }

    fn render_latency(&self, out: &mut String) {
        let name = "sessiongate_http_request_duration_seconds";
        let mut samples = Vec::new();
        let mut cumulative = 0;
        for (le, bucket) in LATENCY_BUCKETS.iter().zip(&self.latency.buckets) {
            cumulative += load(bucket);
            samples.push((format!("_bucket{{le=\"{le}\"}}"), cumulative.to_string()));
        }
        let count = load(&self.latency.count);
        samples.push(("_bucket{le=\"+Inf\"}".to_owned(), count.to_string()));
        let sum = Duration::from_nanos(load(&self.latency.sum_ns)).as_secs_f64();
        samples.push(("_sum".to_owned(), sum.to_string()));
        samples.push(("_count".to_owned(), count.to_string()));
        let _ = writeln!(
            out,
            "# HELP {name} Time from a request's headers to its response, upstream included."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (suffix, value) in samples {
            let _ = writeln!(out, "{name}{suffix} {value}");
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the format's rule for metric names.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape() -> Scrape {
        Scrape {
            filter: vec![("sessiongate_allowed".into(), 3), ("bad name{".into(), 1)],
            component_instances: None,
            connections_open: 2,
            credentials: 5,
            limiter_store_errors: 0,
            last_use_flushes: (1, 0),
        }
    }

    #[test]
    fn statuses_latency_and_filter_counters_render_by_the_format() {
        let m = Metrics::default();
        m.responded(200);
        m.responded(200);
        m.responded(429);
        m.responded(42); // not a status: dropped, never a panic
        m.responded(700);
        m.took(Duration::from_micros(50));
        m.took(Duration::from_millis(3));
        m.took(Duration::from_secs(60));
        let text = m.render(&scrape());
        assert!(text.contains("\nsessiongate_http_requests_total{code=\"200\"} 2\n"));
        assert!(text.contains("\nsessiongate_http_requests_total{code=\"429\"} 1\n"));
        assert!(text.starts_with("# HELP sessiongate_allowed "));
        assert!(text.contains("\nsessiongate_allowed 3\n"));
        assert!(!text.contains("bad name"));
        let name = "sessiongate_http_request_duration_seconds";
        assert!(text.contains(&format!("\n{name}_bucket{{le=\"0.0001\"}} 1\n")));
        assert!(text.contains(&format!("\n{name}_bucket{{le=\"0.005\"}} 2\n")));
        assert!(text.contains(&format!("\n{name}_bucket{{le=\"10\"}} 2\n")));
        assert!(text.contains(&format!("\n{name}_bucket{{le=\"+Inf\"}} 3\n")));
        assert!(text.contains(&format!("\n{name}_count 3\n")));
        assert!(text.contains("\nsessiongate_credentials 5\n"));
    }
}
