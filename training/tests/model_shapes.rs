//! Shapes of every student block for the ResNet18/34 and EfficientNet-Lite0 channel sets, in
//! both variants, on random teacher-shaped inputs (no teacher code involved), plus one
//! end-to-end pass through a seeded random teacher.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use fabric_inspect::meta::{Backbone, Variant};
use fabric_train::model::{seeded_var_builder, Rrd};
use fabric_train::student::Student;
use fabric_train::weights::random::SplitMix64;
use fabric_train::weights::TeacherWeights;

const RESNET: [usize; 4] = [64, 64, 128, 256];
const LITE0: [usize; 4] = [16, 24, 40, 112];

/// Teacher-shaped features: T0, T1 at `h`×`w`, T2 at half, T3 at a quarter.
fn features(ch: [usize; 4], n: usize, h: usize, w: usize, seed: u64) -> Vec<Tensor> {
    let sizes = [(h, w), (h, w), (h / 2, w / 2), (h / 4, w / 4)];
    (0..4)
        .map(|i| {
            let shape = [n, ch[i], sizes[i].0, sizes[i].1];
            let mut rng = SplitMix64::for_tensor(seed, &format!("t{i}"));
            let v: Vec<f32> = (0..shape.iter().product::<usize>())
                .map(|_| rng.normal().max(0.0) as f32)
                .collect();
            Tensor::from_vec(v, &shape, &Device::Cpu).unwrap()
        })
        .collect()
}

fn student(ch: [usize; 4], variant: Variant) -> (Student, VarMap) {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 7, DType::F32, &Device::Cpu);
    (Student::new(vb, ch, variant).unwrap(), vm)
}

fn check_shapes(ch: [usize; 4], variant: Variant, n: usize, h: usize, w: usize) {
    let [c0, c1, c2, c3] = ch;
    let (s, _) = student(ch, variant);
    let t = features(ch, n, h, w, 1);
    for train in [true, false] {
        let tr = s.trace(&t, train).unwrap();
        let (h2, w2, h4, w4, h8, w8) = (h / 2, w / 2, h / 4, w / 4, h / 8, w / 8);
        assert_eq!(tr.fused.dims(), &[n, c3, h4, w4], "fusion");
        assert_eq!(
            tr.embedded.dims(),
            &[n, 2 * c3, h8, w8],
            "embedding C1 units"
        );
        assert_eq!(tr.sspcab.dims(), &[n, 2 * c3, h8, w8], "SSPCAB");
        assert_eq!(tr.embedding.dims(), &[n, 2 * c3, h8, w8], "Attention2");
        match (variant, &tr.residual) {
            (Variant::Residual, Some(r)) => {
                assert_eq!(r[0].dims(), &[n, c1, h, w], "R01");
                assert_eq!(r[1].dims(), &[n, c2, h2, w2], "R12");
                assert_eq!(r[2].dims(), &[n, c3, h4, w4], "R23");
            }
            (Variant::Dg, None) => {}
            (v, r) => panic!("variant {v} has residual paths: {}", r.is_some()),
        }
        let expected = [
            [n, c3, h4, w4],
            [n, c2, h2, w2],
            [n, c1, h, w],
            [n, c0, h, w],
        ];
        for (k, (stage, e)) in tr.stages.iter().zip(expected).enumerate() {
            assert_eq!(stage.dims(), &e, "decoder stage {k}");
        }
        assert_eq!(tr.outputs.len(), 4);
        for (i, (si, ti)) in tr.outputs.iter().zip(&t).enumerate() {
            assert_eq!(si.dims(), ti.dims(), "S{i} vs T{i}");
        }
    }
}

#[test]
fn resnet_channels_residual() {
    check_shapes(RESNET, Variant::Residual, 2, 16, 16);
}

#[test]
fn resnet_channels_dg() {
    check_shapes(RESNET, Variant::Dg, 2, 16, 16);
}

#[test]
fn lite0_channels_residual_non_square() {
    check_shapes(LITE0, Variant::Residual, 2, 16, 24);
}

#[test]
fn lite0_channels_dg() {
    check_shapes(LITE0, Variant::Dg, 3, 8, 8);
}

/// Any channel set works; nothing is tied to ResNet widths.
#[test]
fn odd_channels() {
    check_shapes([8, 12, 20, 36], Variant::Residual, 2, 8, 16);
}

fn var_dims(vm: &VarMap, name: &str) -> Option<Vec<usize>> {
    let data = vm.data().lock().unwrap();
    data.get(name).map(|v| v.dims().to_vec())
}

#[test]
fn widths_follow_the_teacher_channels() {
    let (_, vm) = student(LITE0, Variant::Residual);
    let dims = |n: &str| var_dims(&vm, n).unwrap_or_else(|| panic!("no variable {n}"));
    // Fusion: the two-step branches pass through C2, every branch ends at C3.
    assert_eq!(dims("bottleneck.fusion.b0.0.conv.weight"), [40, 16, 1, 1]);
    assert_eq!(dims("bottleneck.fusion.b0.1.conv.weight"), [112, 40, 1, 1]);
    assert_eq!(dims("bottleneck.fusion.b1.0.conv.weight"), [40, 24, 1, 1]);
    assert_eq!(dims("bottleneck.fusion.b2.0.conv.weight"), [112, 40, 1, 1]);
    assert_eq!(dims("bottleneck.fusion.b3.0.conv.weight"), [112, 112, 1, 1]);
    // Embedding 2·C3, SE hidden = embedding / 8.
    assert_eq!(dims("bottleneck.embedding.2.conv.weight"), [224, 112, 1, 1]);
    assert_eq!(dims("bottleneck.sspcab.conv3.weight"), [224, 224, 1, 1]);
    assert_eq!(dims("bottleneck.sspcab.se.fc1.weight"), [28, 224]);
    assert_eq!(dims("bottleneck.sspcab.se.fc2.weight"), [224, 28]);
    assert_eq!(dims("bottleneck.attention.conv1.weight"), [224, 224, 3, 3]);
    // Residual paths end at the channels of the student feature they are added to.
    assert_eq!(dims("residual.r01.c3.conv.weight"), [24, 16, 3, 3]);
    assert_eq!(dims("residual.r12.c3.conv.weight"), [40, 24, 3, 3]);
    assert_eq!(dims("residual.r23.c3.conv.weight"), [112, 40, 3, 3]);
    // Decoder: transposed convs [Cin, Cout, 2, 2]; stage 3 changes 24 → 16 with a 1×1
    // projection shortcut.
    assert_eq!(dims("decoder.stage0.block0.conv1.weight"), [224, 112, 2, 2]);
    assert_eq!(
        dims("decoder.stage0.block0.shortcut.conv.weight"),
        [224, 112, 2, 2]
    );
    assert_eq!(dims("decoder.stage2.block0.conv1.weight"), [40, 24, 2, 2]);
    assert_eq!(dims("decoder.stage3.block0.conv1.weight"), [16, 24, 3, 3]);
    assert_eq!(
        dims("decoder.stage3.block0.shortcut.conv.weight"),
        [16, 24, 1, 1]
    );
    assert_eq!(dims("decoder.stage3.block0.shortcut.bn.running_var"), [16]);
    assert!(var_dims(&vm, "decoder.stage3.block1.shortcut.conv.weight").is_none());

    let (_, vm) = student(RESNET, Variant::Dg);
    assert!(var_dims(&vm, "decoder.stage3.block0.shortcut.conv.weight").is_none());
    assert!(var_dims(&vm, "decoder.stage1.block1.shortcut.conv.weight").is_none());
    let data = vm.data().lock().unwrap();
    assert!(
        data.keys().all(|k| !k.starts_with("residual.")),
        "dg has residual weights"
    );
}

#[test]
fn wrong_inputs_are_rejected_with_the_feature_named() {
    let (s, _) = student(LITE0, Variant::Residual);
    let mut t = features(LITE0, 1, 16, 16, 2);
    t[2] = Tensor::zeros((1, 41, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let err = s.forward_t(&t, false).unwrap_err().to_string();
    assert!(err.contains("T2"), "{err}");
    let err = s.forward_t(&t[..3], false).unwrap_err().to_string();
    assert!(err.contains("4 teacher features"), "{err}");
    let t = features(LITE0, 1, 12, 12, 2);
    assert!(
        s.forward_t(&t, false).is_err(),
        "12×12 T0 is not a multiple of 8"
    );
}

#[test]
fn end_to_end_with_a_random_teacher() {
    for backbone in [Backbone::EfficientnetLite0, Backbone::Resnet18] {
        let weights = TeacherWeights::Random { seed: 3 };
        let rrd = Rrd::build(backbone, &[], weights, Variant::Residual, 5, &Device::Cpu).unwrap();
        let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
        let x = (x + 0.5).unwrap();
        let (t, s) = rrd.forward_t(&x, false).unwrap();
        assert_eq!(t.len(), 4);
        for (ti, si) in t.iter().zip(&s) {
            assert_eq!(ti.dims(), si.dims());
        }
        assert_eq!(rrd.student.channels(), rrd.teacher.channels());
    }
}

/// Smallest value of a tensor.
fn min_value(t: &Tensor) -> f32 {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .fold(f32::INFINITY, f32::min)
}

#[test]
fn student_outputs_are_signed_exactly_where_the_teacher_taps_are() {
    // ResNet taps end in ReLU (stem_pool, layer1..3); Lite0's block outputs are linear
    // projections, and block0_pool is a max-pool of one; `stem_pool` is after ReLU6.
    let cases: [(Backbone, Vec<&str>, [bool; 4]); 3] = [
        (Backbone::Resnet18, vec![], [false; 4]),
        (Backbone::EfficientnetLite0, vec![], [true; 4]),
        (
            Backbone::EfficientnetLite0,
            vec!["stem_pool", "stage2", "stage3", "stage5"],
            [false, true, true, true],
        ),
    ];
    let mut rng = SplitMix64::from_state(11);
    let x: Vec<f32> = (0..2 * 3 * 64 * 64)
        .map(|_| (rng.uniform() * 2.0 - 1.0) as f32)
        .collect();
    let x = Tensor::from_vec(x, (2, 3, 64, 64), &Device::Cpu).unwrap();
    for (backbone, taps, want) in cases {
        let taps: Vec<String> = taps.iter().map(|s| s.to_string()).collect();
        let weights = TeacherWeights::Random { seed: 3 };
        let rrd = Rrd::build(backbone, &taps, weights, Variant::Residual, 5, &Device::Cpu).unwrap();
        assert_eq!(rrd.teacher.signed_taps(), want, "{backbone} {taps:?}");
        assert_eq!(rrd.student.signed_outputs(), want, "{backbone} {taps:?}");
        let (t, s) = rrd.forward_t(&x, true).unwrap();
        for k in 0..4 {
            let (tmin, smin) = (min_value(&t[k]), min_value(&s[k]));
            if want[k] {
                assert!(tmin < 0.0, "{backbone} T{k} should have negative values");
                assert!(smin < 0.0, "{backbone} S{k} should reach negative values");
            } else {
                assert!(tmin >= 0.0, "{backbone} T{k} min {tmin}");
                assert!(smin >= 0.0, "{backbone} S{k} min {smin}");
            }
        }
    }
}
