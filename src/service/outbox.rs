//! The outbox worker: one per process, the one owner of sending what the service queued.
//!
//! [`Outbox::new`] builds the transport `MAIL_URL` names, [`Outbox::start`] runs the worker as
//! a [`Background`] task, and the background's shutdown stops it once the message it is sending
//! is done. The worker claims due messages with a lease, [`LANES`] at a time, sends them and
//! marks them sent; a failure is retried with exponential backoff and jitter until
//! `MAIL_MAX_RETRY_HOURS`, then the message fails with an ERROR line that names neither the
//! address nor the link. Several replicas share the outbox: each message is sent once; one
//! killed mid-send leaves its lease to run out, and another sends the message then.
//!
//! Between drains the worker sleeps until the next message is due (a read of the outbox), this
//! process queues one, or [`RECHECK`] passes; it claims (a write transaction) only when that
//! read says a message is due: an idle outbox costs reads, never a write transaction.
//!
//! Webhook events (`webhooks.rs`) are the second kind: the same worker follows one queue per
//! endpoint beside the mail's, each with its own claim, lanes and sleep, so an endpoint that
//! hangs holds back neither the mail nor the other endpoints.

use std::{
    sync::{Arc, Weak},
    time::Duration as StdDuration,
};

use chrono::{DateTime, Duration, Utc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::{
    AuthService, Inner,
    recovery::new_token,
    webhooks::{Endpoint, Webhooks},
};
use crate::{
    background::Background,
    config::{MailConfig, WebhookConfig},
    mail_transport::{self, Mailer, SendError},
    store::{DeliveryOutcome, MailOutcome, MailTemplate, OutboxMail, StoreError},
};

/// How long a claimed message is reserved for the worker that claimed it. Each message is
/// claimed on its own, just before it is sent, and its send is cut at [`SEND_WITHIN`]: the
/// lease always covers the work it guards, so a live worker always finishes first, and a dead
/// one's message waits no longer.
const LEASE: Duration = Duration::seconds(30);

/// The longest one send may take (connection, every SMTP command, the data), well inside
/// [`LEASE`]; a send cut here is retried.
const SEND_WITHIN: StdDuration = StdDuration::from_secs(25);

/// The longest the worker sleeps without looking at the outbox (a read): a message another
/// process queued (a replica, an admin command) is found within it. A message this process
/// queues wakes the worker at once, and one due later (a retry) wakes it when due.
const RECHECK: StdDuration = StdDuration::from_secs(1);

/// The shortest nap between two looks, so a message due but claimed elsewhere (a replica's
/// claim in flight) is not polled in a spin.
const NAP: StdDuration = StdDuration::from_millis(100);

/// Messages one process sends at once (lettre's pool keeps up to this many SMTP connections).
const LANES: usize = 4;

/// The outbox worker, its mail transport and its webhook endpoints.
pub struct Outbox {
    mailer: Mailer,
    webhooks: Option<Webhooks>,
}

/// One queue the worker follows: the mail, or the webhook rows of one endpoint (each endpoint
/// its own, so one that hangs or is down never holds back the mail or the others).
#[derive(Debug, Clone, Copy)]
enum Queue {
    Mail,
    /// The endpoint at this index of `WEBHOOK_URLS`.
    Webhooks(usize),
}

impl Outbox {
    /// The worker for `MAIL_URL` and `WEBHOOK_URLS`, not started.
    ///
    /// # Errors
    /// When the transport cannot be built (a malformed `MAIL_URL`) or the webhook client
    /// cannot.
    pub fn new(mail: &MailConfig, webhooks: &WebhookConfig) -> anyhow::Result<Self> {
        Ok(Self {
            mailer: Mailer::new(mail)?,
            webhooks: Webhooks::new(webhooks)?,
        })
    }

    /// Starts the worker in `background`, where shutdown stops it.
    pub fn start(self: &Arc<Self>, auth: &AuthService, background: &Background) {
        if matches!(self.mailer, Mailer::Log) {
            tracing::warn!(
                "MAIL_URL is log: mails (reset links included) are logged at INFO on target \
                 mail, not sent; set MAIL_URL and MAIL_FROM before anyone relies on them"
            );
        }
        let outbox = Arc::clone(self);
        let service = Arc::downgrade(&auth.0);
        background.spawn_with("outbox", move |stop| outbox.run(service, stop));
    }

    /// Follows every queue until `stop`.
    async fn run(self: Arc<Self>, service: Weak<Inner>, stop: CancellationToken) {
        let endpoints = self.webhooks.as_ref().map_or(0, |w| w.endpoints().len());
        let queues = std::iter::once(Queue::Mail).chain((0..endpoints).map(Queue::Webhooks));
        futures_util::future::join_all(
            queues.map(|queue| self.follow(queue, Weak::clone(&service), &stop)),
        )
        .await;
    }

    /// Drains `queue`, then sleeps until its next row is due, until `stop`.
    async fn follow(&self, queue: Queue, service: Weak<Inner>, stop: &CancellationToken) {
        let Some(mut wake) = service.upgrade().map(|inner| match queue {
            Queue::Mail => inner.mail_wakeup.subscribe(),
            Queue::Webhooks(_) => inner.webhook_wakeup.subscribe(),
        }) else {
            return;
        };
        while !stop.is_cancelled() {
            let Some(inner) = service.upgrade() else {
                return;
            };
            // Claims (a write transaction) only when a row is due: idle, a look is a read.
            let mut due = self.next_due(&inner, queue).await;
            if due.is_some_and(|due| due <= inner.clock.now()) {
                self.drain(&inner, queue, stop).await;
                due = self.next_due(&inner, queue).await;
            }
            record_pending(&inner, queue).await;
            let nap = due.map_or(RECHECK, |due| until(inner.clock.now(), due));
            drop(inner);
            tokio::select! {
                () = tokio::time::sleep(nap) => {}
                _ = wake.changed() => {}
                () = stop.cancelled() => {}
            }
        }
    }

    /// The endpoint a webhook queue serves (`None` for mail, or a stopped endpoint).
    fn endpoint(&self, queue: Queue) -> Option<(&Webhooks, &Endpoint)> {
        let Queue::Webhooks(index) = queue else {
            return None;
        };
        let webhooks = self.webhooks.as_ref()?;
        let endpoint = webhooks.endpoints().get(index)?;
        (!endpoint.stopped()).then_some((webhooks, endpoint))
    }

    /// When the next row of `queue` falls due, if one is queued (`None` also when the outbox
    /// cannot be read, or the endpoint was stopped: the worker looks again after
    /// [`RECHECK`]).
    async fn next_due(&self, inner: &Inner, queue: Queue) -> Option<DateTime<Utc>> {
        let due = match (queue, self.endpoint(queue)) {
            (Queue::Mail, _) => inner.store.next_mail_due().await,
            (Queue::Webhooks(_), Some((_, endpoint))) => {
                inner.store.next_webhook_due(&endpoint.url).await
            }
            (Queue::Webhooks(_), None) => Ok(None),
        };
        match due {
            Ok(due) => due,
            // An outage is logged once when it starts and once when it ends, by the revocation
            // follower; the worker only looks again.
            Err(StoreError::Unavailable(_)) => None,
            Err(err) => {
                tracing::warn!(
                    error = %crate::error_chain::error_chain(&err),
                    "the outbox cannot be read; retrying"
                );
                None
            }
        }
    }

    /// Sends every row of `queue` due now.
    async fn drain(&self, inner: &Inner, queue: Queue, stop: &CancellationToken) {
        match (queue, self.endpoint(queue)) {
            (Queue::Mail, _) => drain_mail(inner, &self.mailer, stop).await,
            (Queue::Webhooks(_), Some((webhooks, endpoint))) => {
                drain_webhooks(inner, webhooks, endpoint, stop).await;
            }
            (Queue::Webhooks(_), None) => {}
        }
    }
}

/// How long to sleep from `now` until `due`, between [`NAP`] and [`RECHECK`].
fn until(now: DateTime<Utc>, due: DateTime<Utc>) -> StdDuration {
    (due - now).to_std().unwrap_or_default().clamp(NAP, RECHECK)
}

/// Sends every message due now, [`LANES`] at a time: each lane claims one message (password
/// resets first), sends it, and claims the next, until none is due or `stop`. One claim comes
/// first, so a wake-up that finds nothing claimable (taken by another replica meanwhile) costs
/// one claim, not one per lane.
async fn drain_mail(inner: &Inner, mailer: &Mailer, stop: &CancellationToken) {
    if let Some(first) = claim_one(inner).await {
        let lanes = std::iter::once(Some(first))
            .chain(std::iter::repeat_with(|| None).take(LANES - 1))
            .map(|first| lane(inner, mailer, first, stop));
        futures_util::future::join_all(lanes).await;
    }
}

/// Delivers every webhook row of `endpoint` due now, [`LANES`] at a time, as [`drain_mail`]
/// does; a lane stops claiming once `stop` is signalled or a 410 stopped the endpoint.
async fn drain_webhooks(
    inner: &Inner,
    webhooks: &Webhooks,
    endpoint: &Endpoint,
    stop: &CancellationToken,
) {
    let claim = || async {
        let now = inner.clock.now();
        if stop.is_cancelled() || endpoint.stopped() {
            return None;
        }
        let row = inner
            .store
            .claim_webhook(&endpoint.url, now, now + LEASE)
            .await
            .inspect_err(|err| {
                tracing::debug!(
                    error = %crate::error_chain::error_chain(err),
                    "the webhook outbox cannot be read; retrying"
                );
            })
            .ok()
            .flatten()?;
        // A 410 answered another lane while this claim waited for the database: the row goes
        // back, due as it was, and nothing more is sent here.
        if endpoint.stopped() {
            let released = DeliveryOutcome::RetryAt(now);
            if let Err(err) = inner.store.finish_webhook(row.id, released, now).await {
                tracing::debug!(
                    error = %crate::error_chain::error_chain(&err),
                    "a webhook could not be released; its lease runs out"
                );
            }
            return None;
        }
        Some(row)
    };
    if let Some(first) = claim().await {
        let lanes = std::iter::once(Some(first))
            .chain(std::iter::repeat_with(|| None).take(LANES - 1))
            .map(|mut first| async move {
                while let Some(row) = match first.take() {
                    Some(row) => Some(row),
                    None => claim().await,
                } {
                    let span = tracing::info_span!(
                        target: crate::telemetry::traces::ROOT_SPANS,
                        parent: None,
                        "webhook send",
                        otel.kind = "client",
                        webhook.r#type = %row.event_type,
                        http.response.status_code = tracing::field::Empty,
                        otel.status_code = tracing::field::Empty,
                    );
                    webhooks
                        .attempt(inner, endpoint, row)
                        .instrument(span)
                        .await;
                }
            });
        futures_util::future::join_all(lanes).await;
    }
}

/// The `mail_outbox_pending` gauge (the mail queue) or `webhook_outbox_pending` (the first
/// endpoint's queue), as the outbox stands (every replica reports the shared count).
async fn record_pending(inner: &Inner, queue: Queue) {
    let (gauge, pending) = match queue {
        Queue::Mail => ("mail_outbox_pending", inner.store.pending_mail().await),
        Queue::Webhooks(0) => (
            "webhook_outbox_pending",
            inner.store.pending_webhooks().await,
        ),
        Queue::Webhooks(_) => return,
    };
    if let Ok(pending) = pending {
        #[expect(clippy::cast_precision_loss, reason = "a count of messages")]
        metrics::gauge!(gauge).set(pending as f64);
    }
}

/// One lane of [`drain_mail`], starting with `first` if it has one; it claims no more once
/// `stop` is signalled.
async fn lane(
    inner: &Inner,
    mailer: &Mailer,
    mut first: Option<OutboxMail>,
    stop: &CancellationToken,
) {
    while let Some(mail) = match first.take() {
        Some(mail) => Some(mail),
        None if stop.is_cancelled() => None,
        None => claim_one(inner).await,
    } {
        let span = tracing::info_span!(
            target: crate::telemetry::traces::ROOT_SPANS,
            parent: None,
            "mail send",
            otel.kind = "client",
            mail.template = mail.template.as_str(),
        );
        attempt(inner, mailer, mail).instrument(span).await;
    }
}

/// The next due message, claimed with a lease that covers one send; `None` when none is due
/// or the outbox cannot be read.
async fn claim_one(inner: &Inner) -> Option<OutboxMail> {
    let now = inner.clock.now();
    match inner.store.claim_mail(now, now + LEASE, 1).await {
        Ok(mut claimed) => claimed.pop(),
        // An outage is logged once when it starts and once when it ends, by the revocation
        // follower; the worker only retries.
        Err(err @ StoreError::Unavailable(_)) => {
            tracing::debug!(
                error = %crate::error_chain::error_chain(&err),
                "the mail outbox cannot be read; retrying"
            );
            None
        }
        Err(err) => {
            tracing::warn!(
                error = %crate::error_chain::error_chain(&err),
                "the mail outbox cannot be read; retrying"
            );
            None
        }
    }
}

/// The link of a message, made as it is sent.
enum Issued {
    /// The link to put in the message (none for a notification).
    Link(String),
    /// The token it was to carry was voided since it was queued: the message must not go.
    Void,
}

/// The link of `mail`, with a token issued now: a fresh token's hash replaces the one its
/// queueing stored (if that is still unused: a newer token, a password change or the user's
/// deletion voids it), under the user's lock, and the token itself exists only in this
/// message. A message queued before links were issued at send time carries its link.
async fn issue_link(
    inner: &Inner,
    mail: &OutboxMail,
    template: MailTemplate,
) -> Result<Issued, StoreError> {
    let settings = &inner.mail;
    let (base, ttl) = match template {
        MailTemplate::PasswordReset => (
            &settings.reset_url,
            Duration::minutes(settings.reset_minutes.into()),
        ),
        MailTemplate::VerifyEmail => (
            &settings.verify_url,
            Duration::hours(settings.verify_hours.into()),
        ),
        MailTemplate::PasswordChanged
        | MailTemplate::MfaEnrolled
        | MailTemplate::MfaRemoved
        | MailTemplate::RecoveryCodeUsed
        | MailTemplate::RecoveryCodesRegenerated
        | MailTemplate::PasskeyAdded
        | MailTemplate::PasskeyRemoved => return Ok(Issued::Link(String::new())),
    };
    if let Some(link) = &mail.link {
        return Ok(Issued::Link(link.clone()));
    }
    let Some(user_id) = mail.user_id else {
        return Ok(Issued::Void);
    };
    let (token, token_hash) = new_token();
    let now = inner.clock.now();
    let issued = inner
        .store
        .reissue_token(user_id, template, &token_hash, now + ttl, now)
        .await?;
    if !issued {
        return Ok(Issued::Void);
    }
    // The base was checked when the message was queued.
    Ok(url::Url::parse_with_params(base, [("token", &token)])
        .map_or(Issued::Void, |link| Issued::Link(link.to_string())))
}

/// One attempt at one claimed message.
async fn attempt(inner: &Inner, mailer: &Mailer, mail: OutboxMail) {
    let settings = &inner.mail;
    let id = mail.id;
    let template = mail.template;
    let outcome = {
        let link = match issue_link(inner, &mail, template).await {
            Ok(Issued::Link(link)) => link,
            Ok(Issued::Void) => {
                // The user reset, changed or had the password set, logged out everywhere,
                // was disabled or deleted since: the link must not go out.
                tracing::info!(
                    mail.id = id,
                    mail.template = mail.template.as_str(),
                    "a queued link was voided before it was sent; dropped"
                );
                finish(inner, id, MailOutcome::Failed).await;
                return;
            }
            Err(err) => {
                // The database: the lease runs out and the message is tried again.
                tracing::warn!(
                    mail.id = id,
                    error = %crate::error_chain::error_chain(&err),
                    "a link could not be issued; retrying"
                );
                return;
            }
        };
        let ctx = mail_transport::Context {
            product: &settings.product,
            link: &link,
            minutes: settings.reset_minutes,
            hours: settings.verify_hours,
        };
        match mail_transport::render(template, ctx) {
            Ok(rendered) => {
                let send = mailer.send(&mail.recipient, &mail.message_id, &rendered);
                tokio::time::timeout(SEND_WITHIN, send)
                    .await
                    .unwrap_or(Err(SendError::TimedOut))
            }
            Err(err) => Err(SendError::Build(err.to_string())),
        }
    };
    let now = inner.clock.now();
    let ended = match outcome {
        Ok(()) => {
            metrics::counter!("mail_sent_total").increment(1);
            MailOutcome::Sent
        }
        Err(err) => {
            let next = now + backoff(mail.attempts);
            let permanent = matches!(&err, SendError::Build(_))
                || matches!(&err, SendError::Smtp(smtp) if smtp.is_permanent());
            if permanent || next > mail.created_at + settings.max_retry {
                metrics::counter!("mail_failed_total").increment(1);
                // Never the address or the link: the template and the cause's kind only.
                tracing::error!(
                    mail.id = id,
                    mail.template = mail.template.as_str(),
                    attempts = mail.attempts,
                    cause = cause(&err),
                    "a mail could not be delivered; giving up"
                );
                MailOutcome::Failed
            } else {
                tracing::warn!(
                    mail.id = id,
                    mail.template = mail.template.as_str(),
                    attempts = mail.attempts,
                    cause = cause(&err),
                    retry_at = %next,
                    "a mail was not delivered; retrying"
                );
                MailOutcome::RetryAt(next)
            }
        }
    };
    finish(inner, id, ended).await;
}

/// Records how an attempt ended.
async fn finish(inner: &Inner, id: i64, outcome: MailOutcome) {
    let now = inner.clock.now();
    if let Err(err) = inner.store.finish_mail(id, outcome, now).await {
        // The lease runs out and the message is tried again (a sent one may then go twice:
        // the one case where at-least-once shows).
        tracing::warn!(
            mail.id = id,
            error = %crate::error_chain::error_chain(&err),
            "a mail's outcome could not be recorded"
        );
    }
}

/// What went wrong, in words that hold no address: the SMTP status code, or the kind.
fn cause(err: &SendError) -> String {
    match err {
        SendError::Build(_) => "the message could not be built".to_owned(),
        SendError::Smtp(smtp) => match smtp.status() {
            Some(code) => format!("SMTP {code}"),
            None if smtp.is_timeout() => "SMTP timeout".to_owned(),
            None => "SMTP connection failed".to_owned(),
        },
        SendError::TimedOut => "the SMTP exchange took too long".to_owned(),
    }
}

/// 30 s after the first failure, doubling up to an hour, with ±20% jitter (so replicas that
/// failed together do not retry together).
fn backoff(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 7)).unwrap_or(0);
    let base = (30_i64 << exponent).min(3600);
    let jitter = 0.8 + 0.4 * rand::random::<f64>();
    #[expect(clippy::cast_possible_truncation, reason = "at most 4320 seconds")]
    Duration::milliseconds((base as f64 * 1000.0 * jitter) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_an_hour_with_jitter() {
        for (attempts, base) in [(1, 30), (2, 60), (3, 120), (8, 3600), (30, 3600)] {
            let delay = backoff(attempts).num_milliseconds();
            assert!(
                (base * 800..=base * 1200).contains(&delay),
                "{attempts}: {delay}"
            );
        }
    }
}
