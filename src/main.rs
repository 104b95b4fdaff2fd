//! `fabric-inspect`: inspect, calibrate, evaluate and benchmark exported fabric models.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fabric-inspect",
    version,
    about = "Fabric defect inspection with residual reverse distillation"
)]
struct Cli {
    /// Log filter (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "info", value_parser = fabric_inspect::parse_log_filter)]
    log: String,
    /// Hide progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect images or folders with an exported model.
    Inspect(cmd::inspect::Args),
    /// Re-derive a model's threshold from new defect-free images.
    Calibrate(cmd::calibrate::Args),
    /// Evaluate a model on an MVTec-layout category with the paper's metrics.
    Eval(cmd::eval::Args),
    /// Time the network and the frame pipeline (the paper's speed table).
    Bench(cmd::bench::Args),
    /// Generate a synthetic woven-fabric dataset and camera frame.
    Synth(cmd::synth::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    cmd::init_logging(&cli.log);
    let ctx = cmd::Ctx { quiet: cli.quiet };
    let result = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(a, &ctx),
        Command::Calibrate(a) => cmd::calibrate::run(a, &ctx),
        Command::Eval(a) => cmd::eval::run(a, &ctx),
        Command::Bench(a) => cmd::bench::run(a, &ctx),
        Command::Synth(a) => cmd::synth::run(a, &ctx),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
