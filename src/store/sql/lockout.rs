//! The lockout chapter's SQL, for both dialects (see `mod.rs`).

use async_trait::async_trait;

use super::Dialect;

#[async_trait]
impl crate::store::LockoutStore for Dialect {
    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn reserve_login_attempt(
        &self,
        key: &str,
        now: chrono::DateTime<chrono::Utc>,
        limits: crate::store::AttemptLimits,
    ) -> Result<crate::store::AttemptRow, crate::store::StoreError> {
        // $1 key, $2 now, $3 window cut-off, $4 lock end if this attempt locks, $5 max.
        // While locked the count climbs to max + 1 and stays there.
        Ok(sqlx::query_as(
            r"insert into login_attempts (key, attempts, window_start, locked_until)
              values ($1, 1, $2, case when 1 >= $5 then $4 else null end)
              on conflict (key) do update set
                attempts = case
                  when login_attempts.locked_until > $2 then
                    case when login_attempts.attempts >= $5 + 1 then $5 + 1
                      else login_attempts.attempts + 1 end
                  when login_attempts.locked_until is not null
                    or login_attempts.window_start <= $3 then 1
                  else login_attempts.attempts + 1
                end,
                window_start = case
                  when login_attempts.locked_until > $2 then login_attempts.window_start
                  when login_attempts.locked_until is not null
                    or login_attempts.window_start <= $3 then $2
                  else login_attempts.window_start
                end,
                locked_until = case
                  when login_attempts.locked_until > $2 then login_attempts.locked_until
                  when login_attempts.locked_until is not null
                    or login_attempts.window_start <= $3
                    then case when 1 >= $5 then $4 else null end
                  when login_attempts.attempts + 1 >= $5 then $4
                  else null
                end
              returning attempts, window_start, locked_until",
        )
        .bind(key)
        .bind(now)
        .bind(now - limits.window)
        .bind(now + limits.lockout)
        .bind(limits.max_attempts)
        .fetch_one(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn find_login_attempt(
        &self,
        key: &str,
    ) -> Result<Option<crate::store::AttemptRow>, crate::store::StoreError> {
        Ok(sqlx::query_as(
            "select attempts, window_start, locked_until from login_attempts where key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn clear_login_attempts(&self, key: &str) -> Result<(), crate::store::StoreError> {
        sqlx::query("delete from login_attempts where key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
