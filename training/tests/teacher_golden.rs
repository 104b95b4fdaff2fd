//! The teacher against values computed independently of this crate, by
//! `tests/golden/make_golden.py` (Python's unpickler + numpy, no torch):
//! - EfficientNet-Lite0 with the pretrained file: proves the legacy loader, the TF "SAME"
//!   padding, BatchNorm ε and the block wiring;
//! - ResNet-18 with weights from a closed formula (the same formula is in the script).

use candle_core::{Device, Tensor};
use fabric_inspect::meta::Backbone;
use fabric_train::teacher::{default_taps, Teacher};
use fabric_train::weights::{safetensors_file, weights_dir, TeacherWeights};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// Relative tolerance against the float64 reference, on the scale of each feature map.
const REL_TOL: f64 = 1e-4;

fn golden(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Input image `n` (3, h, w); mirrors `analytic_image` in make_golden.py.
fn analytic_image(n: usize, h: usize, w: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(3 * h * w);
    let tau = std::f64::consts::TAU;
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let (c, xf, yf) = (c as f64, x as f64 / w as f64, y as f64 / h as f64);
                let a = 0.8 * (tau * (3.0 * xf + 2.0 * yf + 0.25 * c + 0.5 * n as f64)).sin()
                    + 0.2 * (tau * (5.0 * xf * yf + c / 3.0)).cos();
                v.push(a as f32);
            }
        }
    }
    v
}

fn batch(h: usize, w: usize) -> Tensor {
    let mut v = analytic_image(0, h, w);
    v.extend(analytic_image(1, h, w));
    Tensor::from_vec(v, (2, 3, h, w), &Device::Cpu).unwrap()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap()
}

fn compare(feats: &[Tensor], gold: &Value) {
    let images = gold["images"].as_array().unwrap();
    let mut worst: f64 = 0.0;
    for (n, taps) in images.iter().enumerate() {
        for (i, tap) in taps.as_array().unwrap().iter().enumerate() {
            let f = feats[i].get(n).unwrap();
            let shape: Vec<usize> = tap["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(f.dims(), shape.as_slice(), "T{i} ({}) shape", tap["name"]);
            let scale = num(&tap["rms"]);
            let mut check = |what: String, got: f64, want: f64| {
                let err = (got - want).abs() / (want.abs() + scale);
                worst = worst.max(err);
                assert!(
                    err < REL_TOL,
                    "image {n} T{i} ({}) {what}: got {got}, want {want}",
                    tap["name"]
                );
            };
            let means: Vec<f32> = f
                .mean_keepdim(2)
                .unwrap()
                .mean_keepdim(1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (c, (g, w)) in means
                .iter()
                .zip(tap["channel_means"].as_array().unwrap())
                .enumerate()
            {
                check(format!("mean of channel {c}"), f64::from(*g), num(w));
            }
            let data: Vec<f32> = f.flatten_all().unwrap().to_vec1().unwrap();
            for s in tap["samples"].as_array().unwrap() {
                let s = s.as_array().unwrap();
                let (c, y, x) = (
                    num(&s[0]) as usize,
                    num(&s[1]) as usize,
                    num(&s[2]) as usize,
                );
                let got = f64::from(data[(c * shape[1] + y) * shape[2] + x]);
                check(format!("value at ({c}, {y}, {x})"), got, num(&s[3]));
            }
            let rms = (data
                .iter()
                .map(|v| f64::from(*v) * f64::from(*v))
                .sum::<f64>()
                / data.len() as f64)
                .sqrt();
            check("rms".into(), rms, scale);
        }
    }
    eprintln!("largest relative deviation from the reference: {worst:.2e}");
}

#[test]
fn lite0_pretrained_matches_the_reference() {
    let path = weights_dir().join("efficientnet-lite0-57934424.pth");
    if !path.is_file() {
        eprintln!(
            "skipping lite0_pretrained_matches_the_reference: {} not found (run `make weights`)",
            path.display()
        );
        return;
    }
    let gold = golden("lite0_golden.json");
    let teacher = Teacher::new(
        Backbone::EfficientnetLite0,
        &default_taps(Backbone::EfficientnetLite0),
        TeacherWeights::File(path),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(
        teacher.weights_id(),
        gold["weights_sha256"].as_str().unwrap()
    );
    let feats = teacher.forward(&batch(256, 256)).unwrap();
    compare(&feats, &gold);
}

/// n values in [0, 1) from a tensor's name; mirrors `formula_values` in make_golden.py.
fn formula_values(name: &str, n: usize) -> Vec<f64> {
    let h = name
        .bytes()
        .enumerate()
        .map(|(i, b)| u64::from(b) * (i as u64 + 1))
        .sum::<u64>()
        % (1 << 32);
    (1..=n as u64)
        .map(|k| {
            ((k.wrapping_mul(2_654_435_761)
                .wrapping_add(h.wrapping_mul(40_503)))
                % (1 << 32)) as f64
                / 4_294_967_296.0
        })
        .collect()
}

fn formula_tensor(name: &str, shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    let v = formula_values(name, n);
    let fan_in: usize = shape.iter().skip(1).product();
    let a: Vec<f32> = v
        .iter()
        .map(|&v| {
            (if name.ends_with("running_var") {
                0.5 + v
            } else if name.ends_with("running_mean") || name.ends_with(".bias") {
                0.2 * (v - 0.5)
            } else if shape.len() == 1 {
                0.8 + 0.4 * v
            } else {
                (2.0 * v - 1.0) * 3f64.sqrt() * (2.0 / fan_in as f64).sqrt()
            }) as f32
        })
        .collect();
    Tensor::from_vec(a, shape, &Device::Cpu).unwrap()
}

fn resnet18_formula_state() -> HashMap<String, Tensor> {
    let mut sd = HashMap::new();
    let conv = |sd: &mut HashMap<String, Tensor>, name: &str, shape: [usize; 4]| {
        let key = format!("{name}.weight");
        sd.insert(key.clone(), formula_tensor(&key, &shape));
    };
    let bn = |sd: &mut HashMap<String, Tensor>, name: &str, c: usize| {
        for s in ["weight", "bias", "running_mean", "running_var"] {
            let key = format!("{name}.{s}");
            sd.insert(key.clone(), formula_tensor(&key, &[c]));
        }
    };
    conv(&mut sd, "conv1", [64, 3, 7, 7]);
    bn(&mut sd, "bn1", 64);
    let mut cin = 64;
    for (layer, cout) in [(1, 64), (2, 128), (3, 256)] {
        for b in 0..2 {
            let p = format!("layer{layer}.{b}");
            conv(&mut sd, &format!("{p}.conv1"), [cout, cin, 3, 3]);
            bn(&mut sd, &format!("{p}.bn1"), cout);
            conv(&mut sd, &format!("{p}.conv2"), [cout, cout, 3, 3]);
            bn(&mut sd, &format!("{p}.bn2"), cout);
            if b == 0 && layer > 1 {
                conv(&mut sd, &format!("{p}.downsample.0"), [cout, cin, 1, 1]);
                bn(&mut sd, &format!("{p}.downsample.1"), cout);
            }
            cin = cout;
        }
    }
    sd
}

#[test]
fn resnet18_matches_the_reference() {
    let gold = golden("resnet18_golden.json");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resnet18-formula.safetensors");
    safetensors_file::write(&path, &resnet18_formula_state()).unwrap();
    let teacher = Teacher::new(
        Backbone::Resnet18,
        &default_taps(Backbone::Resnet18),
        TeacherWeights::File(path),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(teacher.weights_id().len(), 64);
    let feats = teacher.forward(&batch(128, 128)).unwrap();
    compare(&feats, &gold);
}
