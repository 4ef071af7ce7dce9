//! Latency samples and their percentiles.
//!
//! Every sample is kept (microseconds, sorted once at the end): a run is
//! bounded by rate × seconds, so this is exact and small enough, and needs
//! no histogram crate.

use std::fmt;
use std::time::Duration;

/// Latency samples in microseconds, plus a count of failed attempts.
#[derive(Debug, Default)]
pub struct Samples {
    pub micros: Vec<u32>,
    pub errors: u64,
}

impl Samples {
    pub fn push(&mut self, latency: Duration) {
        self.micros.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
    }

    pub fn merge(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// Sorts the samples and reads the percentiles.
    pub fn summary(&mut self) -> Summary {
        self.micros.sort_unstable();
        let n = self.micros.len();
        let ms = |p: f64| -> f64 {
            if n == 0 {
                return 0.0;
            }
            let i = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            f64::from(self.micros[i]) / 1000.0
        };
        Summary {
            count: n,
            p50: ms(0.50),
            p90: ms(0.90),
            p99: ms(0.99),
            p999: ms(0.999),
            max: ms(1.0),
        }
    }

    /// The one-line report of the HTTP scenarios; returns p99 in µs.
    pub fn report(&mut self, label: &str, elapsed: Duration) -> u64 {
        let s = self.summary();
        println!(
            "{label}: {} ok, {} errors in {:.1}s = {:.0} req/s; latency ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}",
            s.count,
            self.errors,
            elapsed.as_secs_f64(),
            s.count as f64 / elapsed.as_secs_f64(),
            s.p50,
            s.p90,
            s.p99,
            s.max,
        );
        (s.p99 * 1000.0) as u64
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} p90 {:.2} p99 {:.2} p99.9 {:.2} max {:.2} ms",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

/// `a / b`, or 0 when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut s = Samples::default();
        for ms in 1..=1000u64 {
            s.push(Duration::from_millis(ms));
        }
        let sum = s.summary();
        assert_eq!(sum.count, 1000);
        assert!((sum.p50 - 500.0).abs() < 1e-9);
        assert!((sum.p99 - 990.0).abs() < 1e-9);
        assert!((sum.p999 - 999.0).abs() < 1e-9);
        assert!((sum.max - 1000.0).abs() < 1e-9);
        assert_eq!(Samples::default().summary().count, 0);
    }
}
