//! Passkeys (WebAuthn): registration by a signed-in user, the list, removal, and a
//! discoverable sign-in that starts a session at aal2 (`amr` `hwk`).
//!
//! webauthn-rs runs the ceremonies: user verification required, the user's passkeys excluded
//! from a new registration, the signature counter checked. What it needs between a start and
//! its finish is stored in the database (a row per ceremony, 5 minutes, deleted by its finish),
//! so a start on one replica finishes on another, and it never reaches a client. A sign-in's
//! counter moves forward in the transaction of the session it starts, only from the value the
//! sign-in was checked against: of two sign-ins racing with one counter, one wins.
//!
//! This module does not know about HTTP.

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder,
};
use webauthn_rs_proto::ResidentKeyRequirement;

use super::{
    AuthError, AuthService, TokenPair, VerifiedUser,
    audit::{self, Caller, Event, Outcome},
};
use crate::{
    assurance::{AuthMethod, Methods},
    config::{EmailVerification, PasskeyConfig},
    store::{
        CeremonyKind, MailTemplate, NewCeremony, NewMail, NewPasskey, PasskeyRefused, PasskeyUse,
        SignInProof,
    },
};

/// How long a ceremony works.
pub const CEREMONY_LIFETIME: Duration = Duration::minutes(5);

/// Unfinished sign-in ceremonies the table holds at most: beyond it a start answers 503 until
/// some finish or expire (each is a few hundred bytes; see the note on floods in docs/API.md).
pub const MAX_PENDING_SIGN_INS: i64 = 20_000;

/// The label of a passkey registered without one.
pub const DEFAULT_NAME: &str = "Passkey";

/// The relying party: who the passkeys belong to and which pages may use them.
#[derive(Debug, Clone)]
pub struct RelyingParty(Webauthn);

impl RelyingParty {
    /// The relying party `config` describes.
    ///
    /// # Errors
    /// When webauthn-rs refuses the RP ID or an origin (the configuration checks them first).
    pub fn new(config: &PasskeyConfig) -> Result<Self, String> {
        let unusable = |err| format!("WEBAUTHN_RP_ID / WEBAUTHN_ORIGINS are unusable: {err}");
        let (first, rest) = config
            .origins
            .split_first()
            .ok_or_else(|| unusable(webauthn_rs::prelude::WebauthnError::Configuration))?;
        let mut builder = WebauthnBuilder::new(&config.rp_id, first)
            .map_err(unusable)?
            .rp_name(&config.rp_name)
            .timeout(CEREMONY_LIFETIME.to_std().unwrap_or_default());
        for origin in rest {
            builder = builder.append_allowed_origin(origin);
        }
        builder.build().map(Self).map_err(unusable)
    }

    /// The origins whose pages may use the passkeys.
    #[must_use]
    pub fn origins(&self) -> &[Url] {
        self.0.get_allowed_origins()
    }
}

/// A started ceremony: its id and the options for `navigator.credentials.create/get`.
#[derive(Debug, Clone)]
pub struct Ceremony {
    /// The `ceremony_id` the finish presents.
    pub ceremony_id: Uuid,
    /// `{"publicKey": {...}}` in the JSON form of WebAuthn Level 3.
    pub options: serde_json::Value,
}

/// A passkey, as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyView {
    /// The `passkey_id`.
    pub passkey_id: Uuid,
    /// The user's label.
    pub name: String,
    /// Its registration.
    pub created_at: DateTime<Utc>,
    /// The last sign-in with it.
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A registration's state between start and finish: webauthn-rs's, and the user handle the
/// authenticator was given.
#[derive(serde::Serialize, serde::Deserialize)]
struct Registration {
    user_handle: Uuid,
    state: PasskeyRegistration,
}

/// `passkey_ceremonies_total{kind, result}`.
fn count_ceremony(kind: CeremonyKind, result: &'static str) {
    metrics::counter!("passkey_ceremonies_total", "kind" => kind.as_str(), "result" => result)
        .increment(1);
}

/// A serialisation that cannot fail with these types, kept as an error.
fn internal(err: impl std::fmt::Display) -> AuthError {
    AuthError::Internal(anyhow::anyhow!("passkey state: {err}"))
}

impl AuthService {
    /// `POST /auth/passkeys/register/start`: options for a new discoverable passkey with user
    /// verification, the user's passkeys excluded; a newer start replaces an unfinished one.
    ///
    /// # Errors
    /// `StepUpRequired`, `InvalidToken` (user gone or disabled), `Unavailable`, `Internal`.
    pub async fn start_passkey_registration(
        &self,
        user: &VerifiedUser,
    ) -> Result<Ceremony, AuthError> {
        self.require_step_up(user).await?;
        let row = self.active_user(user.id).await?;
        let existing = self.0.store.user_passkeys(user.id).await?;
        let user_handle = existing
            .first()
            .map_or_else(Uuid::new_v4, |p| p.user_handle);
        let exclude = existing.into_iter().map(|p| p.credential_id).collect();
        let (mut options, state) = self
            .0
            .passkeys
            .0
            .start_passkey_registration(user_handle, &row.email, &row.email, Some(exclude))
            .map_err(internal)?;
        // A discoverable credential: the sign-in asks for no email.
        if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
            selection.resident_key = Some(ResidentKeyRequirement::Required);
            selection.require_resident_key = true;
        }
        let state =
            serde_json::to_string(&Registration { user_handle, state }).map_err(internal)?;
        let options = serde_json::to_value(&options).map_err(internal)?;
        let ceremony_id = self
            .store_ceremony(CeremonyKind::Register, Some(user.id), &state)
            .await?;
        Ok(Ceremony {
            ceremony_id,
            options,
        })
    }

    /// `POST /auth/passkeys/register/finish`: verifies the new credential against the user's
    /// ceremony (used up either way) and stores the passkey; a notification is queued.
    ///
    /// # Errors
    /// `StepUpRequired`, `InvalidCeremony` (unknown, expired, used or another user's),
    /// `InvalidPasskey`, `InvalidToken` (user gone), `Unavailable`, `Internal`.
    pub async fn finish_passkey_registration(
        &self,
        user: &VerifiedUser,
        ceremony_id: &str,
        credential: serde_json::Value,
        name: Option<&str>,
        caller: &Caller,
    ) -> Result<PasskeyView, AuthError> {
        const KIND: CeremonyKind = CeremonyKind::Register;
        self.require_step_up(user).await?;
        let ceremony_id = Uuid::try_parse(ceremony_id).map_err(|_| AuthError::InvalidCeremony)?;
        let Some(state) = self
            .0
            .store
            .take_ceremony(ceremony_id, KIND, Some(user.id), self.instant())
            .await?
        else {
            count_ceremony(KIND, "invalid_ceremony");
            return Err(AuthError::InvalidCeremony);
        };
        let Registration { user_handle, state } = serde_json::from_str(&state).map_err(internal)?;
        let verified = serde_json::from_value::<RegisterPublicKeyCredential>(credential)
            .map_err(|err| err.to_string())
            .and_then(|credential| {
                self.0
                    .passkeys
                    .0
                    .finish_passkey_registration(&credential, &state)
                    .map_err(|err| err.to_string())
            });
        let passkey = match verified {
            Ok(passkey) => passkey,
            Err(reason) => {
                tracing::info!(%reason, "passkey registration refused");
                count_ceremony(KIND, "invalid");
                return Err(AuthError::InvalidPasskey);
            }
        };
        let credential = serde_json::to_string(&passkey).map_err(internal)?;
        let name = name.map(str::trim).filter(|n| !n.is_empty());
        let new = NewPasskey {
            id: Uuid::new_v4(),
            user_id: user.id,
            user_handle,
            credential_id: passkey.cred_id(),
            credential: &credential,
            name: name.unwrap_or(DEFAULT_NAME),
            notification: &NewMail {
                template: MailTemplate::PasskeyAdded,
                link: None,
            },
            created_at: self.instant(),
        };
        match self.0.store.add_passkey(&new).await? {
            Ok(()) => {}
            Err(PasskeyRefused::Registered) => {
                count_ceremony(KIND, "invalid");
                return Err(AuthError::InvalidPasskey);
            }
            Err(PasskeyRefused::UserGone) => return Err(AuthError::InvalidToken),
        }
        count_ceremony(KIND, "success");
        self.outbox_queued();
        audit::record(Event::PasskeyAdded, Outcome::Success, Some(user.id), caller);
        Ok(PasskeyView {
            passkey_id: new.id,
            name: new.name.to_owned(),
            created_at: new.created_at,
            last_used_at: None,
        })
    }

    /// `GET /auth/passkeys`: the user's passkeys, oldest first.
    ///
    /// # Errors
    /// `Unavailable`, `Internal`.
    pub async fn list_passkeys(&self, user: &VerifiedUser) -> Result<Vec<PasskeyView>, AuthError> {
        Ok(self
            .0
            .store
            .user_passkeys(user.id)
            .await?
            .into_iter()
            .map(|p| PasskeyView {
                passkey_id: p.id,
                name: p.name,
                created_at: p.created_at,
                last_used_at: p.last_used_at,
            })
            .collect())
    }

    /// `DELETE /auth/passkeys/{passkey_id}`: removes a passkey of the user; a notification is
    /// queued.
    ///
    /// # Errors
    /// `StepUpRequired`, `PasskeyNotFound` (unknown or another user's), `Unavailable`,
    /// `Internal`.
    pub async fn remove_passkey(
        &self,
        user: &VerifiedUser,
        passkey_id: &str,
        caller: &Caller,
    ) -> Result<(), AuthError> {
        self.require_step_up(user).await?;
        let passkey_id = Uuid::try_parse(passkey_id).map_err(|_| AuthError::PasskeyNotFound)?;
        let notification = NewMail {
            template: MailTemplate::PasskeyRemoved,
            link: None,
        };
        if !self
            .0
            .store
            .remove_passkey(passkey_id, user.id, &notification, self.instant())
            .await?
        {
            return Err(AuthError::PasskeyNotFound);
        }
        self.outbox_queued();
        audit::record(
            Event::PasskeyRemoved,
            Outcome::Success,
            Some(user.id),
            caller,
        );
        Ok(())
    }

    /// `POST /auth/passkeys/login/start`: options for a discoverable sign-in (no email, no
    /// `allowCredentials`, user verification required).
    ///
    /// # Errors
    /// `CeremoniesFull` (too many unfinished sign-ins), `Unavailable`, `Internal`.
    pub async fn start_passkey_sign_in(&self) -> Result<Ceremony, AuthError> {
        let (mut options, state) = self
            .0
            .passkeys
            .0
            .start_discoverable_authentication()
            .map_err(internal)?;
        // webauthn-rs asks for conditional mediation (autofill); the frontend chooses how it
        // asks, so the options are the plain `{"publicKey": ...}`.
        options.mediation = None;
        let state = serde_json::to_string(&state).map_err(internal)?;
        let options = serde_json::to_value(&options).map_err(internal)?;
        let ceremony_id = self
            .store_ceremony(CeremonyKind::Login, None, &state)
            .await?;
        Ok(Ceremony {
            ceremony_id,
            options,
        })
    }

    /// `POST /auth/passkeys/login/finish`: verifies the assertion against the ceremony (used up
    /// either way) and the passkey its credential id names, and starts a session at aal2.
    ///
    /// # Errors
    /// `PasskeySignInFailed`, `AccountDisabled`, `EmailNotVerified`, `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(user.id = tracing::field::Empty))]
    pub async fn finish_passkey_sign_in(
        &self,
        ceremony_id: &str,
        credential: serde_json::Value,
        caller: &Caller,
    ) -> Result<TokenPair, AuthError> {
        let result = self.passkey_sign_in(ceremony_id, credential, caller).await;
        let (outcome, user_id) = match &result {
            Ok((_, user_id)) => (Outcome::Success, Some(*user_id)),
            Err((AuthError::AccountDisabled, user_id)) => (Outcome::Disabled, *user_id),
            Err((AuthError::EmailNotVerified, user_id)) => (Outcome::Unverified, *user_id),
            Err((AuthError::PasskeySignInFailed, user_id)) => (Outcome::Invalid, *user_id),
            Err((_, user_id)) => (Outcome::Error, *user_id),
        };
        if let Some(user_id) = user_id {
            tracing::Span::current().record("user.id", user_id);
        }
        count_ceremony(CeremonyKind::Login, outcome.as_str());
        audit::record(Event::PasskeyLogin, outcome, user_id, caller);
        result.map(|(pair, _)| pair).map_err(|(err, _)| err)
    }

    /// The sign-in itself; the error carries the user when one was identified.
    async fn passkey_sign_in(
        &self,
        ceremony_id: &str,
        credential: serde_json::Value,
        caller: &Caller,
    ) -> Result<(TokenPair, i64), (AuthError, Option<i64>)> {
        let failed = |reason: &str, user_id: Option<i64>| {
            tracing::info!(reason, "passkey sign-in refused");
            (AuthError::PasskeySignInFailed, user_id)
        };
        let ceremony_id =
            Uuid::try_parse(ceremony_id).map_err(|_| failed("malformed ceremony id", None))?;
        let state = self
            .0
            .store
            .take_ceremony(ceremony_id, CeremonyKind::Login, None, self.instant())
            .await
            .map_err(|err| (err.into(), None))?
            .ok_or_else(|| failed("unknown, expired or used ceremony", None))?;
        let state: DiscoverableAuthentication =
            serde_json::from_str(&state).map_err(|err| (internal(err), None))?;
        let credential: PublicKeyCredential = serde_json::from_value(credential)
            .map_err(|_| failed("not a WebAuthn assertion", None))?;
        let webauthn = &self.0.passkeys.0;
        let (user_handle, credential_id) = webauthn
            .identify_discoverable_authentication(&credential)
            .map_err(|_| failed("no user handle", None))?;
        let row = self
            .0
            .store
            .find_passkey_by_credential(credential_id)
            .await
            .map_err(|err| (err.into(), None))?
            .filter(|row| row.user_handle == user_handle)
            .ok_or_else(|| failed("unknown credential", None))?;
        let user_id = Some(row.user_id);
        let mut passkey: Passkey =
            serde_json::from_str(&row.credential).map_err(|err| (internal(err), user_id))?;
        let verified = webauthn
            .finish_discoverable_authentication_v2(&credential, state, &passkey)
            .map_err(|err| failed(&err.to_string(), user_id))?;
        passkey.update_credential(&verified);
        let user = self
            .0
            .store
            .find_user_by_id(row.user_id)
            .await
            .map_err(|err| (err.into(), user_id))?
            .ok_or_else(|| failed("user gone", None))?;
        if !user.is_active {
            return Err((AuthError::AccountDisabled, user_id));
        }
        if self.0.mail.verification == EmailVerification::Required
            && user.email_verified_at.is_none()
        {
            return Err((AuthError::EmailNotVerified, user_id));
        }
        let credential = serde_json::to_string(&passkey).map_err(|err| (internal(err), user_id))?;
        let used = PasskeyUse {
            id: row.id,
            seen_count: row.sign_count,
            new_count: i64::from(verified.counter()),
            credential: &credential,
        };
        let pair = self
            .start_session(
                &user,
                SignInProof::Passkey(&used),
                Methods::of(&[AuthMethod::Hwk]),
                caller,
            )
            .await
            .map_err(|err| (err, user_id))?;
        Ok((pair, user.id))
    }

    /// Stores a new ceremony of `kind` with `state`; its id.
    async fn store_ceremony(
        &self,
        kind: CeremonyKind,
        user_id: Option<i64>,
        state: &str,
    ) -> Result<Uuid, AuthError> {
        let now = self.instant();
        let ceremony = NewCeremony {
            id: Uuid::new_v4(),
            kind,
            user_id,
            state,
            created_at: now,
            expires_at: now + CEREMONY_LIFETIME,
        };
        if self
            .0
            .store
            .add_ceremony(&ceremony, MAX_PENDING_SIGN_INS)
            .await?
        {
            count_ceremony(kind, "started");
            Ok(ceremony.id)
        } else {
            count_ceremony(kind, "full");
            Err(AuthError::CeremoniesFull)
        }
    }
}
