//! The whole fleet in one test process: the four backend services on port 0
//! against one fresh database (each in its own schema), and gateways in front.

#![allow(dead_code)]

use std::time::Duration;

use unilink_test_support::service::{RunningService, spawn};
use unilink_test_support::{TestDatabase, settings, unique_prefix};

pub struct Fleet {
    pub db: TestDatabase,
    pub prefix: String,
    pub auth: RunningService,
    pub profile: RunningService,
    pub signaling: RunningService,
    pub notification: RunningService,
}

impl Fleet {
    pub async fn start() -> Fleet {
        let db = TestDatabase::create().await;
        let prefix = unique_prefix();
        let s = settings(&db, &prefix, &[]);
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
            auth,
            profile,
            signaling,
            notification,
        }
    }

    /// Gateway variables pointing at this fleet, then `overrides`.
    pub fn gateway_vars(&self, overrides: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = vec![
            ("AUTH_GRPC_URL".into(), self.auth.url()),
            ("PROFILE_GRPC_URL".into(), self.profile.url()),
            ("SIGNALING_GRPC_URL".into(), self.signaling.url()),
            ("NOTIFICATION_GRPC_URL".into(), self.notification.url()),
        ];
        vars.extend(
            overrides
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
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
