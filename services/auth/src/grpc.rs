//! `unilink.auth.v1.AuthService`: converts, calls the core, converts back.

use tonic::{Request, Response, Status};
use unilink_domain::UserId;
use unilink_proto::auth::auth_service_server::{AuthService, AuthServiceServer};
use unilink_proto::auth::{Account as AccountMessage, GetAccountRequest};

use crate::error::AuthError;
use crate::repo::Account;
use crate::service::AccountService;

pub fn server(core: AccountService) -> AuthServiceServer<AccountService> {
    AuthServiceServer::new(core)
}

impl From<Account> for AccountMessage {
    fn from(a: Account) -> Self {
        AccountMessage {
            id: a.id.to_string(),
            email: a.email,
            username: a.username,
            full_name: a.full_name,
            is_verified: a.is_verified,
            is_active: a.is_active,
            role: a.role,
            created_at: Some(unilink_proto::timestamp(a.created_at)),
        }
    }
}

#[tonic::async_trait]
impl AuthService for AccountService {
    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn get_account(
        &self,
        request: Request<GetAccountRequest>,
    ) -> Result<Response<AccountMessage>, Status> {
        let id = UserId::parse(&request.get_ref().user_id).map_err(AuthError::from)?;
        let account = self.get_account(id).await?;
        Ok(Response::new(account.into()))
    }
}
