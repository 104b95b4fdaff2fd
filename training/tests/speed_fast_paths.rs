//! The fast paths of a training step (convolutions, fused BatchNorm, fused element-wise
//! operations and loss) against candle's own operations: the whole student's gradients, and
//! its weights after a few Adam steps, agree within float tolerance.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use fabric_inspect::meta::Variant;
use fabric_train::loss::rrd_loss;
use fabric_train::model::{named_trainable_vars, seeded_var_builder};
use fabric_train::set_fast_paths;
use fabric_train::student::Student;
use fabric_train::trainer::Adam;

/// Channels of a small teacher (the widths follow the teacher; any positive values work).
const CHANNELS: [usize; 4] = [8, 12, 16, 24];

/// Seeded pseudo-teacher features for a batch of `n` 128×128 inputs (T0 at 32×32, so that
/// the 4×4 embedding lets SSPCAB's shifted views see the map).
fn features(n: usize, salt: u64) -> Vec<Tensor> {
    let sizes = [32usize, 32, 16, 8];
    CHANNELS
        .iter()
        .zip(sizes)
        .enumerate()
        .map(|(l, (&c, s))| {
            let len = n * c * s * s;
            let mut state = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (l as u64 + 1);
            let v: Vec<f32> = (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    // ReLU-like features: non-negative, some exact zeros.
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.3).max(0.0) * 2.0
                })
                .collect();
            Tensor::from_vec(v, (n, c, s, s), &Device::Cpu).unwrap()
        })
        .collect()
}

fn student(variant: Variant) -> (VarMap, Student) {
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu);
    let s = Student::new(vb, CHANNELS, variant).unwrap();
    (varmap, s)
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// Loss and gradients of one training-mode step, fast paths on or off.
fn grads(fast: bool, variant: Variant, t: &[Tensor]) -> (f32, Vec<(String, Tensor)>) {
    set_fast_paths(fast);
    let (varmap, s) = student(variant);
    let out = s.forward_t(t, true).unwrap();
    let loss = rrd_loss(t, &out, &[0.25; 4]).unwrap();
    let g = loss.backward().unwrap();
    set_fast_paths(true);
    let named = named_trainable_vars(&varmap)
        .into_iter()
        .map(|(name, v)| {
            let grad = g
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"))
                .clone();
            (name, grad)
        })
        .collect();
    (loss.to_scalar::<f32>().unwrap(), named)
}

#[test]
fn student_gradients_match_the_straightforward_path() {
    // Batch 2 runs one image per task on a two-core machine; batch 1 splits each product
    // over the threads, batch 3 mixes both.
    for (variant, n) in [
        (Variant::Residual, 2),
        (Variant::Dg, 2),
        (Variant::Residual, 1),
        (Variant::Residual, 3),
    ] {
        let t = features(n, 1);
        let (loss_ref, reference) = grads(false, variant, &t);
        let (loss_fast, fast) = grads(true, variant, &t);
        assert!(
            (loss_ref - loss_fast).abs() <= 1e-5 * loss_ref.abs(),
            "{variant}, batch {n}: loss {loss_ref} vs {loss_fast}"
        );
        assert_eq!(reference.len(), fast.len());
        let mut convs = 0;
        for ((name, a), (name_b, b)) in reference.iter().zip(&fast) {
            assert_eq!(name, name_b);
            let scale = max_abs(a);
            let d = max_abs_diff(a, b);
            assert!(
                d <= 1e-4 * scale + 1e-7,
                "{variant}, batch {n}: gradient of {name} differs by {d} (largest value {scale})"
            );
            if name.contains("conv") && name.ends_with("weight") {
                assert!(scale > 0.0, "{variant}: {name} has a zero gradient");
                convs += 1;
            }
        }
        assert!(
            convs >= 20,
            "{variant}: only {convs} convolution weights compared"
        );
    }
}

/// Mean absolute value of a tensor.
fn mean_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Losses of 4 Adam steps (the recipe's settings) and the weights after them.
fn adam_run(fast: bool, batches: &[Vec<Tensor>]) -> (Vec<f32>, Vec<(String, Var)>) {
    set_fast_paths(fast);
    let (varmap, s) = student(Variant::Residual);
    let vars = named_trainable_vars(&varmap);
    let mut adam = Adam::new(vars.clone(), 0.005, [0.9, 0.999], 1e-8);
    let mut losses = Vec::new();
    for t in batches {
        let out = s.forward_t(t, true).unwrap();
        let loss = rrd_loss(t, &out, &[0.25; 4]).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        adam.apply(&loss.backward().unwrap()).unwrap();
    }
    set_fast_paths(true);
    (losses, vars)
}

#[test]
fn a_few_adam_steps_match_the_straightforward_path() {
    // Adam divides each gradient by its running magnitude, so float rounding on values that
    // are zero in theory (the bias before a softmax along width) or that cancel becomes
    // steps of the order of the learning rate, in either path. The tolerance is therefore
    // what rounding does to the straightforward path itself: its run on inputs changed by
    // one part in a million. The fast path must stay as close to the straightforward run as
    // that (per tensor: mean distance relative to how far the tensor moved, averaged).
    let batches: Vec<Vec<Tensor>> = (0..4).map(|k| features(2, 10 + k)).collect();
    let nudged: Vec<Vec<Tensor>> = batches
        .iter()
        .map(|b| b.iter().map(|t| (t * (1.0 + 1e-6)).unwrap()).collect())
        .collect();
    let init = {
        let (varmap, _) = student(Variant::Residual);
        named_trainable_vars(&varmap)
    };
    let (loss_ref, reference) = adam_run(false, &batches);
    let (_, noise) = adam_run(false, &nudged);
    let (loss_fast, fast) = adam_run(true, &batches);
    for (a, b) in loss_ref.iter().zip(&loss_fast) {
        assert!(
            (a - b).abs() <= 1e-3 * a.abs(),
            "losses {loss_ref:?} vs {loss_fast:?}"
        );
    }
    assert!(
        loss_ref[3] < loss_ref[0],
        "training did not lower the loss: {loss_ref:?}"
    );
    let spread = |other: &[(String, Var)]| -> f32 {
        let ratios: Vec<f32> = init
            .iter()
            .zip(&reference)
            .zip(other)
            .map(|(((_, w0), (_, a)), (_, b))| {
                let moved = mean_abs(&(a.as_tensor() - w0.as_tensor()).unwrap());
                mean_abs(&(a.as_tensor() - b.as_tensor()).unwrap()) / moved.max(1e-12)
            })
            .collect();
        ratios.iter().sum::<f32>() / ratios.len() as f32
    };
    let (rounding, fast_spread) = (spread(&noise), spread(&fast));
    eprintln!("mean relative spread: fast path {fast_spread:.4}, rounding {rounding:.4}");
    assert!(rounding > 0.0, "the nudged run should differ");
    assert!(
        fast_spread <= 2.0 * rounding + 1e-3,
        "the fast path ends {fast_spread} apart, rounding alone {rounding}"
    );
}
