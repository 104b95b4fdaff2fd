//! `fabric-inspect synth`: write a synthetic woven-fabric category (MVTec AD layout) and,
//! optionally, a camera frame with defects.

use anyhow::{bail, Context};
use fabric_inspect::synth::{self, DatasetOptions, Defect, FabricSpec, Weave};
use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `fabric-inspect synth`.
#[derive(clap::Args)]
pub struct Args {
    /// Output category folder (train/good, test/good, test/<defect>, ground_truth/<defect>).
    #[arg(long)]
    out: PathBuf,
    /// Weave: plain, twill or striped.
    #[arg(long, default_value = "twill")]
    weave: Weave,
    /// Seed of the whole dataset (same seed, same files).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Number of defect-free training images.
    #[arg(long, default_value_t = 40)]
    train: usize,
    /// Number of defect-free test images.
    #[arg(long, default_value_t = 10)]
    test_good: usize,
    /// Number of defective test images per defect kind.
    #[arg(long, default_value_t = 10)]
    test_defect: usize,
    /// Image size, WIDTHxHEIGHT.
    #[arg(long, default_value = "512x512", value_parser = parse_size)]
    size: (u32, u32),
    /// Defect kinds, comma-separated (broken_yarn, hole, stain, knot).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "broken_yarn,hole,stain,knot"
    )]
    defects: Vec<Defect>,
    /// Draw the yarn colours and pitch from the seed instead of the weave's preset.
    #[arg(long)]
    random_colors: bool,
    /// Also write a camera frame with one defect of each kind: OUT/frame.png and
    /// OUT/frame_mask.png.
    #[arg(long)]
    frame: bool,
    /// Size of the camera frame, WIDTHxHEIGHT.
    #[arg(long, default_value = "3072x2048", value_parser = parse_size)]
    frame_size: (u32, u32),
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("size `{s}` is not WIDTHxHEIGHT"))?;
    let w: u32 = w
        .trim()
        .parse()
        .map_err(|_| format!("bad width in `{s}`"))?;
    let h: u32 = h
        .trim()
        .parse()
        .map_err(|_| format!("bad height in `{s}`"))?;
    if w == 0 || h == 0 || (w as u64) * (h as u64) > 200_000_000 {
        return Err(format!(
            "size `{s}` must be positive and at most 200 megapixels"
        ));
    }
    Ok((w, h))
}

/// Runs the subcommand; the exit code says whether every input succeeded.
pub fn run(args: Args, _ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    if args.defects.is_empty() && args.test_defect > 0 {
        bail!(
            "--defects is empty but --test-defect is {}",
            args.test_defect
        );
    }
    let spec = if args.random_colors {
        FabricSpec::random(args.weave, args.seed)
    } else {
        FabricSpec::preset(args.weave)
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create output folder {}", args.out.display()))?;

    let mut opts = DatasetOptions::new(spec.clone());
    (opts.width, opts.height) = args.size;
    opts.train = args.train;
    opts.test_good = args.test_good;
    opts.test_defect = args.test_defect;
    opts.defects = args.defects.clone();
    opts.seed = args.seed;
    let total = opts.train + opts.test_good + opts.test_defect * opts.defects.len();
    if total > 0 {
        let started = std::time::Instant::now();
        let summary = synth::write_dataset(&args.out, &opts)?;
        eprintln!(
            "synthetic {} fabric ({}x{}): {} train, {} good + {} defective test images in {} ({:.1} s)",
            args.weave,
            opts.width,
            opts.height,
            summary.train,
            summary.test_good,
            summary.test_defect,
            args.out.display(),
            started.elapsed().as_secs_f32()
        );
    }
    if args.frame {
        let (w, h) = args.frame_size;
        let kinds = if args.defects.is_empty() {
            Defect::ALL.to_vec()
        } else {
            args.defects.clone()
        };
        let frame = synth::write_frame(
            &args.out.join("frame.png"),
            &spec,
            w,
            h,
            &kinds,
            args.seed ^ 0xf4a3e,
        )?;
        eprintln!(
            "camera frame {w}x{h}: {} (mask {})",
            frame.image.display(),
            frame.mask.display()
        );
        for d in &frame.defects {
            eprintln!("  {} at ({:.0}, {:.0})", d.defect, d.x, d.y);
        }
    }
    Ok(ExitCode::SUCCESS)
}
