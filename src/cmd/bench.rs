//! `fabric-inspect bench`.

use std::process::ExitCode;

/// Arguments of `fabric-inspect bench`.
#[derive(clap::Args)]
pub struct Args {}

/// Runs the subcommand; the exit code says whether every input succeeded.
pub fn run(_args: Args, _ctx: &super::Ctx) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`bench` is not available in this build yet")
}
