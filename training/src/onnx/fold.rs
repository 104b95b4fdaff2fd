//! Folding inference-mode BatchNorm into the convolution that precedes it.
//!
//! In eval mode BatchNorm is the per-channel affine map
//! `y = (x − mean)·γ / √(var + ε) + β = x·scale + shift`. When `x` is the output of a
//! convolution (no activation in between), the map moves into the convolution's weights and
//! bias: `W'[o] = W[o]·scale[o]`, `b'[o] = (b[o] − mean[o])·scale[o] + β[o]`. Arithmetic is
//! done in f64 and rounded once.

use super::{OnnxError, Result};

/// Parameters of one BatchNorm layer in inference form (running statistics).
#[derive(Debug, Clone, PartialEq)]
pub struct BnParams {
    /// Scale γ (`weight`).
    pub gamma: Vec<f32>,
    /// Shift β (`bias`).
    pub beta: Vec<f32>,
    /// Running mean.
    pub mean: Vec<f32>,
    /// Running variance.
    pub var: Vec<f32>,
    /// ε added to the variance.
    pub eps: f32,
}

impl BnParams {
    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.gamma.len()
    }

    fn check(&self, what: &str) -> Result<()> {
        let c = self.gamma.len();
        if self.beta.len() != c || self.mean.len() != c || self.var.len() != c {
            return Err(shape_err(
                what,
                format!("{c} values in every BatchNorm parameter"),
                format!(
                    "beta {}, mean {}, var {}",
                    self.beta.len(),
                    self.mean.len(),
                    self.var.len()
                ),
            ));
        }
        Ok(())
    }
}

fn shape_err(what: &str, expected: impl ToString, got: impl ToString) -> OnnxError {
    OnnxError::Shape {
        graph: "batchnorm fold".to_string(),
        what: what.to_string(),
        expected: expected.to_string(),
        got: got.to_string(),
    }
}

fn scale_shift_f64(bn: &BnParams) -> Vec<(f64, f64)> {
    (0..bn.channels())
        .map(|c| {
            let s = f64::from(bn.gamma[c]) / (f64::from(bn.var[c]) + f64::from(bn.eps)).sqrt();
            (s, f64::from(bn.beta[c]) - f64::from(bn.mean[c]) * s)
        })
        .collect()
}

/// The per-channel `(scale, shift)` of an inference-mode BatchNorm.
pub fn bn_scale_shift(bn: &BnParams) -> Result<(Vec<f32>, Vec<f32>)> {
    bn.check("bn_scale_shift")?;
    let ss = scale_shift_f64(bn);
    Ok((
        ss.iter().map(|&(s, _)| s as f32).collect(),
        ss.iter().map(|&(_, b)| b as f32).collect(),
    ))
}

fn folded_bias(bias: Option<&[f32]>, bn: &BnParams, ss: &[(f64, f64)]) -> Vec<f32> {
    (0..bn.channels())
        .map(|o| {
            let b = bias.map_or(0.0, |b| f64::from(b[o]));
            (b * ss[o].0 + ss[o].1) as f32
        })
        .collect()
}

/// Folds `bn` into a convolution with weight `[out, in / group, kh, kw]` and optional bias;
/// returns the new weight and bias.
pub fn fold_bn_into_conv(
    weight: &[f32],
    wdims: [usize; 4],
    bias: Option<&[f32]>,
    bn: &BnParams,
) -> Result<(Vec<f32>, Vec<f32>)> {
    bn.check("fold_bn_into_conv")?;
    let [o, i, kh, kw] = wdims;
    if weight.len() != o * i * kh * kw {
        return Err(shape_err(
            &format!("conv weight {wdims:?}"),
            o * i * kh * kw,
            weight.len(),
        ));
    }
    if bn.channels() != o || bias.is_some_and(|b| b.len() != o) {
        return Err(shape_err(
            "conv output channels vs BatchNorm",
            o,
            format!("bn {}, bias {:?}", bn.channels(), bias.map(<[f32]>::len)),
        ));
    }
    let ss = scale_shift_f64(bn);
    let per = i * kh * kw;
    let w = weight
        .iter()
        .enumerate()
        .map(|(k, &x)| (f64::from(x) * ss[k / per].0) as f32)
        .collect();
    Ok((w, folded_bias(bias, bn, &ss)))
}

/// Folds `bn` into a transposed convolution with weight `[in, out / group, kh, kw]` and
/// optional bias; returns the new weight and bias.
pub fn fold_bn_into_conv_transpose(
    weight: &[f32],
    wdims: [usize; 4],
    group: usize,
    bias: Option<&[f32]>,
    bn: &BnParams,
) -> Result<(Vec<f32>, Vec<f32>)> {
    bn.check("fold_bn_into_conv_transpose")?;
    let [ci, og, kh, kw] = wdims;
    if weight.len() != ci * og * kh * kw {
        return Err(shape_err(
            &format!("conv_transpose weight {wdims:?}"),
            ci * og * kh * kw,
            weight.len(),
        ));
    }
    if group == 0 || ci % group != 0 {
        return Err(shape_err(
            "conv_transpose groups",
            format!("a divisor of {ci} input channels"),
            group,
        ));
    }
    let o = og * group;
    if bn.channels() != o || bias.is_some_and(|b| b.len() != o) {
        return Err(shape_err(
            "conv_transpose output channels vs BatchNorm",
            o,
            format!("bn {}, bias {:?}", bn.channels(), bias.map(<[f32]>::len)),
        ));
    }
    let ss = scale_shift_f64(bn);
    let in_per_group = ci / group;
    let kk = kh * kw;
    let w = weight
        .iter()
        .enumerate()
        .map(|(k, &x)| {
            let c_in = k / (og * kk);
            let j = (k / kk) % og;
            let out = (c_in / in_per_group) * og + j;
            (f64::from(x) * ss[out].0) as f32
        })
        .collect();
    Ok((w, folded_bias(bias, bn, &ss)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bn2() -> BnParams {
        BnParams {
            gamma: vec![2.0, 0.5],
            beta: vec![1.0, -1.0],
            mean: vec![0.5, 2.0],
            var: vec![3.0, 0.25],
            eps: 1.0,
        }
    }

    #[test]
    fn conv_fold_scales_each_output_channel() {
        // 2 outputs, 1 input, 1×2 kernel.
        let w = [1.0, 2.0, 3.0, 4.0];
        let (fw, fb) = fold_bn_into_conv(&w, [2, 1, 1, 2], Some(&[1.0, 0.0]), &bn2()).unwrap();
        // channel 0: scale 2/√4 = 1, shift 1 − 0.5 = 0.5; channel 1: scale 0.5/√1.25.
        let s1 = 0.5 / 1.25f32.sqrt();
        assert_eq!(&fw[..2], &[1.0, 2.0]);
        assert!((fw[2] - 3.0 * s1).abs() < 1e-6 && (fw[3] - 4.0 * s1).abs() < 1e-6);
        assert!((fb[0] - 1.5).abs() < 1e-6);
        assert!((fb[1] - (-1.0 - 2.0 * s1)).abs() < 1e-6);
    }

    #[test]
    fn conv_transpose_fold_uses_second_axis() {
        // 1 input, 2 outputs, 1×1 kernel.
        let (fw, _) =
            fold_bn_into_conv_transpose(&[1.0, 1.0], [1, 2, 1, 1], 1, None, &bn2()).unwrap();
        let (s, _) = bn_scale_shift(&bn2()).unwrap();
        assert!((fw[0] - s[0]).abs() < 1e-7 && (fw[1] - s[1]).abs() < 1e-7);
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        assert!(fold_bn_into_conv(&[1.0; 3], [2, 1, 1, 2], None, &bn2()).is_err());
        assert!(fold_bn_into_conv(&[1.0; 6], [3, 1, 1, 2], None, &bn2()).is_err());
        let mut bad = bn2();
        bad.var.pop();
        assert!(bn_scale_shift(&bad).is_err());
    }
}
