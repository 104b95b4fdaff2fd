//! Model metadata (`model.yaml`) and the enums that both trainer and runtime name.
//!
//! The exported model folder holds `teacher.onnx`, `student.onnx` and `model.yaml`; the
//! schema of `model.yaml` is [`ModelMeta`] (filled in by the runtime issue's owner).

use serde::{Deserialize, Serialize};

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
