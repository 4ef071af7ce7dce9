//! A server-side WebSocket (RFC 6455) over the raw TCP stream, after the
//! HTTP/1 dispatcher has handed the connection over ([`super::takeover`]).
//!
//! An idle socket owns no buffer: bytes are read only when the kernel says
//! some have arrived, into a buffer that is released again as soon as every
//! complete frame in it has been taken out. A partial frame keeps its bytes
//! until the rest arrives, unless its header already announces a length that
//! will be refused: that is refused at once, so a client cannot make the
//! socket buffer a payload it will never take. Frames are parsed and written
//! with actix-http's frame codec ([`Parser`]); this module decides when
//! memory is held, and adds the checks of RFC 6455 the codec leaves out
//! (fragmented control frames, close bodies).
//!
//! actix's own WebSocket path keeps the dispatcher's 8 KiB read and 8 KiB
//! write buffers for the socket's whole life, which for 10,000 idle presence
//! sockets was most of the gateway's memory (BENCHMARKS.md).

use std::io;
use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser, ProtocolError};
use actix_web::web::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A write the client does not take within this ends the socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After our close frame, how long we wait for the client's.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes read at a time.
const READ_CHUNK: usize = 4096;

/// A message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary,
    Ping(Bytes),
    Pong,
    /// The client's close frame (answered by [`WebSocket::close`] with [`echo`]).
    Close(Option<CloseReason>),
}

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Fault {
    /// The connection is gone (EOF or an I/O error): nothing to answer.
    Gone,
    /// The client broke the protocol: close with this.
    Protocol(CloseReason),
}

fn protocol(code: CloseCode, description: &str) -> Fault {
    Fault::Protocol(CloseReason {
        code,
        description: Some(description.to_owned()),
    })
}

/// One upgraded client connection.
#[derive(Debug)]
pub struct WebSocket {
    io: TcpStream,
    /// Bytes read but not yet parsed; empty (no allocation) between frames.
    buf: BytesMut,
    /// A fragmented message being put together: its opcode and payload.
    partial: Option<(OpCode, BytesMut)>,
    /// Largest message (after reassembly) accepted; larger ones close with 1009.
    max_message: usize,
}

impl WebSocket {
    /// Takes over `io`; `leftover` are bytes the client sent right after its
    /// handshake, already read by the HTTP dispatcher.
    pub fn new(io: TcpStream, leftover: &[u8], max_message: usize) -> WebSocket {
        WebSocket {
            io,
            buf: BytesMut::from(leftover),
            partial: None,
            max_message,
        }
    }

    /// The next message. Cancel-safe: the only await is for readability, and
    /// everything read is kept in `self`.
    pub async fn next(&mut self) -> Result<Incoming, Fault> {
        loop {
            let parsed = self.parse();
            if self.buf.is_empty() {
                // Release the buffer between frames.
                self.buf = BytesMut::new();
            }
            if let Some(message) = parsed? {
                return Ok(message);
            }
            self.io.readable().await.map_err(|_| Fault::Gone)?;
            match self.fill() {
                Ok(0) => return Err(Fault::Gone),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(Fault::Gone),
            }
        }
    }

    /// Reads what the kernel has, without waiting.
    fn fill(&mut self) -> io::Result<usize> {
        let start = self.buf.len();
        self.buf.resize(start + READ_CHUNK, 0);
        let read = self.io.try_read(&mut self.buf[start..]);
        self.buf.truncate(start + *read.as_ref().unwrap_or(&0));
        read
    }

    /// Takes the next complete message out of the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<Incoming>, Fault> {
        loop {
            // Read before the parser takes the frame out of the buffer.
            let header = announced(&self.buf);
            let (fin, opcode, payload) = match Parser::parse(&mut self.buf, true, self.max_message) {
                Ok(Some(frame)) => frame,
                // The payload has not all arrived. `Parser` waits for all of
                // it before looking at its length, and `next` would buffer
                // whatever a client announced (gigabytes) until then: a
                // length that will be refused is refused from the header.
                Ok(None) => match header.and_then(|(control, len)| self.length_fault(control, len)) {
                    Some(fault) => return Err(fault),
                    None => return Ok(None),
                },
                // `Parser` says `Overflow` for a top bit set as well, and
                // checks the limit before the 125 bytes of a control frame.
                Err(ProtocolError::Overflow | ProtocolError::InvalidLength(_)) => {
                    return Err(header
                        .and_then(|(control, len)| self.length_fault(control, len))
                        .unwrap_or_else(|| protocol(CloseCode::Size, "message too large")));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "websocket protocol error");
                    return Err(protocol(CloseCode::Protocol, "malformed frame"));
                }
            };
            let payload = payload.unwrap_or_default();
            match opcode {
                // `Parser` lets a fragmented control frame through.
                OpCode::Ping | OpCode::Pong | OpCode::Close if !fin => {
                    return Err(protocol(CloseCode::Protocol, "a control frame was fragmented"));
                }
                OpCode::Text | OpCode::Binary if self.partial.is_some() => {
                    return Err(protocol(
                        CloseCode::Protocol,
                        "a new message began inside a fragmented one",
                    ));
                }
                OpCode::Text | OpCode::Binary if !fin => self.partial = Some((opcode, payload)),
                OpCode::Text | OpCode::Binary => return message(opcode, payload).map(Some),
                OpCode::Continue => {
                    let Some((first, mut so_far)) = self.partial.take() else {
                        return Err(protocol(CloseCode::Protocol, "continuation without a first frame"));
                    };
                    if so_far.len() + payload.len() > self.max_message {
                        return Err(protocol(CloseCode::Size, "message too large"));
                    }
                    so_far.extend_from_slice(&payload);
                    if fin {
                        return message(first, so_far).map(Some);
                    }
                    self.partial = Some((first, so_far));
                }
                OpCode::Ping => return Ok(Some(Incoming::Ping(payload.freeze()))),
                OpCode::Pong => return Ok(Some(Incoming::Pong)),
                OpCode::Close => return close_payload(&payload).map(|reason| Some(Incoming::Close(reason))),
                OpCode::Bad => return Err(protocol(CloseCode::Protocol, "unknown opcode")),
            }
        }
    }

    /// Why a frame announcing `len` bytes is refused, known from its header:
    /// a 64-bit length has its top bit clear (RFC 6455 §5.2), a control
    /// frame carries at most 125 bytes (§5.5), a message at most `max_message`.
    fn length_fault(&self, control: bool, len: u64) -> Option<Fault> {
        if len > i64::MAX as u64 {
            Some(protocol(CloseCode::Protocol, "a frame length has its top bit set"))
        } else if control && len > 125 {
            Some(protocol(
                CloseCode::Protocol,
                "a control frame is longer than 125 bytes",
            ))
        } else if len > self.max_message as u64 {
            Some(protocol(CloseCode::Size, "message too large"))
        } else {
            None
        }
    }

    /// Sends one text message.
    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send(text.as_bytes(), OpCode::Text).await
    }

    /// Answers a ping.
    pub async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send(payload, OpCode::Pong).await
    }

    /// Pings the client (a browser answers by itself, even when its page
    /// sends nothing).
    pub async fn ping(&mut self) -> io::Result<()> {
        self.send(b"", OpCode::Ping).await
    }

    async fn send(&mut self, payload: &[u8], opcode: OpCode) -> io::Result<()> {
        let mut frame = BytesMut::with_capacity(payload.len() + 10);
        Parser::write_message(&mut frame, payload, opcode, true, false);
        self.write(&frame).await
    }

    /// Writes all of `bytes`; a client that takes none of them for
    /// [`WRITE_TIMEOUT`] is given up on.
    async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut written = 0;
        while written < bytes.len() {
            match self.io.try_write(&bytes[written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tokio::time::timeout(WRITE_TIMEOUT, self.io.writable())
                        .await
                        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends a close frame, half-closes, and waits (up to [`LINGER`]) for the
    /// client to close too, so that late bytes from it are not answered by a
    /// reset that could make its kernel drop our close frame unread.
    pub async fn close(mut self, reason: Option<CloseReason>) {
        let mut frame = BytesMut::new();
        Parser::write_close(&mut frame, reason, false);
        if self.write(&frame).await.is_err() {
            return;
        }
        let _ = self.io.shutdown().await;
        let _ = tokio::time::timeout(LINGER, async {
            let mut scratch = [0_u8; 256];
            loop {
                if self.io.readable().await.is_err() {
                    return;
                }
                match self.io.try_read(&mut scratch) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

/// Whether the frame at the start of `buf` is a control frame, and the
/// payload length its header announces, once the length field has arrived.
fn announced(buf: &[u8]) -> Option<(bool, u64)> {
    let control = buf.first()? & 0x08 != 0;
    let len = match buf.get(1)? & 0x7f {
        126 => u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
        127 => u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?),
        len => u64::from(len),
    };
    Some((control, len))
}

/// A close frame's body: empty, or a status code an endpoint may send and a
/// UTF-8 reason (RFC 6455 §5.5.1, §7.4). Anything else fails the connection
/// rather than passing for a close without a code; the error of
/// `Parser::try_parse_close_payload` alone does not tell 1007 from 1002.
fn close_payload(payload: &[u8]) -> Result<Option<CloseReason>, Fault> {
    match Parser::try_parse_close_payload(payload) {
        Ok(reason) => Ok(reason),
        // The code alone is fine: the reason is not UTF-8 (§8.1).
        Err(_) if payload.len() > 2 && Parser::try_parse_close_payload(&payload[..2]).is_ok() => {
            Err(protocol(CloseCode::Invalid, "close reason is not valid UTF-8"))
        }
        Err(_) => Err(protocol(CloseCode::Protocol, "invalid close frame")),
    }
}

/// The close that answers the client's: its status code echoed, as RFC 6455
/// §5.5.1 suggests, without its reason; an empty close answers an empty one.
pub fn echo(theirs: Option<CloseReason>) -> Option<CloseReason> {
    theirs.map(|reason| CloseReason {
        code: reason.code,
        description: None,
    })
}

fn message(opcode: OpCode, payload: BytesMut) -> Result<Incoming, Fault> {
    if opcode == OpCode::Binary {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(payload.to_vec())
        .map(Incoming::Text)
        .map_err(|_| protocol(CloseCode::Invalid, "text frame is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected pair: our server end and a raw client end.
    async fn pair(leftover: &[u8]) -> (WebSocket, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (WebSocket::new(server, leftover, 1024), client)
    }

    fn client_frame(payload: &[u8], opcode: OpCode, fin: bool) -> Vec<u8> {
        let mut frame = BytesMut::new();
        Parser::write_message(&mut frame, payload, opcode, fin, true);
        frame.to_vec()
    }

    async fn client_write(client: &TcpStream, bytes: &[u8]) {
        let mut written = 0;
        while written < bytes.len() {
            client.writable().await.unwrap();
            if let Ok(n) = client.try_write(&bytes[written..]) {
                written += n;
            }
        }
    }

    #[tokio::test]
    async fn frames_split_anywhere_arrive_whole_and_the_buffer_is_released_between_them() {
        let mut bytes = client_frame(b"hello", OpCode::Text, true);
        bytes.extend(client_frame(b"wor", OpCode::Text, false));
        bytes.extend(client_frame(b"ld", OpCode::Continue, true));
        bytes.extend(client_frame(b"p", OpCode::Ping, true));
        // The first three bytes came with the handshake; the rest one at a time.
        let (mut socket, client) = pair(&bytes[..3]).await;
        let rest = bytes[3..].to_vec();
        let writer = tokio::spawn(async move {
            for byte in rest {
                client_write(&client, &[byte]).await;
                tokio::task::yield_now().await;
            }
            client
        });
        assert_eq!(socket.next().await, Ok(Incoming::Text("hello".into())));
        assert_eq!(socket.next().await, Ok(Incoming::Text("world".into())));
        assert_eq!(socket.next().await, Ok(Incoming::Ping(Bytes::from_static(b"p"))));
        assert_eq!(socket.buf.capacity(), 0, "an idle socket holds no read buffer");
        drop(writer.await.unwrap());
        assert_eq!(socket.next().await, Err(Fault::Gone));
    }

    #[tokio::test]
    async fn protocol_violations_name_their_close_code() {
        let cases: [(Vec<u8>, CloseCode); 9] = [
            (client_frame(&[b'x'; 2000], OpCode::Text, true), CloseCode::Size),
            (client_frame(&[0xff, 0xfe], OpCode::Text, true), CloseCode::Invalid),
            (client_frame(b"orphan", OpCode::Continue, true), CloseCode::Protocol),
            // Control frames are never fragmented (RFC 6455 §5.5).
            (client_frame(b"p", OpCode::Ping, false), CloseCode::Protocol),
            // A close body is empty or starts with a code (§5.5.1)…
            (client_frame(&[0x03], OpCode::Close, true), CloseCode::Protocol),
            // …that an endpoint may send: 1005 only stands for "no code" (§7.4.1)…
            (
                client_frame(&1005_u16.to_be_bytes(), OpCode::Close, true),
                CloseCode::Protocol,
            ),
            // …followed by a UTF-8 reason (§8.1).
            (
                client_frame(&[0x03, 0xe8, 0xff], OpCode::Close, true),
                CloseCode::Invalid,
            ),
            // A 64-bit length has its top bit clear (§5.2).
            (
                [[0x82, 0xff].as_slice(), &[0x80, 0, 0, 0, 0, 0, 0, 1], &[0; 4]].concat(),
                CloseCode::Protocol,
            ),
            (
                {
                    // A server must refuse unmasked client frames.
                    let mut frame = BytesMut::new();
                    Parser::write_message(&mut frame, b"bare", OpCode::Text, true, false);
                    frame.to_vec()
                },
                CloseCode::Protocol,
            ),
        ];
        for (bytes, code) in cases {
            let (mut socket, client) = pair(&[]).await;
            client_write(&client, &bytes).await;
            match socket.next().await {
                Err(Fault::Protocol(reason)) => assert_eq!(reason.code, code),
                other => panic!("expected a close with {code:?}, got {other:?}"),
            }
        }
        // Fragments that add up to too much are refused as they arrive.
        let (mut socket, client) = pair(&[]).await;
        client_write(&client, &client_frame(&[b'a'; 600], OpCode::Text, false)).await;
        client_write(&client, &client_frame(&[b'b'; 600], OpCode::Continue, true)).await;
        assert!(matches!(socket.next().await, Err(Fault::Protocol(r)) if r.code == CloseCode::Size));
    }

    #[tokio::test]
    async fn a_length_over_the_limit_is_refused_from_the_header_without_waiting_for_the_payload() {
        // A binary frame announcing 1 GiB, and the start of its payload; the
        // client keeps the connection open and would go on sending.
        let mut bytes = vec![0x82, 0xff];
        bytes.extend((1_u64 << 30).to_be_bytes());
        bytes.extend([0x11, 0x22, 0x33, 0x44]);
        bytes.extend([0_u8; 3000]);
        let (mut socket, client) = pair(&[]).await;
        client_write(&client, &bytes).await;
        let next = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
        assert!(
            matches!(next, Ok(Err(Fault::Protocol(ref r))) if r.code == CloseCode::Size),
            "{next:?}"
        );
        // A ping announcing more than 125 bytes is refused as soon, with 1002.
        let (mut socket, client) = pair(&[]).await;
        client_write(&client, &[0x89, 0xfe, 0x00, 0x7e, 1, 2, 3, 4, b'x']).await;
        let next = tokio::time::timeout(Duration::from_secs(5), socket.next()).await;
        assert!(
            matches!(next, Ok(Err(Fault::Protocol(ref r))) if r.code == CloseCode::Protocol),
            "{next:?}"
        );
        drop(client);
    }

    #[tokio::test]
    async fn text_goes_out_unmasked_and_close_waits_for_the_client() {
        let (mut socket, client) = pair(&[]).await;
        socket.send_text("hi").await.unwrap();
        let closing = tokio::spawn(socket.close(Some(CloseCode::Again.into())));
        let mut got = BytesMut::new();
        let mut frames = Vec::new();
        while frames.len() < 2 {
            client.readable().await.unwrap();
            let mut chunk = [0_u8; 64];
            if let Ok(n) = client.try_read(&mut chunk) {
                assert!(n > 0, "the server closed before the client did");
                got.extend_from_slice(&chunk[..n]);
            }
            while let Some((_, opcode, payload)) = Parser::parse(&mut got, false, 1024).unwrap() {
                frames.push((opcode, payload.unwrap_or_default().to_vec()));
            }
        }
        assert_eq!(frames[0], (OpCode::Text, b"hi".to_vec()));
        assert_eq!(frames[1].0, OpCode::Close);
        let reason = Parser::try_parse_close_payload(&frames[1].1).unwrap().unwrap();
        assert_eq!(reason.code, CloseCode::Again);
        assert!(!closing.is_finished(), "close lingers until the client closes");
        drop(client);
        tokio::time::timeout(Duration::from_secs(1), closing)
            .await
            .unwrap()
            .unwrap();
    }
}
