-- Accounts. The email is stored already normalised (trimmed, lower case) by the service, and the
-- unique index on it is what makes concurrent registrations of one email yield exactly one row.
create table users (
    id integer primary key autoincrement,
    email text not null,
    password_hash text not null,
    is_active boolean not null default true,
    created_at text not null,
    updated_at text not null
);

create unique index users_email_key on users (email);
