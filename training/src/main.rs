//! `fabric-train`: train the residual reverse distillation student, summarise and export models.

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fabric-train",
    version,
    about = "Train and export fabric anomaly models"
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
    /// Print trainable parameters and MACs per 256×256 patch, per part.
    Summary(cmd::summary::Args),
    /// Train a student on defect-free images.
    Train(cmd::train::Args),
    /// Export a trained run (or an untrained model) to ONNX + model.yaml.
    Export(cmd::export::Args),
    /// Time one training step per part.
    Bench(cmd::bench::Args),
}

/// Lets glibc's allocator keep freed memory for the next allocation instead of handing it
/// back to the system. A training step allocates and frees hundreds of activation-sized
/// buffers (megabytes each); by default glibc maps each one afresh and returns it when freed,
/// so every step pays page faults and page clearing for all of them (about a tenth of a
/// backward pass). The process's peak memory is unchanged: it is the same buffers, reused.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes allocator parameters; it is called before any other
    // thread exists.
    unsafe {
        // Serve allocations up to 512 MiB from the heap, and trim the heap's top only once
        // 1 GiB of it is free.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    cmd::init_logging(&cli.log);
    let ctx = cmd::Ctx { quiet: cli.quiet };
    let result = match cli.command {
        Command::Summary(a) => cmd::summary::run(a, &ctx),
        Command::Train(a) => cmd::train::run(a, &ctx),
        Command::Export(a) => cmd::export::run(a, &ctx),
        Command::Bench(a) => cmd::bench::run(a, &ctx),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
