//! Building and running the gateway.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::Instant;

use actix_web::dev::{Server, Service as _};
use actix_web::{App, HttpServer, web};
use futures_util::FutureExt;
use unilink_bus::Redis;
use unilink_config::{DatabaseSettings, Settings};
use unilink_grpc::process::Command;

use crate::clients::Upstreams;
use crate::rest;
use crate::rest::health::HealthChecker;

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
}

/// The gateway, bound and ready to run.
pub struct Application {
    server: Server,
    addr: SocketAddr,
    redis: Redis,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("addr", &self.addr)
            .finish()
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
            upstreams,
        });

        let listener = TcpListener::bind(settings.listen.http_addr)?;
        let addr = listener.local_addr()?;
        let server = HttpServer::new(move || {
            App::new()
                .wrap_fn(|req, srv| {
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
                })
                .app_data(checker.clone())
                .configure(rest::configure)
                .default_service(web::to(rest::not_found))
        })
        .listen(listener)?
        .disable_signals()
        .shutdown_timeout(settings.listen.shutdown_grace.as_secs())
        .run();
        Ok(Application {
            server,
            addr,
            redis,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// requests finish (up to `SHUTDOWN_GRACE_SECONDS`) and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let Application { server, redis, .. } = self;
        let handle = server.handle();
        let mut server = tokio::spawn(server);
        let result = tokio::select! {
            result = &mut server => result,
            () = shutdown => {
                tracing::info!(service = crate::SERVICE, "shutting down");
                handle.stop(true).await;
                server.await
            }
        };
        redis.close().await;
        tracing::info!(service = crate::SERVICE, "stopped");
        result.unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// The gateway binary's `main`.
pub async fn main(version: &'static str) -> ExitCode {
    unilink_grpc::process::run(crate::SERVICE, version, |settings, command| async move {
        match command {
            Command::Migrate => {
                tracing::info!("the gateway owns no schema; nothing to migrate");
                Ok(())
            }
            Command::Serve => {
                let app = Application::build(settings)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::info!(addr = %app.addr(), "gateway listening");
                app.run_until_stopped(unilink_grpc::shutdown_signal())
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    })
    .await
}
