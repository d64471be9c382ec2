//! `Email`: a validated, normalised address. Past [`Email::parse`] the service never handles a
//! raw email string.

use std::fmt;

/// The longest address the contract accepts (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;

/// A trimmed, lower-cased email address that passed the contract's rules.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// Trims, lower-cases and checks: at most 254 characters, exactly one `@`, a non-empty local
    /// part without spaces, and a domain with a dot and no empty labels.
    /// `None` when the address breaks a rule; the caller decides which error that is.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        let email = raw.trim().to_lowercase();
        if email.chars().count() > MAX_EMAIL_LEN
            || email.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return None;
        }
        let (local, domain) = email.split_once('@')?;
        if local.is_empty() || domain.contains('@') || !domain.contains('.') {
            return None;
        }
        if domain.split('.').any(str::is_empty) {
            return None;
        }
        Some(Self(email))
    }

    /// The normalised address.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Emails are personal data: `Debug` never prints one, so a stray `?email` in a log is safe.
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Email(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_trims_and_lower_cases() {
        assert_eq!(
            Email::parse("  A@Example.COM ").unwrap().as_str(),
            "a@example.com"
        );
    }

    #[test]
    fn a_normalised_email_parses_to_itself() {
        let once = Email::parse("User.Name+tag@Sub.Example.org").unwrap();
        assert_eq!(Email::parse(once.as_str()).unwrap(), once);
    }

    #[test]
    fn parse_refuses_what_the_contract_refuses() {
        let too_long = format!("{}@example.com", "a".repeat(243));
        assert_eq!(too_long.len(), 255);
        for bad in [
            "",
            "plain",
            "@example.com",
            "a@b@example.com",
            "a@example",
            "a@.example.com",
            "a@example..com",
            "a@example.com.",
            "a b@example.com",
            "a@exa\u{0}mple.com",
            too_long.as_str(),
        ] {
            assert!(Email::parse(bad).is_none(), "{bad:?}");
        }
        let longest = format!("{}@example.com", "a".repeat(242));
        assert!(Email::parse(&longest).is_some());
    }

    #[test]
    fn debug_hides_the_address() {
        let email = Email::parse("secret@example.com").unwrap();
        assert!(!format!("{email:?}").contains("secret"));
    }

    proptest::proptest! {
        #[test]
        fn a_parsed_email_parses_to_itself(raw in "[ ]{0,2}[A-Za-z0-9._%+-]{1,40}@[A-Za-z0-9-]{1,20}(\\.[A-Za-z]{2,8}){1,3}[ ]{0,2}") {
            let email = Email::parse(&raw).expect("well-formed");
            proptest::prop_assert_eq!(Email::parse(email.as_str()), Some(email.clone()));
            proptest::prop_assert_eq!(email.as_str(), email.as_str().trim().to_lowercase());
        }

        #[test]
        fn anything_accepted_keeps_the_rules(raw in "\\PC{0,300}") {
            if let Some(email) = Email::parse(&raw) {
                let s = email.as_str();
                proptest::prop_assert!(s.chars().count() <= MAX_EMAIL_LEN);
                proptest::prop_assert_eq!(s.matches('@').count(), 1);
                let (local, domain) = s.split_once('@').unwrap();
                proptest::prop_assert!(!local.is_empty());
                proptest::prop_assert!(domain.contains('.') && domain.split('.').all(|l| !l.is_empty()));
                proptest::prop_assert_eq!(Email::parse(s), Some(email.clone()));
            }
        }
    }
}
