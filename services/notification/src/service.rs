//! The notification core: the rules of delivery, independent of how events
//! arrive ([`crate::worker`] feeds it from the streams, [`crate::grpc`]
//! asks it about the ledger).
//!
//! * [`DeliveryService`] — the delivery ledger, as the gRPC API reads it;
//! * [`EmailDelivery`] — the verification and login-code emails of
//!   `events:auth`, sent at most once per event id (pushes, which are
//!   ephemeral and not in the ledger, are [`crate::push`]).
//!
//! The consumer loop ([`unilink_events::consumer::run`]) acknowledges an
//! entry only when [`EmailDelivery::handle`] returns `Ok`, i.e. once the SMTP
//! server accepted the mail and the ledger says `delivered`; a failure is
//! retried with backoff, and entries a dead replica left pending are taken
//! over. A redelivered event finds its ledger row `delivered` and is skipped.
//!
//! A mail is given up — recorded `failed`, told to the dead-letter stream
//! [`DEAD_LETTERS`] (`emails_dead_lettered_total`, alert
//! `UniLinkEmailsDeadLettered`) and acknowledged — when the SMTP server
//! refuses it for good (5xx), after `EMAIL_MAX_ATTEMPTS` tries, when its
//! payload can never make a mail, or when its code or link has expired
//! before it could be sent (a code that arrives dead is worse than none).

use std::sync::Arc;

use lettre::message::Mailbox;
use unilink_domain::EventId;
use unilink_events::Event;
use unilink_events::consumer::HandlerError;
use unilink_events::payload::{
    LoginOtpRequested, USER_LOGIN_OTP_REQUESTED, USER_VERIFICATION_REQUESTED, VerificationRequested,
};
use unilink_events::seal::{self, SealKeys};
use unilink_runtime::Resources;

use crate::domain::Delivery;
use crate::email::{self, Email, EmailKind};
use crate::error::NotificationError;
use crate::mailer::Mailer;
use crate::repo::{DeliveryOutcome, DeliveryRepository, NewDelivery, SendFailure};

const CHANNEL_EMAIL: &str = "email";
/// Stream (before the Redis prefix) of the mails given up: `event_id`,
/// `event_type`, `kind`, `reason`, `attempts`. Never a code or an address.
pub const DEAD_LETTERS: &str = "dead-letters:notification";
/// Entries kept in [`DEAD_LETTERS`] (approximately).
const DEAD_LETTERS_LEN: u64 = 10_000;

#[derive(Debug, Clone)]
pub struct DeliveryService {
    deliveries: DeliveryRepository,
}

impl DeliveryService {
    pub fn new(deliveries: DeliveryRepository) -> Self {
        DeliveryService { deliveries }
    }

    /// The delivery record of this event.
    pub async fn get_delivery(&self, event_id: EventId) -> Result<Delivery, NotificationError> {
        self.deliveries
            .find(event_id)
            .await?
            .ok_or(NotificationError::DeliveryNotFound)
    }
}

#[derive(Debug)]
struct Inner {
    deliveries: DeliveryRepository,
    mailer: Mailer,
    from: Mailbox,
    frontend_url: String,
    redis: unilink_bus::Redis,
    seal: SealKeys,
    max_attempts: i32,
}

/// Email delivery: turns email events into sent mails, once each.
#[derive(Debug, Clone)]
pub struct EmailDelivery {
    inner: Arc<Inner>,
}

impl EmailDelivery {
    /// The delivery the settings describe (fails on an unusable `EMAIL_FROM`,
    /// `SMTP_SERVER`, `SMTP_TLS` or `EVENT_SEAL_KEYS`).
    pub fn new(resources: &Resources) -> Result<EmailDelivery, String> {
        let settings = &resources.settings;
        Ok(EmailDelivery {
            inner: Arc::new(Inner {
                deliveries: DeliveryRepository::new(resources.db.clone()),
                mailer: Mailer::from_settings(&settings.smtp, settings.environment)?,
                from: crate::mailer::from_mailbox(&settings.smtp)?,
                frontend_url: settings.frontend_url.clone(),
                redis: resources.redis.clone(),
                seal: SealKeys::from_settings(&settings.event_seal_keys).map_err(|e| e.to_string())?,
                max_attempts: i32::try_from(settings.smtp.max_attempts).unwrap_or(i32::MAX),
            }),
        })
    }

    /// Handles one event: sends its email once; ignores other event types.
    pub async fn handle(&self, event: Event) -> Result<(), HandlerError> {
        let kind = match event.event_type.as_str() {
            USER_VERIFICATION_REQUESTED => EmailKind::Verification,
            USER_LOGIN_OTP_REQUESTED => EmailKind::LoginOtp,
            unilink_events::payload::USER_DELETED => {
                let deleted: unilink_events::payload::UserDeleted =
                    event.payload_as().map_err(|e| HandlerError::Reject(e.to_string()))?;
                return self
                    .inner
                    .deliveries
                    .forget_recipient(&deleted.email)
                    .await
                    .map(|_| ())
                    .map_err(|e| HandlerError::Retry(e.to_string()));
            }
            _ => return Ok(()),
        };
        let context = |user_id: &str| seal::context(&event.event_type, user_id);
        let composed = match kind {
            EmailKind::Verification => event
                .payload_as::<VerificationRequested>()
                .map_err(|e| format!("invalid payload: {}", redact_quoted(&e.to_string())))
                .and_then(|p| {
                    let token = p.token.open(&self.inner.seal, &context(&p.user_id));
                    let token = token.map_err(|e| format!("verification token: {e}"))?;
                    Ok((
                        email::verification_email(&p, &token, &self.inner.frontend_url),
                        p.expires_at,
                    ))
                }),
            EmailKind::LoginOtp => event
                .payload_as::<LoginOtpRequested>()
                .map_err(|e| format!("invalid payload: {}", redact_quoted(&e.to_string())))
                .and_then(|p| {
                    let code = p.otp.open(&self.inner.seal, &context(&p.user_id));
                    let code = code.map_err(|e| format!("login code: {e}"))?;
                    Ok((email::login_otp_email(&p, &code, event.occurred_at), p.expires_at))
                }),
        };
        let (email, expires_at) = match composed {
            Ok(composed) => composed,
            // The payload carries a token or code: the reason never quotes it.
            Err(reason) => return self.reject(&event, kind, None, reason).await,
        };
        if chrono::Utc::now() >= expires_at {
            let reason = format!("expired at {expires_at} before it could be sent");
            return self.reject(&event, kind, Some(&email), reason).await;
        }
        let message = match email.to_message(&self.inner.from, event.id) {
            Ok(message) => message,
            Err(e) => return self.reject(&event, kind, Some(&email), e.to_string()).await,
        };
        let label = email.kind.label();
        let delivery = NewDelivery {
            event_id: event.id,
            event_type: &event.event_type,
            channel: CHANNEL_EMAIL,
            recipient: Some(&email.to),
        };
        let mailer = &self.inner.mailer;
        let outcome = self
            .inner
            .deliveries
            .deliver_once(delivery, self.inner.max_attempts, || async {
                mailer.send(event.id, &email, message).await.map_err(|e| SendFailure {
                    error: e.ledger_text(),
                    permanent: e.is_permanent(),
                })
            })
            .await
            .map_err(|e| HandlerError::Retry(format!("delivery ledger: {e}")))?;
        match outcome {
            DeliveryOutcome::Delivered => {
                metrics::counter!("emails_sent_total", "kind" => label).increment(1);
                tracing::info!(event_id = %event.id, kind = label, "email delivered");
                Ok(())
            }
            DeliveryOutcome::AlreadyDelivered => {
                tracing::debug!(event_id = %event.id, kind = label, "email already delivered; skipping the redelivered event");
                Ok(())
            }
            DeliveryOutcome::InProgress => Err(HandlerError::Retry(
                "another consumer is delivering this event".to_owned(),
            )),
            DeliveryOutcome::Failed(error) => {
                metrics::counter!("emails_failed_total", "kind" => label).increment(1);
                tracing::warn!(event_id = %event.id, kind = label, error = %error, "email not delivered; will retry");
                Err(HandlerError::Retry(error))
            }
            DeliveryOutcome::GaveUp { error, attempts } => {
                metrics::counter!("emails_failed_total", "kind" => label).increment(1);
                self.dead_letter(&event, kind, &error, attempts).await?;
                Ok(())
            }
        }
    }

    /// Tells the dead-letter stream (and the metric, and the log) that the
    /// mail of `event` will never be sent. Idempotent enough: a redelivered
    /// event that was given up before is told again, with the same id.
    async fn dead_letter(
        &self,
        event: &Event,
        kind: EmailKind,
        reason: &str,
        attempts: i32,
    ) -> Result<(), HandlerError> {
        let event_id = event.id.to_string();
        let attempts = attempts.to_string();
        let fields = [
            ("event_id", event_id.as_str()),
            ("event_type", event.event_type.as_str()),
            ("kind", kind.label()),
            ("reason", reason),
            ("attempts", attempts.as_str()),
        ];
        self.inner
            .redis
            .append(DEAD_LETTERS, &fields, DEAD_LETTERS_LEN)
            .await
            .map_err(|e| HandlerError::Retry(format!("dead-letter stream: {e}")))?;
        metrics::counter!("emails_dead_lettered_total", "kind" => kind.label()).increment(1);
        tracing::error!(event_id = %event.id, kind = kind.label(), attempts, reason, "email given up; sent to the dead letters");
        Ok(())
    }

    /// An event whose email can never be sent (malformed or unreadable
    /// payload, invalid address, expired code): recorded as `failed`, told
    /// to the dead letters and acknowledged, so it does not block the stream.
    async fn reject(
        &self,
        event: &Event,
        kind: EmailKind,
        email: Option<&Email>,
        reason: String,
    ) -> Result<(), HandlerError> {
        metrics::counter!("emails_failed_total", "kind" => kind.label()).increment(1);
        let delivery = NewDelivery {
            event_id: event.id,
            event_type: &event.event_type,
            channel: CHANNEL_EMAIL,
            recipient: email.map(|e| e.to.as_str()),
        };
        let recorded = self
            .inner
            .deliveries
            .mark_failed(delivery, &reason)
            .await
            .map_err(|e| HandlerError::Retry(format!("delivery ledger: {e}")))?;
        if !recorded {
            // Delivered before this redelivery: nothing was lost.
            return Ok(());
        }
        self.dead_letter(event, kind, &reason, 1).await
    }
}

/// `invalid type: string "abc", expected …` → `invalid type: string "…", expected …`.
fn redact_quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    for c in text.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_values_are_redacted() {
        assert_eq!(
            super::redact_quoted("invalid type: string \"123456\", expected u32"),
            "invalid type: string \"…\", expected u32"
        );
    }
}
