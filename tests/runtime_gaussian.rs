//! Gaussian smoothing against a direct 2-D convolution and against scipy.
//!
//! The direct reference convolves with the full 2-D kernel `g(dx)·g(dy)` in f64, mirroring
//! indices with its own implementation of scipy's `reflect` rule, over a grid of map sizes
//! (1×N, N×1, odd sizes, sizes smaller than the kernel radius) and sigmas.
//!
//! The scipy values were made with:
//! ```python
//! import numpy as np
//! from scipy.ndimage import gaussian_filter
//! r = np.random.default_rng(5)
//! for (h, w, s) in [(3, 5, 1.5), (1, 7, 4.0), (6, 4, 0.7)]:
//!     m = np.round(r.random((h, w)), 6)
//!     o = gaussian_filter(m, sigma=s, mode="reflect", truncate=4.0)
//!     print(h, w, s, m.ravel().tolist(), o.ravel().round(9).tolist())
//! ```

use fabric_inspect::gaussian::{gaussian_smooth, kernel_radius};

/// scipy `reflect`: walk outward, bouncing off each end with the edge sample repeated.
fn mirror(mut i: i64, n: i64) -> usize {
    loop {
        if i < 0 {
            i = -i - 1;
        } else if i >= n {
            i = 2 * n - 1 - i;
        } else {
            return i as usize;
        }
    }
}

fn direct(map: &[f32], w: usize, h: usize, sigma: f64) -> Vec<f64> {
    let r = (4.0 * sigma + 0.5) as i64;
    let g: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let sum: f64 = g.iter().sum();
    let g: Vec<f64> = g.iter().map(|v| v / sum).collect();
    let mut out = vec![0.0; w * h];
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let mut acc = 0.0;
            for dy in -r..=r {
                for dx in -r..=r {
                    let sy = mirror(y + dy, h as i64);
                    let sx = mirror(x + dx, w as i64);
                    acc += g[(dy + r) as usize] * g[(dx + r) as usize] * map[sy * w + sx] as f64;
                }
            }
            out[y as usize * w + x as usize] = acc;
        }
    }
    out
}

fn pseudo_random_map(w: usize, h: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..w * h)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32) / (1u64 << 31) as f32
        })
        .collect()
}

#[test]
fn matches_direct_2d_convolution_on_a_grid() {
    let sizes = [
        (1, 1),
        (1, 9),
        (9, 1),
        (2, 3),
        (5, 7),
        (17, 4),
        (33, 33),
        (40, 21),
        (64, 3),
    ];
    let sigmas = [0.5f32, 1.0, 2.3, 4.0];
    for &(w, h) in &sizes {
        for &sigma in &sigmas {
            let map = pseudo_random_map(w, h, (w * 131 + h) as u64);
            let got = gaussian_smooth(&map, w, h, sigma);
            let want = direct(&map, w, h, sigma as f64);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-5, "{w}×{h} σ={sigma}: max difference {worst}");
        }
    }
    assert_eq!(kernel_radius(4.0), 16);
}

#[test]
fn an_impulse_spreads_in_both_directions() {
    // The authors' row-only blur would leave rows above and below the impulse at zero.
    let (w, h) = (41, 41);
    let mut map = vec![0.0f32; w * h];
    map[20 * w + 20] = 1.0;
    let s = gaussian_smooth(&map, w, h, 4.0);
    let above = s[12 * w + 20];
    let left = s[20 * w + 12];
    assert!(above > 1e-3, "vertical spread {above}");
    assert!((above - left).abs() < 1e-7, "isotropic: {above} vs {left}");
    let total: f32 = s.iter().sum();
    assert!((total - 1.0).abs() < 1e-4, "mass {total}");
}

#[allow(clippy::type_complexity)]
const SCIPY: &[(usize, usize, f32, &[f64], &[f64])] = &[
    (
        3,
        5,
        1.5,
        &[
            0.805003, 0.807941, 0.515326, 0.285801, 0.053931, 0.383369, 0.408473, 0.045275,
            0.048758, 0.999176, 0.652369, 0.23451, 0.434948, 0.974186, 0.897678,
        ],
        &[
            0.557728976,
            0.513129155,
            0.461001237,
            0.43851762,
            0.441808973,
            0.522000749,
            0.492673564,
            0.474437811,
            0.494595723,
            0.527335501,
            0.490367501,
            0.476278327,
            0.491364479,
            0.552535236,
            0.612969148,
        ],
    ),
    (
        1,
        7,
        4.0,
        &[
            0.844231, 0.392405, 0.493023, 0.676689, 0.060803, 0.555596, 0.271452,
        ],
        &[
            0.505061876,
            0.498198941,
            0.485843107,
            0.470509104,
            0.455244071,
            0.443045375,
            0.436296525,
        ],
    ),
    (
        6,
        4,
        0.7,
        &[
            0.879651, 0.064214, 0.679182, 0.870089, 0.227319, 0.895448, 0.872195, 0.018517,
            0.707496, 0.0012, 0.503364, 0.436667, 0.203253, 0.324943, 0.806215, 0.316452, 0.149039,
            0.698512, 0.448544, 0.798939, 0.235516, 0.319785, 0.79988, 0.507068,
        ],
        &[
            0.630992261,
            0.451019264,
            0.613478394,
            0.686289888,
            0.481992041,
            0.558579071,
            0.605177055,
            0.392462863,
            0.450699623,
            0.390488959,
            0.495933973,
            0.399440336,
            0.309439205,
            0.399909899,
            0.549743304,
            0.488147378,
            0.263327881,
            0.472706862,
            0.588481446,
            0.624934372,
            0.26126655,
            0.429538925,
            0.619466003,
            0.599972448,
        ],
    ),
];

#[test]
fn matches_scipy_gaussian_filter() {
    for &(h, w, sigma, input, want) in SCIPY {
        let input: Vec<f32> = input.iter().map(|&v| v as f32).collect();
        let got = gaussian_smooth(&input, w, h, sigma);
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (*a as f64 - b).abs() < 2e-6,
                "{h}×{w} σ={sigma} [{i}]: {a} vs scipy {b}"
            );
        }
    }
}
