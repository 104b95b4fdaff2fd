//! The fused train-mode BatchNorm against the composed one, on the whole student: loss,
//! gradients of every trainable weight and the running statistics after a step agree within
//! float tolerance.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use fabric_inspect::meta::Variant;
use fabric_train::fastbn::set_fast_batch_norm;
use fabric_train::loss::rrd_loss;
use fabric_train::model::{is_bn_statistic, named_trainable_vars, seeded_var_builder};
use fabric_train::student::Student;

/// Teacher widths of a small test student.
const CHANNELS: [usize; 4] = [8, 12, 16, 24];

/// Seeded non-negative pseudo-features for `n` 128×128 inputs (T0..T3 at 32, 32, 16, 8).
fn features(n: usize, salt: u64) -> Vec<Tensor> {
    [32usize, 32, 16, 8]
        .iter()
        .zip(CHANNELS)
        .enumerate()
        .map(|(l, (&s, c))| {
            let mut state = (salt << 8 | l as u64).wrapping_mul(0xD134_2543_DE82_EF95) | 1;
            let v: Vec<f32> = (0..n * c * s * s)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.25).max(0.0) * 3.0
                })
                .collect();
            Tensor::from_vec(v, (n, c, s, s), &Device::Cpu).unwrap()
        })
        .collect()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// What one training-mode step leaves, fused BatchNorm or composed.
struct Step {
    loss: f32,
    /// Gradient of every trainable variable, by name.
    grads: Vec<(String, Tensor)>,
    /// Every BatchNorm running statistic after the step, by name.
    stats: Vec<(String, Tensor)>,
    /// Eval-mode outputs after the step (these read the running statistics).
    eval: Vec<Tensor>,
}

fn step(fast: bool, variant: Variant, t: &[Tensor]) -> Step {
    set_fast_batch_norm(fast);
    let varmap = VarMap::new();
    let vb = seeded_var_builder(&varmap, 5, DType::F32, &Device::Cpu);
    let s = Student::new(vb, CHANNELS, variant).unwrap();
    let out = s.forward_t(t, true).unwrap();
    let loss = rrd_loss(t, &out, &[0.25; 4]).unwrap();
    let g = loss.backward().unwrap();
    set_fast_batch_norm(true);
    let grads = named_trainable_vars(&varmap)
        .into_iter()
        .map(|(name, v)| {
            let grad = g
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no gradient"));
            (name, grad.clone())
        })
        .collect();
    let mut stats: Vec<(String, Tensor)> = {
        let data = varmap.data().lock().unwrap();
        data.iter()
            .filter(|(name, _)| is_bn_statistic(name))
            .map(|(name, v)| (name.clone(), v.as_tensor().copy().unwrap()))
            .collect()
    };
    stats.sort_by(|a, b| a.0.cmp(&b.0));
    let eval = s.forward_t(t, false).unwrap();
    Step {
        loss: loss.to_scalar::<f32>().unwrap(),
        grads,
        stats,
        eval,
    }
}

#[test]
fn student_step_with_fused_batch_norm_matches_the_composed_one() {
    let t = features(2, 1);
    for variant in [Variant::Residual, Variant::Dg] {
        let slow = step(false, variant, &t);
        let fast = step(true, variant, &t);
        assert!(
            (slow.loss - fast.loss).abs() <= 1e-5 * slow.loss.abs(),
            "{variant}: loss {} vs {}",
            slow.loss,
            fast.loss
        );

        assert_eq!(slow.grads.len(), fast.grads.len());
        let mut bn_weights = 0;
        for ((name, a), (name_b, b)) in slow.grads.iter().zip(&fast.grads) {
            assert_eq!(name, name_b);
            let scale = max_abs(a);
            let d = max_abs(&(a - b).unwrap());
            assert!(
                d <= 1e-4 * scale + 1e-7,
                "{variant}: gradient of {name} differs by {d} (largest value {scale})"
            );
            if name.contains("bn") && name.ends_with("weight") {
                assert!(scale > 0.0, "{variant}: {name} has a zero gradient");
                bn_weights += 1;
            }
        }
        assert!(
            bn_weights >= 20,
            "{variant}: only {bn_weights} BatchNorm γ compared"
        );

        assert_eq!(slow.stats.len(), fast.stats.len());
        assert!(
            slow.stats.len() >= 40,
            "{variant}: too few running statistics"
        );
        for ((name, a), (_, b)) in slow.stats.iter().zip(&fast.stats) {
            let d = max_abs(&(a - b).unwrap());
            assert!(
                d <= 1e-5 * max_abs(a).max(1.0),
                "{variant}: {name} differs by {d}"
            );
        }
        for (k, (a, b)) in slow.eval.iter().zip(&fast.eval).enumerate() {
            let d = max_abs(&(a - b).unwrap());
            assert!(
                d <= 1e-4 * max_abs(a) + 1e-6,
                "{variant}: eval output S{k} differs by {d}"
            );
        }
    }
}
