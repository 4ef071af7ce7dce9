//! `unilink.signaling.v1.SignalingService`: converts, calls the core, converts back.

use tonic::{Request, Response, Status};
use unilink_domain::{CallId, UserId};
use unilink_proto::signaling::signaling_service_server::{SignalingService, SignalingServiceServer};
use unilink_proto::signaling::{
    ActiveConnectionsReply, ActiveConnectionsRequest, Call as CallMessage, CallConnections as CallConnectionsMessage,
    CallHistory, CallRequest, CallStatus as CallStatusMessage, ConnectionStateRecorded, ConnectionStateReport,
    HistoryRequest, IceServer as IceServerMessage, IceServerConfig, InitiateRequest, JoinCallReply, JoinCallRequest,
    MaybeCall, UserRequest,
};
use unilink_relay::CallSockets;

use crate::domain::Call;
use crate::error::SignalingError;
use crate::service::CallService;

/// The gRPC face of the core: parses requests, calls it, converts results.
#[derive(Debug, Clone)]
pub struct SignalingApi {
    core: CallService,
}

pub fn server(core: CallService) -> SignalingServiceServer<SignalingApi> {
    SignalingServiceServer::new(SignalingApi { core })
}

impl From<Call> for CallMessage {
    fn from(c: Call) -> Self {
        CallMessage {
            id: c.id.to_string(),
            initiator_id: c.initiator_id.to_string(),
            receiver_id: c.receiver_id.to_string(),
            status: CallStatusMessage::from(c.status) as i32,
            call_token: c.call_token,
            created_at: Some(unilink_proto::timestamp(c.created_at)),
            answered_at: c.answered_at.map(unilink_proto::timestamp),
            ended_at: c.ended_at.map(unilink_proto::timestamp),
            duration_seconds: c.duration_seconds,
            initiator_username: c.initiator_username,
            receiver_username: c.receiver_username,
        }
    }
}

fn sockets_message(s: CallSockets) -> CallConnectionsMessage {
    CallConnectionsMessage {
        call_id: s.call_id.to_string(),
        users: s.users.iter().map(ToString::to_string).collect(),
        connection_state: s.connection_state,
    }
}

fn user(raw: &str) -> Result<UserId, Status> {
    UserId::parse(raw).map_err(|e| SignalingError::from(e).into())
}

fn call_ids(request: &CallRequest) -> Result<(UserId, CallId), Status> {
    let call = CallId::parse(&request.call_id).map_err(SignalingError::from)?;
    Ok((user(&request.user_id)?, call))
}

fn maybe(call: Option<Call>) -> Response<MaybeCall> {
    Response::new(MaybeCall {
        call: call.map(Into::into),
    })
}

#[tonic::async_trait]
impl SignalingService for SignalingApi {
    #[tracing::instrument(skip_all, fields(call_id = %request.get_ref().call_id))]
    async fn get_call(&self, request: Request<CallRequest>) -> Result<Response<CallMessage>, Status> {
        let (user, call) = call_ids(request.get_ref())?;
        Ok(Response::new(self.core.call_for(user, call).await?.into()))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn initiate(&self, request: Request<InitiateRequest>) -> Result<Response<CallMessage>, Status> {
        let caller = user(&request.get_ref().user_id)?;
        let receiver = UserId::parse(&request.get_ref().receiver_id).map_err(SignalingError::from)?;
        Ok(Response::new(self.core.initiate(caller, receiver).await?.into()))
    }

    #[tracing::instrument(skip_all, fields(call_id = %request.get_ref().call_id))]
    async fn accept(&self, request: Request<CallRequest>) -> Result<Response<CallMessage>, Status> {
        let (user, call) = call_ids(request.get_ref())?;
        Ok(Response::new(self.core.accept(user, call).await?.into()))
    }

    #[tracing::instrument(skip_all, fields(call_id = %request.get_ref().call_id))]
    async fn reject(&self, request: Request<CallRequest>) -> Result<Response<CallMessage>, Status> {
        let (user, call) = call_ids(request.get_ref())?;
        Ok(Response::new(self.core.reject(user, call).await?.into()))
    }

    #[tracing::instrument(skip_all, fields(call_id = %request.get_ref().call_id))]
    async fn end(&self, request: Request<CallRequest>) -> Result<Response<CallMessage>, Status> {
        let (user, call) = call_ids(request.get_ref())?;
        Ok(Response::new(self.core.end(user, call).await?.into()))
    }

    async fn active_call(&self, request: Request<UserRequest>) -> Result<Response<MaybeCall>, Status> {
        let user = user(&request.get_ref().user_id)?;
        Ok(maybe(self.core.active(user).await?))
    }

    async fn pending_call(&self, request: Request<UserRequest>) -> Result<Response<MaybeCall>, Status> {
        let user = user(&request.get_ref().user_id)?;
        Ok(maybe(self.core.pending(user).await?))
    }

    async fn history(&self, request: Request<HistoryRequest>) -> Result<Response<CallHistory>, Status> {
        let r = request.get_ref();
        let (calls, next) = self.core.history(user(&r.user_id)?, r.limit, &r.cursor).await?;
        Ok(Response::new(CallHistory {
            calls: calls.into_iter().map(Into::into).collect(),
            next_cursor: next.unwrap_or_default(),
        }))
    }

    async fn export_calls(&self, request: Request<UserRequest>) -> Result<Response<CallHistory>, Status> {
        let calls = self.core.export(user(&request.get_ref().user_id)?).await?;
        Ok(Response::new(CallHistory {
            calls: calls.into_iter().map(Into::into).collect(),
            next_cursor: String::new(),
        }))
    }

    async fn ice_servers(&self, request: Request<UserRequest>) -> Result<Response<IceServerConfig>, Status> {
        let (servers, ttl) = self.core.ice_servers(user(&request.get_ref().user_id)?);
        Ok(Response::new(IceServerConfig {
            ice_servers: servers
                .into_iter()
                .map(|s| IceServerMessage {
                    urls: s.urls,
                    username: s.username,
                    credential: s.credential,
                })
                .collect(),
            ttl,
        }))
    }

    async fn connection_state(
        &self,
        request: Request<CallRequest>,
    ) -> Result<Response<CallConnectionsMessage>, Status> {
        let (user, call) = call_ids(request.get_ref())?;
        Ok(Response::new(sockets_message(
            self.core.connection_state(user, call).await?,
        )))
    }

    async fn active_connections(
        &self,
        _request: Request<ActiveConnectionsRequest>,
    ) -> Result<Response<ActiveConnectionsReply>, Status> {
        let calls = self.core.active_connections().await?;
        let total = calls.iter().map(|c| c.users.len() as u32).sum();
        Ok(Response::new(ActiveConnectionsReply {
            calls: calls.into_iter().map(sockets_message).collect(),
            total_connections: total,
        }))
    }

    #[tracing::instrument(skip_all, fields(call_id = %request.get_ref().call_id))]
    async fn join_call(&self, request: Request<JoinCallRequest>) -> Result<Response<JoinCallReply>, Status> {
        let r = request.get_ref();
        let call = CallId::parse(&r.call_id).map_err(SignalingError::from)?;
        let connection: String = r.connection_id.chars().take(64).collect();
        if connection.is_empty() {
            return Err(SignalingError::BadRequest("connection_id is required").into());
        }
        let joined = self.core.join(user(&r.user_id)?, call, &connection).await?;
        Ok(Response::new(JoinCallReply {
            call: Some(joined.call.into()),
            peer_id: joined.peer.to_string(),
            peer_here: joined.peer_here,
        }))
    }

    async fn report_connection_state(
        &self,
        request: Request<ConnectionStateReport>,
    ) -> Result<Response<ConnectionStateRecorded>, Status> {
        let r = request.get_ref();
        let call = CallId::parse(&r.call_id).map_err(SignalingError::from)?;
        self.core.report_state(user(&r.user_id)?, call, &r.state).await?;
        Ok(Response::new(ConnectionStateRecorded {}))
    }
}
