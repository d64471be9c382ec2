//! Existing accounts under the email rules: a data migration re-keys every stored email to its
//! comparison form ([`Email`]), once per database. Rows that would collide (two accounts that a
//! person reads as one address) are left exactly as they are, never merged, and listed by
//! `auth-service user collisions` for an operator to resolve; so are rows whose address the
//! rules now refuse. The service starts either way.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::email::Email;
use crate::store::{Store, StoreError, UserRow};

/// The name this data migration is recorded under.
pub const EMAIL_KEYS: &str = "email_keys_v1";

/// Accounts whose emails are one address under the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    /// The comparison form they share.
    pub key: String,
    /// Each account's id and stored email.
    pub users: Vec<(i64, String)>,
}

/// What the rules make of the stored emails.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmailReview {
    /// Accounts to re-key: id, stored email, comparison form.
    pub renames: Vec<(i64, String, String)>,
    /// Groups that would collide, left as they are.
    pub collisions: Vec<Collision>,
    /// Accounts whose stored email the rules refuse: id and email.
    pub refused: Vec<(i64, String)>,
}

/// Sorts every account under the rules.
#[must_use]
pub fn review(users: &[UserRow]) -> EmailReview {
    let mut by_key: BTreeMap<String, Vec<&UserRow>> = BTreeMap::new();
    let mut review = EmailReview::default();
    for user in users {
        match Email::parse(&user.email) {
            Some(email) => by_key
                .entry(email.as_str().to_owned())
                .or_default()
                .push(user),
            None => review.refused.push((user.id, user.email.clone())),
        }
    }
    for (key, group) in by_key {
        match group.as_slice() {
            [only] if only.email != key => {
                review.renames.push((only.id, only.email.clone(), key));
            }
            [_] => {}
            many => review.collisions.push(Collision {
                key,
                users: many.iter().map(|u| (u.id, u.email.clone())).collect(),
            }),
        }
    }
    review
}

/// Runs the re-keying once per database (recorded in `data_migrations`); returns the review
/// when it ran, `None` when it had run before.
///
/// # Errors
/// When the database fails (what was renamed stays renamed; the next start finishes the job).
pub async fn rekey_emails(
    store: &dyn Store,
    now: DateTime<Utc>,
) -> Result<Option<EmailReview>, StoreError> {
    if store.data_migration_done(EMAIL_KEYS).await? {
        return Ok(None);
    }
    let review = review(&store.export_users().await?);
    for (id, old, new) in &review.renames {
        match store.update_user_email(*id, old, new).await {
            // Changed meanwhile, or taken meanwhile by a registration: leave it.
            Ok(_) | Err(StoreError::Duplicate) => {}
            Err(err) => return Err(err),
        }
    }
    store.record_data_migration(EMAIL_KEYS, now).await?;
    if !review.collisions.is_empty() || !review.refused.is_empty() {
        tracing::warn!(
            collisions = review.collisions.len(),
            refused = review.refused.len(),
            "some stored emails could not be re-keyed; see `auth-service user collisions`"
        );
    }
    Ok(Some(review))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64, email: &str) -> UserRow {
        UserRow {
            id,
            email: email.to_owned(),
            password_hash: String::new(),
            is_active: true,
            created_at: DateTime::default(),
            updated_at: DateTime::default(),
            tokens_not_before: None,
            email_verified_at: None,
        }
    }

    #[test]
    fn renames_unique_keys_and_leaves_collisions_and_refusals_alone() {
        let review = review(&[
            user(1, "plain@example.com"),
            user(2, "jos\u{e9}@x.com"),
            user(3, "jose\u{301}@x.com"),
            user(4, "\u{ff41}@x.com"),
            user(5, "user..name@example.com"),
        ]);
        assert_eq!(
            review.renames,
            [(4, "\u{ff41}@x.com".to_owned(), "a@x.com".to_owned())]
        );
        assert_eq!(review.collisions.len(), 1);
        assert_eq!(
            review.collisions[0]
                .users
                .iter()
                .map(|u| u.0)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        assert_eq!(review.refused, [(5, "user..name@example.com".to_owned())]);
    }
}
