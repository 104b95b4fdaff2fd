//! Timing of one training step, per part: teacher forward, student forward + loss, backward,
//! optimiser step (`fabric-train bench`).
//!
//! What it measures: a batch of `batch` synthetic 256×256 tiles (seeded noise, normalised
//! like images), one warm-up step, then `runs` timed steps; each part's figure is the median
//! over the runs divided by the batch size (ms per image), as the reference figures in the
//! issue are given. The parts' medians need not add up to the median total. Peak memory is
//! the process's resident high-water mark (`VmHWM` in `/proc/self/status`, Linux only).
//! The slowdown it is meant to catch: a regression in the convolutions' backward passes or
//! in the optimiser, which dominate a step on a CPU. With `profile`, the last step also
//! times every convolution and BatchNorm pass ([`crate::opprof`]), so that a regression can
//! be traced to a layer.

use crate::config::TrainConfig;
use crate::data::Rng;
use crate::loss::rrd_loss;
use crate::model::named_trainable_vars;
use crate::trainer::{build_model, Adam, TrainError};
use candle_core::{Device, Tensor};
use fabric_inspect::meta::{Backbone, Variant};
use serde::Serialize;
use std::time::Instant;

/// What to time.
#[derive(Debug, Clone)]
pub struct BenchSpec {
    /// Teacher backbone.
    pub backbone: Backbone,
    /// Student variant.
    pub variant: Variant,
    /// Tiles per step.
    pub batch: usize,
    /// Timed steps after the warm-up.
    pub runs: usize,
    /// Tile side.
    pub size: usize,
    /// Teacher weights: a path, `random`, or `None` for the backbone's default.
    pub teacher_weights: Option<String>,
    /// Time the fast convolutions and BatchNorm passes of the last run ([`crate::opprof`]).
    pub profile: bool,
}

/// Time of one kind of pass in the profiled run.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileRow {
    /// Phase of the step: teacher, student, backward or optimizer.
    pub phase: String,
    /// Pass and geometry, e.g. `product k3s1 64x64x64 / 64` (kernel and stride, input
    /// channels × height × width / channels on the other side). A pass timed inside another
    /// is named after it: `weight-grad k3s1 64x64x64 / 64 · im2col`.
    pub op: String,
    /// Passes of this kind in the step.
    pub calls: u64,
    /// Milliseconds per image of the step (for a nested pass: summed over the threads that
    /// ran it, which may exceed its outer pass's wall time).
    pub ms: f64,
    /// Whether the pass runs inside another row's (im2col, col2im), so it is not added to
    /// the phase's total again.
    pub nested: bool,
}

/// Milliseconds per image of each part of a step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PartTimes {
    /// Teacher forward.
    pub teacher_ms: f64,
    /// Student forward and loss.
    pub student_loss_ms: f64,
    /// Backward pass.
    pub backward_ms: f64,
    /// Adam update.
    pub optimizer_ms: f64,
    /// Whole step.
    pub total_ms: f64,
    /// Whole step without the teacher forward: a step of training once the teacher's
    /// features are cached (`feature_cache_mb`, from the second epoch on, or from the
    /// first where the cache is filled before it).
    pub cached_total_ms: f64,
}

/// Result of a bench.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Teacher backbone.
    pub backbone: Backbone,
    /// Student variant.
    pub variant: Variant,
    /// Teacher weights id (SHA-256 or `random`).
    pub teacher_weights: String,
    /// Tiles per step.
    pub batch: usize,
    /// Tile side.
    pub size: usize,
    /// Compute threads candle used.
    pub threads: usize,
    /// Every timed run.
    pub runs: Vec<PartTimes>,
    /// Per-part medians over the runs.
    pub median: PartTimes,
    /// Peak resident memory in bytes, where the platform reports it.
    pub peak_rss_bytes: Option<u64>,
    /// Per-pass times of the last run, with `--profile` (empty otherwise).
    pub profile: Vec<ProfileRow>,
}

/// The process's peak resident set size (`VmHWM`), in bytes; `None` off Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory the system can still give out without swapping (`MemAvailable` in
/// `/proc/meminfo`), in bytes; `None` off Linux.
pub fn available_memory_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A generous estimate of a training step's memory per input value (ResNet34 at batch 4
/// peaks at about 110 MB per 256×256 tile, 140× its input's bytes; Lite0 far less).
const STEP_BYTES_PER_INPUT_VALUE: u64 = 4 * 150;

/// Refuses a bench whose step would plainly not fit in the memory available, with an error
/// that says how much it needs, instead of aborting on a failed allocation.
pub fn check_memory(batch: usize, size: usize) -> Result<(), TrainError> {
    let values = (batch as u64).saturating_mul(3 * (size * size) as u64);
    let need = values.saturating_mul(STEP_BYTES_PER_INPUT_VALUE);
    match available_memory_bytes() {
        Some(avail) if need > avail => {
            let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
            Err(TrainError::Model(format!(
                "batch {batch} of {size}×{size} tiles needs roughly {:.1} GiB for a training \
                 step, {:.1} GiB is available: use a smaller --batch",
                gib(need),
                gib(avail)
            )))
        }
        _ => Ok(()),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Times training steps as `spec` says.
pub fn run_bench(spec: &BenchSpec) -> Result<BenchReport, TrainError> {
    check_memory(spec.batch, spec.size)?;
    let device = Device::Cpu;
    let mut cfg = TrainConfig::with_roots(vec![]);
    cfg.backbone = spec.backbone;
    cfg.variant = spec.variant;
    cfg.teacher_weights = spec.teacher_weights.clone();
    let model = build_model(&cfg, &device)?;
    let mut adam = Adam::new(
        named_trainable_vars(&model.varmap),
        cfg.optimizer.lr,
        cfg.optimizer.betas,
        cfg.optimizer.eps,
    );
    let mut rng = Rng::new(cfg.seed);
    let n = spec.batch * 3 * spec.size * spec.size;
    let pixels: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    let x = Tensor::from_vec(pixels, (spec.batch, 3, spec.size, spec.size), &device)?;

    let mut runs = Vec::with_capacity(spec.runs);
    for i in 0..=spec.runs {
        if spec.profile {
            // Only the last run is profiled (the warm-up allocates).
            crate::opprof::enable(i == spec.runs);
        }
        let t_all = Instant::now();
        crate::opprof::set_phase(0);
        let t0 = Instant::now();
        let t: Vec<Tensor> = model
            .teacher
            .forward(&x)?
            .iter()
            .map(Tensor::detach)
            .collect();
        let teacher = ms(t0);
        crate::opprof::set_phase(1);
        let t0 = Instant::now();
        let s = model.student.forward_t(&t, true)?;
        let loss = rrd_loss(&t, &s, &cfg.loss_weights)?;
        // Force the lazy parts of the graph to be computed inside this timing.
        let _ = loss.to_scalar::<f32>()?;
        let student = ms(t0);
        crate::opprof::set_phase(2);
        let t0 = Instant::now();
        let grads = loss.backward()?;
        let backward = ms(t0);
        crate::opprof::set_phase(3);
        let t0 = Instant::now();
        adam.apply(&grads)?;
        let optimizer = ms(t0);
        let total = ms(t_all);
        let b = spec.batch as f64;
        let p = PartTimes {
            teacher_ms: teacher / b,
            student_loss_ms: student / b,
            backward_ms: backward / b,
            optimizer_ms: optimizer / b,
            total_ms: total / b,
            cached_total_ms: (total - teacher) / b,
        };
        if i == 0 {
            tracing::debug!(total_ms = p.total_ms, "warm-up step");
        } else {
            tracing::info!(
                run = i,
                total_ms = format!("{:.1}", p.total_ms),
                "step timed"
            );
            runs.push(p);
        }
    }
    let b = spec.batch as f64;
    let profile = if spec.profile {
        let rows = crate::opprof::snapshot()
            .into_iter()
            .map(|(phase, op, e)| ProfileRow {
                phase: phase.to_string(),
                nested: op.contains(" · "),
                op,
                calls: e.calls,
                ms: e.secs * 1e3 / b,
            })
            .collect();
        crate::opprof::enable(false);
        rows
    } else {
        Vec::new()
    };
    let pick = |f: fn(&PartTimes) -> f64| median(runs.iter().map(f).collect());
    let median = PartTimes {
        teacher_ms: pick(|p| p.teacher_ms),
        student_loss_ms: pick(|p| p.student_loss_ms),
        backward_ms: pick(|p| p.backward_ms),
        optimizer_ms: pick(|p| p.optimizer_ms),
        total_ms: pick(|p| p.total_ms),
        cached_total_ms: pick(|p| p.cached_total_ms),
    };
    Ok(BenchReport {
        backbone: spec.backbone,
        variant: spec.variant,
        teacher_weights: model.teacher.weights_id(),
        batch: spec.batch,
        size: spec.size,
        threads: candle_core::utils::get_num_threads(),
        runs,
        median,
        peak_rss_bytes: peak_rss_bytes(),
        profile,
    })
}

impl BenchReport {
    /// A small table for the terminal.
    pub fn table(&self) -> String {
        let m = &self.median;
        // A weight file's SHA-256 shortened to 12 digits, as `git` shortens commits.
        let weights = match self.teacher_weights.get(..12) {
            Some(short) if self.teacher_weights.len() > 12 => format!("{short}…"),
            _ => self.teacher_weights.clone(),
        };
        let mut s = format!(
            "training step, {} ({} teacher), {}, batch {}, {side}×{side}, {} threads, median of {} runs\n",
            self.backbone,
            weights,
            self.variant,
            self.batch,
            self.threads,
            self.runs.len(),
            side = self.size,
        );
        s.push_str("part                    ms/image\n");
        for (name, v) in [
            ("teacher forward", m.teacher_ms),
            ("student forward + loss", m.student_loss_ms),
            ("backward", m.backward_ms),
            ("optimizer (Adam)", m.optimizer_ms),
            ("total step", m.total_ms),
            ("step, teacher cached", m.cached_total_ms),
        ] {
            s.push_str(&format!("{name:<24}{v:>8.1}\n"));
        }
        if let Some(b) = self.peak_rss_bytes {
            s.push_str(&format!(
                "peak RSS                {:>8.2} GiB\n",
                b as f64 / (1u64 << 30) as f64
            ));
        }
        if let Some(last) = self.runs.last().filter(|_| !self.profile.is_empty()) {
            s.push_str(&self.profile_table(last));
        }
        s
    }

    /// The profiled run's passes by phase, slowest first, each phase closed by the time
    /// outside the timed passes (candle's own operations).
    fn profile_table(&self, last: &PartTimes) -> String {
        let mut s = String::from(
            "\nprofile of the last run, ms/image; · rows run inside the row above them (their \
             time summed over threads)\n",
        );
        s.push_str(&format!(
            "{:<46}{:>5}{:>8}\n",
            "phase / pass", "calls", "ms"
        ));
        for (phase, total) in [
            ("teacher", last.teacher_ms),
            ("student", last.student_loss_ms),
            ("backward", last.backward_ms),
            ("optimizer", last.optimizer_ms),
        ] {
            let in_phase = || self.profile.iter().filter(move |r| r.phase == phase);
            let mut outer: Vec<&ProfileRow> = in_phase().filter(|r| !r.nested).collect();
            outer.sort_by(|a, b| b.ms.total_cmp(&a.ms));
            s.push_str(&format!("{phase:<51}{total:>8.1}\n"));
            let mut timed = 0.0;
            for r in &outer {
                timed += r.ms;
                s.push_str(&format!("  {:<44}{:>5}{:>8.1}\n", r.op, r.calls, r.ms));
                let prefix = format!("{} · ", r.op);
                for inner in in_phase().filter(|i| i.op.starts_with(&prefix)) {
                    let name = format!("· {}", &inner.op[prefix.len()..]);
                    s.push_str(&format!(
                        "    {name:<42}{:>5}{:>8.1}\n",
                        inner.calls, inner.ms
                    ));
                }
            }
            if !outer.is_empty() {
                s.push_str(&format!(
                    "  {:<49}{:>8.1}\n",
                    "other operations",
                    total - timed
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn an_impossible_batch_is_refused_with_its_need() {
        if available_memory_bytes().is_some() {
            let e = check_memory(100_000, 256).unwrap_err().to_string();
            assert!(e.contains("batch 100000") && e.contains("GiB"), "{e}");
        }
        assert!(check_memory(4, 256).is_ok());
    }

    #[test]
    fn peak_rss_is_reported_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 0));
        }
    }
}
