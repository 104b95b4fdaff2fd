//! `fabric-inspect calibrate`: re-derive a model's threshold from new defect-free images.
//!
//! A mill re-calibrates when the light or the yarn lot changes, without retraining: the
//! images are scored exactly as `inspect` scores them, their statistics give the default
//! threshold rule (`max(mean + 4·std, max)`), and `model.yaml` is rewritten atomically
//! with the previous threshold kept in `threshold_history`.

use super::{collect_images, Ctx, ModelArgs};
use anyhow::Context;
use fabric_inspect::inspector::Inspector;
use fabric_inspect::meta::ModelMeta;
use fabric_inspect::threshold::{default_threshold, ScoreStats};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `fabric-inspect calibrate`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Defect-free image files or folders.
    #[arg(required = true)]
    normals: Vec<PathBuf>,
    /// Print the new threshold without rewriting model.yaml.
    #[arg(long)]
    dry_run: bool,
}

/// Runs the subcommand; exit code 1 when an image could not be scored.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let options = args.model.options(None)?;
    let dir = &args.model.model;
    let meta = ModelMeta::load(dir)?;
    let inspector = Inspector::with_meta(dir, meta.clone(), options)
        .with_context(|| format!("cannot load model {}", dir.display()))?;
    let (files, bad) = collect_images(&args.normals);
    let mut failed = bad.len();
    for (path, why) in &bad {
        eprintln!("error: {}: {why}", path.display());
    }

    let pb = ctx.progress(files.len() as u64, "calibrate");
    let mut scores = Vec::with_capacity(files.len());
    for path in &files {
        match inspector.inspect_path(path) {
            Ok(r) => scores.push(r.score),
            Err(e) => {
                pb.suspend(|| eprintln!("error: {e}"));
                failed += 1;
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    anyhow::ensure!(
        !scores.is_empty(),
        "no normal image could be scored; model.yaml left unchanged"
    );

    let stats = ScoreStats::from_scores(&scores)?;
    let threshold = default_threshold(&stats);
    let old = meta.threshold;
    let summary = serde_json::json!({
        "model": dir.display().to_string(),
        "images": scores.len(),
        "failed": failed,
        "old_threshold": old,
        "threshold": threshold,
        "stats": &stats,
        "written": !args.dry_run,
    });
    if !args.dry_run {
        // Re-read so that nothing written to model.yaml meanwhile is lost.
        let mut meta = ModelMeta::load(dir)?;
        meta.replace_threshold(threshold, stats, "calibrate");
        meta.save(dir)?;
        tracing::info!(
            old,
            threshold,
            images = scores.len(),
            "model.yaml recalibrated"
        );
    }
    println!("{summary}");
    Ok(if failed > 0 {
        eprintln!("error: {failed} input(s) could not be scored");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
