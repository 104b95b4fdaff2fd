//! The speed table in criterion form: one teacher + student session run on a prepared
//! batch of 256×256 f32 tiles (batch 1 and 16), and a whole 3072×2048 RGB8 frame through
//! the inspector (tiling, network, anomaly map, stitching, smoothing).
//!
//! It runs the tiny fixture model (tests/fixtures/tiny_model), whose network costs almost
//! nothing, so the frame bench measures what the pipeline adds around the network: a
//! slowdown there (a lost parallel loop, an extra copy of the features, a per-batch
//! allocation, a session option that adds per-run overhead) shows up here first. Set
//! `FABRIC_BENCH_MODEL` to an exported model folder to time a real network instead.
//! Without ONNX Runtime the benches are skipped with a message.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fabric_inspect::bench::random_input;
use fabric_inspect::engine::{ort_library_path, EngineOptions};
use fabric_inspect::inspector::{InspectOptions, Inspector};
use fabric_inspect::synth::{render_frame, FabricSpec, Weave};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

fn model_dir() -> (PathBuf, String) {
    match std::env::var_os("FABRIC_BENCH_MODEL").filter(|v| !v.is_empty()) {
        Some(p) => {
            let p = PathBuf::from(p);
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into());
            (p, name)
        }
        None => (
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_model"),
            "tiny_fixture".into(),
        ),
    }
}

fn load(threads: Option<usize>) -> Option<(Inspector, String)> {
    if let Err(e) = ort_library_path() {
        eprintln!("skipping session benches: {e}");
        return None;
    }
    let (dir, name) = model_dir();
    let options = InspectOptions {
        engine: EngineOptions {
            threads,
            ..EngineOptions::default()
        },
        ..InspectOptions::default()
    };
    match Inspector::load(&dir, options) {
        Ok(i) => Some((i, name)),
        Err(e) => {
            eprintln!("skipping session benches: {}: {e}", dir.display());
            None
        }
    }
}

fn session(c: &mut Criterion) {
    let Some((inspector, name)) = load(None) else {
        return;
    };
    let s = inspector.meta().input_size as usize;
    let mut group = c.benchmark_group("session");
    for batch in [1usize, 16] {
        let input = random_input(batch * 3 * s * s, 1);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(
            format!("{name}_teacher_student_b{batch}_{s}x{s}_f32"),
            |b| {
                b.iter(|| {
                    inspector
                        .engine()
                        .run(black_box(&input), batch, |t, st| Ok(t.len() + st.len()))
                        .expect("session run")
                })
            },
        );
    }
    group.finish();

    let frame = render_frame(&FabricSpec::preset(Weave::Plain), 3072, 2048, &[], 1).0;
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("{name}_frame_3072x2048_rgb8"), |b| {
        b.iter(|| {
            inspector
                .inspect_image(black_box(&frame))
                .expect("inspect frame")
                .score
        })
    });
    group.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
}

criterion_group! {
    name = benches;
    config = short();
    targets = session
}
criterion_main!(benches);
