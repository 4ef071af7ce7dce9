//! The email worker: consumes `events:auth` (group `notification`) and sends
//! the verification and login-code emails, at most once per event id.
//!
//! The consumer loop ([`unilink_events::consumer::run`]) acknowledges an
//! entry only when [`EmailWorker::handle`] returns `Ok`, i.e. once the SMTP
//! server accepted the mail and the ledger says `delivered`; a failure is
//! retried with backoff, and entries a dead replica left pending are taken
//! over. A redelivered event finds its ledger row `delivered` and is skipped.

use std::sync::Arc;

use lettre::message::Mailbox;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use unilink_events::Event;
use unilink_events::consumer::{HandlerError, Subscription};
use unilink_events::payload::{
    LoginOtpRequested, USER_LOGIN_OTP_REQUESTED, USER_VERIFICATION_REQUESTED, VerificationRequested,
};
use unilink_runtime::{BackendService, Resources};

use crate::email::{self, Email, EmailKind};
use crate::mailer::Mailer;
use crate::repo::{DeliveryOutcome, DeliveryRepository, NewDelivery};

/// The consumer group of this service on every stream it reads.
pub const GROUP: &str = "notification";
/// The producer whose stream carries the email events.
pub const AUTH_PRODUCER: &str = "auth";
const CHANNEL_EMAIL: &str = "email";

#[derive(Debug)]
struct Inner {
    deliveries: DeliveryRepository,
    mailer: Mailer,
    from: Mailbox,
    frontend_url: String,
}

/// Turns email events into sent mails.
#[derive(Debug, Clone)]
pub struct EmailWorker {
    inner: Arc<Inner>,
}

impl EmailWorker {
    /// The worker the settings describe (fails on an unusable `EMAIL_FROM` or `SMTP_SERVER`).
    pub fn new(resources: &Resources) -> Result<EmailWorker, String> {
        let settings = &resources.settings;
        let production = settings.environment.is_production();
        Ok(EmailWorker {
            inner: Arc::new(Inner {
                deliveries: DeliveryRepository::new(resources.db.clone()),
                mailer: Mailer::from_settings(&settings.smtp, production)?,
                from: crate::mailer::from_mailbox(&settings.smtp)?,
                frontend_url: settings.frontend_url.clone(),
            }),
        })
    }

    /// Starts the consumer loop; it ends soon after `stop` is cancelled.
    pub fn spawn(self, resources: &Resources, stop: CancellationToken) -> JoinHandle<()> {
        spawn_consumer(AUTH_PRODUCER, resources, stop, move |event| {
            let worker = self.clone();
            async move { worker.handle(event).await }
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
        let email = match kind {
            EmailKind::Verification => event
                .payload_as::<VerificationRequested>()
                .map(|p| email::verification_email(&p, &self.inner.frontend_url)),
            EmailKind::LoginOtp => event
                .payload_as::<LoginOtpRequested>()
                .map(|p| email::login_otp_email(&p, event.occurred_at)),
        };
        let email = match email {
            Ok(email) => email,
            // The payload carries a token or code: keep quoted values out of the error.
            Err(e) => {
                let reason = format!("invalid payload: {}", redact_quoted(&e.to_string()));
                return self.reject(&event, kind, None, reason).await;
            }
        };
        let message = match email.to_message(&self.inner.from, event.id) {
            Ok(message) => message,
            Err(e) => return self.reject(&event, kind, Some(&email), e.to_string()).await,
        };
        let kind = email.kind.label();
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
            .deliver_once(delivery, || async {
                mailer
                    .send(event.id, &email, message)
                    .await
                    .map_err(|e| e.ledger_text())
            })
            .await
            .map_err(|e| HandlerError::Retry(format!("delivery ledger: {e}")))?;
        match outcome {
            DeliveryOutcome::Delivered => {
                metrics::counter!("emails_sent_total", "kind" => kind).increment(1);
                tracing::info!(event_id = %event.id, kind, "email delivered");
                Ok(())
            }
            DeliveryOutcome::AlreadyDelivered => {
                tracing::debug!(event_id = %event.id, kind, "email already delivered; skipping the redelivered event");
                Ok(())
            }
            DeliveryOutcome::InProgress => Err(HandlerError::Retry(
                "another consumer is delivering this event".to_owned(),
            )),
            DeliveryOutcome::Failed(error) => {
                metrics::counter!("emails_failed_total", "kind" => kind).increment(1);
                tracing::warn!(event_id = %event.id, kind, error = %error, "email not delivered; will retry");
                Err(HandlerError::Retry(error))
            }
        }
    }

    /// An event whose email can never be built: recorded as `failed`, and
    /// acknowledged by the loop so it does not block the stream.
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
        self.inner
            .deliveries
            .mark_failed(delivery, &reason)
            .await
            .map_err(|e| HandlerError::Retry(format!("delivery ledger: {e}")))?;
        Err(HandlerError::Reject(reason))
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

/// Runs `handler` over the events of `producer`'s stream as this service's
/// consumer group, until `stop` is cancelled (both notification consumers).
pub(crate) fn spawn_consumer<H, Fut>(
    producer: &str,
    resources: &Resources,
    stop: CancellationToken,
    handler: H,
) -> JoinHandle<()>
where
    H: Fn(Event) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let subscription = Subscription {
        stream: unilink_events::stream_of(producer),
        group: GROUP.to_owned(),
        consumer: unilink_runtime::consumer_name(<crate::Notification as BackendService>::NAME),
    };
    tokio::spawn(unilink_events::consumer::run(
        resources.redis.clone(),
        subscription,
        handler,
        stop,
    ))
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
