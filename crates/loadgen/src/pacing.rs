//! What the two relay measurements (through the fleet, and over bare Redis)
//! share: when to send, the stamped frame, and the per-pair
//! bookkeeping of what arrived.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::stats::Samples;

/// When a pair's sender may send its next frame.
///
/// With a rate, at fixed instants (open loop: a late send does not push back
/// the next ones, it shows as lag). Without one ("as fast as possible"), as
/// soon as fewer than a window of the pair's frames are in flight: an
/// unbounded sender would only fill socket buffers (on loopback they hold
/// megabytes, hundreds of thousands of small frames) and measure the
/// queue, not the relay.
#[derive(Debug)]
pub struct Pacer {
    schedule: Schedule,
    start: Instant,
    until: Instant,
    granted: u64,
    progress: Arc<Progress>,
    /// Latest a send started after its instant (rate only).
    pub max_lag: Duration,
    /// Times the window was full and nothing arrived for [`STALL`].
    pub stalls: u64,
}

/// A full window with no arrival for this long is a stall: the sender
/// counts it and sends anyway (a frame lost on the way is then noticed by
/// the relay, which fetches what it missed when the next frame comes).
pub const STALL: Duration = Duration::from_secs(1);

#[derive(Debug)]
enum Schedule {
    Rate { next: Instant, interval: Duration },
    Window(u64),
}

/// Frames of one pair that have arrived, for its sender's window.
#[derive(Debug, Default)]
pub struct Progress {
    arrived: AtomicU64,
    notify: Notify,
}

impl Progress {
    pub fn arrive(&self) {
        self.arrived.fetch_add(1, Ordering::Relaxed);
        self.notify.notify_one();
    }

    pub fn arrived(&self) -> u64 {
        self.arrived.load(Ordering::Relaxed)
    }
}

impl Pacer {
    /// The pacing of pair `index` of `pairs` sharing `rate` frames/s (0 =
    /// at most `window` in flight per pair) from `start` to `until`; with a
    /// rate, the pairs' instants are spread evenly, not sent in bursts.
    pub fn new(
        (rate, window): (u64, u64),
        (pairs, index): (usize, usize),
        (start, until): (Instant, Instant),
        progress: Arc<Progress>,
    ) -> Pacer {
        let schedule = if rate > 0 {
            let interval = Duration::from_secs_f64(pairs as f64 / rate as f64);
            Schedule::Rate {
                next: start + interval.mul_f64(index as f64 / pairs as f64),
                interval,
            }
        } else {
            Schedule::Window(window.max(1))
        };
        Pacer {
            schedule,
            start,
            until,
            granted: 0,
            progress,
            max_lag: Duration::ZERO,
            stalls: 0,
        }
    }

    /// Waits until the next frame may go; `false` once the run is over.
    pub async fn wait(&mut self) -> bool {
        match &mut self.schedule {
            Schedule::Rate { next, interval } => {
                if *next >= self.until {
                    return false;
                }
                tokio::time::sleep_until((*next).into()).await;
                self.max_lag = self.max_lag.max(next.elapsed());
                *next += *interval;
            }
            Schedule::Window(window) => {
                tokio::time::sleep_until(self.start.into()).await;
                loop {
                    if Instant::now() >= self.until {
                        return false;
                    }
                    if self.granted - self.progress.arrived().min(self.granted) < *window {
                        break;
                    }
                    let stall = (Instant::now() + STALL).min(self.until);
                    tokio::select! {
                        () = self.progress.notify.notified() => {}
                        () = tokio::time::sleep_until(stall.into()) => {
                            if Instant::now() >= self.until {
                                return false;
                            }
                            self.stalls += 1;
                            break;
                        }
                    }
                }
            }
        }
        self.granted += 1;
        true
    }
}

/// Nanoseconds since `origin`: the send time a frame carries.
pub fn stamp(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The `candidate` of a relay frame: `t` ns since the shared origin, `n`
/// the frame's number in its pair (1, 2, …).
pub fn candidate(t: u64, n: u64) -> serde_json::Value {
    serde_json::json!({ "t": t, "n": n })
}

/// What arrived for one pair: each `n` once, in order, is the expectation.
#[derive(Debug, Default)]
pub struct Arrivals {
    seen: Vec<u64>,
    highest: u64,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub samples: Samples,
    pub last_at: Option<Instant>,
}

impl Arrivals {
    /// Records frame `n` sent at `t` (ns since `origin`); whether it is
    /// the first arrival of `n`.
    pub fn record(&mut self, origin: Instant, t: u64, n: u64) -> bool {
        let now = Instant::now();
        let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return false;
        }
        self.seen[word] |= bit;
        if n < self.highest {
            self.out_of_order += 1;
        }
        self.highest = self.highest.max(n);
        self.received += 1;
        let sent = origin + Duration::from_nanos(t);
        self.samples.push(now.saturating_duration_since(sent));
        self.last_at = Some(now);
        true
    }
}

/// Waits until the pairs' arrivals reach `sent`, for at most `limit`.
pub async fn drain(progress: &[Arc<Progress>], sent: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    while progress.iter().map(|p| p.arrived()).sum::<u64>() < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The totals of one measurement, over all pairs.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub samples: Samples,
    pub max_lag: Duration,
    pub stalls: u64,
    /// From the first send to the last send.
    pub sending: Duration,
    /// From the first send to the last arrival.
    pub receiving: Duration,
}

/// How one pair's sender did.
#[derive(Debug)]
pub struct Sent {
    pub frames: u64,
    pub max_lag: Duration,
    pub stalls: u64,
    pub finished: Instant,
}

impl Pacer {
    /// The sender's account, once `frames` went out.
    pub fn finish(&self, frames: u64) -> Sent {
        Sent {
            frames,
            max_lag: self.max_lag,
            stalls: self.stalls,
            finished: Instant::now(),
        }
    }
}

impl Tally {
    pub fn add_sent(&mut self, sent: Sent, start: Instant) {
        self.sent += sent.frames;
        self.max_lag = self.max_lag.max(sent.max_lag);
        self.stalls += sent.stalls;
        self.sending = self.sending.max(sent.finished.saturating_duration_since(start));
    }

    pub fn add(&mut self, arrivals: Arrivals, start: Instant) {
        self.received += arrivals.received;
        self.duplicates += arrivals.duplicates;
        self.out_of_order += arrivals.out_of_order;
        self.samples.merge(arrivals.samples);
        if let Some(at) = arrivals.last_at {
            self.receiving = self.receiving.max(at.saturating_duration_since(start));
        }
    }

    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_count_duplicates_and_late_frames() {
        let origin = Instant::now();
        let mut a = Arrivals::default();
        for n in [1, 2, 4, 3, 3, 200, 5] {
            a.record(origin, 0, n);
        }
        assert_eq!(a.received, 6);
        assert_eq!(a.duplicates, 1);
        assert_eq!(a.out_of_order, 2, "3 after 4, 5 after 200");
        assert_eq!(a.samples.len(), 6);
    }

    #[tokio::test]
    async fn pacers_spread_pairs_and_stop_at_the_end() {
        let start = Instant::now();
        let until = start + Duration::from_millis(50);
        let mut p = Pacer::new((400, 0), (2, 1), (start, until), Arc::default());
        let mut sends = 0;
        while p.wait().await {
            sends += 1;
        }
        // 200 frames/s for this pair over 50 ms, first one 2.5 ms in.
        assert_eq!(sends, 10);
        assert!(Instant::now() >= start + Duration::from_millis(45));
    }

    #[tokio::test]
    async fn without_a_rate_a_window_of_frames_is_in_flight() {
        let start = Instant::now();
        let until = start + Duration::from_millis(100);
        let progress = Arc::new(Progress::default());
        let mut p = Pacer::new((0, 3), (1, 0), (start, until), progress.clone());
        for _ in 0..3 {
            assert!(p.wait().await);
        }
        let arrive = {
            let progress = progress.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                progress.arrive();
            })
        };
        assert!(p.wait().await, "the fourth goes once the first arrived");
        assert!(start.elapsed() >= Duration::from_millis(20));
        arrive.await.unwrap();
        assert!(!p.wait().await, "nothing more arrives: stuck until the end");
        assert!(Instant::now() >= until);
        assert_eq!(p.stalls, 0, "the run ended before a stall was declared");
    }
}
