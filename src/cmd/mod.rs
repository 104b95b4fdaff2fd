//! Subcommands of the `fabric-inspect` binary, one module each.

pub mod bench;
pub mod calibrate;
pub mod eval;
pub mod inspect;
pub mod synth;

use fabric_inspect::engine::{EngineOptions, Provider};
use fabric_inspect::imageio::{has_image_extension, DEFAULT_MAX_PIXELS};
use fabric_inspect::inspector::{InspectOptions, DEFAULT_BATCH};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Options shared by every subcommand.
pub struct Ctx {
    /// Hide progress bars.
    pub quiet: bool,
}

impl Ctx {
    /// A progress bar on stderr over `len` items, hidden with `--quiet` or off a terminal.
    pub fn progress(&self, len: u64, what: &str) -> ProgressBar {
        if self.quiet || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len);
        let style = ProgressStyle::with_template(
            "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        pb.set_style(style);
        pb.set_prefix(what.to_string());
        pb
    }
}

/// Installs the stderr log subscriber (`RUST_LOG` wins over `--log`). ONNX Runtime's own
/// messages are kept to warnings unless the filter names `ort`.
pub fn init_logging(default: &str) {
    let directives = if default.contains("ort") {
        default.to_string()
    } else {
        format!("{default},ort=warn")
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Model and runtime flags shared by `inspect` and `calibrate`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Exported model folder (model.yaml, teacher.onnx, student.onnx).
    #[arg(long)]
    pub model: PathBuf,
    /// Tiles per network run.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    pub batch: usize,
    /// Execution provider: cpu, cuda or tensorrt (falls back TensorRT → CUDA → CPU).
    #[arg(long, default_value = "cpu")]
    pub device: Provider,
    /// Threads for ONNX Runtime (intra-op) and for pre- and post-processing.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Largest image accepted, in pixels (checked before decoding).
    #[arg(long, default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Let ONNX Runtime's worker threads spin while they wait (can help only on cores that
    /// nothing else uses).
    #[arg(long)]
    pub spin: bool,
}

impl ModelArgs {
    /// Checks the flags and turns them into inspector options.
    pub fn options(&self, threshold: Option<f32>) -> anyhow::Result<InspectOptions> {
        anyhow::ensure!(self.batch >= 1, "--batch must be at least 1");
        anyhow::ensure!(self.max_pixels >= 1, "--max-pixels must be at least 1");
        if let Some(n) = self.threads {
            anyhow::ensure!(n >= 1, "--threads must be at least 1");
            // The global pool can only be set once per process; a second call is harmless.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build_global();
        }
        if let Some(t) = threshold {
            anyhow::ensure!(t.is_finite(), "--threshold must be a finite number");
        }
        tracing::debug!(device = %self.device, threads = ?self.threads, batch = self.batch, "runtime settings");
        Ok(InspectOptions {
            engine: EngineOptions {
                device: self.device,
                threads: self.threads,
                spin: self.spin,
            },
            batch: self.batch,
            threshold,
            max_pixels: self.max_pixels,
            ignore_position: false,
        })
    }
}

/// Expands files and folders into image files: a folder is searched recursively for
/// image extensions (sorted by path); a file is taken as given whatever its extension.
/// Paths that do not exist or cannot be listed are returned with the reason.
pub fn collect_images(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut bad = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found, &mut bad);
            found.sort();
            if found.is_empty() {
                tracing::warn!(folder = %p.display(), "no image files in folder");
            }
            files.extend(found);
        } else if p.is_file() {
            files.push(p.clone());
        } else {
            bad.push((p.clone(), "no such file or folder".to_string()));
        }
    }
    tracing::debug!(files = files.len(), "inputs found");
    (files, bad)
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>, bad: &mut Vec<(PathBuf, String)>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            bad.push((dir.to_path_buf(), format!("cannot list folder: {e}")));
            return;
        }
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            walk(&p, found, bad);
        } else if has_image_extension(&p) {
            found.push(p);
        }
    }
}
