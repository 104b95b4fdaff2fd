//! `fabric-inspect inspect`: score images or folders, one JSON line per image.

use super::{collect_images, Ctx, ModelArgs};
use anyhow::Context;
use fabric_inspect::imageio::load_rgb;
use fabric_inspect::inspector::Inspector;
use fabric_inspect::report::{error_json_line, heatmap_overlay, write_png, ImageReport};
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Arguments of `fabric-inspect inspect`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Image files or folders (searched recursively for png, jpg, jpeg, bmp, tif, tiff).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Folder for one heatmap overlay PNG per image (created if missing).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Decision threshold for this run (default: the model's).
    #[arg(long, allow_negative_numbers = true)]
    threshold: Option<f32>,
    /// Write the JSON lines to this file instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Runs the subcommand; exit code 1 when an input could not be inspected.
pub fn run(args: Args, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let options = args.model.options(args.threshold)?;
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create output folder {}", out.display()))?;
    }
    let inspector = Inspector::load(&args.model.model, options)
        .with_context(|| format!("cannot load model {}", args.model.model.display()))?;
    let (files, bad) = collect_images(&args.inputs);

    let mut lines: Vec<String> = Vec::new();
    let mut failed = 0usize;
    let mut defects = 0usize;
    let stdout = std::io::stdout();
    let emit = |line: String, lines: &mut Vec<String>| {
        if args.json.is_some() {
            lines.push(line);
        } else {
            let mut out = stdout.lock();
            let _ = writeln!(out, "{line}");
        }
    };
    for (path, why) in &bad {
        eprintln!("error: {}: {why}", path.display());
        emit(error_json_line(path, why), &mut lines);
        failed += 1;
    }

    let pb = ctx.progress(files.len() as u64, "inspect");
    let mut used_names = HashSet::new();
    for path in &files {
        pb.set_message(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        let out = args
            .out
            .as_deref()
            .map(|o| o.join(heatmap_name(path, &args.inputs, &mut used_names)));
        match inspect_one(&inspector, path, out.as_deref()) {
            Ok(report) => {
                if report.verdict == fabric_inspect::inspector::Verdict::Defect {
                    defects += 1;
                }
                emit(report.to_json_line(), &mut lines);
            }
            Err(e) => {
                let msg = e.to_string();
                let named = msg.contains(&path.display().to_string());
                pb.suspend(|| {
                    if named {
                        eprintln!("error: {msg}");
                    } else {
                        eprintln!("error: {}: {msg}", path.display());
                    }
                });
                emit(error_json_line(path, &e.to_string()), &mut lines);
                failed += 1;
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();

    if let Some(json) = &args.json {
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        fabric_inspect::fsutil::atomic_write(json, text.as_bytes())?;
    }
    tracing::info!(
        images = files.len(),
        defects,
        failed,
        provider = %inspector.provider(),
        "inspection finished"
    );
    Ok(if failed > 0 {
        eprintln!("error: {failed} input(s) could not be inspected");
        ExitCode::from(1)
    } else if files.is_empty() {
        eprintln!("error: no image files found in the inputs");
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Inspects one image; writes its heatmap overlay to `heatmap` when given.
fn inspect_one(
    inspector: &Inspector,
    path: &Path,
    heatmap: Option<&Path>,
) -> fabric_inspect::Result<ImageReport> {
    let start = Instant::now();
    let img = load_rgb(path, inspector.options().max_pixels)?;
    let inspection = inspector.inspect_image(&img)?;
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let mut report = ImageReport::new(path, &inspection, ms);
    if let Some(target) = heatmap {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| fabric_inspect::Error::io("create folder", dir, e))?;
        }
        let overlay = heatmap_overlay(&img, &inspection.map, inspection.threshold);
        write_png(target, &overlay)?;
        report.heatmap = Some(target.display().to_string());
    }
    Ok(report)
}

/// Heatmap file of `path`, relative to the output folder: `<stem>_heatmap.png`, inside the
/// same subfolders as the image has below the input folder it was found in (so that
/// `test/hole/000.png` and `test/stain/000.png` keep their defect folder); `-2`, `-3`, …
/// are added when two inputs would still share a name.
fn heatmap_name(path: &Path, inputs: &[PathBuf], used: &mut HashSet<PathBuf>) -> PathBuf {
    let dir = inputs
        .iter()
        .filter(|i| i.is_dir())
        .find_map(|i| path.strip_prefix(i).ok())
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let mut name = dir.join(format!("{stem}_heatmap.png"));
    let mut k = 2;
    while !used.insert(name.clone()) {
        name = dir.join(format!("{stem}-{k}_heatmap.png"));
        k += 1;
    }
    name
}
