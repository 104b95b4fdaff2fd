//! The embedding API: load a model folder once, inspect in-memory images.
//!
//! A frame goes through the stages DECISIONS.md fixes ("Input modes", "Large frames"):
//! in `tile` mode it is cut into `input_size` tiles (the last row/column overlapping its
//! neighbour, a short side mirror-padded), the tiles run through teacher and student in
//! batches, each tile's unsmoothed anomaly map (SPEC.md §9 steps 1–3) is stitched into one
//! frame map by maximum, and the frame map is smoothed once with the 2-D Gaussian, so no
//! seam appears at tile borders. In `resize` mode the whole image is resized to the input
//! size and scored as one tile. The score is the maximum of the smoothed map; a score
//! above the threshold is a defect.
//!
//! ```no_run
//! use fabric_inspect::inspector::{InspectOptions, Inspector};
//! use std::path::Path;
//!
//! # fn main() -> fabric_inspect::Result<()> {
//! let inspector = Inspector::load(Path::new("onnx/fabric00"), InspectOptions::default())?;
//! let frame = image::RgbImage::new(3072, 2048); // e.g. from the camera driver
//! let result = inspector.inspect_image(&frame)?;
//! println!(
//!     "score {:.4} ({}), {} tiles on {}, peak at {:?}",
//!     result.score, result.verdict, result.tiles, result.provider, result.peak
//! );
//! # Ok(())
//! # }
//! ```

use crate::anomaly::anomaly_maps_into;
use crate::engine::{Engine, EngineOptions, Provider};
use crate::imageio::{load_rgb, DEFAULT_MAX_PIXELS};
use crate::meta::{InputMode, ModelMeta};
use crate::position::PositionStats;
use crate::preprocess::{resize_exact, to_chw};
use crate::tiling::{extract_tile_chw, Stitcher, TileGrid};
use crate::{Error, Result};
use image::RgbImage;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default number of tiles per network run.
pub const DEFAULT_BATCH: usize = 32;

/// Settings of an [`Inspector`].
#[derive(Debug, Clone)]
pub struct InspectOptions {
    /// Execution provider and threads.
    pub engine: EngineOptions,
    /// Tiles per network run (≥ 1).
    pub batch: usize,
    /// Replaces the model's threshold when set.
    pub threshold: Option<f32>,
    /// Pixel limit of [`Inspector::inspect_path`].
    pub max_pixels: u64,
    /// Score raw maps even when the model has position statistics (timing frames of other
    /// sizes; the model's threshold does not apply to such scores).
    pub ignore_position: bool,
}

impl Default for InspectOptions {
    fn default() -> Self {
        InspectOptions {
            engine: EngineOptions::default(),
            batch: DEFAULT_BATCH,
            threshold: None,
            max_pixels: DEFAULT_MAX_PIXELS,
            ignore_position: false,
        }
    }
}

/// Decision on one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Score at or below the threshold.
    Ok,
    /// Score above the threshold.
    Defect,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::Defect => "defect",
        })
    }
}

/// A row-major anomaly map.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyMap {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width·height` values.
    pub data: Vec<f32>,
}

impl AnomalyMap {
    /// Largest value and its (x, y) position.
    pub fn peak(&self) -> (f32, (usize, usize)) {
        let (i, v) =
            self.data
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv {
                        (i, v)
                    } else {
                        (bi, bv)
                    }
                });
        (v, (i % self.width.max(1), i / self.width.max(1)))
    }

    /// This map bilinearly resampled to `width`×`height` (e.g. a `resize`-mode map brought
    /// back to the image's size for display).
    pub fn resized(&self, width: usize, height: usize) -> AnomalyMap {
        if width == self.width && height == self.height {
            return self.clone();
        }
        AnomalyMap {
            width,
            height,
            data: crate::anomaly::upsample_bilinear(
                &self.data,
                self.height,
                self.width,
                height,
                width,
            ),
        }
    }
}

/// Wall time of each pipeline stage for one image (summed over its batches).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct StageTimes {
    /// Resizing or tile cutting, normalisation to CHW floats.
    #[serde(serialize_with = "ser_ms")]
    pub preprocess: Duration,
    /// Teacher and student runs in ONNX Runtime.
    #[serde(serialize_with = "ser_ms")]
    pub network: Duration,
    /// Per-tile distance maps and their upsampling.
    #[serde(serialize_with = "ser_ms")]
    pub anomaly_map: Duration,
    /// Merging tile maps into the frame map.
    #[serde(serialize_with = "ser_ms")]
    pub stitch: Duration,
    /// Gaussian smoothing and the maximum.
    #[serde(serialize_with = "ser_ms")]
    pub smooth: Duration,
    /// Whole inspection of the in-memory image.
    #[serde(serialize_with = "ser_ms")]
    pub total: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// Result of inspecting one image.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// Image score: maximum of the smoothed map.
    pub score: f32,
    /// Threshold the verdict used.
    pub threshold: f32,
    /// `score > threshold`.
    pub is_defective: bool,
    /// The same decision as a word.
    pub verdict: Verdict,
    /// Smoothed anomaly map: image-sized in `tile` mode, `input_size`² in `resize` mode
    /// (see [`AnomalyMap::resized`]).
    pub map: AnomalyMap,
    /// Position of the score in image pixels.
    pub peak: (usize, usize),
    /// Number of network inputs (tiles, or 1 in `resize` mode).
    pub tiles: usize,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Execution provider that ran the networks.
    pub provider: Provider,
    /// Time per stage.
    pub timing: StageTimes,
}

struct Scratch {
    input: Vec<f32>,
    maps: Vec<f32>,
}

/// A loaded model ready to inspect images.
pub struct Inspector {
    dir: PathBuf,
    meta: ModelMeta,
    engine: Engine,
    options: InspectOptions,
    position: Option<PositionStats>,
    scratch: Mutex<Scratch>,
}

impl std::fmt::Debug for Inspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inspector")
            .field("dir", &self.dir)
            .field("engine", &self.engine)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Inspector {
    /// Loads the model folder `dir` (`model.yaml`, `teacher.onnx`, `student.onnx`).
    pub fn load(dir: &Path, options: InspectOptions) -> Result<Inspector> {
        let meta = ModelMeta::load(dir)?;
        Self::with_meta(dir, meta, options)
    }

    /// Like [`Inspector::load`] with metadata already read (and possibly edited).
    pub fn with_meta(dir: &Path, meta: ModelMeta, options: InspectOptions) -> Result<Inspector> {
        if options.batch == 0 {
            return Err(Error::Other("batch size must be at least 1".into()));
        }
        if let Some(t) = options.threshold.filter(|t| !t.is_finite()) {
            return Err(Error::Other(format!(
                "threshold {t} is not a finite number"
            )));
        }
        ModelMeta::network_files(dir)?;
        if meta.teacher_weights == "random" {
            tracing::warn!(
                model = %dir.display(),
                "this model's teacher has random weights (no pretrained file was available): \
                 scores are only good for timing and plumbing tests"
            );
        }
        if options.threshold.is_none() && meta.threshold >= f32::MAX {
            tracing::warn!(
                model = %dir.display(),
                "this model has no threshold (an untrained export): every verdict will be \
                 `ok`; run `fabric-inspect calibrate` on defect-free images or pass --threshold"
            );
        }
        let trained_with_position = meta
            .training_config
            .get("position_stats")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        if meta.position.is_none()
            && trained_with_position
            && meta.threshold_source == "training validation"
        {
            tracing::warn!(
                model = %dir.display(),
                "this model was trained with position statistics but model.yaml names none: \
                 its threshold is a z-score and does not fit raw scores; re-export the model \
                 or run `fabric-inspect calibrate --position`"
            );
        }
        let position = match (&meta.position, options.ignore_position) {
            (Some(p), false) => Some(PositionStats::read(
                &dir.join(&p.file),
                p.width as usize,
                p.height as usize,
            )?),
            _ => None,
        };
        let engine = Engine::load(dir, &meta, &options.engine)?;
        tracing::debug!(
            mode = ?meta.input_mode,
            tile = meta.input_size,
            batch = options.batch,
            sigma = meta.sigma,
            "inspector ready"
        );
        Ok(Inspector {
            dir: dir.to_path_buf(),
            meta,
            engine,
            options,
            position,
            scratch: Mutex::new(Scratch {
                input: Vec::new(),
                maps: Vec::new(),
            }),
        })
    }

    /// The model's metadata.
    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    /// The model folder.
    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    /// Execution provider running the networks.
    pub fn provider(&self) -> Provider {
        self.engine.provider()
    }

    /// The teacher and student sessions (e.g. to time the network alone on a prepared
    /// batch).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Threshold in use (the override, else the model's).
    pub fn threshold(&self) -> f32 {
        self.options.threshold.unwrap_or(self.meta.threshold)
    }

    /// The position statistics in use, if any.
    pub fn position(&self) -> Option<&PositionStats> {
        self.position.as_ref()
    }

    /// The options given at load time.
    pub fn options(&self) -> &InspectOptions {
        &self.options
    }

    /// Loads the image file at `path` (with the pixel limit) and inspects it.
    pub fn inspect_path(&self, path: &Path) -> Result<Inspection> {
        let img = load_rgb(path, self.options.max_pixels)?;
        self.inspect_image(&img)
    }

    /// Inspects an in-memory RGB image of any size.
    pub fn inspect_image(&self, img: &RgbImage) -> Result<Inspection> {
        let start = Instant::now();
        let (w, h) = img.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::Other("cannot inspect an empty image".into()));
        }
        // In resize mode the map is always input_size², which `ModelMeta::validate` has
        // checked against the statistics; in tile mode it is the image's size.
        if let (Some(p), InputMode::Tile) = (&self.position, self.meta.input_mode) {
            p.check_size(w as usize, h as usize)?;
        }
        let mut times = StageTimes::default();
        let (unsmoothed, mw, mh, tiles) = match self.meta.input_mode {
            InputMode::Tile => {
                let (m, n) = self.tile_map(img, &mut times)?;
                (m, w as usize, h as usize, n)
            }
            InputMode::Resize => {
                let s = self.meta.input_size;
                let t0 = Instant::now();
                let resized = resize_exact(img, s);
                times.preprocess += t0.elapsed();
                let (m, n) = self.tile_map(&resized, &mut times)?;
                (m, s as usize, s as usize, n)
            }
        };

        let t0 = Instant::now();
        let mut data = crate::gaussian::gaussian_smooth(&unsmoothed, mw, mh, self.meta.sigma);
        drop(unsmoothed);
        if let Some(p) = &self.position {
            p.normalise(&mut data)?;
        }
        let map = AnomalyMap {
            width: mw,
            height: mh,
            data,
        };
        let (score, peak) = map.peak();
        times.smooth = t0.elapsed();
        times.total = start.elapsed();

        let peak = match self.meta.input_mode {
            InputMode::Tile => peak,
            InputMode::Resize => (
                ((peak.0 as f64 + 0.5) * w as f64 / mw as f64) as usize,
                ((peak.1 as f64 + 0.5) * h as f64 / mh as f64) as usize,
            ),
        };
        let threshold = self.threshold();
        let is_defective = score > threshold;
        tracing::debug!(
            width = w,
            height = h,
            tiles,
            score,
            ms = times.total.as_secs_f64() * 1e3,
            "inspected"
        );
        Ok(Inspection {
            score,
            threshold,
            is_defective,
            verdict: if is_defective {
                Verdict::Defect
            } else {
                Verdict::Ok
            },
            map,
            peak,
            tiles,
            width: w,
            height: h,
            provider: self.engine.provider(),
            timing: times,
        })
    }

    /// Unsmoothed frame map of `img` in tile mode (image-sized), and the tile count.
    fn tile_map(&self, img: &RgbImage, times: &mut StageTimes) -> Result<(Vec<f32>, usize)> {
        let s = self.meta.input_size;
        let su = s as usize;
        let (in_len, map_len) = (3 * su * su, su * su);
        let grid = TileGrid::new(img.width(), img.height(), s);
        let origins = grid.origins();
        let n_tiles = origins.len();
        let batch = self.options.batch.min(n_tiles);
        let norm = self.meta.normalization;
        let weights = &self.meta.map_layer_weights;

        let mut scratch = self
            .scratch
            .lock()
            .map_err(|_| Error::Other("inspector scratch poisoned by an earlier panic".into()))?;
        let Scratch { input, maps } = &mut *scratch;
        input.resize(batch * in_len, 0.0);
        maps.resize(batch * map_len, 0.0);
        let mut stitcher = Stitcher::new(grid);

        for (b, chunk) in origins.chunks(batch).enumerate() {
            let n = chunk.len();
            let _span = tracing::trace_span!("tiles", batch = b, size = n).entered();

            let t0 = Instant::now();
            input[..n * in_len]
                .par_chunks_mut(in_len)
                .zip(chunk.par_iter())
                .for_each(|(buf, &(x, y))| {
                    if img.width() == s && img.height() == s {
                        to_chw(img, norm, buf);
                    } else {
                        extract_tile_chw(img, x, y, s, norm, buf);
                    }
                });
            times.preprocess += t0.elapsed();

            let t0 = Instant::now();
            let maps_out = &mut maps[..n * map_len];
            let map_time = self.engine.run(&input[..n * in_len], n, |t, st| {
                let t1 = Instant::now();
                anomaly_maps_into(t, st, weights, su, su, maps_out)?;
                Ok(t1.elapsed())
            })?;
            times.network += t0.elapsed().saturating_sub(map_time);
            times.anomaly_map += map_time;

            let t0 = Instant::now();
            for (i, m) in maps[..n * map_len].chunks(map_len).enumerate() {
                stitcher.add(b * batch + i, m)?;
            }
            times.stitch += t0.elapsed();
        }
        let t0 = Instant::now();
        let frame = stitcher.finish()?;
        times.stitch += t0.elapsed();
        Ok((frame, n_tiles))
    }
}
