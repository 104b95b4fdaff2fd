//! The unsmoothed anomaly maps of one batch: 32 tiles of EfficientNet-Lite0-shaped f32
//! features (T0 16×64×64, T1 24×64×64, T2 40×32×32, T3 112×16×16, random values) →
//! 32 maps of 256×256 (per-pixel 1 − cos, layer weights, bilinear upsampling, sum); and
//! the same for ResNet34-shaped features (64×64×64, 64×64×64, 128×32×32, 256×16×16).
//!
//! Catches a slowdown of the per-tile post-processing that runs after every network
//! batch: a channel loop that stops vectorising, per-item allocations, a per-pixel
//! upsampling that grows, or the batch items no longer running in parallel.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fabric_inspect::anomaly::{anomaly_maps_into, default_layer_weights, FeatureView};
use fabric_inspect::bench::random_input;
use std::hint::black_box;
use std::time::Duration;

const N: usize = 32;
const OUT: usize = 256;

fn views<'a>(data: &'a [Vec<f32>], shapes: &[(usize, usize, usize)]) -> Vec<FeatureView<'a>> {
    data.iter()
        .zip(shapes)
        .map(|(v, &(ch, h, w))| FeatureView::new(v, [N, ch, h, w]).expect("view"))
        .collect()
}

fn bench_shapes(c: &mut Criterion, name: &str, shapes: &[(usize, usize, usize)]) {
    let t: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(ch, h, w))| random_input(N * ch * h * w, 10 + i as u64))
        .collect();
    let s: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(ch, h, w))| random_input(N * ch * h * w, 20 + i as u64))
        .collect();
    let (tv, sv) = (views(&t, shapes), views(&s, shapes));
    let weights =
        default_layer_weights(&shapes.iter().map(|&(_, h, w)| (h, w)).collect::<Vec<_>>());
    let mut out = vec![0.0f32; N * OUT * OUT];
    let mut group = c.benchmark_group("anomaly");
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function(format!("maps_b{N}_{name}_to_{OUT}x{OUT}_f32"), |b| {
        b.iter(|| {
            anomaly_maps_into(black_box(&tv), black_box(&sv), &weights, OUT, OUT, &mut out)
                .expect("anomaly maps")
        })
    });
    group.finish();
}

fn anomaly(c: &mut Criterion) {
    bench_shapes(
        c,
        "lite0",
        &[(16, 64, 64), (24, 64, 64), (40, 32, 32), (112, 16, 16)],
    );
    bench_shapes(
        c,
        "resnet34",
        &[(64, 64, 64), (64, 64, 64), (128, 32, 32), (256, 16, 16)],
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = anomaly
}
criterion_main!(benches);
