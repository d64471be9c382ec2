-- Where mail goes: the address as the user typed it (local part as typed, domain as IDNA maps
-- it), beside the comparison key in `email` (local part case-folded). Folding is for finding an
-- account, never for delivering: `Straße@` and `strasse@` can be two mailboxes. Null (accounts
-- from before this, admin-created or imported ones) means the key itself.
alter table users add column mail_to text;
