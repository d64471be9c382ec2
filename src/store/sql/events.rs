//! The events chapter's SQL, for both dialects (see `mod.rs`).

use async_trait::async_trait;

use super::{Db, Dialect};

impl Dialect {
    /// Appends an event as its transaction's last write: ordered and announced the way
    /// the dialect does it (see the module docs).
    pub(super) async fn append_event(
        tx: &mut sqlx::Transaction<'_, Db>,
        kind: crate::store::EventKind,
        user_id: i64,
        session_id: Option<uuid::Uuid>,
        not_before: Option<chrono::DateTime<chrono::Utc>>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), sqlx::Error> {
        Self::order_events(tx).await?;
        let id: i64 = sqlx::query_scalar(
            r"insert into revocation_events
                (created_at, kind, user_id, session_id, not_before)
              values ($1, $2, $3, $4, $5)
              returning id",
        )
        .bind(now)
        .bind(kind.as_str())
        .bind(user_id)
        .bind(session_id)
        .bind(not_before)
        .fetch_one(&mut **tx)
        .await?;
        Self::announce_event(tx, id).await
    }
}

#[async_trait]
impl crate::store::EventStore for Dialect {
    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn events_since(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<crate::store::EventRow>, crate::store::StoreError> {
        let rows: Vec<crate::store::RawEventRow> = sqlx::query_as(concat!(
            "select ",
            event_columns!(),
            " from revocation_events where id > $1 order by id limit $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(crate::store::EventRow::try_from)
            .collect()
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn event_bounds(&self) -> Result<Option<(i64, i64)>, crate::store::StoreError> {
        let (first, last): (Option<i64>, Option<i64>) =
            sqlx::query_as("select min(id), max(id) from revocation_events")
                .fetch_one(&self.pool)
                .await?;
        Ok(first.zip(last))
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn last_event_id(&self) -> Result<i64, crate::store::StoreError> {
        Ok(
            sqlx::query_scalar("select coalesce(max(id), 0) from revocation_events")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    fn event_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        self.notifications()
    }
}
