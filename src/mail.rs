//! Outgoing mail: the messages, rendered from the templates in `templates/mail/` (askama,
//! checked at compile time), and the transport `MAIL_URL` names (lettre over tokio and rustls,
//! or the development `log`). The outbox and the worker that drains it are in
//! `service::mail`.

use std::time::Duration;

use askama::Template;
use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
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

#[derive(Template)]
#[template(path = "mail/password_reset.txt")]
struct PasswordResetText<'a> {
    product: &'a str,
    link: &'a str,
    minutes: u32,
}

#[derive(Template)]
#[template(path = "mail/password_reset.html")]
struct PasswordResetHtml<'a> {
    product: &'a str,
    link: &'a str,
    minutes: u32,
}

#[derive(Template)]
#[template(path = "mail/verify_email.txt")]
struct VerifyEmailText<'a> {
    product: &'a str,
    link: &'a str,
    hours: u32,
}

#[derive(Template)]
#[template(path = "mail/verify_email.html")]
struct VerifyEmailHtml<'a> {
    product: &'a str,
    link: &'a str,
    hours: u32,
}

#[derive(Template)]
#[template(path = "mail/password_changed.txt")]
struct PasswordChangedText<'a> {
    product: &'a str,
}

#[derive(Template)]
#[template(path = "mail/password_changed.html")]
struct PasswordChangedHtml<'a> {
    product: &'a str,
}

/// Renders `template`. The text template's first line is `Subject: ...`.
///
/// # Errors
/// When a template fails to render (it cannot, with the fields above; kept as an error, not a
/// panic).
pub fn render(template: MailTemplate, ctx: Context<'_>) -> Result<Rendered, askama::Error> {
    let Context {
        product,
        link,
        minutes,
        hours,
    } = ctx;
    let (text, html) = match template {
        MailTemplate::PasswordReset => (
            PasswordResetText {
                product,
                link,
                minutes,
            }
            .render()?,
            PasswordResetHtml {
                product,
                link,
                minutes,
            }
            .render()?,
        ),
        MailTemplate::VerifyEmail => (
            VerifyEmailText {
                product,
                link,
                hours,
            }
            .render()?,
            VerifyEmailHtml {
                product,
                link,
                hours,
            }
            .render()?,
        ),
        MailTemplate::PasswordChanged => (
            PasswordChangedText { product }.render()?,
            PasswordChangedHtml { product }.render()?,
        ),
    };
    let (subject, body) = text.split_once('\n').unwrap_or((&text, ""));
    Ok(Rendered {
        subject: subject
            .strip_prefix("Subject:")
            .unwrap_or(subject)
            .trim()
            .to_owned(),
        text: body.trim_start_matches('\n').to_owned(),
        html,
    })
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

    /// Hands `message` to the transport for `to`.
    ///
    /// # Errors
    /// [`SendError`]; its text never holds the address, the link or the SMTP password.
    pub async fn send(&self, to: &str, message: &Rendered) -> Result<(), SendError> {
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
