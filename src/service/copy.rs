//! `copy-data`: moves users and live refresh tokens from one database to another, of either
//! kind (the original's "SQLite to PostgreSQL" guide, done in one transaction on the target).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::store::{ImportReport, RefreshTokenRow, Store, StoreError};

/// Why a copy did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The target has users and `--merge` was not given.
    #[error("the target database already has users; pass --merge to add to them")]
    TargetNotEmpty,
    /// Either database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies every user (ids, hashes, flags, timestamps) and every refresh token not expired at
/// `now` from `from` into `to`.
///
/// # Errors
/// `TargetNotEmpty` without `merge` on a target with users; `Store` when either side fails
/// (nothing is written to the target then).
pub async fn copy_data(
    from: &dyn Store,
    to: &dyn Store,
    merge: bool,
    now: DateTime<Utc>,
) -> Result<ImportReport, CopyError> {
    let users = from.export_users().await?;
    let tokens = parents_first(from.export_refresh_tokens(now).await?);
    to.import(&users, &tokens, merge)
        .await?
        .ok_or(CopyError::TargetNotEmpty)
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
