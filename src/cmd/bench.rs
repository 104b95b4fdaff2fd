//! `fabric-inspect bench`: the network's time per patch at several batch sizes and a
//! whole frame's time per stage, with medians and spreads, as a table and as JSON.

use super::{Ctx, ModelArgs};
use anyhow::Context;
use fabric_inspect::bench::{render_table, run_bench, BenchOptions, FrameSource};
use fabric_inspect::fsutil::atomic_write;
use fabric_inspect::imageio::load_rgb;
use fabric_inspect::inspector::Inspector;
use fabric_inspect::meta::{InputMode, ModelMeta};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `fabric-inspect bench`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Batch sizes of the network table, comma-separated (empty or `none`: no network table).
    #[arg(long, default_value = "1,16,32", value_parser = parse_batches)]
    batches: Batches,
    /// Size of the synthetic frame timed through the whole pipeline, WIDTHxHEIGHT
    /// (`none` skips the frame).
    #[arg(long, default_value = "3072x2048", conflicts_with = "image")]
    frame: String,
    /// Time this image instead of a synthetic frame.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Timed runs per measurement.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Untimed runs before them.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Seed of the random tiles and the synthetic frame.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Batch sizes of `--batches`.
#[derive(Debug, Clone)]
struct Batches(Vec<usize>);

fn parse_batches(s: &str) -> Result<Batches, String> {
    let s = s.trim();
    if s.is_empty() || s.eq_ignore_ascii_case("none") {
        return Ok(Batches(Vec::new()));
    }
    s.split(',')
        .map(|b| match b.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!(
                "`{b}` is not a batch size (positive integers, comma-separated)"
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Batches)
}

fn parse_frame(s: &str) -> anyhow::Result<Option<(u32, u32)>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (w, h) = s
        .split_once(['x', 'X', '×'])
        .with_context(|| format!("--frame `{s}`: expected WIDTHxHEIGHT, e.g. 3072x2048"))?;
    let w: u32 = w
        .trim()
        .parse()
        .with_context(|| format!("--frame `{s}`: bad width"))?;
    let h: u32 = h
        .trim()
        .parse()
        .with_context(|| format!("--frame `{s}`: bad height"))?;
    anyhow::ensure!(w >= 1 && h >= 1, "--frame `{s}`: sides must be positive");
    Ok(Some((w, h)))
}

/// Runs the subcommand.
pub fn run(args: Args, _ctx: &Ctx) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.runs >= 1, "--runs must be at least 1");
    let frame = match &args.image {
        Some(path) => Some(FrameSource::Image {
            image: load_rgb(path, args.model.max_pixels)
                .with_context(|| format!("cannot read frame {}", path.display()))?,
            label: path.display().to_string(),
        }),
        None => match parse_frame(&args.frame)? {
            Some((width, height)) => {
                let pixels = u64::from(width) * u64::from(height);
                anyhow::ensure!(
                    pixels <= args.model.max_pixels,
                    "--frame {width}x{height}: {pixels} pixels exceeds the limit of {} pixels \
                     (raise it with --max-pixels)",
                    args.model.max_pixels
                );
                Some(FrameSource::Synthetic { width, height })
            }
            None => None,
        },
    };
    let mut options = args.model.options(None)?;
    let meta = ModelMeta::load(&args.model.model)?;
    let frame_size = match &frame {
        Some(FrameSource::Image { image, .. }) => Some(image.dimensions()),
        Some(FrameSource::Synthetic { width, height }) => Some((*width, *height)),
        None => None,
    };
    let mut position_note = None;
    if let (Some(p), Some((w, h)), InputMode::Tile) = (&meta.position, frame_size, meta.input_mode)
    {
        if (w, h) != (p.width, p.height) {
            // Timing only: the per-pixel z-score costs one pass over the map.
            options.ignore_position = true;
            position_note = Some(format!(
                "position statistics: the model's are for {}×{} frames, so this {w}×{h} frame \
                 is timed without them",
                p.width, p.height
            ));
        }
    }
    let inspector = Inspector::with_meta(&args.model.model, meta, options)
        .with_context(|| format!("cannot load model {}", args.model.model.display()))?;
    let bench = BenchOptions {
        batches: args.batches.0.clone(),
        frame,
        runs: args.runs,
        warmup: args.warmup,
        seed: args.seed,
    };
    let mut report = run_bench(&inspector, &bench)?;
    report.notes.extend(position_note);
    print!("{}", render_table(&report));
    if let Some(path) = &args.json {
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        atomic_write(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_frame;

    #[test]
    fn frame_sizes_parse() {
        assert_eq!(parse_frame("3072x2048").unwrap(), Some((3072, 2048)));
        assert_eq!(parse_frame("300×200").unwrap(), Some((300, 200)));
        assert_eq!(parse_frame("none").unwrap(), None);
        assert!(parse_frame("3072").is_err());
        assert!(parse_frame("0x5").is_err());
    }
}
