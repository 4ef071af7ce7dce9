//! `unilink.signaling.v1.SignalingService`: converts, calls the core, converts back.

use tonic::{Request, Response, Status};
use unilink_domain::CallId;
use unilink_proto::signaling::signaling_service_server::{SignalingService, SignalingServiceServer};
use unilink_proto::signaling::{Call as CallMessage, CallStatus as CallStatusMessage, GetCallRequest};

use crate::error::SignalingError;
use crate::repo::{Call, CallStatus};
use crate::service::CallService;

pub fn server(core: CallService) -> SignalingServiceServer<CallService> {
    SignalingServiceServer::new(core)
}

impl From<CallStatus> for CallStatusMessage {
    fn from(status: CallStatus) -> Self {
        match status {
            CallStatus::Pending => CallStatusMessage::Pending,
            CallStatus::Ongoing => CallStatusMessage::Ongoing,
            CallStatus::Completed => CallStatusMessage::Completed,
            CallStatus::Rejected => CallStatusMessage::Rejected,
            CallStatus::Missed => CallStatusMessage::Missed,
            CallStatus::Cancelled => CallStatusMessage::Cancelled,
        }
    }
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
            started_at: c.started_at.map(unilink_proto::timestamp),
            ended_at: c.ended_at.map(unilink_proto::timestamp),
            duration_seconds: c.duration_seconds,
        }
    }
}

#[tonic::async_trait]
impl SignalingService for CallService {
    #[tracing::instrument(skip_all, fields(call_id = %request.get_ref().call_id))]
    async fn get_call(&self, request: Request<GetCallRequest>) -> Result<Response<CallMessage>, Status> {
        let id = CallId::parse(&request.get_ref().call_id).map_err(SignalingError::from)?;
        Ok(Response::new(self.get_call(id).await?.into()))
    }
}
