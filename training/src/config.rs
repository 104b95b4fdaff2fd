//! Training configuration: the YAML file given to `fabric-train train --config`.
//!
//! Every key is documented on its field below and in the example files under `configs/`.
//! Unknown keys are rejected with their name (`deny_unknown_fields`), so that a misspelt
//! key never silently falls back to a default. Values are checked by [`TrainConfig::validate`]
//! before any work starts; each message names the key and the problem.

use fabric_inspect::meta::{Backbone, InputMode, Variant};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The config schema version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// Errors of loading or checking a training config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {error}")]
    Read {
        path: PathBuf,
        // Not the error's `source`: the message already ends with it, and a report of the
        // whole chain would print it twice.
        error: std::io::Error,
    },
    /// The YAML does not parse or does not fit the schema (unknown key, wrong type).
    #[error("config {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    /// A value is out of its allowed range.
    #[error("config {path}: key `{key}`: {msg}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        msg: String,
    },
}

/// A training run's configuration (`version: 1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Schema version of this file; must be [`CONFIG_VERSION`].
    pub version: u32,
    /// Teacher backbone: `resnet18`, `resnet34` or `efficientnet-lite0` (default).
    #[serde(default = "default_backbone")]
    pub backbone: Backbone,
    /// `residual` (the paper's model, default) or `dg` (domain-generalised, no residual paths).
    #[serde(default)]
    pub variant: Variant,
    /// Teacher layers that feed T0..T3; absent = the backbone's defaults.
    #[serde(default)]
    pub teacher_taps: Option<Vec<String>>,
    /// Teacher weights: a weight file, the word `random` (seeded random teacher, for
    /// timing only), or absent (the backbone's default file under `third_party/weights/`,
    /// falling back to a random teacher with a warning).
    #[serde(default)]
    pub teacher_weights: Option<String>,
    /// One or several MVTec-layout category folders; several = domain generalisation.
    /// Relative paths are taken from the current directory.
    pub roots: Vec<PathBuf>,
    /// `tile` (native resolution cut into tiles, default) or `resize` (whole image resized).
    #[serde(default)]
    pub input_mode: InputMode,
    /// Network input side in pixels (tile side in tile mode); default 256.
    #[serde(default = "default_image_size")]
    pub image_size: u32,
    /// Per-layer loss weights α for the pairs (T0,S0)..(T3,S3); default ¼ each.
    #[serde(default = "default_loss_weights")]
    pub loss_weights: [f32; 4],
    /// Adam settings.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// Reduce-on-plateau learning-rate schedule on the validation loss.
    #[serde(default)]
    pub plateau: PlateauConfig,
    /// Maximum number of epochs; default 100.
    #[serde(default = "default_max_epochs")]
    pub max_epochs: usize,
    /// Stop after this many epochs without validation improvement; default 10.
    #[serde(default = "default_early_stop")]
    pub early_stop: usize,
    /// Images (tiles) per training step; default 4.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Fraction of each root's source images held out for validation; default 0.3.
    #[serde(default = "default_val_fraction")]
    pub val_fraction: f64,
    /// Gaussian blur augmentation on the normalised tensor (train and validation).
    #[serde(default)]
    pub blur: BlurConfig,
    /// Seed of the split, the student's initialisation, the batch order and a random teacher.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Compute threads (candle and rayon); absent = all cores. `--threads` overrides it.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Memory budget in MiB for the teacher's features, computed once per training and
    /// validation tile and reused every epoch (training tiles first); tiles beyond it run
    /// the teacher every epoch. 0 turns the cache off. Default 2048.
    #[serde(default = "default_feature_cache_mb")]
    pub feature_cache_mb: usize,
    /// Keep at most this many tiles per source image (spread over its rows and columns);
    /// for quick runs.
    #[serde(default)]
    pub max_tiles_per_image: Option<usize>,
    /// Use at most this many source images per root (first by name); for quick runs.
    #[serde(default)]
    pub limit: Option<usize>,
    /// After training, compute position statistics (the per-pixel mean and spread of the
    /// smoothed map over the training split's frames) and score per-pixel z-scores, so that
    /// what is high at a fixed place on every good frame no longer sets the score. For a
    /// fixed camera whose frames all have one size (every training image must have it);
    /// the model then refuses frames of another size. Default false.
    #[serde(default)]
    pub position_stats: bool,
}

/// Adam optimiser settings (no weight decay).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// Initial learning rate; default 0.005.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Adam's (β1, β2); default [0.9, 0.999].
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Adam's ε; default 1e-8.
    #[serde(default = "default_eps")]
    pub eps: f64,
}

/// ReduceLROnPlateau settings (mode min, relative threshold, PyTorch semantics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlateauConfig {
    /// Multiplier applied to the learning rate on a plateau; default 0.1.
    #[serde(default = "default_factor")]
    pub factor: f64,
    /// Epochs without improvement before the rate is reduced; default 5.
    #[serde(default = "default_patience")]
    pub patience: usize,
    /// Relative improvement that counts: loss < best·(1 − threshold); default 1e-4.
    #[serde(default = "default_threshold")]
    pub threshold: f64,
    /// Lower bound of the learning rate; default 0.
    #[serde(default)]
    pub min_lr: f64,
}

/// Gaussian blur augmentation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlurConfig {
    /// Apply the blur; default true.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Kernel side (odd); default 3.
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    /// Standard deviation in pixels; default 0.8.
    #[serde(default = "default_sigma")]
    pub sigma: f32,
}

fn default_backbone() -> Backbone {
    Backbone::EfficientnetLite0
}
fn default_image_size() -> u32 {
    256
}
fn default_loss_weights() -> [f32; 4] {
    [0.25; 4]
}
fn default_max_epochs() -> usize {
    100
}
fn default_early_stop() -> usize {
    10
}
fn default_batch_size() -> usize {
    4
}
fn default_val_fraction() -> f64 {
    0.3
}
fn default_seed() -> u64 {
    42
}
fn default_feature_cache_mb() -> usize {
    crate::featcache::DEFAULT_FEATURE_CACHE_MB
}
fn default_lr() -> f64 {
    0.005
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-8
}
fn default_factor() -> f64 {
    0.1
}
fn default_patience() -> usize {
    5
}
fn default_threshold() -> f64 {
    1e-4
}
fn default_true() -> bool {
    true
}
fn default_kernel() -> usize {
    3
}
fn default_sigma() -> f32 {
    0.8
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            lr: default_lr(),
            betas: default_betas(),
            eps: default_eps(),
        }
    }
}

impl Default for PlateauConfig {
    fn default() -> Self {
        Self {
            factor: default_factor(),
            patience: default_patience(),
            threshold: default_threshold(),
            min_lr: 0.0,
        }
    }
}

impl Default for BlurConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            kernel: default_kernel(),
            sigma: default_sigma(),
        }
    }
}

impl TrainConfig {
    /// A config with every default and the given data roots.
    pub fn with_roots(roots: Vec<PathBuf>) -> Self {
        Self {
            version: CONFIG_VERSION,
            backbone: default_backbone(),
            variant: Variant::default(),
            teacher_taps: None,
            teacher_weights: None,
            roots,
            input_mode: InputMode::default(),
            image_size: default_image_size(),
            loss_weights: default_loss_weights(),
            optimizer: OptimizerConfig::default(),
            plateau: PlateauConfig::default(),
            max_epochs: default_max_epochs(),
            early_stop: default_early_stop(),
            batch_size: default_batch_size(),
            val_fraction: default_val_fraction(),
            blur: BlurConfig::default(),
            seed: default_seed(),
            threads: None,
            feature_cache_mb: default_feature_cache_mb(),
            max_tiles_per_image: None,
            limit: None,
            position_stats: false,
        }
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Self::from_yaml(&text, path)
    }

    /// Parses and validates YAML text; `path` only names the source in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: TrainConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// The config as YAML (what is stored beside a checkpoint).
    pub fn to_yaml(&self) -> String {
        // Serialising plain structs of numbers, strings and enums cannot fail.
        serde_yaml::to_string(self).unwrap_or_default()
    }

    /// Checks every value; `path` only names the source in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let bad = |key: &'static str, msg: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            msg,
        };
        if self.version != CONFIG_VERSION {
            return Err(bad(
                "version",
                format!(
                    "this build reads version {CONFIG_VERSION}, the file says {}",
                    self.version
                ),
            ));
        }
        if self.roots.is_empty() {
            return Err(bad("roots", "at least one data folder is needed".into()));
        }
        if let Some(taps) = &self.teacher_taps {
            if taps.len() != 4 {
                return Err(bad(
                    "teacher_taps",
                    format!("four layer names are needed, got {}", taps.len()),
                ));
            }
        }
        if let Some(w) = &self.teacher_weights {
            if w.trim().is_empty() {
                return Err(bad("teacher_weights", "empty path".into()));
            }
        }
        if self.image_size < 64 || self.image_size > 1024 || !self.image_size.is_multiple_of(32) {
            return Err(bad(
                "image_size",
                format!(
                    "must be a multiple of 32 in 64..=1024, got {}",
                    self.image_size
                ),
            ));
        }
        if self.loss_weights.iter().any(|a| !a.is_finite() || *a < 0.0)
            || self.loss_weights.iter().all(|a| *a == 0.0)
        {
            return Err(bad(
                "loss_weights",
                format!(
                    "weights must be finite, ≥ 0 and not all 0, got {:?}",
                    self.loss_weights
                ),
            ));
        }
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            return Err(bad("optimizer.lr", format!("must be > 0, got {}", o.lr)));
        }
        if o.betas.iter().any(|b| !(0.0..1.0).contains(b)) {
            return Err(bad(
                "optimizer.betas",
                format!("each must be in [0, 1), got {:?}", o.betas),
            ));
        }
        if !(o.eps.is_finite() && o.eps > 0.0) {
            return Err(bad("optimizer.eps", format!("must be > 0, got {}", o.eps)));
        }
        let p = &self.plateau;
        if !(p.factor > 0.0 && p.factor < 1.0) {
            return Err(bad(
                "plateau.factor",
                format!("must be in (0, 1), got {}", p.factor),
            ));
        }
        if !(p.threshold.is_finite() && (0.0..1.0).contains(&p.threshold)) {
            return Err(bad(
                "plateau.threshold",
                format!("must be in [0, 1), got {}", p.threshold),
            ));
        }
        if !(p.min_lr.is_finite() && p.min_lr >= 0.0) {
            return Err(bad(
                "plateau.min_lr",
                format!("must be ≥ 0, got {}", p.min_lr),
            ));
        }
        if self.max_epochs == 0 {
            return Err(bad("max_epochs", "must be at least 1".into()));
        }
        if self.early_stop == 0 {
            return Err(bad("early_stop", "must be at least 1".into()));
        }
        if self.batch_size == 0 {
            return Err(bad("batch_size", "must be at least 1".into()));
        }
        if !(self.val_fraction > 0.0 && self.val_fraction < 1.0) {
            return Err(bad(
                "val_fraction",
                format!(
                    "must be in (0, 1) (validation sets the threshold), got {}",
                    self.val_fraction
                ),
            ));
        }
        let b = &self.blur;
        if b.kernel == 0 || b.kernel.is_multiple_of(2) || b.kernel > 31 {
            return Err(bad(
                "blur.kernel",
                format!("must be odd, 1..=31, got {}", b.kernel),
            ));
        }
        if !(b.sigma.is_finite() && b.sigma > 0.0) {
            return Err(bad("blur.sigma", format!("must be > 0, got {}", b.sigma)));
        }
        if self.threads == Some(0) {
            return Err(bad("threads", "must be at least 1 (or absent)".into()));
        }
        if self.max_tiles_per_image == Some(0) {
            return Err(bad(
                "max_tiles_per_image",
                "must be at least 1 (or absent)".into(),
            ));
        }
        if self.limit.is_some_and(|l| l < 2) {
            return Err(bad(
                "limit",
                "must be at least 2 (one training and one validation image)".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TrainConfig, ConfigError> {
        TrainConfig::from_yaml(s, Path::new("test.yaml"))
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = parse("version: 1\nroots: [a]\n").unwrap();
        assert_eq!(c, TrainConfig::with_roots(vec!["a".into()]));
        assert_eq!(c.optimizer.lr, 0.005);
        assert_eq!(c.plateau.patience, 5);
        assert_eq!(c.loss_weights, [0.25; 4]);
    }

    #[test]
    fn round_trips_through_yaml() {
        let mut c = TrainConfig::with_roots(vec!["x".into(), "y".into()]);
        c.variant = Variant::Dg;
        c.input_mode = InputMode::Resize;
        c.threads = Some(2);
        let back = parse(&c.to_yaml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn nested_unknown_key_is_named() {
        let e = parse("version: 1\nroots: [a]\noptimizer:\n  learning_rate: 0.1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("learning_rate"), "{e}");
    }

    #[test]
    fn wrong_version_is_refused() {
        let e = parse("version: 2\nroots: [a]\n").unwrap_err().to_string();
        assert!(e.contains("version"), "{e}");
    }
}
