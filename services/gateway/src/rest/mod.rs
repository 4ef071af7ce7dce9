//! The public REST routes.

pub mod health;
pub mod index;

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use unilink_errors::ErrorCode;

use crate::error::ApiError;

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index::index))
        .route("/health", web::get().to(health::health))
        .route("/livez", web::get().to(livez))
        .route("/metrics", web::get().to(metrics));
}

/// Liveness: the process answers. Never depends on PostgreSQL or Redis, so
/// an outage of either does not get gateways restarted.
async fn livez() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// Prometheus text of this process.
async fn metrics() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(unilink_telemetry::metrics_handle().render())
}

/// Unknown routes (and wrong methods) answer JSON like every other error.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}
