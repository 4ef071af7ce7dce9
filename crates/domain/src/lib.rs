//! Domain types shared by every UniLink service. Each is parsed once, where
//! data enters (HTTP, gRPC, events), and is valid from then on: a `UserId`
//! is always a UUID, never a string someone forgot to check.

use std::fmt;
use std::str::FromStr;

/// Why a value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{what} must be a UUID, got {value:?}")]
    InvalidId { what: &'static str, value: String },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_uuids_only() {
        let id = UserId::new();
        assert_eq!(UserId::parse(&id.to_string()), Ok(id));
        assert_eq!(UserId::parse(&format!(" {id} ")), Ok(id));
        let err = CallId::parse("42; DROP TABLE calls").unwrap_err();
        assert_eq!(
            err.to_string(),
            "call id must be a UUID, got \"42; DROP TABLE calls\""
        );
    }

    #[test]
    fn long_garbage_is_truncated_in_errors() {
        let err = UserId::parse(&"x".repeat(10_000)).unwrap_err().to_string();
        assert!(err.len() < 120, "{err}");
    }
}
