//! # fabric-train
//!
//! Trainer for fabric-inspect: the residual reverse distillation model of Thomine & Snoussi,
//! "Distillation-based fabric anomaly detection" (Textile Research Journal 94(5-6), 2024,
//! arXiv 2401.02287), in candle, and the ONNX writer that exports it for the runtime.
//!
//! Words used throughout: the *teacher* is the frozen pretrained encoder (features T0..T3);
//! the *student* is the bottleneck, the residual paths and the reverse decoder (features
//! S0..S3, compared pairwise with T0..T3).

pub mod onnx;
pub mod export;
pub mod bottleneck;
pub mod loss;
pub mod residual;
pub mod student;
pub mod config;
pub mod data;
pub mod weights;
pub mod teacher;
pub mod model;
pub mod summary;
pub mod benchtrain;
pub mod checkpoint;
pub mod trainer;
pub mod fastconv;
pub mod featcache;
