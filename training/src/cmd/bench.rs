//! `fabric-train bench`.

use fabric_inspect::meta::{Backbone, Variant};
use fabric_train::benchtrain::{run_bench, BenchSpec};
use fabric_train::trainer;

/// Arguments of `fabric-train bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Teacher backbone: resnet18, resnet34 or efficientnet-lite0.
    #[arg(long, default_value = "efficientnet-lite0")]
    backbone: Backbone,
    /// Student variant: residual or dg.
    #[arg(long, default_value = "residual")]
    variant: Variant,
    /// Tiles per training step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Timed steps after one warm-up step (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Teacher weight file, or `random`; default: the backbone's file under
    /// third_party/weights/, else a seeded random teacher.
    #[arg(long)]
    teacher_weights: Option<String>,
    /// Compute threads (candle and rayon); default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also time the convolution and BatchNorm passes of the last run, by phase and
    /// geometry.
    #[arg(long)]
    profile: bool,
}

/// Runs the subcommand.
pub fn run(args: Args, _ctx: &super::Ctx) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch > 0, "--batch must be at least 1");
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    if let Some(n) = args.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        trainer::set_threads(n);
    } else {
        trainer::set_default_threads();
    }
    let report = run_bench(&BenchSpec {
        backbone: args.backbone,
        variant: args.variant,
        batch: args.batch,
        runs: args.runs,
        size: 256,
        teacher_weights: args.teacher_weights,
        profile: args.profile,
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
