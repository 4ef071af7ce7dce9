//! The gateway's WebSocket against an independent implementation of RFC
//! 6455, tungstenite's client, one protocol corner at a time: fragments with
//! a ping between them, pings answered, messages at the gateway's two
//! limits, text that is not UTF-8, the close handshake, and frames that
//! break the rules. The gateway's frames are read by tungstenite, which
//! refuses whatever a server may not send.
//!
//! The presence socket is used throughout: signaling answers a text
//! containing `"ping"` with `{"type":"pong"}`, which shows that a message
//! reached it whole. (The socket's framing alone is fuzzed in
//! `src/ws/fuzz_tests.rs`.)

use unilink_test_support::fleet as common;

use std::time::Duration;

use common::{Fleet, Gateway};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What signaling answers to a presence text containing `"ping"`.
const PONG: &str = r#"{"type":"pong"}"#;
/// The gateway's limit for text it relays (`MAX_FRAME_BYTES`) and for a
/// message at all (`MAX_WIRE_FRAME_BYTES`).
const RELAYED_LIMIT: usize = 64 * 1024;
const MESSAGE_LIMIT: usize = 1024 * 1024;

/// A presence-ping text of exactly `len` bytes.
fn ping_text(len: usize) -> String {
    let mut text = String::from(r#"{"type":"ping","pad":""#);
    text.push_str(&"x".repeat(len - text.len() - 2));
    text.push_str(r#""}"#);
    assert_eq!(text.len(), len);
    text
}

fn fragment(payload: &[u8], opcode: Data, fin: bool) -> Message {
    Message::Frame(Frame::message(payload.to_vec(), OpCode::Data(opcode), fin))
}

/// The next message from the gateway other than its own liveness pings
/// (which tungstenite answers), within 10 s.
async fn next(ws: &mut Ws) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => {}
            Ok(Some(Ok(message))) => return message,
            Ok(Some(Err(e))) => panic!("tungstenite refused what the gateway sent: {e}"),
            Ok(None) => panic!("the connection ended without a close frame"),
            Err(_) => panic!("nothing from the gateway within 10 s"),
        }
    }
}

/// Reads until the gateway's close frame; its code.
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match next(ws).await {
            Message::Close(Some(frame)) => return u16::from(frame.code),
            Message::Close(None) => panic!("the gateway closed without a code"),
            _ => {}
        }
    }
}

async fn expect_text(ws: &mut Ws, expected: &str) {
    match next(ws).await {
        Message::Text(text) => assert_eq!(text.as_str(), expected),
        other => panic!("expected the text {expected:?}, got {other:?}"),
    }
}

async fn open(gw: &Gateway, path: &str, token: &str) -> Ws {
    gw.socket(path, token).await.into_inner()
}

#[tokio::test]
async fn the_gateway_keeps_rfc_6455_with_an_independent_client() {
    let fleet = Fleet::start().await;
    // Every corner below opens a socket of its own.
    let gw = fleet.gateway(&[("MAX_SOCKETS_PER_USER", "100")]).await;
    let (id, token) = fleet.user(&gw, "framing").await;
    let path = format!("/calls/ws/{id}");

    // A text message in three fragments, cut inside a three-byte character,
    // with a ping between two of them: the ping is answered at once, with its
    // payload, and the message reaches signaling whole.
    let mut ws = open(&gw, &path, &token).await;
    let message = r#"{"type":"ping","note":"5 €"}"#.as_bytes();
    let euro = message.iter().position(|&b| b == 0xE2).unwrap();
    ws.send(fragment(&message[..10], Data::Text, false)).await.unwrap();
    ws.send(fragment(&message[10..=euro], Data::Continue, false))
        .await
        .unwrap();
    ws.send(Message::Ping(b"between fragments".to_vec().into()))
        .await
        .unwrap();
    ws.send(fragment(&message[euro + 1..], Data::Continue, true))
        .await
        .unwrap();
    match next(&mut ws).await {
        Message::Pong(payload) => assert_eq!(&payload[..], b"between fragments"),
        other => panic!("expected the pong first, got {other:?}"),
    }
    expect_text(&mut ws, PONG).await;

    // A ping with the largest payload a control frame may carry.
    let payload: Vec<u8> = (0..125).collect();
    ws.send(Message::Ping(payload.clone().into())).await.unwrap();
    match next(&mut ws).await {
        Message::Pong(answer) => assert_eq!(&answer[..], &payload[..]),
        other => panic!("expected a pong, got {other:?}"),
    }

    // At the relay limit (64 KiB, a 64-bit length on the wire) the message is
    // relayed; one byte more is answered with an error and the socket stays;
    // so does a message of exactly the message limit (1 MiB).
    ws.send(Message::text(ping_text(RELAYED_LIMIT))).await.unwrap();
    expect_text(&mut ws, PONG).await;
    ws.send(Message::text(ping_text(RELAYED_LIMIT + 1))).await.unwrap();
    expect_text(
        &mut ws,
        r#"{"type":"error","message":"message too large (at most 64 KiB)"}"#,
    )
    .await;
    ws.send(Message::text(ping_text(MESSAGE_LIMIT))).await.unwrap();
    expect_text(
        &mut ws,
        r#"{"type":"error","message":"message too large (at most 64 KiB)"}"#,
    )
    .await;
    ws.send(Message::text("ping")).await.unwrap();
    expect_text(&mut ws, "pong").await;

    // The client closes with a code: the gateway answers with the same code.
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4321),
        reason: "done here".into(),
    })))
    .await
    .unwrap();
    assert_eq!(close_code(&mut ws).await, 4321, "the close code is echoed");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("the gateway ends the connection after the close handshake")
            .is_none()
    );

    // A message over the limit, whole or in fragments each under it: 1009.
    let mut ws = open(&gw, &path, &token).await;
    ws.send(Message::text(ping_text(MESSAGE_LIMIT + 1))).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009, "a message over 1 MiB");
    let mut ws = open(&gw, &path, &token).await;
    let half = vec![b'x'; MESSAGE_LIMIT / 2];
    ws.send(fragment(&half, Data::Binary, false)).await.unwrap();
    ws.send(fragment(&half, Data::Continue, false)).await.unwrap();
    ws.send(fragment(b"!", Data::Continue, true)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009, "fragments adding up to over 1 MiB");

    // Text that is not UTF-8: 1007, whole or only once put together.
    let mut ws = open(&gw, &path, &token).await;
    ws.send(fragment(b"caf\xc3\x28", Data::Text, true)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1007, "text that is not UTF-8");
    let mut ws = open(&gw, &path, &token).await;
    ws.send(fragment(b"\"ping\" \xe2\x82", Data::Text, false))
        .await
        .unwrap();
    ws.send(fragment(b"!", Data::Continue, true)).await.unwrap();
    assert_eq!(
        close_code(&mut ws).await,
        1007,
        "a character cut short by the last fragment"
    );

    // Frames that break the rules: 1002.
    let broken: [(&str, Frame); 5] = [
        ("a control frame over 125 bytes", Frame::ping(vec![0_u8; 126])),
        ("a fragmented ping", {
            let mut frame = Frame::ping(b"half".to_vec());
            frame.header_mut().is_final = false;
            frame
        }),
        ("an extension bit that was never negotiated", {
            let mut frame = Frame::message(b"\"ping\"".to_vec(), OpCode::Data(Data::Text), true);
            frame.header_mut().rsv1 = true;
            frame
        }),
        (
            "a continuation with nothing to continue",
            Frame::message(b"ng".to_vec(), OpCode::Data(Data::Continue), true),
        ),
        (
            "a close code no endpoint may send (1005)",
            Frame::close(Some(CloseFrame {
                code: CloseCode::from(1005),
                reason: "".into(),
            })),
        ),
    ];
    for (what, frame) in broken {
        let mut ws = open(&gw, &path, &token).await;
        ws.send(Message::Frame(frame)).await.unwrap();
        assert_eq!(close_code(&mut ws).await, 1002, "{what}");
    }
    // A new message inside a fragmented one.
    let mut ws = open(&gw, &path, &token).await;
    ws.send(fragment(b"\"pi", Data::Text, false)).await.unwrap();
    ws.send(fragment(b"\"ping\"", Data::Text, true)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1002, "a new message inside a fragmented one");

    gw.stop().await;
}
