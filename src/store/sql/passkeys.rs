//! The passkey chapter's SQL, for both dialects (see `mod.rs`).

use async_trait::async_trait;

use super::{Db, Dialect};
use crate::store::{
    CeremonyKind, NewCeremony, NewMail, NewPasskey, PasskeyRefused, PasskeyRow, PasskeyUse,
    StoreError,
};

/// Expired ceremonies a sign-in start deletes before it stores its own.
const EXPIRED_PER_START: i64 = 100;

impl Dialect {
    /// Moves a passkey's signature counter forward for a sign-in, inside the transaction of the
    /// session it starts; false when another sign-in moved it first (or the passkey is gone).
    pub(super) async fn use_passkey(
        tx: &mut sqlx::Transaction<'_, Db>,
        used: &PasskeyUse<'_>,
        user_id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query(
            r"update passkeys set sign_count = $3, credential = $4, last_used_at = $5
              where id = $1 and user_id = $2 and sign_count = $6",
        )
        .bind(used.id)
        .bind(user_id)
        .bind(used.new_count)
        .bind(used.credential)
        .bind(now)
        .bind(used.seen_count)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1)
    }
}

#[async_trait]
impl crate::store::PasskeyStore for Dialect {
    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn add_ceremony(
        &self,
        ceremony: &NewCeremony<'_>,
        max_sign_ins: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let now = ceremony.created_at;
        match ceremony.user_id {
            Some(user_id) => {
                sqlx::query("delete from passkey_ceremonies where user_id = $1 and kind = $2")
                    .bind(user_id)
                    .bind(ceremony.kind.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                sqlx::query(
                    r"delete from passkey_ceremonies where id in (
                        select id from passkey_ceremonies where expires_at <= $1 limit $2)",
                )
                .bind(now)
                .bind(EXPIRED_PER_START)
                .execute(&mut *tx)
                .await?;
                let live: i64 = sqlx::query_scalar(
                    r"select count(*) from passkey_ceremonies
                      where user_id is null and expires_at > $1",
                )
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                if live >= max_sign_ins {
                    return Ok(false);
                }
            }
        }
        sqlx::query(
            r"insert into passkey_ceremonies (id, kind, user_id, state, created_at, expires_at)
              values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(ceremony.id)
        .bind(ceremony.kind.as_str())
        .bind(ceremony.user_id)
        .bind(ceremony.state)
        .bind(now)
        .bind(ceremony.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn take_ceremony(
        &self,
        id: uuid::Uuid,
        kind: CeremonyKind,
        user_id: Option<i64>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>, StoreError> {
        // `user_id = $3` is never true for a null `$3`: a sign-in's ceremony has its own text.
        let query = match user_id {
            Some(_) => {
                r"delete from passkey_ceremonies
                  where id = $1 and kind = $2 and user_id = $3 and expires_at > $4
                  returning state"
            }
            None => {
                r"delete from passkey_ceremonies
                  where id = $1 and kind = $2 and user_id is null and $3 is null
                    and expires_at > $4
                  returning state"
            }
        };
        Ok(sqlx::query_scalar(query)
            .bind(id)
            .bind(kind.as_str())
            .bind(user_id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn user_passkeys(&self, user_id: i64) -> Result<Vec<PasskeyRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            passkey_columns!(),
            " from passkeys where user_id = $1 order by created_at, id"
        ))
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn find_passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<PasskeyRow>, StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            passkey_columns!(),
            " from passkeys where credential_id = $1"
        ))
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn add_passkey(
        &self,
        passkey: &NewPasskey<'_>,
    ) -> Result<Result<(), PasskeyRefused>, StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, passkey.user_id).await?.is_none() {
            return Ok(Err(PasskeyRefused::UserGone));
        }
        let inserted = sqlx::query(
            r"insert into passkeys
                (id, user_id, user_handle, credential_id, credential, name, created_at)
              values ($1, $2, $3, $4, $5, $6, $7)
              on conflict (credential_id) do nothing",
        )
        .bind(passkey.id)
        .bind(passkey.user_id)
        .bind(passkey.user_handle)
        .bind(passkey.credential_id)
        .bind(passkey.credential)
        .bind(passkey.name)
        .bind(passkey.created_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(Err(PasskeyRefused::Registered));
        }
        Self::notify(
            &mut tx,
            passkey.user_id,
            passkey.notification,
            passkey.created_at,
        )
        .await?;
        self.record_webhooks(
            &mut tx,
            &[crate::store::WebhookEvent::PasskeyAdded],
            passkey.user_id,
            passkey.created_at,
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn remove_passkey(
        &self,
        id: uuid::Uuid,
        user_id: i64,
        notification: &NewMail,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, user_id).await?.is_none() {
            return Ok(false);
        }
        let removed = sqlx::query("delete from passkeys where id = $1 and user_id = $2")
            .bind(id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if removed == 0 {
            return Ok(false);
        }
        Self::notify(&mut tx, user_id, notification, now).await?;
        self.record_webhooks(
            &mut tx,
            &[crate::store::WebhookEvent::PasskeyRemoved],
            user_id,
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }
}
