//! Where a call is in its life: the one representation of a call's status
//! that signaling stores, the gRPC API carries (as the proto enum) and the
//! gateway's JSON shows.

use std::fmt;
use std::str::FromStr;

/// Where a call is in its life. The text form ([`CallStatus::as_str`]) is
/// what the database column, the events and the public JSON hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallStatus {
    Pending,
    Ongoing,
    Completed,
    Rejected,
    Missed,
    Cancelled,
}

/// A text that is not a call status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown call status {0:?}")]
pub struct UnknownCallStatus(pub String);

impl CallStatus {
    /// Every status, in the order of the proto enum.
    pub const ALL: [CallStatus; 6] = [
        CallStatus::Pending,
        CallStatus::Ongoing,
        CallStatus::Completed,
        CallStatus::Rejected,
        CallStatus::Missed,
        CallStatus::Cancelled,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            CallStatus::Pending => "pending",
            CallStatus::Ongoing => "ongoing",
            CallStatus::Completed => "completed",
            CallStatus::Rejected => "rejected",
            CallStatus::Missed => "missed",
            CallStatus::Cancelled => "cancelled",
        }
    }

    /// Pending or ongoing: the participants are busy.
    pub const fn is_open(self) -> bool {
        matches!(self, CallStatus::Pending | CallStatus::Ongoing)
    }
}

impl FromStr for CallStatus {
    type Err = UnknownCallStatus;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        CallStatus::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| UnknownCallStatus(value.to_owned()))
    }
}

impl fmt::Display for CallStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_text() {
        for status in CallStatus::ALL {
            assert_eq!(status.as_str().parse(), Ok(status));
            assert_eq!(status.to_string(), status.as_str());
            let json = serde_json::to_string(&status).expect("serialise");
            assert_eq!(json, format!("\"{}\"", status.as_str()));
        }
        assert_eq!(
            "Pending".parse::<CallStatus>(),
            Err(UnknownCallStatus("Pending".to_owned()))
        );
        assert!("".parse::<CallStatus>().is_err());
    }

    #[test]
    fn only_pending_and_ongoing_are_open() {
        let open: Vec<_> = CallStatus::ALL.into_iter().filter(|s| s.is_open()).collect();
        assert_eq!(open, [CallStatus::Pending, CallStatus::Ongoing]);
    }
}
