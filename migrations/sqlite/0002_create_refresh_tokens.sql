-- Refresh tokens as rows, so rotation, logout and logout-all hold across restarts and replicas.
-- family_id groups every token descended from one login (reuse revokes the family); parent_jti
-- links a rotated token to its single child (unique: one parent never has two children).
create table refresh_tokens (
    jti blob primary key,
    user_id integer not null references users (id) on delete cascade,
    family_id blob not null,
    parent_jti blob unique references refresh_tokens (jti) on delete cascade,
    issued_at text not null,
    expires_at text not null,
    rotated_at text,
    revoked_at text
);

create index refresh_tokens_user_id on refresh_tokens (user_id);
create index refresh_tokens_family_id on refresh_tokens (family_id);
