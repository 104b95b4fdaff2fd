//! The distillation loss (SPEC.md §7) on hand-made tensors.

use candle_core::{Device, Tensor, Var};
use fabric_train::loss::{cos_distance, cos_distance_maps, rrd_loss, DEFAULT_ALPHA};

fn t4(v: &[f32], shape: [usize; 4]) -> Tensor {
    Tensor::from_slice(v, &shape, &Device::Cpu).unwrap()
}

fn scalar(t: &Tensor) -> f32 {
    t.to_scalar::<f32>().unwrap()
}

fn pattern(shape: [usize; 4], k: usize) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i * 31 + k * 17) % 23) as f32 / 7.0 - 1.3)
        .collect();
    t4(&v, shape)
}

fn pyramid(n: usize, k: usize) -> Vec<Tensor> {
    [[n, 3, 8, 8], [n, 4, 8, 8], [n, 5, 4, 4], [n, 6, 2, 2]]
        .into_iter()
        .map(|s| pattern(s, k))
        .collect()
}

#[test]
fn identical_features_give_zero() {
    let t = pyramid(3, 1);
    let l = scalar(&rrd_loss(&t, &t, &DEFAULT_ALPHA).unwrap());
    assert!(l.abs() < 1e-5, "{l}");
}

#[test]
fn opposite_features_give_two_per_pixel() {
    let t = pyramid(3, 2);
    let s: Vec<Tensor> = t.iter().map(|x| x.neg().unwrap()).collect();
    for (t, s) in t.iter().zip(&s) {
        let d = cos_distance(t, s)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(d.iter().all(|v| (v - 2.0).abs() < 1e-5), "{d:?}");
    }
    // Mean over pixels is 2, summed over the batch of 3 → 6 per layer; ¼ · 4 layers → 6.
    let l = scalar(&rrd_loss(&t, &s, &DEFAULT_ALPHA).unwrap());
    assert!((l - 6.0).abs() < 1e-4, "{l}");
}

#[test]
fn hand_computed_case_with_batch_sum_and_alpha() {
    // Layer A: N = 2, C = 2, H = 1, W = 2 (channel-major per item).
    // item 0: pixel 0 t=(1,0) s=(0,1) → 1;        pixel 1 t=(1,0) s=(1,1) → 1 − 1/√2
    // item 1: pixel 0 t=(3,4) s=(6,8) → 0;        pixel 1 t=(1,0) s=(−2,0) → 2
    let ta = t4(&[1., 1., 0., 0., 3., 1., 4., 0.], [2, 2, 1, 2]);
    let sa = t4(&[0., 1., 1., 1., 6., -2., 8., 0.], [2, 2, 1, 2]);
    // Layer B: N = 2, C = 3, H = W = 1.
    // item 0: t=(1,2,2) s=(2,1,−2) → cos = (2+2−4)/9 = 0 → 1;  item 1: t=(0,0,5) s=(0,3,4) → 1 − 4/5
    let tb = t4(&[1., 2., 2., 0., 0., 5.], [2, 3, 1, 1]);
    let sb = t4(&[2., 1., -2., 0., 3., 4.], [2, 3, 1, 1]);

    let r = 1.0 - 1.0 / 2f32.sqrt();
    let loss_a = (1.0 + r) / 2.0 + (0.0 + 2.0) / 2.0;
    let loss_b = 1.0 + 0.2;
    let alpha = [0.3, 0.7];
    let expected = 0.3 * loss_a + 0.7 * loss_b;
    let got =
        scalar(&rrd_loss(&[ta.clone(), tb.clone()], &[sa.clone(), sb.clone()], &alpha).unwrap());
    assert!(
        (got - expected).abs() < 1e-5,
        "got {got}, expected {expected}"
    );

    let maps = cos_distance_maps(&[ta, tb], &[sa, sb]).unwrap();
    assert_eq!(maps[0].dims(), &[2, 1, 2]);
    assert_eq!(maps[1].dims(), &[2, 1, 1]);
    let a = maps[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (g, e) in a.iter().zip([1.0, r, 0.0, 2.0]) {
        assert!((g - e).abs() < 1e-5, "{a:?}");
    }
}

#[test]
fn loss_ignores_feature_scale() {
    let t = pyramid(2, 3);
    let s = pyramid(2, 4);
    let s3: Vec<Tensor> = s.iter().map(|x| (x * 3.0).unwrap()).collect();
    let a = scalar(&rrd_loss(&t, &s, &DEFAULT_ALPHA).unwrap());
    let b = scalar(&rrd_loss(&t, &s3, &DEFAULT_ALPHA).unwrap());
    assert!(a > 0.1);
    assert!((a - b).abs() < 1e-5 * a.max(1.0), "{a} vs {b}");
}

#[test]
fn a_zero_student_pixel_has_distance_one_and_a_finite_gradient() {
    let t = t4(&[1., 2., 3., 4.], [1, 2, 1, 2]);
    let s = Var::from_tensor(&t4(&[0., 1., 0., 1.], [1, 2, 1, 2])).unwrap();
    let d = cos_distance(&t, s.as_tensor()).unwrap();
    let v = d.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!((v[0] - 1.0).abs() < 1e-6, "{v:?}");
    let l = rrd_loss(&[t], &[s.as_tensor().clone()], &[1.0]).unwrap();
    let g = l.backward().unwrap();
    let g = g
        .get(&s)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
}

#[test]
fn mismatched_inputs_are_errors() {
    let t = pyramid(1, 1);
    assert!(rrd_loss(&t, &t[..3], &DEFAULT_ALPHA).is_err());
    assert!(rrd_loss(&t, &t, &[0.5, 0.5]).is_err());
    let s = pyramid(2, 1);
    assert!(rrd_loss(&t, &s, &DEFAULT_ALPHA).is_err());
}
