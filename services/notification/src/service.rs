//! The notification core: rules about deliveries, independent of transport.

use unilink_domain::EventId;

use crate::error::NotificationError;
use crate::repo::{Delivery, DeliveryRepository};

#[derive(Debug, Clone)]
pub struct DeliveryService {
    deliveries: DeliveryRepository,
}

impl DeliveryService {
    pub fn new(deliveries: DeliveryRepository) -> Self {
        DeliveryService { deliveries }
    }

    /// The delivery record of this event.
    pub async fn get_delivery(&self, event_id: EventId) -> Result<Delivery, NotificationError> {
        self.deliveries
            .find(event_id)
            .await?
            .ok_or(NotificationError::DeliveryNotFound)
    }
}
