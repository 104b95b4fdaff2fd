//! Tiny training runs on a synthetic category: the loss falls, runs are bit-identical for a
//! seed, a resumed run equals an uninterrupted one, the best checkpoint loads back and
//! scores as stored, and an unreadable image is skipped.

use candle_core::Device;
use fabric_train::checkpoint::{self, files, load_model};
use fabric_train::config::TrainConfig;
use fabric_train::data;
use fabric_train::model::Rrd;
use fabric_train::trainer::{score_images, train, TrainOptions};
use std::path::{Path, PathBuf};

/// Writes an MVTec-layout category of `n` woven-looking 128×64 grey images (plus one
/// corrupt file) under `dir`.
fn synthetic_category(dir: &Path, n: usize) -> PathBuf {
    let root = dir.join("cloth");
    let good = root.join("train").join("good");
    std::fs::create_dir_all(&good).unwrap();
    for k in 0..n {
        let img = image::GrayImage::from_fn(128, 64, |x, y| {
            let warp = ((x as f32 * 0.9 + k as f32).sin() * 40.0) as i32;
            let weft = ((y as f32 * 1.3).cos() * 30.0) as i32;
            let noise = ((x * 7919 + y * 104_729 + k as u32 * 31) % 23) as i32;
            image::Luma([(128 + warp + weft + noise).clamp(0, 255) as u8])
        });
        img.save(good.join(format!("{k:03}.png"))).unwrap();
    }
    std::fs::write(good.join("999_corrupt.png"), b"not a png at all").unwrap();
    root
}

fn tiny_config(root: PathBuf, epochs: usize, seed: u64) -> TrainConfig {
    let mut cfg = TrainConfig::with_roots(vec![root]);
    cfg.teacher_weights = Some("random".into());
    cfg.image_size = 64;
    cfg.max_epochs = epochs;
    cfg.seed = seed;
    cfg
}

fn quiet() -> TrainOptions {
    TrainOptions {
        resume: false,
        quiet: true,
    }
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Scores the validation images of `cfg` with `model` (no position statistics) and checks
/// that the scores equal those stored in the run folder `run`.
fn assert_rescores_as_stored(model: &Rrd, cfg: &TrainConfig, run: &Path) {
    let loaded = data::load(cfg).unwrap();
    let set = loaded.val_for_scoring();
    let scores = score_images(model, set, cfg.input_mode, 8, &Device::Cpu, None).unwrap();
    let stored = checkpoint::load_stats(run).unwrap();
    let stored: Vec<f32> = stored.scores.iter().map(|s| s.score).collect();
    assert_eq!(scores, stored);
}

#[test]
fn tiny_run_lowers_loss_and_writes_the_run_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synthetic_category(tmp.path(), 6);
    let out = tmp.path().join("run");
    let summary = train(&tiny_config(root, 3, 1), &out, &quiet()).unwrap();
    for f in [
        files::CONFIG,
        files::SPLIT,
        files::BEST,
        files::LAST,
        files::STATE,
        files::CURVE,
        files::STATS,
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let state = checkpoint::load_state(&out).unwrap();
    assert_eq!(state.curve.len(), 3);
    let first = state.curve[0].train_loss;
    let last = state.curve[2].train_loss;
    assert!(last < first, "training loss did not fall: {first} → {last}");
    let csv = std::fs::read_to_string(out.join(files::CURVE)).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.starts_with("epoch,train_loss,val_loss,lr,seconds,best"));

    // The corrupt file was skipped, not fatal: 6 readable images, split 4/2 (round(6·0.3)=2).
    let split = checkpoint::RunDir::open(&out)
        .unwrap()
        .read_split()
        .unwrap();
    assert_eq!(split.train.len() + split.val.len(), 7);
    let stats = checkpoint::load_stats(&out).unwrap();
    let readable_val = split
        .val
        .iter()
        .filter(|p| !p.to_string_lossy().contains("corrupt"))
        .count();
    assert_eq!(stats.stats.count, readable_val);
    assert!(stats.threshold >= stats.stats.max);
    assert_eq!(summary.best_epoch, state.best_epoch);
}

#[test]
fn best_checkpoint_loads_back_and_scores_as_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synthetic_category(tmp.path(), 6);
    let out = tmp.path().join("run");
    train(&tiny_config(root, 2, 3), &out, &quiet()).unwrap();

    let (cfg, model) = load_model(&out, &Device::Cpu).unwrap();
    assert_rescores_as_stored(&model, &cfg, &out);
}

#[test]
fn same_seed_gives_bit_identical_checkpoints() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synthetic_category(tmp.path(), 5);
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    train(&tiny_config(root.clone(), 2, 11), &a, &quiet()).unwrap();
    train(&tiny_config(root.clone(), 2, 11), &b, &quiet()).unwrap();
    train(&tiny_config(root, 2, 12), &c, &quiet()).unwrap();
    assert!(read(a.join(files::BEST)) == read(b.join(files::BEST)));
    assert!(read(a.join(files::LAST)) == read(b.join(files::LAST)));
    assert!(read(a.join(files::BEST)) != read(c.join(files::BEST)));
}

#[test]
fn resumed_run_equals_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synthetic_category(tmp.path(), 5);
    let whole = tmp.path().join("whole");
    let parts = tmp.path().join("parts");
    train(&tiny_config(root.clone(), 3, 5), &whole, &quiet()).unwrap();

    // A run that stopped after one epoch, then resumed up to three.
    train(&tiny_config(root.clone(), 1, 5), &parts, &quiet()).unwrap();
    let again = train(&tiny_config(root.clone(), 1, 5), &parts, &quiet());
    assert!(again.unwrap_err().to_string().contains("--resume"));
    let resume = TrainOptions {
        resume: true,
        quiet: true,
    };
    let mut changed = tiny_config(root.clone(), 3, 5);
    changed.optimizer.lr = 0.1;
    let e = train(&changed, &parts, &resume).unwrap_err().to_string();
    assert!(e.contains("config differs"), "{e}");
    train(&tiny_config(root, 3, 5), &parts, &resume).unwrap();

    assert!(read(whole.join(files::LAST)) == read(parts.join(files::LAST)));
    assert!(read(whole.join(files::BEST)) == read(parts.join(files::BEST)));
    let (sw, sp) = (
        checkpoint::load_state(&whole).unwrap(),
        checkpoint::load_state(&parts).unwrap(),
    );
    let losses = |s: &checkpoint::TrainState| {
        s.curve
            .iter()
            .map(|r| (r.train_loss, r.val_loss, r.lr))
            .collect::<Vec<_>>()
    };
    assert_eq!(losses(&sw), losses(&sp));
    assert_eq!(sw.steps, sp.steps);
}

#[test]
fn real_fabric_strips_cut_into_sixteen_tiles() {
    let Some(data) = std::env::var_os("FABRIC_DATA")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
    else {
        eprintln!("skipping real_fabric_strips_cut_into_sixteen_tiles: FABRIC_DATA not set");
        return;
    };
    let root = data.join("aitex").join("fabric00");
    let mut cfg = TrainConfig::with_roots(vec![root]);
    cfg.limit = Some(3);
    cfg.blur.enabled = false;
    let d = data::load(&cfg).unwrap();
    for s in d.train.sources.iter().chain(&d.val.sources) {
        assert_eq!((s.width, s.height), (4096, 256), "{}", s.path.display());
        assert_eq!(s.tiles.len(), 16, "{}", s.path.display());
    }
    assert_eq!(d.train.sources.len() + d.val.sources.len(), 3);
    assert!(d.val_clean.is_none());
}

/// Opt-in check of a finished run folder (`FABRIC_RUN_DIR`, e.g. the fabric00 run): its best
/// checkpoint loads back and re-scores the validation images exactly as stored.
#[test]
fn stored_run_rescores_identically() {
    let Some(dir) = std::env::var_os("FABRIC_RUN_DIR")
        .map(PathBuf::from)
        .filter(|p| p.join(files::STATS).is_file())
    else {
        eprintln!("skipping stored_run_rescores_identically: FABRIC_RUN_DIR not set");
        return;
    };
    let dev = Device::Cpu;
    let (mut cfg, model) = load_model(&dir, &dev).unwrap();
    // Relative roots were taken from the repository root, where `fabric-train` runs.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for r in &mut cfg.roots {
        if r.is_relative() {
            *r = repo.join(&*r);
        }
    }
    assert_rescores_as_stored(&model, &cfg, &dir);
}

#[test]
fn position_statistics_are_trained_exported_and_applied_by_the_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synthetic_category(tmp.path(), 6);
    let out = tmp.path().join("run");
    let mut cfg = tiny_config(root, 2, 5);
    cfg.position_stats = true;
    train(&cfg, &out, &quiet()).unwrap();

    // The run folder holds the statistics of the readable training images (128×64 each).
    let stats = checkpoint::load_stats(&out).unwrap();
    let pos = stats
        .position
        .clone()
        .expect("stats.yaml names the statistics");
    assert_eq!((pos.width, pos.height), (128, 64));
    let split = checkpoint::RunDir::open(&out)
        .unwrap()
        .read_split()
        .unwrap();
    let readable_train = split
        .train
        .iter()
        .filter(|p| !p.to_string_lossy().contains("corrupt"))
        .count();
    assert_eq!(pos.images, readable_train);
    let p = fabric_inspect::position::PositionStats::read(&out.join(&pos.file), 128, 64).unwrap();

    // Validation scores are z-scores: rescoring with the stored statistics gives them back,
    // and they differ from the raw maxima.
    let dev = Device::Cpu;
    let (cfg2, model) = load_model(&out, &dev).unwrap();
    let loaded = data::load(&cfg2).unwrap();
    let set = loaded.val_for_scoring();
    let z = score_images(&model, set, cfg2.input_mode, 8, &dev, Some(&p)).unwrap();
    let raw = score_images(&model, set, cfg2.input_mode, 8, &dev, None).unwrap();
    let stored: Vec<f32> = stats.scores.iter().map(|s| s.score).collect();
    assert_eq!(z, stored);
    assert_ne!(z, raw);

    // The export carries them, and model.yaml names them.
    let model_dir = tmp.path().join("model");
    let (meta, _) = fabric_train::export::export_run(&out, &model_dir).unwrap();
    assert_eq!(meta.position, Some(pos.clone()));
    let reloaded = fabric_inspect::meta::ModelMeta::load(&model_dir).unwrap();
    assert_eq!(reloaded.position, Some(pos.clone()));
    assert_eq!(
        std::fs::read(model_dir.join(&pos.file)).unwrap(),
        std::fs::read(out.join(&pos.file)).unwrap()
    );

    // Exporting again over the same folder replaces it.
    fabric_train::export::export_run(&out, &model_dir).unwrap();

    // A damaged statistics file makes the export fail and leave nothing behind.
    let bytes = std::fs::read(out.join(&pos.file)).unwrap();
    std::fs::write(out.join(&pos.file), &bytes[..bytes.len() - 8]).unwrap();
    let e = fabric_train::export::export_run(&out, &tmp.path().join("model2")).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
    assert!(!tmp.path().join("model2").exists());
    std::fs::write(out.join(&pos.file), &bytes).unwrap();

    // The runtime applies them: an image of the training size scores like the trainer's
    // z-score, another size is refused with the reason.
    if let Err(e) = fabric_inspect::engine::ort_library_path() {
        eprintln!("skipping the runtime half: {e}");
        return;
    }
    let insp = fabric_inspect::inspector::Inspector::load(
        &model_dir,
        fabric_inspect::inspector::InspectOptions::default(),
    )
    .unwrap();
    assert!(insp.position().is_some());
    let first = &stats.scores[0];
    let got = insp.inspect_path(&first.path).unwrap().score;
    assert!(
        (got - first.score).abs() <= 1e-3 * first.score.abs().max(1.0),
        "runtime z-score {got} vs trainer {}",
        first.score
    );
    let other = image::RgbImage::from_pixel(96, 64, image::Rgb([120, 120, 120]));
    let e = insp.inspect_image(&other).unwrap_err().to_string();
    assert!(e.contains("128×64") && e.contains("96×64"), "{e}");
}

#[test]
fn position_statistics_refuse_mixed_sizes_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synthetic_category(tmp.path(), 6);
    let odd = image::GrayImage::from_pixel(96, 64, image::Luma([120]));
    odd.save(root.join("train/good/050_odd.png")).unwrap();
    let out = tmp.path().join("run");
    let mut cfg = tiny_config(root, 2, 5);
    cfg.position_stats = true;
    let e = train(&cfg, &out, &quiet()).unwrap_err().to_string();
    assert!(e.contains("050_odd.png") && e.contains("96×64"), "{e}");
    assert!(e.contains("position_stats: false"), "{e}");
    // Refused before the first epoch: no checkpoint was written.
    assert!(!out.join(files::BEST).exists());
}

#[test]
fn resume_keeps_the_split_and_a_locked_run_folder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = synthetic_category(tmp.path(), 5);
    let out = tmp.path().join("run");
    train(&tiny_config(root.clone(), 1, 3), &out, &quiet()).unwrap();
    let run = checkpoint::RunDir::open(&out).unwrap();
    let before = run.read_split().unwrap();

    // While another training holds the folder, a second one is refused.
    let held = run.lock().unwrap();
    let resume = TrainOptions {
        resume: true,
        quiet: true,
    };
    let e = train(&tiny_config(root.clone(), 2, 3), &out, &resume)
        .unwrap_err()
        .to_string();
    assert!(e.contains("in use by another training"), "{e}");
    drop(held);

    // Images added to the folder before resuming would redraw the split: the run keeps its own.
    let good = root.join("train").join("good");
    for k in 0..4 {
        std::fs::copy(
            good.join(format!("{k:03}.png")),
            good.join(format!("{k:03}_new.png")),
        )
        .unwrap();
    }
    let mut cfg = tiny_config(root.clone(), 2, 3);
    assert_ne!(data::make_split(&cfg).unwrap().val, before.val);
    train(&cfg, &out, &resume).unwrap();
    let after = run.read_split().unwrap();
    assert_eq!((after.train, after.val), (before.train, before.val));

    // A root listed twice counts once.
    cfg.roots.push(root.clone());
    let twice = data::make_split(&cfg).unwrap();
    cfg.roots.pop();
    let once = data::make_split(&cfg).unwrap();
    assert_eq!((twice.train, twice.val), (once.train, once.val));
}

#[cfg(unix)]
#[test]
fn an_image_path_that_is_not_utf8_is_skipped() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = synthetic_category(tmp.path(), 4);
    let good = root.join("train").join("good");
    let odd = good.join(std::ffi::OsStr::from_bytes(b"odd\xff.png"));
    std::fs::copy(good.join("000.png"), &odd).unwrap();
    let split = data::make_split(&tiny_config(root.clone(), 1, 1)).unwrap();
    assert_eq!(split.train.len() + split.val.len(), 5, "{split:?}");
    assert!(split
        .train
        .iter()
        .chain(&split.val)
        .all(|p| p.to_str().is_some()));
    train(&tiny_config(root, 1, 1), &tmp.path().join("run"), &quiet()).unwrap();
}
