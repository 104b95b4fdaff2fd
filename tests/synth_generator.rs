//! The synthetic woven-fabric generator: determinism, masks, locality of defects,
//! periodic texture, dataset layout and the `synth` command.

use fabric_inspect::dataset::Category;
use fabric_inspect::synth::{self, DatasetOptions, Defect, FabricSpec, Weave};
use image::{GrayImage, RgbImage};
use std::path::Path;

fn all_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn small_options(weave: Weave, seed: u64) -> DatasetOptions {
    let mut o = DatasetOptions::new(FabricSpec::preset(weave));
    (o.width, o.height) = (96, 80);
    o.train = 3;
    o.test_good = 2;
    o.test_defect = 2;
    o.seed = seed;
    o
}

#[test]
fn same_seed_gives_same_bytes_and_other_seed_differs() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    synth::write_dataset(a.path(), &small_options(Weave::Twill, 7)).unwrap();
    synth::write_dataset(b.path(), &small_options(Weave::Twill, 7)).unwrap();
    synth::write_dataset(c.path(), &small_options(Weave::Twill, 8)).unwrap();
    let (fa, fb, fc) = (
        all_files(a.path()),
        all_files(b.path()),
        all_files(c.path()),
    );
    assert_eq!(fa.len(), 3 + 2 + 4 * 2 * 2, "images + masks");
    assert!(fa == fb, "same seed must give byte-identical files");
    let names: Vec<_> = fa.iter().map(|f| &f.0).collect();
    let names_c: Vec<_> = fc.iter().map(|f| &f.0).collect();
    assert_eq!(names, names_c);
    assert!(
        fa.iter().zip(&fc).all(|(x, y)| x.1 != y.1),
        "another seed changes every file"
    );

    // Within one dataset, the training images are different pieces of cloth.
    let t0 = image::open(a.path().join("train/good/000.png"))
        .unwrap()
        .to_rgb8();
    let t1 = image::open(a.path().join("train/good/001.png"))
        .unwrap()
        .to_rgb8();
    assert_ne!(t0, t1);
}

#[test]
fn generate_is_deterministic_in_memory() {
    for weave in Weave::ALL {
        let spec = FabricSpec::preset(weave);
        assert_eq!(
            synth::generate(&spec, 123, 77, 5),
            synth::generate(&spec, 123, 77, 5)
        );
        let mut a = synth::generate(&spec, 123, 77, 5);
        let mut b = a.clone();
        for d in Defect::ALL {
            assert_eq!(
                synth::add_defect(&mut a, d, 9),
                synth::add_defect(&mut b, d, 9)
            );
        }
        assert_eq!(a, b);
    }
}

/// Box dilation of the mask by `r` pixels (Chebyshev distance).
fn dilate(mask: &GrayImage, r: i64) -> GrayImage {
    let (w, h) = mask.dimensions();
    let mut out = GrayImage::new(w, h);
    for (x, y, p) in mask.enumerate_pixels() {
        if p[0] == 0 {
            continue;
        }
        for yy in (y as i64 - r).max(0)..=(y as i64 + r).min(h as i64 - 1) {
            for xx in (x as i64 - r).max(0)..=(x as i64 + r).min(w as i64 - 1) {
                out.put_pixel(xx as u32, yy as u32, image::Luma([255]));
            }
        }
    }
    out
}

fn changed(a: &RgbImage, b: &RgbImage, x: u32, y: u32) -> u32 {
    let (p, q) = (a.get_pixel(x, y), b.get_pixel(x, y));
    (0..3)
        .map(|c| (p[c] as i32 - q[c] as i32).unsigned_abs())
        .max()
        .unwrap()
}

#[test]
fn masks_are_binary_non_empty_inside_the_image_and_cover_the_change() {
    for weave in Weave::ALL {
        let spec = FabricSpec::preset(weave);
        for (k, defect) in Defect::ALL.into_iter().enumerate() {
            for seed in 0..4u64 {
                let (w, h) = (256 - 40 * seed as u32, 192);
                let clean = synth::generate(&spec, w, h, 100 + seed);
                let mut img = clean.clone();
                let mask = synth::add_defect(&mut img, defect, seed * 31 + k as u64);
                assert_eq!(mask.dimensions(), (w, h));
                assert!(
                    mask.pixels().all(|p| p[0] == 0 || p[0] == 255),
                    "binary mask"
                );
                let area = mask.pixels().filter(|p| p[0] == 255).count();
                assert!(area >= 10, "{weave} {defect}: mask area {area}");
                assert!(
                    area < (w * h / 4) as usize,
                    "{weave} {defect}: mask area {area}"
                );

                // Every changed pixel lies within a few pixels of the mask.
                let near = dilate(&mask, 8);
                for (x, y, _) in clean.enumerate_pixels() {
                    if changed(&clean, &img, x, y) > 0 {
                        assert_eq!(
                            near.get_pixel(x, y)[0],
                            255,
                            "{weave} {defect} seed {seed}: pixel ({x},{y}) changed far from mask"
                        );
                    }
                }
                // And the masked area is visibly changed on average.
                let mean_change = mask
                    .enumerate_pixels()
                    .filter(|(_, _, p)| p[0] == 255)
                    .map(|(x, y, _)| changed(&clean, &img, x, y) as f64)
                    .sum::<f64>()
                    / area as f64;
                assert!(
                    mean_change > 12.0,
                    "{weave} {defect}: mean change {mean_change}"
                );
            }
        }
    }
}

/// Normalised autocorrelation of the grey image along x (axis 0) or y (axis 1) at `lag`,
/// each row/column centred on its own mean.
fn autocorr(img: &RgbImage, axis: usize, lag: usize) -> f64 {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let grey = |x: usize, y: usize| {
        let p = img.get_pixel(x as u32, y as u32);
        0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
    };
    let (lines, len) = if axis == 0 { (h, w) } else { (w, h) };
    let (mut num, mut den) = (0.0, 0.0);
    for l in 0..lines {
        let v: Vec<f64> = (0..len)
            .map(|t| if axis == 0 { grey(t, l) } else { grey(l, t) })
            .collect();
        let m = v.iter().sum::<f64>() / len as f64;
        let c: Vec<f64> = v.iter().map(|x| x - m).collect();
        num += (0..len - lag).map(|t| c[t] * c[t + lag]).sum::<f64>() / (len - lag) as f64;
        den += c.iter().map(|x| x * x).sum::<f64>() / len as f64;
    }
    num / den
}

#[test]
fn every_weave_is_periodic_at_its_repeat() {
    for weave in Weave::ALL {
        let spec = FabricSpec::preset(weave);
        let img = synth::generate(&spec, 256, 256, 3);
        let repeat = spec.repeat_px() as usize;
        for axis in 0..2 {
            let lags: Vec<usize> = (spec.period as usize / 2 + 1..=repeat * 3 / 2).collect();
            let r: Vec<f64> = lags.iter().map(|&l| autocorr(&img, axis, l)).collect();
            let best = lags[r
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0];
            let at_repeat = autocorr(&img, axis, repeat);
            assert_eq!(
                best, repeat,
                "{weave} axis {axis}: peak at lag {best}, r = {r:?}"
            );
            assert!(
                at_repeat > 0.5,
                "{weave} axis {axis}: r({repeat}) = {at_repeat}"
            );
            // Half a yarn off, the texture no longer lines up.
            let off = autocorr(&img, axis, repeat - spec.period as usize / 2);
            assert!(
                at_repeat - off > 0.2,
                "{weave} axis {axis}: {at_repeat} vs {off}"
            );
        }
    }
}

#[test]
fn random_colours_differ_by_seed_but_keep_the_weave() {
    let a = FabricSpec::random(Weave::Plain, 1);
    let b = FabricSpec::random(Weave::Plain, 2);
    assert_ne!(a, b);
    assert_eq!(a, FabricSpec::random(Weave::Plain, 1));
    assert_eq!(a.weave, Weave::Plain);
    assert!(a.period >= 3);
}

#[test]
fn dataset_has_the_mvtec_layout() {
    let dir = tempfile::tempdir().unwrap();
    let summary = synth::write_dataset(dir.path(), &small_options(Weave::Striped, 1)).unwrap();
    assert_eq!(
        (summary.train, summary.test_good, summary.test_defect),
        (3, 2, 8)
    );
    let cat = Category::open(dir.path()).unwrap();
    assert_eq!(cat.train.len(), 3);
    assert_eq!(cat.test.len(), 2 + 8);
    for t in &cat.test {
        if t.defect == "good" {
            assert!(!t.is_anomalous && t.mask.is_none());
        } else {
            assert!(t.is_anomalous, "{}", t.path.display());
            let m = t.mask.as_ref().expect("defective image has a mask");
            let m = image::open(m).unwrap().to_luma8();
            assert_eq!(m.dimensions(), (96, 80));
            assert!(m.pixels().any(|p| p[0] > 127));
        }
    }
}

#[test]
fn frame_holds_every_defect_in_its_mask() {
    let dir = tempfile::tempdir().unwrap();
    let spec = FabricSpec::preset(Weave::Plain);
    let path = dir.path().join("f.png");
    let frame = synth::write_frame(&path, &spec, 1024, 640, &Defect::ALL, 4).unwrap();
    assert_eq!(frame.mask, dir.path().join("f_mask.png"));
    let img = image::open(&frame.image).unwrap().to_rgb8();
    let mask = image::open(&frame.mask).unwrap().to_luma8();
    assert_eq!(img.dimensions(), (1024, 640));
    assert_eq!(mask.dimensions(), (1024, 640));
    assert_eq!(frame.defects.len(), 4);
    for d in &frame.defects {
        // The mask is set within a few pixels of each defect's centre.
        let hit = (-3i32..=3).any(|dy| {
            (-3i32..=3).any(|dx| {
                let (x, y) = (d.x as i32 + dx, d.y as i32 + dy);
                x >= 0
                    && y >= 0
                    && x < 1024
                    && y < 640
                    && mask.get_pixel(x as u32, y as u32)[0] == 255
            })
        });
        assert!(hit, "{:?} has no mask at its centre", d);
    }
    let (img2, mask2, _) = synth::render_frame(&spec, 1024, 640, &Defect::ALL, 4);
    assert_eq!(img, img2);
    assert_eq!(mask, mask2);
}

#[test]
fn synth_command_writes_a_category_and_a_frame() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cat");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_fabric-inspect"))
        .args(["synth", "--out"])
        .arg(&out)
        .args([
            "--weave",
            "plain",
            "--train",
            "2",
            "--test-good",
            "1",
            "--test-defect",
            "1",
        ])
        .args([
            "--size",
            "64x48",
            "--frame",
            "--frame-size",
            "320x256",
            "--defects",
            "hole,knot",
        ])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(out.join("train/good/001.png").is_file());
    assert!(out.join("test/good/000.png").is_file());
    assert!(out.join("test/hole/000.png").is_file());
    assert!(out.join("ground_truth/knot/000_mask.png").is_file());
    assert!(!out.join("test/stain").exists());
    assert!(out.join("frame.png").is_file() && out.join("frame_mask.png").is_file());
    let left: Vec<_> = all_files(&out)
        .into_iter()
        .filter(|f| f.0.ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left behind");

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_fabric-inspect"))
        .args(["synth", "--out"])
        .arg(&out)
        .args(["--weave", "satin"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("satin"));
}
