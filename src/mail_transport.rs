//! Outgoing mail: the messages, rendered from the templates in `templates/mail/` (one file per
//! message, askama, checked at compile time), and the transport `MAIL_URL` names (lettre over
//! tokio and rustls, or the development `log`). The worker that drains the outbox is
//! `service::outbox`.

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::{
        Mailbox, MultiPart,
        header::{HeaderName, HeaderValue},
    },
    transport::smtp::authentication::Credentials,
};
use secrecy::ExposeSecret as _;

use crate::{
    config::{MailConfig, MailTransport, SmtpTls},
    store::MailTemplate,
};

/// How long one SMTP exchange may take before the attempt counts as failed.
const SMTP_TIMEOUT: Duration = Duration::from_secs(15);

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub text: String,
    /// The HTML body.
    pub html: String,
}

/// What the templates are filled with.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// `MAIL_PRODUCT_NAME`.
    pub product: &'a str,
    /// The link, for messages that carry one.
    pub link: &'a str,
    /// `PASSWORD_RESET_TOKEN_MINUTES`.
    pub minutes: u32,
    /// `EMAIL_VERIFY_TOKEN_HOURS`.
    pub hours: u32,
}

/// One message kind: its file in `templates/mail/` holds three blocks (`subject`, `text`,
/// `html`), each rendered by its own askama struct with the message's fields; only the HTML
/// block is HTML-escaped.
macro_rules! message {
    ($module:ident, $path:literal, { $($field:ident: $ty:ty),* }) => {
        mod $module {
            #[derive(askama::Template)]
            #[template(path = $path, block = "subject", escape = "none")]
            #[allow(dead_code, reason = "a subject seldom uses every field of its message")]
            pub(super) struct Subject<'a> { $(pub(super) $field: $ty),* }

            #[derive(askama::Template)]
            #[template(path = $path, block = "text", escape = "none")]
            pub(super) struct Text<'a> { $(pub(super) $field: $ty),* }

            #[derive(askama::Template)]
            #[template(path = $path, block = "html", escape = "html")]
            pub(super) struct Html<'a> { $(pub(super) $field: $ty),* }

            /// The three parts, filled from `ctx`.
            pub(super) fn render(ctx: super::Context<'_>) -> Result<super::Rendered, askama::Error> {
                use askama::Template as _;
                let super::Context { $($field,)* .. } = ctx;
                Ok(super::Rendered {
                    subject: Subject { $($field),* }.render()?.trim().to_owned(),
                    text: Text { $($field),* }.render()?.trim().to_owned(),
                    html: Html { $($field),* }.render()?.trim().to_owned(),
                })
            }
        }
    };
}

message!(password_reset, "mail/password_reset.mail", { product: &'a str, link: &'a str, minutes: u32 });
message!(password_changed, "mail/password_changed.mail", { product: &'a str });
message!(verify_email, "mail/verify_email.mail", { product: &'a str, link: &'a str, hours: u32 });
message!(mfa_enrolled, "mail/mfa_enrolled.mail", { product: &'a str });
message!(mfa_removed, "mail/mfa_removed.mail", { product: &'a str });
message!(recovery_code_used, "mail/recovery_code_used.mail", { product: &'a str });
message!(recovery_codes_regenerated, "mail/recovery_codes_regenerated.mail", { product: &'a str });
message!(passkey_added, "mail/passkey_added.mail", { product: &'a str });
message!(passkey_removed, "mail/passkey_removed.mail", { product: &'a str });

/// Renders `template`.
///
/// # Errors
/// When a template fails to render (it cannot, with the fields above; kept as an error, not a
/// panic).
pub fn render(template: MailTemplate, ctx: Context<'_>) -> Result<Rendered, askama::Error> {
    match template {
        MailTemplate::PasswordReset => password_reset::render(ctx),
        MailTemplate::PasswordChanged => password_changed::render(ctx),
        MailTemplate::VerifyEmail => verify_email::render(ctx),
        MailTemplate::MfaEnrolled => mfa_enrolled::render(ctx),
        MailTemplate::MfaRemoved => mfa_removed::render(ctx),
        MailTemplate::RecoveryCodeUsed => recovery_code_used::render(ctx),
        MailTemplate::RecoveryCodesRegenerated => recovery_codes_regenerated::render(ctx),
        MailTemplate::PasskeyAdded => passkey_added::render(ctx),
        MailTemplate::PasskeyRemoved => passkey_removed::render(ctx),
    }
}

/// Why a message was not handed over.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The recipient or the message could not be built (never retried).
    #[error("the message could not be built: {0}")]
    Build(String),
    /// The server refused it or could not be reached (retried).
    #[error("the SMTP server did not take the message: {0}")]
    Smtp(#[from] lettre::transport::smtp::Error),
    /// The whole send took longer than its worker may hold the message (retried).
    #[error("the SMTP exchange took too long")]
    TimedOut,
}

/// Where messages go.
pub enum Mailer {
    /// `MAIL_URL=log`: logged at INFO on target `mail` (development only).
    Log,
    /// An SMTP server.
    Smtp {
        /// The pooled transport.
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// `MAIL_FROM`.
        from: Mailbox,
    },
}

impl Mailer {
    /// The transport of `config` (no connection is made until the first message).
    ///
    /// # Errors
    /// When `MAIL_FROM` is not a mailbox or the host is not a valid name (config checks both
    /// first).
    pub fn new(config: &MailConfig) -> anyhow::Result<Self> {
        let MailTransport::Smtp(smtp) = &config.transport else {
            return Ok(Self::Log);
        };
        let from: Mailbox = config
            .from
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid MAIL_FROM"))?;
        let builder = match smtp.tls {
            SmtpTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)?,
            SmtpTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host)?,
            SmtpTls::Off => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host),
        };
        let mut builder = builder.port(smtp.port).timeout(Some(SMTP_TIMEOUT));
        if let Some((user, password)) = &smtp.credentials {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(Self::Smtp {
            transport: builder.build(),
            from,
        })
    }

    /// Hands `message` to the transport for `to`, as `Message-ID: <message_id@domain of
    /// MAIL_FROM>` (the same on every attempt) with `Auto-Submitted: auto-generated` (RFC 3834:
    /// no auto-replies).
    ///
    /// # Errors
    /// [`SendError`]; its text never holds the address, the link or the SMTP password.
    pub async fn send(
        &self,
        to: &str,
        message_id: &str,
        message: &Rendered,
    ) -> Result<(), SendError> {
        match self {
            Self::Log => {
                tracing::info!(
                    target: "mail",
                    to,
                    subject = %message.subject,
                    body = %message.text,
                    "mail (MAIL_URL=log: not sent)"
                );
                Ok(())
            }
            Self::Smtp { transport, from } => {
                let to: Mailbox = to
                    .parse()
                    .map_err(|_| SendError::Build("the recipient is not an address".into()))?;
                let email = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .message_id(Some(format!("<{message_id}@{}>", from.email.domain())))
                    .raw_header(HeaderValue::new(
                        HeaderName::new_from_ascii_str("Auto-Submitted"),
                        "auto-generated".to_owned(),
                    ))
                    .subject(message.subject.clone())
                    .multipart(MultiPart::alternative_plain_html(
                        message.text.clone(),
                        message.html.clone(),
                    ))
                    .map_err(|err| SendError::Build(err.to_string()))?;
                transport.send(email).await?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_names_the_product_once_per_part_and_escapes_only_html() {
        let ctx = Context {
            product: "Tom & Jerry's <Shop>",
            link: "https://shop.example.com/p?token=abc&x=1",
            minutes: 30,
            hours: 24,
        };
        for template in MailTemplate::ALL {
            let message = render(template, ctx).unwrap();
            assert_eq!(
                message.subject.matches(ctx.product).count(),
                1,
                "{template:?}"
            );
            assert_eq!(message.text.matches(ctx.product).count(), 1, "{template:?}");
            assert_eq!(
                message
                    .html
                    .matches("Tom &#38; Jerry&#39;s &#60;Shop&#62;")
                    .count(),
                1,
                "{template:?}: {}",
                message.html
            );
            assert!(!message.subject.contains('\n'), "{template:?}");
            if template.has_link() {
                assert!(message.text.contains(ctx.link), "{template:?}");
                assert!(message.html.contains("token=abc&#38;x=1"), "{template:?}");
            }
        }
    }
}
