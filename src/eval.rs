//! Evaluation of a model on an MVTec-layout test set with the paper's metrics.
//!
//! Every test image of a [`Category`] is scored by a [`Scorer`] (the runtime's inspector in
//! the CLI), one image at a time; the maps are folded into streaming accumulators and
//! dropped, so memory does not grow with the number of pixels of the test set. The
//! [`EvalReport`] holds:
//! - image AUROC (absent, with a note, when the scored images are all normal or all
//!   defective);
//! - pixel AUROC and AU-PRO (FPR ≤ 0.3, normalised) when there are defective images and
//!   every one has a mask (absent otherwise, e.g. AITEX, with a note saying why); masks are
//!   brought to the map's size by nearest neighbour (256×256 in `resize` mode, native
//!   resolution in `tile` mode) and binarised at > 127;
//! - coverage at 100 % precision and recall for δ ∈ {0, 0.02, 0.05}, on image scores
//!   min–max normalised over this test set (for that metric only);
//! - per defect type: count and mean score;
//! - the threshold in use and its false alarms (normal images scored above it) and misses
//!   (defective images at or below it);
//! - the images that could not be scored, with their error.

use crate::dataset::{Category, TestImage, MASK_THRESHOLD};
use crate::inspector::Inspector;
use crate::metrics::{self, PixelRoc, ProCurve, COVERAGE_DELTAS, PRO_FPR_LIMIT};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The score and smoothed anomaly map of one image, as the evaluator needs them.
#[derive(Debug, Clone)]
pub struct ScoredImage {
    /// Image score (maximum of the smoothed map).
    pub score: f32,
    /// Smoothed anomaly map, row-major, `width × height`.
    pub map: Vec<f32>,
    /// Map width in pixels.
    pub width: usize,
    /// Map height in pixels.
    pub height: usize,
}

/// Anything that turns image files into a score and an anomaly map.
pub trait Scorer {
    /// Scores the images at `paths`, one result per path in the same order. A failed image
    /// (unreadable, corrupt) gives an error for that path alone.
    fn score_batch(&mut self, paths: &[PathBuf]) -> Vec<Result<ScoredImage>>;
}

/// The runtime's inspector as a scorer: the images of a batch are decoded in parallel,
/// then inspected one after the other (each one's tiles batched by the inspector).
impl Scorer for Inspector {
    fn score_batch(&mut self, paths: &[PathBuf]) -> Vec<Result<ScoredImage>> {
        use rayon::prelude::*;
        let max = self.options().max_pixels;
        let decoded: Vec<Result<image::RgbImage>> = paths
            .par_iter()
            .map(|p| crate::imageio::load_rgb(p, max))
            .collect();
        decoded
            .into_iter()
            .zip(paths)
            .map(|(img, path)| {
                let r = self.inspect_image(&img?).map_err(|e| match e {
                    e @ (Error::Image { .. } | Error::Io { .. }) => e,
                    e => Error::Image {
                        path: path.clone(),
                        msg: e.to_string(),
                    },
                })?;
                Ok(ScoredImage {
                    score: r.score,
                    width: r.map.width,
                    height: r.map.height,
                    map: r.map.data,
                })
            })
            .collect()
    }
}

/// Settings of [`evaluate`].
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Decision threshold (a score above it is a defect).
    pub threshold: f32,
    /// Where the threshold came from (`model.yaml`, `--threshold`).
    pub threshold_source: String,
    /// Images handed to the scorer at a time (decoded together).
    pub batch: usize,
    /// Bins of the pixel AUROC and AU-PRO histograms (even).
    pub bins: usize,
    /// Upper end of the initial histogram range (the lower end is 0); it doubles when a
    /// larger map value appears. `None` uses twice the peak of the first scored map.
    pub initial_range: Option<f32>,
    /// Pixel limit for loading masks.
    pub max_pixels: u64,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            threshold: f32::INFINITY,
            threshold_source: "unset".into(),
            batch: 1,
            bins: 1 << 16,
            initial_range: None,
            max_pixels: crate::imageio::DEFAULT_MAX_PIXELS,
        }
    }
}

/// Score of one test image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageScore {
    /// Image file.
    pub path: PathBuf,
    /// Test folder name.
    pub defect: String,
    /// True for a defective image.
    pub is_anomalous: bool,
    /// Image score.
    pub score: f32,
    /// Whether the score is above the threshold.
    pub flagged: bool,
}

/// Count and score summary of one test folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DefectSummary {
    /// Folder name under `test/`.
    pub defect: String,
    /// Images scored.
    pub count: usize,
    /// Mean image score.
    pub mean_score: f32,
    /// Lowest image score.
    pub min_score: f32,
    /// Highest image score.
    pub max_score: f32,
    /// Images scored above the threshold.
    pub flagged: usize,
}

/// Coverage at one tolerance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoverageAt {
    /// Tolerance δ on the normalised score scale.
    pub delta: f64,
    /// Share of images decided automatically, in [0, 1].
    pub coverage: f64,
}

/// The threshold in use and its errors on this test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdSummary {
    /// Threshold value.
    pub value: f32,
    /// Where it came from.
    pub source: String,
    /// Normal images scored above it.
    pub false_alarms: usize,
    /// Defective images scored at or below it.
    pub misses: usize,
    /// Normal images scored.
    pub normal: usize,
    /// Defective images scored.
    pub defective: usize,
}

/// An image that could not be evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedImage {
    /// Image file.
    pub path: PathBuf,
    /// What went wrong.
    pub error: String,
}

/// The model that was evaluated, as its metadata describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Model folder.
    pub dir: PathBuf,
    /// Teacher backbone.
    pub backbone: String,
    /// Residual or DG variant.
    pub variant: String,
    /// `tile` or `resize`.
    pub input_mode: String,
    /// Teacher weights' SHA-256, or `random`.
    pub teacher_weights: String,
    /// Execution provider that ran the networks.
    pub provider: String,
}

impl ModelInfo {
    /// Describes the model an inspector has loaded.
    pub fn of(inspector: &Inspector) -> ModelInfo {
        let m = inspector.meta();
        let mode = match m.input_mode {
            crate::meta::InputMode::Tile => "tile",
            crate::meta::InputMode::Resize => "resize",
        };
        ModelInfo {
            dir: inspector.model_dir().to_path_buf(),
            backbone: m.backbone.to_string(),
            variant: m.variant.to_string(),
            input_mode: mode.into(),
            teacher_weights: m.teacher_weights.clone(),
            provider: inspector.provider().to_string(),
        }
    }
}

/// Everything `eval` reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The model evaluated (filled in by the caller that loaded it).
    pub model: Option<ModelInfo>,
    /// Wall time of the evaluation in seconds (filled in by the caller).
    pub seconds: Option<f64>,
    /// Category folder.
    pub data: PathBuf,
    /// Category name.
    pub category: String,
    /// Image AUROC (absent when a class has no scored image).
    pub image_auroc: Option<f64>,
    /// Pixel AUROC (absent without masks).
    pub pixel_auroc: Option<f64>,
    /// AU-PRO up to [`EvalReport::au_pro_fpr_limit`], normalised (absent without masks).
    pub au_pro: Option<f64>,
    /// FPR limit of the AU-PRO.
    pub au_pro_fpr_limit: f64,
    /// Ground-truth regions (8-connected) the AU-PRO averaged over.
    pub gt_regions: Option<u64>,
    /// Coverage at δ = 0, 0.02, 0.05.
    pub coverage: Vec<CoverageAt>,
    /// How the coverage scores were scaled.
    pub coverage_scale: String,
    /// Threshold, false alarms and misses.
    pub threshold: ThresholdSummary,
    /// Per test folder, sorted by name.
    pub per_defect: Vec<DefectSummary>,
    /// Every scored image, in test order.
    pub images: Vec<ImageScore>,
    /// Images that could not be scored (left out of every figure).
    pub failed: Vec<FailedImage>,
    /// Why a metric is absent, one line each.
    pub notes: Vec<String>,
}

/// Scores every test image of `category` with `scorer` and computes the report.
///
/// `on_image` is called once per test image after it was handled (for a progress bar).
/// Images the scorer fails on, or whose mask cannot be read, are listed in
/// [`EvalReport::failed`] and left out of every figure. Fails when the category has no
/// test images.
pub fn evaluate(
    category: &Category,
    scorer: &mut dyn Scorer,
    opts: &EvalOptions,
    on_image: &mut dyn FnMut(&TestImage),
) -> Result<EvalReport> {
    if category.test.is_empty() {
        return Err(Error::Dataset {
            path: category.root.join("test"),
            msg: "no test images to evaluate".into(),
        });
    }
    let pixel = category.has_masks();
    let bins = opts.bins.max(2) & !1;
    // Created at the first scored image, whose map sets the initial range.
    let mut acc: Option<(PixelRoc, ProCurve)> = None;

    let mut images = Vec::with_capacity(category.test.len());
    let mut failed = Vec::new();
    for chunk in category.test.chunks(opts.batch.max(1)) {
        let paths: Vec<PathBuf> = chunk.iter().map(|t| t.path.clone()).collect();
        let results = scorer.score_batch(&paths);
        if results.len() != chunk.len() {
            return Err(Error::Shape {
                op: "scorer",
                expected: format!("{} results", chunk.len()),
                got: results.len().to_string(),
            });
        }
        for (t, r) in chunk.iter().zip(results) {
            let outcome = r.and_then(|s| {
                if pixel {
                    accumulate_pixels(t, &s, opts, bins, &mut acc)?;
                }
                Ok(s.score)
            });
            match outcome {
                Ok(score) => images.push(ImageScore {
                    path: t.path.clone(),
                    defect: t.defect.clone(),
                    is_anomalous: t.is_anomalous,
                    score,
                    flagged: score > opts.threshold,
                }),
                Err(e) => {
                    tracing::warn!(path = %t.path.display(), "skipped: {e}");
                    failed.push(FailedImage {
                        path: t.path.clone(),
                        error: e.to_string(),
                    });
                }
            }
            on_image(t);
        }
    }

    let mut notes = Vec::new();
    let scores: Vec<f32> = images.iter().map(|i| i.score).collect();
    let labels: Vec<bool> = images.iter().map(|i| i.is_anomalous).collect();
    let (image_auroc, coverage) = match one_class_reason(category, &labels) {
        Some(why) => {
            notes.push(format!("image AUROC and coverage absent: {why}"));
            (None, Vec::new())
        }
        None => ranking_metrics(&scores, &labels, &mut notes),
    };
    let (pixel_auroc, au_pro, gt_regions) = if category.test_anomalous_count() == 0 {
        notes.push(
            "pixel AUROC and AU-PRO absent: the test set has no defective images, so there \
             are no defect pixels to find"
                .into(),
        );
        (None, None, None)
    } else if !pixel {
        notes.push(
            "pixel AUROC and AU-PRO absent: not every defective test image has a ground-truth mask"
                .into(),
        );
        (None, None, None)
    } else if let Some((roc, pro)) = &acc {
        let a = roc
            .auroc()
            .map_err(|e| notes.push(format!("pixel AUROC absent: {e}")));
        let p = pro
            .au_pro(PRO_FPR_LIMIT)
            .map_err(|e| notes.push(format!("AU-PRO absent: {e}")));
        (a.ok(), p.ok(), Some(pro.regions()))
    } else {
        notes.push("pixel AUROC and AU-PRO absent: no image was scored".into());
        (None, None, None)
    };

    let mut per_defect: Vec<DefectSummary> = Vec::new();
    for i in &images {
        let d = match per_defect.iter_mut().find(|d| d.defect == i.defect) {
            Some(d) => d,
            None => {
                per_defect.push(DefectSummary {
                    defect: i.defect.clone(),
                    count: 0,
                    mean_score: 0.0,
                    min_score: f32::INFINITY,
                    max_score: f32::NEG_INFINITY,
                    flagged: 0,
                });
                per_defect.last_mut().expect("just pushed")
            }
        };
        d.count += 1;
        d.mean_score += i.score;
        d.min_score = d.min_score.min(i.score);
        d.max_score = d.max_score.max(i.score);
        d.flagged += i.flagged as usize;
    }
    for d in &mut per_defect {
        d.mean_score /= d.count as f32;
    }
    per_defect.sort_by(|a, b| a.defect.cmp(&b.defect));

    let threshold = ThresholdSummary {
        value: opts.threshold,
        source: opts.threshold_source.clone(),
        false_alarms: images
            .iter()
            .filter(|i| !i.is_anomalous && i.flagged)
            .count(),
        misses: images
            .iter()
            .filter(|i| i.is_anomalous && !i.flagged)
            .count(),
        normal: images.iter().filter(|i| !i.is_anomalous).count(),
        defective: images.iter().filter(|i| i.is_anomalous).count(),
    };

    Ok(EvalReport {
        model: None,
        seconds: None,
        data: category.root.clone(),
        category: category.name(),
        image_auroc,
        pixel_auroc,
        au_pro,
        au_pro_fpr_limit: PRO_FPR_LIMIT,
        gt_regions,
        coverage,
        coverage_scale: "image scores min-max normalised over this test set (coverage only)".into(),
        threshold,
        per_defect,
        images,
        failed,
        notes,
    })
}

/// Why the image-level ranking metrics (image AUROC, coverage) cannot be computed, when
/// the scored images (`labels`, true = defective) lack one of the two classes.
fn one_class_reason(category: &Category, labels: &[bool]) -> Option<String> {
    let defective = labels.iter().filter(|&&l| l).count();
    let normal = labels.len() - defective;
    if normal > 0 && defective > 0 {
        return None;
    }
    let need = "both metrics compare defective with normal images";
    let why = if labels.is_empty() {
        "no test image could be scored".to_string()
    } else if category.test_anomalous_count() == 0 {
        format!("the test set has no defective images (only test/good/), and {need}")
    } else if category.test_normal_count() == 0 {
        format!("the test set has no normal images (no test/good/), and {need}")
    } else if defective == 0 {
        format!(
            "none of the {} defective test images could be scored, and {need}",
            category.test_anomalous_count()
        )
    } else {
        format!(
            "none of the {} normal test images could be scored, and {need}",
            category.test_normal_count()
        )
    };
    Some(why)
}

/// Image AUROC and coverage of scores from both classes; a metric that still fails (a
/// score that is not finite) is left out with a note.
fn ranking_metrics(
    scores: &[f32],
    labels: &[bool],
    notes: &mut Vec<String>,
) -> (Option<f64>, Vec<CoverageAt>) {
    let image_auroc = match metrics::image_auroc(scores, labels) {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push(format!("image AUROC absent: {e}"));
            None
        }
    };
    let normalised = metrics::min_max_normalise(scores);
    let mut coverage = Vec::new();
    for d in COVERAGE_DELTAS {
        match metrics::coverage(&normalised, labels, d) {
            Ok(c) => coverage.push(CoverageAt {
                delta: d,
                coverage: c,
            }),
            Err(e) => {
                notes.push(format!("coverage absent: {e}"));
                break;
            }
        }
    }
    (image_auroc, coverage)
}

/// Loads the mask of `t` (none for a normal image), brings it to the map's size and adds
/// the map to both pixel accumulators (created on the first call).
fn accumulate_pixels(
    t: &TestImage,
    s: &ScoredImage,
    opts: &EvalOptions,
    bins: usize,
    acc: &mut Option<(PixelRoc, ProCurve)>,
) -> Result<()> {
    if s.map.len() != s.width * s.height {
        return Err(Error::Shape {
            op: "anomaly map",
            expected: format!("{}×{} values", s.width, s.height),
            got: s.map.len().to_string(),
        });
    }
    let mask = match &t.mask {
        Some(p) => {
            // A mask must cover its image pixel for pixel; one of another size would be
            // stretched silently and skew the pixel metrics.
            let image = crate::imageio::image_dimensions(&t.path)?;
            let mask = crate::imageio::image_dimensions(p)?;
            if image != mask {
                return Err(Error::Image {
                    path: p.clone(),
                    msg: format!(
                        "mask is {}×{} but its image {} is {}×{}",
                        mask.0,
                        mask.1,
                        t.path.display(),
                        image.0,
                        image.1
                    ),
                });
            }
            Some(load_mask(p, s.width, s.height, opts.max_pixels)?)
        }
        None => None,
    };
    let (roc, pro) = match acc {
        Some(a) => a,
        slot @ None => {
            let peak = s.map.iter().copied().fold(0.0f32, f32::max);
            let hi = opts
                .initial_range
                .unwrap_or(2.0 * peak)
                .max(f32::MIN_POSITIVE);
            let hi = if hi.is_finite() { hi } else { 1.0 };
            slot.insert((PixelRoc::new(0.0, hi, bins)?, ProCurve::new(0.0, hi, bins)?))
        }
    };
    roc.add(&s.map, mask.as_deref())?;
    pro.add(&s.map, mask.as_deref(), s.width, s.height)?;
    Ok(())
}

/// Loads a ground-truth mask, resizes it by nearest neighbour to `width × height` when its
/// size differs, and binarises it (value > 127 = defect).
pub fn load_mask(path: &Path, width: usize, height: usize, max_pixels: u64) -> Result<Vec<bool>> {
    let rgb = crate::imageio::load_rgb(path, max_pixels)?;
    let grey = image::GrayImage::from_fn(rgb.width(), rgb.height(), |x, y| {
        image::Luma([rgb.get_pixel(x, y).0[0]])
    });
    let grey = if grey.width() as usize != width || grey.height() as usize != height {
        tracing::debug!(
            mask = %path.display(),
            from = ?grey.dimensions(),
            to = ?(width, height),
            "resizing mask (nearest)"
        );
        image::imageops::resize(
            &grey,
            width as u32,
            height as u32,
            image::imageops::FilterType::Nearest,
        )
    } else {
        grey
    };
    Ok(grey.pixels().map(|p| p.0[0] > MASK_THRESHOLD).collect())
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "—".into())
}

impl EvalReport {
    /// True when every test image was scored.
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// The report as a plain-text table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let t = &self.threshold;
        let _ = writeln!(
            s,
            "evaluation of {} ({}): {} normal + {} defective test images scored",
            self.category,
            self.data.display(),
            t.normal,
            t.defective
        );
        if let Some(m) = &self.model {
            let _ = writeln!(
                s,
                "model {} ({}, {}, {} mode, teacher weights {}) on {}",
                m.dir.display(),
                m.backbone,
                m.variant,
                m.input_mode,
                m.teacher_weights,
                m.provider
            );
        }
        if let Some(sec) = self.seconds {
            let n = self.images.len() + self.failed.len();
            let _ = writeln!(
                s,
                "{n} images in {sec:.1} s ({:.2} images/s)",
                n as f64 / sec.max(1e-9)
            );
        }
        let _ = writeln!(s);
        let _ = writeln!(s, "  {:<28} {:>8}", "metric", "value");
        let _ = writeln!(
            s,
            "  {:<28} {:>8}",
            "image AUROC",
            fmt_opt(self.image_auroc)
        );
        let _ = writeln!(
            s,
            "  {:<28} {:>8}",
            "pixel AUROC",
            fmt_opt(self.pixel_auroc)
        );
        let _ = writeln!(
            s,
            "  {:<28} {:>8}",
            format!("AU-PRO (FPR ≤ {})", self.au_pro_fpr_limit),
            fmt_opt(self.au_pro)
        );
        for c in &self.coverage {
            let _ = writeln!(
                s,
                "  {:<28} {:>7.1}%",
                format!("coverage δ = {:.2}", c.delta),
                100.0 * c.coverage
            );
        }
        if !self.coverage.is_empty() {
            let _ = writeln!(s, "  (coverage: {})", self.coverage_scale);
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  threshold {} ({}): {} false alarm(s) of {} normal, {} miss(es) of {} defective",
            if t.value.is_finite() && t.value < f32::MAX {
                format!("{:.6}", t.value)
            } else {
                "unset".to_string()
            },
            t.source,
            t.false_alarms,
            t.normal,
            t.misses,
            t.defective
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:<24} {:>6} {:>12} {:>12} {:>12} {:>8}",
            "test folder", "images", "mean score", "min", "max", "flagged"
        );
        for d in &self.per_defect {
            let _ = writeln!(
                s,
                "  {:<24} {:>6} {:>12.6} {:>12.6} {:>12.6} {:>8}",
                d.defect, d.count, d.mean_score, d.min_score, d.max_score, d.flagged
            );
        }
        for n in &self.notes {
            let _ = writeln!(s, "  note: {n}");
        }
        if !self.failed.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(s, "  {} image(s) could not be scored:", self.failed.len());
            for f in &self.failed {
                let _ = writeln!(s, "    {}: {}", f.path.display(), f.error);
            }
        }
        s
    }
}
