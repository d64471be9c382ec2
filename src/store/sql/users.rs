//! The users chapter's SQL, for both dialects (see `mod.rs`).

use async_trait::async_trait;

use crate::store::WebhookEvent;

use super::{Db, Dialect};

impl Dialect {
    /// Marks the user's address verified if it was not, inside the caller's transaction, with
    /// its `user.email_verified` event the first time.
    pub(super) async fn verify_address(
        &self,
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), sqlx::Error> {
        let verified = sqlx::query(
            "update users set email_verified_at = $2 where id = $1 and email_verified_at is null",
        )
        .bind(user_id)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if verified == 1 {
            self.record_webhooks(
                tx,
                &[crate::store::WebhookEvent::EmailVerified],
                user_id,
                now,
            )
            .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl crate::store::UserStore for Dialect {
    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn insert_user(
        &self,
        email: &str,
        password_hash: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<crate::store::UserRow, crate::store::StoreError> {
        Ok(sqlx::query_as(concat!(
            r"insert into users (email, password_hash, is_active, created_at, updated_at)
              values ($1, $2, true, $3, $3)
              returning ",
            user_columns!()
        ))
        .bind(email)
        .bind(password_hash)
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn register_user(
        &self,
        email: &str,
        mail_to: &str,
        password_hash: &str,
        now: chrono::DateTime<chrono::Utc>,
        verification: Option<&crate::store::TokenMail>,
    ) -> Result<crate::store::UserRow, crate::store::StoreError> {
        let mut tx = self.begin_write().await?;
        let user: crate::store::UserRow = sqlx::query_as(concat!(
            r"insert into users
                (email, mail_to, password_hash, is_active, created_at, updated_at)
              values ($1, $2, $3, true, $4, $4)
              returning ",
            user_columns!()
        ))
        .bind(email)
        .bind(mail_to)
        .bind(password_hash)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        self.record_webhooks(
            &mut tx,
            &[crate::store::WebhookEvent::Created],
            user.id,
            now,
        )
        .await?;
        // The account is created either way; the mail only while the address has its
        // share left this hour (a user past the cap can ask again later).
        if let Some(verification) = verification
            && Self::count_mail_to(&mut tx, &user.email, now).await?
        {
            Self::insert_user_token(&mut tx, user.id, verification, now).await?;
            Self::queue_mail(&mut tx, user.id, mail_to, &verification.mail, now).await?;
        }
        tx.commit().await?;
        Ok(user)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn find_user_by_email(
        &self,
        email: &str,
    ) -> Result<Option<crate::store::UserRow>, crate::store::StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            user_columns!(),
            " from users where email = $1"
        ))
        .bind(email)
        .fetch_optional(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn find_user_by_id(
        &self,
        id: i64,
    ) -> Result<Option<crate::store::UserRow>, crate::store::StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            user_columns!(),
            " from users where id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn set_user_active(
        &self,
        id: i64,
        active: bool,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        use crate::store::EventKind;
        let mut tx = self.begin_write().await?;
        let Some(was_active) = Self::lock_user(&mut tx, id).await? else {
            return Ok(false);
        };
        if was_active != active {
            let event = if active {
                crate::store::WebhookEvent::Enabled
            } else {
                crate::store::WebhookEvent::Disabled
            };
            self.record_webhooks(&mut tx, &[event], id, now).await?;
        }
        if active {
            sqlx::query("update users set is_active = true, updated_at = $2 where id = $1")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            Self::append_event(&mut tx, EventKind::UserEnabled, id, None, None, now).await?;
        } else {
            let cutoff = crate::store::not_before(now);
            sqlx::query(
                r"update users set is_active = false, updated_at = $2,
                    tokens_not_before = case when tokens_not_before > $3
                      then tokens_not_before else $3 end
                  where id = $1",
            )
            .bind(id)
            .bind(now)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
            Self::void_reset_tokens(&mut tx, id).await?;
            Self::end_user_sessions(&mut tx, id, now, None, cutoff, false).await?;
            Self::append_event(
                &mut tx,
                EventKind::UserDisabled,
                id,
                None,
                Some(cutoff),
                now,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn delete_user(
        &self,
        id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, id).await?.is_none() {
            return Ok(false);
        }
        self.record_webhooks(&mut tx, &[crate::store::WebhookEvent::Deleted], id, now)
            .await?;
        Self::append_event(
            &mut tx,
            crate::store::EventKind::UserDeleted,
            id,
            None,
            None,
            now,
        )
        .await?;
        sqlx::query("delete from users where id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn update_user_email(
        &self,
        id: i64,
        old: &str,
        new: &str,
    ) -> Result<bool, crate::store::StoreError> {
        Ok(
            sqlx::query("update users set email = $3 where id = $1 and email = $2")
                .bind(id)
                .bind(old)
                .bind(new)
                .execute(&self.pool)
                .await?
                .rows_affected()
                == 1,
        )
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn mark_email_verified(
        &self,
        user_id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, user_id).await?.is_none() {
            return Ok(false);
        }
        self.verify_address(&mut tx, user_id, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn rehash_password(
        &self,
        id: i64,
        old_hash: &str,
        new_hash: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        Ok(sqlx::query(
            r"update users set password_hash = $3, updated_at = $4
              where id = $1 and password_hash = $2",
        )
        .bind(id)
        .bind(old_hash)
        .bind(new_hash)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn change_password_by_user(
        &self,
        change: &crate::store::PasswordChange<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, change.user_id).await?.is_none() {
            return Ok(false);
        }
        let email: Option<String> = sqlx::query_scalar(
            r"update users set password_hash = $3, updated_at = $4
              where id = $1 and password_hash = $2
              returning coalesce(mail_to, email)",
        )
        .bind(change.user_id)
        .bind(change.old_hash)
        .bind(change.new_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(email) = email else {
            return Ok(false);
        };
        Self::queue_mail(&mut tx, change.user_id, &email, change.notification, now).await?;
        self.record_webhooks(
            &mut tx,
            &[crate::store::WebhookEvent::PasswordChanged],
            change.user_id,
            now,
        )
        .await?;
        Self::void_reset_tokens(&mut tx, change.user_id).await?;
        // The events are the transaction's last writes (see append_event).
        Self::end_user_sessions(
            &mut tx,
            change.user_id,
            now,
            Some(change.keep),
            change.live_tokens_since,
            // No user-wide cut-off here (the caller's session lives on): a session
            // from before `last_used_at` may hold a live token.
            true,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn set_password_by_admin(
        &self,
        user_id: i64,
        new_hash: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, user_id).await?.is_none() {
            return Ok(false);
        }
        sqlx::query("update users set password_hash = $2, updated_at = $3 where id = $1")
            .bind(user_id)
            .bind(new_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        self.record_webhooks(
            &mut tx,
            &[WebhookEvent::PasswordChanged, WebhookEvent::SessionsEnded],
            user_id,
            now,
        )
        .await?;
        Self::log_out_everywhere(&mut tx, user_id, now).await?;
        tx.commit().await?;
        Ok(true)
    }
}
