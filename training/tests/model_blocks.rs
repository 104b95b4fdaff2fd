//! Behaviour of single blocks: the attention softmax runs along the width, SSPCAB never reads
//! the centre pixel, BatchNorm train vs eval, and the seeded initialisation.

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use fabric_inspect::meta::Variant;
use fabric_train::bottleneck::{Attention2, Sspcab};
use fabric_train::model::seeded_var_builder;
use fabric_train::residual::Attention;
use fabric_train::student::{ConvReluBn, Student};
use fabric_train::weights::random::SplitMix64;

fn random(shape: &[usize], seed: u64, positive: bool) -> Tensor {
    let mut rng = SplitMix64::for_tensor(seed, "input");
    let v: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|_| {
            let x = rng.normal() as f32;
            if positive {
                x.abs() + 0.1
            } else {
                x
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn var(vm: &VarMap, name: &str) -> Tensor {
    let data = vm.data().lock().unwrap();
    data.get(name)
        .unwrap_or_else(|| panic!("no variable {name}"))
        .as_tensor()
        .clone()
}

/// Identity 1×1 (k = 1) or centre-only 3×3 (k = 3) kernel with zero bias.
fn set_identity(vm: &mut VarMap, prefix: &str, c: usize, k: usize) {
    let mut w = vec![0f32; c * c * k * k];
    for o in 0..c {
        w[((o * c + o) * k + k / 2) * k + k / 2] = 1.0;
    }
    let w = Tensor::from_vec(w, (c, c, k, k), &Device::Cpu).unwrap();
    vm.set_one(format!("{prefix}.weight"), w).unwrap();
    vm.set_one(
        format!("{prefix}.bias"),
        Tensor::zeros(c, DType::F32, &Device::Cpu).unwrap(),
    )
    .unwrap();
}

/// `softmax(x) · x` along the last axis of an [1, C, H, W] tensor, by hand.
fn softmax_width_times_x(x: &[f32], w: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(w) {
        let m = row.iter().copied().fold(f32::MIN, f32::max);
        let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        out.extend(e.iter().zip(row).map(|(e, v)| e / s * v));
    }
    out
}

fn softmax_height_times_x(x: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut out = x.to_vec();
    for plane in 0..x.len() / (h * w) {
        for col in 0..w {
            let idx: Vec<usize> = (0..h).map(|r| plane * h * w + r * w + col).collect();
            let m = idx.iter().map(|&i| x[i]).fold(f32::MIN, f32::max);
            let s: f32 = idx.iter().map(|&i| (x[i] - m).exp()).sum();
            for &i in &idx {
                out[i] = (x[i] - m).exp() / s * x[i];
            }
        }
    }
    out
}

#[test]
fn residual_attention_softmax_runs_along_the_width() {
    let (c, h, w) = (2, 3, 4);
    let mut vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 1, DType::F32, &Device::Cpu);
    let att = Attention::new(vb, c).unwrap();
    for p in ["conv1", "conv2", "conv3"] {
        set_identity(&mut vm, p, c, 1);
    }
    // With identity convs and positive x: a = b = z = x, out = softmax_W(x) · x.
    let x = random(&[1, c, h, w], 2, true);
    let out = vec(&att.forward(&x).unwrap());
    let by_width = softmax_width_times_x(&vec(&x), w);
    let by_height = softmax_height_times_x(&vec(&x), h, w);
    for (o, e) in out.iter().zip(&by_width) {
        assert!((o - e).abs() < 1e-5, "{out:?} vs {by_width:?}");
    }
    assert!(out
        .iter()
        .zip(&by_height)
        .any(|(o, e)| (o - e).abs() > 1e-3));
}

#[test]
fn bottleneck_attention_softmax_runs_along_the_width() {
    let (c, h, w) = (3, 4, 5);
    let mut vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 1, DType::F32, &Device::Cpu);
    let att = Attention2::new(vb, c).unwrap();
    for p in ["conv1", "conv2"] {
        set_identity(&mut vm, p, c, 3);
    }
    let x = random(&[1, c, h, w], 3, true);
    let out = vec(&att.forward(&x).unwrap());
    let expected = softmax_width_times_x(&vec(&x), w);
    for (o, e) in out.iter().zip(&expected) {
        assert!((o - e).abs() < 1e-5, "{out:?} vs {expected:?}");
    }
}

#[test]
fn sspcab_never_reads_the_centre_pixel() {
    let (c, h, w) = (4, 8, 8);
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 4, DType::F32, &Device::Cpu);
    let ss = Sspcab::new(vb, c).unwrap();
    let x = random(&[1, c, h, w], 5, false);
    let (i, j) = (3, 4);
    let bump = Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu).unwrap();
    let bump = bump
        .slice_assign(
            &[0..1, 0..c, i..i + 1, j..j + 1],
            &(Tensor::ones((1, c, 1, 1), DType::F32, &Device::Cpu).unwrap() * 5.0).unwrap(),
        )
        .unwrap();
    let x2 = (&x + bump).unwrap();

    let y = ss.masked_conv(&x).unwrap();
    let y2 = ss.masked_conv(&x2).unwrap();
    assert_eq!(
        vec(&y.i((.., .., i, j)).unwrap()),
        vec(&y2.i((.., .., i, j)).unwrap())
    );
    // The four pixels that do read x(i, j): (i±2, j±2).
    for (a, b) in [
        (i + 2, j + 2),
        (i - 2, j + 2),
        (i + 2, j - 2),
        (i - 2, j - 2),
    ] {
        let d = (y.i((.., .., a, b)).unwrap() - y2.i((.., .., a, b)).unwrap()).unwrap();
        assert!(
            vec(&d.abs().unwrap()).iter().any(|v| *v > 1e-4),
            "({a},{b}) unchanged"
        );
    }
    // After squeeze-excitation y(i, j) changes only through the per-channel gate, exactly as
    // an unaffected pixel does.
    let o = ss.forward(&x).unwrap();
    let o2 = ss.forward(&x2).unwrap();
    let ratio = |p: (usize, usize)| -> Vec<f32> {
        let a = vec(&o.i((.., .., p.0, p.1)).unwrap());
        let b = vec(&o2.i((.., .., p.0, p.1)).unwrap());
        a.iter()
            .zip(&b)
            .map(|(a, b)| if *a > 1e-6 { b / a } else { f32::NAN })
            .collect()
    };
    let centre = ratio((i, j));
    let far = ratio((0, 7));
    for (k, (a, b)) in centre.iter().zip(&far).enumerate() {
        if a.is_finite() && b.is_finite() {
            assert!((a - b).abs() < 1e-4, "channel {k}: {a} vs {b}");
        }
    }
}

#[test]
fn sspcab_matches_its_formula() {
    let (c, h, w) = (3, 6, 5);
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 6, DType::F32, &Device::Cpu);
    let ss = Sspcab::new(vb, c).unwrap();
    let x = random(&[1, c, h, w], 7, false);
    let xv = vec(&x);
    let at = |ch: usize, r: isize, q: isize| -> f32 {
        if r < 0 || q < 0 || r >= h as isize || q >= w as isize {
            0.0
        } else {
            xv[(ch * h + r as usize) * w + q as usize]
        }
    };
    // conv k reads x(i + dy_k, j + dx_k): (−2,−2), (+2,−2), (−2,+2), (+2,+2).
    let shifts = [(-2isize, -2isize), (2, -2), (-2, 2), (2, 2)];
    let got = vec(&ss.masked_conv(&x).unwrap());
    for o in 0..c {
        for i in 0..h {
            for j in 0..w {
                let mut acc = 0f32;
                for (k, (dy, dx)) in shifts.iter().enumerate() {
                    let wk = vec(&var(&vm, &format!("conv{k}.weight")));
                    acc += vec(&var(&vm, &format!("conv{k}.bias")))[o];
                    for ci in 0..c {
                        acc += wk[o * c + ci] * at(ci, i as isize + dy, j as isize + dx);
                    }
                }
                let e = acc.max(0.0);
                let g = got[(o * h + i) * w + j];
                assert!((g - e).abs() < 1e-5, "y[{o},{i},{j}] = {g}, expected {e}");
            }
        }
    }
}

#[test]
fn batch_norm_train_uses_batch_statistics_eval_running_ones() {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 8, DType::F32, &Device::Cpu);
    let unit = ConvReluBn::c1(vb, 3, 4, 1).unwrap();
    let x = (random(&[2, 3, 5, 5], 9, false) * 3.0).unwrap();

    // Train: per channel mean 0 and (biased) variance 1, since γ = 1 and β = 0 at init.
    let y = unit.forward_t(&x, true).unwrap();
    let mean = vec(&y.mean((0, 2, 3)).unwrap());
    let var = vec(&y.sqr().unwrap().mean((0, 2, 3)).unwrap());
    for (m, v) in mean.iter().zip(&var) {
        assert!(
            m.abs() < 1e-4 && (v - 1.0).abs() < 1e-3,
            "mean {m}, var {v}"
        );
    }
    // The running statistics moved from (0, 1) by momentum 0.1 towards the batch's.
    let rm = vec(&var_named(&vm, "bn.running_mean"));
    assert!(
        rm.iter().all(|v| *v > 0.0),
        "ReLU outputs have a positive mean: {rm:?}"
    );

    // Eval: (x − running mean) / √(running var + eps), the same for an item alone or in a
    // batch, and the statistics stay put.
    let before = vec(&var_named(&vm, "bn.running_var"));
    let e_batch = unit.forward_t(&x, false).unwrap();
    let e_one = unit.forward_t(&x.narrow(0, 1, 1).unwrap(), false).unwrap();
    let d = (e_batch.narrow(0, 1, 1).unwrap() - &e_one)
        .unwrap()
        .abs()
        .unwrap();
    assert!(vec(&d).iter().all(|v| *v < 1e-6));
    assert_eq!(before, vec(&var_named(&vm, "bn.running_var")));
    let t_one = unit.forward_t(&x.narrow(0, 1, 1).unwrap(), true).unwrap();
    let d = (y.narrow(0, 1, 1).unwrap() - t_one).unwrap().abs().unwrap();
    assert!(
        vec(&d).iter().any(|v| *v > 1e-3),
        "train mode should depend on the batch"
    );
}

fn var_named(vm: &VarMap, name: &str) -> Tensor {
    var(vm, name).copy().unwrap()
}

#[test]
fn student_train_mode_updates_running_stats_and_eval_does_not() {
    let ch = [8, 12, 20, 36];
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 10, DType::F32, &Device::Cpu);
    let s = Student::new(vb, ch, Variant::Residual).unwrap();
    let sizes = [8, 8, 4, 2];
    let t: Vec<Tensor> = (0..4)
        .map(|i| random(&[2, ch[i], sizes[i], sizes[i]], 20 + i as u64, true))
        .collect();
    let names = [
        "decoder.stage3.block1.bn2.running_mean",
        "residual.r01.c3.bn.running_var",
    ];
    let snapshot = || names.map(|n| vec(&var_named(&vm, n)));
    let init = snapshot();
    s.forward_t(&t, false).unwrap();
    assert_eq!(init, snapshot(), "eval changed running statistics");
    s.forward_t(&t, true).unwrap();
    let after = snapshot();
    for (a, b) in init.iter().zip(&after) {
        assert_ne!(a, b, "train did not update running statistics");
    }
}

#[test]
fn seeded_init_is_reproducible_and_follows_the_spec() {
    let build = |seed: u64| {
        let vm = VarMap::new();
        let vb = seeded_var_builder(&vm, seed, DType::F32, &Device::Cpu);
        Student::new(vb, [16, 24, 40, 112], Variant::Residual).unwrap();
        vm
    };
    let (a, b, c) = (build(1), build(1), build(2));
    let names: Vec<String> = a.data().lock().unwrap().keys().cloned().collect();
    for n in &names {
        assert_eq!(
            vec(&var(&a, n)),
            vec(&var(&b, n)),
            "{n} differs for one seed"
        );
    }
    let n = "decoder.stage0.block1.conv2.weight";
    assert_ne!(vec(&var(&a, n)), vec(&var(&c, n)));

    let std = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    // Conv2d: Kaiming-normal, fan-out, ReLU gain.
    let w = vec(&var(&a, "bottleneck.attention.conv1.weight"));
    let expected = (2.0f32 / (224.0 * 9.0)).sqrt();
    assert!(
        (std(&w) / expected - 1.0).abs() < 0.02,
        "{} vs {expected}",
        std(&w)
    );
    // Transposed conv: uniform ±1/√(Cout·4).
    let w = vec(&var(&a, "decoder.stage0.block0.conv1.weight"));
    let bound = 1.0 / (112.0f32 * 4.0).sqrt();
    let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(max <= bound && max > 0.98 * bound, "{max} vs {bound}");
    // Conv bias: uniform ±1/√fan_in; linear: ±1/√in.
    let b = vec(&var(&a, "bottleneck.sspcab.conv0.bias"));
    assert!(b.iter().all(|v| v.abs() <= 1.0 / 224f32.sqrt()));
    let l = vec(&var(&a, "bottleneck.sspcab.se.fc2.weight"));
    assert!(l.iter().all(|v| v.abs() <= 1.0 / 28f32.sqrt()));
    // BatchNorm: γ 1, β 0, statistics (0, 1).
    for (name, value) in [
        ("weight", 1.0),
        ("bias", 0.0),
        ("running_mean", 0.0),
        ("running_var", 1.0),
    ] {
        let v = vec(&var(&a, &format!("decoder.stage1.block0.bn1.{name}")));
        assert!(v.iter().all(|x| *x == value), "{name}");
    }
}

/// A plain candle `VarBuilder` (unseeded init) also builds a working student.
#[test]
fn any_var_builder_works() {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let s = Student::new(vb, [4, 4, 8, 16], Variant::Dg).unwrap();
    let t: Vec<Tensor> = [[1, 4, 8, 8], [1, 4, 8, 8], [1, 8, 4, 4], [1, 16, 2, 2]]
        .iter()
        .enumerate()
        .map(|(i, s)| random(s, i as u64, true))
        .collect();
    assert_eq!(s.forward_t(&t, false).unwrap()[0].dims(), &[1, 4, 8, 8]);
}
