//! Anomaly maps from teacher and student features (SPEC.md §9, steps 1–3).
//!
//! For every feature pair i the per-pixel distance is `1 − cos(t_i, s_i)` over channels
//! (each vector's norm clamped below at 1e-12, as in the training loss), multiplied by the
//! layer weight `w_i` (by default `1/(H_i·W_i)`, the authors' area weighting), upsampled
//! bilinearly to the tile size with PyTorch's `align_corners=false` rule, and the layers
//! are summed. Smoothing (step 4) is [`crate::gaussian`]'s and happens once per frame.

use crate::{Error, Result};
use rayon::prelude::*;

/// Norm clamp of the cosine distance, equal to the training loss's.
pub const NORM_EPS: f32 = 1e-12;

/// A borrowed NCHW feature tensor.
#[derive(Debug, Clone, Copy)]
pub struct FeatureView<'a> {
    /// Values, row-major NCHW.
    pub data: &'a [f32],
    /// `[N, C, H, W]`.
    pub shape: [usize; 4],
}

impl<'a> FeatureView<'a> {
    /// A view of `data` with `shape`; fails when the lengths disagree.
    pub fn new(data: &'a [f32], shape: [usize; 4]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape {
                op: "feature view",
                expected: format!("{n} values for shape {shape:?}"),
                got: data.len().to_string(),
            });
        }
        Ok(FeatureView { data, shape })
    }

    fn item(&self, n: usize) -> &'a [f32] {
        let len = self.shape[1] * self.shape[2] * self.shape[3];
        &self.data[n * len..(n + 1) * len]
    }
}

/// The authors' layer weights `1/(H·W)` for features of the given (height, width).
pub fn default_layer_weights(sizes: &[(usize, usize)]) -> Vec<f32> {
    sizes.iter().map(|&(h, w)| 1.0 / (h * w) as f32).collect()
}

/// Per-pixel `1 − cos` between one item's C×H×W teacher and student features, written
/// into `out` (H·W values).
fn cos_distance_item(t: &[f32], s: &[f32], c: usize, hw: usize, out: &mut [f32]) {
    // Channel-outer loops keep memory access sequential; three H·W accumulators.
    let mut tt = vec![0.0f32; hw];
    let mut ss = vec![0.0f32; hw];
    out.fill(0.0);
    // Zipped iterators (no bounds checks) let the inner loop vectorise.
    let out = &mut out[..hw];
    if hw == 0 {
        return;
    }
    for (tc, sc) in t.chunks_exact(hw).zip(s.chunks_exact(hw)).take(c) {
        for ((((o, a), b), &x), &y) in out
            .iter_mut()
            .zip(tt.iter_mut())
            .zip(ss.iter_mut())
            .zip(tc)
            .zip(sc)
        {
            *o += x * y;
            *a += x * x;
            *b += y * y;
        }
    }
    for ((o, &a), &b) in out.iter_mut().zip(&tt).zip(&ss) {
        let nt = a.sqrt().max(NORM_EPS);
        let ns = b.sqrt().max(NORM_EPS);
        *o = 1.0 - *o / (nt * ns);
    }
}

/// Per-pixel `1 − cos` over channels for every batch item: N·H·W values.
///
/// # Panics
/// When the two shapes differ.
pub fn cos_distance(t: FeatureView, s: FeatureView) -> Vec<f32> {
    assert_eq!(
        t.shape, s.shape,
        "cos_distance: teacher and student shapes differ"
    );
    let [n, c, h, w] = t.shape;
    let mut out = vec![0.0; n * h * w];
    out.par_chunks_mut(h * w.max(1))
        .enumerate()
        .for_each(|(i, o)| cos_distance_item(t.item(i), s.item(i), c, h * w, o));
    out
}

/// Source index pair and weight of the second one, per output coordinate, for PyTorch's
/// `align_corners=false` bilinear rule.
fn axis_table(inp: usize, out: usize) -> Vec<(usize, usize, f32)> {
    let scale = inp as f32 / out as f32;
    (0..out)
        .map(|d| {
            let src = ((d as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(inp - 1);
            let i1 = if i0 + 1 < inp { i0 + 1 } else { i0 };
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

fn upsample_add(
    src: &[f32],
    w: usize,
    weight: f32,
    ty: &[(usize, usize, f32)],
    tx: &[(usize, usize, f32)],
    out: &mut [f32],
    rows: &mut Vec<f32>,
) {
    // Separable: each source row is interpolated along x once (into `rows`, h × ow), then
    // every output row blends two of those rows, a loop that vectorises. The arithmetic
    // per output value is the same as interpolating the four neighbours directly.
    let ow = tx.len();
    let h = src.len() / w.max(1);
    rows.resize(h * ow, 0.0);
    for (r, dst) in src.chunks_exact(w).zip(rows.chunks_exact_mut(ow)) {
        for (d, &(x0, x1, lx)) in dst.iter_mut().zip(tx) {
            *d = r[x0] + (r[x1] - r[x0]) * lx;
        }
    }
    for (dst, &(y0, y1, ly)) in out.chunks_exact_mut(ow).zip(ty) {
        let top = &rows[y0 * ow..(y0 + 1) * ow];
        let bot = &rows[y1 * ow..(y1 + 1) * ow];
        for ((d, &a), &b) in dst.iter_mut().zip(top).zip(bot) {
            *d += weight * (a + (b - a) * ly);
        }
    }
}

/// Bilinear upsampling (or downsampling) of an `h`×`w` map to `out_h`×`out_w`, with
/// PyTorch's `align_corners=false` rule: source coordinate `(dst + 0.5)·in/out − 0.5`,
/// clamped at 0, neighbours clamped at the last sample.
pub fn upsample_bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "upsample_bilinear: source is not h×w");
    let mut out = vec![0.0; out_h * out_w];
    upsample_add(
        src,
        w,
        1.0,
        &axis_table(h, out_h),
        &axis_table(w, out_w),
        &mut out,
        &mut Vec::new(),
    );
    out
}

fn check_pairs(teacher: &[FeatureView], student: &[FeatureView], weights: &[f32]) -> Result<usize> {
    if teacher.len() != student.len() || teacher.len() != weights.len() || teacher.is_empty() {
        return Err(Error::Shape {
            op: "anomaly map",
            expected: "as many teacher features, student features and layer weights (≥ 1)".into(),
            got: format!("{}, {}, {}", teacher.len(), student.len(), weights.len()),
        });
    }
    let n = teacher[0].shape[0];
    for (i, (t, s)) in teacher.iter().zip(student).enumerate() {
        if t.shape != s.shape || t.shape[0] != n {
            return Err(Error::Shape {
                op: "anomaly map",
                expected: format!("student feature {i} shaped like teacher's {:?}", t.shape),
                got: format!("{:?}", s.shape),
            });
        }
        if t.data.len() != t.shape.iter().product::<usize>()
            || s.data.len() != s.shape.iter().product::<usize>()
        {
            return Err(Error::Shape {
                op: "anomaly map",
                expected: format!("feature {i} data matching shape {:?}", t.shape),
                got: format!("{} and {} values", t.data.len(), s.data.len()),
            });
        }
    }
    Ok(n)
}

/// Unsmoothed anomaly maps of a batch, written into `out` (N·`out_h`·`out_w` values,
/// item after item); items run in parallel.
pub fn anomaly_maps_into(
    teacher: &[FeatureView],
    student: &[FeatureView],
    weights: &[f32],
    out_h: usize,
    out_w: usize,
    out: &mut [f32],
) -> Result<()> {
    let n = check_pairs(teacher, student, weights)?;
    let plane = out_h * out_w;
    if out.len() != n * plane {
        return Err(Error::Shape {
            op: "anomaly map",
            expected: format!("output of {n}×{out_h}×{out_w} values"),
            got: out.len().to_string(),
        });
    }
    let tables: Vec<_> = teacher
        .iter()
        .map(|t| (axis_table(t.shape[2], out_h), axis_table(t.shape[3], out_w)))
        .collect();
    out.par_chunks_mut(plane.max(1)).enumerate().for_each_init(
        || (Vec::new(), Vec::new()),
        |(dist, rows), (item, o)| {
            o.fill(0.0);
            for (l, (t, s)) in teacher.iter().zip(student).enumerate() {
                let [_, c, h, w] = t.shape;
                dist.resize(h * w, 0.0);
                cos_distance_item(t.item(item), s.item(item), c, h * w, dist);
                upsample_add(dist, w, weights[l], &tables[l].0, &tables[l].1, o, rows);
            }
        },
    );
    Ok(())
}

/// Unsmoothed anomaly maps of a batch, one `out_h`×`out_w` map per item.
pub fn anomaly_maps(
    teacher: &[FeatureView],
    student: &[FeatureView],
    weights: &[f32],
    out_h: usize,
    out_w: usize,
) -> Result<Vec<Vec<f32>>> {
    let n = check_pairs(teacher, student, weights)?;
    let mut flat = vec![0.0; n * out_h * out_w];
    anomaly_maps_into(teacher, student, weights, out_h, out_w, &mut flat)?;
    Ok(flat.chunks(out_h * out_w).map(|c| c.to_vec()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cos_distance_hand_cases() {
        // N=1, C=2, H=1, W=4: same, opposite, orthogonal, zero student vector.
        let t = [1.0, -2.0, 1.0, 3.0, 0.0, 0.0, 0.0, 4.0];
        let s = [2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0];
        let d = cos_distance(
            FeatureView::new(&t, [1, 2, 1, 4]).unwrap(),
            FeatureView::new(&s, [1, 2, 1, 4]).unwrap(),
        );
        assert!((d[0] - 0.0).abs() < 1e-6);
        assert!((d[1] - 2.0).abs() < 1e-6);
        assert!((d[2] - 1.0).abs() < 1e-6);
        assert!((d[3] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn bilinear_matches_pytorch_hand_values() {
        // torch.nn.functional.interpolate([[1, 2], [3, 4]], size=4, mode="bilinear",
        // align_corners=False): first row 1, 1.25, 1.75, 2; second 1.5, 1.75, 2.25, 2.5.
        let u = upsample_bilinear(&[1.0, 2.0, 3.0, 4.0], 2, 2, 4, 4);
        let want = [
            1.0, 1.25, 1.75, 2.0, 1.5, 1.75, 2.25, 2.5, 2.5, 2.75, 3.25, 3.5, 3.0, 3.25, 3.75, 4.0,
        ];
        for (a, b) in u.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{u:?}");
        }
        // 1-D 3 → 2: sources 0.25 and 1.75.
        let u = upsample_bilinear(&[0.0, 4.0, 8.0], 1, 3, 1, 2);
        assert!(
            (u[0] - 1.0).abs() < 1e-6 && (u[1] - 7.0).abs() < 1e-6,
            "{u:?}"
        );
    }

    #[test]
    fn maps_sum_weighted_layers() {
        // Two layers: 1×1 map with distance 1 (orthogonal), 2×2 map with distance 0.
        let t0 = [1.0, 0.0];
        let s0 = [0.0, 1.0];
        let t1 = [1.0; 4];
        let maps = anomaly_maps(
            &[
                FeatureView::new(&t0, [1, 2, 1, 1]).unwrap(),
                FeatureView::new(&t1, [1, 1, 2, 2]).unwrap(),
            ],
            &[
                FeatureView::new(&s0, [1, 2, 1, 1]).unwrap(),
                FeatureView::new(&t1, [1, 1, 2, 2]).unwrap(),
            ],
            &[0.5, 1.0],
            4,
            4,
        )
        .unwrap();
        assert_eq!(maps.len(), 1);
        assert!(maps[0].iter().all(|v| (v - 0.5).abs() < 1e-6));
        assert_eq!(
            default_layer_weights(&[(64, 64), (16, 16)]),
            vec![1.0 / 4096.0, 1.0 / 256.0]
        );
    }
}
