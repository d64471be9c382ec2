//! Configuration: every variable of the contract, parsed and validated before anything binds.
//!
//! [`Config::from_lookup`] takes a lookup function so unit tests never touch the process
//! environment; [`Config::from_env`] is the thin wrapper `main` uses (after `dotenvy` has loaded
//! an optional `.env`). Any bad value is a [`ConfigError`] naming the variable, which `main`
//! prints as one line before exiting with code 2.
//!
//! The configuration is read section by section (server, database, tokens, passwords, limits,
//! log), each from its own function; `state.rs` hands each layer the section it needs.

use std::{fmt, net::IpAddr, path::PathBuf, str::FromStr, time::Duration};

use base64::Engine as _;
use ipnet::IpNet;
use secrecy::ExposeSecret as _;
use secrecy::SecretString;

use crate::telemetry::{
    LogFormat,
    traces::{OtlpExport, OtlpProtocol, TraceConfig},
};

pub use crate::{
    database_url::DatabaseUrl,
    keys::{AsymmetricAlgorithm, JwtAlgorithm, KeySet},
};

/// A configuration value that could not be used, with the variable it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable, exactly as spelled in the contract.
    pub var: &'static str,
    /// What was wrong with it, including the offending value where that is not a secret.
    pub reason: String,
}

impl ConfigError {
    fn new(var: &'static str, reason: impl Into<String>) -> Self {
        Self {
            var,
            reason: reason.into(),
        }
    }
}

/// How `/auth/refresh` treats a refresh token (`REFRESH_TOKEN_ROTATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationMode {
    /// `off`: a refresh token stays valid until it expires or is revoked.
    Off,
    /// `on`: each refresh token works once, with reuse detection and a grace window.
    On,
}

/// Which browser origins may call the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: any origin, without credentials.
    Any,
    /// An explicit list, with credentials allowed.
    List(Vec<String>),
}

/// The whole validated configuration, one field per section. Field docs name the variable and
/// its default.
///
/// `Debug` is derived: secrets are [`SecretString`]s and the database URL describes itself
/// without its password, so the whole configuration can be logged at start-up.
#[derive(Clone, Debug)]
pub struct Config {
    /// The listener and the connections it serves.
    pub server: ServerConfig,
    /// Where the data lives and how long the database may take.
    pub database: DatabaseConfig,
    /// Signing, lifetimes and the revocation feed.
    pub tokens: TokenConfig,
    /// Password hashing.
    pub passwords: PasswordConfig,
    /// Lockouts, rate limits and how client addresses are counted.
    pub limits: LimitConfig,
    /// Log level and format.
    pub log: LogConfig,
    /// Outgoing mail and the links in it.
    pub mail: MailConfig,
    /// The keys that seal secrets at rest.
    pub data_keys: DataKeyConfig,
    /// Where passkeys may be used.
    pub passkeys: PasskeyConfig,
    /// Who learns of account changes.
    pub webhooks: WebhookConfig,
    /// Traces over OTLP.
    pub traces: TraceConfig,
}

/// Traces ([`TraceConfig`]): on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and neither `OTEL_SDK_DISABLED=true` nor
/// `OTEL_TRACES_EXPORTER=none`), with the standard variables' meanings; `TRACE_USER_ID` adds
/// `enduser.id`. The variables the OpenTelemetry crates read themselves
/// (`OTEL_TRACES_SAMPLER_ARG`, ...) are checked here where a typo would otherwise go unnoticed,
/// so a bad value stops the start like any other.
fn read_traces(vars: &Vars<impl Fn(&str) -> Option<String>>) -> Result<TraceConfig, ConfigError> {
    let user_id = vars.flag("TRACE_USER_ID", false)?;
    let disabled = vars.flag("OTEL_SDK_DISABLED", false)?;
    let exporters = vars.list("OTEL_TRACES_EXPORTER");
    let exporting = match exporters.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["otlp"] => true,
        ["none"] => false,
        _ => {
            return Err(ConfigError::new(
                "OTEL_TRACES_EXPORTER",
                format!("expected otlp or none, got {:?}", exporters.join(",")),
            ));
        }
    };
    let endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|var| vars.get(var).map(|raw| (var, raw)));
    let Some((endpoint_var, raw)) = endpoint.filter(|_| exporting && !disabled) else {
        return Ok(TraceConfig {
            export: None,
            user_id,
        });
    };
    let endpoint = url::Url::parse(&raw)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
        .ok_or_else(|| {
            ConfigError::new(
                endpoint_var,
                "expected an http:// or https:// URL (the collector, e.g. http://otel-collector:4318)",
            )
        })?;
    let (protocol_var, protocol) = [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|var| vars.get(var).map(|raw| (var, raw)))
    .unwrap_or(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()));
    let protocol = match protocol.as_str() {
        "http/protobuf" => OtlpProtocol::HttpProtobuf,
        "http/json" => OtlpProtocol::HttpJson,
        "grpc" => OtlpProtocol::Grpc,
        other => {
            return Err(ConfigError::new(
                protocol_var,
                format!("expected http/protobuf, http/json or grpc, got {other:?}"),
            ));
        }
    };
    let timeout_var = if vars.get("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_some() {
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
    } else {
        "OTEL_EXPORTER_OTLP_TIMEOUT"
    };
    let timeout = Duration::from_millis(vars.number(timeout_var, 10_000, 1, 600_000)?);
    // The crate would send uncompressed after a warning; a typo should stop the start.
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ] {
        if let Some(raw) = vars.get(var)
            && !matches!(raw.to_ascii_lowercase().as_str(), "gzip" | "none")
        {
            return Err(ConfigError::new(
                var,
                format!("expected gzip or none, got {raw:?}"),
            ));
        }
    }
    check_sampler(vars)?;
    Ok(TraceConfig {
        export: Some(OtlpExport {
            endpoint,
            protocol,
            timeout,
            max_queue: vars.number("OTEL_BSP_MAX_QUEUE_SIZE", 2048, 1, 1 << 20)?,
        }),
        user_id,
    })
}

/// `OTEL_TRACES_SAMPLER` and, for the ratio samplers, `OTEL_TRACES_SAMPLER_ARG` (0 to 1): the
/// SDK reads them, and would fall back to sampling everything on a typo.
fn check_sampler(vars: &Vars<impl Fn(&str) -> Option<String>>) -> Result<(), ConfigError> {
    const SAMPLERS: &[&str] = &[
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    ];
    let Some(sampler) = vars.get("OTEL_TRACES_SAMPLER") else {
        return Ok(());
    };
    if !SAMPLERS.contains(&sampler.as_str()) {
        return Err(ConfigError::new(
            "OTEL_TRACES_SAMPLER",
            format!("expected one of {}, got {sampler:?}", SAMPLERS.join(", ")),
        ));
    }
    if sampler.ends_with("traceidratio") {
        // Unset means 1 (the specification's default).
        let arg = vars.get("OTEL_TRACES_SAMPLER_ARG");
        if arg.as_deref().is_some_and(|raw| {
            !raw.parse::<f64>()
                .is_ok_and(|ratio| (0.0..=1.0).contains(&ratio))
        }) {
            return Err(ConfigError::new(
                "OTEL_TRACES_SAMPLER_ARG",
                format!("expected a ratio from 0 to 1 for {sampler}, got {arg:?}"),
            ));
        }
    }
    Ok(())
}

/// Webhooks: `WEBHOOK_URLS`, `WEBHOOK_SECRET`, `WEBHOOK_SECRET_PREVIOUS`, `WEBHOOK_EVENTS`,
/// `WEBHOOK_MAX_RETRY_HOURS`. `Debug` shows each endpoint's origin only (a path or query may
/// carry a token) and never a secret.
#[derive(Clone)]
pub struct WebhookConfig {
    /// `WEBHOOK_URLS` (comma list of `http(s)://` URLs; unset: webhooks off).
    pub endpoints: Vec<url::Url>,
    /// `WEBHOOK_SECRET` (`whsec_` + base64 of 24 to 64 random bytes; required with URLs).
    pub secret: Option<SecretString>,
    /// `WEBHOOK_SECRET_PREVIOUS` (optional): the secret being rotated out, signing too.
    pub previous_secret: Option<SecretString>,
    /// `WEBHOOK_EVENTS` (comma list; default every event).
    pub events: Vec<crate::store::WebhookEvent>,
    /// `WEBHOOK_MAX_RETRY_HOURS` (default 24): how long an event is retried before it fails.
    pub max_retry_hours: u32,
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origins: Vec<String> = self
            .endpoints
            .iter()
            .map(|url| url.origin().ascii_serialization())
            .collect();
        f.debug_struct("WebhookConfig")
            .field("endpoints", &origins)
            .field("secret", &self.secret)
            .field("previous_secret", &self.previous_secret)
            .field("events", &self.events)
            .field("max_retry_hours", &self.max_retry_hours)
            .finish()
    }
}

impl WebhookConfig {
    fn read(vars: &Vars<impl Fn(&str) -> Option<String>>) -> Result<Self, ConfigError> {
        let mut endpoints: Vec<url::Url> = Vec::new();
        for raw in vars.list("WEBHOOK_URLS") {
            let endpoint = url::Url::parse(&raw)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| {
                    ConfigError::new(
                        "WEBHOOK_URLS",
                        format!(
                            "expected http:// or https:// URLs, got {:?}",
                            raw.split(['?', '#', '@']).next().unwrap_or_default()
                        ),
                    )
                })?;
            if !endpoint.username().is_empty() || endpoint.password().is_some() {
                return Err(ConfigError::new(
                    "WEBHOOK_URLS",
                    "a user or password in a URL is not sent: receivers check the signature",
                ));
            }
            if !endpoints.contains(&endpoint) {
                endpoints.push(endpoint);
            }
        }
        let secret = webhook_secret(vars, "WEBHOOK_SECRET")?;
        if !endpoints.is_empty() && secret.is_none() {
            return Err(ConfigError::new(
                "WEBHOOK_SECRET",
                "required when WEBHOOK_URLS is set (make one with: echo whsec_$(openssl rand \
                 -base64 32))",
            ));
        }
        let events = match vars.list("WEBHOOK_EVENTS") {
            names if names.is_empty() => crate::store::WebhookEvent::ALL.to_vec(),
            names => names
                .iter()
                .map(|name| {
                    crate::store::WebhookEvent::parse(name).ok_or_else(|| {
                        let known: Vec<&str> = crate::store::WebhookEvent::ALL
                            .iter()
                            .map(|e| e.as_str())
                            .collect();
                        ConfigError::new(
                            "WEBHOOK_EVENTS",
                            format!(
                                "unknown event {name:?}; expected some of {}",
                                known.join(", ")
                            ),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(Self {
            endpoints,
            secret,
            previous_secret: webhook_secret(vars, "WEBHOOK_SECRET_PREVIOUS")?,
            events,
            max_retry_hours: vars.number("WEBHOOK_MAX_RETRY_HOURS", 24, 1, 24 * 30)?,
        })
    }

    /// The store's view: where each event goes.
    #[must_use]
    pub fn subscriptions(&self) -> crate::store::Subscriptions {
        crate::store::Subscriptions {
            endpoints: self.endpoints.iter().map(ToString::to_string).collect(),
            events: self.events.clone(),
        }
    }
}

/// The smallest and largest webhook secret, in bytes (API.md).
const WEBHOOK_SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A webhook secret from `var`: `whsec_` + standard base64 of 24 to 64 bytes that are not
/// guessable. The error never shows the value.
fn webhook_secret(
    vars: &Vars<impl Fn(&str) -> Option<String>>,
    var: &'static str,
) -> Result<Option<SecretString>, ConfigError> {
    let Some(raw) = vars.get(var) else {
        return Ok(None);
    };
    let hint = "make one with: echo whsec_$(openssl rand -base64 32)";
    let bytes = raw
        .strip_prefix("whsec_")
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .ok_or_else(|| {
            ConfigError::new(var, format!("expected whsec_ followed by base64 ({hint})"))
        })?;
    if !WEBHOOK_SECRET_BYTES.contains(&bytes.len()) {
        return Err(ConfigError::new(
            var,
            format!(
                "expected {} to {} bytes after whsec_, got {} ({hint})",
                WEBHOOK_SECRET_BYTES.start(),
                WEBHOOK_SECRET_BYTES.end(),
                bytes.len()
            ),
        ));
    }
    if let Some(why) = guessable_bytes(&bytes) {
        return Err(ConfigError::new(var, format!("guessable: {why} ({hint})")));
    }
    Ok(Some(SecretString::from(raw)))
}

/// Why the key bytes of a webhook secret are not random, or `None`: fewer than 10 distinct
/// bytes, a pattern repeated, or printable text. Random bytes are text with odds of
/// (95/256)^24, about 1 in 10^10, so text means a phrase typed by hand (or a secret encoded
/// twice). zxcvbn was tried here and cannot tell the two apart at this length: its estimate
/// saturates at 10^19.3 guesses, and summed over 12-character windows it scored 24 random hex
/// digits (19.5) below "correct horse battery staple" (21.5).
fn guessable_bytes(bytes: &[u8]) -> Option<&'static str> {
    let distinct = bytes.iter().collect::<std::collections::HashSet<_>>().len();
    if distinct < 10 {
        return Some("fewer than 10 distinct bytes");
    }
    if (1..=bytes.len() / 2).any(|period| bytes[period..] == bytes[..bytes.len() - period]) {
        return Some("a short pattern repeated");
    }
    if bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return Some(
            "the key is text (a typed phrase, or a secret encoded twice), not random bytes",
        );
    }
    None
}

/// Passkeys: `WEBAUTHN_RP_ID`, `WEBAUTHN_ORIGINS`, `WEBAUTHN_RP_NAME`.
#[derive(Clone, Debug)]
pub struct PasskeyConfig {
    /// `WEBAUTHN_RP_ID` (default `localhost`): the registrable domain the passkeys belong to.
    pub rp_id: String,
    /// `WEBAUTHN_ORIGINS` (comma list; default `http://localhost:3000` and `PUBLIC_URL`'s
    /// origin, those of them on `rp_id`): the exact origins whose pages may use them. Every
    /// origin set explicitly must be on `rp_id` (its host is `rp_id` or a subdomain of it).
    pub origins: Vec<url::Url>,
    /// `WEBAUTHN_RP_NAME` (default `MAIL_PRODUCT_NAME`): the name an authenticator shows.
    pub rp_name: String,
}

impl PasskeyConfig {
    fn read(
        vars: &Vars<impl Fn(&str) -> Option<String>>,
        public_url: &str,
        product_name: &str,
    ) -> Result<Self, ConfigError> {
        let rp_id = vars
            .text("WEBAUTHN_RP_ID", "localhost")
            .to_ascii_lowercase();
        if url::Host::parse(&rp_id)
            .ok()
            .is_none_or(|host| !matches!(host, url::Host::Domain(_)))
        {
            return Err(ConfigError::new(
                "WEBAUTHN_RP_ID",
                format!("expected a domain name like shop.example.com, got {rp_id:?}"),
            ));
        }
        let explicit = vars.list("WEBAUTHN_ORIGINS");
        let origins = if explicit.is_empty() {
            let defaults = ["http://localhost:3000", public_url];
            let mut origins: Vec<url::Url> = defaults
                .iter()
                .filter_map(|raw| url::Url::parse(raw).ok())
                .map(|url| origin_of(&url))
                .filter(|origin| on_rp_id(origin, &rp_id))
                .collect();
            origins.dedup();
            if origins.is_empty() {
                return Err(ConfigError::new(
                    "WEBAUTHN_ORIGINS",
                    format!(
                        "neither default origin (http://localhost:3000, PUBLIC_URL) is on \
                         WEBAUTHN_RP_ID {rp_id:?}: set the origins of the pages that use \
                         passkeys, like https://shop.example.com"
                    ),
                ));
            }
            origins
        } else {
            explicit
                .iter()
                .map(|raw| match url::Url::parse(raw) {
                    Ok(url)
                        if matches!(url.scheme(), "http" | "https")
                            && origin_of(&url).as_str().trim_end_matches('/')
                                == raw.trim_end_matches('/')
                            && on_rp_id(&url, &rp_id) =>
                    {
                        Ok(origin_of(&url))
                    }
                    _ => Err(ConfigError::new(
                        "WEBAUTHN_ORIGINS",
                        format!(
                            "expected origins (scheme, host, optional port) on WEBAUTHN_RP_ID \
                             {rp_id:?}, like https://{rp_id}, got {raw:?}"
                        ),
                    )),
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            rp_id,
            origins,
            rp_name: vars.text("WEBAUTHN_RP_NAME", product_name),
        })
    }
}

/// The origin of `url` (scheme, host, port) as a URL.
fn origin_of(url: &url::Url) -> url::Url {
    url::Url::parse(&url.origin().ascii_serialization()).unwrap_or_else(|_| url.clone())
}

/// Whether `origin`'s host is `rp_id` or a subdomain of it (what WebAuthn lets it use).
fn on_rp_id(origin: &url::Url, rp_id: &str) -> bool {
    origin
        .domain()
        .is_some_and(|host| host == rp_id || host.ends_with(&format!(".{rp_id}")))
}

/// Secrets at rest (the TOTP keys): `DATA_ENCRYPTION_KEY`, `DATA_ENCRYPTION_KEYS_PREVIOUS`.
/// `Debug` shows no key.
#[derive(Clone, Debug, Default)]
pub struct DataKeyConfig {
    /// `DATA_ENCRYPTION_KEY` (default unset: secrets are stored in the clear, with a start-up
    /// warning): base64 of 32 bytes.
    pub current: Option<SecretString>,
    /// `DATA_ENCRYPTION_KEYS_PREVIOUS` (comma list): keys that still open what they sealed.
    pub previous: Vec<SecretString>,
}

impl DataKeyConfig {
    fn read(vars: &Vars<impl Fn(&str) -> Option<String>>) -> Result<Self, ConfigError> {
        let check = |var: &'static str, key: String| {
            if crate::data_keys::decode_key(&key).is_none() {
                return Err(ConfigError::new(
                    var,
                    "expected base64 of exactly 32 bytes (generate one with: openssl rand \
                     -base64 32)",
                ));
            }
            Ok(SecretString::from(key))
        };
        Ok(Self {
            current: vars
                .get("DATA_ENCRYPTION_KEY")
                .map(|key| check("DATA_ENCRYPTION_KEY", key))
                .transpose()?,
            previous: vars
                .list("DATA_ENCRYPTION_KEYS_PREVIOUS")
                .into_iter()
                .map(|key| check("DATA_ENCRYPTION_KEYS_PREVIOUS", key))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The keys, ready to seal and open.
    #[must_use]
    pub fn keys(&self) -> crate::data_keys::DataKeys {
        let decode = |key: &SecretString| crate::data_keys::decode_key(key.expose_secret());
        let previous: Vec<[u8; 32]> = self.previous.iter().filter_map(decode).collect();
        crate::data_keys::DataKeys::new(self.current.as_ref().and_then(decode), &previous)
    }
}

/// How mail leaves (`MAIL_URL`).
#[derive(Clone, Debug)]
pub enum MailTransport {
    /// `log` (the default): each message, link included, is logged at INFO on target `mail`.
    Log,
    /// `smtp://` or `smtps://`.
    Smtp(SmtpSettings),
}

/// An SMTP server from `MAIL_URL`; `Debug` never shows the password.
#[derive(Clone, Debug)]
pub struct SmtpSettings {
    /// Server host name or address.
    pub host: String,
    /// Port (default 587 for `smtp://`, 465 for `smtps://`).
    pub port: u16,
    /// How the connection is protected.
    pub tls: SmtpTls,
    /// `user:pass@` of the URL, percent-decoded.
    pub credentials: Option<(String, SecretString)>,
}

/// The protection of an SMTP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// `smtp://host`: STARTTLS, required (a server that does not offer it is refused).
    StartTls,
    /// `smtps://host`: TLS from the first byte.
    Implicit,
    /// `smtp://host?tls=off`: plaintext, for a local sink such as Mailpit.
    Off,
}

/// Mail: `MAIL_*`, the reset link and its lifetime.
#[derive(Clone, Debug)]
pub struct MailConfig {
    /// `MAIL_URL` (default `log` with SQLite; required with PostgreSQL to serve).
    pub transport: MailTransport,
    /// Whether `MAIL_URL` was set (the log transport is the default only with SQLite).
    pub transport_chosen: bool,
    /// `MAIL_FROM` (required with smtp/smtps): the `From` mailbox.
    pub from: Option<String>,
    /// `MAIL_PRODUCT_NAME` (default `auth-service`): the name in subjects and bodies.
    pub product_name: String,
    /// `PASSWORD_RESET_URL` (default `PUBLIC_URL` + `/account/reset-password`, the hosted page):
    /// the mail's link
    /// is `<url>?token=<token>`.
    pub password_reset_url: String,
    /// `PASSWORD_RESET_TOKEN_MINUTES` (default 30).
    pub password_reset_token_minutes: u32,
    /// `MAIL_MAX_RETRY_HOURS` (default 24): how long a message is retried before it fails.
    pub max_retry_hours: u32,
    /// `EMAIL_VERIFICATION` (default `optional`).
    pub email_verification: EmailVerification,
    /// `EMAIL_VERIFY_URL` (default `PUBLIC_URL` + `/account/verify-email`, the hosted page): the
    /// verification
    /// mail's link is `<url>?token=<token>`.
    pub email_verify_url: String,
    /// `EMAIL_VERIFY_TOKEN_HOURS` (default 24).
    pub email_verify_token_hours: u32,
}

/// Whether addresses are verified (`EMAIL_VERIFICATION`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmailVerification {
    /// `off`: no verification mail; every address counts as unverified until reset.
    Off,
    /// `optional` (default): a verification mail at registration; unverified users log in.
    Optional,
    /// `required`: as optional, and an unverified address cannot log in (403).
    Required,
}

/// The listener: `HOST`, `PORT`, CORS, timeouts, connection limits, metrics, shutdown.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// `HOST` (default `0.0.0.0`).
    pub host: IpAddr,
    /// `PORT` (default 8001).
    pub port: u16,
    /// `CORS_ORIGINS` (default `http://localhost:3000,http://127.0.0.1:3000`).
    pub cors_origins: CorsOrigins,
    /// `HEADER_READ_TIMEOUT_SECONDS` (default 10): a client must send its request head within
    /// this, or the connection is closed (slowloris).
    pub header_read_timeout: Duration,
    /// `IDLE_TIMEOUT_SECONDS` (default 60): a keep-alive connection (HTTP/1 or HTTP/2) with no
    /// request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// `MAX_CONNECTIONS` (default 1024): open connections served at once; above 75% of it,
    /// idle keep-alive connections are closed oldest first; past it, new ones wait.
    pub max_connections: usize,
    /// `MAX_CONNECTIONS_PER_IP` (default 256, `0` = off): open connections per socket peer
    /// (IPv6: per `IPV6_PREFIX_LENGTH` network) that is not a trusted proxy.
    pub max_connections_per_ip: usize,
    /// `REQUEST_TIMEOUT_SECONDS` (default 30): a whole request, body included.
    pub request_timeout: Duration,
    /// `METRICS_ADDR` (default unset): serve `/metrics` on this separate listener instead of
    /// the main port.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `SHUTDOWN_DRAIN_SECONDS` (default 0): after SIGTERM, how long `/health/ready` answers
    /// 503 while the listener still accepts, so a load balancer can take the pod out first.
    pub shutdown_drain: Duration,
    /// `PUBLIC_URL` (default `http://localhost:<PORT>`): the service's external address, without
    /// a trailing slash; the hosted pages' links default to it.
    pub public_url: String,
}

/// The database: `DATABASE_*` and `MIGRATE_ON_START`.
#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    /// `DATABASE_URL` (default `sqlite://./auth_service.db`).
    pub url: DatabaseUrl,
    /// `DATABASE_MAX_CONNECTIONS` (default 20): pool size.
    pub max_connections: u32,
    /// `DATABASE_CONNECT_TIMEOUT_SECONDS` (default 30): how long start-up retries the database.
    pub connect_timeout: Duration,
    /// `DATABASE_LOCK_TIMEOUT_SECONDS` (default 2): PostgreSQL `lock_timeout`; a request that
    /// waits longer for a row lock answers 503 and leaves nothing behind.
    pub lock_timeout: Duration,
    /// `DATABASE_STATEMENT_TIMEOUT_SECONDS` (default 5): PostgreSQL `statement_timeout` (and,
    /// one second longer, `idle_in_transaction_session_timeout`).
    pub statement_timeout: Duration,
    /// `MIGRATE_ON_START` (default `true`): `false` never runs DDL at start-up; the schema must
    /// then be current (`auth-service migrate`, from a Job or an init container).
    pub migrate_on_start: bool,
}

/// Tokens: `JWT_*`, the two lifetimes, rotation and the revocation feed.
#[derive(Clone, Debug)]
pub struct TokenConfig {
    /// `JWT_SECRET_KEY` (alias `JWT_SECRET`): at least 32 bytes; random per process when unset.
    pub secret: SecretString,
    /// True when no secret was configured and a random one was generated.
    pub secret_generated: bool,
    /// `JWT_ALGORITHM` (default `HS256`).
    pub algorithm: JwtAlgorithm,
    /// `JWT_PRIVATE_KEY_FILE` (the signing key, with an asymmetric algorithm) and
    /// `JWT_PUBLIC_KEY_FILES` (comma list, published and accepted too), loaded and checked.
    pub keys: KeySet,
    /// `JWT_ISSUER` (default `auth-service`).
    pub issuer: String,
    /// `JWT_AUDIENCE` (default unset): when set, issued as `aud` and required on verification.
    pub audience: Option<String>,
    /// `JWT_LEEWAY_SECONDS` (default 30): clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway_seconds: u64,
    /// `ACCESS_TOKEN_EXPIRE_MINUTES` (default 15).
    pub access_expire_minutes: u32,
    /// `REFRESH_TOKEN_EXPIRE_DAYS` (default 30).
    pub refresh_expire_days: u32,
    /// `REFRESH_TOKEN_ROTATION` (default `off`, the original's behaviour): `on` makes each
    /// refresh token work once, with reuse detection.
    pub rotation: RotationMode,
    /// `REFRESH_REUSE_GRACE_SECONDS` (default 10, `0` turns the grace off).
    pub reuse_grace_seconds: u32,
    /// `JWT_ACCEPT_HS256` (default `off`): with an asymmetric algorithm, whether HS256 tokens
    /// signed with `JWT_SECRET_KEY` still verify (the migration switch).
    pub accept_hs256: bool,
    /// `REVOCATION_FEED_TOKENS` (default unset = no feed): bearer tokens that may read
    /// `/auth/revocations`, each at least 16 bytes.
    pub feed_tokens: Vec<SecretString>,
}

/// Password hashing: `BCRYPT_ROUNDS`, `PASSWORD_HASH_MAX_QUEUE`.
#[derive(Clone, Debug)]
pub struct PasswordConfig {
    /// `BCRYPT_ROUNDS` (default 12, 4 to 31).
    pub bcrypt_rounds: u32,
    /// `PASSWORD_HASH_MAX_QUEUE` (default 32 x cores): requests waiting for a bcrypt thread
    /// beyond this get 503 at once.
    pub hash_max_queue: usize,
}

/// Abuse limits: the login lockouts, the rate limit, and how a client address is counted.
#[derive(Clone, Debug)]
pub struct LimitConfig {
    /// `LOGIN_MAX_ATTEMPTS` (default 5): failed logins per email before the lockout.
    pub login_max_attempts: u32,
    /// `LOGIN_WINDOW_MINUTES` (default 15): the window those failures are counted in.
    pub login_window_minutes: u32,
    /// `LOCKOUT_MINUTES` (default 15): how long a locked email stays locked.
    pub lockout_minutes: u32,
    /// `LOGIN_MAX_FAILURES_PER_IP` (default 50, `0` = off): failed logins from one client IP
    /// within `LOGIN_WINDOW_MINUTES` before that IP is refused for `LOCKOUT_MINUTES`.
    pub login_max_failures_per_ip: u32,
    /// `RATE_LIMIT_PER_SECOND` (default 10, `0` = off): per-client-IP refill rate.
    pub rate_limit_per_second: u32,
    /// `RATE_LIMIT_BURST` (default 50, `0` = off): per-client-IP bucket size.
    pub rate_limit_burst: u32,
    /// `TRUSTED_PROXIES` (default empty): peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `IPV6_PREFIX_LENGTH` (default 64): IPv6 clients are counted per network of this length
    /// by every per-IP limit.
    pub ipv6_prefix_length: u8,
    /// `MAX_SESSIONS_PER_USER` (default 100, 1 to 100,000): live sessions per user; a login
    /// beyond it ends the user's least recently used session.
    pub max_sessions_per_user: u32,
}

/// Logging: `LOG_LEVEL`, `LOG_FORMAT`.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// `LOG_LEVEL` (default `info`): a level or a tracing filter directive.
    pub level: String,
    /// `LOG_FORMAT` (default `json`).
    pub format: LogFormat,
}

/// Reads one variable through the lookup, treating an empty value as unset.
struct Vars<F>(F);

impl<F: Fn(&str) -> Option<String>> Vars<F> {
    fn get(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn text(&self, var: &str, default: &str) -> String {
        self.get(var).unwrap_or_else(|| default.to_owned())
    }

    fn number<T>(&self, var: &'static str, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: FromStr + PartialOrd + fmt::Display + Copy,
    {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        match raw.parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(ConfigError::new(
                var,
                format!("expected an integer {min}-{max}, got {raw:?}"),
            )),
        }
    }

    fn seconds(
        &self,
        var: &'static str,
        default: u64,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        self.number(var, default, min, max).map(Duration::from_secs)
    }

    /// The one boolean parser: `true/false`, `1/0`, `yes/no`, `on/off`, in any case.
    fn flag(&self, var: &'static str, default: bool) -> Result<bool, ConfigError> {
        let Some(raw) = self.get(var) else {
            return Ok(default);
        };
        match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::new(
                var,
                format!("expected true/false, 1/0, yes/no or on/off, got {raw:?}"),
            )),
        }
    }

    /// A comma list, trimmed, empty items dropped.
    fn list(&self, var: &str) -> Vec<String> {
        self.get(var)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

impl Config {
    /// What serving requires beyond a valid configuration: with PostgreSQL (many replicas) a
    /// shared signing secret, since a random one per process makes every replica refuse the
    /// others' tokens. The random secret stays for the SQLite try-out only.
    ///
    /// # Errors
    /// A [`ConfigError`] naming `JWT_SECRET_KEY`.
    pub fn check_for_serving(&self) -> Result<(), ConfigError> {
        if self.database.url.is_postgres()
            && self.tokens.secret_generated
            && self.tokens.algorithm == JwtAlgorithm::Hs256
        {
            return Err(ConfigError::new(
                "JWT_SECRET_KEY",
                "required with PostgreSQL: every replica must sign with the same secret \
                 (generate one with: openssl rand -base64 48)",
            ));
        }
        // Production (PostgreSQL) must not log reset and verification links by default.
        if self.database.url.is_postgres() && !self.mail.transport_chosen {
            return Err(ConfigError::new(
                "MAIL_URL",
                "required with a PostgreSQL DATABASE_URL: set smtp://... or smtps://..., or \
                 MAIL_URL=log to log every message, links included, at INFO",
            ));
        }
        Ok(())
    }

    /// Reads the process environment (after `main` loaded `.env`).
    ///
    /// # Errors
    /// The first invalid variable, as a [`ConfigError`].
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds and validates the configuration from any lookup function.
    ///
    /// # Errors
    /// The first invalid variable, as a [`ConfigError`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars(lookup);
        let server = ServerConfig::read(&vars)?;
        let mail = MailConfig::read(&vars, &server.public_url)?;
        let passkeys = PasskeyConfig::read(&vars, &server.public_url, &mail.product_name)?;
        Ok(Self {
            database: DatabaseConfig::read(&vars, server.request_timeout)?,
            tokens: TokenConfig::read(&vars)?,
            passwords: PasswordConfig::read(&vars)?,
            limits: LimitConfig::read(&vars)?,
            log: LogConfig::read(&vars)?,
            mail,
            data_keys: DataKeyConfig::read(&vars)?,
            passkeys,
            webhooks: WebhookConfig::read(&vars)?,
            traces: read_traces(&vars)?,
            server,
        })
    }
}

impl ServerConfig {
    fn read(vars: &Vars<impl Fn(&str) -> Option<String>>) -> Result<Self, ConfigError> {
        let host = match vars.get("HOST") {
            None => IpAddr::from([0, 0, 0, 0]),
            Some(raw) if raw.eq_ignore_ascii_case("localhost") => IpAddr::from([127, 0, 0, 1]),
            Some(raw) => raw.parse().map_err(|_| {
                ConfigError::new("HOST", format!("expected an IP address, got {raw:?}"))
            })?,
        };
        let metrics_addr = match vars.get("METRICS_ADDR") {
            None => None,
            Some(raw) => Some(raw.parse().map_err(|_| {
                ConfigError::new(
                    "METRICS_ADDR",
                    format!("expected an address and port like 0.0.0.0:9090, got {raw:?}"),
                )
            })?),
        };
        let port = vars.number("PORT", 8001, 0, u16::MAX)?;
        Ok(Self {
            host,
            port,
            public_url: parse_public_url(
                &vars.text("PUBLIC_URL", &format!("http://localhost:{port}")),
            )?,
            cors_origins: parse_cors(&vars.text(
                "CORS_ORIGINS",
                "http://localhost:3000,http://127.0.0.1:3000",
            ))?,
            header_read_timeout: vars.seconds("HEADER_READ_TIMEOUT_SECONDS", 10, 1, 3600)?,
            idle_timeout: vars.seconds("IDLE_TIMEOUT_SECONDS", 60, 1, 86_400)?,
            max_connections: vars.number("MAX_CONNECTIONS", 1024, 1, 1_000_000)?,
            max_connections_per_ip: vars.number("MAX_CONNECTIONS_PER_IP", 256, 0, 1_000_000)?,
            request_timeout: vars.seconds("REQUEST_TIMEOUT_SECONDS", 30, 1, 3600)?,
            metrics_addr,
            shutdown_drain: vars.seconds("SHUTDOWN_DRAIN_SECONDS", 0, 0, 600)?,
        })
    }
}

impl DatabaseConfig {
    fn read(
        vars: &Vars<impl Fn(&str) -> Option<String>>,
        request_timeout: Duration,
    ) -> Result<Self, ConfigError> {
        let url = DatabaseUrl::parse(&vars.text("DATABASE_URL", "sqlite://./auth_service.db"))
            .map_err(|err| ConfigError::new("DATABASE_URL", err.0))?;
        // Both must end well before the request does, so a stalled lock is a 503 with nothing
        // left behind, not a 408 whose statement still runs afterwards.
        let shorter_than_a_request = |var: &'static str, default: u64| {
            let timeout = vars.seconds(var, default, 1, 3600)?;
            if timeout >= request_timeout {
                return Err(ConfigError::new(
                    var,
                    format!(
                        "must be shorter than REQUEST_TIMEOUT_SECONDS ({}), got {}",
                        request_timeout.as_secs(),
                        timeout.as_secs()
                    ),
                ));
            }
            Ok(timeout)
        };
        Ok(Self {
            url,
            max_connections: vars.number("DATABASE_MAX_CONNECTIONS", 20, 1, 10_000)?,
            connect_timeout: vars.seconds("DATABASE_CONNECT_TIMEOUT_SECONDS", 30, 0, 3600)?,
            lock_timeout: shorter_than_a_request("DATABASE_LOCK_TIMEOUT_SECONDS", 2)?,
            statement_timeout: shorter_than_a_request("DATABASE_STATEMENT_TIMEOUT_SECONDS", 5)?,
            migrate_on_start: vars.flag("MIGRATE_ON_START", true)?,
        })
    }
}

impl TokenConfig {
    fn read(vars: &Vars<impl Fn(&str) -> Option<String>>) -> Result<Self, ConfigError> {
        let (secret, secret_generated) = match vars
            .get("JWT_SECRET_KEY")
            .map(|v| ("JWT_SECRET_KEY", v))
            .or_else(|| vars.get("JWT_SECRET").map(|v| ("JWT_SECRET", v)))
        {
            Some((var, secret)) if secret.len() < 32 => {
                return Err(ConfigError::new(
                    var,
                    format!("must be at least 32 bytes, got {}", secret.len()),
                ));
            }
            Some((var, secret)) => {
                if let Some(why) = guessable(&secret) {
                    return Err(ConfigError::new(
                        var,
                        format!(
                            "guessable: {why}; an HS256 token is enough to find such a secret \
                             offline (generate one with: openssl rand -base64 48)"
                        ),
                    ));
                }
                (SecretString::from(secret), false)
            }
            None => (SecretString::from(random_secret()), true),
        };
        let algorithm = match vars.get("JWT_ALGORITHM").as_deref() {
            None | Some("HS256") => JwtAlgorithm::Hs256,
            Some(name) => {
                JwtAlgorithm::Asymmetric(AsymmetricAlgorithm::parse(name).ok_or_else(|| {
                    ConfigError::new(
                        "JWT_ALGORITHM",
                        format!("expected one of HS256, RS256, ES256, EdDSA, got {name:?}"),
                    )
                })?)
            }
        };
        let accept_hs256 = vars.flag("JWT_ACCEPT_HS256", false)?;
        if accept_hs256 && matches!(algorithm, JwtAlgorithm::Asymmetric(_)) && secret_generated {
            return Err(ConfigError::new(
                "JWT_ACCEPT_HS256",
                "on without JWT_SECRET_KEY: set the secret the HS256 tokens were signed with, \
                 or turn JWT_ACCEPT_HS256 off",
            ));
        }
        let rotation = if vars.flag("REFRESH_TOKEN_ROTATION", false)? {
            RotationMode::On
        } else {
            RotationMode::Off
        };
        Ok(Self {
            secret,
            secret_generated,
            algorithm,
            keys: load_keys(vars, algorithm)?,
            issuer: vars.text("JWT_ISSUER", "auth-service"),
            audience: vars.get("JWT_AUDIENCE"),
            leeway_seconds: vars.number("JWT_LEEWAY_SECONDS", 30, 0, 3600)?,
            access_expire_minutes: vars.number("ACCESS_TOKEN_EXPIRE_MINUTES", 15, 1, 24 * 60)?,
            refresh_expire_days: vars.number("REFRESH_TOKEN_EXPIRE_DAYS", 30, 1, 3650)?,
            rotation,
            reuse_grace_seconds: vars.number("REFRESH_REUSE_GRACE_SECONDS", 10, 0, 3600)?,
            accept_hs256,
            feed_tokens: feed_tokens(vars)?,
        })
    }
}

/// Placeholders that documentation, tutorials and `.env` templates carry, folded (ASCII
/// letters and digits only, lower case). Each is at least 8 letters: a random base64 secret
/// contains one by chance with odds below 1 in 10^10, a hex secret never (no `g` to `z`).
const PLACEHOLDERS: &[&str] = &[
    "changeme",
    "changeinproduction",
    "changethis",
    "yoursecret",
    "secretkey",
    "replaceme",
    "supersecret",
    "jwtsecret",
    "mysecret",
    "placeholder",
    "insecure",
    "donotuse",
    "examplesecret",
];

/// Why `secret` (already at least 32 bytes) could be found offline from one token, or `None`:
/// fewer than 10 distinct bytes, a pattern repeated (any period up to half its length:
/// `"changeme" * 4`, `"0123456789abcdef" * 2`), a documentation placeholder, or a common
/// password. A random secret (`openssl rand -base64 48` or `-hex 32`) passes every rule: it
/// has about 40 (base64) or 16 (hex) distinct characters and no period.
fn guessable(secret: &str) -> Option<&'static str> {
    let bytes = secret.as_bytes();
    let distinct = bytes.iter().collect::<std::collections::HashSet<_>>().len();
    if distinct < 10 {
        return Some("fewer than 10 distinct characters");
    }
    if (1..=bytes.len() / 2).any(|period| bytes[period..] == bytes[..bytes.len() - period]) {
        return Some("a short pattern repeated");
    }
    let folded: String = secret
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if PLACEHOLDERS.iter().any(|phrase| folded.contains(phrase)) {
        return Some("a placeholder from documentation");
    }
    // The list's longest entry has 32 characters (passwords 3.1): a longer text cannot be on
    // it, and a scan of its 100,000 entries is skipped.
    let listed = |text: &str| {
        text.chars().count() <= COMMON_PASSWORD_MAX_CHARS
            && passwords::analyzer::is_common_password(text)
    };
    if listed(secret) || listed(&folded) {
        return Some("on the common-password list");
    }
    None
}

/// The length of the longest entry of the `passwords` crate's common-password list.
const COMMON_PASSWORD_MAX_CHARS: usize = 32;

/// `JWT_PRIVATE_KEY_FILE` and `JWT_PUBLIC_KEY_FILES`, which must agree with `JWT_ALGORITHM`.
fn load_keys(
    vars: &Vars<impl Fn(&str) -> Option<String>>,
    algorithm: JwtAlgorithm,
) -> Result<KeySet, ConfigError> {
    let private_key_file = vars.get("JWT_PRIVATE_KEY_FILE").map(PathBuf::from);
    let signing = match (algorithm, &private_key_file) {
        (JwtAlgorithm::Asymmetric(algorithm), Some(path)) => Some((algorithm, path.as_path())),
        (JwtAlgorithm::Asymmetric(algorithm), None) => {
            return Err(ConfigError::new(
                "JWT_PRIVATE_KEY_FILE",
                format!(
                    "required with JWT_ALGORITHM={0} (make a key with: auth-service keys \
                     generate --alg {0} --out signing.pem)",
                    algorithm.name()
                ),
            ));
        }
        (JwtAlgorithm::Hs256, Some(_)) => {
            return Err(ConfigError::new(
                "JWT_PRIVATE_KEY_FILE",
                "set while JWT_ALGORITHM is HS256: set JWT_ALGORITHM to the key's algorithm \
                 (RS256, ES256 or EdDSA)",
            ));
        }
        (JwtAlgorithm::Hs256, None) => None,
    };
    let public_key_files: Vec<PathBuf> = vars
        .list("JWT_PUBLIC_KEY_FILES")
        .into_iter()
        .map(PathBuf::from)
        .collect();
    KeySet::load(signing, &public_key_files).map_err(|(var, reason)| ConfigError::new(var, reason))
}

/// `REVOCATION_FEED_TOKENS`: each at least 16 bytes.
fn feed_tokens(
    vars: &Vars<impl Fn(&str) -> Option<String>>,
) -> Result<Vec<SecretString>, ConfigError> {
    vars.list("REVOCATION_FEED_TOKENS")
        .into_iter()
        .map(|token| {
            if token.len() < 16 {
                return Err(ConfigError::new(
                    "REVOCATION_FEED_TOKENS",
                    format!(
                        "every token must be at least 16 bytes, one has {} (generate one \
                         with: openssl rand -base64 24)",
                        token.len()
                    ),
                ));
            }
            Ok(SecretString::from(token))
        })
        .collect()
}

impl PasswordConfig {
    fn read(vars: &Vars<impl Fn(&str) -> Option<String>>) -> Result<Self, ConfigError> {
        Ok(Self {
            bcrypt_rounds: vars.number("BCRYPT_ROUNDS", 12, 4, 31)?,
            hash_max_queue: vars.number(
                "PASSWORD_HASH_MAX_QUEUE",
                32 * std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
                0,
                1_000_000,
            )?,
        })
    }
}

impl LimitConfig {
    fn read(vars: &Vars<impl Fn(&str) -> Option<String>>) -> Result<Self, ConfigError> {
        const WEEK_IN_MINUTES: u32 = 7 * 24 * 60;
        Ok(Self {
            login_max_attempts: vars.number("LOGIN_MAX_ATTEMPTS", 5, 1, 1_000_000)?,
            login_window_minutes: vars.number("LOGIN_WINDOW_MINUTES", 15, 1, WEEK_IN_MINUTES)?,
            lockout_minutes: vars.number("LOCKOUT_MINUTES", 15, 1, WEEK_IN_MINUTES)?,
            login_max_failures_per_ip: vars.number(
                "LOGIN_MAX_FAILURES_PER_IP",
                50,
                0,
                1_000_000,
            )?,
            rate_limit_per_second: vars.number("RATE_LIMIT_PER_SECOND", 10, 0, 1_000_000)?,
            rate_limit_burst: vars.number("RATE_LIMIT_BURST", 50, 0, 1_000_000)?,
            trusted_proxies: parse_proxies(&vars.list("TRUSTED_PROXIES"))?,
            ipv6_prefix_length: vars.number("IPV6_PREFIX_LENGTH", 64, 1, 128)?,
            max_sessions_per_user: vars.number("MAX_SESSIONS_PER_USER", 100, 1, 100_000)?,
        })
    }
}

impl MailConfig {
    fn read(
        vars: &Vars<impl Fn(&str) -> Option<String>>,
        public_url: &str,
    ) -> Result<Self, ConfigError> {
        let transport = parse_mail_url(vars.get("MAIL_URL").as_deref())?;
        let from = vars.get("MAIL_FROM");
        match (&transport, &from) {
            (MailTransport::Smtp(_), None) => {
                return Err(ConfigError::new(
                    "MAIL_FROM",
                    "required with an smtp:// or smtps:// MAIL_URL (e.g. \"Shop <no-reply@shop.example.com>\")",
                ));
            }
            (_, Some(from)) if from.parse::<lettre::message::Mailbox>().is_err() => {
                return Err(ConfigError::new(
                    "MAIL_FROM",
                    format!(
                        "expected an address like \"Shop <no-reply@shop.example.com>\", got {from:?}"
                    ),
                ));
            }
            _ => {}
        }
        Ok(Self {
            transport,
            transport_chosen: vars.get("MAIL_URL").is_some(),
            from,
            product_name: vars.text("MAIL_PRODUCT_NAME", "auth-service"),
            password_reset_url: parse_link_base(
                "PASSWORD_RESET_URL",
                &vars.text(
                    "PASSWORD_RESET_URL",
                    &format!("{public_url}/account/reset-password"),
                ),
            )?,
            password_reset_token_minutes: vars.number(
                "PASSWORD_RESET_TOKEN_MINUTES",
                30,
                1,
                24 * 60,
            )?,
            max_retry_hours: vars.number("MAIL_MAX_RETRY_HOURS", 24, 1, 24 * 30)?,
            email_verification: match vars
                .get("EMAIL_VERIFICATION")
                .map(|v| v.to_ascii_lowercase())
                .as_deref()
            {
                Some("off") => EmailVerification::Off,
                None | Some("optional") => EmailVerification::Optional,
                Some("required") => EmailVerification::Required,
                Some(other) => {
                    return Err(ConfigError::new(
                        "EMAIL_VERIFICATION",
                        format!("expected off, optional or required, got {other:?}"),
                    ));
                }
            },
            email_verify_url: parse_link_base(
                "EMAIL_VERIFY_URL",
                &vars.text(
                    "EMAIL_VERIFY_URL",
                    &format!("{public_url}/account/verify-email"),
                ),
            )?,
            email_verify_token_hours: vars.number("EMAIL_VERIFY_TOKEN_HOURS", 24, 1, 24 * 30)?,
        })
    }
}

/// `MAIL_URL`: `log`, `smtp://[user:pass@]host[:port][?tls=off]` or `smtps://...`. Errors
/// never repeat the value: it may hold a password.
fn parse_mail_url(raw: Option<&str>) -> Result<MailTransport, ConfigError> {
    let refuse = |why: &str| {
        ConfigError::new(
            "MAIL_URL",
            format!(
                "{why}; expected log, smtp://[user:pass@]host[:587] (STARTTLS), \
                 smtps://[user:pass@]host[:465] or smtp://host:port?tls=off (the value is not \
                 repeated: it may hold a password)"
            ),
        )
    };
    let Some(raw) = raw else {
        return Ok(MailTransport::Log);
    };
    if raw.eq_ignore_ascii_case("log") {
        return Ok(MailTransport::Log);
    }
    let url = url::Url::parse(raw).map_err(|_| refuse("not a URL"))?;
    let (mut tls, default_port) = match url.scheme() {
        "smtp" => (SmtpTls::StartTls, 587),
        "smtps" => (SmtpTls::Implicit, 465),
        _ => return Err(refuse("unknown scheme")),
    };
    for (key, value) in url.query_pairs() {
        match (&*key, &*value) {
            ("tls", "off") if tls == SmtpTls::StartTls => tls = SmtpTls::Off,
            ("tls", "required" | "starttls") if tls == SmtpTls::StartTls => {}
            _ => return Err(refuse("unknown query parameter")),
        }
    }
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| refuse("no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(part)
            .decode_utf8()
            .map(std::borrow::Cow::into_owned)
            .map_err(|_| refuse("the user or password is not UTF-8"))
    };
    let credentials = if url.username().is_empty() {
        None
    } else {
        let password = decode(url.password().unwrap_or_default())?;
        Some((decode(url.username())?, SecretString::from(password)))
    };
    Ok(MailTransport::Smtp(SmtpSettings {
        host,
        port: url.port().unwrap_or(default_port),
        tls,
        credentials,
    }))
}

/// A frontend page the mail links to: an absolute http(s) URL without a fragment.
/// `PUBLIC_URL`: an http(s) URL with no query or fragment; a path (a service behind a prefix)
/// is kept, its trailing slash dropped.
fn parse_public_url(raw: &str) -> Result<String, ConfigError> {
    match url::Url::parse(raw) {
        Ok(url)
            if matches!(url.scheme(), "http" | "https")
                && url.query().is_none()
                && url.fragment().is_none()
                && url.has_host() =>
        {
            Ok(url.as_str().trim_end_matches('/').to_owned())
        }
        _ => Err(ConfigError::new(
            "PUBLIC_URL",
            format!(
                "expected the service's http(s) address like https://auth.shop.example.com, got {raw:?}"
            ),
        )),
    }
}

fn parse_link_base(var: &'static str, raw: &str) -> Result<String, ConfigError> {
    match url::Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.fragment().is_none() => {
            Ok(raw.to_owned())
        }
        _ => Err(ConfigError::new(
            var,
            format!(
                "expected an http(s) URL like https://shop.example.com/reset-password, got {raw:?}"
            ),
        )),
    }
}

impl LogConfig {
    fn read(vars: &Vars<impl Fn(&str) -> Option<String>>) -> Result<Self, ConfigError> {
        let format = match vars
            .get("LOG_FORMAT")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            None | Some("json") => LogFormat::Json,
            Some("pretty" | "text") => LogFormat::Pretty,
            Some(other) => {
                return Err(ConfigError::new(
                    "LOG_FORMAT",
                    format!("expected json or pretty, got {other:?}"),
                ));
            }
        };
        Ok(Self {
            level: parse_log_level(&vars.text("LOG_LEVEL", "info"))?,
            format,
        })
    }
}

/// `LOG_LEVEL`: a level name in any case (`warning` is `warn`), or tracing filter directives
/// (`info,auth_service=debug`, `warn,audit=info`), whose levels must be names too. Anything else
/// (`verbose`) would silently log nothing, so it is refused.
fn parse_log_level(raw: &str) -> Result<String, ConfigError> {
    const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];
    let level = |name: &str| {
        let name = name.trim().to_ascii_lowercase();
        let name = if name == "warning" {
            "warn".to_owned()
        } else {
            name
        };
        LEVELS.contains(&name.as_str()).then_some(name)
    };
    let refuse = || {
        ConfigError::new(
            "LOG_LEVEL",
            format!(
                "expected a level (error, warn, info, debug, trace, off) or filter directives \
                 like info,auth_service=debug, got {raw:?}"
            ),
        )
    };
    let mut directives = Vec::new();
    for directive in raw.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let normalised = match directive.rsplit_once('=') {
            Some((target, name)) if !target.is_empty() => {
                format!("{target}={}", level(name).ok_or_else(refuse)?)
            }
            Some(_) => return Err(refuse()),
            None => level(directive).ok_or_else(refuse)?,
        };
        directives.push(normalised);
    }
    if directives.is_empty() {
        return Err(refuse());
    }
    let filter = directives.join(",");
    tracing_subscriber::EnvFilter::try_new(&filter).map_err(|_| refuse())?;
    Ok(filter)
}

/// 48 random bytes, URL-safe base64: the per-process secret used when none is configured.
fn random_secret() -> String {
    let bytes: [u8; 48] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn parse_cors(raw: &str) -> Result<CorsOrigins, ConfigError> {
    if raw == "*" {
        return Ok(CorsOrigins::Any);
    }
    let mut origins = Vec::new();
    for origin in raw.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let valid = (origin.starts_with("http://") || origin.starts_with("https://"))
            && !origin.ends_with('/')
            && origin.is_ascii()
            && !origin.contains(char::is_whitespace)
            && origin != "*";
        if !valid {
            return Err(ConfigError::new(
                "CORS_ORIGINS",
                format!(
                    "expected `*` or a comma list of origins like https://shop.example.com, got {origin:?}"
                ),
            ));
        }
        origins.push(origin.to_owned());
    }
    Ok(CorsOrigins::List(origins))
}

/// `TRUSTED_PROXIES`: IPs or CIDRs. A range wider than an IPv4 /8 or an IPv6 /32 (`0.0.0.0/0`,
/// `::/0`) is refused: trusting everyone lets every client choose its own IP, and so dodge every
/// per-IP limit with a made-up `X-Forwarded-For`.
fn parse_proxies(items: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    items
        .iter()
        .map(|p| {
            let net = p
                .parse::<IpNet>()
                .or_else(|_| p.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    ConfigError::new(
                        "TRUSTED_PROXIES",
                        format!("expected a comma list of IPs or CIDRs, got {p:?}"),
                    )
                })?;
            let widest = match net {
                IpNet::V4(_) => 8,
                IpNet::V6(_) => 32,
            };
            if net.prefix_len() < widest {
                return Err(ConfigError::new(
                    "TRUSTED_PROXIES",
                    format!(
                        "{p} trusts too many addresses (wider than /{widest}): every client could \
                         choose its own IP; list your proxies' addresses or subnets"
                    ),
                ));
            }
            Ok(net)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use base64::engine::general_purpose::STANDARD;
    use secrecy::ExposeSecret as _;

    use super::*;

    /// A secret that passes every rule.
    const SECRET: &str = "q7Xv9LmR2pWz8KsT4yNb6HcJ3fGd5AeU";

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn the_mails_lead_to_the_hosted_pages_at_public_url_unless_told_otherwise() {
        let c = config(&[]).unwrap();
        assert_eq!(c.server.public_url, "http://localhost:8001");
        assert_eq!(
            c.mail.password_reset_url,
            "http://localhost:8001/account/reset-password"
        );
        assert_eq!(
            c.mail.email_verify_url,
            "http://localhost:8001/account/verify-email"
        );
        let c = config(&[("PORT", "9000")]).unwrap();
        assert_eq!(
            c.mail.email_verify_url,
            "http://localhost:9000/account/verify-email"
        );
        let c = config(&[("PUBLIC_URL", "https://auth.shop.example.com/sso/")]).unwrap();
        assert_eq!(c.server.public_url, "https://auth.shop.example.com/sso");
        assert_eq!(
            c.mail.password_reset_url,
            "https://auth.shop.example.com/sso/account/reset-password"
        );
        let c = config(&[
            ("PUBLIC_URL", "https://auth.shop.example.com"),
            ("PASSWORD_RESET_URL", "https://shop.example.com/reset"),
        ])
        .unwrap();
        assert_eq!(c.mail.password_reset_url, "https://shop.example.com/reset");
        assert_eq!(
            c.mail.email_verify_url,
            "https://auth.shop.example.com/account/verify-email"
        );
        for bad in [
            "auth.shop.example.com",
            "ftp://auth.shop.example.com",
            "https://auth.shop.example.com/?next=1",
            "https://auth.shop.example.com/#top",
            "https://",
        ] {
            let err = config(&[("PUBLIC_URL", bad)]).unwrap_err();
            assert_eq!(err.var, "PUBLIC_URL", "{bad}");
        }
    }

    #[test]
    fn no_configuration_at_all_gives_the_documented_defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(
            c.database.url,
            DatabaseUrl::SqliteFile("./auth_service.db".into())
        );
        assert_eq!(c.server.port, 8001);
        assert_eq!(c.server.host, IpAddr::from([0, 0, 0, 0]));
        assert!(c.tokens.secret_generated);
        assert!(c.tokens.secret.expose_secret().len() >= 32);
        assert_eq!(c.tokens.algorithm, JwtAlgorithm::Hs256);
        assert_eq!(c.tokens.issuer, "auth-service");
        assert_eq!(c.tokens.audience, None);
        assert_eq!(c.tokens.leeway_seconds, 30);
        assert_eq!(c.tokens.access_expire_minutes, 15);
        assert_eq!(c.tokens.refresh_expire_days, 30);
        assert_eq!(c.tokens.rotation, RotationMode::Off);
        assert_eq!(c.tokens.reuse_grace_seconds, 10);
        assert_eq!(c.passwords.bcrypt_rounds, 12);
        assert_eq!(c.log.level, "info");
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(
            c.server.cors_origins,
            CorsOrigins::List(vec![
                "http://localhost:3000".into(),
                "http://127.0.0.1:3000".into()
            ])
        );
        assert_eq!(
            (
                c.limits.login_max_attempts,
                c.limits.login_window_minutes,
                c.limits.lockout_minutes
            ),
            (5, 15, 15)
        );
        assert_eq!(
            (c.limits.rate_limit_per_second, c.limits.rate_limit_burst),
            (10, 50)
        );
        assert_eq!(c.limits.login_max_failures_per_ip, 50);
        assert_eq!(c.limits.max_sessions_per_user, 100);
        assert!(c.limits.trusted_proxies.is_empty());
        assert_eq!(c.database.max_connections, 20);
    }

    #[test]
    fn postgres_password_never_shows_in_debug_output() {
        let c = config(&[
            ("DATABASE_URL", "postgres://app:hunter2-secret@db:5432/auth"),
            ("JWT_SECRET_KEY", SECRET),
            ("MAIL_URL", "log"),
        ])
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(
            shown.contains(r#"postgresql database "auth" on db:5432"#),
            "{shown}"
        );
    }

    #[test]
    fn the_webhook_settings_print_origins_and_no_secret() {
        let secret = format!(
            "whsec_{}",
            STANDARD.encode([
                3_u8, 200, 17, 99, 41, 250, 8, 130, 77, 5, 190, 66, 12, 240, 31, 88, 160, 2, 219,
                54, 123, 9, 171, 45
            ])
        );
        let config = Config::from_lookup(|name| match name {
            "WEBHOOK_URLS" => {
                Some("https://crm.example.com/in/tok3n-in-path?key=tok3n-in-query".into())
            }
            "WEBHOOK_SECRET" => Some(secret.clone()),
            _ => None,
        })
        .unwrap();
        let printed = format!("{config:?}");
        assert!(printed.contains("https://crm.example.com"), "{printed}");
        assert!(!printed.contains("tok3n"), "{printed}");
        assert!(!printed.contains(&secret[6..]), "{printed}");
        // The store gets the whole URL: it is where the events go.
        assert_eq!(
            config.webhooks.subscriptions().endpoints,
            ["https://crm.example.com/in/tok3n-in-path?key=tok3n-in-query"]
        );
    }

    #[test]
    fn traces_follow_the_standard_variables_and_print_the_collectors_origin_only() {
        // Off by default, and when disabled or told `none`, endpoint or not.
        assert!(config(&[]).unwrap().traces.export.is_none());
        let endpoint = (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "https://collector.example.com:4318/k3y-in-path?key=k3y-in-query",
        );
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert!(config(&[endpoint, off]).unwrap().traces.export.is_none());
        }
        // On with an endpoint: http/protobuf, 10 s, 2048 spans unless told otherwise.
        let c = config(&[endpoint]).unwrap();
        let export = c.traces.export.clone().unwrap();
        assert_eq!(export.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(export.timeout, Duration::from_secs(10));
        assert_eq!(export.max_queue, 2048);
        assert!(!c.traces.user_id);
        let printed = format!("{c:?}");
        assert!(
            printed.contains("https://collector.example.com:4318"),
            "{printed}"
        );
        assert!(!printed.contains("k3y"), "{printed}");
        // The traces-only variables win over the general ones.
        let c = config(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "5000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("TRACE_USER_ID", "true"),
        ])
        .unwrap();
        let export = c.traces.export.unwrap();
        assert_eq!(export.protocol, OtlpProtocol::Grpc);
        assert_eq!(export.timeout, Duration::from_millis(2500));
        assert!(c.traces.user_id);
        let c = config(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:4318/v1/traces",
        )]);
        assert!(c.unwrap().traces.export.is_some());
    }

    #[test]
    fn guessable_secrets_are_refused_without_echoing_them() {
        for secret in [
            "a".repeat(32),
            "changeme".repeat(4),
            "0123456789abcdef".repeat(2),
            "your-secret-key-here-change-in-production".to_owned(),
            "password1234password1234password".to_owned(),
            "Th1s-is-my-JWT-SECRET-for-the-shop!".to_owned(),
            "abcdefgh".repeat(4),
            "qwertyuiop".repeat(4),
            "ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab1ab".to_owned(),
        ] {
            let err = config(&[("JWT_SECRET_KEY", &secret)]).unwrap_err();
            assert_eq!(err.var, "JWT_SECRET_KEY", "{secret}");
            assert!(err.reason.starts_with("guessable: "), "{secret}: {err}");
            assert!(!err.to_string().contains(&secret), "{err}");
        }
    }

    #[test]
    fn the_common_password_list_is_read_up_to_its_longest_entry() {
        // The longest entry: a 32-character hex string, refused for being on the list.
        let longest = "d1bd6bc58c1d74df41a957489c9942f5";
        assert_eq!(longest.len(), COMMON_PASSWORD_MAX_CHARS);
        assert!(passwords::analyzer::is_common_password(longest));
        assert_eq!(guessable(longest), Some("on the common-password list"));
    }

    /// Random secrets as the README says to make them always pass: many fresh ones of each
    /// kind (a rule that refused one random secret in a thousand would show here).
    #[test]
    fn random_secrets_always_pass() {
        use base64::engine::general_purpose::STANDARD;
        for _ in 0..10_000 {
            let base64 = STANDARD.encode(rand::random::<[u8; 48]>());
            let hex: String = rand::random::<[u8; 32]>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            for secret in [&base64, &hex, &random_secret()] {
                assert_eq!(guessable(secret), None, "{secret}");
            }
        }
    }

    #[test]
    fn jwt_secret_alias_and_minimum_length() {
        let long = SECRET.to_owned();
        let c = config(&[("JWT_SECRET", long.as_str())]).unwrap();
        assert!(!c.tokens.secret_generated);
        assert_eq!(c.tokens.secret.expose_secret(), long);
        let err = config(&[("JWT_SECRET_KEY", "short")]).unwrap_err();
        assert_eq!(err.var, "JWT_SECRET_KEY");
        assert_eq!(
            err.to_string(),
            "invalid JWT_SECRET_KEY: must be at least 32 bytes, got 5"
        );
        assert_eq!(
            config(&[("JWT_SECRET", "short")]).unwrap_err().var,
            "JWT_SECRET"
        );
    }

    #[test]
    fn every_bad_value_names_its_variable() {
        let cases: &[(&str, &str)] = &[
            ("PORT", "80a"),
            ("PORT", "70000"),
            ("BCRYPT_ROUNDS", "3"),
            ("BCRYPT_ROUNDS", "32"),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", "0"),
            ("REFRESH_TOKEN_EXPIRE_DAYS", "x"),
            ("JWT_ALGORITHM", "HS512"),
            ("JWT_ALGORITHM", "none"),
            ("JWT_ALGORITHM", "rs256"),
            ("JWT_PRIVATE_KEY_FILE", "/nonexistent/key.pem"),
            ("JWT_PUBLIC_KEY_FILES", "/nonexistent/key.pub.pem"),
            ("REVOCATION_FEED_TOKENS", "short"),
            ("HOST", "not a host"),
            ("LOG_LEVEL", "loud=["),
            ("LOG_LEVEL", "verbose"),
            ("LOG_LEVEL", "sqlx=loud"),
            ("LOG_FORMAT", "xml"),
            ("CORS_ORIGINS", "localhost:3000"),
            ("LOGIN_MAX_ATTEMPTS", "-1"),
            ("LOGIN_WINDOW_MINUTES", "0"),
            ("LOCKOUT_MINUTES", "many"),
            ("RATE_LIMIT_PER_SECOND", "1.5"),
            ("RATE_LIMIT_BURST", "-2"),
            ("LOGIN_MAX_FAILURES_PER_IP", "x"),
            ("MAX_SESSIONS_PER_USER", "0"),
            ("TRUSTED_PROXIES", "10.0.0.0/33"),
            ("TRUSTED_PROXIES", "0.0.0.0/0"),
            ("TRUSTED_PROXIES", "10.0.0.1, ::/0"),
            ("TRUSTED_PROXIES", "10.0.0.0/7"),
            ("TRUSTED_PROXIES", "2001:db8::/31"),
            ("REFRESH_REUSE_GRACE_SECONDS", "-1"),
            ("REFRESH_TOKEN_ROTATION", "sometimes"),
            ("PASSWORD_HASH_MAX_QUEUE", "-1"),
            ("JWT_LEEWAY_SECONDS", "soon"),
            ("DATABASE_MAX_CONNECTIONS", "0"),
            ("HEADER_READ_TIMEOUT_SECONDS", "0"),
            ("IDLE_TIMEOUT_SECONDS", "0"),
            ("IPV6_PREFIX_LENGTH", "129"),
            ("MIGRATE_ON_START", "sometimes"),
            ("JWT_ACCEPT_HS256", "maybe"),
            ("EMAIL_VERIFICATION", "sometimes"),
            ("EMAIL_VERIFY_URL", "verify"),
            ("EMAIL_VERIFY_TOKEN_HOURS", "0"),
            ("METRICS_ADDR", "9090"),
            ("MAX_CONNECTIONS", "none"),
            ("MAX_CONNECTIONS_PER_IP", "-1"),
            ("DATABASE_URL", "mysql://db"),
            ("DATABASE_LOCK_TIMEOUT_SECONDS", "0"),
            ("DATABASE_STATEMENT_TIMEOUT_SECONDS", "30"),
        ];
        for (var, value) in cases {
            let err = config(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, *var, "{var}={value}");
            assert!(
                err.to_string().starts_with(&format!("invalid {var}: ")),
                "{err}"
            );
        }
        assert_eq!(
            config(&[("PORT", "80a")]).unwrap_err().to_string(),
            r#"invalid PORT: expected an integer 0-65535, got "80a""#
        );
    }

    #[test]
    fn mail_urls_parse_and_never_repeat_a_password() {
        use secrecy::ExposeSecret as _;
        let mail = |url: &str, from: Option<&str>| {
            let mut pairs = vec![("MAIL_URL", url)];
            if let Some(from) = from {
                pairs.push(("MAIL_FROM", from));
            }
            config(&pairs).map(|c| c.mail)
        };
        assert!(matches!(
            config(&[]).unwrap().mail.transport,
            MailTransport::Log
        ));
        let from = Some("Shop <no-reply@shop.example.com>");
        let MailTransport::Smtp(smtp) = mail("smtp://u%40x:p%3Ass@mail.example.com", from)
            .unwrap()
            .transport
        else {
            panic!("smtp");
        };
        assert_eq!(
            (smtp.host.as_str(), smtp.port, smtp.tls),
            ("mail.example.com", 587, SmtpTls::StartTls)
        );
        let (user, pass) = smtp.credentials.clone().unwrap();
        assert_eq!((user.as_str(), pass.expose_secret()), ("u@x", "p:ss"));
        assert!(!format!("{smtp:?}").contains("p:ss"));
        let MailTransport::Smtp(smtps) = mail("smtps://mail.example.com", from).unwrap().transport
        else {
            panic!("smtps");
        };
        assert_eq!((smtps.port, smtps.tls), (465, SmtpTls::Implicit));
        let MailTransport::Smtp(sink) =
            mail("smtp://mailpit:1025?tls=off", from).unwrap().transport
        else {
            panic!("sink");
        };
        assert_eq!(
            (sink.port, sink.tls, sink.credentials.is_none()),
            (1025, SmtpTls::Off, true)
        );
        // MAIL_FROM is required with SMTP, and must be a mailbox.
        assert_eq!(mail("smtp://h", None).unwrap_err().var, "MAIL_FROM");
        assert_eq!(
            mail("smtp://h", Some("not an address")).unwrap_err().var,
            "MAIL_FROM"
        );
        // Bad URLs name the variable and never echo a password.
        for bad in [
            "http://user:hunter2@mail.example.com",
            "smtp://user:hunter2@mail.example.com?tls=maybe",
            "smtps://user:hunter2@mail.example.com?tls=off",
            "smtp://user:hunter2@",
            "not a url hunter2",
        ] {
            let err = mail(bad, from).unwrap_err();
            assert_eq!(err.var, "MAIL_URL", "{bad}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        assert_eq!(
            config(&[("PASSWORD_RESET_URL", "shop/reset")])
                .unwrap_err()
                .var,
            "PASSWORD_RESET_URL"
        );
    }

    #[test]
    fn every_boolean_takes_the_same_words() {
        for (raw, expected) in [
            ("true", true),
            ("1", true),
            ("yes", true),
            ("ON", true),
            ("false", false),
            ("0", false),
            ("No", false),
            ("off", false),
        ] {
            let c = config(&[("MIGRATE_ON_START", raw), ("REFRESH_TOKEN_ROTATION", raw)]).unwrap();
            assert_eq!(c.database.migrate_on_start, expected, "{raw}");
            let rotation = if expected {
                RotationMode::On
            } else {
                RotationMode::Off
            };
            assert_eq!(c.tokens.rotation, rotation, "{raw}");
        }
        for var in ["MIGRATE_ON_START", "REFRESH_TOKEN_ROTATION"] {
            let err = config(&[(var, "enabled")]).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "invalid {var}: expected true/false, 1/0, yes/no or on/off, got \"enabled\""
                )
            );
        }
    }

    #[test]
    fn serving_postgres_needs_a_shared_secret() {
        let pg = config(&[("DATABASE_URL", "postgres://u@h/db")]).unwrap();
        assert_eq!(pg.check_for_serving().unwrap_err().var, "JWT_SECRET_KEY");
        let pg = config(&[
            ("DATABASE_URL", "postgres://u@h/db"),
            ("MAIL_URL", "log"),
            ("JWT_SECRET_KEY", SECRET),
        ]);
        assert!(pg.unwrap().check_for_serving().is_ok());
        let no_mail = config(&[
            ("DATABASE_URL", "postgres://u@h/db"),
            ("JWT_SECRET_KEY", SECRET),
        ]);
        assert_eq!(
            no_mail.unwrap().check_for_serving().unwrap_err().var,
            "MAIL_URL"
        );
        assert!(
            config(&[]).unwrap().check_for_serving().is_ok(),
            "SQLite try-out"
        );
    }

    #[test]
    fn log_levels_are_names_in_any_case_or_directives() {
        for (raw, expected) in [
            ("WARNING", "warn"),
            ("warning", "warn"),
            ("Info", "info"),
            ("debug", "debug"),
            ("info,auth_service=DEBUG", "info,auth_service=debug"),
            ("warn,audit=info", "warn,audit=info"),
        ] {
            assert_eq!(
                config(&[("LOG_LEVEL", raw)]).unwrap().log.level,
                expected,
                "{raw}"
            );
        }
    }

    #[test]
    fn cors_star_and_trusted_proxies_parse() {
        let c = config(&[
            ("CORS_ORIGINS", "*"),
            (
                "TRUSTED_PROXIES",
                "10.0.0.0/8, 127.0.0.1,::1, 2001:db8::/32",
            ),
        ])
        .unwrap();
        assert_eq!(c.server.cors_origins, CorsOrigins::Any);
        assert_eq!(c.limits.trusted_proxies.len(), 4);
        assert!(c.limits.trusted_proxies[1].contains(&"127.0.0.1".parse::<IpAddr>().unwrap()));
    }
}
