//! Teacher weight files: where they live, how they are read and how they are identified.
//!
//! Three formats are read, all in Rust:
//! - torchvision's zip `.pth` (`torch.save` since PyTorch 1.6), through `candle_core::pickle`;
//! - the legacy pre-zip torch pickle format, used by the EfficientNet-Lite0 package
//!   ([`pth_legacy`]);
//! - safetensors ([`safetensors_file`]).
//!
//! The format is chosen from the file's first bytes, not its name. A file is identified by its
//! full SHA-256 ([`sha256_file`]); torchvision ResNet files are also checked as torchvision
//! does: the hash begins with the 8 hex digits in the file name ([`check_name_hash`]).
//!
//! When no file is present a teacher can be built from seeded random weights
//! ([`TeacherWeights::Random`], see [`random`]); such a model records `random` as its weights.

pub mod pth_legacy;
pub mod random;
pub mod safetensors_file;

use candle_core::{DType, Device, Tensor};
use fabric_inspect::meta::Backbone;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Environment variable naming the folder that holds the teacher weight files.
pub const WEIGHTS_DIR_ENV: &str = "FABRIC_WEIGHTS_DIR";

/// Errors while finding, reading or checking a weight file.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    /// The file could not be read.
    #[error("reading weights {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file's bytes do not follow its format.
    #[error("reading weights {path}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the backbone needs is not in the file.
    #[error("weights {path}: tensor `{name}` is missing (expected shape {expected:?})")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the backbone needs.
        expected: Vec<usize>,
    },
    /// A tensor has another shape than the backbone needs.
    #[error("weights {path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the backbone needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The file's SHA-256 does not begin with the hex digits in its name.
    #[error(
        "weights {path}: SHA-256 {sha256} does not begin with `{prefix}` from the file name \
         (corrupt or truncated download?)"
    )]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// The digits from the file name.
        prefix: String,
        /// The file's full hash.
        sha256: String,
    },
    /// A tensor could not be built or converted.
    #[error("weights {path}: tensor `{name}`: {source}")]
    Tensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The cause.
        source: Box<candle_core::Error>,
    },
}

/// Where the teacher's weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeacherWeights {
    /// A weight file (zip `.pth`, legacy `.pth` or `.safetensors`).
    File(PathBuf),
    /// Seeded random weights, BatchNorm statistics included (see [`random`]).
    Random {
        /// The seed; the same seed gives the same teacher.
        seed: u64,
    },
}

/// The file name of the pretrained weights for `backbone` (see DECISIONS.md).
pub fn default_file_name(backbone: Backbone) -> &'static str {
    match backbone {
        Backbone::Resnet18 => "resnet18-f37072fd.pth",
        Backbone::Resnet34 => "resnet34-b627a593.pth",
        Backbone::EfficientnetLite0 => "efficientnet-lite0-57934424.pth",
    }
}

/// The folder holding weight files: `$FABRIC_WEIGHTS_DIR` when set, else
/// `third_party/weights/` of the checkout this crate was built from.
pub fn weights_dir() -> PathBuf {
    match std::env::var_os(WEIGHTS_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("third_party")
            .join("weights"),
    }
}

/// The default weights of `backbone`: its pretrained file in [`weights_dir`] when present,
/// else seeded random weights, with a warning saying which file to place where.
pub fn default_weights(backbone: Backbone, seed: u64) -> TeacherWeights {
    let path = weights_dir().join(default_file_name(backbone));
    if path.is_file() {
        TeacherWeights::File(path)
    } else {
        tracing::warn!(
            backbone = backbone.name(),
            "pretrained weights {} not found (run `make weights` or place the file there, \
             or set {WEIGHTS_DIR_ENV}); using seeded random teacher weights (seed {seed})",
            path.display()
        );
        TeacherWeights::Random { seed }
    }
}

/// Full SHA-256 of a file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String, WeightError> {
    let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(sha256_hex(&bytes))
}

/// SHA-256 of bytes, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash prefix in a torch-hub style file name (`name-<hex8>.pth` → `<hex8>`), if any.
/// Only `.pth` / `.pt` names carry one.
pub fn name_hash_prefix(path: &Path) -> Option<String> {
    let ext = path.extension()?.to_str()?;
    if ext != "pth" && ext != "pt" {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    let (_, suffix) = stem.rsplit_once('-')?;
    let is_hex = suffix.len() >= 8 && suffix.chars().all(|c| c.is_ascii_hexdigit());
    is_hex.then(|| suffix.to_ascii_lowercase())
}

/// torchvision's check: when the file name carries a hash prefix, the file's SHA-256 must
/// begin with it. Names without a prefix pass.
pub fn check_name_hash(path: &Path, sha256: &str) -> Result<(), WeightError> {
    match name_hash_prefix(path) {
        Some(prefix) if !sha256.starts_with(&prefix) => Err(WeightError::HashMismatch {
            path: path.to_owned(),
            prefix,
            sha256: sha256.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// The on-disk formats this module reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// Zip archive written by `torch.save` (PyTorch ≥ 1.6).
    PthZip,
    /// Legacy torch pickle sequence (PyTorch < 1.6 or `_use_new_zipfile_serialization=False`).
    PthLegacy,
    /// safetensors.
    Safetensors,
}

/// Recognises a weight file's format from its first bytes.
pub fn detect_format(path: &Path, head: &[u8]) -> Result<WeightFormat, WeightError> {
    if head.starts_with(b"PK\x03\x04") {
        Ok(WeightFormat::PthZip)
    } else if head.starts_with(&[0x80, 0x02, 0x8a]) {
        Ok(WeightFormat::PthLegacy)
    } else if head.len() >= 9 && head[8] == b'{' {
        Ok(WeightFormat::Safetensors)
    } else {
        Err(WeightError::Format {
            path: path.to_owned(),
            message: "not a torch .pth (zip or legacy) nor a safetensors file".into(),
        })
    }
}

/// All tensors of one weight file, on the CPU, in their stored dtype, plus the file's hash.
#[derive(Debug)]
pub struct WeightFile {
    /// The file.
    pub path: PathBuf,
    /// Its full SHA-256, lower-case hex.
    pub sha256: String,
    /// Its format.
    pub format: WeightFormat,
    /// Tensors by name.
    pub tensors: HashMap<String, Tensor>,
}

impl WeightFile {
    /// Reads every tensor of a weight file, whatever its format.
    pub fn open(path: &Path) -> Result<WeightFile, WeightError> {
        let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
            path: path.to_owned(),
            source,
        })?;
        let sha256 = sha256_hex(&bytes);
        let format = detect_format(path, &bytes[..bytes.len().min(16)])?;
        let list = match format {
            WeightFormat::PthZip => {
                drop(bytes);
                candle_core::pickle::read_all(path).map_err(|e| WeightError::Format {
                    path: path.to_owned(),
                    message: format!("zip .pth: {e}"),
                })?
            }
            WeightFormat::PthLegacy => pth_legacy::read_bytes(path, &bytes)?,
            WeightFormat::Safetensors => safetensors_file::read_bytes(path, &bytes)?,
        };
        tracing::debug!(
            path = %path.display(),
            ?format,
            tensors = list.len(),
            "weights read"
        );
        Ok(WeightFile {
            path: path.to_owned(),
            sha256,
            format,
            tensors: list.into_iter().collect(),
        })
    }

    /// The tensor `name` as f32 on `device`, checked against `expected` shape.
    pub fn get(
        &self,
        name: &str,
        expected: &[usize],
        device: &Device,
    ) -> Result<Tensor, WeightError> {
        let t = self.tensors.get(name).ok_or_else(|| WeightError::Missing {
            path: self.path.clone(),
            name: name.to_owned(),
            expected: expected.to_vec(),
        })?;
        if t.dims() != expected {
            return Err(WeightError::Shape {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: expected.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        t.to_dtype(DType::F32)
            .and_then(|t| t.to_device(device))
            .map_err(|source| WeightError::Tensor {
                path: self.path.clone(),
                name: name.to_owned(),
                source: Box::new(source),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_prefix_from_names() {
        let p = Path::new("w/resnet34-b627a593.pth");
        assert_eq!(name_hash_prefix(p).as_deref(), Some("b627a593"));
        assert_eq!(name_hash_prefix(Path::new("teacher.safetensors")), None);
        assert_eq!(
            name_hash_prefix(Path::new("run-20240101.safetensors")),
            None
        );
        assert_eq!(name_hash_prefix(Path::new("efficientnet-lite0.pth")), None);
        assert!(check_name_hash(p, "b627a593aaaa").is_ok());
        let err = check_name_hash(p, "00000000aaaa").unwrap_err().to_string();
        assert!(
            err.contains("b627a593") && err.contains("resnet34"),
            "{err}"
        );
    }

    #[test]
    fn sha256_of_known_bytes() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn formats_from_first_bytes() {
        let p = Path::new("x");
        assert_eq!(
            detect_format(p, b"PK\x03\x04..").unwrap(),
            WeightFormat::PthZip
        );
        assert_eq!(
            detect_format(p, &[0x80, 2, 0x8a, 10]).unwrap(),
            WeightFormat::PthLegacy
        );
        assert_eq!(
            detect_format(p, b"\x10\0\0\0\0\0\0\0{\"a\"").unwrap(),
            WeightFormat::Safetensors
        );
        assert!(detect_format(p, b"hello world").is_err());
    }
}
