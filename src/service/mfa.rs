//! The second factor: TOTP enrolment, recovery codes, sign-in with a code after the password,
//! step-up of a live session, and the step-up rule on sensitive actions.
//!
//! Three rules hold everywhere here. A code's time step is accepted once per factor (a guarded
//! update in the store, so also under concurrency and across replicas). Wrong codes are counted
//! per user by the login lockout's own counter (key `mfa:<user id>`, reserved before a code is
//! checked, so 40 parallel guesses check exactly `LOGIN_MAX_ATTEMPTS`). And a factor's secret
//! is sealed at rest under `DATA_ENCRYPTION_KEY`, bound to its factor's id.
//!
//! This module does not know about HTTP.

use chrono::{DateTime, Duration, Utc};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::{
    AuthError, AuthService, TokenPair, VerifiedUser,
    audit::{self, Caller, Event, Outcome},
    lockout::{AttemptDecision, LockoutKey},
    recovery::{new_token, token_hash},
};
use crate::{
    assurance::{Aal, AuthMethod, Methods},
    store::{
        Confirmation, FactorConfirmation, FactorRow, MailTemplate, NewFactor, NewMail, SignInProof,
        UserRow,
    },
};

/// Confirmed TOTP factors a user may have.
pub const MAX_TOTP_FACTORS: i64 = 5;

/// How long an unconfirmed factor waits for its confirmation.
pub const UNCONFIRMED_LIFETIME: Duration = Duration::minutes(10);

/// How long an `mfa_token` works.
const CHALLENGE_LIFETIME: Duration = Duration::minutes(5);

/// Recovery codes per set.
pub const RECOVERY_CODES: usize = 10;

/// Bytes of a TOTP secret (160 bits, RFC 4226's recommendation).
const SECRET_BYTES: usize = 20;

/// Crockford's base32 alphabet, lower case (no i, l, o, u).
const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Characters of a recovery code (50 bits).
const RECOVERY_CODE_CHARS: usize = 10;

/// A new, unconfirmed factor: what the authenticator app needs.
#[derive(Debug, Clone)]
pub struct Enrolment {
    /// The factor's id, for the confirmation.
    pub factor_id: Uuid,
    /// The secret in base32, for manual entry.
    pub secret: String,
    /// The `otpauth://` URI (for the QR code).
    pub otpauth_uri: String,
}

/// A confirmed factor: the caller's session at aal2, and the recovery codes when it is the
/// user's first factor.
pub struct EnrolmentConfirmed {
    /// New tokens for the caller's session, at aal2.
    pub tokens: TokenPair,
    /// The recovery codes, shown once (first factor only).
    pub recovery_codes: Option<Vec<String>>,
}

/// One confirmed factor, as `GET /auth/mfa/factors` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactorView {
    /// The factor's id.
    pub factor_id: Uuid,
    /// Its enrolment.
    pub created_at: DateTime<Utc>,
    /// The last code it accepted (its confirmation, at least).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The user's second factor, as `GET /auth/mfa/factors` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactorList {
    /// The confirmed factors, oldest first.
    pub factors: Vec<FactorView>,
    /// Unused recovery codes.
    pub recovery_codes_remaining: i64,
}

/// A password sign-in that needs its second factor.
#[derive(Debug, Clone)]
pub struct MfaChallenge {
    /// The `mfa_token` for `POST /auth/mfa/verify`.
    pub mfa_token: String,
    /// The user's confirmed factors.
    pub factors: Vec<Uuid>,
}

/// What a password sign-in gives: tokens, or the challenge of the second factor.
pub enum SignIn {
    /// No factor: the session's tokens.
    Tokens(TokenPair),
    /// A factor is confirmed: no tokens until it is used.
    SecondFactor(MfaChallenge),
}

/// The second factor presented.
#[derive(Debug, Clone)]
pub enum FactorProof {
    /// A TOTP code.
    Code(String),
    /// A recovery code.
    RecoveryCode(String),
}

/// A new set of recovery codes: as shown once, and the hashes stored.
struct RecoveryCodes {
    shown: Vec<String>,
    hashes: Vec<[u8; 32]>,
}

/// `mfa_verifications_total{result}`: every second-factor code checked, or refused unchecked.
fn count_verification(result: &'static str) {
    metrics::counter!("mfa_verifications_total", "result" => result).increment(1);
}

/// The lockout counter of a user's second factor.
fn guess_key(user_id: i64) -> String {
    LockoutKey::SecondFactor(user_id).stored().into_owned()
}

/// A recovery code as stored: the SHA-256 of the user and the code's canonical form.
fn recovery_code_hash(user_id: i64, canonical: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"auth-service recovery code\0");
    hasher.update(user_id.to_be_bytes());
    hasher.update(canonical.as_bytes());
    hasher.finalize().into()
}

/// A recovery code as typed, in its canonical form (lower case, no dash or spaces; Crockford's
/// `i`/`l` read as `1` and `o` as `0`), if it can be one.
fn canonical_recovery_code(typed: &str) -> Option<String> {
    let canonical: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| match c.to_ascii_lowercase() {
            'i' | 'l' => '1',
            'o' => '0',
            other => other,
        })
        .collect();
    (canonical.len() == RECOVERY_CODE_CHARS && canonical.bytes().all(|b| CROCKFORD.contains(&b)))
        .then_some(canonical)
}

impl RecoveryCodes {
    /// Ten fresh codes for `user_id`.
    fn new(user_id: i64) -> Self {
        let shown: Vec<String> = (0..RECOVERY_CODES)
            .map(|_| {
                let symbols: [u8; RECOVERY_CODE_CHARS] = rand::random();
                let code: String = symbols
                    .iter()
                    .map(|s| char::from(CROCKFORD[usize::from(s & 31)]))
                    .collect();
                format!("{}-{}", &code[..5], &code[5..])
            })
            .collect();
        let hashes = shown
            .iter()
            .filter_map(|code| canonical_recovery_code(code))
            .map(|canonical| recovery_code_hash(user_id, &canonical))
            .collect();
        Self { shown, hashes }
    }
}

/// The TOTP of a secret: RFC 6238, SHA-1, 6 digits, 30 s, one step of skew either way.
fn totp(secret: Vec<u8>) -> Result<totp_rs::Totp, AuthError> {
    totp_rs::Builder::new()
        .with_secret(secret)
        .build()
        .map_err(|err| AuthError::Internal(anyhow::anyhow!("a TOTP secret is unusable: {err}")))
}

impl AuthService {
    /// The step-up rule: once the user has a confirmed factor, sensitive actions need a
    /// session at aal2.
    ///
    /// # Errors
    /// `StepUpRequired`, `Unavailable`, `Internal`.
    pub(super) async fn require_step_up(&self, user: &VerifiedUser) -> Result<(), AuthError> {
        if user.aal == Aal::Aal2 {
            return Ok(());
        }
        if self.0.store.confirmed_factors(user.id).await?.is_empty() {
            Ok(())
        } else {
            Err(AuthError::StepUpRequired)
        }
    }

    /// `POST /auth/mfa/totp`: a new unconfirmed TOTP factor (replacing an unconfirmed one).
    ///
    /// # Errors
    /// `StepUpRequired`, `FactorLimit`, `Unavailable`, `Internal`.
    pub async fn enrol_totp(&self, user: &VerifiedUser) -> Result<Enrolment, AuthError> {
        self.require_step_up(user).await?;
        let factor_id = Uuid::new_v4();
        let secret: [u8; SECRET_BYTES] = rand::random();
        let (sealed, key) = self.0.data_keys.seal(&secret, factor_id.as_bytes())?;
        let factor = NewFactor {
            id: factor_id,
            user_id: user.id,
            secret: &sealed,
            secret_key: key.as_deref(),
            created_at: self.instant(),
        };
        if !self
            .0
            .store
            .add_totp_factor(&factor, MAX_TOTP_FACTORS)
            .await?
        {
            return Err(AuthError::FactorLimit);
        }
        let secret = totp_rs::Secret::from(secret.to_vec()).to_base32();
        Ok(Enrolment {
            factor_id,
            otpauth_uri: self.otpauth_uri(&user.email, &secret),
            secret,
        })
    }

    /// The `otpauth://` URI of a secret for `email`: label `<product>:<email>`, issuer the
    /// product, both percent-encoded.
    fn otpauth_uri(&self, email: &str, secret: &str) -> String {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let product = utf8_percent_encode(&self.0.mail.product, NON_ALPHANUMERIC).to_string();
        let account = utf8_percent_encode(email, NON_ALPHANUMERIC).to_string();
        format!(
            "otpauth://totp/{product}:{account}?secret={secret}&issuer={product}\
             &algorithm=SHA1&digits=6&period=30"
        )
    }

    /// `POST /auth/mfa/totp/{factor_id}/confirm`: confirms an enrolment with a code from the
    /// app. The caller's session goes to aal2 (new tokens), every other session ends, a
    /// notification is queued; the first factor brings the recovery codes.
    ///
    /// # Errors
    /// `FactorNotFound`, `InvalidMfaCode`, `TooManyAttempts`, `StepUpRequired` (a second
    /// factor enrolled from an aal1 session), `InvalidToken` (the session ended meanwhile),
    /// `Unavailable`, `Internal`.
    pub async fn confirm_totp(
        &self,
        user: &VerifiedUser,
        factor_id: &str,
        code: &str,
        caller: &Caller,
    ) -> Result<EnrolmentConfirmed, AuthError> {
        self.require_step_up(user).await?;
        let factor_id = Uuid::try_parse(factor_id).map_err(|_| AuthError::FactorNotFound)?;
        let now = self.instant();
        let factor = self
            .0
            .store
            .find_factor(factor_id)
            .await?
            .filter(|f| {
                f.user_id == user.id
                    && f.confirmed_at.is_none()
                    && f.created_at > now - UNCONFIRMED_LIFETIME
            })
            .ok_or(AuthError::FactorNotFound)?;
        self.reserve_guess(user.id, caller).await?;
        let Some(step) = self.code_step(&factor, code)? else {
            return Err(self.wrong_code(user.id, caller));
        };
        let codes = RecoveryCodes::new(user.id);
        let notification = NewMail {
            template: MailTemplate::MfaEnrolled,
            link: None,
        };
        let confirmation = FactorConfirmation {
            factor_id,
            user_id: user.id,
            step,
            created_after: now - UNCONFIRMED_LIFETIME,
            session: user.session,
            methods: Methods::PASSWORD.with(AuthMethod::Otp),
            recovery_codes: &codes.hashes,
            notification: &notification,
            live_tokens_since: self.live_tokens_since(now),
        };
        let issued_at = self.now();
        match self
            .0
            .store
            .confirm_factor(&confirmation, issued_at)
            .await?
        {
            Confirmation::Confirmed {
                token,
                assurance,
                codes_stored,
            } => {
                self.right_code(user.id).await?;
                self.0.revocations.user_changed(user.id);
                self.outbox_queued();
                audit::record(Event::MfaEnrolled, Outcome::Success, Some(user.id), caller);
                let row = self.active_user(user.id).await?;
                Ok(EnrolmentConfirmed {
                    tokens: self.pair_for(&token, &row, issued_at, assurance)?,
                    recovery_codes: codes_stored.then_some(codes.shown),
                })
            }
            Confirmation::StepUsed => Err(self.wrong_code(user.id, caller)),
            Confirmation::FactorGone => Err(AuthError::FactorNotFound),
            Confirmation::SessionGone => Err(AuthError::InvalidToken),
        }
    }

    /// `GET /auth/mfa/factors`: the confirmed factors and how many recovery codes are left.
    ///
    /// # Errors
    /// `Unavailable`, `Internal`.
    pub async fn list_factors(&self, user: &VerifiedUser) -> Result<FactorList, AuthError> {
        let factors = self.0.store.confirmed_factors(user.id).await?;
        Ok(FactorList {
            factors: factors
                .into_iter()
                .map(|f| FactorView {
                    factor_id: f.id,
                    created_at: f.created_at,
                    last_used_at: f.last_used_at,
                })
                .collect(),
            recovery_codes_remaining: self.0.store.recovery_codes_left(user.id).await?,
        })
    }

    /// `DELETE /auth/mfa/factors/{factor_id}`: removes a confirmed factor (the last one takes
    /// the recovery codes with it) and queues a notification.
    ///
    /// # Errors
    /// `StepUpRequired`, `FactorNotFound`, `Unavailable`, `Internal`.
    pub async fn remove_factor(
        &self,
        user: &VerifiedUser,
        factor_id: &str,
        caller: &Caller,
    ) -> Result<(), AuthError> {
        self.require_step_up(user).await?;
        let factor_id = Uuid::try_parse(factor_id).map_err(|_| AuthError::FactorNotFound)?;
        let notification = NewMail {
            template: MailTemplate::MfaRemoved,
            link: None,
        };
        if !self
            .0
            .store
            .remove_factor(factor_id, user.id, &notification, self.instant())
            .await?
        {
            return Err(AuthError::FactorNotFound);
        }
        self.outbox_queued();
        audit::record(Event::MfaRemoved, Outcome::Success, Some(user.id), caller);
        Ok(())
    }

    /// `POST /auth/mfa/recovery-codes`: a new set of recovery codes, replacing every earlier
    /// one; a notification is queued.
    ///
    /// # Errors
    /// `StepUpRequired`, `MfaNotEnrolled`, `Unavailable`, `Internal`.
    pub async fn regenerate_recovery_codes(
        &self,
        user: &VerifiedUser,
        caller: &Caller,
    ) -> Result<Vec<String>, AuthError> {
        self.require_step_up(user).await?;
        let codes = RecoveryCodes::new(user.id);
        let notification = NewMail {
            template: MailTemplate::RecoveryCodesRegenerated,
            link: None,
        };
        if !self
            .0
            .store
            .replace_recovery_codes(user.id, &codes.hashes, &notification, self.instant())
            .await?
        {
            return Err(AuthError::MfaNotEnrolled);
        }
        self.mail_queued();
        audit::record(
            Event::RecoveryCodesRegenerated,
            Outcome::Success,
            Some(user.id),
            caller,
        );
        Ok(codes.shown)
    }

    /// After the password of `user` checked out (and the account may sign in): the tokens of
    /// a new session, or, when the user has a confirmed factor, the challenge for it (stored
    /// only while `checked_hash` is still the user's hash).
    pub(super) async fn sign_in(
        &self,
        user: &UserRow,
        checked_hash: &str,
        caller: &Caller,
    ) -> Result<SignIn, AuthError> {
        let factors = self.0.store.confirmed_factors(user.id).await?;
        if factors.is_empty() {
            let pair = self
                .start_session(
                    user,
                    SignInProof::Password(checked_hash),
                    Methods::PASSWORD,
                    caller,
                )
                .await?;
            return Ok(SignIn::Tokens(pair));
        }
        let (mfa_token, hash) = new_token();
        let now = self.instant();
        if !self
            .0
            .store
            .add_challenge(&hash, user.id, checked_hash, now + CHALLENGE_LIFETIME, now)
            .await?
        {
            return Err(AuthError::InvalidCredentials);
        }
        Ok(SignIn::SecondFactor(MfaChallenge {
            mfa_token,
            factors: factors.into_iter().map(|f| f.id).collect(),
        }))
    }

    /// `POST /auth/mfa/verify` with an `mfa_token`: the second step of a sign-in; a new
    /// session at aal2.
    ///
    /// # Errors
    /// `InvalidMfaToken`, `InvalidMfaCode`, `TooManyAttempts`, `AccountDisabled`,
    /// `Unavailable`, `Internal`.
    #[tracing::instrument(skip_all, fields(user.id = tracing::field::Empty))]
    pub async fn complete_sign_in(
        &self,
        mfa_token: &str,
        proof: &FactorProof,
        caller: &Caller,
    ) -> Result<TokenPair, AuthError> {
        let hash = token_hash(mfa_token);
        let user_id = self
            .0
            .store
            .challenge_user(&hash, self.instant())
            .await?
            .ok_or(AuthError::InvalidMfaToken)?;
        tracing::Span::current().record("user.id", user_id);
        let factors = self.0.store.confirmed_factors(user_id).await?;
        let method = self.check_factor(user_id, &factors, proof, caller).await?;
        let user = self
            .0
            .store
            .find_user_by_id(user_id)
            .await?
            .ok_or(AuthError::InvalidMfaToken)?;
        let pair = self
            .start_session(
                &user,
                SignInProof::Challenge(&hash),
                Methods::PASSWORD.with(method),
                caller,
            )
            .await;
        match &pair {
            Ok(_) => audit::record(Event::Login, Outcome::Success, Some(user_id), caller),
            Err(AuthError::AccountDisabled) => {
                audit::record(Event::Login, Outcome::Disabled, Some(user_id), caller);
            }
            Err(_) => {}
        }
        pair
    }

    /// `POST /auth/mfa/verify` with a Bearer token: the caller's session goes to aal2 (same
    /// `sid`, new tokens).
    ///
    /// # Errors
    /// `MfaNotEnrolled`, `InvalidMfaCode`, `TooManyAttempts`, `InvalidToken` (the session
    /// ended meanwhile), `Unavailable`, `Internal`.
    pub async fn step_up(
        &self,
        user: &VerifiedUser,
        proof: &FactorProof,
        caller: &Caller,
    ) -> Result<TokenPair, AuthError> {
        let factors = self.0.store.confirmed_factors(user.id).await?;
        if factors.is_empty() {
            return Err(AuthError::MfaNotEnrolled);
        }
        let method = self.check_factor(user.id, &factors, proof, caller).await?;
        let issued_at = self.now();
        let (token, assurance) = self
            .0
            .store
            .step_up_session(
                user.session,
                user.id,
                Methods::PASSWORD.with(method),
                issued_at,
            )
            .await?
            .ok_or(AuthError::InvalidToken)?;
        audit::record(Event::MfaStepUp, Outcome::Success, Some(user.id), caller);
        let row = self.active_user(user.id).await?;
        self.pair_for(&token, &row, issued_at, assurance)
    }

    /// `user mfa-reset`: removes the user's factors and recovery codes and ends every session.
    /// Whether the user had a factor.
    ///
    /// # Errors
    /// `Unavailable`, `Internal`.
    pub async fn reset_second_factor(&self, user_id: i64) -> Result<bool, AuthError> {
        let had = self
            .0
            .store
            .reset_second_factor(user_id, self.instant())
            .await?;
        self.0.revocations.user_changed(user_id);
        Ok(had)
    }

    /// Checks a second factor of `user_id`, whose confirmed factors are `factors`, under the
    /// guessing limit: the method it proved (`otp` or `rec`), or `InvalidMfaCode` (counted), or
    /// `TooManyAttempts` (nothing checked).
    async fn check_factor(
        &self,
        user_id: i64,
        factors: &[FactorRow],
        proof: &FactorProof,
        caller: &Caller,
    ) -> Result<AuthMethod, AuthError> {
        self.reserve_guess(user_id, caller).await?;
        let now = self.instant();
        let proved = match proof {
            FactorProof::Code(code) => {
                let mut proved = None;
                for factor in factors {
                    if let Some(step) = self.code_step(factor, code)?
                        && self.0.store.use_time_step(factor.id, step, now).await?
                    {
                        proved = Some(AuthMethod::Otp);
                        break;
                    }
                }
                proved
            }
            FactorProof::RecoveryCode(typed) => match canonical_recovery_code(typed) {
                Some(canonical) => {
                    let notification = NewMail {
                        template: MailTemplate::RecoveryCodeUsed,
                        link: None,
                    };
                    let hash = recovery_code_hash(user_id, &canonical);
                    let used = self
                        .0
                        .store
                        .use_recovery_code(user_id, &hash, &notification, now)
                        .await?;
                    if used {
                        self.mail_queued();
                        audit::record(
                            Event::RecoveryCodeUsed,
                            Outcome::Success,
                            Some(user_id),
                            caller,
                        );
                    }
                    used.then_some(AuthMethod::Rec)
                }
                None => None,
            },
        };
        match proved {
            Some(method) => {
                self.right_code(user_id).await?;
                Ok(method)
            }
            None => Err(self.wrong_code(user_id, caller)),
        }
    }

    /// The time step a code matches for `factor` (one step of skew either way), if any.
    fn code_step(&self, factor: &FactorRow, code: &str) -> Result<Option<i64>, AuthError> {
        let secret = self
            .0
            .data_keys
            .open(
                &factor.secret,
                factor.secret_key.as_deref(),
                factor.id.as_bytes(),
            )
            .map_err(|err| AuthError::Internal(err.into()))?;
        let now = u64::try_from(self.0.clock.now().timestamp()).unwrap_or(0);
        Ok(totp(secret)?
            .check(code.trim(), now)
            .and_then(|step| i64::try_from(step).ok()))
    }

    /// Reserves one guess of `user_id`'s second factor before anything is checked: refused
    /// while the factor is locked.
    async fn reserve_guess(&self, user_id: i64, caller: &Caller) -> Result<(), AuthError> {
        let now = self.0.clock.now();
        let policy = self.0.settings.lockout;
        let row = self
            .0
            .store
            .reserve_login_attempt(&guess_key(user_id), now, policy.limits())
            .await?;
        match policy.decide(&row, now) {
            AttemptDecision::Allowed(_) => Ok(()),
            AttemptDecision::Locked { until, .. } => {
                count_verification("locked");
                audit::record(
                    Event::MfaChallengeFailed,
                    Outcome::Locked,
                    Some(user_id),
                    caller,
                );
                Err(AuthError::TooManyAttempts {
                    until,
                    retry_after_secs: super::lockout::seconds_until(until, now).max(1),
                })
            }
        }
    }

    /// A right second factor: the guess counter is cleared.
    async fn right_code(&self, user_id: i64) -> Result<(), AuthError> {
        count_verification("success");
        Ok(self
            .0
            .store
            .clear_login_attempts(&guess_key(user_id))
            .await?)
    }

    /// A wrong (or replayed) code: it stays counted.
    fn wrong_code(&self, user_id: i64, caller: &Caller) -> AuthError {
        count_verification("invalid");
        audit::record(
            Event::MfaChallengeFailed,
            Outcome::Invalid,
            Some(user_id),
            caller,
        );
        AuthError::InvalidMfaCode
    }

    /// The user's row, for signing tokens: refused as an invalid token when the user is gone
    /// or disabled.
    pub(super) async fn active_user(&self, user_id: i64) -> Result<UserRow, AuthError> {
        self.0
            .store
            .find_user_by_id(user_id)
            .await?
            .filter(|u| u.is_active)
            .ok_or(AuthError::InvalidToken)
    }

    /// Sessions last used before this hold no access token that still verifies (with a minute
    /// to spare for clock skew between replicas).
    pub(super) fn live_tokens_since(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now - self.0.settings.access_ttl - self.0.settings.leeway - Duration::minutes(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_are_ten_crockford_symbols_read_in_any_case_with_or_without_the_dash() {
        let codes = RecoveryCodes::new(7);
        assert_eq!(codes.shown.len(), RECOVERY_CODES);
        assert_eq!(codes.hashes.len(), RECOVERY_CODES);
        for code in &codes.shown {
            assert_eq!(code.len(), 11);
            assert_eq!(&code[5..6], "-");
            assert!(
                code.bytes()
                    .filter(|b| *b != b'-')
                    .all(|b| CROCKFORD.contains(&b))
            );
        }
        let code = &codes.shown[0];
        let canonical = canonical_recovery_code(code).unwrap();
        assert_eq!(
            canonical_recovery_code(&code.to_uppercase()).as_deref(),
            Some(canonical.as_str())
        );
        assert_eq!(
            canonical_recovery_code(&code.replace('-', "")).as_deref(),
            Some(canonical.as_str())
        );
        assert_eq!(
            canonical_recovery_code("ABCDE-FGHIL"),
            Some("abcdefgh11".to_owned())
        );
        assert_eq!(canonical_recovery_code("abcde-fghu1"), None);
        assert_eq!(canonical_recovery_code("abcd"), None);
        assert_ne!(
            recovery_code_hash(7, &canonical),
            recovery_code_hash(8, &canonical)
        );
    }
}
