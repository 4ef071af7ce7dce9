//! Load-balanced gRPC channels with deadlines and trace propagation.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::Notify;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tower::Service;

/// A channel to every replica of one service. Clone freely; clones share
/// connections.
pub type GrpcChannel = InterceptedService<Deadline<Channel>, TracePropagation>;

/// How often endpoint host names are resolved (and endpoints probed) again.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// Probe interval while some endpoint is out of rotation.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// A TCP connect probe of one endpoint may take this long.
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// How long one resolution may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a channel could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("{service}: {url:?} is not an http(s)://host:port URL")]
    BadUrl { service: &'static str, url: String },
}

#[derive(Debug, Clone)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
}

fn parse_target(service: &'static str, url: &str) -> Result<Target, ChannelError> {
    let bad = || ChannelError::BadUrl {
        service,
        url: url.to_owned(),
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    if scheme != "http" && scheme != "https" {
        return Err(bad());
    }
    let authority = rest.trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || authority.contains('/') {
        return Err(bad());
    }
    Ok(Target {
        scheme: scheme.to_owned(),
        host: host.to_owned(),
        port,
    })
}

/// Builds a channel that balances over every address of every endpoint URL.
///
/// Addresses are resolved in the background now and every few seconds, so a
/// service can start before its upstream exists; until an address answers,
/// calls fail with `UNAVAILABLE` or `DEADLINE_EXCEEDED` after `request_timeout`.
/// The resolver task ends when the last clone of the channel is dropped.
pub fn balanced_channel(
    service: &'static str,
    urls: &[String],
    connect_timeout: Duration,
    request_timeout: Duration,
) -> Result<GrpcChannel, ChannelError> {
    let targets = urls
        .iter()
        .map(|u| parse_target(service, u))
        .collect::<Result<Vec<_>, _>>()?;
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(1024);
    let failures = Arc::new(Notify::new());
    tokio::spawn(resolve_forever(
        service,
        targets,
        changes,
        connect_timeout,
        request_timeout,
        failures.clone(),
    ));
    Ok(InterceptedService::new(
        Deadline {
            inner: channel,
            timeout: request_timeout,
            failures,
        },
        TracePropagation,
    ))
}

async fn resolve(target: &Target) -> Vec<SocketAddr> {
    let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => {
            tracing::warn!(host = %target.host, error = %e, "could not resolve upstream");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!(host = %target.host, "resolving upstream timed out");
            Vec::new()
        }
    }
}

/// Whether something accepts TCP connections at `addr` now.
async fn accepts(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

/// Keeps the balancer's endpoints equal to the addresses the targets resolve
/// to *and* that accept connections: a replica that died (and still resolves,
/// or is in a static list) leaves the rotation within a moment of the first
/// failed call — tonic's balancer alone keeps picking it (grpc-rust#2839) —
/// and comes back when it answers again.
async fn resolve_forever(
    service: &'static str,
    targets: Vec<Target>,
    changes: tokio::sync::mpsc::Sender<Change<SocketAddr, Endpoint>>,
    connect_timeout: Duration,
    request_timeout: Duration,
    failures: Arc<Notify>,
) {
    let mut current: HashSet<SocketAddr> = HashSet::new();
    loop {
        let mut found: HashMap<SocketAddr, &Target> = HashMap::new();
        for target in &targets {
            for addr in resolve(target).await {
                found.insert(addr, target);
            }
        }
        // Probed only once something was in rotation: at start-up every
        // resolved address is used, answering or not (the upstream may start later).
        let healthy: HashSet<SocketAddr> = if current.is_empty() {
            found.keys().copied().collect()
        } else {
            let probes = found.keys().map(|a| async move { (*a, accepts(*a).await) });
            futures_util::future::join_all(probes)
                .await
                .into_iter()
                .filter_map(|(a, ok)| ok.then_some(a))
                .collect()
        };
        // A failed lookup, or every replica down, keeps the last known set
        // rather than dropping them all (calls fail with UNAVAILABLE anyway).
        let out_of_rotation = found.len() - healthy.len().min(found.len());
        if !healthy.is_empty() {
            for gone in current
                .iter()
                .filter(|a| !healthy.contains(a))
                .copied()
                .collect::<Vec<_>>()
            {
                tracing::info!(service, addr = %gone, "upstream endpoint out of rotation");
                if changes.send(Change::Remove(gone)).await.is_err() {
                    return;
                }
                current.remove(&gone);
            }
            for addr in &healthy {
                if current.contains(addr) {
                    continue;
                }
                let target = found[addr];
                let uri = format!("{}://{addr}", target.scheme);
                let Ok(endpoint) = Endpoint::from_shared(uri) else {
                    continue;
                };
                let endpoint = endpoint
                    .connect_timeout(connect_timeout)
                    .timeout(request_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(20))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .keep_alive_while_idle(true);
                tracing::info!(service, addr = %addr, "upstream endpoint added");
                if changes.send(Change::Insert(*addr, endpoint)).await.is_err() {
                    return;
                }
                current.insert(*addr);
            }
        }
        let wait = if current.is_empty() {
            Duration::from_millis(500)
        } else if out_of_rotation > 0 {
            RETRY_INTERVAL
        } else {
            RESOLVE_INTERVAL
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // A call could not connect: look again now.
            () = failures.notified() => {}
            _ = changes.closed() => return,
        }
    }
}

/// Whether a failed call never reached a server (nothing was sent).
fn is_connect_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::TimedOut
            )
        {
            return true;
        }
        if e.to_string().contains("connect error") {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Puts a deadline on every call: sends it to the server as `grpc-timeout`
/// and fails the call with `DEADLINE_EXCEEDED` when it passes, including while
/// waiting for a ready replica.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
    /// Told when a call could not connect (the resolver probes at once).
    failures: Arc<Notify>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited inside the deadline below, not here.
        let _ = cx;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let timeout = self.timeout;
        if !request.headers().contains_key("grpc-timeout") {
            let value = format!("{}m", timeout.as_millis().max(1));
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                request.headers_mut().insert("grpc-timeout", value);
            }
        }
        let clone = self.inner.clone();
        // Use the instance that was (logically) made ready; keep a fresh clone for the next call.
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let failures = self.failures.clone();
        Box::pin(async move {
            let call = async {
                std::future::poll_fn(|cx| inner.poll_ready(cx))
                    .await
                    .map_err(Into::into)?;
                inner.call(request).await.map_err(|e| {
                    let e: BoxError = e.into();
                    if is_connect_error(e.as_ref()) {
                        failures.notify_one();
                    }
                    e
                })
            };
            match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => Err(Box::new(tonic::Status::deadline_exceeded(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                ))) as BoxError),
            }
        })
    }
}

/// Adds the current span's W3C trace context to every call's metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracePropagation;

tokio::task_local! {
    /// The address of the client the current request serves (set by the
    /// gateway around each request): sent along as `x-client-ip`, so the
    /// services' logs — audit records included — say where a request came from.
    pub static CLIENT_IP: String;
}

/// Metadata key of the client's address on internal calls.
pub const CLIENT_IP_HEADER: &str = "x-client-ip";

impl tonic::service::Interceptor for TracePropagation {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let _ = CLIENT_IP.try_with(|ip| {
            if let Ok(value) = tonic::metadata::MetadataValue::try_from(ip.as_str()) {
                request.metadata_mut().insert(CLIENT_IP_HEADER, value);
            }
        });
        for (key, value) in unilink_telemetry::inject() {
            let key = tonic::metadata::MetadataKey::from_bytes(key.as_bytes());
            let value = tonic::metadata::MetadataValue::try_from(value.as_str());
            if let (Ok(key), Ok(value)) = (key, value) {
                request.metadata_mut().insert(key, value);
            }
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_are_checked() {
        let t = parse_target("auth", "http://auth.default.svc:50051").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("auth.default.svc", 50051));
        let t = parse_target("auth", "http://[::1]:50051/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 50051));
        for bad in ["auth:50051", "http://auth", "ftp://auth:1", "http://:1", "http://a:1/x"] {
            assert!(parse_target("auth", bad).is_err(), "{bad}");
        }
    }
}
