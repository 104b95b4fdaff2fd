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
    // The options of an untrained export have no clap default, so that clap can refuse
    // them next to --checkpoint (an option with a default always counts as given).
    /// Teacher backbone of an untrained export: resnet18, resnet34 or efficientnet-lite0
    /// [default: efficientnet-lite0].
    #[arg(long, conflicts_with = "checkpoint")]
    backbone: Option<Backbone>,
    /// Variant of an untrained export: residual or dg [default: residual].
    #[arg(long, conflicts_with = "checkpoint")]
    variant: Option<Variant>,
    /// Seed of an untrained export (student initialisation, random teacher) [default: 42].
    #[arg(long, conflicts_with = "checkpoint")]
    seed: Option<u64>,
    /// Teacher weights of an untrained export: a weight file or `random`; default the
    /// backbone's pretrained file under third_party/weights/, else seeded random.
    #[arg(long, conflicts_with = "checkpoint")]
    teacher_weights: Option<String>,
    /// Input mode recorded for an untrained export: tile or resize [default: tile].
    #[arg(long, conflicts_with = "checkpoint", value_parser = parse_input_mode)]
    input_mode: Option<InputMode>,
    /// Network input side of an untrained export [default: 256].
    #[arg(long, conflicts_with = "checkpoint")]
    size: Option<u32>,
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
        let size = args.size.unwrap_or(256);
        let seed = args.seed.unwrap_or(42);
        let backbone = args.backbone.unwrap_or(Backbone::EfficientnetLite0);
        anyhow::ensure!(
            size > 0 && size.is_multiple_of(32),
            "--size must be a positive multiple of 32, got {size}"
        );
        let w = match args.teacher_weights.as_deref() {
            Some("random") => TeacherWeights::Random { seed },
            Some(p) => TeacherWeights::File(p.into()),
            None => weights::default_weights(backbone, seed),
        };
        let info = export::untrained_info(args.input_mode.unwrap_or(InputMode::Tile), size, seed);
        let variant = args.variant.unwrap_or(Variant::Residual);
        export::export_untrained(backbone, variant, w, &info, &args.out)
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
