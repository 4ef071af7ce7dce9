//! Data stores that a test can take away and give back.
//!
//! * [`PrivateRedis`] — a `redis-server` of the test's own on a free port,
//!   killed and restarted empty (it keeps nothing on disk, like production's
//!   cache-only Redis after a crash).
//! * [`CutProxy`] — a TCP forwarder in front of a server (PostgreSQL, …):
//!   [`CutProxy::cut`] resets every connection through it and refuses new
//!   ones, exactly what clients see when the server host goes away;
//!   [`CutProxy::restore`] listens again on the same port.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A private `redis-server` on a free loopback port; killed when dropped.
#[derive(Debug)]
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
    /// Arguments after the port (a replica's `--replicaof`, TLS files…).
    args: Vec<String>,
    /// Listening with TLS only (`--tls-port`): readiness is a TCP connect.
    tls: bool,
}

impl PrivateRedis {
    /// Starts a server on a free port and waits until it answers.
    pub async fn start() -> PrivateRedis {
        Self::start_with(Vec::new()).await
    }

    /// Like [`PrivateRedis::start`], with more `redis-server` arguments.
    pub async fn start_with(args: Vec<String>) -> PrivateRedis {
        Self::start_on(args, false).await
    }

    /// A server that speaks only TLS on its port (`--port 0 --tls-port`),
    /// with `args` naming its certificate files.
    pub async fn start_tls(args: Vec<String>) -> PrivateRedis {
        Self::start_on(args, true).await
    }

    async fn start_on(args: Vec<String>, tls: bool) -> PrivateRedis {
        for _ in 0..20 {
            let mut server = PrivateRedis {
                port: crate::closed_port(),
                child: None,
                args: args.clone(),
                tls,
            };
            // Another test may take the port between its probe and our bind:
            // the server then exits, and we try another port.
            if server.launch().await {
                return server;
            }
        }
        panic!("could not start a private redis-server");
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again, empty, on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.launch().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server could not listen on {} again",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Spawns the server; true once it answers PING, false if it exited.
    async fn launch(&mut self) -> bool {
        let port = self.port.to_string();
        let ports: Vec<&str> = if self.tls {
            vec!["--port", "0", "--tls-port", &port]
        } else {
            vec!["--port", &port]
        };
        // A configuration file (a Sentinel's) must come first.
        let split = usize::from(self.args.first().is_some_and(|a| !a.starts_with("--")));
        let (conf, args) = self.args.split_at(split);
        let mut child = Command::new(redis_server())
            .args(conf)
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting redis-server");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().expect("wait for redis-server").is_some() {
                return false;
            }
            let ready = if self.tls {
                TcpStream::connect(("127.0.0.1", self.port)).await.is_ok()
            } else {
                ping(self.port).await
            };
            if ready {
                self.child = Some(child);
                return true;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `redis-server` binary.
pub fn redis_server() -> String {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("redis-server")
        .to_owned()
}

/// Whether a plaintext Redis on `port` answers PING.
pub async fn ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await.ok()?;
        (&buf == b"+PONG\r\n").then_some(())
    };
    tokio::time::timeout(Duration::from_secs(1), attempt)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// A TCP forwarder on a loopback port that can be cut and restored.
#[derive(Debug)]
pub struct CutProxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl CutProxy {
    /// Forwards a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let proxy = CutProxy {
            addr,
            target,
            state: Mutex::new(None),
        };
        proxy.serve(listener);
        proxy
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Resets every connection and stops listening (new connections are refused).
    pub async fn cut(&self) {
        let running = self.state.lock().expect("proxy state").take();
        if let Some(running) = running {
            running.stop.cancel();
            let _ = running.task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match reusable_listener(self.addr) {
                Ok(listener) => break listener,
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "proxy could not listen on {} again: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, self.target, stop.clone()));
        *self.state.lock().expect("proxy state") = Some(Running { stop, task });
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        if let Some(running) = self.state.lock().expect("proxy state").take() {
            running.stop.cancel();
            running.task.abort();
        }
    }
}

fn reusable_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, stop: CancellationToken) {
    let connections = Arc::new(Mutex::new(Vec::<JoinHandle<()>>::new()));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let task = tokio::spawn(forward(client, target));
                let mut open = connections.lock().expect("connections");
                open.retain(|t| !t.is_finished());
                open.push(task);
            }
        }
    }
    drop(listener);
    // Dropping both sockets of every forwarded connection: the clients see
    // their connections closed, as when the server goes away.
    for task in connections.lock().expect("connections").drain(..) {
        task.abort();
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr) {
    let Ok(Ok(mut server)) = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_cut_proxy_resets_connections_refuses_new_ones_and_comes_back() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = CutProxy::start(echo_addr).await;
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        conn.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");

        proxy.cut().await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "open connection closed: {read:?}"
        );
        assert!(
            TcpStream::connect(proxy.addr()).await.is_err(),
            "new connections refused"
        );

        proxy.restore().await;
        let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
        conn.write_all(b"ok").await.unwrap();
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
    }

    #[tokio::test]
    async fn a_private_redis_restarts_empty_on_the_same_port() {
        let mut redis = PrivateRedis::start().await;
        let port = redis.port();
        assert!(ping(port).await);
        redis.kill();
        assert!(!ping(port).await, "down after kill");
        redis.restart().await;
        assert_eq!(redis.port(), port);
        assert!(ping(port).await);
    }
}

/// A Redis master, one replica and three Sentinels (quorum 2) on loopback,
/// as operators run Redis for high availability. The master can be killed
/// (`kill -9`) and started again; Sentinel promotes the replica and turns
/// the old master into a replica when it returns.
#[derive(Debug)]
pub struct SentinelRedis {
    /// The two data nodes; which is master changes with failovers.
    pub nodes: Vec<PrivateRedis>,
    sentinels: Vec<PrivateRedis>,
    _dir: crate::stores::TempDir,
}

/// The name the Sentinels know the master by.
pub const SENTINEL_MASTER: &str = "unilink";

impl SentinelRedis {
    /// Starts the five processes and waits until every Sentinel knows the
    /// replica and the two other Sentinels.
    pub async fn start() -> SentinelRedis {
        // Replication writes RDB files: into this test's folder, not the
        // working directory.
        let dir = crate::stores::TempDir::new("sentinel");
        let data = |name: &str| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(&path).expect("create a Redis data folder");
            vec!["--dir".to_owned(), path.display().to_string()]
        };
        let master = PrivateRedis::start_with(data("master")).await;
        let mut replica_args = data("replica");
        replica_args.extend(["--replicaof".into(), "127.0.0.1".into(), master.port().to_string()]);
        let replica = PrivateRedis::start_with(replica_args).await;
        let mut sentinels = Vec::new();
        for n in 0..3 {
            let conf = dir.path().join(format!("sentinel-{n}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    master.port()
                ),
            )
            .expect("write sentinel.conf");
            sentinels.push(PrivateRedis::start_sentinel(&conf).await);
        }
        let topology = SentinelRedis {
            nodes: vec![master, replica],
            sentinels,
            _dir: dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut ready = true;
            for sentinel in &topology.sentinels {
                let reply = command(sentinel.port(), &["SENTINEL", "MASTER", SENTINEL_MASTER]).await;
                ready &= reply
                    .as_deref()
                    .and_then(|r| field(r, "num-other-sentinels"))
                    .as_deref()
                    == Some("2")
                    && reply.as_deref().and_then(|r| field(r, "num-slaves")).as_deref() == Some("1");
            }
            if ready {
                return topology;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the Sentinels did not find each other and the replica within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `REDIS_URL`, `REDIS_SENTINELS` and `REDIS_SENTINEL_MASTER` for a service.
    pub fn env(&self) -> Vec<(String, String)> {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        vec![
            // The scheme (and credentials, database) only: the hosts are the Sentinels'.
            ("REDIS_URL".to_owned(), "redis://127.0.0.1:6379".to_owned()),
            ("REDIS_SENTINELS".to_owned(), sentinels.join(",")),
            ("REDIS_SENTINEL_MASTER".to_owned(), SENTINEL_MASTER.to_owned()),
        ]
    }

    /// The master's port, as the first Sentinel that answers says.
    pub async fn master_port(&self) -> Option<u16> {
        for sentinel in &self.sentinels {
            if let Some(reply) = command(
                sentinel.port(),
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER],
            )
            .await
            {
                return bulk_strings(&reply).get(1).and_then(|p| p.parse().ok());
            }
        }
        None
    }

    /// The node that is master now.
    pub async fn master(&mut self) -> &mut PrivateRedis {
        let port = self.master_port().await.expect("a Sentinel names the master");
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .expect("the master is one of the nodes")
    }

    /// Waits until the Sentinels name a master other than `old` that
    /// answers as one (a replica promoted); returns its port.
    pub async fn wait_for_new_master(&self, old: u16, within: Duration) -> u16 {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(port) = self.master_port().await
                && port != old
                && command(port, &["ROLE"]).await.is_some_and(|r| r.contains("master"))
            {
                return port;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no new master within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the node on `port` runs as a replica of the master.
    pub async fn wait_until_replica(&self, port: u16, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let reply = command(port, &["INFO", "replication"]).await.unwrap_or_default();
            if reply.contains("role:slave") && reply.contains("master_link_status:up") {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "node {port} did not become a replica within {within:?}: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl PrivateRedis {
    /// A Sentinel with `conf` (which it rewrites) on a free port.
    pub async fn start_sentinel(conf: &std::path::Path) -> PrivateRedis {
        Self::start_on(vec![conf.display().to_string(), "--sentinel".into()], false).await
    }
}

/// Sends one command to a plaintext Redis (or Sentinel) and returns the raw
/// reply, read until the server pauses; `None` if it does not answer.
pub async fn command(port: u16, args: &[&str]) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let wait = if reply.is_empty() { 1000 } else { 50 };
            match tokio::time::timeout(Duration::from_millis(wait), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Err(_) => break,
                Ok(Ok(n)) => reply.extend_from_slice(&buf[..n]),
                Ok(Err(_)) => return None,
            }
        }
        (!reply.is_empty()).then(|| String::from_utf8_lossy(&reply).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()
        .flatten()
}

/// The bulk strings of a RESP reply, in order.
fn bulk_strings(reply: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = reply.split("\r\n");
    while let Some(line) = lines.next() {
        if line.starts_with('$')
            && line != "$-1"
            && let Some(value) = lines.next()
        {
            out.push(value.to_owned());
        }
    }
    out
}

/// The value after `name` in a RESP array of name/value bulk strings.
fn field(reply: &str, name: &str) -> Option<String> {
    let strings = bulk_strings(reply);
    strings
        .iter()
        .position(|s| s == name)
        .and_then(|i| strings.get(i + 1).cloned())
}
