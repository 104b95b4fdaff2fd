//! # fabric-inspect
//!
//! Inference runtime for fabric defect detection by residual reverse distillation
//! (Thomine & Snoussi, "Distillation-based fabric anomaly detection", Textile Research
//! Journal 94(5-6), 2024, arXiv 2401.02287).
//!
//! A frozen ImageNet teacher and a trained student decoder are exported to ONNX by the
//! `fabric-train` crate; this crate loads them with ONNX Runtime, cuts camera frames into
//! 256×256 tiles, computes the per-pixel teacher–student distance, stitches and smooths
//! the anomaly map and scores it against a threshold stored with the model.
//!
//! Definitions shared with the trainer (pre-processing, tiling, model metadata, dataset
//! layout, anomaly-map scoring, metrics) live here once; the trainer depends on this crate.

pub mod anomaly;
pub mod bench;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod gaussian;
pub mod imageio;
pub mod inspector;
pub mod meta;
pub mod metrics;
pub mod position;
pub mod preprocess;
pub mod report;
pub mod synth;
pub mod threshold;
pub mod tiling;

pub use error::{Error, Result};

/// Checks a `--log` value: a level (off, error, warn, info, debug, trace), or
/// comma-separated `target=level` directives, as `RUST_LOG` takes them.
pub fn parse_log_filter(s: &str) -> std::result::Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.iter().any(|k| k.eq_ignore_ascii_case(l.trim()));
    let ok = !s.trim().is_empty()
        && s.split(',').all(|d| match d.split_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(d),
        });
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "`{s}` is not a log filter: use one of {} or target=level directives",
            LEVELS.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_log_filter;

    #[test]
    fn log_filters_are_levels_or_directives() {
        for ok in [
            "info",
            "WARN",
            "off",
            "fabric_train=debug,ort=warn",
            "info,ort=error",
        ] {
            assert!(parse_log_filter(ok).is_ok(), "{ok}");
        }
        for bad in ["", "foo", "loud", "ort=", "=info", "info,,warn"] {
            assert!(parse_log_filter(bad).is_err(), "{bad}");
        }
    }
}
