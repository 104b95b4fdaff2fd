//! Tiling of a 3072×2048 RGB8 camera frame: cutting its 96 tiles into normalised CHW f32
//! network input (as the inspector does, in parallel), and stitching 96 tile maps of
//! 256×256 f32 back into the frame map by maximum.
//!
//! Catches a slowdown in pre-processing (per-pixel mirror lookups on interior tiles, a
//! lost parallel loop, an intermediate image per tile) and in stitching (a serial or
//! cache-unfriendly merge).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fabric_inspect::meta::Normalization;
use fabric_inspect::synth::{render_frame, FabricSpec, Weave};
use fabric_inspect::tiling::{extract_tile_chw, Stitcher, TileGrid};
use rayon::prelude::*;
use std::hint::black_box;
use std::time::Duration;

const W: u32 = 3072;
const H: u32 = 2048;
const TILE: u32 = 256;

fn tiling(c: &mut Criterion) {
    let frame = render_frame(&FabricSpec::preset(Weave::Twill), W, H, &[], 3).0;
    let grid = TileGrid::new(W, H, TILE);
    let origins = grid.origins();
    let t = TILE as usize;
    let in_len = 3 * t * t;
    let mut input = vec![0.0f32; origins.len() * in_len];

    let mut group = c.benchmark_group("tiling");
    group.throughput(Throughput::Elements(origins.len() as u64));
    group.bench_function("extract_chw_3072x2048_rgb8_to_f32", |b| {
        b.iter(|| {
            input
                .par_chunks_mut(in_len)
                .zip(origins.par_iter())
                .for_each(|(buf, &(x, y))| {
                    extract_tile_chw(black_box(&frame), x, y, TILE, Normalization::Imagenet, buf)
                });
        })
    });

    let maps: Vec<Vec<f32>> = (0..origins.len())
        .map(|i| {
            (0..t * t)
                .map(|k| ((k * 7 + i * 13) % 101) as f32)
                .collect()
        })
        .collect();
    group.bench_function("stitch_96_tiles_3072x2048_f32", |b| {
        b.iter(|| {
            let mut s = Stitcher::new(grid.clone());
            for (i, m) in maps.iter().enumerate() {
                s.add(i, black_box(m)).expect("stitch");
            }
            s.finish().expect("finish").len()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = tiling
}
criterion_main!(benches);
