//! The teacher-feature cache: a partly filled cache serves the same features as the teacher,
//! and training runs with no cache, a cache smaller than the data and a cache holding
//! everything end with the same weights (within float tolerance).

use candle_core::{Device, Tensor};
use fabric_train::checkpoint::{files, RunDir};
use fabric_train::config::TrainConfig;
use fabric_train::data;
use fabric_train::featcache::FeatureCache;
use fabric_train::trainer::{build_caches, build_model, train, TrainOptions};
use std::path::{Path, PathBuf};

/// An MVTec-layout category of `n` striped 256×64 grey images (four 64×64 tiles each).
fn category(dir: &Path, n: usize) -> PathBuf {
    let root = dir.join("cloth");
    let good = root.join("train").join("good");
    std::fs::create_dir_all(&good).unwrap();
    for k in 0..n as u32 {
        let img = image::GrayImage::from_fn(256, 64, |x, y| {
            let v = 100.0 + 50.0 * ((x + 3 * k) as f32 * 0.7).sin() + 30.0 * (y as f32 * 1.1).cos();
            let noise = ((x * 7919 + y * 104_729 + k * 31) % 17) as f32;
            image::Luma([(v + noise).clamp(0.0, 255.0) as u8])
        });
        img.save(good.join(format!("{k:03}.png"))).unwrap();
    }
    root
}

fn config(root: PathBuf, cache_mb: usize) -> TrainConfig {
    let mut cfg = TrainConfig::with_roots(vec![root]);
    cfg.teacher_weights = Some("random".into());
    cfg.image_size = 64;
    cfg.max_epochs = 2;
    cfg.seed = 7;
    cfg.feature_cache_mb = cache_mb;
    cfg
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn partial_cache_serves_the_teacher_features() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(category(tmp.path(), 4), 1);
    let dev = Device::Cpu;
    let d = data::load(&cfg).unwrap();
    let model = build_model(&cfg, &dev).unwrap();
    let shapes = model.teacher.feature_shapes(64, 64);
    let per_tile: usize = shapes.iter().map(|&(c, h, w)| c * h * w * 4).sum();
    assert!(d.train.len() >= 6, "{} training tiles", d.train.len());

    let cache = FeatureCache::build(&model.teacher, &d.train, 2, 3 * per_tile + 7, &dev).unwrap();
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.bytes(), 3 * per_tile);
    let empty = FeatureCache::build(&model.teacher, &d.train, 2, per_tile - 1, &dev).unwrap();
    assert!(empty.is_empty());

    // Cached only, uncached only, and mixed batches in shuffled order.
    for idx in [vec![2usize, 0], vec![5, 4], vec![4, 1, 5, 0, 2]] {
        let got = cache
            .features(&model.teacher, &d.train, &idx, &dev)
            .unwrap();
        let want = model
            .teacher
            .forward(&d.train.batch(&idx, &dev).unwrap())
            .unwrap();
        assert_eq!(got.len(), 4);
        for (l, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.dims(), w.dims(), "level {l}, tiles {idx:?}");
            let scale = w
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = max_abs_diff(g, w);
            assert!(
                d <= 1e-5 * scale.max(1.0),
                "level {l}, tiles {idx:?}: differs by {d}"
            );
        }
    }
}

#[test]
fn runs_over_the_cache_budget_match_the_uncached_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = category(tmp.path(), 10);
    let dev = Device::Cpu;

    // 1 MiB holds some of the training tiles but not all of them (nor the validation ones).
    let partial = config(root.clone(), 1);
    let d = data::load(&partial).unwrap();
    let model = build_model(&partial, &dev).unwrap();
    let caches = build_caches(&model, &d, &partial, &dev).unwrap();
    assert!(
        !caches.train.is_empty() && caches.train.len() < d.train.len(),
        "1 MiB should cache part of the {} training tiles, cached {}",
        d.train.len(),
        caches.train.len()
    );
    assert!(caches.val.len() < d.val.len());

    let quiet = TrainOptions {
        resume: false,
        quiet: true,
    };
    let runs: Vec<PathBuf> = [0usize, 1, 2048]
        .iter()
        .map(|&mb| {
            let out = tmp.path().join(format!("run{mb}"));
            let summary = train(&config(root.clone(), mb), &out, &quiet).unwrap();
            assert_eq!(summary.epochs, 2);
            out
        })
        .collect();

    let load = |dir: &Path| {
        let mut t: Vec<(String, Tensor)> = RunDir::open(dir)
            .unwrap()
            .read_last(&dev)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("adam."))
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let reference = load(&runs[0]);
    assert!(reference.len() > 50);
    for dir in &runs[1..] {
        let other = load(dir);
        let mut worst = 0f32;
        assert_eq!(other.len(), reference.len());
        for ((name, a), (name_b, b)) in reference.iter().zip(&other) {
            assert_eq!(name, name_b);
            let scale = a
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = max_abs_diff(a, b);
            worst = worst.max(d);
            assert!(
                d <= 1e-3 * scale.max(1e-3),
                "{}: {name} differs by {d} (scale {scale})",
                dir.display()
            );
        }
        assert!(dir.join(files::STATS).is_file());
        eprintln!(
            "{}: largest weight difference to the uncached run {worst:e}",
            dir.display()
        );
    }
}
