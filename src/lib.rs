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
