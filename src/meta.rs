//! Model metadata (`model.yaml`) and the enums that both trainer and runtime name.
//!
//! The exported model folder holds `teacher.onnx` (image → T0..T3), `student.onnx`
//! (T0..T3 → S0..S3) and `model.yaml`, whose schema is [`ModelMeta`]. The runtime refuses
//! a `model.yaml` with an unknown schema version or unknown keys rather than guess.

use crate::threshold::ScoreStats;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Teacher backbone (frozen, ImageNet-pretrained encoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Backbone {
    #[serde(rename = "resnet18")]
    Resnet18,
    #[serde(rename = "resnet34")]
    Resnet34,
    #[serde(rename = "efficientnet-lite0")]
    EfficientnetLite0,
}

impl Backbone {
    /// The name used in configs, metadata and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Backbone::Resnet18 => "resnet18",
            Backbone::Resnet34 => "resnet34",
            Backbone::EfficientnetLite0 => "efficientnet-lite0",
        }
    }

    /// Pixel normalisation the backbone was pretrained with.
    pub fn normalization(self) -> Normalization {
        match self {
            Backbone::Resnet18 | Backbone::Resnet34 => Normalization::Imagenet,
            Backbone::EfficientnetLite0 => Normalization::Lite0,
        }
    }
}

impl std::str::FromStr for Backbone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "resnet18" => Ok(Backbone::Resnet18),
            "resnet34" => Ok(Backbone::Resnet34),
            "efficientnet-lite0" | "lite0" => Ok(Backbone::EfficientnetLite0),
            _ => Err(format!(
                "unknown backbone `{s}` (expected resnet18, resnet34 or efficientnet-lite0)"
            )),
        }
    }
}

impl std::fmt::Display for Backbone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Model variant: the paper's residual reverse distillation, or the domain-generalised
/// variant without the teacher-to-student residual paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    #[default]
    Residual,
    Dg,
}

impl std::str::FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "residual" => Ok(Variant::Residual),
            "dg" => Ok(Variant::Dg),
            _ => Err(format!("unknown variant `{s}` (expected residual or dg)")),
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Variant::Residual => "residual",
            Variant::Dg => "dg",
        })
    }
}

/// How an image is brought to the network's 256×256 input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputMode {
    /// Native resolution cut into 256×256 tiles (fabric strips, camera frames).
    #[default]
    Tile,
    /// Whole image resized to 256×256 (object-style datasets).
    Resize,
}

/// Pixel normalisation applied before the teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// ImageNet mean/std on pixels scaled to [0, 1] (torchvision ResNets).
    Imagenet,
    /// (x − 127) / 128 on 0..255 pixels (EfficientNet-Lite).
    Lite0,
}

/// Schema version of `model.yaml` written and read by this build.
pub const SCHEMA_VERSION: u32 = 1;
/// File name of the metadata inside a model folder.
pub const META_FILE: &str = "model.yaml";
/// File name of the teacher network inside a model folder.
pub const TEACHER_FILE: &str = "teacher.onnx";
/// File name of the student network inside a model folder.
pub const STUDENT_FILE: &str = "student.onnx";

/// Name, channels and spatial size (for a 256×256 input) of one feature map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSpec {
    /// Feature name, `T0`..`T3` (the student's are `S0`..`S3`).
    pub name: String,
    /// Channels.
    pub channels: usize,
    /// Height at the model's input size.
    pub height: usize,
    /// Width at the model's input size.
    pub width: usize,
}

/// One earlier threshold, kept when `calibrate` replaces it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRecord {
    /// The threshold that was replaced.
    pub threshold: f32,
    /// When it was replaced (UTC, RFC 3339).
    pub replaced_at: String,
    /// How many images the replacing threshold was derived from.
    pub images: usize,
    /// Where the replaced threshold came from (`training validation`, `calibrate`).
    pub source: String,
    /// Score statistics the replaced threshold was derived from.
    #[serde(default)]
    pub stats: Option<ScoreStats>,
}

fn default_teacher_input() -> String {
    "image".into()
}

fn default_threshold_source() -> String {
    "training validation".into()
}

/// Where a model's position statistics are and what they cover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PositionMeta {
    /// File inside the model folder ([`crate::position::POSITION_FILE`]).
    pub file: String,
    /// Frame width the statistics hold for, in pixels (the map's width: the image's in
    /// tile mode, `input_size` in resize mode).
    pub width: u32,
    /// Frame height, in pixels.
    pub height: u32,
    /// Defect-free frames they were computed from.
    pub images: usize,
}

/// Contents of `model.yaml`: everything the runtime needs to prepare, run and score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    /// Must equal [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Teacher backbone.
    pub backbone: Backbone,
    /// Residual (the paper's) or DG variant.
    pub variant: Variant,
    /// SHA-256 (hex) of the teacher weight file, or `random` for a seeded random teacher.
    pub teacher_weights: String,
    /// How images reach the network's input.
    pub input_mode: InputMode,
    /// Side of the square network input (256).
    pub input_size: u32,
    /// Pixel normalisation before the teacher.
    pub normalization: Normalization,
    /// Teacher layers the features are taken from (backbone-specific names).
    pub teacher_taps: Vec<String>,
    /// Teacher feature shapes at `input_size`, in the order T0..T3.
    pub features: Vec<FeatureSpec>,
    /// Input name of `teacher.onnx`.
    #[serde(default = "default_teacher_input")]
    pub teacher_input: String,
    /// Output names of `teacher.onnx`, in feature order.
    pub teacher_outputs: Vec<String>,
    /// Input names of `student.onnx`, in feature order.
    pub student_inputs: Vec<String>,
    /// Output names of `student.onnx`, in feature order.
    pub student_outputs: Vec<String>,
    /// Weight of each layer's distance map in the anomaly map (SPEC.md §9).
    pub map_layer_weights: Vec<f32>,
    /// Standard deviation of the Gaussian smoothing, in pixels.
    pub sigma: f32,
    /// Scores of the normal images `threshold` was derived from: the validation normals
    /// after training, the calibration images after `calibrate` (absent for an untrained
    /// export).
    #[serde(default)]
    pub validation: Option<ScoreStats>,
    /// Decision threshold: a score above it is a defect.
    pub threshold: f32,
    /// Where `threshold` came from.
    #[serde(default = "default_threshold_source")]
    pub threshold_source: String,
    /// Earlier thresholds, oldest first.
    #[serde(default)]
    pub threshold_history: Vec<ThresholdRecord>,
    /// Per-pixel statistics of the map over defect-free training frames; when present,
    /// scores and `threshold` are per-pixel z-scores (see [`crate::position`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<PositionMeta>,
    /// Training seed (split, initialisation, augmentation).
    pub seed: u64,
    /// The training configuration, verbatim.
    #[serde(default)]
    pub training_config: serde_yaml::Value,
}

impl ModelMeta {
    /// Reads `dir/model.yaml`, refusing unknown schema versions and inconsistent fields.
    pub fn load(dir: &Path) -> Result<ModelMeta> {
        let path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::Model {
            path: path.clone(),
            msg: format!("cannot read model metadata: {e}"),
        })?;
        Self::from_yaml(&text, &path)
    }

    /// Parses metadata text; `path` only names the source in errors.
    pub fn from_yaml(text: &str, path: &Path) -> Result<ModelMeta> {
        let err = |msg: String| Error::Model {
            path: path.to_path_buf(),
            msg,
        };
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| err(format!("not valid YAML: {e}")))?;
        match value.get("schema_version").and_then(|v| v.as_u64()) {
            Some(v) if v == SCHEMA_VERSION as u64 => {}
            Some(v) => {
                return Err(err(format!(
                    "unknown schema_version {v}: this build reads schema version \
                     {SCHEMA_VERSION}; re-export the model or use a matching fabric-inspect"
                )))
            }
            None => {
                return Err(err(
                    "no schema_version: not a fabric-inspect model.yaml".into()
                ))
            }
        }
        let meta: ModelMeta =
            serde_yaml::from_value(value).map_err(|e| err(format!("invalid metadata: {e}")))?;
        meta.validate().map_err(err)?;
        Ok(meta)
    }

    /// Checks that the fields fit together; the message says what does not.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let n = self.features.len();
        if n == 0 {
            return Err("no features listed".into());
        }
        for (what, len) in [
            ("teacher_outputs", self.teacher_outputs.len()),
            ("student_inputs", self.student_inputs.len()),
            ("student_outputs", self.student_outputs.len()),
            ("map_layer_weights", self.map_layer_weights.len()),
        ] {
            if len != n {
                return Err(format!("{what} has {len} entries for {n} features"));
            }
        }
        if self.input_size == 0 {
            return Err("input_size is 0".into());
        }
        if !(self.sigma.is_finite() && self.sigma >= 0.0) {
            return Err(format!("sigma {} is not a non-negative number", self.sigma));
        }
        if !self.threshold.is_finite() {
            return Err(format!("threshold {} is not finite", self.threshold));
        }
        if let Some(p) = &self.position {
            if p.width == 0 || p.height == 0 {
                return Err("position statistics for an empty frame".into());
            }
            if p.images < 2 {
                return Err(format!(
                    "position statistics from {} image(s); they need at least 2",
                    p.images
                ));
            }
            if p.file.is_empty() || p.file.contains(['/', '\\']) || p.file.starts_with('.') {
                return Err(format!(
                    "position file `{}` must be a plain file name inside the model folder",
                    p.file
                ));
            }
            if self.input_mode == InputMode::Resize
                && (p.width, p.height) != (self.input_size, self.input_size)
            {
                return Err(format!(
                    "position statistics for {}×{} maps, but resize mode scores {}×{} maps",
                    p.width, p.height, self.input_size, self.input_size
                ));
            }
        }
        if let Some(f) = self
            .features
            .iter()
            .find(|f| f.channels == 0 || f.height == 0 || f.width == 0)
        {
            return Err(format!("feature {} has an empty shape", f.name));
        }
        Ok(())
    }

    /// Writes `dir/model.yaml` atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_yaml::to_string(self).map_err(|e| Error::Model {
            path: dir.join(META_FILE),
            msg: format!("cannot serialise metadata: {e}"),
        })?;
        crate::fsutil::atomic_write(&dir.join(META_FILE), text.as_bytes())
    }

    /// Paths of the two networks in `dir`; fails naming the first missing file.
    pub fn network_files(dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let teacher = dir.join(TEACHER_FILE);
        let student = dir.join(STUDENT_FILE);
        for p in [&teacher, &student] {
            if !p.is_file() {
                return Err(Error::Model {
                    path: dir.to_path_buf(),
                    msg: format!("missing {} (a model folder holds teacher.onnx, student.onnx and model.yaml)", p.display()),
                });
            }
        }
        Ok((teacher, student))
    }

    /// Replaces the threshold and its statistics (derived from `stats.count` images by
    /// `source`), keeping the old threshold, its source and statistics in the history.
    pub fn replace_threshold(&mut self, threshold: f32, stats: ScoreStats, source: &str) {
        self.threshold_history.push(ThresholdRecord {
            threshold: self.threshold,
            replaced_at: utc_now_rfc3339(),
            images: stats.count,
            source: std::mem::replace(&mut self.threshold_source, source.to_string()),
            stats: self.validation.replace(stats),
        });
        self.threshold = threshold;
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339_from_unix(secs)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar).
pub fn rfc3339_from_unix(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's well-known algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_from_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_from_unix(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
