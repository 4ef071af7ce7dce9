//! `unilink.profile.v1.ProfileService`: converts, calls the core, converts back.

use tonic::{Request, Response, Status};
use unilink_domain::UserId;
use unilink_proto::profile::profile_service_server::{ProfileService as ProfileRpc, ProfileServiceServer};
use unilink_proto::profile::{
    AvailableUsers, BlockEntry, BlockRequest, CallEligibilityReply, CallEligibilityRequest, GetProfileRequest,
    ListAvailableRequest, ListReportsRequest, Profile as ProfileMessage, ProfileAck, ReportEntry, ReportRequest,
    Reports, ResolveReportRequest, UpdateProfileRequest, UserDataExport, ViewProfileRequest,
};

use crate::error::ProfileError;
use crate::repo::{CallParties, Report};
use crate::service::{ProfileService, ProfileView, Update};

/// The gRPC face of the core: parses requests, calls it, converts results.
#[derive(Debug, Clone)]
pub struct ProfileApi {
    core: ProfileService,
}

pub fn server(core: ProfileService) -> ProfileServiceServer<ProfileApi> {
    ProfileServiceServer::new(ProfileApi { core })
}

impl From<ProfileView> for ProfileMessage {
    fn from(v: ProfileView) -> Self {
        let p = v.profile;
        ProfileMessage {
            user_id: p.user_id.to_string(),
            username: p.username,
            full_name: p.full_name,
            bio: p.bio,
            profile_picture: p.profile_picture,
            created_at: Some(unilink_proto::timestamp(p.created_at)),
            updated_at: Some(unilink_proto::timestamp(p.updated_at)),
            email: p.email,
            is_verified: p.is_verified,
            is_active: p.is_active,
            is_online: v.is_online,
        }
    }
}

impl From<Report> for ReportEntry {
    fn from(r: Report) -> Self {
        ReportEntry {
            id: r.id.to_string(),
            reporter_id: r.reporter_id.to_string(),
            reported_id: r.reported_id.to_string(),
            reason: r.reason,
            description: r.description,
            status: r.status,
            created_at: Some(unilink_proto::timestamp(r.created_at)),
            resolved_at: r.resolved_at.map(unilink_proto::timestamp),
            resolved_by: r.resolved_by.map(|id| id.to_string()),
        }
    }
}

impl From<CallParties> for CallEligibilityReply {
    fn from(c: CallParties) -> Self {
        CallEligibilityReply {
            receiver_available: c.receiver_available,
            blocked: c.blocked,
            caller_username: c.caller_username,
            receiver_username: c.receiver_username,
        }
    }
}

fn id(raw: &str) -> Result<UserId, ProfileError> {
    Ok(UserId::parse(raw)?)
}

fn ack(message: &str) -> Response<ProfileAck> {
    Response::new(ProfileAck {
        message: message.to_owned(),
    })
}

#[tonic::async_trait]
impl ProfileRpc for ProfileApi {
    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn get_profile(&self, request: Request<GetProfileRequest>) -> Result<Response<ProfileMessage>, Status> {
        let user = id(&request.get_ref().user_id)?;
        Ok(Response::new(self.core.get_profile(user).await?.into()))
    }

    #[tracing::instrument(skip_all)]
    async fn view_profile(&self, request: Request<ViewProfileRequest>) -> Result<Response<ProfileMessage>, Status> {
        let r = request.get_ref();
        let view = self.core.view_profile(id(&r.viewer_id)?, id(&r.user_id)?).await?;
        Ok(Response::new(view.into()))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn update_profile(&self, request: Request<UpdateProfileRequest>) -> Result<Response<ProfileMessage>, Status> {
        let r = request.into_inner();
        let update = Update {
            full_name: r.full_name,
            bio: r.bio,
            profile_picture: r.profile_picture,
            clear_profile_picture: r.clear_profile_picture,
        };
        Ok(Response::new(
            self.core.update_profile(id(&r.user_id)?, update).await?.into(),
        ))
    }

    #[tracing::instrument(skip_all)]
    async fn block(&self, request: Request<BlockRequest>) -> Result<Response<ProfileAck>, Status> {
        let r = request.get_ref();
        self.core.block(id(&r.user_id)?, id(&r.target_id)?).await?;
        Ok(ack("User blocked"))
    }

    #[tracing::instrument(skip_all)]
    async fn unblock(&self, request: Request<BlockRequest>) -> Result<Response<ProfileAck>, Status> {
        let r = request.get_ref();
        self.core.unblock(id(&r.user_id)?, id(&r.target_id)?).await?;
        Ok(ack("User unblocked"))
    }

    #[tracing::instrument(skip_all)]
    async fn report(&self, request: Request<ReportRequest>) -> Result<Response<ProfileAck>, Status> {
        let r = request.get_ref();
        self.core
            .report(
                id(&r.reporter_id)?,
                id(&r.reported_id)?,
                &r.reason,
                r.description.as_deref(),
            )
            .await?;
        Ok(ack("Report submitted; our moderators will review it"))
    }

    #[tracing::instrument(skip_all)]
    async fn list_available(&self, request: Request<ListAvailableRequest>) -> Result<Response<AvailableUsers>, Status> {
        let r = request.get_ref();
        let users = self.core.list_available(id(&r.user_id)?, r.limit).await?;
        Ok(Response::new(AvailableUsers {
            users: users.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_reports(&self, request: Request<ListReportsRequest>) -> Result<Response<Reports>, Status> {
        let r = request.get_ref();
        let (reports, total) = self.core.list_reports(&r.status, r.limit, r.offset).await?;
        Ok(Response::new(Reports {
            reports: reports.into_iter().map(Into::into).collect(),
            total: total.max(0) as u64,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn resolve_report(&self, request: Request<ResolveReportRequest>) -> Result<Response<ReportEntry>, Status> {
        let r = request.get_ref();
        let report = unilink_db::Uuid::parse_str(r.report_id.trim()).map_err(|_| {
            ProfileError::Invalid(unilink_domain::DomainError::InvalidId {
                what: "report id",
                value: r.report_id.chars().take(64).collect(),
            })
        })?;
        Ok(Response::new(
            self.core.resolve_report(report, id(&r.admin_id)?).await?.into(),
        ))
    }

    #[tracing::instrument(skip_all, fields(user_id = %request.get_ref().user_id))]
    async fn export_user_data(&self, request: Request<GetProfileRequest>) -> Result<Response<UserDataExport>, Status> {
        let (profile, blocks, reports) = self.core.export(id(&request.get_ref().user_id)?).await?;
        Ok(Response::new(UserDataExport {
            profile: profile.map(Into::into),
            blocks: blocks
                .into_iter()
                .map(|b| BlockEntry {
                    blocked_id: b.blocked_id.to_string(),
                    created_at: Some(unilink_proto::timestamp(b.created_at)),
                })
                .collect(),
            reports: reports.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(caller_id = %request.get_ref().caller_id, receiver_id = %request.get_ref().receiver_id))]
    async fn call_eligibility(
        &self,
        request: Request<CallEligibilityRequest>,
    ) -> Result<Response<CallEligibilityReply>, Status> {
        let r = request.get_ref();
        let parties = self
            .core
            .call_eligibility(id(&r.caller_id)?, id(&r.receiver_id)?)
            .await?;
        Ok(Response::new(parties.into()))
    }
}
