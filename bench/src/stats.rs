//! The figures a phase reports: throughput over a measured interval and latency percentiles.
//! Pure functions of the samples, so they are unit-tested without a broker.

use std::time::Duration;

use serde::Serialize;

/// Messages or tasks completed over a measured interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Throughput {
    /// How many completed.
    pub(crate) count: u64,
    /// The interval, in seconds.
    pub(crate) seconds: f64,
    /// `count / seconds`.
    pub(crate) per_second: f64,
}

impl Throughput {
    /// `count` completions in `elapsed`.
    pub(crate) fn new(count: u64, elapsed: Duration) -> Throughput {
        let seconds = elapsed.as_secs_f64();
        let per_second = if seconds > 0.0 {
            count as f64 / seconds
        } else {
            0.0
        };
        Throughput {
            count,
            seconds,
            per_second,
        }
    }
}

/// Latency percentiles in milliseconds (nearest-rank).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Percentiles {
    /// How many samples.
    pub(crate) samples: usize,
    /// Median.
    pub(crate) p50_ms: f64,
    /// 90th percentile.
    pub(crate) p90_ms: f64,
    /// 99th percentile.
    pub(crate) p99_ms: f64,
    /// Largest sample.
    pub(crate) max_ms: f64,
}

impl Percentiles {
    /// Percentiles of `samples` (milliseconds, any order); `None` without samples.
    pub(crate) fn of(mut samples: Vec<f64>) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let index = (p * samples.len() as f64).ceil() as usize;
            samples[index.clamp(1, samples.len()) - 1]
        };
        Some(Percentiles {
            samples: samples.len(),
            p50_ms: rank(0.50),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            max_ms: samples[samples.len() - 1],
        })
    }
}

/// `numerator / denominator`, or `None` when either is missing or the denominator is zero.
pub(crate) fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d > 0.0 => Some(n / d),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::of(samples).expect("samples");
        assert_eq!(p.samples, 100);
        assert_eq!(
            (p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        let one = Percentiles::of(vec![7.0]).expect("one sample");
        assert_eq!((one.p50_ms, one.p99_ms, one.max_ms), (7.0, 7.0, 7.0));
        assert!(Percentiles::of(Vec::new()).is_none());
    }

    #[test]
    fn throughput_and_ratio() {
        let t = Throughput::new(1000, Duration::from_millis(500));
        assert_eq!(t.per_second, 2000.0);
        assert_eq!(Throughput::new(5, Duration::ZERO).per_second, 0.0);
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
