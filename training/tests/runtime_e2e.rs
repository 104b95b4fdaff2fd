//! End to end: a model exported by the trainer, inspected by the runtime's [`Inspector`],
//! against the trainer's own scoring of the same frame in candle.
//!
//! A 300×200 frame (two tiles: the second column overlaps the first, the short side is
//! mirror-padded) is scored by both paths; the smoothed frame maps must agree within
//! 1e-4 × the map's largest value and the runtime's score must equal the trainer's
//! `score_images` figure within the same bound.

use candle_core::{Device, Tensor};
use fabric_inspect::anomaly::{anomaly_maps, FeatureView};
use fabric_inspect::gaussian::gaussian_smooth;
use fabric_inspect::inspector::{InspectOptions, Inspector};
use fabric_inspect::meta::{Backbone, InputMode, Variant};
use fabric_inspect::tiling::{extract_tile_chw, Stitcher, TileGrid};
use fabric_train::export::{export_model, model_meta, untrained_info};
use fabric_train::model::Rrd;
use fabric_train::weights::default_weights;
use image::{Rgb, RgbImage};

const REL: f32 = 1e-4;

fn ort_available(test: &str) -> bool {
    std::env::set_var(
        "XDG_CACHE_HOME",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/xdg-cache"),
    );
    match fabric_inspect::engine::init_ort() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            false
        }
    }
}

fn frame(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let weave = if (x / 3 + y / 3) % 2 == 0 { 150 } else { 110 };
        let spot = if (120..140).contains(&x) && (60..75).contains(&y) {
            90
        } else {
            0
        };
        let v = (weave + spot + (x * 7 + y * 13) % 11) as u8;
        Rgb([v, v.saturating_sub(10), v / 2 + 40])
    })
}

fn flat(t: &Tensor) -> (Vec<f32>, [usize; 4]) {
    let (n, c, h, w) = t.dims4().unwrap();
    (
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [n, c, h, w],
    )
}

#[test]
fn inspector_map_equals_the_trainers_map() {
    if !ort_available("inspector_map_equals_the_trainers_map") {
        return;
    }
    let backbone = Backbone::EfficientnetLite0;
    let rrd = Rrd::build(
        backbone,
        &[],
        default_weights(backbone, 3),
        Variant::Residual,
        3,
        &Device::Cpu,
    )
    .unwrap();
    let meta = model_meta(&rrd, &untrained_info(InputMode::Tile, 256, 3));
    let dir = tempfile::tempdir().unwrap();
    export_model(&rrd, &meta, dir.path()).unwrap();

    let img = frame(300, 200);
    let inspector = Inspector::load(
        dir.path(),
        InspectOptions {
            batch: 1,
            ..Default::default()
        },
    )
    .unwrap();
    let r = inspector.inspect_image(&img).unwrap();
    assert_eq!(r.tiles, 2);

    // The trainer's path: candle forward per tile, the shared map functions.
    let grid = TileGrid::new(300, 200, 256);
    let mut stitcher = Stitcher::new(grid.clone());
    for (i, (x, y)) in grid.origins().into_iter().enumerate() {
        let mut chw = vec![0.0; 3 * 256 * 256];
        extract_tile_chw(&img, x, y, 256, meta.normalization, &mut chw);
        let input = Tensor::from_vec(chw, (1, 3, 256, 256), &Device::Cpu).unwrap();
        let (t, s) = rrd.forward_t(&input, false).unwrap();
        let tv: Vec<_> = t.iter().map(flat).collect();
        let sv: Vec<_> = s.iter().map(flat).collect();
        let tf: Vec<_> = tv
            .iter()
            .map(|(d, s)| FeatureView::new(d, *s).unwrap())
            .collect();
        let sf: Vec<_> = sv
            .iter()
            .map(|(d, s)| FeatureView::new(d, *s).unwrap())
            .collect();
        let maps = anomaly_maps(&tf, &sf, &meta.map_layer_weights, 256, 256).unwrap();
        stitcher.add(i, &maps[0]).unwrap();
    }
    let want = gaussian_smooth(&stitcher.finish().unwrap(), 300, 200, meta.sigma);
    let top = want.iter().copied().fold(0.0f32, f32::max);
    let worst = r
        .map
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    eprintln!("frame map: max |runtime − trainer| = {worst:.3e}, map max {top:.3e}");
    assert!(
        worst <= REL * top,
        "maps differ by {worst} (bound {})",
        REL * top
    );
    assert!(
        (r.score - top).abs() <= REL * top,
        "score {} vs trainer {top}",
        r.score
    );
}
