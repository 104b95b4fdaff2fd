//! Validation score statistics and the default decision threshold.
//!
//! After training, the validation normals are scored exactly as inference will score them;
//! their statistics are stored with the model and the default threshold is derived from
//! them alone (never from test labels): `max(mean + 4·std, max + 0.01 %)`, so that no validation
//! normal is flagged.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// The quantile levels recorded in [`ScoreStats::quantiles`].
pub const QUANTILE_LEVELS: [f32; 4] = [0.5, 0.9, 0.95, 0.99];

/// How many standard deviations above the mean the default threshold lies at least.
pub const DEFAULT_STD_FACTOR: f32 = 4.0;

/// One quantile of a score distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Quantile {
    /// Level in [0, 1] (0.5 is the median).
    pub q: f32,
    /// Score at that level (linear interpolation between order statistics).
    pub value: f32,
}

/// Summary statistics of a set of image scores (typically the validation normals).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreStats {
    /// Number of scores.
    pub count: usize,
    /// Arithmetic mean.
    pub mean: f32,
    /// Population standard deviation (divides by `count`).
    pub std: f32,
    /// Smallest score.
    pub min: f32,
    /// Largest score.
    pub max: f32,
    /// Quantiles at [`QUANTILE_LEVELS`], in that order.
    pub quantiles: Vec<Quantile>,
}

impl ScoreStats {
    /// Computes the statistics of `scores`.
    ///
    /// Fails when `scores` is empty or holds a NaN or infinite value.
    pub fn from_scores(scores: &[f32]) -> Result<ScoreStats> {
        if scores.is_empty() {
            return Err(Error::Metric {
                metric: "score statistics",
                msg: "no scores given".into(),
            });
        }
        if let Some((i, s)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
            return Err(Error::Metric {
                metric: "score statistics",
                msg: format!("score {i} is not finite ({s})"),
            });
        }
        let n = scores.len() as f64;
        let mean = scores.iter().map(|&s| s as f64).sum::<f64>() / n;
        let var = scores
            .iter()
            .map(|&s| (s as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        let mut sorted: Vec<f32> = scores.to_vec();
        sorted.sort_by(f32::total_cmp);
        let quantiles = QUANTILE_LEVELS
            .iter()
            .map(|&q| Quantile {
                q,
                value: quantile_sorted(&sorted, q as f64),
            })
            .collect();
        Ok(ScoreStats {
            count: scores.len(),
            mean: mean as f32,
            std: var.sqrt() as f32,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            quantiles,
        })
    }

    /// The recorded quantile at level `q`, if that level was recorded.
    pub fn quantile(&self, q: f32) -> Option<f32> {
        self.quantiles
            .iter()
            .find(|x| (x.q - q).abs() < 1e-6)
            .map(|x| x.value)
    }
}

/// Quantile of sorted, non-empty data by linear interpolation between the order
/// statistics at positions `q·(n−1)` (the common "linear" definition).
fn quantile_sorted(sorted: &[f32], q: f64) -> f32 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    (sorted[lo] as f64 + (sorted[hi] as f64 - sorted[lo] as f64) * frac) as f32
}

/// Relative margin of the default threshold above the largest validation score. The scores
/// behind the statistics come from the trainer's network and the runtime scores with ONNX
/// Runtime; the two agree to about 1e-5 of the map, not bit for bit. Without the margin,
/// validation scores that all tie (a spread of 0, as when every image peaks at the same
/// background feature) put the threshold on the tie, and rounding alone decides whether
/// such a normal image is flagged.
pub const MAX_MARGIN: f32 = 1e-4;

/// The default threshold: `max(mean + 4·std, max·(1 + MAX_MARGIN))`, so that no score of
/// `stats` lies above it, nor does the same image scored by the runtime.
pub fn default_threshold(stats: &ScoreStats) -> f32 {
    let above_max = stats.max + stats.max.abs() * MAX_MARGIN;
    (stats.mean + DEFAULT_STD_FACTOR * stats.std).max(above_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_hand_case() {
        let s = ScoreStats::from_scores(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.count, 4);
        assert!((s.mean - 2.5).abs() < 1e-6);
        // population variance = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
        assert!((s.std - 1.25f32.sqrt()).abs() < 1e-6);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 4.0);
        // median of 1,2,3,4 = 2.5; q0.9 at position 2.7 → 3.7
        assert!((s.quantile(0.5).unwrap() - 2.5).abs() < 1e-6);
        assert!((s.quantile(0.9).unwrap() - 3.7).abs() < 1e-5);
        assert!((s.quantile(0.99).unwrap() - 3.97).abs() < 1e-5);
        assert_eq!(s.quantiles.len(), QUANTILE_LEVELS.len());
    }

    #[test]
    fn single_score() {
        let s = ScoreStats::from_scores(&[0.3]).unwrap();
        assert_eq!(s.std, 0.0);
        assert_eq!(s.quantile(0.95), Some(0.3));
        assert_eq!(default_threshold(&s), 0.3 * (1.0 + MAX_MARGIN));
    }

    #[test]
    fn empty_and_non_finite_are_errors() {
        assert!(matches!(
            ScoreStats::from_scores(&[]),
            Err(Error::Metric { .. })
        ));
        let e = ScoreStats::from_scores(&[1.0, f32::NAN]).unwrap_err();
        assert!(e.to_string().contains("score 1"), "{e}");
        assert!(ScoreStats::from_scores(&[f32::INFINITY]).is_err());
    }

    #[test]
    fn threshold_is_mean_plus_four_std_or_max() {
        // Tight cluster: mean + 4·std exceeds the max.
        let s = ScoreStats::from_scores(&[1.0, 1.1, 0.9, 1.0]).unwrap();
        let t = default_threshold(&s);
        assert!((t - (s.mean + 4.0 * s.std)).abs() < 1e-6);
        assert!(t > s.max);
        // One far outlier among many: the max wins.
        let mut v = vec![0.0f32; 99];
        v.push(100.0);
        let s = ScoreStats::from_scores(&v).unwrap();
        assert!(s.mean + 4.0 * s.std < 100.0);
        assert_eq!(default_threshold(&s), 100.0 * (1.0 + MAX_MARGIN));
        // Tied scores: the threshold lies just above them, not on them.
        let s = ScoreStats::from_scores(&[0.006_138_985_5; 5]).unwrap();
        let t = default_threshold(&s);
        assert!(t > s.max && t > 0.006_138_986 && t < s.max * 1.001, "{t}");
    }

    #[test]
    fn serde_round_trip() {
        let s = ScoreStats::from_scores(&[0.1, 0.2, 0.4]).unwrap();
        let y = serde_yaml::to_string(&s).unwrap();
        let back: ScoreStats = serde_yaml::from_str(&y).unwrap();
        assert_eq!(s, back);
    }
}
