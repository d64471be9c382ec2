//! The registration password policy, with its reasons in the contract's order.

use super::AuthError;
use crate::passwords::MAX_PASSWORD_BYTES;

/// The policy as the API answers it: `WeakPassword` with every reason, in order.
///
/// # Errors
/// `WeakPassword` when any rule is broken.
pub fn check(password: &str) -> Result<(), AuthError> {
    let reasons = violations(password);
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(AuthError::WeakPassword(reasons))
    }
}

/// The shortest password the contract accepts, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Every rule the password breaks, in API.md order; empty when it is acceptable.
#[must_use]
pub fn violations(password: &str) -> Vec<&'static str> {
    let mut reasons = Vec::new();
    if password.chars().count() < MIN_PASSWORD_CHARS {
        reasons.push("Password must be at least 8 characters long");
    }
    if !password.chars().any(char::is_lowercase) {
        reasons.push("Password must contain at least one lowercase letter");
    }
    if !password.chars().any(char::is_uppercase) {
        reasons.push("Password must contain at least one uppercase letter");
    }
    if !password.chars().any(|c| c.is_ascii_digit()) {
        reasons.push("Password must contain at least one number");
    }
    if password.len() > MAX_PASSWORD_BYTES {
        reasons.push("Password is too long (maximum 72 bytes)");
    }
    if is_common(password) {
        reasons.push("Password is too common");
    }
    reasons
}

/// Whether the password, or its lower-case form, is among the ~100,000 most common breached
/// passwords (the list the `passwords` crate ships, MIT licence).
#[must_use]
pub fn is_common(password: &str) -> bool {
    passwords::analyzer::is_common_password(password)
        || passwords::analyzer::is_common_password(password.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_accepted() {
        assert!(violations("SecurePass123").is_empty());
    }

    #[test]
    fn reasons_come_in_contract_order() {
        assert_eq!(
            violations(""),
            vec![
                "Password must be at least 8 characters long",
                "Password must contain at least one lowercase letter",
                "Password must contain at least one uppercase letter",
                "Password must contain at least one number",
            ]
        );
        assert_eq!(
            violations("short1A"),
            vec!["Password must be at least 8 characters long"]
        );
        assert_eq!(
            violations("ALLUPPER123"),
            vec!["Password must contain at least one lowercase letter"]
        );
        assert_eq!(
            violations("alllower123"),
            vec!["Password must contain at least one uppercase letter"]
        );
        assert_eq!(
            violations("NoNumbersHere"),
            vec!["Password must contain at least one number"]
        );
    }

    #[test]
    fn common_passwords_are_refused_last() {
        assert_eq!(violations("Password123"), vec!["Password is too common"]);
        assert_eq!(violations("Qwerty123"), vec!["Password is too common"]);
        assert_eq!(
            violations("password"),
            vec![
                "Password must contain at least one uppercase letter",
                "Password must contain at least one number",
                "Password is too common",
            ]
        );
        assert!(is_common("123456") && is_common("PASSWORD1"));
        assert!(!is_common("SecurePass123"));
    }

    #[test]
    fn seventy_three_bytes_is_refused_and_seventy_two_accepted() {
        let ok = format!("Aa1{}", "x".repeat(69));
        assert_eq!(ok.len(), 72);
        assert!(violations(&ok).is_empty());
        let long = format!("Aa1{}", "x".repeat(70));
        assert_eq!(
            violations(&long),
            vec!["Password is too long (maximum 72 bytes)"]
        );
        // Bytes, not characters: 25 three-byte characters are 75 bytes.
        let wide = format!("Aa1{}", "€".repeat(25));
        assert_eq!(
            violations(&wide),
            vec!["Password is too long (maximum 72 bytes)"]
        );
    }

    proptest::proptest! {
        // The common-password lookup is a linear scan in debug builds (the crate's choice):
        // fewer cases keep this under a couple of seconds.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        #[test]
        fn the_policy_never_panics_and_reasons_keep_their_order(password in "\\PC{0,100}") {
            let reasons = violations(&password);
            let order = [
                "Password must be at least 8 characters long",
                "Password must contain at least one lowercase letter",
                "Password must contain at least one uppercase letter",
                "Password must contain at least one number",
                "Password is too long (maximum 72 bytes)",
                "Password is too common",
            ];
            let positions: Vec<usize> = reasons.iter().map(|r| order.iter().position(|o| o == r).unwrap()).collect();
            proptest::prop_assert!(positions.windows(2).all(|w| w[0] < w[1]), "{:?}", reasons);
            proptest::prop_assert_eq!(reasons.contains(&order[4]), password.len() > MAX_PASSWORD_BYTES);
        }

        #[test]
        fn strong_random_passwords_pass(password in "[a-z]{3,10}[A-Z]{3,10}[0-9]{3,10}[a-zA-Z0-9]{0,30}") {
            proptest::prop_assume!(!is_common(&password));
            proptest::prop_assert!(violations(&password).is_empty());
        }
    }
}
