//! The profile core: profiles, blocks, reports and discovery, independent of transport.

use std::sync::Arc;

use unilink_bus::{BusError, Redis};
use unilink_db::Uuid;
use unilink_domain::{Bio, FullName, PictureUrl, ReportReason, UserId, parse_report_description};
use unilink_presence::PresenceRegistry;

use crate::cache::{Among, ReadCache, Versions};
use crate::error::ProfileError;
use crate::repo::{BlockMade, CallParties, Changes, Profile, ProfileRepository, Report};

/// A profile with its live presence.
#[derive(Debug, Clone)]
pub struct ProfileView {
    pub profile: Profile,
    pub is_online: bool,
}

/// An update as received (unparsed).
#[derive(Debug, Clone, Default)]
pub struct Update {
    pub full_name: Option<String>,
    pub bio: Option<String>,
    pub profile_picture: Option<String>,
    pub clear_profile_picture: bool,
}

/// Default and largest page of `/calls/available`.
pub const DEFAULT_AVAILABLE: u32 = 20;
pub const MAX_AVAILABLE: u32 = 50;

#[derive(Debug, Clone)]
pub struct ProfileService {
    profiles: ProfileRepository,
    presence: PresenceRegistry,
    cache: Arc<ReadCache>,
    versions: Versions,
}

/// Logs and counts a read that could not use the cache (Redis away) and
/// falls back to PostgreSQL, with presence unknown (offline).
fn uncached(e: &BusError) {
    tracing::warn!(error = %e, "presence and read cache unavailable; reading PostgreSQL, answering offline");
    metrics::counter!("presence_unavailable_total").increment(1);
}

impl ProfileService {
    pub fn new(profiles: ProfileRepository, presence: PresenceRegistry, redis: Redis) -> Self {
        ProfileService {
            cache: Arc::new(ReadCache::new(redis.clone(), presence.clone())),
            versions: Versions::new(redis),
            profiles,
            presence,
        }
    }

    async fn existing(&self, user_id: UserId) -> Result<Profile, ProfileError> {
        self.profiles
            .find(user_id)
            .await?
            .filter(|p| p.is_active)
            .ok_or(ProfileError::ProfileNotFound)
    }

    /// Presence, or offline when Redis cannot say (logged and counted in
    /// `presence_unavailable_total`): reading or changing a profile must not
    /// fail because the presence store is away for a moment.
    async fn is_online(&self, user: UserId) -> bool {
        match self.presence.is_online(user).await {
            Ok(online) => online,
            Err(e) => {
                tracing::warn!(error = %e, "presence unavailable; answering offline");
                metrics::counter!("presence_unavailable_total").increment(1);
                false
            }
        }
    }

    /// The profile of this user, with presence.
    pub async fn get_profile(&self, user_id: UserId) -> Result<ProfileView, ProfileError> {
        let look = match self.cache.look(None, Among::Users(&[user_id])).await {
            Ok(look) => look,
            Err(e) => {
                uncached(&e);
                let profile = self.profiles.find(user_id).await?;
                let profile = profile.ok_or(ProfileError::ProfileNotFound)?;
                return Ok(ProfileView {
                    profile,
                    is_online: false,
                });
            }
        };
        let profile = self.cache.profiles(&self.profiles, &look.seen).await?.pop().flatten();
        let profile = profile.ok_or(ProfileError::ProfileNotFound)?;
        Ok(ProfileView {
            profile: Arc::unwrap_or_clone(profile),
            is_online: look.seen.first().is_some_and(|s| s.online),
        })
    }

    /// `user`'s profile as `viewer` may see it.
    pub async fn view_profile(&self, viewer: UserId, user: UserId) -> Result<ProfileView, ProfileError> {
        let look = match self.cache.look(Some(viewer), Among::Users(&[user])).await {
            Ok(look) => look,
            Err(e) => {
                uncached(&e);
                return self.view_profile_uncached(viewer, user).await;
            }
        };
        let (profile, blocks) = tokio::try_join!(
            self.cache.profiles(&self.profiles, &look.seen),
            self.cache.blocks(&self.profiles, viewer, &look)
        )?;
        let profile = profile
            .into_iter()
            .next()
            .flatten()
            .filter(|p| p.is_active)
            .ok_or(ProfileError::ProfileNotFound)?;
        if viewer != user && blocks.received.contains(&user) {
            return Err(ProfileError::BlockedByUser);
        }
        Ok(ProfileView {
            profile: Arc::unwrap_or_clone(profile),
            is_online: look.seen.first().is_some_and(|s| s.online),
        })
    }

    async fn view_profile_uncached(&self, viewer: UserId, user: UserId) -> Result<ProfileView, ProfileError> {
        let blocked = async {
            if viewer == user {
                Ok(false)
            } else {
                self.profiles.has_blocked(user, viewer).await
            }
        };
        let (profile, blocked, is_online) = tokio::join!(self.existing(user), blocked, self.is_online(user));
        let profile = profile?;
        if blocked? {
            return Err(ProfileError::BlockedByUser);
        }
        Ok(ProfileView { profile, is_online })
    }

    /// May `caller` call `receiver`? The facts signaling decides on (the
    /// receiver's availability, blocks either way) and both usernames; not a
    /// verdict. A caller without a profile yet gets an empty username rather
    /// than an error: the receiver is the one who must exist.
    pub async fn call_eligibility(&self, caller: UserId, receiver: UserId) -> Result<CallParties, ProfileError> {
        let look = match self.cache.look(Some(caller), Among::Users(&[caller, receiver])).await {
            Ok(look) => look,
            Err(e) => {
                uncached(&e);
                return self
                    .profiles
                    .call_parties(caller, receiver)
                    .await?
                    .ok_or(ProfileError::ProfileNotFound);
            }
        };
        let (profiles, blocks) = tokio::try_join!(
            self.cache.profiles(&self.profiles, &look.seen),
            self.cache.blocks(&self.profiles, caller, &look)
        )?;
        let mut profiles = profiles.into_iter();
        let (caller_profile, receiver_profile) = (profiles.next().flatten(), profiles.next().flatten());
        let receiver_profile = receiver_profile.ok_or(ProfileError::ProfileNotFound)?;
        Ok(CallParties {
            caller_username: caller_profile.map(|p| p.username.clone()).unwrap_or_default(),
            receiver_username: receiver_profile.username.clone(),
            receiver_available: receiver_profile.is_verified && receiver_profile.is_active,
            blocked: blocks.either_way(&receiver),
        })
    }

    /// Partial update of the caller's own profile.
    pub async fn update_profile(&self, user_id: UserId, update: Update) -> Result<ProfileView, ProfileError> {
        let changes = Changes {
            full_name: update
                .full_name
                .as_deref()
                .map(FullName::parse)
                .transpose()?
                .map(|n| n.as_str().to_owned()),
            bio: update
                .bio
                .as_deref()
                .map(Bio::parse)
                .transpose()?
                .map(|b| b.as_str().to_owned()),
            profile_picture: if update.clear_profile_picture {
                Some(None)
            } else {
                update
                    .profile_picture
                    .as_deref()
                    .map(PictureUrl::parse)
                    .transpose()?
                    .map(|p| Some(p.as_str().to_owned()))
            },
        };
        let profile = self
            .profiles
            .update(user_id, &changes)
            .await?
            .ok_or(ProfileError::ProfileNotFound)?;
        self.versions.after_write(self.versions.profile_changed(user_id).await);
        let is_online = self.is_online(user_id).await;
        Ok(ProfileView { profile, is_online })
    }

    pub async fn block(&self, user: UserId, target: UserId) -> Result<(), ProfileError> {
        if user == target {
            return Err(ProfileError::SelfAction("block"));
        }
        self.existing(target).await?;
        self.profiles.block(user, target).await?;
        self.versions
            .after_write(self.versions.blocks_changed(&[user, target]).await);
        tracing::info!(audit = true, action = "user.blocked", user_id = %user, target = %target, "blocked");
        Ok(())
    }

    pub async fn unblock(&self, user: UserId, target: UserId) -> Result<(), ProfileError> {
        if user == target {
            return Err(ProfileError::SelfAction("unblock"));
        }
        if !self.profiles.unblock(user, target).await? {
            return Err(ProfileError::NotBlocked);
        }
        self.versions
            .after_write(self.versions.blocks_changed(&[user, target]).await);
        tracing::info!(audit = true, action = "user.unblocked", user_id = %user, target = %target, "unblocked");
        Ok(())
    }

    pub async fn report(
        &self,
        reporter: UserId,
        reported: UserId,
        reason: &str,
        description: Option<&str>,
    ) -> Result<(), ProfileError> {
        if reporter == reported {
            return Err(ProfileError::SelfAction("report"));
        }
        let reason = ReportReason::parse(reason)?;
        let description = description.map(parse_report_description).transpose()?;
        self.existing(reported).await?;
        match self
            .profiles
            .report(reporter, reported, reason.as_str(), description.as_deref())
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_unique_violation() => return Err(ProfileError::ReportAlreadyOpen),
            Err(e) => return Err(e.into()),
        }
        tracing::info!(audit = true, action = "user.reported", user_id = %reporter, target = %reported, "report filed");
        Ok(())
    }

    /// Everything stored about `user` here: profile, blocks made, reports made.
    pub async fn export(
        &self,
        user: UserId,
    ) -> Result<(Option<ProfileView>, Vec<BlockMade>, Vec<Report>), ProfileError> {
        let profile = match self.profiles.find(user).await? {
            Some(profile) => Some(ProfileView {
                is_online: self.is_online(user).await,
                profile,
            }),
            None => None,
        };
        let blocks = self.profiles.blocks_made(user).await?;
        let reports = self.profiles.reports_made(user).await?;
        tracing::info!(audit = true, action = "user.export", user_id = %user, "personal data exported");
        Ok((profile, blocks, reports))
    }

    /// Moderation: reports by status (`open`, `resolved`, or all), newest first.
    pub async fn list_reports(
        &self,
        status: &str,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<Report>, i64), ProfileError> {
        let status = match status {
            "" => None,
            "open" | "resolved" => Some(status),
            _ => {
                return Err(unilink_domain::DomainError::Invalid("status must be open or resolved".to_owned()).into());
            }
        };
        let limit = if limit == 0 { 50 } else { limit.min(100) };
        Ok(self
            .profiles
            .reports(status, i64::from(limit), i64::from(offset))
            .await?)
    }

    /// Moderation: marks a report resolved.
    pub async fn resolve_report(&self, report: Uuid, admin: UserId) -> Result<Report, ProfileError> {
        let resolved = self
            .profiles
            .resolve_report(report, admin)
            .await?
            .ok_or(ProfileError::ReportNotFound)?;
        tracing::info!(audit = true, action = "admin.resolve_report", admin_id = %admin, report_id = %report, "report resolved");
        Ok(resolved)
    }

    /// Up to `limit` users the caller may call: online, verified, active, not
    /// the caller, not blocked either way; most recently online first. One
    /// script per round (presence and cache tokens), and PostgreSQL only for
    /// what the cache lacks; rounds widen the window only when many online
    /// users are filtered out.
    pub async fn list_available(&self, user: UserId, limit: u32) -> Result<Vec<ProfileView>, ProfileError> {
        let limit = if limit == 0 {
            DEFAULT_AVAILABLE
        } else {
            limit.min(MAX_AVAILABLE)
        } as usize;
        // Most online users are callable (only verified users can sign in;
        // blocks are few), so the first round looks at a few more than asked
        // for; the window grows only when that was not enough.
        let mut window = limit + 10;
        loop {
            let look = self.cache.look(Some(user), Among::RecentlyOnline(window)).await?;
            let (profiles, blocks) = tokio::try_join!(
                self.cache.profiles(&self.profiles, &look.seen),
                self.cache.blocks(&self.profiles, user, &look)
            )?;
            let found: Vec<ProfileView> = profiles
                .into_iter()
                .flatten()
                .filter(|p| p.is_verified && p.is_active && p.user_id != user && !blocks.either_way(&p.user_id))
                .take(limit)
                .map(|profile| ProfileView {
                    profile: Arc::unwrap_or_clone(profile),
                    is_online: true,
                })
                .collect();
            if found.len() >= limit || look.seen.len() < window || window >= 20_000 {
                return Ok(found);
            }
            window *= 4;
        }
    }
}
