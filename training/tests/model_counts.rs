//! Parameter and MAC counts against SPEC.md §5.2 (within 1 %), and an independent
//! closed-form parameter count for any channel set.

use candle_core::{DType, Device};
use candle_nn::VarMap;
use fabric_inspect::meta::{Backbone, Variant};
use fabric_train::model::{is_bn_statistic, seeded_var_builder, trainable_vars};
use fabric_train::student::Student;
use fabric_train::summary::{student_macs, student_param_counts, Summary};

fn assert_close(what: &str, got: f64, expected: f64) {
    let rel = (got - expected).abs() / expected;
    assert!(
        rel <= 0.01,
        "{what}: got {got}, expected {expected} (off by {:.2} %)",
        rel * 100.0
    );
}

#[test]
fn resnet34_residual_matches_the_spec_tally() {
    let s = Summary::compute(Backbone::Resnet34, Variant::Residual, &[]).unwrap();
    assert_close("trainable params", s.trainable_params() as f64, 10.80e6);
    assert_close("bottleneck params", s.bottleneck.params as f64, 6.28e6);
    assert_close("residual params", s.residual.params as f64, 0.67e6);
    assert_close("decoder params", s.decoder.params as f64, 3.85e6);
    assert_close("teacher params", s.teacher.params as f64, 8.17e6);
    assert_close("whole forward MACs", s.total_macs() as f64, 7.49e9);
    assert_close("teacher MACs", s.teacher.macs as f64, 3.95e9);
    assert_close("bottleneck MACs", s.bottleneck.macs as f64, 0.47e9);
    assert_close("residual MACs", s.residual.macs as f64, 0.91e9);
    assert_close("decoder MACs", s.decoder.macs as f64, 2.16e9);
    let table = s.to_string();
    assert!(table.contains("teacher weights:"), "{table}");
}

#[test]
fn resnet34_dg_matches_the_spec_tally() {
    let s = Summary::compute(Backbone::Resnet34, Variant::Dg, &[]).unwrap();
    assert_eq!(s.residual.params, 0);
    assert_eq!(s.residual.macs, 0);
    assert_close("trainable params", s.trainable_params() as f64, 10.13e6);
    assert_close("whole forward MACs", s.total_macs() as f64, 6.58e9);
}

#[test]
fn lite0_whole_forward() {
    let s = Summary::compute(Backbone::EfficientnetLite0, Variant::Residual, &[]).unwrap();
    assert_eq!(s.channels, [16, 24, 40, 112]);
    assert_close("whole forward MACs", s.total_macs() as f64, 0.79e9);
    assert_close("teacher MACs", s.teacher.macs as f64, 0.32e9);
    let table = s.to_string();
    let expect = if s.teacher_weights == "random" {
        "seeded random"
    } else {
        "pretrained"
    };
    assert!(table.contains(expect), "{table}");
}

/// Parameters of the student by a closed form written from SPEC.md §3–5 (conv weights,
/// conv/linear biases, BatchNorm γ and β).
fn closed_form_params(ch: [usize; 4], variant: Variant) -> [usize; 3] {
    let [c0, c1, c2, c3] = ch;
    let e = 2 * c3;
    let c1u = |cin: usize, cout: usize| cin * cout + 2 * cout;
    let fusion = c1u(c0, c2) + c1u(c2, c3) + c1u(c1, c2) + c1u(c2, c3) + c1u(c2, c3) + c1u(c3, c3);
    let embedding = 2 * c1u(c3, c3) + c1u(c3, e);
    let h = e / 8;
    let sspcab = 4 * (e * e + e) + (e * h + h) + (h * e + e);
    let attention2 = 2 * (9 * e * e + e);
    let bottleneck = fusion + embedding + sspcab + attention2;

    let path = |cin: usize, cout: usize| 9 * cin * cout + 2 * cout + 3 * (cout * cout + cout);
    let residual = match variant {
        Variant::Residual => path(c0, c1) + path(c1, c2) + path(c2, c3),
        Variant::Dg => 0,
    };

    let up = |cin: usize, cout: usize| {
        4 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout + 4 * cin * cout + 2 * cout
    };
    let same = |cin: usize, cout: usize| {
        let shortcut = if cin != cout {
            cin * cout + 2 * cout
        } else {
            0
        };
        9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout + shortcut
    };
    let decoder = up(e, c3)
        + same(c3, c3)
        + up(c3, c2)
        + same(c2, c2)
        + up(c2, c1)
        + same(c1, c1)
        + same(c1, c0)
        + same(c0, c0);
    [bottleneck, residual, decoder]
}

#[test]
fn parameter_counts_follow_any_channel_set() {
    for ch in [[64, 64, 128, 256], [16, 24, 40, 112], [8, 12, 20, 36]] {
        for variant in [Variant::Residual, Variant::Dg] {
            let vm = VarMap::new();
            let vb = seeded_var_builder(&vm, 1, DType::F32, &Device::Cpu);
            Student::new(vb, ch, variant).unwrap();
            assert_eq!(
                student_param_counts(&vm),
                closed_form_params(ch, variant),
                "channels {ch:?}, {variant}"
            );
            // The optimiser's list is exactly the counted parameters: no BN statistics.
            let trainable: usize = trainable_vars(&vm).iter().map(|v| v.elem_count()).sum();
            assert_eq!(
                trainable,
                closed_form_params(ch, variant).iter().sum::<usize>()
            );
            let data = vm.data().lock().unwrap();
            let stats = data.keys().filter(|k| is_bn_statistic(k)).count();
            let bn_weights = data
                .keys()
                .filter(|k| k.ends_with("bn.weight") || k.contains(".bn1.") || k.contains(".bn2."))
                .filter(|k| k.ends_with(".weight"))
                .count();
            assert_eq!(
                stats,
                2 * bn_weights,
                "every BatchNorm has two saved statistics"
            );
        }
    }
}

#[test]
fn student_macs_of_lite0_by_hand() {
    // The decoder of Lite0 at a 256×256 input (T0 64×64), counted by hand:
    // stage 0: 224→112 up at 8→16, stage 1: 112→40 up at 16→32, stage 2: 40→24 up at 32→64,
    // stage 3: 24→16 (projection shortcut) and 16→16 at 64×64.
    let up = |cin: u64, cout: u64, hin: u64| {
        let hout = 2 * hin;
        2 * cin * hin * hin * cout * 4 + cout * cout * 9 * hout * hout
    };
    let same = |cin: u64, cout: u64, h: u64| {
        let sc = if cin != cout { cin * cout * h * h } else { 0 };
        (cin * cout + cout * cout) * 9 * h * h + sc
    };
    let decoder = up(224, 112, 8)
        + same(112, 112, 16)
        + up(112, 40, 16)
        + same(40, 40, 32)
        + up(40, 24, 32)
        + same(24, 24, 64)
        + same(24, 16, 64)
        + same(16, 16, 64);
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 1, DType::F32, &Device::Cpu);
    let s = Student::new(vb, [16, 24, 40, 112], Variant::Residual).unwrap();
    let [_, _, d] = student_macs(&s, (64, 64));
    assert_eq!(d, decoder);
}
