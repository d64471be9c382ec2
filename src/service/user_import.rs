//! `user import`: users from another system, one JSON object per line (API.md, "Bringing users
//! from another system"), with the password hash that system made. Each line is checked (email,
//! hash format and cost, fields), good lines are inserted in batches of [`BATCH`] in one
//! transaction each, and every skipped line is reported with its number and the reason, never
//! its hash. Login verifies the hash in its own format and replaces it with ours.
//!
//! The file is streamed and memory stays flat: one batch at a time. An email repeated across
//! batches is told apart from one that was there before by the id now holding it: ids only
//! grow, so a row at or above the first id this run inserted was inserted by this run. A dry
//! run writes nothing, so it keeps a digest of every email read instead (16 bytes per line).

use std::{
    collections::{BTreeMap, HashMap},
    hash::BuildHasher as _,
    io::BufRead,
};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::email::Email;
use crate::{
    password_formats::{self, Refusal},
    store::{ImportedRow, ImportedUser, Store, StoreError},
};

/// Users per transaction.
pub const BATCH: usize = 1000;

/// A line longer than this is skipped unread (a user's line is a few hundred bytes).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// One line of the file.
#[derive(Deserialize)]
struct Line {
    email: String,
    password_hash: String,
    #[serde(default)]
    email_verified: bool,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    disabled: bool,
}

/// Why a line was not imported. Every reason but [`Skip::Exists`] is a fault of the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Not a JSON object (or not UTF-8, or over [`MAX_LINE_BYTES`]).
    NotJson,
    /// A field missing or of the wrong type (the field's name, never its value).
    Fields(String),
    /// The email breaks the registration rules.
    InvalidEmail,
    /// The hash's format is unknown, it is malformed, or its parameters cost too much.
    Hash(Refusal),
    /// `created_at` is not an RFC 3339 time.
    CreatedAt,
    /// The same email (after normalisation) on an earlier line, which wins.
    Duplicate {
        /// The earlier line, when it is known (in the same batch, or in a dry run).
        first: Option<u64>,
    },
    /// A user with this email is in the database already (a second run of the same file).
    Exists,
}

impl Skip {
    /// Whether the line itself is at fault (the run then exits 3).
    #[must_use]
    pub fn is_fault(&self) -> bool {
        !matches!(self, Self::Exists)
    }

    /// The reason's kind, for the summary.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NotJson => "not a JSON object",
            Self::Fields(_) => "missing or mistyped fields",
            Self::InvalidEmail => "invalid email",
            Self::Hash(Refusal::Unrecognised) => "unrecognised hash",
            Self::Hash(Refusal::Malformed(_)) => "malformed hash",
            Self::Hash(Refusal::TooCostly(_)) => "hash too costly to verify",
            Self::CreatedAt => "invalid created_at",
            Self::Duplicate { .. } => "email repeated in the file",
            Self::Exists => "email already exists",
        }
    }
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fields(why) => write!(f, "{}: {why}", self.kind()),
            Self::Hash(refusal) => write!(f, "{refusal}"),
            Self::Duplicate { first: Some(first) } => {
                write!(f, "{} (first on line {first})", self.kind())
            }
            Self::Duplicate { first: None } => write!(f, "{} (an earlier line wins)", self.kind()),
            _ => f.write_str(self.kind()),
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Lines read (blank ones not counted).
    pub lines: u64,
    /// Users inserted (with `--dry-run`: that would have been).
    pub imported: u64,
    /// Skipped lines by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Skipped lines that were at fault.
    pub faults: u64,
}

/// Reads `reader` to its end and imports its users into `store` (nothing is written with
/// `dry_run`). `on_skip` hears of each skipped line (its number and why); `on_read` of the
/// bytes read so far, for a progress bar.
///
/// # Errors
/// When reading fails, or the database does (batches committed before stay).
pub async fn import_users(
    store: &dyn Store,
    mut reader: impl BufRead,
    dry_run: bool,
    now: DateTime<Utc>,
    mut on_skip: impl FnMut(u64, &Skip),
    mut on_read: impl FnMut(u64),
) -> Result<ImportSummary, ImportError> {
    let mut summary = ImportSummary::default();
    // The batch being filled, and each of its emails' line; in a dry run, digests of every
    // email read.
    let mut batch: Vec<ImportedUser> = Vec::with_capacity(BATCH);
    let mut in_batch: HashMap<String, u64> = HashMap::with_capacity(BATCH);
    let mut dry_seen: HashMap<u64, u64> = HashMap::new();
    let digests = std::hash::RandomState::new();
    let mut first_id: Option<i64> = None;
    let flush = Flush {
        store,
        dry_run,
        now,
    };
    let mut skip = |summary: &mut ImportSummary, number: u64, why: Skip| {
        *summary.skipped.entry(why.kind()).or_default() += 1;
        summary.faults += u64::from(why.is_fault());
        on_skip(number, &why);
    };
    let mut buffer = Vec::new();
    let (mut number, mut read) = (0u64, 0u64);
    loop {
        buffer.clear();
        let Some(length) = read_line(&mut reader, &mut buffer)? else {
            break;
        };
        number += 1;
        read += length;
        on_read(read);
        if buffer.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.lines += 1;
        let user = match check(&buffer, now) {
            Ok(user) => user,
            Err(why) => {
                skip(&mut summary, number, why);
                continue;
            }
        };
        let earlier = if dry_run {
            let digest = digests.hash_one(&user.email);
            let earlier = dry_seen.get(&digest).copied();
            dry_seen.entry(digest).or_insert(number);
            earlier
        } else {
            in_batch.get(&user.email).copied()
        };
        if let Some(first) = earlier {
            skip(&mut summary, number, Skip::Duplicate { first: Some(first) });
            continue;
        }
        in_batch.insert(user.email.clone(), number);
        batch.push(user);
        if batch.len() == BATCH {
            flush
                .run(
                    &mut batch,
                    &mut in_batch,
                    &mut first_id,
                    &mut summary,
                    &mut skip,
                )
                .await?;
        }
    }
    flush
        .run(
            &mut batch,
            &mut in_batch,
            &mut first_id,
            &mut summary,
            &mut skip,
        )
        .await?;
    Ok(summary)
}

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file could not be read.
    #[error("cannot read the file: {0}")]
    Read(#[from] std::io::Error),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where a batch goes.
struct Flush<'a> {
    store: &'a dyn Store,
    dry_run: bool,
    now: DateTime<Utc>,
}

impl Flush<'_> {
    /// Inserts the batch and empties it (`lines`: each email's line). A line whose email was
    /// there is skipped: as repeated when this run inserted the row holding it (at or above
    /// `first_id`, the first id this run inserted), else as existing.
    async fn run(
        &self,
        batch: &mut Vec<ImportedUser>,
        lines: &mut HashMap<String, u64>,
        first_id: &mut Option<i64>,
        summary: &mut ImportSummary,
        skip: &mut impl FnMut(&mut ImportSummary, u64, Skip),
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows: HashMap<String, ImportedRow> = self
            .store
            .insert_imported_users(batch, self.now, self.dry_run)
            .await?
            .into_iter()
            .map(|row| (row.email.clone(), row))
            .collect();
        if !self.dry_run && first_id.is_none() {
            *first_id = rows.values().filter(|r| r.inserted).map(|r| r.id).min();
        }
        for user in batch.drain(..) {
            let number = lines.get(&user.email).copied().unwrap_or_default();
            match rows.get(&user.email) {
                Some(row) if row.inserted => summary.imported += 1,
                Some(row) if first_id.is_some_and(|first| row.id >= first) => {
                    skip(summary, number, Skip::Duplicate { first: None });
                }
                _ => skip(summary, number, Skip::Exists),
            }
        }
        lines.clear();
        Ok(())
    }
}

/// One line, checked: the user to insert, or why not.
fn check(line: &[u8], now: DateTime<Utc>) -> Result<ImportedUser, Skip> {
    // serde would read a struct from an array too; the contract wants an object.
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Skip::NotJson);
    }
    let line: Line = serde_json::from_slice(line).map_err(|err| match err.classify() {
        serde_json::error::Category::Data => Skip::Fields(field_problem(&err)),
        _ => Skip::NotJson,
    })?;
    let email = Email::parse(&line.email).ok_or(Skip::InvalidEmail)?;
    password_formats::classify(&line.password_hash).map_err(Skip::Hash)?;
    let created_at = match line.created_at.as_deref() {
        None => now,
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|_| Skip::CreatedAt)?
            .with_timezone(&Utc),
    };
    Ok(ImportedUser {
        email: email.as_str().to_owned(),
        password_hash: line.password_hash,
        is_active: !line.disabled,
        created_at,
        email_verified_at: line.email_verified.then_some(created_at),
    })
}

/// What serde says about a field, without the value it found (which could be a hash).
fn field_problem(err: &serde_json::Error) -> String {
    let text = err.to_string();
    if let Some(rest) = text.strip_prefix("missing field `") {
        return format!("missing `{}`", rest.split('`').next().unwrap_or_default());
    }
    if text.starts_with("invalid type") {
        return "email and password_hash are strings, email_verified and disabled booleans, \
                created_at a string"
            .to_owned();
    }
    "not a user object".to_owned()
}

/// Reads one line (without its newline) into `buffer`; its length in bytes with the newline,
/// or `None` at the end. A line over [`MAX_LINE_BYTES`] is read to its end but kept empty of
/// content except a marker that cannot parse, so it is reported as not JSON.
fn read_line(reader: &mut impl BufRead, buffer: &mut Vec<u8>) -> std::io::Result<Option<u64>> {
    let mut length = 0u64;
    let mut too_long = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            break;
        }
        let (chunk, done) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (&available[..at], at + 1),
            None => (available, available.len()),
        };
        if !too_long {
            if buffer.len() + chunk.len() > MAX_LINE_BYTES {
                too_long = true;
                buffer.clear();
                buffer.push(b'\0');
            } else {
                buffer.extend_from_slice(chunk);
            }
        }
        let ended = done > chunk.len();
        reader.consume(done);
        length += done as u64;
        if ended {
            return Ok(Some(length));
        }
    }
    Ok((length > 0).then_some(length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_whole_and_long_ones_are_cut_off() {
        let long = "x".repeat(MAX_LINE_BYTES + 10);
        let text = format!("one\n\n{long}\nlast");
        let mut reader = std::io::Cursor::new(text.into_bytes());
        let mut buffer = Vec::new();
        let mut lines = Vec::new();
        while let Some(length) = read_line(&mut reader, &mut buffer).unwrap() {
            lines.push((String::from_utf8_lossy(&buffer).into_owned(), length));
            buffer.clear();
        }
        assert_eq!(
            lines,
            [
                ("one".to_owned(), 4),
                (String::new(), 1),
                ("\0".to_owned(), MAX_LINE_BYTES as u64 + 11),
                ("last".to_owned(), 4),
            ]
        );
    }

    #[test]
    fn a_line_is_checked_without_echoing_its_hash() {
        let now = Utc::now();
        let hash = "$P$6maPPE8TkQ5VY.lVM2wfxDbKNGdRu41";
        let good = format!(
            r#"{{"email": " Ann@Example.COM ", "password_hash": "{hash}", "email_verified": true,
                "created_at": "2020-01-02T03:04:05Z", "disabled": true, "extra": 1}}"#
        );
        let user = check(good.as_bytes(), now).unwrap();
        assert_eq!(user.email, "ann@example.com");
        assert!(!user.is_active);
        assert_eq!(user.created_at.to_rfc3339(), "2020-01-02T03:04:05+00:00");
        assert_eq!(user.email_verified_at, Some(user.created_at));
        for (line, expected) in [
            ("[1, 2]", "not a JSON object"),
            ("{not json", "not a JSON object"),
            (r#"{"email": "a@b.co"}"#, "missing or mistyped fields"),
            (
                r#"{"email": "a@b.co", "password_hash": 12345678}"#,
                "missing or mistyped fields",
            ),
            (
                r#"{"email": "nope", "password_hash": "$P$6maPPE8TkQ5VY.lVM2wfxDbKNGdRu41"}"#,
                "invalid email",
            ),
            (
                r#"{"email": "a@b.co", "password_hash": "md5:0123"}"#,
                "unrecognised hash",
            ),
            (
                r#"{"email": "a@b.co", "password_hash": "$P$6maPPE8TkQ5VY.lVM2wfxDbKNGdRu41", "created_at": "yesterday"}"#,
                "invalid created_at",
            ),
        ] {
            let why = check(line.as_bytes(), now).unwrap_err();
            assert_eq!(why.kind(), expected, "{line}");
            assert!(!why.to_string().contains("12345678"), "{why}");
        }
    }
}
