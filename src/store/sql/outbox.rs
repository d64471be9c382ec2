//! The outbox chapter's SQL, for both dialects (see `mod.rs`).

use async_trait::async_trait;

use super::{Db, Dialect};

/// Due webhook rows one claim considers: those beyond (all held back by earlier events of
/// their users) wait for the next claim, which a finished attempt triggers.
const CLAIM_CANDIDATES: i64 = 32;

impl Dialect {
    /// How many `template` messages were queued for a user after `since`, and when the
    /// last of them was (the throttles of the reset and verification mails).
    pub(super) async fn recent_mail(
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
        template: crate::store::MailTemplate,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<(i64, Option<chrono::DateTime<chrono::Utc>>), sqlx::Error> {
        sqlx::query_as(
            r"select count(*), max(created_at) from mail_outbox
              where user_id = $1 and template = $2 and created_at > $3",
        )
        .bind(user_id)
        .bind(template.as_str())
        .bind(since)
        .fetch_one(&mut **tx)
        .await
    }
    /// Counts a verification or reset mail to `address` against
    /// [`MAIL_PER_ADDRESS_PER_HOUR`](crate::store::MAIL_PER_ADDRESS_PER_HOUR), inside a
    /// transaction that holds the lock of the user who owns the address (so two
    /// requests for one address are counted one after the other, on any replica).
    /// False, and nothing counted, when the address had its share this past hour.
    pub(super) async fn count_mail_to(
        tx: &mut sqlx::Transaction<'_, Db>,
        address: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, sqlx::Error> {
        let sent: i64 = sqlx::query_scalar(
            "select count(*) from mail_sends where address = $1 and created_at > $2",
        )
        .bind(address)
        .bind(now - chrono::Duration::hours(1))
        .fetch_one(&mut **tx)
        .await?;
        if sent >= crate::store::MAIL_PER_ADDRESS_PER_HOUR {
            return Ok(false);
        }
        sqlx::query("insert into mail_sends (address, created_at) values ($1, $2)")
            .bind(address)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        Ok(true)
    }
    /// Queues a message for a user, inside the transaction of the change that causes it.
    pub(super) async fn queue_mail(
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
        recipient: &str,
        mail: &crate::store::NewMail,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            r"insert into mail_outbox
                (user_id, recipient, template, link, created_at, next_attempt_at,
                 message_id)
              values ($1, $2, $3, $4, $5, $5, $6)",
        )
        .bind(user_id)
        .bind(recipient)
        .bind(mail.template.as_str())
        .bind(mail.link.as_deref())
        .bind(now)
        .bind(uuid::Uuid::new_v4().simple().to_string())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Writes `events` about `user_id` for every endpoint subscribed to each, inside the
    /// transaction of the change that causes them (before the user's row is deleted: the
    /// address is read from it). Nothing for an event no endpoint receives.
    pub(super) async fn record_webhooks(
        &self,
        tx: &mut sqlx::Transaction<'_, Db>,
        events: &[crate::store::WebhookEvent],
        user_id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), sqlx::Error> {
        for &event in events.iter().filter(|&&event| self.webhooks.wants(event)) {
            let message_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
            for endpoint in &self.webhooks.endpoints {
                sqlx::query(
                    r"insert into webhook_outbox
                        (endpoint, message_id, event_type, user_id, email, created_at,
                         next_attempt_at)
                      select $1, $2, $3, id, email, $4, $4 from users where id = $5",
                )
                .bind(endpoint)
                .bind(&message_id)
                .bind(event.as_str())
                .bind(now)
                .bind(user_id)
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl crate::store::OutboxStore for Dialect {
    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn claim_mail(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        lease_until: chrono::DateTime<chrono::Utc>,
        limit: i64,
    ) -> Result<Vec<crate::store::OutboxMail>, crate::store::StoreError> {
        let mut tx = self.begin_write().await?;
        let ids = Self::due_mail(&mut tx, now, limit).await?;
        let mut claimed = Vec::with_capacity(ids.len());
        for id in ids {
            let mail: crate::store::OutboxMail = sqlx::query_as(
                r"update mail_outbox set leased_until = $2, attempts = attempts + 1
                  where id = $1
                  returning id, user_id, recipient, template, link, created_at, attempts,
                    coalesce(message_id, 'outbox-' || id) as message_id",
            )
            .bind(id)
            .bind(lease_until)
            .fetch_one(&mut *tx)
            .await?;
            claimed.push(mail);
        }
        tx.commit().await?;
        Ok(claimed)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn finish_mail(
        &self,
        id: i64,
        outcome: crate::store::MailOutcome,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), crate::store::StoreError> {
        use crate::store::MailOutcome;
        let query = match outcome {
            // The link carries a token: once sent, the outbox forgets it.
            MailOutcome::Sent => sqlx::query(
                r"update mail_outbox set sent_at = $2, link = null, leased_until = null
                  where id = $1",
            )
            .bind(id)
            .bind(now),
            MailOutcome::RetryAt(at) => sqlx::query(
                r"update mail_outbox set next_attempt_at = $2, leased_until = null
                  where id = $1",
            )
            .bind(id)
            .bind(at),
            MailOutcome::Failed => sqlx::query(
                r"update mail_outbox set failed_at = $2, link = null, leased_until = null
                  where id = $1",
            )
            .bind(id)
            .bind(now),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn next_mail_due(
        &self,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, crate::store::StoreError> {
        Ok(sqlx::query_scalar(concat!(
            r"select min(case when leased_until > next_attempt_at then leased_until
                              else next_attempt_at end)
              from mail_outbox
              where sent_at is null and failed_at is null and template in (",
            known_templates!(),
            ")"
        ))
        .fetch_one(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn pending_mail(&self) -> Result<i64, crate::store::StoreError> {
        Ok(sqlx::query_scalar(
            "select count(*) from mail_outbox where sent_at is null and failed_at is null",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn claim_webhook(
        &self,
        endpoint: &str,
        now: chrono::DateTime<chrono::Utc>,
        lease_until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<crate::store::OutboxWebhook>, crate::store::StoreError> {
        let mut tx = self.begin_write().await?;
        // The ordering check runs per candidate with its user as a constant: as one
        // `not exists` over the table, PostgreSQL planned it without statistics as a scan of
        // every pending row per candidate (3 s per claim at 3,000 rows). The candidates are
        // locked (PostgreSQL) or under the one writer (SQLite), so the check holds at commit.
        let mut claimable = None;
        for (id, user_id) in Self::due_webhooks(&mut tx, endpoint, now, CLAIM_CANDIDATES).await? {
            let held_back: bool = sqlx::query_scalar(
                r"select exists (
                    select 1 from webhook_outbox
                    where endpoint = $1 and user_id = $2 and id < $3
                      and delivered_at is null and failed_at is null
                      and (attempts = 0 or (attempts = 1 and leased_until > $4)))",
            )
            .bind(endpoint)
            .bind(user_id)
            .bind(id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            if !held_back {
                claimable = Some(id);
                break;
            }
        }
        let Some(id) = claimable else {
            return Ok(None);
        };
        let claimed = sqlx::query_as(
            r"update webhook_outbox set leased_until = $2, attempts = attempts + 1
              where id = $1
              returning id, endpoint, message_id, event_type, user_id,
                coalesce(email, '') as email, created_at, attempts",
        )
        .bind(id)
        .bind(lease_until)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(claimed))
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn finish_webhook(
        &self,
        id: i64,
        outcome: crate::store::DeliveryOutcome,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), crate::store::StoreError> {
        use crate::store::DeliveryOutcome;
        let query = match outcome {
            // A finished row forgets the address.
            DeliveryOutcome::Delivered => sqlx::query(
                r"update webhook_outbox set delivered_at = $2, email = null, leased_until = null
                  where id = $1",
            )
            .bind(id)
            .bind(now),
            DeliveryOutcome::RetryAt(at) => sqlx::query(
                r"update webhook_outbox set next_attempt_at = $2, leased_until = null
                  where id = $1",
            )
            .bind(id)
            .bind(at),
            DeliveryOutcome::Failed => sqlx::query(
                r"update webhook_outbox set failed_at = $2, email = null, leased_until = null
                  where id = $1",
            )
            .bind(id)
            .bind(now),
        };
        query.execute(&self.pool).await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn next_webhook_due(
        &self,
        endpoint: &str,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, crate::store::StoreError> {
        Ok(sqlx::query_scalar(
            r"select min(case when leased_until > next_attempt_at then leased_until
                              else next_attempt_at end)
              from webhook_outbox
              where endpoint = $1 and delivered_at is null and failed_at is null",
        )
        .bind(endpoint)
        .fetch_one(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn pending_webhooks(&self) -> Result<i64, crate::store::StoreError> {
        Ok(sqlx::query_scalar(
            "select count(*) from webhook_outbox where delivered_at is null and failed_at is null",
        )
        .fetch_one(&self.pool)
        .await?)
    }
}
