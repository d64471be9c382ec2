//! Traces over OTLP (API.md: `OTEL_EXPORTER_OTLP_ENDPOINT` and the standard `OTEL_*`
//! variables), off unless an endpoint is set.
//!
//! The service's `tracing` spans become OpenTelemetry spans through `tracing-opentelemetry`,
//! with a filter of their own ([`exported`]), so the logs do not change:
//!
//! - the **server span** of every request but probes and scrapes (`request`, router and
//!   verify hot path alike), a child of the caller's span when a W3C `traceparent` (and
//!   `tracestate`) came with it ([`continue_trace`]); its trace id is logged as the request
//!   span's `trace_id`;
//! - inside it, the service's spans (`login`, `verify_access`, ...), the **password hash** as two
//!   spans (`password_hash.queue`, the wait for a bcrypt thread, then `password_hash`), and
//!   **each database call** (a span per store method, named after it, with `db.system`);
//! - the **outbox sends** (`mail send`, `webhook send`), each the root of a trace of its own
//!   with its database calls inside.
//!
//! Database calls of the background tasks (the revocation follower, the purge, the outbox's
//! claims) are not exported: they would make a trace a second out of nothing a request did.
//! Neither are probes and scrapes (their request spans have a target of their own).
//!
//! **No personal data.** Only the attributes in [`EXPORTED`] leave the process ([`Redact`]):
//! the request span's client address, the log-only fields and anything added later stay in
//! the logs. `user.id` leaves as `enduser.id` only with `TRACE_USER_ID=true`.
//!
//! **Never in a request's way.** Finished spans wait in a bounded queue
//! (`OTEL_BSP_MAX_QUEUE_SIZE`) for the SDK's batch thread; when it is full a span is dropped
//! and counted (`trace_spans_total{result="dropped"}`), and an export that fails or times out
//! (`OTEL_EXPORTER_OTLP_TIMEOUT`) costs only its batch. Shutdown flushes what is queued,
//! within [`FLUSH_WITHIN`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    KeyValue, Value,
    propagation::TextMapPropagator as _,
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    propagation::TraceContextPropagator,
    trace::{
        BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, SpanData, SpanExporter,
        SpanProcessor,
    },
};
use tracing::{Metadata, subscriber::Interest};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    Layer, Registry,
    filter::{DynFilterFn, LevelFilter},
    layer::Context,
};

/// The trace settings, read by `config.rs` (`OTEL_*`, `TRACE_USER_ID`).
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// Where spans go; `None`: tracing off.
    pub export: Option<OtlpExport>,
    /// `TRACE_USER_ID` (default false): the user's id as `enduser.id` on spans that know it.
    pub user_id: bool,
}

/// An OTLP destination. `Debug` shows the endpoint's origin only: a collector URL may carry a
/// key in its path or query (headers, which usually do, are never read here).
#[derive(Clone)]
pub struct OtlpExport {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: url::Url,
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL` (default
    /// `http/protobuf`).
    pub protocol: OtlpProtocol,
    /// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds,
    /// default 10000): one export's deadline.
    pub timeout: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (default 2048): finished spans waiting for export; more are
    /// dropped and counted.
    pub max_queue: usize,
}

impl std::fmt::Debug for OtlpExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExport")
            .field("endpoint", &self.endpoint.origin().ascii_serialization())
            .field("protocol", &self.protocol)
            .field("timeout", &self.timeout)
            .field("max_queue", &self.max_queue)
            .finish()
    }
}

/// The OTLP transport (`OTEL_EXPORTER_OTLP_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf` (the specification's default).
    HttpProtobuf,
    /// `http/json`.
    HttpJson,
    /// `grpc`.
    Grpc,
}

/// The target of spans only traces see, made inside a request or another exported span: the
/// password hash's two.
pub const SPANS: &str = "auth_service::spans";

/// The target of spans only traces see that begin a trace of their own: the outbox sends.
pub const ROOT_SPANS: &str = "auth_service::spans::root";

/// The target of the request spans of probes and scrapes: logged as every request span is,
/// never exported (a trace per probe every few seconds says nothing).
pub const PROBES: &str = "auth_service::http::probes";

/// Where the store's spans live (a span per method, `#[tracing::instrument]`): exported inside
/// a trace only, never logged.
const STORE: &str = "auth_service::store::";

/// How long shutdown waits for the last spans to reach the collector.
pub const FLUSH_WITHIN: Duration = Duration::from_secs(5);

/// The attributes that leave the process: the semantic conventions' names for what a span
/// says about the request, the database call or the send, and nothing that names a person.
const EXPORTED: &[&str] = &[
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "request_id",
    "db.system",
    "db.operation.name",
    "mail.template",
    "webhook.type",
];

/// Whether the log layer formats a span or event: the spans that exist for traces only (the
/// hash, the store, the sends) never reach the logs, whatever the level.
pub fn logged(meta: &Metadata<'_>) -> bool {
    !(meta.is_span() && is_trace_only(meta.target()))
}

fn is_trace_only(target: &str) -> bool {
    target.starts_with(SPANS) || target.starts_with(STORE)
}

/// Whether the trace layer sees a span: the request's server span when it begins a trace
/// (not the INFO twin an error on the verify hot path is logged in, nor a probe's or a
/// scrape's), the outbox sends, and any other span of the service only inside one of those.
/// Events stay in the logs.
fn exported(meta: &Metadata<'_>, cx: &Context<'_, Registry>) -> bool {
    if meta.target() == ROOT_SPANS {
        return true;
    }
    let inside = cx.lookup_current().is_some();
    if meta.name() == "request" {
        !inside
    } else {
        inside
    }
}

/// The part of [`exported`] a callsite decides once: the service's spans but probes' and
/// scrapes', never an event or another crate's span.
fn may_export(meta: &'static Metadata<'static>) -> Interest {
    let target = meta.target();
    if meta.is_span() && target.starts_with("auth_service") && target != PROBES {
        Interest::sometimes()
    } else {
        Interest::never()
    }
}

/// The OpenTelemetry pipeline, kept to flush it at shutdown.
pub struct Traces {
    provider: SdkTracerProvider,
}

/// The layer [`Traces::start`] makes, for the subscriber.
pub type TraceLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Why traces cannot start (the exporter refused its configuration).
#[derive(Debug, thiserror::Error)]
#[error("cannot export traces: {0}")]
pub struct TraceError(String);

impl Traces {
    /// The pipeline and its layer when `config` exports traces; `None` when it does not.
    /// Call inside the Tokio runtime: exports run on it.
    ///
    /// # Errors
    /// When the exporter refuses its configuration (a malformed `OTEL_EXPORTER_OTLP_HEADERS`,
    /// an unknown compression).
    pub fn start(config: &TraceConfig) -> Result<Option<(Self, TraceLayer)>, TraceError> {
        let Some(export) = &config.export else {
            return Ok(None);
        };
        let in_flight = Arc::new(AtomicUsize::new(0));
        let exporter = Bridge {
            inner: Arc::new(exporter(export)?),
            runtime: tokio::runtime::Handle::try_current()
                .map_err(|err| TraceError(err.to_string()))?,
            in_flight: Arc::clone(&in_flight),
        };
        let batches = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(export.max_queue)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Redact {
                inner: batches,
                in_flight,
                max_queue: export.max_queue,
                user_id: config.user_id,
            })
            .with_resource(resource())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("auth-service"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_filter(
                DynFilterFn::new(exported)
                    .with_callsite_filter(may_export)
                    .with_max_level_hint(LevelFilter::DEBUG),
            );
        Ok(Some((Self { provider }, Box::new(layer))))
    }

    /// Exports what is queued, within [`FLUSH_WITHIN`], and stops the pipeline: the last step
    /// of a graceful shutdown.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_WITHIN)).await;
        match flushed {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "the last spans were not exported"),
            Err(err) => tracing::warn!(error = %err, "the last spans were not exported"),
        }
    }
}

/// The OTLP exporter `export` describes. The endpoint, headers and compression are read by
/// the crate from the standard variables; the HTTP transports send through
/// [`crate::outbound::https_connector`], gRPC through tonic with the same TLS provider.
fn exporter(export: &OtlpExport) -> Result<opentelemetry_otlp::SpanExporter, TraceError> {
    let built = match export.protocol {
        OtlpProtocol::Grpc => {
            let builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(export.timeout);
            if export.endpoint.scheme() == "https" {
                builder
                    .with_tls_config(
                        opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                            .with_webpki_roots(),
                    )
                    .build()
            } else {
                builder.build()
            }
        }
        OtlpProtocol::HttpProtobuf | OtlpProtocol::HttpJson => {
            let connector =
                crate::outbound::https_connector().map_err(|err| TraceError(err.to_string()))?;
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(if export.protocol == OtlpProtocol::HttpJson {
                    opentelemetry_otlp::Protocol::HttpJson
                } else {
                    opentelemetry_otlp::Protocol::HttpBinary
                })
                .with_timeout(export.timeout)
                .with_http_client(opentelemetry_http::hyper::HyperClient::new(
                    connector,
                    export.timeout,
                    None,
                ))
                .build()
        }
    };
    built.map_err(|err| TraceError(err.to_string()))
}

/// `service.name` `auth-service` unless `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES`
/// names it, `service.version`, the SDK's own attributes, and `OTEL_RESOURCE_ATTRIBUTES`.
fn resource() -> Resource {
    let builder = Resource::builder_empty()
        .with_service_name("auth-service")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_detectors(&[
            Box::new(opentelemetry_sdk::resource::TelemetryResourceDetector),
            Box::new(opentelemetry_sdk::resource::EnvResourceDetector::new()),
        ]);
    match std::env::var("OTEL_SERVICE_NAME") {
        Ok(name) if !name.trim().is_empty() => builder.with_service_name(name.trim().to_owned()),
        _ => builder,
    }
    .build()
}

/// Makes `span` (a request's, just made, of a process whose traces are on) a child of the
/// caller's span when the request carries a W3C `traceparent` (its `tracestate` kept), names
/// and kinds it as the semantic conventions' server span, and records its trace id for the
/// logs. Nothing for a span that is not exported.
pub fn continue_trace(
    span: &tracing::Span,
    headers: &axum::http::HeaderMap,
    method: &'static str,
    route: &str,
) {
    if span.is_disabled() {
        return;
    }
    let parent =
        TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    if span.set_parent(parent).is_err() {
        return;
    }
    span.record("otel.kind", "server");
    span.record("otel.name", format!("{method} {route}"));
    // Starts the span: its trace id is known from here on.
    let cx = span.context();
    let context = cx.span().span_context().clone();
    if context.is_valid() {
        span.record("trace_id", tracing::field::display(context.trace_id()));
    }
}

/// The span processor: keeps only [`EXPORTED`] attributes (and `enduser.id` when configured),
/// then hands the span to the batch processor unless [`Redact::max_queue`] spans already
/// wait, in which case it is dropped and counted.
#[derive(Debug)]
struct Redact {
    inner: BatchSpanProcessor,
    /// Spans handed over and not yet exported (queued, or in the batch being sent): never
    /// more than the batch processor's queue holds, so it never drops one uncounted.
    in_flight: Arc<AtomicUsize>,
    max_queue: usize,
    user_id: bool,
}

impl SpanProcessor for Redact {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, mut span: SpanData) {
        redact(&mut span, self.user_id);
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max_queue {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!("trace_spans_total", "result" => "dropped").increment(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Keeps the [`EXPORTED`] attributes of `span` (`user.id` as `enduser.id` when `user_id`),
/// names a database call's operation after its span, and drops its events.
fn redact(span: &mut SpanData, user_id: bool) {
    let mut operation = false;
    span.attributes.retain_mut(|attribute| {
        let key = attribute.key.as_str();
        if key == "user.id" && user_id {
            *attribute = KeyValue::new("enduser.id", attribute.value.clone());
            return true;
        }
        operation |= key == "db.system";
        EXPORTED.contains(&key)
    });
    if operation {
        span.attributes.push(KeyValue::new(
            "db.operation.name",
            Value::from(span.name.clone()),
        ));
    }
    span.events = opentelemetry_sdk::trace::SpanEvents::default();
}

/// The OTLP exporter run on the service's Tokio runtime (the batch processor's thread has
/// none), counting what it exports and what fails.
#[derive(Debug)]
struct Bridge {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: tokio::runtime::Handle,
    in_flight: Arc<AtomicUsize>,
}

/// Gives back a batch's places in [`Redact::in_flight`] however its export ends (the batch
/// processor may give up waiting and drop it).
struct Sent {
    count: usize,
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Sent {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(self.count, Ordering::AcqRel);
    }
}

impl SpanExporter for Bridge {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let sent = Sent {
            count: batch.len(),
            in_flight: Arc::clone(&self.in_flight),
        };
        let inner = Arc::clone(&self.inner);
        let task = self.runtime.spawn(async move { inner.export(batch).await });
        async move {
            let result = task
                .await
                .unwrap_or_else(|err| Err(OTelSdkError::InternalFailure(err.to_string())));
            let outcome = if result.is_ok() { "exported" } else { "failed" };
            metrics::counter!("trace_spans_total", "result" => outcome)
                .increment(u64::try_from(sent.count).unwrap_or(u64::MAX));
            drop(sent);
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}
