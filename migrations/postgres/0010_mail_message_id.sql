-- Each message's Message-ID (RFC 5322), made when it is queued and the same on every retry, so
-- receivers can tell a retry from a new message (and large providers refuse mail without one).
-- Messages queued before this get one derived from their row at send time.
alter table mail_outbox add column message_id text;
