//! The second-factor chapter's SQL, for both dialects (see `mod.rs`).

use async_trait::async_trait;

use super::{Db, Dialect};
use crate::store::{Confirmation, FactorRow, RefreshTokenRow, StoreError};

impl Dialect {
    /// Uses a sign-in challenge of `user_id`, once, inside the transaction of the session it
    /// starts; whether it was unused and unexpired at `now`.
    pub(super) async fn use_challenge(
        tx: &mut sqlx::Transaction<'_, Db>,
        token_hash: &[u8; 32],
        user_id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query(
            r"update mfa_challenges set used_at = $3
              where token_hash = $1 and user_id = $2 and used_at is null and expires_at > $3",
        )
        .bind(&token_hash[..])
        .bind(user_id)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1)
    }

    /// The address a user's mail goes to.
    async fn mail_address(
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
    ) -> Result<String, sqlx::Error> {
        sqlx::query_scalar("select coalesce(mail_to, email) from users where id = $1")
            .bind(user_id)
            .fetch_one(&mut **tx)
            .await
    }

    /// Queues a security notification for a user (never capped), in the caller's transaction.
    pub(super) async fn notify(
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
        mail: &crate::store::NewMail,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), sqlx::Error> {
        let address = Self::mail_address(tx, user_id).await?;
        Self::queue_mail(tx, user_id, &address, mail, now).await
    }

    /// How many confirmed factors the user has, inside the caller's transaction.
    async fn confirmed_count(
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
    ) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "select count(*) from mfa_factors where user_id = $1 and confirmed_at is not null",
        )
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await
    }

    /// Replaces the user's recovery codes with `code_hashes`.
    async fn store_recovery_codes(
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
        code_hashes: &[[u8; 32]],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("delete from mfa_recovery_codes where user_id = $1")
            .bind(user_id)
            .execute(&mut **tx)
            .await?;
        for hash in code_hashes {
            sqlx::query(
                r"insert into mfa_recovery_codes (user_id, code_hash, created_at)
                  values ($1, $2, $3)",
            )
            .bind(user_id)
            .bind(&hash[..])
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Raises a live session of `user_id` to `methods` (added to its own) and records a use at
    /// `now` (the `iat` of the access token about to be signed); its current refresh token and
    /// its sign-in, or `None` when it is not a live session of the user.
    async fn raise_session(
        tx: &mut sqlx::Transaction<'_, Db>,
        session: uuid::Uuid,
        user_id: i64,
        methods: crate::assurance::Methods,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(RefreshTokenRow, crate::assurance::Assurance)>, StoreError> {
        let current: Option<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            r"select amr, created_at from sessions
              where id = $1 and user_id = $2 and revoked_at is null and expires_at > $3",
        )
        .bind(session)
        .bind(user_id)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(current) = current else {
            return Ok(None);
        };
        let mut assurance = Self::assurance(current)?;
        assurance.methods = assurance.methods.union(methods);
        sqlx::query(
            r"update sessions set amr = $2, last_used_at = case when last_used_at > $3
                then last_used_at else $3 end
              where id = $1",
        )
        .bind(session)
        .bind(assurance.methods.to_string())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        let token: Option<RefreshTokenRow> = sqlx::query_as(concat!(
            "select ",
            token_columns!(),
            r" from refresh_tokens
              where family_id = $1 and rotated_at is null and revoked_at is null
                and expires_at > $2
              order by issued_at desc limit 1"
        ))
        .bind(session)
        .bind(now)
        .fetch_optional(&mut **tx)
        .await?;
        Ok(token.map(|token| (token, assurance)))
    }
}

#[async_trait]
impl crate::store::SecondFactorStore for Dialect {
    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn add_totp_factor(
        &self,
        factor: &crate::store::NewFactor<'_>,
        max_confirmed: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, factor.user_id).await?.is_none() {
            return Ok(false);
        }
        let confirmed = Self::confirmed_count(&mut tx, factor.user_id).await?;
        if confirmed >= max_confirmed {
            return Ok(false);
        }
        sqlx::query("delete from mfa_factors where user_id = $1 and confirmed_at is null")
            .bind(factor.user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            r"insert into mfa_factors (id, user_id, kind, secret, secret_key, created_at)
              values ($1, $2, 'totp', $3, $4, $5)",
        )
        .bind(factor.id)
        .bind(factor.user_id)
        .bind(factor.secret)
        .bind(factor.secret_key)
        .bind(factor.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn find_factor(&self, id: uuid::Uuid) -> Result<Option<FactorRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            factor_columns!(),
            " from mfa_factors where id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn confirmed_factors(&self, user_id: i64) -> Result<Vec<FactorRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            factor_columns!(),
            r" from mfa_factors where user_id = $1 and confirmed_at is not null
              order by created_at, id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn use_time_step(
        &self,
        factor_id: uuid::Uuid,
        step: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            r"update mfa_factors set last_step = $2, last_used_at = $3
              where id = $1 and confirmed_at is not null
                and (last_step is null or last_step < $2)",
        )
        .bind(factor_id)
        .bind(step)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn confirm_factor(
        &self,
        confirmation: &crate::store::FactorConfirmation<'_>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Confirmation, StoreError> {
        let c = confirmation;
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, c.user_id).await? != Some(true) {
            return Ok(Confirmation::SessionGone);
        }
        let factor: Option<Option<i64>> = sqlx::query_scalar(
            r"select last_step from mfa_factors
              where id = $1 and user_id = $2 and confirmed_at is null and created_at > $3",
        )
        .bind(c.factor_id)
        .bind(c.user_id)
        .bind(c.created_after)
        .fetch_optional(&mut *tx)
        .await?;
        match factor {
            None => return Ok(Confirmation::FactorGone),
            Some(Some(last)) if last >= c.step => return Ok(Confirmation::StepUsed),
            Some(_) => {}
        }
        let others = Self::confirmed_count(&mut tx, c.user_id).await?;
        let Some((token, assurance)) =
            Self::raise_session(&mut tx, c.session, c.user_id, c.methods, now).await?
        else {
            return Ok(Confirmation::SessionGone);
        };
        sqlx::query(
            r"update mfa_factors set confirmed_at = $2, last_step = $3, last_used_at = $2
              where id = $1",
        )
        .bind(c.factor_id)
        .bind(now)
        .bind(c.step)
        .execute(&mut *tx)
        .await?;
        let codes_stored = others == 0;
        if codes_stored {
            Self::store_recovery_codes(&mut tx, c.user_id, c.recovery_codes, now).await?;
            self.record_webhooks(
                &mut tx,
                &[crate::store::WebhookEvent::MfaEnabled],
                c.user_id,
                now,
            )
            .await?;
        }
        Self::notify(&mut tx, c.user_id, c.notification, now).await?;
        // The events are the transaction's last writes (see append_event).
        Self::end_user_sessions(
            &mut tx,
            c.user_id,
            now,
            Some(c.session),
            c.live_tokens_since,
            true,
        )
        .await?;
        tx.commit().await?;
        Ok(Confirmation::Confirmed {
            token,
            assurance,
            codes_stored,
        })
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn step_up_session(
        &self,
        session: uuid::Uuid,
        user_id: i64,
        methods: crate::assurance::Methods,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<(RefreshTokenRow, crate::assurance::Assurance)>, StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, user_id).await? != Some(true) {
            return Ok(None);
        }
        let raised = Self::raise_session(&mut tx, session, user_id, methods, now).await?;
        if raised.is_some() {
            tx.commit().await?;
        }
        Ok(raised)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn remove_factor(
        &self,
        factor_id: uuid::Uuid,
        user_id: i64,
        notification: &crate::store::NewMail,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, user_id).await?.is_none() {
            return Ok(false);
        }
        let removed = sqlx::query(
            r"delete from mfa_factors
              where id = $1 and user_id = $2 and confirmed_at is not null",
        )
        .bind(factor_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !removed {
            return Ok(false);
        }
        let left = Self::confirmed_count(&mut tx, user_id).await?;
        if left == 0 {
            Self::store_recovery_codes(&mut tx, user_id, &[], now).await?;
            self.record_webhooks(
                &mut tx,
                &[crate::store::WebhookEvent::MfaDisabled],
                user_id,
                now,
            )
            .await?;
        }
        Self::notify(&mut tx, user_id, notification, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn replace_recovery_codes(
        &self,
        user_id: i64,
        code_hashes: &[[u8; 32]],
        notification: &crate::store::NewMail,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, user_id).await?.is_none() {
            return Ok(false);
        }
        let factors = Self::confirmed_count(&mut tx, user_id).await?;
        if factors == 0 {
            return Ok(false);
        }
        Self::store_recovery_codes(&mut tx, user_id, code_hashes, now).await?;
        Self::notify(&mut tx, user_id, notification, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn use_recovery_code(
        &self,
        user_id: i64,
        code_hash: &[u8; 32],
        notification: &crate::store::NewMail,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let used = sqlx::query(
            r"update mfa_recovery_codes set used_at = $3
              where user_id = $1 and code_hash = $2 and used_at is null",
        )
        .bind(user_id)
        .bind(&code_hash[..])
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !used {
            return Ok(false);
        }
        Self::notify(&mut tx, user_id, notification, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn recovery_codes_left(&self, user_id: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "select count(*) from mfa_recovery_codes where user_id = $1 and used_at is null",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn add_challenge(
        &self,
        token_hash: &[u8; 32],
        user_id: i64,
        checked_hash: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        // One statement: the check and the insert cannot be split by a password writer.
        Ok(sqlx::query(
            r"insert into mfa_challenges (token_hash, user_id, created_at, expires_at)
              select $1, id, $3, $4 from users where id = $2 and password_hash = $5",
        )
        .bind(&token_hash[..])
        .bind(user_id)
        .bind(now)
        .bind(expires_at)
        .bind(checked_hash)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn challenge_user(
        &self,
        token_hash: &[u8; 32],
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            r"select user_id from mfa_challenges
              where token_hash = $1 and used_at is null and expires_at > $2",
        )
        .bind(&token_hash[..])
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn reset_second_factor(
        &self,
        user_id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, user_id).await?.is_none() {
            return Ok(false);
        }
        let factors = sqlx::query("delete from mfa_factors where user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        Self::store_recovery_codes(&mut tx, user_id, &[], now).await?;
        sqlx::query("delete from mfa_challenges where user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if factors > 0 {
            self.record_webhooks(
                &mut tx,
                &[crate::store::WebhookEvent::MfaDisabled],
                user_id,
                now,
            )
            .await?;
        }
        self.record_webhooks(
            &mut tx,
            &[crate::store::WebhookEvent::SessionsEnded],
            user_id,
            now,
        )
        .await?;
        Self::log_out_everywhere(&mut tx, user_id, now).await?;
        tx.commit().await?;
        Ok(factors > 0)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn factors_to_reseal(
        &self,
        current_key: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FactorRow>, StoreError> {
        // A key id is never empty: '' stands for "in the clear" on both sides.
        Ok(sqlx::query_as(concat!(
            "select ",
            factor_columns!(),
            r" from mfa_factors
              where coalesce(secret_key, '') <> coalesce($1, '')
              order by id limit $2"
        ))
        .bind(current_key)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn reseal_factor(
        &self,
        id: uuid::Uuid,
        old_secret: &[u8],
        new_secret: &[u8],
        new_key: Option<&str>,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            r"update mfa_factors set secret = $3, secret_key = $4
              where id = $1 and secret = $2",
        )
        .bind(id)
        .bind(old_secret)
        .bind(new_secret)
        .bind(new_key)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }
}
