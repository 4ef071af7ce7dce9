//! Domain types shared by every UniLink service. Each is parsed once, where
//! data enters (HTTP, gRPC, events), and is valid from then on: a `UserId`
//! is always a UUID, never a string someone forgot to check.

use std::fmt;
use std::str::FromStr;

mod call;

pub use call::{CallStatus, UnknownCallStatus};

/// Why a value was refused. Messages are written for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{what} must be a UUID, got {value:?}")]
    InvalidId { what: &'static str, value: String },
    #[error("{0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> DomainError {
    DomainError::Invalid(message.into())
}

/// An email address: trimmed, at most 254 characters, one `@`, a dotted
/// domain; the domain is lower-cased (the local part is kept as typed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(value: &str) -> Result<Email, DomainError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(invalid("email is required"));
        }
        if value.chars().count() > 254 {
            return Err(invalid("email must be at most 254 characters"));
        }
        let shape = || invalid("email must look like name@university.edu");
        let (local, domain) = value.rsplit_once('@').ok_or_else(shape)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
        let domain_ok = domain.contains('.')
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !local_ok || !domain_ok {
            return Err(shape());
        }
        Ok(Email(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The lower-cased domain.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, d)| d)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A username: 3–32 characters of `[a-z0-9_.]`, stored lower-case (input is
/// lower-cased, so `Ada` and `ada` are the same name).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(String);

impl Username {
    pub fn parse(value: &str) -> Result<Username, DomainError> {
        let value = value.trim().to_lowercase();
        let len = value.chars().count();
        if !(3..=32).contains(&len) {
            return Err(invalid("username must be 3 to 32 characters long"));
        }
        let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.';
        if !value.chars().all(allowed) {
            return Err(invalid("username may contain only letters, digits, '_' and '.'"));
        }
        Ok(Username(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name: 1–100 printable characters after trimming (no control
/// characters), stored verbatim otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FullName(String);

impl FullName {
    pub fn parse(value: &str) -> Result<FullName, DomainError> {
        let value = value.trim();
        let len = value.chars().count();
        if len == 0 {
            return Err(invalid("full name is required"));
        }
        if len > 100 {
            return Err(invalid("full name must be at most 100 characters"));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid("full name must not contain control characters"));
        }
        Ok(FullName(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A new password: at least 8 characters, at most [`MAX_PASSWORD_BYTES`]
/// (hashing cost stays bounded), and not the email or username.
#[derive(Clone, PartialEq, Eq)]
pub struct NewPassword(String);

impl fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewPassword([redacted])")
    }
}

/// The common passwords long enough to pass the length rule, sorted
/// (`common_passwords.txt` says where they come from).
static COMMON_PASSWORDS: std::sync::LazyLock<Vec<&'static str>> = std::sync::LazyLock::new(|| {
    include_str!("common_passwords.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
});

/// Whether `lowercase` is among the 10,000 most common passwords.
fn is_common_password(lowercase: &str) -> bool {
    COMMON_PASSWORDS.binary_search(&lowercase).is_ok()
}

/// Longest password accepted, in bytes.
pub const MAX_PASSWORD_BYTES: usize = 256;

impl NewPassword {
    pub fn parse(value: &str, email: &Email, username: &Username) -> Result<NewPassword, DomainError> {
        if value.chars().count() < 8 {
            return Err(invalid("password must be at least 8 characters long"));
        }
        if value.len() > MAX_PASSWORD_BYTES {
            return Err(invalid("password must be at most 256 bytes long"));
        }
        let lower = value.to_lowercase();
        if lower == email.as_str().to_lowercase() || lower == username.as_str() {
            return Err(invalid("password must not be your email or username"));
        }
        if is_common_password(&lower) {
            return Err(invalid(
                "password is one of the most common passwords, which are tried first; choose another",
            ));
        }
        Ok(NewPassword(value.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A 6-digit one-time login code.
#[derive(Clone, PartialEq, Eq)]
pub struct Otp(String);

impl fmt::Debug for Otp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Otp([redacted])")
    }
}

impl Otp {
    pub fn parse(value: &str) -> Result<Otp, DomainError> {
        let value = value.trim();
        if value.len() != 6 || !value.chars().all(|c| c.is_ascii_digit()) {
            return Err(invalid("the code must be the 6 digits from the email"));
        }
        Ok(Otp(value.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(uuid::Uuid);

        impl $name {
            /// A new random id.
            pub fn new() -> Self {
                $name(uuid::Uuid::new_v4())
            }

            /// Parses the textual form; the error names what was expected.
            pub fn parse(value: &str) -> Result<Self, DomainError> {
                uuid::Uuid::parse_str(value.trim()).map($name).map_err(|_| DomainError::InvalidId {
                    what: $what,
                    value: value.chars().take(64).collect(),
                })
            }

            pub fn as_uuid(&self) -> uuid::Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<uuid::Uuid> for $name {
            fn from(id: uuid::Uuid) -> Self {
                $name(id)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

uuid_id!(
    /// A user, minted by auth; the key in every service.
    UserId,
    "user id"
);
uuid_id!(
    /// A call, minted by signaling.
    CallId,
    "call id"
);
uuid_id!(
    /// A durable event, minted by its producer's outbox.
    EventId,
    "event id"
);

/// A profile bio: at most 500 characters; line breaks and tabs allowed,
/// other control characters not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bio(String);

impl Bio {
    pub fn parse(value: &str) -> Result<Bio, DomainError> {
        if value.chars().count() > 500 {
            return Err(invalid("bio must be at most 500 characters"));
        }
        if value
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(invalid("bio must not contain control characters"));
        }
        Ok(Bio(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A profile picture: an `https` URL of at most 2048 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PictureUrl(String);

impl PictureUrl {
    pub fn parse(value: &str) -> Result<PictureUrl, DomainError> {
        let value = value.trim();
        if value.chars().count() > 2048 {
            return Err(invalid("profile_picture must be at most 2048 characters"));
        }
        let host = value
            .strip_prefix("https://")
            .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or_default())
            .unwrap_or_default();
        let host_ok = !host.is_empty()
            && !host.contains('@')
            && host.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
        if !host_ok || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("profile_picture must be an https:// URL"));
        }
        Ok(PictureUrl(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a user is reported: free text of 1–100 characters (the frontend
/// offers "harassment", "spam", "inappropriate content", "impersonation",
/// "other"; any short text is accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportReason(String);

impl ReportReason {
    pub fn parse(value: &str) -> Result<ReportReason, DomainError> {
        let value = value.trim();
        let len = value.chars().count();
        if len == 0 || len > 100 {
            return Err(invalid("reason must be 1 to 100 characters"));
        }
        if value.chars().any(char::is_control) {
            return Err(invalid("reason must not contain control characters"));
        }
        Ok(ReportReason(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Details of a report: at most 2000 characters.
pub fn parse_report_description(value: &str) -> Result<String, DomainError> {
    if value.chars().count() > 2000 {
        return Err(invalid("description must be at most 2000 characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(invalid("description must not contain control characters"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_uuids_only() {
        let id = UserId::new();
        assert_eq!(UserId::parse(&id.to_string()), Ok(id));
        assert_eq!(UserId::parse(&format!(" {id} ")), Ok(id));
        let err = CallId::parse("42; DROP TABLE calls").unwrap_err();
        assert_eq!(err.to_string(), "call id must be a UUID, got \"42; DROP TABLE calls\"");
    }

    #[test]
    fn emails_are_checked_and_domains_lowered() {
        let e = Email::parse("  Ada.Lovelace@KIIT.ac.in ").unwrap();
        assert_eq!(e.as_str(), "Ada.Lovelace@kiit.ac.in");
        assert_eq!(e.domain(), "kiit.ac.in");
        for bad in [
            "",
            "ada",
            "ada@",
            "@kiit.ac.in",
            "ada@localhost",
            "a b@kiit.ac.in",
            "ada@kiit..ac.in",
            "a\0@x.io",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@kiit.ac.in", "a".repeat(300))).is_err());
    }

    #[test]
    fn usernames_are_lowercased_and_limited() {
        assert_eq!(Username::parse("Ada_L.99").unwrap().as_str(), "ada_l.99");
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse(&"a".repeat(33)).is_err());
        for bad in ["ada lovelace", "ada-l", "ädä", "ada'--"] {
            assert_eq!(
                Username::parse(bad).unwrap_err().to_string(),
                "username may contain only letters, digits, '_' and '.'"
            );
        }
    }

    #[test]
    fn names_passwords_and_codes() {
        assert_eq!(FullName::parse(" Ada  Lovelace ").unwrap().as_str(), "Ada  Lovelace");
        assert_eq!(
            FullName::parse("Robert'); DROP TABLE--").unwrap().as_str(),
            "Robert'); DROP TABLE--"
        );
        assert!(FullName::parse("").is_err());
        assert!(FullName::parse("nul\0inside").is_err());
        assert!(FullName::parse("bell\u{7}").is_err());
        assert!(FullName::parse(&"x".repeat(101)).is_err());
        let email = Email::parse("ada@kiit.ac.in").unwrap();
        let user = Username::parse("ada").unwrap();
        assert!(NewPassword::parse("short", &email, &user).is_err());
        assert!(NewPassword::parse("ADA@kiit.ac.in", &email, &user).is_err());
        assert!(NewPassword::parse("correct horse", &email, &user).is_ok());
        for common in ["password", "12345678", "PassWord", "iloveyou", "qwertyuiop"] {
            let err = NewPassword::parse(common, &email, &user).unwrap_err().to_string();
            assert!(err.contains("most common passwords"), "{common}: {err}");
        }
        assert!(COMMON_PASSWORDS.windows(2).all(|w| w[0] < w[1]), "the list is sorted");
        assert!(COMMON_PASSWORDS.len() > 2000);
        assert!(NewPassword::parse(&"p".repeat(300), &email, &user).is_err());
        assert!(Otp::parse("123456").is_ok());
        assert!(Otp::parse("12345").is_err());
        assert!(Otp::parse("12345a").is_err());
    }

    #[test]
    fn profile_fields() {
        assert!(Bio::parse("line one\nline two").is_ok());
        assert!(Bio::parse(&"b".repeat(501)).is_err());
        assert!(Bio::parse("bell\u{7}").is_err());
        assert!(PictureUrl::parse("https://cdn.example.com/a.png?x=1").is_ok());
        for bad in [
            "http://cdn.example.com/a.png",
            "javascript:alert(1)",
            "https://",
            "https://a b/c",
            "https://user@evil/x",
        ] {
            assert!(PictureUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(PictureUrl::parse(&format!("https://x.io/{}", "a".repeat(2048))).is_err());
        assert!(ReportReason::parse("spam").is_ok());
        assert!(ReportReason::parse(" ").is_err());
        assert!(ReportReason::parse(&"r".repeat(101)).is_err());
        assert!(parse_report_description(&"d".repeat(2001)).is_err());
    }

    #[test]
    fn long_garbage_is_truncated_in_errors() {
        let err = UserId::parse(&"x".repeat(10_000)).unwrap_err().to_string();
        assert!(err.len() < 120, "{err}");
    }
}
