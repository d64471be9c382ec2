-- Sessions and the revocation feed.
--
-- A session is what one login starts: every access and refresh token of it carries its id as
-- `sid` (for refresh tokens it is also their family_id). Ending a session (logout, reuse
-- detection, logout-all, disable, delete) sets revoked_at, and /auth/verify refuses the
-- session's access tokens from then on.
--
-- users.tokens_not_before: tokens of the user issued (iat, whole seconds) before it are dead
-- (logout-all, disable); sessions ended in the same second are revoked individually.
--
-- revocation_events: every change that can kill a token appends a row in the same
-- transaction. Each process follows this table to keep its in-memory view exact; the feed for
-- local verifiers reads it too. Rows older than the access-token lifetime are pruned.
create table sessions (
    id blob primary key,
    user_id integer not null references users (id) on delete cascade,
    created_at text not null,
    expires_at text not null,
    revoked_at text
);

create index sessions_user_id on sessions (user_id);

-- Every existing refresh-token family becomes a session; one whose tokens are all revoked is
-- a revoked session.
insert into sessions (id, user_id, created_at, expires_at, revoked_at)
select family_id, min(user_id), min(issued_at), max(expires_at),
       case when count(*) = count(revoked_at) then max(revoked_at) end
from refresh_tokens
group by family_id;

alter table users add column tokens_not_before text;

create table revocation_events (
    id integer primary key autoincrement,
    created_at text not null,
    kind text not null,
    user_id integer not null,
    session_id blob,
    not_before text
);

create index revocation_events_created_at on revocation_events (created_at);
