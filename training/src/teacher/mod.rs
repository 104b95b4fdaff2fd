//! The frozen teacher (SPEC.md §2): a pretrained encoder whose four feature maps T0..T3 the
//! student learns to reproduce.
//!
//! Backbones: `resnet18` / `resnet34` ([`resnet`], torchvision parameter names) and
//! `efficientnet-lite0` ([`lite0`]). BatchNorm runs in eval mode (running statistics) and is
//! folded into the convolutions when the teacher is built; nothing here is trainable.
//!
//! # Taps
//!
//! Which unit feeds each of T0..T3 is configurable ([`Teacher::new`]); a tap is a unit name,
//! optionally followed by `_pool` for a 3×3 / stride 2 / pad 1 max-pool of that unit's output.
//! The student needs the four taps at strides 4, 4, 8 and 16 of the input.
//!
//! | backbone | units (channels, stride) | default taps |
//! |---|---|---|
//! | resnet18/34 | `stem` (64, 2), `stem_pool` (64, 4), `layer1` (64, 4), `layer2` (128, 8), `layer3` (256, 16), `layer4` (512, 32) | `stem_pool`, `layer1`, `layer2`, `layer3` |
//! | efficientnet-lite0 | `stem` (32, 2), `block0`…`block15`, alias `stage1`…`stage7` = last block of each stage: (16, 2), (24, 4), (40, 8), (80, 16), (112, 16), (192, 32), (320, 32) | `block0_pool`, `stage2`, `stage3`, `stage5` |
//!
//! Only the units up to the deepest tap are built (and loaded) and run.
//!
//! # Walking the teacher (ONNX export)
//!
//! [`Teacher::units`] lists the units in order; each holds a list of [`TeacherOp`]s, exactly
//! the ops the forward pass runs. [`Teacher::taps`] says after which unit each feature is
//! taken and which ops (`post`, a max-pool or nothing) follow before it is output. The
//! forward pass is:
//!
//! ```text
//! x = image
//! for (i, unit) in units: x = run(unit.ops, x)
//!     for tap in taps where tap.unit == i: T[tap] = run(tap.post, x)
//! ```
//!
//! Conv pads depend on the input size under TF "SAME" padding: track (c, h, w) with
//! [`TeacherOp::out_shape`] and ask [`ops::Conv::pads`] at each conv.

pub mod lite0;
pub mod ops;
pub mod resnet;

pub use ops::{Conv, MaxPool, Padding, TeacherOp};

use crate::weights::{self, random, TeacherWeights, WeightError, WeightFile};
use candle_core::{Device, Tensor};
use fabric_inspect::meta::Backbone;

/// The strides the student needs for T0..T3.
pub const TAP_STRIDES: [usize; 4] = [4, 4, 8, 16];

/// Errors while building a teacher.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// Reading or checking the weights failed.
    #[error(transparent)]
    Weights(#[from] WeightError),
    /// A tap names no unit of the backbone.
    #[error("teacher {backbone}: unknown tap `{tap}` (known: {known})")]
    UnknownTap {
        /// The backbone.
        backbone: Backbone,
        /// The tap as given.
        tap: String,
        /// The names it accepts.
        known: String,
    },
    /// Not four taps.
    #[error("teacher {backbone}: {count} taps given, T0..T3 need exactly 4")]
    TapCount {
        /// The backbone.
        backbone: Backbone,
        /// How many were given.
        count: usize,
    },
    /// A tap has the wrong stride.
    #[error(
        "teacher {backbone}: tap `{tap}` for T{index} has stride {stride}, T{index} needs \
         stride {expected} (T0..T3 need strides 4, 4, 8, 16)"
    )]
    TapStride {
        /// The backbone.
        backbone: Backbone,
        /// Which feature (0..3).
        index: usize,
        /// The tap.
        tap: String,
        /// Its stride.
        stride: usize,
        /// The stride needed.
        expected: usize,
    },
    /// A candle operation failed.
    #[error("teacher: {0}")]
    Candle(Box<candle_core::Error>),
}

impl From<candle_core::Error> for TeacherError {
    fn from(e: candle_core::Error) -> Self {
        TeacherError::Candle(Box::new(e))
    }
}

/// Name, output channels and stride of one unit, known before anything is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitInfo {
    /// The unit's name (tap names refer to it).
    pub name: String,
    /// Output channels.
    pub channels: usize,
    /// Output stride relative to the input.
    pub stride: usize,
}

impl UnitInfo {
    fn new(name: &str, channels: usize, stride: usize) -> UnitInfo {
        UnitInfo {
            name: name.to_owned(),
            channels,
            stride,
        }
    }
}

/// A run of ops between two possible taps.
#[derive(Debug, Clone)]
pub struct Unit {
    pub(crate) name: String,
    pub(crate) ops: Vec<TeacherOp>,
    pub(crate) channels: usize,
    pub(crate) stride: usize,
}

impl Unit {
    /// The unit's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its ops, in order.
    pub fn ops(&self) -> &[TeacherOp] {
        &self.ops
    }
    /// Output channels.
    pub fn channels(&self) -> usize {
        self.channels
    }
    /// Output stride relative to the input.
    pub fn stride(&self) -> usize {
        self.stride
    }
}

/// Where one of T0..T3 comes from.
#[derive(Debug, Clone)]
pub struct Tap {
    pub(crate) name: String,
    /// Index into the teacher's units.
    pub(crate) unit: usize,
    /// Ops after the unit's output (a max-pool for `*_pool` taps, else none).
    pub(crate) post: Vec<TeacherOp>,
    pub(crate) channels: usize,
    pub(crate) stride: usize,
}

impl Tap {
    /// The tap's name as configured.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The unit whose output it takes.
    pub fn unit(&self) -> usize {
        self.unit
    }
    /// Ops applied to that output.
    pub fn post(&self) -> &[TeacherOp] {
        &self.post
    }
    /// Channels.
    pub fn channels(&self) -> usize {
        self.channels
    }
    /// Stride relative to the input.
    pub fn stride(&self) -> usize {
        self.stride
    }
}

/// Whether the output of `ops` (in order) can be negative: the last op that is not a
/// max-pool decides (a max-pool keeps a non-negative input non-negative).
fn ops_signed<'a>(ops: impl DoubleEndedIterator<Item = &'a TeacherOp>) -> bool {
    for op in ops.rev() {
        match op {
            TeacherOp::MaxPool(_) => continue,
            TeacherOp::Relu | TeacherOp::Relu6 => return false,
            TeacherOp::Conv(_) | TeacherOp::Residual { .. } => return true,
        }
    }
    true
}

/// The default taps of a backbone (SPEC.md §2, DECISIONS.md).
pub fn default_taps(backbone: Backbone) -> Vec<String> {
    let taps: [&str; 4] = match backbone {
        Backbone::Resnet18 | Backbone::Resnet34 => ["stem_pool", "layer1", "layer2", "layer3"],
        Backbone::EfficientnetLite0 => ["block0_pool", "stage2", "stage3", "stage5"],
    };
    taps.iter().map(|s| s.to_string()).collect()
}

/// The units of a backbone, whether built or not.
pub fn catalog(backbone: Backbone) -> Vec<UnitInfo> {
    match backbone {
        Backbone::Resnet18 | Backbone::Resnet34 => resnet::catalog(),
        Backbone::EfficientnetLite0 => lite0::catalog(),
    }
}

/// Resolves a tap name to (unit index, pooled).
fn resolve_tap(backbone: Backbone, units: &[UnitInfo], tap: &str) -> Option<(usize, bool)> {
    let find = |name: &str| {
        let name = match backbone {
            Backbone::EfficientnetLite0 => {
                lite0::stage_alias(name).unwrap_or_else(|| name.to_owned())
            }
            _ => name.to_owned(),
        };
        units.iter().position(|u| u.name == name)
    };
    if let Some(i) = find(tap) {
        return Some((i, false));
    }
    tap.strip_suffix("_pool").and_then(find).map(|i| (i, true))
}

/// Checks taps and returns (unit index, pooled, channels, stride) for each.
pub fn resolve_taps(
    backbone: Backbone,
    taps: &[String],
) -> Result<Vec<(usize, bool, usize, usize)>, TeacherError> {
    if taps.len() != 4 {
        return Err(TeacherError::TapCount {
            backbone,
            count: taps.len(),
        });
    }
    let units = catalog(backbone);
    let mut out = Vec::with_capacity(4);
    for (index, tap) in taps.iter().enumerate() {
        let (unit, pooled) = resolve_tap(backbone, &units, tap).ok_or_else(|| {
            let mut known: Vec<String> = units.iter().map(|u| u.name.clone()).collect();
            if backbone == Backbone::EfficientnetLite0 {
                known.push("stage1..stage7".into());
            }
            TeacherError::UnknownTap {
                backbone,
                tap: tap.clone(),
                known: format!("{}, each optionally with `_pool`", known.join(", ")),
            }
        })?;
        let stride = units[unit].stride * if pooled { 2 } else { 1 };
        if stride != TAP_STRIDES[index] {
            return Err(TeacherError::TapStride {
                backbone,
                index,
                tap: tap.clone(),
                stride,
                expected: TAP_STRIDES[index],
            });
        }
        out.push((unit, pooled, units[unit].channels, stride));
    }
    Ok(out)
}

/// Where parameters come from while a teacher is built, and how many were taken.
pub(crate) struct Params<'a> {
    source: Source<'a>,
    device: &'a Device,
    /// Trainable-style parameters seen (conv weights and biases, BatchNorm γ and β).
    pub(crate) count: usize,
}

enum Source<'a> {
    File(&'a WeightFile),
    Random(u64),
}

impl Params<'_> {
    /// A conv (no bias, or a bias when the file has one) followed by BatchNorm, folded.
    /// `shape` = (Cout, Cin/groups, k, k).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn conv_bn(
        &mut self,
        conv: &str,
        bn: &str,
        shape: [usize; 4],
        stride: usize,
        padding: Padding,
        groups: usize,
        eps: f64,
    ) -> Result<Conv, TeacherError> {
        let cout = shape[0];
        let (w, conv_bias, [gamma, beta, mean, var]) = match &self.source {
            Source::File(file) => {
                let cpu = Device::Cpu;
                let w = file.get(&format!("{conv}.weight"), &shape, &cpu)?;
                let bias_name = format!("{conv}.bias");
                let conv_bias = if file.tensors.contains_key(&bias_name) {
                    Some(to_vec(file.get(&bias_name, &[cout], &cpu)?)?)
                } else {
                    None
                };
                let get = |s: &str| -> Result<Vec<f32>, TeacherError> {
                    to_vec(file.get(&format!("{bn}.{s}"), &[cout], &cpu)?)
                };
                (
                    to_vec(w)?,
                    conv_bias,
                    [
                        get("weight")?,
                        get("bias")?,
                        get("running_mean")?,
                        get("running_var")?,
                    ],
                )
            }
            Source::Random(seed) => (
                random::conv_weight(*seed, &format!("{conv}.weight"), &shape),
                None,
                random::batch_norm(*seed, bn, cout),
            ),
        };
        self.count += w.len() + conv_bias.as_ref().map_or(0, Vec::len) + 2 * cout;

        let per_out = w.len() / cout;
        let mut wf = w;
        let mut bf = vec![0f32; cout];
        for o in 0..cout {
            let scale = f64::from(gamma[o]) / (f64::from(var[o]) + eps).sqrt();
            for v in &mut wf[o * per_out..(o + 1) * per_out] {
                *v = (f64::from(*v) * scale) as f32;
            }
            let b0 = conv_bias.as_ref().map_or(0.0, |b| f64::from(b[o]));
            bf[o] = (f64::from(beta[o]) + (b0 - f64::from(mean[o])) * scale) as f32;
        }
        let weight = Tensor::from_vec(wf, &shape, self.device)?;
        let bias = Tensor::from_vec(bf, cout, self.device)?;
        Ok(Conv::new(
            conv.to_owned(),
            weight,
            bias,
            stride,
            padding,
            groups,
        )?)
    }
}

fn to_vec(t: Tensor) -> Result<Vec<f32>, TeacherError> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// A frozen teacher: the encoder up to its deepest tap.
#[derive(Debug, Clone)]
pub struct Teacher {
    pub(crate) backbone: Backbone,
    pub(crate) units: Vec<Unit>,
    pub(crate) taps: Vec<Tap>,
    pub(crate) weights_id: String,
    pub(crate) param_count: usize,
    pub(crate) device: Device,
}

impl Teacher {
    /// Builds a teacher with the given taps (see the module doc) and weights.
    ///
    /// A weight file is read in full, hashed, checked against the hash prefix in its name
    /// (torchvision's rule, `.pth` names only), and every tensor the units need must be there
    /// with the expected shape; other tensors (such as the classifier) are ignored.
    pub fn new(
        backbone: Backbone,
        taps: &[String],
        weights: TeacherWeights,
        device: &Device,
    ) -> Result<Teacher, TeacherError> {
        let resolved = resolve_taps(backbone, taps)?;
        let count = resolved.iter().map(|r| r.0).max().unwrap_or(0) + 1;

        let file;
        let (source, weights_id) = match &weights {
            TeacherWeights::File(path) => {
                file = WeightFile::open(path)?;
                weights::check_name_hash(path, &file.sha256)?;
                (Source::File(&file), file.sha256.clone())
            }
            TeacherWeights::Random { seed } => (Source::Random(*seed), "random".to_owned()),
        };
        let mut params = Params {
            source,
            device,
            count: 0,
        };
        let units = match backbone {
            Backbone::Resnet18 => resnet::build(18, &mut params, count)?,
            Backbone::Resnet34 => resnet::build(34, &mut params, count)?,
            Backbone::EfficientnetLite0 => lite0::build(&mut params, count)?,
        };
        let taps = taps
            .iter()
            .zip(resolved)
            .map(|(name, (unit, pooled, channels, stride))| Tap {
                name: name.clone(),
                unit,
                post: if pooled {
                    vec![TeacherOp::MaxPool(MaxPool::STEM)]
                } else {
                    Vec::new()
                },
                channels,
                stride,
            })
            .collect();
        tracing::info!(
            backbone = backbone.name(),
            weights = %weights_id,
            params = params.count,
            "teacher built"
        );
        Ok(Teacher {
            backbone,
            units,
            taps,
            weights_id,
            param_count: params.count,
            device: device.clone(),
        })
    }

    /// The four features T0..T3 of a batch of normalised images (N, 3, H, W).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let (_, c, _, _) = x.dims4()?;
        if c != 3 {
            candle_core::bail!("teacher: input has {c} channels, expected 3 (N, 3, H, W)");
        }
        let mut out: Vec<Option<Tensor>> = vec![None; self.taps.len()];
        let mut y = x.clone();
        for (i, unit) in self.units.iter().enumerate() {
            y = ops::run_seq(&unit.ops, &y)?;
            for (slot, tap) in out.iter_mut().zip(&self.taps) {
                if tap.unit == i {
                    *slot = Some(ops::run_seq(&tap.post, &y)?);
                }
            }
        }
        out.into_iter()
            .map(|t| {
                t.ok_or_else(|| candle_core::Error::Msg("teacher: a tap was not computed".into()))
            })
            .collect()
    }

    /// The backbone.
    pub fn backbone(&self) -> Backbone {
        self.backbone
    }

    /// Channels of T0..T3.
    pub fn channels(&self) -> [usize; 4] {
        let mut c = [0; 4];
        for (dst, tap) in c.iter_mut().zip(&self.taps) {
            *dst = tap.channels;
        }
        c
    }

    /// Whether each of T0..T3 can be negative: false where the tap's last value-changing op
    /// is a ReLU or ReLU6 (ResNet stages end in ReLU), true where it is a convolution or a
    /// residual sum without activation (EfficientNet's linear bottleneck outputs). The
    /// student ends each output with a ReLU only where the tap it imitates is non-negative.
    pub fn signed_taps(&self) -> [bool; 4] {
        let mut out = [true; 4];
        for (dst, tap) in out.iter_mut().zip(&self.taps) {
            // Every op from the input up to the tap: a unit may hold only a max-pool, whose
            // sign depends on the units before it (ResNet's `stem_pool`).
            let ops: Vec<&TeacherOp> = self.units[..=tap.unit]
                .iter()
                .flat_map(|u| &u.ops)
                .chain(&tap.post)
                .collect();
            *dst = ops_signed(ops.into_iter());
        }
        out
    }

    /// Strides of T0..T3 (always [`TAP_STRIDES`]).
    pub fn strides(&self) -> [usize; 4] {
        TAP_STRIDES
    }

    /// The taps' names, T0..T3.
    pub fn tap_names(&self) -> Vec<String> {
        self.taps.iter().map(|t| t.name.clone()).collect()
    }

    /// The taps, T0..T3.
    pub fn taps(&self) -> &[Tap] {
        &self.taps
    }

    /// The units built (up to the deepest tap), in order.
    pub fn units(&self) -> &[Unit] {
        &self.units
    }

    /// Full SHA-256 of the weight file, or `random`.
    pub fn weights_id(&self) -> String {
        self.weights_id.clone()
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Parameters of the units built: conv weights (and biases), BatchNorm γ and β; running
    /// statistics are buffers and not counted (as PyTorch's `parameters()`).
    pub fn param_count(&self) -> usize {
        self.param_count
    }

    /// Multiply-accumulates of one forward pass on one `h`×`w` image (convolutions only;
    /// BatchNorm is folded, activations and pooling count 0).
    pub fn macs(&self, h: usize, w: usize) -> u64 {
        let mut s = (3, h, w);
        let mut total = 0;
        for (i, unit) in self.units.iter().enumerate() {
            total += ops::seq_macs(&unit.ops, s);
            s = ops::seq_out_shape(&unit.ops, s);
            for tap in self.taps.iter().filter(|t| t.unit == i) {
                total += ops::seq_macs(&tap.post, s);
            }
        }
        total
    }

    /// Shapes (C, H, W) of T0..T3 for an `h`×`w` input.
    pub fn feature_shapes(&self, h: usize, w: usize) -> [(usize, usize, usize); 4] {
        let mut shapes = [(0, 0, 0); 4];
        let mut s = (3, h, w);
        for (i, unit) in self.units.iter().enumerate() {
            s = ops::seq_out_shape(&unit.ops, s);
            for (dst, tap) in shapes.iter_mut().zip(&self.taps) {
                if tap.unit == i {
                    *dst = ops::seq_out_shape(&tap.post, s);
                }
            }
        }
        shapes
    }
}
