-- Mail per address: verification and reset mails together are capped per address per hour,
-- whatever caused them (API.md, "Mail per address"). Counted here, one row per message queued,
-- rather than in mail_outbox, whose rows go with a deleted user: deleting and re-creating an
-- account must not reset the count. The address is the stored (normalised) email. Rows older
-- than an hour are purged. Writers hold the lock of the user who owns the address, so the
-- count is exact across replicas.
create table mail_sends (
    address text not null,
    created_at timestamptz not null
);

create index mail_sends_address on mail_sends (address, created_at);
