//! An OpenTelemetry collector on a port of its own, as the shop runs one: it accepts OTLP trace
//! exports over HTTP (protobuf or JSON, `POST /v1/traces`, gzipped or not) or gRPC, decodes them with the
//! protocol's own types (`opentelemetry-proto`), and keeps every span with its resource.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    trace::v1::{span::SpanKind, status::StatusCode as SpanStatus},
};
use prost::Message as _;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::helpers::poll_until;

/// One span as the collector received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Hex, 32 digits.
    pub trace_id: String,
    /// Hex, 16 digits.
    pub span_id: String,
    /// Hex, empty for a root.
    pub parent_span_id: String,
    /// The W3C `tracestate` the span carries.
    pub trace_state: String,
    pub name: String,
    pub kind: SpanKind,
    /// Every attribute, its value as text.
    pub attributes: BTreeMap<String, String>,
    /// Whether its status is an error.
    pub error: bool,
    /// The resource's attributes (`service.name`, ...).
    pub resource: BTreeMap<String, String>,
}

impl Received {
    /// The attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One export request as it arrived.
#[derive(Debug, Clone)]
pub struct Export {
    /// `content-type` (`application/grpc` for gRPC).
    pub content_type: String,
    /// Every header, lower-case names.
    pub headers: BTreeMap<String, String>,
}

#[derive(Default)]
struct Inner {
    spans: Vec<Received>,
    exports: Vec<Export>,
}

/// A running collector.
pub struct Collector {
    /// Where to point `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
}

impl Collector {
    /// A collector speaking OTLP over HTTP (protobuf and JSON).
    pub async fn http() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(http_export))
            .with_state(Arc::clone(&inner));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            endpoint,
            inner,
            task,
        }
    }

    /// A collector speaking OTLP over gRPC (HTTP/2 without TLS).
    pub async fn grpc() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner::default()));
        let service = TraceServiceServer::new(Grpc(Arc::clone(&inner)))
            .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(
                        hyper_util::rt::TokioIo::new(stream),
                        hyper_util::service::TowerToHyperService::new(service),
                    )
                    .await;
                });
            }
        });
        Self {
            endpoint,
            inner,
            task,
        }
    }

    /// Every span so far.
    pub fn spans(&self) -> Vec<Received> {
        self.inner.lock().unwrap().spans.clone()
    }

    /// Every export request so far.
    pub fn exports(&self) -> Vec<Export> {
        self.inner.lock().unwrap().exports.clone()
    }

    /// The spans once `done` holds for them, within `within`.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        poll_until(what, within, || {
            let spans = self.spans();
            let ok = done(&spans);
            async move { ok }
        })
        .await;
        self.spans()
    }

    /// The spans of the trace `trace_id` once it has spans named `names`, within `within`.
    pub async fn trace(&self, trace_id: &str, names: &[&str], within: Duration) -> Vec<Received> {
        let has_all = |spans: &[Received]| {
            names.iter().all(|name| {
                spans
                    .iter()
                    .any(|s| s.trace_id == trace_id && s.name == *name)
            })
        };
        let what = format!("trace {trace_id} with {names:?}");
        self.wait_until(&what, within, has_all)
            .await
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn http_export(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let gzipped = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let body = if gzipped {
        let mut plain = Vec::new();
        if std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&body[..]), &mut plain)
            .is_err()
        {
            return (StatusCode::BAD_REQUEST, Vec::new()).into_response();
        }
        Bytes::from(plain)
    } else {
        body
    };
    let request = if content_type.starts_with("application/json") {
        serde_json::from_slice::<ExportTraceServiceRequest>(&body).ok()
    } else {
        ExportTraceServiceRequest::decode(body).ok()
    };
    let Some(request) = request else {
        return (StatusCode::BAD_REQUEST, Vec::new()).into_response();
    };
    keep(&inner, &content_type, &headers, request);
    if content_type.starts_with("application/json") {
        ([(header::CONTENT_TYPE, "application/json")], "{}").into_response()
    } else {
        (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            ExportTraceServiceResponse::default().encode_to_vec(),
        )
            .into_response()
    }
}

struct Grpc(Arc<Mutex<Inner>>);

#[async_trait::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        keep(&self.0, "application/grpc", &headers, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn keep(
    inner: &Mutex<Inner>,
    content_type: &str,
    headers: &HeaderMap,
    request: ExportTraceServiceRequest,
) {
    let mut inner = inner.lock().unwrap();
    inner.exports.push(Export {
        content_type: content_type.to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    for resource_spans in request.resource_spans {
        let resource = attributes(
            &resource_spans
                .resource
                .map(|r| r.attributes)
                .unwrap_or_default(),
        );
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                inner.spans.push(Received {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    trace_state: span.trace_state.clone(),
                    kind: SpanKind::try_from(span.kind).unwrap_or(SpanKind::Unspecified),
                    attributes: attributes(&span.attributes),
                    error: span
                        .status
                        .is_some_and(|s| s.code == SpanStatus::Error as i32),
                    name: span.name,
                    resource: resource.clone(),
                });
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
