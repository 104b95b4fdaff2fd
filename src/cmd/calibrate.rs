//! `fabric-inspect calibrate`: re-derive a model's threshold from new defect-free images.
//!
//! A mill re-calibrates when the light or the yarn lot changes, without retraining: the
//! images are scored exactly as `inspect` scores them, their statistics give the default
//! threshold rule (`max(mean + 4·std, max + 0.01 %)`), and `model.yaml` is rewritten atomically
//! with the previous threshold kept in `threshold_history`.
//!
//! With `--position` the model's position statistics are learned afresh as well (for a new
//! camera position, or a fabric a domain-generalised model never saw): every second image
//! (in path order) goes into the statistics, the others are z-scored against them to give
//! the threshold. The new statistics are written to a new file that `model.yaml` then
//! names, so a failure at any point leaves the model as it was.

use super::{collect_images, Ctx, ModelArgs};
use anyhow::Context;
use fabric_inspect::inspector::Inspector;
use fabric_inspect::meta::{InputMode, ModelMeta, PositionMeta};
use fabric_inspect::position::{PositionAccumulator, PositionStats};
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
    /// Also learn the position statistics (per-pixel z-scores) from these images: needs at
    /// least 4 images of one size; half go into the statistics, half give the threshold.
    #[arg(long)]
    position: bool,
}

/// Runs the subcommand; exit code 1 when an image could not be scored.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let mut options = args.model.options(None)?;
    // Learning new statistics needs the raw maps.
    options.ignore_position = args.position;
    let dir = &args.model.model;
    let meta = ModelMeta::load(dir)?;
    let inspector = Inspector::with_meta(dir, meta.clone(), options)
        .with_context(|| format!("cannot load model {}", dir.display()))?;
    let (files, bad) = collect_images(&args.normals);
    let mut failed = bad.len();
    for (path, why) in &bad {
        eprintln!("error: {}: {why}", path.display());
    }
    let mut files = files;
    if args.position && meta.input_mode == InputMode::Tile {
        // The statistics hold for one frame size: keep the most common one (header only).
        let mut sizes: Vec<((u32, u32), usize)> = Vec::new();
        let mut dims = Vec::with_capacity(files.len());
        for path in &files {
            match image::image_dimensions(path) {
                Ok(d) => {
                    match sizes.iter_mut().find(|(s, _)| *s == d) {
                        Some((_, n)) => *n += 1,
                        None => sizes.push((d, 1)),
                    }
                    dims.push(Some(d));
                }
                Err(e) => {
                    eprintln!("error: {}: cannot read the image size: {e}", path.display());
                    dims.push(None);
                }
            }
        }
        let common = sizes.iter().max_by_key(|(_, n)| *n).map(|(s, _)| *s);
        let mut kept = Vec::with_capacity(files.len());
        for (path, d) in files.into_iter().zip(dims) {
            match (d, common) {
                (Some(d), Some(c)) if d == c => kept.push(path),
                (Some((w, h)), Some((cw, ch))) => {
                    eprintln!(
                        "error: {}: {w}×{h}, but most calibration frames are {cw}×{ch}; \
                         position statistics hold for one size",
                        path.display()
                    );
                    failed += 1;
                }
                _ => failed += 1,
            }
        }
        files = kept;
    }
    if args.position {
        anyhow::ensure!(
            files.len() >= 4,
            "--position needs at least 4 defect-free images of one size (half for the \
             statistics, half for the threshold), got {}; model.yaml left unchanged",
            files.len()
        );
    }
    // With --position: even-numbered images build the statistics (first pass), the
    // odd-numbered ones are then z-scored against them (second pass).
    let (stat_files, score_files): (Vec<&PathBuf>, Vec<&PathBuf>) = if args.position {
        let (a, b): (Vec<_>, Vec<_>) = files.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        (
            a.into_iter().map(|(_, p)| p).collect(),
            b.into_iter().map(|(_, p)| p).collect(),
        )
    } else {
        (Vec::new(), files.iter().collect())
    };

    let pb = ctx.progress(files.len() as u64, "calibrate");
    let mut position: Option<(PositionStats, usize)> = None;
    if args.position {
        let mut acc: Option<PositionAccumulator> = None;
        for path in &stat_files {
            let added = inspector.inspect_path(path).and_then(|r| {
                let m = &r.map;
                acc.get_or_insert_with(|| PositionAccumulator::new(m.width, m.height))
                    .add(&m.data, m.width, m.height)
            });
            if let Err(e) = added {
                pb.suspend(|| eprintln!("error: {}: {e}", path.display()));
                failed += 1;
            }
            pb.inc(1);
        }
        let acc = acc.context(
            "no image for the position statistics could be scored; model.yaml left unchanged",
        )?;
        let stats = acc
            .finish(meta.sigma)
            .context("cannot learn position statistics; model.yaml left unchanged")?;
        position = Some((stats, acc.count()));
    }
    let mut scores = Vec::with_capacity(score_files.len());
    for path in &score_files {
        let scored = inspector
            .inspect_path(path)
            .and_then(|mut r| match &position {
                Some((p, _)) => {
                    p.check_size(r.map.width, r.map.height)?;
                    p.normalise(&mut r.map.data)?;
                    Ok(r.map.peak().0)
                }
                None => Ok(r.score),
            });
        match scored {
            Ok(v) => scores.push(v),
            Err(e) => {
                pb.suspend(|| eprintln!("error: {}: {e}", path.display()));
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
    anyhow::ensure!(
        !args.position || scores.len() >= 2,
        "only {} image(s) left to set the threshold against the new position statistics, \
         at least 2 are needed; model.yaml left unchanged",
        scores.len()
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
        "position_images": position.as_ref().map(|(_, n)| *n),
        "written": !args.dry_run,
    });
    if !args.dry_run {
        // Re-read so that nothing written to model.yaml meanwhile is lost.
        let mut meta = ModelMeta::load(dir)?;
        let old_file = meta.position.as_ref().map(|p| p.file.clone());
        if let Some((p, images)) = &position {
            // A new file, named by model.yaml only once it is complete.
            let file = format!(
                "position-{}.bin",
                fabric_inspect::meta::utc_now_rfc3339().replace(':', "")
            );
            p.write(&dir.join(&file))?;
            meta.position = Some(PositionMeta {
                file,
                width: p.width as u32,
                height: p.height as u32,
                images: *images,
            });
        }
        meta.replace_threshold(threshold, stats, "calibrate");
        meta.save(dir)?;
        if let (Some(old), Some(new)) = (old_file, &meta.position) {
            if old != new.file && dir.join(&old).exists() {
                if let Err(e) = std::fs::remove_file(dir.join(&old)) {
                    tracing::warn!(file = %dir.join(&old).display(), error = %e, "old position statistics not removed");
                }
            }
        }
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
