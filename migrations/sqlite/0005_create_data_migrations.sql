-- Data migrations that run in Rust after the schema ones (their logic cannot be SQL), each
-- recorded here once done, so a restart does not redo them. The first re-keys every email to
-- its comparison form (NFKC, case folding, IDNA); see service::email.
create table data_migrations (
    name text primary key,
    applied_at text not null
);
