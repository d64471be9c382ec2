-- Account recovery: one-time tokens (password reset, email verification), the mail outbox,
-- and whether an address is verified.
--
-- user_tokens: only the SHA-256 of a token is stored; the token itself is in the mail's link
-- and nowhere else once the mail is sent. A token is used once (used_at set by one atomic
-- update); a newer token of a kind deletes the user's older ones of that kind.
--
-- mail_outbox: every message is written in the transaction of the change that causes it and
-- sent by a background worker of any replica: a worker claims a due row by setting
-- leased_until (under SQLite's one writer), sends, and sets sent_at; a failure sets
-- next_attempt_at (exponential backoff); past MAIL_MAX_RETRY_HOURS, failed_at. A replica that
-- dies mid-send leaves its lease to run out. The link (with the token) is cleared once sent.
alter table users add column email_verified_at text;
-- Users that existed before verification count as verified.
update users set email_verified_at = created_at;

create table user_tokens (
    token_hash blob primary key,
    kind text not null,
    user_id integer not null references users (id) on delete cascade,
    created_at text not null,
    expires_at text not null,
    used_at text
);

create index user_tokens_user_kind on user_tokens (user_id, kind);

create table mail_outbox (
    id integer primary key autoincrement,
    user_id integer references users (id) on delete cascade,
    recipient text not null,
    template text not null,
    link text,
    created_at text not null,
    next_attempt_at text not null,
    attempts integer not null default 0,
    leased_until text,
    sent_at text,
    failed_at text
);

create index mail_outbox_due on mail_outbox (next_attempt_at)
    where sent_at is null and failed_at is null;
create index mail_outbox_user_template on mail_outbox (user_id, template, created_at);
