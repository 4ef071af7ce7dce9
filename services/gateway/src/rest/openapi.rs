//! `GET /openapi.json`: the OpenAPI 3.1 description of the public API.
//!
//! A static document (`services/gateway/openapi.json`) compiled into the
//! binary: no code generation, no extra dependencies. The `openapi` test
//! checks that it lists every route `rest::configure` registers (and no
//! other), and `scripts/fuzz-api.sh` feeds it to schemathesis.

use actix_web::HttpResponse;

/// The document, as served.
pub const DOCUMENT: &str = include_str!("../../openapi.json");

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(DOCUMENT)
}
