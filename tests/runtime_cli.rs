//! `fabric-inspect inspect` and `calibrate` run as a user would, in temporary folders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_model")
}

fn bin(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fabric-inspect"))
        .args(["--quiet", "--log", "warn"])
        .args(args)
        .env(
            "XDG_CACHE_HOME",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/xdg-cache"),
        )
        .output()
        .unwrap()
}

fn ort_available(test: &str) -> bool {
    match fabric_inspect::engine::ort_library_path() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            false
        }
    }
}

fn copy_model(to: &Path) -> PathBuf {
    let m = to.join("model");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["model.yaml", "teacher.onnx", "student.onnx"] {
        std::fs::copy(fixture().join(f), m.join(f)).unwrap();
    }
    m
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn bad_inputs_are_reported_and_the_rest_inspected() {
    if !ort_available("bad_inputs_are_reported_and_the_rest_inspected") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_model(tmp.path());
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(imgs.join("sub")).unwrap();
    image::GrayImage::from_pixel(260, 90, image::Luma([90]))
        .save(imgs.join("grey.png"))
        .unwrap();
    image::RgbaImage::from_pixel(64, 64, image::Rgba([1, 2, 3, 4]))
        .save(imgs.join("sub/rgba.png"))
        .unwrap();
    image::ImageBuffer::from_pixel(70, 300, image::Luma([40000u16]))
        .save(imgs.join("sub/deep.tif"))
        .unwrap();
    std::fs::write(imgs.join("broken.png"), b"\x89PNG\r\n\x1a\nnot really").unwrap();
    std::fs::write(imgs.join("readme.txt"), b"ignored in folders").unwrap();
    let full = std::fs::read(fixture().join("frame_300x200.png")).unwrap();
    let cut = tmp.path().join("cut.png");
    std::fs::write(&cut, &full[..full.len() / 3]).unwrap();
    let out = tmp.path().join("heat");

    let o = bin(&[
        "inspect",
        "--model",
        s(&model),
        s(&imgs),
        s(&cut),
        "/no/such/file.png",
        "--out",
        s(&out),
        "--batch",
        "2",
    ]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    for name in ["broken.png", "cut.png", "/no/such/file.png"] {
        assert!(stderr.contains(name), "{name} not reported: {stderr}");
    }
    let lines = json_lines(&o.stdout);
    assert_eq!(lines.len(), 6, "{lines:?}");
    let ok: Vec<_> = lines.iter().filter(|l| l.get("score").is_some()).collect();
    assert_eq!(ok.len(), 3);
    for l in &ok {
        for key in [
            "path",
            "score",
            "verdict",
            "threshold",
            "provider",
            "ms",
            "tiles",
            "width",
            "height",
        ] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
        assert_eq!(l["provider"], "cpu");
        assert!(Path::new(l["heatmap"].as_str().unwrap()).is_file());
    }
    let grey = ok
        .iter()
        .find(|l| l["path"].as_str().unwrap().ends_with("grey.png"))
        .unwrap();
    assert_eq!(
        (
            grey["width"].as_u64(),
            grey["height"].as_u64(),
            grey["tiles"].as_u64()
        ),
        (Some(260), Some(90), Some(2))
    );
    // The heatmaps keep the subfolders the images have below the input folder.
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 2);
    assert!(out.join("sub/rgba_heatmap.png").is_file());
    assert!(out.join("sub/deep_heatmap.png").is_file());
    let heat = image::open(out.join("grey_heatmap.png")).unwrap();
    assert_eq!((heat.width(), heat.height()), (260, 90));
}

#[test]
fn json_file_threshold_and_pixel_limit() {
    if !ort_available("json_file_threshold_and_pixel_limit") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("r.jsonl");
    let img = fixture().join("frame_600x300.png");
    let o = bin(&[
        "inspect",
        "--model",
        s(&fixture()),
        s(&img),
        "--json",
        s(&json),
        "--threshold",
        "0.000001",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout.is_empty());
    let lines = json_lines(&std::fs::read(&json).unwrap());
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["verdict"], "defect");
    assert_eq!(lines[0]["tiles"], 6);

    let o = bin(&[
        "inspect",
        "--model",
        s(&fixture()),
        s(&img),
        "--max-pixels",
        "1000",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("exceeds the limit of 1000 pixels"));
}

#[test]
fn model_folder_problems_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let img = fixture().join("frame_256x256.png");
    let o = bin(&["inspect", "--model", s(tmp.path()), s(&img)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("model.yaml"));

    let model = copy_model(tmp.path());
    let yaml = std::fs::read_to_string(model.join("model.yaml")).unwrap();
    std::fs::write(
        model.join("model.yaml"),
        yaml.replace("schema_version: 1", "schema_version: 9"),
    )
    .unwrap();
    let o = bin(&["inspect", "--model", s(&model), s(&img)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown schema_version 9"));

    std::fs::write(model.join("model.yaml"), yaml).unwrap();
    std::fs::remove_file(model.join("student.onnx")).unwrap();
    let o = bin(&["inspect", "--model", s(&model), s(&img)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("student.onnx"));

    let o = bin(&["inspect", "--model", s(&fixture()), s(&img), "--batch", "0"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn calibrate_rewrites_the_threshold_and_keeps_history() {
    if !ort_available("calibrate_rewrites_the_threshold_and_keeps_history") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_model(tmp.path());
    let o = bin(&["calibrate", "--model", s(&model), s(&fixture())]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["images"], 3);
    let meta = fabric_inspect::meta::ModelMeta::load(&model).unwrap();
    let stats = meta.validation.as_ref().unwrap();
    assert_eq!(stats.count, 3);
    assert!(meta.threshold >= stats.max);
    assert!((meta.threshold - fabric_inspect::threshold::default_threshold(stats)).abs() < 1e-9);
    assert_eq!(meta.threshold_source, "calibrate");
    assert_eq!(meta.threshold_history.len(), 1);
    assert_eq!(meta.threshold_history[0].threshold, 0.05);

    // Every normal image is now at or below the threshold.
    let o = bin(&["inspect", "--model", s(&model), s(&fixture())]);
    assert_eq!(o.status.code(), Some(0));
    assert!(json_lines(&o.stdout).iter().all(|l| l["verdict"] == "ok"));

    // A dry run leaves the file alone.
    let before = std::fs::read(model.join("model.yaml")).unwrap();
    let o = bin(&[
        "calibrate",
        "--model",
        s(&model),
        s(&fixture().join("frame_256x256.png")),
        "--dry-run",
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(std::fs::read(model.join("model.yaml")).unwrap(), before);
}

#[test]
fn empty_inputs_fail_and_negative_thresholds_parse() {
    if !ort_available("empty_inputs_fail_and_negative_thresholds_parse") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = bin(&["inspect", "--model", s(&fixture()), s(&empty)]);
    assert_eq!(o.status.code(), Some(1), "an empty folder is not a success");
    assert!(String::from_utf8_lossy(&o.stderr).contains("no image files found"));

    // `--threshold -1` without `=`: every image is then a defect.
    let img = fixture().join("frame_600x300.png");
    let o = bin(&[
        "inspect",
        "--model",
        s(&fixture()),
        s(&img),
        "--threshold",
        "-1",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(json_lines(&o.stdout)[0]["verdict"], "defect");
}

#[test]
fn bench_batches_may_be_empty_and_eval_bins_are_checked() {
    if !ort_available("bench_batches_may_be_empty_and_eval_bins_are_checked") {
        return;
    }
    let o = bin(&[
        "bench",
        "--model",
        s(&fixture()),
        "--batches",
        "",
        "--frame",
        "600x300",
        "--runs",
        "1",
        "--warmup",
        "0",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.contains("network (teacher + student)"), "{out}");
    assert!(out.contains("frame 600×300"), "{out}");

    let o = bin(&["bench", "--model", s(&fixture()), "--batches", "4,0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("`0` is not a batch size"));

    let tmp = tempfile::tempdir().unwrap();
    let o = bin(&[
        "eval",
        "--model",
        s(&fixture()),
        "--data",
        s(tmp.path()),
        "--bins",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(2), "a bad flag is a fatal error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--bins must be an even number"));
}

#[test]
fn calibrate_learns_position_statistics_and_inspect_applies_them() {
    if !ort_available("calibrate_learns_position_statistics_and_inspect_applies_them") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_model(tmp.path());
    // Five 600×300 "good frames": the fixture frame with a little pixel noise each.
    let good = tmp.path().join("good");
    std::fs::create_dir_all(&good).unwrap();
    let base = image::open(fixture().join("frame_600x300.png"))
        .unwrap()
        .to_rgb8();
    for k in 0..5u32 {
        let mut img = base.clone();
        for (x, y, p) in img.enumerate_pixels_mut() {
            let d = ((x * 31 + y * 17 + k * 7) % 5) as u8;
            p.0 = p.0.map(|v| v.saturating_add(d));
        }
        img.save(good.join(format!("{k}.png"))).unwrap();
    }
    let o = bin(&["calibrate", "--model", s(&model), "--position", s(&good)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["position_images"], 3, "images 0, 2, 4");
    assert_eq!(summary["images"], 2, "images 1, 3 give the threshold");
    let meta = fabric_inspect::meta::ModelMeta::load(&model).unwrap();
    let pos = meta.position.clone().unwrap();
    assert_eq!((pos.width, pos.height, pos.images), (600, 300, 3));
    assert!(model.join(&pos.file).is_file());

    // Frames of the training size are scored as z-scores; the good ones pass.
    let o = bin(&["inspect", "--model", s(&model), s(&good)]);
    assert_eq!(o.status.code(), Some(0));
    assert!(json_lines(&o.stdout).iter().all(|l| l["verdict"] == "ok"));
    // Another size is refused, naming both sizes, and the run goes on with exit code 1.
    let o = bin(&[
        "inspect",
        "--model",
        s(&model),
        s(&fixture().join("frame_300x200.png")),
        s(&good.join("0.png")),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("600×300") && err.contains("300×200"), "{err}");
    assert_eq!(json_lines(&o.stdout).len(), 2);

    // Learning them again replaces the file; the old one is removed.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let o = bin(&["calibrate", "--model", s(&model), "--position", s(&good)]);
    assert_eq!(o.status.code(), Some(0));
    let again = fabric_inspect::meta::ModelMeta::load(&model).unwrap();
    let new_file = again.position.unwrap().file;
    assert_ne!(new_file, pos.file);
    assert!(!model.join(&pos.file).exists());
    assert!(model.join(&new_file).is_file());

    // Mixed sizes: the most common size wins, the others are reported and skipped.
    let mixed = tmp.path().join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    for k in 0..5 {
        std::fs::copy(
            good.join(format!("{k}.png")),
            mixed.join(format!("b{k}.png")),
        )
        .unwrap();
    }
    std::fs::copy(
        fixture().join("frame_300x200.png"),
        mixed.join("a_small.png"),
    )
    .unwrap();
    let o = bin(&["calibrate", "--model", s(&model), "--position", s(&mixed)]);
    assert_eq!(o.status.code(), Some(1), "one input skipped");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("a_small.png") && err.contains("600×300"),
        "{err}"
    );
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["position_images"], 3);

    // Too few images: a clear error, nothing changed.
    let before = std::fs::read(model.join("model.yaml")).unwrap();
    let o = bin(&[
        "calibrate",
        "--model",
        s(&model),
        "--position",
        s(&good.join("0.png")),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least 4"));
    assert_eq!(std::fs::read(model.join("model.yaml")).unwrap(), before);
}

#[test]
fn heatmaps_keep_the_defect_folder() {
    if !ort_available("heatmaps_keep_the_defect_folder") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_model(tmp.path());
    let test = tmp.path().join("test");
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    for dir in [
        test.join("hole"),
        test.join("stain"),
        one.clone(),
        two.clone(),
    ] {
        std::fs::create_dir_all(&dir).unwrap();
        image::GrayImage::from_pixel(64, 64, image::Luma([120]))
            .save(dir.join("000.png"))
            .unwrap();
    }
    let out = tmp.path().join("heat");
    let o = bin(&[
        "inspect",
        "--model",
        s(&model),
        s(&test),
        s(&one.join("000.png")),
        s(&two.join("000.png")),
        "--out",
        s(&out),
    ]);
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut names: Vec<String> = json_lines(&o.stdout)
        .iter()
        .map(|l| {
            let h = Path::new(l["heatmap"].as_str().unwrap());
            assert!(h.is_file(), "{} missing", h.display());
            h.strip_prefix(&out).unwrap().display().to_string()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "000-2_heatmap.png",
            "000_heatmap.png",
            "hole/000_heatmap.png",
            "stain/000_heatmap.png"
        ]
    );
}
