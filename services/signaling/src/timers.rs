//! Call time limits, run by every replica once a second. Each sweep locks
//! the calls it closes with `FOR UPDATE SKIP LOCKED`, so replicas never
//! close the same call twice, and each closure is one transaction with its
//! event.
//!
//! * ringing longer than `CALL_RING_TIMEOUT` → `missed`;
//! * ongoing longer than `CALL_MAX_DURATION` → `completed`;
//! * ongoing with no signaling socket anywhere for `CALL_DISCONNECT_GRACE`
//!   → `completed` (abandoned).

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use unilink_db::Uuid;

use crate::domain::CallAction;
use crate::error::SignalingError;
use crate::service::CallService;

const SWEEP_EVERY: Duration = Duration::from_secs(1);
const BATCH: i64 = 200;

pub async fn run(core: CallService, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if let Err(e) = sweep(&core).await {
            tracing::warn!(error = %e, "call timers failed; retrying");
        }
    }
}

/// One pass over the three limits; returns how many calls it closed.
pub async fn sweep(core: &CallService) -> Result<usize, SignalingError> {
    let settings = &core.settings;
    let mut closed = core
        .calls
        .close_due(
            CallAction::RingTimeout,
            "created_at < now() - make_interval(secs => $1) LIMIT $2",
            &[&settings.ring_timeout.as_secs_f64(), &BATCH],
        )
        .await?;
    closed.extend(
        core.calls
            .close_due(
                CallAction::MaxDuration,
                "started_at < now() - make_interval(secs => $1) LIMIT $2",
                &[&settings.max_duration.as_secs_f64(), &BATCH],
            )
            .await?,
    );
    let grace = chrono::Duration::from_std(settings.disconnect_grace).unwrap_or_default();
    let candidates = core.calls.ongoing_started_before(Utc::now() - grace, BATCH).await?;
    if !candidates.is_empty() {
        let live = core.connections.recently_live(&candidates).await?;
        let abandoned: Vec<Uuid> = candidates
            .iter()
            .zip(live)
            .filter(|(_, live)| !live)
            .map(|(c, _)| c.as_uuid())
            .collect();
        if !abandoned.is_empty() {
            closed.extend(
                core.calls
                    .close_due(CallAction::Abandon, "id = ANY($1)", &[&abandoned])
                    .await?,
            );
        }
    }
    for (call, change) in &closed {
        tracing::info!(call_id = %call.id, status = call.status.as_str(), reason = change.action.reason(), "call closed by timer");
        core.after_close(call, change).await;
    }
    Ok(closed.len())
}
