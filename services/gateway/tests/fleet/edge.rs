//! The edge protects every route: token attacks, rate limits across
//! replicas, CORS, request ids, security headers, body limits, JSON errors.

use unilink_test_support::fleet as common;

use std::time::Duration;

use common::Fleet;
use serde_json::json;
use unilink_config::Settings;
use unilink_domain::UserId;
use unilink_tokens::SigningKeys;

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Keys as auth has them in the test fleet (the development secret).
fn fleet_keys(extra: &[(&str, &str)]) -> SigningKeys {
    SigningKeys::from_settings(&Settings::from_vars(extra.iter().copied()).unwrap().jwt).unwrap()
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_get_401_with_www_authenticate() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let keys = fleet_keys(&[]);
    let (good, _) = keys
        .issue(UserId::new(), "user", &uuid::Uuid::new_v4().to_string())
        .unwrap();
    let parts: Vec<&str> = good.split('.').collect();

    let kid = unilink_tokens::Verifier::kid_of(&good).unwrap().unwrap();
    let none = format!(
        "{}.{}.",
        b64(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#).as_bytes()),
        parts[1]
    );
    let tampered = {
        use base64::Engine as _;
        let mut claims: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap();
        claims["role"] = "admin".into();
        format!("{}.{}.{}", parts[0], b64(claims.to_string().as_bytes()), parts[2])
    };
    let (foreign, _) = fleet_keys(&[("SECRET_KEY", "somebody-else-entirely-0123456789")])
        .issue(UserId::new(), "user", "f")
        .unwrap();
    let (other_audience, _) = fleet_keys(&[("JWT_AUDIENCE", "another-api")])
        .issue(UserId::new(), "user", "f")
        .unwrap();
    // An RS256 header over our HS256 key id: algorithm confusion.
    let confused = format!(
        "{}.{}.{}",
        b64(format!(r#"{{"alg":"RS256","typ":"JWT","kid":"{kid}"}}"#).as_bytes()),
        parts[1],
        parts[2]
    );

    for (name, token) in [
        ("alg none", none.as_str()),
        ("tampered", tampered.as_str()),
        ("foreign key", foreign.as_str()),
        ("wrong audience", other_audience.as_str()),
        ("algorithm confusion", confused.as_str()),
        ("garbage", "abc.def.ghi"),
    ] {
        let response = gw
            .http
            .post(gw.url("/auth/logout"))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{name}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{name}");
    }
    // Without any token.
    let (status, body) = gw.post("/auth/logout", json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(body["detail"], "not authenticated");
    // A correctly signed token whose exp is an hour ago.
    let mut claims: serde_json::Value = {
        use base64::Engine as _;
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(parts[1])
                .unwrap(),
        )
        .unwrap()
    };
    claims["exp"] = json!(unilink_tokens::now() - 3600);
    let secret = Settings::from_vars(Vec::<(String, String)>::new())
        .unwrap()
        .jwt
        .secret_key
        .expect("a development secret");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = Some(kid);
    let old = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.expose().as_bytes()),
    )
    .unwrap();
    let (status, body) = gw.post_bearer("/auth/logout", &old, json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(body["detail"], "access token has expired");
    gw.stop().await;
}

#[tokio::test]
async fn logout_on_one_gateway_holds_on_the_other() {
    let fleet = Fleet::start().await;
    let a = fleet.gateway(&[]).await;
    let b = fleet.gateway(&[]).await;
    let session = a.sign_up_and_log_in(&fleet.smtp, "eve@kiit.ac.in", "eve").await;
    let access = session["access_token"].as_str().unwrap();

    // The original client's logout on A (no body): B still takes the token.
    let (status, _) = a.send(a.http.post(a.url("/auth/logout")).bearer_auth(access)).await;
    assert_eq!(status, 200);
    let (status, body) = b.get_bearer("/users/me", access).await;
    assert_eq!(status, 200, "{body}");

    // Logged out in full on A, refused on B.
    let refresh = session["refresh_token"].as_str().unwrap();
    let (status, _) = a
        .post_bearer("/auth/logout", access, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(status, 200);
    let (status, body) = b.post_bearer("/auth/logout", access, json!({})).await;
    assert_eq!(status, 401, "{body}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn the_auth_rate_limit_is_shared_by_two_gateways() {
    let fleet = Fleet::start().await;
    unilink_test_support::away_from_a_rate_window_boundary().await;
    // Requests alternate between the replicas and share one budget of 5 a window.
    let a = fleet.gateway(&[("RATE_LIMIT_AUTH", "5")]).await;
    let b = fleet.gateway(&[("RATE_LIMIT_AUTH", "5")]).await;
    let body = json!({"email": "nobody@kiit.ac.in"});
    let mut statuses = Vec::new();
    for gw in [&a, &b, &a, &b, &a] {
        let response = gw
            .http
            .post(gw.url("/auth/resend-verification"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-ratelimit-limit"], "5");
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, vec![202; 5]);
    let response = b
        .http
        .post(b.url("/auth/resend-verification"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["x-ratelimit-remaining"], "0");
    let retry_after: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=unilink_test_support::RATE_WINDOW_SECONDS).contains(&retry_after));
    let detail: serde_json::Value = response.json().await.unwrap();
    assert!(detail["detail"].as_str().unwrap().contains("too many requests"));
    // Health and metrics are never limited.
    for _ in 0..3 {
        assert_eq!(b.get("/health").await.0, 200);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn rate_limiting_falls_back_to_the_replica_when_redis_is_down() {
    let fleet = Fleet::start().await;
    unilink_test_support::away_from_a_rate_window_boundary().await;
    let redis = format!("redis://127.0.0.1:{}", unilink_test_support::closed_port());
    // Two workers, a new connection per request: the requests land on both,
    // and the replica still limits as one.
    let gw = fleet
        .gateway(&[("RATE_LIMIT_AUTH", "3"), ("REDIS_URL", &redis), ("HTTP_WORKERS", "2")])
        .await;
    let body = json!({"email": "nobody@kiit.ac.in"});
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let request = gw
            .http
            .post(gw.url("/auth/resend-verification"))
            .header("connection", "close")
            .json(&body);
        statuses.push(gw.send(request).await.0);
    }
    assert_eq!(statuses, vec![202, 202, 202, 429]);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("rate_limit_fallback_total{scope=\"auth\"}"),
        "{metrics}"
    );

    // The token deny-list cannot be read: reads stay available, what
    // changes state (or needs an admin) is refused until Redis is back.
    let ok = fleet.gateway(&[]).await;
    let (_, ada) = fleet.user(&ok, "ada").await;
    assert_eq!(gw.get_bearer("/users/me", &ada).await.0, 200);
    for response in [
        gw.http
            .put(gw.url("/users/me"))
            .bearer_auth(&ada)
            .json(&json!({"bio": "x"})),
        gw.http
            .post(gw.url("/users/block/00000000-0000-4000-8000-000000000000"))
            .bearer_auth(&ada),
        gw.http.get(gw.url("/admin/reports")).bearer_auth(&ada),
    ] {
        let response = response.send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "5");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains("try again shortly"), "{body}");
    }
    assert!(gw.metrics().await.contains("revocation_unchecked_refused_total"));
    ok.stop().await;
    gw.stop().await;
}

#[tokio::test]
async fn cors_request_ids_security_headers_and_json_errors() {
    let fleet = Fleet::start().await;
    let gw = fleet
        .gateway(&[("ALLOWED_ORIGINS", "https://unilink.app, https://*.unilink.pages.dev")])
        .await;

    // Preflight from an allowed preview origin, before any authentication.
    let preflight = gw
        .http
        .request(reqwest::Method::OPTIONS, gw.url("/auth/logout"))
        .header("Origin", "https://pr-7.unilink.pages.dev")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "https://pr-7.unilink.pages.dev"
    );
    assert_eq!(preflight.headers()["access-control-allow-credentials"], "true");

    // Error answers carry CORS headers too, so the frontend can read `detail`.
    let response = gw
        .http
        .post(gw.url("/auth/logout"))
        .header("Origin", "https://unilink.app")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["access-control-allow-origin"], "https://unilink.app");

    // A disallowed origin gets no CORS headers.
    let response = gw
        .http
        .get(gw.url("/health"))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none());

    // Request ids: echoed when well-formed, generated otherwise.
    let response = gw
        .http
        .get(gw.url("/"))
        .header("X-Request-Id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    assert!(response.headers().contains_key("content-security-policy"));
    let response = gw
        .http
        .get(gw.url("/"))
        .header("X-Request-Id", "<bad id>")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");

    // Malformed JSON, wrong content type, oversized bodies, wrong methods: all JSON.
    let (status, body) = gw
        .send(
            gw.http
                .post(gw.url("/auth/login"))
                .header("Content-Type", "application/json")
                .body("{\"email\": "),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["detail"].as_str().unwrap().starts_with("invalid JSON body"),
        "{body}"
    );
    let (status, body) = gw.send(gw.http.post(gw.url("/auth/login")).body("email=a")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("Content-Type"), "{body}");
    let huge = json!({"email": "a@kiit.ac.in", "password": "x".repeat(2 * 1024 * 1024)});
    let (status, body) = gw.post("/auth/login", huge).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["detail"], "request body is larger than 1 MiB");
    // A path that exists, with a method it does not have: 405 and `Allow`,
    // as the original API answered; an unknown path stays 404.
    let (status, body) = gw.get("/auth/login").await;
    assert_eq!(status, 405, "{body}");
    assert_eq!(body["detail"], "Method Not Allowed");
    let response = gw.http.patch(gw.url("/users/me")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 405);
    assert_eq!(response.headers()["allow"], "GET, PUT, DELETE, HEAD");
    // HEAD is answered wherever GET is, without a body.
    let response = gw.http.head(gw.url("/livez")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.bytes().await.unwrap().is_empty());
    let response = gw.http.post(gw.url("/calls/end/not-a-uuid")).send().await.unwrap();
    assert_ne!(
        response.status().as_u16(),
        405,
        "POST is the method of /calls/end/{{id}}"
    );
    let (status, body) = gw.get("/auth/no-such-thing").await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = gw
        .send(
            gw.http
                .post(gw.url("/auth/login"))
                .header("Content-Type", "application/json")
                .body(vec![0xff, 0xfe, 0x22]),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].is_string());
    gw.stop().await;
}

#[tokio::test]
async fn the_gateway_learns_rotated_keys_without_a_restart() {
    // Auth restarts signing with a new secret while still accepting the old
    // one; the running gateway keeps accepting old tokens and fetches the new
    // key the first time it sees its kid.
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[("JWT_KEYS_REFRESH_SECONDS", "1")]).await;
    let session = gw.sign_up_and_log_in(&fleet.smtp, "rot@kiit.ac.in", "rotation").await;
    let old_access = session["access_token"].as_str().unwrap().to_owned();

    let Fleet {
        auth, db, prefix, smtp, ..
    } = fleet;
    let auth_addr = auth.grpc_addr.to_string();
    auth.stop().await.unwrap();
    let smtp_port = smtp.port().to_string();
    let rotated = unilink_test_support::settings(
        &db,
        &prefix,
        &[
            ("GRPC_ADDR", auth_addr.as_str()),
            ("SECRET_KEY", "a-brand-new-secret-key-0123456789abcdef"),
            (
                "JWT_PREVIOUS_SECRET_KEYS",
                "unilink-development-secret-key-not-for-production",
            ),
            ("SMTP_SERVER", "127.0.0.1"),
            ("SMTP_PORT", smtp_port.as_str()),
        ],
    );
    let auth = unilink_test_support::service::spawn::<unilink_auth::Auth>(rotated).await;

    let (status, _) = gw
        .post(
            "/auth/login",
            json!({"email": "rot@kiit.ac.in", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(status, 202);
    let otp = unilink_test_support::eventually("the third mail", Duration::from_secs(20), || {
        let mails = smtp.messages_to("rot@kiit.ac.in");
        async move { (mails.len() >= 3).then(|| mails[2].digits(6).unwrap()) }
    })
    .await;
    let (status, fresh) = gw
        .post("/auth/login/verify-otp", json!({"email": "rot@kiit.ac.in", "otp": otp}))
        .await;
    assert_eq!(status, 200, "{fresh}");
    let new_access = fresh["access_token"].as_str().unwrap();
    assert_ne!(
        unilink_tokens::Verifier::kid_of(new_access).unwrap(),
        unilink_tokens::Verifier::kid_of(&old_access).unwrap()
    );
    let (status, body) = gw.post_bearer("/auth/logout", new_access, json!({})).await;
    assert_eq!(status, 200, "new key learnt: {body}");
    let (status, body) = gw.post_bearer("/auth/logout", &old_access, json!({})).await;
    assert_eq!(status, 200, "old key still accepted: {body}");

    // Auth retires the old key. No token names an unknown kid, yet the
    // gateway's periodic refresh stops trusting the old key within seconds.
    auth.stop().await.unwrap();
    let retired = unilink_test_support::settings(
        &db,
        &prefix,
        &[
            ("GRPC_ADDR", auth_addr.as_str()),
            ("SECRET_KEY", "a-brand-new-secret-key-0123456789abcdef"),
        ],
    );
    let auth = unilink_test_support::service::spawn::<unilink_auth::Auth>(retired).await;
    let retired_at = std::time::Instant::now();
    unilink_test_support::eventually("the retired key refused", Duration::from_secs(10), || async {
        let (status, body) = gw.get_bearer("/users/me", &old_access).await;
        (status == 401).then(|| assert_eq!(body["detail"], "access token is signed with an unknown key"))
    })
    .await;
    eprintln!("retired key refused after {:?}", retired_at.elapsed());
    assert_eq!(gw.get_bearer("/users/me", new_access).await.0, 200);
    auth.stop().await.unwrap();
    gw.stop().await;
}
