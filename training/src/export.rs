//! Export of a residual reverse distillation model to the folder the runtime loads:
//! `teacher.onnx` (image → T0..T3), `student.onnx` (T0..T3 → S0..S3, residual paths inside)
//! and `model.yaml` ([`ModelMeta`]).
//!
//! Both graphs are built with [`crate::onnx::Graph`] by walking the candle structures, so the
//! exported networks compute what the trainer's forward pass computes (in eval mode):
//! - teacher: the [`TeacherOp`] lists, BatchNorm already folded into the convolutions; TF
//!   "SAME" padding becomes the asymmetric `pads` of each Conv for the export's input size;
//! - student: a BatchNorm right after a convolution (decoder blocks and their shortcuts) is
//!   folded into it; the BatchNorm of a conv → ReLU → BatchNorm unit stays an inference-form
//!   `BatchNormalization` node (running statistics); SSPCAB's four shifted 1×1 convolutions
//!   are one 2×2 convolution with dilation 4 over the input padded by 2.
//!
//! Every input and output has a dynamic batch axis; spatial sizes are fixed by the input
//! size. The folder is written into a temporary sibling and renamed into place, so a failed
//! export leaves nothing half-written.

use crate::bottleneck::{Attention2, Bottleneck, Sspcab, SSPCAB_PAD};
use crate::model::Rrd;
use crate::onnx::{
    fold_bn_into_conv, fold_bn_into_conv_transpose, BnParams, ConvSpec, Dim, Graph, OnnxError,
    PoolSpec, Value,
};
use crate::residual::{Attention, ResidualPath};
use crate::student::{ConvReluBn, DecoderBlock, FirstConv, Shortcut, Student};
use crate::teacher::{Teacher, TeacherOp};
use candle_core::{DType, Device, Tensor};
use candle_nn::{BatchNorm, Conv2d, ConvTranspose2d, Linear};
use fabric_inspect::meta::{
    FeatureSpec, InputMode, ModelMeta, PositionMeta, META_FILE, SCHEMA_VERSION, STUDENT_FILE,
    TEACHER_FILE,
};
use fabric_inspect::position::PositionStats;
use fabric_inspect::threshold::ScoreStats;
use std::path::{Path, PathBuf};

/// Input name of `teacher.onnx`.
pub const TEACHER_INPUT: &str = "image";
/// Output names of `teacher.onnx` (T0..T3), which are also the inputs of `student.onnx`.
pub const TEACHER_OUTPUTS: [&str; 4] = ["t0", "t1", "t2", "t3"];
/// Output names of `student.onnx` (S0..S3).
pub const STUDENT_OUTPUTS: [&str; 4] = ["s0", "s1", "s2", "s3"];

/// Errors of the export.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// A graph could not be built or written.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// Reading a weight tensor failed.
    #[error("export: reading weights: {0}")]
    Candle(#[from] candle_core::Error),
    /// The model holds a layer the exporter does not know how to write.
    #[error("export: {0}")]
    Unsupported(String),
    /// The output folder could not be prepared or replaced.
    #[error("export to {path}: {msg}")]
    Folder {
        /// The folder concerned.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// The training run could not be read (missing, corrupt or truncated files).
    #[error("training run {path}: {msg}")]
    Run {
        /// The run folder.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// The model could not be built.
    #[error("export: building the model: {0}")]
    Model(String),
    /// The metadata is inconsistent or could not be written.
    #[error("export: model metadata: {0}")]
    Meta(String),
}

/// Result alias of this module.
pub type Result<T, E = ExportError> = std::result::Result<T, E>;

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?)
}

fn dims4(t: &Tensor) -> Result<[usize; 4]> {
    let (a, b, c, d) = t.dims4()?;
    Ok([a, b, c, d])
}

/// (channels, height, width) of one feature map.
type Chw = (usize, usize, usize);

fn feature_dims((c, h, w): Chw) -> [Dim; 4] {
    [Dim::Batch, Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)]
}

// ---------------------------------------------------------------------------------------------
// Teacher
// ---------------------------------------------------------------------------------------------

fn teacher_ops(
    g: &mut Graph,
    ops: &[TeacherOp],
    mut x: Value,
    mut chw: (usize, usize, usize),
    prefix: &str,
) -> Result<(Value, (usize, usize, usize))> {
    for (i, op) in ops.iter().enumerate() {
        x = match op {
            TeacherOp::Conv(conv) => {
                let (w, b) = conv.weight_and_bias();
                let (stride, groups, _) = conv.geometry();
                let spec = ConvSpec::new(stride, 0)
                    .with_pads(conv.pads(chw.1, chw.2))
                    .with_group(groups);
                g.conv(
                    conv.name(),
                    &x,
                    &values(w)?,
                    dims4(w)?,
                    Some(&values(b)?),
                    &spec,
                )?
            }
            TeacherOp::Relu => g.relu(&format!("{prefix}.relu{i}"), &x)?,
            TeacherOp::Relu6 => g.clip(&format!("{prefix}.relu6_{i}"), &x, 0.0, 6.0)?,
            TeacherOp::MaxPool(p) => {
                let (k, s, pad) = p.geometry();
                g.max_pool(
                    &format!("{prefix}.maxpool{i}"),
                    &x,
                    &PoolSpec::new(k, s, pad),
                )?
            }
            TeacherOp::Residual { body, shortcut } => {
                let (y, _) = teacher_ops(g, body, x.clone(), chw, &format!("{prefix}.{i}"))?;
                let (sc, _) =
                    teacher_ops(g, shortcut, x.clone(), chw, &format!("{prefix}.{i}.short"))?;
                g.add(&format!("{prefix}.{i}.add"), &y, &sc)?
            }
        };
        chw = op.out_shape(chw);
    }
    Ok((x, chw))
}

/// The teacher as an ONNX graph: input [`TEACHER_INPUT`] `[batch, 3, size, size]` (normalised
/// pixels), outputs [`TEACHER_OUTPUTS`].
pub fn teacher_graph(teacher: &Teacher, size: usize) -> Result<Graph> {
    let mut g = Graph::new("teacher");
    g.set_doc(&format!(
        "fabric-inspect teacher {} ({} weights): normalised image -> T0..T3",
        teacher.backbone(),
        teacher.weights_id()
    ));
    let mut x = g.input(
        TEACHER_INPUT,
        &[
            Dim::Batch,
            Dim::Fixed(3),
            Dim::Fixed(size),
            Dim::Fixed(size),
        ],
    )?;
    let mut chw = (3, size, size);
    let taps = teacher.taps();
    if taps.len() != 4 {
        return Err(ExportError::Unsupported(format!(
            "teacher has {} taps, the export needs 4",
            taps.len()
        )));
    }
    let mut outs: Vec<Option<(Value, Chw)>> = vec![None; taps.len()];
    for (ui, unit) in teacher.units().iter().enumerate() {
        (x, chw) = teacher_ops(&mut g, unit.ops(), x, chw, unit.name())?;
        for (slot, tap) in outs.iter_mut().zip(taps) {
            if tap.unit() == ui {
                let prefix = format!("{}.tap", tap.name());
                *slot = Some(teacher_ops(&mut g, tap.post(), x.clone(), chw, &prefix)?);
            }
        }
    }
    for (i, slot) in outs.into_iter().enumerate() {
        let (v, shape) = slot.ok_or_else(|| {
            ExportError::Unsupported(format!("teacher tap {i} is after the last unit built"))
        })?;
        g.output(&v, TEACHER_OUTPUTS[i], &feature_dims(shape))?;
    }
    Ok(g)
}

// ---------------------------------------------------------------------------------------------
// Student
// ---------------------------------------------------------------------------------------------

fn bn_params(bn: &BatchNorm) -> Result<BnParams> {
    let (gamma, beta) = bn
        .weight_and_bias()
        .ok_or_else(|| ExportError::Unsupported("BatchNorm without affine parameters".into()))?;
    Ok(BnParams {
        gamma: values(gamma)?,
        beta: values(beta)?,
        mean: values(bn.running_mean())?,
        var: values(bn.running_var())?,
        eps: bn.eps() as f32,
    })
}

fn conv_spec(conv: &Conv2d) -> ConvSpec {
    let c = conv.config();
    ConvSpec::new(c.stride, c.padding)
        .with_dilation(c.dilation)
        .with_group(c.groups)
}

fn conv_transpose_spec(ct: &ConvTranspose2d) -> Result<ConvSpec> {
    let c = ct.config();
    if c.output_padding != 0 {
        return Err(ExportError::Unsupported(format!(
            "transposed convolution with output padding {}",
            c.output_padding
        )));
    }
    Ok(ConvSpec::new(c.stride, c.padding).with_dilation(c.dilation))
}

/// A convolution (its own bias kept), optionally followed by a BatchNorm folded into it.
fn conv(g: &mut Graph, name: &str, x: &Value, c: &Conv2d, bn: Option<&BatchNorm>) -> Result<Value> {
    let w = values(c.weight())?;
    let wd = dims4(c.weight())?;
    let b = c.bias().map(values).transpose()?;
    let spec = conv_spec(c);
    match bn {
        None => Ok(g.conv(name, x, &w, wd, b.as_deref(), &spec)?),
        Some(bn) => {
            let (fw, fb) = fold_bn_into_conv(&w, wd, b.as_deref(), &bn_params(bn)?)?;
            Ok(g.conv(name, x, &fw, wd, Some(&fb), &spec)?)
        }
    }
}

/// A transposed convolution, optionally followed by a BatchNorm folded into it.
fn conv_transpose(
    g: &mut Graph,
    name: &str,
    x: &Value,
    ct: &ConvTranspose2d,
    bn: Option<&BatchNorm>,
) -> Result<Value> {
    let w = values(ct.weight())?;
    let wd = dims4(ct.weight())?;
    let b = ct.bias().map(values).transpose()?;
    let spec = conv_transpose_spec(ct)?;
    match bn {
        None => Ok(g.conv_transpose(name, x, &w, wd, b.as_deref(), &spec)?),
        Some(bn) => {
            let (fw, fb) = fold_bn_into_conv_transpose(&w, wd, 1, b.as_deref(), &bn_params(bn)?)?;
            Ok(g.conv_transpose(name, x, &fw, wd, Some(&fb), &spec)?)
        }
    }
}

/// conv (no bias) → ReLU → BatchNorm (inference form).
fn conv_relu_bn(g: &mut Graph, name: &str, x: &Value, u: &ConvReluBn) -> Result<Value> {
    let y = conv(g, &format!("{name}.conv"), x, &u.conv, None)?;
    let y = g.relu(&format!("{name}.relu"), &y)?;
    Ok(g.batch_norm(&format!("{name}.bn"), &y, &bn_params(&u.bn)?)?)
}

fn linear(g: &mut Graph, name: &str, x: &Value, l: &Linear) -> Result<Value> {
    let (o, i) = l.weight().dims2()?;
    let b = l.bias().map(values).transpose()?;
    Ok(g.gemm(name, x, &values(l.weight())?, [o, i], b.as_deref())?)
}

/// SSPCAB: the four 1×1 convolutions on views shifted by (0|4, 0|4) of the input padded by
/// 2 are one 2×2 convolution with dilation 4 and padding 2 (kernel tap (a, b) = the conv whose
/// view starts at row 4a, column 4b); then ReLU and squeeze-excitation.
fn sspcab(g: &mut Graph, name: &str, x: &Value, s: &Sspcab) -> Result<Value> {
    let [o, i, kh, kw] = dims4(s.convs[0].weight())?;
    if (kh, kw) != (1, 1) || s.convs.iter().any(|c| c.config().groups != 1) {
        return Err(ExportError::Unsupported(
            "SSPCAB with sub-kernels other than 1×1".into(),
        ));
    }
    let step = 2 * SSPCAB_PAD;
    let mut w = vec![0f32; o * i * 4];
    let mut bias = vec![0f32; o];
    for (conv, &(dy, dx)) in s.convs.iter().zip(Sspcab::OFFSETS.iter()) {
        if dy % step != 0 || dx % step != 0 || dy / step > 1 || dx / step > 1 {
            return Err(ExportError::Unsupported(format!(
                "SSPCAB view offset ({dy}, {dx})"
            )));
        }
        let tap = (dy / step) * 2 + dx / step;
        let cw = values(conv.weight())?;
        for (k, &v) in cw.iter().enumerate() {
            w[k * 4 + tap] = v;
        }
        if let Some(b) = conv.bias() {
            for (acc, v) in bias.iter_mut().zip(values(b)?) {
                *acc += v;
            }
        }
    }
    let spec = ConvSpec::new(1, SSPCAB_PAD).with_dilation(step);
    let y = g.conv(
        &format!("{name}.convs"),
        x,
        &w,
        [o, i, 2, 2],
        Some(&bias),
        &spec,
    )?;
    let y = g.relu(&format!("{name}.relu"), &y)?;
    let s0 = g.global_avg_pool(&format!("{name}.se.mean"), &y)?;
    let s0 = g.flatten(&format!("{name}.se.flat"), &s0, 1)?;
    let h = linear(g, &format!("{name}.se.fc1"), &s0, &s.fc1)?;
    let h = g.relu(&format!("{name}.se.relu"), &h)?;
    let e = linear(g, &format!("{name}.se.fc2"), &h, &s.fc2)?;
    let e = g.sigmoid(&format!("{name}.se.sigmoid"), &e)?;
    let e = g.reshape(&format!("{name}.se.gate"), &e, &[0, o as i64, 1, 1])?;
    Ok(g.mul(&format!("{name}.se.scale"), &y, &e)?)
}

fn attention2(g: &mut Graph, name: &str, x: &Value, a: &Attention2) -> Result<Value> {
    let y = conv(g, &format!("{name}.conv1"), x, &a.conv1, None)?;
    let y = g.relu(&format!("{name}.relu"), &y)?;
    let z = conv(g, &format!("{name}.conv2"), &y, &a.conv2, None)?;
    let z = g.softmax(&format!("{name}.softmax"), &z, -1)?;
    Ok(g.mul(&format!("{name}.mul"), &z, &y)?)
}

fn attention(g: &mut Graph, name: &str, x: &Value, a: &Attention) -> Result<Value> {
    let y = conv(g, &format!("{name}.conv1"), x, &a.conv1, None)?;
    let y = g.relu(&format!("{name}.relu1"), &y)?;
    let b = conv(g, &format!("{name}.conv2"), &y, &a.conv2, None)?;
    let b = g.relu(&format!("{name}.relu2"), &b)?;
    let z = conv(g, &format!("{name}.conv3"), &b, &a.conv3, None)?;
    let z = g.softmax(&format!("{name}.softmax"), &z, -1)?;
    Ok(g.mul(&format!("{name}.mul"), &z, &y)?)
}

fn bottleneck(g: &mut Graph, t: &[Value], b: &Bottleneck) -> Result<Value> {
    let mut sum: Option<Value> = None;
    for (k, (branch, x)) in b.fusion.iter().zip(t).enumerate() {
        let mut y = x.clone();
        for (i, unit) in branch.iter().enumerate() {
            y = conv_relu_bn(g, &format!("bottleneck.fusion.b{k}.{i}"), &y, unit)?;
        }
        sum = Some(match sum {
            None => y,
            Some(s) => g.add(&format!("bottleneck.fusion.sum{k}"), &s, &y)?,
        });
    }
    let mut x = sum.ok_or_else(|| ExportError::Unsupported("fusion without branches".into()))?;
    for (i, unit) in b.embedding.iter().enumerate() {
        x = conv_relu_bn(g, &format!("bottleneck.embedding.{i}"), &x, unit)?;
    }
    let x = sspcab(g, "bottleneck.sspcab", &x, &b.sspcab)?;
    attention2(g, "bottleneck.attention", &x, &b.attention)
}

fn residual_path(g: &mut Graph, name: &str, x: &Value, r: &ResidualPath) -> Result<Value> {
    let y = conv_relu_bn(g, &format!("{name}.c3"), x, &r.unit)?;
    let y = if r.pool {
        g.avg_pool(&format!("{name}.pool"), &y, &PoolSpec::new(2, 2, 0))?
    } else {
        y
    };
    attention(g, &format!("{name}.attention"), &y, &r.attention)
}

fn decoder_block(g: &mut Graph, name: &str, x: &Value, b: &DecoderBlock) -> Result<Value> {
    let y = match &b.conv1 {
        FirstConv::Up(ct) => conv_transpose(g, &format!("{name}.conv1"), x, ct, Some(&b.bn1))?,
        FirstConv::Same(c) => conv(g, &format!("{name}.conv1"), x, c, Some(&b.bn1))?,
    };
    let y = g.relu(&format!("{name}.relu1"), &y)?;
    let y = conv(g, &format!("{name}.conv2"), &y, &b.conv2, Some(&b.bn2))?;
    let sc = match &b.shortcut {
        None => x.clone(),
        Some(Shortcut::Up { conv: ct, bn }) => {
            conv_transpose(g, &format!("{name}.shortcut"), x, ct, Some(bn))?
        }
        Some(Shortcut::Project { conv: c, bn }) => {
            conv(g, &format!("{name}.shortcut"), x, c, Some(bn))?
        }
    };
    let y = g.add(&format!("{name}.add"), &y, &sc)?;
    if b.out_relu() {
        Ok(g.relu(&format!("{name}.relu2"), &y)?)
    } else {
        Ok(y)
    }
}

/// The student as an ONNX graph: inputs [`TEACHER_OUTPUTS`] with the teacher feature shapes
/// `features` ((C, H, W) of T0..T3), outputs [`STUDENT_OUTPUTS`] of the same shapes.
pub fn student_graph(student: &Student, features: [(usize, usize, usize); 4]) -> Result<Graph> {
    let channels = student.channels();
    for (i, f) in features.iter().enumerate() {
        if f.0 != channels[i] {
            return Err(ExportError::Unsupported(format!(
                "student built for T{i} of {} channels, teacher gives {}",
                channels[i], f.0
            )));
        }
    }
    let mut g = Graph::new("student");
    g.set_doc(&format!(
        "fabric-inspect student ({} variant): T0..T3 -> S0..S3",
        student.variant()
    ));
    let mut t = Vec::with_capacity(4);
    for (name, f) in TEACHER_OUTPUTS.iter().zip(features) {
        t.push(g.input(name, &feature_dims(f))?);
    }
    let e = bottleneck(&mut g, &t, &student.bottleneck)?;
    let r = match &student.residual {
        Some(r) => Some([
            residual_path(&mut g, "residual.r01", &t[0], &r.r01)?,
            residual_path(&mut g, "residual.r12", &t[1], &r.r12)?,
            residual_path(&mut g, "residual.r23", &t[2], &r.r23)?,
        ]),
        None => None,
    };
    let mut x = e;
    let mut outs: Vec<Value> = Vec::with_capacity(4);
    for (k, stage) in student.decoder.stages.iter().enumerate() {
        for (j, block) in stage.blocks.iter().enumerate() {
            x = decoder_block(&mut g, &format!("decoder.stage{k}.block{j}"), &x, block)?;
        }
        // Stage k is compared with T(3 − k); stages 0..2 get R23, R12, R01 added.
        if let (Some(r), true) = (&r, k < 3) {
            x = g.add(&format!("decoder.stage{k}.residual"), &x, &r[2 - k])?;
        }
        outs.push(x.clone());
    }
    // outs = [S3, S2, S1, S0].
    for (i, name) in STUDENT_OUTPUTS.iter().enumerate() {
        g.output(&outs[3 - i], name, &feature_dims(features[i]))?;
    }
    Ok(g)
}

// ---------------------------------------------------------------------------------------------
// Metadata and the model folder
// ---------------------------------------------------------------------------------------------

/// What `model.yaml` needs beyond the networks themselves.
#[derive(Debug, Clone)]
pub struct MetaInfo {
    /// How images reach the network.
    pub input_mode: InputMode,
    /// Network input side (256).
    pub input_size: u32,
    /// Gaussian σ of the map smoothing.
    pub sigma: f32,
    /// Validation normals' score statistics (absent for an untrained export).
    pub validation: Option<ScoreStats>,
    /// Decision threshold.
    pub threshold: f32,
    /// Where the threshold came from.
    pub threshold_source: String,
    /// The training seed.
    pub seed: u64,
    /// The training configuration, verbatim (null for an untrained export).
    pub training_config: serde_yaml::Value,
    /// Position statistics of the run, if it computed them.
    pub position: Option<PositionMeta>,
}

/// The metadata of `rrd` exported at `info.input_size`.
pub fn model_meta(rrd: &Rrd, info: &MetaInfo) -> ModelMeta {
    let size = info.input_size as usize;
    let shapes = rrd.teacher.feature_shapes(size, size);
    let features: Vec<FeatureSpec> = shapes
        .iter()
        .enumerate()
        .map(|(i, &(c, h, w))| FeatureSpec {
            name: format!("T{i}"),
            channels: c,
            height: h,
            width: w,
        })
        .collect();
    let backbone = rrd.teacher.backbone();
    ModelMeta {
        schema_version: SCHEMA_VERSION,
        backbone,
        variant: rrd.student.variant(),
        teacher_weights: rrd.teacher.weights_id(),
        input_mode: info.input_mode,
        input_size: info.input_size,
        normalization: backbone.normalization(),
        teacher_taps: rrd.teacher.tap_names(),
        map_layer_weights: fabric_inspect::anomaly::default_layer_weights(
            &shapes.iter().map(|&(_, h, w)| (h, w)).collect::<Vec<_>>(),
        ),
        features,
        teacher_input: TEACHER_INPUT.to_string(),
        teacher_outputs: TEACHER_OUTPUTS.iter().map(|s| s.to_string()).collect(),
        student_inputs: TEACHER_OUTPUTS.iter().map(|s| s.to_string()).collect(),
        student_outputs: STUDENT_OUTPUTS.iter().map(|s| s.to_string()).collect(),
        sigma: info.sigma,
        validation: info.validation.clone(),
        threshold: info.threshold,
        threshold_source: info.threshold_source.clone(),
        threshold_history: Vec::new(),
        position: info.position.clone(),
        seed: info.seed,
        training_config: info.training_config.clone(),
    }
}

/// What [`export_model`] wrote.
#[derive(Debug, Clone)]
pub struct ExportSummary {
    /// The model folder.
    pub dir: PathBuf,
    /// Nodes of the teacher and student graphs.
    pub nodes: [usize; 2],
    /// Weights stored in the teacher and student graphs.
    pub weights: [usize; 2],
    /// Sizes in bytes of `teacher.onnx` and `student.onnx`.
    pub bytes: [usize; 2],
}

/// Files a model folder may hold; any other file makes [`export_model`] refuse to replace it.
const MODEL_FILES: [&str; 3] = [TEACHER_FILE, STUDENT_FILE, META_FILE];

fn folder_err(path: &Path, msg: impl std::fmt::Display) -> ExportError {
    ExportError::Folder {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    }
}

/// Checks that an existing `dir` may be replaced: a folder holding nothing but model files
/// (the networks, `model.yaml`, position statistics as export or `calibrate` names them).
fn check_replaceable(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(folder_err(dir, "exists and is not a folder"));
    }
    let entries = std::fs::read_dir(dir).map_err(|e| folder_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| folder_err(dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let position_file = name.starts_with("position") && name.ends_with(".bin");
        if !MODEL_FILES.contains(&name.as_ref()) && !position_file {
            return Err(folder_err(
                dir,
                format!(
                    "holds `{name}`, which is not part of an exported model; refusing to \
                     replace it (choose an empty or new folder)"
                ),
            ));
        }
    }
    Ok(())
}

/// Writes `teacher.onnx`, `student.onnx` and `model.yaml` of `rrd` into `out_dir`.
///
/// The files are written into a temporary folder beside `out_dir`, checked (the metadata is
/// read back), and the folder is then renamed into place; an existing model folder at
/// `out_dir` is replaced. On any error nothing is left at `out_dir` beyond what was there.
pub fn export_model(rrd: &Rrd, meta: &ModelMeta, out_dir: &Path) -> Result<ExportSummary> {
    export_model_with(rrd, meta, None, out_dir)
}

/// [`export_model`] that also writes the position statistics `meta.position` names.
pub fn export_model_with(
    rrd: &Rrd,
    meta: &ModelMeta,
    position: Option<&PositionStats>,
    out_dir: &Path,
) -> Result<ExportSummary> {
    meta.validate().map_err(ExportError::Meta)?;
    match (&meta.position, position) {
        (None, None) => {}
        (Some(p), Some(stats)) => {
            if (stats.width, stats.height) != (p.width as usize, p.height as usize) {
                return Err(ExportError::Meta(format!(
                    "position statistics are {}×{}, model.yaml says {}×{}",
                    stats.width, stats.height, p.width, p.height
                )));
            }
        }
        (Some(_), None) => {
            return Err(ExportError::Meta(
                "model.yaml names position statistics but none were given".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(ExportError::Meta(
                "position statistics given but model.yaml does not name them".into(),
            ))
        }
    }
    let size = meta.input_size as usize;
    let shapes = rrd.teacher.feature_shapes(size, size);
    for (f, s) in meta.features.iter().zip(&shapes) {
        if (f.channels, f.height, f.width) != *s {
            return Err(ExportError::Meta(format!(
                "feature {} is listed as {}×{}×{} but the teacher gives {:?} at {size}×{size}",
                f.name, f.channels, f.height, f.width, s
            )));
        }
    }
    let teacher = teacher_graph(&rrd.teacher, size)?;
    let student = student_graph(&rrd.student, shapes)?;
    let tbytes = teacher.to_bytes()?;
    let sbytes = student.to_bytes()?;

    let name = out_dir
        .file_name()
        .ok_or_else(|| folder_err(out_dir, "has no folder name"))?
        .to_string_lossy()
        .into_owned();
    let parent = out_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    if out_dir.exists() {
        check_replaceable(out_dir)?;
    }
    std::fs::create_dir_all(parent).map_err(|e| folder_err(parent, e))?;
    let pid = std::process::id();
    let tmp = parent.join(format!(".{name}.export-{pid}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| folder_err(&tmp, e))?;
    }
    std::fs::create_dir(&tmp).map_err(|e| folder_err(&tmp, e))?;
    let written = (|| -> Result<()> {
        let atomic = |file: &str, bytes: &[u8]| {
            fabric_inspect::fsutil::atomic_write(&tmp.join(file), bytes)
                .map_err(|e| folder_err(&tmp, e))
        };
        atomic(TEACHER_FILE, &tbytes)?;
        atomic(STUDENT_FILE, &sbytes)?;
        if let (Some(p), Some(stats)) = (&meta.position, position) {
            atomic(&p.file, &stats.to_bytes())?;
        }
        meta.save(&tmp)
            .map_err(|e| ExportError::Meta(e.to_string()))?;
        ModelMeta::load(&tmp).map_err(|e| ExportError::Meta(e.to_string()))?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let moved = (|| -> Result<()> {
        if out_dir.exists() {
            let old = parent.join(format!(".{name}.old-{pid}"));
            std::fs::rename(out_dir, &old).map_err(|e| folder_err(out_dir, e))?;
            if let Err(e) = std::fs::rename(&tmp, out_dir) {
                let _ = std::fs::rename(&old, out_dir);
                return Err(folder_err(out_dir, e));
            }
            std::fs::remove_dir_all(&old).map_err(|e| folder_err(&old, e))?;
        } else {
            std::fs::rename(&tmp, out_dir).map_err(|e| folder_err(out_dir, e))?;
        }
        Ok(())
    })();
    if let Err(e) = moved {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    tracing::info!(
        dir = %out_dir.display(),
        teacher_nodes = teacher.node_count(),
        student_nodes = student.node_count(),
        "model exported"
    );
    Ok(ExportSummary {
        dir: out_dir.to_path_buf(),
        nodes: [teacher.node_count(), student.node_count()],
        weights: [teacher.weight_count(), student.weight_count()],
        bytes: [tbytes.len(), sbytes.len()],
    })
}

// ---------------------------------------------------------------------------------------------
// From a training run, or untrained
// ---------------------------------------------------------------------------------------------

/// Rebuilds the best checkpoint of the training run in `run_dir` and the metadata that
/// describes it (validation statistics and threshold from the run's `stats.yaml`).
pub fn load_run(run_dir: &Path, device: &Device) -> Result<(Rrd, ModelMeta)> {
    let run_err = |msg: String| ExportError::Run {
        path: run_dir.to_path_buf(),
        msg,
    };
    let (cfg, rrd) =
        crate::checkpoint::load_model(run_dir, device).map_err(|e| run_err(e.to_string()))?;
    let stats = crate::checkpoint::load_stats(run_dir).map_err(|e| {
        run_err(format!(
            "{e} (stats.yaml is written when training has scored its validation images; \
             a run that stopped before that finishes with `fabric-train train --resume`)"
        ))
    })?;
    let training_config = serde_yaml::to_value(&cfg)
        .map_err(|e| ExportError::Meta(format!("training config: {e}")))?;
    let info = MetaInfo {
        input_mode: cfg.input_mode,
        input_size: cfg.image_size,
        sigma: stats.sigma,
        validation: Some(stats.stats.clone()),
        threshold: stats.threshold,
        threshold_source: "training validation".to_string(),
        seed: cfg.seed,
        training_config,
        position: stats.position.clone(),
    };
    let meta = model_meta(&rrd, &info);
    Ok((rrd, meta))
}

/// Metadata of an untrained export: no validation statistics, and a threshold no score
/// reaches (`f32::MAX`) until `calibrate` sets one from normal images.
pub fn untrained_info(input_mode: InputMode, input_size: u32, seed: u64) -> MetaInfo {
    MetaInfo {
        input_mode,
        input_size,
        sigma: crate::trainer::MAP_SIGMA,
        validation: None,
        threshold: f32::MAX,
        threshold_source: "none: untrained export (run `calibrate` on normal images)".to_string(),
        seed,
        training_config: serde_yaml::Value::Null,
        position: None,
    }
}

/// Exports the best checkpoint of the training run in `run_dir` to `out_dir`.
///
/// A missing, corrupt or truncated checkpoint fails before anything is written.
pub fn export_run(run_dir: &Path, out_dir: &Path) -> Result<(ModelMeta, ExportSummary)> {
    let (rrd, meta) = load_run(run_dir, &Device::Cpu)?;
    let position = match &meta.position {
        Some(p) => Some(
            PositionStats::read(&run_dir.join(&p.file), p.width as usize, p.height as usize)
                .map_err(|e| ExportError::Run {
                    path: run_dir.to_path_buf(),
                    msg: e.to_string(),
                })?,
        ),
        None => None,
    };
    let summary = export_model_with(&rrd, &meta, position.as_ref(), out_dir)?;
    Ok((meta, summary))
}

/// Builds a model whose student is freshly initialised from `seed` (teacher from `weights`,
/// default taps) and exports it to `out_dir`, for tests and timing without a training run.
pub fn export_untrained(
    backbone: fabric_inspect::meta::Backbone,
    variant: fabric_inspect::meta::Variant,
    weights: crate::weights::TeacherWeights,
    info: &MetaInfo,
    out_dir: &Path,
) -> Result<(ModelMeta, ExportSummary)> {
    let rrd = Rrd::build(backbone, &[], weights, variant, info.seed, &Device::Cpu)
        .map_err(|e| ExportError::Model(format!("{backbone}: {e}")))?;
    let meta = model_meta(&rrd, info);
    let summary = export_model(&rrd, &meta, out_dir)?;
    Ok((meta, summary))
}
