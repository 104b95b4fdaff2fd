//! Residual paths from teacher to student (SPEC.md §4; absent in the dg variant).
//!
//! Teacher feature *l* goes through a C3 unit (3×3 conv, no bias → ReLU → BatchNorm), a 2×2
//! average pool with stride 2 where the resolution halves, and an [`Attention`] block; the
//! result is added to the output of the decoder stage compared with teacher feature *l + 1*:
//!
//! ```text
//! R01: T0 → C3(C0→C1)            → Attention(C1) → added to decoder stage 2 (S1)
//! R12: T1 → C3(C1→C2) → avgpool2 → Attention(C2) → added to decoder stage 1 (S2)
//! R23: T2 → C3(C2→C3) → avgpool2 → Attention(C3) → added to decoder stage 0 (S3)
//! ```

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2d, VarBuilder};

use crate::fastops;
use crate::student::{conv2d, conv_forward, ConvReluBn};

/// Spatial attention with 1×1 convolutions (with bias):
/// `a = ReLU(conv1(x))`, `b = ReLU(conv2(a))`, `z = conv3(b)`, `out = softmax_width(z) · a`.
#[derive(Debug, Clone)]
pub struct Attention {
    pub(crate) conv1: Conv2d,
    pub(crate) conv2: Conv2d,
    pub(crate) conv3: Conv2d,
}

impl Attention {
    /// Attention over `c` channels (keys `conv1.*`, `conv2.*`, `conv3.*`).
    pub fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            conv1: conv2d(vb.pp("conv1"), c, c, 1, 1, 0, true)?,
            conv2: conv2d(vb.pp("conv2"), c, c, 1, 1, 0, true)?,
            conv3: conv2d(vb.pp("conv3"), c, c, 1, 1, 0, true)?,
        })
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let a = fastops::relu(&conv_forward(&self.conv1, x)?)?;
        let b = fastops::relu(&conv_forward(&self.conv2, &a)?)?;
        let z = conv_forward(&self.conv3, &b)?;
        fastops::attend(&z, &a)
    }
}

/// One residual path: C3 unit, optional 2×2 average pool (stride 2), attention.
#[derive(Debug, Clone)]
pub struct ResidualPath {
    pub(crate) unit: ConvReluBn,
    /// Whether a 2×2 average pool with stride 2 follows the C3 unit.
    pub(crate) pool: bool,
    pub(crate) attention: Attention,
}

impl ResidualPath {
    /// A path `cin → cout` (keys `c3.*`, `attention.*`); `pool` halves the resolution.
    pub fn new(vb: VarBuilder, cin: usize, cout: usize, pool: bool) -> Result<Self> {
        Ok(Self {
            unit: ConvReluBn::c3(vb.pp("c3"), cin, cout)?,
            pool,
            attention: Attention::new(vb.pp("attention"), cout)?,
        })
    }

    /// Applies the path (`train`: BatchNorm batch statistics).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.unit.forward_t(x, train)?;
        let y = if self.pool { y.avg_pool2d(2)? } else { y };
        self.attention.forward(&y)
    }
}

/// The three residual paths R01, R12, R23.
#[derive(Debug, Clone)]
pub struct ResidualPaths {
    pub(crate) r01: ResidualPath,
    pub(crate) r12: ResidualPath,
    pub(crate) r23: ResidualPath,
}

impl ResidualPaths {
    /// The three paths for teacher channels `[C0, C1, C2, C3]` (keys `r01.*`, `r12.*`,
    /// `r23.*`).
    pub fn new(vb: VarBuilder, channels: [usize; 4]) -> Result<Self> {
        let [c0, c1, c2, c3] = channels;
        Ok(Self {
            r01: ResidualPath::new(vb.pp("r01"), c0, c1, false)?,
            r12: ResidualPath::new(vb.pp("r12"), c1, c2, true)?,
            r23: ResidualPath::new(vb.pp("r23"), c2, c3, true)?,
        })
    }

    /// `[R01(T0), R12(T1), R23(T2)]`, to be added to S1, S2 and S3.
    pub fn forward_t(&self, t: &[Tensor], train: bool) -> Result<[Tensor; 3]> {
        Ok([
            self.r01.forward_t(&t[0], train)?,
            self.r12.forward_t(&t[1], train)?,
            self.r23.forward_t(&t[2], train)?,
        ])
    }
}
