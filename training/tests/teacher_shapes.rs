//! Teacher shapes, taps, parameter and MAC counts, with seeded random weights.

use candle_core::{Device, Tensor};
use fabric_inspect::meta::Backbone;
use fabric_train::teacher::{default_taps, Teacher, TeacherError};
use fabric_train::weights::TeacherWeights;

fn random_teacher(backbone: Backbone, taps: &[&str]) -> Result<Teacher, TeacherError> {
    let taps: Vec<String> = taps.iter().map(|s| s.to_string()).collect();
    Teacher::new(
        backbone,
        &taps,
        TeacherWeights::Random { seed: 3 },
        &Device::Cpu,
    )
}

fn input(n: usize, h: usize, w: usize) -> Tensor {
    let v: Vec<f32> = (0..n * 3 * h * w)
        .map(|i| ((i % 97) as f32 / 48.0) - 1.0)
        .collect();
    Tensor::from_vec(v, (n, 3, h, w), &Device::Cpu).unwrap()
}

fn check_shapes(backbone: Backbone, expected: [(usize, usize, usize); 4]) {
    let teacher = Teacher::new(
        backbone,
        &default_taps(backbone),
        TeacherWeights::Random { seed: 1 },
        &Device::Cpu,
    )
    .unwrap();
    let feats = teacher.forward(&input(2, 256, 256)).unwrap();
    assert_eq!(feats.len(), 4);
    for (i, (f, e)) in feats.iter().zip(expected).enumerate() {
        assert_eq!(f.dims(), &[2, e.0, e.1, e.2], "{backbone} T{i}");
        let rms = f
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!(rms.is_finite() && rms > 1e-3, "{backbone} T{i} rms {rms}");
    }
    assert_eq!(teacher.channels(), expected.map(|e| e.0));
    assert_eq!(teacher.feature_shapes(256, 256), expected);
    assert_eq!(teacher.weights_id(), "random");
}

#[test]
fn resnet18_features_at_256() {
    check_shapes(
        Backbone::Resnet18,
        [(64, 64, 64), (64, 64, 64), (128, 32, 32), (256, 16, 16)],
    );
}

#[test]
fn resnet34_features_at_256() {
    check_shapes(
        Backbone::Resnet34,
        [(64, 64, 64), (64, 64, 64), (128, 32, 32), (256, 16, 16)],
    );
}

#[test]
fn lite0_features_at_256() {
    check_shapes(
        Backbone::EfficientnetLite0,
        [(16, 64, 64), (24, 64, 64), (40, 32, 32), (112, 16, 16)],
    );
}

#[test]
fn batch_items_are_independent() {
    let teacher = random_teacher(
        Backbone::EfficientnetLite0,
        &["block0_pool", "stage2", "stage3", "stage5"],
    )
    .unwrap();
    let x = input(2, 64, 64);
    let both = teacher.forward(&x).unwrap();
    let second = teacher.forward(&x.narrow(0, 1, 1).unwrap()).unwrap();
    for (b, s) in both.iter().zip(&second) {
        let d = (b.narrow(0, 1, 1).unwrap() - s)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
    }
}

#[test]
fn resnet34_counts_match_the_spec_tally() {
    let t = random_teacher(
        Backbone::Resnet34,
        &["stem_pool", "layer1", "layer2", "layer3"],
    )
    .unwrap();
    let params = t.param_count() as f64;
    let macs = t.macs(256, 256) as f64;
    assert!((params / 8.17e6 - 1.0).abs() < 0.01, "params {params}");
    assert!((macs / 3.95e9 - 1.0).abs() < 0.01, "macs {macs}");
}

#[test]
fn lite0_counts() {
    let t = random_teacher(
        Backbone::EfficientnetLite0,
        &["block0_pool", "stage2", "stage3", "stage5"],
    )
    .unwrap();
    let macs = t.macs(256, 256) as f64;
    // Stem to stage 5 at 256×256; the whole Lite0 is ~0.4 GMAC at 224, so about 0.3 G here.
    assert!((0.25e9..0.40e9).contains(&macs), "macs {macs}");
    assert!(
        (0.2e6..1.5e6).contains(&(t.param_count() as f64)),
        "params {}",
        t.param_count()
    );
}

#[test]
fn only_units_up_to_the_deepest_tap_are_built() {
    let t = random_teacher(
        Backbone::Resnet18,
        &["stem_pool", "layer1", "layer2", "layer3"],
    )
    .unwrap();
    let names: Vec<&str> = t.units().iter().map(|u| u.name()).collect();
    assert_eq!(names, ["stem", "stem_pool", "layer1", "layer2", "layer3"]);
    let t = random_teacher(
        Backbone::EfficientnetLite0,
        &["block0_pool", "stage2", "stage3", "stage5"],
    )
    .unwrap();
    assert_eq!(t.units().len(), 12); // stem + blocks 0..=10
}

#[test]
fn other_taps_change_the_channels() {
    let t = random_teacher(
        Backbone::EfficientnetLite0,
        &["stage1_pool", "block1", "block3", "stage4"],
    )
    .unwrap();
    assert_eq!(t.channels(), [16, 24, 40, 80]);
    let feats = t.forward(&input(1, 64, 64)).unwrap();
    let dims: Vec<Vec<usize>> = feats.iter().map(|f| f.dims().to_vec()).collect();
    assert_eq!(
        dims,
        [
            vec![1, 16, 16, 16],
            vec![1, 24, 16, 16],
            vec![1, 40, 8, 8],
            vec![1, 80, 4, 4]
        ]
    );
    let t = random_teacher(
        Backbone::Resnet18,
        &["stem_pool", "stem_pool", "layer2", "layer3"],
    )
    .unwrap();
    assert_eq!(t.channels(), [64, 64, 128, 256]);
}

#[test]
fn wrong_taps_are_explained() {
    let err = random_teacher(Backbone::Resnet34, &["stem_pool", "layer1", "layer2"]).unwrap_err();
    assert!(
        matches!(err, TeacherError::TapCount { count: 3, .. }),
        "{err}"
    );

    let err = random_teacher(
        Backbone::Resnet34,
        &["stem_pool", "layer1", "layer2", "layer9"],
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("layer9") && msg.contains("layer3"), "{msg}");

    let err =
        random_teacher(Backbone::Resnet34, &["stem", "layer1", "layer2", "layer3"]).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            TeacherError::TapStride {
                index: 0,
                stride: 2,
                expected: 4,
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("`stem`") && msg.contains("T0"), "{msg}");

    let err = random_teacher(
        Backbone::EfficientnetLite0,
        &["block0_pool", "stage2", "stage3", "stage6"],
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            TeacherError::TapStride {
                index: 3,
                stride: 32,
                expected: 16,
                ..
            }
        ),
        "{err}"
    );

    let err = random_teacher(
        Backbone::EfficientnetLite0,
        &["layer1", "stage2", "stage3", "stage5"],
    )
    .unwrap_err();
    assert!(err.to_string().contains("stage1..stage7"), "{err}");
}

#[test]
fn random_teachers_are_seeded() {
    let taps = default_taps(Backbone::EfficientnetLite0);
    let make = |seed| {
        Teacher::new(
            Backbone::EfficientnetLite0,
            &taps,
            TeacherWeights::Random { seed },
            &Device::Cpu,
        )
        .unwrap()
    };
    let x = input(1, 32, 32);
    let a = make(5).forward(&x).unwrap()[3]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = make(5).forward(&x).unwrap()[3]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let c = make(6).forward(&x).unwrap()[3]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}
