//! Building and running the gateway.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::{HttpService, KeepAlive, Request};
use actix_server::ServerBuilder;
use actix_service::{IntoServiceFactory, ServiceFactory, fn_factory, fn_service, map_config};
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{AppConfig, Server, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::{DefaultHeaders, ErrorHandlerResponse, ErrorHandlers, from_fn};
use actix_web::{App, HttpResponse, web};
use futures_util::FutureExt;
use futures_util::future::LocalBoxFuture;
use tokio_util::sync::CancellationToken;
use unilink_bus::Redis;
use unilink_config::{DatabaseSettings, Settings};
use unilink_errors::ErrorCode;
use unilink_runtime::process::{self, Command};

use crate::clients::Upstreams;
use crate::error::ApiError;
use crate::identity::KeyStore;
use crate::middleware::client_ip::TrustedProxies;
use crate::middleware::cors::OriginPolicy;
use crate::middleware::edge::Edge;
use crate::middleware::rate_limit::RateLimiter;
use crate::rest;
use crate::rest::health::HealthChecker;

/// Listen backlog of the public port. A drained gateway's clients all
/// reconnect at once, through the balancer, to the others: with std's
/// default of 128, 256 clients connecting together overflowed the accept
/// queue and some waited for the kernel's 1 s SYN retransmission.
const LISTEN_BACKLOG: u32 = 2048;

/// Binds the public port with [`LISTEN_BACKLOG`] (the kernel caps it at
/// `net.core.somaxconn`).
fn bind_public(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)?.into_std()
}

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot listen on HTTP_ADDR: {0}")]
    Listen(#[from] std::io::Error),
    #[error(transparent)]
    Upstream(#[from] unilink_grpc::client::ChannelError),
    #[error(transparent)]
    Database(#[from] unilink_db::DbError),
    #[error(transparent)]
    Redis(#[from] unilink_bus::BusError),
    #[error("{0}")]
    Config(String),
}

/// Largest request body accepted (413 beyond).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// JSON bodies: at most [`MAX_BODY_BYTES`], every failure a `{"detail"}` answer.
fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY_BYTES)
        .error_handler(|err, _req| {
            use actix_web::error::JsonPayloadError;
            let api = match &err {
                JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                    ApiError::new(ErrorCode::PayloadTooLarge, "request body is larger than 1 MiB")
                }
                JsonPayloadError::ContentType => ApiError::new(
                    ErrorCode::BadRequest,
                    "expected a JSON body (Content-Type: application/json)",
                ),
                JsonPayloadError::Deserialize(e) => {
                    ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}"))
                }
                other => ApiError::new(ErrorCode::BadRequest, format!("invalid request body: {other}")),
            };
            api.into()
        })
}

/// Headers every answer carries.
fn security_headers(production: bool) -> DefaultHeaders {
    let headers = DefaultHeaders::new()
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"))
        .add(("Cross-Origin-Opener-Policy", "same-origin"))
        .add(("Permissions-Policy", "camera=(), microphone=(), geolocation=()"))
        .add(("Cache-Control", "no-store"));
    if production {
        headers.add(("Strict-Transport-Security", "max-age=63072000; includeSubDomains"))
    } else {
        headers
    }
}

/// Turns any error answer that is not JSON yet (405, 413 from the payload
/// limit, …) into `{"detail": …}`, keeping its status and headers.
fn json_error_body<B: MessageBody + 'static>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let detail = match status.as_u16() {
        405 => "method not allowed".to_owned(),
        413 => "request body is larger than 1 MiB".to_owned(),
        _ => status.canonical_reason().unwrap_or("request failed").to_lowercase(),
    };
    let (req, original) = res.into_parts();
    let mut response: HttpResponse<BoxBody> = HttpResponse::build(status).json(serde_json::json!({ "detail": detail }));
    for (name, value) in original.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            response.headers_mut().insert(name.clone(), value.clone());
        }
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body(),
    ))
}

/// `http_requests_total{method,route,status}` and `http_request_duration_seconds`
/// by route template (never raw ids).
fn record_http_metrics<S, B>(
    req: ServiceRequest,
    srv: &S,
) -> impl Future<Output = Result<ServiceResponse<B>, actix_web::Error>> + use<S, B>
where
    S: actix_web::dev::Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: 'static,
{
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    srv.call(req).map(move |result| {
        let status = match &result {
            Ok(response) => response.status().as_u16(),
            Err(e) => e.as_response_error().status_code().as_u16(),
        };
        metrics::counter!(
            "http_requests_total",
            "method" => method.clone(),
            "route" => route.clone(),
            "status" => status.to_string()
        )
        .increment(1);
        metrics::histogram!("http_request_duration_seconds", "method" => method, "route" => route)
            .record(started.elapsed().as_secs_f64());
        result
    })
}

/// What every worker's applications are built from.
#[derive(Clone)]
struct Shared {
    checker: web::Data<HealthChecker>,
    /// The clients made at start-up: used by a worker whose own could not be made.
    upstreams: web::Data<Upstreams>,
    upstream_settings: unilink_config::UpstreamSettings,
    redis_settings: unilink_config::RedisSettings,
    edge: web::Data<Edge>,
    socket_cap: web::Data<crate::ws::cap::SocketCap>,
    local_sockets: web::Data<crate::ws::rebalance::LocalSockets>,
    draining: web::Data<crate::ws::Draining>,
    liveness: web::Data<crate::ws::Liveness>,
    /// The replica's relay (one subscription connection) and presence hub;
    /// each worker sends over its own Redis client.
    relay: unilink_relay::SignalRelay,
    presence: crate::ws::presence::PresenceHub,
    calls: unilink_config::CallSettings,
    origins: OriginPolicy,
    production: bool,
}

impl Shared {
    /// A worker's own gRPC and Redis clients. Clients per worker: a
    /// request's HTTP, Redis and gRPC I/O all run on its worker's thread (no
    /// hand-offs to another runtime). Settings were validated at start-up, so
    /// these cannot fail here; if they did, the shared clients serve.
    fn worker_clients(&self) -> (web::Data<Upstreams>, web::Data<Edge>, web::Data<crate::ws::Planes>) {
        let upstreams =
            Upstreams::connect(&self.upstream_settings).map_or_else(|_| self.upstreams.clone(), web::Data::new);
        let (edge, relay, presence) = match Redis::connect_background(&self.redis_settings) {
            Ok(redis) => {
                let relay = self.relay.with_redis(redis.clone());
                (
                    web::Data::new(Edge {
                        limiter: Arc::new(self.edge.limiter.with_redis(redis.clone())),
                        ..self.edge.get_ref().clone()
                    }),
                    relay.clone(),
                    self.presence.with_redis(redis, relay),
                )
            }
            Err(_) => (self.edge.clone(), self.relay.clone(), self.presence.clone()),
        };
        let planes = web::Data::new(crate::ws::Planes {
            call: crate::ws::call::CallPlane {
                connections: unilink_relay::CallConnections::new(relay.redis().clone(), self.calls.disconnect_grace),
                relay,
                signaling: upstreams.signaling.clone(),
                frame_rate: self.calls.frame_rate,
            },
            presence,
        });
        (upstreams, edge, planes)
    }

    /// The application: every route and middleware. Each worker builds it
    /// twice, for plain requests and for upgrades ([`crate::ws::takeover`]).
    fn app(
        &self,
        upstreams: web::Data<Upstreams>,
        edge: web::Data<Edge>,
        planes: web::Data<crate::ws::Planes>,
    ) -> App<
        impl ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<impl MessageBody + use<>>,
            Error = actix_web::Error,
            InitError = (),
        > + use<>,
    > {
        App::new()
            .app_data(self.checker.clone())
            .app_data(upstreams)
            .app_data(edge)
            .app_data(planes)
            .app_data(self.draining.clone())
            .app_data(self.liveness.clone())
            .app_data(self.socket_cap.clone())
            .app_data(self.local_sockets.clone())
            .app_data(json_config())
            .app_data(web::PayloadConfig::new(MAX_BODY_BYTES))
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| ApiError::new(ErrorCode::BadRequest, format!("invalid path: {e}")).into()),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| ApiError::new(ErrorCode::BadRequest, format!("invalid query: {e}")).into()),
            )
            .wrap(from_fn(crate::middleware::edge::edge))
            .wrap_fn(record_http_metrics)
            .wrap(security_headers(self.production))
            .wrap(ErrorHandlers::new().default_handler(json_error_body))
            .wrap(self.origins.middleware())
            .wrap(from_fn(crate::middleware::request_id::request_id))
            .configure(rest::configure)
            .default_service(web::to(rest::not_found))
    }
}

/// The service actix-http hands upgrade requests to, with their connection:
/// `app` answers them, and accepted WebSockets run on the bare stream.
fn upgrade_service<A, F, B>(
    make_app: impl Fn() -> A + 'static,
) -> impl ServiceFactory<
    (Request, crate::ws::takeover::Framed),
    Config = (),
    Response = (),
    Error = actix_web::Error,
    InitError = (),
>
where
    A: IntoServiceFactory<F, Request>,
    F: ServiceFactory<
            Request,
            Config = AppConfig,
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    fn_factory(move || {
        let app = make_app().into_factory();
        async move {
            let service = Rc::new(app.new_service(AppConfig::default()).await?);
            Ok(fn_service(
                move |(req, framed): (Request, crate::ws::takeover::Framed)| {
                    // Boxed: the dispatcher's state keeps room for this
                    // future in every connection, upgraded or not.
                    Box::pin(crate::ws::takeover::serve(Rc::clone(&service), req, framed)) as LocalBoxFuture<'static, _>
                },
            ))
        }
    })
}

/// The gateway, bound and ready to run.
pub struct Application {
    server: Server,
    addr: SocketAddr,
    redis: Redis,
    /// Cancelled when shutdown begins: WebSockets close with 1012.
    drain: crate::ws::Draining,
    /// How long shutdown waits for sockets and requests to finish.
    grace: Duration,
    /// Stops the relay's subscription and the presence renewals, once the
    /// sockets have closed.
    relay_stop: CancellationToken,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("addr", &self.addr).finish()
    }
}

impl Application {
    /// Binds `HTTP_ADDR` (port 0 picks a free port) and prepares every route.
    pub async fn build(settings: Settings) -> Result<Application, GatewayError> {
        let _ = unilink_telemetry::metrics_handle();
        let upstreams = Upstreams::connect(&settings.upstreams)?;
        let redis = Redis::connect(&settings.redis).await?;
        // The gateway owns no data; this tiny pool only answers /health.
        let probe_settings = DatabaseSettings {
            pool_size: 1,
            max_overflow: 1,
            ..settings.database.clone()
        };
        let db = unilink_db::connect(&probe_settings, "public", "unilink-gateway")?;
        let checker = web::Data::new(HealthChecker {
            db,
            redis: redis.clone(),
            upstreams: upstreams.clone(),
        });
        let keys = Arc::new(KeyStore::new(upstreams.auth.clone()));
        if let Err(e) = keys.refresh().await {
            // Not fatal: keys are fetched on the first authenticated request.
            tracing::warn!(detail = %e.detail, "verification keys not loaded yet");
        }
        let key_refresh = (keys.clone(), settings.jwt_keys_refresh);
        let production = settings.environment.is_production();
        let mut proxies = TrustedProxies::parse(&settings.trusted_proxies).map_err(GatewayError::Config)?;
        if production {
            if proxies.is_empty() {
                tracing::warn!(
                    "TRUSTED_PROXIES is empty: behind a proxy or an Ingress every client has its address \
                     and shares one rate limit; set it to the proxy's address or range"
                );
            }
            proxies = proxies.warning_once();
        }
        let edge = web::Data::new(Edge {
            keys,
            limiter: Arc::new(RateLimiter::new(redis.clone(), settings.rate_limit_window)),
            proxies,
            auth_limit: settings.rate_limit_auth,
            auth_address_limit: settings.rate_limit_auth_address,
            api_limit: settings.rate_limit_api,
        });
        // One pub/sub connection for the whole replica, open before the
        // first socket: mailboxes and user channels share it.
        let relay_stop = CancellationToken::new();
        let relay = unilink_relay::SignalRelay::connect(redis.clone(), relay_stop.clone()).await?;
        let presence = crate::ws::presence::PresenceHub::new(redis.clone(), relay.clone());
        tokio::spawn(
            presence
                .clone()
                .run(unilink_presence::HEARTBEAT_EVERY, relay_stop.clone()),
        );
        let shared = Shared {
            relay,
            presence,
            calls: settings.calls.clone(),
            checker,
            upstreams: web::Data::new(upstreams),
            upstream_settings: settings.upstreams.clone(),
            redis_settings: settings.redis.clone(),
            edge,
            socket_cap: web::Data::new(crate::ws::cap::SocketCap::new(
                redis.clone(),
                settings.max_sockets_per_user,
                settings.listen.max_sockets,
            )),
            local_sockets: web::Data::new(crate::ws::rebalance::LocalSockets::default()),
            draining: web::Data::new(crate::ws::Draining::default()),
            liveness: web::Data::new(crate::ws::Liveness {
                ping_every: settings.listen.ws_ping_interval,
                silent_after: settings.listen.ws_idle_timeout,
            }),
            origins: OriginPolicy::new(&settings.allowed_origins),
            production,
        };
        let drain = shared.draining.get_ref().clone();
        // Keys removed at auth stop being trusted within one interval.
        tokio::spawn(key_refresh.0.refresh_every(key_refresh.1, drain.0.clone()));
        // Sockets leave a replica holding more than its share (after a scale-up).
        let rebalancer = crate::ws::rebalance::Rebalancer::new(
            redis.clone(),
            shared.local_sockets.get_ref().clone(),
            settings.listen.ws_rebalance,
        );
        tokio::spawn(rebalancer.run(drain.0.clone()));
        let grace = settings.listen.shutdown_grace;

        let listener = bind_public(settings.listen.http_addr)?;
        let addr = listener.local_addr()?;
        let builder = ServerBuilder::default();
        let shutdown_signal = builder.graceful_shutdown_signal();
        let server = builder
            .workers(http_workers(settings.listen.http_workers))
            .disable_signals()
            .shutdown_timeout(settings.listen.shutdown_grace.as_secs())
            .listen("unilink-gateway", listener, move || {
                let (upstreams, edge, planes) = shared.worker_clients();
                let main = shared.app(upstreams.clone(), edge.clone(), planes.clone());
                let upgrades = {
                    let shared = shared.clone();
                    upgrade_service(move || shared.app(upstreams.clone(), edge.clone(), planes.clone()))
                };
                let shutdown_signal = shutdown_signal.clone();
                HttpService::build()
                    // Idle keep-alive connections end when shutdown begins.
                    .graceful_shutdown_signal(move || {
                        let signal = shutdown_signal.clone();
                        async move { signal.notified().await }
                    })
                    .keep_alive(KeepAlive::Timeout(Duration::from_secs(5)))
                    .client_request_timeout(Duration::from_secs(5))
                    .client_disconnect_timeout(Duration::from_secs(1))
                    // Small writes (pongs, short answers) go out at once, not
                    // after the client's delayed ACK.
                    .tcp_nodelay(true)
                    .local_addr(addr)
                    .upgrade(upgrades)
                    .finish(map_config(main, |()| AppConfig::default()))
                    .tcp()
            })?
            .run();
        Ok(Application {
            server,
            addr,
            redis,
            drain,
            grace,
            relay_stop,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then drains within one deadline,
    /// `SHUTDOWN_GRACE_SECONDS` from the signal: `/readyz` answers 503,
    /// every WebSocket is told to reconnect elsewhere (1012) and new upgrades
    /// are refused; once the sockets have closed the server stops accepting
    /// and lets in-flight requests finish. Whatever is still running at the
    /// deadline is cut, so the process exits within the grace whatever its
    /// clients do.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let Application {
            server,
            redis,
            drain,
            grace,
            relay_stop,
            ..
        } = self;
        let handle = server.handle();
        let mut server = tokio::spawn(server);
        let result = tokio::select! {
            result = &mut server => result,
            () = shutdown => {
                let deadline = tokio::time::Instant::now() + grace;
                tracing::info!(service = crate::SERVICE, grace_seconds = grace.as_secs(), "shutting down");
                let crate::ws::Draining(token, sockets) = drain;
                token.cancel();
                sockets.close();
                // Plain requests are still served while the sockets close: a
                // balancer that has not noticed yet gets answers rather than
                // connections left in the accept queue until the exit.
                // Sockets run outside the HTTP server's connections, on its
                // workers, so they close before the workers stop.
                let sockets_closed = tokio::time::timeout_at(deadline, sockets.wait()).await.is_ok();
                if !sockets_closed {
                    tracing::warn!(open = sockets.len(), "sockets still open at the end of the grace period");
                }
                // Stop accepting and finish in-flight requests in what is
                // left of the same deadline (at once if it has passed).
                match tokio::time::timeout_at(deadline, handle.stop(sockets_closed)).await {
                    Ok(()) => server.await,
                    Err(_) => {
                        tracing::warn!("requests still in flight at the end of the grace period are cut");
                        Ok(Ok(()))
                    }
                }
            }
        };
        relay_stop.cancel();
        redis.close().await;
        tracing::info!(service = crate::SERVICE, "stopped");
        result.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// `HTTP_WORKERS`, where 0 means one per core: each worker has its own
/// gRPC and Redis clients, so a request's I/O stays on its thread (on two
/// cores, two workers served `/users/me` at 5,711-6,195 req/s, one worker at
/// 4,073-4,812; BENCHMARKS.md).
fn http_workers(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The gateway binary's `main`.
pub async fn main(version: &'static str) -> ExitCode {
    process::run(crate::SERVICE, version, |settings, command| async move {
        match command {
            Command::Migrate => {
                tracing::info!("the gateway owns no schema; nothing to migrate");
                Ok(())
            }
            Command::Serve => {
                let app = Application::build(settings).await.map_err(|e| e.to_string())?;
                tracing::info!(addr = %app.addr(), "gateway listening");
                app.run_until_stopped(process::shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    })
    .await
}
