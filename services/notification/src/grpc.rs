//! `unilink.notification.v1.NotificationService`: converts, calls the core, converts back.

use tonic::{Request, Response, Status};
use unilink_domain::EventId;
use unilink_proto::notification::notification_service_server::{
    NotificationService as NotificationRpc, NotificationServiceServer,
};
use unilink_proto::notification::{
    Delivery as DeliveryMessage, DeliveryStatus as DeliveryStatusMessage, GetDeliveryRequest,
};

use crate::domain::{Delivery, DeliveryStatus};
use crate::error::NotificationError;
use crate::service::DeliveryService;

/// The gRPC face of the core: parses requests, calls it, converts results.
#[derive(Debug, Clone)]
pub struct NotificationApi {
    core: DeliveryService,
}

pub fn server(core: DeliveryService) -> NotificationServiceServer<NotificationApi> {
    NotificationServiceServer::new(NotificationApi { core })
}

impl From<Delivery> for DeliveryMessage {
    fn from(d: Delivery) -> Self {
        let status = match d.status {
            DeliveryStatus::Pending => DeliveryStatusMessage::Pending,
            DeliveryStatus::Delivered => DeliveryStatusMessage::Delivered,
            DeliveryStatus::Failed => DeliveryStatusMessage::Failed,
        };
        DeliveryMessage {
            event_id: d.event_id.to_string(),
            event_type: d.event_type,
            channel: d.channel,
            status: status as i32,
            attempts: d.attempts,
            created_at: Some(unilink_proto::timestamp(d.created_at)),
            delivered_at: d.delivered_at.map(unilink_proto::timestamp),
        }
    }
}

#[tonic::async_trait]
impl NotificationRpc for NotificationApi {
    #[tracing::instrument(skip_all, fields(event_id = %request.get_ref().event_id))]
    async fn get_delivery(&self, request: Request<GetDeliveryRequest>) -> Result<Response<DeliveryMessage>, Status> {
        let id = EventId::parse(&request.get_ref().event_id).map_err(NotificationError::from)?;
        Ok(Response::new(self.core.get_delivery(id).await?.into()))
    }
}
