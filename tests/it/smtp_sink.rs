//! An SMTP server for the tests: it speaks enough SMTP for lettre (greeting, EHLO, MAIL, RCPT,
//! DATA, RSET, NOOP, QUIT) on a free port and keeps every message it receives, so tests read
//! the mail a user would get, over a real socket.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// `RCPT TO` addresses.
    pub to: Vec<String>,
    /// The raw message (headers and body) as sent after `DATA`.
    pub raw: Vec<u8>,
}

impl Received {
    /// The parsed message.
    pub fn parsed(&self) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(&self.raw)
            .expect("a parsable message")
    }

    /// A header's raw value, trimmed (`None` when absent).
    pub fn header(&self, name: &str) -> Option<String> {
        let raw = String::from_utf8_lossy(&self.raw);
        let head = raw.split("\r\n\r\n").next().unwrap_or_default();
        head.split("\r\n").find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    pub fn subject(&self) -> String {
        self.parsed().subject().unwrap_or_default().to_owned()
    }

    pub fn text(&self) -> String {
        self.parsed()
            .body_text(0)
            .map(|t| t.into_owned())
            .unwrap_or_default()
    }

    pub fn html(&self) -> String {
        self.parsed()
            .body_html(0)
            .map(|t| t.into_owned())
            .unwrap_or_default()
    }

    /// The link in the text body, as a user would click it.
    pub fn link(&self) -> url::Url {
        let text = self.text();
        let link = text
            .split_whitespace()
            .find(|word| word.contains("token="))
            .unwrap_or_else(|| panic!("no link in {text}"));
        url::Url::parse(link).unwrap()
    }

    /// The `token` parameter of the link in the text body, as a user would copy it.
    pub fn link_token(&self) -> String {
        let url = self.link();
        url.query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
            .unwrap()
    }
}

/// The sink: its port, and what it received.
#[derive(Clone)]
pub struct SmtpSink {
    pub port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    arrived: Arc<Notify>,
    /// Answer every `RCPT TO` with `550` (a mailbox that does not exist: a permanent failure).
    reject: bool,
    /// While set, the next message is answered `451` (try again later) after its data, and
    /// kept in `deferred`.
    defer_next: Arc<std::sync::atomic::AtomicBool>,
    deferred: Arc<Mutex<Vec<Received>>>,
    /// How long each message's final `250` is held back (a slow relay).
    delay: Duration,
}

impl SmtpSink {
    /// A sink on a free port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, false, Duration::ZERO)
    }

    /// A slow relay: each message is acknowledged `delay` after its data arrived.
    pub async fn start_slow(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, false, delay)
    }

    /// A sink that refuses every recipient with `550`.
    pub async fn start_rejecting() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, true, Duration::ZERO)
    }

    /// A sink on `port`, which the app may already be trying (a server that was down).
    pub async fn start_on(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        Self::serve(listener, false, Duration::ZERO)
    }

    fn serve(listener: TcpListener, reject: bool, delay: Duration) -> Self {
        let sink = Self {
            port: listener.local_addr().unwrap().port(),
            received: Arc::default(),
            arrived: Arc::default(),
            reject,
            defer_next: Arc::default(),
            deferred: Arc::default(),
            delay,
        };
        let task = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let task = task.clone();
                tokio::spawn(async move { task.session(stream).await });
            }
        });
        sink
    }

    /// A fresh database and an app on it that mails this sink (a new one), with `extra`
    /// variables.
    pub async fn with_app(
        backend: crate::helpers::Backend,
        extra: &[(&str, &str)],
    ) -> (crate::helpers::TestApp, Self) {
        let sink = Self::start().await;
        let vars = sink.vars();
        let mut overrides: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        overrides.extend_from_slice(extra);
        (
            crate::helpers::TestApp::spawn_with(backend, &overrides).await,
            sink,
        )
    }

    /// The variables that point the app at this sink.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            (
                "MAIL_URL",
                format!("smtp://127.0.0.1:{}?tls=off", self.port),
            ),
            ("MAIL_FROM", "Shop <no-reply@shop.example.com>".to_owned()),
        ]
    }

    async fn session(&self, stream: TcpStream) {
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read);
        if write.write_all(b"220 sink ESMTP\r\n").await.is_err() {
            return;
        }
        let mut to = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match lines.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let command = line.trim_end().to_ascii_uppercase();
            let reply: &[u8] = if command.starts_with("EHLO") || command.starts_with("HELO") {
                b"250-sink\r\n250 8BITMIME\r\n"
            } else if command.starts_with("MAIL FROM") || command.starts_with("RSET") {
                to.clear();
                b"250 OK\r\n"
            } else if command.starts_with("RCPT TO") && self.reject {
                b"550 5.1.1 no such mailbox\r\n"
            } else if command.starts_with("RCPT TO") {
                let address = line.trim_end()[8..]
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned();
                to.push(address);
                b"250 OK\r\n"
            } else if command == "DATA" {
                if write.write_all(b"354 go ahead\r\n").await.is_err() {
                    return;
                }
                let mut raw = Vec::new();
                loop {
                    let mut data = String::new();
                    match lines.read_line(&mut data).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if data == ".\r\n" {
                        break;
                    }
                    // Dot-stuffing undone.
                    let data = data.strip_prefix('.').unwrap_or(&data);
                    raw.extend_from_slice(data.as_bytes());
                }
                let message = Received {
                    to: std::mem::take(&mut to),
                    raw,
                };
                if self
                    .defer_next
                    .swap(false, std::sync::atomic::Ordering::SeqCst)
                {
                    self.deferred.lock().unwrap().push(message);
                    self.arrived.notify_waiters();
                    b"451 4.3.0 try again later\r\n"
                } else {
                    tokio::time::sleep(self.delay).await;
                    self.received.lock().unwrap().push(message);
                    self.arrived.notify_waiters();
                    b"250 queued\r\n"
                }
            } else if command == "QUIT" {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            } else {
                b"250 OK\r\n"
            };
            if write.write_all(reply).await.is_err() {
                return;
            }
        }
    }

    /// Answers the next message with a temporary failure (`451`), keeping it apart.
    pub fn defer_next(&self) {
        self.defer_next
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The messages answered with `451` so far.
    pub fn deferred(&self) -> Vec<Received> {
        self.deferred.lock().unwrap().clone()
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The messages received for `to` so far.
    pub fn for_address(&self, to: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == to))
            .collect()
    }

    /// Waits until `n` messages for `to` have arrived (at most `within`); all of them.
    pub async fn wait_for(&self, to: &str, n: usize, within: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.arrived.notified();
            let got = self.for_address(to);
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let got = self.for_address(to);
                assert!(
                    got.len() >= n,
                    "{} of {n} mails for {to} arrived",
                    got.len()
                );
                return got;
            }
        }
    }
}
