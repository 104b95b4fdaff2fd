//! Per-image reports: the JSON line of `fabric-inspect inspect` and heatmap overlays.

use crate::engine::Provider;
use crate::inspector::{AnomalyMap, Inspection, Verdict};
use crate::{Error, Result};
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;
use std::path::Path;

/// One image's line of `inspect` output.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// Image file.
    pub path: String,
    /// Image score (maximum of the smoothed map).
    pub score: f32,
    /// `ok` or `defect`.
    pub verdict: Verdict,
    /// Threshold used.
    pub threshold: f32,
    /// Execution provider that ran the networks.
    pub provider: Provider,
    /// Milliseconds for the whole image: decoding and inspection.
    pub ms: f64,
    /// Network inputs (tiles).
    pub tiles: usize,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Position of the score, `[x, y]` in image pixels.
    pub peak: [usize; 2],
    /// Heatmap overlay written for this image, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<String>,
}

impl ImageReport {
    /// The report of `inspection` for the file `path`, which took `ms` in all.
    pub fn new(path: &Path, inspection: &Inspection, ms: f64) -> ImageReport {
        ImageReport {
            path: path.display().to_string(),
            score: inspection.score,
            verdict: inspection.verdict,
            threshold: inspection.threshold,
            provider: inspection.provider,
            ms,
            tiles: inspection.tiles,
            width: inspection.width,
            height: inspection.height,
            peak: [inspection.peak.0, inspection.peak.1],
            heatmap: None,
        }
    }

    /// The report as one JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// The JSON line reported for an image that could not be inspected.
pub fn error_json_line(path: &Path, error: &str) -> String {
    serde_json::json!({ "path": path.display().to_string(), "error": error }).to_string()
}

/// A blue → cyan → green → yellow → red colour for `t` in [0, 1].
pub fn colour(t: f32) -> [u8; 3] {
    const STOPS: [[f32; 3]; 5] = [
        [0.0, 0.0, 0.6],
        [0.0, 0.8, 1.0],
        [0.1, 0.9, 0.1],
        [1.0, 0.9, 0.0],
        [0.9, 0.0, 0.0],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    } * 4.0;
    let i = (t as usize).min(3);
    let f = t - i as f32;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    std::array::from_fn(|c| ((a[c] + (b[c] - a[c]) * f) * 255.0).round() as u8)
}

/// The image with the map blended over it: the colour scale runs from 0 to
/// `max(threshold, map maximum)`, so a defect-free image stays cool and the threshold is
/// red. A model without a usable threshold (an untrained export stores `f32::MAX`) is
/// scaled to the map maximum. `map` is resampled to the image's size when it differs
/// (resize mode).
pub fn heatmap_overlay(img: &RgbImage, map: &AnomalyMap, threshold: f32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let resized;
    let map = if map.width == w && map.height == h {
        map
    } else {
        resized = map.resized(w, h);
        &resized
    };
    let (peak, _) = map.peak();
    let threshold = if threshold.is_finite() && threshold < f32::MAX {
        threshold
    } else {
        0.0
    };
    let top = peak.max(threshold).max(f32::MIN_POSITIVE);
    let mut out = img.clone();
    out.as_mut()
        .par_chunks_mut(3 * w)
        .zip(map.data.par_chunks(w))
        .for_each(|(row, m)| {
            for (px, &v) in row.chunks_exact_mut(3).zip(m) {
                let c = colour(v / top);
                for k in 0..3 {
                    px[k] = ((px[k] as u16 + c[k] as u16) / 2) as u8;
                }
            }
        });
    out
}

/// Writes `img` as a PNG file atomically.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img.clone())
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            msg: format!("cannot encode PNG: {e}"),
        })?;
    crate::fsutil::atomic_write(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn colour_scale_ends() {
        assert_eq!(colour(0.0), [0, 0, 153]);
        assert_eq!(colour(1.0), [230, 0, 0]);
        assert_eq!(colour(f32::NAN), colour(0.0));
        assert_eq!(colour(7.0), colour(1.0));
    }

    #[test]
    fn overlay_marks_the_peak_red() {
        let img = RgbImage::from_pixel(4, 2, Rgb([0, 0, 0]));
        let mut data = vec![0.0; 8];
        data[5] = 2.0;
        let map = AnomalyMap {
            width: 4,
            height: 2,
            data,
        };
        let o = heatmap_overlay(&img, &map, 1.0);
        assert_eq!(o.get_pixel(1, 1).0, [115, 0, 0]);
        assert_eq!(o.get_pixel(0, 0).0, [0, 0, 76]);
    }
}
