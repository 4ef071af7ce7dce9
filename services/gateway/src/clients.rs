//! Channels to the backend services, one load-balanced channel per service.

use unilink_config::UpstreamSettings;
use unilink_grpc::client::ChannelError;
use unilink_grpc::{GrpcChannel, balanced_channel};

/// The backend services the gateway depends on, by name.
#[derive(Clone)]
pub struct Upstreams {
    pub auth: GrpcChannel,
    pub profile: GrpcChannel,
    pub signaling: GrpcChannel,
    pub notification: GrpcChannel,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams").finish_non_exhaustive()
    }
}

impl Upstreams {
    /// Builds every channel (connections are made lazily, in the background).
    pub fn connect(settings: &UpstreamSettings) -> Result<Upstreams, ChannelError> {
        let channel =
            |name, urls: &[String]| balanced_channel(name, urls, settings.connect_timeout, settings.request_timeout);
        Ok(Upstreams {
            auth: channel("auth", &settings.auth)?,
            profile: channel("profile", &settings.profile)?,
            signaling: channel("signaling", &settings.signaling)?,
            notification: channel("notification", &settings.notification)?,
        })
    }

    /// Every upstream with its name, for health checks.
    pub fn named(&self) -> [(&'static str, GrpcChannel); 4] {
        [
            ("auth", self.auth.clone()),
            ("profile", self.profile.clone()),
            ("signaling", self.signaling.clone()),
            ("notification", self.notification.clone()),
        ]
    }
}
