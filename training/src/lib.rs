//! # fabric-train
//!
//! Trainer for fabric-inspect: the residual reverse distillation model of Thomine & Snoussi,
//! "Distillation-based fabric anomaly detection" (Textile Research Journal 94(5-6), 2024,
//! arXiv 2401.02287), in candle, and the ONNX writer that exports it for the runtime.
//!
//! Words used throughout: the *teacher* is the frozen pretrained encoder (features T0..T3);
//! the *student* is the bottleneck, the residual paths and the reverse decoder (features
//! S0..S3, compared pairwise with T0..T3).

pub mod benchtrain;
pub mod bottleneck;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod export;
pub mod fastbn;
pub mod fastconv;
pub mod fastops;
pub mod fastpath;
pub mod featcache;
pub mod loss;
pub mod model;
pub mod onnx;
pub mod opprof;
pub mod residual;
pub mod student;
pub mod summary;
pub mod teacher;
pub mod trainer;
pub mod weights;

/// Turns every fast CPU path of the training step on or off for the calling thread: the
/// convolutions of [`fastconv`], the fused BatchNorm of [`fastbn`] and the fused element-wise
/// operations of [`fastops`]. Off, the student runs on candle's own operations only: the
/// straightforward path that tests compare against.
pub fn set_fast_paths(enabled: bool) {
    fastpath::set_all(enabled);
}
