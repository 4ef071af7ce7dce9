//! The gateway's probes.
//!
//! * `GET /health` — is every dependency answering? Probes PostgreSQL
//!   (`SELECT 1`), Redis (`PING`) and every backend service
//!   (`grpc.health.v1`) at once, each bounded by [`PROBE_TIMEOUT`], so the
//!   answer comes within about a second whatever is down: 200 `healthy`, or
//!   503 `degraded` naming what is down in `down`. For people and status
//!   pages, not for the balancer.
//! * `GET /readyz` — may this replica take traffic? 200 while it serves, 503
//!   once it drains. It asks no dependency on purpose: every replica shares
//!   them, so an outage would take every replica out of the balancer at once
//!   and replace the degraded answers the gateway still gives (cached
//!   verification keys, a per-replica rate limit, 503s with a detail) by the
//!   balancer's own error page.
//! * `GET /livez` (in [`crate::rest`]) — the process answers.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde::Serialize;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use unilink_bus::Redis;
use unilink_db::PgPool;
use unilink_grpc::GrpcChannel;

use crate::clients::Upstreams;

/// How long one probe may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// What the health route checks.
#[derive(Debug, Clone)]
pub struct HealthChecker {
    pub db: PgPool,
    pub redis: Redis,
    pub upstreams: Upstreams,
}

#[derive(Debug, Serialize)]
pub struct HealthReport {
    pub status: &'static str,
    pub database: &'static str,
    pub redis: &'static str,
    pub services: std::collections::BTreeMap<&'static str, &'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub down: Vec<&'static str>,
    pub version: &'static str,
}

async fn service_status(channel: GrpcChannel) -> &'static str {
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest { service: String::new() });
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(answer)) if answer.get_ref().status == ServingStatus::Serving as i32 => "serving",
        Ok(Ok(_)) => "not_serving",
        Ok(Err(_)) | Err(_) => "unreachable",
    }
}

impl HealthChecker {
    pub async fn check(&self) -> HealthReport {
        let database = async {
            match unilink_db::ping(&self.db, PROBE_TIMEOUT).await {
                Ok(()) => "connected",
                Err(e) => {
                    tracing::warn!(error = %e, "health: database unreachable");
                    "disconnected"
                }
            }
        };
        let redis = async {
            match self.redis.ping(PROBE_TIMEOUT).await {
                Ok(()) => "connected",
                Err(e) => {
                    tracing::warn!(error = %e, "health: redis unreachable");
                    "disconnected"
                }
            }
        };
        let services = futures_util::future::join_all(
            self.upstreams
                .named()
                .into_iter()
                .map(|(name, channel)| async move { (name, service_status(channel).await) }),
        );
        let (database, redis, services) = tokio::join!(database, redis, services);

        let mut down = Vec::new();
        if database != "connected" {
            down.push("database");
        }
        if redis != "connected" {
            down.push("redis");
        }
        down.extend(services.iter().filter(|(_, s)| *s != "serving").map(|(name, _)| *name));
        HealthReport {
            status: if down.is_empty() { "healthy" } else { "degraded" },
            database,
            redis,
            services: services.into_iter().collect(),
            down,
            version: env!("CARGO_PKG_VERSION"),
        }
    }
}

/// `GET /readyz`: 200 `ready` while this replica serves, 503 `draining`
/// from its shutdown signal on.
pub async fn readyz(draining: web::Data<crate::ws::Draining>) -> HttpResponse {
    if draining.0.is_cancelled() {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "status": "draining" }))
    } else {
        HttpResponse::Ok().json(serde_json::json!({ "status": "ready" }))
    }
}

pub async fn health(checker: web::Data<HealthChecker>) -> HttpResponse {
    let report = checker.check().await;
    if report.down.is_empty() {
        HttpResponse::Ok().json(report)
    } else {
        HttpResponse::ServiceUnavailable().json(report)
    }
}
