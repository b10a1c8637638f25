//! The soak's verdict: whether a figure sampled over the run trends upward.
//!
//! The rule, for each figure: leave out the warm-up (the first tenth of the run, at least
//! [`MIN_WARMUP`]: pools fill, code is compiled, allocators reach their working size), split
//! the samples after it into thirds in time order, and compare the **median** of the last
//! third with the median of the first. The figure rises when
//!
//! ```text
//! last > first × (1 + relative) + absolute
//! ```
//!
//! with a tolerance per figure ([`Tolerance`]). A leak moves every later sample, and so the
//! median of the last third; a one-off spike (a compile after a reload, the slow reader's
//! pause) moves one sample, and a median of three or more leaves it out, where a mean would
//! not. The absolute part covers figures that wobble around small values (open files rise and
//! fall with the connections open at the moment of the sample).

use std::time::Duration;

use serde::Serialize;

/// The least warm-up left out of the verdict.
pub const MIN_WARMUP: Duration = Duration::from_secs(30);

/// Samples needed after the warm-up to judge (one per third).
pub const MIN_SAMPLES: usize = 3;

/// How much a figure may grow between the first and the last third before it counts as rising.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Tolerance {
    /// A fraction of the first third's median (0.1 = 10%).
    pub relative: f64,
    /// In the figure's own unit.
    pub absolute: f64,
}

/// One figure's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub figure: &'static str,
    pub unit: &'static str,
    /// Samples judged (after the warm-up).
    pub samples: usize,
    pub first_third_median: f64,
    pub last_third_median: f64,
    /// The most the last third's median may be.
    pub limit: f64,
    pub tolerance: Tolerance,
    pub rising: bool,
}

/// How long the warm-up of a run of `run` lasts.
pub fn warmup(run: Duration) -> Duration {
    (run / 10).max(MIN_WARMUP)
}

/// The medians of the first and the last third of `values` (in time order); `None` when there
/// are fewer than [`MIN_SAMPLES`].
pub fn third_medians(values: &[f64]) -> Option<(f64, f64)> {
    if values.len() < MIN_SAMPLES {
        return None;
    }
    let third = values.len() / 3;
    Some((
        median(&values[..third]),
        median(&values[values.len() - third..]),
    ))
}

/// Judges `values` (the samples after the warm-up, in time order); `None` when there are fewer
/// than [`MIN_SAMPLES`].
pub fn judge(
    figure: &'static str,
    unit: &'static str,
    values: &[f64],
    tolerance: Tolerance,
) -> Option<Verdict> {
    let (first, last) = third_medians(values)?;
    let limit = first * (1.0 + tolerance.relative) + tolerance.absolute;
    Some(Verdict {
        figure,
        unit,
        samples: values.len(),
        first_third_median: first,
        last_third_median: last,
        limit,
        tolerance,
        // A NaN (a window with no sample) never passes.
        rising: last.is_nan() || limit.is_nan() || last > limit,
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    } else {
        sorted[middle]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOLERANCE: Tolerance = Tolerance {
        relative: 0.1,
        absolute: 2.0,
    };

    #[test]
    fn a_flat_figure_with_noise_and_a_spike_passes() {
        // The spike in the last third would lift its mean to 64.7, above the limit of 57.
        let values = [50.0, 52.0, 49.0, 51.0, 50.0, 50.0, 53.0, 90.0, 51.0];
        let verdict = judge("rss", "MiB", &values, TOLERANCE).unwrap();
        assert!(!verdict.rising, "{verdict:?}");
        assert_eq!(verdict.first_third_median, 50.0);
    }

    #[test]
    fn a_steady_climb_fails() {
        let values: Vec<f64> = (0..18).map(|i| 50.0 + 2.0 * f64::from(i)).collect();
        let verdict = judge("rss", "MiB", &values, TOLERANCE).unwrap();
        assert!(verdict.rising, "{verdict:?}");
    }

    #[test]
    fn too_few_samples_or_a_missing_one_are_not_a_pass() {
        assert!(judge("fds", "", &[1.0, 2.0], TOLERANCE).is_none());
        let verdict = judge("p99", "ms", &[1.0, 1.0, f64::NAN], TOLERANCE).unwrap();
        assert!(verdict.rising);
    }

    #[test]
    fn the_warmup_is_a_tenth_but_at_least_thirty_seconds() {
        assert_eq!(warmup(Duration::from_secs(120)), MIN_WARMUP);
        assert_eq!(warmup(Duration::from_secs(3600)), Duration::from_secs(360));
    }
}
