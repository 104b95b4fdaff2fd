//! ONNX Runtime sessions for the exported teacher and student networks.
//!
//! The ONNX Runtime library is loaded at run time (`ort`'s `load-dynamic`): from
//! `ORT_DYLIB_PATH` when set, else from `third_party/onnxruntime/` of the checkout this
//! crate was built from. Execution providers are tried in the order TensorRT → CUDA → CPU
//! starting at the requested one; a provider that cannot be registered or cannot build a
//! session is skipped with one warning that gives the reason, and the provider that runs
//! is recorded ([`Engine::provider`]) so that a silent CPU fallback cannot pass unnoticed.
//!
//! Why `Session::run` sits behind a mutex: ONNX Runtime sessions are run through `&mut`
//! in `ort`, and one inspection PC normally runs one frame at a time through one model.
//! Callers that need concurrency load one [`Engine`] per worker.

use crate::anomaly::FeatureView;
use crate::meta::ModelMeta;
use crate::{Error, Result};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::{Session, SessionInputValue};
use ort::value::TensorRef;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// File name of the ONNX Runtime library fetched by `make setup`.
pub const ORT_LIBRARY_FILE: &str = "libonnxruntime.so.1.31.1";

/// Execution provider: requested with `--device`, and the one that actually runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// NVIDIA CUDA (needs the `cuda` feature and the GPU build of ONNX Runtime).
    Cuda,
    /// NVIDIA TensorRT (needs the `tensorrt` feature and TensorRT's libraries).
    Tensorrt,
}

impl Provider {
    /// Name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        }
    }

    /// This provider followed by the ones it falls back to.
    pub fn fallback_chain(self) -> &'static [Provider] {
        match self {
            Provider::Tensorrt => &[Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            Provider::Cuda => &[Provider::Cuda, Provider::Cpu],
            Provider::Cpu => &[Provider::Cpu],
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" => Ok(Provider::Cpu),
            "cuda" | "gpu" => Ok(Provider::Cuda),
            "tensorrt" | "trt" => Ok(Provider::Tensorrt),
            _ => Err(format!(
                "unknown device `{s}` (expected cpu, cuda or tensorrt)"
            )),
        }
    }
}

/// Session settings.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Requested execution provider (falls back as the module doc says).
    pub device: Provider,
    /// Intra-op threads of each session; `None` lets ONNX Runtime choose (one per core).
    pub threads: Option<usize>,
    /// Let ONNX Runtime's intra-op workers spin while they wait for work (off by default).
    pub spin: bool,
}

/// Where the ONNX Runtime library is looked for: `ORT_DYLIB_PATH`, else the checkout's
/// `third_party/onnxruntime/`.
pub fn ort_library_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(Error::Other(format!(
            "ORT_DYLIB_PATH names {}, which is not a file; point it at libonnxruntime.so \
             or unset it to use the library fetched by `make setup`",
            p.display()
        )));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("third_party")
        .join("onnxruntime")
        .join(ORT_LIBRARY_FILE);
    if p.is_file() {
        return Ok(p);
    }
    Err(Error::Other(format!(
        "ONNX Runtime library not found at {}: run `make setup` or set ORT_DYLIB_PATH to a \
         libonnxruntime.so (1.31)",
        p.display()
    )))
}

struct OrtRuntime {
    path: PathBuf,
    env: ort::environment::Environment,
}

static ORT: OnceLock<std::result::Result<OrtRuntime, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process (later calls return the same result) and returns
/// the library's path.
pub fn init_ort() -> Result<PathBuf> {
    runtime().map(|r| r.path.clone())
}

fn runtime() -> Result<&'static OrtRuntime> {
    let r = ORT.get_or_init(|| {
        let path = ort_library_path().map_err(|e| e.to_string())?;
        let builder = ort::init_from(&path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        let env = builder
            .with_name("fabric-inspect")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot create the ONNX Runtime environment: {e}"))?;
        tracing::info!(library = %path.display(), "ONNX Runtime loaded");
        Ok(OrtRuntime { path, env })
    });
    r.as_ref().map_err(|e| Error::Other(e.clone()))
}

fn ort_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Other(format!("ONNX Runtime: {what}: {e}"))
}

/// Registers `provider` on `builder`, or says why it cannot be.
fn register(
    builder: SessionBuilder,
    provider: Provider,
) -> std::result::Result<SessionBuilder, String> {
    match provider {
        Provider::Cpu => Ok(builder),
        Provider::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let ep = ort::ep::CUDA::default().build().error_on_failure();
                builder
                    .with_execution_providers([ep])
                    .map_err(|e| e.to_string())
            }
            #[cfg(not(feature = "cuda"))]
            {
                let _ = builder;
                Err("this build has no CUDA support (build with `--features cuda`)".into())
            }
        }
        Provider::Tensorrt => {
            #[cfg(feature = "tensorrt")]
            {
                let ep = ort::ep::TensorRT::default().build().error_on_failure();
                builder
                    .with_execution_providers([ep])
                    .map_err(|e| e.to_string())
            }
            #[cfg(not(feature = "tensorrt"))]
            {
                let _ = builder;
                Err("this build has no TensorRT support (build with `--features tensorrt`)".into())
            }
        }
    }
}

fn builder(
    env: &ort::environment::Environment,
    threads: Option<usize>,
    spin: bool,
) -> Result<SessionBuilder> {
    let mut b = Session::builder(env)
        .map_err(|e| ort_err("session options", e))?
        .with_optimization_level(GraphOptimizationLevel::Level3)
        .map_err(|e| ort_err("optimisation level", e))?
        // No memory pattern: the pre-planned block per input shape kept the peak resident
        // size of a batch-32 frame near 1 GiB; the arena alone reuses freed buffers at the
        // same speed with about 0.3–0.4 GiB less (measured on ResNet34 and Lite0 models).
        .with_memory_pattern(false)
        .map_err(|e| ort_err("memory pattern", e))?
        // Spinning workers burn the cores that pre- and post-processing (rayon) and the
        // other session need between two runs: Lite0 at batch 32 on 2 cores, 16.0 ms per
        // patch spinning, 14.2 ms not (teacher then student, as the engine runs them).
        .with_intra_op_spinning(spin)
        .map_err(|e| ort_err("intra-op spinning", e))?;
    if let Some(n) = threads {
        b = b
            .with_intra_threads(n)
            .map_err(|e| ort_err("intra-op threads", e))?;
    }
    Ok(b)
}

/// Teacher and student sessions of one model.
pub struct Engine {
    teacher: Mutex<Session>,
    student: Mutex<Session>,
    provider: Provider,
    input_name: String,
    input_size: usize,
    teacher_outputs: Vec<String>,
    student_inputs: Vec<String>,
    student_outputs: Vec<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("provider", &self.provider)
            .field("input_size", &self.input_size)
            .finish_non_exhaustive()
    }
}

fn check_names(path: &Path, what: &str, have: Vec<String>, want: &[String]) -> Result<()> {
    for w in want {
        if !have.contains(w) {
            return Err(Error::Model {
                path: path.to_path_buf(),
                msg: format!(
                    "{what} `{w}` named in model.yaml is not in the network (it has {})",
                    have.join(", ")
                ),
            });
        }
    }
    Ok(())
}

impl Engine {
    /// Opens `teacher.onnx` and `student.onnx` of the model folder `dir` described by
    /// `meta`, on the first provider of `options.device`'s fallback chain that works.
    pub fn load(dir: &Path, meta: &ModelMeta, options: &EngineOptions) -> Result<Engine> {
        let (teacher_path, student_path) = ModelMeta::network_files(dir)?;
        let rt = runtime()?;
        let mut skipped: Vec<String> = Vec::new();
        let mut sessions = None;
        for &p in options.device.fallback_chain() {
            let b = builder(&rt.env, options.threads, options.spin)?;
            let mut b = match register(b, p) {
                Ok(b) => b,
                Err(why) => {
                    skipped.push(format!("{p}: {why}"));
                    continue;
                }
            };
            let t = b.commit_from_file(&teacher_path);
            let s = t.and_then(|t| b.commit_from_file(&student_path).map(|s| (t, s)));
            match s {
                Ok(pair) => {
                    sessions = Some((p, pair));
                    break;
                }
                Err(e) if p != Provider::Cpu => skipped.push(format!("{p}: {e}")),
                Err(e) => {
                    return Err(Error::Model {
                        path: dir.to_path_buf(),
                        msg: format!("ONNX Runtime cannot open the networks: {e}"),
                    })
                }
            }
        }
        let Some((provider, (teacher, student))) = sessions else {
            return Err(Error::Other(format!(
                "no execution provider could run the model: {}",
                skipped.join("; ")
            )));
        };
        if !skipped.is_empty() {
            tracing::warn!(
                requested = %options.device,
                running = %provider,
                library = %rt.path.display(),
                "execution provider fallback: {}",
                skipped.join("; ")
            );
        }
        tracing::info!(provider = %provider, threads = ?options.threads, model = %dir.display(), "model loaded");

        let names = |v: &[ort::value::Outlet]| v.iter().map(|o| o.name().to_string()).collect();
        check_names(
            &teacher_path,
            "teacher input",
            names(teacher.inputs()),
            std::slice::from_ref(&meta.teacher_input),
        )?;
        check_names(
            &teacher_path,
            "teacher output",
            names(teacher.outputs()),
            &meta.teacher_outputs,
        )?;
        check_names(
            &student_path,
            "student input",
            names(student.inputs()),
            &meta.student_inputs,
        )?;
        check_names(
            &student_path,
            "student output",
            names(student.outputs()),
            &meta.student_outputs,
        )?;

        Ok(Engine {
            teacher: Mutex::new(teacher),
            student: Mutex::new(student),
            provider,
            input_name: meta.teacher_input.clone(),
            input_size: meta.input_size as usize,
            teacher_outputs: meta.teacher_outputs.clone(),
            student_inputs: meta.student_inputs.clone(),
            student_outputs: meta.student_outputs.clone(),
        })
    }

    /// The execution provider the sessions run on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Side of the square network input.
    pub fn input_size(&self) -> usize {
        self.input_size
    }

    /// Runs teacher then student on `n` images in `input` (NCHW, `n·3·S·S` floats) and
    /// hands the teacher and student features, in feature order, to `reduce`.
    ///
    /// The features stay in ONNX Runtime's output buffers (no copy); the teacher's outputs
    /// are fed to the student as they are.
    pub fn run<R>(
        &self,
        input: &[f32],
        n: usize,
        reduce: impl FnOnce(&[FeatureView], &[FeatureView]) -> Result<R>,
    ) -> Result<R> {
        let s = self.input_size;
        if n == 0 || input.len() != n * 3 * s * s {
            return Err(Error::Shape {
                op: "network input",
                expected: format!("{n}×3×{s}×{s} floats (n ≥ 1)"),
                got: input.len().to_string(),
            });
        }
        let tensor = TensorRef::from_array_view(([n, 3, s, s], input))
            .map_err(|e| ort_err("input tensor", e))?;
        let mut teacher = self
            .teacher
            .lock()
            .map_err(|_| Error::Other("teacher session poisoned by an earlier panic".into()))?;
        let mut student = self
            .student
            .lock()
            .map_err(|_| Error::Other("student session poisoned by an earlier panic".into()))?;

        let _span = tracing::debug_span!("batch", size = n).entered();
        let t_out = teacher
            .run(vec![(
                Cow::from(self.input_name.as_str()),
                SessionInputValue::from(tensor),
            )])
            .map_err(|e| ort_err("teacher run", e))?;
        let mut s_in: Vec<(Cow<str>, SessionInputValue)> =
            Vec::with_capacity(self.student_inputs.len());
        for (t_name, s_name) in self.teacher_outputs.iter().zip(&self.student_inputs) {
            let v = t_out
                .get(t_name)
                .ok_or_else(|| ort_err("teacher run", format!("no output `{t_name}`")))?;
            s_in.push((
                Cow::from(s_name.as_str()),
                SessionInputValue::from(v.view()),
            ));
        }
        let s_out = student.run(s_in).map_err(|e| ort_err("student run", e))?;

        let mut tv = Vec::with_capacity(self.teacher_outputs.len());
        let mut sv = Vec::with_capacity(self.student_outputs.len());
        for name in &self.teacher_outputs {
            let v = t_out
                .get(name)
                .ok_or_else(|| ort_err("features", format!("no output `{name}`")))?;
            tv.push(feature_view(v, name)?);
        }
        for name in &self.student_outputs {
            let v = s_out
                .get(name)
                .ok_or_else(|| ort_err("features", format!("no output `{name}`")))?;
            sv.push(feature_view(v, name)?);
        }
        reduce(&tv, &sv)
    }
}

fn feature_view<'a>(v: &'a ort::value::DynValue, name: &str) -> Result<FeatureView<'a>> {
    let (shape, data) = v
        .try_extract_tensor::<f32>()
        .map_err(|e| ort_err(&format!("output `{name}`"), e))?;
    if shape.len() != 4 {
        return Err(Error::Shape {
            op: "network output",
            expected: format!("4-D NCHW feature `{name}`"),
            got: format!("shape {:?}", &shape[..]),
        });
    }
    let dims: [usize; 4] = std::array::from_fn(|i| shape[i].max(0) as usize);
    FeatureView::new(data, dims)
}
