//! Size and compute of the model per part: parameters and multiply-accumulates (MACs) per
//! input patch (SPEC.md §5.2).
//!
//! Parameters are counted from the variables that exist (the student's `VarMap`, the
//! teacher's built layers), so a wrong layer shows up. MACs are counted analytically from the
//! layer shapes: convolution `Cout·Hout·Wout·Cin/groups·k·k`, transposed convolution
//! `Cin·Hin·Win·Cout·k·k`, linear `in·out`; BatchNorm, activations, pooling, softmax and
//! additions count 0.

use std::fmt;

use candle_core::Device;
use candle_nn::{Conv2d, ConvTranspose2d, Linear};
use fabric_inspect::meta::{Backbone, Variant};

use crate::bottleneck::Bottleneck;
use crate::model::{trainable_param_count, ModelError, Rrd};
use crate::residual::{ResidualPath, ResidualPaths};
use crate::student::{Decoder, FirstConv, Shortcut, Student};
use crate::weights;

/// Side of the patch the summary is given for.
pub const PATCH: usize = 256;

/// Seed of the random teacher used when no weight file is present.
const SUMMARY_SEED: u64 = 0;

/// Parameters and MACs of one part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Part {
    /// Parameters (BatchNorm running statistics not counted).
    pub params: usize,
    /// Multiply-accumulates per patch.
    pub macs: u64,
}

/// Parameters and MACs per part, for one patch of `input` pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The teacher backbone.
    pub backbone: Backbone,
    /// Residual or domain-generalised.
    pub variant: Variant,
    /// The teacher layers feeding T0..T3.
    pub taps: Vec<String>,
    /// Channels of T0..T3.
    pub channels: [usize; 4],
    /// SHA-256 of the teacher's weight file, or `random` (seeded random teacher).
    pub teacher_weights: String,
    /// Input (height, width).
    pub input: (usize, usize),
    /// Frozen teacher (not trainable).
    pub teacher: Part,
    /// Fusion + embedding + SSPCAB + Attention2.
    pub bottleneck: Part,
    /// Residual paths R01, R12, R23 (zero in the dg variant).
    pub residual: Part,
    /// The 8-block decoder.
    pub decoder: Part,
}

impl Summary {
    /// The summary of a `backbone` model at 256×256 (`taps` empty: default taps). Uses the
    /// backbone's pretrained weight file when present, else a seeded random teacher.
    pub fn compute(
        backbone: Backbone,
        variant: Variant,
        taps: &[String],
    ) -> Result<Summary, ModelError> {
        let weights = weights::default_weights(backbone, SUMMARY_SEED);
        let rrd = Rrd::build(backbone, taps, weights, variant, SUMMARY_SEED, &Device::Cpu)?;
        Summary::of_model(&rrd, PATCH, PATCH)
    }

    /// The summary of a built model for an `h`×`w` input.
    pub fn of_model(rrd: &Rrd, h: usize, w: usize) -> Result<Summary, ModelError> {
        let shapes = rrd.teacher.feature_shapes(h, w);
        let hw: [(usize, usize); 4] = shapes.map(|(_, h, w)| (h, w));
        let student = &rrd.student;
        let residual_macs = student
            .residual
            .as_ref()
            .map_or(0, |r| residual_macs(r, hw));
        Ok(Summary {
            backbone: rrd.teacher.backbone(),
            variant: student.variant(),
            taps: rrd.teacher.tap_names(),
            channels: student.channels(),
            teacher_weights: rrd.teacher.weights_id(),
            input: (h, w),
            teacher: Part {
                params: rrd.teacher.param_count(),
                macs: rrd.teacher.macs(h, w),
            },
            bottleneck: Part {
                params: trainable_param_count(&rrd.varmap, "bottleneck."),
                macs: bottleneck_macs(&student.bottleneck, hw),
            },
            residual: Part {
                params: trainable_param_count(&rrd.varmap, "residual."),
                macs: residual_macs,
            },
            decoder: Part {
                params: trainable_param_count(&rrd.varmap, "decoder."),
                macs: decoder_macs(&student.decoder, half(hw[3])),
            },
        })
    }

    /// Trainable parameters (bottleneck + residual paths + decoder).
    pub fn trainable_params(&self) -> usize {
        self.bottleneck.params + self.residual.params + self.decoder.params
    }

    /// MACs of the student alone.
    pub fn student_macs(&self) -> u64 {
        self.bottleneck.macs + self.residual.macs + self.decoder.macs
    }

    /// MACs of the whole forward pass (teacher + student).
    pub fn total_macs(&self) -> u64 {
        self.teacher.macs + self.student_macs()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let weights = if self.teacher_weights == "random" {
            "seeded random (no pretrained file found)".to_owned()
        } else {
            format!("pretrained, sha256 {}", self.teacher_weights)
        };
        writeln!(
            f,
            "model: {} teacher, {} variant, {}×{} patch",
            self.backbone, self.variant, self.input.0, self.input.1
        )?;
        writeln!(
            f,
            "teacher taps: {} (channels {:?})",
            self.taps.join(", "),
            self.channels
        )?;
        writeln!(f, "teacher weights: {weights}")?;
        writeln!(f)?;
        writeln!(f, "{:<34} {:>12} {:>10}", "part", "params (M)", "GMAC")?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, p: Part| {
            writeln!(
                f,
                "{:<34} {:>12.3} {:>10.3}",
                name,
                p.params as f64 / 1e6,
                p.macs as f64 / 1e9
            )
        };
        row(f, "teacher (frozen)", self.teacher)?;
        row(f, "bottleneck (fusion..Attention2)", self.bottleneck)?;
        match self.variant {
            Variant::Residual => row(f, "residual paths (R01, R12, R23)", self.residual)?,
            Variant::Dg => writeln!(f, "{:<34} {:>12} {:>10}", "residual paths", "none", "-")?,
        }
        row(f, "decoder (8 blocks)", self.decoder)?;
        writeln!(f, "{}", "-".repeat(58))?;
        let student = Part {
            params: self.trainable_params(),
            macs: self.student_macs(),
        };
        row(f, "student (trainable)", student)?;
        writeln!(
            f,
            "{:<34} {:>12.3} {:>10.3}",
            "whole forward",
            (self.teacher.params + self.trainable_params()) as f64 / 1e6,
            self.total_macs() as f64 / 1e9
        )
    }
}

/// Half a resolution (stride 2, kernel 1 or 2: `floor((n − 1) / 2) + 1`).
fn half((h, w): (usize, usize)) -> (usize, usize) {
    (h.div_ceil(2), w.div_ceil(2))
}

/// MACs and output size of a convolution on an `h`×`w` input.
fn conv_macs(conv: &Conv2d, (h, w): (usize, usize)) -> (u64, (usize, usize)) {
    let dims = conv.weight().dims();
    let (cout, cin_g, kh, kw) = (dims[0], dims[1], dims[2], dims[3]);
    let c = conv.config();
    let out = |n: usize, k: usize| (n + 2 * c.padding - c.dilation * (k - 1) - 1) / c.stride + 1;
    let (ho, wo) = (out(h, kh), out(w, kw));
    ((cout * ho * wo * cin_g * kh * kw) as u64, (ho, wo))
}

/// MACs and output size of a transposed convolution on an `h`×`w` input.
fn conv_t_macs(conv: &ConvTranspose2d, (h, w): (usize, usize)) -> (u64, (usize, usize)) {
    let dims = conv.weight().dims();
    let (cin, cout, kh, kw) = (dims[0], dims[1], dims[2], dims[3]);
    let c = conv.config();
    let out = |n: usize, k: usize| {
        (n - 1) * c.stride + c.dilation * (k - 1) + c.output_padding + 1 - 2 * c.padding
    };
    (
        (cin * h * w * cout * kh * kw) as u64,
        (out(h, kh), out(w, kw)),
    )
}

fn linear_macs(l: &Linear) -> u64 {
    l.weight().elem_count() as u64
}

fn bottleneck_macs(b: &Bottleneck, hw: [(usize, usize); 4]) -> u64 {
    let mut total = 0;
    let mut fused = hw[3];
    for (branch, &size) in b.fusion.iter().zip(&hw) {
        let mut s = size;
        for unit in branch {
            let (m, o) = conv_macs(&unit.conv, s);
            total += m;
            s = o;
        }
        fused = s;
    }
    let mut s = fused;
    for unit in &b.embedding {
        let (m, o) = conv_macs(&unit.conv, s);
        total += m;
        s = o;
    }
    for conv in &b.sspcab.convs {
        total += conv_macs(conv, s).0;
    }
    total += linear_macs(&b.sspcab.fc1) + linear_macs(&b.sspcab.fc2);
    total += conv_macs(&b.attention.conv1, s).0 + conv_macs(&b.attention.conv2, s).0;
    total
}

fn path_macs(p: &ResidualPath, size: (usize, usize)) -> u64 {
    let (m, s) = conv_macs(&p.unit.conv, size);
    let s = if p.pool { (s.0 / 2, s.1 / 2) } else { s };
    let a = &p.attention;
    m + conv_macs(&a.conv1, s).0 + conv_macs(&a.conv2, s).0 + conv_macs(&a.conv3, s).0
}

fn residual_macs(r: &ResidualPaths, hw: [(usize, usize); 4]) -> u64 {
    path_macs(&r.r01, hw[0]) + path_macs(&r.r12, hw[1]) + path_macs(&r.r23, hw[2])
}

fn decoder_macs(d: &Decoder, embedding: (usize, usize)) -> u64 {
    let mut total = 0;
    let mut s = embedding;
    for block in d.stages.iter().flat_map(|st| st.blocks.iter()) {
        let (m, o) = match &block.conv1 {
            FirstConv::Up(ct) => conv_t_macs(ct, s),
            FirstConv::Same(c) => conv_macs(c, s),
        };
        total += m + conv_macs(&block.conv2, o).0;
        total += match &block.shortcut {
            None => 0,
            Some(Shortcut::Up { conv, .. }) => conv_t_macs(conv, s).0,
            Some(Shortcut::Project { conv, .. }) => conv_macs(conv, s).0,
        };
        s = o;
    }
    total
}

/// Trainable parameters of a student built alone (for tests without a teacher).
pub fn student_param_counts(varmap: &candle_nn::VarMap) -> [usize; 3] {
    ["bottleneck.", "residual.", "decoder."].map(|p| trainable_param_count(varmap, p))
}

/// MACs of a student alone, `[bottleneck, residual, decoder]`, for teacher features of
/// spatial size `t0` at T0 (T2, T3 at ½ and ¼ of it).
pub fn student_macs(student: &Student, t0: (usize, usize)) -> [u64; 3] {
    let hw = [t0, t0, half(t0), half(half(t0))];
    [
        bottleneck_macs(&student.bottleneck, hw),
        student
            .residual
            .as_ref()
            .map_or(0, |r| residual_macs(r, hw)),
        decoder_macs(&student.decoder, half(hw[3])),
    ]
}
