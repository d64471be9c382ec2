//! Operator actions behind the `auth-service user ...` commands. Same rules as the API
//! (email normalisation, password policy), each one audited as `admin_user_*`.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret as _, SecretString};

use super::{
    AuthError, AuthService, RegisteredUser,
    audit::{self, Caller, Event, Outcome},
    email::Email,
};
use super::{copy::CopyError, rekey::EmailReview};
use std::net::IpAddr;

use ipnet::IpNet;

use super::lockout::{self, LockoutKey};
use crate::store::{AttemptRow, ImportReport, StoreError, UserRow};

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No user has that email.
    #[error("user not found")]
    NotFound,
    /// A rule of the API refused it (invalid email, weak password, existing user, ...).
    #[error("{0}")]
    Refused(AuthError),
    /// The database failed; the operator sees the whole cause, not the API's generic text.
    #[error(transparent)]
    Database(#[from] StoreError),
    /// Anything else unexpected, with its cause.
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl From<AuthError> for AdminError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Unavailable(store) => Self::Database(store),
            AuthError::Internal(cause) => Self::Internal(cause),
            refused => Self::Refused(refused),
        }
    }
}

/// Records a successful admin action on the audit trail.
fn audited(action: &'static str, user_id: i64) -> i64 {
    audit::record(
        Event::Admin(action),
        Outcome::Success,
        Some(user_id),
        &Caller::cli(),
    );
    user_id
}

/// What `user show` prints; never the hash.
#[derive(Debug, Clone)]
pub struct UserSummary {
    /// The user's id.
    pub id: i64,
    /// Normalised email.
    pub email: String,
    /// False when disabled.
    pub active: bool,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// Until when logins are locked, if they are now.
    pub locked_until: Option<DateTime<Utc>>,
}

impl AuthService {
    async fn user_by_email(&self, email: &str) -> Result<(Email, UserRow), AdminError> {
        let email = Email::parse(email).ok_or(AuthError::InvalidEmail)?;
        let user = self.0.store.find_user_by_email(email.as_str()).await?;
        user.map(|u| (email, u)).ok_or(AdminError::NotFound)
    }

    /// `user create EMAIL`: as `/auth/register`.
    ///
    /// # Errors
    /// `Refused` with the API's reason.
    pub async fn admin_create_user(
        &self,
        email: &str,
        password: SecretString,
    ) -> Result<RegisteredUser, AdminError> {
        let user = self.create_user(email, password).await?;
        audited("admin_user_create", user.id);
        Ok(user)
    }

    /// `user disable EMAIL` / `user enable EMAIL`. Disabling ends every session and every
    /// token issued before it, for good (enabling again revives none of them); running servers
    /// learn it from the events table within a second.
    ///
    /// # Errors
    /// `NotFound`, or `Database` for a database failure.
    pub async fn admin_set_active(&self, email: &str, active: bool) -> Result<i64, AdminError> {
        let (_, user) = self.user_by_email(email).await?;
        if !self
            .0
            .store
            .set_user_active(user.id, active, self.instant())
            .await?
        {
            return Err(AdminError::NotFound);
        }
        self.0.revocations.user_changed(user.id);
        let name = if active {
            "admin_user_enable"
        } else {
            "admin_user_disable"
        };
        Ok(audited(name, user.id))
    }

    /// `user set-password EMAIL`: a new password under the registration policy; every session
    /// of the user ends, and running servers learn it from the events table within a second.
    ///
    /// # Errors
    /// `NotFound`, `Refused` (weak password), or `Database` for a database failure.
    pub async fn admin_set_password(
        &self,
        email: &str,
        password: SecretString,
    ) -> Result<i64, AdminError> {
        let (_, user) = self.user_by_email(email).await?;
        super::password_policy::check(password.expose_secret())?;
        let hash = self
            .0
            .passwords
            .hash(password)
            .await
            .map_err(AuthError::from)?;
        if !self
            .0
            .store
            .set_password_by_admin(user.id, &hash, self.instant())
            .await?
        {
            return Err(AdminError::NotFound);
        }
        self.0.revocations.user_changed(user.id);
        Ok(audited("admin_user_set_password", user.id))
    }

    /// `user verify-email EMAIL`: marks the address verified.
    ///
    /// # Errors
    /// `NotFound`, or `Database` for a database failure.
    pub async fn admin_verify_email(&self, email: &str) -> Result<i64, AdminError> {
        let (_, user) = self.user_by_email(email).await?;
        if !self
            .0
            .store
            .mark_email_verified(user.id, self.instant())
            .await?
        {
            return Err(AdminError::NotFound);
        }
        Ok(audited("admin_user_verify_email", user.id))
    }

    /// `user unlock EMAIL`: clears the lockout counter.
    ///
    /// # Errors
    /// `NotFound`, or `Refused` for a database failure.
    pub async fn admin_unlock(&self, email: &str) -> Result<i64, AdminError> {
        let (email, user) = self.user_by_email(email).await?;
        for key in [LockoutKey::Email(&email), LockoutKey::SecondFactor(user.id)] {
            self.0.store.clear_login_attempts(&key.stored()).await?;
        }
        Ok(audited("admin_user_unlock", user.id))
    }

    /// `user mfa-reset EMAIL`: removes the user's second factors and recovery codes and ends
    /// every session (the user who lost both the phone and the codes). The user's id, and
    /// whether there was a factor to remove.
    ///
    /// # Errors
    /// `NotFound`, or `Database` for a database failure.
    pub async fn admin_mfa_reset(&self, email: &str) -> Result<(i64, bool), AdminError> {
        let (_, user) = self.user_by_email(email).await?;
        let had = self.reset_second_factor(user.id).await?;
        self.0
            .store
            .clear_login_attempts(&LockoutKey::SecondFactor(user.id).stored())
            .await?;
        Ok((audited("admin_user_mfa_reset", user.id), had))
    }

    /// `keys reencrypt`: seals every TOTP secret under the current `DATA_ENCRYPTION_KEY`
    /// (or, with none set, stores it in the clear), opening each with the key that sealed it.
    /// How many secrets moved.
    ///
    /// # Errors
    /// `Internal` when a secret was sealed under a key that is not configured (nothing after it
    /// moves; the ones before it did), or `Database`.
    pub async fn admin_reencrypt(&self) -> Result<u64, AdminError> {
        let keys = &self.0.data_keys;
        let mut moved = 0;
        loop {
            let batch = self
                .0
                .store
                .factors_to_reseal(keys.current_id(), 100)
                .await?;
            if batch.is_empty() {
                return Ok(moved);
            }
            for factor in batch {
                let row = factor.id.as_bytes();
                let plain = keys
                    .open(&factor.secret, factor.secret_key.as_deref(), row)
                    .map_err(|err| {
                        AdminError::Internal(anyhow::anyhow!("factor {}: {err}", factor.id))
                    })?;
                let (sealed, key) = keys.seal(&plain, row).map_err(AdminError::Internal)?;
                if self
                    .0
                    .store
                    .reseal_factor(factor.id, &factor.secret, &sealed, key.as_deref())
                    .await?
                {
                    moved += 1;
                }
            }
        }
    }

    /// `user delete EMAIL`: removes the user, their refresh tokens and their counter.
    ///
    /// # Errors
    /// `NotFound`, or `Refused` for a database failure.
    pub async fn admin_delete(&self, email: &str) -> Result<i64, AdminError> {
        let (_, user) = self.user_by_email(email).await?;
        if !self.delete_user_now(&user).await? {
            return Err(AdminError::NotFound);
        }
        Ok(audited("admin_user_delete", user.id))
    }

    /// `import-original`: the original service's accounts, read by the caller, into this
    /// service's database.
    ///
    /// # Errors
    /// As [`super::copy::import_original`].
    pub async fn import_original(
        &self,
        users: Vec<UserRow>,
        merge: bool,
    ) -> Result<ImportReport, CopyError> {
        super::copy::import_original(users, &*self.0.store, merge).await
    }

    /// `user import`: see [`super::user_import::import_users`] (at the service's clock).
    ///
    /// # Errors
    /// As [`super::user_import::import_users`].
    pub async fn import_users(
        &self,
        reader: impl std::io::BufRead,
        dry_run: bool,
        on_skip: impl FnMut(u64, &super::user_import::Skip),
        on_read: impl FnMut(u64),
    ) -> Result<super::user_import::ImportSummary, super::user_import::ImportError> {
        super::user_import::import_users(
            &*self.0.store,
            reader,
            dry_run,
            self.now(),
            on_skip,
            on_read,
        )
        .await
    }

    /// `user collisions`: stored emails that are one address under the email rules (left
    /// as they are by the re-keying), and those the rules refuse.
    ///
    /// # Errors
    /// `Database` for a database failure.
    pub async fn admin_email_review(&self) -> Result<EmailReview, AdminError> {
        Ok(super::rekey::review(&self.0.store.export_users().await?))
    }

    /// `ip show IP`: the per-IP failure counter of the network `ip` is counted under (IPv6 per
    /// `IPV6_PREFIX_LENGTH` network): the network, failures in the window, locked until.
    ///
    /// # Errors
    /// `Database` for a database failure.
    pub async fn admin_ip_show(
        &self,
        ip: IpAddr,
    ) -> Result<(IpNet, Option<AttemptRow>), AdminError> {
        let network = lockout::client_network(ip, self.0.settings.ipv6_prefix_length);
        let row = self
            .0
            .store
            .find_login_attempt(&LockoutKey::Client(network).stored())
            .await?;
        Ok((network, row))
    }

    /// `ip unlock IP`: lifts the per-IP block of the network `ip` is counted under.
    ///
    /// # Errors
    /// `Database` for a database failure.
    pub async fn admin_ip_unlock(&self, ip: IpAddr) -> Result<IpNet, AdminError> {
        let network = lockout::client_network(ip, self.0.settings.ipv6_prefix_length);
        self.0
            .store
            .clear_login_attempts(&LockoutKey::Client(network).stored())
            .await?;
        audit::record(
            Event::Admin("admin_ip_unlock"),
            Outcome::Success,
            None,
            &Caller::cli(),
        );
        Ok(network)
    }

    /// `user show EMAIL`.
    ///
    /// # Errors
    /// `NotFound`, or `Refused` for a database failure.
    pub async fn admin_show(&self, email: &str) -> Result<UserSummary, AdminError> {
        let (email, user) = self.user_by_email(email).await?;
        let attempts = self
            .0
            .store
            .find_login_attempt(&LockoutKey::Email(&email).stored())
            .await?;
        let now = self.instant();
        let max = i64::from(self.0.settings.lockout.max_attempts);
        let locked_until = attempts.and_then(|a| {
            a.locked_until
                .filter(|until| *until > now && a.attempts >= max)
        });
        Ok(UserSummary {
            id: user.id,
            email: user.email,
            active: user.is_active,
            created_at: user.created_at,
            locked_until,
        })
    }
}
