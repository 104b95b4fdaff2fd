//! Timing of one training step, per part: teacher forward, student forward + loss, backward,
//! optimiser step (`fabric-train bench`).
//!
//! What it measures: a batch of `batch` synthetic 256×256 tiles (seeded noise, normalised
//! like images), one warm-up step, then `runs` timed steps; each part's figure is the median
//! over the runs divided by the batch size (ms per image), as the reference figures in the
//! issue are given. The parts' medians need not add up to the median total. Peak memory is
//! the process's resident high-water mark (`VmHWM` in `/proc/self/status`, Linux only).
//! The slowdown it is meant to catch: a regression in candle's convolution backward or in
//! the optimiser, which dominate a step on a CPU.

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
    /// Pass and geometry, e.g. `product k3s1 64x64x64 / 64` (input channels × height ×
    /// width / channels on the other side).
    pub op: String,
    /// Passes of this kind in the step.
    pub calls: u64,
    /// Milliseconds per image.
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
                nested: op.starts_with("im2col") || op.starts_with("col2im"),
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
        let mut s = format!(
            "training step, {} ({} teacher), {}, batch {}, 256×256, {} threads, median of {} runs\n",
            self.backbone,
            self.teacher_weights,
            self.variant,
            self.batch,
            self.threads,
            self.runs.len()
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
            "\nprofile of the last run, ms/image (· = inside the row above it in time)\n",
        );
        for (phase, total) in [
            ("teacher", last.teacher_ms),
            ("student", last.student_loss_ms),
            ("backward", last.backward_ms),
            ("optimizer", last.optimizer_ms),
        ] {
            let mut rows: Vec<&ProfileRow> =
                self.profile.iter().filter(|r| r.phase == phase).collect();
            rows.sort_by(|a, b| b.ms.total_cmp(&a.ms));
            s.push_str(&format!("{phase:<44}{total:>8.1}\n"));
            let mut timed = 0.0;
            for r in &rows {
                if !r.nested {
                    timed += r.ms;
                }
                let mark = if r.nested { "·" } else { " " };
                s.push_str(&format!(
                    "  {mark}{:<36}{:>5}{:>8.1}\n",
                    r.op, r.calls, r.ms
                ));
            }
            if !rows.is_empty() {
                s.push_str(&format!(
                    "   {:<41}{:>8.1}\n",
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
    fn peak_rss_is_reported_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(peak_rss_bytes().is_some_and(|b| b > 0));
        }
    }
}
