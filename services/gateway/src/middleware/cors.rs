//! CORS from `ALLOWED_ORIGINS`: exact origins, or `scheme://*.domain` for
//! preview subdomains. Preflights are answered before authentication;
//! credentials are allowed; a disallowed origin gets no CORS headers (the
//! browser then refuses the answer). Error answers carry the headers too.

use actix_cors::Cors;
use actix_web::http::{Method, header};

/// The allow-list.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    exact: Vec<String>,
    /// (scheme with `://`, domain suffix with a leading dot)
    wildcard: Vec<(String, String)>,
    any: bool,
}

impl OriginPolicy {
    pub fn new(origins: &[String]) -> OriginPolicy {
        let mut policy = OriginPolicy {
            exact: Vec::new(),
            wildcard: Vec::new(),
            any: false,
        };
        for origin in origins {
            let origin = origin.trim_end_matches('/');
            if origin == "*" {
                policy.any = true;
            } else if let Some((scheme, rest)) = origin.split_once("://*.") {
                policy
                    .wildcard
                    .push((format!("{scheme}://"), format!(".{}", rest.to_ascii_lowercase())));
            } else {
                policy.exact.push(origin.to_ascii_lowercase());
            }
        }
        policy
    }

    pub fn allows(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        if self.any || self.exact.contains(&origin) {
            return true;
        }
        self.wildcard.iter().any(|(scheme, suffix)| {
            origin.strip_prefix(scheme.as_str()).is_some_and(|host| {
                host.len() > suffix.len()
                    && host.ends_with(suffix.as_str())
                    && !host[..host.len() - suffix.len()].contains(['/', '@', ':'])
            })
        })
    }

    /// The actix-cors middleware for this policy.
    pub fn middleware(&self) -> Cors {
        let policy = self.clone();
        Cors::default()
            .allowed_origin_fn(move |origin, _| origin.to_str().is_ok_and(|o| policy.allows(o)))
            .allowed_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allowed_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::ACCEPT,
                header::HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                "x-request-id",
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset",
                "retry-after",
                "www-authenticate",
            ])
            .supports_credentials()
            .block_on_origin_mismatch(false)
            .max_age(600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_wildcard_origins() {
        let p = OriginPolicy::new(&["https://unilink.app".into(), "https://*.unilink.pages.dev".into()]);
        assert!(p.allows("https://unilink.app"));
        assert!(p.allows("https://feature-1.unilink.pages.dev"));
        assert!(!p.allows("https://unilink.pages.dev"));
        assert!(!p.allows("http://feature-1.unilink.pages.dev"));
        assert!(!p.allows("https://evil.com"));
        assert!(!p.allows("https://unilink.app.evil.com"));
        assert!(!p.allows("https://x.evil.com/.unilink.pages.dev"));
    }
}
