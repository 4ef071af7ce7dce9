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
        let mut child = Command::new(redis_server())
            .args(ports)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.args)
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
