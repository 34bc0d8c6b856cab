//! Logs and metrics, set up once per process.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Seconds: from sub-millisecond (embedded reads, fsyncs) to the ack timeout and the
/// slowest ClickHouse flushes.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Events per batch (log writes, store transactions).
const EVENTS_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0, 10_000.0,
];
/// Rows per batch or insert.
const ROWS_BUCKETS: &[f64] = &[
    1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 25_000.0, 50_000.0, 100_000.0,
];
/// Bytes per batch.
const BYTES_BUCKETS: &[f64] = &[
    1024.0,
    16_384.0,
    131_072.0,
    1_048_576.0,
    8_388_608.0,
    33_554_432.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Logs to stdout; `RUST_LOG` filters (default `info`). Colours only on a terminal: a
/// log collector (or a file) would otherwise store escape codes around every level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .try_init();
}

/// The process's Prometheus recorder, installed on first use. Tests that build several apps
/// in one process share it.
pub fn metrics_handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|builder| {
                    builder
                        .set_buckets_for_metric(Matcher::Suffix("_events".into()), EVENTS_BUCKETS)
                })
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_rows".into()), ROWS_BUCKETS)
                })
                .and_then(|builder| {
                    builder.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS)
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                // Only reachable with empty bucket lists, which the constants are not.
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

/// Keeps histogram storage bounded between scrapes.
pub fn spawn_metrics_upkeep(handle: PrometheusHandle, mut shutdown: crate::shutdown::Shutdown) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                () = shutdown.wait() => return,
            }
        }
    });
}

/// Records one HTTP request. `route` is the matched route template, never the raw path, so
/// the label stays low-cardinality.
pub fn record_request(
    route: impl Into<metrics::SharedString>,
    method: &http::Method,
    status: http::StatusCode,
    started: Instant,
) {
    let route: metrics::SharedString = route.into();
    let method = method_label(method);
    let status = status.as_str().to_owned();
    metrics::counter!("referral_http_requests_total", "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!("referral_http_request_duration_seconds", "route" => route, "method" => method)
        .record(started.elapsed().as_secs_f64());
}

/// The request series of one hot route, registered once. Looking a labelled series up per
/// request (hashing its labels, allocating the status) took about 3% of the click POST's
/// CPU (perf, docs/BENCHMARKS.md); these handles skip it for the route's usual status. The
/// series are the ones [`record_request`] writes.
pub struct RouteMetrics {
    route: &'static str,
    method: &'static str,
    usual: http::StatusCode,
    usual_requests: metrics::Counter,
    duration: metrics::Histogram,
}

impl RouteMetrics {
    pub fn new(route: &'static str, method: &http::Method, usual: http::StatusCode) -> Self {
        // Handles registered before the recorder is installed would record nowhere.
        let _ = metrics_handle();
        let method = method_label(method);
        Self {
            route,
            method,
            usual,
            usual_requests: metrics::counter!("referral_http_requests_total", "route" => route, "method" => method, "status" => usual.as_str().to_owned()),
            duration: metrics::histogram!("referral_http_request_duration_seconds", "route" => route, "method" => method),
        }
    }

    /// Records one request of this route.
    pub fn record(&self, status: http::StatusCode, started: Instant) {
        if status == self.usual {
            self.usual_requests.increment(1);
        } else {
            metrics::counter!("referral_http_requests_total", "route" => self.route, "method" => self.method, "status" => status.as_str().to_owned())
                .increment(1);
        }
        self.duration.record(started.elapsed().as_secs_f64());
    }
}

/// The click POST's two routes (the contract's prefix and its doubled alias), each with its
/// request series registered once.
pub struct ClickRouteMetrics {
    primary: RouteMetrics,
    alias: RouteMetrics,
}

impl Default for ClickRouteMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ClickRouteMetrics {
    pub fn new() -> Self {
        let created = http::StatusCode::CREATED;
        Self {
            primary: RouteMetrics::new(crate::ATTRIBUTIONS_PREFIX, &http::Method::POST, created),
            alias: RouteMetrics::new(
                crate::ATTRIBUTIONS_DOUBLED_PREFIX,
                &http::Method::POST,
                created,
            ),
        }
    }

    /// The series of a request with `method` on `path`, if it is a click POST.
    pub fn of(&self, method: &http::Method, path: &str) -> Option<&RouteMetrics> {
        if method != http::Method::POST {
            return None;
        }
        match path {
            crate::ATTRIBUTIONS_PREFIX => Some(&self.primary),
            crate::ATTRIBUTIONS_DOUBLED_PREFIX => Some(&self.alias),
            _ => None,
        }
    }
}

/// A fixed label per method; anything exotic is "other".
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}
