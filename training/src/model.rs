//! The whole residual reverse distillation model: frozen teacher + trainable student, and
//! the variable store of the student.
//!
//! # Variables
//!
//! The student's variables live in one [`VarMap`] (keys such as
//! `decoder.stage0.block0.conv1.weight`, see [`crate::student`]), which the checkpoint
//! saves and loads as a whole. It holds two kinds of variables:
//! - trainable weights: convolution/linear weights and biases, BatchNorm γ (`*.weight`) and
//!   β (`*.bias`): give [`trainable_vars`] to the optimiser;
//! - BatchNorm running statistics (`*.running_mean`, `*.running_var`): updated in place by the
//!   forward pass in train mode, saved and loaded with the weights, never optimised
//!   ([`is_bn_statistic`] tells them apart).
//!
//! The teacher's weights are not in that map (the teacher is frozen and rebuilt from its
//! weight file).
//!
//! # Initialisation
//!
//! [`seeded_var_builder`] creates missing variables from a generator seeded by the run's
//! seed and the variable's name, so the same seed gives bit-identical initial weights on any
//! device and whatever order the layers are built in.

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::NormalOrUniform;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder, VarMap};
use fabric_inspect::meta::{Backbone, Variant};

use crate::student::Student;
use crate::teacher::{Teacher, TeacherError};
use crate::weights::random::SplitMix64;
use crate::weights::TeacherWeights;

/// Errors while building the model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Building the teacher failed.
    #[error(transparent)]
    Teacher(#[from] TeacherError),
    /// A candle operation failed.
    #[error("model: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Whether a variable name is a BatchNorm running statistic (saved, not trained).
pub fn is_bn_statistic(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// The trainable variables of `varmap`, sorted by name: everything except the BatchNorm
/// running statistics.
pub fn named_trainable_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, _)| !is_bn_statistic(name))
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// The trainable variables of `varmap` (for the optimiser), sorted by name.
pub fn trainable_vars(varmap: &VarMap) -> Vec<Var> {
    named_trainable_vars(varmap)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// Number of trainable parameters in `varmap` whose name starts with `prefix` ("" for all).
pub fn trainable_param_count(varmap: &VarMap, prefix: &str) -> usize {
    named_trainable_vars(varmap)
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(_, v)| v.elem_count())
        .sum()
}

/// A `VarBuilder` over `varmap` that creates missing variables from a generator seeded by
/// `seed` and the variable's name (see the module doc); existing variables are returned
/// as they are (their shape is checked).
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend = SeededInit {
        varmap: varmap.clone(),
        seed,
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

/// Variable store backend behind [`seeded_var_builder`].
struct SeededInit {
    varmap: VarMap,
    seed: u64,
}

impl SimpleBackend for SeededInit {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(var) = data.get(name) {
            if var.shape() != &s {
                candle_core::bail!(
                    "variable `{name}`: expected shape {:?}, found {:?}",
                    s.dims(),
                    var.dims()
                )
            }
            return Ok(var.as_tensor().clone());
        }
        let values = init_values(self.seed, name, &s, h);
        let var = Var::from_tensor(&Tensor::from_vec(values, s, dev)?.to_dtype(dtype)?)?;
        let tensor = var.as_tensor().clone();
        data.insert(name.to_owned(), var);
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        match data.get(name) {
            Some(var) => Ok(var.as_tensor().clone()),
            None => candle_core::bail!("variable `{name}` does not exist and has no shape"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let data = self.varmap.data().lock().unwrap_or_else(|e| e.into_inner());
        data.contains_key(name)
    }
}

/// The initial values of variable `name` for an [`Init`] hint.
fn init_values(seed: u64, name: &str, shape: &Shape, init: Init) -> Vec<f32> {
    let n = shape.elem_count();
    let mut rng = SplitMix64::for_tensor(seed, name);
    let (normal, a, b) = match init {
        Init::Const(v) => return vec![v as f32; n],
        Init::Randn { mean, stdev } => (true, mean, stdev),
        Init::Uniform { lo, up } => (false, lo, up),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let fan = fan.for_shape(shape).max(1);
            let std = non_linearity.gain() / (fan as f64).sqrt();
            match dist {
                NormalOrUniform::Normal => (true, 0.0, std),
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (false, -bound, bound)
                }
            }
        }
    };
    if normal {
        (0..n).map(|_| (a + b * rng.normal()) as f32).collect()
    } else {
        (0..n)
            .map(|_| (a + (b - a) * rng.uniform()) as f32)
            .collect()
    }
}

/// Teacher, student and the student's variables.
#[derive(Clone)]
pub struct Rrd {
    /// Frozen encoder (T0..T3).
    pub teacher: Teacher,
    /// Bottleneck, residual paths and decoder (S0..S3).
    pub student: Student,
    /// The student's variables (trainable weights and BatchNorm statistics).
    pub varmap: VarMap,
}

impl Rrd {
    /// Builds a student for `teacher`'s channels with seeded initial weights, on the
    /// teacher's device.
    pub fn new(teacher: Teacher, variant: Variant, seed: u64) -> Result<Rrd, ModelError> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, DType::F32, teacher.device());
        let student = Student::with_signed(vb, teacher.channels(), variant, teacher.signed_taps())?;
        Ok(Rrd {
            teacher,
            student,
            varmap,
        })
    }

    /// Builds teacher and student in one go (`taps` empty: the backbone's default taps).
    pub fn build(
        backbone: Backbone,
        taps: &[String],
        weights: TeacherWeights,
        variant: Variant,
        seed: u64,
        device: &Device,
    ) -> Result<Rrd, ModelError> {
        let default_taps;
        let taps = if taps.is_empty() {
            default_taps = crate::teacher::default_taps(backbone);
            &default_taps[..]
        } else {
            taps
        };
        let teacher = Teacher::new(backbone, taps, weights, device)?;
        Rrd::new(teacher, variant, seed)
    }

    /// Teacher features (detached) and student features of a batch of normalised images.
    pub fn forward_t(
        &self,
        x: &Tensor,
        train: bool,
    ) -> candle_core::Result<(Vec<Tensor>, Vec<Tensor>)> {
        let t: Vec<Tensor> = self
            .teacher
            .forward(x)?
            .iter()
            .map(Tensor::detach)
            .collect();
        let s = self.student.forward_t(&t, train)?;
        Ok((t, s))
    }

    /// The variables the optimiser updates (BatchNorm statistics left out), sorted by name.
    pub fn trainable_vars(&self) -> Vec<Var> {
        trainable_vars(&self.varmap)
    }

    /// Shared handle on the variable store (for checkpoints).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }
}
