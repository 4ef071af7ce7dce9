//! The whole fleet in one test process: the four backend services on port 0
//! against one fresh database (each in its own schema), and gateways in front.

use std::time::Duration;

use crate::service::{RunningService, spawn};
use crate::smtp::{ReceivedMail, SmtpSink};
use crate::{TestDatabase, eventually, settings, unique_prefix};

/// Waits (20 s at most) for the `n`-th mail to `address` at `smtp` and returns it.
pub async fn mail(smtp: &SmtpSink, address: &str, n: usize) -> ReceivedMail {
    eventually(
        &format!("mail #{n} to {address}"),
        Duration::from_secs(20),
        || async move {
            let mails = smtp.messages_to(address);
            (mails.len() >= n).then(|| mails[n - 1].clone())
        },
    )
    .await
}

/// A Redis client at `url` with key prefix `prefix`.
pub async fn connect_redis(url: &str, prefix: &str) -> unilink_bus::Redis {
    let settings = unilink_config::RedisSettings::new(unilink_config::Secret::new(url.to_owned()), prefix);
    unilink_bus::Redis::connect(&settings).await.expect("a Redis client")
}

/// Waits (at most `within`) until the consumer group `group` has read and
/// acknowledged every entry of the event stream of `producer` (e.g. `auth`):
/// from then on nothing of it is handled again, so what a test saw happen
/// once stays once.
pub async fn wait_settled(redis: &unilink_bus::Redis, producer: &str, group: &str, within: Duration) {
    let stream = format!("events:{producer}");
    eventually(&format!("{group} done with {stream}"), within, || {
        let stream = &stream;
        async move { (redis.backlog(stream, group).await.ok()?? == 0).then_some(()) }
    })
    .await;
}

/// Waits (at most `within`) until a consumer of the group `group` holds an
/// entry of `producer`'s event stream it has not acknowledged: it has read
/// the event and not (yet) succeeded with it.
pub async fn wait_unacknowledged(redis: &unilink_bus::Redis, producer: &str, group: &str, within: Duration) {
    let stream = format!("events:{producer}");
    eventually(&format!("an entry of {stream} held by {group}"), within, || {
        let stream = &stream;
        async move { (redis.unacknowledged(stream, group).await.ok()? > 0).then_some(()) }
    })
    .await;
}

#[derive(Debug)]
pub struct Fleet {
    pub db: TestDatabase,
    pub prefix: String,
    pub smtp: SmtpSink,
    pub auth: RunningService,
    pub profile: RunningService,
    pub signaling: RunningService,
    pub notification: RunningService,
    /// The settings given for every service: the gateways get them too.
    pub extra: Vec<(String, String)>,
}

impl Fleet {
    pub async fn start() -> Fleet {
        Fleet::start_with(&[]).await
    }

    /// The fleet with extra settings for every service (later entries win).
    pub async fn start_with(extra: &[(&str, &str)]) -> Fleet {
        let db = TestDatabase::create().await;
        let prefix = unique_prefix();
        let smtp = SmtpSink::start().await;
        let port = smtp.port().to_string();
        let window = crate::RATE_WINDOW_SECONDS.to_string();
        let mut vars = vec![
            ("SMTP_SERVER", "127.0.0.1"),
            ("SMTP_PORT", port.as_str()),
            ("FRONTEND_URL", "http://localhost:5173"),
            ("RATE_LIMIT_AUTH", "100000"),
            ("RATE_LIMIT_AUTH_ADDRESS", "100000"),
            ("RATE_LIMIT_API", "100000"),
            ("RATE_LIMIT_WINDOW_SECONDS", &window),
        ];
        vars.extend_from_slice(extra);
        let s = settings(&db, &prefix, &vars);
        // Started as tasks, concurrently; awaiting them keeps this future small.
        let auth = tokio::spawn(spawn::<unilink_auth::Auth>(s.clone()));
        let profile = tokio::spawn(spawn::<unilink_profile::Profiles>(s.clone()));
        let notification = tokio::spawn(spawn::<unilink_notification::Notification>(s));
        let profile = profile.await.expect("profile starts");
        // Signaling asks profile whether a call may be made.
        let profile_url = profile.url();
        vars.push(("PROFILE_GRPC_URL", profile_url.as_str()));
        let signaling = spawn::<unilink_signaling::Signaling>(settings(&db, &prefix, &vars)).await;
        let (auth, notification) = (
            auth.await.expect("auth starts"),
            notification.await.expect("notification starts"),
        );
        Fleet {
            db,
            prefix,
            smtp,
            auth,
            profile,
            signaling,
            notification,
            extra: extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    /// Waits for the `n`-th mail to `address` and returns it.
    pub async fn mail(&self, address: &str, n: usize) -> ReceivedMail {
        mail(&self.smtp, address, n).await
    }

    /// A client of this fleet's Redis (its key prefix).
    pub async fn redis(&self) -> unilink_bus::Redis {
        connect_redis(&crate::redis_url(), &self.prefix).await
    }

    /// The presence registry of this fleet (what gateways write for their sockets).
    pub async fn presence(&self) -> unilink_presence::PresenceRegistry {
        unilink_presence::PresenceRegistry::new(self.redis().await, unilink_presence::DEFAULT_TTL)
    }

    /// [`wait_settled`] on this fleet's Redis.
    pub async fn wait_settled(&self, producer: &str, group: &str, within: Duration) {
        wait_settled(&self.redis().await, producer, group, within).await;
    }

    /// Gateway variables pointing at this fleet, then `overrides`.
    pub fn gateway_vars(&self, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = vec![
            ("RATE_LIMIT_AUTH".into(), "100000".into()),
            ("RATE_LIMIT_AUTH_ADDRESS".into(), "100000".into()),
            ("RATE_LIMIT_API".into(), "100000".into()),
            (
                "RATE_LIMIT_WINDOW_SECONDS".into(),
                crate::RATE_WINDOW_SECONDS.to_string(),
            ),
            ("AUTH_GRPC_URL".into(), self.auth.url()),
            ("PROFILE_GRPC_URL".into(), self.profile.url()),
            ("SIGNALING_GRPC_URL".into(), self.signaling.url()),
            ("NOTIFICATION_GRPC_URL".into(), self.notification.url()),
        ];
        vars.extend(self.extra.iter().cloned());
        vars.extend(overrides.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        vars
    }

    /// Starts a gateway in-process on port 0.
    pub async fn gateway(&self, overrides: &[(&str, &str)]) -> Gateway {
        let vars = self.gateway_vars(overrides);
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let app = unilink_gateway::Application::build(settings(&self.db, &self.prefix, &pairs))
            .await
            .expect("gateway starts");
        let base = format!("http://127.0.0.1:{}", app.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Gateway {
            stop: Some(stop),
            task: Some(task),
            ..Gateway::at(base)
        }
    }
}

#[derive(Debug)]
pub struct Gateway {
    pub base: String,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Gateway {
    /// A client of a gateway (or balancer) running elsewhere at `base`.
    pub fn at(base: String) -> Gateway {
        Gateway {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            stop: None,
            task: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(self.http.post(self.url(path)).json(&body)).await
    }

    pub async fn post_bearer(&self, path: &str, token: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(self.http.post(self.url(path)).bearer_auth(token).json(&body))
            .await
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    /// Registers, verifies by the emailed link and logs in with the emailed
    /// code; returns the token answer of the login.
    pub async fn sign_up_and_log_in(&self, smtp: &SmtpSink, email: &str, username: &str) -> serde_json::Value {
        let (status, body) = self
            .post(
                "/auth/register",
                serde_json::json!({"email": email, "username": username, "full_name": "Test User", "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let mail = self::mail(smtp, email, 1).await;
        let token = mail
            .token_after("verify?token=")
            .expect("verification link in the mail");
        let (status, body) = self
            .post("/auth/verify-email", serde_json::json!({ "token": token }))
            .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = self
            .post(
                "/auth/login",
                serde_json::json!({"email": email, "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let mail = self::mail(smtp, email, 2).await;
        let otp = mail.digits(6).expect("code in the mail");
        let (status, body) = self
            .post(
                "/auth/login/verify-otp",
                serde_json::json!({"email": email, "otp": otp}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// The gateway's Prometheus text.
    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.http.get(self.url(path)).send().await.expect("request");
        let status = response.status().as_u16();
        let body = response.json().await.unwrap_or(serde_json::Value::Null);
        (status, body)
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Fleet {
    /// Another signaling replica against the same database and Redis.
    pub async fn signaling_replica(&self, extra: &[(&str, &str)]) -> RunningService {
        let mut vars = vec![("PROFILE_GRPC_URL", self.profile.url())];
        let owned: Vec<(String, String)> = extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        vars.extend(owned.iter().map(|(k, v)| (k.as_str(), v.clone())));
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        spawn::<unilink_signaling::Signaling>(settings(&self.db, &self.prefix, &pairs)).await
    }

    /// A signed-up, logged-in user whose profile exists: (id, access token).
    pub async fn user(&self, gw: &Gateway, name: &str) -> (String, String) {
        user(&self.db, &self.smtp, gw, name).await
    }

    /// Like [`Fleet::user`], but the whole answer of the login (tokens and user).
    pub async fn session(&self, gw: &Gateway, name: &str) -> serde_json::Value {
        let session = gw
            .sign_up_and_log_in(&self.smtp, &format!("{name}@kiit.ac.in"), name)
            .await;
        wait_verified_profile(
            &self.db,
            session["user"]["id"].as_str().unwrap(),
            Duration::from_secs(20),
        )
        .await;
        session
    }
}

/// A user signed up and logged in through `gw` (mail read at `smtp`), once
/// its verified profile exists in `db`: (id, access token).
pub async fn user(db: &TestDatabase, smtp: &SmtpSink, gw: &Gateway, name: &str) -> (String, String) {
    let session = gw.sign_up_and_log_in(smtp, &format!("{name}@kiit.ac.in"), name).await;
    let id = session["user"]["id"].as_str().unwrap().to_owned();
    let token = session["access_token"].as_str().unwrap().to_owned();
    wait_verified_profile(db, &id, Duration::from_secs(20)).await;
    (id, token)
}

/// Waits (`timeout` at most) until the profile of user `id` exists and is verified.
pub async fn wait_verified_profile(db: &TestDatabase, id: &str, timeout: Duration) {
    let db = db.client().await;
    let uid = uuid::Uuid::parse_str(id).unwrap();
    eventually("profile created and verified", timeout, || {
        let db = &db;
        async move {
            let row = db
                .query_opt("SELECT is_verified FROM profile.profiles WHERE user_id = $1", &[&uid])
                .await
                .unwrap()?;
            row.get::<_, bool>(0).then_some(())
        }
    })
    .await;
}

impl Gateway {
    pub async fn get_bearer(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        self.send(self.http.get(self.url(path)).bearer_auth(token)).await
    }

    /// A WebSocket upgrade of `path` (with `?token=`) sent as a plain HTTP
    /// request, so that a refusal's status and `detail` can be read.
    pub async fn upgrade_answer(&self, path: &str, token: &str) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .get(self.url(&format!("{path}?token={token}")))
                .header("Connection", "Upgrade")
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Version", "13")
                .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        )
        .await
    }

    /// Opens a WebSocket (`path` without the token) with `?token=`.
    pub async fn socket(&self, path: &str, token: &str) -> Socket {
        self.try_socket(path, token).await.expect("websocket upgrade")
    }

    /// Opens a WebSocket; the HTTP status when the upgrade is refused.
    pub async fn try_socket(&self, path: &str, token: &str) -> Result<Socket, u16> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = format!(
            "{}{path}{separator}token={token}",
            self.base.replace("http://", "ws://")
        );
        match tokio_tungstenite::connect_async(url).await {
            Ok((ws, _)) => Ok(Socket { ws }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }
}

impl Gateway {
    /// Opens a WebSocket at `path_and_query` (the token already in it) as a
    /// browser page served from `origin` does.
    pub async fn browser_socket(&self, path_and_query: &str, origin: &str) -> Socket {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}{path_and_query}", self.base.replace("http://", "ws://"));
        let mut request = url.into_client_request().expect("a websocket url");
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("an origin header"));
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .unwrap_or_else(|e| panic!("websocket upgrade of {path_and_query}: {e}"));
        Socket { ws }
    }
}

/// A client WebSocket.
#[derive(Debug)]
pub struct Socket {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

/// What a socket read produced.
#[derive(Debug)]
pub enum Received {
    Text(String),
    Closed(u16, String),
}

impl Socket {
    pub async fn send_text(&mut self, text: &str) {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .expect("websocket send");
    }

    /// Sends a text frame; false if the connection is broken.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(text))
            .await
            .is_ok()
    }

    pub async fn send_json(&mut self, value: serde_json::Value) {
        self.send_text(&value.to_string()).await;
    }

    /// The next text frame or the close (within 10 s).
    pub async fn next(&mut self) -> Received {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("a websocket frame within 10 s")
    }

    /// The next text frame or close, or `None` after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Received> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match message {
                Some(Ok(Message::Text(t))) => return Some(Received::Text(t.to_string())),
                Some(Ok(Message::Close(frame))) => {
                    return Some(match frame {
                        Some(f) => Received::Closed(u16::from(f.code), f.reason.to_string()),
                        None => Received::Closed(1005, String::new()),
                    });
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Some(Received::Closed(1006, String::new())),
            }
        }
    }

    /// The next frame, which must be JSON text.
    pub async fn json(&mut self) -> serde_json::Value {
        match self.next().await {
            Received::Text(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}")),
            Received::Closed(code, reason) => panic!("socket closed ({code} {reason}) while a frame was expected"),
        }
    }

    /// Reads frames until one of `type` arrives; returns it.
    pub async fn expect(&mut self, kind: &str) -> serde_json::Value {
        loop {
            let frame = self.json().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Reads frames until the text frame `text` arrives.
    pub async fn expect_text(&mut self, text: &str) {
        loop {
            match self.next().await {
                Received::Text(t) if t == text => return,
                Received::Text(_) => {}
                Received::Closed(code, reason) => panic!("socket closed ({code} {reason}) while {text:?} was expected"),
            }
        }
    }

    /// The close code and reason (skipping text frames).
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            if let Received::Closed(code, reason) = self.next().await {
                return (code, reason);
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// The client stream itself, e.g. to send and read at once (`split`).
    pub fn into_inner(
        self,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
        self.ws
    }
}

impl Fleet {
    /// Makes the account of `email` an administrator (the documented command).
    pub fn make_admin(&self, email: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/make-admin.sh");
        let output = std::process::Command::new("bash")
            .arg(script)
            .arg(email)
            .env("DATABASE_URL", self.db.url())
            .output()
            .expect("run make-admin.sh");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }

    /// A signed-up administrator, logged in after the promotion (the role
    /// travels in the token): (id, access token).
    pub async fn admin(&self, gw: &Gateway, name: &str) -> (String, String) {
        let email = format!("{name}@kiit.ac.in");
        let (id, _) = self.user(gw, name).await;
        self.make_admin(&email);
        let (status, body) = gw
            .post(
                "/auth/login",
                serde_json::json!({"email": email, "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let otp = self.mail(&email, 3).await.digits(6).expect("code in the mail");
        let (status, session) = gw
            .post(
                "/auth/login/verify-otp",
                serde_json::json!({"email": email, "otp": otp}),
            )
            .await;
        assert_eq!(status, 200, "{session}");
        (id, session["access_token"].as_str().unwrap().to_owned())
    }
}

/// Two gateways, each in front of its own signaling replica, so the two
/// users of a call sit on different replicas.
#[derive(Debug)]
pub struct TwoSides {
    pub fleet: Fleet,
    pub second_signaling: RunningService,
    pub a: Gateway,
    pub b: Gateway,
}

/// [`TwoSides`] with `extra` settings for every service.
pub async fn two_sides(extra: &[(&str, &str)]) -> TwoSides {
    two_sides_with(extra, &[]).await
}

/// [`TwoSides`] with `extra` settings for every service and `gateway_extra`
/// for the two gateways.
pub async fn two_sides_with(extra: &[(&str, &str)], gateway_extra: &[(&str, &str)]) -> TwoSides {
    let fleet = Fleet::start_with(extra).await;
    let second_signaling = fleet.signaling_replica(extra).await;
    let first = fleet.signaling.url();
    let second = second_signaling.url();
    let mut a_vars = vec![("SIGNALING_GRPC_URL", first.as_str())];
    a_vars.extend_from_slice(gateway_extra);
    let mut b_vars = vec![("SIGNALING_GRPC_URL", second.as_str())];
    b_vars.extend_from_slice(gateway_extra);
    let a = fleet.gateway(&a_vars).await;
    let b = fleet.gateway(&b_vars).await;
    TwoSides {
        fleet,
        second_signaling,
        a,
        b,
    }
}

/// Opens the presence socket and waits until the fleet sees the user online.
pub async fn go_online(gw: &Gateway, id: &str, token: &str) -> Socket {
    let mut socket = gw.socket(&format!("/calls/ws/{id}"), token).await;
    socket.send_text("ping").await;
    assert!(matches!(socket.next().await, Received::Text(t) if t == "pong"));
    socket
}

/// The fields of the user JSON the original client reads.
pub const USER_FIELDS: [&str; 9] = [
    "id",
    "email",
    "username",
    "full_name",
    "profile_picture",
    "bio",
    "is_verified",
    "is_online",
    "created_at",
];

/// `caller` rings `callee_id` through `gw`: the new call's id.
pub async fn ring(gw: &Gateway, caller: &str, callee_id: &str) -> String {
    let (status, call) = gw
        .post_bearer("/calls/initiate", caller, serde_json::json!({"receiver_id": callee_id}))
        .await;
    assert_eq!(status, 200, "{call}");
    call["id"].as_str().unwrap().to_owned()
}

/// A call from `caller` (through `caller_gw`) that the callee accepted
/// (through `callee_gw`): its id.
pub async fn answered_call(
    caller_gw: &Gateway,
    caller: &str,
    callee_gw: &Gateway,
    callee_id: &str,
    callee: &str,
) -> String {
    let call_id = ring(caller_gw, caller, callee_id).await;
    let (status, body) = callee_gw
        .post_bearer(&format!("/calls/accept/{call_id}"), callee, serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    call_id
}
