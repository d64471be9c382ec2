-- Failed-login counters per key (the normalised email), updated by one upsert per attempt so
-- that parallel guesses are counted exactly, across processes sharing the database.
create table login_attempts (
    key text primary key,
    attempts bigint not null,
    window_start timestamptz not null,
    locked_until timestamptz
);
