//! The nginx configuration that serves the filter on Kong's WasmX (nginx +
//! ngx_wasm_module): `sessiongate wasmx-config`, which
//! `plugin/run-wasmx.sh` renders and runs.
//!
//! What nginx does differently from Envoy, and what the configuration does
//! about it, is in the README ("Kong Gateway and nginx (WasmX)"); the
//! comments in the rendered file say the same where each part is.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

/// nginx reads a configuration into a 4,096-byte buffer (`NGX_CONF_BUFFER`),
/// and one parameter, quotes and escapes included, must fit in it.
pub const MAX_ARGUMENT: usize = 4_093;

/// One nginx instance serving the filter.
#[derive(Debug, Clone)]
pub struct NginxConf<'a> {
    /// The filter's `.wasm`, absolute.
    pub filter: &'a Path,
    /// The filter's configuration (core's `GateConfig` as JSON).
    pub filter_config: &'a str,
    pub listen: SocketAddr,
    /// nginx's prefix (`-p`): its pid, logs and sockets go here.
    pub prefix: &'a Path,
    /// Worker processes: each has its own VM, and shared data is shared by all.
    pub workers: u32,
    /// Where admitted requests go (`http://host:port`); `None`: the filter
    /// answers them itself (the stub).
    pub upstream: Option<&'a str>,
    /// The limiter on etcd: nginx's own HTTP proxy to the members, which the
    /// filter's callouts go through.
    pub etcd: Option<EtcdProxy<'a>>,
}

/// An HTTP proxy in front of etcd's members: ngx_wasm_module's
/// `dispatch_http_call` takes one address, not a cluster, so nginx's
/// upstream is what tries the next member when one is down.
#[derive(Debug, Clone)]
pub struct EtcdProxy<'a> {
    /// Where the proxy listens (the filter's `limiter.cluster`).
    pub listen: SocketAddr,
    /// The members' client URLs (`http://host:port`).
    pub members: &'a [String],
    /// How long the proxy waits on a member: past it, the call is answered
    /// 504 (the filter's own callout timeout must be longer: see
    /// [`EtcdProxy::callout_timeout_ms`]).
    pub timeout_ms: u32,
}

impl EtcdProxy<'_> {
    /// The filter's timeout for a callout through the proxy: longer than
    /// the proxy can take (a next member may be tried until `timeout_ms`,
    /// connect at most 250 ms, then read for `timeout_ms`), so the proxy's
    /// 504 arrives first and the filter's timeout is only a backstop.
    pub fn callout_timeout_ms(&self) -> u32 {
        self.timeout_ms.saturating_mul(2).saturating_add(500)
    }
}

/// Why a configuration cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The filter's configuration does not fit in one nginx parameter.
    TooLong {
        /// Its size once escaped.
        bytes: usize,
    },
    /// A URL nginx cannot take as `host:port` over plain HTTP.
    BadUrl(String),
    /// A path nginx would read wrongly (it holds a quote, a space or `;`).
    BadPath(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::TooLong { bytes } => write!(
                f,
                "the filter's configuration is {bytes} bytes as an nginx parameter, and nginx \
                 takes at most {MAX_ARGUMENT} in one: a store this large cannot ride in the \
                 configuration on WasmX (serve it with `sessiongate serve`, or keep the \
                 credentials in the fleet's etcd store once the filter reads them from there)"
            ),
            Error::BadUrl(url) => write!(
                f,
                "{url:?} is not an http://host:port URL (nginx here proxies plain HTTP)"
            ),
            Error::BadPath(path) => write!(
                f,
                "{path:?}: nginx cannot take a path with quotes, spaces, ';', '{{' or '}}'"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// `text` as the inside of an nginx single-quoted parameter.
pub fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\'', "\\'")
}

/// `host:port` of an `http://host:port[/]` URL.
fn host_port(url: &str) -> Result<&str, Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::BadUrl(url.to_owned()))?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let ok = !rest.is_empty()
        && rest.contains(':')
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
    if ok {
        Ok(rest)
    } else {
        Err(Error::BadUrl(url.to_owned()))
    }
}

fn path(p: &Path) -> Result<String, Error> {
    let text = p.to_string_lossy().into_owned();
    if text
        .chars()
        .any(|c| c.is_whitespace() || "'\";{}\\$".contains(c))
    {
        return Err(Error::BadPath(text));
    }
    Ok(text)
}

impl NginxConf<'_> {
    /// The whole `nginx.conf`.
    pub fn render(&self) -> Result<String, Error> {
        let config = quote(self.filter_config);
        if config.len() > MAX_ARGUMENT {
            return Err(Error::TooLong {
                bytes: config.len(),
            });
        }
        let prefix = path(self.prefix)?;
        let filter = path(self.filter)?;
        let malformed = quote(&sessiongate_core::malformed_request_body());
        let unavailable = quote(
            sessiongate_core::Gate::upstream_unavailable(None)
                .body
                .as_str(),
        );
        let mut out = String::new();
        let w = &mut out;
        // `write!` into a String cannot fail.
        let _ = write!(
            w,
            "# Rendered by `sessiongate wasmx-config`: the sessiongate filter on WasmX
# (nginx + ngx_wasm_module). Run: nginx -p {prefix} -c {prefix}/nginx.conf
worker_processes  {workers};
daemon            off;
# A reload (new credentials) ends within this: an old worker still serving
# a request past it is closed, so old credentials cannot outlive it.
worker_shutdown_timeout  10s;
pid               {prefix}/nginx.pid;
# info for the process-wide log: each worker's filter logs its
# `configured:` line there (run-wasmx.sh waits for one a worker).
error_log         {prefix}/logs/error.log  info;

events {{
    worker_connections  1024;
}}

wasm {{
    module  sessiongate  {filter};
    # Shared data (the limiter's log, the guard's buckets) for every worker.
    # eviction=none: a full zone fails the write (503 limiter_unavailable),
    # as Envoy's shared data never drops a key; the default slru would drop
    # the limiter's log and forget what it admitted.
    shm_kv  *  4m  eviction=none;
}}

http {{
    # notice for what requests log: at info nginx writes a refused request's
    # headers (two Authorization headers, values and all) to the log.
    error_log  {prefix}/logs/error.log  notice;
    # The worker's pid in every line: which VM answered.
    log_format  sessiongate  '$remote_addr [$time_local] \"$request\" $status worker=$pid';
    access_log  {prefix}/logs/access.log  sessiongate;
    client_body_temp_path  {prefix}/tmp/body;
    proxy_temp_path        {prefix}/tmp/proxy;
    fastcgi_temp_path      {prefix}/tmp/fastcgi;
    uwsgi_temp_path        {prefix}/tmp/uwsgi;
    scgi_temp_path         {prefix}/tmp/scgi;

    server {{
        # reuseport: the kernel spreads connections over the workers (each
        # its own VM), rather than whichever worker wakes first taking most.
        listen  {listen}  reuseport;
        # The filter routes the request target as sent: `//` is a 404, not
        # merged into `/`.
        merge_slashes  off;

        # nginx refuses some requests before any filter runs (two
        # Authorization headers, a malformed request line or header): the
        # contract's 400 JSON instead of nginx's HTML, from a location with
        # no filter, so the refused request never reaches the filter as one
        # value.
        error_page  400  @malformed;
        location @malformed {{
            default_type  application/json;
            return  400  '{malformed}';
        }}

        location / {{
            # on_request_headers runs in nginx's rewrite phase; the filter's
            # answers (proxy_send_local_response) end the request there.
            proxy_wasm  sessiongate  '{config}';
",
            workers = self.workers,
            listen = self.listen,
        );
        match self.upstream {
            Some(url) => {
                let upstream = host_port(url)?;
                let hygiene = forward_hygiene();
                let _ = write!(
                    w,
                    "            # Admitted requests go on to the sessions service.
            proxy_pass  http://{upstream};
            # HTTP/1.1, as Envoy and serve speak to the service (nginx's
            # default is 1.0).
            proxy_http_version  1.1;
            proxy_set_header  Host  $proxy_host;
{hygiene}
            # Unreachable or timing out: the contract's 502 (nginx's own
            # would be HTML).
            proxy_intercept_errors  off;
            error_page  502 504  @upstream_unavailable;
        }}
        location @upstream_unavailable {{
            default_type  application/json;
            return  502  '{unavailable}';
        }}
"
                );
            }
            None => {
                let internal = quote(&sessiongate_core::internal_error_body(
                    "The gate let a request through with no backend.",
                ));
                let _ = write!(
                    w,
                    "            # The stub: the filter answers every request itself. A
            # request it let through would be a fault: a 500 in the
            # contract's shape from the server below, not a page of
            # nginx's. (Not `return` here: the rewrite module's `return`
            # runs before ngx_wasm_module's handler, and the filter would
            # see no request.)
            proxy_pass  http://unix:{prefix}/let-through.sock:;
        }}
    }}

    server {{
        listen  unix:{prefix}/let-through.sock;
        default_type  application/json;
        return  500  '{internal}';
"
                );
            }
        }
        let _ = writeln!(w, "    }}");
        if let Some(etcd) = &self.etcd {
            let _ = write!(
                w,
                "
    # The limiter's etcd: the filter calls {listen}, nginx passes the call
    # to a member that answers and tries the next when one fails (Envoy's
    # cluster with outlier detection does this in plugin/envoy-fleet.yaml).
    # An HTTP proxy, not a TCP one: when no member answers in time it still
    # answers the filter (504), and the filter's answer to that (503
    # limiter_unavailable) is sent as from any call. A failed dispatch on
    # ngx_wasm_module drops the response the filter sends from its callback.
    upstream sessiongate_etcd {{
",
                listen = etcd.listen
            );
            for member in etcd.members {
                let member = host_port(member)?;
                let _ = writeln!(w, "        server  {member}  max_fails=1  fail_timeout=2s;");
            }
            let timeout = etcd.timeout_ms;
            let _ = write!(
                w,
                "        keepalive  16;
    }}
    server {{
        listen  {listen};
        access_log  off;
        location / {{
            proxy_pass  http://sessiongate_etcd;
            proxy_http_version  1.1;
            proxy_set_header  Connection  \"\";
            proxy_connect_timeout  {connect}ms;
            proxy_send_timeout  {timeout}ms;
            proxy_read_timeout  {timeout}ms;
            # A retried call is safe: reads are reads, and a write is a
            # compare-and-swap that cannot apply twice.
            proxy_next_upstream  error timeout http_502 http_503 http_504 non_idempotent;
            proxy_next_upstream_timeout  {timeout}ms;
        }}
    }}
",
                listen = etcd.listen,
                connect = timeout.min(250),
            );
        }
        let _ = writeln!(w, "}}");
        Ok(out)
    }
}

/// The client's headers that go on to the sessions service on WasmX: what a
/// client of a read-only JSON API sends that the service may use (content
/// negotiation, caching, tracing). Everything else stays at the gate.
pub const FORWARDED_CLIENT_HEADERS: &[&str] = &[
    "accept",
    "accept-encoding",
    "accept-language",
    "user-agent",
    "cache-control",
    "if-none-match",
    "if-modified-since",
    "x-request-id",
    "traceparent",
    "tracestate",
];

/// `proxy_set_header` lines that make nginx forward what the filter
/// decided, and nothing else. ngx_wasm_module removes a request header by
/// zeroing its hash, and replaces the first of several copies by zeroing
/// the rest, but nginx's proxy module forwards every entry of the list,
/// zeroed or not (and `proxy_set_header` cannot match a zeroed one): the
/// client's `Authorization`, and a second, spoofed identity header, would
/// reach the service. So nginx forwards no client header by itself; each
/// one forwarded is named, as `$http_…`, which reads only the entries
/// not zeroed: for the identity headers, the value the filter set.
fn forward_hygiene() -> String {
    let mut lines = String::from("            proxy_pass_request_headers  off;\n");
    let identity = [
        sessiongate_core::CREDENTIAL_HEADER,
        sessiongate_core::CUSTOMER_HEADER,
    ];
    for name in FORWARDED_CLIENT_HEADERS.iter().chain(&identity) {
        let variable = name.replace('-', "_");
        let _ = writeln!(
            lines,
            "            proxy_set_header  {name}  $http_{variable};"
        );
    }
    lines
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn conf<'a>(config: &'a str, upstream: Option<&'a str>) -> NginxConf<'a> {
        NginxConf {
            filter: Path::new("/opt/sg/filter.wasm"),
            filter_config: config,
            listen: "127.0.0.1:8080".parse().unwrap(),
            prefix: Path::new("/run/sg"),
            workers: 2,
            upstream,
            etcd: None,
        }
    }

    #[test]
    fn the_filters_configuration_is_one_quoted_parameter() {
        let text = conf(r#"{"a":"it's \"x\" \\"}"#, None).render().unwrap();
        assert!(
            text.contains(r#"proxy_wasm  sessiongate  '{"a":"it\'s \\"x\\" \\\\"}';"#),
            "{text}"
        );
    }

    #[test]
    fn a_configuration_past_nginxs_parameter_limit_is_refused_saying_why() {
        let big = "x".repeat(MAX_ARGUMENT + 1);
        let e = conf(&big, None).render().unwrap_err();
        assert_eq!(
            e,
            Error::TooLong {
                bytes: MAX_ARGUMENT + 1
            }
        );
        assert!(e.to_string().contains("at most 4093"), "{e}");
        // Escapes count: 2,047 quotes become 4,094 bytes.
        let quotes = "'".repeat(2_047);
        assert!(conf(&quotes, None).render().is_err());
        assert!(conf(&"x".repeat(MAX_ARGUMENT), None).render().is_ok());
    }

    #[test]
    fn nginxs_own_400_answers_the_contracts_json_from_a_location_without_the_filter() {
        let text = conf("{}", None).render().unwrap();
        let at = text.find("location @malformed").unwrap();
        let block = &text[at..text[at..].find('}').unwrap() + at];
        assert!(block.contains("application/json"), "{block}");
        assert!(block.contains("\"code\":\"invalid_request\""), "{block}");
        assert!(!block.contains("proxy_wasm"), "{block}");
        assert!(text.contains("error_page  400  @malformed;"));
        assert!(text.contains("worker_processes  2;"));
        assert!(text.contains("worker_shutdown_timeout  10s;"));
        assert!(text.contains("listen  127.0.0.1:8080  reuseport;"));
    }

    #[test]
    fn an_upstream_gets_the_contracts_502_and_a_bad_url_is_refused() {
        let text = conf("{}", Some("http://10.0.0.9:9000/")).render().unwrap();
        assert!(text.contains("proxy_pass  http://10.0.0.9:9000;"), "{text}");
        assert!(text.contains("\"code\":\"upstream_unavailable\""), "{text}");
        for bad in ["https://a:1", "http://a", "http://a:1/x", "ftp://a:1"] {
            assert_eq!(
                conf("{}", Some(bad)).render().unwrap_err(),
                Error::BadUrl(bad.to_owned()),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_etcd_proxy_lists_every_member() {
        let members = [
            "http://127.0.0.1:2379".to_owned(),
            "http://10.0.0.2:2379".to_owned(),
        ];
        let mut c = conf("{}", None);
        c.etcd = Some(EtcdProxy {
            listen: "127.0.0.1:7000".parse().unwrap(),
            members: &members,
            timeout_ms: 400,
        });
        let text = c.render().unwrap();
        assert!(
            text.contains("server  127.0.0.1:2379  max_fails=1"),
            "{text}"
        );
        assert!(
            text.contains("server  10.0.0.2:2379  max_fails=1"),
            "{text}"
        );
        assert!(text.contains("listen  127.0.0.1:7000;"), "{text}");
        // Inside http: a member that does not answer in time is still an
        // HTTP answer to the filter.
        let http = text.find("http {").unwrap();
        assert!(
            text.find("upstream sessiongate_etcd").unwrap() > http,
            "{text}"
        );
        assert!(text.contains("proxy_read_timeout  400ms;"), "{text}");
        assert!(text.contains("proxy_connect_timeout  250ms;"), "{text}");
        assert!(!text.contains("stream {"), "{text}");
        assert_eq!(c.etcd.unwrap().callout_timeout_ms(), 1_300);
    }

    #[test]
    fn the_stub_has_no_return_where_the_filter_runs() {
        let text = conf("{}", None).render().unwrap();
        let at = text.find("location / {").unwrap();
        let block = &text[at..text[at..].find("\n        }").unwrap() + at];
        let directives: Vec<&str> = block
            .lines()
            .map(str::trim)
            .filter(|line| !line.starts_with('#'))
            .collect();
        assert!(
            !directives.iter().any(|line| line.starts_with("return")),
            "{block}"
        );
        assert!(block.contains("proxy_pass  http://unix:/run/sg/let-through.sock:;"));
    }

    #[test]
    fn the_service_gets_named_headers_only_never_the_secret() {
        let text = conf("{}", Some("http://10.0.0.5:9000")).render().unwrap();
        assert!(text.contains("proxy_pass_request_headers  off;"), "{text}");
        for name in FORWARDED_CLIENT_HEADERS {
            // Each one is a header core lets through to the service.
            assert!(
                sessiongate_core::Forward::keeps_request_header(name),
                "{name}"
            );
            assert!(
                text.contains(&format!("proxy_set_header  {name}  $http_")),
                "{name}"
            );
        }
        assert!(
            text.contains(
                "proxy_set_header  x-sessiongate-credential  $http_x_sessiongate_credential;"
            ),
            "{text}"
        );
        assert!(
            !text.to_ascii_lowercase().contains("$http_authorization"),
            "{text}"
        );
    }

    #[test]
    fn a_path_nginx_would_misread_is_refused() {
        let mut c = conf("{}", None);
        c.prefix = Path::new("/tmp/a b");
        assert!(matches!(c.render(), Err(Error::BadPath(_))));
    }
}
