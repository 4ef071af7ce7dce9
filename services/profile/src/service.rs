//! The profile core: rules about profiles, independent of transport.

use unilink_domain::UserId;

use crate::error::ProfileError;
use crate::repo::{Profile, ProfileRepository};

#[derive(Debug, Clone)]
pub struct ProfileService {
    profiles: ProfileRepository,
}

impl ProfileService {
    pub fn new(profiles: ProfileRepository) -> Self {
        ProfileService { profiles }
    }

    /// The profile of this user.
    pub async fn get_profile(&self, user_id: UserId) -> Result<Profile, ProfileError> {
        self.profiles.find(user_id).await?.ok_or(ProfileError::ProfileNotFound)
    }
}
