//! The inspection pipeline on a tiny fixture model (tests/fixtures/tiny_model) against
//! reference maps computed independently with numpy, onnxruntime and scipy by
//! `make_tiny_model.py` beside the fixture.

use fabric_inspect::engine::{ort_library_path, Provider};
use fabric_inspect::imageio::load_rgb;
use fabric_inspect::inspector::{InspectOptions, Inspector, Verdict};
use fabric_inspect::meta::{InputMode, ModelMeta};
use fabric_inspect::preprocess::resize_exact;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_model")
}

fn ort_available(test: &str) -> bool {
    std::env::set_var(
        "XDG_CACHE_HOME",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/xdg-cache"),
    );
    match ort_library_path() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            false
        }
    }
}

fn options(batch: usize) -> InspectOptions {
    InspectOptions {
        batch,
        ..InspectOptions::default()
    }
}

#[derive(serde::Deserialize)]
struct Golden {
    image: String,
    width: u32,
    height: u32,
    score: f32,
    peak: [usize; 2],
    sample_xs: Vec<usize>,
    sample_ys: Vec<usize>,
    samples: Vec<f32>,
}

fn goldens() -> Vec<Golden> {
    let text = std::fs::read_to_string(fixture().join("golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn maps_and_scores_match_the_reference() {
    if !ort_available("maps_and_scores_match_the_reference") {
        return;
    }
    // Batch 4 makes the 6-tile frame end in a partial batch of 2.
    let inspector = Inspector::load(&fixture(), options(4)).unwrap();
    assert_eq!(inspector.provider(), Provider::Cpu);
    for g in goldens() {
        let img = load_rgb(&fixture().join(&g.image), 1 << 30).unwrap();
        let r = inspector.inspect_image(&img).unwrap();
        assert_eq!((r.width, r.height), (g.width, g.height));
        assert_eq!(
            (r.map.width, r.map.height),
            (g.width as usize, g.height as usize)
        );
        let tol = 1e-4 * g.score;
        assert!(
            (r.score - g.score).abs() <= tol,
            "{}: score {} vs reference {}",
            g.image,
            r.score,
            g.score
        );
        let mut worst = 0.0f32;
        let mut k = 0;
        for &y in &g.sample_ys {
            for &x in &g.sample_xs {
                let v = r.map.data[y * r.map.width + x];
                worst = worst.max((v - g.samples[k]).abs());
                k += 1;
            }
        }
        assert!(
            worst <= tol,
            "{}: map differs by {worst} (tolerance {tol})",
            g.image
        );
        let at_ref_peak = r.map.data[g.peak[1] * r.map.width + g.peak[0]];
        assert!(
            (at_ref_peak - r.score).abs() <= tol,
            "{}: peak {:?} vs reference {:?}",
            g.image,
            r.peak,
            g.peak
        );
        assert_eq!(r.map.data[r.peak.1 * r.map.width + r.peak.0], r.score);
        assert_eq!(r.threshold, 0.05);
        assert_eq!(r.verdict, Verdict::Ok);
    }
}

#[test]
fn batch_size_does_not_change_the_map() {
    if !ort_available("batch_size_does_not_change_the_map") {
        return;
    }
    let img = load_rgb(&fixture().join("frame_600x300.png"), 1 << 30).unwrap();
    let a = Inspector::load(&fixture(), options(1))
        .unwrap()
        .inspect_image(&img)
        .unwrap();
    let b = Inspector::load(&fixture(), options(32))
        .unwrap()
        .inspect_image(&img)
        .unwrap();
    assert_eq!(a.tiles, 6);
    let worst = a
        .map
        .data
        .iter()
        .zip(&b.map.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-5 * a.score, "batch 1 vs 32 differ by {worst}");
    assert!(a.timing.network > std::time::Duration::ZERO);
}

#[test]
fn threshold_override_flips_the_verdict() {
    if !ort_available("threshold_override_flips_the_verdict") {
        return;
    }
    let img = load_rgb(&fixture().join("frame_256x256.png"), 1 << 30).unwrap();
    let mut o = options(8);
    o.threshold = Some(1e-6);
    let r = Inspector::load(&fixture(), o)
        .unwrap()
        .inspect_image(&img)
        .unwrap();
    assert!(r.is_defective);
    assert_eq!(r.verdict, Verdict::Defect);
    assert_eq!(r.threshold, 1e-6);
}

#[test]
fn resize_mode_scores_the_resized_image() {
    if !ort_available("resize_mode_scores_the_resized_image") {
        return;
    }
    let img = load_rgb(&fixture().join("frame_600x300.png"), 1 << 30).unwrap();
    let tile = Inspector::load(&fixture(), options(8)).unwrap();
    let mut meta = ModelMeta::load(&fixture()).unwrap();
    meta.input_mode = InputMode::Resize;
    let resize = Inspector::with_meta(&fixture(), meta, options(8)).unwrap();
    let r = resize.inspect_image(&img).unwrap();
    assert_eq!(r.tiles, 1);
    assert_eq!((r.map.width, r.map.height), (256, 256));
    let direct = tile.inspect_image(&resize_exact(&img, 256)).unwrap();
    assert_eq!(r.score, direct.score);
    assert!(r.peak.0 < 600 && r.peak.1 < 300);
    assert_eq!(r.map.resized(600, 300).data.len(), 600 * 300);
}

#[test]
fn thin_and_tiny_images_are_padded_not_refused() {
    if !ort_available("thin_and_tiny_images_are_padded_not_refused") {
        return;
    }
    let inspector = Inspector::load(&fixture(), options(32)).unwrap();
    for (w, h) in [(1, 1), (700, 3), (5, 260)] {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 3) as u8, 90]));
        let r = inspector.inspect_image(&img).unwrap();
        assert_eq!(r.map.data.len(), (w * h) as usize);
        assert!(r.score.is_finite());
        assert!(r.peak.0 < w as usize && r.peak.1 < h as usize);
    }
}

#[test]
fn model_folder_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let e = Inspector::load(dir.path(), options(4))
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.yaml"), "{e}");
    std::fs::copy(fixture().join("model.yaml"), dir.path().join("model.yaml")).unwrap();
    let e = Inspector::load(dir.path(), options(4))
        .unwrap_err()
        .to_string();
    assert!(e.contains("teacher.onnx"), "{e}");
}
