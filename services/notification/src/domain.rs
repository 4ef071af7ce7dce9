//! The delivery ledger's state machine, pure: where a delivery stands and
//! where one attempt takes it. [`crate::repo`] writes what this decides.
//!
//! ```text
//! pending ── sent ──────────────────────────────▶ delivered
//!    │ └── failed, attempts left ──▶ pending (retried)
//!    └──── failed for good, or the last attempt ──▶ failed
//! ```
//!
//! Delivered and failed are final: a redelivered event is not sent again.

use chrono::{DateTime, Utc};
use unilink_domain::EventId;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 3] = [
        DeliveryStatus::Pending,
        DeliveryStatus::Delivered,
        DeliveryStatus::Failed,
    ];

    /// The `status` column's text.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(value: &str) -> Option<DeliveryStatus> {
        DeliveryStatus::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// Delivered or given up: nothing is sent for it any more.
    pub const fn is_final(self) -> bool {
        !matches!(self, DeliveryStatus::Pending)
    }

    /// Where a failed attempt, the `attempts`-th (counted from 1), leaves a
    /// pending delivery: given up when the failure is `permanent` or no
    /// attempt is left of `max_attempts`, else pending (retried).
    pub const fn after_failure(permanent: bool, attempts: i32, max_attempts: i32) -> DeliveryStatus {
        if permanent || attempts >= max_attempts {
            DeliveryStatus::Failed
        } else {
            DeliveryStatus::Pending
        }
    }
}

/// One event's delivery record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub event_id: EventId,
    pub event_type: String,
    pub channel: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::DeliveryStatus::*;
    use super::*;

    #[test]
    fn every_status_reads_back_from_its_text_and_only_pending_is_open() {
        for status in DeliveryStatus::ALL {
            assert_eq!(DeliveryStatus::parse(status.as_str()), Some(status));
            assert_eq!(status.is_final(), status != Pending, "{status:?}");
        }
        assert_eq!(DeliveryStatus::parse("sent"), None);
    }

    #[test]
    fn a_failure_gives_up_when_permanent_or_out_of_attempts() {
        // (permanent, attempt, of max) → status
        let table = [
            (false, 1, 3, Pending),
            (false, 2, 3, Pending),
            (false, 3, 3, Failed),
            (false, 4, 3, Failed),
            (true, 1, 3, Failed),
            (true, 3, 3, Failed),
            (false, 1, 1, Failed),
            (true, 1, 1, Failed),
        ];
        for (permanent, attempts, max, expected) in table {
            assert_eq!(
                DeliveryStatus::after_failure(permanent, attempts, max),
                expected,
                "permanent {permanent}, attempt {attempts} of {max}"
            );
        }
    }
}
