//! Upgrade requests (`Connection: Upgrade`) are handed by actix-http's
//! HTTP/1 dispatcher to this service together with the connection itself.
//! The request still goes through the whole application — routing, the edge
//! middleware (token, rate limit, revocation), CORS, metrics — on an
//! instance of the same [`App`](actix_web::App) kept for upgrades. When the
//! route accepted a WebSocket (its answer is 101 and carries an
//! [`Accepted`](super::Accepted)), the answer is written and the socket runs
//! on the bare TCP stream ([`super::socket`]) as a task of its own; the
//! dispatcher, its buffers and its connection task end. Any other answer is written as it is and the connection closed.

use std::rc::Rc;

use actix_http::body::{BodySize, MessageBody};
use actix_http::h1::{Codec, Message};
use actix_http::{ConnectionType, Request, Response, StatusCode};
use actix_web::HttpMessage;
use actix_web::dev::{Service, ServiceResponse};
use actix_web::web::Bytes;
use futures_util::SinkExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A request arrived through the upgrade path: its connection can be taken
/// over. Routes that accept a WebSocket refuse requests without it (a
/// request that did not ask for an upgrade, or one over HTTP/2).
#[derive(Debug, Clone, Copy)]
pub struct Takeover;

pub type Framed = actix_codec::Framed<TcpStream, Codec>;

/// Answers one upgrade request with `app`; runs the WebSocket when it was accepted.
pub async fn serve<S, B>(app: Rc<S>, req: Request, mut framed: Framed) -> Result<(), actix_web::Error>
where
    S: Service<Request, Response = ServiceResponse<B>, Error = actix_web::Error>,
    B: MessageBody + 'static,
{
    req.extensions_mut().insert(Takeover);
    let (response, accepted) = match app.call(req).await {
        Ok(mut answer) => {
            let accepted = answer.response_mut().extensions_mut().remove::<super::Accepted>();
            (Response::from(answer.into_parts().1).map_into_boxed_body(), accepted)
        }
        Err(e) => (Response::from(e), None),
    };
    let (head, body) = response.into_parts();
    let body = actix_http::body::to_bytes(body).await.unwrap_or_default();
    let upgraded = head.status() == StatusCode::SWITCHING_PROTOCOLS && accepted.is_some();
    write_response(&mut framed, head, body, upgraded).await?;
    match accepted {
        Some(accepted) if upgraded => {
            let parts = framed.into_parts();
            // Bytes the client sent after its handshake are kept; the
            // dispatcher's buffers themselves are dropped before the socket runs.
            let socket = super::socket::WebSocket::new(parts.io, &parts.read_buf, super::MAX_WIRE_FRAME_BYTES);
            drop((parts.read_buf, parts.write_buf, parts.codec));
            accepted.spawn(socket);
        }
        _ => {
            let _ = framed.into_parts().io.shutdown().await;
        }
    }
    Ok(())
}

async fn write_response(
    framed: &mut Framed,
    mut head: Response<()>,
    body: Bytes,
    upgraded: bool,
) -> std::io::Result<()> {
    let size = if upgraded {
        BodySize::None
    } else {
        // Not switching: this connection ends after the answer.
        head.head_mut().set_connection_type(ConnectionType::Close);
        BodySize::Sized(body.len() as u64)
    };
    framed.feed(Message::Item((head, size))).await?;
    if !upgraded {
        if !body.is_empty() {
            framed.feed(Message::Chunk(Some(body))).await?;
        }
        framed.feed(Message::Chunk(None)).await?;
    }
    framed.flush().await
}
