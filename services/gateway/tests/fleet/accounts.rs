//! Accounts end to end through a real gateway: sign-up with a real email
//! (SMTP sink), verification, login with the emailed code, refresh rotation,
//! logout, and every validation failure of the contract.

use unilink_test_support::fleet as common;

use common::Fleet;
use serde_json::json;

const PASSWORD: &str = "correct horse battery";

fn register_body(email: &str, username: &str) -> serde_json::Value {
    json!({"email": email, "username": username, "full_name": "Ada Lovelace", "password": PASSWORD})
}

#[tokio::test]
async fn a_student_signs_up_verifies_logs_in_refreshes_and_logs_out() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;

    let (status, user) = gw
        .post("/auth/register", register_body("Ada@KIIT.ac.in", "Ada_L"))
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["email"], "Ada@kiit.ac.in");
    assert_eq!(user["username"], "ada_l");
    assert_eq!(user["full_name"], "Ada Lovelace");
    assert_eq!(user["is_verified"], false);
    assert_eq!(user["is_online"], false);
    assert!(user["profile_picture"].is_null());
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));
    uuid::Uuid::parse_str(user["id"].as_str().unwrap()).unwrap();

    // The verification mail went out through real SMTP.
    let mail = fleet.mail("Ada@kiit.ac.in", 1).await;
    let text = mail.text();
    assert!(text.contains("http://localhost:5173/verify?token="), "{text}");
    let token = mail.token_after("verify?token=").unwrap();
    assert!(token.len() >= 22, "at least 128 bits");

    // Unverified: the password is right but login is refused.
    let (status, body) = gw
        .post("/auth/login", json!({"email": "ada@kiit.ac.in", "password": PASSWORD}))
        .await;
    assert_eq!(status, 403, "{body}");

    let (status, session) = gw.post("/auth/verify-email", json!({ "token": token })).await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["token_type"], "bearer");
    assert_eq!(session["user"]["is_verified"], true);
    assert!(session["access_token"].as_str().unwrap().split('.').count() == 3);
    // Single use.
    let (status, body) = gw.post("/auth/verify-email", json!({ "token": token })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["detail"], "invalid or expired verification token");

    // Login: password, then the emailed code.
    let (status, body) = gw
        .post("/auth/login", json!({"email": "ADA@kiit.ac.in", "password": PASSWORD}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["otp_required"], true);
    let otp = fleet.mail("Ada@kiit.ac.in", 2).await.digits(6).unwrap();
    let (status, session) = gw
        .post("/auth/login/verify-otp", json!({"email": "ada@kiit.ac.in", "otp": otp}))
        .await;
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["user"]["username"], "ada_l");
    // The code is single use.
    let (status, _) = gw
        .post("/auth/login/verify-otp", json!({"email": "ada@kiit.ac.in", "otp": otp}))
        .await;
    assert_eq!(status, 400);

    // Refresh rotates; reusing the old refresh token revokes the family.
    let first_refresh = session["refresh_token"].as_str().unwrap().to_owned();
    let (status, rotated) = gw
        .post("/auth/refresh", json!({ "refresh_token": first_refresh }))
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["refresh_token"], session["refresh_token"]);
    let (status, body) = gw
        .post("/auth/refresh", json!({ "refresh_token": first_refresh }))
        .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("already used"));
    let (status, _) = gw
        .post("/auth/refresh", json!({ "refresh_token": rotated["refresh_token"] }))
        .await;
    assert_eq!(status, 401, "the whole family is revoked after reuse");
    // Its access tokens too, the one just rotated included.
    for stolen in [&session["access_token"], &rotated["access_token"]] {
        let (status, body) = gw.get_bearer("/users/me", stolen.as_str().unwrap()).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["detail"], "access token has been revoked");
    }

    // A new login is a new family.
    let (status, _) = gw
        .post(
            "/auth/login",
            json!({"email": "ada@kiit.ac.in", "password": "correct horse battery"}),
        )
        .await;
    assert_eq!(status, 202);
    let otp = fleet.mail("Ada@kiit.ac.in", 3).await.digits(6).unwrap();
    let (status, session) = gw
        .post("/auth/login/verify-otp", json!({"email": "ada@kiit.ac.in", "otp": otp}))
        .await;
    assert_eq!(status, 200, "{session}");

    // The access token works on an authenticated route, for its own user only.
    let access = session["access_token"].as_str().unwrap();
    let (status, me) = gw.send(gw.http.get(gw.url("/users/me")).bearer_auth(access)).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["email"], "Ada@kiit.ac.in");
    let response = gw.http.get(gw.url("/users/me")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");

    // The user is online on a device (presence, as the signaling socket will set it).
    let redis = unilink_bus::Redis::connect(&unilink_config::RedisSettings::new(
        unilink_config::Secret::new(unilink_test_support::redis_url()),
        fleet.prefix.clone(),
    ))
    .await
    .unwrap();
    let presence = unilink_presence::PresenceRegistry::new(redis, unilink_presence::DEFAULT_TTL);
    let user_id = unilink_domain::UserId::parse(user["id"].as_str().unwrap()).unwrap();
    presence.connect(user_id, "phone").await.unwrap();
    assert!(presence.is_online(user_id).await.unwrap());

    // The original client's logout (no body, on every page unload) takes the
    // user offline and revokes nothing: the same token goes on working.
    let bare = gw.http.post(gw.url("/auth/logout")).bearer_auth(access);
    let (status, body) = gw.send(bare).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["message"].is_string());
    assert!(!presence.is_online(user_id).await.unwrap());
    let (status, _) = gw.get_bearer("/users/me", access).await;
    assert_eq!(status, 200, "a bare logout revokes nothing");

    // A full logout needs this user's own refresh token.
    let refresh = session["refresh_token"].as_str().unwrap();
    let other = gw.sign_up_and_log_in(&fleet.smtp, "bo@kiit.ac.in", "bo_b").await;
    for (body, why) in [
        (json!({"refresh_token": other["refresh_token"]}), "someone else's"),
        (json!({"refresh_token": "not-a-token"}), "unknown"),
    ] {
        let (status, answer) = gw.post_bearer("/auth/logout", access, body).await;
        assert_eq!(status, 401, "{why}: {answer}");
    }
    let (status, answer) = gw
        .send(
            gw.http
                .post(gw.url("/auth/logout"))
                .bearer_auth(access)
                .header("Content-Type", "application/json")
                .body("{not json"),
        )
        .await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        gw.get_bearer("/users/me", other["access_token"].as_str().unwrap())
            .await
            .0,
        200
    );

    // With it, the refresh family and the access token are refused at once.
    let (status, body) = gw
        .post_bearer("/auth/logout", access, json!({"refresh_token": refresh}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = gw.post_bearer("/auth/logout", access, json!({})).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["detail"], "access token has been revoked");
    let (status, _) = gw.send(gw.http.get(gw.url("/users/me")).bearer_auth(access)).await;
    assert_eq!(status, 401);
    let (status, _) = gw.post("/auth/refresh", json!({"refresh_token": refresh})).await;
    assert_eq!(status, 401, "the refresh family is revoked");
    gw.stop().await;
}

#[tokio::test]
async fn registration_validates_every_field_with_a_clear_detail() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let cases = [
        (
            json!({"email": "ada@gmail.com", "username": "ada", "full_name": "Ada", "password": PASSWORD}),
            "university emails only",
        ),
        (
            json!({"email": "ada@sub.kiit.ac.in", "username": "ada", "full_name": "Ada", "password": PASSWORD}),
            "university emails only",
        ),
        (
            json!({"email": "not-an-email", "username": "ada", "full_name": "Ada", "password": PASSWORD}),
            "email must look like",
        ),
        (
            json!({"email": "ada@kiit.ac.in", "username": "ad", "full_name": "Ada", "password": PASSWORD}),
            "3 to 32 characters",
        ),
        (
            json!({"email": "ada@kiit.ac.in", "username": "ada lovelace", "full_name": "Ada", "password": PASSWORD}),
            "only letters, digits",
        ),
        (
            json!({"email": "ada@kiit.ac.in", "username": "ada", "full_name": "", "password": PASSWORD}),
            "full name is required",
        ),
        (
            json!({"email": "ada@kiit.ac.in", "username": "ada", "full_name": "x".repeat(101), "password": PASSWORD}),
            "at most 100",
        ),
        (
            json!({"email": "ada@kiit.ac.in", "username": "ada", "full_name": "Ada\u{0}", "password": PASSWORD}),
            "control characters",
        ),
        (
            json!({"email": "ada@kiit.ac.in", "username": "ada", "full_name": "Ada", "password": "short"}),
            "at least 8",
        ),
        (
            json!({"email": "ada@kiit.ac.in", "username": "adalovelace", "full_name": "Ada", "password": "adalovelace"}),
            "not be your email or username",
        ),
        (
            json!({"email": "ada@kiit.ac.in", "username": "ada", "full_name": "Ada", "password": "password"}),
            "most common passwords",
        ),
        (
            json!({"email": "ada@kiit.ac.in", "username": "ada", "full_name": "Ada", "password": "12345678"}),
            "most common passwords",
        ),
        (
            json!({"email": "ada@kiit.ac.in", "username": "ada", "full_name": "Ada"}),
            "missing field `password`",
        ),
        (
            json!({"email": 42, "username": "ada", "full_name": "Ada", "password": PASSWORD}),
            "invalid type",
        ),
    ];
    for (body, expected) in cases {
        let (status, answer) = gw.post("/auth/register", body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        let detail = answer["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(expected), "{body}: {detail:?} lacks {expected:?}");
    }

    let (status, _) = gw.post("/auth/register", register_body("ada@kiit.ac.in", "ada")).await;
    assert_eq!(status, 200);
    let (status, body) = gw
        .post("/auth/register", register_body("ADA@kiit.ac.in", "other"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["detail"], "an account with this email already exists");
    let (status, body) = gw
        .post("/auth/register", register_body("grace@kiit.ac.in", "ADA"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["detail"], "this username is already taken");

    // SQL-looking text is just text, stored and returned verbatim.
    let (status, body) = gw
        .post(
            "/auth/register",
            json!({"email": "bobby@kiit.ac.in", "username": "bobby", "full_name": "Robert'); DROP TABLE accounts;--", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["full_name"], "Robert'); DROP TABLE accounts;--");
    gw.stop().await;
}

#[tokio::test]
async fn login_failures_reveal_nothing_and_codes_lock_after_five_wrong_tries() {
    let fleet = Fleet::start_with(&[("OTP_LOCK_SECONDS", "2")]).await;
    let gw = fleet.gateway(&[]).await;
    let g = &gw;
    gw.sign_up_and_log_in(&fleet.smtp, "grace@kiit.ac.in", "grace").await;

    let (status, unknown) = gw
        .post(
            "/auth/login",
            json!({"email": "nobody@kiit.ac.in", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 401);
    let (status, wrong) = gw
        .post(
            "/auth/login",
            json!({"email": "grace@kiit.ac.in", "password": "wrong password"}),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(unknown, wrong, "same answer for unknown email and wrong password");
    let (status, _) = gw
        .post("/auth/login", json!({"email": "not an email", "password": "x"}))
        .await;
    assert_eq!(status, 401);

    let (status, _) = gw
        .post(
            "/auth/login",
            json!({"email": "grace@kiit.ac.in", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 202);
    let first = fleet.mail("grace@kiit.ac.in", 3).await.digits(6).unwrap();
    let wrong_code = "000000";
    let verify = |otp: String| async move {
        g.post(
            "/auth/login/verify-otp",
            json!({"email": "grace@kiit.ac.in", "otp": otp}),
        )
        .await
    };
    let login = || async {
        g.post(
            "/auth/login",
            json!({"email": "grace@kiit.ac.in", "password": PASSWORD}),
        )
        .await
    };
    for attempt in 1..=4 {
        let (status, body) = verify(wrong_code.to_owned()).await;
        assert_eq!(
            (status, body["detail"].as_str()),
            (400, Some("invalid or expired code")),
            "attempt {attempt}"
        );
    }
    // A new code does not reset the count: the fifth wrong code locks.
    assert_eq!(login().await.0, 202);
    let code = fleet.mail("grace@kiit.ac.in", 4).await.digits(6).unwrap();
    assert_ne!(code, wrong_code, "a 1-in-a-million draw; run again");
    assert_ne!(first, code);
    let (status, body) = verify(wrong_code.to_owned()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["detail"], "too many wrong codes; try again in 2 seconds");
    // Locked: the right code waits, and no new code is sent meanwhile.
    let (status, body) = verify(code.clone()).await;
    assert_eq!(status, 400, "the right code waits for the delay: {body}");
    assert!(
        body["detail"].as_str().unwrap().contains("too many wrong codes"),
        "{body}"
    );
    let (status, body) = login().await;
    assert_eq!(status, 400, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("try again in"), "{body}");
    // After the delay the owner's code still works: no lockout for good.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (status, body) = verify(code).await;
    assert_eq!(status, 200, "{body}");
    // ...and the count starts again.
    assert_eq!(login().await.0, 202);
    let code = fleet.mail("grace@kiit.ac.in", 5).await.digits(6).unwrap();
    for _ in 1..=4 {
        assert_eq!(verify(wrong_code.to_owned()).await.0, 400);
    }
    assert_eq!(
        verify(code).await.0,
        200,
        "four wrong codes after a success do not lock"
    );
    let (status, body) = gw
        .post(
            "/auth/login/verify-otp",
            json!({"email": "grace@kiit.ac.in", "otp": "12ab56"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["detail"], "the code must be the 6 digits from the email");
    gw.stop().await;
}

#[tokio::test]
async fn resend_answers_the_same_and_replaces_the_previous_link() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let (status, _) = gw
        .post("/auth/register", register_body("alan@kiit.ac.in", "alan"))
        .await;
    assert_eq!(status, 200);
    let first = fleet
        .mail("alan@kiit.ac.in", 1)
        .await
        .token_after("verify?token=")
        .unwrap();

    let (status, known) = gw
        .post("/auth/resend-verification", json!({"email": "alan@kiit.ac.in"}))
        .await;
    assert_eq!(status, 202);
    let (status, unknown) = gw
        .post("/auth/resend-verification", json!({"email": "ghost@kiit.ac.in"}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(known, unknown);

    let second = fleet
        .mail("alan@kiit.ac.in", 2)
        .await
        .token_after("verify?token=")
        .unwrap();
    assert_ne!(first, second);
    let (status, _) = gw.post("/auth/verify-email", json!({ "token": first })).await;
    assert_eq!(status, 400, "the previous link stopped working");
    let (status, _) = gw.post("/auth/verify-email", json!({ "token": second })).await;
    assert_eq!(status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn an_outdated_password_hash_is_upgraded_at_login() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    gw.sign_up_and_log_in(&fleet.smtp, "ken@kiit.ac.in", "ken").await;
    use argon2::PasswordHasher as _;
    let weak = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon2::Params::new(8192, 1, 1, None).unwrap(),
    )
    .hash_password(PASSWORD.as_bytes())
    .unwrap()
    .to_string();
    let db = fleet.db.client().await;
    db.execute(
        "UPDATE auth.accounts SET password_hash = $1 WHERE username = 'ken'",
        &[&weak],
    )
    .await
    .unwrap();
    let (status, _) = gw
        .post("/auth/login", json!({"email": "ken@kiit.ac.in", "password": PASSWORD}))
        .await;
    assert_eq!(status, 202);
    let stored: String = db
        .query_one("SELECT password_hash FROM auth.accounts WHERE username = 'ken'", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(stored, weak);
    assert!(!stored.contains("m=8192"), "{stored}");
    gw.stop().await;
}

/// Login codes and verification tokens never sit readable in `events:auth`
/// (which profile and signaling read too) or in `auth.outbox`: both hold
/// only what notification's key opens.
#[tokio::test]
async fn codes_and_tokens_are_sealed_in_the_event_stream_and_the_outbox() {
    let fleet = Fleet::start().await;
    let gw = fleet.gateway(&[]).await;
    let session = gw.sign_up_and_log_in(&fleet.smtp, "sam@kiit.ac.in", "sam").await;
    assert!(session["access_token"].is_string());
    let mails = fleet.smtp.messages_to("sam@kiit.ac.in");
    assert_eq!(mails.len(), 2);
    let token = mails[0].token_after("verify?token=").expect("token in the mail");
    let code = mails[1].digits(6).expect("code in the mail");

    let settings = unilink_test_support::settings(&fleet.db, &fleet.prefix, &[]);
    let redis = unilink_bus::Redis::connect(&settings.redis).await.unwrap();
    let reader = unilink_bus::StreamConsumer::join(&redis, "events:auth", "test-reader", "test")
        .await
        .unwrap();
    let entries = reader.read(1000, std::time::Duration::from_millis(50)).await.unwrap();
    reader.close().await;
    let stream = format!("{entries:?}");
    assert!(
        stream.contains("user.login_otp_requested") && stream.contains("user.verification_requested"),
        "the stream holds both events: {stream}"
    );
    assert!(stream.contains(r#"\"sealed\":\"v1."#), "{stream}");
    assert!(
        !stream.contains(&token),
        "the verification token is readable in the stream"
    );
    assert!(!stream.contains(&code), "the login code is readable in the stream");

    let db = fleet.db.client().await;
    let rows = db
        .query("SELECT event_type, payload::text FROM auth.outbox", &[])
        .await
        .unwrap();
    let outbox: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(outbox.iter().any(|(t, _)| t == "user.login_otp_requested"));
    for (event_type, payload) in &outbox {
        assert!(
            !payload.contains(&token),
            "{event_type}: the token is readable in the outbox"
        );
        assert!(
            !payload.contains(&code),
            "{event_type}: the code is readable in the outbox"
        );
    }
}
