//! A stand-in for Sentry's ingest API: an HTTP server on a loopback port
//! that accepts `POST /api/<project>/envelope/` (and `/store/`), answers
//! `200 {}` and records every body, so tests can check what a process
//! reported (and that no secret was in it).
//!
//! ```no_run
//! # async fn demo() {
//! let sink = unilink_test_support::sentry::SentrySink::start().await;
//! // SENTRY_DSN=sink.dsn() for the process under test, then:
//! let events = sink.events();
//! # }
//! ```

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One request the sink received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Request headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The fake Sentry server; stops when dropped.
#[derive(Debug)]
pub struct SentrySink {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SentrySink {
    /// Listens on `127.0.0.1:<free port>`.
    pub async fn start() -> SentrySink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the sentry sink");
        let port = listener.local_addr().expect("local addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, store.clone()));
            }
        });
        SentrySink { port, received, task }
    }

    /// A DSN pointing here (project 1).
    pub fn dsn(&self) -> String {
        format!("http://publickey@127.0.0.1:{}/1", self.port)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().expect("sink lock").clone()
    }

    /// Every body received so far, as text (for "no secret anywhere" checks).
    pub fn raw(&self) -> String {
        self.requests()
            .iter()
            .map(|r| r.body.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The events (envelope items of type `event`, and `/store/` bodies) received so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        for request in self.requests() {
            if request.path.ends_with("/store/") {
                events.extend(serde_json::from_str(&request.body).ok());
            } else {
                events.extend(envelope_events(&request.body));
            }
        }
        events
    }
}

impl Drop for SentrySink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `event` items of an envelope: a header line, then per item a header
/// line (with `type` and, usually, `length`) and the payload.
pub fn envelope_events(body: &str) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    let Some((_, mut rest)) = body.split_once('\n') else {
        return events;
    };
    while !rest.is_empty() {
        let Some((header, after)) = rest.split_once('\n') else {
            break;
        };
        let Ok(header) = serde_json::from_str::<serde_json::Value>(header) else {
            break;
        };
        let (payload, next) = match header["length"].as_u64().map(|n| n as usize) {
            Some(n) if n <= after.len() => (&after[..n], after[n..].strip_prefix('\n').unwrap_or(&after[n..])),
            _ => after.split_once('\n').unwrap_or((after, "")),
        };
        if header["type"] == "event"
            && let Ok(event) = serde_json::from_str(payload)
        {
            events.push(event);
        }
        rest = next;
    }
    events
}

async fn serve(stream: TcpStream, store: Arc<Mutex<Vec<Received>>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).await.unwrap_or(0) == 0 {
                    return;
                }
                let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
                    return;
                };
                let mut chunk = vec![0; size + 2];
                if reader.read_exact(&mut chunk).await.is_err() {
                    return;
                }
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else {
            let length = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            body.resize(length, 0);
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
        }
        store.lock().expect("sink lock").push(Received {
            path,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        if reader.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_items_are_split_by_length_or_line() {
        let body = concat!(
            "{\"event_id\":\"1\"}\n",
            "{\"type\":\"event\",\"length\":13}\n",
            "{\"message\":1}\n",
            "{\"type\":\"client_report\"}\n",
            "{\"x\":2}\n",
            "{\"type\":\"event\"}\n",
            "{\"message\":3}\n",
        );
        let events = envelope_events(body);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0]["message"], 1);
        assert_eq!(events[1]["message"], 3);
    }
}
