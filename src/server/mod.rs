//! The accept loop: hyper-util's HTTP/1 + HTTP/2 server with the protections `axum::serve`
//! does not offer, so neither slow nor silent clients can hold the service hostage.
//!
//! - **Request heads on time** (`HEADER_READ_TIMEOUT_SECONDS`): a connection must deliver a
//!   complete request head within this of being accepted, and every later head within this of
//!   its first byte, in HTTP/1 and HTTP/2 alike, the protocol sniffing included (a socket that
//!   sends nothing, part of the HTTP/2 preface, or the preface and a SETTINGS frame and then
//!   nothing, is closed). The whole-request `REQUEST_TIMEOUT_SECONDS` covers slow bodies.
//! - **Idle connections close** (`IDLE_TIMEOUT_SECONDS`): a keep-alive connection, HTTP/1 or
//!   HTTP/2, with no request in flight for this long is closed.
//! - **A cap on open connections** (`MAX_CONNECTIONS`), **per peer**
//!   (`MAX_CONNECTIONS_PER_IP`) and **overload shedding** above 75% of it: see
//!   [`connections`]. The accept loop never waits: past `MAX_CONNECTIONS` a new connection
//!   takes the slot of a sheddable one (silent or idle, from the peer holding the most) or is
//!   closed at once, so a full server keeps answering new clients, `/health/live` and
//!   `/metrics` included.
//! - **Graceful shutdown**: readiness turns 503 first, the listener closes, in-flight requests
//!   finish.
//!
//! One watchdog per connection enforces the first two. It sees the connection through a
//! [`Watched`] socket (which notes when bytes arrive) and through the service (which notes when
//! a request head was parsed and when its response left), and sleeps until the next deadline,
//! or until the registry tells it to close the connection gracefully.

mod connections;

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{body::Body, extract::ConnectInfo};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Notify,
    time::Instant,
};
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use self::connections::{ConnectionLimits, Connections};
use crate::state::AppState;

/// Serves `app` on `listener` until `shutdown` (readiness-draining included) resolves, then
/// waits for open connections to finish their requests.
///
/// # Errors
/// Never for now; the signature leaves room for listener failures that should stop the process.
pub async fn serve(
    state: AppState,
    app: crate::http::hot_path::App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let settings = state.server();
    let limits = Limits {
        header_read: settings.header_read_timeout,
        idle: settings.idle_timeout,
    };
    let connections = Connections::new(ConnectionLimits {
        max: settings.max_connections,
        per_peer: settings.max_connections_per_ip,
        clients: settings.clients.clone(),
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    // Every connection's task, so shutdown can wait for each to finish its request.
    let tasks = TaskTracker::new();
    let mut shutdown = std::pin::pin!(state.clone().drain_on(shutdown));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let activity = Arc::new(Activity::new());
        let Some(registered) = connections.admit(peer.ip(), &activity) else {
            // Over its peer's cap with none of that peer's connections idle, or a full server
            // with every connection busy: closed at once, and the loop goes on accepting.
            drop(stream);
            continue;
        };
        let watched = Arc::clone(&activity);
        let service = app
            .clone()
            .map_request(move |req: hyper::Request<Incoming>| {
                let mut req = req.map(Body::new);
                req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                req
            });
        let service = tower::service_fn(move |req: hyper::Request<Incoming>| {
            let request = watched.request_started();
            let response = service.clone().oneshot(req);
            async move {
                let response = response.await;
                drop(request);
                response
            }
        });
        let io = TokioIo::new(Watched {
            stream,
            activity: Arc::clone(&activity),
            replacing: None,
        });
        let conn = builder
            .serve_connection_with_upgrades(io, TowerToHyperService::new(service))
            .into_owned();
        tasks.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let mut closing = false;
            loop {
                let deadline = match activity.verdict(limits) {
                    Verdict::Close(why) => {
                        tracing::debug!(reason = why, "closing a connection");
                        break;
                    }
                    Verdict::CheckAt(deadline) => deadline,
                };
                tokio::select! {
                    ended = conn.as_mut() => {
                        if let Err(err) = ended {
                            tracing::debug!(error = %err, "connection ended with an error");
                        }
                        break;
                    }
                    () = tokio::time::sleep_until(deadline) => {}
                    () = activity.close.notified(), if !closing => {
                        if activity.aborted.load(Ordering::Relaxed) {
                            // Shed before its first request head: nothing to finish.
                            break;
                        }
                        // Finishes a request in flight, then closes (HTTP/2: GOAWAY).
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
            drop(registered);
        });
    }
    drop(listener);
    connections.close_all();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// The two deadlines of a connection.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read: Duration,
    idle: Duration,
}

/// What the watchdog knows of one connection; times are milliseconds since `opened`.
struct Activity {
    opened: Instant,
    /// Requests whose head was parsed and whose response has not left yet.
    in_flight: AtomicUsize,
    /// Requests served so far (0: the first head is still awaited).
    served: AtomicU64,
    /// When the connection last became idle (accepted, or a response left).
    idle_since: AtomicU64,
    /// When the first byte arrived while idle (a head in progress), plus one; 0 when none.
    head_started: AtomicU64,
    /// Set by the registry to close the connection gracefully (shed, or shutdown).
    close: Notify,
    /// Set with `close` when the connection is to go at once (shed before its first request).
    aborted: AtomicBool,
    /// Final (non-1xx) HTTP/1 response heads seen leaving; fewer than `served` while one of
    /// ours is on its way, so a head beyond them is hyper's own (see [`Watched`]).
    heads_written: AtomicU64,
}

/// The watchdog's decision.
enum Verdict {
    /// Close now, for this reason.
    Close(&'static str),
    /// Look again at this time (or when the connection ends).
    CheckAt(Instant),
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            close: Notify::new(),
            aborted: AtomicBool::new(false),
            heads_written: AtomicU64::new(0),
        }
    }

    /// Looks at bytes about to be written: when they start an HTTP/1 error response that no
    /// request of ours produced (hyper's own answer to a head it refused, 431 or 400, bare),
    /// the contract's JSON response to send instead.
    fn replacement_for(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let status = bytes
            .strip_prefix(b"HTTP/1.1 ")
            .or_else(|| bytes.strip_prefix(b"HTTP/1.0 "))?
            .get(..3)?;
        let status: u16 = std::str::from_utf8(status).ok()?.parse().ok()?;
        if status < 200 {
            return None;
        }
        let written = self.heads_written.fetch_add(1, Ordering::Relaxed);
        if written < self.served.load(Ordering::Relaxed) {
            return None;
        }
        crate::http::errors::parser_error_response(status)
    }

    /// Since when this connection waits for its first request head (accepted, nothing served,
    /// nothing in flight); `None` once a request arrived.
    fn silent_since(&self) -> Option<Instant> {
        let silent =
            self.served.load(Ordering::Relaxed) == 0 && self.in_flight.load(Ordering::Relaxed) == 0;
        silent.then_some(self.opened)
    }

    /// Asks the watchdog to drop the connection at once.
    fn abort(&self) {
        self.aborted.store(true, Ordering::Relaxed);
        self.close.notify_one();
    }

    /// Since when this is an idle keep-alive connection: it has served a request and has none
    /// in flight or arriving. `None` when it is not.
    fn idle_since(&self) -> Option<Instant> {
        let idle = self.served.load(Ordering::Relaxed) > 0
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0;
        idle.then(|| self.opened + Duration::from_millis(self.idle_since.load(Ordering::Relaxed)))
    }

    /// Asks the watchdog to close the connection gracefully.
    fn close(&self) {
        self.close.notify_one();
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived: while idle, the first of them starts the head's clock.
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_started.load(Ordering::Relaxed) == 0
        {
            self.head_started
                .store(self.now_ms().saturating_add(1), Ordering::Relaxed);
        }
    }

    /// A request head was parsed; the guard marks its response leaving.
    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.served.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Close now, or when to look again. A head that starts while the watchdog sleeps is not
    /// announced (that would wake it on every request), so it looks at least four times per
    /// `HEADER_READ_TIMEOUT_SECONDS`: a later head gets at most a quarter more than its due.
    fn verdict(&self, limits: Limits) -> Verdict {
        let now = self.now_ms();
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let cadence = (millis(limits.header_read) / 4).max(1);
        let at = |ms: u64| {
            let ms = ms.min(now.saturating_add(cadence));
            Verdict::CheckAt(self.opened + Duration::from_millis(ms))
        };
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // Busy: the request timeout governs the request itself.
            return at(u64::MAX);
        }
        let head_started = self.head_started.load(Ordering::Relaxed);
        let (due, reason) = if self.served.load(Ordering::Relaxed) == 0 {
            // The first head: due from the accept, exactly (no sleeping past it).
            (
                millis(limits.header_read),
                "no complete request head in time",
            )
        } else if head_started > 0 {
            (
                (head_started - 1).saturating_add(millis(limits.header_read)),
                "request head not completed in time",
            )
        } else {
            (
                self.idle_since
                    .load(Ordering::Relaxed)
                    .saturating_add(millis(limits.idle)),
                "idle",
            )
        };
        if now >= due {
            Verdict::Close(reason)
        } else {
            at(due)
        }
    }
}

/// Marks a request's response leaving when dropped (answered, or the request was cancelled).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        activity
            .idle_since
            .store(activity.now_ms(), Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that tells the watchdog when bytes arrive, and gives hyper's own bare error
/// responses (431 for a head over its limits, 400 for one it cannot parse) the contract's JSON
/// body: when such a response starts leaving, the JSON one is written in its place and
/// hyper's bytes are taken as written.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// The JSON response being written instead of hyper's, and how much of it has left.
    replacing: Option<(Vec<u8>, usize)>,
}

impl Watched {
    /// Writes what is left of the replacement; `Ready(Ok)` once all of it has left.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while let Some((bytes, sent)) = &mut self.replacing {
            if *sent == bytes.len() {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.stream).poll_write(cx, &bytes[*sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *sent += n,
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.bytes_arrived();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none()
            && let Some(json) = this.activity.replacement_for(buf)
        {
            this.replacing = Some((json, 0));
        }
        if this.replacing.is_some() {
            // hyper's bytes are dropped: the JSON response goes instead.
            return this.poll_replacement(cx).map_ok(|()| buf.len());
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_none()
            && let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(json) = this.activity.replacement_for(first)
        {
            this.replacing = Some((json, 0));
        }
        if this.replacing.is_some() {
            let total = bufs.iter().map(|b| b.len()).sum();
            return this.poll_replacement(cx).map_ok(|()| total);
        }
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::task::ready!(self.poll_replacement(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
