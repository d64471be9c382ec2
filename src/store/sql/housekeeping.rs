//! The housekeeping chapter's SQL, for both dialects (see `mod.rs`).

use async_trait::async_trait;

use super::Dialect;

#[async_trait]
impl crate::store::HousekeepingStore for Dialect {
    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn ping(&self) -> Result<(), crate::store::StoreError> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    fn pool_stats(&self) -> crate::store::PoolStats {
        let size = self.pool.size();
        // sqlx reads the two counts separately, without a lock: while a connection
        // changes hands its idle count can come out wrapped below zero (seen as
        // 2^64 - 1). An idle count is at most the pool's size, never past it.
        let idle = u32::try_from(self.pool.num_idle()).map_or(0, |idle| idle.min(size));
        crate::store::PoolStats { size, idle }
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn migrate(&self) -> Result<(), crate::store::StoreError> {
        Self::MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| crate::store::StoreError::Other(e.into()))
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn schema_is_current(&self) -> Result<bool, crate::store::StoreError> {
        let applied = sqlx::query_scalar(crate::store::APPLIED_MIGRATIONS)
            .fetch_all(&self.pool)
            .await;
        crate::store::covers(applied, &Self::MIGRATOR)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn data_migration_done(&self, name: &str) -> Result<bool, crate::store::StoreError> {
        Ok(
            sqlx::query_scalar::<_, i64>("select count(*) from data_migrations where name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?
                > 0,
        )
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn record_data_migration(
        &self,
        name: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), crate::store::StoreError> {
        sqlx::query(
            r"insert into data_migrations (name, applied_at) values ($1, $2)
              on conflict do nothing",
        )
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn purge_batch(
        &self,
        purge: crate::store::Purge,
        limit: i64,
    ) -> Result<u64, crate::store::StoreError> {
        use crate::store::Purge;
        let mut tx = self.begin_write().await?;
        let deleted = match purge {
            Purge::LoginAttempts {
                window_start_before,
                now,
            } => sqlx::query(
                r"delete from login_attempts where key in (
                    select key from login_attempts
                    where window_start < $1 and (locked_until is null or locked_until < $2)
                    limit $3)",
            )
            .bind(window_start_before)
            .bind(now)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Purge::RefreshTokens(before) => {
                let expired: Vec<uuid::Uuid> = sqlx::query_scalar(
                    "select jti from refresh_tokens where expires_at < $1 limit $2",
                )
                .bind(before)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                let mut deleted = 0;
                for jti in expired {
                    // Unlink a child first: the foreign key would otherwise delete it
                    // too.
                    sqlx::query(
                        "update refresh_tokens set parent_jti = null where parent_jti = $1",
                    )
                    .bind(jti)
                    .execute(&mut *tx)
                    .await?;
                    deleted += sqlx::query("delete from refresh_tokens where jti = $1")
                        .bind(jti)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                deleted
            }
            Purge::Sessions(before) => sqlx::query(
                r"delete from sessions where id in (
                    select id from sessions where expires_at < $1 limit $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Purge::Mail(before) => sqlx::query(
                r"delete from mail_outbox where id in (
                    select id from mail_outbox where sent_at < $1 or failed_at < $1
                    limit $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Purge::UserTokens(before) => sqlx::query(
                r"delete from user_tokens where token_hash in (
                    select token_hash from user_tokens where expires_at < $1 limit $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Purge::MfaChallenges(before) => sqlx::query(
                r"delete from mfa_challenges where token_hash in (
                    select token_hash from mfa_challenges where expires_at < $1 limit $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Purge::UnconfirmedFactors(before) => sqlx::query(
                r"delete from mfa_factors where id in (
                    select id from mfa_factors
                    where confirmed_at is null and created_at < $1 limit $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Purge::PasskeyCeremonies(before) => sqlx::query(
                r"delete from passkey_ceremonies where id in (
                    select id from passkey_ceremonies where expires_at < $1 limit $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Purge::Webhooks {
                finished_before,
                abandoned_before,
            } => sqlx::query(
                r"delete from webhook_outbox where id in (
                    select id from webhook_outbox
                    where delivered_at < $1 or failed_at < $1 or created_at < $2
                    limit $3)",
            )
            .bind(finished_before)
            .bind(abandoned_before)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Purge::MailSends(before) => sqlx::query(
                r"delete from mail_sends where (address, created_at) in (
                    select address, created_at from mail_sends where created_at < $1
                    limit $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
            Purge::Events(before) => sqlx::query(
                r"delete from revocation_events where id in (
                    select id from revocation_events where created_at < $1
                      and id < (select max(id) from revocation_events)
                    limit $2)",
            )
            .bind(before)
            .bind(limit)
            .execute(&mut *tx)
            .await?
            .rows_affected(),
        };
        tx.commit().await?;
        Ok(deleted)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn export_users(&self) -> Result<Vec<crate::store::UserRow>, crate::store::StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            user_columns!(),
            " from users order by id"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn export_refresh_tokens(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::store::RefreshTokenRow>, crate::store::StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            token_columns!(),
            " from refresh_tokens where expires_at > $1 order by issued_at"
        ))
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn insert_imported_users(
        &self,
        users: &[crate::store::ImportedUser],
        updated_at: chrono::DateTime<chrono::Utc>,
        dry_run: bool,
    ) -> Result<Vec<crate::store::ImportedRow>, crate::store::StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let mut insert = sqlx::QueryBuilder::new(
            "insert into users (email, password_hash, is_active, created_at, updated_at, \
             email_verified_at) ",
        );
        insert.push_values(users, |mut row, user| {
            row.push_bind(&user.email)
                .push_bind(&user.password_hash)
                .push_bind(user.is_active)
                .push_bind(user.created_at)
                .push_bind(updated_at)
                .push_bind(user.email_verified_at);
        });
        insert.push(" on conflict do nothing returning id, email");
        let inserted: Vec<(i64, String)> = insert.build_query_as().fetch_all(&mut *tx).await?;
        let fresh: std::collections::HashSet<&str> =
            inserted.iter().map(|(_, email)| email.as_str()).collect();
        let mut rows: Vec<crate::store::ImportedRow> = inserted
            .iter()
            .map(|(id, email)| crate::store::ImportedRow {
                email: email.clone(),
                id: *id,
                inserted: true,
            })
            .collect();
        let taken: Vec<&str> = users
            .iter()
            .map(|u| u.email.as_str())
            .filter(|email| !fresh.contains(email))
            .collect();
        if !taken.is_empty() {
            let mut select =
                sqlx::QueryBuilder::new("select id, email from users where email in (");
            let mut list = select.separated(", ");
            for email in &taken {
                list.push_bind(*email);
            }
            select.push(")");
            let existing: Vec<(i64, String)> = select.build_query_as().fetch_all(&mut *tx).await?;
            rows.extend(
                existing
                    .into_iter()
                    .map(|(id, email)| crate::store::ImportedRow {
                        email,
                        id,
                        inserted: false,
                    }),
            );
        }
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(rows)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn export_second_factors(
        &self,
    ) -> Result<
        (
            Vec<crate::store::FactorRow>,
            Vec<crate::store::RecoveryCodeRow>,
        ),
        crate::store::StoreError,
    > {
        let factors = sqlx::query_as(concat!(
            "select ",
            factor_columns!(),
            " from mfa_factors where confirmed_at is not null order by created_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        let codes = sqlx::query_as(
            r"select user_id, code_hash, created_at, used_at from mfa_recovery_codes
              where used_at is null order by user_id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok((factors, codes))
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn export_passkeys(
        &self,
    ) -> Result<Vec<crate::store::PasskeyRow>, crate::store::StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            passkey_columns!(),
            " from passkeys order by created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn import(
        &self,
        transfer: &crate::store::Transfer,
        merge: bool,
    ) -> Result<Option<crate::store::ImportReport>, crate::store::StoreError> {
        let crate::store::Transfer {
            users,
            tokens,
            factors,
            recovery_codes,
            passkeys,
        } = transfer;
        let mut tx = self.begin_write().await?;
        let existing: i64 = sqlx::query_scalar("select count(*) from users")
            .fetch_one(&mut *tx)
            .await?;
        if existing > 0 && !merge {
            tx.rollback().await?;
            return Ok(None);
        }
        let mut inserted = std::collections::HashSet::new();
        for user in users {
            let id: Option<i64> = sqlx::query_scalar(
                r"insert into users
                    (id, email, password_hash, is_active, created_at, updated_at,
                     tokens_not_before, email_verified_at)
                  values ($1, $2, $3, $4, $5, $6, $7, $8)
                  on conflict do nothing
                  returning id",
            )
            .bind(user.id)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(user.is_active)
            .bind(user.created_at)
            .bind(user.updated_at)
            .bind(user.tokens_not_before)
            .bind(user.email_verified_at)
            .fetch_optional(&mut *tx)
            .await?;
            inserted.extend(id);
        }
        let mut copied_tokens = 0;
        for token in tokens.iter().filter(|t| inserted.contains(&t.user_id)) {
            copied_tokens += sqlx::query(
                r"insert into refresh_tokens
                    (jti, user_id, family_id, parent_jti, issued_at, expires_at,
                     rotated_at, revoked_at)
                  values ($1, $2, $3, $4, $5, $6, $7, $8)
                  on conflict do nothing",
            )
            .bind(token.jti)
            .bind(token.user_id)
            .bind(token.family_id)
            .bind(token.parent_jti)
            .bind(token.issued_at)
            .bind(token.expires_at)
            .bind(token.rotated_at)
            .bind(token.revoked_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        let mut copied_factors = 0;
        for factor in factors.iter().filter(|f| inserted.contains(&f.user_id)) {
            copied_factors += sqlx::query(concat!(
                "insert into mfa_factors (",
                factor_columns!(),
                ", kind) values ($1, $2, $3, $4, $5, $6, $7, $8, 'totp') on conflict do nothing"
            ))
            .bind(factor.id)
            .bind(factor.user_id)
            .bind(&factor.secret)
            .bind(&factor.secret_key)
            .bind(factor.created_at)
            .bind(factor.confirmed_at)
            .bind(factor.last_used_at)
            .bind(factor.last_step)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        for code in recovery_codes
            .iter()
            .filter(|c| inserted.contains(&c.user_id))
        {
            sqlx::query(
                r"insert into mfa_recovery_codes (user_id, code_hash, created_at, used_at)
                  values ($1, $2, $3, $4) on conflict do nothing",
            )
            .bind(code.user_id)
            .bind(&code.code_hash)
            .bind(code.created_at)
            .bind(code.used_at)
            .execute(&mut *tx)
            .await?;
        }
        let mut copied_passkeys = 0;
        for passkey in passkeys.iter().filter(|p| inserted.contains(&p.user_id)) {
            copied_passkeys += sqlx::query(concat!(
                "insert into passkeys (",
                passkey_columns!(),
                ") values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict do nothing"
            ))
            .bind(passkey.id)
            .bind(passkey.user_id)
            .bind(passkey.user_handle)
            .bind(&passkey.credential_id)
            .bind(&passkey.credential)
            .bind(passkey.sign_count)
            .bind(&passkey.name)
            .bind(passkey.created_at)
            .bind(passkey.last_used_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        sqlx::query(super::SESSIONS_FROM_TOKENS)
            .execute(&mut *tx)
            .await?;
        Self::after_import(&mut tx).await?;
        tx.commit().await?;
        let users_inserted = u64::try_from(inserted.len()).unwrap_or(u64::MAX);
        Ok(Some(crate::store::ImportReport {
            users: users_inserted,
            skipped_users: u64::try_from(users.len()).unwrap_or(u64::MAX) - users_inserted,
            tokens: copied_tokens,
            factors: copied_factors,
            passkeys: copied_passkeys,
        }))
    }
}
