//! The whole fleet in one test process: the four backend services on port 0
//! against one fresh database (each in its own schema), and gateways in front.

#![allow(dead_code)]

use std::time::Duration;

use unilink_test_support::service::{RunningService, spawn};
use unilink_test_support::smtp::{ReceivedMail, SmtpSink};
use unilink_test_support::{TestDatabase, eventually, settings, unique_prefix};

pub struct Fleet {
    pub db: TestDatabase,
    pub prefix: String,
    pub smtp: SmtpSink,
    pub auth: RunningService,
    pub profile: RunningService,
    pub signaling: RunningService,
    pub notification: RunningService,
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
        let mut vars = vec![
            ("SMTP_SERVER", "127.0.0.1"),
            ("SMTP_PORT", port.as_str()),
            ("FRONTEND_URL", "http://localhost:5173"),
            ("RATE_LIMIT_AUTH", "100000"),
            ("RATE_LIMIT_API", "100000"),
        ];
        vars.extend_from_slice(extra);
        let s = settings(&db, &prefix, &vars);
        // Started as tasks, concurrently; awaiting them keeps this future small.
        let auth = tokio::spawn(spawn::<unilink_auth::Auth>(s.clone()));
        let profile = tokio::spawn(spawn::<unilink_profile::Profiles>(s.clone()));
        let signaling = tokio::spawn(spawn::<unilink_signaling::Signaling>(s.clone()));
        let notification = tokio::spawn(spawn::<unilink_notification::Notification>(s));
        let (auth, profile, signaling, notification) = (
            auth.await.expect("auth starts"),
            profile.await.expect("profile starts"),
            signaling.await.expect("signaling starts"),
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
        }
    }

    /// Waits for the `n`-th mail to `address` and returns it.
    pub async fn mail(&self, address: &str, n: usize) -> ReceivedMail {
        let smtp = &self.smtp;
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

    /// The presence registry of this fleet (what signaling sockets will write).
    pub async fn presence(&self) -> unilink_presence::PresenceRegistry {
        let redis = unilink_bus::Redis::connect(&unilink_config::RedisSettings {
            url: unilink_config::Secret::new(unilink_test_support::redis_url()),
            key_prefix: self.prefix.clone(),
        })
        .await
        .unwrap();
        unilink_presence::PresenceRegistry::new(redis, unilink_presence::DEFAULT_TTL)
    }

    /// Gateway variables pointing at this fleet, then `overrides`.
    pub fn gateway_vars(&self, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = vec![
            ("RATE_LIMIT_AUTH".into(), "100000".into()),
            ("RATE_LIMIT_API".into(), "100000".into()),
            ("AUTH_GRPC_URL".into(), self.auth.url()),
            ("PROFILE_GRPC_URL".into(), self.profile.url()),
            ("SIGNALING_GRPC_URL".into(), self.signaling.url()),
            ("NOTIFICATION_GRPC_URL".into(), self.notification.url()),
        ];
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
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            stop: Some(stop),
            task,
        }
    }
}

pub struct Gateway {
    pub base: String,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Gateway {
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
    pub async fn sign_up_and_log_in(&self, fleet: &Fleet, email: &str, username: &str) -> serde_json::Value {
        let (status, body) = self
            .post(
                "/auth/register",
                serde_json::json!({"email": email, "username": username, "full_name": "Test User", "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let mail = fleet.mail(email, 1).await;
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
        let mail = fleet.mail(email, 2).await;
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
        (&mut self.task).await.unwrap().unwrap();
    }
}
