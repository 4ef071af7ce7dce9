//! `unilink.profile.v1.ProfileService`: converts, calls the core, converts back.

use tonic::{Request, Response, Status};
use unilink_domain::UserId;
use unilink_proto::profile::profile_service_server::{ProfileService as ProfileApi, ProfileServiceServer};
use unilink_proto::profile::{GetProfileRequest, Profile as ProfileMessage};

use crate::error::ProfileError;
use crate::repo::Profile;
use crate::service::ProfileService;

pub fn server(core: ProfileService) -> ProfileServiceServer<ProfileService> {
    ProfileServiceServer::new(core)
}

impl From<Profile> for ProfileMessage {
    fn from(p: Profile) -> Self {
        ProfileMessage {
            user_id: p.user_id.to_string(),
            username: p.username,
            full_name: p.full_name,
            bio: p.bio,
            profile_picture: p.profile_picture,
            created_at: Some(unilink_proto::timestamp(p.created_at)),
            updated_at: Some(unilink_proto::timestamp(p.updated_at)),
        }
    }
}

#[tonic::async_trait]
impl ProfileApi for ProfileService {
    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn get_profile(&self, request: Request<GetProfileRequest>) -> Result<Response<ProfileMessage>, Status> {
        let id = UserId::parse(&request.get_ref().user_id).map_err(ProfileError::from)?;
        Ok(Response::new(self.get_profile(id).await?.into()))
    }
}
