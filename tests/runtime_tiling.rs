//! Tiling and stitching together: tiles cut from an image and stitched back by maximum
//! rebuild the image exactly, whatever the size (multiples, overlaps, padded sides).

use fabric_inspect::meta::Normalization;
use fabric_inspect::tiling::{extract_tile, extract_tile_chw, stitch, TileGrid};
use image::{Rgb, RgbImage};

fn pattern(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 7 + y * 3) as u8, (x ^ y) as u8, (y * 5) as u8])
    })
}

#[test]
fn grids_cover_the_paper_sizes() {
    for (w, h, tiles) in [
        (3072, 2048, 96),
        (3000, 2000, 96),
        (4096, 256, 16),
        (256, 256, 1),
        (300, 200, 2),
        (513, 255, 3),
    ] {
        let g = TileGrid::new(w, h, 256);
        assert_eq!(g.len(), tiles, "{w}×{h}");
        assert!(g.xs.iter().all(|&x| x + 256 <= w.max(256)));
        assert!(g.ys.iter().all(|&y| y + 256 <= h.max(256)));
    }
}

#[test]
fn stitched_tiles_rebuild_the_image() {
    let t = 16;
    for (w, h) in [(16, 16), (48, 32), (50, 37), (7, 40), (3, 3), (100, 5)] {
        let img = pattern(w, h);
        let g = TileGrid::new(w, h, t);
        let maps: Vec<Vec<f32>> = g
            .origins()
            .iter()
            .map(|&(x, y)| {
                extract_tile(&img, x, y, t)
                    .pixels()
                    .map(|p| p.0[0] as f32)
                    .collect()
            })
            .collect();
        let m = stitch(&g, &maps).unwrap();
        let want: Vec<f32> = img.pixels().map(|p| p.0[0] as f32).collect();
        assert_eq!(m, want, "{w}×{h}");
    }
}

#[test]
fn chw_tiles_equal_extracted_tiles() {
    let img = pattern(40, 9);
    let g = TileGrid::new(40, 9, 32);
    for (x, y) in g.origins() {
        let mut a = vec![0.0; 3 * 32 * 32];
        extract_tile_chw(&img, x, y, 32, Normalization::Imagenet, &mut a);
        let b = fabric_inspect::preprocess::to_chw_vec(
            &extract_tile(&img, x, y, 32),
            Normalization::Imagenet,
        );
        assert_eq!(a, b);
    }
}
