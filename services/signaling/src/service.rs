//! The signaling core: rules about calls, independent of transport.

use chrono::Utc;
use unilink_config::CallSettings;
use unilink_domain::{CallId, UserId};
use unilink_grpc::GrpcChannel;
use unilink_presence::PresenceRegistry;
use unilink_proto::profile::CallEligibilityRequest;
use unilink_proto::profile::profile_service_client::ProfileServiceClient;
use unilink_protocol::CallFrame;
use unilink_relay::{CallConnections, CallSockets, SignalRelay};

use crate::domain::{Call, CallAction, CallStatus, Change};
use crate::error::SignalingError;
use crate::ice::{IceServer, ice_servers};
use crate::repo::{CallRepository, Cursor, NewCall};

/// History pages: default and largest size.
pub const HISTORY_DEFAULT: u32 = 50;
pub const HISTORY_MAX: u32 = 100;

/// What a participant joining a call's signaling is told.
#[derive(Debug, Clone)]
pub struct Joined {
    pub call: Call,
    pub peer: UserId,
    pub peer_here: bool,
}

#[derive(Debug, Clone)]
pub struct CallService {
    pub(crate) calls: CallRepository,
    profiles: GrpcChannel,
    presence: PresenceRegistry,
    pub(crate) connections: CallConnections,
    pub(crate) relay: SignalRelay,
    pub(crate) settings: CallSettings,
}

impl CallService {
    pub fn new(
        calls: CallRepository,
        profiles: GrpcChannel,
        presence: PresenceRegistry,
        connections: CallConnections,
        relay: SignalRelay,
        settings: CallSettings,
    ) -> Self {
        CallService {
            calls,
            profiles,
            presence,
            connections,
            relay,
            settings,
        }
    }

    /// A call, for one of its participants.
    pub async fn call_for(&self, user: UserId, id: CallId) -> Result<Call, SignalingError> {
        let call = self.calls.find(id).await?.ok_or(SignalingError::CallNotFound)?;
        if !call.is_participant(user) {
            return Err(SignalingError::NotParticipant);
        }
        Ok(call)
    }

    /// Rings `receiver` on behalf of `caller`.
    pub async fn initiate(&self, caller: UserId, receiver: UserId) -> Result<Call, SignalingError> {
        if caller == receiver {
            return Err(SignalingError::BadRequest("you cannot call yourself"));
        }
        let eligibility = ProfileServiceClient::new(self.profiles.clone())
            .call_eligibility(CallEligibilityRequest {
                caller_id: caller.to_string(),
                receiver_id: receiver.to_string(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => SignalingError::UserNotFound,
                _ => SignalingError::Profiles(status),
            })?
            .into_inner();
        if eligibility.blocked {
            return Err(SignalingError::Forbidden("you cannot call this user"));
        }
        if !eligibility.receiver_available || !self.presence.is_online(receiver).await? {
            return Err(SignalingError::BadRequest("user is offline"));
        }
        let call = self
            .calls
            .create(&NewCall {
                id: CallId::new(),
                initiator_id: caller,
                receiver_id: receiver,
                initiator_username: eligibility.caller_username,
                receiver_username: eligibility.receiver_username,
                call_token: call_token()?,
            })
            .await?;
        metrics::counter!("calls_started_total").increment(1);
        tracing::info!(call_id = %call.id, caller = %caller, receiver = %receiver, "call initiated");
        Ok(call)
    }

    pub async fn accept(&self, user: UserId, id: CallId) -> Result<Call, SignalingError> {
        let (call, _) = self.answer(user, id, CallAction::Accept, "accepted").await?;
        metrics::counter!("calls_accepted_total").increment(1);
        Ok(call)
    }

    pub async fn reject(&self, user: UserId, id: CallId) -> Result<Call, SignalingError> {
        let (call, change) = self.answer(user, id, CallAction::Reject, "rejected").await?;
        self.after_close(&call, &change).await;
        Ok(call)
    }

    /// Accept and reject: the receiver of a pending call only.
    async fn answer(
        &self,
        user: UserId,
        id: CallId,
        action: CallAction,
        done: &str,
    ) -> Result<(Call, Change), SignalingError> {
        self.calls
            .transition(id, |call| {
                if !call.is_participant(user) {
                    return Err(SignalingError::NotParticipant);
                }
                if call.receiver_id != user {
                    return Err(SignalingError::Forbidden("only the receiver can answer this call"));
                }
                call.change(action, Some(user))
                    .map_err(|e| SignalingError::WrongState(format!("call is {}, it cannot be {done}", e.from)))
            })
            .await
    }

    /// Ends an ongoing call; a pending one is cancelled by its caller or
    /// rejected by its receiver.
    pub async fn end(&self, user: UserId, id: CallId) -> Result<Call, SignalingError> {
        let (call, change) = self
            .calls
            .transition(id, |call| {
                if !call.is_participant(user) {
                    return Err(SignalingError::NotParticipant);
                }
                let action = CallAction::end_by(call.status, call.initiator_id == user);
                call.change(action, Some(user))
                    .map_err(|e| SignalingError::WrongState(format!("call is already {}", e.from)))
            })
            .await?;
        self.after_close(&call, &change).await;
        Ok(call)
    }

    /// Every closed call: counted, and both signaling sockets told
    /// (`call_ended`), so they close wherever they are.
    pub(crate) async fn after_close(&self, call: &Call, change: &Change) {
        match call.status {
            CallStatus::Completed => {
                metrics::counter!("calls_completed_total").increment(1);
                metrics::histogram!("call_duration_seconds").record(call.duration_seconds as f64);
            }
            CallStatus::Missed => metrics::counter!("calls_missed_total").increment(1),
            CallStatus::Rejected => metrics::counter!("calls_rejected_total").increment(1),
            CallStatus::Cancelled => metrics::counter!("calls_cancelled_total").increment(1),
            CallStatus::Pending | CallStatus::Ongoing => return,
        }
        let message = match (change.actor, change.action) {
            (Some(a), _) if a == call.initiator_id => format!("{} ended the call", call.initiator_username),
            (Some(_), _) => format!("{} ended the call", call.receiver_username),
            (None, CallAction::RingTimeout) => "the call was not answered".to_owned(),
            (None, CallAction::MaxDuration) => "the call reached its maximum duration".to_owned(),
            (None, CallAction::Abandon) => "both participants left the call".to_owned(),
            (None, _) => "the call was ended".to_owned(),
        };
        let frame = CallFrame::CallEnded {
            user_id: change.actor,
            status: call.status.as_str().to_owned(),
            message,
        };
        let traceparent = unilink_telemetry::inject().remove("traceparent").unwrap_or_default();
        for user in [call.initiator_id, call.receiver_id] {
            if let Err(e) = self.relay.send(call.id, user, "system", &frame, &traceparent).await {
                tracing::warn!(call_id = %call.id, error = %e, "could not relay call_ended");
            }
            // Nothing follows `call_ended`: the mailbox only has to outlive
            // the resume window, not the hour an open call's does.
            if let Err(e) = self.relay.retire(call.id, user).await {
                tracing::debug!(call_id = %call.id, error = %e, "mailbox keeps its longer expiry");
            }
        }
    }

    /// `user` opens a socket on call `id` (connection `connection`): allowed
    /// while the call is pending or ongoing, for its participants. The
    /// socket is registered before the answer; returns the call, the peer
    /// and whether the peer has a socket on it.
    pub async fn join(&self, user: UserId, id: CallId, connection: &str) -> Result<Joined, SignalingError> {
        let call = self.call_for(user, id).await?;
        if !call.status.is_open() {
            return Err(SignalingError::WrongState(format!("call is {}", call.status.as_str())));
        }
        let peer = call.peer_of(user);
        let peer_here = self.connections.beat(id, user, peer, connection).await?;
        Ok(Joined { call, peer, peer_here })
    }

    /// A participant's WebRTC connection state, as its client reports it.
    pub async fn report_state(&self, user: UserId, id: CallId, state: &str) -> Result<(), SignalingError> {
        self.call_for(user, id).await?;
        let state: String = state.chars().take(32).collect();
        if state == "failed" {
            metrics::counter!("webrtc_connection_failures_total").increment(1);
        }
        self.connections.report_state(id, user, &state).await?;
        Ok(())
    }

    pub async fn active(&self, user: UserId) -> Result<Option<Call>, SignalingError> {
        self.calls.open_call_of(user, CallStatus::Ongoing).await
    }

    /// The call ringing for `user`: only one they receive (the caller's
    /// own outgoing call is not offered to them to accept).
    pub async fn pending(&self, user: UserId) -> Result<Option<Call>, SignalingError> {
        let call = self.calls.open_call_of(user, CallStatus::Pending).await?;
        Ok(call.filter(|c| c.receiver_id == user))
    }

    /// A page of the user's calls, newest first, and the cursor of the next.
    pub async fn history(
        &self,
        user: UserId,
        limit: u32,
        cursor: &str,
    ) -> Result<(Vec<Call>, Option<String>), SignalingError> {
        let limit = match limit {
            0 => HISTORY_DEFAULT,
            n if n > HISTORY_MAX => return Err(SignalingError::BadRequest("limit must be between 1 and 100")),
            n => n,
        };
        let cursor = match cursor {
            "" => None,
            raw => Some(Cursor::decode(raw).ok_or(SignalingError::BadRequest("invalid cursor"))?),
        };
        let mut calls = self.calls.history(user, i64::from(limit) + 1, cursor).await?;
        let next = if calls.len() > limit as usize {
            calls.truncate(limit as usize);
            calls.last().map(|c| {
                Cursor {
                    created_at: c.created_at,
                    id: c.id.as_uuid(),
                }
                .encode()
            })
        } else {
            None
        };
        Ok((calls, next))
    }

    /// Every call of the user (personal-data export).
    pub async fn export(&self, user: UserId) -> Result<Vec<Call>, SignalingError> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.calls.history(user, 500, cursor).await?;
            let done = page.len() < 500;
            cursor = page.last().map(|c| Cursor {
                created_at: c.created_at,
                id: c.id.as_uuid(),
            });
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    pub fn ice_servers(&self, user: UserId) -> (Vec<IceServer>, u32) {
        ice_servers(&self.settings, user, Utc::now().timestamp())
    }

    /// Who is connected to the call's signaling sockets (participants only).
    pub async fn connection_state(&self, user: UserId, id: CallId) -> Result<CallSockets, SignalingError> {
        let call = self.call_for(user, id).await?;
        Ok(self
            .connections
            .sockets(id, [call.initiator_id, call.receiver_id])
            .await?)
    }

    pub async fn active_connections(&self) -> Result<Vec<CallSockets>, SignalingError> {
        Ok(self.connections.all().await?)
    }

    /// Ends every open call of a user whose account was closed.
    pub async fn close_calls_of(&self, user: UserId) -> Result<(), SignalingError> {
        for id in self.calls.open_calls_of(user).await? {
            let closed = self
                .calls
                .transition(id, |call| {
                    call.change(CallAction::CloseAccount, None)
                        .map_err(|_| SignalingError::WrongState("closed".to_owned()))
                })
                .await;
            match closed {
                Ok((call, change)) => self.after_close(&call, &change).await,
                Err(SignalingError::WrongState(_) | SignalingError::CallNotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// 32 random bytes, base64url: the call's token.
fn call_token() -> Result<String, SignalingError> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|_| SignalingError::Internal("no randomness available"))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}
