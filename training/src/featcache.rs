//! Cache of the frozen teacher's features per training or validation tile.
//!
//! The teacher never changes during training and the tiles (blur augmentation included) are
//! the same every epoch, so its features T0..T3 of a tile are the same every epoch too.
//! [`FeatureCache::build`] computes them once for as many tiles as a memory budget holds —
//! the first tiles of the set, in index order, in fixed batches, so that what is cached
//! does not depend on the batch order of any epoch (a resumed run rebuilds the same cache)
//! — and [`FeatureCache::features`] serves a batch from the cache, running the teacher on
//! the batch's tiles beyond the budget as before. With a budget of 0 nothing is cached and
//! every batch runs the teacher, the straightforward path.

use candle_core::{Device, Result, Tensor};

use crate::data::TileSet;
use crate::teacher::Teacher;

/// Default memory budget of the cache, in MiB (config key `feature_cache_mb`).
pub const DEFAULT_FEATURE_CACHE_MB: usize = 2048;

/// Teacher features of the first [`FeatureCache::len`] tiles of one tile set.
#[derive(Debug, Clone, Default)]
pub struct FeatureCache {
    /// Per feature level `[len, C_l, H_l, W_l]`; empty when nothing is cached.
    levels: Vec<Tensor>,
    /// Number of cached tiles (tiles `0..len` of the set).
    len: usize,
    /// Bytes held.
    bytes: usize,
}

impl FeatureCache {
    /// An empty cache: every batch runs the teacher.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Runs `teacher` over the tiles of `set` in index order, `batch` tiles at a time, and
    /// keeps the features of as many tiles as `budget_bytes` holds (f32 values).
    pub fn build(
        teacher: &Teacher,
        set: &TileSet,
        batch: usize,
        budget_bytes: usize,
        device: &Device,
    ) -> Result<Self> {
        let n = set.len();
        if n == 0 || budget_bytes == 0 {
            return Ok(Self::empty());
        }
        let shapes = teacher.feature_shapes(set.size, set.size);
        let per_tile: usize = shapes.iter().map(|&(c, h, w)| c * h * w).sum::<usize>() * 4;
        let len = n.min(budget_bytes / per_tile.max(1));
        if len == 0 {
            return Ok(Self::empty());
        }
        let mut data: Vec<Vec<f32>> = shapes
            .iter()
            .map(|&(c, h, w)| Vec::with_capacity(len * c * h * w))
            .collect();
        let idx: Vec<usize> = (0..len).collect();
        for chunk in idx.chunks(batch.max(1)) {
            let t = teacher.forward(&set.batch(chunk, device)?)?;
            if t.len() != shapes.len() {
                candle_core::bail!(
                    "feature cache: teacher gave {} features, expected {}",
                    t.len(),
                    shapes.len()
                )
            }
            for (buf, f) in data.iter_mut().zip(&t) {
                buf.extend(f.flatten_all()?.to_vec1::<f32>()?);
            }
        }
        let levels = data
            .into_iter()
            .zip(shapes)
            .map(|(v, (c, h, w))| Tensor::from_vec(v, (len, c, h, w), device))
            .collect::<Result<Vec<_>>>()?;
        tracing::debug!(
            tiles = len,
            of = n,
            mib = (len * per_tile) >> 20,
            "teacher features cached"
        );
        Ok(Self {
            levels,
            len,
            bytes: len * per_tile,
        })
    }

    /// Number of cached tiles (tiles `0..len()` of the set).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes the cached features take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Teacher features `[T0, T1, T2, T3]` of the tiles `idx` of `set` (the set the cache
    /// was built on), each `[idx.len(), C_l, H_l, W_l]`, detached: cached tiles from the
    /// cache, the others from one teacher run on just those tiles.
    pub fn features(
        &self,
        teacher: &Teacher,
        set: &TileSet,
        idx: &[usize],
        device: &Device,
    ) -> Result<Vec<Tensor>> {
        let (hit, miss): (Vec<usize>, Vec<usize>) = idx.iter().partition(|&&i| i < self.len);
        if hit.is_empty() {
            let t = teacher.forward(&set.batch(idx, device)?)?;
            return Ok(t.iter().map(Tensor::detach).collect());
        }
        let hit_rows = Tensor::from_vec(
            hit.iter().map(|&i| i as u32).collect::<Vec<u32>>(),
            hit.len(),
            device,
        )?;
        let cached: Vec<Tensor> = self
            .levels
            .iter()
            .map(|l| l.index_select(&hit_rows, 0))
            .collect::<Result<_>>()?;
        if miss.is_empty() {
            return Ok(cached);
        }
        let fresh = teacher.forward(&set.batch(&miss, device)?)?;
        // Rows of cat(cached, fresh) in the order of `idx`.
        let (mut h, mut m) = (0u32, hit.len() as u32);
        let order: Vec<u32> = idx
            .iter()
            .map(|&i| {
                let r = if i < self.len { &mut h } else { &mut m };
                *r += 1;
                *r - 1
            })
            .collect();
        let order = Tensor::from_vec(order, idx.len(), device)?;
        cached
            .iter()
            .zip(&fresh)
            .map(|(c, f)| Tensor::cat(&[c, &f.detach()], 0)?.index_select(&order, 0))
            .collect()
    }
}
