//! Logging, traces and metrics set-up.
//!
//! Logs are JSON by default (`LOG_FORMAT=pretty` for people), filtered by `LOG_LEVEL` unless
//! `RUST_LOG` is set. Traces ([`traces`]) are a second layer with a filter of its own, present
//! only when an OTLP endpoint is configured. The Prometheus recorder is process-global by
//! nature (the `metrics` facade has one global recorder), so it is installed once and its
//! handle shared.

pub mod traces;

use std::{io::IsTerminal as _, sync::OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::{FilterExt as _, LevelFilter, filter_fn},
    layer::SubscriberExt as _,
    util::SubscriberInitExt as _,
};

use traces::{TraceConfig, TraceError, TraceLayer, Traces};

/// Directives added to every filter: sqlx's migration notices and per-statement logs are noise.
///
/// sqlx logs a warning for every pooled connection a database restart drops; the outage is
/// logged once at WARN (and its end once at INFO) by the revocation follower instead.
const QUIET: &[&str] = &["sqlx=error", "sqlx::postgres::notice=error"];

/// Log output for machines or for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line (default).
    Json,
    /// Human-readable, multi-line.
    Pretty,
}

/// Installs the global subscriber for the server (stdout, `LOG_LEVEL` as `level`, unless
/// `RUST_LOG` is set), with the trace layer when `traces` exports. Call once, from `main`,
/// inside the Tokio runtime; keep what it returns to flush the traces at shutdown.
///
/// # Errors
/// When the trace exporter refuses its configuration.
pub fn init(
    level: &str,
    format: LogFormat,
    traces: &TraceConfig,
) -> Result<Option<Traces>, TraceError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal();
    let (traces, layer) = Traces::start(traces)?.unzip();
    install(format, filter, std::io::stdout, ansi, layer);
    Ok(traces)
}

/// Installs the subscriber for admin commands: stderr, warnings plus the audit events, so
/// stdout carries only the command's own output.
pub fn init_cli(format: LogFormat) {
    let ansi = std::io::stderr().is_terminal();
    install(
        format,
        EnvFilter::new("warn,audit=info"),
        std::io::stderr,
        ansi,
        None,
    );
}

fn install<W>(
    format: LogFormat,
    mut filter: EnvFilter,
    writer: W,
    ansi: bool,
    traces: Option<TraceLayer>,
) where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    for directive in QUIET {
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    // The log's own filter: a per-layer one, so the trace layer can see the DEBUG request
    // spans of verify and the probes without the log printing them.
    // (`filter_fn` says it may pass any level, so the pair keeps the level filter's maximum
    // and disabled levels stay as cheap as with a global filter.)
    let logged = filter.and(filter_fn(traces::logged).with_max_level_hint(LevelFilter::TRACE));
    let registry = tracing_subscriber::registry().with(traces);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_filter(logged),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(ansi)
                    .pretty()
                    .with_filter(logged),
            )
            .try_init(),
    };
    if result.is_err() {
        eprintln!("auth-service: a tracing subscriber was already installed");
    }
}

/// Bucket bounds (seconds) for request latency: bcrypt at cost 12 sits around 0.25 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The handle of the process-wide Prometheus recorder, installing it on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new();
            let builder = match builder.set_buckets_for_metric(
                Matcher::Full("http_request_duration_seconds".to_owned()),
                LATENCY_BUCKETS,
            ) {
                Ok(b) => b,
                Err(_) => PrometheusBuilder::new(),
            };
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics stays empty");
            }
            describe_metrics();
            handle
        })
        .clone()
}

/// How often histogram samples are folded into their buckets when nobody scrapes `/metrics`.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Folds recorded histogram samples into their buckets every [`METRICS_UPKEEP_EVERY`]. The
/// recorder keeps every sample until upkeep runs (a scrape runs it too), so without this a
/// service nobody scrapes grows by about 20 bytes per request, without bound. A
/// [`crate::background::Background`] task.
pub async fn metrics_upkeep(handle: PrometheusHandle) {
    {
        let mut every = tokio::time::interval(METRICS_UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            handle.run_upkeep();
        }
    }
}

/// A `# HELP` line for every metric the service records.
fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "http_requests_total",
        "HTTP requests by method (unknown methods as _OTHER), route template and status"
    );
    describe_histogram!(
        "http_request_duration_seconds",
        Unit::Seconds,
        "HTTP request latency by route template"
    );
    describe_counter!("auth_logins_total", "Logins by result");
    describe_counter!("auth_registrations_total", "Registrations by result");
    describe_counter!("auth_refresh_total", "Refreshes by result");
    describe_counter!("auth_verify_total", "Access-token verifications by result");
    describe_counter!(
        "auth_lockouts_total",
        "Failed logins that locked an email or an IP"
    );
    describe_gauge!(
        "password_hash_in_flight",
        "bcrypt hashes and verifications running"
    );
    describe_histogram!(
        "password_hash_wait_seconds",
        Unit::Seconds,
        "Time a request waited for a bcrypt thread"
    );
    describe_counter!(
        "password_hash_refused_total",
        "Logins and registrations refused because PASSWORD_HASH_MAX_QUEUE requests already waited"
    );
    describe_gauge!(
        "db_pool_connections",
        "Open database connections of the pool"
    );
    describe_gauge!(
        "db_pool_idle_connections",
        "Idle database connections of the pool"
    );
    describe_gauge!(
        "verify_cache_entries",
        "What /auth/verify remembers, by cache: verified tokens (at most 10,000), users and sessions (of tokens that verified)"
    );
    describe_counter!("rows_purged_total", "Rows deleted by the purge, by table");
    describe_gauge!("connections_open", "Open client connections");
    describe_counter!(
        "mail_sent_total",
        "Messages handed to the SMTP server (or the log)"
    );
    describe_counter!(
        "mail_failed_total",
        "Messages given up on (undeliverable, or retried for MAIL_MAX_RETRY_HOURS)"
    );
    describe_counter!(
        "password_reset_dropped_total",
        "Forgot-password and resend-by-email requests dropped (answered 202) because 64 were already being queued"
    );
    describe_gauge!(
        "mail_outbox_pending",
        "Messages in the outbox neither sent nor failed"
    );
    describe_counter!(
        "webhook_deliveries_total",
        "Webhook delivery attempts, by result: delivered (2xx), retry, failed (given up after \
         WEBHOOK_MAX_RETRY_HOURS), gone (410: the endpoint stopped until restart)"
    );
    describe_gauge!(
        "webhook_outbox_pending",
        "Webhook events (one per endpoint) neither delivered nor failed"
    );
    describe_counter!(
        "trace_spans_total",
        "Finished spans by result: exported, failed (the collector refused or did not answer in \
         OTEL_EXPORTER_OTLP_TIMEOUT), dropped (OTEL_BSP_MAX_QUEUE_SIZE spans already waited)"
    );
    describe_counter!(
        "passkey_ceremonies_total",
        "Passkey ceremonies finished, by kind (register, login) and result"
    );
    describe_counter!(
        "connections_refused_total",
        "Connections closed at accept: per_ip (the peer held MAX_CONNECTIONS_PER_IP, none of them \
         idle) or full (every slot held by a connection with a request in flight)"
    );
    describe_counter!(
        "connections_shed_total",
        "Idle or silent connections closed: per_ip (a new one from the same peer over its cap), \
         overload (above 75% of MAX_CONNECTIONS) or full (a new one at MAX_CONNECTIONS)"
    );
}
