//! Training data: defect-free images of one or several MVTec-layout categories, split by
//! source image into training and validation sets, cut or resized to the network input and
//! cached in memory as normalised CHW `f32` tensors.
//!
//! Layout, image decoding, pre-processing and tiling are the runtime crate's definitions
//! (`fabric_inspect::{dataset, imageio, preprocess, tiling}`), so that training sees the
//! same pixels as inspection. In `tile` mode an image is cut into `image_size` tiles at
//! native resolution (an AITEX 4096×256 strip gives 16 tiles); in `resize` mode it is
//! resized to `image_size`×`image_size`.
//!
//! The split is 70/30 (by default) of each root's `train/good/` images, drawn with the
//! config seed, by *source image*: the tiles of one strip are all on the same side.
//!
//! The blur augmentation is deterministic (a fixed Gaussian kernel on the normalised tensor),
//! so each tile is blurred once when loaded. The teacher is frozen too; the cache is laid
//! out as contiguous per-tile tensors so that teacher features could be cached beside it.

use crate::config::{BlurConfig, TrainConfig};
use crate::weights::random::SplitMix64;
use candle_core::{Device, Tensor};
use fabric_inspect::dataset::Category;
use fabric_inspect::imageio::{load_rgb, DEFAULT_MAX_PIXELS};
use fabric_inspect::meta::{InputMode, Normalization};
use fabric_inspect::preprocess::{resize_exact, to_chw};
use fabric_inspect::tiling::{extract_tile_chw, TileGrid};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The training data's seeded generator (SplitMix64, the same on every platform), with the
/// shuffles and draws that splitting and batching need.
#[derive(Debug, Clone)]
pub struct Rng(SplitMix64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::from_state(seed))
    }

    /// A generator for one named purpose under a seed (e.g. one variable, one epoch).
    pub fn for_name(seed: u64, name: &str) -> Self {
        // FNV-1a of the name, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let mut r = Rng::new(seed ^ h);
        r.next_u64();
        r
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0.uniform()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        self.0.normal()
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Errors of loading training data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A data root is not a usable category folder.
    #[error(transparent)]
    Layout(#[from] fabric_inspect::Error),
    /// Too few images for a split, or none could be read.
    #[error("data {path}: {msg}")]
    Empty { path: PathBuf, msg: String },
    /// A tensor could not be built.
    #[error("data tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Which source images went to training and to validation, with the seed that drew them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Seed of the draw (the config seed).
    pub seed: u64,
    /// Training source images, by root then name.
    pub train: Vec<PathBuf>,
    /// Validation source images, by root then name.
    pub val: Vec<PathBuf>,
}

/// Draws the split of `paths` (one root's images, sorted): `round(n·fraction)` images,
/// at least one and at most `n − 1`, go to validation. Returns (train, val), each sorted.
pub fn split_paths(
    paths: &[PathBuf],
    fraction: f64,
    rng: &mut Rng,
) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let n = paths.len();
    if n < 2 {
        return (paths.to_vec(), Vec::new());
    }
    let n_val = ((n as f64 * fraction).round() as usize).clamp(1, n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    let mut is_val = vec![false; n];
    for &i in &order[..n_val] {
        is_val[i] = true;
    }
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (p, v) in paths.iter().zip(is_val) {
        if v {
            val.push(p.clone());
        } else {
            train.push(p.clone());
        }
    }
    (train, val)
}

/// Lists each root's training images (after `limit`) and draws the split.
pub fn make_split(cfg: &TrainConfig) -> Result<Split, DataError> {
    let mut rng = Rng::new(cfg.seed ^ 0x5151_7a7a_0000_0001);
    let mut split = Split {
        seed: cfg.seed,
        train: Vec::new(),
        val: Vec::new(),
    };
    let mut seen = Vec::new();
    for root in &cfg.roots {
        let same = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
        if seen.contains(&same) {
            tracing::warn!(root = %root.display(), "root listed twice; its images are used once");
            continue;
        }
        seen.push(same);
        let cat = Category::open(root)?;
        let mut paths = cat.train;
        // split.yaml records every image's path as text.
        paths.retain(|p| {
            let ok = p.to_str().is_some();
            if !ok {
                tracing::warn!(
                    path = %p.display(),
                    "skipping an image whose path is not valid UTF-8 (rename it to use it)"
                );
            }
            ok
        });
        if let Some(limit) = cfg.limit {
            paths.truncate(limit);
        }
        if paths.len() < 2 {
            return Err(DataError::Empty {
                path: root.clone(),
                msg: format!(
                    "train/good/ needs at least 2 images for a training/validation split, found {}",
                    paths.len()
                ),
            });
        }
        let (t, v) = split_paths(&paths, cfg.val_fraction, &mut rng);
        split.train.extend(t);
        split.val.extend(v);
    }
    Ok(split)
}

/// Where a cached tile came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileOrigin {
    /// Index into [`TileSet::sources`].
    pub source: usize,
    /// Top-left corner of the tile in the source image (0, 0 in resize mode).
    pub x: u32,
    /// See `x`.
    pub y: u32,
}

/// A source image that was loaded, with the geometry needed to stitch its tiles back.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    /// Image file.
    pub path: PathBuf,
    /// Native width in pixels.
    pub width: u32,
    /// Native height in pixels.
    pub height: u32,
    /// Indices of this image's tiles in the tile set, in grid order.
    pub tiles: Vec<usize>,
    /// Whether all of the grid's tiles were kept (`max_tiles_per_image` may drop some).
    pub complete: bool,
}

/// Normalised CHW tiles of one side of the split, contiguous in memory.
#[derive(Debug, Clone)]
pub struct TileSet {
    /// Tile side in pixels.
    pub size: usize,
    /// `len()·3·size·size` floats.
    pub data: Vec<f32>,
    /// Origin of every tile.
    pub origins: Vec<TileOrigin>,
    /// Every loaded source image.
    pub sources: Vec<SourceInfo>,
}

impl TileSet {
    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.origins.len()
    }

    /// Whether there are no tiles.
    pub fn is_empty(&self) -> bool {
        self.origins.is_empty()
    }

    /// Floats per tile.
    pub fn tile_len(&self) -> usize {
        3 * self.size * self.size
    }

    /// One tile's floats.
    pub fn tile(&self, i: usize) -> &[f32] {
        let n = self.tile_len();
        &self.data[i * n..(i + 1) * n]
    }

    /// The tiles `idx` as one `[len, 3, size, size]` tensor.
    pub fn batch(&self, idx: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let n = self.tile_len();
        let mut buf = Vec::with_capacity(idx.len() * n);
        for &i in idx {
            buf.extend_from_slice(self.tile(i));
        }
        Tensor::from_vec(buf, (idx.len(), 3, self.size, self.size), device)
    }
}

/// The loaded training data.
#[derive(Debug, Clone)]
pub struct TrainData {
    /// The split that was drawn.
    pub split: Split,
    /// Training tiles (blurred when the augmentation is on).
    pub train: TileSet,
    /// Validation tiles as the validation loss sees them (blurred when the augmentation is on).
    pub val: TileSet,
    /// Validation tiles without blur and with every tile of each image, for threshold
    /// scoring; `None` when `val` is already so (no blur, no tile limit).
    pub val_clean: Option<TileSet>,
}

impl TrainData {
    /// Validation tiles exactly as inference sees them (no blur).
    pub fn val_for_scoring(&self) -> &TileSet {
        self.val_clean.as_ref().unwrap_or(&self.val)
    }
}

/// Geometry and pixel settings used to turn images into tiles.
#[derive(Debug, Clone, Copy)]
pub struct TileSpec {
    /// `tile` or `resize`.
    pub mode: InputMode,
    /// Network input side in pixels.
    pub size: u32,
    /// Teacher normalisation.
    pub norm: Normalization,
    /// Keep at most this many tiles per image (spread over rows and columns, see
    /// [`spread_over_grid`]).
    pub max_tiles: Option<usize>,
}

/// The tiles of one image.
#[derive(Debug, Clone)]
pub struct ImageTiles {
    /// Normalised CHW tiles (`3·size·size` floats each).
    pub tiles: Vec<Vec<f32>>,
    /// Top-left corner of each tile.
    pub corners: Vec<(u32, u32)>,
    /// Native width and height of the image.
    pub size: (u32, u32),
    /// Whether every tile of the grid was kept.
    pub complete: bool,
}

/// `k` (< rows·cols) distinct indices into a row-major `rows × cols` grid, spread over both
/// axes, in ascending order: pick `i` lies in row ⌊(i + ½)·rows / k⌋ at the column fraction
/// `{½ + i/φ}` (φ the golden ratio, a Fibonacci lattice); a pick that falls on a taken cell
/// moves to the next free one. Every row gets its share, and the columns of successive picks
/// jump across the width, so that neither the first column (on AITEX the flat lead-in) nor a
/// single column is all that is kept.
pub fn spread_over_grid(rows: usize, cols: usize, k: usize) -> Vec<usize> {
    let all = rows * cols;
    let k = k.min(all);
    let inv_phi = (5f64.sqrt() - 1.0) / 2.0;
    let mut taken = vec![false; all];
    for i in 0..k {
        let row = (((i as f64 + 0.5) * rows as f64 / k as f64) as usize).min(rows - 1);
        let frac = (0.5 + i as f64 * inv_phi).fract();
        let col = ((frac * cols as f64) as usize).min(cols - 1);
        let mut at = row * cols + col;
        while taken[at] {
            at = (at + 1) % all;
        }
        taken[at] = true;
    }
    (0..all).filter(|&i| taken[i]).collect()
}

/// Reads one image and cuts (or resizes) it into normalised tiles.
pub fn image_tiles(path: &Path, spec: &TileSpec) -> fabric_inspect::Result<ImageTiles> {
    let img = load_rgb(path, DEFAULT_MAX_PIXELS)?;
    let (w, h) = img.dimensions();
    let n = 3 * (spec.size as usize).pow(2);
    match spec.mode {
        InputMode::Resize => {
            let r = resize_exact(&img, spec.size);
            let mut out = vec![0.0; n];
            to_chw(&r, spec.norm, &mut out);
            Ok(ImageTiles {
                tiles: vec![out],
                corners: vec![(0, 0)],
                size: (w, h),
                complete: true,
            })
        }
        InputMode::Tile => {
            let grid = TileGrid::new(w, h, spec.size);
            let mut corners = Vec::new();
            for &y in &grid.ys {
                for &x in &grid.xs {
                    corners.push((x, y));
                }
            }
            let all = corners.len();
            if let Some(k) = spec.max_tiles.filter(|&k| k < all) {
                let picked = spread_over_grid(grid.ys.len(), grid.xs.len(), k);
                corners = picked.into_iter().map(|i| corners[i]).collect();
            }
            let complete = corners.len() == all;
            let tiles = corners
                .iter()
                .map(|&(x, y)| {
                    let mut out = vec![0.0; n];
                    extract_tile_chw(&img, x, y, spec.size, spec.norm, &mut out);
                    out
                })
                .collect();
            Ok(ImageTiles {
                tiles,
                corners,
                size: (w, h),
                complete,
            })
        }
    }
}

/// Loads `paths` into a tile set. An unreadable image is reported (warn, with its path)
/// and skipped. When `blur` is given, every tile is blurred after normalisation.
pub fn load_tiles(paths: &[PathBuf], spec: &TileSpec, blur: Option<&BlurConfig>) -> TileSet {
    let loaded: Vec<_> = paths
        .par_iter()
        .map(|p| match image_tiles(p, spec) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "skipping unreadable image");
                None
            }
        })
        .collect();
    let size = spec.size as usize;
    let kernel = blur.map(|b| blur_kernel(b.kernel, b.sigma));
    let mut set = TileSet {
        size,
        data: Vec::new(),
        origins: Vec::new(),
        sources: Vec::new(),
    };
    for (path, item) in paths.iter().zip(loaded) {
        let Some(ImageTiles {
            tiles,
            corners,
            size: (w, h),
            complete,
        }) = item
        else {
            continue;
        };
        let source = set.sources.len();
        let mut idx = Vec::with_capacity(tiles.len());
        for (mut t, (x, y)) in tiles.into_iter().zip(corners) {
            if let Some(k) = &kernel {
                blur_chw(&mut t, 3, size, size, k);
            }
            idx.push(set.origins.len());
            set.origins.push(TileOrigin { source, x, y });
            set.data.extend_from_slice(&t);
        }
        set.sources.push(SourceInfo {
            path: path.clone(),
            width: w,
            height: h,
            tiles: idx,
            complete,
        });
    }
    set
}

/// Draws the split and loads both sides.
pub fn load(cfg: &TrainConfig) -> Result<TrainData, DataError> {
    load_split(cfg, make_split(cfg)?)
}

/// Loads both sides of a given split (a resumed run keeps the split it began with).
pub fn load_split(cfg: &TrainConfig, split: Split) -> Result<TrainData, DataError> {
    let spec = TileSpec {
        mode: cfg.input_mode,
        size: cfg.image_size,
        norm: cfg.backbone.normalization(),
        max_tiles: cfg.max_tiles_per_image,
    };
    let blur = cfg.blur.enabled.then_some(&cfg.blur);
    let train = load_tiles(&split.train, &spec, blur);
    let val = load_tiles(&split.val, &spec, blur);
    // Scoring sees every tile of an image without blur, as inspection does. Only the images
    // that loaded above are read again (an unreadable one was reported once already).
    let val_clean = (blur.is_some() || spec.max_tiles.is_some()).then(|| {
        let all_tiles = TileSpec {
            max_tiles: None,
            ..spec
        };
        let readable: Vec<PathBuf> = val.sources.iter().map(|s| s.path.clone()).collect();
        load_tiles(&readable, &all_tiles, None)
    });
    let first_root = cfg.roots.first().cloned().unwrap_or_default();
    if train.is_empty() || val.is_empty() {
        return Err(DataError::Empty {
            path: first_root,
            msg: format!(
                "no readable {} images (train {} tiles, validation {} tiles)",
                if train.is_empty() {
                    "training"
                } else {
                    "validation"
                },
                train.len(),
                val.len()
            ),
        });
    }
    tracing::info!(
        train_images = train.sources.len(),
        train_tiles = train.len(),
        val_images = val.sources.len(),
        val_tiles = val.len(),
        seed = cfg.seed,
        "data loaded"
    );
    Ok(TrainData {
        split,
        train,
        val,
        val_clean,
    })
}

/// Normalised 1-D Gaussian of `k` taps at `sigma` (torchvision's `gaussian_blur` kernel).
pub fn blur_kernel(k: usize, sigma: f32) -> Vec<f32> {
    let half = (k as f32 - 1.0) / 2.0;
    let w: Vec<f32> = (0..k)
        .map(|i| {
            let x = (i as f32 - half) / sigma;
            (-0.5 * x * x).exp()
        })
        .collect();
    let s: f32 = w.iter().sum();
    w.into_iter().map(|v| v / s).collect()
}

/// Index rule of PyTorch's `reflect` padding (`c b | a b c d | c b`, edge not repeated).
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    (if m < n as isize { m } else { period - m }) as usize
}

/// Blurs each of `channels` planes of `w`×`h` in place with the separable `kernel`,
/// reflect borders.
pub fn blur_chw(data: &mut [f32], channels: usize, w: usize, h: usize, kernel: &[f32]) {
    let r = (kernel.len() / 2) as isize;
    let mut tmp = vec![0.0f32; w * h];
    for c in 0..channels {
        let plane = &mut data[c * w * h..(c + 1) * w * h];
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (j, kv) in kernel.iter().enumerate() {
                    let xx = reflect(x as isize + j as isize - r, w);
                    acc += kv * plane[y * w + xx];
                }
                tmp[y * w + x] = acc;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let mut acc = 0.0;
                for (j, kv) in kernel.iter().enumerate() {
                    let yy = reflect(y as isize + j as isize - r, h);
                    acc += kv * tmp[yy * w + x];
                }
                plane[y * w + x] = acc;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picked_tiles_spread_over_rows_and_columns() {
        // An AITEX strip in 64-pixel tiles: 4 rows of 64.
        for k in [1, 2, 3, 8, 16, 100, 255] {
            let picked = spread_over_grid(4, 64, k);
            assert_eq!(picked.len(), k);
            assert!(
                picked.windows(2).all(|w| w[0] < w[1]),
                "k {k}: not ascending"
            );
            assert!(picked.iter().all(|&i| i < 256));
            let cols: std::collections::BTreeSet<usize> = picked.iter().map(|i| i % 64).collect();
            let rows: std::collections::BTreeSet<usize> = picked.iter().map(|i| i / 64).collect();
            assert!(cols.len() >= k.min(64) / 2, "k {k}: columns {cols:?}");
            assert_eq!(rows.len(), k.min(4), "k {k}: rows {rows:?}");
        }
        // Every (all/k)-th tile would be column 0 only: the flat lead-in of a strip.
        assert_eq!(spread_over_grid(4, 64, 2), vec![64 + 32, 3 * 64 + 7]);
        assert_eq!(spread_over_grid(1, 1, 1), vec![0]);
        assert_eq!(spread_over_grid(2, 3, 6), (0..6).collect::<Vec<_>>());
    }

    #[test]
    fn rng_is_reproducible_and_normal_is_sane() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(3);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::new(3);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let mut r = Rng::new(9);
        let xs: Vec<f64> = (0..20000).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!(
            mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }

    #[test]
    fn split_is_seeded_disjoint_and_70_30() {
        let paths: Vec<PathBuf> = (0..15).map(|i| format!("{i:02}.png").into()).collect();
        let (t1, v1) = split_paths(&paths, 0.3, &mut Rng::new(7));
        let (t2, v2) = split_paths(&paths, 0.3, &mut Rng::new(7));
        assert_eq!((t1.clone(), v1.clone()), (t2, v2));
        assert_eq!(v1.len(), 5);
        assert_eq!(t1.len(), 10);
        assert!(v1.iter().all(|p| !t1.contains(p)));
        let (_, v3) = split_paths(&paths, 0.3, &mut Rng::new(8));
        assert_ne!(v1, v3);
    }

    #[test]
    fn blur_kernel_matches_torchvision_sigma_08() {
        // exp(-0.5/0.64) = 0.457833; normalised by 1 + 2·0.457833.
        let k = blur_kernel(3, 0.8);
        let e = (-0.5f32 / 0.64).exp();
        let s = 1.0 + 2.0 * e;
        assert!((k[0] - e / s).abs() < 1e-7 && (k[1] - 1.0 / s).abs() < 1e-7);
    }

    #[test]
    fn blur_keeps_constants_and_reflects_borders() {
        let mut c = vec![2.0f32; 3 * 5 * 4];
        blur_chw(&mut c, 3, 5, 4, &blur_kernel(3, 0.8));
        assert!(c.iter().all(|v| (v - 2.0).abs() < 1e-6));
        // A ramp along x: reflect at x = 0 uses x = 1 on both sides, so the edge value is
        // k0·1 + k1·0 + k2·1.
        let mut r: Vec<f32> = (0..4).map(|x| x as f32).collect();
        let k = blur_kernel(3, 0.8);
        blur_chw(&mut r, 1, 4, 1, &k);
        assert!((r[0] - 2.0 * k[0]).abs() < 1e-6, "{r:?}");
        assert!((r[1] - 1.0).abs() < 1e-6, "{r:?}");
    }
}
