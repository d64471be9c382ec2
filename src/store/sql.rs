//! The store's SQL and method bodies, written once for both dialects.
//!
//! `impl_store!` expands to the whole [`Store`](super::Store) impl of a
//! dialect's store type. Every statement is one text that SQLite and PostgreSQL both accept
//! (`$N` placeholders, `returning`, `on conflict`, `case` instead of `max(a, b)` /
//! `greatest(a, b)`); what truly differs is a hook the dialect file defines on its store type,
//! each named for what it does:
//!
//! | hook | SQLite | PostgreSQL |
//! |---|---|---|
//! | `begin_write(&self)` | `BEGIN IMMEDIATE` (the one write lock, taken up front) | `BEGIN` (row locks follow) |
//! | `lock_user(tx, id)` | a plain read: the write lock is already held | `select ... for update` |
//! | `order_events(tx)` | nothing: one writer commits events in id order | a transaction-scoped advisory lock |
//! | `announce_event(tx, id)` | nothing: other processes poll | `pg_notify`, delivered at commit |
//! | `after_import(tx)` | nothing: `AUTOINCREMENT` follows explicit ids | move the identity sequence |
//! | `MIGRATOR`, `connect`, `notifications()` | its migrations, file options | its migrations, pool options, `LISTEN` |
//!
//! Why a macro and not a generic over `sqlx::Database`: a generic body needs, per method, an
//! `Encode + Type` bound for every bound type, a `Decode` bound for every column, `FromRow`
//! bounds for every row and a higher-ranked `Executor` bound on the connection, which together
//! are longer than the bodies and must be repeated on every helper. The macro expands to the
//! same monomorphic code each driver had before (no cost on the request path) and each
//! expansion is type-checked against its own driver. The price is that a compile error inside a
//! body is reported at the `impl_store!` call; `cargo expand` shows the expanded code.

/// The `users` columns every `UserRow` query selects.
macro_rules! user_columns {
    () => {
        "id, email, password_hash, is_active, created_at, updated_at, tokens_not_before, \
         email_verified_at"
    };
}

/// The `sessions` columns every `SessionRow` query selects.
macro_rules! session_columns {
    () => {
        "id, user_id, created_at, expires_at, revoked_at, last_used_at, user_agent, ip"
    };
}

/// The `revocation_events` columns every event query selects.
macro_rules! event_columns {
    () => {
        "id, created_at, kind, user_id, session_id, not_before"
    };
}

/// The `refresh_tokens` columns every `RefreshTokenRow` query selects.
macro_rules! token_columns {
    () => {
        "jti, user_id, family_id, parent_jti, issued_at, expires_at, rotated_at, revoked_at"
    };
}

/// A session for every refresh-token family that has none (imports), ended when every token
/// of it is revoked.
pub(super) const SESSIONS_FROM_TOKENS: &str = r"
    insert into sessions (id, user_id, created_at, expires_at, revoked_at)
    select family_id, min(user_id), min(issued_at), max(expires_at),
           case when count(*) = count(revoked_at) then max(revoked_at) end
    from refresh_tokens
    group by family_id
    on conflict (id) do nothing";

/// Expands to `impl Store for $store` over the pool type `$db`, from the bodies below and the
/// dialect hooks listed in the module docs.
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        impl $store {
            /// The one refresh-token insert, inside a session's or a rotation's transaction.
            async fn insert_token(
                tx: &mut sqlx::Transaction<'_, $db>,
                token: &$crate::store::NewRefreshToken,
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

            /// Appends an event as its transaction's last write: ordered and announced the way
            /// the dialect does it (see the module docs).
            async fn append_event(
                tx: &mut sqlx::Transaction<'_, $db>,
                kind: $crate::store::EventKind,
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

            /// Voids the user's outstanding password-reset links, inside a transaction that
            /// holds the user's lock: after a password change, a logout everywhere, a reset or
            /// an admin's action, a link mailed before it must not set a password.
            async fn void_reset_tokens(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: i64,
            ) -> Result<(), sqlx::Error> {
                sqlx::query("delete from user_tokens where user_id = $1 and kind = $2")
                    .bind(user_id)
                    .bind($crate::store::MailTemplate::PasswordReset.as_str())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// Logout-all, inside a transaction that holds the user's lock: outstanding reset
            /// links are void, tokens issued before `now` (whole seconds) die, every session
            /// ends, and the user-wide event follows. Returns how many sessions were live.
            async fn log_out_everywhere(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: i64,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, sqlx::Error> {
                Self::void_reset_tokens(tx, user_id).await?;
                let cutoff = $crate::store::not_before(now);
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
                    $crate::store::EventKind::LoggedOutEverywhere,
                    user_id,
                    None,
                    Some(cutoff),
                    now,
                )
                .await?;
                Ok(ended)
            }

            /// Stores a one-time token (its kind is its mail's template), deleting the user's
            /// older ones of that kind: a newer token voids them.
            async fn insert_user_token(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: i64,
                token: &$crate::store::TokenMail,
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
            async fn consume_token(
                tx: &mut sqlx::Transaction<'_, $db>,
                token_hash: &[u8; 32],
                kind: $crate::store::MailTemplate,
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

            /// How many `template` messages were queued for a user after `since`, and when the
            /// last of them was (the throttles of the reset and verification mails).
            async fn recent_mail(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: i64,
                template: $crate::store::MailTemplate,
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
            async fn count_mail_to(
                tx: &mut sqlx::Transaction<'_, $db>,
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
                if sent >= $crate::store::MAIL_PER_ADDRESS_PER_HOUR {
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
            async fn queue_mail(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: i64,
                recipient: &str,
                mail: &$crate::store::NewMail,
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

            /// Ends every live session of a user but `except` and revokes their refresh tokens,
            /// under the user's lock, in two statements whatever their number; returns how many
            /// sessions were live. Events: one per ended session used at or after
            /// `announce_used_since`, which may still hold a live access token that nothing
            /// else refuses; the caller appends any user-wide one. Sessions never recorded as
            /// used (from before `last_used_at` existed) are announced only when
            /// `unrecorded_may_be_live`: after a user-wide cut-off they cannot hold a token of
            /// the cut-off second (every use since the column exists records itself first), so
            /// the user-wide event covers them all, however many there are.
            async fn end_user_sessions(
                tx: &mut sqlx::Transaction<'_, $db>,
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
                        $crate::store::EventKind::SessionRevoked,
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
            async fn end_session(
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: i64,
                id: uuid::Uuid,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, sqlx::Error> {
                let ended = sqlx::query(
                    "update sessions set revoked_at = $2 where id = $1 and revoked_at is null",
                )
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
                        $crate::store::EventKind::SessionRevoked,
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

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn ping(&self) -> Result<(), $crate::store::StoreError> {
                sqlx::query("select 1").execute(&self.pool).await?;
                Ok(())
            }

            fn pool_stats(&self) -> $crate::store::PoolStats {
                let size = self.pool.size();
                // sqlx reads the two counts separately, without a lock: while a connection
                // changes hands its idle count can come out wrapped below zero (seen as
                // 2^64 - 1). An idle count is at most the pool's size, never past it.
                let idle = u32::try_from(self.pool.num_idle()).map_or(0, |idle| idle.min(size));
                $crate::store::PoolStats { size, idle }
            }

            async fn migrate(&self) -> Result<(), $crate::store::StoreError> {
                Self::MIGRATOR
                    .run(&self.pool)
                    .await
                    .map_err(|e| $crate::store::StoreError::Other(e.into()))
            }

            async fn schema_is_current(&self) -> Result<bool, $crate::store::StoreError> {
                let applied = sqlx::query_scalar($crate::store::APPLIED_MIGRATIONS)
                    .fetch_all(&self.pool)
                    .await;
                $crate::store::covers(applied, &Self::MIGRATOR)
            }

            async fn insert_user(
                &self,
                email: &str,
                password_hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::UserRow, $crate::store::StoreError> {
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

            async fn find_user_by_email(
                &self,
                email: &str,
            ) -> Result<Option<$crate::store::UserRow>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "select ",
                    user_columns!(),
                    " from users where email = $1"
                ))
                .bind(email)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn find_user_by_id(
                &self,
                id: i64,
            ) -> Result<Option<$crate::store::UserRow>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "select ",
                    user_columns!(),
                    " from users where id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn set_user_active(
                &self,
                id: i64,
                active: bool,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                use $crate::store::EventKind;
                let mut tx = self.begin_write().await?;
                if Self::lock_user(&mut tx, id).await?.is_none() {
                    return Ok(false);
                }
                if active {
                    sqlx::query("update users set is_active = true, updated_at = $2 where id = $1")
                        .bind(id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    Self::append_event(&mut tx, EventKind::UserEnabled, id, None, None, now)
                        .await?;
                } else {
                    let cutoff = $crate::store::not_before(now);
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

            async fn delete_user(
                &self,
                id: i64,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                if Self::lock_user(&mut tx, id).await?.is_none() {
                    return Ok(false);
                }
                Self::append_event(
                    &mut tx,
                    $crate::store::EventKind::UserDeleted,
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

            async fn reserve_login_attempt(
                &self,
                key: &str,
                now: chrono::DateTime<chrono::Utc>,
                limits: $crate::store::AttemptLimits,
            ) -> Result<$crate::store::AttemptRow, $crate::store::StoreError> {
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

            async fn find_login_attempt(
                &self,
                key: &str,
            ) -> Result<Option<$crate::store::AttemptRow>, $crate::store::StoreError> {
                Ok(sqlx::query_as(
                    "select attempts, window_start, locked_until from login_attempts where key = $1",
                )
                .bind(key)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn clear_login_attempts(&self, key: &str) -> Result<(), $crate::store::StoreError> {
                sqlx::query("delete from login_attempts where key = $1")
                    .bind(key)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn update_password_hash(
                &self,
                id: i64,
                old_hash: &str,
                new_hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
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

            async fn start_session(
                &self,
                session: &$crate::store::NewSession,
                first: &$crate::store::NewRefreshToken,
                checked_hash: &str,
                max_live: i64,
            ) -> Result<Result<Vec<uuid::Uuid>, $crate::store::SessionRefused>, $crate::store::StoreError> {
                use $crate::store::SessionRefused;
                let mut tx = self.begin_write().await?;
                match Self::lock_user(&mut tx, session.user_id).await? {
                    None => return Ok(Err(SessionRefused::UserGone)),
                    Some(false) => return Ok(Err(SessionRefused::Disabled)),
                    Some(true) => {}
                }
                // Under the user's lock, so no password writer can commit between this read
                // and the commit below.
                let current: String =
                    sqlx::query_scalar("select password_hash from users where id = $1")
                        .bind(session.user_id)
                        .fetch_one(&mut *tx)
                        .await?;
                if current != checked_hash {
                    return Ok(Err(SessionRefused::PasswordChanged));
                }
                let now = session.created_at;
                sqlx::query(
                    r"insert into sessions
                        (id, user_id, created_at, expires_at, last_used_at, user_agent, ip)
                      values ($1, $2, $3, $4, $3, $5, $6)",
                )
                .bind(session.id)
                .bind(session.user_id)
                .bind(now)
                .bind(session.expires_at)
                .bind(session.user_agent.as_deref())
                .bind(session.ip.as_deref())
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

            async fn touch_session(
                &self,
                id: uuid::Uuid,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                // Never moves backwards (two refreshes finishing out of order).
                Ok(sqlx::query(
                    r"update sessions set last_used_at = case when last_used_at > $2
                        then last_used_at else $2 end
                      where id = $1 and revoked_at is null",
                )
                .bind(id)
                .bind(at)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn live_sessions(
                &self,
                user_id: i64,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::store::SessionRow>, $crate::store::StoreError> {
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

            async fn change_password(
                &self,
                change: &$crate::store::PasswordChange<'_>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
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
                Self::queue_mail(&mut tx, change.user_id, &email, change.notification, now)
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

            async fn find_session(
                &self,
                id: uuid::Uuid,
            ) -> Result<Option<$crate::store::SessionRow>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "select ",
                    session_columns!(),
                    " from sessions where id = $1"
                ))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn find_refresh_token(
                &self,
                jti: uuid::Uuid,
            ) -> Result<Option<$crate::store::RefreshTokenRow>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "select ",
                    token_columns!(),
                    " from refresh_tokens where jti = $1"
                ))
                .bind(jti)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn find_child_token(
                &self,
                parent: uuid::Uuid,
            ) -> Result<Option<$crate::store::RefreshTokenRow>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "select ",
                    token_columns!(),
                    " from refresh_tokens where parent_jti = $1"
                ))
                .bind(parent)
                .fetch_optional(&self.pool)
                .await?)
            }

            async fn rotate_refresh_token(
                &self,
                parent: uuid::Uuid,
                child: &$crate::store::NewRefreshToken,
                now: chrono::DateTime<chrono::Utc>,
                prune_rotated_before: chrono::DateTime<chrono::Utc>,
            ) -> Result<$crate::store::RotateOutcome, $crate::store::StoreError> {
                use $crate::store::RotateOutcome;
                let mut tx = self.begin_write().await?;
                if Self::lock_user(&mut tx, child.user_id).await? != Some(true) {
                    return Ok(RotateOutcome::Refused);
                }
                let session_live: Option<bool> =
                    sqlx::query_scalar("select revoked_at is null from sessions where id = $1")
                        .bind(child.family_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                if session_live != Some(true) {
                    return Ok(RotateOutcome::Refused);
                }
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
                let child = $crate::store::NewRefreshToken {
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
                .bind($crate::store::ROTATED_TOKENS_KEPT - 1)
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
                Ok(RotateOutcome::Rotated)
            }

            async fn revoke_session(
                &self,
                id: uuid::Uuid,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                // One lock order, the locking rule's: the user's row, then the session, then
                // its tokens. The owner is read before the transaction (a session never
                // changes hands), so nothing is locked before the user's row. A rotation of
                // this session in flight holds that row: this waits for it, and the updates
                // below, fresh statements after the lock, see the child it committed.
                let owner: Option<i64> =
                    sqlx::query_scalar("select user_id from sessions where id = $1")
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

            async fn revoke_user_sessions(
                &self,
                user_id: i64,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<u64, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                if Self::lock_user(&mut tx, user_id).await?.is_none() {
                    return Ok(0);
                }
                let ended = Self::log_out_everywhere(&mut tx, user_id, now).await?;
                tx.commit().await?;
                Ok(ended)
            }

            async fn events_since(
                &self,
                after: i64,
                limit: i64,
            ) -> Result<Vec<$crate::store::EventRow>, $crate::store::StoreError> {
                let rows: Vec<$crate::store::RawEventRow> = sqlx::query_as(concat!(
                    "select ",
                    event_columns!(),
                    " from revocation_events where id > $1 order by id limit $2"
                ))
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
                rows.into_iter()
                    .map($crate::store::EventRow::try_from)
                    .collect()
            }

            async fn event_bounds(&self) -> Result<Option<(i64, i64)>, $crate::store::StoreError> {
                let (first, last): (Option<i64>, Option<i64>) =
                    sqlx::query_as("select min(id), max(id) from revocation_events")
                        .fetch_one(&self.pool)
                        .await?;
                Ok(first.zip(last))
            }

            async fn last_event_id(&self) -> Result<i64, $crate::store::StoreError> {
                Ok(
                    sqlx::query_scalar("select coalesce(max(id), 0) from revocation_events")
                        .fetch_one(&self.pool)
                        .await?,
                )
            }

            fn event_signal(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
                self.notifications()
            }

            async fn update_user_email(
                &self,
                id: i64,
                old: &str,
                new: &str,
            ) -> Result<bool, $crate::store::StoreError> {
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

            async fn data_migration_done(&self, name: &str) -> Result<bool, $crate::store::StoreError> {
                Ok(sqlx::query_scalar::<_, i64>(
                    "select count(*) from data_migrations where name = $1",
                )
                .bind(name)
                .fetch_one(&self.pool)
                .await?
                    > 0)
            }

            async fn record_data_migration(
                &self,
                name: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
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

            async fn purge_batch(
                &self,
                purge: $crate::store::Purge,
                limit: i64,
            ) -> Result<u64, $crate::store::StoreError> {
                use $crate::store::Purge;
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

            async fn queue_password_reset(
                &self,
                request: &$crate::store::ResetRequest<'_>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
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
                    Self::recent_mail(&mut tx, user_id, kind, now - chrono::Duration::hours(1))
                        .await?;
                if last_hour >= request.per_hour
                    || latest.is_some_and(|at| at > now - request.min_interval)
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

            async fn reissue_token(
                &self,
                user_id: i64,
                kind: $crate::store::MailTemplate,
                token_hash: &[u8; 32],
                expires_at: chrono::DateTime<chrono::Utc>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
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

            async fn token_is_usable(
                &self,
                token_hash: &[u8; 32],
                kind: $crate::store::MailTemplate,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
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

            async fn reset_password(
                &self,
                token_hash: &[u8; 32],
                new_hash: &str,
                notification: &$crate::store::NewMail,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<i64>, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                let kind = $crate::store::MailTemplate::PasswordReset;
                let Some((user_id, active)) =
                    Self::consume_token(&mut tx, token_hash, kind, now).await?
                else {
                    return Ok(None);
                };
                if !active {
                    // Rolled back: a disabled user's token is not spent either.
                    return Ok(None);
                }
                let (email, mail_to): (String, String) = sqlx::query_as(
                    r"update users set password_hash = $2, updated_at = $3,
                        email_verified_at = coalesce(email_verified_at, $3)
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
                // The event is the transaction's last write (see append_event).
                Self::log_out_everywhere(&mut tx, user_id, now).await?;
                tx.commit().await?;
                Ok(Some(user_id))
            }

            async fn claim_mail(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                lease_until: chrono::DateTime<chrono::Utc>,
                limit: i64,
            ) -> Result<Vec<$crate::store::OutboxMail>, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                let ids = Self::due_mail(&mut tx, now, limit).await?;
                let mut claimed = Vec::with_capacity(ids.len());
                for id in ids {
                    let mail: $crate::store::OutboxMail = sqlx::query_as(
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

            async fn finish_mail(
                &self,
                id: i64,
                outcome: $crate::store::MailOutcome,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<(), $crate::store::StoreError> {
                use $crate::store::MailOutcome;
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

            async fn pending_mail(&self) -> Result<i64, $crate::store::StoreError> {
                Ok(sqlx::query_scalar(
                    "select count(*) from mail_outbox where sent_at is null and failed_at is null",
                )
                .fetch_one(&self.pool)
                .await?)
            }

            async fn register_user(
                &self,
                email: &str,
                mail_to: &str,
                password_hash: &str,
                now: chrono::DateTime<chrono::Utc>,
                verification: Option<&$crate::store::TokenMail>,
            ) -> Result<$crate::store::UserRow, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                let user: $crate::store::UserRow = sqlx::query_as(concat!(
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

            async fn queue_email_verification(
                &self,
                user_id: i64,
                verification: &$crate::store::TokenMail,
                min_interval: chrono::Duration,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
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
                let (recent, _) =
                    Self::recent_mail(&mut tx, user_id, kind, now - min_interval).await?;
                if verified.is_some() || recent > 0 || !Self::count_mail_to(&mut tx, &email, now).await? {
                    return Ok(false);
                }
                Self::insert_user_token(&mut tx, user_id, verification, now).await?;
                Self::queue_mail(&mut tx, user_id, &mail_to, &verification.mail, now).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn set_password(
                &self,
                user_id: i64,
                new_hash: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
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
                Self::log_out_everywhere(&mut tx, user_id, now).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn mark_email_verified(
                &self,
                user_id: i64,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, $crate::store::StoreError> {
                Ok(sqlx::query(
                    r"update users set email_verified_at = coalesce(email_verified_at, $2)
                      where id = $1",
                )
                .bind(user_id)
                .bind(now)
                .execute(&self.pool)
                .await?
                .rows_affected()
                    == 1)
            }

            async fn verify_email(
                &self,
                token_hash: &[u8; 32],
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<i64>, $crate::store::StoreError> {
                let mut tx = self.begin_write().await?;
                let kind = $crate::store::MailTemplate::VerifyEmail;
                let Some((user_id, _active)) =
                    Self::consume_token(&mut tx, token_hash, kind, now).await?
                else {
                    return Ok(None);
                };
                sqlx::query(
                    r"update users set email_verified_at = coalesce(email_verified_at, $2)
                      where id = $1",
                )
                .bind(user_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(user_id))
            }

            async fn export_users(
                &self,
            ) -> Result<Vec<$crate::store::UserRow>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "select ",
                    user_columns!(),
                    " from users order by id"
                ))
                .fetch_all(&self.pool)
                .await?)
            }

            async fn export_refresh_tokens(
                &self,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<$crate::store::RefreshTokenRow>, $crate::store::StoreError> {
                Ok(sqlx::query_as(concat!(
                    "select ",
                    token_columns!(),
                    " from refresh_tokens where expires_at > $1 order by issued_at"
                ))
                .bind(now)
                .fetch_all(&self.pool)
                .await?)
            }

            async fn import(
                &self,
                users: &[$crate::store::UserRow],
                tokens: &[$crate::store::RefreshTokenRow],
                merge: bool,
            ) -> Result<Option<$crate::store::ImportReport>, $crate::store::StoreError> {
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
                sqlx::query($crate::store::sql::SESSIONS_FROM_TOKENS)
                    .execute(&mut *tx)
                    .await?;
                Self::after_import(&mut tx).await?;
                tx.commit().await?;
                let users_inserted = u64::try_from(inserted.len()).unwrap_or(u64::MAX);
                Ok(Some($crate::store::ImportReport {
                    users: users_inserted,
                    skipped_users: u64::try_from(users.len()).unwrap_or(u64::MAX)
                        - users_inserted,
                    tokens: copied_tokens,
                }))
            }
        }
    };
}
