//! Isotropic 2-D Gaussian smoothing of anomaly maps.
//!
//! The filter follows scipy's `gaussian_filter(map, sigma)` with its defaults: a kernel of
//! radius `round(4σ)` (33 taps at σ = 4) applied along rows and then along columns, with
//! the `reflect` border rule (`d c b a | a b c d | d c b a`, the edge sample repeated),
//! which is repeated periodically when the map is shorter than the radius. The authors'
//! code blurred each row alone; this module smooths in both directions (DECISIONS.md).

use rayon::prelude::*;

/// Maps an index outside `0..n` back inside by scipy's `reflect` rule (period 2n).
pub fn reflect_index(i: isize, n: usize) -> usize {
    debug_assert!(n > 0);
    let period = 2 * n as isize;
    let m = i.rem_euclid(period) as usize;
    if m < n {
        m
    } else {
        2 * n - 1 - m
    }
}

/// Radius of the kernel for `sigma` (scipy: `int(4·σ + 0.5)`).
pub fn kernel_radius(sigma: f32) -> usize {
    (4.0 * sigma as f64 + 0.5) as usize
}

/// Normalised 1-D Gaussian weights, `2·radius + 1` taps.
pub fn kernel_1d(sigma: f32) -> Vec<f32> {
    let r = kernel_radius(sigma) as i64;
    let s2 = (sigma as f64) * (sigma as f64);
    let w: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 * (x * x) as f64 / s2).exp())
        .collect();
    let sum: f64 = w.iter().sum();
    w.iter().map(|v| (v / sum) as f32).collect()
}

/// Smooths a row-major `width`×`height` map with a 2-D Gaussian of standard deviation
/// `sigma` pixels; returns a new map of the same size. `sigma <= 0` returns a copy.
///
/// # Panics
/// When `map.len() != width·height`.
pub fn gaussian_smooth(map: &[f32], width: usize, height: usize, sigma: f32) -> Vec<f32> {
    let mut out = vec![0.0; map.len()];
    gaussian_smooth_into(map, width, height, sigma, &mut out);
    out
}

/// [`gaussian_smooth`] writing into a caller's buffer of `width·height` floats.
pub fn gaussian_smooth_into(map: &[f32], width: usize, height: usize, sigma: f32, out: &mut [f32]) {
    assert_eq!(
        map.len(),
        width * height,
        "gaussian_smooth: map is not width×height"
    );
    assert_eq!(
        out.len(),
        map.len(),
        "gaussian_smooth: output is not width×height"
    );
    if map.is_empty() {
        return;
    }
    if sigma <= 0.0 {
        out.copy_from_slice(map);
        return;
    }
    let k = kernel_1d(sigma);
    let r = k.len() / 2;

    // Horizontal pass into `tmp`, one row per task, through a padded copy of the row.
    let mut tmp = vec![0.0f32; map.len()];
    tmp.par_chunks_mut(width)
        .zip(map.par_chunks(width))
        .for_each_init(
            || vec![0.0f32; width + 2 * r],
            |padded, (dst, src)| {
                // Interior copied as is; only the 2·r border samples need the reflect rule.
                padded[r..r + width].copy_from_slice(src);
                for j in 0..r {
                    padded[j] = src[reflect_index(j as isize - r as isize, width)];
                    padded[r + width + j] = src[reflect_index((width + j) as isize, width)];
                }
                // Tap-outer accumulation over the whole row vectorises; each output still
                // sums its taps in the same order as a per-pixel dot product would.
                dst.fill(0.0);
                for (t, &w) in k.iter().enumerate() {
                    for (d, s) in dst.iter_mut().zip(&padded[t..t + width]) {
                        *d += w * s;
                    }
                }
            },
        );

    // Vertical pass: each output row is a weighted sum of whole input rows, which keeps
    // memory access sequential and lets the inner loop vectorise.
    out.par_chunks_mut(width).enumerate().for_each(|(y, dst)| {
        dst.fill(0.0);
        for (t, &w) in k.iter().enumerate() {
            let sy = reflect_index(y as isize + t as isize - r as isize, height);
            let src = &tmp[sy * width..(sy + 1) * width];
            for (d, s) in dst.iter_mut().zip(src) {
                *d += w * s;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_rule_matches_scipy() {
        // n = 4, samples a b c d: index -1 → a, -4 → d, -5 → d, 4 → d, 7 → a, 8 → a.
        let n = 4;
        let got: Vec<usize> = (-5..10).map(|i| reflect_index(i, n)).collect();
        assert_eq!(got, vec![3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0, 1]);
        assert_eq!(reflect_index(-3, 1), 0);
    }

    #[test]
    fn kernel_has_33_taps_at_sigma_4_and_sums_to_one() {
        let k = kernel_1d(4.0);
        assert_eq!(k.len(), 33);
        let s: f32 = k.iter().sum();
        assert!((s - 1.0).abs() < 1e-6);
        assert!(k[16] > k[15] && (k[15] - k[17]).abs() < 1e-9);
    }

    #[test]
    fn constant_map_stays_constant() {
        let m = vec![2.5f32; 7 * 3];
        let s = gaussian_smooth(&m, 7, 3, 4.0);
        assert!(s.iter().all(|v| (v - 2.5).abs() < 1e-5));
    }
}
