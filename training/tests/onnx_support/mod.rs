//! Shared helpers of the ONNX tests: an ONNX Runtime environment found the way the runtime
//! finds it, a session runner over plain f32 buffers, seeded random data and a relative
//! closeness check that prints what it measured.
#![allow(dead_code)]

use ort::environment::Environment;
use ort::session::Session;
use ort::value::Tensor;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The ONNX Runtime library: `ORT_DYLIB_PATH`, else the copy under `third_party/`.
pub fn ort_library() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("third_party")
        .join("onnxruntime")
        .join("libonnxruntime.so.1.31.1");
    p.is_file().then_some(p)
}

static ENV: OnceLock<Option<Environment>> = OnceLock::new();

/// The process-wide ONNX Runtime environment, or `None` (with a printed reason naming
/// `test`) when the library is absent or does not load.
pub fn ort_env(test: &str) -> Option<Environment> {
    if std::env::var_os("XDG_CACHE_HOME").is_none() {
        let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("xdg-cache");
        // Set before ONNX Runtime starts, so that its telemetry cache stays under target/.
        std::env::set_var("XDG_CACHE_HOME", cache);
    }
    let env = ENV.get_or_init(|| {
        let lib = ort_library()?;
        match ort::init_from(&lib) {
            Ok(b) => match b.with_name("fabric-train-tests").build() {
                Ok(env) => Some(env),
                Err(e) => {
                    eprintln!("ONNX Runtime environment failed: {e}");
                    None
                }
            },
            Err(e) => {
                eprintln!("ONNX Runtime {} did not load: {e}", lib.display());
                None
            }
        }
    });
    if env.is_none() {
        eprintln!(
            "skipping {test}: ONNX Runtime not found (set ORT_DYLIB_PATH or run `make setup`)"
        );
    }
    env.clone()
}

/// A CPU session over `model` (serialised ModelProto), one intra-op thread per call site.
pub fn session(env: &Environment, model: &[u8], threads: usize) -> Session {
    Session::builder(env)
        .expect("session builder")
        .with_intra_threads(threads)
        .unwrap_or_else(|e| panic!("intra threads: {e}"))
        .commit_from_memory(model)
        .unwrap_or_else(|e| panic!("ONNX Runtime rejected the model: {e}"))
}

/// A dense f32 tensor: shape and row-major data.
#[derive(Debug, Clone, PartialEq)]
pub struct Buf {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// Runs `session` on named inputs and returns the outputs named in `outputs`, in order.
pub fn run(session: &mut Session, inputs: &[(&str, &Buf)], outputs: &[&str]) -> Vec<Buf> {
    let values: Vec<(String, ort::session::SessionInputValue<'static>)> = inputs
        .iter()
        .map(|(name, b)| {
            let t = Tensor::from_array((b.shape.clone(), b.data.clone().into_boxed_slice()))
                .expect("input tensor");
            (name.to_string(), t.into())
        })
        .collect();
    let out = session
        .run(values)
        .unwrap_or_else(|e| panic!("ONNX Runtime run failed: {e}"));
    outputs
        .iter()
        .map(|name| {
            let (shape, data) = out[*name]
                .try_extract_tensor::<f32>()
                .unwrap_or_else(|e| panic!("output {name}: {e}"));
            Buf {
                shape: shape.iter().map(|&d| d as usize).collect(),
                data: data.to_vec(),
            }
        })
        .collect()
}

/// Seeded uniform values in `[lo, hi)` (splitmix64), independent of any global RNG.
pub fn rand_vec(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let u = (z >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * u
        })
        .collect()
}

/// Largest absolute difference between `got` and `want` and the largest `|want|`.
pub fn max_diff(got: &[f32], want: &[f32]) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let mut d = 0f32;
    let mut m = 0f32;
    for (a, b) in got.iter().zip(want) {
        assert!(a.is_finite(), "non-finite value in the ONNX output");
        d = d.max((a - b).abs());
        m = m.max(b.abs());
    }
    (d, m)
}

/// Asserts `max|got − want| ≤ rel · max|want|`, printing the measured figures; returns
/// the measured ratio.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) -> f32 {
    let (d, m) = max_diff(got, want);
    assert!(
        m > 0.0,
        "{what}: reference is all zeros, the comparison would prove nothing"
    );
    let ratio = d / m;
    eprintln!("{what}: max |diff| = {d:.3e}, max |ref| = {m:.3e}, ratio = {ratio:.3e}");
    assert!(
        ratio <= rel,
        "{what}: max |diff| {d:e} exceeds {rel:e} × max |ref| {m:e}"
    );
    ratio
}
