//! `GET /`: what this is and where to look, like the original service.

use actix_web::HttpResponse;

pub async fn index() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "message": "UniLink API — real-time 1v1 video calls for university students",
        "version": env!("CARGO_PKG_VERSION"),
        "health": "/health",
    }))
}
