//! Percentiles of latency samples, exact (sorted), in microseconds.

use std::time::Duration;

use serde::Serialize;

/// The distribution of one latency, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples`; all zero when there are none.
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Percentiles {
        let mut sorted: Vec<Duration> = samples.into_iter().collect();
        if sorted.is_empty() {
            return Percentiles::default();
        }
        sorted.sort_unstable();
        let rank = |p: f64| {
            let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
            micros(sorted[index])
        };
        let total: Duration = sorted.iter().sum();
        Percentiles {
            count: sorted.len(),
            p50_us: rank(0.50),
            p90_us: rank(0.90),
            p99_us: rank(0.99),
            p999_us: rank(0.999),
            max_us: micros(sorted[sorted.len() - 1]),
            mean_us: micros(total) / sorted.len() as f64,
        }
    }
}

pub fn micros(duration: Duration) -> f64 {
    duration.as_nanos() as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let samples = (1..=1000).map(Duration::from_micros);
        let p = Percentiles::of(samples);
        assert_eq!(
            (p.p50_us, p.p99_us, p.p999_us, p.max_us),
            (500.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(Percentiles::of([]).count, 0);
    }
}
