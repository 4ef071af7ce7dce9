//! The host every backend service runs in: gRPC with health, a probe/metrics
//! HTTP port, dependency probes driving readiness, and graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use futures_util::future::BoxFuture;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tower::{Layer, Service};
use tracing::Instrument;
use unilink_config::ListenSettings;

/// A named dependency check (database, Redis…) run for readiness.
pub struct Probe {
    pub name: &'static str,
    check: Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("name", &self.name).finish()
    }
}

impl Probe {
    /// A probe that runs `check` (which must bound its own time).
    pub fn new<F, Fut>(name: &'static str, check: F) -> Probe
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Probe {
            name,
            check: Arc::new(move || Box::pin(check())),
        }
    }
}

/// How often readiness probes run.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// The longest one probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Name of the health-service entry that is always `SERVING` while the
/// process runs (Kubernetes liveness); the overall entry `""` is readiness.
pub const LIVENESS_SERVICE: &str = "liveness";
/// Concurrent streams a gateway may open on one connection (each client
/// WebSocket is a long-lived stream; the default of a few hundred is too few).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 100_000;

/// Outcome of the latest probe round: dependency name → error, empty when ready.
type ProbeState = Option<HashMap<&'static str, String>>;

/// Listeners bound for one service; see the module docs.
#[derive(Debug)]
pub struct ServiceHost {
    name: &'static str,
    grpc: TcpListener,
    http: TcpListener,
    grace: Duration,
}

impl ServiceHost {
    /// Binds the gRPC (`GRPC_ADDR`) and HTTP (`HTTP_ADDR`) listeners; port 0 picks free ports.
    pub async fn bind(name: &'static str, listen: &ListenSettings) -> std::io::Result<ServiceHost> {
        // Install the recorder before the first request records anything.
        let _ = unilink_telemetry::metrics_handle();
        let grpc = TcpListener::bind(listen.grpc_addr).await?;
        let http = TcpListener::bind(listen.http_addr).await?;
        Ok(ServiceHost {
            name,
            grpc,
            http,
            grace: listen.shutdown_grace,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr().expect("bound listener has an address")
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr().expect("bound listener has an address")
    }

    /// Serves `routes` until `shutdown` resolves, then stops taking requests,
    /// reports `NOT_SERVING`, lets in-flight calls finish for up to the grace
    /// period, and returns.
    pub async fn serve(
        self,
        routes: Routes,
        probes: Vec<Probe>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), tonic::transport::Error> {
        let grpc_addr = self.grpc_addr();
        let http_addr = self.http_addr();
        let ServiceHost {
            name,
            grpc,
            http,
            grace,
        } = self;
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_service_status("", ServingStatus::NotServing).await;
        reporter
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;

        let (stop_tx, stop_rx) = watch::channel(false);
        let (probe_tx, probe_rx) = watch::channel::<ProbeState>(None);

        let probing = tokio::spawn(run_probes(name, probes, reporter.clone(), probe_tx, stop_rx.clone()));
        let http_server = tokio::spawn(serve_http(http, probe_rx, stop_rx.clone()));

        let mut grpc_stop = stop_rx.clone();
        // The builder's `tcp_nodelay` applies only to listeners it binds
        // itself; on ours it must be set on the incoming stream, or every
        // answer written in more than one segment waits for the caller's
        // delayed ACK (40 ms on Linux).
        let incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
        let grpc_server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // Every client WebSocket is one stream on a gateway's connection.
            .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
            .layer(ServerTelemetryLayer)
            .add_routes(routes.add_service(health))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_stop.wait_for(|stop| *stop).await;
            });
        let mut grpc_server = Box::pin(grpc_server);

        tracing::info!(service = name, %grpc_addr, %http_addr, "serving");
        let result = tokio::select! {
            result = &mut grpc_server => result,
            () = shutdown => {
                tracing::info!(service = name, "shutting down");
                reporter.set_service_status("", ServingStatus::NotServing).await;
                let _ = stop_tx.send(true);
                match tokio::time::timeout(grace, &mut grpc_server).await {
                    Ok(result) => result,
                    Err(_) => {
                        tracing::warn!(service = name, ?grace, "in-flight calls did not finish within the grace period");
                        Ok(())
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        let _ = probing.await;
        let _ = tokio::time::timeout(Duration::from_secs(2), http_server).await;
        tracing::info!(service = name, "stopped");
        result
    }
}

async fn run_probes(
    service: &'static str,
    probes: Vec<Probe>,
    reporter: tonic_health::server::HealthReporter,
    state: watch::Sender<ProbeState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut was_ready: Option<bool> = None;
    loop {
        let checks = probes.iter().map(|p| {
            let check = p.check.clone();
            let name = p.name;
            async move {
                match tokio::time::timeout(PROBE_TIMEOUT, check()).await {
                    Ok(Ok(())) => (name, None),
                    Ok(Err(e)) => (name, Some(e)),
                    Err(_) => (name, Some(format!("no answer within {PROBE_TIMEOUT:?}"))),
                }
            }
        });
        let failures: HashMap<&'static str, String> = futures_util::future::join_all(checks)
            .await
            .into_iter()
            .filter_map(|(name, err)| err.map(|e| (name, e)))
            .collect();
        let ready = failures.is_empty();
        if was_ready != Some(ready) {
            if ready {
                tracing::info!(service, "ready");
            } else {
                tracing::warn!(service, failing = ?failures, "not ready");
            }
            was_ready = Some(ready);
        }
        if *stop.borrow() {
            return;
        }
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        let _ = state.send(Some(failures));
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn serve_http(listener: TcpListener, probes: watch::Receiver<ProbeState>, mut stop: watch::Receiver<bool>) {
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(render_metrics))
        .route("/livez", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let state = probes.borrow().clone();
                async move { readiness_answer(state) }
            }),
        );
    let served = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    if let Err(e) = served.await {
        tracing::warn!(error = %e, "probe/metrics server stopped with an error");
    }
}

async fn render_metrics() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        unilink_telemetry::metrics_handle().render(),
    )
}

fn readiness_answer(state: ProbeState) -> (StatusCode, String) {
    match state {
        None => (StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"starting"}"#.to_owned()),
        Some(failures) if failures.is_empty() => (StatusCode::OK, r#"{"status":"ready"}"#.to_owned()),
        Some(failures) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "not ready", "failing": failures }).to_string(),
        ),
    }
}

/// Joins each request to the caller's trace and records gRPC server metrics.
#[derive(Debug, Clone, Copy)]
pub struct ServerTelemetryLayer;

impl<S> Layer<S> for ServerTelemetryLayer {
    type Service = ServerTelemetry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerTelemetry { inner }
    }
}

#[derive(Debug, Clone)]
pub struct ServerTelemetry<S> {
    inner: S,
}

/// The gRPC code name of a numeric `grpc-status`.
fn code_name(status: &str) -> &'static str {
    let code = status
        .parse::<i32>()
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Unknown);
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "Canceled",
        tonic::Code::Unknown => "Unknown",
        tonic::Code::InvalidArgument => "InvalidArgument",
        tonic::Code::DeadlineExceeded => "DeadlineExceeded",
        tonic::Code::NotFound => "NotFound",
        tonic::Code::AlreadyExists => "AlreadyExists",
        tonic::Code::PermissionDenied => "PermissionDenied",
        tonic::Code::ResourceExhausted => "ResourceExhausted",
        tonic::Code::FailedPrecondition => "FailedPrecondition",
        tonic::Code::Aborted => "Aborted",
        tonic::Code::OutOfRange => "OutOfRange",
        tonic::Code::Unimplemented => "Unimplemented",
        tonic::Code::Internal => "Internal",
        tonic::Code::Unavailable => "Unavailable",
        tonic::Code::DataLoss => "DataLoss",
        tonic::Code::Unauthenticated => "Unauthenticated",
    }
}

impl<S, B, RB> Service<http::Request<B>> for ServerTelemetry<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let mut carrier = HashMap::new();
        for key in ["traceparent", "tracestate"] {
            if let Some(value) = request.headers().get(key).and_then(|v| v.to_str().ok()) {
                carrier.insert(key.to_owned(), value.to_owned());
            }
        }
        let client_ip = request
            .headers()
            .get(crate::client::CLIENT_IP_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let span = tracing::info_span!(
            "grpc.request",
            otel.name = %method,
            rpc.method = %method,
            client_ip = %client_ip,
            trace_id = tracing::field::Empty,
        );
        unilink_telemetry::adopt_remote_parent(&span, &carrier);
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(
            async move {
                let result = future.await;
                let code = match &result {
                    Ok(response) => response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .map_or("OK", code_name),
                    Err(_) => "Unknown",
                };
                let labels = [("grpc_method", method), ("grpc_code", code.to_owned())];
                metrics::counter!("grpc_server_handled_total", &labels).increment(1);
                metrics::histogram!("grpc_server_handling_seconds", &labels[..1])
                    .record(started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_names_follow_the_grpc_spec() {
        assert_eq!(code_name("0"), "OK");
        assert_eq!(code_name("5"), "NotFound");
        assert_eq!(code_name("14"), "Unavailable");
        assert_eq!(code_name("garbage"), "Unknown");
    }

    #[test]
    fn readiness_lists_failing_dependencies() {
        let (status, body) = readiness_answer(Some(HashMap::from([("database", "refused".to_owned())])));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains(r#""database":"refused""#), "{body}");
        assert_eq!(readiness_answer(Some(HashMap::new())).0, StatusCode::OK);
        assert_eq!(readiness_answer(None).0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
