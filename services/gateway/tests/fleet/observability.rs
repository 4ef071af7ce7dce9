//! Observability of the real binaries: every service runs as its own process
//! (as in production) with its JSON log captured, Sentry pointed at a local
//! stand-in of the ingest API and mail at a local SMTP sink.
//!
//! * one request's `trace_id` is in the log of every service it touched,
//!   across gRPC hops and through events on Redis streams, with no trace
//!   collector (or an unreachable one);
//! * 500s reach Sentry with the route and request id, never a token or password;
//! * `POST /client-errors` validates, caps, rate-limits, logs and forwards;
//! * audit records say who, what and when, and no log carries a secret;
//! * every service exports the metrics the alerts and the dashboard use.
//!
//! Needs the service binaries (`cargo build --bins`, or run with `--workspace`).

use unilink_test_support::fleet as common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use unilink_test_support::sentry::SentrySink;
use unilink_test_support::service::{CHILD_STARTUP, ChildService, ServingChild, child_env, workspace_binary};
use unilink_test_support::smtp::SmtpSink;
use unilink_test_support::{TestDatabase, closed_port, eventually, unique_prefix};

const PASSWORD: &str = "correct horse battery";
const WAIT: Duration = Duration::from_secs(30);

/// A trace collector that accepts connections and never answers.
struct SilentCollector {
    port: u16,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentCollector {
    async fn start() -> SilentCollector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(stream);
            }
        });
        SilentCollector { port, accepted, task }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for SilentCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The five binaries against one database, Redis prefix, SMTP sink and Sentry sink.
struct ChildFleet {
    silent_collector: SilentCollector,
    db: TestDatabase,
    prefix: String,
    smtp: SmtpSink,
    sentry: SentrySink,
    auth: ServingChild,
    profile: ServingChild,
    signaling: ServingChild,
    notification: ServingChild,
    gateway: ChildService,
    base: String,
    http: reqwest::Client,
}

impl ChildFleet {
    /// `gateway_env` is added to the gateway's environment (later wins).
    async fn start(gateway_env: &[(&str, &str)]) -> ChildFleet {
        let db = TestDatabase::create().await;
        let prefix = unique_prefix();
        let smtp = SmtpSink::start().await;
        let sentry = SentrySink::start().await;
        // Trace export fails and must not matter: auth's collector address
        // refuses connections, the gateway's accepts them and never answers.
        // Both try to export every 100 ms.
        let dead_collector = format!("http://127.0.0.1:{}", closed_port());
        let silent_collector = SilentCollector::start().await;
        let common = || {
            let mut env = child_env(db.url(), &prefix);
            env.extend(
                [
                    ("LOG_LEVEL", "debug"),
                    ("SENTRY_DSN", sentry.dsn().as_str()),
                    ("SMTP_SERVER", "127.0.0.1"),
                    ("SMTP_PORT", smtp.port().to_string().as_str()),
                    ("RATE_LIMIT_AUTH", "100000"),
                    ("RATE_LIMIT_AUTH_ADDRESS", "100000"),
                    ("RATE_LIMIT_API", "100000"),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned())),
            );
            env
        };
        // Every listener on port 0; each process logs the address it got.
        let start = |name: &str, extra: Vec<(String, String)>| {
            let mut env = common();
            env.extend(extra);
            let binary = workspace_binary(&format!("unilink-{name}"));
            async move { ServingChild::start(&binary, &env).await }
        };
        let otlp = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), dead_collector),
            ("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()),
        ];
        let (auth, profile, notification) = tokio::join!(
            start("auth", otlp),
            start("profile", Vec::new()),
            start("notification", Vec::new())
        );
        let signaling = start("signaling", vec![("PROFILE_GRPC_URL".to_owned(), profile.url())]).await;
        let mut env = common();
        env.extend(
            [
                ("AUTH_GRPC_URL", auth.url()),
                ("PROFILE_GRPC_URL", profile.url()),
                ("SIGNALING_GRPC_URL", signaling.url()),
                ("NOTIFICATION_GRPC_URL", notification.url()),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", silent_collector.url()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        env.extend(gateway_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let mut gateway = ChildService::start_logged(&workspace_binary("unilink-gateway"), &env);
        let addr = gateway.logged_addr("gateway listening", "addr", CHILD_STARTUP).await;
        let base = format!("http://{addr}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let probe = http.clone();
        let livez = format!("{base}/livez");
        eventually("the gateway to answer", CHILD_STARTUP, || {
            let (probe, livez) = (probe.clone(), livez.clone());
            async move {
                probe
                    .get(livez)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status() == 200)
                    .map(|_| ())
            }
        })
        .await;
        ChildFleet {
            silent_collector,
            db,
            prefix,
            smtp,
            sentry,
            auth,
            profile,
            signaling,
            notification,
            gateway,
            base,
            http,
        }
    }

    fn logs(&self) -> [(&'static str, &ChildService); 5] {
        [
            ("gateway", &self.gateway),
            ("auth", &self.auth.process),
            ("profile", &self.profile.process),
            ("signaling", &self.signaling.process),
            ("notification", &self.notification.process),
        ]
    }

    /// Sends `request` with `X-Request-Id: request_id`; (status, JSON body).
    async fn send(&self, request: reqwest::RequestBuilder, request_id: &str) -> (u16, Value) {
        let response = request
            .header("X-Request-Id", request_id)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    fn post(&self, path: &str, body: Value) -> reqwest::RequestBuilder {
        self.http.post(format!("{}{path}", self.base)).json(&body)
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.base))
    }

    async fn mail(&self, address: &str, n: usize) -> unilink_test_support::smtp::ReceivedMail {
        let smtp = &self.smtp;
        eventually(&format!("mail #{n} to {address}"), WAIT, || async move {
            let mails = smtp.messages_to(address);
            (mails.len() >= n).then(|| mails[n - 1].clone())
        })
        .await
    }

    /// Registers, verifies and logs in `name`; (user id, token answer).
    async fn user(&self, name: &str) -> (String, Value) {
        let email = format!("{name}@kiit.ac.in");
        let tag = format!("setup-{name}");
        let (status, body) = self
            .send(
                self.post(
                    "/auth/register",
                    json!({"email": email, "username": name, "full_name": "Test User", "password": PASSWORD}),
                ),
                &tag,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let token = self.mail(&email, 1).await.token_after("verify?token=").unwrap();
        let (status, body) = self
            .send(self.post("/auth/verify-email", json!({ "token": token })), &tag)
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = self
            .send(
                self.post("/auth/login", json!({"email": email, "password": PASSWORD})),
                &tag,
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let otp = self.mail(&email, 2).await.digits(6).unwrap();
        let (status, session) = self
            .send(
                self.post("/auth/login/verify-otp", json!({"email": email, "otp": otp})),
                &tag,
            )
            .await;
        assert_eq!(status, 200, "{session}");
        let id = session["user"]["id"].as_str().unwrap().to_owned();
        common::wait_verified_profile(&self.db, &id, WAIT).await;
        (id, session)
    }

    /// Marks `user_id` online (as a presence socket would), so it can be called.
    async fn online(&self, user_id: &str) {
        let redis = unilink_bus::Redis::connect(&unilink_config::RedisSettings::new(
            unilink_config::Secret::new(unilink_test_support::redis_url()),
            self.prefix.clone(),
        ))
        .await
        .unwrap();
        unilink_presence::PresenceRegistry::new(redis, unilink_presence::DEFAULT_TTL)
            .connect(unilink_domain::UserId::parse(user_id).unwrap(), "observability-test")
            .await
            .unwrap();
    }

    /// The trace id the gateway's access line gives the request `request_id`.
    async fn trace_of(&self, request_id: &str) -> String {
        let gateway = &self.gateway;
        eventually(&format!("the access line of {request_id}"), WAIT, || async move {
            gateway
                .log_lines()
                .into_iter()
                .find(|l| l["request_id"] == request_id && l["message"] == "request finished")
                .and_then(|l| l["trace_id"].as_str().map(str::to_owned))
        })
        .await
    }

    async fn metrics(&self, http: SocketAddr) -> String {
        common::Gateway::at(format!("http://{http}")).metrics().await
    }
}

/// Lines of `service`'s log carrying `trace_id`.
fn lines_with_trace(service: &ChildService, trace_id: &str) -> Vec<Value> {
    service
        .log_lines()
        .into_iter()
        .filter(|l| l["trace_id"] == trace_id)
        .collect()
}

/// Waits until `service` logged a line with `trace_id` matching `what`.
async fn wait_for_line(service: &ChildService, name: &str, trace_id: &str, what: impl Fn(&Value) -> bool) -> Value {
    let what = &what;
    eventually(
        &format!("a line of {name} with trace {trace_id}"),
        WAIT,
        || async move { lines_with_trace(service, trace_id).into_iter().find(|l| what(l)) },
    )
    .await
}

#[tokio::test]
async fn one_request_is_one_trace_in_every_service_it_touches() {
    let fleet = ChildFleet::start(&[]).await;
    let (_, ada) = fleet.user("ada").await;
    let (bob_id, _) = fleet.user("bob").await;
    fleet.online(&bob_id).await;

    // 1. Sign-up: gateway → auth (gRPC) → outbox → events:auth → profile and
    //    notification and signaling (stream consumers).
    let request_id = format!("trace-register-{}", uuid::Uuid::new_v4().simple());
    let (status, body) = fleet
        .send(
            fleet.post(
                "/auth/register",
                json!({"email": "carol@kiit.ac.in", "username": "carol", "full_name": "Carol", "password": PASSWORD}),
            ),
            &request_id,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let trace = fleet.trace_of(&request_id).await;
    assert_eq!(trace.len(), 32, "{trace}");
    assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32));

    let registered = wait_for_line(&fleet.auth.process, "auth", &trace, |l| {
        l["action"] == "user.registered"
    })
    .await;
    assert_eq!(registered["audit"], true);
    wait_for_line(&fleet.auth.process, "auth", &trace, |l| {
        l["message"] == "rpc finished" && l["rpc.method"] == "/unilink.auth.v1.AuthService/Register"
    })
    .await;
    wait_for_line(&fleet.profile.process, "profile", &trace, |l| {
        l["message"] == "event handled" && l["event.type"] == "user.registered"
    })
    .await;
    wait_for_line(&fleet.notification.process, "notification", &trace, |l| {
        l["message"] == "email delivered"
    })
    .await;
    // Signaling follows accounts too (it ends the calls of closed ones).
    wait_for_line(&fleet.signaling.process, "signaling", &trace, |l| {
        l["message"] == "event handled" && l["event.type"] == "user.registered"
    })
    .await;

    // 2. A call: gateway → signaling → profile (gRPC, service to service) →
    //    outbox → events:signaling → notification's push worker.
    let request_id = format!("trace-call-{}", uuid::Uuid::new_v4().simple());
    let (status, call) = fleet
        .send(
            fleet
                .post("/calls/initiate", json!({"receiver_id": bob_id}))
                .bearer_auth(ada["access_token"].as_str().unwrap()),
            &request_id,
        )
        .await;
    assert_eq!(status, 200, "{call}");
    let trace = fleet.trace_of(&request_id).await;
    wait_for_line(&fleet.signaling.process, "signaling", &trace, |l| {
        l["message"] == "call initiated"
    })
    .await;
    wait_for_line(&fleet.profile.process, "profile", &trace, |l| {
        l["message"] == "rpc finished" && l["rpc.method"] == "/unilink.profile.v1.ProfileService/CallEligibility"
    })
    .await;
    wait_for_line(&fleet.notification.process, "notification", &trace, |l| {
        l["message"] == "event handled" && l["event.type"] == "call.initiated"
    })
    .await;
    assert!(
        lines_with_trace(&fleet.auth.process, &trace).is_empty(),
        "the gateway verifies tokens itself; auth was not involved"
    );

    // The gateway did try to export (to a collector that never answers) and
    // auth to one that refuses; neither slowed a request down nor said a
    // word about it, and nothing logged an error.
    let collector = &fleet.silent_collector;
    eventually("the gateway to try exporting its spans", WAIT, || async move {
        (collector.connections() > 0).then_some(())
    })
    .await;
    for (name, service) in fleet.logs() {
        let noise: Vec<Value> = service
            .log_lines()
            .into_iter()
            .filter(|l| {
                l["level"] == "ERROR" || (l["level"] == "WARN" && l.to_string().to_lowercase().contains("export"))
            })
            .collect();
        assert!(noise.is_empty(), "{name} logged: {noise:?}");
    }
    let slowest = fleet
        .gateway
        .log_lines()
        .into_iter()
        .filter(|l| l["message"] == "request finished" && l["http.route"] == "/calls/initiate")
        .filter_map(|l| l["duration_ms"].as_f64())
        .fold(0.0, f64::max);
    assert!(slowest < 2000.0, "a request took {slowest} ms");
    // Nor does it hold up the exit: the last flush is given 2 s, not the
    // exporter's 5 s deadline (twice) it would otherwise wait for.
    let ChildFleet { gateway, http, .. } = fleet;
    drop(http);
    let stopping = std::time::Instant::now();
    let status = gateway.terminate(Duration::from_secs(30)).await;
    assert!(status.success(), "{status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(6),
        "the gateway took {:?} to exit",
        stopping.elapsed()
    );
}

#[tokio::test]
async fn server_errors_reach_sentry_with_their_request_and_without_secrets() {
    let fleet = ChildFleet::start(&[]).await;
    let (_, ada) = fleet.user("ada").await;
    let access = ada["access_token"].as_str().unwrap().to_owned();
    let refresh = ada["refresh_token"].as_str().unwrap().to_owned();
    let db = fleet.db.client().await;

    // A broken profile schema: GET /users/me fails inside the profile service.
    db.batch_execute("ALTER TABLE profile.profiles RENAME COLUMN bio TO bio_broken")
        .await
        .unwrap();
    let request_id = format!("sentry-me-{}", uuid::Uuid::new_v4().simple());
    let (status, body) = fleet
        .send(fleet.get("/users/me").bearer_auth(&access), &request_id)
        .await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body, json!({"detail": "internal server error"}));
    let sentry = &fleet.sentry;
    let request_id = request_id.as_str();
    let gateway_event = eventually("the gateway's report of the 500", WAIT, || async move {
        sentry
            .events()
            .into_iter()
            .find(|e| e["tags"]["request_id"] == request_id)
    })
    .await;
    // (`error` is Sentry's default level, left out of the JSON.)
    assert!(
        matches!(gateway_event["level"].as_str(), None | Some("error")),
        "{gateway_event}"
    );
    assert_eq!(gateway_event["server_name"], "gateway");
    assert_eq!(gateway_event["tags"]["http.route"], "/users/me");
    assert_eq!(gateway_event["tags"]["http.method"], "GET");
    let trace = gateway_event["tags"]["trace_id"].as_str().unwrap().to_owned();
    // The profile service reported the cause, in the same trace.
    let cause = eventually("the profile service's report", WAIT, || {
        let trace = trace.clone();
        async move {
            sentry
                .events()
                .into_iter()
                .find(|e| e["server_name"] == "profile" && e["tags"]["trace_id"] == trace.as_str())
        }
    })
    .await;
    assert!(cause["message"].as_str().unwrap().contains("request failed"), "{cause}");
    assert!(
        cause["tags"]["rpc.method"].as_str().unwrap().contains("GetProfile"),
        "{cause}"
    );

    // A broken auth schema: the login (with a password in the body and a
    // bearer token in the headers) fails inside auth.
    db.batch_execute("ALTER TABLE auth.accounts RENAME COLUMN email TO email_broken")
        .await
        .unwrap();
    let request_id = format!("sentry-login-{}", uuid::Uuid::new_v4().simple());
    let (status, _) = fleet
        .send(
            fleet
                .post("/auth/login", json!({"email": "ada@kiit.ac.in", "password": PASSWORD}))
                .bearer_auth(&access),
            &request_id,
        )
        .await;
    assert_eq!(status, 500);
    let login_event = eventually("the gateway's report of the failed login", WAIT, || {
        let request_id = request_id.clone();
        async move {
            sentry
                .events()
                .into_iter()
                .find(|e| e["tags"]["request_id"] == request_id.as_str())
        }
    })
    .await;
    assert_eq!(login_event["tags"]["http.route"], "/auth/login");

    let raw = fleet.sentry.raw();
    for secret in [access.as_str(), refresh.as_str(), PASSWORD, "Bearer "] {
        assert!(!raw.contains(secret), "{secret:?} reached Sentry: {raw}");
    }
    // Reports went to the envelope endpoint of project 1, authenticated by the DSN's key.
    let request = &fleet.sentry.requests()[0];
    assert_eq!(request.path, "/api/1/envelope/");
    assert!(
        request
            .headers
            .iter()
            .any(|(k, v)| k == "x-sentry-auth" && v.contains("sentry_key=publickey")),
        "{request:?}"
    );
}

#[tokio::test]
async fn client_errors_are_validated_capped_rate_limited_logged_and_forwarded() {
    let fleet = ChildFleet::start(&[("RATE_LIMIT_API", "12")]).await;
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhZGEifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ";
    let report = json!({
        "message": format!("TypeError: cannot read 'x' (token {jwt}, password=hunter2)"),
        "stack": format!("at fetchMe (app.js:10:3) Authorization: Bearer {jwt}"),
        "url": "https://unilink.app/verify?token=abcdef123456&tab=1",
        "user_agent": "Mozilla/5.0",
        "level": "warning",
        "context": {"component": "Profile", "refresh_token": "rt-secret", "note": format!("jwt {jwt}")},
    });
    let request_id = format!("client-error-{}", uuid::Uuid::new_v4().simple());
    // Anonymous.
    let (status, body) = fleet
        .send(fleet.post("/client-errors", report.clone()), &request_id)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"message": "reported"}));
    // A bad token does not stop a report; sendBeacon's text/plain is fine.
    let (status, body) = fleet
        .send(
            fleet
                .http
                .post(format!("{}/client-errors", fleet.base))
                .bearer_auth("not-a-token")
                .header("Content-Type", "text/plain;charset=UTF-8")
                .body(r#"{"message":"beacon"}"#),
            "beacon",
        )
        .await;
    assert_eq!(status, 202, "{body}");

    // Invalid reports.
    for (bad, why) in [
        (json!({}), "missing message"),
        (json!({"message": "x".repeat(2001)}), "message too long"),
        (json!({"message": "x", "level": "loud"}), "unknown level"),
        (json!({"message": "x", "context": "str"}), "context not an object"),
    ] {
        let (status, body) = fleet.send(fleet.post("/client-errors", bad), "bad").await;
        assert_eq!(status, 400, "{why}: {body}");
        assert!(body["detail"].is_string(), "{why}: {body}");
    }
    let huge = json!({"message": "x", "stack": "s".repeat(17 * 1024)});
    let (status, body) = fleet.send(fleet.post("/client-errors", huge), "huge").await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["detail"], "error report is larger than 16 KiB");

    // Logged as one warn record, scrubbed.
    let gateway = &fleet.gateway;
    let line = eventually("the client error in the gateway log", WAIT, || {
        let request_id = request_id.clone();
        async move {
            gateway
                .log_lines()
                .into_iter()
                .find(|l| l["client_error"] == true && l["request_id"] == request_id.as_str())
        }
    })
    .await;
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["report_level"], "warning");
    assert!(
        line["error_message"].as_str().unwrap().starts_with("TypeError"),
        "{line}"
    );
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert!(line["trace_id"].is_string(), "{line}");

    // Forwarded to Sentry as a message event, scrubbed.
    let sentry = &fleet.sentry;
    let event = eventually("the client error in Sentry", WAIT, || async move {
        sentry
            .events()
            .into_iter()
            .find(|e| e["logger"] == "frontend" && e["level"] == "warning")
    })
    .await;
    assert!(event["message"].as_str().unwrap().starts_with("TypeError"), "{event}");
    assert_eq!(event["tags"]["source"], "frontend");
    assert_eq!(event["extra"]["context"]["component"], "Profile");
    for (what, text) in [("gateway log", fleet.gateway.logs()), ("sentry", fleet.sentry.raw())] {
        for secret in [jwt, "hunter2", "abcdef123456", "rt-secret"] {
            assert!(!text.contains(secret), "{secret:?} in the {what}: {text}");
        }
    }

    // The edge's per-address limit (12 a minute here) covers the route:
    // within 13 requests of one window (25 allow for a window boundary) a
    // report is refused, with `{"detail"}`.
    let mut refused = None;
    for _ in 0..25 {
        let (status, body) = fleet
            .send(fleet.post("/client-errors", json!({"message": "again"})), "again")
            .await;
        if status == 429 {
            refused = Some(body);
            break;
        }
        assert_eq!(status, 202, "{body}");
    }
    let refused = refused.expect("the rate limit refused a report");
    assert!(refused["detail"].is_string(), "{refused}");
}

#[tokio::test]
async fn audit_records_say_who_what_and_when_and_no_log_holds_a_secret() {
    let fleet = ChildFleet::start(&[]).await;
    let (ada_id, ada) = fleet.user("ada").await;
    let access = ada["access_token"].as_str().unwrap().to_owned();
    let refresh = ada["refresh_token"].as_str().unwrap().to_owned();

    let wrong = "wrong horse battery";
    let (status, _) = fleet
        .send(
            fleet.post("/auth/login", json!({"email": "ada@kiit.ac.in", "password": wrong})),
            "audit-wrong-password",
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = fleet
        .send(
            fleet.post("/auth/login", json!({"email": "nobody@kiit.ac.in", "password": wrong})),
            "audit-unknown",
        )
        .await;
    assert_eq!(status, 401);
    let (status, _) = fleet
        .send(fleet.get("/users/me/export").bearer_auth(&access), "audit-export")
        .await;
    assert_eq!(status, 200);
    let (status, _) = fleet
        .send(
            fleet.post("/auth/refresh", json!({"refresh_token": refresh})),
            "audit-refresh",
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = fleet
        .send(
            fleet.post("/auth/logout", json!({})).bearer_auth(&access),
            "audit-logout",
        )
        .await;
    assert_eq!(status, 200);

    let auth = &fleet.auth.process;
    let audit = |action: &'static str| async move {
        eventually(&format!("audit record {action}"), WAIT, || async move {
            auth.log_lines()
                .into_iter()
                .filter(|l| l["audit"] == true && l["action"] == action)
                .collect::<Vec<_>>()
                .into_iter()
                .reduce(|_, last| last)
        })
        .await
    };
    let failures: Vec<Value> = {
        audit("login.failed").await;
        auth.log_lines()
            .into_iter()
            .filter(|l| l["audit"] == true && l["action"] == "login.failed")
            .collect()
    };
    assert!(
        failures
            .iter()
            .any(|l| l["user_id"] == ada_id.as_str() && l["reason"] == "wrong_password"),
        "{failures:?}"
    );
    assert!(
        failures
            .iter()
            .any(|l| l["user_id"].is_null() && l["reason"] == "unknown_email"),
        "{failures:?}"
    );
    for action in [
        "user.registered",
        "user.verified",
        "login.succeeded",
        "token.refreshed",
        "logout",
    ] {
        let record = audit(action).await;
        assert_eq!(record["user_id"], ada_id.as_str(), "{record}");
        assert!(
            record["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{record}"
        );
        assert!(record["trace_id"].is_string(), "{record}");
        // From where: the gateway passes the client's address on every call.
        assert_eq!(record["client_ip"], "127.0.0.1", "{record}");
    }
    // From where: the audit record's trace leads to the gateway's access line
    // of the request (its request id, route and timing).
    let logout = audit("logout").await;
    let gateway_line = fleet
        .gateway
        .log_lines()
        .into_iter()
        .find(|l| l["message"] == "request finished" && l["trace_id"] == logout["trace_id"])
        .expect("the gateway's access line of the logout");
    assert_eq!(gateway_line["request_id"], "audit-logout");
    assert_eq!(gateway_line["http.route"], "/auth/logout");

    let profile = &fleet.profile.process;
    let export = eventually("audit record user.export", WAIT, || async move {
        profile
            .log_lines()
            .into_iter()
            .find(|l| l["audit"] == true && l["action"] == "user.export")
    })
    .await;
    assert_eq!(export["user_id"], ada_id.as_str());
    assert_eq!(export["client_ip"], "127.0.0.1", "{export}");

    for (name, service) in fleet.logs() {
        let text = service.logs();
        for secret in [PASSWORD, wrong, access.as_str(), refresh.as_str()] {
            assert!(!text.contains(secret), "{name}'s log holds {secret:?}");
        }
    }
}

#[tokio::test]
async fn every_service_exports_the_metrics_the_alerts_and_dashboard_use() {
    let fleet = ChildFleet::start(&[("RATE_LIMIT_API", "3")]).await;
    let (_, ada) = fleet.user("ada").await;
    let (bob_id, _) = fleet.user("bob").await;
    fleet.online(&bob_id).await;
    let token = ada["access_token"].as_str().unwrap();
    let (status, _) = fleet.send(fleet.get("/calls/history").bearer_auth(token), "m-1").await;
    assert_eq!(status, 200);
    let (status, call) = fleet
        .send(
            fleet
                .post("/calls/initiate", json!({"receiver_id": bob_id}))
                .bearer_auth(token),
            "m-2",
        )
        .await;
    assert_eq!(status, 200, "{call}");
    for _ in 0..3 {
        fleet.send(fleet.get("/users/me").bearer_auth(token), "m-3").await;
    }

    let gateway: SocketAddr = fleet.base.trim_start_matches("http://").parse().unwrap();
    let expectations: [(&str, SocketAddr, &[&str]); 5] = [
        (
            "gateway",
            gateway,
            &[
                "http_requests_total{",
                "http_request_duration_seconds_bucket{",
                "rate_limit_hits_total{scope=\"api\"}",
            ],
        ),
        (
            "auth",
            fleet.auth.http,
            &[
                "grpc_server_handled_total{",
                "grpc_server_handling_seconds_bucket{",
                "signups_total ",
                "daily_active_users ",
                "db_pool_connections{",
                "outbox_lag_seconds{",
            ],
        ),
        (
            "profile",
            fleet.profile.http,
            &[
                "db_query_duration_seconds_bucket{",
                "schema=\"profile\"",
                "stream_consumer_pending{",
            ],
        ),
        (
            "signaling",
            fleet.signaling.http,
            &[
                "calls_started_total",
                "db_query_duration_seconds_bucket{",
                "op=\"call_history\"",
            ],
        ),
        ("notification", fleet.notification.http, &["emails_sent_total{"]),
    ];
    for (name, port, names) in expectations {
        let fleet = &fleet;
        eventually(&format!("the metrics of {name}"), WAIT, || async move {
            let text = fleet.metrics(port).await;
            names.iter().all(|n| text.contains(n)).then_some(())
        })
        .await;
    }
    // Two users logged in today.
    let text = fleet.metrics(fleet.auth.http).await;
    let dau = text
        .lines()
        .find_map(|l| l.strip_prefix("daily_active_users "))
        .unwrap()
        .trim()
        .parse::<f64>()
        .unwrap();
    assert!(dau >= 2.0, "{text}");
}
