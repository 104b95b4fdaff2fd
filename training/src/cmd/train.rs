//! `fabric-train train`.

use anyhow::Context;
use fabric_train::checkpoint::RunDir;
use fabric_train::config::TrainConfig;
use fabric_train::trainer::{self, TrainOptions};
use std::path::PathBuf;

/// Arguments of `fabric-train train`.
#[derive(clap::Args)]
pub struct Args {
    /// Training config (YAML; see configs/). With --resume it may be left out: the run's
    /// own config.yaml is used.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run folder: checkpoints, loss curve, config, split and validation statistics.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last finished epoch.
    #[arg(long)]
    resume: bool,
    /// Compute threads (candle and rayon); overrides the config's `threads`.
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs the subcommand.
pub fn run(args: Args, ctx: &super::Ctx) -> anyhow::Result<()> {
    let cfg = match (&args.config, args.resume) {
        (Some(p), _) => TrainConfig::load(p)?,
        (None, true) => RunDir::open(&args.out)?.read_config()?,
        (None, false) => anyhow::bail!("--config is required (except with --resume)"),
    };
    if let Some(n) = args.threads.or(cfg.threads) {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        trainer::set_threads(n);
    } else {
        trainer::set_default_threads();
    }
    tracing::debug!(
        threads = candle_core::utils::get_num_threads(),
        "compute threads"
    );
    let opts = TrainOptions {
        resume: args.resume,
        quiet: ctx.quiet,
    };
    let summary = trainer::train(&cfg, &args.out, &opts)
        .with_context(|| format!("training into {}", args.out.display()))?;
    println!(
        "trained {} epochs; best epoch {} (validation loss {:.5}); threshold {:.5} from {} validation images; run folder {}",
        summary.epochs,
        summary.best_epoch,
        summary.best_val_loss,
        summary.stats.threshold,
        summary.stats.stats.count,
        args.out.display()
    );
    Ok(())
}
