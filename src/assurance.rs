//! How a session was signed in: the methods it used (`amr`), the level they reach (`acr`) and
//! when (`auth_time`). A leaf: the store keeps it on the session row, the service raises it, the
//! tokens carry it.

use chrono::{DateTime, Utc};

/// The methods a sign-in used, as a set (order means nothing); stored on the session row as
/// their `amr` names separated by spaces (its `Display` and `TryFrom<String>`).
pub use auth_verifier::claims::AuthMethods as Methods;
pub use auth_verifier::claims::{Aal, AuthMethod};

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
        assert_eq!(
            stepped.iter().collect::<Vec<_>>(),
            [AuthMethod::Pwd, AuthMethod::Otp]
        );
        assert_eq!(stepped.to_string(), "pwd otp");
        assert_eq!(Methods::try_from("otp pwd".to_owned()).unwrap(), stepped);
        assert_eq!(Methods::of(&[AuthMethod::Hwk]).aal(), Aal::Aal2);
        assert_eq!(Methods::of(&[AuthMethod::Other]).aal(), Aal::Aal1);
        assert!(
            Methods::try_from("pwd other".to_owned()).is_err(),
            "never stored"
        );
        assert!(Methods::try_from(String::new()).is_err());
        assert!(Methods::try_from("pwd sms".to_owned()).is_err());
    }
}
