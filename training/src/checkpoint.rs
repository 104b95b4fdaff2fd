//! The run folder written by `fabric-train train --out RUN_DIR`, and how to read it back.
//!
//! Layout (every file written atomically, so a crash leaves the previous version):
//!
//! | file | content |
//! |---|---|
//! | `config.yaml` | the [`TrainConfig`] of the run (includes the seed) |
//! | `split.yaml` | the [`Split`]: seed and the training / validation source images |
//! | `best.safetensors` | student variables of the epoch with the lowest validation loss: weights and BatchNorm running statistics, named as the student's `VarBuilder` paths |
//! | `last.safetensors` | student variables after the last finished epoch, plus Adam's moments `adam.m.<var>` / `adam.v.<var>` (for `--resume`) |
//! | `state.yaml` | [`TrainState`]: epochs done, Adam steps, learning rate, plateau and early-stop counters, best epoch and loss, the loss curve, teacher weights id |
//! | `curve.csv` | `epoch,train_loss,val_loss,lr,seconds,best`, one row per epoch (losses are means per tile; `lr` is the rate the epoch trained with) |
//! | `.lock` | empty; locked by the training that writes into the folder |
//! | `stats.yaml` | [`RunStats`]: validation score statistics of the best checkpoint (no blur, scored as inference), the default threshold, σ and the per-image scores; written when training ends |
//!
//! To rebuild the trained model (e.g. for ONNX export): [`load_config`], then
//! [`crate::trainer::build_model`] with that config, then [`load_best_into`]; or
//! [`load_model`], which does all three.

use crate::config::{ConfigError, TrainConfig};
use crate::data::Split;
use crate::model::Rrd;
use crate::trainer::{build_model, Adam, Plateau};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use fabric_inspect::fsutil::atomic_write;
use fabric_inspect::threshold::ScoreStats;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// File names inside a run folder.
pub mod files {
    /// Training config.
    pub const CONFIG: &str = "config.yaml";
    /// Training / validation split.
    pub const SPLIT: &str = "split.yaml";
    /// Best student weights.
    pub const BEST: &str = "best.safetensors";
    /// Last-epoch student weights and optimiser moments.
    pub const LAST: &str = "last.safetensors";
    /// Resumable training state.
    pub const STATE: &str = "state.yaml";
    /// Held (locked) by the training that writes into the folder.
    pub const LOCK: &str = ".lock";
    /// Loss curve.
    pub const CURVE: &str = "curve.csv";
    /// Validation score statistics and threshold.
    pub const STATS: &str = "stats.yaml";
    /// Position statistics (only with `position_stats: true`).
    pub const POSITION: &str = fabric_inspect::position::POSITION_FILE;
}

/// Errors of reading or writing a run folder.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read, written or parsed.
    #[error("run folder {path}: {msg}")]
    File { path: PathBuf, msg: String },
    /// The folder already holds a run and `--resume` was not given.
    #[error(
        "run folder {0} already holds a training run; pass --resume to continue it or choose another --out"
    )]
    Exists(PathBuf),
    /// Another training holds the folder's lock.
    #[error(
        "run folder {0} is in use by another training (it holds {0}/.lock); wait for it to end or choose another --out"
    )]
    Busy(PathBuf),
    /// `--resume` with a config that differs from the run's own in more than `max_epochs`,
    /// `early_stop`, `threads`, `feature_cache_mb` or `position_stats`.
    #[error("run folder {0}: the config differs from the run's config.yaml in more than max_epochs, early_stop, threads, feature_cache_mb or position_stats; resume with the same config")]
    ConfigChanged(PathBuf),
    /// The run's student was built with other output activations than the current code
    /// builds for its teacher taps.
    #[error(
        "run folder {path}: its student ends {stored} but this version builds it ending {now} \
         for these teacher taps (the student now ends without ReLU where the teacher feature \
         can be negative); train a new run"
    )]
    StudentChanged {
        path: PathBuf,
        stored: String,
        now: String,
    },
    /// The stored config is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

type Result<T, E = CheckpointError> = std::result::Result<T, E>;

fn file_err(path: &Path, msg: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::File {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// One row of the loss curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveRow {
    /// Epoch number, from 1.
    pub epoch: usize,
    /// Mean training loss per tile.
    pub train_loss: f64,
    /// Mean validation loss per tile.
    pub val_loss: f64,
    /// Learning rate the epoch trained with.
    pub lr: f64,
    /// Wall time of the epoch (training and validation).
    pub seconds: f64,
    /// Whether this epoch gave a new best checkpoint.
    pub best: bool,
}

/// Everything `--resume` needs besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs finished.
    pub epoch: usize,
    /// Adam steps taken.
    pub steps: u64,
    /// Learning rate for the next epoch.
    pub lr: f64,
    /// Reduce-on-plateau state.
    pub plateau: Plateau,
    /// Best validation loss so far (infinite before the first epoch).
    pub best_val_loss: f64,
    /// Epoch of `best_val_loss`.
    pub best_epoch: usize,
    /// Epochs since the best one (early stop counter).
    pub bad_epochs: usize,
    /// Whether early stopping or `max_epochs` ended the training loop (a resume with a
    /// higher `max_epochs` continues a run that hit the old limit).
    pub finished_training: bool,
    /// The seed of the run.
    pub seed: u64,
    /// SHA-256 of the teacher weight file, or `random`.
    pub teacher_weights: String,
    /// The loss curve so far.
    pub curve: Vec<CurveRow>,
    /// Which student outputs S0..S3 end without ReLU ([`crate::student::Student::signed_outputs`]).
    /// Absent in runs from before signed outputs existed: those rectified every output.
    #[serde(default)]
    pub signed_outputs: Option<[bool; 4]>,
}

impl TrainState {
    /// The state before the first epoch.
    pub fn new(cfg: &TrainConfig, teacher_weights: String) -> Self {
        let p = &cfg.plateau;
        Self {
            epoch: 0,
            steps: 0,
            lr: cfg.optimizer.lr,
            plateau: Plateau::new(p.factor, p.patience, p.threshold, p.min_lr),
            best_val_loss: f64::INFINITY,
            best_epoch: 0,
            bad_epochs: 0,
            finished_training: false,
            seed: cfg.seed,
            teacher_weights,
            curve: Vec::new(),
            signed_outputs: None,
        }
    }
}

/// Validation statistics of the trained model (`stats.yaml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStats {
    /// σ of the Gaussian smoothing used for scoring.
    pub sigma: f32,
    /// Statistics of the validation normals' image scores.
    pub stats: ScoreStats,
    /// Default threshold: max(mean + 4·std, max + 0.01 %).
    pub threshold: f32,
    /// Score of every validation image.
    pub scores: Vec<ImageScore>,
    /// Epoch of the checkpoint that was scored.
    pub best_epoch: usize,
    /// Its validation loss.
    pub best_val_loss: f64,
    /// Position statistics (`position.bin`) when the config asked for them; the scores
    /// and the threshold are then per-pixel z-scores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<fabric_inspect::meta::PositionMeta>,
}

/// The score of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageScore {
    /// Image file.
    pub path: PathBuf,
    /// Maximum of its smoothed anomaly map.
    pub score: f32,
}

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

fn write_yaml<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_yaml::to_string(value).map_err(|e| file_err(path, e))?;
    atomic_write(path, text.as_bytes()).map_err(|e| file_err(path, e))
}

fn read_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    serde_yaml::from_str(&text).map_err(|e| file_err(path, e))
}

fn write_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bytes = safetensors::tensor::serialize(refs, None).map_err(|e| file_err(path, e))?;
    atomic_write(path, &bytes).map_err(|e| file_err(path, e))
}

fn read_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device).map_err(|e| file_err(path, e))
}

/// The student's variables as named tensors, sorted by name.
pub fn student_tensors(varmap: &VarMap) -> Vec<(String, Tensor)> {
    crate::trainer::sorted_vars(varmap)
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect()
}

/// Sets every variable of `varmap` from `tensors`; a missing or misshapen tensor is an
/// error naming it (`origin` names the run folder in the message).
pub fn load_into(varmap: &VarMap, tensors: &HashMap<String, Tensor>, origin: &Path) -> Result<()> {
    for (name, var) in crate::trainer::sorted_vars(varmap) {
        let t = tensors
            .get(&name)
            .ok_or_else(|| file_err(origin, format!("checkpoint lacks tensor {name}")))?;
        if t.dims() != var.dims() {
            return Err(file_err(
                origin,
                format!(
                    "tensor {name}: expected shape {:?}, found {:?}",
                    var.dims(),
                    t.dims()
                ),
            ));
        }
        var.set(t)
            .map_err(|e| file_err(origin, format!("tensor {name}: {e}")))?;
    }
    Ok(())
}

impl RunDir {
    /// Opens `root`, creating it when missing.
    pub fn create(root: &Path) -> Result<Self> {
        if root.exists() && !root.is_dir() {
            return Err(file_err(root, "is a file, not a folder"));
        }
        std::fs::create_dir_all(root).map_err(|e| file_err(root, e))?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Takes the folder's lock file (`.lock`) for as long as the returned file lives, so that
    /// two trainings cannot write into one run folder. The operating system releases the
    /// lock when the process ends, however it ends.
    pub fn lock(&self) -> Result<std::fs::File> {
        let p = self.path(files::LOCK);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| file_err(&p, e))?;
        match f.try_lock() {
            Ok(()) => Ok(f),
            Err(std::fs::TryLockError::WouldBlock) => Err(CheckpointError::Busy(self.root.clone())),
            Err(std::fs::TryLockError::Error(e)) => Err(file_err(&p, e)),
        }
    }

    /// Opens an existing run folder.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.join(files::CONFIG).is_file() {
            return Err(file_err(
                root,
                format!("no {} (not a run folder)", files::CONFIG),
            ));
        }
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    /// Path of a file in the folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Writes `config.yaml`.
    pub fn write_config(&self, cfg: &TrainConfig) -> Result<()> {
        let p = self.path(files::CONFIG);
        atomic_write(&p, cfg.to_yaml().as_bytes()).map_err(|e| file_err(&p, e))
    }

    /// Reads and validates `config.yaml`.
    pub fn read_config(&self) -> Result<TrainConfig> {
        Ok(TrainConfig::load(&self.path(files::CONFIG))?)
    }

    /// Writes `split.yaml`.
    pub fn write_split(&self, split: &Split) -> Result<()> {
        write_yaml(&self.path(files::SPLIT), split)
    }

    /// Reads `split.yaml`.
    pub fn read_split(&self) -> Result<Split> {
        read_yaml(&self.path(files::SPLIT))
    }

    /// Reads `split.yaml` when it exists.
    pub fn read_split_opt(&self) -> Result<Option<Split>> {
        if !self.path(files::SPLIT).exists() {
            return Ok(None);
        }
        self.read_split().map(Some)
    }

    /// Writes `state.yaml`.
    pub fn write_state(&self, state: &TrainState) -> Result<()> {
        write_yaml(&self.path(files::STATE), state)
    }

    /// Reads `state.yaml` when it exists.
    pub fn read_state_opt(&self) -> Result<Option<TrainState>> {
        let p = self.path(files::STATE);
        if !p.exists() {
            return Ok(None);
        }
        read_yaml(&p).map(Some)
    }

    /// Writes `best.safetensors`.
    pub fn write_best(&self, varmap: &VarMap) -> Result<()> {
        write_tensors(&self.path(files::BEST), &student_tensors(varmap))
    }

    /// Reads `best.safetensors`.
    pub fn read_best(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let path = self.path(files::BEST);
        if !path.exists() {
            return Err(file_err(
                &path,
                "missing: the run has no finished epoch (it stopped before the end of its \
                 first); run `fabric-train train` with the run's config, this folder as --out \
                 and --resume",
            ));
        }
        read_tensors(&path, device)
    }

    /// Writes `last.safetensors` (student variables and Adam moments).
    pub fn write_last(&self, varmap: &VarMap, adam: &Adam, device: &Device) -> Result<()> {
        let p = self.path(files::LAST);
        let mut t = student_tensors(varmap);
        t.extend(adam.state_tensors(device).map_err(|e| file_err(&p, e))?);
        write_tensors(&p, &t)
    }

    /// Reads `last.safetensors`.
    pub fn read_last(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        read_tensors(&self.path(files::LAST), device)
    }

    /// Writes `curve.csv`.
    pub fn write_curve(&self, rows: &[CurveRow]) -> Result<()> {
        let mut s = String::from("epoch,train_loss,val_loss,lr,seconds,best\n");
        for r in rows {
            s.push_str(&format!(
                "{},{:.6},{:.6},{:e},{:.2},{}\n",
                r.epoch, r.train_loss, r.val_loss, r.lr, r.seconds, r.best as u8
            ));
        }
        let p = self.path(files::CURVE);
        atomic_write(&p, s.as_bytes()).map_err(|e| file_err(&p, e))
    }

    /// Writes `stats.yaml`.
    pub fn write_stats(&self, stats: &RunStats) -> Result<()> {
        write_yaml(&self.path(files::STATS), stats)
    }

    /// Writes `position.bin`.
    pub fn write_position(&self, stats: &fabric_inspect::position::PositionStats) -> Result<()> {
        let p = self.path(files::POSITION);
        stats.write(&p).map_err(|e| file_err(&p, e.to_string()))
    }

    /// Reads `stats.yaml`.
    pub fn read_stats(&self) -> Result<RunStats> {
        read_yaml(&self.path(files::STATS))
    }
}

/// Reads the config of the run in `dir`.
pub fn load_config(dir: &Path) -> Result<TrainConfig> {
    RunDir::open(dir)?.read_config()
}

/// Reads the best student weights of the run in `dir`.
pub fn load_student_weights(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    RunDir::open(dir)?.read_best(device)
}

/// Reads the validation statistics and threshold of the run in `dir`.
pub fn load_stats(dir: &Path) -> Result<RunStats> {
    RunDir::open(dir)?.read_stats()
}

/// Reads the training state of the run in `dir` (seed, teacher weights id, curve).
pub fn load_state(dir: &Path) -> Result<TrainState> {
    RunDir::open(dir)?
        .read_state_opt()?
        .ok_or_else(|| file_err(dir, format!("no {}", files::STATE)))
}

/// Checks that the student built now has the output activations the run in `dir` was
/// trained with (`state.yaml`; a run without the record rectified every output).
pub fn check_student_outputs(dir: &Path, state: &TrainState, built: [bool; 4]) -> Result<()> {
    let stored = state.signed_outputs.unwrap_or([false; 4]);
    if stored == built {
        return Ok(());
    }
    let describe = |s: [bool; 4]| {
        let v: Vec<String> = s
            .iter()
            .enumerate()
            .map(|(k, &signed)| format!("S{k} {}", if signed { "linear" } else { "ReLU" }))
            .collect();
        v.join(", ")
    };
    Err(CheckpointError::StudentChanged {
        path: dir.to_path_buf(),
        stored: describe(stored),
        now: describe(built),
    })
}

/// Sets the student variables of `model` to the run's best checkpoint.
pub fn load_best_into(model: &Rrd, dir: &Path, device: &Device) -> Result<()> {
    let t = load_student_weights(dir, device)?;
    load_into(&model.varmap, &t, dir)
}

/// Rebuilds the trained model of the run in `dir`: teacher from the config, student with
/// the best checkpoint's weights.
pub fn load_model(
    dir: &Path,
    device: &Device,
) -> Result<(TrainConfig, Rrd), crate::trainer::TrainError> {
    let cfg = load_config(dir)?;
    let model = build_model(&cfg, device)?;
    if let Some(state) = RunDir::open(dir)?.read_state_opt()? {
        check_student_outputs(dir, &state, model.student.signed_outputs())?;
    }
    load_best_into(&model, dir, device)?;
    Ok((cfg, model))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(signed: Option<[bool; 4]>) -> TrainState {
        let cfg = TrainConfig::from_yaml(
            "version: 1\nbackbone: efficientnet-lite0\nroots: [data]\ninput_mode: tile\n",
            Path::new("config.yaml"),
        )
        .unwrap();
        TrainState {
            signed_outputs: signed,
            ..TrainState::new(&cfg, "random".into())
        }
    }

    #[test]
    fn student_output_record_must_match_the_built_student() {
        let dir = Path::new("runs/x");
        // Runs from before the record rectified every output: fine for ResNet taps...
        check_student_outputs(dir, &state(None), [false; 4]).unwrap();
        // ...refused for a student that now ends linear (Lite0's signed taps).
        let e = check_student_outputs(dir, &state(None), [true; 4]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("runs/x"), "{msg}");
        assert!(
            msg.contains("S0 ReLU") && msg.contains("S0 linear"),
            "{msg}"
        );
        assert!(msg.contains("train a new run"), "{msg}");
        check_student_outputs(dir, &state(Some([true; 4])), [true; 4]).unwrap();
        assert!(check_student_outputs(dir, &state(Some([true; 4])), [false; 4]).is_err());
    }

    #[test]
    fn state_without_the_record_still_parses() {
        let mut text = serde_yaml::to_string(&state(Some([true, false, true, true]))).unwrap();
        assert!(text.contains("signed_outputs"));
        let back: TrainState = serde_yaml::from_str(&text).unwrap();
        assert_eq!(back.signed_outputs, Some([true, false, true, true]));
        let start = text.find("signed_outputs").unwrap();
        text.truncate(start);
        let old: TrainState = serde_yaml::from_str(&text).unwrap();
        assert_eq!(old.signed_outputs, None);
    }
}
