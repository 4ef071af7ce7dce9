//! The fleet as it runs in production, on loopback: two replicas of every
//! service as real processes (the binaries `cargo nextest run --workspace`
//! builds), real nginx balancing two gateways, a private `redis-server` that
//! a test can kill and restart empty, PostgreSQL behind a [`CutProxy`] that a
//! test can cut, and an SMTP sink that can be stopped.
//!
//! Every listener is on a port the kernel picked; a restarted replica listens
//! on the ports it had (as a pod behind a stable Service address), so the
//! other services' address lists stay valid.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::faults::{CutProxy, PrivateRedis, SentinelRedis};
use crate::service::{CHILD_STARTUP, ChildService, child_env, wait_serving, workspace_binary};
use crate::smtp::SmtpSink;
use crate::{TestDatabase, closed_port, eventually, unique_prefix};

use std::time::Instant;

use serde_json::{Value, json};

use crate::fleet::Gateway;

/// What each process logs at info: where it listens.
const LOG_LEVEL: &str = "warn,unilink_grpc::server=info,unilink_gateway::startup=info";

/// One replica of a service: a child process that can be killed, stopped
/// and started again on the same ports.
#[derive(Debug)]
pub struct Replica {
    pub name: String,
    binary: String,
    env: Vec<(String, String)>,
    /// gRPC address (backends only).
    pub grpc: Option<SocketAddr>,
    /// HTTP address: metrics and probes, or the gateway's public port.
    pub http: SocketAddr,
    process: Option<ChildService>,
}

impl Replica {
    async fn start(name: String, binary: String, env: Vec<(String, String)>) -> Replica {
        let is_gateway = binary.ends_with("unilink-gateway");
        let mut process = ChildService::start_logged(&binary, &env);
        let (grpc, http) = if is_gateway {
            (
                None,
                process.logged_addr("gateway listening", "addr", CHILD_STARTUP).await,
            )
        } else {
            let grpc = process.logged_addr("serving", "grpc_addr", CHILD_STARTUP).await;
            let http = process.logged_addr("serving", "http_addr", CHILD_STARTUP).await;
            (Some(grpc), http)
        };
        let mut replica = Replica {
            name,
            binary,
            env,
            grpc,
            http,
            process: Some(process),
        };
        // From now on, the same ports on every start.
        replica.set_env("HTTP_ADDR", &http.to_string());
        if let Some(grpc) = grpc {
            replica.set_env("GRPC_ADDR", &grpc.to_string());
        }
        replica.wait_ready().await;
        replica
    }

    fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    async fn wait_ready(&self) {
        match self.grpc {
            Some(grpc) => wait_serving(grpc, CHILD_STARTUP).await,
            None => {
                let livez = format!("http://{}/livez", self.http);
                eventually(&format!("{} to answer /livez", self.name), CHILD_STARTUP, || {
                    let livez = livez.clone();
                    async move {
                        let response = reqwest::get(livez).await.ok()?;
                        (response.status() == 200).then_some(())
                    }
                })
                .await;
            }
        }
    }

    /// `http://<grpc addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc.expect("a backend replica"))
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        drop(self.process.take());
    }

    /// SIGTERM; waits for the exit (at most `within`) and returns how long it took.
    pub async fn terminate(&mut self, within: Duration) -> Duration {
        let process = self.process.take().expect("replica running");
        let started = std::time::Instant::now();
        let status = process.terminate(within).await;
        assert!(status.success(), "{} exited with {status} after SIGTERM", self.name);
        started.elapsed()
    }

    /// Starts the process again on its ports and waits until it serves.
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "{} is still running", self.name);
        let (message, field) = if self.grpc.is_some() {
            ("serving", "grpc_addr")
        } else {
            ("gateway listening", "addr")
        };
        let deadline = tokio::time::Instant::now() + CHILD_STARTUP;
        loop {
            let mut process = ChildService::start_logged(&self.binary, &self.env);
            // The old process's ports may still be held a moment by the kernel.
            match process.try_logged_addr(message, field, CHILD_STARTUP).await {
                Ok(_) => {
                    self.process = Some(process);
                    break;
                }
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{} did not start again: {e}",
                        self.name
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        self.wait_ready().await;
    }

    /// The replica's `/metrics` (Prometheus text).
    pub async fn metrics(&self) -> String {
        Gateway::at(format!("http://{}", self.http)).metrics().await
    }

    /// The process's log so far (JSON lines).
    pub fn logs(&self) -> String {
        self.process.as_ref().map(ChildService::logs).unwrap_or_default()
    }
}

/// nginx in front of the gateways, as the load balancer of a deployment.
#[derive(Debug)]
pub struct Nginx {
    dir: std::path::PathBuf,
    child: Child,
    pub port: u16,
    gateways: Vec<SocketAddr>,
}

impl Nginx {
    async fn start(gateways: &[SocketAddr]) -> Nginx {
        let dir = std::env::temp_dir().join(format!("unilink-nginx-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("tmp")).expect("nginx directory");
        // Worker processes run as `nobody` when the test runs as root.
        let _ = Command::new("chmod").args(["-R", "0777"]).arg(&dir).status();
        for _ in 0..20 {
            let port = closed_port();
            std::fs::write(dir.join("nginx.conf"), nginx_conf(&dir, port, gateways, None)).expect("nginx.conf");
            let mut child = Command::new(nginx_binary())
                .arg("-p")
                .arg(&dir)
                .arg("-c")
                .arg(dir.join("nginx.conf"))
                .args(["-g", "daemon off;"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting nginx (scripts/test.sh installs nginx-light)");
            // Up when /livez answers through it; exited when the port was taken.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                if child.try_wait().expect("wait for nginx").is_some() {
                    break;
                }
                let up = reqwest::get(format!("http://127.0.0.1:{port}/livez"))
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if up {
                    return Nginx {
                        dir,
                        child,
                        port,
                        gateways: gateways.to_vec(),
                    };
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nginx did not come up: {}",
                    std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!(
            "nginx did not start: {}",
            std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
        );
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Takes `gateway` out of rotation (`Some`) or puts every gateway back
    /// (`None`) with a graceful reload — what removing a pod from a Service's
    /// endpoints before its SIGTERM does in Kubernetes.
    pub async fn set_down(&self, gateway: Option<SocketAddr>) {
        let conf = self.dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&self.dir, self.port, &self.gateways, gateway)).expect("nginx.conf");
        let status = Command::new(nginx_binary())
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&conf)
            .args(["-s", "reload"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("nginx -s reload");
        assert!(status.success(), "nginx -s reload failed");
        // New workers take over; the old ones finish what they hold.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers, then exits (a SIGKILLed
        // master would leave its workers behind).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx_binary() -> String {
    [
        "/usr/sbin/nginx",
        "/usr/local/sbin/nginx",
        "/usr/local/nginx/sbin/nginx",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .unwrap_or("nginx")
    .to_owned()
}

/// Round robin over the gateways; a refused connection (a dead or draining
/// replica) is retried on the other one, a failing one is left out for a
/// second; WebSocket upgrades pass through.
fn nginx_conf(dir: &std::path::Path, port: u16, gateways: &[SocketAddr], down: Option<SocketAddr>) -> String {
    let dir = dir.display();
    let servers: String = gateways
        .iter()
        .map(|g| {
            let down = if Some(*g) == down { " down" } else { "" };
            format!("    server {g} max_fails=1 fail_timeout=1s{down};\n")
        })
        .collect();
    format!(
        r#"worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/tmp/body;
  proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fastcgi;
  uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  upstream gateways {{
{servers}    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_connect_timeout 1s;
      proxy_next_upstream error timeout;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      add_header X-Upstream $upstream_addr always;
    }}
  }}
}}
"#
    )
}

/// Which kind of service a replica runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Auth,
    Profile,
    Signaling,
    Notification,
    Gateway,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Auth => "auth",
            Kind::Profile => "profile",
            Kind::Signaling => "signaling",
            Kind::Notification => "notification",
            Kind::Gateway => "gateway",
        }
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub db: TestDatabase,
    /// The path from every service to PostgreSQL.
    pub pg: CutProxy,
    /// The one Redis (`Cluster::start`)…
    pub redis: Option<PrivateRedis>,
    /// …or a master, a replica and three Sentinels (`Cluster::start_with_sentinels`).
    pub sentinel: Option<SentinelRedis>,
    pub smtp: std::sync::Arc<SmtpSink>,
    pub prefix: String,
    pub replicas: Vec<(Kind, Replica)>,
    pub lb: Nginx,
    /// A client of the balancer (what users reach).
    pub client: Gateway,
}

impl Cluster {
    /// Two replicas of everything; `extra` is added to every process's environment.
    pub async fn start(extra: &[(&str, &str)]) -> Cluster {
        let redis = PrivateRedis::start().await;
        let env = vec![("REDIS_URL".to_owned(), redis.url())];
        // Boxed: the start holds ten process handles across awaits.
        Box::pin(Cluster::launch(extra, env, Some(redis), None)).await
    }

    /// Like [`Cluster::start`], on a Sentinel-managed Redis.
    pub async fn start_with_sentinels(extra: &[(&str, &str)]) -> Cluster {
        let sentinel = SentinelRedis::start().await;
        eprintln!("[cluster] Sentinel topology up: {:?}", sentinel.env());
        let env = sentinel.env();
        Box::pin(Cluster::launch(extra, env, None, Some(sentinel))).await
    }

    async fn launch(
        extra: &[(&str, &str)],
        redis_env: Vec<(String, String)>,
        redis: Option<PrivateRedis>,
        sentinel: Option<SentinelRedis>,
    ) -> Cluster {
        let db = TestDatabase::create().await;
        let pg = CutProxy::start(database_addr(db.url()).await).await;
        let smtp = std::sync::Arc::new(SmtpSink::start().await);
        let prefix = unique_prefix();
        let database_url = replace_host(db.url(), &pg.addr().to_string());
        let mut common = child_env(&database_url, &prefix);
        common.extend(
            [
                ("LOG_LEVEL", LOG_LEVEL.to_owned()),
                ("DATABASE_POOL_SIZE", "4".to_owned()),
                ("DATABASE_CONNECT_TIMEOUT_SECONDS", "2".to_owned()),
                ("GRPC_CONNECT_TIMEOUT_MS", "500".to_owned()),
                ("GRPC_REQUEST_TIMEOUT_MS", "3000".to_owned()),
                ("SMTP_SERVER", "127.0.0.1".to_owned()),
                ("SMTP_PORT", smtp.port().to_string()),
                ("FRONTEND_URL", "http://localhost:5173".to_owned()),
                ("RATE_LIMIT_AUTH", "100000".to_owned()),
                ("RATE_LIMIT_AUTH_ADDRESS", "100000".to_owned()),
                ("RATE_LIMIT_API", "100000".to_owned()),
                ("RATE_LIMIT_WINDOW_SECONDS", crate::RATE_WINDOW_SECONDS.to_string()),
                // nginx in front is the proxy whose X-Forwarded-For is believed.
                ("TRUSTED_PROXIES", "127.0.0.1".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        common.extend(redis_env);
        common.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));

        let start = |kind: Kind, n: usize, more: Vec<(String, String)>| {
            let mut env = common.clone();
            env.extend(more);
            let binary = workspace_binary(&format!("unilink-{}", kind.name()));
            async move { (kind, Replica::start(format!("{}-{n}", kind.name()), binary, env).await) }
        };
        let mut replicas = Vec::new();
        let (a1, a2, p1, p2, n1, n2) = tokio::join!(
            start(Kind::Auth, 1, vec![]),
            start(Kind::Auth, 2, vec![]),
            start(Kind::Profile, 1, vec![]),
            start(Kind::Profile, 2, vec![]),
            start(Kind::Notification, 1, vec![]),
            start(Kind::Notification, 2, vec![]),
        );
        replicas.extend([a1, a2, p1, p2, n1, n2]);
        let urls = |replicas: &[(Kind, Replica)], kind: Kind| {
            replicas
                .iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, r)| r.url())
                .collect::<Vec<_>>()
                .join(",")
        };
        let profile_urls = vec![("PROFILE_GRPC_URL".to_owned(), urls(&replicas, Kind::Profile))];
        let (s1, s2) = tokio::join!(
            start(Kind::Signaling, 1, profile_urls.clone()),
            start(Kind::Signaling, 2, profile_urls),
        );
        replicas.extend([s1, s2]);
        let upstreams: Vec<(String, String)> = [
            ("AUTH_GRPC_URL", Kind::Auth),
            ("PROFILE_GRPC_URL", Kind::Profile),
            ("SIGNALING_GRPC_URL", Kind::Signaling),
            ("NOTIFICATION_GRPC_URL", Kind::Notification),
        ]
        .into_iter()
        .map(|(key, kind)| (key.to_owned(), urls(&replicas, kind)))
        .collect();
        let (g1, g2) = tokio::join!(
            start(Kind::Gateway, 1, upstreams.clone()),
            start(Kind::Gateway, 2, upstreams)
        );
        replicas.extend([g1, g2]);
        let gateways: Vec<SocketAddr> = replicas
            .iter()
            .filter(|(k, _)| *k == Kind::Gateway)
            .map(|(_, r)| r.http)
            .collect();
        let lb = Nginx::start(&gateways).await;
        let client = Gateway::at(lb.base());
        Cluster {
            db,
            pg,
            redis,
            sentinel,
            smtp,
            prefix,
            replicas,
            lb,
            client,
        }
    }

    /// [`crate::fleet::wait_settled`] on this cluster's Redis (that of
    /// [`Cluster::start`]; not under Sentinel).
    pub async fn wait_settled(&self, producer: &str, group: &str, within: Duration) {
        let url = self.redis.as_ref().expect("a cluster on one Redis").url();
        let redis = crate::fleet::connect_redis(&url, &self.prefix).await;
        crate::fleet::wait_settled(&redis, producer, group, within).await;
        redis.close().await;
    }

    /// Replica `n` (1 or 2) of `kind`.
    pub fn replica(&mut self, kind: Kind, n: usize) -> &mut Replica {
        let at = self.position(kind, n);
        &mut self.replicas[at].1
    }

    fn position(&self, kind: Kind, n: usize) -> usize {
        self.replicas
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| *k == kind)
            .nth(n - 1)
            .map(|(at, _)| at)
            .expect("replica exists")
    }

    /// [`Cluster::replica`], to read.
    pub fn replica_ref(&self, kind: Kind, n: usize) -> &Replica {
        &self.replicas[self.position(kind, n)].1
    }

    /// A client of one gateway, bypassing the balancer.
    pub fn direct(&self, n: usize) -> Gateway {
        let http = self
            .replicas
            .iter()
            .filter(|(k, _)| *k == Kind::Gateway)
            .nth(n - 1)
            .map(|(_, r)| r.http)
            .expect("gateway exists");
        Gateway::at(format!("http://{http}"))
    }

    /// A signed-up, logged-in user through the balancer: (id, access token).
    pub async fn user(&self, name: &str) -> (String, String) {
        crate::fleet::user(&self.db, &self.smtp, &self.client, name).await
    }
}

/// The `host:port` of a `postgres://user@host:port/db` URL, resolved.
async fn database_addr(url: &str) -> SocketAddr {
    let host = url_host(url);
    tokio::net::lookup_host(host.as_str())
        .await
        .unwrap_or_else(|e| panic!("resolving {host}: {e}"))
        .next()
        .expect("an address for the database host")
}

fn url_host(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = after_scheme.split(['/', '?']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    }
}

fn replace_host(url: &str, host: &str) -> String {
    let (scheme, after_scheme) = url.split_once("://").expect("a URL");
    let end = after_scheme.find(['/', '?']).unwrap_or(after_scheme.len());
    let authority = &after_scheme[..end];
    let user = authority.rsplit_once('@').map(|(user, _)| format!("{user}@"));
    format!("{scheme}://{}{host}{}", user.unwrap_or_default(), &after_scheme[end..])
}

#[test]
fn database_urls_are_rewritten_to_the_proxy() {
    assert_eq!(url_host("postgres://postgres@127.0.0.1:5432/x"), "127.0.0.1:5432");
    assert_eq!(url_host("postgres://localhost/x?sslmode=disable"), "localhost:5432");
    assert_eq!(
        replace_host("postgres://postgres@127.0.0.1:5432/x?a=b", "127.0.0.1:9"),
        "postgres://postgres@127.0.0.1:9/x?a=b"
    );
    assert_eq!(
        replace_host("postgres://h/x", "127.0.0.1:9"),
        "postgres://127.0.0.1:9/x"
    );
}

/// `/livez` of every process that is running: liveness must never fail
/// because a dependency is down (a failing liveness probe restarts pods,
/// which would turn an outage into a crash loop).
pub async fn assert_all_live(cluster: &Cluster) {
    for (kind, replica) in &cluster.replicas {
        if !replica.is_running() {
            continue;
        }
        let response = reqwest::Client::new()
            .get(format!("http://{}/livez", replica.http))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} ({kind:?}) /livez: {e}", replica.name));
        assert_eq!(response.status(), 200, "{} /livez", replica.name);
    }
}

/// Ada calls Bob through the balancer; both call sockets are open and a
/// frame has crossed. Returns (call id, Bob's presence socket, Ada's and
/// Bob's call sockets).
pub async fn call_in_progress(
    cluster: &Cluster,
    (ada_id, ada): (&str, &str),
    (bob_id, bob): (&str, &str),
) -> (String, crate::fleet::Socket, crate::fleet::Socket, crate::fleet::Socket) {
    let gw = &cluster.client;
    let mut bob_presence = gw.socket(&format!("/calls/ws/{bob_id}"), bob).await;
    bob_presence.send_text("ping").await;
    bob_presence.expect_text("pong").await;
    let (status, call) = gw
        .post_bearer("/calls/initiate", ada, json!({"receiver_id": bob_id}))
        .await;
    assert_eq!(status, 200, "{call}");
    let call_id = call["id"].as_str().unwrap().to_owned();
    assert_eq!(bob_presence.expect("incoming_call").await["call_id"], call_id);
    let (status, body) = gw
        .post_bearer(&format!("/calls/accept/{call_id}"), bob, json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let mut ada_call = gw.socket(&format!("/ws/webrtc/{call_id}"), ada).await;
    let mut bob_call = gw.socket(&format!("/ws/webrtc/{call_id}"), bob).await;
    ada_call.expect("connection_ready").await;
    ada_call
        .send_json(json!({"type": "offer", "offer": {"type": "offer", "sdp": "v=0"}}))
        .await;
    assert_eq!(bob_call.expect("offer").await["from"], ada_id);
    (call_id, bob_presence, ada_call, bob_call)
}

/// The sum of every sample of `name` in a Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A client's call socket that reconnects through the balancer with
/// `last_seq` when its connection breaks (nothing it is sent is lost), and
/// numbers what it sends (`cid` for this client session, `cseq` from 1),
/// keeping each frame until the server's
/// `ack` and sending it again after a reconnect or a second without the ack
/// (nothing it sends is lost; the server relays a repeat once).
#[derive(Debug)]
pub struct ResumingClient {
    pub path: String,
    token: String,
    pub socket: crate::fleet::Socket,
    pub last_seq: u64,
    pub reconnects: usize,
    cid: String,
    next_cseq: u64,
    pub unacked: std::collections::BTreeMap<u64, String>,
    pub resent: usize,
    last_sent: Instant,
    /// When an ack (or a resend) last moved things on: a second without
    /// one while frames wait means they are sent again, even if the client
    /// keeps sending new ones.
    last_progress: Instant,
    /// A `user_disconnected` frame, if the peer was ever reported gone.
    pub told_disconnected: Option<Value>,
}

impl ResumingClient {
    pub fn new(path: String, token: String, socket: crate::fleet::Socket) -> ResumingClient {
        ResumingClient {
            path,
            token,
            socket,
            last_seq: 0,
            reconnects: 0,
            cid: uuid::Uuid::new_v4().simple().to_string(),
            next_cseq: 1,
            unacked: std::collections::BTreeMap::new(),
            resent: 0,
            last_sent: Instant::now(),
            last_progress: Instant::now(),
            told_disconnected: None,
        }
    }

    /// Sends `frame` with the next `cseq`; kept until acknowledged.
    pub async fn send(&mut self, mut frame: Value) {
        let cseq = self.next_cseq;
        self.next_cseq += 1;
        frame["cid"] = json!(self.cid);
        frame["cseq"] = json!(cseq);
        let text = frame.to_string();
        self.unacked.insert(cseq, text.clone());
        self.last_sent = Instant::now();
        // A broken connection shows on the next read; the frame waits.
        let _ = self.socket.try_send_text(&text).await;
    }

    async fn resend(&mut self) {
        self.last_sent = Instant::now();
        self.last_progress = Instant::now();
        let frames: Vec<String> = self.unacked.values().cloned().collect();
        self.resent += frames.len();
        for text in frames {
            if !self.socket.try_send_text(&text).await {
                break;
            }
        }
    }

    /// Waits up to a second: the next frame that is not an `ack`, or None
    /// (an ack arrived, or the second passed and unacknowledged frames were
    /// sent again). Reconnects when the socket breaks.
    pub async fn poll(&mut self, lb: &Gateway) -> Option<Value> {
        self.poll_for(lb, Duration::from_secs(1)).await
    }

    /// [`ResumingClient::poll`] waiting `wait`; unacknowledged frames are
    /// sent again only once a second has passed since the last sending.
    pub async fn poll_for(&mut self, lb: &Gateway, wait: Duration) -> Option<Value> {
        if !self.unacked.is_empty() && self.last_progress.elapsed() >= Duration::from_secs(1) {
            self.resend().await;
        }
        match self.socket.next_within(wait).await {
            Some(crate::fleet::Received::Text(text)) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "ack" {
                    let acked = frame["cseq"].as_u64().unwrap();
                    self.unacked.retain(|cseq, _| *cseq > acked);
                    self.last_progress = Instant::now();
                    return None;
                }
                if let Some(seq) = frame["seq"].as_u64() {
                    self.last_seq = seq;
                }
                if frame["type"] == "user_disconnected" {
                    self.told_disconnected = Some(frame.clone());
                }
                Some(frame)
            }
            Some(crate::fleet::Received::Closed(code, reason)) => {
                assert!([1006, 1012].contains(&code), "closed {code} {reason}");
                self.reconnects += 1;
                let path = format!("{}?last_seq={}", self.path, self.last_seq);
                self.socket = eventually("the call socket to reconnect", Duration::from_secs(10), || {
                    let (path, token) = (path.clone(), self.token.clone());
                    async move { lb.try_socket(&path, &token).await.ok() }
                })
                .await;
                self.resend().await;
                None
            }
            None => {
                if self.last_sent.elapsed() >= Duration::from_secs(1) {
                    self.resend().await;
                }
                None
            }
        }
    }

    /// The next frame that is not an `ack` (within 10 s).
    pub async fn next(&mut self, lb: &Gateway) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(frame) = self.poll(lb).await {
                return frame;
            }
            assert!(
                Instant::now() < deadline,
                "no frame within 10 s on {} after seq {} ({} reconnects)",
                self.path,
                self.last_seq,
                self.reconnects
            );
        }
    }
}
