//! Gaussian smoothing (σ = 4, 33 taps, scipy `reflect` borders) of one 3072×2048 f32
//! frame map, the last stage of every frame.
//!
//! Catches a slowdown of the separable filter: a tap loop that stops vectorising (e.g. a
//! per-pixel dot product whose sum cannot be reordered), a column pass with strided
//! memory access, a lost parallel loop, or a per-call allocation that grows.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fabric_inspect::gaussian::{gaussian_smooth, gaussian_smooth_into};
use std::hint::black_box;
use std::time::Duration;

const W: usize = 3072;
const H: usize = 2048;

fn gaussian(c: &mut Criterion) {
    let map: Vec<f32> = (0..W * H)
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 * 1e-3)
        .collect();
    let mut out = vec![0.0f32; W * H];
    let mut group = c.benchmark_group("gaussian");
    group.throughput(Throughput::Elements((W * H) as u64));
    group.bench_function("smooth_3072x2048_f32_sigma4", |b| {
        b.iter(|| gaussian_smooth(black_box(&map), W, H, 4.0))
    });
    group.bench_function("smooth_into_3072x2048_f32_sigma4", |b| {
        b.iter(|| gaussian_smooth_into(black_box(&map), W, H, 4.0, &mut out))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = gaussian
}
criterion_main!(benches);
