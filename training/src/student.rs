//! The student: bottleneck, residual paths and the reverse decoder of residual reverse
//! distillation (SPEC.md §3–6; Thomine & Snoussi 2024, arXiv 2401.02287).
//!
//! The student reads the teacher's four features T0..T3 (channels `[C0, C1, C2, C3]`, at 1/4,
//! 1/4, 1/8 and 1/16 of the input) and rebuilds them as S0..S3. Every width follows the
//! teacher's channels; for ResNet34 they are `[64, 64, 128, 256]`, for EfficientNet-Lite0
//! `[16, 24, 40, 112]`.
//!
//! # Structure (for the ONNX exporter)
//!
//! All layers are plain candle structures: [`Conv2d`] (read `weight()`, `bias()`, `config()`
//! for padding and stride), [`ConvTranspose2d`] (2×2, stride 2, no bias, weight
//! `[Cin, Cout, 2, 2]`), [`BatchNorm`] (eps 1e-5; `running_mean()`, `running_var()`,
//! `weight_and_bias()`) and [`Linear`] (weight `[out, in]`, bias). Checkpoint keys equal the
//! field paths below (the `VarBuilder` prefixes).
//!
//! ```text
//! Student
//! ├── bottleneck: Bottleneck                      (crate::bottleneck)
//! │   ├── fusion: [Vec<ConvReluBn>; 4]            branch k reads T_k; the four outputs are summed
//! │   │     b0: C1(C0→C2, s2), C1(C2→C3, s2)      keys bottleneck.fusion.b{k}.{i}.{conv,bn}
//! │   │     b1: C1(C1→C2, s2), C1(C2→C3, s2)
//! │   │     b2: C1(C2→C3, s2)
//! │   │     b3: C1(C3→C3, s1)
//! │   ├── embedding: [ConvReluBn; 3]              C1(C3→C3), C1(C3→C3), C1(C3→2·C3, s2)
//! │   ├── sspcab: Sspcab                          zero-pad 2, four 1×1 convs with bias on the
//! │   │                                           shifted views, sum, ReLU, squeeze-excitation
//! │   └── attention: Attention2                   two 3×3 convs, softmax along width
//! ├── residual: Option<ResidualPaths>             None in the dg variant (crate::residual)
//! │   └── r01, r12, r23: ResidualPath             C3 unit, optional 2×2 average pool, Attention
//! └── decoder: Decoder
//!     └── stages: [Stage; 4] → blocks: [DecoderBlock; 2]
//!           conv1: FirstConv::Up(ConvTranspose2d) | FirstConv::Same(Conv2d 3×3, pad 1)
//!           bn1, conv2 (3×3, pad 1, no bias), bn2
//!           shortcut: None (identity) | Shortcut::Up{conv: ConvTranspose2d, bn}
//!                     | Shortcut::Project{conv: Conv2d 1×1, bn}
//!           out = ReLU(bn2(conv2(ReLU(bn1(conv1(x))))) + shortcut(x))
//!           (a stage's last block drops the outer ReLU when its output imitates a teacher
//!           feature that can be negative, see [`Student::with_signed`])
//! ```
//!
//! A [`ConvReluBn`] is conv (no bias) → ReLU → BatchNorm: ReLU comes *before* the BatchNorm.
//! Decoder stage k's output (after its last ReLU) gets the residual path added: stage 0 +
//! R23(T2) = S3, stage 1 + R12(T1) = S2, stage 2 + R01(T0) = S1; stage 3 gives S0.
//!
//! # Trainable weights and BatchNorm statistics
//!
//! The BatchNorm running statistics (`*.running_mean`, `*.running_var`) live in the same
//! [`candle_nn::VarMap`] as the weights, so one safetensors file holds the whole student. They
//! are updated in place by `batch_norm_t` in train mode, and must not be given to the
//! optimiser: use [`crate::model::trainable_vars`], which leaves them out.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor, Var, D};
use candle_nn::{
    BatchNorm, BatchNormConfig, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, Init,
    Linear, VarBuilder,
};
use fabric_inspect::meta::Variant;
use rayon::prelude::*;

use crate::bottleneck::Bottleneck;
use crate::fastops;
use crate::residual::ResidualPaths;

/// BatchNorm epsilon of every student BatchNorm (PyTorch default).
pub const BN_EPS: f64 = 1e-5;
/// BatchNorm running-statistics momentum (PyTorch default).
pub const BN_MOMENTUM: f64 = 0.1;

// ---------------------------------------------------------------------------------------------
// Layer constructors with the initialisation of SPEC.md §5.1
// ---------------------------------------------------------------------------------------------

/// A `k×k` convolution: weight Kaiming-normal (fan-out, ReLU gain); bias, when present,
/// uniform ±1/√fan_in (PyTorch's default).
pub(crate) fn conv2d(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    bias: bool,
) -> Result<Conv2d> {
    let std = (2.0 / (cout * k * k) as f64).sqrt();
    let weight = vb.get_with_hints(
        (cout, cin, k, k),
        "weight",
        Init::Randn {
            mean: 0.0,
            stdev: std,
        },
    )?;
    let bias = if bias {
        let bound = 1.0 / ((cin * k * k) as f64).sqrt();
        Some(vb.get_with_hints(
            cout,
            "bias",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?)
    } else {
        None
    };
    let config = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Ok(Conv2d::new(weight, bias, config))
}

/// A 2×2 transposed convolution with stride 2 and no bias; weight `[cin, cout, 2, 2]`,
/// PyTorch's default init (Kaiming-uniform, a = √5: uniform ±1/√(cout·4)).
pub(crate) fn conv_transpose2x2(
    vb: VarBuilder,
    cin: usize,
    cout: usize,
) -> Result<ConvTranspose2d> {
    let bound = 1.0 / ((cout * 4) as f64).sqrt();
    let weight = vb.get_with_hints(
        (cin, cout, 2, 2),
        "weight",
        Init::Uniform {
            lo: -bound,
            up: bound,
        },
    )?;
    let config = ConvTranspose2dConfig {
        stride: 2,
        ..Default::default()
    };
    Ok(ConvTranspose2d::new(weight, None, config))
}

/// A linear layer with PyTorch's default init (weight and bias uniform ±1/√in).
pub(crate) fn linear(vb: VarBuilder, din: usize, dout: usize) -> Result<Linear> {
    let bound = 1.0 / (din as f64).sqrt();
    let init = Init::Uniform {
        lo: -bound,
        up: bound,
    };
    let weight = vb.get_with_hints((dout, din), "weight", init)?;
    let bias = vb.get_with_hints(dout, "bias", init)?;
    Ok(Linear::new(weight, Some(bias)))
}

/// A BatchNorm over `c` channels: γ = 1, β = 0, running mean 0, running variance 1.
pub(crate) fn batch_norm(vb: VarBuilder, c: usize) -> Result<BatchNorm> {
    let config = BatchNormConfig {
        eps: BN_EPS,
        remove_mean: true,
        affine: true,
        momentum: BN_MOMENTUM,
    };
    candle_nn::batch_norm(c, config, vb)
}

// ---------------------------------------------------------------------------------------------
// Forward helpers
// ---------------------------------------------------------------------------------------------

/// BatchNorm on an NCHW tensor.
///
/// `train`: normalise with the batch statistics (biased variance) and update the running
/// statistics in place (momentum [`BN_MOMENTUM`], unbiased variance, as PyTorch does).
/// Otherwise normalise with the running statistics. γ and β get gradients in both modes; the
/// running statistics never do.
///
/// Written out rather than calling `candle_nn::BatchNorm::forward_t` to avoid its transposed
/// copies of the activation (this runs after every convolution in the training loop).
pub(crate) fn batch_norm_t(bn: &BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    bn_maybe_relu(bn, x, train, false)
}

/// [`batch_norm_t`] then ReLU; in train mode on the CPU one fused op
/// ([`crate::fastbn::batch_norm_relu_train`]).
pub(crate) fn batch_norm_relu_t(bn: &BatchNorm, x: &Tensor, train: bool) -> Result<Tensor> {
    bn_maybe_relu(bn, x, train, true)
}

fn bn_maybe_relu(bn: &BatchNorm, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (gamma, beta) = bn
        .weight_and_bias()
        .ok_or_else(|| candle_core::Error::Msg("student BatchNorm without γ/β".into()))?;
    if train {
        let count = n * h * w;
        if count < 2 {
            candle_core::bail!("BatchNorm in train mode needs more than one value per channel")
        }
        // The fused op of crate::fastbn where it applies (contiguous f32 on the CPU), else
        // the same computation composed of candle operations.
        let fused = crate::fastbn::batch_norm_train_applies(x, gamma, beta);
        let (y, batch_mean, batch_var) = if fused && relu {
            crate::fastbn::batch_norm_relu_train(x, gamma, beta, bn.eps())?
        } else if fused {
            crate::fastbn::batch_norm_train(x, gamma, beta, bn.eps())?
        } else {
            let inv = 1.0 / count as f64;
            let x3 = x.reshape((n, c, h * w))?;
            let mean = (x3.sum_keepdim(2)?.sum_keepdim(0)? * inv)?;
            let xc = x3.broadcast_sub(&mean)?;
            let var = (xc.sqr()?.sum_keepdim(2)?.sum_keepdim(0)? * inv)?;
            let batch_mean = mean.detach().flatten_all()?;
            let batch_var = var.detach().flatten_all()?;
            let scale = gamma
                .reshape((1, c, 1))?
                .broadcast_div(&(var + bn.eps())?.sqrt()?)?;
            let y = xc
                .broadcast_mul(&scale)?
                .broadcast_add(&beta.reshape((1, c, 1))?)?
                .reshape((n, c, h, w))?;
            let y = if relu { fastops::relu(&y)? } else { y };
            (y, batch_mean, batch_var)
        };

        let m = bn.momentum();
        let rm = Var::from_tensor(bn.running_mean())?;
        let rv = Var::from_tensor(bn.running_var())?;
        let batch_var = (batch_var * (count as f64 / (count - 1) as f64))?;
        rm.set(&((rm.as_tensor() * (1.0 - m))? + (batch_mean * m)?)?)?;
        rv.set(&((rv.as_tensor() * (1.0 - m))? + (batch_var * m)?)?)?;
        Ok(y)
    } else {
        let std = (bn.running_var().detach() + bn.eps())?.sqrt()?;
        let scale = gamma.div(&std)?;
        let shift = beta.sub(&bn.running_mean().detach().mul(&scale)?)?;
        let y = x
            .broadcast_mul(&scale.reshape((1, c, 1, 1))?)?
            .broadcast_add(&shift.reshape((1, c, 1, 1))?)?;
        if relu {
            fastops::relu(&y)
        } else {
            Ok(y)
        }
    }
}

/// A 2×2 stride-2 transposed convolution (no bias), computed as one matrix product:
/// `out[n, o, 2i+a, 2j+b] = Σ_c x[n, c, i, j] · K[c, o, a, b]`.
///
/// Same values as `ConvTranspose2d::forward`, but candle's CPU transposed convolution (and its
/// backward pass) is a plain loop; a matrix product is several times faster.
pub(crate) fn conv_transpose2x2_forward(ct: &ConvTranspose2d, x: &Tensor) -> Result<Tensor> {
    if crate::fastconv::conv_transpose2d_applies(ct, x) {
        return crate::fastconv::conv_transpose2d_layer(ct, x);
    }
    let (cin, cout, kh, kw) = ct.weight().dims4()?;
    let cfg = ct.config();
    if (kh, kw) != (2, 2) || cfg.stride != 2 || cfg.padding != 0 || cfg.output_padding != 0 {
        return ct.forward(x);
    }
    let (n, c, h, w) = x.dims4()?;
    if c != cin {
        candle_core::bail!(
            "transposed conv expects {cin} input channels, got shape {:?}",
            x.dims()
        )
    }
    // [cout·4, cin] × [n, cin, h·w] → [n, cout·4, h·w]
    let k = ct.weight().reshape((cin, cout * 4))?.t()?;
    let y = k.broadcast_matmul(&x.reshape((n, cin, h * w))?)?;
    // [n, cout, a, b, h, w] → [n, cout, h, a, w, b]
    y.reshape((n, cout, 2, 2, h, w))?
        .permute((0, 1, 4, 2, 5, 3))?
        .contiguous()?
        .reshape((n, cout, 2 * h, 2 * w))
}

/// A convolution; 1×1 kernels (any stride, no padding) run as one matrix product.
///
/// Same values as `Conv2d::forward`. candle's CPU convolution computes its input gradient
/// with a plain transposed-convolution loop; for a 1×1 kernel a matrix product (whose
/// gradient is a matrix product too) is much faster.
pub(crate) fn conv_forward(conv: &Conv2d, x: &Tensor) -> Result<Tensor> {
    if crate::fastconv::conv2d_applies(conv, x) {
        return crate::fastconv::conv2d_layer(conv, x);
    }
    let (cout, cin_g, kh, kw) = conv.weight().dims4()?;
    let cfg = conv.config();
    let (n, c, h, w) = x.dims4()?;
    let s = cfg.stride;
    let plain = (kh, kw) == (1, 1) && cfg.padding == 0 && cfg.groups == 1 && cin_g == c;
    if !plain || s == 0 || h % s != 0 || w % s != 0 {
        return conv.forward(x);
    }
    let (ho, wo) = (h / s, w / s);
    let x = if s == 1 {
        x.clone()
    } else {
        // Rows and columns 0, s, 2s, …: a strided view, copied once by the reshape below.
        x.reshape((n, c, ho, s, wo, s))?
            .narrow(3, 0, 1)?
            .narrow(5, 0, 1)?
    };
    let y = conv
        .weight()
        .reshape((cout, c))?
        .broadcast_matmul(&x.reshape((n, c, ho * wo))?)?;
    let y = match conv.bias() {
        Some(b) => y.broadcast_add(&b.reshape((1, cout, 1))?)?,
        None => y,
    };
    y.reshape((n, cout, ho, wo))
}

/// Softmax along the last axis (width, in NCHW) with a backward pass.
///
/// candle's fused `softmax_last_dim` has no gradient; on the CPU this op is as fast and has
/// one, elsewhere the composed `candle_nn::ops::softmax` is used.
pub(crate) fn softmax_width(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(SoftmaxLastAxis)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// Softmax over the last axis of a tensor (CPU, f32), with its gradient.
struct SoftmaxLastAxis;

impl CustomOp1 for SoftmaxLastAxis {
    fn name(&self) -> &'static str {
        "softmax-last-axis"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = match storage {
            CpuStorage::F32(v) => v,
            _ => candle_core::bail!("softmax-last-axis: f32 only"),
        };
        let src = match layout.contiguous_offsets() {
            Some((a, b)) => &src[a..b],
            None => candle_core::bail!("softmax-last-axis: input must be contiguous"),
        };
        let dim = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut dst = vec![0f32; src.len()];
        let rows = src.par_chunks_exact(dim).zip(dst.par_chunks_exact_mut(dim));
        rows.with_min_len(64).for_each(|(s, d)| {
            let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, &v) in d.iter_mut().zip(s) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            d.iter_mut().for_each(|o| *o *= inv);
        });
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        // dx = y ⊙ (g − Σ_last(g ⊙ y))
        let gy = (grad_res * res)?;
        let s = gy.sum_keepdim(D::Minus1)?;
        Ok(Some((gy - res.broadcast_mul(&s)?)?))
    }
}

// ---------------------------------------------------------------------------------------------
// Building unit shared by the bottleneck (C1) and the residual paths (C3)
// ---------------------------------------------------------------------------------------------

/// Convolution (no bias) → ReLU → BatchNorm: "C1" with a 1×1 kernel (bottleneck), "C3" with
/// a 3×3 kernel and padding 1 (residual paths).
#[derive(Debug, Clone)]
pub struct ConvReluBn {
    pub(crate) conv: Conv2d,
    pub(crate) bn: BatchNorm,
}

impl ConvReluBn {
    /// 1×1 conv with the given stride ("C1"); keys `conv.weight`, `bn.*`.
    pub fn c1(vb: VarBuilder, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(vb.pp("conv"), cin, cout, 1, stride, 0, false)?,
            bn: batch_norm(vb.pp("bn"), cout)?,
        })
    }

    /// 3×3 conv, padding 1, stride 1 ("C3"); keys `conv.weight`, `bn.*`.
    pub fn c3(vb: VarBuilder, cin: usize, cout: usize) -> Result<Self> {
        Ok(Self {
            conv: conv2d(vb.pp("conv"), cin, cout, 3, 1, 1, false)?,
            bn: batch_norm(vb.pp("bn"), cout)?,
        })
    }

    /// conv → ReLU → BatchNorm (`train`: batch statistics).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        batch_norm_t(
            &self.bn,
            &fastops::relu(&conv_forward(&self.conv, x)?)?,
            train,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Decoder
// ---------------------------------------------------------------------------------------------

/// First convolution of a decoder block.
#[derive(Debug, Clone)]
pub enum FirstConv {
    /// 2×2 transposed convolution, stride 2 (doubles the resolution).
    Up(ConvTranspose2d),
    /// 3×3 convolution, padding 1 (same resolution).
    Same(Conv2d),
}

/// Shortcut of a decoder block that changes resolution or channels.
#[derive(Debug, Clone)]
pub enum Shortcut {
    /// 2×2 transposed convolution, stride 2, then BatchNorm.
    Up {
        conv: ConvTranspose2d,
        bn: BatchNorm,
    },
    /// 1×1 convolution (no bias) then BatchNorm: a same-resolution block that changes channels.
    Project { conv: Conv2d, bn: BatchNorm },
}

/// Decoder block (RD4AD's de-ResNet basic block).
#[derive(Debug, Clone)]
pub struct DecoderBlock {
    pub(crate) conv1: FirstConv,
    pub(crate) bn1: BatchNorm,
    pub(crate) conv2: Conv2d,
    pub(crate) bn2: BatchNorm,
    /// `None`: identity.
    pub(crate) shortcut: Option<Shortcut>,
    /// Whether the block ends in a ReLU (false only for a stage's last block when the
    /// teacher feature it imitates can be negative).
    pub(crate) out_relu: bool,
}

impl DecoderBlock {
    /// A block `cin → cout`; `upsample` doubles the resolution (transposed convolutions).
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, upsample: bool) -> Result<Self> {
        let conv1 = if upsample {
            FirstConv::Up(conv_transpose2x2(vb.pp("conv1"), cin, cout)?)
        } else {
            FirstConv::Same(conv2d(vb.pp("conv1"), cin, cout, 3, 1, 1, false)?)
        };
        let shortcut = if upsample {
            Some(Shortcut::Up {
                conv: conv_transpose2x2(vb.pp("shortcut.conv"), cin, cout)?,
                bn: batch_norm(vb.pp("shortcut.bn"), cout)?,
            })
        } else if cin != cout {
            Some(Shortcut::Project {
                conv: conv2d(vb.pp("shortcut.conv"), cin, cout, 1, 1, 0, false)?,
                bn: batch_norm(vb.pp("shortcut.bn"), cout)?,
            })
        } else {
            None
        };
        Ok(Self {
            conv1,
            bn1: batch_norm(vb.pp("bn1"), cout)?,
            conv2: conv2d(vb.pp("conv2"), cout, cout, 3, 1, 1, false)?,
            bn2: batch_norm(vb.pp("bn2"), cout)?,
            shortcut,
            out_relu: true,
        })
    }

    /// Whether the block's output goes through a final ReLU.
    pub fn out_relu(&self) -> bool {
        self.out_relu
    }

    /// Applies the block (`train`: BatchNorm batch statistics).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = match &self.conv1 {
            FirstConv::Up(ct) => conv_transpose2x2_forward(ct, x)?,
            FirstConv::Same(c) => conv_forward(c, x)?,
        };
        let y = batch_norm_relu_t(&self.bn1, &y, train)?;
        let y = batch_norm_t(&self.bn2, &conv_forward(&self.conv2, &y)?, train)?;
        let sc = match &self.shortcut {
            None => x.clone(),
            Some(Shortcut::Up { conv, bn }) => {
                batch_norm_t(bn, &conv_transpose2x2_forward(conv, x)?, train)?
            }
            Some(Shortcut::Project { conv, bn }) => {
                batch_norm_t(bn, &conv_forward(conv, x)?, train)?
            }
        };
        if self.out_relu {
            fastops::add_relu(&y, &sc)
        } else {
            y + sc
        }
    }
}

/// Two decoder blocks.
#[derive(Debug, Clone)]
pub struct Stage {
    pub(crate) blocks: [DecoderBlock; 2],
}

impl Stage {
    /// Two blocks `cin → cout → cout`; the first upsamples when `upsample`; the second
    /// ends without ReLU when `signed` (its output imitates a feature that can be negative).
    pub fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        upsample: bool,
        signed: bool,
    ) -> Result<Self> {
        let mut last = DecoderBlock::new(vb.pp("block1"), cout, cout, false)?;
        last.out_relu = !signed;
        Ok(Self {
            blocks: [
                DecoderBlock::new(vb.pp("block0"), cin, cout, upsample)?,
                last,
            ],
        })
    }

    /// Applies both blocks.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = self.blocks[0].forward_t(x, train)?;
        self.blocks[1].forward_t(&x, train)
    }
}

/// The reverse decoder: 4 stages of 2 blocks. Stage 0 reads the embedding (2·C3 channels)
/// and outputs C3; stage 1 outputs C2; stage 2 outputs C1 (all three double the resolution);
/// stage 3 keeps the resolution and outputs C0.
#[derive(Debug, Clone)]
pub struct Decoder {
    pub(crate) stages: [Stage; 4],
}

impl Decoder {
    /// The decoder for teacher channels `[C0, C1, C2, C3]` (keys `stage{k}.block{b}.*`);
    /// `signed[k]`: teacher feature T_k can be negative, so the stage that rebuilds it
    /// (stage 3 − k) ends without ReLU.
    pub fn new(vb: VarBuilder, channels: [usize; 4], signed: [bool; 4]) -> Result<Self> {
        let [c0, c1, c2, c3] = channels;
        Ok(Self {
            stages: [
                Stage::new(vb.pp("stage0"), 2 * c3, c3, true, signed[3])?,
                Stage::new(vb.pp("stage1"), c3, c2, true, signed[2])?,
                Stage::new(vb.pp("stage2"), c2, c1, true, signed[1])?,
                Stage::new(vb.pp("stage3"), c1, c0, false, signed[0])?,
            ],
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Student
// ---------------------------------------------------------------------------------------------

/// Intermediate results of one student forward pass ([`Student::trace`]).
#[derive(Debug, Clone)]
pub struct Trace {
    /// Sum of the four fusion branches (C3 channels at T3's resolution).
    pub fused: Tensor,
    /// After the three embedding C1 units (2·C3 channels, half T3's resolution).
    pub embedded: Tensor,
    /// After SSPCAB.
    pub sspcab: Tensor,
    /// Embedding E, after Attention2: the decoder's input.
    pub embedding: Tensor,
    /// `[R01(T0), R12(T1), R23(T2)]`; `None` in the dg variant.
    pub residual: Option<[Tensor; 3]>,
    /// Raw outputs of decoder stages 0..3 (before the residual is added).
    pub stages: [Tensor; 4],
    /// `[S0, S1, S2, S3]`.
    pub outputs: Vec<Tensor>,
}

/// The trainable half of residual reverse distillation: T0..T3 → S0..S3.
#[derive(Debug, Clone)]
pub struct Student {
    pub(crate) channels: [usize; 4],
    pub(crate) variant: Variant,
    pub(crate) bottleneck: Bottleneck,
    /// `None` in the [`Variant::Dg`] variant.
    pub(crate) residual: Option<ResidualPaths>,
    pub(crate) decoder: Decoder,
}

impl Student {
    /// Builds the student for teacher features of `channels = [C0, C1, C2, C3]` channels.
    /// Variables come from `vb` (keys `bottleneck.*`, `residual.*`, `decoder.*`); with an
    /// empty `VarMap` behind it they are created with SPEC.md §5.1's initialisation (use
    /// [`crate::model::seeded_var_builder`] for seeded, reproducible values).
    ///
    /// Every output ends in a ReLU, as the paper's student does for its ResNet teacher; use
    /// [`Student::with_signed`] for teacher features that can be negative.
    pub fn new(vb: VarBuilder, channels: [usize; 4], variant: Variant) -> Result<Self> {
        Self::with_signed(vb, channels, variant, [false; 4])
    }

    /// Like [`Student::new`]; `signed[k]` says that teacher feature T_k can be negative
    /// ([`crate::teacher::Teacher::signed_taps`]), and the decoder stage that rebuilds it then
    /// ends without ReLU: a student whose outputs are all non-negative cannot come closer
    /// than `1 − ‖max(t, 0)‖ / ‖t‖` to a signed feature `t` in cosine distance (about 0.25 on
    /// average over EfficientNet-Lite0's four default taps on fabric).
    pub fn with_signed(
        vb: VarBuilder,
        channels: [usize; 4],
        variant: Variant,
        signed: [bool; 4],
    ) -> Result<Self> {
        if channels.contains(&0) {
            candle_core::bail!("student channels must be positive, got {channels:?}")
        }
        let residual = match variant {
            Variant::Residual => Some(ResidualPaths::new(vb.pp("residual"), channels)?),
            Variant::Dg => None,
        };
        Ok(Self {
            channels,
            variant,
            bottleneck: Bottleneck::new(vb.pp("bottleneck"), channels)?,
            residual,
            decoder: Decoder::new(vb.pp("decoder"), channels, signed)?,
        })
    }

    /// Per output S0..S3: whether it ends without ReLU (see [`Student::with_signed`]).
    pub fn signed_outputs(&self) -> [bool; 4] {
        let st = &self.decoder.stages;
        std::array::from_fn(|k| !st[3 - k].blocks[1].out_relu)
    }

    /// Teacher channels `[C0, C1, C2, C3]` this student was built for.
    pub fn channels(&self) -> [usize; 4] {
        self.channels
    }

    /// Residual or domain-generalised variant.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// Runs the student on teacher features `t = [T0, T1, T2, T3]` and returns
    /// `[S0, S1, S2, S3]`, each of the shape of the teacher feature at the same index.
    /// `train` selects BatchNorm batch statistics (and updates the running statistics).
    pub fn forward_t(&self, t: &[Tensor], train: bool) -> Result<Vec<Tensor>> {
        Ok(self.trace(t, train)?.outputs)
    }

    /// Like [`Student::forward_t`], also returning the intermediate results (for tests,
    /// debugging and export parity). Costs nothing extra: the autograd graph holds them
    /// anyway.
    pub fn trace(&self, t: &[Tensor], train: bool) -> Result<Trace> {
        self.check_inputs(t)?;
        let b = &self.bottleneck;
        let fused = b.fuse(t, train)?;
        let embedded = b.embed(&fused, train)?;
        let sspcab = b.sspcab.forward(&embedded)?;
        let embedding = b.attention.forward(&sspcab)?;
        let residual = match &self.residual {
            Some(r) => Some(r.forward_t(t, train)?),
            None => None,
        };
        let add = |x: &Tensor, i: usize| -> Result<Tensor> {
            match &residual {
                Some(r) => x + &r[i],
                None => Ok(x.clone()),
            }
        };
        let [st0, st1, st2, st3] = &self.decoder.stages;
        let d0 = st0.forward_t(&embedding, train)?;
        let s3 = add(&d0, 2)?;
        let d1 = st1.forward_t(&s3, train)?;
        let s2 = add(&d1, 1)?;
        let d2 = st2.forward_t(&s2, train)?;
        let s1 = add(&d2, 0)?;
        let s0 = st3.forward_t(&s1, train)?;
        Ok(Trace {
            fused,
            embedded,
            sspcab,
            embedding,
            residual,
            stages: [d0, d1, d2, s0.clone()],
            outputs: vec![s0, s1, s2, s3],
        })
    }

    /// Checks that the four teacher features have the channels and the 1 : 1 : ½ : ¼
    /// resolutions (multiples of 8 at T0) the student is built for.
    fn check_inputs(&self, t: &[Tensor]) -> Result<()> {
        if t.len() != 4 {
            candle_core::bail!("student expects 4 teacher features, got {}", t.len())
        }
        let (n, _, h, w) = t[0].dims4()?;
        if h % 8 != 0 || w % 8 != 0 {
            candle_core::bail!(
                "teacher feature T0 is {h}×{w}; the student needs multiples of 8 \
                 (input sides multiples of 32)"
            )
        }
        let sizes = [(h, w), (h, w), (h / 2, w / 2), (h / 4, w / 4)];
        for (i, x) in t.iter().enumerate() {
            let expected = [n, self.channels[i], sizes[i].0, sizes[i].1];
            if x.dims() != expected {
                candle_core::bail!(
                    "teacher feature T{i}: expected shape {expected:?}, got {:?}",
                    x.dims()
                )
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ramp(shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 97) as f32 / 97.0 - 0.5) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn transposed_conv_as_matmul_matches_candle() {
        let k = Var::from_tensor(&ramp(&[5, 3, 2, 2], 1.0)).unwrap();
        let cfg = ConvTranspose2dConfig {
            stride: 2,
            ..Default::default()
        };
        let ct = ConvTranspose2d::new(k.as_tensor().clone(), None, cfg);
        let x = Var::from_tensor(&ramp(&[2, 5, 3, 4], 2.0)).unwrap();
        let fast = conv_transpose2x2_forward(&ct, x.as_tensor()).unwrap();
        let slow = ct.forward(x.as_tensor()).unwrap();
        assert_eq!(fast.dims(), &[2, 3, 6, 8]);
        assert!(max_abs_diff(&fast, &slow) < 1e-5);

        let w = ramp(&[2, 3, 6, 8], 1.0);
        let gf = (&fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (&slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&k, &x] {
            let (a, b) = (gf.get(v).unwrap(), gs.get(v).unwrap());
            assert!(max_abs_diff(a, b) < 1e-4, "gradient differs");
        }
    }

    #[test]
    fn conv1x1_as_matmul_matches_candle() {
        for (stride, bias) in [(1, true), (2, false), (2, true)] {
            let k = Var::from_tensor(&ramp(&[4, 3, 1, 1], 1.0)).unwrap();
            let b = Var::from_tensor(&ramp(&[4], 1.0)).unwrap();
            let cfg = Conv2dConfig {
                stride,
                ..Default::default()
            };
            let bias = bias.then(|| b.as_tensor().clone());
            let conv = Conv2d::new(k.as_tensor().clone(), bias, cfg);
            let x = Var::from_tensor(&ramp(&[2, 3, 6, 8], 2.0)).unwrap();
            let fast = conv_forward(&conv, x.as_tensor()).unwrap();
            let slow = conv.forward(x.as_tensor()).unwrap();
            assert_eq!(fast.dims(), slow.dims());
            assert!(max_abs_diff(&fast, &slow) < 1e-5);
            let w = ramp(slow.dims(), 1.0);
            let gf = (&fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let gs = (&slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&k, &x] {
                assert!(max_abs_diff(gf.get(v).unwrap(), gs.get(v).unwrap()) < 1e-4);
            }
        }
    }

    #[test]
    fn softmax_width_matches_composed_softmax_and_its_gradient() {
        let x = Var::from_tensor(&ramp(&[2, 3, 4, 5], 6.0)).unwrap();
        let fast = softmax_width(x.as_tensor()).unwrap();
        let slow = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        assert!(max_abs_diff(&fast, &slow) < 1e-6);
        let sums = fast
            .sum(D::Minus1)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));

        let w = ramp(&[2, 3, 4, 5], 3.0);
        let gf = (&fast * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (&slow * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_abs_diff(gf.get(&x).unwrap(), gs.get(&x).unwrap()) < 1e-5);
    }

    #[test]
    fn batch_norm_train_matches_candle_and_updates_running_stats() {
        let make = || {
            let vm = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
            batch_norm(vb, 3).unwrap()
        };
        let (ours, reference) = (make(), make());
        let x = (ramp(&[4, 3, 5, 6], 4.0) + 1.5).unwrap();
        let a = batch_norm_t(&ours, &x, true).unwrap();
        let b = reference.forward_train(&x).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5);
        assert!(max_abs_diff(ours.running_mean(), reference.running_mean()) < 1e-6);
        assert!(max_abs_diff(ours.running_var(), reference.running_var()) < 1e-6);
        let rm = ours.running_mean().to_vec1::<f32>().unwrap();
        assert!(
            rm.iter().any(|v| v.abs() > 1e-3),
            "running mean not updated"
        );

        let a = batch_norm_t(&ours, &x, false).unwrap();
        let b = candle_nn::ModuleT::forward_t(&reference, &x, false).unwrap();
        assert!(max_abs_diff(&a, &b) < 1e-5);
    }
}
