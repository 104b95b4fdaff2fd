//! The post-processing kernels the speed work rewrote (Gaussian smoothing, cosine
//! distance, bilinear upsampling) against plain per-pixel references written from their
//! definitions, on odd sizes that exercise borders and partial vector lanes.

use fabric_inspect::anomaly::{anomaly_maps, FeatureView, NORM_EPS};
use fabric_inspect::bench::random_input;
use fabric_inspect::gaussian::{gaussian_smooth, kernel_1d, reflect_index};

fn naive_gaussian(map: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    let k = kernel_1d(sigma);
    let r = (k.len() / 2) as isize;
    let mut tmp = vec![0.0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0f32;
            for (t, &kv) in k.iter().enumerate() {
                acc += kv * map[y * w + reflect_index(x as isize + t as isize - r, w)];
            }
            tmp[y * w + x] = acc;
        }
    }
    let mut out = vec![0.0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0f32;
            for (t, &kv) in k.iter().enumerate() {
                acc += kv * tmp[reflect_index(y as isize + t as isize - r, h) * w + x];
            }
            out[y * w + x] = acc;
        }
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn gaussian_matches_the_per_pixel_definition() {
    // 1×1, thinner than the radius, and a map with odd sides.
    for (w, h, sigma) in [(1, 1, 4.0), (5, 3, 4.0), (97, 53, 4.0), (70, 41, 1.5)] {
        let map = random_input(w * h, (w * 31 + h) as u64);
        let got = gaussian_smooth(&map, w, h, sigma);
        let want = naive_gaussian(&map, w, h, sigma);
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-5, "{w}×{h} σ {sigma}: max difference {d}");
    }
}

fn bilinear_source(inp: usize, out: usize, d: usize) -> (usize, usize, f32) {
    let src = ((d as f32 + 0.5) * (inp as f32 / out as f32) - 0.5).max(0.0);
    let i0 = (src.floor() as usize).min(inp - 1);
    (i0, (i0 + 1).min(inp - 1), src - i0 as f32)
}

fn naive_maps(
    t: &[(Vec<f32>, [usize; 4])],
    s: &[Vec<f32>],
    weights: &[f32],
    out: usize,
) -> Vec<f32> {
    let n = t[0].1[0];
    let mut maps = vec![0.0f32; n * out * out];
    for item in 0..n {
        for (l, ((tv, [_, c, h, w]), sv)) in t.iter().zip(s).enumerate() {
            let (c, h, w) = (*c, *h, *w);
            let base = item * c * h * w;
            let dist: Vec<f32> = (0..h * w)
                .map(|p| {
                    let (mut dot, mut tt, mut ss) = (0.0f32, 0.0f32, 0.0f32);
                    for ch in 0..c {
                        let (a, b) = (tv[base + ch * h * w + p], sv[base + ch * h * w + p]);
                        dot += a * b;
                        tt += a * a;
                        ss += b * b;
                    }
                    1.0 - dot / (tt.sqrt().max(NORM_EPS) * ss.sqrt().max(NORM_EPS))
                })
                .collect();
            for oy in 0..out {
                let (y0, y1, ly) = bilinear_source(h, out, oy);
                for ox in 0..out {
                    let (x0, x1, lx) = bilinear_source(w, out, ox);
                    let at = |y: usize, x: usize| dist[y * w + x];
                    let top = at(y0, x0) + (at(y0, x1) - at(y0, x0)) * lx;
                    let bot = at(y1, x0) + (at(y1, x1) - at(y1, x0)) * lx;
                    maps[item * out * out + oy * out + ox] += weights[l] * (top + (bot - top) * ly);
                }
            }
        }
    }
    maps
}

#[test]
fn anomaly_maps_match_the_per_pixel_definition() {
    // Lite0-like channel counts on small odd grids, 3 items, one zero student vector.
    let shapes = [
        [3, 16, 13, 13],
        [3, 24, 13, 13],
        [3, 40, 7, 6],
        [3, 5, 1, 1],
    ];
    let out = 52;
    let t: Vec<(Vec<f32>, [usize; 4])> = shapes
        .iter()
        .enumerate()
        .map(|(i, sh)| (random_input(sh.iter().product(), 40 + i as u64), *sh))
        .collect();
    let mut s: Vec<Vec<f32>> = shapes
        .iter()
        .enumerate()
        .map(|(i, sh)| random_input(sh.iter().product(), 50 + i as u64))
        .collect();
    // Item 0 of the 1×1 layer: a student vector of zeros.
    s[3][..5].fill(0.0);
    let weights = [0.5, 0.25, 1.0, 2.0];
    let tv: Vec<FeatureView> = t
        .iter()
        .map(|(d, sh)| FeatureView::new(d, *sh).unwrap())
        .collect();
    let sv: Vec<FeatureView> = s
        .iter()
        .zip(&shapes)
        .map(|(d, sh)| FeatureView::new(d, *sh).unwrap())
        .collect();
    let got: Vec<f32> = anomaly_maps(&tv, &sv, &weights, out, out).unwrap().concat();
    let want = naive_maps(&t, &s, &weights, out);
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-5, "max difference {d}");
}
