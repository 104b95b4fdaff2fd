//! Subcommands of the `fabric-train` binary, one module each.

pub mod bench;
pub mod export;
pub mod summary;
pub mod train;

/// Options shared by every subcommand.
pub struct Ctx {
    /// Hide progress bars.
    pub quiet: bool,
}

/// Installs the stderr log subscriber (`RUST_LOG` wins over `--log`).
pub fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
