//! `fabric-train summary`: trainable parameters and MACs per 256×256 patch, per part.

use fabric_inspect::meta::{Backbone, Variant};
use fabric_train::summary::Summary;

/// Arguments of `fabric-train summary`.
#[derive(clap::Args)]
pub struct Args {
    /// Teacher backbone: resnet18, resnet34 or efficientnet-lite0.
    #[arg(long, default_value = "efficientnet-lite0")]
    backbone: Backbone,
    /// Model variant: residual (with residual paths) or dg (without).
    #[arg(long, default_value = "residual")]
    variant: Variant,
    /// Teacher layers feeding T0..T3, comma-separated (default: the backbone's usual four).
    #[arg(long, value_delimiter = ',')]
    taps: Vec<String>,
}

/// Runs the subcommand.
pub fn run(args: Args, _ctx: &super::Ctx) -> anyhow::Result<()> {
    let summary = Summary::compute(args.backbone, args.variant, &args.taps)?;
    print!("{summary}");
    Ok(())
}
