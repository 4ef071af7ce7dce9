//! Token attacks against fleets signing with RS256, EdDSA and HS256: every
//! forged, stale or withdrawn access token is refused with 401
//! (`WWW-Authenticate: Bearer`, `{"detail"}`) at REST and at the upgrade of
//! both WebSockets (`/calls/ws/{user_id}`, `/ws/webrtc/{call_id}`).
//!
//! `edge.rs` covers the HS256 fleet's REST answers to some of these; here
//! each attack is also tried at both socket upgrades, against asymmetric
//! keys (the HS/asymmetric confusion proper: an HS256 token keyed with the
//! public PEM), with unknown kids, `nbf` in the future, a swapped `sub`,
//! and tokens of logged-out and deactivated users.

use unilink_test_support::fleet as common;

use base64::Engine as _;
use common::{Fleet, Gateway, Received};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

fn fixture(name: &str) -> String {
    format!(
        "{}/../../crates/tokens/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

/// How the fleet under attack signs.
#[derive(Clone, Copy)]
enum Signing {
    Rs256,
    EdDsa,
    Hs256,
}

impl Signing {
    /// Settings of every service of the fleet.
    fn vars(self) -> Vec<(&'static str, String)> {
        match self {
            Signing::Rs256 => vec![
                ("ALGORITHM", "RS256".to_owned()),
                ("JWT_PRIVATE_KEY_FILE", fixture("rsa-private.pem")),
                ("JWT_PUBLIC_KEY_FILE", fixture("rsa-public.pem")),
            ],
            Signing::EdDsa => vec![
                ("ALGORITHM", "EdDSA".to_owned()),
                ("JWT_PRIVATE_KEY_FILE", fixture("ed25519-private.pem")),
                ("JWT_PUBLIC_KEY_FILE", fixture("ed25519-public.pem")),
            ],
            Signing::Hs256 => Vec::new(),
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Signing::Rs256 => Algorithm::RS256,
            Signing::EdDsa => Algorithm::EdDSA,
            Signing::Hs256 => Algorithm::HS256,
        }
    }

    /// The fleet's own signing key (what an attacker must not have; used
    /// here to make correctly signed tokens with bad claims).
    fn signing_key(self) -> EncodingKey {
        match self {
            Signing::Rs256 => EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa-private.pem")).unwrap()).unwrap(),
            Signing::EdDsa => {
                EncodingKey::from_ed_pem(&std::fs::read(fixture("ed25519-private.pem")).unwrap()).unwrap()
            }
            Signing::Hs256 => EncodingKey::from_secret(
                unilink_config::Settings::from_vars(Vec::<(String, String)>::new())
                    .unwrap()
                    .jwt
                    .secret_key
                    .expect("a development secret")
                    .expose()
                    .as_bytes(),
            ),
        }
    }

    /// What an attacker does have: the public key (for HS256, nothing).
    fn public_material(self) -> Vec<u8> {
        match self {
            Signing::Rs256 => std::fs::read(fixture("rsa-public.pem")).unwrap(),
            Signing::EdDsa => std::fs::read(fixture("ed25519-public.pem")).unwrap(),
            Signing::Hs256 => b"guessed-secret".to_vec(),
        }
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value, key: &EncodingKey) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// Every way a token can be bad, made from a real token of `victim`.
fn forged_tokens(signing: Signing, real: &str, other_user: &str) -> Vec<(&'static str, String)> {
    let kid = unilink_tokens::Verifier::kid_of(real).unwrap().unwrap();
    let claims = claims_of(real);
    let parts: Vec<&str> = real.split('.').collect();
    let key = signing.signing_key();
    let now = unilink_tokens::now();
    let with = |changes: Value| {
        let mut c = claims.clone();
        for (k, v) in changes.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let tampered = |changes: Value| {
        format!(
            "{}.{}.{}",
            parts[0],
            b64(with(changes).to_string().as_bytes()),
            parts[2]
        )
    };
    let public = EncodingKey::from_secret(&signing.public_material());
    let mut tokens = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(json!({"alg": "none", "typ": "JWT", "kid": kid}).to_string().as_bytes()),
                parts[1]
            ),
        ),
        (
            "alg none, no signature part",
            format!(
                "{}.{}",
                b64(json!({"alg": "none", "kid": kid}).to_string().as_bytes()),
                parts[1]
            ),
        ),
        (
            "HS256 keyed with the public key, under the real kid",
            sign(Algorithm::HS256, Some(&kid), &claims, &public),
        ),
        (
            "HS256 keyed with the public key, no kid",
            sign(Algorithm::HS256, None, &claims, &public),
        ),
        (
            "real key, unknown kid",
            sign(signing.algorithm(), Some("0123456789abcdef"), &claims, &key),
        ),
        ("real key, no kid", sign(signing.algorithm(), None, &claims, &key)),
        (
            "expired",
            sign(
                signing.algorithm(),
                Some(&kid),
                &with(json!({"iat": now - 7200, "nbf": now - 7200, "exp": now - 3600})),
                &key,
            ),
        ),
        (
            "not yet valid",
            sign(
                signing.algorithm(),
                Some(&kid),
                &with(json!({"iat": now, "nbf": now + 3600, "exp": now + 7200})),
                &key,
            ),
        ),
        (
            "another issuer",
            sign(
                signing.algorithm(),
                Some(&kid),
                &with(json!({"iss": "someone-else"})),
                &key,
            ),
        ),
        ("tampered sub", tampered(json!({"sub": other_user}))),
        ("tampered role", tampered(json!({"role": "admin"}))),
        ("tampered exp", tampered(json!({"exp": now + 86_400 * 365}))),
        (
            "signature of another token",
            format!("{}.{}.{}", parts[0], parts[1], "AAAA"),
        ),
        ("garbage", "not.a.jwt".to_owned()),
    ];
    if matches!(signing, Signing::Hs256) {
        // The confusion the other way: an asymmetric header over the HS kid.
        tokens.push((
            "RS256 header over the HS256 key",
            format!(
                "{}.{}.{}",
                b64(json!({"alg": "RS256", "typ": "JWT", "kid": kid}).to_string().as_bytes()),
                parts[1],
                parts[2]
            ),
        ));
    }
    if !matches!(signing, Signing::Hs256) {
        // The development secret, under its own kid, as a default-configured
        // auth would sign: not a key of this fleet.
        let dev_kid = unilink_tokens::SigningKeys::from_settings(
            &unilink_config::Settings::from_vars(Vec::<(String, String)>::new())
                .unwrap()
                .jwt,
        )
        .unwrap()
        .public_keys()[0]
            .kid
            .clone();
        let dev_secret = EncodingKey::from_secret(b"unilink-development-secret-key-not-for-production");
        tokens.push((
            "HS256 with the development secret and its kid",
            sign(Algorithm::HS256, Some(&dev_kid), &claims, &dev_secret),
        ));
    }
    tokens
}

/// 401 at REST (with the header and a detail) and at both socket upgrades.
async fn assert_refused(gw: &Gateway, name: &str, token: &str, user_id: &str, call_id: &str) {
    for path in ["/users/me", "/calls/active", "/admin/reports"] {
        let response = gw.http.get(gw.url(path)).bearer_auth(token).send().await.unwrap();
        assert_eq!(response.status(), 401, "{name}: GET {path}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{name}: {path}");
        let body: Value = response.json().await.unwrap();
        assert!(body["detail"].is_string(), "{name}: {body}");
    }
    let (status, body) = gw.post_bearer(&format!("/calls/end/{call_id}"), token, json!({})).await;
    assert_eq!(status, 401, "{name}: {body}");
    for path in [format!("/calls/ws/{user_id}"), format!("/ws/webrtc/{call_id}")] {
        let refused = gw.try_socket(&path, token).await.err();
        assert_eq!(refused, Some(401), "{name}: upgrade of {path}");
    }
}

async fn token_attacks(signing: Signing) {
    let vars = signing.vars();
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let fleet = Fleet::start_with(&pairs).await;
    let gw = fleet.gateway(&[]).await;
    let (ada_id, ada) = fleet.user(&gw, "ada").await;
    let (bob_id, bob) = fleet.user(&gw, "bob").await;
    assert_eq!(
        jsonwebtoken::decode_header(&ada).unwrap().alg,
        signing.algorithm(),
        "the fleet signs as configured"
    );

    // A ringing call between Ada and Bob: the real tokens open both sockets.
    let mut bob_presence = gw.socket(&format!("/calls/ws/{bob_id}"), &bob).await;
    bob_presence.send_text("ping").await;
    assert!(matches!(bob_presence.next().await, Received::Text(t) if t == "pong"));
    let (status, call) = gw
        .post_bearer("/calls/initiate", &ada, json!({"receiver_id": bob_id}))
        .await;
    assert_eq!(status, 200, "{call}");
    let call_id = call["id"].as_str().unwrap().to_owned();
    let ada_call = gw.socket(&format!("/ws/webrtc/{call_id}"), &ada).await;
    let (status, _) = gw.get_bearer("/users/me", &ada).await;
    assert_eq!(status, 200);

    for (name, token) in forged_tokens(signing, &ada, &bob_id) {
        assert_refused(&gw, name, &token, &ada_id, &call_id).await;
    }
    // The `?token=Bearer <jwt>` form is checked the same way.
    let (_, none) = &forged_tokens(signing, &ada, &bob_id)[0];
    assert_eq!(
        gw.try_socket(&format!("/calls/ws/{ada_id}"), &format!("Bearer%20{none}"))
            .await
            .err(),
        Some(401)
    );
    // The real token still works after all that.
    assert_eq!(gw.get_bearer("/users/me", &ada).await.0, 200);
    ada_call.close().await;
    bob_presence.close().await;

    // Revoked by a full logout: refused at once, on REST and at both upgrades.
    let session = fleet.session(&gw, "cyd").await;
    let (cyd_id, cyd) = (
        session["user"]["id"].as_str().unwrap().to_owned(),
        session["access_token"].as_str().unwrap().to_owned(),
    );
    assert!(gw.try_socket(&format!("/calls/ws/{cyd_id}"), &cyd).await.is_ok());
    let (status, _) = gw
        .post_bearer("/auth/logout", &cyd, json!({"refresh_token": session["refresh_token"]}))
        .await;
    assert_eq!(status, 200);
    assert_refused(&gw, "logged out", &cyd, &cyd_id, &call_id).await;

    // Deactivated by an admin: every token of the user is refused at once.
    let (_, boss) = fleet.admin(&gw, "boss").await;
    let (dee_id, dee) = fleet.user(&gw, "dee").await;
    let (status, body) = gw
        .post_bearer(&format!("/admin/users/{dee_id}/deactivate"), &boss, json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_refused(&gw, "deactivated", &dee, &dee_id, &call_id).await;
    gw.stop().await;
}

#[tokio::test]
async fn rs256_fleet_refuses_every_bad_token_at_rest_and_at_both_socket_upgrades() {
    token_attacks(Signing::Rs256).await;
}

#[tokio::test]
async fn eddsa_fleet_refuses_every_bad_token_at_rest_and_at_both_socket_upgrades() {
    token_attacks(Signing::EdDsa).await;
}

#[tokio::test]
async fn hs256_fleet_refuses_every_bad_token_at_rest_and_at_both_socket_upgrades() {
    token_attacks(Signing::Hs256).await;
}

#[tokio::test]
async fn a_replayed_refresh_token_ends_the_whole_session_and_closes_its_sockets() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let session = fleet.session(&gw, "ada").await;
    let (id, access) = (
        session["user"]["id"].as_str().unwrap(),
        session["access_token"].as_str().unwrap(),
    );
    let mut presence = common::go_online(&gw, id, access).await;
    let (status, rotated) = gw
        .post("/auth/refresh", json!({"refresh_token": session["refresh_token"]}))
        .await;
    assert_eq!(status, 200, "{rotated}");
    // The first refresh token again: stolen, so the session ends everywhere.
    let (status, _) = gw
        .post("/auth/refresh", json!({"refresh_token": session["refresh_token"]}))
        .await;
    assert_eq!(status, 401);
    let (code, reason) = presence.closed().await;
    assert_eq!((code, reason.as_str()), (1008, "session revoked"));
    for token in [access, rotated["access_token"].as_str().unwrap()] {
        let (status, body) = gw.get_bearer("/users/me", token).await;
        assert_eq!(
            (status, body["detail"].as_str()),
            (401, Some("access token has been revoked"))
        );
    }
    gw.stop().await;
}
