-- Passkeys (WebAuthn) and the ceremonies between a start and its finish.
--
-- passkeys: credential is webauthn-rs's Passkey as JSON (the public key, its algorithm, the
-- signature counter, the backup flags: nothing secret). credential_id is unique across users:
-- a discoverable sign-in finds the passkey by it. user_handle is the opaque id the
-- authenticator keeps for the user (one per user, random, never the user's id or email).
-- sign_count is the newest signature counter seen; a sign-in moves it forward by a guarded
-- update in the transaction of the session it starts.
--
-- passkey_ceremonies: the server-side state of a started registration (user_id set) or
-- discoverable sign-in (user_id null), as webauthn-rs serialises it; it never leaves the
-- server. A finish deletes its row (single use); rows live 5 minutes and are purged.
create table passkeys (
    id blob primary key,
    user_id integer not null references users (id) on delete cascade,
    user_handle blob not null,
    credential_id blob not null unique,
    credential text not null,
    sign_count integer not null default 0,
    name text not null,
    created_at text not null,
    last_used_at text
);

create index passkeys_user on passkeys (user_id);

create table passkey_ceremonies (
    id blob primary key,
    kind text not null,
    user_id integer references users (id) on delete cascade,
    state text not null,
    created_at text not null,
    expires_at text not null
);

create index passkey_ceremonies_user on passkey_ceremonies (user_id);
create index passkey_ceremonies_expires_at on passkey_ceremonies (expires_at);
