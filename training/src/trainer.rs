//! The training loop: Adam on the student, reduce-on-plateau on the validation loss,
//! early stopping, checkpoints, and the threshold from the validation normals at the end.
//!
//! Recipe (SPEC.md §8, with DECISIONS.md's choices): Adam (lr 0.005, betas 0.9/0.999, no
//! weight decay); ReduceLROnPlateau on the validation loss (mode min, factor 0.1, patience
//! 5, relative threshold 1e-4, stepped once per epoch); early stop after 10 epochs without
//! validation improvement; at most 100 epochs. The student's BatchNorm layers run in train
//! mode for every training epoch (the authors' code leaves them in eval mode from epoch 2
//! on, a bug not reproduced); the teacher is always in eval mode and gets no gradients.
//!
//! Determinism: the split, the student's initial weights, the batch order and a random
//! teacher all derive from the config seed through [`Rng`] (candle's CPU generator cannot
//! be seeded), so two runs with the same seed and thread count write identical checkpoints,
//! and a resumed run continues exactly as an uninterrupted one would.

use crate::checkpoint::{self, CurveRow, ImageScore, RunDir, RunStats, TrainState};
use crate::config::TrainConfig;
use crate::data::{self, Rng, SourceInfo, TileSet, TileSpec, TrainData};
use crate::featcache::FeatureCache;
use crate::loss::rrd_loss;
use crate::model::{named_trainable_vars, Rrd};
use crate::weights::{default_weights, TeacherWeights};
use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use fabric_inspect::anomaly::{anomaly_maps, default_layer_weights, FeatureView};
use fabric_inspect::gaussian::gaussian_smooth;
use fabric_inspect::meta::{InputMode, PositionMeta};
use fabric_inspect::position::{PositionAccumulator, PositionStats};
use fabric_inspect::threshold::{default_threshold, ScoreStats};
use fabric_inspect::tiling::{Stitcher, TileGrid};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

/// Standard deviation of the Gaussian that smooths anomaly maps before scoring (SPEC §9).
pub const MAP_SIGMA: f32 = 4.0;

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed.
    #[error("tensor: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Loading the data failed.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// The run folder could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// A runtime-crate computation (maps, stitching, statistics) failed.
    #[error(transparent)]
    Runtime(#[from] fabric_inspect::Error),
    /// The model could not be built.
    #[error("model: {0}")]
    Model(String),
    /// The loss became NaN or infinite.
    #[error("epoch {epoch}: training loss is not finite ({loss}); lower optimizer.lr")]
    Diverged { epoch: usize, loss: f32 },
}

type Result<T, E = TrainError> = std::result::Result<T, E>;

/// The variables of `varmap` sorted by name.
pub fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().map(|d| d.clone()).unwrap_or_default();
    let mut v: Vec<(String, Var)> = data.into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Adam (Kingma & Ba) with PyTorch's update rule and no weight decay, whose moments can be
/// saved and restored (candle_nn's `AdamW` keeps them private).
pub struct Adam {
    vars: Vec<(String, Var)>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Steps taken so far.
    pub step: u64,
    /// Current learning rate.
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
}

impl Adam {
    /// Adam over `vars` (name, variable), with zero moments.
    pub fn new(vars: Vec<(String, Var)>, lr: f64, betas: [f64; 2], eps: f64) -> Self {
        let m = vars
            .iter()
            .map(|(_, v)| vec![0.0; v.elem_count()])
            .collect();
        let v2 = vars
            .iter()
            .map(|(_, v)| vec![0.0; v.elem_count()])
            .collect();
        Self {
            vars,
            m,
            v: v2,
            step: 0,
            lr,
            beta1: betas[0],
            beta2: betas[1],
            eps,
        }
    }

    /// Names of the optimised variables, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.iter().map(|(n, _)| n.as_str())
    }

    /// Number of optimised values.
    pub fn param_count(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// One update from the gradients in `grads`; variables without a gradient are left.
    pub fn apply(&mut self, grads: &GradStore) -> candle_core::Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2_sqrt = (1.0 - self.beta2.powi(t)).sqrt();
        let step_size = (self.lr / bc1) as f32;
        let (eps, bc2_sqrt) = (self.eps as f32, bc2_sqrt as f32);
        for (i, (_, var)) in self.vars.iter().enumerate() {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            // Element by element, in parallel over blocks of the variable.
            const BLOCK: usize = 1 << 14;
            p.par_chunks_mut(BLOCK)
                .zip(m.par_chunks_mut(BLOCK))
                .zip(v.par_chunks_mut(BLOCK).zip(g.par_chunks(BLOCK)))
                .for_each(|((p, m), (v, g))| {
                    for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                        *m = b1 * *m + (1.0 - b1) * g;
                        *v = b2 * *v + (1.0 - b2) * g * g;
                        let denom = v.sqrt() / bc2_sqrt + eps;
                        *p -= step_size * *m / denom;
                    }
                });
            let shape = var.shape().clone();
            var.set(&Tensor::from_vec(p, shape, var.device())?)?;
        }
        Ok(())
    }

    /// The moments as named tensors (`adam.m.<var>`, `adam.v.<var>`), for a checkpoint.
    pub fn state_tensors(&self, device: &Device) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::with_capacity(2 * self.vars.len());
        for (i, (name, var)) in self.vars.iter().enumerate() {
            let shape = var.shape().clone();
            out.push((
                format!("adam.m.{name}"),
                Tensor::from_slice(&self.m[i], shape.clone(), device)?,
            ));
            out.push((
                format!("adam.v.{name}"),
                Tensor::from_slice(&self.v[i], shape, device)?,
            ));
        }
        Ok(out)
    }

    /// Restores the moments saved by [`Adam::state_tensors`].
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>) -> candle_core::Result<()> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (key, dst) in [
                (format!("adam.m.{name}"), &mut self.m[i]),
                (format!("adam.v.{name}"), &mut self.v[i]),
            ] {
                let t = tensors
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {key}")))?;
                if t.elem_count() != var.elem_count() {
                    candle_core::bail!(
                        "{key}: expected {} values, found {}",
                        var.elem_count(),
                        t.elem_count()
                    );
                }
                *dst = t.flatten_all()?.to_vec1::<f32>()?;
            }
        }
        Ok(())
    }
}

/// ReduceLROnPlateau in mode `min` with a relative threshold (PyTorch's semantics, no
/// cooldown): a loss improves when it is below `best·(1 − threshold)`; after more than
/// `patience` epochs without improvement the rate is multiplied by `factor` (not below
/// `min_lr`) and the count restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    /// Multiplier on a plateau.
    pub factor: f64,
    /// Epochs without improvement that are tolerated.
    pub patience: usize,
    /// Relative improvement threshold.
    pub threshold: f64,
    /// Lower bound of the rate.
    pub min_lr: f64,
    /// Best loss seen (infinite before the first step).
    pub best: f64,
    /// Epochs since the last improvement.
    pub num_bad: usize,
}

impl Plateau {
    /// A fresh schedule.
    pub fn new(factor: f64, patience: usize, threshold: f64, min_lr: f64) -> Self {
        Self {
            factor,
            patience,
            threshold,
            min_lr,
            best: f64::INFINITY,
            num_bad: 0,
        }
    }

    /// Records one epoch's loss; returns the learning rate to use next.
    pub fn step(&mut self, loss: f64, lr: f64) -> f64 {
        if loss < self.best * (1.0 - self.threshold) {
            self.best = loss;
            self.num_bad = 0;
        } else {
            self.num_bad += 1;
        }
        if self.num_bad > self.patience {
            self.num_bad = 0;
            let new = (lr * self.factor).max(self.min_lr);
            if lr - new > 1e-8 {
                return new;
            }
        }
        lr
    }
}

/// Options of a training run beyond its config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue the run in the output folder from its last checkpoint.
    pub resume: bool,
    /// Hide the progress bar.
    pub quiet: bool,
}

/// The teacher weights a config asks for.
pub fn teacher_weights(cfg: &TrainConfig) -> TeacherWeights {
    match cfg.teacher_weights.as_deref() {
        Some("random") => TeacherWeights::Random { seed: cfg.seed },
        Some(p) => TeacherWeights::File(p.into()),
        None => default_weights(cfg.backbone, cfg.seed),
    }
}

/// Builds the frozen teacher and the seeded student that `cfg` describes.
pub fn build_model(cfg: &TrainConfig, device: &Device) -> Result<Rrd> {
    let taps = cfg.teacher_taps.clone().unwrap_or_default();
    Rrd::build(
        cfg.backbone,
        &taps,
        teacher_weights(cfg),
        cfg.variant,
        cfg.seed,
        device,
    )
    .map_err(|e| TrainError::Model(e.to_string()))
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

/// Mean validation loss per tile (student in eval mode, no gradients); teacher features
/// from `cache` (built on `set`) where it holds them.
pub fn validation_loss(
    model: &Rrd,
    set: &TileSet,
    cache: &FeatureCache,
    alpha: &[f32],
    batch: usize,
    device: &Device,
) -> Result<f64> {
    let mut sum = 0.0f64;
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(batch.max(1)) {
        let t = cache.features(&model.teacher, set, chunk, device)?;
        let s = model.student.forward_t(&t, false)?;
        let l = rrd_loss(&t, &s, alpha)?;
        sum += scalar(&l)? as f64;
    }
    Ok(sum / set.len().max(1) as f64)
}

/// Scores every source image of `set` as inference does (per-tile maps, stitched, smoothed
/// with σ = 4, per-pixel z-scores when `position` is given, maximum); returns one score per
/// source image.
pub fn score_images(
    model: &Rrd,
    set: &TileSet,
    mode: InputMode,
    batch: usize,
    device: &Device,
    position: Option<&PositionStats>,
) -> Result<Vec<f32>> {
    let mut scores = Vec::with_capacity(set.sources.len());
    for_each_smoothed_map(model, set, mode, batch, device, |src, mut map, w, h| {
        if let Some(p) = position {
            p.check_size(w, h)
                .and_then(|_| p.normalise(&mut map))
                .map_err(|e| TrainError::Model(format!("{}: {e}", src.path.display())))?;
        }
        scores.push(map.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        Ok(())
    })?;
    Ok(scores)
}

/// Calls `f(source, smoothed map, width, height)` for every source image of `set`, its map
/// computed as inference does (per-tile maps, stitched, smoothed with σ = 4).
pub fn for_each_smoothed_map(
    model: &Rrd,
    set: &TileSet,
    mode: InputMode,
    batch: usize,
    device: &Device,
    mut f: impl FnMut(&SourceInfo, Vec<f32>, usize, usize) -> Result<()>,
) -> Result<()> {
    let size = set.size;
    for src in &set.sources {
        let mut maps: Vec<Vec<f32>> = Vec::with_capacity(src.tiles.len());
        for chunk in src.tiles.chunks(batch.max(1)) {
            let x = set.batch(chunk, device)?;
            let (t, s) = model.forward_t(&x, false)?;
            let tv: Vec<(Vec<f32>, [usize; 4])> = t.iter().map(flat4).collect::<Result<_>>()?;
            let sv: Vec<(Vec<f32>, [usize; 4])> = s.iter().map(flat4).collect::<Result<_>>()?;
            let tf: Vec<FeatureView> = tv
                .iter()
                .map(|(d, s)| FeatureView::new(d, *s))
                .collect::<fabric_inspect::Result<_>>()?;
            let sf: Vec<FeatureView> = sv
                .iter()
                .map(|(d, s)| FeatureView::new(d, *s))
                .collect::<fabric_inspect::Result<_>>()?;
            let weights =
                default_layer_weights(&tv.iter().map(|(_, s)| (s[2], s[3])).collect::<Vec<_>>());
            maps.extend(anomaly_maps(&tf, &sf, &weights, size, size)?);
        }
        let (map, w, h) = match mode {
            InputMode::Resize => (maps.swap_remove(0), size, size),
            InputMode::Tile => {
                let grid = TileGrid::new(src.width, src.height, size as u32);
                let mut st = Stitcher::new(grid);
                for (i, m) in maps.iter().enumerate() {
                    st.add(i, m)?;
                }
                (st.finish()?, src.width as usize, src.height as usize)
            }
        };
        f(src, gaussian_smooth(&map, w, h, MAP_SIGMA), w, h)?;
    }
    Ok(())
}

/// Checks before training that position statistics can be computed at its end: at least
/// two readable training images and, in tile mode, one size for every training and
/// validation image (the statistics hold for one frame size).
pub fn check_position_data(cfg: &TrainConfig, data: &TrainData) -> Result<()> {
    let fail = |msg: String| {
        Err(TrainError::Model(format!(
            "position_stats: {msg}; fix the images or set `position_stats: false`"
        )))
    };
    if data.train.sources.len() < 2 {
        return fail(format!(
            "{} readable training image(s), the statistics need at least 2",
            data.train.sources.len()
        ));
    }
    if cfg.input_mode == InputMode::Tile {
        let first = &data.train.sources[0];
        let sources = data
            .train
            .sources
            .iter()
            .chain(&data.val_for_scoring().sources);
        if let Some(odd) = sources
            .into_iter()
            .find(|s| (s.width, s.height) != (first.width, first.height))
        {
            return fail(format!(
                "{} is {}×{} but {} is {}×{}; in tile mode every image must have one size",
                odd.path.display(),
                odd.width,
                odd.height,
                first.path.display(),
                first.width,
                first.height
            ));
        }
    }
    Ok(())
}

/// Position statistics of the training split's images (one at a time, every tile, no
/// blur), scored by `model`, and how many images they come from (unreadable ones are
/// skipped with a warning); fails naming the image when the sizes differ.
pub fn position_stats(
    model: &Rrd,
    cfg: &TrainConfig,
    paths: &[std::path::PathBuf],
    device: &Device,
) -> Result<(PositionStats, usize)> {
    let spec = TileSpec {
        mode: cfg.input_mode,
        size: cfg.image_size,
        norm: cfg.backbone.normalization(),
        max_tiles: None,
    };
    let mut acc: Option<PositionAccumulator> = None;
    for path in paths {
        let set = data::load_tiles(std::slice::from_ref(path), &spec, None);
        for_each_smoothed_map(model, &set, cfg.input_mode, 8, device, |src, map, w, h| {
            acc.get_or_insert_with(|| PositionAccumulator::new(w, h))
                .add(&map, w, h)
                .map_err(|e| {
                    TrainError::Model(format!(
                        "position_stats: {}: {e}; every training image must have one size",
                        src.path.display()
                    ))
                })
        })?;
    }
    let acc = acc.ok_or_else(|| {
        TrainError::Model("position_stats: no training image could be scored".into())
    })?;
    let stats = acc
        .finish(MAP_SIGMA)
        .map_err(|e| TrainError::Model(format!("position_stats: {e}")))?;
    Ok((stats, acc.count()))
}

fn flat4(t: &Tensor) -> Result<(Vec<f32>, [usize; 4])> {
    let (n, c, h, w) = t.dims4()?;
    Ok((t.flatten_all()?.to_vec1::<f32>()?, [n, c, h, w]))
}

/// Sets the compute threads for candle and rayon; call before any tensor work.
///
/// Matrix products (candle's `matmul` and [`crate::fastconv`]) and rayon's pool use `n`
/// threads. candle's element-wise kernels stay on the calling thread unless
/// `CANDLE_NUM_THREADS` is set in the environment: they run on a pool of workers that
/// spin while they wait, and on a machine whose cores are shared those waits cost several
/// times the work itself (a Lite0 training step at 2 threads, load average about 7:
/// 840 ms per image with that pool, 245 ms without).
pub fn set_threads(n: usize) {
    if let Ok(cores) = std::thread::available_parallelism() {
        if n > cores.get() {
            tracing::warn!(
                threads = n,
                cores = cores.get(),
                "more compute threads than cores: above the core count training gets slower, \
                 not faster (far above it, many times slower)"
            );
        }
    }
    // candle reads these variables when it first sizes its pools; rayon's global pool
    // is built here so that the setting also holds where `RAYON_NUM_THREADS` was read earlier.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    if rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .is_err()
    {
        tracing::debug!("rayon global pool already built; threads setting may not apply to it");
    }
}

/// Like [`set_threads`] with candle's and rayon's default thread count (all cores, or
/// `RAYON_NUM_THREADS`): only keeps candle's element-wise kernels on the calling thread
/// unless `CANDLE_NUM_THREADS` is set.
pub fn set_default_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Epochs completed in total.
    pub epochs: usize,
    /// Best validation loss and its epoch (1-based).
    pub best_val_loss: f64,
    /// See `best_val_loss`.
    pub best_epoch: usize,
    /// Validation score statistics and threshold.
    pub stats: RunStats,
}

/// Trains `cfg` into the run folder `out` (see [`crate::checkpoint`] for its layout).
pub fn train(cfg: &TrainConfig, out: &Path, opts: &TrainOptions) -> Result<TrainSummary> {
    let device = Device::Cpu;
    let run = RunDir::create(out)?;
    let _lock = run.lock()?;
    let prior = run.read_state_opt()?;
    if prior.is_some() && !opts.resume {
        return Err(checkpoint::CheckpointError::Exists(out.to_path_buf()).into());
    }
    if prior.is_some() {
        let saved = run.read_config()?;
        if !same_model_and_data(&saved, cfg) {
            return Err(checkpoint::CheckpointError::ConfigChanged(out.to_path_buf()).into());
        }
    }
    run.write_config(cfg)?;

    // A resumed run keeps the split it began with: images added to the folders since then
    // would otherwise move between the training and validation sides.
    let data = match (&prior, run.read_split_opt()?) {
        (Some(_), Some(saved)) => {
            let changed = data::make_split(cfg)
                .map_or(true, |now| now.train != saved.train || now.val != saved.val);
            if changed {
                tracing::warn!(
                    run = %out.display(),
                    "the image folders changed since this run began; resuming with the run's \
                     own split.yaml (images added since are not used, missing ones are skipped)"
                );
            }
            data::load_split(cfg, saved)?
        }
        _ => data::load(cfg)?,
    };
    if cfg.position_stats {
        check_position_data(cfg, &data)?;
    }
    let model = build_model(cfg, &device)?;
    let mut adam = Adam::new(
        named_trainable_vars(&model.varmap),
        cfg.optimizer.lr,
        cfg.optimizer.betas,
        cfg.optimizer.eps,
    );
    let mut state = match prior {
        Some(s) => {
            checkpoint::check_student_outputs(out, &s, model.student.signed_outputs())?;
            let tensors = run.read_last(&device)?;
            checkpoint::load_into(&model.varmap, &tensors, out)?;
            adam.load_state(&tensors)?;
            adam.step = s.steps;
            adam.lr = s.lr;
            tracing::info!(epoch = s.epoch, lr = s.lr, "resuming");
            s
        }
        None => TrainState {
            signed_outputs: Some(model.student.signed_outputs()),
            ..TrainState::new(cfg, model.teacher.weights_id())
        },
    };
    run.write_split(&data.split)?;
    let caches = build_caches(&model, &data, cfg, &device)?;
    tracing::info!(
        backbone = %cfg.backbone,
        variant = %cfg.variant,
        trainable = adam.param_count(),
        teacher = %state.teacher_weights,
        "model built"
    );

    let bar = progress_bar(opts.quiet, cfg.max_epochs, state.epoch);
    while state.epoch < cfg.max_epochs && state.bad_epochs < cfg.early_stop {
        let epoch = state.epoch + 1;
        let _span = tracing::info_span!("epoch", epoch, lr = adam.lr).entered();
        let t0 = Instant::now();
        let train_loss = train_epoch(&model, &mut adam, &data, &caches, cfg, epoch, &device)?;
        let val_loss = validation_loss(
            &model,
            &data.val,
            &caches.val,
            &cfg.loss_weights,
            cfg.batch_size,
            &device,
        )?;
        let lr_used = adam.lr;
        adam.lr = state.plateau.step(val_loss, adam.lr);
        let improved = val_loss < state.best_val_loss;
        if improved {
            state.best_val_loss = val_loss;
            state.best_epoch = epoch;
            state.bad_epochs = 0;
            run.write_best(&model.varmap)?;
        } else {
            state.bad_epochs += 1;
        }
        let secs = t0.elapsed().as_secs_f64();
        state.epoch = epoch;
        state.steps = adam.step;
        state.lr = adam.lr;
        state.curve.push(CurveRow {
            epoch,
            train_loss,
            val_loss,
            lr: lr_used,
            seconds: secs,
            best: improved,
        });
        if state.bad_epochs >= cfg.early_stop {
            tracing::info!(
                epoch,
                "early stop: no validation improvement for {} epochs",
                cfg.early_stop
            );
        }
        state.finished_training = state.bad_epochs >= cfg.early_stop || epoch >= cfg.max_epochs;
        run.write_last(&model.varmap, &adam, &device)?;
        run.write_curve(&state.curve)?;
        run.write_state(&state)?;
        tracing::info!(
            epoch,
            train_loss = format!("{train_loss:.5}"),
            val_loss = format!("{val_loss:.5}"),
            lr = lr_used,
            seconds = format!("{secs:.1}"),
            best = improved,
            "epoch done"
        );
        bar.set_position(epoch as u64);
        bar.set_message(format!("val {val_loss:.4}"));
    }
    bar.finish_and_clear();

    // Threshold from the validation normals, scored by the best checkpoint without blur.
    let best = run.read_best(&device)?;
    checkpoint::load_into(&model.varmap, &best, out)?;
    let position = if cfg.position_stats {
        let t0 = Instant::now();
        let (stats, images) = position_stats(&model, cfg, &data.split.train, &device)?;
        run.write_position(&stats)?;
        tracing::info!(
            width = stats.width,
            height = stats.height,
            images,
            seconds = format!("{:.1}", t0.elapsed().as_secs_f64()),
            "position statistics of the training images written"
        );
        Some((stats, images))
    } else {
        None
    };
    let set = data.val_for_scoring();
    let scores = score_images(
        &model,
        set,
        cfg.input_mode,
        8,
        &device,
        position.as_ref().map(|(p, _)| p),
    )?;
    let stats = ScoreStats::from_scores(&scores)?;
    let threshold = default_threshold(&stats);
    let run_stats = RunStats {
        sigma: MAP_SIGMA,
        stats,
        threshold,
        scores: set
            .sources
            .iter()
            .zip(&scores)
            .map(|(s, v)| ImageScore {
                path: s.path.clone(),
                score: *v,
            })
            .collect(),
        best_epoch: state.best_epoch,
        best_val_loss: state.best_val_loss,
        position: position.as_ref().map(|(p, images)| PositionMeta {
            file: checkpoint::files::POSITION.to_string(),
            width: p.width as u32,
            height: p.height as u32,
            images: *images,
        }),
    };
    run.write_stats(&run_stats)?;
    tracing::info!(
        images = scores.len(),
        mean = run_stats.stats.mean,
        max = run_stats.stats.max,
        threshold,
        "validation normals scored"
    );
    Ok(TrainSummary {
        epochs: state.epoch,
        best_val_loss: state.best_val_loss,
        best_epoch: state.best_epoch,
        stats: run_stats,
    })
}

/// Whether a resumed run may continue under `new`: everything but the epoch limits and
/// the thread count must equal the run's original config.
pub fn same_model_and_data(old: &TrainConfig, new: &TrainConfig) -> bool {
    let mut a = old.clone();
    a.max_epochs = new.max_epochs;
    a.early_stop = new.early_stop;
    a.threads = new.threads;
    a.feature_cache_mb = new.feature_cache_mb;
    a.position_stats = new.position_stats;
    &a == new
}

/// Batch order of one epoch, from the seed and the epoch number alone.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    Rng::for_name(seed, &format!("epoch{epoch}")).shuffle(&mut order);
    order
}

/// Teacher features cached for the training and validation tiles of a run.
#[derive(Debug, Clone, Default)]
pub struct RunCaches {
    /// Built on [`TrainData::train`].
    pub train: FeatureCache,
    /// Built on [`TrainData::val`].
    pub val: FeatureCache,
}

/// Caches the teacher's features of the training tiles, then of the validation tiles, within
/// the config's `feature_cache_mb` (see [`crate::featcache`]).
pub fn build_caches(
    model: &Rrd,
    data: &TrainData,
    cfg: &TrainConfig,
    device: &Device,
) -> Result<RunCaches> {
    let budget = cfg.feature_cache_mb << 20;
    let batch = cfg.batch_size;
    let t0 = Instant::now();
    let train = FeatureCache::build(&model.teacher, &data.train, batch, budget, device)?;
    let left = budget.saturating_sub(train.bytes());
    let val = FeatureCache::build(&model.teacher, &data.val, batch, left, device)?;
    tracing::info!(
        train = format!("{}/{}", train.len(), data.train.len()),
        val = format!("{}/{}", val.len(), data.val.len()),
        mib = (train.bytes() + val.bytes()) >> 20,
        seconds = format!("{:.1}", t0.elapsed().as_secs_f64()),
        "teacher features cached"
    );
    Ok(RunCaches { train, val })
}

/// One training epoch; returns the mean training loss per tile.
pub fn train_epoch(
    model: &Rrd,
    adam: &mut Adam,
    data: &TrainData,
    caches: &RunCaches,
    cfg: &TrainConfig,
    epoch: usize,
    device: &Device,
) -> Result<f64> {
    let order = epoch_order(data.train.len(), cfg.seed, epoch);
    let mut sum = 0.0f64;
    for chunk in order.chunks(cfg.batch_size) {
        let loss = train_step(
            model,
            adam,
            &data.train,
            &caches.train,
            chunk,
            &cfg.loss_weights,
            device,
        )?;
        if !loss.is_finite() {
            return Err(TrainError::Diverged { epoch, loss });
        }
        sum += loss as f64;
    }
    Ok(sum / data.train.len().max(1) as f64)
}

/// One optimiser step on the tiles `idx`; returns the batch loss (summed over the batch).
/// Teacher features come from `cache` (built on `set`) where it holds them.
pub fn train_step(
    model: &Rrd,
    adam: &mut Adam,
    set: &TileSet,
    cache: &FeatureCache,
    idx: &[usize],
    alpha: &[f32],
    device: &Device,
) -> Result<f32> {
    let t = cache.features(&model.teacher, set, idx, device)?;
    let s = model.student.forward_t(&t, true)?;
    let loss = rrd_loss(&t, &s, alpha)?;
    let grads = loss.backward()?;
    adam.apply(&grads)?;
    scalar(&loss)
}

fn progress_bar(quiet: bool, total: usize, pos: usize) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if quiet || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("epoch {pos}/{len} {bar:30} {elapsed} {msg}")
    {
        bar.set_style(style);
    }
    bar.set_position(pos as u64);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plateau_follows_pytorch() {
        let mut p = Plateau::new(0.1, 2, 1e-4, 0.0);
        let mut lr = 1.0;
        // improvement, then 3 bad epochs (> patience 2) → reduce on the third.
        for (loss, want) in [(1.0, 1.0), (1.0, 1.0), (0.99995, 1.0), (1.2, 0.1)] {
            lr = p.step(loss, lr);
            assert!(
                (lr - want).abs() < 1e-12,
                "loss {loss}: lr {lr}, want {want}"
            );
        }
        assert_eq!(p.num_bad, 0);
        lr = p.step(0.5, lr);
        assert_eq!((lr, p.best), (0.1, 0.5));
    }

    #[test]
    fn plateau_respects_min_lr() {
        let mut p = Plateau::new(0.1, 0, 0.0, 0.05);
        let lr = p.step(1.0, 0.1);
        assert_eq!(lr, 0.1);
        let lr = p.step(2.0, lr);
        assert!((lr - 0.05).abs() < 1e-12);
        assert_eq!(p.step(3.0, lr), lr);
    }

    #[test]
    fn adam_first_step_moves_by_lr() {
        // On the first step Adam moves each parameter by lr·sign(g) (up to ε).
        let dev = Device::Cpu;
        let var = Var::from_slice(&[1.0f32, -2.0, 3.0], 3, &dev).unwrap();
        let loss = (var.as_tensor() * Tensor::new(&[2.0f32, -1.0, 0.5], &dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let mut adam = Adam::new(vec![("w".into(), var.clone())], 0.1, [0.9, 0.999], 1e-8);
        adam.apply(&grads).unwrap();
        let p = var.as_tensor().to_vec1::<f32>().unwrap();
        let want = [0.9f32, -1.9, 2.9];
        for (a, b) in p.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{p:?}");
        }
        let st = adam.state_tensors(&dev).unwrap();
        assert_eq!(st.len(), 2);
    }
}
