//! A few Adam steps on fixed random teacher features lower the loss; the run is
//! reproducible; a saved `VarMap` (weights and BatchNorm statistics) restores the student.

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
use fabric_inspect::meta::Variant;
use fabric_train::loss::{rrd_loss, DEFAULT_ALPHA};
use fabric_train::model::{named_trainable_vars, seeded_var_builder, trainable_vars};
use fabric_train::student::Student;
use fabric_train::weights::random::SplitMix64;

const CH: [usize; 4] = [8, 12, 20, 36];

fn features(n: usize, seed: u64) -> Vec<Tensor> {
    let sizes = [16, 16, 8, 4];
    (0..4)
        .map(|i| {
            let shape = [n, CH[i], sizes[i], sizes[i]];
            let mut rng = SplitMix64::for_tensor(seed, &format!("t{i}"));
            let v: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| rng.normal().max(0.0) as f32)
                .collect();
            Tensor::from_vec(v, &shape, &Device::Cpu).unwrap()
        })
        .collect()
}

/// Builds a student with `seed`, runs `steps` Adam steps (lr 1e-3, no weight decay) and
/// returns the loss before every step, and the variables.
fn train(variant: Variant, seed: u64, steps: usize) -> (Vec<f32>, VarMap, Student) {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu);
    let s = Student::new(vb, CH, variant).unwrap();
    let params = ParamsAdamW {
        lr: 1e-3,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::new(trainable_vars(&vm), params).unwrap();
    let t = features(2, 11);
    let mut losses = Vec::new();
    for _ in 0..steps {
        let out = s.forward_t(&t, true).unwrap();
        let loss = rrd_loss(&t, &out, &DEFAULT_ALPHA).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&loss).unwrap();
    }
    (losses, vm, s)
}

#[test]
fn adam_steps_lower_the_loss() {
    for variant in [Variant::Residual, Variant::Dg] {
        let (losses, _, _) = train(variant, 1, 8);
        let (first, last) = (losses[0], *losses.last().unwrap());
        assert!(last < 0.9 * first, "{variant}: loss {losses:?}");
    }
}

#[test]
fn same_seed_same_training() {
    let (la, a, _) = train(Variant::Residual, 3, 3);
    let (lb, b, _) = train(Variant::Residual, 3, 3);
    assert_eq!(la, lb);
    let (va, vb) = (named_trainable_vars(&a), named_trainable_vars(&b));
    assert_eq!(va.len(), vb.len());
    for ((na, xa), (nb, xb)) in va.iter().zip(&vb) {
        assert_eq!(na, nb);
        let xa = xa.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let xb = xb.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(xa, xb, "{na} differs between two runs");
    }
}

#[test]
fn saved_variables_restore_the_student_bn_statistics_included() {
    let (_, vm, s) = train(Variant::Residual, 5, 2);
    let t = features(1, 12);
    let expected = s.forward_t(&t, false).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("student.safetensors");
    vm.save(&path).unwrap();
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    assert!(
        names.iter().any(|n| n.ends_with(".running_var")),
        "statistics not saved"
    );

    let mut fresh = VarMap::new();
    let vb = seeded_var_builder(&fresh, 99, DType::F32, &Device::Cpu);
    let restored = Student::new(vb, CH, Variant::Residual).unwrap();
    fresh.load(&path).unwrap();
    let got = restored.forward_t(&t, false).unwrap();
    for (a, b) in expected.iter().zip(&got) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(d, 0.0);
    }
}
