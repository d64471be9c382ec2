//! Passkeys (WebAuthn): the credentials, and the ceremonies between a start and its finish.

use super::{NewMail, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

/// A passkey as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct PasskeyRow {
    /// The `passkey_id`.
    pub id: Uuid,
    /// Whose passkey it is.
    pub user_id: i64,
    /// The opaque id the authenticator keeps for the user.
    pub user_handle: Uuid,
    /// The credential's id (unique across users).
    pub credential_id: Vec<u8>,
    /// The credential as webauthn-rs serialises it (public key, counter, flags).
    pub credential: String,
    /// The newest signature counter seen.
    pub sign_count: i64,
    /// The user's label.
    pub name: String,
    /// Its registration.
    pub created_at: DateTime<Utc>,
    /// The last sign-in with it.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What a ceremony is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyKind {
    /// A registration, by a signed-in user.
    Register,
    /// A discoverable sign-in, by anyone.
    Login,
}

impl CeremonyKind {
    /// The `kind` column.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Login => "login",
        }
    }
}

/// A ceremony about to be stored.
#[derive(Debug, Clone)]
pub struct NewCeremony<'a> {
    /// The `ceremony_id`.
    pub id: Uuid,
    /// What it is for.
    pub kind: CeremonyKind,
    /// The registering user; `None` for a sign-in.
    pub user_id: Option<i64>,
    /// The state webauthn-rs needs to finish it.
    pub state: &'a str,
    /// Now.
    pub created_at: DateTime<Utc>,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// A verified registration, for [`PasskeyStore::add_passkey`].
#[derive(Debug, Clone)]
pub struct NewPasskey<'a> {
    /// The new `passkey_id`.
    pub id: Uuid,
    /// Whose passkey it is.
    pub user_id: i64,
    /// The user handle the authenticator was given.
    pub user_handle: Uuid,
    /// The credential's id.
    pub credential_id: &'a [u8],
    /// The credential as webauthn-rs serialises it.
    pub credential: &'a str,
    /// The user's label.
    pub name: &'a str,
    /// The "passkey added" notification.
    pub notification: &'a NewMail,
    /// Now.
    pub created_at: DateTime<Utc>,
}

/// A sign-in with a passkey, checked again in the transaction of the session it starts (see
/// [`SignInProof::Passkey`](super::SignInProof::Passkey)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasskeyUse<'a> {
    /// The passkey.
    pub id: Uuid,
    /// The signature counter the sign-in was checked against: it must still be the stored
    /// one (a concurrent sign-in that moved it first wins).
    pub seen_count: i64,
    /// The signature counter the authenticator presented.
    pub new_count: i64,
    /// The credential after the sign-in (counter and backup flags updated).
    pub credential: &'a str,
}

/// Why [`PasskeyStore::add_passkey`] stored nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasskeyRefused {
    /// The credential is registered already (to this user or another).
    Registered,
    /// The user is gone.
    UserGone,
}

/// The store's passkey chapter (see [`Store`](super::Store) for the rules every chapter keeps).
#[async_trait]
pub trait PasskeyStore: Send + Sync {
    /// Stores a ceremony. A registration replaces the user's earlier registration ceremonies. A
    /// sign-in (no user) first deletes a batch of expired ceremonies, and is stored only while
    /// fewer than `max_sign_ins` unexpired sign-in ceremonies exist: false (nothing stored) when
    /// the table is full.
    async fn add_ceremony(
        &self,
        ceremony: &NewCeremony<'_>,
        max_sign_ins: i64,
    ) -> Result<bool, StoreError>;

    /// Uses a ceremony, once: deletes it and returns its state, if it is of `kind`, of `user_id`
    /// (`None`: a sign-in's) and unexpired at `now`. Another user's ceremony is left alone.
    async fn take_ceremony(
        &self,
        id: Uuid,
        kind: CeremonyKind,
        user_id: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError>;

    /// The user's passkeys, oldest first.
    async fn user_passkeys(&self, user_id: i64) -> Result<Vec<PasskeyRow>, StoreError>;

    /// The passkey with this credential id.
    async fn find_passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<PasskeyRow>, StoreError>;

    /// Stores a verified passkey and queues its notification, under the user's lock.
    async fn add_passkey(
        &self,
        passkey: &NewPasskey<'_>,
    ) -> Result<Result<(), PasskeyRefused>, StoreError>;

    /// Removes a passkey of the user and queues the notification, under the user's lock.
    /// Whether it was there.
    async fn remove_passkey(
        &self,
        id: Uuid,
        user_id: i64,
        notification: &NewMail,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
}
