//! A 3072×2048 camera frame stacked from eight AITEX fabric00 strips (seven defect-free,
//! one defective, all cropped to 3072 wide around the defect): the frame map's peak must
//! lie inside the defective strip.
//!
//! Needs the real data (`FABRIC_DATA`) and a model trained on fabric00: the folder named by
//! `FABRIC_MODEL_FABRIC00`, else `onnx/fabric00` of the checkout; skips when either is
//! missing. AITEX copies have no masks, so the crop is centred on the defective strip's
//! own peak column, found by inspecting the whole strip first.

use fabric_inspect::imageio::{has_image_extension, load_rgb};
use fabric_inspect::inspector::{InspectOptions, Inspector};
use image::RgbImage;
use std::path::{Path, PathBuf};

const DEFECT_ROW: u32 = 5;

fn images(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path())
                .filter(|p| has_image_extension(p))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn stacked_frame_peak_lies_in_the_defective_strip() {
    let Some(data) = std::env::var_os("FABRIC_DATA")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
    else {
        eprintln!("skipping stacked_frame_peak_lies_in_the_defective_strip: FABRIC_DATA not set");
        return;
    };
    let model = std::env::var_os("FABRIC_MODEL_FABRIC00")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/fabric00"));
    if !model.join("model.yaml").is_file() {
        eprintln!(
            "skipping stacked_frame_peak_lies_in_the_defective_strip: no trained fabric00 model at {} \
             (set FABRIC_MODEL_FABRIC00)",
            model.display()
        );
        return;
    }
    if let Err(e) = fabric_inspect::engine::ort_library_path() {
        eprintln!("skipping stacked_frame_peak_lies_in_the_defective_strip: {e}");
        return;
    }
    std::env::set_var(
        "XDG_CACHE_HOME",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/xdg-cache"),
    );
    let cat = data.join("aitex/fabric00");
    let mut goods = images(&cat.join("test/good"));
    goods.extend(
        images(&cat.join("train/good"))
            .into_iter()
            .take(7 - goods.len().min(7)),
    );
    goods.truncate(7);
    let defect_dir = std::fs::read_dir(cat.join("test"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.ends_with("good"))
        .min()
        .unwrap();
    let defective = images(&defect_dir).into_iter().next().unwrap();
    assert_eq!(goods.len(), 7);

    let inspector = Inspector::load(&model, InspectOptions::default()).unwrap();
    let strip = load_rgb(&defective, u64::MAX).unwrap();
    let alone = inspector.inspect_image(&strip).unwrap();
    let x0 = (alone.peak.0 as i64 - 1536).clamp(0, strip.width() as i64 - 3072) as u32;

    let mut frame = RgbImage::new(3072, 2048);
    let mut good = goods.iter();
    for row in 0..8u32 {
        let path = if row == DEFECT_ROW {
            &defective
        } else {
            good.next().unwrap()
        };
        let img = load_rgb(path, u64::MAX).unwrap();
        let crop = image::imageops::crop_imm(&img, x0, 0, 3072, 256).to_image();
        image::imageops::replace(&mut frame, &crop, 0, (row * 256) as i64);
    }
    let r = inspector.inspect_image(&frame).unwrap();
    eprintln!(
        "defective strip {} peak x {} (crop from {x0}); frame: {} tiles, score {:.5}, peak {:?}, {:.0} ms",
        defective.display(),
        alone.peak.0,
        r.tiles,
        r.score,
        r.peak,
        r.timing.total.as_secs_f64() * 1e3
    );
    assert_eq!(r.tiles, 96);
    let band = DEFECT_ROW * 256..(DEFECT_ROW + 1) * 256;
    assert!(
        band.contains(&(r.peak.1 as u32)),
        "peak row {} outside the defective strip {band:?}",
        r.peak.1
    );
}
