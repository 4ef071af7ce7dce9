//! `GET /app`: the reference web client (`services/gateway/web/`), a few
//! static files with no build step, embedded in the binary so no path has to
//! be configured. Served outside production only (`ENVIRONMENT` other than
//! `production`): it is a development and test tool, the real frontend is
//! deployed on its own.
//!
//! * `/app`, `/app/`, `/app/verify` → `index.html` (`/app/verify?token=…` is
//!   where verification links land when `FRONTEND_URL` is `<gateway>/app`);
//! * `/app/<module>.js`, `/app/style.css` → the module or the style sheet.
//!
//! The gateway's default headers forbid everything (`default-src 'none'`,
//! `camera=()`); these answers set their own `Content-Security-Policy` and
//! `Permissions-Policy` (the default-headers middleware keeps headers a
//! handler set) so the page may run its own scripts, talk to this origin over
//! HTTP and WebSocket, and use the camera and microphone.

use std::str::FromStr;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use unilink_config::Environment;

/// Scripts and styles from this origin only, no inline code; API calls and
/// sockets to this origin (`'self'` covers `ws:`/`wss:` of the same host);
/// pictures from this origin or any `https` profile picture.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data: https:; media-src 'self' blob: mediastream:; connect-src 'self'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Camera and microphone for this origin only.
pub const PERMISSIONS_POLICY: &str = "camera=(self), microphone=(self), geolocation=(), display-capture=()";

const INDEX_HTML: &str = include_str!("../../web/index.html");

/// `(file name, content type, body)` of everything under `/app/`.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../web/style.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/api.js"),
    ),
    (
        "presence.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/presence.js"),
    ),
    (
        "call.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/call.js"),
    ),
];

/// Whether the client is served in this environment.
pub fn served_in(environment: Environment) -> bool {
    !environment.is_production()
}

/// The environment the process runs in, read the way the settings loader
/// reads it (`ENVIRONMENT`, default `development`). An unreadable value
/// counts as production: the client is not served.
fn current_environment() -> Environment {
    match std::env::var("ENVIRONMENT") {
        Ok(value) => Environment::from_str(&value).unwrap_or(Environment::Production),
        Err(std::env::VarError::NotPresent) => Environment::Development,
        Err(std::env::VarError::NotUnicode(_)) => Environment::Production,
    }
}

/// Registers the `/app` routes when [`served_in`] the current environment.
pub fn configure(cfg: &mut web::ServiceConfig) {
    if served_in(current_environment()) {
        routes(cfg);
    }
}

/// The `/app` routes, whatever the environment.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/app", web::get().to(index))
        .route("/app/", web::get().to(index))
        .route("/app/verify", web::get().to(index))
        .route("/app/{file}", web::get().to(asset));
}

fn page(content_type: &'static str, body: &'static str) -> HttpResponse {
    let mut response = HttpResponse::Ok().content_type(content_type).body(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::HeaderName::from_static("permissions-policy"),
        HeaderValue::from_static(PERMISSIONS_POLICY),
    );
    response
}

async fn index() -> HttpResponse {
    page("text/html; charset=utf-8", INDEX_HTML)
}

async fn asset(req: HttpRequest, file: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|(name, _, _)| *name == file.as_str()) {
        Some((_, content_type, body)) => page(content_type, body),
        None => super::not_found(req).await,
    }
}

#[cfg(test)]
mod tests {
    use actix_web::App;
    use actix_web::test::{TestRequest, call_service, init_service, read_body_json};

    use super::*;

    #[actix_web::test]
    async fn pages_carry_their_own_policies() {
        let app = init_service(App::new().configure(routes)).await;
        for (path, kind) in [
            ("/app", "text/html"),
            ("/app/verify?token=abc", "text/html"),
            ("/app/app.js", "text/javascript"),
            ("/app/call.js", "text/javascript"),
            ("/app/style.css", "text/css"),
        ] {
            let res = call_service(&app, TestRequest::get().uri(path).to_request()).await;
            assert_eq!(res.status(), 200, "{path}");
            let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
            assert!(header("content-type").starts_with(kind), "{path}");
            assert_eq!(header("content-security-policy"), CONTENT_SECURITY_POLICY, "{path}");
            assert_eq!(header("permissions-policy"), PERMISSIONS_POLICY, "{path}");
        }
    }

    #[actix_web::test]
    async fn unknown_files_are_json_404s() {
        let app = init_service(App::new().configure(routes)).await;
        let res = call_service(&app, TestRequest::get().uri("/app/secret.txt").to_request()).await;
        assert_eq!(res.status(), 404);
        let body: serde_json::Value = read_body_json(res).await;
        assert!(body["detail"].is_string(), "{body}");
    }

    #[test]
    fn not_in_production() {
        assert!(served_in(Environment::Development));
        assert!(served_in(Environment::Test));
        assert!(served_in(Environment::Staging));
        assert!(!served_in(Environment::Production));
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        for (name, _, body) in ASSETS {
            for line in body.lines().filter(|l| l.starts_with("import ")) {
                let Some(target) = line.split(['\'', '"']).nth(1) else {
                    continue;
                };
                let target = target.trim_start_matches("./");
                assert!(
                    ASSETS.iter().any(|(n, _, _)| *n == target),
                    "{name} imports {target}, which is not served"
                );
            }
        }
        assert!(INDEX_HTML.contains("src=\"/app/app.js\""));
        assert!(INDEX_HTML.contains("href=\"/app/style.css\""));
    }
}
