//! `Email`: a validated address, in two forms. Past [`Email::parse`] the service never
//! handles a raw email string.
//!
//! Two addresses a person would read as the same are the same account (API.md, "Emails"). The
//! **key** (what accounts, lockouts and mail caps are found by):
//!
//! - the local part is put in Unicode compatibility form (NFKC, `unicode-normalization`) and
//!   fully case-folded (`caseless`), so NFC and NFD forms of `josé`, full-width `ａｌｉｃｅ`,
//!   and `ΣΑΣ`/`σας` meet;
//! - the domain is mapped by IDNA UTS 46 alone (`idna`, non-transitional as browsers and mail
//!   use it, STD3 rules, hyphen and length checks) and kept in its Unicode form: never case-
//!   folded before, which would turn `faß.de` into `fass.de`, another domain with another owner;
//! - characters nobody can see (control, format, unassigned, private-use, separators: zero-width
//!   space, BOM, bidi overrides, tag characters...) are refused anywhere, never stripped;
//! - the local part must be a dot-atom (no leading, trailing or doubled dot, none of
//!   `<>()[]\,;:"`, no spaces), and the top-level label must not be all digits.
//!
//! The **address** mail is sent to is the local part as the user typed it (trimmed, NFC) at the
//! same domain in its IDNA ASCII form (what every relay takes): folding is for comparing, never
//! for delivering (`Straße@` and `strasse@` can be two mailboxes).

use std::{
    fmt,
    hash::{Hash, Hasher},
};

use unicode_normalization::UnicodeNormalization as _;
use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory as _};

/// The longest address the contract accepts (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;

/// A validated email address: its comparison key and the address to deliver to. Equal when
/// the keys are.
#[derive(Clone)]
pub struct Email {
    key: String,
    address: String,
}

impl PartialEq for Email {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Email {}

impl Hash for Email {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl Email {
    /// Trims, normalises and checks an address. `None` when it breaks a rule; the caller
    /// decides which error that is.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        if raw.chars().any(is_invisible) {
            return None;
        }
        let (typed_local, domain) = raw.split_once('@')?;
        let local: String =
            caseless::default_case_fold_str(&typed_local.nfkc().collect::<String>())
                .nfkc()
                .collect();
        let typed_local: String = typed_local.nfc().collect();
        if !is_dot_atom(&local) || !is_dot_atom(&typed_local) || domain.contains('@') {
            return None;
        }
        let (domain, ascii_domain) = normalise_domain(domain)?;
        let key = format!("{local}@{domain}");
        let address = format!("{typed_local}@{ascii_domain}");
        (key.chars().count() <= MAX_EMAIL_LEN && address.chars().count() <= MAX_EMAIL_LEN)
            .then_some(Self { key, address })
    }

    /// The address of an account as the database holds it (stored as its key): the lockout
    /// key of the user a token belongs to.
    #[must_use]
    pub fn stored(email: String) -> Self {
        Self {
            address: email.clone(),
            key: email,
        }
    }

    /// The comparison key (what the `email` column holds).
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.key
    }

    /// The address to send mail to: the local part as typed, the domain as IDNA maps it, in
    /// ASCII.
    #[must_use]
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// Characters that cannot be seen, or that change how others are shown: every control,
/// format, surrogate, private-use, unassigned and separator code point, and the Hangul fillers
/// (letters by category, blank on screen).
fn is_invisible(c: char) -> bool {
    matches!(
        c.general_category_group(),
        GeneralCategoryGroup::Other | GeneralCategoryGroup::Separator
    ) || matches!(c, '\u{115F}' | '\u{1160}' | '\u{3164}' | '\u{FFA0}')
}

/// RFC 5322's dot-atom, with RFC 6531's letters, marks and numbers beyond ASCII.
fn is_dot_atom(local: &str) -> bool {
    const SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    let atext = |c: char| {
        c.is_ascii_alphanumeric()
            || SPECIALS.contains(c)
            || (!c.is_ascii()
                && matches!(
                    c.general_category_group(),
                    GeneralCategoryGroup::Letter
                        | GeneralCategoryGroup::Mark
                        | GeneralCategoryGroup::Number
                ))
    };
    !local.is_empty()
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

/// The domain through IDNA UTS 46 (strict: letters, digits and inner hyphens per label,
/// DNS lengths), at least two labels, a top-level label that is not all digits; returned in
/// its Unicode form (the key's) and its ASCII form (what SMTP and DNS take without SMTPUTF8).
fn normalise_domain(domain: &str) -> Option<(String, String)> {
    let ascii = idna::domain_to_ascii_strict(domain).ok()?;
    let labels: Vec<&str> = ascii.split('.').collect();
    let tld = labels.last()?;
    if labels.len() < 2 || tld.is_empty() || tld.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (unicode, checked) = idna::domain_to_unicode(&ascii);
    checked.ok()?;
    Some((unicode, ascii))
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

    fn key(raw: &str) -> String {
        Email::parse(raw)
            .unwrap_or_else(|| panic!("{raw:?} refused"))
            .as_str()
            .to_owned()
    }

    #[test]
    fn parse_trims_and_lower_cases() {
        assert_eq!(key("  A@Example.COM "), "a@example.com");
    }

    #[test]
    fn a_normalised_email_parses_to_itself() {
        let once = Email::parse("User.Name+tag@Sub.Example.org").unwrap();
        assert_eq!(Email::parse(once.as_str()).unwrap(), once);
    }

    #[test]
    fn forms_a_person_reads_as_one_address_are_one_key() {
        let same: &[&[&str]] = &[
            &["jos\u{e9}@x.com", "jose\u{301}@x.com", "JOS\u{c9}@X.COM"],
            &[
                "\u{ff41}\u{ff4c}\u{ff49}\u{ff43}\u{ff45}@x.com",
                "alice@x.com",
                "ALICE@x.com",
            ],
            &["\u{3a3}\u{391}\u{3a3}@x.com", "\u{3c3}\u{3b1}\u{3c2}@x.com"],
            &["a@b\u{fc}cher.de", "a@xn--bcher-kva.de", "a@B\u{dc}CHER.DE"],
            &["a@example\u{3002}com", "a@example.com"],
        ];
        for group in same {
            let first = key(group[0]);
            for other in &group[1..] {
                assert_eq!(key(other), first, "{other:?} and {:?}", group[0]);
            }
        }
        assert_eq!(
            key("a@b\u{fc}cher.de"),
            "a@b\u{fc}cher.de",
            "stored in Unicode form"
        );
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
            "user..name@example.com",
            ".user@example.com",
            "user.@example.com",
            "a@-.-",
            "a@-example.com",
            "a@example-.com",
            "a@example.123",
            "<script>alert(1)</script>@x.co",
            "a\"b@example.com",
            "a(b)@example.com",
            "a,b@example.com",
            "a;b@example.com",
            "a:b@example.com",
            "a[b]@example.com",
            "a\\b@example.com",
            "zero\u{200b}width@example.com",
            "bom\u{feff}@example.com",
            "bidi\u{202e}moc.elpmaxe@x.com",
            "tag\u{e0041}@example.com",
            "mongolian\u{180e}@example.com",
            "hangul\u{3164}@example.com",
            "nbsp\u{a0}inside@example.com",
            "a@exa\u{200d}mple.com",
            too_long.as_str(),
        ] {
            assert!(Email::parse(bad).is_none(), "{bad:?} accepted");
        }
        let longest = format!("{}@example.com", "a".repeat(242));
        assert!(Email::parse(&longest).is_some());
        for good in [
            "o'brien@example.com",
            "a+tag@sub.example.co.uk",
            "x@123.example.com",
        ] {
            assert!(Email::parse(good).is_some(), "{good:?} refused");
        }
    }

    #[test]
    fn the_domain_is_mapped_by_idna_alone_and_mail_goes_where_it_was_typed() {
        // Full case folding would turn ß into ss and ς into σ: another domain.
        for (raw, key, address) in [
            ("anna@fa\u{df}.de", "anna@fa\u{df}.de", "anna@xn--fa-hia.de"),
            ("Anna@FA\u{df}.DE", "anna@fa\u{df}.de", "Anna@xn--fa-hia.de"),
            (
                "x@\u{3b5}\u{3bb}\u{3bb}\u{3ac}\u{3c2}.gr",
                "x@\u{3b5}\u{3bb}\u{3bb}\u{3ac}\u{3c2}.gr",
                "x@xn--hxarsa0b.gr",
            ),
            (
                "Stra\u{df}e@example.com",
                "strasse@example.com",
                "Stra\u{df}e@example.com",
            ),
            ("a@xn--fa-hia.de", "a@fa\u{df}.de", "a@xn--fa-hia.de"),
        ] {
            let email = Email::parse(raw).unwrap_or_else(|| panic!("{raw:?} refused"));
            assert_eq!((email.as_str(), email.address()), (key, address), "{raw:?}");
        }
        assert_ne!(key("anna@fa\u{df}.de"), key("anna@fass.de"));
    }

    #[test]
    fn debug_hides_the_address() {
        let email = Email::parse("secret@example.com").unwrap();
        assert!(!format!("{email:?}").contains("secret"));
    }

    proptest::proptest! {
        #[test]
        fn a_parsed_email_parses_to_itself(raw in "[ ]{0,2}[A-Za-z0-9_%+-]{1,40}(\\.[A-Za-z0-9]{1,5})?@[A-Za-z0-9]{1,20}(\\.[A-Za-z]{2,8}){1,3}[ ]{0,2}") {
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
                proptest::prop_assert!(is_dot_atom(local));
                proptest::prop_assert!(domain.contains('.') && domain.split('.').all(|l| !l.is_empty()));
                proptest::prop_assert!(!s.chars().any(is_invisible));
                proptest::prop_assert_eq!(Email::parse(s), Some(email.clone()));
            }
        }
    }
}
