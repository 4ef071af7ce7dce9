//! The public REST routes.

pub mod admin;
pub mod auth;
pub mod calls;
pub mod client_errors;
pub mod health;
pub mod index;
pub mod openapi;
pub mod users;
pub mod views;
pub mod web_client;

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use unilink_errors::ErrorCode;

use crate::error::ApiError;

/// One method's route on a resource; a GET handler answers HEAD too (the
/// original API did, and actix-http sends no body for HEAD).
macro_rules! route {
    ($resource:expr, get, $handler:expr) => {
        $resource.route(web::get().to($handler)).route(web::head().to($handler))
    };
    ($resource:expr, $method:ident, $handler:expr) => {
        $resource.route(web::$method().to($handler))
    };
}

/// One path and the handler of each method it answers; any other method
/// gets 405 with `Allow` (a route per method would make actix fall through
/// to the default service's 404 instead).
macro_rules! resource {
    ($path:expr, $($method:ident => $handler:expr),+ $(,)?) => {{
        let resource = web::resource($path);
        $(let resource = route!(resource, $method, $handler);)+
        resource.default_service(method_not_allowed(&[$(stringify!($method)),+]))
    }};
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource!("/", get => index::index))
        .service(resource!("/health", get => health::health))
        .service(resource!("/livez", get => livez))
        .service(resource!("/readyz", get => health::readyz))
        .service(resource!("/metrics", get => metrics))
        .service(resource!("/openapi.json", get => openapi::openapi))
        .service(resource!("/client-errors", post => client_errors::report))
        .service(resource!("/auth/register", post => auth::register))
        .service(resource!("/auth/verify-email", post => auth::verify_email))
        .service(resource!("/auth/resend-verification", post => auth::resend_verification))
        .service(resource!("/auth/login", post => auth::login))
        .service(resource!("/auth/login/verify-otp", post => auth::verify_otp))
        .service(resource!("/auth/refresh", post => auth::refresh))
        .service(resource!("/auth/logout", post => auth::logout))
        .service(resource!(
            "/users/me",
            get => users::me,
            put => users::update_me,
            delete => users::delete_me,
        ))
        .service(resource!("/users/me/export", get => users::export))
        .service(resource!("/users/block/{id}", post => users::block))
        .service(resource!("/users/unblock/{id}", post => users::unblock))
        .service(resource!("/users/report/{id}", post => users::report))
        .service(resource!("/users/{id}", get => users::get_user))
        .service(resource!("/calls/available", get => users::available))
        .service(resource!("/calls/initiate", post => calls::initiate))
        .service(resource!("/calls/by-id/{id}", get => calls::by_id))
        .service(resource!("/calls/active", get => calls::active))
        .service(resource!("/calls/pending", get => calls::pending))
        .service(resource!("/calls/history", get => calls::history))
        .service(resource!("/calls/ice-servers", get => calls::ice_servers))
        .service(resource!("/calls/accept/{id}", post => calls::act).app_data(web::Data::new(calls::Action::Accept)))
        .service(resource!("/calls/reject/{id}", post => calls::act).app_data(web::Data::new(calls::Action::Reject)))
        .service(resource!("/calls/end/{id}", post => calls::act).app_data(web::Data::new(calls::Action::End)))
        .service(resource!("/calls/ws/{user_id}", get => crate::ws::presence))
        .service(resource!(
            "/ws/webrtc/connection-state/{call_id}",
            get => calls::connection_state
        ))
        .service(resource!(
            "/ws/webrtc/active-connections",
            get => calls::active_connections
        ))
        .service(resource!("/ws/webrtc/{call_id}", get => crate::ws::signaling))
        .service(resource!("/admin/reports", get => admin::reports))
        .service(resource!("/admin/reports/{id}/resolve", post => admin::resolve))
        .service(resource!("/admin/users/{id}/deactivate", post => admin::deactivate))
        .configure(web_client::configure);
}

/// The answer to a method a path does not have: 405 with `Allow`, and the
/// JSON body every error has (the original API's words).
fn method_not_allowed(methods: &[&str]) -> actix_web::Route {
    let mut allowed: Vec<String> = methods.iter().map(|m| m.to_ascii_uppercase()).collect();
    if allowed.iter().any(|m| m == "GET") {
        allowed.push("HEAD".to_owned());
    }
    let allow = allowed.join(", ");
    web::to(move || {
        let answer = HttpResponse::MethodNotAllowed()
            .insert_header((actix_web::http::header::ALLOW, allow.as_str()))
            .json(serde_json::json!({ "detail": "Method Not Allowed" }));
        async move { answer }
    })
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
