//! Error reports to Sentry (when `SENTRY_DSN` is set).
//!
//! * [`SentryErrorLayer`] turns every `error!` event into a Sentry event
//!   whose tags carry the request context from the enclosing spans
//!   (`request_id`, `http.route`, `http.method`, `rpc.method`, `trace_id`)
//!   and whose extra data holds the other fields. Panics are reported by
//!   Sentry's panic integration. Errors a dependency logs for a client's
//!   fault (a malformed HTTP request) are not reported.
//! * [`before_send`] scrubs every event on its way out (see [`crate::scrub`]):
//!   no tokens, passwords or cookies leave the process, whatever a message
//!   or a field happened to contain. Breadcrumbs are not collected: the hub
//!   is per thread, not per request, so they would mix requests (and users).
//! * [`report_client_error`] forwards a browser's error report as a Sentry
//!   message event.

use sentry::protocol::{Event as SentryEvent, Level as SentryLevel, Value};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::logs::{JsonVisitor, scope_fields};
use crate::scrub::{FILTERED, is_sensitive_key, scrub_json, scrub_text};

/// Span fields that become Sentry tags (searchable), the rest go to `extra`.
const TAG_FIELDS: &[&str] = &[
    "request_id",
    "http.route",
    "http.method",
    "rpc.method",
    "trace_id",
    "event.type",
    "user_id",
];

/// Dependencies that log a client's fault at `ERROR`: actix-http's HTTP/1
/// dispatcher logs every malformed request it answers 400 ("stream error:
/// request parse error: ...") and every connection a client breaks off.
/// Those stay in the logs but are not reported: anyone could otherwise fill
/// the Sentry project (and page whoever watches it) with garbage requests.
const CLIENT_FAULT_TARGETS: &[&str] = &["actix_http::h1::dispatcher"];

/// Reports `ERROR` events to Sentry with their request context.
#[derive(Debug, Clone, Copy, Default)]
pub struct SentryErrorLayer;

impl<S> Layer<S> for SentryErrorLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if *event.metadata().level() != Level::ERROR || CLIENT_FAULT_TARGETS.contains(&event.metadata().target()) {
            return;
        }
        let mut fields = Vec::new();
        if let Some(span) = ctx.event_span(event) {
            scope_fields(&span, &mut fields);
        }
        let mut own = Vec::new();
        event.record(&mut JsonVisitor(&mut own));
        for (name, value) in own {
            match fields.iter_mut().find(|(k, _)| *k == name) {
                Some(slot) => slot.1 = value,
                None => fields.push((name, value)),
            }
        }
        let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let message = fields.iter().find(|(k, _)| *k == "message").map(|(_, v)| text(v));
        let error = fields.iter().find(|(k, _)| *k == "error").map(|(_, v)| text(v));
        let mut report = SentryEvent {
            level: SentryLevel::Error,
            logger: Some(event.metadata().target().to_owned()),
            message: Some(match (message, error) {
                (Some(m), Some(e)) => format!("{m}: {e}"),
                (Some(m), None) => m,
                (None, Some(e)) => e,
                (None, None) => event.metadata().name().to_owned(),
            }),
            ..Default::default()
        };
        for (name, value) in fields {
            if name == "message" {
                continue;
            }
            if TAG_FIELDS.contains(&name) {
                report.tags.insert(name.to_owned(), text(&value));
            } else {
                report.extra.insert(name.to_owned(), value);
            }
        }
        sentry::capture_event(report);
    }
}

fn scrub_string_map(map: &mut std::collections::BTreeMap<String, String>) {
    for (key, value) in map.iter_mut() {
        *value = if is_sensitive_key(key) {
            FILTERED.to_owned()
        } else {
            scrub_text(value)
        };
    }
}

/// Removes secrets from an outgoing Sentry event (installed as `before_send`).
pub fn before_send(mut event: SentryEvent<'static>) -> Option<SentryEvent<'static>> {
    if let Some(message) = &mut event.message {
        *message = scrub_text(message);
    }
    if let Some(entry) = &mut event.logentry {
        entry.message = scrub_text(&entry.message);
        entry.params.iter_mut().for_each(scrub_json);
    }
    for exception in event.exception.values.iter_mut() {
        if let Some(value) = &mut exception.value {
            *value = scrub_text(value);
        }
    }
    scrub_string_map(&mut event.tags);
    for (key, value) in event.extra.iter_mut() {
        if is_sensitive_key(key) {
            *value = Value::String(FILTERED.to_owned());
        } else {
            scrub_json(value);
        }
    }
    if let Some(request) = &mut event.request {
        scrub_string_map(&mut request.headers);
        request.headers.retain(|k, _| !is_sensitive_key(k));
        request.cookies = None;
        request.data = None;
        if let Some(query) = &mut request.query_string {
            *query = scrub_text(query);
        }
        if let Some(url) = &mut request.url {
            let clean = scrub_text(url.as_str());
            if let Ok(parsed) = clean.parse() {
                *url = parsed;
            }
        }
        scrub_string_map(&mut request.env);
    }
    if let Some(user) = &mut event.user {
        user.ip_address = None;
        user.email = None;
    }
    event.breadcrumbs.values.clear();
    Some(event)
}

/// One error report from the web frontend (`POST /client-errors`), already
/// validated by the gateway.
#[derive(Debug, Clone, Default)]
pub struct ClientErrorReport {
    pub message: String,
    pub stack: Option<String>,
    pub url: Option<String>,
    pub user_agent: Option<String>,
    /// `error`, `warning` or `info` (anything else counts as `error`).
    pub level: Option<String>,
    pub context: Option<serde_json::Value>,
    pub user_id: Option<String>,
    pub request_id: Option<String>,
}

impl ClientErrorReport {
    /// The same report with secrets removed from every text and value.
    pub fn scrubbed(&self) -> ClientErrorReport {
        let scrub = |s: &Option<String>| s.as_deref().map(scrub_text);
        ClientErrorReport {
            message: scrub_text(&self.message),
            stack: scrub(&self.stack),
            url: scrub(&self.url),
            user_agent: scrub(&self.user_agent),
            level: self.level.clone(),
            context: self.context.clone().map(|mut c| {
                scrub_json(&mut c);
                c
            }),
            user_id: self.user_id.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

/// The Sentry level of a client report's `level`.
fn client_level(level: Option<&str>) -> SentryLevel {
    match level.map(str::to_ascii_lowercase).as_deref() {
        Some("warning" | "warn") => SentryLevel::Warning,
        Some("info") => SentryLevel::Info,
        Some("debug") => SentryLevel::Debug,
        Some("fatal") => SentryLevel::Fatal,
        _ => SentryLevel::Error,
    }
}

/// Forwards a frontend error report to Sentry as a message event (scrubbed
/// first); nothing happens when Sentry is not configured.
pub fn report_client_error(report: &ClientErrorReport) {
    if sentry::Hub::current().client().is_none_or(|c| !c.is_enabled()) {
        return;
    }
    let report = report.scrubbed();
    let mut event = SentryEvent {
        level: client_level(report.level.as_deref()),
        logger: Some("frontend".to_owned()),
        message: Some(report.message.clone()),
        ..Default::default()
    };
    event.tags.insert("source".to_owned(), "frontend".to_owned());
    if let Some(url) = &report.url {
        event.tags.insert("url".to_owned(), url.clone());
    }
    if let Some(id) = &report.request_id {
        event.tags.insert("request_id".to_owned(), id.clone());
    }
    if let Some(id) = &report.user_id {
        event.user = Some(sentry::User {
            id: Some(id.clone()),
            ..Default::default()
        });
    }
    if let Some(stack) = &report.stack {
        event.extra.insert("stack".to_owned(), Value::String(stack.clone()));
    }
    if let Some(agent) = &report.user_agent {
        event
            .extra
            .insert("user_agent".to_owned(), Value::String(agent.clone()));
    }
    if let Some(context) = &report.context {
        event.extra.insert("context".to_owned(), context.clone());
    }
    sentry::capture_event(event);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_send_removes_secrets_everywhere() {
        let mut event = SentryEvent {
            message: Some("login failed password=hunter2".to_owned()),
            ..Default::default()
        };
        event
            .extra
            .insert("refresh_token".to_owned(), Value::String("r".to_owned()));
        event.extra.insert(
            "body".to_owned(),
            serde_json::json!({"password": "hunter2", "email": "a@b.c"}),
        );
        event
            .tags
            .insert("authorization".to_owned(), "Bearer abc.def.ghi".to_owned());
        event.request = Some(sentry::protocol::Request {
            headers: [("Authorization".to_owned(), "Bearer x".to_owned())]
                .into_iter()
                .collect(),
            cookies: Some("sid=1".to_owned()),
            ..Default::default()
        });
        let event = before_send(event).unwrap();
        let text = serde_json::to_string(&event).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("Bearer x"), "{text}");
        assert!(!text.contains("sid=1"), "{text}");
        assert!(!text.contains("\"r\""), "{text}");
        assert!(text.contains("a@b.c"), "{text}");
    }

    #[test]
    fn client_levels() {
        assert_eq!(client_level(Some("WARNING")), SentryLevel::Warning);
        assert_eq!(client_level(Some("nonsense")), SentryLevel::Error);
        assert_eq!(client_level(None), SentryLevel::Error);
    }
}
