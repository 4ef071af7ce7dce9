//! `/calls/*` and the REST side of `/ws/webrtc/*`: thin adapters over the
//! signaling service. The acting user is always the verified token's.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use unilink_domain::{CallId, UserId};
use unilink_errors::ErrorCode;
use unilink_grpc::GrpcChannel;
use unilink_proto::signaling::signaling_service_client::SignalingServiceClient;
use unilink_proto::signaling::{
    ActiveConnectionsRequest, Call, CallConnections, CallRequest, HistoryRequest, InitiateRequest, MaybeCall,
    UserRequest,
};

use crate::clients::Upstreams;
use crate::error::ApiError;
use crate::identity::Authenticated;
use crate::rest::views::CallJson;

fn signaling(upstreams: &Upstreams) -> SignalingServiceClient<GrpcChannel> {
    SignalingServiceClient::new(upstreams.signaling.clone())
}

fn call_json(call: Call) -> HttpResponse {
    HttpResponse::Ok().json(CallJson::from(call))
}

fn maybe_json(answer: MaybeCall) -> HttpResponse {
    HttpResponse::Ok().json(answer.call.map(CallJson::from))
}

/// A call id from the path.
fn path_call(raw: &str) -> Result<CallId, ApiError> {
    CallId::parse(raw).map_err(|e| ApiError::new(ErrorCode::BadRequest, e.to_string()))
}

fn call_request(caller: &Authenticated, id: &str) -> Result<CallRequest, ApiError> {
    Ok(CallRequest {
        user_id: caller.0.user_id.to_string(),
        call_id: path_call(id)?.to_string(),
    })
}

#[derive(Debug, Deserialize)]
pub struct InitiateBody {
    receiver_id: String,
}

/// `POST /calls/initiate` `{receiver_id}`.
pub async fn initiate(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    body: web::Json<InitiateBody>,
) -> Result<HttpResponse, ApiError> {
    let receiver = UserId::parse(&body.receiver_id)
        .map_err(|_| ApiError::new(ErrorCode::BadRequest, "receiver_id must be a user id (UUID)"))?;
    let call = signaling(&upstreams)
        .initiate(InitiateRequest {
            user_id: caller.0.user_id.to_string(),
            receiver_id: receiver.to_string(),
        })
        .await?
        .into_inner();
    Ok(call_json(call))
}

/// `GET /calls/by-id/{id}`: participants only.
pub async fn by_id(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let request = call_request(&caller, &path)?;
    Ok(call_json(signaling(&upstreams).get_call(request).await?.into_inner()))
}

/// What `POST /calls/{action}/{id}` does.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    Accept,
    Reject,
    End,
}

/// `POST /calls/accept/{id}`, `/calls/reject/{id}`, `/calls/end/{id}`.
pub async fn act(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    path: web::Path<String>,
    action: web::Data<Action>,
) -> Result<HttpResponse, ApiError> {
    let request = call_request(&caller, &path)?;
    let mut client = signaling(&upstreams);
    let call = match **action {
        Action::Accept => client.accept(request).await,
        Action::Reject => client.reject(request).await,
        Action::End => client.end(request).await,
    }?;
    Ok(call_json(call.into_inner()))
}

/// `GET /calls/active`: the caller's ongoing call, or `null`.
pub async fn active(upstreams: web::Data<Upstreams>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let answer = signaling(&upstreams)
        .active_call(UserRequest {
            user_id: caller.0.user_id.to_string(),
        })
        .await?;
    Ok(maybe_json(answer.into_inner()))
}

/// `GET /calls/pending`: the call ringing for the caller (as its receiver), or `null`.
pub async fn pending(upstreams: web::Data<Upstreams>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let answer = signaling(&upstreams)
        .pending_call(UserRequest {
            user_id: caller.0.user_id.to_string(),
        })
        .await?;
    Ok(maybe_json(answer.into_inner()))
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    limit: Option<u32>,
    cursor: Option<String>,
}

/// `GET /calls/history?limit=50&cursor=…`: newest first; the cursor of the
/// next page is in the `X-Next-Cursor` header (absent on the last page).
pub async fn history(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = match query.limit {
        None => 0,
        Some(n @ 1..=100) => n,
        Some(_) => return Err(ApiError::new(ErrorCode::BadRequest, "limit must be between 1 and 100")),
    };
    let page = signaling(&upstreams)
        .history(HistoryRequest {
            user_id: caller.0.user_id.to_string(),
            limit,
            cursor: query.cursor.clone().unwrap_or_default(),
        })
        .await?
        .into_inner();
    let mut response = HttpResponse::Ok();
    if !page.next_cursor.is_empty() {
        response.insert_header(("X-Next-Cursor", page.next_cursor));
    }
    let calls: Vec<CallJson> = page.calls.into_iter().map(CallJson::from).collect();
    Ok(response.json(calls))
}

/// `GET /calls/ice-servers`: STUN, and TURN with time-limited credentials.
pub async fn ice_servers(upstreams: web::Data<Upstreams>, caller: Authenticated) -> Result<HttpResponse, ApiError> {
    let config = signaling(&upstreams)
        .ice_servers(UserRequest {
            user_id: caller.0.user_id.to_string(),
        })
        .await?
        .into_inner();
    let servers: Vec<serde_json::Value> = config
        .ice_servers
        .into_iter()
        .map(|s| {
            let mut server = serde_json::json!({ "urls": s.urls });
            if let (Some(username), Some(credential)) = (s.username, s.credential) {
                server["username"] = username.into();
                server["credential"] = credential.into();
            }
            server
        })
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "ice_servers": servers, "ttl": config.ttl })))
}

fn connections_json(c: CallConnections) -> serde_json::Value {
    serde_json::json!({
        "call_id": c.call_id,
        "user_count": c.users.len(),
        "users": c.users,
        "connection_state": c.connection_state,
    })
}

/// `GET /ws/webrtc/connection-state/{call_id}`: participants only.
pub async fn connection_state(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let request = call_request(&caller, &path)?;
    let state = signaling(&upstreams).connection_state(request).await?.into_inner();
    Ok(HttpResponse::Ok().json(connections_json(state)))
}

/// `GET /ws/webrtc/active-connections`: admins only.
pub async fn active_connections(
    upstreams: web::Data<Upstreams>,
    caller: Authenticated,
) -> Result<HttpResponse, ApiError> {
    crate::rest::admin::admin(&upstreams, caller).await?;
    let reply = signaling(&upstreams)
        .active_connections(ActiveConnectionsRequest {})
        .await?
        .into_inner();
    let calls: Vec<serde_json::Value> = reply.calls.into_iter().map(connections_json).collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "total_connections": reply.total_connections,
        "active_calls": calls.len(),
        "calls": calls,
    })))
}
