//! Webhook delivery (API.md, "Webhooks (Standard Webhooks)"): the outbox worker's second kind
//! of message. The store writes an event's rows in the transaction of the change; here each
//! claimed row is signed with the `standardwebhooks` crate (one `v1` signature per configured
//! secret, so a rotation signs with both) and posted to its endpoint within [`DELIVER_WITHIN`],
//! redirects not followed. A 2xx delivers; a 410 stops the endpoint in this process until it
//! restarts; anything else is retried on the specification's schedule with jitter until
//! `WEBHOOK_MAX_RETRY_HOURS`, then fails with an ERROR line naming the event's type and id only.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration as StdDuration,
};

use axum::body::Bytes;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use http_body_util::Full;
use hyper::{StatusCode, http};
use secrecy::ExposeSecret as _;

use super::Inner;
use crate::{
    config::WebhookConfig,
    store::{DeliveryOutcome, OutboxWebhook},
};

/// The longest one delivery may take (connection, request, the answer's status): the
/// contract's 10 s.
pub(super) const DELIVER_WITHIN: StdDuration = StdDuration::from_secs(10);

/// The delays after the first, second, ... failed attempt (the Standard Webhooks schedule); the
/// last repeats.
const SCHEDULE: [i64; 7] = [5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 10 * 3600];

/// The endpoints, how to sign for them and the client that posts.
pub struct Webhooks {
    client: Client,
    /// The current secret first, then the previous one during a rotation.
    signers: Vec<standardwebhooks::Webhook>,
    endpoints: Vec<Endpoint>,
    max_retry: Duration,
}

/// One configured endpoint.
pub(super) struct Endpoint {
    /// The URL, as the outbox rows name it.
    pub(super) url: String,
    /// Scheme, host and port only: what a log line may say about it (a path or query may hold
    /// a credential).
    origin: String,
    /// Set by a 410: no more deliveries here until the process restarts.
    stopped: AtomicBool,
}

impl Endpoint {
    /// Whether a 410 stopped it.
    pub(super) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

impl Webhooks {
    /// The deliverer for `config`, or `None` when no endpoint is configured.
    ///
    /// # Errors
    /// When a secret cannot be read (config validation already checked it) or the HTTP client
    /// cannot be built.
    pub fn new(config: &WebhookConfig) -> anyhow::Result<Option<Self>> {
        let Some(secret) = &config.secret else {
            return Ok(None);
        };
        if config.endpoints.is_empty() {
            return Ok(None);
        }
        let signers = std::iter::once(secret)
            .chain(&config.previous_secret)
            .map(|secret| standardwebhooks::Webhook::new(secret.expose_secret()))
            .collect::<Result<Vec<_>, _>>()?;
        let endpoints = config
            .endpoints
            .iter()
            .map(|url| Endpoint {
                url: url.to_string(),
                origin: url.origin().ascii_serialization(),
                stopped: AtomicBool::new(false),
            })
            .collect();
        Ok(Some(Self {
            client: client()?,
            signers,
            endpoints,
            max_retry: Duration::hours(config.max_retry_hours.into()),
        }))
    }

    /// The endpoints, in configuration order.
    pub(super) fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// One attempt at one claimed row, and its outcome recorded.
    pub(super) async fn attempt(&self, inner: &Inner, endpoint: &Endpoint, row: OutboxWebhook) {
        let now = inner.clock.now();
        let answered = self.post(&row, now).await;
        let (outcome, result) = match answered {
            Ok(status) if status.is_success() => (DeliveryOutcome::Delivered, "delivered"),
            Ok(StatusCode::GONE) => {
                endpoint.stopped.store(true, Ordering::Relaxed);
                tracing::error!(
                    webhook.endpoint = %endpoint.origin,
                    webhook.id = %row.message_id,
                    webhook.r#type = %row.event_type,
                    "a webhook endpoint answered 410 Gone: no more deliveries to it until restart"
                );
                // The event stays queued: it goes once the endpoint is back after a restart,
                // or fails when its time is up.
                (DeliveryOutcome::RetryAt(now), "gone")
            }
            failed => {
                let cause = match failed {
                    Ok(status) => format!("HTTP {}", status.as_u16()),
                    Err(PostError::TimedOut) => "no answer within 10 s".to_owned(),
                    Err(PostError::Connect) => "connection failed".to_owned(),
                    Err(PostError::Request) => "request failed".to_owned(),
                };
                let next = now + backoff(row.attempts);
                if next > row.created_at + self.max_retry {
                    tracing::error!(
                        webhook.id = %row.message_id,
                        webhook.r#type = %row.event_type,
                        attempts = row.attempts,
                        cause,
                        "a webhook could not be delivered; giving up"
                    );
                    (DeliveryOutcome::Failed, "failed")
                } else {
                    tracing::warn!(
                        webhook.id = %row.message_id,
                        webhook.r#type = %row.event_type,
                        attempts = row.attempts,
                        cause,
                        retry_at = %next,
                        "a webhook was not delivered; retrying"
                    );
                    (DeliveryOutcome::RetryAt(next), "retry")
                }
            }
        };
        // The send's span (traces only): the answer, and whether it failed.
        let span = tracing::Span::current();
        if let Ok(status) = answered {
            span.record("http.response.status_code", status.as_u16());
        }
        if result != "delivered" {
            span.record("otel.status_code", "ERROR");
        }
        metrics::counter!("webhook_deliveries_total", "result" => result).increment(1);
        if let Err(err) = inner
            .store
            .finish_webhook(row.id, outcome, inner.clock.now())
            .await
        {
            // The lease runs out and the event is tried again (a delivered one may then go
            // twice: receivers deduplicate on `webhook-id`).
            tracing::warn!(
                webhook.id = %row.message_id,
                error = %crate::error_chain::error_chain(&err),
                "a webhook's outcome could not be recorded"
            );
        }
        // The user's next event may have waited for this first attempt to end: look again
        // now rather than after the queue's nap.
        inner.webhook_wakeup.send_replace(());
    }

    /// Signs and posts `row`'s event; the answer's status.
    async fn post(&self, row: &OutboxWebhook, now: DateTime<Utc>) -> Result<StatusCode, PostError> {
        let body = body(row);
        let timestamp = now.timestamp();
        // `sign` fails only for a body that is not UTF-8, which JSON text never is.
        let signature = self
            .signers
            .iter()
            .filter_map(|signer| {
                signer
                    .sign(&row.message_id, timestamp, body.as_bytes())
                    .ok()
            })
            .collect::<Vec<_>>()
            .join(" ");
        let request = http::Request::post(row.endpoint.as_str())
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &row.message_id)
            .header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP, timestamp)
            .header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| PostError::Request)?;
        let response = tokio::time::timeout(DELIVER_WITHIN, self.client.request(request))
            .await
            .map_err(|_| PostError::TimedOut)?
            .map_err(|err| {
                if err.is_connect() {
                    PostError::Connect
                } else {
                    PostError::Request
                }
            })?;
        // The answer's body is not read: the connection is dropped with it.
        Ok(response.status())
    }
}

/// Why a delivery got no status.
#[derive(Debug, Clone, Copy)]
enum PostError {
    /// No connection (refused, unreachable, TLS).
    Connect,
    /// No answer within [`DELIVER_WITHIN`].
    TimedOut,
    /// The exchange broke off (or the request could not be built).
    Request,
}

/// The HTTP client ([`crate::outbound::https_connector`]); it follows no redirect (hyper never
/// does).
type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// `User-Agent` of every delivery.
const USER_AGENT: &str = concat!("auth-service/", env!("CARGO_PKG_VERSION"));

/// The body: `{"type", "timestamp", "data": {"user_id", "email"}}`, the same text on every
/// attempt.
fn body(row: &OutboxWebhook) -> String {
    serde_json::json!({
        "type": row.event_type,
        "timestamp": row.created_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": {"user_id": row.user_id, "email": row.email},
    })
    .to_string()
}

/// The [`Client`].
fn client() -> anyhow::Result<Client> {
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(crate::outbound::https_connector()?),
    )
}

/// The delay after `attempts` failed attempts: the schedule's entry with ±20% jitter (so
/// replicas that failed together do not retry together).
fn backoff(attempts: i32) -> Duration {
    let index = usize::try_from(attempts.saturating_sub(1)).unwrap_or(0);
    let base = SCHEDULE[index.min(SCHEDULE.len() - 1)];
    let jitter = 0.8 + 0.4 * rand::random::<f64>();
    #[expect(clippy::cast_possible_truncation, reason = "at most 43,200 seconds")]
    Duration::milliseconds((base as f64 * 1000.0 * jitter) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_follows_the_schedule_with_jitter() {
        for (attempts, base) in [
            (1, 5),
            (2, 300),
            (3, 1800),
            (4, 7200),
            (5, 18_000),
            (6, 36_000),
            (7, 36_000),
            (30, 36_000),
        ] {
            let delay = backoff(attempts).num_milliseconds();
            assert!(
                (base * 800..=base * 1200).contains(&delay),
                "{attempts}: {delay}"
            );
        }
    }
}
