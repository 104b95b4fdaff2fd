//! `fabric-inspect eval`: score every test image of an MVTec-layout category and report
//! the paper's metrics as a table (stdout) and, optionally, JSON.

use anyhow::Context;
use fabric_inspect::dataset::Category;
use fabric_inspect::engine::{EngineOptions, Provider};
use fabric_inspect::eval::{evaluate, EvalOptions, ModelInfo};
use fabric_inspect::inspector::{InspectOptions, Inspector, DEFAULT_BATCH};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

/// Images decoded together before they are inspected one by one.
const DECODE_BATCH: usize = 8;

/// Arguments of `fabric-inspect eval`.
#[derive(clap::Args)]
pub struct Args {
    /// Exported model folder (model.yaml, teacher.onnx, student.onnx).
    #[arg(long)]
    model: PathBuf,
    /// Category folder in MVTec AD layout: test/<defect> (test/good for normal images) and,
    /// for pixel metrics, ground_truth/<defect>; train/ is not read.
    #[arg(long)]
    data: PathBuf,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Tiles per network run.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    batch: usize,
    /// Execution provider: cpu, cuda or tensorrt (falls back when unavailable).
    #[arg(long, default_value = "cpu")]
    device: Provider,
    /// Intra-op threads of ONNX Runtime (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Let ONNX Runtime's worker threads spin while they wait.
    #[arg(long)]
    spin: bool,
    /// Use this threshold instead of the model's for the false-alarm and miss counts.
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f32>,
    /// Bins of the pixel-metric histograms (even; more bins, finer thresholds).
    #[arg(long, default_value_t = 1 << 16)]
    bins: usize,
}

/// Runs the subcommand; the exit code is 1 when an image could not be scored.
pub fn run(args: Args, ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.bins >= 4 && args.bins.is_multiple_of(2),
        "--bins must be an even number of at least 4, got {}",
        args.bins
    );
    let category = Category::open_test(&args.data)?;
    let options = InspectOptions {
        engine: EngineOptions {
            device: args.device,
            threads: args.threads,
            spin: args.spin,
        },
        batch: args.batch,
        threshold: args.threshold,
        ..InspectOptions::default()
    };
    let mut inspector = Inspector::load(&args.model, options)
        .with_context(|| format!("loading model {}", args.model.display()))?;
    let source = match args.threshold {
        Some(_) => "--threshold".to_string(),
        None => format!("model.yaml ({})", inspector.meta().threshold_source),
    };
    let opts = EvalOptions {
        threshold: inspector.threshold(),
        threshold_source: source,
        batch: DECODE_BATCH,
        bins: args.bins,
        max_pixels: inspector.options().max_pixels,
        ..EvalOptions::default()
    };
    let info = ModelInfo::of(&inspector);
    tracing::info!(
        data = %args.data.display(),
        images = category.test.len(),
        provider = %info.provider,
        "evaluating"
    );

    let bar = if ctx.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(category.test.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} eval [{bar:30}] {pos}/{len} images, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let start = Instant::now();
    let mut report = evaluate(&category, &mut inspector, &opts, &mut |_| bar.inc(1))?;
    bar.finish_and_clear();
    report.seconds = Some(start.elapsed().as_secs_f64());
    report.model = Some(info);

    print!("{}", report.to_table());
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)?;
        fabric_inspect::fsutil::atomic_write(path, &json)?;
        tracing::info!(path = %path.display(), "wrote JSON report");
    }
    if report.complete() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {} of {} test images could not be scored (listed above)",
            report.failed.len(),
            category.test.len()
        );
        Ok(ExitCode::from(1))
    }
}
