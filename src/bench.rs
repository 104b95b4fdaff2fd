//! Timing of the network and of the whole frame pipeline (the paper's speed table).
//!
//! Two measurements, each repeated `runs` times after `warmup` untimed runs, reported as
//! the median and the spread (minimum–maximum):
//! - the network alone (teacher then student) on prepared batches of seeded random tiles,
//!   per batch size: milliseconds per patch and patches per second. Random pixels cost
//!   the same as real ones in a dense FP32 network, so they are good for timing;
//! - one frame through [`Inspector::inspect_image`], split into the stages of
//!   [`StageTimes`] (pre-processing, network, anomaly map, stitching, smoothing, total),
//!   and the ratio of the frame's total to `tiles ×` the per-patch network time at the
//!   frame's batch size: how much the stages around the network add.
//!
//! Every timed network run ends with the features in host memory (the sessions return
//! host tensors; for a GPU provider the copy back is inside the timed region), so the
//! timer is synchronised with the device.
//!
//! Memory: the process's peak resident size (`VmHWM` of `/proc/self/status`), the peak
//! over the frame runs alone (the peak is reset before them where the kernel allows it,
//! through `/proc/self/clear_refs`), and the largest resident size sampled every few
//! milliseconds during the frame runs.

use crate::engine::Provider;
use crate::inspector::{Inspector, StageTimes};
use crate::synth::{render_frame, FabricSpec, Weave};
use crate::{Error, Result};
use image::RgbImage;
use serde::Serialize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The frame the pipeline is timed on.
#[derive(Debug, Clone)]
pub enum FrameSource {
    /// A synthetic woven-fabric frame of this size from [`crate::synth`].
    Synthetic {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// A given image; the label names it in the report (e.g. its path).
    Image {
        /// The frame.
        image: RgbImage,
        /// Where it came from.
        label: String,
    },
}

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Batch sizes of the network measurement (may be empty).
    pub batches: Vec<usize>,
    /// Frame of the pipeline measurement; `None` skips it.
    pub frame: Option<FrameSource>,
    /// Timed runs per measurement (≥ 1).
    pub runs: usize,
    /// Untimed runs before them.
    pub warmup: usize,
    /// Seed of the random tiles and of the synthetic frame.
    pub seed: u64,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            batches: vec![1, 16, 32],
            frame: Some(FrameSource::Synthetic {
                width: 3072,
                height: 2048,
            }),
            runs: 5,
            warmup: 1,
            seed: 1,
        }
    }
}

/// Median and range of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Spread {
    /// Median, minimum and maximum of `values`; `None` when there are none or one is NaN.
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            0.5 * (v[n / 2 - 1] + v[n / 2])
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn of_nonempty(values: &[f64]) -> Result<Spread> {
        Spread::of(values).ok_or_else(|| Error::Other("bench: no valid timing sample".into()))
    }
}

/// Network timing at one batch size.
#[derive(Debug, Clone, Serialize)]
pub struct BatchTiming {
    /// Tiles per network run.
    pub batch: usize,
    /// Milliseconds per run of the whole batch.
    pub ms_per_batch: Spread,
    /// Milliseconds per patch (per run, divided by the batch size).
    pub ms_per_patch: Spread,
    /// Patches per second (per run).
    pub patches_per_s: Spread,
}

/// Stage times of the frame runs, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct FrameStages {
    /// Tile cutting and normalisation.
    pub preprocess: Spread,
    /// Teacher and student runs.
    pub network: Spread,
    /// Per-tile distance maps.
    pub anomaly_map: Spread,
    /// Merging tile maps into the frame map.
    pub stitch: Spread,
    /// Gaussian smoothing and the maximum.
    pub smooth: Spread,
    /// Whole inspection of the in-memory frame.
    pub total: Spread,
    /// Total minus the five stages (bookkeeping, allocation).
    pub other: Spread,
}

/// Frame pipeline timing.
#[derive(Debug, Clone, Serialize)]
pub struct FrameTiming {
    /// Where the frame came from (`synthetic woven fabric` or the given label).
    pub source: String,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Network inputs per frame.
    pub tiles: usize,
    /// Tiles per network run inside the frame.
    pub batch: usize,
    /// Stage times, milliseconds.
    pub stages_ms: FrameStages,
    /// Median per-patch network time at the frame's batch size, from the network table
    /// (`None` when that batch size was not measured).
    pub network_ms_per_patch: Option<f64>,
    /// Median frame total / (`tiles` × `network_ms_per_patch`); the goal is ≤ 1.05.
    pub total_over_network: Option<f64>,
    /// Median frame total / median of the frame's own network stage.
    pub total_over_own_network: f64,
    /// Frames per second at the median total.
    pub frames_per_s: f64,
    /// Frame score of the last run (for a sanity check, not a quality figure).
    pub score: f32,
    /// Peak resident size over the frame runs alone (`VmHWM` after a reset), bytes;
    /// `None` when the peak could not be reset (then see [`Memory::vm_hwm_bytes`]).
    pub peak_rss_bytes: Option<u64>,
    /// Largest resident size sampled during the frame runs, bytes.
    pub sampled_rss_max_bytes: Option<u64>,
}

/// Process memory figures.
#[derive(Debug, Clone, Serialize)]
pub struct Memory {
    /// Peak resident size of the whole process before the frame runs (`VmHWM`), bytes.
    pub vm_hwm_before_frame_bytes: Option<u64>,
    /// Peak resident size of the process at the end (`VmHWM`; since the reset when the
    /// frame runs reset it), bytes.
    pub vm_hwm_bytes: Option<u64>,
    /// Resident size at the end (`VmRSS`), bytes.
    pub vm_rss_bytes: Option<u64>,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu: Option<String>,
    /// Logical CPUs available to the process.
    pub logical_cpus: usize,
    /// Threads of the rayon pool (pre- and post-processing).
    pub rayon_threads: usize,
    /// 1, 5 and 15 minute load averages before the measurements.
    pub load_average_start: Option<[f64; 3]>,
    /// The same after them.
    pub load_average_end: Option<[f64; 3]>,
}

/// Everything one bench invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Model folder.
    pub model: String,
    /// Teacher backbone name.
    pub backbone: String,
    /// Variant name.
    pub variant: String,
    /// Teacher weights id (`random` for a seeded random teacher).
    pub teacher_weights: String,
    /// Network input side.
    pub input_size: u32,
    /// Provider asked for.
    pub provider_requested: Provider,
    /// Provider that ran.
    pub provider: Provider,
    /// Intra-op threads asked for (`None`: ONNX Runtime's default).
    pub intra_threads: Option<usize>,
    /// Whether the intra-op workers spin while waiting.
    #[serde(default)]
    pub spin: bool,
    /// Timed runs per measurement.
    pub runs: usize,
    /// Untimed runs before them.
    pub warmup: usize,
    /// How inputs were made and how the timer relates to the device.
    pub notes: Vec<String>,
    /// Network timing per batch size.
    pub network: Vec<BatchTiming>,
    /// Frame timing.
    pub frame: Option<FrameTiming>,
    /// Memory.
    pub memory: Memory,
    /// Machine.
    pub host: Host,
    /// When the run started (UTC, RFC 3339).
    pub started_at: String,
}

/// A small seeded generator (splitmix64) for the random tiles.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-2, 2): the range of normalised pixels.
    fn next_input(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
    }
}

/// `len` seeded random values in the range of normalised pixels.
pub fn random_input(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix(seed);
    (0..len).map(|_| rng.next_input()).collect()
}

/// A value of `/proc/self/status` given in kB (e.g. `VmHWM`, `VmRSS`), in bytes; `None`
/// off Linux or when the key is absent.
pub fn proc_status_bytes(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kb: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    })
}

/// Resets the process's peak resident size (`VmHWM`) to its current size; false where the
/// kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The 1, 5 and 15 minute load averages (Linux).
pub fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

fn cpu_model() -> Option<String> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|r| r.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Times teacher + student on one batch of `batch` random tiles: `warmup` untimed runs,
/// then `runs` timed ones; returns the milliseconds of each timed run.
///
/// The features are read in host memory inside the timed region.
pub fn time_network(
    inspector: &Inspector,
    batch: usize,
    runs: usize,
    warmup: usize,
    seed: u64,
) -> Result<Vec<f64>> {
    if batch == 0 {
        return Err(Error::Other("bench: batch size must be at least 1".into()));
    }
    let s = inspector.meta().input_size as usize;
    let input = random_input(batch * 3 * s * s, seed ^ batch as u64);
    let engine = inspector.engine();
    let mut samples = Vec::with_capacity(runs);
    for i in 0..warmup + runs {
        let t0 = Instant::now();
        let touched = engine.run(&input, batch, |t, st| {
            // One read per feature proves the values are in host memory.
            Ok(t.iter()
                .chain(st)
                .map(|f| f.data.last().copied().unwrap_or(0.0))
                .sum::<f32>())
        })?;
        let dt = t0.elapsed();
        std::hint::black_box(touched);
        if i >= warmup {
            samples.push(ms(dt));
        }
    }
    Ok(samples)
}

/// Samples `VmRSS` every few milliseconds until `stop` is set; keeps the maximum.
fn sample_rss(stop: &AtomicBool, max: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        if let Some(b) = proc_status_bytes("VmRSS") {
            max.fetch_max(b, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn frame_image(source: &FrameSource, seed: u64) -> (RgbImage, String) {
    match source {
        FrameSource::Synthetic { width, height } => (
            render_frame(
                &FabricSpec::preset(Weave::Plain),
                *width,
                *height,
                &[],
                seed,
            )
            .0,
            "synthetic woven fabric".to_string(),
        ),
        FrameSource::Image { image, label } => (image.clone(), label.clone()),
    }
}

/// What the frame runs produced.
struct FrameRuns {
    times: Vec<StageTimes>,
    score: f32,
    tiles: usize,
    peak: Option<u64>,
    sampled: Option<u64>,
}

/// Runs the frame `warmup + runs` times through the inspector; returns the stage times
/// of the timed runs, the last score, the tile count, and the memory peaks.
fn time_frame(
    inspector: &Inspector,
    img: &RgbImage,
    runs: usize,
    warmup: usize,
) -> Result<FrameRuns> {
    for _ in 0..warmup {
        inspector.inspect_image(img)?;
    }
    let reset = reset_peak_rss();
    let stop = AtomicBool::new(false);
    let rss_max = AtomicU64::new(0);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| sample_rss(&stop, &rss_max));
        let mut times = Vec::with_capacity(runs);
        let mut last = None;
        for _ in 0..runs {
            match inspector.inspect_image(img) {
                Ok(r) => {
                    times.push(r.timing);
                    last = Some((r.score, r.tiles));
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        Ok((times, last))
    });
    let (times, last) = result?;
    let (score, tiles) = last.ok_or_else(|| Error::Other("bench: no frame run".into()))?;
    let peak = if reset {
        proc_status_bytes("VmHWM")
    } else {
        None
    };
    let sampled = Some(rss_max.load(Ordering::Relaxed)).filter(|&b| b > 0);
    Ok(FrameRuns {
        times,
        score,
        tiles,
        peak,
        sampled,
    })
}

/// Measures the network per batch size and the frame pipeline as `options` say.
pub fn run_bench(inspector: &Inspector, options: &BenchOptions) -> Result<BenchReport> {
    if options.runs == 0 {
        return Err(Error::Other(
            "bench: at least one timed run is needed".into(),
        ));
    }
    let started_at = crate::meta::utc_now_rfc3339();
    let load_start = load_average();
    let meta = inspector.meta();
    let provider = inspector.provider();
    let mut notes = vec![format!(
        "network: seeded random tiles in the normalised pixel range (seed {}); the timing \
         of a dense FP32 network does not depend on the pixel values",
        options.seed
    )];
    if provider != Provider::Cpu {
        notes.push(format!(
            "timer synchronised with the {provider} device: every timed run ends with the \
             features copied back to host memory"
        ));
    } else {
        notes.push("timer: wall clock around each run, features read in host memory".into());
    }

    let mut network = Vec::new();
    for &b in &options.batches {
        let _span = tracing::info_span!("bench network", batch = b).entered();
        let samples = time_network(inspector, b, options.runs, options.warmup, options.seed)?;
        let per_patch: Vec<f64> = samples.iter().map(|t| t / b as f64).collect();
        let pps: Vec<f64> = per_patch.iter().map(|t| 1e3 / t).collect();
        let timing = BatchTiming {
            batch: b,
            ms_per_batch: Spread::of_nonempty(&samples)?,
            ms_per_patch: Spread::of_nonempty(&per_patch)?,
            patches_per_s: Spread::of_nonempty(&pps)?,
        };
        tracing::info!(
            batch = b,
            ms_per_patch = timing.ms_per_patch.median,
            "network timed"
        );
        network.push(timing);
    }

    let vm_hwm_before = proc_status_bytes("VmHWM");
    let frame = match &options.frame {
        None => None,
        Some(source) => {
            let (img, label) = frame_image(source, options.seed);
            if let FrameSource::Synthetic { .. } = source {
                notes.push(format!(
                    "frame: synthetic woven fabric from the built-in generator (seed {})",
                    options.seed
                ));
            }
            let _span = tracing::info_span!("bench frame").entered();
            let FrameRuns {
                times,
                score,
                tiles,
                peak,
                sampled,
            } = time_frame(inspector, &img, options.runs, options.warmup)?;
            let col = |f: fn(&StageTimes) -> Duration| -> Result<Spread> {
                Spread::of_nonempty(&times.iter().map(|t| ms(f(t))).collect::<Vec<_>>())
            };
            let other: Vec<f64> = times
                .iter()
                .map(|t| {
                    ms(t.total)
                        - ms(t.preprocess)
                        - ms(t.network)
                        - ms(t.anomaly_map)
                        - ms(t.stitch)
                        - ms(t.smooth)
                })
                .collect();
            let stages = FrameStages {
                preprocess: col(|t| t.preprocess)?,
                network: col(|t| t.network)?,
                anomaly_map: col(|t| t.anomaly_map)?,
                stitch: col(|t| t.stitch)?,
                smooth: col(|t| t.smooth)?,
                total: col(|t| t.total)?,
                other: Spread::of_nonempty(&other)?,
            };
            let batch = inspector.options().batch.min(tiles).max(1);
            let per_patch = network
                .iter()
                .find(|n| n.batch == batch)
                .map(|n| n.ms_per_patch.median);
            let total = stages.total.median;
            Some(FrameTiming {
                source: label,
                width: img.width(),
                height: img.height(),
                tiles,
                batch,
                network_ms_per_patch: per_patch,
                total_over_network: per_patch.map(|p| total / (tiles as f64 * p)),
                total_over_own_network: total / stages.network.median.max(f64::MIN_POSITIVE),
                frames_per_s: 1e3 / total.max(f64::MIN_POSITIVE),
                stages_ms: stages,
                score,
                peak_rss_bytes: peak,
                sampled_rss_max_bytes: sampled,
            })
        }
    };

    Ok(BenchReport {
        model: inspector.model_dir().display().to_string(),
        backbone: meta.backbone.name().to_string(),
        variant: format!("{:?}", meta.variant).to_lowercase(),
        teacher_weights: meta.teacher_weights.clone(),
        input_size: meta.input_size,
        provider_requested: inspector.options().engine.device,
        provider,
        intra_threads: inspector.options().engine.threads,
        spin: inspector.options().engine.spin,
        runs: options.runs,
        warmup: options.warmup,
        notes,
        network,
        frame,
        memory: Memory {
            vm_hwm_before_frame_bytes: vm_hwm_before,
            vm_hwm_bytes: proc_status_bytes("VmHWM"),
            vm_rss_bytes: proc_status_bytes("VmRSS"),
        },
        host: Host {
            cpu: cpu_model(),
            logical_cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            rayon_threads: rayon::current_num_threads(),
            load_average_start: load_start,
            load_average_end: load_average(),
        },
        started_at,
    })
}

fn gib(b: Option<u64>) -> String {
    match b {
        Some(b) => format!("{:.3} GiB", b as f64 / (1u64 << 30) as f64),
        None => "n/a".to_string(),
    }
}

fn spread_cell(s: &Spread, decimals: usize) -> String {
    format!(
        "{:.d$} [{:.d$}–{:.d$}]",
        s.median,
        s.min,
        s.max,
        d = decimals
    )
}

fn load_cell(l: Option<[f64; 3]>) -> String {
    l.map(|l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]))
        .unwrap_or_else(|| "n/a".into())
}

/// The report as the human-readable table `fabric-inspect bench` prints.
pub fn render_table(r: &BenchReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let threads = r
        .intra_threads
        .map(|n| n.to_string())
        .unwrap_or_else(|| "default".into());
    let _ = writeln!(
        o,
        "model {} ({}, {}, teacher weights {}), input {}², provider {} (asked {}), \
         intra-op threads {}{}, rayon threads {}",
        r.model,
        r.backbone,
        r.variant,
        r.teacher_weights,
        r.input_size,
        r.provider,
        r.provider_requested,
        threads,
        if r.spin { " (spinning)" } else { "" },
        r.host.rayon_threads
    );
    let _ = writeln!(
        o,
        "host {} ({} logical CPUs), load average {} at start, {} at end",
        r.host.cpu.as_deref().unwrap_or("unknown CPU"),
        r.host.logical_cpus,
        load_cell(r.host.load_average_start),
        load_cell(r.host.load_average_end)
    );
    let _ = writeln!(
        o,
        "{} timed runs after {} warm-up; median [min–max]",
        r.runs, r.warmup
    );
    for n in &r.notes {
        let _ = writeln!(o, "note: {n}");
    }
    if !r.network.is_empty() {
        let _ = writeln!(o, "\nnetwork (teacher + student)");
        let _ = writeln!(
            o,
            "{:>6}  {:<26}  {:<26}  {:<28}",
            "batch", "ms / patch", "patches / s", "ms / batch"
        );
        for b in &r.network {
            let _ = writeln!(
                o,
                "{:>6}  {:<26}  {:<26}  {:<28}",
                b.batch,
                spread_cell(&b.ms_per_patch, 2),
                spread_cell(&b.patches_per_s, 2),
                spread_cell(&b.ms_per_batch, 1)
            );
        }
    }
    if let Some(f) = &r.frame {
        let s = &f.stages_ms;
        let _ = writeln!(
            o,
            "\nframe {}×{} ({}), {} tile{} in batches of {}",
            f.width,
            f.height,
            f.source,
            f.tiles,
            if f.tiles == 1 { "" } else { "s" },
            f.batch
        );
        let _ = writeln!(o, "{:<15}  {:<30}  {:>6}", "stage", "ms", "share");
        let rows = [
            ("pre-processing", &s.preprocess),
            ("network", &s.network),
            ("anomaly map", &s.anomaly_map),
            ("stitching", &s.stitch),
            ("smoothing", &s.smooth),
            ("other", &s.other),
            ("total", &s.total),
        ];
        for (name, sp) in rows {
            let share = 100.0 * sp.median / s.total.median.max(f64::MIN_POSITIVE);
            let _ = writeln!(
                o,
                "{:<15}  {:<30}  {:>5.1}%",
                name,
                spread_cell(sp, 1),
                share
            );
        }
        let _ = writeln!(o, "frames / s      {:.3}", f.frames_per_s);
        match (f.network_ms_per_patch, f.total_over_network) {
            (Some(p), Some(ratio)) => {
                let _ = writeln!(
                    o,
                    "total / ({} tiles × {:.2} ms network per patch at batch {}) = {:.3} \
                     (goal ≤ 1.05)",
                    f.tiles, p, f.batch, ratio
                );
            }
            _ => {
                let _ = writeln!(
                    o,
                    "total / (tiles × network per patch): batch {} not in the network table",
                    f.batch
                );
            }
        }
        let _ = writeln!(
            o,
            "total / the frame's own network stage = {:.3}",
            f.total_over_own_network
        );
        let _ = writeln!(
            o,
            "memory during the frame runs: peak RSS {} (VmHWM after reset), sampled RSS max {}",
            gib(f.peak_rss_bytes),
            gib(f.sampled_rss_max_bytes)
        );
    }
    let _ = writeln!(
        o,
        "memory of the process: VmHWM {} before the frame runs, {} at end; VmRSS {} at end",
        gib(r.memory.vm_hwm_before_frame_bytes),
        gib(r.memory.vm_hwm_bytes),
        gib(r.memory.vm_rss_bytes)
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_median_odd_even() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[1.0, f64::NAN]).is_none());
    }

    #[test]
    fn random_input_is_seeded_and_in_range() {
        let a = random_input(1000, 7);
        assert_eq!(a, random_input(1000, 7));
        assert_ne!(a, random_input(1000, 8));
        assert!(a.iter().all(|v| (-2.0..2.0).contains(v)));
        let mean: f32 = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.2, "mean {mean}");
    }

    #[test]
    fn proc_status_parses_on_linux() {
        if !std::path::Path::new("/proc/self/status").exists() {
            eprintln!("skipping proc_status_parses_on_linux: no /proc");
            return;
        }
        let rss = proc_status_bytes("VmRSS").expect("VmRSS");
        let hwm = proc_status_bytes("VmHWM").expect("VmHWM");
        assert!(rss > 0 && hwm >= rss / 2);
        assert!(proc_status_bytes("NoSuchKey").is_none());
    }
}
