//! Bottleneck of the student (SPEC.md §3): fusion of the four teacher features, embedding,
//! SSPCAB and the 3×3 attention block.
//!
//! With teacher channels `[C0, C1, C2, C3]` at resolutions 1, 1, ½, ¼ (relative to T0):
//!
//! ```text
//! fusion     b0: T0 → C1(C0→C2, s2) → C1(C2→C3, s2) ┐
//!            b1: T1 → C1(C1→C2, s2) → C1(C2→C3, s2) ├ summed → F: C3 at ¼
//!            b2: T2 → C1(C2→C3, s2)                 │
//!            b3: T3 → C1(C3→C3, s1)                 ┘
//! embedding  C1(C3→C3) → C1(C3→C3) → C1(C3→2·C3, s2) → SSPCAB → Attention2 → E: 2·C3 at ⅛
//! ```
//! For ResNet34 (`[64, 64, 128, 256]`) this is 256×16×16 → 512×8×8 at a 256×256 input.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, Linear, VarBuilder};

use crate::fastops;
use crate::student::{conv2d, conv_forward, linear, ConvReluBn};

/// Zero padding of SSPCAB (sub-kernel 1 + dilation 1).
pub const SSPCAB_PAD: usize = 2;
/// Squeeze-excitation reduction of SSPCAB.
pub const SSPCAB_REDUCTION: usize = 8;

/// Fusion, embedding, SSPCAB and Attention2.
#[derive(Debug, Clone)]
pub struct Bottleneck {
    /// Branch k reads T_k; the branch outputs (C3 channels at T3's resolution) are summed.
    pub(crate) fusion: [Vec<ConvReluBn>; 4],
    /// Three C1 units; the last has stride 2 and outputs 2·C3.
    pub(crate) embedding: [ConvReluBn; 3],
    pub(crate) sspcab: Sspcab,
    pub(crate) attention: Attention2,
}

impl Bottleneck {
    /// The bottleneck for teacher channels `[C0, C1, C2, C3]` (keys `fusion.b{k}.{i}.*`,
    /// `embedding.{i}.*`, `sspcab.*`, `attention.*`).
    pub fn new(vb: VarBuilder, channels: [usize; 4]) -> Result<Self> {
        let [c0, c1, c2, c3] = channels;
        let f = vb.pp("fusion");
        let two_step = |name: &str, cin: usize| -> Result<Vec<ConvReluBn>> {
            let b = f.pp(name);
            Ok(vec![
                ConvReluBn::c1(b.pp("0"), cin, c2, 2)?,
                ConvReluBn::c1(b.pp("1"), c2, c3, 2)?,
            ])
        };
        let fusion = [
            two_step("b0", c0)?,
            two_step("b1", c1)?,
            vec![ConvReluBn::c1(f.pp("b2").pp("0"), c2, c3, 2)?],
            vec![ConvReluBn::c1(f.pp("b3").pp("0"), c3, c3, 1)?],
        ];
        let e = vb.pp("embedding");
        let embedding = [
            ConvReluBn::c1(e.pp("0"), c3, c3, 1)?,
            ConvReluBn::c1(e.pp("1"), c3, c3, 1)?,
            ConvReluBn::c1(e.pp("2"), c3, 2 * c3, 2)?,
        ];
        Ok(Self {
            fusion,
            embedding,
            sspcab: Sspcab::new(vb.pp("sspcab"), 2 * c3)?,
            attention: Attention2::new(vb.pp("attention"), 2 * c3)?,
        })
    }

    /// Fused features F (C3 channels at T3's resolution).
    pub fn fuse(&self, t: &[Tensor], train: bool) -> Result<Tensor> {
        let mut sum: Option<Tensor> = None;
        for (branch, x) in self.fusion.iter().zip(t) {
            let mut y = x.clone();
            for unit in branch {
                y = unit.forward_t(&y, train)?;
            }
            sum = Some(match sum {
                None => y,
                Some(s) => (s + y)?,
            });
        }
        sum.ok_or_else(|| candle_core::Error::Msg("fusion without branches".into()))
    }

    /// The three embedding C1 units on the fused features.
    pub fn embed(&self, fused: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = fused.clone();
        for unit in &self.embedding {
            x = unit.forward_t(&x, train)?;
        }
        Ok(x)
    }

    /// Embedding E (2·C3 channels at half T3's resolution) from the teacher features.
    pub fn forward_t(&self, t: &[Tensor], train: bool) -> Result<Tensor> {
        let x = self.embed(&self.fuse(t, train)?, train)?;
        let x = self.sspcab.forward(&x)?;
        self.attention.forward(&x)
    }
}

/// Self-supervised predictive convolutional attention block with a masked centre.
///
/// `y(i,j) = ReLU(Σ_k conv_k(x_pad)[i + dy_k, j + dx_k])` over the input zero-padded by
/// [`SSPCAB_PAD`] on every side, with the four views' offsets into the padded map given by
/// [`Sspcab::OFFSETS`] (row, column): conv 0 sees x(i−2, j−2), conv 1 x(i+2, j−2), conv 2
/// x(i−2, j+2), conv 3 x(i+2, j+2). The pixel x(i, j) itself is never read. Then
/// squeeze-excitation: `out = y · sigmoid(fc2(ReLU(fc1(mean_hw(y)))))`.
#[derive(Debug, Clone)]
pub struct Sspcab {
    /// Four 1×1 convolutions with bias, C → C.
    pub(crate) convs: [Conv2d; 4],
    /// C → C / 8, with bias.
    pub(crate) fc1: Linear,
    /// C / 8 → C, with bias.
    pub(crate) fc2: Linear,
}

impl Sspcab {
    /// (row, column) offset into the padded map of the view each convolution reads.
    pub const OFFSETS: [(usize, usize); 4] = [(0, 0), (4, 0), (0, 4), (4, 4)];

    /// SSPCAB over `c` channels (keys `conv{0..3}.*`, `se.fc1.*`, `se.fc2.*`).
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        let hidden = (c / SSPCAB_REDUCTION).max(1);
        let conv = |i: usize| conv2d(vb.pp(format!("conv{i}")), c, c, 1, 1, 0, true);
        Ok(Self {
            convs: [conv(0)?, conv(1)?, conv(2)?, conv(3)?],
            fc1: linear(vb.pp("se.fc1"), c, hidden)?,
            fc2: linear(vb.pp("se.fc2"), hidden, c)?,
        })
    }
}

impl Sspcab {
    /// The masked convolution before squeeze-excitation:
    /// `ReLU(Σ_k conv_k(shifted view k))`; y(i, j) never depends on x(i, j).
    pub fn masked_conv(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let p = SSPCAB_PAD;
        let xp = x.pad_with_zeros(2, p, p)?.pad_with_zeros(3, p, p)?;
        let mut sum: Option<Tensor> = None;
        for (conv, &(dy, dx)) in self.convs.iter().zip(Self::OFFSETS.iter()) {
            let view = xp.narrow(2, dy, h)?.narrow(3, dx, w)?;
            let y = conv_forward(conv, &view)?;
            sum = Some(match sum {
                None => y,
                Some(s) => (s + y)?,
            });
        }
        fastops::relu(&sum.ok_or_else(|| candle_core::Error::Msg("SSPCAB without convs".into()))?)
    }
}

impl Module for Sspcab {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, _, _) = x.dims4()?;
        let y = self.masked_conv(x)?;
        let s = y.mean((2, 3))?;
        let g = self.fc1.forward(&s)?.relu()?;
        let g = candle_nn::ops::sigmoid(&self.fc2.forward(&g)?)?;
        y.broadcast_mul(&g.reshape((n, c, 1, 1))?)
    }
}

/// The bottleneck's attention block: `a = ReLU(conv1(x))`, `z = conv2(a)` (both 3×3, pad 1,
/// with bias), `out = softmax_width(z) · a` (softmax along the last axis, per (n, c, row)).
#[derive(Debug, Clone)]
pub struct Attention2 {
    pub(crate) conv1: Conv2d,
    pub(crate) conv2: Conv2d,
}

impl Attention2 {
    /// Attention2 over `c` channels (keys `conv1.*`, `conv2.*`).
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            conv1: conv2d(vb.pp("conv1"), c, c, 3, 1, 1, true)?,
            conv2: conv2d(vb.pp("conv2"), c, c, 3, 1, 1, true)?,
        })
    }
}

impl Module for Attention2 {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = fastops::relu(&conv_forward(&self.conv1, x)?)?;
        let z = conv_forward(&self.conv2, &a)?;
        fastops::attend(&z, &a)
    }
}
