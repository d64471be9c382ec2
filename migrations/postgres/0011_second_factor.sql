-- The second factor: TOTP factors, recovery codes, the sign-in challenges between a password
-- and a code, and the sign-in methods of each session.
--
-- sessions.amr: the methods the session's sign-in used, space-separated ("pwd", "pwd otp");
-- its level (aal1, aal2) follows from them, so a refresh keeps it. Sessions from before count
-- as password sign-ins.
--
-- mfa_factors: secret is the TOTP key, AES-256-GCM-sealed under the key named by secret_key
-- (null: stored in the clear, when no DATA_ENCRYPTION_KEY is set). A factor is unconfirmed
-- until confirmed_at; last_step is the newest time step accepted, and a code is accepted
-- only by a guarded update that moves it forward (so each step works once, on every replica).
--
-- mfa_recovery_codes: only a hash of each code; used_at set by one guarded update.
--
-- mfa_challenges: what a password sign-in of a user with a factor hands out (the mfa_token),
-- as its SHA-256 only; used once, by the session it starts.
alter table sessions add column amr text not null default 'pwd';

create table mfa_factors (
    id uuid primary key,
    user_id bigint not null references users (id) on delete cascade,
    kind text not null,
    secret bytea not null,
    secret_key text,
    created_at timestamptz not null,
    confirmed_at timestamptz,
    last_used_at timestamptz,
    last_step bigint
);

create index mfa_factors_user on mfa_factors (user_id);

create table mfa_recovery_codes (
    user_id bigint not null references users (id) on delete cascade,
    code_hash bytea not null,
    created_at timestamptz not null,
    used_at timestamptz,
    primary key (user_id, code_hash)
);

create table mfa_challenges (
    token_hash bytea primary key,
    user_id bigint not null references users (id) on delete cascade,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    used_at timestamptz
);

create index mfa_challenges_user on mfa_challenges (user_id);
create index mfa_challenges_expires_at on mfa_challenges (expires_at);
