//! `GET /calls/ice-servers`: STUN servers, and TURN servers with time-limited
//! credentials in the TURN REST scheme that coturn's `use-auth-secret`
//! checks: username `<expiry unix time>:<user id>`, password
//! `base64(HMAC-SHA1(TURN_SECRET, username))`.

use base64::Engine;
use hmac_sha1::{Hmac, Mac};
use unilink_config::CallSettings;
use unilink_domain::UserId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<String>,
}

/// The servers for `user`, credentials valid until `now + TURN_TTL`.
pub fn ice_servers(settings: &CallSettings, user: UserId, now_unix: i64) -> (Vec<IceServer>, u32) {
    let ttl = settings.turn_ttl.as_secs();
    let mut servers = Vec::new();
    if !settings.stun_urls.is_empty() {
        servers.push(IceServer {
            urls: settings.stun_urls.clone(),
            username: None,
            credential: None,
        });
    }
    if let (false, Some(secret)) = (settings.turn_urls.is_empty(), settings.turn_secret.as_ref()) {
        let username = format!("{}:{user}", now_unix + ttl as i64);
        servers.push(IceServer {
            urls: settings.turn_urls.clone(),
            credential: Some(turn_password(secret.expose(), &username)),
            username: Some(username),
        });
    }
    (servers, u32::try_from(ttl).unwrap_or(u32::MAX))
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn turn_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_password_matches_coturn_rest_scheme() {
        // Reference value computed independently:
        // printf '%s' '1700000000:alice' | openssl dgst -sha1 -hmac 'north' -binary | base64
        assert_eq!(turn_password("north", "1700000000:alice"), REFERENCE);
    }

    const REFERENCE: &str = "Cd/49soE35ICqcJF/bCTn8Z4OyE=";

    #[test]
    fn turn_credentials_expire_after_the_ttl() {
        let settings = unilink_config::Settings::from_vars([
            ("TURN_URLS", "turn:turn.example.com:3478"),
            ("TURN_SECRET", "north"),
            ("TURN_TTL", "600"),
            ("STUN_URLS", "stun:stun.example.com:3478"),
        ])
        .unwrap()
        .calls;
        let user = UserId::new();
        let (servers, ttl) = ice_servers(&settings, user, 1_700_000_000);
        assert_eq!(ttl, 600);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0].urls, vec!["stun:stun.example.com:3478"]);
        assert!(servers[0].username.is_none());
        let turn = &servers[1];
        let username = turn.username.clone().unwrap();
        assert_eq!(username, format!("1700000600:{user}"));
        assert_eq!(turn.credential.clone().unwrap(), turn_password("north", &username));

        let no_turn = unilink_config::Settings::from_vars([("STUN_URLS", "stun:a:1")])
            .unwrap()
            .calls;
        let (servers, _) = ice_servers(&no_turn, user, 0);
        assert_eq!(servers.len(), 1);
    }
}
