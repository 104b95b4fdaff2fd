//! `fabric-train export`.

use anyhow::Context;
use fabric_inspect::meta::{Backbone, InputMode, Variant};
use fabric_train::export;
use fabric_train::weights::{self, TeacherWeights};
use std::path::PathBuf;

fn parse_input_mode(s: &str) -> Result<InputMode, String> {
    match s {
        "tile" => Ok(InputMode::Tile),
        "resize" => Ok(InputMode::Resize),
        _ => Err(format!(
            "unknown input mode `{s}` (expected tile or resize)"
        )),
    }
}

/// Arguments of `fabric-train export`.
#[derive(clap::Args)]
pub struct Args {
    /// Training run folder (written by `fabric-train train --out`): its best checkpoint,
    /// config, seed and validation statistics are exported.
    #[arg(
        long,
        required_unless_present = "untrained",
        conflicts_with = "untrained"
    )]
    checkpoint: Option<PathBuf>,
    /// Export a freshly initialised (seeded) student instead of a trained run, for tests and
    /// timing; its threshold is unset until `calibrate`.
    #[arg(long)]
    untrained: bool,
    // `conflicts_with`, not `requires = "untrained"`: a flag always counts as given (its
    // default is false), so `requires` let these options pass next to --checkpoint.
    /// Teacher backbone of an untrained export: resnet18, resnet34 or efficientnet-lite0.
    #[arg(
        long,
        conflicts_with = "checkpoint",
        default_value = "efficientnet-lite0"
    )]
    backbone: Backbone,
    /// Variant of an untrained export: residual or dg.
    #[arg(long, conflicts_with = "checkpoint", default_value = "residual")]
    variant: Variant,
    /// Seed of an untrained export (student initialisation, random teacher).
    #[arg(long, conflicts_with = "checkpoint", default_value_t = 42)]
    seed: u64,
    /// Teacher weights of an untrained export: a weight file or `random`; default the
    /// backbone's pretrained file under third_party/weights/, else seeded random.
    #[arg(long, conflicts_with = "checkpoint")]
    teacher_weights: Option<String>,
    /// Input mode recorded for an untrained export: tile or resize.
    #[arg(long, conflicts_with = "checkpoint", default_value = "tile", value_parser = parse_input_mode)]
    input_mode: InputMode,
    /// Network input side of an untrained export.
    #[arg(long, conflicts_with = "checkpoint", default_value_t = 256)]
    size: u32,
    /// Model folder to write (teacher.onnx, student.onnx, model.yaml); an existing model
    /// folder is replaced.
    #[arg(long)]
    out: PathBuf,
}

/// Runs the subcommand.
pub fn run(args: Args, _ctx: &super::Ctx) -> anyhow::Result<()> {
    let (meta, summary) = if let Some(run_dir) = &args.checkpoint {
        export::export_run(run_dir, &args.out).with_context(|| {
            format!(
                "exporting run {} to {}",
                run_dir.display(),
                args.out.display()
            )
        })?
    } else {
        anyhow::ensure!(
            args.size > 0 && args.size.is_multiple_of(32),
            "--size must be a positive multiple of 32, got {}",
            args.size
        );
        let w = match args.teacher_weights.as_deref() {
            Some("random") => TeacherWeights::Random { seed: args.seed },
            Some(p) => TeacherWeights::File(p.into()),
            None => weights::default_weights(args.backbone, args.seed),
        };
        let info = export::untrained_info(args.input_mode, args.size, args.seed);
        export::export_untrained(args.backbone, args.variant, w, &info, &args.out)
            .with_context(|| format!("exporting an untrained model to {}", args.out.display()))?
    };
    if meta.teacher_weights == "random" {
        tracing::warn!("the exported teacher has seeded random weights (teacher_weights: random)");
    }
    println!(
        "exported {} ({}, teacher weights {}) to {}: teacher {} nodes / {:.1} MB, student {} nodes / {:.1} MB, threshold {}",
        meta.backbone,
        meta.variant,
        meta.teacher_weights,
        summary.dir.display(),
        summary.nodes[0],
        summary.bytes[0] as f64 / 1e6,
        summary.nodes[1],
        summary.bytes[1] as f64 / 1e6,
        if meta.validation.is_some() {
            format!("{:.6}", meta.threshold)
        } else {
            "unset (untrained; run calibrate)".to_string()
        }
    );
    Ok(())
}
