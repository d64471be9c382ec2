//! How a session was signed in: the methods it used (`amr`), the level they reach (`acr`) and
//! when (`auth_time`). A leaf: the store keeps it on the session row, the service raises it, the
//! tokens carry it.

use chrono::{DateTime, Utc};

pub use auth_verifier::claims::{Aal, AuthMethod};

/// The methods a sign-in used, as a set (order means nothing); stored on the session row as
/// their `amr` names separated by spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Methods(u8);

/// Every method a set can hold, in the order they are listed.
const KNOWN: [AuthMethod; 4] = [
    AuthMethod::Pwd,
    AuthMethod::Otp,
    AuthMethod::Rec,
    AuthMethod::Hwk,
];

fn bit(method: AuthMethod) -> u8 {
    KNOWN
        .iter()
        .position(|known| *known == method)
        .map_or(0, |at| 1 << at)
}

impl Methods {
    /// A password alone: every sign-in before second factors existed.
    pub const PASSWORD: Self = Self(1);

    /// The set of `methods`; unknown ones are left out.
    #[must_use]
    pub fn of(methods: &[AuthMethod]) -> Self {
        Self(methods.iter().fold(0, |set, m| set | bit(*m)))
    }

    /// This set and `method`.
    #[must_use]
    pub fn with(self, method: AuthMethod) -> Self {
        Self(self.0 | bit(method))
    }

    /// Both sets together.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The level these methods reach: `aal2` with a second factor or a passkey.
    #[must_use]
    pub fn aal(self) -> Aal {
        if KNOWN.iter().any(|m| m.is_strong() && self.0 & bit(*m) != 0) {
            Aal::Aal2
        } else {
            Aal::Aal1
        }
    }

    /// The methods, for the `amr` claim.
    #[must_use]
    pub fn list(self) -> Vec<AuthMethod> {
        KNOWN
            .into_iter()
            .filter(|m| self.0 & bit(*m) != 0)
            .collect()
    }

    /// The session row's `amr` column.
    #[must_use]
    pub fn stored(self) -> String {
        self.list()
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A stored `amr` column that names no known method.
#[derive(Debug, thiserror::Error)]
#[error("unknown sign-in methods {0:?}")]
pub struct UnknownMethods(String);

impl TryFrom<String> for Methods {
    type Error = UnknownMethods;

    fn try_from(stored: String) -> Result<Self, Self::Error> {
        let mut set = Self::default();
        for name in stored.split_whitespace() {
            let method = KNOWN
                .into_iter()
                .find(|m| m.as_str() == name)
                .ok_or_else(|| UnknownMethods(stored.clone()))?;
            set = set.with(method);
        }
        if set == Self::default() {
            return Err(UnknownMethods(stored));
        }
        Ok(set)
    }
}

/// What a session's tokens say about its sign-in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assurance {
    /// The methods used so far (a step-up adds one).
    pub methods: Methods,
    /// The sign-in that started the session (`auth_time`): its creation.
    pub auth_time: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_reaches_aal2_only_with_a_strong_method_and_stores_as_it_reads() {
        assert_eq!(Methods::PASSWORD.aal(), Aal::Aal1);
        let stepped = Methods::PASSWORD.with(AuthMethod::Otp);
        assert_eq!(stepped.aal(), Aal::Aal2);
        assert_eq!(stepped.list(), vec![AuthMethod::Pwd, AuthMethod::Otp]);
        assert_eq!(stepped.stored(), "pwd otp");
        assert_eq!(Methods::try_from("otp pwd".to_owned()).unwrap(), stepped);
        assert_eq!(Methods::of(&[AuthMethod::Hwk]).aal(), Aal::Aal2);
        assert_eq!(Methods::of(&[AuthMethod::Other]), Methods::default());
        assert!(Methods::try_from(String::new()).is_err());
        assert!(Methods::try_from("pwd sms".to_owned()).is_err());
    }
}
