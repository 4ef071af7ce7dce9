//! The public REST routes.

pub mod admin;
pub mod auth;
pub mod calls;
pub mod client_errors;
pub mod health;
pub mod index;
pub mod openapi;
pub mod users;
pub mod web_client;

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use unilink_errors::ErrorCode;

use crate::error::ApiError;

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index::index))
        .route("/health", web::get().to(health::health))
        .route("/livez", web::get().to(livez))
        .route("/metrics", web::get().to(metrics))
        .route("/openapi.json", web::get().to(openapi::openapi))
        .route("/client-errors", web::post().to(client_errors::report))
        .route("/auth/register", web::post().to(auth::register))
        .route("/auth/verify-email", web::post().to(auth::verify_email))
        .route("/auth/resend-verification", web::post().to(auth::resend_verification))
        .route("/auth/login", web::post().to(auth::login))
        .route("/auth/login/verify-otp", web::post().to(auth::verify_otp))
        .route("/auth/refresh", web::post().to(auth::refresh))
        .route("/auth/logout", web::post().to(auth::logout))
        .route("/users/me", web::get().to(users::me))
        .route("/users/me", web::put().to(users::update_me))
        .route("/users/me", web::delete().to(users::delete_me))
        .route("/users/me/export", web::get().to(users::export))
        .route("/users/block/{id}", web::post().to(users::block))
        .route("/users/unblock/{id}", web::post().to(users::unblock))
        .route("/users/report/{id}", web::post().to(users::report))
        .route("/users/{id}", web::get().to(users::get_user))
        .route("/calls/available", web::get().to(users::available))
        .route("/calls/initiate", web::post().to(calls::initiate))
        .route("/calls/by-id/{id}", web::get().to(calls::by_id))
        .route("/calls/active", web::get().to(calls::active))
        .route("/calls/pending", web::get().to(calls::pending))
        .route("/calls/history", web::get().to(calls::history))
        .route("/calls/ice-servers", web::get().to(calls::ice_servers))
        .service(
            web::resource("/calls/accept/{id}")
                .app_data(web::Data::new(calls::Action::Accept))
                .route(web::post().to(calls::act)),
        )
        .service(
            web::resource("/calls/reject/{id}")
                .app_data(web::Data::new(calls::Action::Reject))
                .route(web::post().to(calls::act)),
        )
        .service(
            web::resource("/calls/end/{id}")
                .app_data(web::Data::new(calls::Action::End))
                .route(web::post().to(calls::act)),
        )
        .route("/calls/ws/{user_id}", web::get().to(crate::ws::presence))
        .route(
            "/ws/webrtc/connection-state/{call_id}",
            web::get().to(calls::connection_state),
        )
        .route(
            "/ws/webrtc/active-connections",
            web::get().to(calls::active_connections),
        )
        .route("/ws/webrtc/{call_id}", web::get().to(crate::ws::signaling))
        .route("/admin/reports", web::get().to(admin::reports))
        .route("/admin/reports/{id}/resolve", web::post().to(admin::resolve))
        .route("/admin/users/{id}/deactivate", web::post().to(admin::deactivate))
        .configure(web_client::configure);
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

/// Unknown routes answer JSON like every other error.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    )
    .error_response()
}
