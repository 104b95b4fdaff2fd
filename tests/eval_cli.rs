//! `fabric-inspect eval` end to end with the tiny fixture model (ONNX Runtime needed):
//! table and JSON output, tile and resize mode, corrupt images, and the real folders when
//! `FABRIC_DATA` is set.

use image::{GrayImage, Luma};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ort_available(test: &str) -> bool {
    let lib = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("third_party/onnxruntime/libonnxruntime.so.1.31.1"));
    if lib.is_file() {
        true
    } else {
        eprintln!(
            "skipping {test}: ONNX Runtime library not found at {} (set ORT_DYLIB_PATH)",
            lib.display()
        );
        false
    }
}

fn real_data(test: &str) -> Option<PathBuf> {
    match std::env::var_os("FABRIC_DATA").map(PathBuf::from) {
        Some(p) if p.is_dir() => Some(p),
        _ => {
            eprintln!("skipping {test}: FABRIC_DATA not set");
            None
        }
    }
}

/// The fixture model, copied into `dir` with its input mode set to `mode`.
fn model(dir: &Path, mode: &str) -> PathBuf {
    let src = repo().join("tests/fixtures/tiny_model");
    let dst = dir.join(format!("model_{mode}"));
    std::fs::create_dir_all(&dst).unwrap();
    for f in ["teacher.onnx", "student.onnx"] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let yaml = std::fs::read_to_string(src.join("model.yaml")).unwrap();
    let yaml = yaml.replace("input_mode: tile", &format!("input_mode: {mode}"));
    assert!(yaml.contains(&format!("input_mode: {mode}")));
    std::fs::write(dst.join("model.yaml"), yaml).unwrap();
    dst
}

/// A category built from the fixture frames: one defective 600×300 frame with a mask
/// holding two separate squares.
fn category(dir: &Path) -> PathBuf {
    let fx = repo().join("tests/fixtures/tiny_model");
    let root = dir.join("cat");
    for (src, dst) in [
        ("frame_256x256.png", "train/good/000.png"),
        ("frame_256x256.png", "test/good/000.png"),
        ("frame_300x200.png", "test/good/001.png"),
        ("frame_600x300.png", "test/spot/000.png"),
    ] {
        let p = root.join(dst);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::copy(fx.join(src), p).unwrap();
    }
    let mask = GrayImage::from_fn(600, 300, |x, y| {
        let a = (100..140).contains(&x) && (50..90).contains(&y);
        let b = (400..450).contains(&x) && (200..260).contains(&y);
        Luma([if a || b { 255 } else { 0 }])
    });
    let p = root.join("ground_truth/spot/000_mask.png");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    mask.save(p).unwrap();
    root
}

fn eval(model: &Path, data: &Path, json: &Path, extra: &[&str]) -> (i32, String, Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_fabric-inspect"))
        .args([
            "--log",
            "warn",
            "--quiet",
            "eval",
            "--threads",
            "1",
            "--model",
        ])
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--json")
        .arg(json)
        .args(extra)
        .env(
            "XDG_CACHE_HOME",
            std::env::temp_dir().join("fabric-inspect-test-cache"),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let code = out.status.code().unwrap_or(-1);
    let text = std::fs::read_to_string(json)
        .unwrap_or_else(|e| panic!("no JSON ({e}); stdout {stdout}; stderr {stderr}"));
    (code, stdout, serde_json::from_str(&text).unwrap())
}

fn in_unit(v: &Value) -> bool {
    v.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x))
}

#[test]
fn eval_writes_table_and_json_in_both_modes() {
    if !ort_available("eval_writes_table_and_json_in_both_modes") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = category(d.path());
    for mode in ["tile", "resize"] {
        let m = model(d.path(), mode);
        let json = d.path().join(format!("{mode}.json"));
        let (code, table, j) = eval(&m, &data, &json, &["--threshold", "0.5"]);
        assert_eq!(code, 0, "{table}");
        assert!(table.contains("image AUROC"), "{table}");
        assert!(table.contains("min-max normalised"), "{table}");
        assert_eq!(j["model"]["input_mode"], mode);
        assert_eq!(j["threshold"]["source"], "--threshold");
        assert_eq!(j["threshold"]["value"], 0.5);
        assert_eq!(j["threshold"]["normal"], 2);
        assert_eq!(j["threshold"]["defective"], 1);
        assert!(in_unit(&j["image_auroc"]), "{}", j["image_auroc"]);
        assert!(in_unit(&j["pixel_auroc"]), "{}", j["pixel_auroc"]);
        assert!(in_unit(&j["au_pro"]), "{}", j["au_pro"]);
        // Two squares in the mask: two regions, at native size or resized to 256×256.
        assert_eq!(j["gt_regions"], 2);
        assert_eq!(j["coverage"].as_array().unwrap().len(), 3);
        assert_eq!(j["images"].as_array().unwrap().len(), 3);
        // Scores are the maxima of the maps: the tiny model's are far below 0.5.
        assert_eq!(j["threshold"]["false_alarms"], 0);
        assert_eq!(j["threshold"]["misses"], 1);
        let per: Vec<&str> = j["per_defect"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["defect"].as_str().unwrap())
            .collect();
        assert_eq!(per, vec!["good", "spot"]);
    }
}

#[test]
fn eval_reports_corrupt_images_and_fails_at_the_end() {
    if !ort_available("eval_reports_corrupt_images_and_fails_at_the_end") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = category(d.path());
    std::fs::write(data.join("test/good/002.png"), b"truncated").unwrap();
    let m = model(d.path(), "tile");
    let json = d.path().join("r.json");
    let (code, table, j) = eval(&m, &data, &json, &[]);
    assert_eq!(code, 1, "{table}");
    assert!(table.contains("could not be scored"), "{table}");
    let failed = j["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["path"].as_str().unwrap().ends_with("002.png"));
    // The other images are still evaluated, with the model's own threshold.
    assert_eq!(j["images"].as_array().unwrap().len(), 3);
    assert_eq!(j["threshold"]["value"], 0.05);
    assert!(j["threshold"]["source"]
        .as_str()
        .unwrap()
        .starts_with("model.yaml"));
}

#[test]
fn eval_needs_no_training_images() {
    if !ort_available("eval_needs_no_training_images") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = category(d.path());
    let m = model(d.path(), "tile");
    // An empty train/good/, then no train/ at all: eval scores test/ all the same.
    std::fs::remove_file(data.join("train/good/000.png")).unwrap();
    for case in ["empty", "missing"] {
        if case == "missing" {
            std::fs::remove_dir_all(data.join("train")).unwrap();
        }
        let json = d.path().join(format!("{case}.json"));
        let (code, table, j) = eval(&m, &data, &json, &["--threshold", "0.5"]);
        assert_eq!(code, 0, "{case}: {table}");
        assert_eq!(j["threshold"]["normal"], 2, "{case}");
        assert_eq!(j["threshold"]["defective"], 1, "{case}");
        assert!(in_unit(&j["image_auroc"]), "{case}: {table}");
        assert!(in_unit(&j["pixel_auroc"]), "{case}: {table}");
    }
}

#[test]
fn eval_without_defective_images_says_why_metrics_are_absent() {
    if !ort_available("eval_without_defective_images_says_why_metrics_are_absent") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = category(d.path());
    std::fs::remove_dir_all(data.join("test/spot")).unwrap();
    std::fs::remove_dir_all(data.join("ground_truth")).unwrap();
    let m = model(d.path(), "tile");
    let json = d.path().join("good-only.json");
    let (code, table, j) = eval(&m, &data, &json, &["--threshold", "0.5"]);
    assert_eq!(code, 0, "{table}");
    assert_eq!(j["threshold"]["normal"], 2);
    assert_eq!(j["threshold"]["defective"], 0);
    assert_eq!(j["threshold"]["misses"], 0);
    // Image AUROC and coverage need both classes, pixel metrics need defects: all absent,
    // shown as "—" with a note naming the real reason (not a missing mask), never NaN.
    assert!(j["image_auroc"].is_null(), "{}", j["image_auroc"]);
    assert!(j["pixel_auroc"].is_null() && j["au_pro"].is_null());
    assert!(j["gt_regions"].is_null());
    assert!(j["coverage"].as_array().unwrap().is_empty());
    let notes: Vec<&str> = j["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(
        notes[0].starts_with("image AUROC and coverage absent")
            && notes[0].contains("no defective images"),
        "{notes:?}"
    );
    assert!(
        notes[1].starts_with("pixel AUROC and AU-PRO absent")
            && notes[1].contains("no defective images"),
        "{notes:?}"
    );
    assert!(!table.contains("ground-truth mask"), "{table}");
    assert!(!table.to_lowercase().contains("nan"), "{table}");
    assert!(table.contains("no defective images"), "{table}");
    let auroc_line = table
        .lines()
        .find(|l| l.trim_start().starts_with("image AUROC"))
        .unwrap();
    assert!(auroc_line.contains('—'), "{table}");
}

#[test]
fn eval_on_real_folders() {
    if !ort_available("eval_on_real_folders") {
        return;
    }
    let Some(root) = real_data("eval_on_real_folders") else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    // Leather: masks present, resize mode (256×256 maps, masks resized nearest).
    let m = model(d.path(), "resize");
    let json = d.path().join("leather.json");
    let (code, table, j) = eval(&m, &root.join("mvtec_ad/leather"), &json, &[]);
    assert_eq!(code, 0, "{table}");
    assert_eq!(j["threshold"]["normal"], 4);
    assert_eq!(j["threshold"]["defective"], 11);
    assert!(
        in_unit(&j["pixel_auroc"]) && in_unit(&j["au_pro"]),
        "{table}"
    );
    assert!(j["gt_regions"].as_u64().unwrap() >= 11, "{table}");
    // AITEX: no masks, tile mode on 4096×256 strips: pixel metrics absent.
    let m = model(d.path(), "tile");
    let json = d.path().join("fabric00.json");
    let (code, table, j) = eval(&m, &root.join("aitex/fabric00"), &json, &[]);
    assert_eq!(code, 0, "{table}");
    assert_eq!(j["threshold"]["normal"], 5);
    assert_eq!(j["threshold"]["defective"], 7);
    assert!(j["pixel_auroc"].is_null() && j["au_pro"].is_null());
    assert!(in_unit(&j["image_auroc"]));
    assert!(table.contains("ground-truth mask"), "{table}");
}
