//! Telemetry for every UniLink process, set up by one call to [`init`].
//!
//! * **Logs** — JSON lines on stdout ([`logs`]), filtered by `LOG_LEVEL` (a
//!   level such as `INFO`, or a full filter such as `info,unilink_auth=debug`).
//!   Lower-case messages with structured fields; the fields of every enclosing
//!   span are flattened into the line, so each line of a request carries its
//!   `trace_id` (and at the gateway its `request_id`) as top-level keys.
//!   Request spans end with a summary line (`request finished` at the
//!   gateway; `rpc finished` / `event handled` in backends at `DEBUG`).
//!   Security-relevant records carry `audit = true` and an `action`.
//! * **Traces** — OpenTelemetry spans from `tracing` spans; exported over OTLP
//!   gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Trace ids are produced
//!   either way (no collector needed for logs to carry them), and the W3C
//!   `traceparent` propagator is installed globally so gRPC metadata and bus
//!   messages carry the context ([`inject`], [`extract`]). Export failures
//!   are dropped quietly and never block a request.
//! * **Errors** — Sentry when `SENTRY_DSN` is set ([`mod@sentry`]): panics and
//!   `error!` events become Sentry events tagged with the request context;
//!   every event is scrubbed of tokens and passwords ([`scrub`]) before it
//!   leaves; [`report_client_error`] forwards the web frontend's reports.
//! * **Metrics** — a process-wide Prometheus recorder ([`metrics_handle`]);
//!   code records with the `metrics` macros and `/metrics` renders the text.

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use unilink_config::Settings;

pub mod logs;
pub mod scrub;
pub mod sentry;

pub use self::sentry::{ClientErrorReport, report_client_error};
pub use opentelemetry::Context as TraceContext;

/// Failures setting telemetry up; each names the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("LOG_LEVEL is invalid: {0}")]
    LogLevel(String),
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT is unusable: {0}")]
    Otlp(String),
    #[error("SENTRY_DSN is invalid: {0}")]
    Sentry(String),
}

/// Keeps exporters alive; flushes traces and Sentry events when dropped.
#[must_use = "telemetry stops exporting when the guard is dropped"]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    sentry: Option<::sentry::ClientInitGuard>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("sentry", &self.sentry.is_some())
            .finish()
    }
}

/// How long exiting waits for the last spans and Sentry events to leave.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // The exporter's shutdown ignores its timeout and waits for the last
        // export, up to the export deadline (5 s), twice over when the
        // collector accepts connections and never answers: wait for it on
        // another thread, at most FLUSH_WAIT, so a hung collector cannot hold
        // up a pod's exit.
        let provider = self.provider.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let _ = std::thread::Builder::new()
            .name("otel-shutdown".to_owned())
            .spawn(move || {
                let _ = done.send(provider.shutdown());
            });
        match finished.recv_timeout(FLUSH_WAIT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "trace exporter shutdown"),
            Err(_) => tracing::debug!("trace exporter still busy at exit; its last spans are dropped"),
        }
        if let Some(sentry) = self.sentry.take() {
            sentry.flush(Some(FLUSH_WAIT));
        }
    }
}

/// Noisy dependencies kept at `warn` unless `LOG_LEVEL` names them.
const QUIET: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "tower",
    "tonic",
    "fred",
    "tokio_postgres",
    "actix_server",
];

/// Builds the log filter from `LOG_LEVEL`.
pub fn log_filter(log_level: &str) -> Result<EnvFilter, TelemetryError> {
    let mut directives = log_level.trim().to_ascii_lowercase();
    if directives.is_empty() {
        directives = "info".to_owned();
    }
    for name in QUIET {
        if !directives.contains(name) {
            directives.push_str(&format!(",{name}=warn"));
        }
    }
    EnvFilter::builder()
        .parse(&directives)
        .map_err(|e| TelemetryError::LogLevel(format!("{log_level:?}: {e}")))
}

/// Sets up logs, traces, Sentry and the metrics recorder for `service`.
/// Call once, early in `main`, from inside the Tokio runtime.
pub fn init(
    service: &'static str,
    version: &'static str,
    settings: &Settings,
) -> Result<TelemetryGuard, TelemetryError> {
    let t = &settings.telemetry;
    let filter = log_filter(&t.log_level)?;
    let summary_level = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);

    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new("service.version", version))
        .with_attribute(opentelemetry::KeyValue::new(
            "deployment.environment",
            settings.environment.as_str(),
        ))
        .build();
    // Without an exporter the provider still makes valid trace and span ids
    // (sampled, just not sent), so logs carry trace ids with no collector.
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &t.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .with_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| TelemetryError::Otlp(e.to_string()))?;
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        provider = provider.with_span_processor(processor);
    }
    let provider = provider.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));

    let sentry = match &t.sentry_dsn {
        Some(dsn) => {
            // Parsed here first so a bad DSN is an error naming the variable
            // (the builder method would panic).
            dsn.expose()
                .parse::<::sentry::types::Dsn>()
                .map_err(|e| TelemetryError::Sentry(e.to_string()))?;
            let mut options = ::sentry::ClientOptions::new()
                .dsn(dsn.expose())
                .release(format!("{service}@{version}"))
                .environment(settings.environment.as_str())
                .send_default_pii(false)
                .server_name(service);
            options.before_send = Some(std::sync::Arc::new(self::sentry::before_send));
            options.max_breadcrumbs = 0;
            Some(::sentry::init(options))
        }
        None => None,
    };
    let sentry_layer = sentry.as_ref().map(|_| self::sentry::SentryErrorLayer);

    // A second init in one process (tests starting several services) keeps the first subscriber.
    // The filter is global, not per layer: callsites it disables (the
    // trace-level instrumentation of h2, hyper, tonic…) then cost nothing for
    // every layer, the OpenTelemetry one included.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs::SpanFieldsLayer)
        .with(logs::JsonLogLayer::new(std::io::stdout, summary_level))
        .with(otel_layer)
        .with(sentry_layer)
        .try_init();
    let _ = metrics_handle();

    Ok(TelemetryGuard { provider, sentry })
}

/// Histogram buckets (seconds) for request and query durations.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)
                .expect("latency buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was set first, in which case ours
            // renders nothing; no UniLink crate installs another.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

struct MapInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The W3C trace-context headers (`traceparent`, `tracestate`) of the current
/// span, for a gRPC call or a bus message.
pub fn inject() -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut MapInjector(&mut carrier));
    carrier
}

/// The trace context carried by `headers` (empty when there is none).
pub fn extract(headers: &HashMap<String, String>) -> TraceContext {
    TraceContextPropagator::new().extract(&MapExtractor(headers))
}

/// Makes `span` a child of the remote context in `headers` (when present) and
/// records its trace id in the span's `trace_id` field, so every log line in
/// the span carries it. The span must declare `trace_id = tracing::field::Empty`.
pub fn adopt_remote_parent(span: &tracing::Span, headers: &HashMap<String, String>) {
    let parent = extract(headers);
    use opentelemetry::trace::TraceContextExt;
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    record_trace_id(span);
}

/// Records the span's OpenTelemetry trace id in its `trace_id` field.
pub fn record_trace_id(span: &tracing::Span) {
    use opentelemetry::trace::TraceContextExt;
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_level_accepts_seed_style_levels_and_filters() {
        for ok in ["INFO", "debug", "warn,unilink_auth=trace", ""] {
            log_filter(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let err = log_filter("info,=bogus=").unwrap_err().to_string();
        assert!(err.starts_with("LOG_LEVEL is invalid"), "{err}");
    }

    #[test]
    fn metrics_render_in_prometheus_text() {
        let handle = metrics_handle();
        metrics::counter!("telemetry_test_total", "kind" => "x").increment(3);
        metrics::histogram!("telemetry_test_duration_seconds").record(0.02);
        let text = handle.render();
        assert!(text.contains("telemetry_test_total{kind=\"x\"} 3"), "{text}");
        assert!(
            text.contains("telemetry_test_duration_seconds_bucket{le=\"0.025\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn trace_context_round_trips_through_headers() {
        let mut headers = HashMap::new();
        headers.insert(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        );
        let context = extract(&headers);
        use opentelemetry::trace::TraceContextExt;
        assert_eq!(
            context.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let mut out = HashMap::new();
        TraceContextPropagator::new().inject_context(&context, &mut MapInjector(&mut out));
        assert_eq!(out["traceparent"], headers["traceparent"]);
    }

    #[test]
    fn trace_ids_exist_without_an_exporter() {
        use crate::logs::tests::Buffer;

        // As `init` builds it when OTEL_EXPORTER_OTLP_ENDPOINT is unset.
        let provider = SdkTracerProvider::builder().build();
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry()
            .with(logs::SpanFieldsLayer)
            .with(logs::JsonLogLayer::new(buffer.clone(), LevelFilter::INFO))
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let mut remote = HashMap::new();
        remote.insert(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        );
        tracing::subscriber::with_default(subscriber, || {
            let root = tracing::info_span!("http.request", trace_id = tracing::field::Empty);
            record_trace_id(&root);
            root.in_scope(|| {
                let carried = inject();
                assert!(carried["traceparent"].starts_with("00-"), "{carried:?}");
                tracing::info!("inside the root");
            });
            let child = tracing::info_span!("grpc.request", trace_id = tracing::field::Empty);
            adopt_remote_parent(&child, &remote);
            child.in_scope(|| tracing::info!("inside the child"));
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let root_line = lines.iter().find(|l| l["message"] == "inside the root").unwrap();
        let trace_id = root_line["trace_id"].as_str().unwrap();
        assert_eq!(trace_id.len(), 32, "{root_line}");
        assert_ne!(trace_id, "00000000000000000000000000000000");
        let child_line = lines.iter().find(|l| l["message"] == "inside the child").unwrap();
        assert_eq!(child_line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
