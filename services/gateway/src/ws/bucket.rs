//! The frame rate of one socket: bursts are slowed, not dropped.

use std::time::{Duration, Instant};

/// Frames per second, with a burst of [`BURST_SECONDS`] seconds' worth.
/// A frame beyond it is not refused: the socket waits until the bucket has a
/// token for it (the bucket goes into debt, and the session sleeps the debt
/// off before reading on, while frames for it keep flowing), so the client
/// is slowed by backpressure. Only a
/// client that keeps the bucket empty for [`FLOOD_LIMIT`] is disconnected.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
    /// Since when every frame has had to wait.
    empty_since: Option<Instant>,
}

/// The burst a bucket allows, in seconds of its rate: a WebRTC client's
/// trickle of ICE candidates after an offer comes in one burst.
const BURST_SECONDS: f64 = 4.0;
/// A socket whose every frame has had to wait this long is flooding.
const FLOOD_LIMIT: Duration = Duration::from_secs(10);

impl TokenBucket {
    pub fn new(rate: u32, now: Instant) -> TokenBucket {
        let rate = f64::from(rate);
        TokenBucket {
            rate,
            burst: rate * BURST_SECONDS,
            tokens: rate * BURST_SECONDS,
            at: now,
            empty_since: None,
        }
    }

    /// Takes a token for a frame arriving at `now`: how long the frame must
    /// wait for it (zero when one was there).
    fn take(&mut self, now: Instant) -> Duration {
        self.tokens = (self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            self.empty_since = None;
            return Duration::ZERO;
        }
        self.empty_since.get_or_insert(now);
        Duration::from_secs_f64(-self.tokens / self.rate)
    }

    /// Whether the bucket has been kept empty for [`FLOOD_LIMIT`] at `now`.
    fn flooded(&self, now: Instant) -> bool {
        self.empty_since
            .is_some_and(|since| now.saturating_duration_since(since) >= FLOOD_LIMIT)
    }

    /// When a frame read now may be handled: at once, after the debt is
    /// slept off (the socket is not read meanwhile, so the client's TCP
    /// window closes), or never (a sustained flood: close the socket).
    pub fn admit(&mut self) -> Admit {
        let now = Instant::now();
        let wait = self.take(now);
        if wait.is_zero() {
            return Admit::Now;
        }
        if self.flooded(now) {
            return Admit::Flood;
        }
        metrics::counter!("signaling_frames_throttled_total").increment(1);
        Admit::At(tokio::time::Instant::from_std(now + wait))
    }
}

/// What [`TokenBucket::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Now,
    /// Handle the frame at this time, reading nothing more until then.
    At(tokio::time::Instant),
    Flood,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_slows_beyond_the_burst_and_gives_up_only_on_a_sustained_flood() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, start);
        // The burst passes at once.
        assert!((0..40).all(|_| bucket.take(start).is_zero()));
        // The next frames wait a tenth of a second more each.
        assert_eq!(bucket.take(start), Duration::from_millis(100));
        assert_eq!(bucket.take(start), Duration::from_millis(200));
        assert!(!bucket.flooded(start));
        // A short pause refills it; the count starts again.
        let at = start + Duration::from_secs(1);
        assert!(bucket.take(at).is_zero());
        assert!(!bucket.flooded(at));
        // Kept empty (every frame waits) for the flood limit: flooding.
        let flood_start = at + Duration::from_millis(1);
        let mut t = flood_start;
        while t < flood_start + FLOOD_LIMIT {
            for _ in 0..20 {
                bucket.take(t);
            }
            t += Duration::from_millis(500);
        }
        assert!(bucket.flooded(t));
    }

    #[test]
    fn five_hundred_candidates_back_to_back_are_slowed_within_the_flood_limit() {
        // Read as fast as the session may: each frame after its wait.
        let start = Instant::now();
        let mut bucket = TokenBucket::new(50, start);
        let mut now = start;
        for _ in 0..500 {
            now += bucket.take(now);
            assert!(!bucket.flooded(now));
        }
        let took = now - start;
        assert!(took > Duration::from_secs(5) && took < FLOOD_LIMIT, "{took:?}");
    }
}
