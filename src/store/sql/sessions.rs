//! The sessions chapter's SQL, for both dialects (see `mod.rs`).

use async_trait::async_trait;

use super::{Db, Dialect};

impl Dialect {
    /// A session's sign-in from its `amr` and `created_at` columns.
    pub(super) fn assurance(
        (amr, created_at): (String, chrono::DateTime<chrono::Utc>),
    ) -> Result<crate::assurance::Assurance, crate::store::StoreError> {
        let methods = crate::assurance::Methods::try_from(amr)
            .map_err(|err| crate::store::StoreError::Other(sqlx::Error::Decode(err.into())))?;
        Ok(crate::assurance::Assurance {
            methods,
            auth_time: created_at,
        })
    }
    /// The one refresh-token insert, inside a session's or a rotation's transaction.
    pub(super) async fn insert_token(
        tx: &mut sqlx::Transaction<'_, Db>,
        token: &crate::store::NewRefreshToken,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            r"insert into refresh_tokens
                (jti, user_id, family_id, parent_jti, issued_at, expires_at)
              values ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token.jti)
        .bind(token.user_id)
        .bind(token.family_id)
        .bind(token.parent_jti)
        .bind(token.issued_at)
        .bind(token.expires_at)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
    /// Logout-all, inside a transaction that holds the user's lock: outstanding reset
    /// links are void, tokens issued before `now` (whole seconds) die, every session
    /// ends, and the user-wide event follows. Returns how many sessions were live.
    pub(super) async fn log_out_everywhere(
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, sqlx::Error> {
        Self::void_reset_tokens(tx, user_id).await?;
        let cutoff = crate::store::not_before(now);
        sqlx::query(
            r"update users set tokens_not_before = case when tokens_not_before > $2
                then tokens_not_before else $2 end
              where id = $1",
        )
        .bind(user_id)
        .bind(cutoff)
        .execute(&mut **tx)
        .await?;
        let ended = Self::end_user_sessions(tx, user_id, now, None, cutoff, false).await?;
        Self::append_event(
            tx,
            crate::store::EventKind::LoggedOutEverywhere,
            user_id,
            None,
            Some(cutoff),
            now,
        )
        .await?;
        Ok(ended)
    }
    /// Ends every live session of a user but `except` and revokes their refresh tokens,
    /// under the user's lock, in two statements whatever their number; returns how many
    /// sessions were live. Events: one per ended session used at or after
    /// `announce_used_since`, which may still hold a live access token that nothing
    /// else refuses; the caller appends any user-wide one. Sessions never recorded as
    /// used (from before `last_used_at` existed) are announced only when
    /// `unrecorded_may_be_live`: after a user-wide cut-off they cannot hold a token of
    /// the cut-off second (every use since the column exists records itself first), so
    /// the user-wide event covers them all, however many there are.
    pub(super) async fn end_user_sessions(
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
        now: chrono::DateTime<chrono::Utc>,
        except: Option<uuid::Uuid>,
        announce_used_since: chrono::DateTime<chrono::Utc>,
        unrecorded_may_be_live: bool,
    ) -> Result<u64, sqlx::Error> {
        // The nil id is no session's: "except nothing".
        let except = except.unwrap_or(uuid::Uuid::nil());
        let announced: Vec<uuid::Uuid> = sqlx::query_scalar(
            r"select id from sessions
              where user_id = $1 and revoked_at is null and id <> $2
                and (last_used_at >= $3 or ($4 and last_used_at is null))",
        )
        .bind(user_id)
        .bind(except)
        .bind(announce_used_since)
        .bind(unrecorded_may_be_live)
        .fetch_all(&mut **tx)
        .await?;
        let ended = sqlx::query(
            r"update sessions set revoked_at = $2
              where user_id = $1 and revoked_at is null and id <> $3",
        )
        .bind(user_id)
        .bind(now)
        .bind(except)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        sqlx::query(
            r"update refresh_tokens set revoked_at = $2
              where user_id = $1 and revoked_at is null and family_id <> $3",
        )
        .bind(user_id)
        .bind(now)
        .bind(except)
        .execute(&mut **tx)
        .await?;
        for session in announced {
            Self::append_event(
                tx,
                crate::store::EventKind::SessionRevoked,
                user_id,
                Some(session),
                None,
                now,
            )
            .await?;
        }
        Ok(ended)
    }
    /// Ends one session of `user_id` and revokes its refresh tokens, under the user's
    /// lock; whether it was live until now (only then is an event appended).
    pub(super) async fn end_session(
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
        id: uuid::Uuid,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, sqlx::Error> {
        let ended =
            sqlx::query("update sessions set revoked_at = $2 where id = $1 and revoked_at is null")
                .bind(id)
                .bind(now)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                == 1;
        sqlx::query(
            r"update refresh_tokens set revoked_at = $2
              where family_id = $1 and revoked_at is null",
        )
        .bind(id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        if ended {
            Self::append_event(
                tx,
                crate::store::EventKind::SessionRevoked,
                user_id,
                Some(id),
                None,
                now,
            )
            .await?;
        }
        Ok(ended)
    }
}

#[async_trait]
impl crate::store::SessionStore for Dialect {
    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn start_session(
        &self,
        session: &crate::store::NewSession,
        first: &crate::store::NewRefreshToken,
        proof: crate::store::SignInProof<'_>,
        max_live: i64,
    ) -> Result<Result<Vec<uuid::Uuid>, crate::store::SessionRefused>, crate::store::StoreError>
    {
        use crate::store::{SessionRefused, SignInProof};
        let mut tx = self.begin_write().await?;
        match Self::lock_user(&mut tx, session.user_id).await? {
            None => return Ok(Err(SessionRefused::UserGone)),
            Some(false) => return Ok(Err(SessionRefused::Disabled)),
            Some(true) => {}
        }
        let now = session.created_at;
        // Under the user's lock, so no password writer can commit between this check
        // and the commit below.
        match proof {
            SignInProof::Password(checked_hash) => {
                let current: String =
                    sqlx::query_scalar("select password_hash from users where id = $1")
                        .bind(session.user_id)
                        .fetch_one(&mut *tx)
                        .await?;
                if current != checked_hash {
                    return Ok(Err(SessionRefused::PasswordChanged));
                }
            }
            SignInProof::Challenge(token_hash) => {
                if !Self::use_challenge(&mut tx, token_hash, session.user_id, now).await? {
                    return Ok(Err(SessionRefused::ChallengeUsed));
                }
            }
            SignInProof::Passkey(used) => {
                if !Self::use_passkey(&mut tx, used, session.user_id, now).await? {
                    return Ok(Err(SessionRefused::PasskeyUsed));
                }
            }
        }
        sqlx::query(
            r"insert into sessions
                (id, user_id, created_at, expires_at, last_used_at, user_agent, ip, amr)
              values ($1, $2, $3, $4, $3, $5, $6, $7)",
        )
        .bind(session.id)
        .bind(session.user_id)
        .bind(now)
        .bind(session.expires_at)
        .bind(session.user_agent.as_deref())
        .bind(session.ip.as_deref())
        .bind(session.methods.to_string())
        .execute(&mut *tx)
        .await?;
        Self::insert_token(&mut tx, first).await?;
        // The cap: the least recently used live sessions beyond it end as at logout.
        let live: i64 = sqlx::query_scalar(
            r"select count(*) from sessions
              where user_id = $1 and revoked_at is null and expires_at > $2",
        )
        .bind(session.user_id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let mut evicted = Vec::new();
        if live > max_live {
            let oldest: Vec<uuid::Uuid> = sqlx::query_scalar(
                r"select id from sessions
                  where user_id = $1 and revoked_at is null and expires_at > $2
                    and id <> $3
                  order by coalesce(last_used_at, created_at), created_at
                  limit $4",
            )
            .bind(session.user_id)
            .bind(now)
            .bind(session.id)
            .bind(live - max_live)
            .fetch_all(&mut *tx)
            .await?;
            for id in oldest {
                if Self::end_session(&mut tx, session.user_id, id, now).await? {
                    evicted.push(id);
                }
            }
        }
        tx.commit().await?;
        Ok(Ok(evicted))
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn touch_session(
        &self,
        id: uuid::Uuid,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<crate::assurance::Assurance>, crate::store::StoreError> {
        // Never moves backwards (two refreshes finishing out of order).
        let row: Option<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            r"update sessions set last_used_at = case when last_used_at > $2
                then last_used_at else $2 end
              where id = $1 and revoked_at is null
              returning amr, created_at",
        )
        .bind(id)
        .bind(at)
        .fetch_optional(&self.pool)
        .await?;
        row.map(Self::assurance).transpose()
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn live_sessions(
        &self,
        user_id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<crate::store::SessionRow>, crate::store::StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            session_columns!(),
            r" from sessions
              where user_id = $1 and revoked_at is null and expires_at > $2
              order by created_at desc, id"
        ))
        .bind(user_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn find_session(
        &self,
        id: uuid::Uuid,
    ) -> Result<Option<crate::store::SessionRow>, crate::store::StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            session_columns!(),
            " from sessions where id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn find_refresh_token(
        &self,
        jti: uuid::Uuid,
    ) -> Result<Option<crate::store::RefreshTokenRow>, crate::store::StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            token_columns!(),
            " from refresh_tokens where jti = $1"
        ))
        .bind(jti)
        .fetch_optional(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn find_child_token(
        &self,
        parent: uuid::Uuid,
    ) -> Result<Option<crate::store::RefreshTokenRow>, crate::store::StoreError> {
        Ok(sqlx::query_as(concat!(
            "select ",
            token_columns!(),
            " from refresh_tokens where parent_jti = $1"
        ))
        .bind(parent)
        .fetch_optional(&self.pool)
        .await?)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn rotate_refresh_token(
        &self,
        parent: uuid::Uuid,
        child: &crate::store::NewRefreshToken,
        now: chrono::DateTime<chrono::Utc>,
        prune_rotated_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<crate::store::RotateOutcome, crate::store::StoreError> {
        use crate::store::RotateOutcome;
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, child.user_id).await? != Some(true) {
            return Ok(RotateOutcome::Refused);
        }
        let session: Option<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
            "select amr, created_at from sessions where id = $1 and revoked_at is null",
        )
        .bind(child.family_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(session) = session else {
            return Ok(RotateOutcome::Refused);
        };
        let assurance = Self::assurance(session)?;
        let claimed = sqlx::query(
            r"update refresh_tokens set rotated_at = $2
              where jti = $1 and rotated_at is null and revoked_at is null
                and expires_at > $2",
        )
        .bind(parent)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if claimed != 1 {
            return Ok(RotateOutcome::NotRotatable);
        }
        let child = crate::store::NewRefreshToken {
            parent_jti: Some(parent),
            ..child.clone()
        };
        Self::insert_token(&mut tx, &child).await?;
        // The child's access token is signed with `iat = issued_at` after this commits:
        // the use is recorded first (see `Store::revoke_user_sessions`).
        sqlx::query(
            r"update sessions set expires_at = case when expires_at > $2
                then expires_at else $2 end,
                last_used_at = case when last_used_at > $3
                  then last_used_at else $3 end
              where id = $1",
        )
        .bind(child.family_id)
        .bind(child.expires_at)
        .bind(child.issued_at)
        .execute(&mut *tx)
        .await?;
        // Constant storage per session: tokens rotated before the grace window go,
        // and of those within it only the newest `ROTATED_TOKENS_KEPT`.
        let newest_kept: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            r"select rotated_at from refresh_tokens
              where family_id = $1 and rotated_at is not null
              order by rotated_at desc limit 1 offset $2",
        )
        .bind(child.family_id)
        .bind(crate::store::ROTATED_TOKENS_KEPT - 1)
        .fetch_optional(&mut *tx)
        .await?;
        let prune_rotated_before =
            newest_kept.map_or(prune_rotated_before, |at| at.max(prune_rotated_before));
        // `parent_jti` cascades on delete, so the kept rows let go of them first.
        sqlx::query(
            r"update refresh_tokens set parent_jti = null
              where family_id = $1 and parent_jti in (
                select jti from refresh_tokens
                where family_id = $1 and rotated_at < $2)",
        )
        .bind(child.family_id)
        .bind(prune_rotated_before)
        .execute(&mut *tx)
        .await?;
        sqlx::query("delete from refresh_tokens where family_id = $1 and rotated_at < $2")
            .bind(child.family_id)
            .bind(prune_rotated_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(RotateOutcome::Rotated(assurance))
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn revoke_session(
        &self,
        id: uuid::Uuid,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, crate::store::StoreError> {
        // One lock order, the locking rule's: the user's row, then the session, then
        // its tokens. The owner is read before the transaction (a session never
        // changes hands), so nothing is locked before the user's row. A rotation of
        // this session in flight holds that row: this waits for it, and the updates
        // below, fresh statements after the lock, see the child it committed.
        let owner: Option<i64> = sqlx::query_scalar("select user_id from sessions where id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(user_id) = owner else {
            return Ok(false);
        };
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, user_id).await?.is_none() {
            return Ok(false);
        }
        let ended = Self::end_session(&mut tx, user_id, id, now).await?;
        tx.commit().await?;
        Ok(ended)
    }

    #[tracing::instrument(skip_all, fields(otel.kind = "client", db.system = super::DB_SYSTEM))]
    async fn revoke_user_sessions(
        &self,
        user_id: i64,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, crate::store::StoreError> {
        let mut tx = self.begin_write().await?;
        if Self::lock_user(&mut tx, user_id).await?.is_none() {
            return Ok(0);
        }
        self.record_webhooks(
            &mut tx,
            &[crate::store::WebhookEvent::SessionsEnded],
            user_id,
            now,
        )
        .await?;
        let ended = Self::log_out_everywhere(&mut tx, user_id, now).await?;
        tx.commit().await?;
        Ok(ended)
    }
}
