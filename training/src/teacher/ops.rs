//! The teacher as a list of plain operations, shared by the candle forward pass and the ONNX
//! exporter so that the two cannot drift apart.
//!
//! BatchNorm (eval mode, running statistics) is folded into the convolution before it when
//! the teacher is built: `w' = w·γ/√(σ²+ε)` per output channel and
//! `b' = β − μ·γ/√(σ²+ε)`. What is left are convolutions with bias, ReLU, ReLU6 (ONNX
//! `Clip(0, 6)`), max-pooling and residual sums.

use candle_core::{CpuStorage, CustomOp3, DType, InplaceOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Padding {
    /// The same number of zeros on every side (PyTorch style).
    Symmetric(usize),
    /// TensorFlow "SAME": the output has ⌈in / stride⌉ positions; the total padding
    /// `max((out − 1)·stride + k − in, 0)` is split with the smaller half before (top/left)
    /// and the larger after (bottom/right). It depends on the input size.
    TfSame,
}

/// One convolution (BatchNorm folded in), NCHW, square kernel.
#[derive(Debug, Clone)]
pub struct Conv {
    /// Name of the convolution in the weight file (without `.weight`), e.g. `layer2.0.conv1`
    /// or `_blocks.3._depthwise_conv`; names ONNX initialisers.
    pub(crate) name: String,
    /// Folded weight, (Cout, Cin/groups, k, k).
    pub(crate) weight: Tensor,
    /// Folded bias, (Cout).
    pub(crate) bias: Tensor,
    /// `bias` as (1, Cout, 1, 1), for broadcasting.
    pub(crate) bias4: Tensor,
    /// `weight` as (Cout, Cin) when the conv is 1×1, stride 1, one group (run as a matmul).
    pub(crate) weight2: Option<Tensor>,
    pub(crate) in_channels: usize,
    pub(crate) out_channels: usize,
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    pub(crate) padding: Padding,
    pub(crate) groups: usize,
}

impl Conv {
    /// Builds a conv from a folded weight (Cout, Cin/groups, k, k) and bias (Cout).
    pub(crate) fn new(
        name: String,
        weight: Tensor,
        bias: Tensor,
        stride: usize,
        padding: Padding,
        groups: usize,
    ) -> Result<Conv> {
        let (cout, cin_g, k, k2) = weight.dims4()?;
        if k != k2 {
            candle_core::bail!("conv {name}: kernel {k}×{k2} is not square");
        }
        let bias4 = bias.reshape((1, cout, 1, 1))?;
        let weight2 = (k == 1 && stride == 1 && groups == 1 && padding == Padding::Symmetric(0))
            .then(|| weight.reshape((cout, cin_g)))
            .transpose()?;
        Ok(Conv {
            name,
            weight,
            bias,
            bias4,
            weight2,
            in_channels: cin_g * groups,
            out_channels: cout,
            kernel: k,
            stride,
            padding,
            groups,
        })
    }

    /// The name of the convolution in the weight file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The folded weight (Cout, Cin/groups, k, k) and bias (Cout).
    pub fn weight_and_bias(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }

    /// Stride, groups and kernel size.
    pub fn geometry(&self) -> (usize, usize, usize) {
        (self.stride, self.groups, self.kernel)
    }

    /// Zeros added on an `h`×`w` input: `[top, left, bottom, right]` (ONNX `pads` order is
    /// `[top, left, bottom, right]` too).
    pub fn pads(&self, h: usize, w: usize) -> [usize; 4] {
        match self.padding {
            Padding::Symmetric(p) => [p, p, p, p],
            Padding::TfSame => {
                let (t, b) = same_pads(h, self.kernel, self.stride);
                let (l, r) = same_pads(w, self.kernel, self.stride);
                [t, l, b, r]
            }
        }
    }

    /// Output size for an `h`×`w` input.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let [t, l, b, r] = self.pads(h, w);
        (
            (h + t + b - self.kernel) / self.stride + 1,
            (w + l + r - self.kernel) / self.stride + 1,
        )
    }

    /// Multiply-accumulates for an `h`×`w` input (one image).
    pub fn macs(&self, h: usize, w: usize) -> u64 {
        let (ho, wo) = self.out_hw(h, w);
        (self.out_channels * ho * wo * (self.in_channels / self.groups) * self.kernel * self.kernel)
            as u64
    }

    /// Whether this is a depthwise conv (one input channel per group).
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.groups == self.out_channels
    }

    /// Runs the conv alone (N, Cin, H, W) → (N, Cout, H', W').
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Act::None)
    }

    /// Runs the conv, then `act`. On the CPU the bias and activation are one in-place pass
    /// (and depthwise convs are a dedicated kernel).
    fn forward_act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        let (n, _, h, w) = x.dims4()?;
        let [t, l, b, r] = self.pads(h, w);
        let cpu = x.device().is_cpu() && x.dtype() == DType::F32;
        if self.is_depthwise() && cpu {
            let op = DepthwiseConv {
                kernel: self.kernel,
                stride: self.stride,
                pads: [t, l, b, r],
                act,
            };
            return x
                .contiguous()?
                .apply_op3_no_bwd(&self.weight, &self.bias, &op);
        }
        let y = if let Some(w2) = &self.weight2 {
            let x3 = x.contiguous()?.reshape((n, self.in_channels, h * w))?;
            w2.broadcast_left(n)?
                .matmul(&x3)?
                .reshape((n, self.out_channels, h, w))?
        } else if cpu && self.groups == 1 && crate::fastconv::fast_convs_enabled() {
            // im2col and one matrix product per image, on all threads: candle's own CPU
            // convolution took about 2.5× as long for the ResNet34 teacher.
            let (xp, pad) = if t == b && l == r && t == l {
                (x.clone(), t)
            } else {
                (x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?, 0)
            };
            crate::fastconv::conv2d(&xp, &self.weight, None, self.stride, pad)?
        } else if t == b && l == r && t == l {
            x.conv2d(&self.weight, t, self.stride, 1, self.groups)?
        } else {
            x.pad_with_zeros(2, t, b)?.pad_with_zeros(3, l, r)?.conv2d(
                &self.weight,
                0,
                self.stride,
                1,
                self.groups,
            )?
        };
        if cpu && y.is_contiguous() {
            // `y` is a fresh tensor that nothing else refers to: safe to update in place.
            y.inplace_op2(&self.bias, &BiasAct { act })?;
            Ok(y)
        } else {
            act.apply(&y.broadcast_add(&self.bias4)?)
        }
    }
}

/// An activation fused into the op before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    None,
    Relu,
    Relu6,
}

impl Act {
    #[inline]
    fn f(self, v: f32) -> f32 {
        match self {
            Act::None => v,
            Act::Relu => v.max(0.0),
            Act::Relu6 => v.clamp(0.0, 6.0),
        }
    }

    fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Act::None => Ok(x.clone()),
            Act::Relu => x.relu(),
            Act::Relu6 => x.clamp(0f32, 6f32),
        }
    }

    /// The activation an op is followed by, if it can be fused.
    fn of(next: Option<&TeacherOp>) -> Act {
        match next {
            Some(TeacherOp::Relu) => Act::Relu,
            Some(TeacherOp::Relu6) => Act::Relu6,
            _ => Act::None,
        }
    }
}

fn contiguous_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: output is not contiguous");
    };
    match s {
        CpuStorage::F32(v) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("{what}: output is not f32"),
    }
}

/// In place: `y[n, c, ..] = act(y[n, c, ..] + bias[c])`.
struct BiasAct {
    act: Act,
}

impl InplaceOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (_, c, h, w) = l1.shape().dims4()?;
        let bias = contiguous_f32(s2, l2, "bias")?;
        if bias.len() != c {
            candle_core::bail!("bias-act: {} biases for {c} channels", bias.len());
        }
        let y = contiguous_f32_mut(s1, l1, "bias-act")?;
        let act = self.act;
        y.par_chunks_mut(h * w)
            .enumerate()
            .for_each(|(plane, dst)| {
                let b = bias[plane % c];
                for v in dst {
                    *v = act.f(*v + b);
                }
            });
        Ok(())
    }
}

/// In place: `y = act(y + x)`, same shapes.
struct AddAct {
    act: Act,
}

impl InplaceOp2 for AddAct {
    fn name(&self) -> &'static str {
        "add-act"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "add-act: shapes {:?} and {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let x = contiguous_f32(s2, l2, "residual")?;
        let y = contiguous_f32_mut(s1, l1, "add-act")?;
        let act = self.act;
        const CHUNK: usize = 1 << 14;
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .for_each(|(d, s)| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d = act.f(*d + s);
                }
            });
        Ok(())
    }
}

fn residual_forward(
    body: &[TeacherOp],
    shortcut: &[TeacherOp],
    x: &Tensor,
    act: Act,
) -> Result<Tensor> {
    let y = run_seq(body, x)?;
    let s = if shortcut.is_empty() {
        x.clone()
    } else {
        run_seq(shortcut, x)?
    };
    let cpu = y.device().is_cpu() && y.dtype() == DType::F32;
    if cpu && y.is_contiguous() && !body.is_empty() {
        // `y` is the fresh output of the body's last op.
        let s = s.contiguous()?;
        y.inplace_op2(&s, &AddAct { act })?;
        Ok(y)
    } else {
        act.apply(&(y + s)?)
    }
}

/// TF "SAME" padding of one axis: (before, after).
pub fn same_pads(len: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = len.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(len);
    (total / 2, total - total / 2)
}

/// Max-pooling, square window, padding that never wins the max (ONNX `MaxPool` semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool {
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    pub(crate) pad: usize,
}

impl MaxPool {
    /// The 3×3, stride 2, pad 1 pool of the ResNet stem (and of the pooled taps).
    pub const STEM: MaxPool = MaxPool {
        kernel: 3,
        stride: 2,
        pad: 1,
    };

    /// Kernel, stride and padding (the same on all sides).
    pub fn geometry(&self) -> (usize, usize, usize) {
        (self.kernel, self.stride, self.pad)
    }

    /// Output size for an `h`×`w` input.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h + 2 * self.pad - self.kernel) / self.stride + 1,
            (w + 2 * self.pad - self.kernel) / self.stride + 1,
        )
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // With pad < kernel every window holds at least one real sample, and an edge sample
        // repeated into the padding is inside the window that sees the padding, so padding by
        // repetition gives exactly the max over real samples.
        if self.pad >= self.kernel {
            candle_core::bail!(
                "max-pool pad {} must be below its kernel {}",
                self.pad,
                self.kernel
            );
        }
        let x = if self.pad > 0 {
            x.pad_with_same(2, self.pad, self.pad)?
                .pad_with_same(3, self.pad, self.pad)?
        } else {
            x.clone()
        };
        x.max_pool2d_with_stride(self.kernel, self.stride)
    }
}

/// One step of a teacher. Export maps them one to one: `Conv` → ONNX `Conv` (with bias,
/// `pads` from [`Conv::pads`]), `Relu` → `Relu`, `Relu6` → `Clip(min 0, max 6)`, `MaxPool` →
/// `MaxPool`, `Residual` → both branches from the same input, then `Add`.
#[derive(Debug, Clone)]
pub enum TeacherOp {
    /// Convolution with folded BatchNorm.
    Conv(Conv),
    /// max(x, 0).
    Relu,
    /// min(max(x, 0), 6).
    Relu6,
    /// Max-pooling.
    MaxPool(MaxPool),
    /// `body(x) + shortcut(x)`; an empty shortcut is the identity.
    Residual {
        /// The main branch.
        body: Vec<TeacherOp>,
        /// The shortcut branch (empty: identity).
        shortcut: Vec<TeacherOp>,
    },
}

impl TeacherOp {
    /// Output (channels, h, w) for an input of (c, h, w).
    pub fn out_shape(&self, chw: (usize, usize, usize)) -> (usize, usize, usize) {
        let (c, h, w) = chw;
        match self {
            TeacherOp::Conv(conv) => {
                let (ho, wo) = conv.out_hw(h, w);
                (conv.out_channels, ho, wo)
            }
            TeacherOp::Relu | TeacherOp::Relu6 => chw,
            TeacherOp::MaxPool(p) => {
                let (ho, wo) = p.out_hw(h, w);
                (c, ho, wo)
            }
            TeacherOp::Residual { body, .. } => seq_out_shape(body, chw),
        }
    }

    /// Multiply-accumulates of this op for one image of (c, h, w).
    pub fn macs(&self, chw: (usize, usize, usize)) -> u64 {
        match self {
            TeacherOp::Conv(conv) => conv.macs(chw.1, chw.2),
            TeacherOp::Relu | TeacherOp::Relu6 | TeacherOp::MaxPool(_) => 0,
            TeacherOp::Residual { body, shortcut } => seq_macs(body, chw) + seq_macs(shortcut, chw),
        }
    }

    /// Runs this op alone (no fusion with the op after it).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Act::None)
    }

    fn forward_act(&self, x: &Tensor, act: Act) -> Result<Tensor> {
        match self {
            TeacherOp::Conv(conv) => conv.forward_act(x, act),
            TeacherOp::Relu => act.apply(&x.relu()?),
            TeacherOp::Relu6 => act.apply(&x.clamp(0f32, 6f32)?),
            TeacherOp::MaxPool(p) => act.apply(&p.forward(x)?),
            TeacherOp::Residual { body, shortcut } => residual_forward(body, shortcut, x, act),
        }
    }

    /// Calls `f` on every convolution, in order, branches included.
    pub fn for_each_conv<'a>(&'a self, f: &mut impl FnMut(&'a Conv)) {
        match self {
            TeacherOp::Conv(c) => f(c),
            TeacherOp::Residual { body, shortcut } => body
                .iter()
                .chain(shortcut)
                .for_each(|op| op.for_each_conv(f)),
            _ => {}
        }
    }
}

/// Runs ops in order. A ReLU / ReLU6 right after a conv or a residual sum is fused into it
/// (same result, one pass less).
pub(crate) fn run_seq(ops: &[TeacherOp], x: &Tensor) -> Result<Tensor> {
    let mut y = x.clone();
    let mut i = 0;
    while i < ops.len() {
        let op = &ops[i];
        let fusable = matches!(op, TeacherOp::Conv(_) | TeacherOp::Residual { .. });
        let act = if fusable {
            Act::of(ops.get(i + 1))
        } else {
            Act::None
        };
        y = op.forward_act(&y, act)?;
        i += if act == Act::None { 1 } else { 2 };
    }
    Ok(y)
}

/// Output shape of ops in order.
pub fn seq_out_shape(ops: &[TeacherOp], chw: (usize, usize, usize)) -> (usize, usize, usize) {
    ops.iter().fold(chw, |s, op| op.out_shape(s))
}

/// Multiply-accumulates of ops in order.
pub fn seq_macs(ops: &[TeacherOp], chw: (usize, usize, usize)) -> u64 {
    let mut s = chw;
    let mut total = 0;
    for op in ops {
        total += op.macs(s);
        s = op.out_shape(s);
    }
    total
}

/// Depthwise convolution with bias on the CPU (candle runs grouped convs one group at a time,
/// which is slow for hundreds of single-channel groups). Inputs: x (N, C, H, W) contiguous,
/// weight (C, 1, k, k), bias (C).
struct DepthwiseConv {
    kernel: usize,
    stride: usize,
    /// [top, left, bottom, right].
    pads: [usize; 4],
    act: Act,
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("depthwise conv: {what} is not contiguous"),
    }
}

/// One past the last output position `o` whose input `o·stride + tap − pad_before` lies
/// inside the image, given `len_plus_pad` = image length + pad before.
fn valid_end(len_plus_pad: usize, tap: usize, stride: usize, out_len: usize) -> usize {
    if len_plus_pad > tap {
        ((len_plus_pad - tap - 1) / stride + 1).min(out_len)
    } else {
        0
    }
}

impl CustomOp3 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (cw, one, k, _) = l2.shape().dims4()?;
        if cw != c || one != 1 || k != self.kernel || l3.shape().elem_count() != c {
            candle_core::bail!(
                "depthwise conv: weight {:?} does not fit input {:?}",
                l2.shape(),
                l1.shape()
            );
        }
        let x = contiguous_f32(s1, l1, "input")?;
        let wt = contiguous_f32(s2, l2, "weight")?;
        let bias = contiguous_f32(s3, l3, "bias")?;
        let [pt, pl, pb, pr] = self.pads;
        let s = self.stride;
        let ho = (h + pt + pb - k) / s + 1;
        let wo = (w + pl + pr - k) / s + 1;
        let mut out = vec![0f32; n * c * ho * wo];
        out.par_chunks_mut(ho * wo)
            .enumerate()
            .for_each(|(plane, dst)| {
                let ch = plane % c;
                let src = &x[plane * h * w..(plane + 1) * h * w];
                let kw = &wt[ch * k * k..(ch + 1) * k * k];
                dst.fill(bias[ch]);
                for ky in 0..k {
                    // Output rows whose input row oy·s + ky − pt lies inside the image.
                    let oy0 = pt.saturating_sub(ky).div_ceil(s);
                    let oy1 = valid_end(h + pt, ky, s, ho);
                    for kx in 0..k {
                        let wv = kw[ky * k + kx];
                        let ox0 = pl.saturating_sub(kx).div_ceil(s);
                        let ox1 = valid_end(w + pl, kx, s, wo);
                        if ox0 >= ox1 {
                            continue;
                        }
                        for oy in oy0..oy1 {
                            let iy = oy * s + ky - pt;
                            let row = &src[iy * w..(iy + 1) * w];
                            let drow = &mut dst[oy * wo + ox0..oy * wo + ox1];
                            let ix0 = ox0 * s + kx - pl;
                            if s == 1 {
                                for (d, v) in drow.iter_mut().zip(&row[ix0..]) {
                                    *d += wv * v;
                                }
                            } else {
                                for (d, v) in drow.iter_mut().zip(row[ix0..].iter().step_by(s)) {
                                    *d += wv * v;
                                }
                            }
                        }
                    }
                }
                if self.act != Act::None {
                    for v in dst.iter_mut() {
                        *v = self.act.f(*v);
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, ho, wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ramp(shape: &[usize], scale: f32) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    #[test]
    fn tf_same_pads() {
        assert_eq!(same_pads(256, 3, 2), (0, 1));
        assert_eq!(same_pads(64, 5, 2), (1, 2));
        assert_eq!(same_pads(63, 5, 2), (2, 2));
        assert_eq!(same_pads(32, 5, 1), (2, 2));
        assert_eq!(same_pads(32, 1, 1), (0, 0));
    }

    #[test]
    fn depthwise_matches_grouped_conv() {
        for (k, s, h) in [
            (3, 1, 9),
            (3, 2, 10),
            (5, 2, 12),
            (5, 1, 7),
            (3, 2, 9),
            (5, 1, 2),
            (5, 2, 1),
            (3, 1, 1),
        ] {
            let c = 4;
            let x = ramp(&[2, c, h, h], 1.0);
            let w = ramp(&[c, 1, k, k], 0.3);
            let b = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0], &Device::Cpu).unwrap();
            let conv = Conv::new("dw".into(), w.clone(), b.clone(), s, Padding::TfSame, c).unwrap();
            let got = conv.forward(&x).unwrap();
            let [t, l, bo, r] = conv.pads(h, h);
            let want = x
                .pad_with_zeros(2, t, bo)
                .unwrap()
                .pad_with_zeros(3, l, r)
                .unwrap()
                .conv2d(&w, 0, s, 1, c)
                .unwrap()
                .broadcast_add(&b.reshape((1, c, 1, 1)).unwrap())
                .unwrap();
            assert_eq!(got.dims(), want.dims(), "k {k} s {s} h {h}");
            assert!(max_abs_diff(&got, &want) < 1e-5, "k {k} s {s} h {h}");
        }
    }

    #[test]
    fn pointwise_matmul_matches_conv() {
        let x = ramp(&[2, 6, 5, 7], 1.0);
        let w = ramp(&[4, 6, 1, 1], 0.5);
        let b = Tensor::new(&[0.5f32, 0.0, -1.0, 2.0], &Device::Cpu).unwrap();
        let conv = Conv::new(
            "pw".into(),
            w.clone(),
            b.clone(),
            1,
            Padding::Symmetric(0),
            1,
        )
        .unwrap();
        assert!(conv.weight2.is_some());
        let got = conv.forward(&x).unwrap();
        let want = x
            .conv2d(&w, 0, 1, 1, 1)
            .unwrap()
            .broadcast_add(&b.reshape((1, 4, 1, 1)).unwrap())
            .unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5);
    }

    #[test]
    fn fused_sequence_matches_op_by_op() {
        let conv = |name: &str, cin, cout, k, s, g| {
            let w = ramp(&[cout, cin / g, k, k], 0.4);
            let b = ramp(&[cout], 0.5);
            TeacherOp::Conv(Conv::new(name.into(), w, b, s, Padding::TfSame, g).unwrap())
        };
        let ops = vec![
            conv("a", 3, 4, 3, 2, 1),
            TeacherOp::Relu6,
            TeacherOp::Residual {
                body: vec![
                    conv("b", 4, 4, 3, 1, 4),
                    TeacherOp::Relu,
                    conv("c", 4, 4, 1, 1, 1),
                ],
                shortcut: vec![],
            },
            TeacherOp::Relu,
            TeacherOp::Residual {
                body: vec![conv("d", 4, 6, 3, 2, 1)],
                shortcut: vec![conv("e", 4, 6, 1, 2, 1)],
            },
            TeacherOp::Relu6,
        ];
        let x = ramp(&[2, 3, 12, 12], 2.0);
        let fused = run_seq(&ops, &x).unwrap();
        let mut y = x.clone();
        for op in &ops {
            y = match op {
                TeacherOp::Residual { body, shortcut } => {
                    let mut a = y.clone();
                    for o in body {
                        a = o.forward(&a).unwrap();
                    }
                    let mut s = y.clone();
                    for o in shortcut {
                        s = o.forward(&s).unwrap();
                    }
                    (a + s).unwrap()
                }
                other => other.forward(&y).unwrap(),
            };
        }
        assert_eq!(fused.dims(), &[2, 6, 3, 3]);
        assert!(max_abs_diff(&fused, &y) < 1e-5);
        // The input is untouched by the in-place steps.
        assert!(max_abs_diff(&x, &ramp(&[2, 3, 12, 12], 2.0)) == 0.0);
    }

    #[test]
    fn max_pool_ignores_padding() {
        // All-negative input: a zero pad would win the max, a correct pool never does.
        let x = (ramp(&[1, 2, 6, 6], 1.0) - 5.0).unwrap();
        let y = MaxPool::STEM.forward(&x).unwrap();
        assert_eq!(y.dims(), &[1, 2, 3, 3]);
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let ys: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        for c in 0..2 {
            for oy in 0..3usize {
                for ox in 0..3usize {
                    let mut m = f32::NEG_INFINITY;
                    for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(6) {
                        for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(6) {
                            m = m.max(xs[c * 36 + iy * 6 + ix]);
                        }
                    }
                    assert_eq!(ys[c * 9 + oy * 3 + ox], m);
                }
            }
        }
    }
}
