//! The signaling core: rules about calls, independent of transport.

use unilink_domain::CallId;

use crate::error::SignalingError;
use crate::repo::{Call, CallRepository};

#[derive(Debug, Clone)]
pub struct CallService {
    calls: CallRepository,
}

impl CallService {
    pub fn new(calls: CallRepository) -> Self {
        CallService { calls }
    }

    /// The call with this id.
    pub async fn get_call(&self, id: CallId) -> Result<Call, SignalingError> {
        self.calls.find(id).await?.ok_or(SignalingError::CallNotFound)
    }
}
