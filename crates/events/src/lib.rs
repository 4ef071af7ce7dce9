//! Durable events between UniLink services (at least once, idempotent consumers).
//!
//! ```text
//!  producer tx ──INSERT──▶ <schema>.outbox ──relay──▶ Redis Stream events:<producer>
//!                  (same transaction as the state change)      │ XREADGROUP / XACK / XAUTOCLAIM
//!                                                              ▼
//!                                                    consumer group (e.g. notification)
//! ```
//!
//! * [`Event`] — the envelope: id, type, time, JSON payload, W3C `traceparent`.
//! * [`outbox`] — [`outbox::enqueue`] inside the producer's transaction, and
//!   the [`outbox::OutboxRelay`] that publishes rows in order (any replica;
//!   `FOR UPDATE SKIP LOCKED` keeps two relays from publishing one row twice
//!   at once) and is woken by `NOTIFY` so events leave within milliseconds;
//!   when Redis lost a stream (its marker key is gone) the relay replays the
//!   retained rows into it.
//! * [`consumer`] — the loop that reads a stream through a consumer group,
//!   retries failed events with backoff, reclaims what dead consumers left
//!   pending and acknowledges only after the handler succeeded.
//! * [`payload`] — the event types and their payloads.
//! * [`seal`] — secret fields (login codes, verification tokens) sealed for
//!   the one consumer that may read them.

pub mod consumer;
pub mod outbox;
pub mod payload;
pub mod seal;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use unilink_domain::EventId;

/// Stream that carries the events produced by `producer` (before the Redis prefix).
pub fn stream_of(producer: &str) -> String {
    format!("events:{producer}")
}

/// Why an entry could not be read as an event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("stream entry has no {0:?} field")]
    MissingField(&'static str),
    #[error("stream entry field {field:?} is invalid: {reason}")]
    InvalidField { field: &'static str, reason: String },
}

/// One durable event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: EventId,
    /// e.g. `user.verification_requested`; see [`payload`].
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub payload: serde_json::Value,
    /// Trace context of the request that caused the event.
    pub traceparent: Option<String>,
}

impl Event {
    /// A new event carrying the current span's trace context.
    pub fn new(event_type: &str, payload: serde_json::Value) -> Event {
        Event {
            id: EventId::new(),
            event_type: event_type.to_owned(),
            occurred_at: Utc::now(),
            payload,
            traceparent: unilink_telemetry::inject().remove("traceparent"),
        }
    }

    /// The payload as a typed value.
    pub fn payload_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, EventError> {
        serde_json::from_value(self.payload.clone()).map_err(|e| EventError::InvalidField {
            field: "payload",
            reason: e.to_string(),
        })
    }

    /// Stream fields of this event.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("id", self.id.to_string()),
            ("type", self.event_type.clone()),
            ("occurred_at", self.occurred_at.to_rfc3339()),
            ("payload", self.payload.to_string()),
        ];
        if let Some(tp) = &self.traceparent {
            fields.push(("traceparent", tp.clone()));
        }
        fields
    }

    /// Reads an event back from stream fields.
    pub fn from_fields(fields: &HashMap<String, String>) -> Result<Event, EventError> {
        let get = |name: &'static str| fields.get(name).ok_or(EventError::MissingField(name));
        let invalid = |field: &'static str, reason: String| EventError::InvalidField { field, reason };
        Ok(Event {
            id: EventId::parse(get("id")?).map_err(|e| invalid("id", e.to_string()))?,
            event_type: get("type")?.clone(),
            occurred_at: DateTime::parse_from_rfc3339(get("occurred_at")?)
                .map_err(|e| invalid("occurred_at", e.to_string()))?
                .with_timezone(&Utc),
            payload: serde_json::from_str(get("payload")?).map_err(|e| invalid("payload", e.to_string()))?,
            traceparent: fields.get("traceparent").cloned(),
        })
    }

    /// The trace context to continue in the consumer.
    pub fn trace_headers(&self) -> HashMap<String, String> {
        self.traceparent
            .iter()
            .map(|tp| ("traceparent".to_owned(), tp.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_stream_fields() {
        let mut event = Event::new("user.registered", serde_json::json!({"user_id": "u1", "n": 3}));
        event.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
        let fields: HashMap<String, String> = event.to_fields().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let back = Event::from_fields(&fields).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        let mut fields = HashMap::new();
        fields.insert("id".to_owned(), "nope".to_owned());
        let err = Event::from_fields(&fields).unwrap_err().to_string();
        assert!(err.contains("\"id\" is invalid"), "{err}");
        fields.clear();
        assert_eq!(
            Event::from_fields(&fields).unwrap_err().to_string(),
            "stream entry has no \"id\" field"
        );
    }
}
