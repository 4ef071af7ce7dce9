//! The parts of the public API the WebSocket scenarios use: opening the two
//! kinds of socket, and the `/calls/*` REST calls that ring, answer and end
//! calls.

use std::fmt;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Fail;
use crate::users::User;

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long an upgrade (or a REST call) may take before it counts as failed.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// `ws://…{path}?token=…` on the gateway at `base` (`http://…`).
pub fn ws_url(base: &str, path: &str, token: &str) -> String {
    let host = base.strip_prefix("http://").unwrap_or(base);
    format!("ws://{host}{path}?token={token}")
}

/// Why a socket did not open.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpenError {
    /// The upgrade was answered with this HTTP status.
    Status(u16),
    Timeout,
    /// Connecting or the handshake failed (the text says how).
    Io(String),
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Status(s) => write!(f, "HTTP {s}"),
            OpenError::Timeout => write!(f, "timed out after {} s", TIMEOUT.as_secs()),
            OpenError::Io(e) => f.write_str(e),
        }
    }
}

/// Buffers of a socket: idle presence sockets hold little, busy signaling
/// sockets read a lot.
#[derive(Debug, Clone, Copy)]
pub enum Buffers {
    Small,
    Large,
}

/// Opens a WebSocket (Nagle off, frames written as soon as they are sent).
pub async fn open(url: &str, buffers: Buffers) -> Result<Socket, OpenError> {
    let read = match buffers {
        Buffers::Small => 4 * 1024,
        Buffers::Large => 64 * 1024,
    };
    let config = WebSocketConfig::default().read_buffer_size(read).write_buffer_size(0);
    match tokio::time::timeout(
        TIMEOUT,
        tokio_tungstenite::connect_async_with_config(url, Some(config), true),
    )
    .await
    {
        Err(_) => Err(OpenError::Timeout),
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            Err(OpenError::Status(response.status().as_u16()))
        }
        Ok(Err(e)) => Err(OpenError::Io(io_kind(&e))),
    }
}

/// A short, aggregatable description of a connect failure.
fn io_kind(e: &tokio_tungstenite::tungstenite::Error) -> String {
    match e {
        tokio_tungstenite::tungstenite::Error::Io(io) => format!("io: {:?}", io.kind()),
        other => {
            let text = other.to_string();
            text.chars().take(60).collect()
        }
    }
}

/// Opens `user`'s presence socket and waits for the answer to a `ping`, so
/// the fleet knows the user is online when this returns.
pub async fn go_online(base: &str, user: &User) -> Result<Socket, Fail> {
    let url = ws_url(base, &format!("/calls/ws/{}", user.id), &user.token);
    let mut socket = open(&url, Buffers::Small)
        .await
        .map_err(|e| format!("presence socket of {}: {e}", user.id))?;
    socket.send(Message::text("ping")).await?;
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, socket.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "pong" => return Ok(socket),
            Ok(Some(Ok(Message::Close(close)))) => {
                return Err(format!("presence socket of {} closed: {close:?}", user.id).into());
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(format!("presence socket of {}: {e}", user.id).into()),
            Ok(None) => return Err(format!("presence socket of {} ended", user.id).into()),
            Err(_) => return Err(format!("presence socket of {}: no pong", user.id).into()),
        }
    }
}

/// How a close went, from sending the close frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct Closed {
    /// Until the server's close frame arrived (the handshake is done).
    pub answered: Option<Duration>,
    /// Until the server closed the connection (which RFC 6455 leaves to it).
    pub disconnected: Option<Duration>,
}

/// Closes a socket politely: a close frame, then reads until the server's
/// close and the end of the connection (at most [`TIMEOUT`] in all).
pub async fn close(mut socket: Socket) -> Closed {
    let started = Instant::now();
    let mut closed = Closed::default();
    if socket.close(None).await.is_err() {
        return closed;
    }
    let drained = async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(_))) => closed.answered = Some(started.elapsed()),
                Some(Ok(_)) => {}
                Some(Err(_)) => return,
                None => {
                    closed.disconnected = Some(started.elapsed());
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(TIMEOUT, drained).await;
    closed
}

/// An answer other than 2xx: the status and the start of the body.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.body)
    }
}

impl std::error::Error for Refused {}

/// `/calls/*` on one or two gateways.
#[derive(Debug, Clone)]
pub struct CallsApi {
    http: reqwest::Client,
}

/// What `POST /calls/{action}/{id}` does.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Accept,
    End,
}

impl CallsApi {
    pub fn new() -> Result<CallsApi, Fail> {
        Ok(CallsApi {
            http: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .pool_max_idle_per_host(1024)
                .tcp_nodelay(true)
                .build()?,
        })
    }

    async fn post(&self, url: String, token: &str, body: serde_json::Value) -> Result<serde_json::Value, Fail> {
        let response = self.http.post(url).bearer_auth(token).json(&body).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        if !(200..300).contains(&status) {
            let body: String = text.chars().take(200).collect();
            return Err(Box::new(Refused { status, body }));
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// `POST /calls/initiate` as `caller`; the new call's id.
    pub async fn initiate(&self, base: &str, caller: &User, receiver: &User) -> Result<String, Fail> {
        let call = self
            .post(
                format!("{base}/calls/initiate"),
                &caller.token,
                serde_json::json!({ "receiver_id": receiver.id }),
            )
            .await?;
        call["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "POST /calls/initiate answered without an id".into())
    }

    /// `POST /calls/accept/{id}` or `/calls/end/{id}` as `user`.
    pub async fn act(&self, base: &str, user: &User, action: Action, call: &str) -> Result<(), Fail> {
        let verb = match action {
            Action::Accept => "accept",
            Action::End => "end",
        };
        self.post(
            format!("{base}/calls/{verb}/{call}"),
            &user.token,
            serde_json::json!({}),
        )
        .await
        .map(|_| ())
    }

    /// Ends whatever call `user` still has open (pending or ongoing), so an
    /// interrupted earlier run does not make every ring a 409. How many.
    pub async fn end_open_calls(&self, base: &str, user: &User) -> Result<usize, Fail> {
        let mut ended = 0;
        for which in ["pending", "active"] {
            let response = self
                .http
                .get(format!("{base}/calls/{which}"))
                .bearer_auth(&user.token)
                .send()
                .await?;
            let status = response.status().as_u16();
            if status != 200 {
                let body: String = response.text().await?.chars().take(200).collect();
                return Err(Box::new(Refused { status, body }));
            }
            let call: serde_json::Value = response.json().await?;
            if let Some(id) = call["id"].as_str() {
                match self.act(base, user, Action::End, id).await {
                    Ok(()) => ended += 1,
                    // Ended meanwhile (by the peer, or a timer).
                    Err(e) if status_of(&e) == Some(409) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(ended)
    }
}

/// The HTTP status of a refused REST call, if that is what `e` is.
pub fn status_of(e: &Fail) -> Option<u16> {
    e.downcast_ref::<Refused>().map(|r| r.status)
}

/// Runs `work` for every item, at most `parallel` at a time, in order of
/// the items; the results in the same order.
pub async fn for_each<T, R, F, Fut>(items: Vec<T>, parallel: usize, work: F) -> Vec<R>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = R>,
{
    futures_util::stream::iter(items.into_iter().map(work))
        .buffered(parallel)
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_urls_come_from_the_gateway_base() {
        assert_eq!(
            ws_url("http://127.0.0.1:8000", "/calls/ws/u", "t.o.k"),
            "ws://127.0.0.1:8000/calls/ws/u?token=t.o.k"
        );
    }
}
