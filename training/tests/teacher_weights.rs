//! Weight files: the three formats, their errors, and the hash checks.

use candle_core::{DType, Device, Tensor};
use fabric_inspect::meta::Backbone;
use fabric_train::teacher::{default_taps, Teacher, TeacherError};
use fabric_train::weights::{
    pth_legacy, safetensors_file, weights_dir, TeacherWeights, WeightError, WeightFile,
    WeightFormat,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn lite0_file() -> Option<PathBuf> {
    let p = weights_dir().join("efficientnet-lite0-57934424.pth");
    p.is_file().then_some(p)
}

#[test]
fn legacy_loader_reads_the_lite0_file() {
    let Some(path) = lite0_file() else {
        eprintln!("skipping legacy_loader_reads_the_lite0_file: Lite0 weights not found (run `make weights`)");
        return;
    };
    let tensors: HashMap<String, Tensor> = pth_legacy::read(&path).unwrap().into_iter().collect();
    // 296 entries: stem, 16 blocks, head, classifier, with num_batches_tracked counters.
    assert_eq!(tensors.len(), 296);
    let shape = |k: &str| tensors[k].dims().to_vec();
    assert_eq!(shape("_conv_stem.weight"), [32, 3, 3, 3]);
    assert_eq!(shape("_blocks.0._depthwise_conv.weight"), [32, 1, 3, 3]);
    assert_eq!(shape("_blocks.0._project_conv.weight"), [16, 32, 1, 1]);
    assert_eq!(shape("_blocks.3._depthwise_conv.weight"), [144, 1, 5, 5]);
    assert_eq!(shape("_blocks.15._project_conv.weight"), [320, 1152, 1, 1]);
    assert_eq!(shape("_conv_head.weight"), [1280, 320, 1, 1]);
    assert_eq!(shape("_fc.weight"), [1000, 1280]);
    assert_eq!(shape("_bn0.running_var"), [32]);
    assert!(!tensors.contains_key("_blocks.0._expand_conv.weight"));
    assert_eq!(tensors["_bn0.num_batches_tracked"].dtype(), DType::I64);
    for k in 1..16 {
        assert!(
            tensors.contains_key(&format!("_blocks.{k}._expand_conv.weight")),
            "block {k}"
        );
    }
    // Running variances are never negative: the data were read at the right offsets.
    let var: Vec<f32> = tensors["_blocks.15._bn1.running_var"].to_vec1().unwrap();
    assert!(var.iter().all(|&v| v >= 0.0 && v.is_finite()));
    // The stem is stored as a strided view; its first values in logical (O, I, kh, kw)
    // order, as Python's unpickler + numpy read them (tests/golden/make_golden.py).
    let stem: Vec<f32> = tensors["_conv_stem.weight"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (got, want) in stem
        .iter()
        .zip([-1.110_336_1f32, -1.308_770_4, -0.010_156_91, 0.920_811_95])
    {
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.format, WeightFormat::PthLegacy);
    assert_eq!(
        file.sha256,
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
    );
}

#[test]
fn zip_pth_loads_views_with_offsets_and_strides() {
    let path = golden_dir().join("tiny_zip.pth");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir().join("tiny_zip.json")).unwrap())
            .unwrap();
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.format, WeightFormat::PthZip);
    for (name, want) in expected.as_object().unwrap() {
        let shape: Vec<usize> = want["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let t = file.get(name, &shape, &Device::Cpu).unwrap();
        let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = want["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn safetensors_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let mut map = HashMap::new();
    map.insert(
        "a.weight".to_string(),
        Tensor::arange(0f32, 24., &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 4))
            .unwrap(),
    );
    map.insert(
        "b".to_string(),
        Tensor::new(&[1i64, -2, 3], &Device::Cpu).unwrap(),
    );
    // A transposed (non-contiguous) tensor is written in its logical order.
    let t = Tensor::arange(0f32, 6., &Device::Cpu)
        .unwrap()
        .reshape((2, 3))
        .unwrap()
        .t()
        .unwrap();
    map.insert("c".to_string(), t.clone());
    safetensors_file::write(&path, &map).unwrap();
    let file = WeightFile::open(&path).unwrap();
    assert_eq!(file.format, WeightFormat::Safetensors);
    assert_eq!(file.tensors.len(), 3);
    for (k, v) in &map {
        let got = &file.tensors[k];
        assert_eq!(got.dims(), v.dims(), "{k}");
        assert_eq!(got.dtype(), v.dtype(), "{k}");
        let a = got
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let b = v
            .to_dtype(DType::F64)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert_eq!(a, b, "{k}");
    }
}

/// A resnet18 teacher state up to layer1, from a random teacher's idea of the names.
fn small_resnet_state() -> HashMap<String, Tensor> {
    let mut m = HashMap::new();
    let z = |shape: &[usize]| Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap();
    m.insert("conv1.weight".into(), z(&[64, 3, 7, 7]));
    for s in ["weight", "bias", "running_mean", "running_var"] {
        m.insert(format!("bn1.{s}"), z(&[64]));
    }
    m
}

fn stem_taps() -> Vec<String> {
    // Needs only the stem; strides 4, 4, 8, 16 by pooling.
    vec![
        "stem_pool".into(),
        "stem_pool".into(),
        "stem_pool_pool".into(),
        "layer3".into(),
    ]
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.safetensors");
    safetensors_file::write(&path, &small_resnet_state()).unwrap();
    let err = Teacher::new(
        Backbone::Resnet18,
        &stem_taps(),
        TeacherWeights::File(path),
        &Device::Cpu,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TeacherError::Weights(WeightError::Missing { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("layer1.0.conv1.weight") && msg.contains("[64, 64, 3, 3]"),
        "{msg}"
    );
    assert!(msg.contains("partial.safetensors"), "{msg}");
}

#[test]
fn a_wrong_shape_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let mut state = small_resnet_state();
    state.insert(
        "bn1.running_var".into(),
        Tensor::ones(32, DType::F32, &Device::Cpu).unwrap(),
    );
    safetensors_file::write(&path, &state).unwrap();
    let taps = default_taps(Backbone::Resnet18);
    let err = Teacher::new(
        Backbone::Resnet18,
        &taps,
        TeacherWeights::File(path),
        &Device::Cpu,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TeacherError::Weights(WeightError::Shape { .. })),
        "{msg}"
    );
    assert!(
        msg.contains("bn1.running_var") && msg.contains("[32]") && msg.contains("[64]"),
        "{msg}"
    );
}

#[test]
fn a_name_hash_that_does_not_match_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet18-0badf00d.pth");
    std::fs::copy(golden_dir().join("tiny_zip.pth"), &path).unwrap();
    let taps = default_taps(Backbone::Resnet18);
    let err = Teacher::new(
        Backbone::Resnet18,
        &taps,
        TeacherWeights::File(path),
        &Device::Cpu,
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TeacherError::Weights(WeightError::HashMismatch { .. })),
        "{msg}"
    );
    assert!(msg.contains("0badf00d"), "{msg}");
}

#[test]
fn unreadable_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junk.pth");
    std::fs::write(&path, b"definitely not weights").unwrap();
    let msg = WeightFile::open(&path).unwrap_err().to_string();
    assert!(msg.contains("junk.pth"), "{msg}");
    let msg = WeightFile::open(&dir.path().join("absent.pth"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("absent.pth"), "{msg}");
    // A truncated legacy file.
    if let Some(lite0) = lite0_file() {
        let bytes = std::fs::read(lite0).unwrap();
        let cut = dir.path().join("cut.pth");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let msg = WeightFile::open(&cut).unwrap_err().to_string();
        assert!(msg.contains("cut.pth") && msg.contains("storage"), "{msg}");
    }
}
