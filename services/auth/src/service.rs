//! The auth core: rules about accounts, independent of transport.

use unilink_domain::UserId;

use crate::error::AuthError;
use crate::repo::{Account, AccountRepository};

#[derive(Debug, Clone)]
pub struct AccountService {
    accounts: AccountRepository,
}

impl AccountService {
    pub fn new(accounts: AccountRepository) -> Self {
        AccountService { accounts }
    }

    /// The account with this id.
    pub async fn get_account(&self, id: UserId) -> Result<Account, AuthError> {
        self.accounts
            .find(id)
            .await?
            .ok_or(AuthError::AccountNotFound)
    }
}
