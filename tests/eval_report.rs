//! The evaluator on a temporary MVTec tree with a scorer that needs no network: the map is
//! the image's brightness, so the expected figures follow from the pixels written.

use fabric_inspect::dataset::Category;
use fabric_inspect::eval::{evaluate, EvalOptions, ScoredImage, Scorer};
use fabric_inspect::{Error, Result};
use image::{GrayImage, Luma};
use std::path::{Path, PathBuf};

/// Map = red channel / 255, score = its maximum; optionally resizes to a fixed side first
/// (like the runtime's `resize` mode).
struct Brightness {
    resize_to: Option<u32>,
    calls: usize,
}

impl Scorer for Brightness {
    fn score_batch(&mut self, paths: &[PathBuf]) -> Vec<Result<ScoredImage>> {
        self.calls += 1;
        paths
            .iter()
            .map(|p| {
                let img = fabric_inspect::imageio::load_rgb(p, 1 << 24)?;
                let img = match self.resize_to {
                    Some(s) => {
                        image::imageops::resize(&img, s, s, image::imageops::FilterType::Nearest)
                    }
                    None => img,
                };
                let map: Vec<f32> = img.pixels().map(|px| px.0[0] as f32 / 255.0).collect();
                let score = map.iter().copied().fold(f32::MIN, f32::max);
                Ok(ScoredImage {
                    score,
                    map,
                    width: img.width() as usize,
                    height: img.height() as usize,
                })
            })
            .collect()
    }
}

/// A 16×16 grey image, background `bg`, with a `s`×`s` square of value `fg` at (4, 4).
fn square(bg: u8, fg: u8, s: u32) -> GrayImage {
    GrayImage::from_fn(16, 16, |x, y| {
        if (4..4 + s).contains(&x) && (4..4 + s).contains(&y) {
            Luma([fg])
        } else {
            Luma([bg])
        }
    })
}

fn save(img: &GrayImage, p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    img.save(p).unwrap();
}

/// train: 1 image; test/good: 3 flat images (20, 40, 60); test/spot: 2 images with a bright
/// square exactly where the mask says (score 200/255 and 180/255).
fn build_tree(root: &Path, with_masks: bool) {
    save(&square(30, 30, 0), &root.join("train/good/000.png"));
    for (i, v) in [20u8, 40, 60].iter().enumerate() {
        save(
            &square(*v, *v, 0),
            &root.join(format!("test/good/{i:03}.png")),
        );
    }
    save(&square(50, 200, 4), &root.join("test/spot/000.png"));
    save(&square(10, 180, 4), &root.join("test/spot/001.png"));
    if with_masks {
        for i in 0..2 {
            save(
                &square(0, 255, 4),
                &root.join(format!("ground_truth/spot/{i:03}_mask.png")),
            );
        }
    }
}

#[test]
fn perfect_separation_on_temp_tree() {
    let d = tempfile::tempdir().unwrap();
    build_tree(d.path(), true);
    let cat = Category::open(d.path()).unwrap();
    let mut scorer = Brightness {
        resize_to: None,
        calls: 0,
    };
    let opts = EvalOptions {
        threshold: 0.5,
        threshold_source: "test".into(),
        batch: 2,
        bins: 4096,
        ..EvalOptions::default()
    };
    let mut seen = 0;
    let r = evaluate(&cat, &mut scorer, &opts, &mut |_| seen += 1).unwrap();
    assert_eq!(seen, 5);
    assert_eq!(scorer.calls, 3, "5 images in batches of 2");
    assert!(r.complete());
    assert_eq!(r.image_auroc, Some(1.0));
    // Every defect pixel (≥ 180) is above every normal pixel (≤ 60): perfect pixel metrics.
    assert!((r.pixel_auroc.unwrap() - 1.0).abs() < 1e-9);
    assert!((r.au_pro.unwrap() - 1.0).abs() < 1e-9);
    assert_eq!(r.gt_regions, Some(2));
    // Normalised scores: normal ≤ (60−20)/180 = 0.22, defective ≥ 160/180: wide gap.
    assert_eq!(r.coverage.len(), 3);
    assert!(r.coverage.iter().all(|c| c.coverage == 1.0));
    assert_eq!(r.threshold.false_alarms, 0);
    assert_eq!(r.threshold.misses, 0);
    assert_eq!((r.threshold.normal, r.threshold.defective), (3, 2));
    let names: Vec<&str> = r.per_defect.iter().map(|d| d.defect.as_str()).collect();
    assert_eq!(names, vec!["good", "spot"]);
    let good = &r.per_defect[0];
    assert_eq!(good.count, 3);
    assert!((good.mean_score - 40.0 / 255.0).abs() < 1e-6);
    let spot = &r.per_defect[1];
    assert!((spot.mean_score - 190.0 / 255.0).abs() < 1e-6);
    assert_eq!(spot.flagged, 2);
    let table = r.to_table();
    assert!(
        table.contains("image AUROC") && table.contains("1.0000"),
        "{table}"
    );
    assert!(table.contains("min-max normalised"), "{table}");
    // JSON round trip.
    let j = serde_json::to_string(&r).unwrap();
    let back: fabric_inspect::eval::EvalReport = serde_json::from_str(&j).unwrap();
    assert_eq!(back, r);
}

#[test]
fn threshold_counts_false_alarms_and_misses() {
    let d = tempfile::tempdir().unwrap();
    build_tree(d.path(), false);
    let cat = Category::open(d.path()).unwrap();
    let mut scorer = Brightness {
        resize_to: None,
        calls: 0,
    };
    // 40/255 < 0.2 < 60/255 flags the brightest normal; later 180/255 ≤ t misses one defect.
    let opts = EvalOptions {
        threshold: 0.2,
        threshold_source: "test".into(),
        ..EvalOptions::default()
    };
    let r = evaluate(&cat, &mut scorer, &opts, &mut |_| {}).unwrap();
    assert_eq!(r.threshold.false_alarms, 1);
    assert_eq!(r.threshold.misses, 0);
    let opts = EvalOptions {
        threshold: 190.0 / 255.0,
        ..opts
    };
    let r = evaluate(&cat, &mut scorer, &opts, &mut |_| {}).unwrap();
    assert_eq!(r.threshold.false_alarms, 0);
    assert_eq!(r.threshold.misses, 1);
    // No masks: pixel metrics absent, with a note saying why.
    assert_eq!(r.pixel_auroc, None);
    assert_eq!(r.au_pro, None);
    assert!(r.notes.iter().any(|n| n.contains("mask")), "{:?}", r.notes);
    assert!(r.to_table().contains("—"));
}

#[test]
fn masks_follow_the_map_size_in_resize_mode() {
    let d = tempfile::tempdir().unwrap();
    build_tree(d.path(), true);
    let cat = Category::open(d.path()).unwrap();
    // Maps are 64×64 (upscaled by nearest); the 16×16 masks are resized the same way, so
    // the pixel metrics stay perfect.
    let mut scorer = Brightness {
        resize_to: Some(64),
        calls: 0,
    };
    let opts = EvalOptions {
        threshold: 0.5,
        ..EvalOptions::default()
    };
    let r = evaluate(&cat, &mut scorer, &opts, &mut |_| {}).unwrap();
    assert!((r.pixel_auroc.unwrap() - 1.0).abs() < 1e-9);
    assert!((r.au_pro.unwrap() - 1.0).abs() < 1e-9);
}

#[test]
fn corrupt_images_are_reported_and_skipped() {
    let d = tempfile::tempdir().unwrap();
    build_tree(d.path(), true);
    std::fs::write(d.path().join("test/good/003.png"), b"not a png").unwrap();
    // A corrupt mask also removes its image from every figure.
    std::fs::write(d.path().join("ground_truth/spot/001_mask.png"), b"broken").unwrap();
    let cat = Category::open(d.path()).unwrap();
    let mut scorer = Brightness {
        resize_to: None,
        calls: 0,
    };
    let opts = EvalOptions {
        threshold: 0.5,
        ..EvalOptions::default()
    };
    let r = evaluate(&cat, &mut scorer, &opts, &mut |_| {}).unwrap();
    assert!(!r.complete());
    let failed: Vec<String> = r
        .failed
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(failed, vec!["003.png", "001.png"]);
    assert!(
        r.failed[0].error.contains("003.png"),
        "{}",
        r.failed[0].error
    );
    assert!(
        r.failed[1].error.contains("001_mask.png"),
        "{}",
        r.failed[1].error
    );
    assert_eq!((r.threshold.normal, r.threshold.defective), (3, 1));
    assert_eq!(r.gt_regions, Some(1));
    assert_eq!(r.image_auroc, Some(1.0));
    assert!(r.to_table().contains("could not be scored"));
}

#[test]
fn one_class_only_gives_absent_metrics_with_a_note() {
    let d = tempfile::tempdir().unwrap();
    build_tree(d.path(), false);
    std::fs::remove_dir_all(d.path().join("test/spot")).unwrap();
    let cat = Category::open(d.path()).unwrap();
    let mut scorer = Brightness {
        resize_to: None,
        calls: 0,
    };
    let r = evaluate(&cat, &mut scorer, &EvalOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(r.image_auroc, None);
    assert!(r.coverage.is_empty());
    assert_eq!((r.pixel_auroc, r.au_pro, r.gt_regions), (None, None, None));
    // The notes give the real reason: there are no defective images (not missing masks).
    assert_eq!(r.notes.len(), 2, "{:?}", r.notes);
    assert!(
        r.notes[0].starts_with("image AUROC and coverage absent")
            && r.notes[0].contains("no defective images"),
        "{:?}",
        r.notes
    );
    assert!(
        r.notes[1].starts_with("pixel AUROC and AU-PRO absent")
            && r.notes[1].contains("no defective images"),
        "{:?}",
        r.notes
    );
    assert!(r.notes.iter().all(|n| !n.contains("mask")), "{:?}", r.notes);
    let table = r.to_table();
    assert!(!table.to_lowercase().contains("nan"), "{table}");

    // Defective images only (with masks): image AUROC absent for the other class, while
    // pixel metrics still compare defect and normal pixels inside the defective images.
    let d2 = tempfile::tempdir().unwrap();
    build_tree(d2.path(), true);
    std::fs::remove_dir_all(d2.path().join("test/good")).unwrap();
    let cat2 = Category::open(d2.path()).unwrap();
    let r = evaluate(&cat2, &mut scorer, &EvalOptions::default(), &mut |_| {}).unwrap();
    assert_eq!(r.image_auroc, None);
    assert!(r.coverage.is_empty());
    assert!(
        r.notes.len() == 1 && r.notes[0].contains("no normal images"),
        "{:?}",
        r.notes
    );
    assert!((r.pixel_auroc.unwrap() - 1.0).abs() < 1e-9);

    // No test folder at all: an error naming it.
    std::fs::remove_dir_all(d.path().join("test")).unwrap();
    let cat = Category::open(d.path()).unwrap();
    let e = evaluate(&cat, &mut scorer, &EvalOptions::default(), &mut |_| {}).unwrap_err();
    assert!(matches!(e, Error::Dataset { .. }));
    assert!(e.to_string().contains("test"), "{e}");
}
