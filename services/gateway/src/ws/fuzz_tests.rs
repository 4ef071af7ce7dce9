//! Property tests of the WebSocket framing of [`super::socket`] against a
//! reference model of RFC 6455, written here from the RFC rather than from
//! the socket's code.
//!
//! A client byte stream is made of messages (text, with multi-byte
//! characters cut anywhere by fragment boundaries, and binary), each split
//! into fragments with pings and pongs between them. Every frame gets its
//! own mask key and one of the three length encodings: the shortest, or a
//! wider one than needed (the RFC asks senders for the shortest; the socket,
//! like most servers, takes the others). The bytes reach the socket over
//! loopback TCP in random pieces, the first ones as if read together with
//! the handshake.
//!
//! Broken streams add one violation among valid frames: an unmasked frame,
//! reserved bits, a reserved opcode, a control frame over 125 bytes or
//! fragmented, a continuation with nothing to continue, a new message inside
//! a fragmented one, a bad close frame (one byte, a code no endpoint may
//! send, a reason that is not UTF-8), text that is not UTF-8, a message over
//! the limit (in one frame, in fragments, or only announced by a header
//! whose payload never comes), a 64-bit length with its top bit set.
//!
//! The model says which messages the socket yields, in order, and how the
//! connection ends: the client's close answered with its code, a close with
//! 1002, 1007 or 1009, or nothing when the client just goes. The socket is
//! driven as the gateway drives it (pings answered, closes answered, faults
//! closed with their code) and what reaches the client is checked as well.
//! Each case has a deadline, so a socket that waits forever fails too.
//!
//! 256 cases per property (`PROPTEST_CASES` runs more); a few seconds in the
//! debug profile.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use actix_web::web::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::socket::{Fault, Incoming, WebSocket, echo};

/// The socket's message limit in these tests: above 65,535 bytes, so that a
/// message within it may need the 64-bit length.
const MAX: usize = 66_000;
/// A case that takes longer has hung.
const CASE_DEADLINE: Duration = Duration::from_secs(10);
const CASES: u32 = 256;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// How a frame's header writes its payload length (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy)]
enum Width {
    /// 7 bits when the length fits, else 16, else 64.
    Shortest,
    /// 16 bits, or 64 when the length does not fit.
    Bits16,
    Bits64,
}

/// One frame as a client writes it, rules broken or not.
#[derive(Clone)]
struct Frame {
    fin: bool,
    /// RSV1-3.
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    width: Width,
    payload: Vec<u8>,
    /// A length the header announces beyond the payload: the client sends
    /// only the payload, then stops writing (this frame ends the stream).
    announced: Option<u64>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.payload[..self.payload.len().min(24)];
        f.debug_struct("Frame")
            .field("fin", &self.fin)
            .field("rsv", &self.rsv)
            .field("opcode", &self.opcode)
            .field("mask", &self.mask)
            .field("width", &self.width)
            .field("len", &self.payload.len())
            .field("payload", &format_args!("{shown:02x?}…"))
            .field("announced", &self.announced)
            .finish()
    }
}

impl Frame {
    /// A well-formed frame (masked; the key and width are set by [`restyle`]).
    fn new(fin: bool, opcode: u8, payload: Vec<u8>) -> Frame {
        Frame {
            fin,
            rsv: 0,
            opcode,
            mask: Some([0; 4]),
            width: Width::Shortest,
            payload,
            announced: None,
        }
    }

    fn len(&self) -> u64 {
        self.announced.unwrap_or(self.payload.len() as u64)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.push((u8::from(self.fin) << 7) | ((self.rsv & 0b111) << 4) | (self.opcode & 0xF));
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let len = self.len();
        let width = match self.width {
            _ if len > 0xFFFF => Width::Bits64,
            Width::Shortest if len > 125 => Width::Bits16,
            width => width,
        };
        match width {
            Width::Shortest => out.push(mask_bit | len as u8),
            Width::Bits16 => {
                out.push(mask_bit | 126);
                out.extend((len as u16).to_be_bytes());
            }
            Width::Bits64 => {
                out.push(mask_bit | 127);
                out.extend(len.to_be_bytes());
            }
        }
        match self.mask {
            Some(key) => {
                out.extend(key);
                out.extend(self.payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k));
            }
            None => out.extend(&self.payload),
        }
    }
}

/// The client's bytes: every frame, up to the one the stream ends inside.
fn wire(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for frame in frames {
        frame.encode(&mut out);
        if frame.announced.is_some() {
            break;
        }
    }
    out
}

/// How the connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ending {
    /// The client went without a close frame.
    Gone,
    /// The client's close frame (the last message) was answered.
    Closed,
    /// The socket failed the connection with this close code.
    Fault(u16),
}

const PROTOCOL_ERROR: Ending = Ending::Fault(1002);

/// RFC 6455 as a server must apply it to a client's frames: the messages
/// delivered and how the connection ends.
fn model(frames: &[Frame]) -> (Vec<Incoming>, Ending) {
    let mut delivered = Vec::new();
    let mut partial = None;
    for frame in frames {
        if let Some(ending) = receive(frame, &mut partial, &mut delivered) {
            return (delivered, ending);
        }
    }
    (delivered, Ending::Gone)
}

/// One frame; `Some` when the connection ends with it.
fn receive(frame: &Frame, partial: &mut Option<(u8, Vec<u8>)>, delivered: &mut Vec<Incoming>) -> Option<Ending> {
    // Known from the first two bytes: no extension was negotiated, so the
    // RSV bits are 0 (§5.2); a client masks every frame (§5.1); opcodes 3-7
    // and B-F are reserved (§5.2).
    if frame.rsv != 0 || frame.mask.is_none() || !matches!(frame.opcode, 0x0..=0x2 | 0x8..=0xA) {
        return Some(PROTOCOL_ERROR);
    }
    // Known from the length field, before any payload: a 64-bit length has
    // its top bit clear (§5.2); a control frame carries at most 125 bytes
    // (§5.5); a message over the limit is refused with 1009 (§7.4.1).
    let control = frame.opcode >= CLOSE;
    let len = frame.len();
    if len >> 63 == 1 || (control && len > 125) {
        return Some(PROTOCOL_ERROR);
    }
    if len > MAX as u64 {
        return Some(Ending::Fault(1009));
    }
    if frame.announced.is_some() {
        // The stream ends inside this frame.
        return Some(Ending::Gone);
    }
    // A control frame is not fragmented (§5.5).
    if control && !frame.fin {
        return Some(PROTOCOL_ERROR);
    }
    let payload = &frame.payload;
    match frame.opcode {
        PING => delivered.push(Incoming::Ping(Bytes::copy_from_slice(payload))),
        PONG => delivered.push(Incoming::Pong),
        CLOSE => return Some(close(payload, delivered)),
        CONTINUATION => {
            // A continuation continues a message (§5.4).
            let Some((_, so_far)) = partial.as_mut() else {
                return Some(PROTOCOL_ERROR);
            };
            if so_far.len() + payload.len() > MAX {
                return Some(Ending::Fault(1009));
            }
            so_far.extend_from_slice(payload);
            if frame.fin
                && let Some((opcode, whole)) = partial.take()
            {
                return complete(opcode, whole, delivered);
            }
        }
        // A message's fragments are not interleaved with another's (§5.4).
        _ if partial.is_some() => return Some(PROTOCOL_ERROR),
        opcode if frame.fin => return complete(opcode, payload.clone(), delivered),
        opcode => *partial = Some((opcode, payload.clone())),
    }
    None
}

/// A whole message: text must be UTF-8 once put together (§8.1); the
/// socket only reports that binary arrived.
fn complete(opcode: u8, payload: Vec<u8>, delivered: &mut Vec<Incoming>) -> Option<Ending> {
    if opcode == BINARY {
        delivered.push(Incoming::Binary);
        return None;
    }
    match String::from_utf8(payload) {
        Ok(text) => {
            delivered.push(Incoming::Text(text));
            None
        }
        Err(_) => Some(Ending::Fault(1007)),
    }
}

/// A close frame's body is empty, or a status code an endpoint may send
/// (§7.4.1, and the codes registered since: 1012-1014) and a UTF-8 reason
/// (§5.5.1, §8.1).
fn close(payload: &[u8], delivered: &mut Vec<Incoming>) -> Ending {
    let reason = match payload {
        [] => None,
        [_] => return PROTOCOL_ERROR,
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            if !matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999) {
                return PROTOCOL_ERROR;
            }
            let Ok(reason) = std::str::from_utf8(reason) else {
                return Ending::Fault(1007);
            };
            Some(CloseReason {
                code: CloseCode::from(code),
                description: (!reason.is_empty()).then(|| reason.to_owned()),
            })
        }
    };
    delivered.push(Incoming::Close(reason));
    Ending::Closed
}

// ---- generators ------------------------------------------------------------

/// Payload sizes: mostly small, and around each boundary: 125/126 (7-bit
/// and 16-bit lengths), 65,535/65,536 (16-bit and 64-bit), and the limit.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0..40_usize,
        3 => 120..140_usize,
        1 => 65_530..65_545_usize,
        1 => MAX - 8..=MAX,
    ]
}

/// `len` bytes of valid UTF-8: `unit` repeated, ASCII to fill up.
fn text_of(len: usize, unit: &[char]) -> Vec<u8> {
    let mut text = String::with_capacity(len);
    for c in unit.iter().cycle() {
        if text.len() + c.len_utf8() > len {
            break;
        }
        text.push(*c);
    }
    while text.len() < len {
        text.push('~');
    }
    text.into_bytes()
}

/// `len` bytes, any values.
fn bytes_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(167) ^ seed).collect()
}

/// A message: its opcode and payload.
fn message() -> impl Strategy<Value = (u8, Vec<u8>)> {
    (any::<bool>(), size(), vec(any::<char>(), 1..6), any::<u8>()).prop_map(|(text, len, unit, seed)| {
        if text {
            (TEXT, text_of(len, &unit))
        } else {
            (BINARY, bytes_of(len, seed))
        }
    })
}

fn control_payload() -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..=125)
}

/// A ping or a pong.
fn ping_or_pong() -> impl Strategy<Value = Frame> {
    (prop_oneof![Just(PING), Just(PONG)], control_payload())
        .prop_map(|(opcode, payload)| Frame::new(true, opcode, payload))
}

/// A message in fragments cut at `cuts` (anywhere, inside a character too,
/// empty fragments included), with `between[i]` after fragment `i`.
fn fragments(opcode: u8, payload: &[u8], cuts: &[Index], between: &[Option<Frame>]) -> Vec<Frame> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(payload.len());
    let mut frames = Vec::new();
    let mut start = 0;
    for (i, &end) in cuts.iter().enumerate() {
        let last = i + 1 == cuts.len();
        let opcode = if i == 0 { opcode } else { CONTINUATION };
        frames.push(Frame::new(last, opcode, payload[start..end].to_vec()));
        if !last && let Some(control) = between.get(i).cloned().flatten() {
            frames.push(control);
        }
        start = end;
    }
    frames
}

fn cuts_and_controls() -> impl Strategy<Value = (Vec<Index>, Vec<Option<Frame>>)> {
    (vec(any::<Index>(), 0..4), vec(option::of(ping_or_pong()), 4))
}

/// A whole message in fragments, pings and pongs between them.
fn fragmented_message() -> impl Strategy<Value = Vec<Frame>> {
    (message(), cuts_and_controls())
        .prop_map(|((opcode, payload), (cuts, between))| fragments(opcode, &payload, &cuts, &between))
}

/// Frames that break no rule and leave no message open.
fn valid_segment() -> impl Strategy<Value = Vec<Frame>> {
    prop_oneof![
        4 => fragmented_message(),
        1 => ping_or_pong().prop_map(|frame| vec![frame]),
    ]
}

fn valid_close_code() -> impl Strategy<Value = u16> {
    prop_oneof![1000..=1003_u16, 1007..=1014_u16, 3000..=4999_u16]
}

/// A close reason that fits (with its code) in 125 bytes.
fn close_reason() -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..12).prop_map(|chars| {
        let mut reason = String::new();
        for c in chars {
            if reason.len() + c.len_utf8() > 123 {
                break;
            }
            reason.push(c);
        }
        reason
    })
}

fn close_body(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(reason);
    body
}

/// A valid close frame from the client: empty, a code, or a code and reason.
fn client_close() -> impl Strategy<Value = Frame> {
    prop_oneof![
        Just(Vec::new()),
        (valid_close_code(), close_reason()).prop_map(|(code, reason)| close_body(code, reason.as_bytes())),
    ]
    .prop_map(|body| Frame::new(true, CLOSE, body))
}

/// The stream ends inside a frame that breaks no rule (within the limit).
fn cut_short() -> impl Strategy<Value = Frame> {
    (
        prop_oneof![Just(TEXT), Just(BINARY), Just(CONTINUATION), Just(PING), Just(CLOSE)],
        vec(any::<u8>(), 0..60),
        1..60_u64,
    )
        .prop_map(|(opcode, payload, missing)| Frame {
            announced: Some(payload.len() as u64 + missing),
            ..Frame::new(true, opcode, payload)
        })
}

/// Bytes that are not UTF-8: valid text with one bad sequence put in.
fn broken_utf8() -> impl Strategy<Value = Vec<u8>> {
    let bad: [&'static [u8]; 7] = [
        &[0xFF],                   // never in UTF-8
        &[0x80],                   // a continuation byte alone
        &[0xC0, 0x80],             // overlong NUL
        &[0xED, 0xA0, 0x80],       // a surrogate (U+D800)
        &[0xF4, 0x90, 0x80, 0x80], // above U+10FFFF
        &[0xE2, 0x82],             // a character cut short
        &[0xF0, 0x9F, 0x98],       // a 4-byte one cut short
    ];
    (
        vec(any::<char>(), 0..10),
        proptest::sample::select(bad.to_vec()),
        any::<Index>(),
    )
        .prop_map(|(chars, bad, at)| {
            let mut bytes = chars.into_iter().collect::<String>().into_bytes();
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, bad.iter().copied());
            bytes
        })
}

fn data_opcode() -> impl Strategy<Value = u8> {
    prop_oneof![Just(TEXT), Just(BINARY)]
}

fn control_opcode() -> impl Strategy<Value = u8> {
    prop_oneof![Just(PING), Just(PONG), Just(CLOSE)]
}

/// One rule broken (the model decides what it is worth).
fn violation() -> impl Strategy<Value = Vec<Frame>> {
    prop_oneof![
        // A frame without a mask, or with reserved bits set.
        (valid_segment(), any::<Index>(), 0..8_u8).prop_map(|(mut frames, at, rsv)| {
            let at = at.index(frames.len());
            if rsv == 0 {
                frames[at].mask = None;
            } else {
                frames[at].rsv = rsv;
            }
            frames
        }),
        // A reserved opcode.
        (
            prop_oneof![3..=7_u8, 0xB..=0xF_u8],
            vec(any::<u8>(), 0..200),
            any::<bool>()
        )
            .prop_map(|(opcode, payload, fin)| vec![Frame::new(fin, opcode, payload)]),
        // A control frame over 125 bytes, or only announcing more.
        (control_opcode(), 126..=400_usize).prop_map(|(opcode, len)| vec![Frame::new(true, opcode, vec![b'x'; len])]),
        (control_opcode(), 126..=u64::MAX >> 1, vec(any::<u8>(), 0..40)).prop_map(|(opcode, len, payload)| {
            vec![Frame {
                announced: Some(len.max(payload.len() as u64 + 1)),
                ..Frame::new(true, opcode, payload)
            }]
        }),
        // A fragmented control frame (a close with a valid body).
        (control_opcode(), control_payload(), valid_close_code()).prop_map(|(opcode, payload, code)| {
            let payload = if opcode == CLOSE {
                close_body(code, b"")
            } else {
                payload
            };
            vec![Frame::new(false, opcode, payload)]
        }),
        // A continuation with no message to continue.
        (vec(any::<u8>(), 0..50), any::<bool>()).prop_map(|(payload, fin)| vec![Frame::new(
            fin,
            CONTINUATION,
            payload
        )]),
        // A new message while one is in fragments.
        (
            message(),
            vec(option::of(ping_or_pong()), 2),
            data_opcode(),
            vec(any::<u8>(), 0..50),
            any::<bool>()
        )
            .prop_map(|((opcode, payload), between, second, interloper, fin)| {
                let mut frames = vec![Frame::new(false, opcode, payload)];
                frames.extend(between.into_iter().flatten());
                frames.push(Frame::new(fin, second, interloper));
                frames
            }),
        // A close with a code no endpoint may send.
        (
            prop_oneof![
                0..1000_u16,
                Just(1004_u16),
                Just(1005_u16),
                Just(1006_u16),
                1015..3000_u16,
                5000..=u16::MAX
            ],
            close_reason()
        )
            .prop_map(|(code, reason)| vec![Frame::new(true, CLOSE, close_body(code, reason.as_bytes()))]),
        // A close body of one byte.
        any::<u8>().prop_map(|byte| vec![Frame::new(true, CLOSE, vec![byte])]),
        // A close reason that is not UTF-8.
        (valid_close_code(), broken_utf8()).prop_map(|(code, reason)| vec![Frame::new(
            true,
            CLOSE,
            close_body(code, &reason)
        )]),
        // Text that is not UTF-8, in fragments.
        (broken_utf8(), cuts_and_controls())
            .prop_map(|(payload, (cuts, between))| fragments(TEXT, &payload, &cuts, &between)),
        // A message over the limit, in one frame or in fragments each within it.
        (
            data_opcode(),
            prop_oneof![Just(MAX + 1), MAX + 1..MAX + 64],
            cuts_and_controls()
        )
            .prop_map(|(opcode, len, (cuts, between))| { fragments(opcode, &bytes_of(len, 7), &cuts, &between) }),
        // A header announcing more than the limit, or a length with its top
        // bit set; what follows is not the whole payload.
        (
            data_opcode(),
            prop_oneof![MAX as u64 + 1..=u64::MAX >> 1, (1_u64 << 63)..=u64::MAX],
            vec(any::<u8>(), 0..100)
        )
            .prop_map(|(opcode, len, payload)| {
                vec![Frame {
                    announced: Some(len),
                    ..Frame::new(true, opcode, payload)
                }]
            }),
    ]
}

/// Mask keys and length widths, given out to the well-formed frames in turn.
fn styles() -> impl Strategy<Value = Vec<([u8; 4], Width)>> {
    let width = prop_oneof![
        3 => Just(Width::Shortest),
        1 => Just(Width::Bits16),
        1 => Just(Width::Bits64),
    ];
    vec((any::<[u8; 4]>(), width), 1..8)
}

fn restyle(frames: &mut [Frame], styles: &[([u8; 4], Width)]) {
    for (frame, (key, width)) in frames.iter_mut().zip(styles.iter().cycle()) {
        if frame.mask.is_some() {
            frame.mask = Some(*key);
        }
        frame.width = *width;
    }
}

/// One exchange: the client's frames, how many of their bytes came with the
/// handshake, and the sizes of the writes for the rest (in turn).
#[derive(Debug, Clone)]
struct Case {
    frames: Vec<Frame>,
    leftover: usize,
    writes: Vec<usize>,
}

fn case(frames: impl Strategy<Value = Vec<Frame>>) -> impl Strategy<Value = Case> {
    let write = prop_oneof![1..=4_usize, 1..=600_usize, 1..=20_000_usize];
    (frames, styles(), 0..24_usize, vec(write, 1..8)).prop_map(|(mut frames, styles, leftover, writes)| {
        restyle(&mut frames, &styles);
        Case {
            frames,
            leftover,
            writes,
        }
    })
}

/// Messages and controls, then a close, the stream cut inside a frame, or
/// nothing (the client goes); anything after a close is ignored.
fn valid_stream() -> impl Strategy<Value = Vec<Frame>> {
    let end = prop_oneof![
        2 => client_close().prop_map(Some),
        1 => cut_short().prop_map(Some),
        1 => Just(None),
    ];
    (vec(valid_segment(), 0..6), end, vec(valid_segment(), 0..2)).prop_map(|(segments, end, after)| {
        let mut frames: Vec<Frame> = segments.into_iter().flatten().collect();
        frames.extend(end);
        frames.extend(after.into_iter().flatten());
        frames
    })
}

/// Valid frames, one violation, and more frames after it (never read).
fn broken_stream() -> impl Strategy<Value = Vec<Frame>> {
    (
        vec(valid_segment(), 0..4),
        violation(),
        vec(valid_segment(), 0..3),
        option::of(client_close()),
    )
        .prop_map(|(before, violation, after, close)| {
            let mut frames: Vec<Frame> = before.into_iter().flatten().collect();
            frames.extend(violation);
            frames.extend(after.into_iter().flatten());
            frames.extend(close);
            frames
        })
}

// ---- the exchange ------------------------------------------------------------

/// Drives the socket as the gateway's pump does with the client's side:
/// pings answered with their payload, the client's close answered, a fault
/// closed with its code. What it yielded, and how it ended.
async fn serve(mut socket: WebSocket) -> (Vec<Incoming>, Ending) {
    let mut yielded = Vec::new();
    loop {
        match socket.next().await {
            Ok(Incoming::Ping(payload)) => {
                let _ = socket.pong(&payload).await;
                yielded.push(Incoming::Ping(payload));
            }
            Ok(Incoming::Close(theirs)) => {
                yielded.push(Incoming::Close(theirs.clone()));
                socket.close(echo(theirs)).await;
                return (yielded, Ending::Closed);
            }
            Ok(message) => yielded.push(message),
            Err(Fault::Protocol(reason)) => {
                let code = u16::from(reason.code);
                socket.close(Some(reason)).await;
                return (yielded, Ending::Fault(code));
            }
            Err(Fault::Gone) => return (yielded, Ending::Gone),
        }
    }
}

/// The client writes its bytes in pieces, half-closes, and reads what the
/// server said until the server is done.
async fn client(mut io: TcpStream, mut bytes: &[u8], writes: &[usize]) -> Vec<u8> {
    for &size in writes.iter().cycle() {
        if bytes.is_empty() {
            break;
        }
        let (piece, rest) = bytes.split_at(size.min(bytes.len()));
        if io.write_all(piece).await.is_err() {
            break;
        }
        bytes = rest;
        // Let the socket read what is there, so it sees frames in pieces.
        tokio::task::yield_now().await;
    }
    let _ = io.shutdown().await;
    let mut said = Vec::new();
    let _ = io.read_to_end(&mut said).await;
    said
}

/// What a server frame means to the client.
#[derive(Debug, PartialEq, Eq)]
enum Said {
    Pong(Vec<u8>),
    /// A close and its code.
    Close(Option<u16>),
    Other(OpCode),
}

fn said(bytes: &[u8]) -> Result<Vec<Said>, TestCaseError> {
    let mut bytes = BytesMut::from(bytes);
    let mut frames = Vec::new();
    // As a client reads: server frames are unmasked.
    while let Some((fin, opcode, payload)) =
        Parser::parse(&mut bytes, false, MAX).map_err(|e| TestCaseError::fail(format!("server frame: {e}")))?
    {
        prop_assert!(fin, "the server fragments nothing");
        let payload = payload.map(|p| p.to_vec()).unwrap_or_default();
        frames.push(match opcode {
            OpCode::Pong => Said::Pong(payload),
            OpCode::Close => Said::Close((payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))),
            other => Said::Other(other),
        });
    }
    prop_assert!(bytes.is_empty(), "the server's last frame is cut short");
    Ok(frames)
}

async fn exchange(case: &Case) -> Result<Ending, TestCaseError> {
    let bytes = wire(&case.frames);
    let leftover = case.leftover.min(bytes.len());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let io = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let socket = WebSocket::new(server, &bytes[..leftover], MAX);
    let ((yielded, ending), said_bytes) = tokio::join!(serve(socket), client(io, &bytes[leftover..], &case.writes));

    let (expected, expected_ending) = model(&case.frames);
    prop_assert_eq!(&yielded, &expected, "messages");
    prop_assert_eq!(ending, expected_ending, "ending");

    // On the wire: a pong for each ping, with its payload, then the close.
    let mut expected_said: Vec<Said> = expected
        .iter()
        .filter_map(|m| match m {
            Incoming::Ping(payload) => Some(Said::Pong(payload.to_vec())),
            _ => None,
        })
        .collect();
    match ending {
        Ending::Gone => {}
        Ending::Closed => {
            let theirs = match expected.last() {
                Some(Incoming::Close(theirs)) => theirs.as_ref().map(|r| u16::from(r.code)),
                _ => None,
            };
            expected_said.push(Said::Close(theirs));
        }
        Ending::Fault(code) => expected_said.push(Said::Close(Some(code))),
    }
    prop_assert_eq!(said(&said_bytes)?, expected_said, "what the client read");
    Ok(ending)
}

/// Runs `CASES` cases of `stream`; the endings seen.
fn check(stream: impl Strategy<Value = Vec<Frame>>) -> BTreeSet<Ending> {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        // A failing case shrinks for a minute at most.
        max_shrink_time: 60_000,
        ..Config::default()
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let endings = RefCell::new(BTreeSet::new());
    let result = runner.run(&case(stream), |case| {
        let ending = runtime
            .block_on(async { tokio::time::timeout(CASE_DEADLINE, exchange(&case)).await })
            .map_err(|_| TestCaseError::fail("the socket hung"))??;
        endings.borrow_mut().insert(ending);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    endings.into_inner()
}

#[test]
fn valid_streams_yield_every_message_in_order() {
    let endings = check(valid_stream());
    assert_eq!(
        endings,
        BTreeSet::from([Ending::Gone, Ending::Closed]),
        "the generator covers both ways a client leaves"
    );
}

#[test]
fn broken_streams_close_with_the_code_the_rfc_names() {
    let endings = check(broken_stream());
    for code in [1002, 1007, 1009] {
        assert!(
            endings.contains(&Ending::Fault(code)),
            "no case closed with {code}: {endings:?}"
        );
    }
}
