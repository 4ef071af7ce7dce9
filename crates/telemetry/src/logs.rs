//! JSON log lines, one per event, with the fields of every enclosing span
//! flattened into the line.
//!
//! * [`SpanFields`] keeps each span's recorded fields (and when it started)
//!   in the span's extensions; [`SpanFieldsLayer`] maintains them. The log
//!   layer and the Sentry layer both read them, so a line (or an error
//!   report) written deep inside a `#[instrument]` span still carries the
//!   `trace_id`, `request_id` or `rpc.method` of the request span around it.
//! * [`JsonLogLayer`] writes `{"timestamp","level","message",<fields>,"target","span"}`.
//!   Fields are merged from the outermost span inwards, then the event's own
//!   (inner wins), so `trace_id` is a top-level key a log pipeline can index.
//! * When a request span closes it writes one summary line with
//!   `duration_ms`: `request finished` for `http.request` (the gateway's
//!   access log, at `INFO`), `rpc finished` for `grpc.request` and
//!   `event handled` for `event.consume` (at `DEBUG`, so only with
//!   `LOG_LEVEL=debug` or a `…=debug` directive). The access line is what
//!   links a client's `X-Request-Id` to the trace.

use std::io::Write;
use std::time::Instant;

use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

/// The recorded fields of one span, in recording order.
#[derive(Debug, Clone)]
pub struct SpanFields {
    pub fields: Vec<(&'static str, Value)>,
    pub started: Instant,
}

impl SpanFields {
    fn set(&mut self, name: &'static str, value: Value) {
        match self.fields.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.fields.push((name, value)),
        }
    }

    /// The value of `name`, when recorded.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.iter().find(|(k, _)| *k == name).map(|(_, v)| v)
    }
}

/// Turns `tracing` field values into JSON values.
pub(crate) struct JsonVisitor<'a>(pub(crate) &'a mut Vec<(&'static str, Value)>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(
            field,
            serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number),
        );
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
}

/// Keeps [`SpanFields`] in every span's extensions. Install it before the
/// layers that read them.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanFieldsLayer;

impl<S> Layer<S> for SpanFieldsLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Vec::new();
        attrs.record(&mut JsonVisitor(&mut fields));
        span.extensions_mut().insert(SpanFields {
            fields,
            started: Instant::now(),
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(stored) = extensions.get_mut::<SpanFields>() {
            let mut recorded = Vec::new();
            values.record(&mut JsonVisitor(&mut recorded));
            for (name, value) in recorded {
                stored.set(name, value);
            }
        }
    }
}

/// The fields of `span` and every span around it, outermost first, later
/// (inner) values replacing earlier ones.
pub(crate) fn scope_fields<S>(span: &SpanRef<'_, S>, into: &mut Vec<(&'static str, Value)>)
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    for ancestor in span.scope().from_root() {
        if let Some(stored) = ancestor.extensions().get::<SpanFields>() {
            for (name, value) in &stored.fields {
                match into.iter_mut().find(|(k, _)| k == name) {
                    Some(slot) => slot.1 = value.clone(),
                    None => into.push((name, value.clone())),
                }
            }
        }
    }
}

/// What a request span's summary line says, by span name.
fn summary(span_name: &str) -> Option<(Level, &'static str)> {
    match span_name {
        "http.request" => Some((Level::INFO, "request finished")),
        "grpc.request" => Some((Level::DEBUG, "rpc finished")),
        "event.consume" => Some((Level::DEBUG, "event handled")),
        _ => None,
    }
}

/// Writes one JSON object per event (see the module docs).
#[derive(Debug)]
pub struct JsonLogLayer<W> {
    writer: W,
    /// The most verbose level the log filter lets through anywhere: summary
    /// lines (which are not `tracing` events) are written up to it.
    summary_level: LevelFilter,
}

impl<W> JsonLogLayer<W> {
    pub fn new(writer: W, summary_level: LevelFilter) -> Self {
        JsonLogLayer { writer, summary_level }
    }
}

/// Keys of the line itself; fields with these names are prefixed with `field.`.
const RESERVED: &[&str] = &["timestamp", "level", "target", "span"];

fn write_line(
    out: &mut Vec<u8>,
    level: &Level,
    message: Option<&Value>,
    fields: &[(&'static str, Value)],
    target: &str,
    span: Option<&str>,
) {
    let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let mut line = serde_json::Map::new();
    line.insert("timestamp".to_owned(), Value::String(timestamp));
    line.insert("level".to_owned(), Value::String(level.as_str().to_owned()));
    if let Some(message) = message {
        line.insert("message".to_owned(), message.clone());
    }
    for (name, value) in fields {
        // `otel.*` fields steer the OpenTelemetry layer (span names), not logs.
        if *name == "message" || name.starts_with("otel.") {
            continue;
        }
        let key = if RESERVED.contains(name) {
            format!("field.{name}")
        } else {
            (*name).to_owned()
        };
        line.insert(key, value.clone());
    }
    line.insert("target".to_owned(), Value::String(target.to_owned()));
    if let Some(span) = span {
        line.insert("span".to_owned(), Value::String(span.to_owned()));
    }
    // Serialising a `Map` of `Value`s cannot fail.
    let _ = serde_json::to_writer(&mut *out, &line);
    out.push(b'\n');
}

impl<S, W> Layer<S> for JsonLogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = Vec::new();
        let current = ctx.event_span(event);
        if let Some(span) = &current {
            scope_fields(span, &mut fields);
        }
        let mut own = Vec::new();
        event.record(&mut JsonVisitor(&mut own));
        let mut message = None;
        for (name, value) in own {
            if name == "message" {
                message = Some(value);
                continue;
            }
            match fields.iter_mut().find(|(k, _)| *k == name) {
                Some(slot) => slot.1 = value,
                None => fields.push((name, value)),
            }
        }
        let metadata = event.metadata();
        let mut out = Vec::with_capacity(256);
        write_line(
            &mut out,
            metadata.level(),
            message.as_ref(),
            &fields,
            metadata.target(),
            current.as_ref().map(|s| s.name()),
        );
        let _ = self.writer.make_writer_for(metadata).write_all(&out);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some((level, message)) = summary(span.name()) else {
            return;
        };
        if self.summary_level < level {
            return;
        }
        let mut fields = Vec::new();
        scope_fields(&span, &mut fields);
        let started = span.extensions().get::<SpanFields>().map(|s| s.started);
        if let Some(started) = started {
            let ms = (started.elapsed().as_secs_f64() * 1_000_000.0).round() / 1000.0;
            fields.push(("duration_ms", serde_json::json!(ms)));
        }
        let mut out = Vec::with_capacity(256);
        write_line(
            &mut out,
            &level,
            Some(&Value::String(message.to_owned())),
            &fields,
            span.metadata().target(),
            Some(span.name()),
        );
        let _ = self.writer.make_writer().write_all(&out);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Captures log output in tests (also used by the crate root's tests).
    #[derive(Clone, Default)]
    pub(crate) struct Buffer(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn lines(buffer: &Buffer) -> Vec<Value> {
        String::from_utf8(buffer.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn span_fields_are_flattened_into_every_line_and_inner_wins() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(SpanFieldsLayer)
            .with(JsonLogLayer::new(buffer.clone(), LevelFilter::INFO));
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("http.request", request_id = "r-1", trace_id = tracing::field::Empty);
            outer.record("trace_id", "abc123");
            let _outer = outer.enter();
            let inner = tracing::info_span!("register", user_id = "u-outer");
            let _inner = inner.enter();
            tracing::info!(audit = true, user_id = "u-event", level = 3, "account created");
        });
        let lines = lines(&buffer);
        let event = &lines[0];
        assert_eq!(event["message"], "account created");
        assert_eq!(event["level"], "INFO");
        assert_eq!(event["trace_id"], "abc123");
        assert_eq!(event["request_id"], "r-1");
        assert_eq!(event["user_id"], "u-event");
        assert_eq!(event["audit"], true);
        assert_eq!(event["field.level"], 3);
        assert_eq!(event["span"], "register");
        assert!(event["timestamp"].as_str().unwrap().ends_with('Z'));
        // The access line of the request span, with its fields and duration.
        let access = lines.iter().find(|l| l["message"] == "request finished").unwrap();
        assert_eq!(access["request_id"], "r-1");
        assert_eq!(access["trace_id"], "abc123");
        assert!(access["duration_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(lines.len(), 2, "{lines:?}");
    }

    #[test]
    fn rpc_summaries_are_debug_lines() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(SpanFieldsLayer)
            .with(JsonLogLayer::new(buffer.clone(), LevelFilter::INFO));
        tracing::subscriber::with_default(subscriber, || {
            let _span = tracing::info_span!("grpc.request", rpc.method = "/x.Y/Z").entered();
        });
        assert!(lines(&buffer).is_empty());

        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(SpanFieldsLayer)
            .with(JsonLogLayer::new(buffer.clone(), LevelFilter::DEBUG));
        tracing::subscriber::with_default(subscriber, || {
            let _span = tracing::info_span!("grpc.request", otel.name = "/x.Y/Z", rpc.method = "/x.Y/Z").entered();
        });
        let lines = lines(&buffer);
        assert!(lines[0].get("otel.name").is_none(), "{}", lines[0]);
        assert_eq!(lines[0]["message"], "rpc finished");
        assert_eq!(lines[0]["level"], "DEBUG");
        assert_eq!(lines[0]["rpc.method"], "/x.Y/Z");
    }
}
