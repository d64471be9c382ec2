//! A webhook receiver on a port of its own, as another service of the shop runs one: it
//! verifies every delivery with the `standardwebhooks` crate (the signature under each secret
//! it knows, and the timestamp within the specification's five minutes), records it, and
//! answers as the test scripted (200 unless told otherwise).

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::Value;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::helpers::poll_until;

/// A new `whsec_` secret of 32 random bytes.
pub fn new_secret() -> String {
    format!("whsec_{}", STANDARD.encode(rand::random::<[u8; 32]>()))
}

/// How the receiver answers one delivery.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status at once.
    Status(u16),
    /// Nothing for a minute (the service gives up after 10 s).
    Hang,
    /// This status after a while.
    Slow(u16, Duration),
    /// A 307 to this URL.
    Redirect(String),
}

/// One delivery as it arrived.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-signature`, split at its spaces.
    pub signatures: Vec<String>,
    /// The body, parsed.
    pub body: Value,
    /// Whether `standardwebhooks::Webhook::verify` accepted it, per secret the receiver knows.
    pub verified: Vec<bool>,
    /// `content-type`.
    pub content_type: String,
    /// What the receiver answered.
    pub reply: Reply,
}

impl Delivery {
    /// The body's `type`.
    pub fn event(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }
}

struct Inner {
    secrets: Vec<standardwebhooks::Webhook>,
    replies: VecDeque<Reply>,
    /// The answer once the script is used up.
    otherwise: Reply,
    deliveries: Vec<Delivery>,
}

/// A running receiver.
pub struct Receiver {
    /// Where to point `WEBHOOK_URLS`.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// A receiver on a free port that knows `secrets`.
    pub async fn start(secrets: &[&str]) -> Self {
        Self::listen(TcpListener::bind("127.0.0.1:0").await.unwrap(), secrets)
    }

    /// A receiver on `port` (one the service was pointed at while nothing listened there).
    pub async fn start_on(port: u16, secrets: &[&str]) -> Self {
        Self::listen(
            TcpListener::bind(("127.0.0.1", port)).await.unwrap(),
            secrets,
        )
    }

    fn listen(listener: TcpListener, secrets: &[&str]) -> Self {
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let inner = Arc::new(Mutex::new(Inner {
            secrets: secrets
                .iter()
                .map(|s| standardwebhooks::Webhook::new(s).unwrap())
                .collect(),
            replies: VecDeque::new(),
            otherwise: Reply::Status(200),
            deliveries: Vec::new(),
        }));
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&inner));
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, inner, task }
    }

    /// Answers the next deliveries with `replies`, in turn, then as before.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.lock().unwrap().replies.extend(replies);
    }

    /// Answers every delivery past the script with `reply`.
    pub fn otherwise(&self, reply: Reply) {
        self.inner.lock().unwrap().otherwise = reply;
    }

    /// Every delivery so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.inner.lock().unwrap().deliveries.clone()
    }

    /// Waits (at most `within`) for `count` deliveries and returns them all.
    pub async fn wait_for(&self, count: usize, within: Duration) -> Vec<Delivery> {
        poll_until(&format!("{count} webhook deliveries"), within, || async {
            self.inner.lock().unwrap().deliveries.len() >= count
        })
        .await;
        self.deliveries()
    }
}

impl Drop for Receiver {
    /// Stops listening.
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let reply = {
        let mut inner = inner.lock().unwrap();
        let reply = inner
            .replies
            .pop_front()
            .unwrap_or_else(|| inner.otherwise.clone());
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        let delivery = Delivery {
            id: text("webhook-id"),
            signatures: text("webhook-signature")
                .split(' ')
                .map(str::to_owned)
                .collect(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            verified: inner
                .secrets
                .iter()
                .map(|secret| secret.verify(&body, &headers).is_ok())
                .collect(),
            content_type: text("content-type"),
            reply: reply.clone(),
        };
        inner.deliveries.push(delivery);
        reply
    };
    match reply {
        Reply::Status(status) => axum::http::StatusCode::from_u16(status)
            .unwrap()
            .into_response(),
        Reply::Slow(status, after) => {
            tokio::time::sleep(after).await;
            axum::http::StatusCode::from_u16(status)
                .unwrap()
                .into_response()
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            axum::http::StatusCode::OK.into_response()
        }
        Reply::Redirect(to) => axum::response::Redirect::temporary(&to).into_response(),
    }
}
