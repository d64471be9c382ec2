-- Sessions as devices: when each was last used (login and refresh), from which user agent and
-- client IP; existing sessions get nulls (their last use counts as unknown, see below).
--
-- last_used_at is written before every access token of the session is signed, with the token's
-- own `iat`: so ending many sessions at once needs an event only for the sessions that may still
-- hold a live access token (used since the cut-off), and the listing can say when each device
-- was last seen. A null (a session from before this migration) counts as "maybe in use".
alter table sessions add column last_used_at timestamptz;
alter table sessions add column user_agent text;
alter table sessions add column ip text;

-- A user's live sessions, least recently used first: the cap's eviction, the listing, and the
-- "used since" selection when all of them end.
create index sessions_user_live on sessions (user_id, last_used_at) where revoked_at is null;
