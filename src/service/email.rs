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
}
