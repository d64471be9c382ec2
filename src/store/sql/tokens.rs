//! The tokens chapter's SQL, for both dialects (see `mod.rs`).

use async_trait::async_trait;

use crate::store::WebhookEvent;

use super::{Db, Dialect};

impl Dialect {
    /// Voids the user's outstanding password-reset links, inside a transaction that
    /// holds the user's lock: after a password change, a logout everywhere, a reset or
    /// an admin's action, a link mailed before it must not set a password.
    pub(super) async fn void_reset_tokens(
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("delete from user_tokens where user_id = $1 and kind = $2")
            .bind(user_id)
            .bind(crate::store::MailTemplate::PasswordReset.as_str())
            .execute(&mut **tx)
            .await?;
        // A password sign-in's pending second-factor challenge was proved with the password
        // that is changing (or whose sessions all end): it goes too.
        sqlx::query("delete from mfa_challenges where user_id = $1")
            .bind(user_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
    /// Stores a one-time token (its kind is its mail's template), deleting the user's
    /// older ones of that kind: a newer token voids them.
    pub(super) async fn insert_user_token(
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
        token: &crate::store::TokenMail,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), sqlx::Error> {
        let kind = token.mail.template.as_str();
        sqlx::query("delete from user_tokens where user_id = $1 and kind = $2")
            .bind(user_id)
            .bind(kind)
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            r"insert into user_tokens (token_hash, kind, user_id, created_at, expires_at)
              values ($1, $2, $3, $4, $5)",
        )
        .bind(&token.token_hash[..])
        .bind(kind)
        .bind(user_id)
        .bind(now)
        .bind(token.expires_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
    /// Uses a one-time token of `kind` if it is unused and unexpired at `now`, under the
    /// locking rule: the user's row is locked first (a queueing transaction locks it
    /// before it deletes older tokens, so the other order could deadlock), then the atomic
    /// consume (of two concurrent uses, one updates the row). Its user and whether the
    /// user is active, or `None`.
    pub(super) async fn consume_token(
        tx: &mut sqlx::Transaction<'_, Db>,
        token_hash: &[u8; 32],
        kind: crate::store::MailTemplate,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(i64, bool)>, sqlx::Error> {
        let owner: Option<i64> = sqlx::query_scalar(
            "select user_id from user_tokens where token_hash = $1 and kind = $2",
        )
        .bind(&token_hash[..])
        .bind(kind.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        let Some(owner) = owner else {
            return Ok(None);
        };
        let Some(active) = Self::lock_user(tx, owner).await? else {
            return Ok(None);
        };
        let consumed: Option<i64> = sqlx::query_scalar(
            r"update user_tokens set used_at = $3
              where token_hash = $1 and kind = $2 and used_at is null and expires_at > $3
              returning user_id",
        )
        .bind(&token_hash[..])
        .bind(kind.as_str())
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(consumed.map(|user_id| (user_id, active)))
    }
}

#[async_trait]
impl crate::store::TokenStore for Dialect {
    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn queue_password_reset(
        &self,
        request: &crate::store::ResetRequest<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        let kind = request.token.mail.template;
        let mut tx = self.begin_write().await?;
        let Some((user_id, mail_to)): Option<(i64, String)> =
            sqlx::query_as("select id, coalesce(mail_to, email) from users where email = $1")
                .bind(request.email)
                .fetch_optional(&mut *tx)
                .await?
        else {
            return Ok(false);
        };
        if Self::lock_user(&mut tx, user_id).await? != Some(true) {
            return Ok(false);
        }
        let (last_hour, latest) =
            Self::recent_mail(&mut tx, user_id, kind, now - chrono::Duration::hours(1)).await?;
        if last_hour >= request.per_hour || latest.is_some_and(|at| at > now - request.min_interval)
        {
            return Ok(false);
        }
        if !Self::count_mail_to(&mut tx, request.email, now).await? {
            return Ok(false);
        }
        let token = &request.token;
        Self::insert_user_token(&mut tx, user_id, token, now).await?;
        Self::queue_mail(&mut tx, user_id, &mail_to, &token.mail, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn queue_email_verification(
        &self,
        user_id: i64,
        verification: &crate::store::TokenMail,
        min_interval: chrono::Duration,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        let kind = verification.mail.template;
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, user_id).await? != Some(true) {
            return Ok(false);
        }
        let (email, mail_to, verified): (String, String, Option<chrono::DateTime<chrono::Utc>>) =
            sqlx::query_as(
                r"select email, coalesce(mail_to, email), email_verified_at
                  from users where id = $1",
            )
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
        let (recent, _) = Self::recent_mail(&mut tx, user_id, kind, now - min_interval).await?;
        if verified.is_some() || recent > 0 || !Self::count_mail_to(&mut tx, &email, now).await? {
            return Ok(false);
        }
        Self::insert_user_token(&mut tx, user_id, verification, now).await?;
        Self::queue_mail(&mut tx, user_id, &mail_to, &verification.mail, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn reissue_token(
        &self,
        user_id: i64,
        kind: crate::store::MailTemplate,
        token_hash: &[u8; 32],
        expires_at: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, user_id).await? != Some(true) {
            return Ok(false);
        }
        let issued = sqlx::query(
            r"update user_tokens set token_hash = $3, expires_at = $4, created_at = $5
              where user_id = $1 and kind = $2 and used_at is null",
        )
        .bind(user_id)
        .bind(kind.as_str())
        .bind(&token_hash[..])
        .bind(expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(issued)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn token_is_usable(
        &self,
        token_hash: &[u8; 32],
        kind: crate::store::MailTemplate,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            r"select user_id from user_tokens
              where token_hash = $1 and kind = $2 and used_at is null and expires_at > $3",
        )
        .bind(&token_hash[..])
        .bind(kind.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn reset_password_by_token(
        &self,
        token_hash: &[u8; 32],
        new_hash: &str,
        notification: &crate::store::NewMail,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<i64>, crate::store::StoreError> {
        let mut tx = self.begin_write().await?;
        let kind = crate::store::MailTemplate::PasswordReset;
        let Some((user_id, active)) = Self::consume_token(&mut tx, token_hash, kind, now).await?
        else {
            return Ok(None);
        };
        if !active {
            // Rolled back: a disabled user's token is not spent either.
            return Ok(None);
        }
        self.verify_address(&mut tx, user_id, now).await?;
        let (email, mail_to): (String, String) = sqlx::query_as(
            r"update users set password_hash = $2, updated_at = $3
              where id = $1
              returning email, coalesce(mail_to, email)",
        )
        .bind(user_id)
        .bind(new_hash)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        // The email's lockout counter (its key is the email itself).
        sqlx::query("delete from login_attempts where key = $1")
            .bind(&email)
            .execute(&mut *tx)
            .await?;
        Self::queue_mail(&mut tx, user_id, &mail_to, notification, now).await?;
        self.record_webhooks(
            &mut tx,
            &[WebhookEvent::PasswordChanged, WebhookEvent::SessionsEnded],
            user_id,
            now,
        )
        .await?;
        // The event is the transaction's last write (see append_event).
        Self::log_out_everywhere(&mut tx, user_id, now).await?;
        tx.commit().await?;
        Ok(Some(user_id))
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn verify_email(
        &self,
        token_hash: &[u8; 32],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<i64>, crate::store::StoreError> {
        let mut tx = self.begin_write().await?;
        let kind = crate::store::MailTemplate::VerifyEmail;
        let Some((user_id, _active)) = Self::consume_token(&mut tx, token_hash, kind, now).await?
        else {
            return Ok(None);
        };
        self.verify_address(&mut tx, user_id, now).await?;
        tx.commit().await?;
        Ok(Some(user_id))
    }
}
