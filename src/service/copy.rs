//! `copy-data`: moves users, live refresh tokens, second factors and passkeys from one database to
//! another, of either kind (the original's "SQLite to PostgreSQL" guide, done in one
//! transaction on the target).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::email::Email;
use crate::store::{ImportReport, RefreshTokenRow, Store, StoreError, Transfer, UserRow};

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target has users and `--merge` was not given.
    #[error("the target database already has users; pass --merge to add to them")]
    TargetNotEmpty,
    /// The source has no users (a mistyped path, the wrong database) and `--allow-empty` was
    /// not given.
    #[error("the source database has no users; pass --allow-empty to copy anyway")]
    EmptySource,
    /// Either database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies every user (ids, hashes, flags, timestamps), every refresh token not expired at
/// `now`, every confirmed second factor, every unused recovery code and every passkey from `from`
/// into `to`.
/// A user's second factor must come along: without it the copy would sign them in with the
/// password alone. Copied sessions are password sign-ins (aal1): a step-up raises them again.
///
/// # Errors
/// `EmptySource` when the source has no users, unless `allow_empty`; `TargetNotEmpty` without
/// `merge` on a target with users; `Store` when either side fails (nothing is written to the
/// target then).
pub async fn copy_data(
    from: &dyn Store,
    to: &dyn Store,
    merge: bool,
    allow_empty: bool,
    now: DateTime<Utc>,
) -> Result<ImportReport, CopyError> {
    let users = from.export_users().await?;
    if users.is_empty() && !allow_empty {
        return Err(CopyError::EmptySource);
    }
    let tokens = parents_first(from.export_refresh_tokens(now).await?);
    let (factors, recovery_codes) = from.export_second_factors().await?;
    let passkeys = from.export_passkeys().await?;
    let transfer = Transfer {
        users,
        tokens,
        factors,
        recovery_codes,
        passkeys,
    };
    to.import(&transfer, merge)
        .await?
        .ok_or(CopyError::TargetNotEmpty)
}

/// Imports the accounts read from the original service's database into `to`: emails are
/// normalised as registration does; rows whose email is not an address, or collides with one
/// already imported, are skipped and counted. Nobody's refresh tokens come along (the
/// original's tokens are not trusted here: users log in again).
///
/// # Errors
/// `TargetNotEmpty` without `merge` on a target with users; `Store` when the target fails.
pub async fn import_original(
    users: Vec<UserRow>,
    to: &dyn Store,
    merge: bool,
) -> Result<ImportReport, CopyError> {
    let total = users.len();
    let mut seen = HashSet::new();
    let users: Vec<UserRow> = users
        .into_iter()
        .filter_map(|user| {
            let email = Email::parse(&user.email)?;
            seen.insert(email.as_str().to_owned()).then(|| UserRow {
                email: email.as_str().to_owned(),
                ..user
            })
        })
        .collect();
    let unusable = u64::try_from(total - users.len()).unwrap_or(u64::MAX);
    let transfer = Transfer {
        users,
        ..Transfer::default()
    };
    let mut report = to
        .import(&transfer, merge)
        .await?
        .ok_or(CopyError::TargetNotEmpty)?;
    report.skipped_users += unusable;
    Ok(report)
}

/// Orders tokens so each parent precedes its child, and drops links to parents that are not
/// copied (expired ones), so the foreign key holds on the target.
fn parents_first(mut pending: Vec<RefreshTokenRow>) -> Vec<RefreshTokenRow> {
    let copied: HashSet<Uuid> = pending.iter().map(|t| t.jti).collect();
    for token in &mut pending {
        if token.parent_jti.is_some_and(|p| !copied.contains(&p)) {
            token.parent_jti = None;
        }
    }
    let mut placed = HashSet::with_capacity(pending.len());
    let mut ordered = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let (ready, rest): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|t| t.parent_jti.is_none_or(|p| placed.contains(&p)));
        if ready.is_empty() {
            // A cycle cannot come from rotation; keep the rows rather than loop forever.
            ordered.extend(rest);
            break;
        }
        placed.extend(ready.iter().map(|t| t.jti));
        ordered.extend(ready);
        pending = rest;
    }
    ordered
}
