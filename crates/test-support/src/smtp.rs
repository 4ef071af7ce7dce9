//! [`SmtpSink`]: a real, minimal SMTP server on 127.0.0.1 that accepts every
//! message and records it, so tests can read what a service really sent (the
//! verification link, the login code) instead of peeking at the database.
//!
//! It speaks enough of RFC 5321 for real clients (lettre): the 220 greeting,
//! `EHLO` (multi-line 250: `8BITMIME`, `SIZE`, `AUTH PLAIN LOGIN`, no
//! `STARTTLS`) and `HELO`, `MAIL FROM`, `RCPT TO`, `DATA` (dot-unstuffing,
//! ends at `CRLF.CRLF`), `RSET`, `NOOP`, `QUIT`, and `AUTH PLAIN` / `AUTH
//! LOGIN` (any credentials are accepted; the user name is recorded).
//!
//! [`SmtpSink::stop`] closes the listener and drops every open connection, so
//! a client sees the server down; [`SmtpSink::restart`] listens again on the
//! same port. [`ReceivedMail`] decodes what arrived: headers (RFC 2047 words
//! included), `multipart/*` bodies and the `base64` / `quoted-printable`
//! transfer encodings.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Largest message the sink accepts (advertised as `SIZE`).
const MAX_MESSAGE: usize = 10 * 1024 * 1024;
/// Longest command line the sink reads.
const MAX_COMMAND: usize = 4096;
/// The name the sink gives itself in its replies.
const HOSTNAME: &str = "sink.unilink.test";

/// One message the sink accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// Envelope sender (`MAIL FROM`), without the angle brackets.
    pub from: String,
    /// Envelope recipients (`RCPT TO`), without the angle brackets.
    pub recipients: Vec<String>,
    /// The message as sent after `DATA`, dot-unstuffed, with CRLF line ends.
    pub data: String,
    /// The user name the client authenticated as, if it did.
    pub auth_user: Option<String>,
}

/// A recording SMTP server for tests.
#[derive(Debug)]
pub struct SmtpSink {
    addr: SocketAddr,
    messages: Arc<Mutex<Vec<ReceivedMail>>>,
    refusals: Refusals,
    running: Mutex<Option<Running>>,
}

#[derive(Debug)]
struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // So that `restart` can take the same port while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

impl SmtpSink {
    /// Starts listening on 127.0.0.1 on a free port.
    pub async fn start() -> SmtpSink {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).expect("bind the SMTP sink");
        let addr = listener.local_addr().expect("SMTP sink address");
        let sink = SmtpSink {
            addr,
            messages: Arc::new(Mutex::new(Vec::new())),
            refusals: Arc::new(Mutex::new(Vec::new())),
            running: Mutex::new(None),
        };
        sink.serve(listener);
        sink
    }

    /// The port it listens on (the same after [`SmtpSink::restart`]).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1`, for `SMTP_SERVER`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        lock(&self.messages).clone()
    }

    /// The messages whose envelope recipients include `address` (case-insensitive).
    pub fn messages_to(&self, address: &str) -> Vec<ReceivedMail> {
        lock(&self.messages)
            .iter()
            .filter(|m| m.recipients.iter().any(|r| r.eq_ignore_ascii_case(address)))
            .cloned()
            .collect()
    }

    /// Waits until at least `count` messages arrived and returns them all;
    /// panics with what did arrive after `timeout`.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= count {
                return messages;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "SMTP sink: timed out after {timeout:?} waiting for {count} message(s); got {}: {:?}",
                    messages.len(),
                    messages
                        .iter()
                        .map(|m| (&m.recipients, m.subject()))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// From now on, `RCPT TO` an address containing `pattern`
    /// (case-insensitive) is answered with `reply` (e.g. `550 5.1.1 No such
    /// user` for a permanent refusal, `451 4.3.0 Try later` for a temporary one).
    pub fn refuse(&self, pattern: &str, reply: &str) {
        lock(&self.refusals).push((pattern.to_ascii_lowercase(), reply.trim_end().to_owned()));
    }

    /// Whether it is listening.
    pub fn is_running(&self) -> bool {
        lock(&self.running).is_some()
    }

    /// Closes the listener and every open connection; returns once the port
    /// refuses connections. Recorded messages are kept.
    pub async fn stop(&self) {
        let running = lock(&self.running).take();
        if let Some(running) = running {
            let _ = running.stop.send(());
            let _ = running.task.await;
        }
    }

    /// Listens again on the same port (a no-op if it is running).
    pub async fn restart(&self) {
        if self.is_running() {
            return;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match bind(self.addr) {
                Ok(listener) => break listener,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("SMTP sink: cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    fn serve(&self, listener: TcpListener) {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let messages = Arc::clone(&self.messages);
        let refusals = Arc::clone(&self.refusals);
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                while connections.try_join_next().is_some() {}
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            let messages = Arc::clone(&messages);
                            let refusals = Arc::clone(&refusals);
                            connections.spawn(async move {
                                let _ = Session::new(messages, refusals).run(stream).await;
                            });
                        }
                    }
                }
            }
            drop(listener);
            connections.shutdown().await;
        });
        *lock(&self.running) = Some(Running { stop, task });
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        if let Some(running) = lock(&self.running).take() {
            // Dropping the accept task drops its listener and connection set.
            running.task.abort();
        }
    }
}

/// Recipients (substrings, lower-case) the sink refuses, with its reply.
type Refusals = Arc<Mutex<Vec<(String, String)>>>;

/// One client connection.
struct Session {
    messages: Arc<Mutex<Vec<ReceivedMail>>>,
    refusals: Refusals,
    greeted: bool,
    from: Option<String>,
    recipients: Vec<String>,
    auth_user: Option<String>,
}

enum Line {
    Text(String),
    TooLong,
    Eof,
}

async fn read_line<R: AsyncRead + Unpin>(reader: &mut BufReader<R>, max: usize) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Text(String::from_utf8_lossy(&buf).into_owned())
            });
        }
        if let Some(i) = available.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&available[..=i]);
            reader.consume(i + 1);
            break;
        }
        let n = available.len();
        buf.extend_from_slice(available);
        reader.consume(n);
        if buf.len() > max {
            // Skip the rest of the line.
            loop {
                let available = reader.fill_buf().await?;
                if available.is_empty() {
                    return Ok(Line::Eof);
                }
                if let Some(i) = available.iter().position(|b| *b == b'\n') {
                    reader.consume(i + 1);
                    return Ok(Line::TooLong);
                }
                let n = available.len();
                reader.consume(n);
            }
        }
    }
    Ok(Line::Text(String::from_utf8_lossy(&buf).into_owned()))
}

/// The address inside `<...>` after a `FROM:` / `TO:` prefix (or the bare word).
fn path_argument(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    if let Some(open) = rest.strip_prefix('<') {
        let close = open.find('>')?;
        Some(open[..close].to_owned())
    } else {
        let word = rest.split_whitespace().next()?;
        Some(word.to_owned())
    }
}

impl Session {
    fn new(messages: Arc<Mutex<Vec<ReceivedMail>>>, refusals: Refusals) -> Session {
        Session {
            messages,
            refusals,
            greeted: false,
            from: None,
            recipients: Vec::new(),
            auth_user: None,
        }
    }

    fn reset(&mut self) {
        self.from = None;
        self.recipients.clear();
    }

    async fn run(mut self, stream: TcpStream) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        write
            .write_all(format!("220 {HOSTNAME} ESMTP UniLink test sink\r\n").as_bytes())
            .await?;
        loop {
            let line = match read_line(&mut reader, MAX_COMMAND).await? {
                Line::Eof => return Ok(()),
                Line::TooLong => {
                    write.write_all(b"500 5.5.2 Line too long\r\n").await?;
                    continue;
                }
                Line::Text(line) => line,
            };
            let line = line.trim_end_matches(['\r', '\n']);
            let (verb, rest) = match line.split_once(' ') {
                Some((verb, rest)) => (verb.to_ascii_uppercase(), rest),
                None => (line.to_ascii_uppercase(), ""),
            };
            let reply: String = match verb.as_str() {
                "EHLO" => {
                    self.greeted = true;
                    self.reset();
                    format!(
                        "250-{HOSTNAME} greets {}\r\n250-8BITMIME\r\n250-SIZE {MAX_MESSAGE}\r\n250-AUTH PLAIN LOGIN\r\n250 SMTPUTF8\r\n",
                        rest.trim()
                    )
                }
                "HELO" => {
                    self.greeted = true;
                    self.reset();
                    format!("250 {HOSTNAME}\r\n")
                }
                "MAIL" => {
                    let upper = rest.to_ascii_uppercase();
                    if !self.greeted {
                        "503 5.5.1 Say EHLO first\r\n".into()
                    } else if self.from.is_some() {
                        "503 5.5.1 Sender already given\r\n".into()
                    } else if let Some(address) = upper
                        .strip_prefix("FROM:")
                        .and_then(|_| path_argument(&rest["FROM:".len()..]))
                    {
                        self.from = Some(address);
                        "250 2.1.0 OK\r\n".into()
                    } else {
                        "501 5.5.4 Syntax: MAIL FROM:<address>\r\n".into()
                    }
                }
                "RCPT" => {
                    let upper = rest.to_ascii_uppercase();
                    if self.from.is_none() {
                        "503 5.5.1 Need MAIL first\r\n".into()
                    } else if let Some(address) = upper
                        .strip_prefix("TO:")
                        .and_then(|_| path_argument(&rest["TO:".len()..]))
                        .filter(|a| !a.is_empty())
                    {
                        let lower = address.to_ascii_lowercase();
                        let refusal = lock(&self.refusals)
                            .iter()
                            .find(|(pattern, _)| lower.contains(pattern.as_str()))
                            .map(|(_, reply)| format!("{reply}\r\n"));
                        match refusal {
                            Some(reply) => reply,
                            None => {
                                self.recipients.push(address);
                                "250 2.1.5 OK\r\n".into()
                            }
                        }
                    } else {
                        "501 5.5.4 Syntax: RCPT TO:<address>\r\n".into()
                    }
                }
                "DATA" => {
                    if self.from.is_none() || self.recipients.is_empty() {
                        "503 5.5.1 Need MAIL and RCPT first\r\n".into()
                    } else {
                        write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
                        match self.read_data(&mut reader).await? {
                            None => return Ok(()),
                            Some(data) if data.len() > MAX_MESSAGE => {
                                self.reset();
                                "552 5.3.4 Message too big\r\n".into()
                            }
                            Some(data) => {
                                let number = {
                                    let mut messages = lock(&self.messages);
                                    messages.push(ReceivedMail {
                                        from: self.from.take().unwrap_or_default(),
                                        recipients: std::mem::take(&mut self.recipients),
                                        data,
                                        auth_user: self.auth_user.clone(),
                                    });
                                    messages.len()
                                };
                                format!("250 2.0.0 OK queued as {number}\r\n")
                            }
                        }
                    }
                }
                "AUTH" => match self.authenticate(rest, &mut reader, &mut write).await? {
                    Some(reply) => reply,
                    None => return Ok(()),
                },
                "RSET" => {
                    self.reset();
                    "250 2.0.0 OK\r\n".into()
                }
                "NOOP" => "250 2.0.0 OK\r\n".into(),
                "VRFY" => "252 2.1.5 Cannot verify, will accept\r\n".into(),
                "STARTTLS" => "454 4.7.0 TLS not available\r\n".into(),
                "QUIT" => {
                    write.write_all(b"221 2.0.0 Bye\r\n").await?;
                    let _ = write.shutdown().await;
                    return Ok(());
                }
                _ => "500 5.5.2 Command not recognized\r\n".into(),
            };
            write.write_all(reply.as_bytes()).await?;
        }
    }

    /// Reads the message after `354` up to `CRLF.CRLF`, undoing dot-stuffing.
    /// `None` when the client went away first.
    async fn read_data<R: AsyncRead + Unpin>(&mut self, reader: &mut BufReader<R>) -> std::io::Result<Option<String>> {
        let mut data = String::new();
        loop {
            let line = match read_line(reader, MAX_MESSAGE).await? {
                Line::Eof => return Ok(None),
                Line::TooLong => {
                    // Keep reading to the end marker, but refuse the message.
                    data.push_str(&"x".repeat(MAX_MESSAGE + 1));
                    continue;
                }
                Line::Text(line) => line,
            };
            let content = line.trim_end_matches(['\r', '\n']);
            if content == "." {
                return Ok(Some(data));
            }
            if data.len() <= MAX_MESSAGE {
                data.push_str(content.strip_prefix('.').unwrap_or(content));
                data.push_str("\r\n");
            }
        }
    }

    /// `AUTH PLAIN [initial]` or `AUTH LOGIN [user]`; any credentials pass.
    async fn authenticate<R: AsyncRead + Unpin, W: tokio::io::AsyncWrite + Unpin>(
        &mut self,
        rest: &str,
        reader: &mut BufReader<R>,
        write: &mut W,
    ) -> std::io::Result<Option<String>> {
        let mut words = rest.split_whitespace();
        let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
        let initial = words.next().map(str::to_owned);
        let mut next_line = async |prompt: &str, reader: &mut BufReader<R>| -> std::io::Result<Option<String>> {
            write.write_all(format!("334 {prompt}\r\n").as_bytes()).await?;
            Ok(match read_line(reader, MAX_COMMAND).await? {
                Line::Text(line) => Some(line.trim_end_matches(['\r', '\n']).to_owned()),
                Line::TooLong => Some(String::new()),
                Line::Eof => None,
            })
        };
        let user = match mechanism.as_str() {
            "PLAIN" => {
                let response = match initial.filter(|i| i != "=") {
                    Some(initial) => initial,
                    None => match next_line("", reader).await? {
                        Some(line) => line,
                        None => return Ok(None),
                    },
                };
                // authzid NUL authcid NUL password
                let decoded = decode_base64(response.as_bytes());
                decoded
                    .split(|b| *b == 0)
                    .nth(1)
                    .map(|u| String::from_utf8_lossy(u).into_owned())
            }
            "LOGIN" => {
                let user = match initial {
                    Some(initial) => initial,
                    None => match next_line("VXNlcm5hbWU6", reader).await? {
                        Some(line) => line,
                        None => return Ok(None),
                    },
                };
                if next_line("UGFzc3dvcmQ6", reader).await?.is_none() {
                    return Ok(None);
                }
                Some(String::from_utf8_lossy(&decode_base64(user.as_bytes())).into_owned())
            }
            _ => {
                return Ok(Some("504 5.5.4 Unrecognized authentication type\r\n".into()));
            }
        };
        self.auth_user = user;
        Ok(Some("235 2.7.0 Authentication successful\r\n".into()))
    }
}

// ---------------------------------------------------------------------------
// Reading what arrived.

/// A MIME entity: its headers (unfolded, names as written) and raw body.
#[derive(Debug, Clone)]
struct Entity<'a> {
    headers: Vec<(String, String)>,
    body: &'a str,
}

fn parse_entity(raw: &str) -> Entity<'_> {
    let (head, body) = match raw.find("\r\n\r\n") {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => match raw.find("\n\n") {
            Some(i) => (&raw[..i], &raw[i + 2..]),
            None => (raw, ""),
        },
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    Entity { headers, body }
}

impl<'a> Entity<'a> {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `type/subtype`, lower-case; `text/plain` when absent.
    fn content_type(&self) -> String {
        self.header("Content-Type")
            .and_then(|v| v.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase())
            .unwrap_or_else(|| "text/plain".to_owned())
    }

    fn content_type_param(&self, param: &str) -> Option<String> {
        let value = self.header("Content-Type")?;
        value.split(';').skip(1).find_map(|p| {
            let (name, v) = p.split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case(param)
                .then(|| v.trim().trim_matches('"').to_owned())
        })
    }

    /// The body with its transfer encoding undone, as UTF-8 (lossy).
    fn decoded_body(&self) -> String {
        let encoding = self
            .header("Content-Transfer-Encoding")
            .map(|e| e.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let bytes = match encoding.as_str() {
            "base64" => decode_base64(self.body.as_bytes()),
            "quoted-printable" => decode_quoted_printable(self.body),
            _ => self.body.as_bytes().to_vec(),
        };
        String::from_utf8_lossy(&bytes).replace("\r\n", "\n")
    }

    /// Leaf parts, depth first (the entity itself when not multipart).
    fn leaves(&self) -> Vec<Entity<'a>> {
        if !self.content_type().starts_with("multipart/") {
            return vec![self.clone()];
        }
        let Some(boundary) = self.content_type_param("boundary") else {
            return vec![self.clone()];
        };
        let delimiter = format!("--{boundary}");
        let mut parts = Vec::new();
        let mut start: Option<usize> = None;
        let mut offset = 0;
        for line in self.body.split_inclusive('\n') {
            let content = line.trim_end_matches(['\r', '\n']);
            if content.starts_with(&delimiter) {
                if let Some(s) = start {
                    // The CRLF before the delimiter belongs to the delimiter.
                    let part = &self.body[s..offset];
                    let part = part
                        .strip_suffix("\r\n")
                        .or_else(|| part.strip_suffix('\n'))
                        .unwrap_or(part);
                    parts.push(part);
                }
                if content[delimiter.len()..].starts_with("--") {
                    break;
                }
                start = Some(offset + line.len());
            }
            offset += line.len();
        }
        parts.into_iter().flat_map(|part| parse_entity(part).leaves()).collect()
    }
}

impl ReceivedMail {
    /// A top-level header, unfolded and with RFC 2047 encoded words decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        parse_entity(&self.data).header(name).map(decode_encoded_words)
    }

    /// A top-level header as sent (unfolded, encoded words left alone).
    pub fn raw_header(&self, name: &str) -> Option<String> {
        parse_entity(&self.data).header(name).map(str::to_owned)
    }

    /// The `Subject` header, decoded.
    pub fn subject(&self) -> Option<String> {
        self.header("Subject")
    }

    /// The addresses of the `To` header (lower-case not applied), e.g.
    /// `["alice@kiit.ac.in"]` for `To: "Alice" <alice@kiit.ac.in>`.
    pub fn to(&self) -> Vec<String> {
        self.raw_header("To").map(|v| addresses(&v)).unwrap_or_default()
    }

    /// The addresses of the `From` header.
    pub fn from_header(&self) -> Vec<String> {
        self.raw_header("From").map(|v| addresses(&v)).unwrap_or_default()
    }

    /// The decoded `text/plain` part (the whole decoded body of a
    /// single-part message of another type), with `\n` line ends.
    pub fn text(&self) -> String {
        let root = parse_entity(&self.data);
        let leaves = root.leaves();
        leaves
            .iter()
            .find(|e| e.content_type() == "text/plain")
            .or_else(|| leaves.first())
            .map(Entity::decoded_body)
            .unwrap_or_default()
    }

    /// The decoded `text/html` part, if there is one.
    pub fn html(&self) -> Option<String> {
        let root = parse_entity(&self.data);
        root.leaves()
            .iter()
            .find(|e| e.content_type() == "text/html")
            .map(Entity::decoded_body)
    }

    /// The content types of the leaf parts, e.g. `["text/plain", "text/html"]`.
    pub fn part_types(&self) -> Vec<String> {
        parse_entity(&self.data)
            .leaves()
            .iter()
            .map(Entity::content_type)
            .collect()
    }

    /// The token that follows `marker` in the text part: the characters up to
    /// the first space, quote, angle bracket or line end, percent-decoded.
    /// `mail.token_after("verify?token=")` reads a verification token.
    pub fn token_after(&self, marker: &str) -> Option<String> {
        token_after(&self.text(), marker)
    }

    /// The first run of exactly `len` ASCII digits in the text part (not part
    /// of a longer number): `mail.digits(6)` reads a one-time code.
    pub fn digits(&self, len: usize) -> Option<String> {
        digit_run(&self.text(), len)
    }
}

/// See [`ReceivedMail::token_after`].
pub fn token_after(text: &str, marker: &str) -> Option<String> {
    let start = text.find(marker)? + marker.len();
    let token: String = text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '<' | '>' | '&' | ')' | ']'))
        .collect();
    (!token.is_empty()).then(|| percent_decode(&token))
}

/// See [`ReceivedMail::digits`].
pub fn digit_run(text: &str, len: usize) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i - start == len {
                return Some(text[start..i].to_owned());
            }
        } else {
            i += 1;
        }
    }
    None
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Standard or URL-safe base64, padding and whitespace ignored.
fn decode_base64(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn decode_quoted_printable(input: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut lines = input.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.trim_end_matches([' ', '\t']);
        let (content, soft) = match line.strip_suffix('=') {
            Some(content) => (content, true),
            None => (line, false),
        };
        let bytes = content.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'='
                && let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                )
            {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        if !soft && lines.peek().is_some() {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// Decodes RFC 2047 `=?charset?B|Q?text?=` words (UTF-8 and ASCII charsets).
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut last_was_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, candidate) = rest.split_at(start);
        let decoded = (|| {
            let inner = &candidate[2..];
            let (_charset, inner) = inner.split_once('?')?;
            let (encoding, inner) = inner.split_once('?')?;
            let end = inner.find("?=")?;
            let text = &inner[..end];
            let bytes = match encoding.to_ascii_uppercase().as_str() {
                "B" => decode_base64(text.as_bytes()),
                "Q" => decode_quoted_printable(&text.replace('_', " ")),
                _ => return None,
            };
            let consumed = 2 + (candidate.len() - 2 - inner.len()) + end + 2;
            Some((String::from_utf8_lossy(&bytes).into_owned(), consumed))
        })();
        match decoded {
            Some((text, consumed)) => {
                // Whitespace between two encoded words is dropped.
                if !(last_was_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&text);
                rest = &candidate[consumed..];
                last_was_word = true;
            }
            None => {
                out.push_str(before);
                out.push_str("=?");
                rest = &candidate[2..];
                last_was_word = false;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The bare addresses of an address-list header value.
fn addresses(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut depth = 0;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => depth += 1,
            '>' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .iter()
        .filter_map(|item| {
            let item = item.trim();
            let address = match (item.rfind('<'), item.rfind('>')) {
                (Some(open), Some(close)) if open < close => &item[open + 1..close],
                _ => item,
            };
            let address = address.trim();
            (!address.is_empty()).then(|| address.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lettre::message::{Mailbox, MultiPart, SinglePart, header::ContentType};
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    fn transport(sink: &SmtpSink) -> AsyncSmtpTransport<Tokio1Executor> {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(sink.host())
            .port(sink.port())
            .timeout(Some(Duration::from_secs(5)))
            .build()
    }

    fn message(to: &str, subject: &str, text: &str, html: &str) -> Message {
        Message::builder()
            .from("UniLink <noreply@unilink.test>".parse::<Mailbox>().unwrap())
            .to(to.parse::<Mailbox>().unwrap())
            .subject(subject)
            .multipart(MultiPart::alternative_plain_html(text.to_owned(), html.to_owned()))
            .unwrap()
    }

    #[tokio::test]
    async fn records_a_multipart_message_sent_by_lettre() {
        let sink = SmtpSink::start().await;
        let token = "AbC-123_xyz".repeat(8);
        let long_link = format!("http://localhost:5173/verify?token={token}");
        // Non-ASCII text and a long line force quoted-printable or base64.
        let text = format!("Grüße, Zoë!\n\nOpen {long_link}\n\nYour code: 042917 (valid 10 minutes)\n.leading dot\n");
        let html = format!("<p>Grüße &amp; hello</p><a href=\"{long_link}\">verify</a>");
        transport(&sink)
            .send(message(
                "\"Zoë, Student\" <zoe@kiit.ac.in>",
                "Vérifiez — UniLink",
                &text,
                &html,
            ))
            .await
            .unwrap();
        let mails = sink.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(mails.len(), 1);
        let mail = &mails[0];
        assert_eq!(mail.from, "noreply@unilink.test");
        assert_eq!(mail.recipients, vec!["zoe@kiit.ac.in".to_owned()]);
        assert_eq!(mail.to(), vec!["zoe@kiit.ac.in".to_owned()]);
        assert_eq!(mail.from_header(), vec!["noreply@unilink.test".to_owned()]);
        assert_eq!(mail.subject().as_deref(), Some("Vérifiez — UniLink"));
        assert_eq!(mail.part_types(), vec!["text/plain", "text/html"]);
        assert_eq!(mail.text(), text);
        assert_eq!(mail.html().as_deref(), Some(html.as_str()));
        assert_eq!(mail.token_after("verify?token=").as_deref(), Some(token.as_str()));
        assert_eq!(mail.digits(6).as_deref(), Some("042917"));
        assert_eq!(mail.auth_user, None);
        assert_eq!(sink.messages_to("ZOE@kiit.ac.in").len(), 1);
    }

    #[tokio::test]
    async fn plain_ascii_and_base64_bodies_are_decoded() {
        let sink = SmtpSink::start().await;
        let plain = Message::builder()
            .from("a@unilink.test".parse::<Mailbox>().unwrap())
            .to("b@unilink.test".parse::<Mailbox>().unwrap())
            .subject("plain")
            .singlepart(SinglePart::plain("hello\r\n..two dots\r\n".to_owned()))
            .unwrap();
        let binary = Message::builder()
            .from("a@unilink.test".parse::<Mailbox>().unwrap())
            .to("c@unilink.test".parse::<Mailbox>().unwrap())
            .subject("b64")
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .header(lettre::message::header::ContentTransferEncoding::Base64)
                    .body("code 123456 ünïcode".to_owned()),
            )
            .unwrap();
        let transport = transport(&sink);
        transport.send(plain).await.unwrap();
        transport.send(binary).await.unwrap();
        let mails = sink.wait_for(2, Duration::from_secs(5)).await;
        // Trailing line ends of a single-part body are the SMTP framing's.
        assert_eq!(mails[0].text().trim_end(), "hello\n..two dots");
        assert_eq!(mails[0].html(), None);
        assert_eq!(mails[1].text().trim_end(), "code 123456 ünïcode");
        assert_eq!(mails[1].digits(6).as_deref(), Some("123456"));
        assert_eq!(mails[1].digits(7), None);
    }

    #[tokio::test]
    async fn accepts_authentication() {
        let sink = SmtpSink::start().await;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(sink.host())
            .port(sink.port())
            .credentials(Credentials::new("mailer".into(), "s3cret".into()))
            .timeout(Some(Duration::from_secs(5)))
            .build();
        transport
            .send(message("x@kiit.ac.in", "auth", "body", "<p>body</p>"))
            .await
            .unwrap();
        let mails = sink.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(mails[0].auth_user.as_deref(), Some("mailer"));
    }

    #[tokio::test]
    async fn stop_refuses_and_drops_connections_and_restart_keeps_the_port() {
        let sink = SmtpSink::start().await;
        let port = sink.port();
        // An idle connection that is open when the sink stops.
        let mut idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut greeting = [0u8; 64];
        let n = tokio::io::AsyncReadExt::read(&mut idle, &mut greeting).await.unwrap();
        assert!(greeting[..n].starts_with(b"220 "));

        sink.stop().await;
        assert!(!sink.is_running());
        assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
        let closed = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncReadExt::read(&mut idle, &mut greeting),
        )
        .await
        .expect("the open connection is closed");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        let failed = transport(&sink)
            .send(message("x@kiit.ac.in", "down", "body", "<p>body</p>"))
            .await;
        assert!(failed.is_err());

        sink.restart().await;
        assert_eq!(sink.port(), port);
        transport(&sink)
            .send(message("x@kiit.ac.in", "up", "body", "<p>body</p>"))
            .await
            .unwrap();
        let mails = sink.wait_for(1, Duration::from_secs(5)).await;
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].subject().as_deref(), Some("up"));
    }

    #[tokio::test]
    async fn speaks_the_protocol_by_hand() {
        let sink = SmtpSink::start().await;
        let stream = TcpStream::connect(("127.0.0.1", sink.port())).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let mut expect = async |send: &str, code: &str| {
            if !send.is_empty() {
                write.write_all(send.as_bytes()).await.unwrap();
            }
            loop {
                let Line::Text(line) = read_line(&mut reader, 4096).await.unwrap() else {
                    panic!("connection closed");
                };
                assert!(line.starts_with(code), "{send:?} answered {line:?}, expected {code}");
                if line.as_bytes().get(3) != Some(&b'-') {
                    return line;
                }
            }
        };
        expect("", "220").await;
        expect("MAIL FROM:<a@b>\r\n", "503").await;
        expect("HELO me\r\n", "250").await;
        let ehlo = expect("EHLO me\r\n", "250").await;
        assert_eq!(ehlo.trim_end(), "250 SMTPUTF8");
        expect("RCPT TO:<x@y>\r\n", "503").await;
        expect("DATA\r\n", "503").await;
        expect("MAIL FROM:<a@b> BODY=8BITMIME\r\n", "250").await;
        expect("RSET\r\n", "250").await;
        expect("MAIL FROM:<>\r\n", "250").await;
        expect("RCPT TO:<x@y>\r\n", "250").await;
        expect("RCPT TO:<z@y>\r\n", "250").await;
        expect("NOOP\r\n", "250").await;
        expect("DATA\r\n", "354").await;
        expect("Subject: hi\r\n\r\n..dot\r\nline\r\n.\r\n", "250").await;
        expect("AUTH LOGIN\r\n", "334").await;
        expect("dXNlcg==\r\n", "334").await;
        expect("cGFzcw==\r\n", "235").await;
        expect("AUTH PLAIN AHBsYWluAHBhc3M=\r\n", "235").await;
        expect("BOGUS\r\n", "500").await;
        expect("QUIT\r\n", "221").await;
        let mails = sink.messages();
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].from, "");
        assert_eq!(mails[0].recipients, vec!["x@y".to_owned(), "z@y".to_owned()]);
        assert_eq!(mails[0].data, "Subject: hi\r\n\r\n.dot\r\nline\r\n");
        assert_eq!(mails[0].text(), ".dot\nline\n");
    }

    #[test]
    fn helpers_decode_and_extract() {
        assert_eq!(decode_base64(b"aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(decode_quoted_printable("a=3Db=\r\nc\r\nd"), b"a=bc\r\nd");
        assert_eq!(decode_encoded_words("=?utf-8?b?w6k=?= =?utf-8?q?t=C3=A9?= x"), "été x");
        assert_eq!(addresses("\"Doe, J\" <j@x.org>, k@y.org"), vec!["j@x.org", "k@y.org"]);
        assert_eq!(
            token_after("see http://h/verify?token=a%2Bb_c.\nnext", "verify?token=").as_deref(),
            Some("a+b_c.")
        );
        assert_eq!(
            digit_run("2025-01-01: 1234567 then 654321.", 6).as_deref(),
            Some("654321")
        );
    }
}
