//! Cutting images into the network's square tiles and stitching per-tile maps back.
//!
//! Tiles start every `tile` pixels; when a side is not a multiple of the tile, the last
//! row or column is moved back to end at the border and overlaps its neighbour. A side
//! shorter than the tile is padded up to it by mirroring (scipy's `reflect` rule), and the
//! padded part is dropped again when the maps are stitched, so it never reaches the score.

use crate::gaussian::reflect_index;
use crate::meta::Normalization;
use crate::preprocess::channel_affine;
use crate::{Error, Result};
use image::RgbImage;
use rayon::prelude::*;

/// Tile positions covering a `width`×`height` image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileGrid {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Tile side in pixels.
    pub tile: u32,
    /// Left edge of each tile column.
    pub xs: Vec<u32>,
    /// Top edge of each tile row.
    pub ys: Vec<u32>,
}

fn starts(len: u32, tile: u32) -> Vec<u32> {
    if len <= tile {
        return vec![0];
    }
    let mut v: Vec<u32> = (0..len / tile).map(|i| i * tile).collect();
    if !len.is_multiple_of(tile) {
        v.push(len - tile);
    }
    v
}

impl TileGrid {
    /// The grid for a `width`×`height` image and square tiles of side `tile`.
    ///
    /// # Panics
    /// When `tile` is zero.
    pub fn new(width: u32, height: u32, tile: u32) -> Self {
        assert!(tile > 0, "TileGrid: tile side must be positive");
        TileGrid {
            width,
            height,
            tile,
            xs: starts(width, tile),
            ys: starts(height, tile),
        }
    }

    /// Number of tiles.
    pub fn len(&self) -> usize {
        self.xs.len() * self.ys.len()
    }

    /// Whether the grid has no tile (never, for a non-empty image).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Top-left corner of tile `i`, tiles numbered row by row.
    pub fn origin(&self, i: usize) -> (u32, u32) {
        let cols = self.xs.len();
        (self.xs[i % cols], self.ys[i / cols])
    }

    /// Top-left corners of all tiles, row by row.
    pub fn origins(&self) -> Vec<(u32, u32)> {
        (0..self.len()).map(|i| self.origin(i)).collect()
    }

    /// Width and height of the image part a tile covers (smaller than the tile only on
    /// a padded side).
    pub fn valid_extent(&self) -> (u32, u32) {
        (self.width.min(self.tile), self.height.min(self.tile))
    }
}

/// Cuts the `tile`×`tile` square at (`x`, `y`) out of `img`, mirroring past the border.
pub fn extract_tile(img: &RgbImage, x: u32, y: u32, tile: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let mut out = RgbImage::new(tile, tile);
    let src = img.as_raw();
    for (ty, row) in out.as_mut().chunks_exact_mut(3 * tile as usize).enumerate() {
        let sy = reflect_index(y as isize + ty as isize, h as usize);
        for (tx, px) in row.chunks_exact_mut(3).enumerate() {
            let sx = reflect_index(x as isize + tx as isize, w as usize);
            let o = 3 * (sy * w as usize + sx);
            px.copy_from_slice(&src[o..o + 3]);
        }
    }
    out
}

/// Writes the tile at (`x`, `y`) straight into a CHW float buffer (`3·tile·tile` values)
/// with the given normalisation: the same values as [`extract_tile`] then
/// [`crate::preprocess::to_chw`], without the intermediate image.
pub fn extract_tile_chw(
    img: &RgbImage,
    x: u32,
    y: u32,
    tile: u32,
    norm: Normalization,
    out: &mut [f32],
) {
    let t = tile as usize;
    assert_eq!(
        out.len(),
        3 * t * t,
        "extract_tile_chw: buffer must hold 3×tile×tile floats"
    );
    let (w, h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let affine = channel_affine(norm);
    let (r, rest) = out.split_at_mut(t * t);
    let (g, b) = rest.split_at_mut(t * t);
    let inside_x = x as usize + t <= w;
    for ty in 0..t {
        let sy = reflect_index(y as isize + ty as isize, h);
        let row = &src[3 * sy * w..3 * (sy + 1) * w];
        let o = ty * t;
        for tx in 0..t {
            let sx = if inside_x {
                x as usize + tx
            } else {
                reflect_index(x as isize + tx as isize, w)
            };
            let px = &row[3 * sx..3 * sx + 3];
            r[o + tx] = px[0] as f32 * affine[0].0 + affine[0].1;
            g[o + tx] = px[1] as f32 * affine[1].0 + affine[1].1;
            b[o + tx] = px[2] as f32 * affine[2].0 + affine[2].1;
        }
    }
}

/// Builds a frame map from per-tile maps, taking the maximum where tiles overlap.
///
/// Tiles may be added in any order and in several batches, so a large frame never holds
/// all its tile maps at once. The padded part of a tile (on an image side shorter than
/// the tile) is ignored.
#[derive(Debug, Clone)]
pub struct Stitcher {
    grid: TileGrid,
    map: Vec<f32>,
    added: Vec<bool>,
}

impl Stitcher {
    /// An empty frame map for `grid`.
    pub fn new(grid: TileGrid) -> Self {
        let n = grid.width as usize * grid.height as usize;
        let tiles = grid.len();
        Stitcher {
            grid,
            map: vec![f32::NEG_INFINITY; n],
            added: vec![false; tiles],
        }
    }

    /// The grid being filled.
    pub fn grid(&self) -> &TileGrid {
        &self.grid
    }

    /// Merges the `tile`×`tile` map of tile `index` (row-major) into the frame map.
    pub fn add(&mut self, index: usize, tile_map: &[f32]) -> Result<()> {
        let t = self.grid.tile as usize;
        if index >= self.grid.len() {
            return Err(Error::Shape {
                op: "stitch",
                expected: format!("tile index < {}", self.grid.len()),
                got: index.to_string(),
            });
        }
        if tile_map.len() != t * t {
            return Err(Error::Shape {
                op: "stitch",
                expected: format!("{t}×{t} tile map"),
                got: format!("{} values", tile_map.len()),
            });
        }
        let (x0, y0) = self.grid.origin(index);
        let (vw, vh) = self.grid.valid_extent();
        let (x0, vw, vh, w) = (
            x0 as usize,
            vw as usize,
            vh as usize,
            self.grid.width as usize,
        );
        let rows = &mut self.map[y0 as usize * w..(y0 as usize + vh) * w];
        rows.par_chunks_mut(w).enumerate().for_each(|(ty, row)| {
            let src = &tile_map[ty * t..ty * t + vw];
            for (d, &s) in row[x0..x0 + vw].iter_mut().zip(src) {
                if s > *d {
                    *d = s;
                }
            }
        });
        self.added[index] = true;
        Ok(())
    }

    /// The finished frame map (`width·height`, row-major); fails when a tile is missing.
    pub fn finish(self) -> Result<Vec<f32>> {
        if let Some(i) = self.added.iter().position(|a| !a) {
            return Err(Error::Shape {
                op: "stitch",
                expected: format!("all {} tiles", self.grid.len()),
                got: format!("tile {i} missing"),
            });
        }
        Ok(self.map)
    }
}

/// Stitches all tile maps of `grid` (row-major order) into one frame map by maximum.
pub fn stitch(grid: &TileGrid, tile_maps: &[Vec<f32>]) -> Result<Vec<f32>> {
    if tile_maps.len() != grid.len() {
        return Err(Error::Shape {
            op: "stitch",
            expected: format!("{} tile maps", grid.len()),
            got: tile_maps.len().to_string(),
        });
    }
    let mut s = Stitcher::new(grid.clone());
    for (i, m) in tile_maps.iter().enumerate() {
        s.add(i, m)?;
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_frame_has_96_tiles() {
        let g = TileGrid::new(3072, 2048, 256);
        assert_eq!((g.xs.len(), g.ys.len(), g.len()), (12, 8, 96));
        assert_eq!(g.origin(13), (256, 256));
    }

    #[test]
    fn aitex_strip_has_16_tiles() {
        let g = TileGrid::new(4096, 256, 256);
        assert_eq!(g.len(), 16);
        assert_eq!(g.ys, vec![0]);
    }

    #[test]
    fn last_column_overlaps() {
        let g = TileGrid::new(3000, 2000, 256);
        assert_eq!(g.xs.len(), 12);
        assert_eq!(*g.xs.last().unwrap(), 3000 - 256);
        assert_eq!(g.xs[10], 2560);
        assert_eq!(*g.ys.last().unwrap(), 2000 - 256);
        assert_eq!(g.ys.len(), 8);
    }

    #[test]
    fn small_image_is_one_padded_tile() {
        let g = TileGrid::new(300, 200, 256);
        assert_eq!(g.xs, vec![0, 44]);
        assert_eq!(g.ys, vec![0]);
        assert_eq!(g.valid_extent(), (256, 200));
    }

    #[test]
    fn extract_mirrors_past_the_border() {
        let mut img = RgbImage::new(3, 2);
        for (x, y, p) in img.enumerate_pixels_mut() {
            *p = image::Rgb([x as u8, y as u8, 7]);
        }
        let t = extract_tile(&img, 0, 0, 5);
        let xs: Vec<u8> = (0..5).map(|x| t.get_pixel(x, 0).0[0]).collect();
        assert_eq!(xs, vec![0, 1, 2, 2, 1]);
        let ys: Vec<u8> = (0..5).map(|y| t.get_pixel(0, y).0[1]).collect();
        assert_eq!(ys, vec![0, 1, 1, 0, 0]);
        let mut chw = vec![0.0; 3 * 25];
        extract_tile_chw(&img, 0, 0, 5, Normalization::Lite0, &mut chw);
        let want = crate::preprocess::to_chw_vec(&t, Normalization::Lite0);
        assert_eq!(chw, want);
    }

    #[test]
    fn stitch_takes_max_and_drops_padding() {
        // 6×3 image, tile 4: columns at 0 and 2 (overlap 2..4), one padded row band.
        let g = TileGrid::new(6, 3, 4);
        assert_eq!(g.xs, vec![0, 2]);
        let a = vec![1.0; 16];
        let mut b = vec![0.5; 16];
        b[1] = 3.0; // tile 1, row 0, column 1 → frame (3, 0)
        b[15] = 9.0; // padded row 3: must not appear
        let m = stitch(&g, &[a, b]).unwrap();
        assert_eq!(m.len(), 18);
        assert_eq!(&m[0..6], &[1.0, 1.0, 1.0, 3.0, 0.5, 0.5]);
        assert!(m.iter().all(|&v| v < 9.0));
        assert!(stitch(&g, &[vec![0.0; 16]]).is_err());
    }
}
