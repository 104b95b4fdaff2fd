//! Position statistics: the per-pixel mean and spread of the smoothed anomaly map over
//! defect-free frames, used to turn a frame's map into a per-pixel z-score.
//!
//! A camera over an inspection line sees every frame from the same place. Whatever the
//! network scores higher at a fixed position on good cloth (a flat lead-in, the selvage,
//! the light falling off towards the edges, an artefact at a fixed place inside each tile)
//! then raises the score of every frame alike and can hide a real defect elsewhere. With
//! position statistics, the score of pixel `i` becomes `(m[i] − mean[i]) / scale[i]`,
//! where `mean` is the per-pixel mean over the training frames and `scale` their per-pixel
//! standard deviation, smoothed with the map's Gaussian, plus its median over the frame
//! (a floor that keeps a spread estimated from a few frames from amplifying noise).
//!
//! The statistics hold for one frame size only; a frame of another size is refused. They
//! are written by the trainer (`position_stats: true`) and exported next to the networks as
//! `position.bin`: a 16-byte header (`FIPOS` magic, format version 1, then width and height
//! as little-endian `u32`) followed by the `mean` and the `scale` planes, row-major
//! little-endian `f32`.

use crate::{Error, Result};
use std::path::Path;

/// File name of the statistics inside a model folder.
pub const POSITION_FILE: &str = "position.bin";

const MAGIC: &[u8; 6] = b"FIPOS\0";
const FORMAT: u16 = 1;
const HEADER: usize = 16;

/// Per-pixel mean and scale of the smoothed anomaly map over defect-free frames.
#[derive(Debug, Clone, PartialEq)]
pub struct PositionStats {
    /// Frame width in pixels.
    pub width: usize,
    /// Frame height in pixels.
    pub height: usize,
    /// Mean map, row-major.
    pub mean: Vec<f32>,
    /// Scale map (smoothed standard deviation plus its median), row-major, all > 0.
    pub scale: Vec<f32>,
}

impl PositionStats {
    /// Checks that a `width`×`height` map can be normalised by these statistics.
    pub fn check_size(&self, width: usize, height: usize) -> Result<()> {
        if (width, height) == (self.width, self.height) {
            return Ok(());
        }
        Err(Error::Other(format!(
            "the model's position statistics are for {}×{} maps, this one is {width}×{height} \
             (position statistics hold for one frame size: inspect frames of the training \
             size, learn statistics for this size with `fabric-inspect calibrate --position`, \
             or train without `position_stats`)",
            self.width, self.height
        )))
    }

    /// Replaces every value of a smoothed map by its z-score at that position.
    pub fn normalise(&self, map: &mut [f32]) -> Result<()> {
        if map.len() != self.mean.len() {
            return Err(Error::Other(format!(
                "position statistics: map of {} values for {}×{} statistics",
                map.len(),
                self.width,
                self.height
            )));
        }
        for ((v, m), s) in map.iter_mut().zip(&self.mean).zip(&self.scale) {
            *v = (*v - m) / s;
        }
        Ok(())
    }

    /// The file's bytes (see the module doc).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 8 * self.mean.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT.to_le_bytes());
        out.extend_from_slice(&(self.width as u32).to_le_bytes());
        out.extend_from_slice(&(self.height as u32).to_le_bytes());
        for v in self.mean.iter().chain(&self.scale) {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Parses the file's bytes; `path` only names the source in errors.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<PositionStats> {
        let err = |msg: String| Error::Model {
            path: path.to_path_buf(),
            msg,
        };
        if bytes.len() < HEADER || &bytes[..6] != MAGIC {
            return Err(err("not a position statistics file (bad header)".into()));
        }
        let format = u16::from_le_bytes([bytes[6], bytes[7]]);
        if format != FORMAT {
            return Err(err(format!(
                "position statistics format {format}; this build reads format {FORMAT}"
            )));
        }
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
        let (width, height) = (u32_at(8), u32_at(12));
        let n = width
            .checked_mul(height)
            .filter(|&n| n > 0)
            .ok_or_else(|| err(format!("empty or oversized frame {width}×{height}")))?;
        let want = n
            .checked_mul(8)
            .and_then(|b| b.checked_add(HEADER))
            .ok_or_else(|| err(format!("oversized frame {width}×{height}")))?;
        if bytes.len() != want {
            return Err(err(format!(
                "{} bytes, a {width}×{height} frame needs {want} (truncated or damaged file)",
                bytes.len()
            )));
        }
        let floats: Vec<f32> = bytes[HEADER..]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let (mean, scale) = floats.split_at(n);
        if let Some(i) = mean.iter().position(|v| !v.is_finite()) {
            return Err(err(format!("the mean at index {i} is not finite")));
        }
        if let Some(i) = scale.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(err(format!(
                "the scale at index {i} is not a positive number"
            )));
        }
        Ok(PositionStats {
            width,
            height,
            mean: mean.to_vec(),
            scale: scale.to_vec(),
        })
    }

    /// Reads `path`, expecting a `width`×`height` frame (from `model.yaml`).
    pub fn read(path: &Path, width: usize, height: usize) -> Result<PositionStats> {
        let bytes = std::fs::read(path).map_err(|e| Error::Model {
            path: path.to_path_buf(),
            msg: format!("cannot read position statistics: {e}"),
        })?;
        let stats = Self::from_bytes(&bytes, path)?;
        if (stats.width, stats.height) != (width, height) {
            return Err(Error::Model {
                path: path.to_path_buf(),
                msg: format!(
                    "holds {}×{} statistics, model.yaml says {width}×{height}",
                    stats.width, stats.height
                ),
            });
        }
        Ok(stats)
    }

    /// Writes the statistics to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::fsutil::atomic_write(path, &self.to_bytes())
    }
}

/// Accumulates smoothed maps of defect-free frames of one size.
#[derive(Debug, Clone)]
pub struct PositionAccumulator {
    width: usize,
    height: usize,
    count: usize,
    sum: Vec<f64>,
    sum_sq: Vec<f64>,
}

impl PositionAccumulator {
    /// An empty accumulator for `width`×`height` maps.
    pub fn new(width: usize, height: usize) -> Self {
        PositionAccumulator {
            width,
            height,
            count: 0,
            sum: vec![0.0; width * height],
            sum_sq: vec![0.0; width * height],
        }
    }

    /// Frames added so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds one smoothed map; it must have the accumulator's size.
    pub fn add(&mut self, map: &[f32], width: usize, height: usize) -> Result<()> {
        if (width, height) != (self.width, self.height) || map.len() != self.sum.len() {
            return Err(Error::Other(format!(
                "position statistics need frames of one size: {}×{} so far, then {width}×{height}",
                self.width, self.height
            )));
        }
        for ((s, q), &v) in self.sum.iter_mut().zip(&mut self.sum_sq).zip(map) {
            let v = v as f64;
            *s += v;
            *q += v * v;
        }
        self.count += 1;
        Ok(())
    }

    /// The statistics; needs at least two frames. `sigma` is the map's smoothing, also
    /// applied to the standard deviation.
    pub fn finish(&self, sigma: f32) -> Result<PositionStats> {
        if self.count < 2 {
            return Err(Error::Other(format!(
                "position statistics need at least 2 defect-free frames, got {}",
                self.count
            )));
        }
        let n = self.count as f64;
        let mean: Vec<f32> = self.sum.iter().map(|s| (s / n) as f32).collect();
        let std: Vec<f32> = self
            .sum
            .iter()
            .zip(&self.sum_sq)
            .map(|(s, q)| {
                let m = s / n;
                ((q / n - m * m).max(0.0) * n / (n - 1.0)).sqrt() as f32
            })
            .collect();
        let smooth = crate::gaussian::gaussian_smooth(&std, self.width, self.height, sigma);
        let mut sorted = smooth.clone();
        sorted.sort_by(f32::total_cmp);
        let median = sorted[sorted.len() / 2];
        // All frames equal (a synthetic case): fall back to a floor relative to the mean.
        let floor = if median > 0.0 {
            median
        } else {
            let m = mean.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            (m * 1e-3).max(f32::MIN_POSITIVE)
        };
        let scale = smooth.iter().map(|s| s.max(0.0) + floor).collect();
        Ok(PositionStats {
            width: self.width,
            height: self.height,
            mean,
            scale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> Vec<Vec<f32>> {
        // 3 frames of 6×4: a hot column at x = 1 on every frame, noise elsewhere.
        (0..3)
            .map(|k| {
                (0..24)
                    .map(|i| {
                        let x = i % 6;
                        let base = if x == 1 { 5.0 } else { 1.0 };
                        base + 0.1 * ((i * 7 + k * 3) % 5) as f32
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_hot_column_on_every_good_frame_is_normalised_away() {
        let mut acc = PositionAccumulator::new(6, 4);
        for m in maps() {
            acc.add(&m, 6, 4).unwrap();
        }
        let stats = acc.finish(0.0).unwrap();
        assert_eq!(acc.count(), 3);
        // Pixel 1 over the 3 frames: 5.2, 5.0, 5.3.
        assert!((stats.mean[1] - (5.0 + 0.1 * (2.0 + 0.0 + 3.0) / 3.0)).abs() < 1e-5);
        assert!(stats.scale.iter().all(|&s| s > 0.0));
        // A defect at x = 4 now outscores the hot column; before, the column won.
        let mut frame = maps()[0].clone();
        frame[2 * 6 + 4] += 1.0;
        let raw_peak = frame.iter().cloned().fold(f32::MIN, f32::max);
        assert!(raw_peak >= 5.0);
        stats.normalise(&mut frame).unwrap();
        let (peak, _) = frame
            .iter()
            .enumerate()
            .map(|(i, v)| (i, *v))
            .fold((0, f32::MIN), |a, b| if b.1 > a.1 { b } else { a });
        assert_eq!(peak, 2 * 6 + 4);
    }

    #[test]
    fn round_trip_and_damaged_files() {
        let mut acc = PositionAccumulator::new(6, 4);
        for m in maps() {
            acc.add(&m, 6, 4).unwrap();
        }
        let stats = acc.finish(4.0).unwrap();
        let bytes = stats.to_bytes();
        let p = Path::new("model/position.bin");
        assert_eq!(PositionStats::from_bytes(&bytes, p).unwrap(), stats);
        let e = PositionStats::from_bytes(&bytes[..bytes.len() - 4], p).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(e.to_string().contains("model/position.bin"), "{e}");
        let e = PositionStats::from_bytes(b"not a stats file at all", p).unwrap_err();
        assert!(e.to_string().contains("bad header"), "{e}");
        let mut bad = bytes.clone();
        let last = bad.len() - 4;
        bad[last..].copy_from_slice(&(-1.0f32).to_le_bytes());
        let e = PositionStats::from_bytes(&bad, p).unwrap_err();
        assert!(e.to_string().contains("not a positive number"), "{e}");
        assert!(stats.check_size(6, 4).is_ok());
        let e = stats.check_size(7, 4).unwrap_err();
        assert!(e.to_string().contains("6×4"), "{e}");
    }

    #[test]
    fn frames_of_another_size_and_too_few_frames_are_refused() {
        let mut acc = PositionAccumulator::new(6, 4);
        assert!(acc.finish(1.0).is_err());
        acc.add(&maps()[0], 6, 4).unwrap();
        assert!(acc.finish(1.0).is_err(), "one frame has no spread");
        let e = acc.add(&[0.0; 20], 5, 4).unwrap_err();
        assert!(e.to_string().contains("one size"), "{e}");
        // Identical frames: the floor keeps the scale positive.
        let mut acc = PositionAccumulator::new(6, 4);
        acc.add(&[2.0; 24], 6, 4).unwrap();
        acc.add(&[2.0; 24], 6, 4).unwrap();
        let s = acc.finish(1.0).unwrap();
        assert!(s.scale.iter().all(|&v| v > 0.0 && v.is_finite()));
    }
}
