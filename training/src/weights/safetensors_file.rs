//! safetensors weight files: reading, and writing (atomically) for exchange and tests.

use super::WeightError;
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// Reads every tensor of a safetensors file.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>, WeightError> {
    let bytes = std::fs::read(path).map_err(|source| WeightError::Io {
        path: path.to_owned(),
        source,
    })?;
    read_bytes(path, &bytes)
}

/// Reads every tensor of a safetensors file already in memory (`path` names it in errors).
pub fn read_bytes(path: &Path, bytes: &[u8]) -> Result<Vec<(String, Tensor)>, WeightError> {
    let map = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| {
        WeightError::Format {
            path: path.to_owned(),
            message: format!("safetensors: {e}"),
        }
    })?;
    let mut list: Vec<(String, Tensor)> = map.into_iter().collect();
    list.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(list)
}

/// Writes tensors to a safetensors file atomically (a reader never sees half a file).
pub fn write(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), WeightError> {
    let contiguous = tensors
        .iter()
        .map(|(k, t)| {
            t.contiguous()
                .and_then(|t| t.to_device(&Device::Cpu))
                .map(|t| (k.clone(), t))
                .map_err(|source| WeightError::Tensor {
                    path: path.to_owned(),
                    name: k.clone(),
                    source: Box::new(source),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = safetensors::serialize(contiguous, None).map_err(|e| WeightError::Format {
        path: path.to_owned(),
        message: format!("safetensors: {e}"),
    })?;
    fabric_inspect::fsutil::atomic_write(path, &bytes).map_err(|e| WeightError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e.to_string()),
    })
}
