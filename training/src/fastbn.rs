//! BatchNorm in train mode as one fused operation with its own backward pass.
//!
//! Written with candle's element-wise operations, a train-mode BatchNorm is a dozen tensor
//! operations, and their backward pass walks the whole activation many times (on one thread,
//! as candle's element-wise kernels run here). The fused version does, per channel `c` over
//! the `N = n·h·w` values `x` of that channel:
//!
//! ```text
//! forward   μ = Σx / N,  σ² = Σ(x − μ)² / N,  s = 1 / √(σ² + ε)
//!           y = (x − μ)·s·γ + β
//! backward  dβ = Σ dy,   dγ = Σ dy·x̂            (x̂ = (x − μ)·s)
//!           dx = γ·s·(dy − dβ / N − x̂·dγ / N)
//! ```
//!
//! that is two reading passes and one writing pass each way, in parallel over channels (the
//! sums) and over `n × c` planes (the element-wise passes). Sums run in `f32` within short
//! blocks and in `f64` across them. The forward pass also hands back the batch mean and
//! (biased) variance, for the running statistics.
//!
//! [`batch_norm_train_applies`] says when the fused path can run: contiguous `f32` NCHW
//! tensors on the CPU, while [`set_fast_batch_norm`] has not turned it off on the calling
//! thread. `crate::student::batch_norm_t` falls back to the composed version otherwise.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::fastconv::slice as f32s;

/// Turns the fused train-mode BatchNorm on or off for layers run from the calling thread (on
/// by default). Off, the student runs the BatchNorm composed of candle operations: the path
/// that tests compare against.
pub fn set_fast_batch_norm(enabled: bool) {
    crate::fastpath::set(crate::fastpath::FastPath::BatchNorm, enabled);
}

/// Whether layers run from the calling thread use the fused train-mode BatchNorm.
pub fn fast_batch_norm_enabled() -> bool {
    crate::fastpath::enabled(crate::fastpath::FastPath::BatchNorm)
}

/// Whether [`batch_norm_train`] runs for these tensors: `x` a contiguous `f32` NCHW tensor on
/// the CPU, `gamma` and `beta` `f32` vectors of its channel count, and the fused path on.
pub fn batch_norm_train_applies(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> bool {
    let Ok((_, c, _, _)) = x.dims4() else {
        return false;
    };
    fast_batch_norm_enabled()
        && x.device().is_cpu()
        && x.dtype() == DType::F32
        && x.is_contiguous()
        && [gamma, beta]
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.dims() == [c])
}

/// Train-mode BatchNorm of an NCHW tensor with the batch statistics (biased variance):
/// `y = (x − μ) / √(σ² + ε) · γ + β` per channel, with gradients for `x`, `gamma` and `beta`.
///
/// Returns `y` and the batch mean and biased variance (`f32` vectors of the channel count,
/// without gradient), for the running statistics. Needs [`batch_norm_train_applies`] and
/// more than one value per channel.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    train_op(x, gamma, beta, eps, false)
}

/// [`batch_norm_train`] followed by a ReLU, `max(y, 0)`, as one op: the ReLU's mask is
/// applied inside the backward pass's two passes (the gradient passes where `y ≥ 0` before
/// the clamp, as candle's ReLU lets it). Same conditions as [`batch_norm_train`].
pub fn batch_norm_relu_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, Tensor, Tensor)> {
    train_op(x, gamma, beta, eps, true)
}

fn train_op(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (n, c, h, w) = x.dims4()?;
    if n * h * w < 2 {
        candle_core::bail!("BatchNorm in train mode needs more than one value per channel")
    }
    let stats = Arc::new(OnceLock::new());
    let op = BnTrain {
        eps,
        relu,
        stats: stats.clone(),
    };
    let y = x.apply_op3(&gamma.contiguous()?, &beta.contiguous()?, op)?;
    let stats: &Stats = stats
        .get()
        .ok_or_else(|| candle_core::Error::Msg("fused BatchNorm: no statistics".into()))?;
    let to_f32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<_>>();
    let mean = Tensor::from_vec(to_f32(&stats.mean), c, x.device())?;
    let var = Tensor::from_vec(to_f32(&stats.var), c, x.device())?;
    Ok((y, mean, var))
}

// ---------------------------------------------------------------------------------------------
// Layout and sums
// ---------------------------------------------------------------------------------------------

/// An NCHW tensor as `n × c` planes of `p = h·w` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Planes {
    n: usize,
    c: usize,
    p: usize,
}

impl Planes {
    fn of(shape: &Shape) -> Result<Self> {
        let (n, c, h, w) = shape.dims4()?;
        Ok(Self { n, c, p: h * w })
    }

    /// Profiler key of a pass over these planes.
    fn key(&self, pass: &str) -> String {
        format!("{pass} {}x{}", self.c, self.p)
    }

    /// Values per channel.
    fn count(&self) -> usize {
        self.n * self.p
    }

    /// The `n` planes of channel `ch` in `data`.
    fn channel<'a>(&self, data: &'a [f32], ch: usize) -> impl Iterator<Item = &'a [f32]> {
        let (c, p) = (self.c, self.p);
        (0..self.n).map(move |k| &data[(k * c + ch) * p..(k * c + ch + 1) * p])
    }

    /// Channels per rayon task, so that a task has some tens of thousands of values.
    fn channels_per_task(&self) -> usize {
        (1 << 15) / self.count().max(1) + 1
    }

    /// Planes per rayon task, likewise.
    fn planes_per_task(&self) -> usize {
        (1 << 15) / self.p.max(1) + 1
    }
}

/// Sums run in `f32` lanes over blocks of this many values, then in `f64`.
const BLOCK: usize = 256;
const LANES: usize = 8;

/// Σ x over a slice: `f32` lanes within a block, `f64` across.
#[inline(always)]
fn block_sum(x: &[f32]) -> f64 {
    block_sum2(x, x, |u, _| (u, 0.0)).0
}

/// `(Σ f(a_i, b_i).0, Σ f(a_i, b_i).1)` over two equally long slices: `f32` lanes within a
/// block, `f64` across.
#[inline(always)]
fn block_sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> (f32, f32)) -> (f64, f64) {
    let (mut t0, mut t1) = (0f64, 0f64);
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let (mut s0, mut s1) = ([0f32; LANES], [0f32; LANES]);
        let (ai, bi) = (ab.chunks_exact(LANES), bb.chunks_exact(LANES));
        let (ar, br) = (ai.remainder(), bi.remainder());
        for (av, bv) in ai.zip(bi) {
            let lanes = s0.iter_mut().zip(s1.iter_mut()).zip(av.iter().zip(bv));
            for ((p0, p1), (&u, &v)) in lanes {
                let (p, q) = f(u, v);
                *p0 += p;
                *p1 += q;
            }
        }
        for (&u, &v) in ar.iter().zip(br) {
            let (p, q) = f(u, v);
            s0[0] += p;
            s1[0] += q;
        }
        t0 += s0.iter().map(|&s| f64::from(s)).sum::<f64>();
        t1 += s1.iter().map(|&s| f64::from(s)).sum::<f64>();
    }
    (t0, t1)
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

/// What the forward pass leaves for the running statistics and the backward pass, per channel.
#[derive(Debug)]
struct Stats {
    /// Batch mean μ.
    mean: Vec<f64>,
    /// Biased batch variance σ².
    var: Vec<f64>,
    /// `1 / √(σ² + ε)`.
    inv_std: Vec<f64>,
    /// γ as it was in the forward pass.
    gamma: Vec<f64>,
    /// Shape of the input.
    planes: Planes,
    /// Whether a ReLU follows; then `out` holds the forward pass's `(m, a, b)` per channel
    /// (`y = (x − m)·a + b` before the clamp), from which the backward pass rebuilds the
    /// ReLU's mask.
    relu: bool,
    out: Vec<(f32, f32, f32)>,
}

impl Stats {
    /// With a ReLU after the BatchNorm: whether the gradient passes at input value `u` of
    /// channel `ch` (its output before the clamp, computed as in the forward pass, is ≥ 0).
    fn mask(&self, ch: usize) -> Option<impl Fn(f32) -> bool> {
        let &(m, a, b) = self.out.get(ch).filter(|_| self.relu)?;
        Some(move |u: f32| (u - m) * a + b >= 0.0)
    }

    /// μ rounded to `f32` (what the passes subtract) and the rest `μ − that`, per channel.
    fn shift(&self, ch: usize) -> (f32, f64) {
        let m = self.mean[ch] as f32;
        (m, self.mean[ch] - f64::from(m))
    }
}

/// The forward op on `(x, γ, β)`; fills `stats`.
struct BnTrain {
    eps: f64,
    relu: bool,
    stats: Arc<OnceLock<Stats>>,
}

impl CustomOp3 for BnTrain {
    fn name(&self) -> &'static str {
        "fused-batch-norm-train"
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
        let op = self.name();
        let pl = Planes::of(l1.shape())?;
        let _t = crate::opprof::timer(|| pl.key("bn forward"));
        let (x, gamma, beta) = (f32s(s1, l1, op)?, f32s(s2, l2, op)?, f32s(s3, l3, op)?);
        if gamma.len() != pl.c || beta.len() != pl.c {
            candle_core::bail!("{op}: γ and β need {} values", pl.c)
        }
        let count = pl.count();
        if count < 2 {
            candle_core::bail!("{op}: needs more than one value per channel")
        }
        let inv_n = 1.0 / count as f64;

        // Mean, then the variance from the values centred on it (both read the channel's
        // planes; the second time they are in cache).
        let moments: Vec<(f64, f64)> = (0..pl.c)
            .into_par_iter()
            .with_min_len(pl.channels_per_task())
            .map(|ch| {
                let mean = pl.channel(x, ch).map(block_sum).sum::<f64>() * inv_n;
                let m = mean as f32;
                let (mut sd, mut sdd) = (0f64, 0f64);
                for v in pl.channel(x, ch) {
                    let (p, q) = block_sum2(v, v, |u, _| (u - m, (u - m) * (u - m)));
                    sd += p;
                    sdd += q;
                }
                // Σ(x − m)² / N − (Σ(x − m) / N)²: exact for any m, and m is within
                // rounding of the mean.
                let d = sd * inv_n;
                (mean, (sdd * inv_n - d * d).max(0.0))
            })
            .collect();
        let (mean, var): (Vec<f64>, Vec<f64>) = moments.into_iter().unzip();
        let inv_std: Vec<f64> = var.iter().map(|&v| 1.0 / (v + self.eps).sqrt()).collect();
        let mut stats = Stats {
            mean,
            var,
            inv_std,
            gamma: gamma.iter().map(|&g| f64::from(g)).collect(),
            planes: pl,
            relu: self.relu,
            out: Vec::new(),
        };

        // y = (x − m)·a + b per channel, with a = γ·s and b = β − (μ − m)·a.
        let coef: Vec<(f32, f32, f32)> = (0..pl.c)
            .map(|ch| {
                let (m, rest) = stats.shift(ch);
                let a = stats.gamma[ch] * stats.inv_std[ch];
                (m, a as f32, (f64::from(beta[ch]) - rest * a) as f32)
            })
            .collect();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(pl.p)
            .zip(x.par_chunks(pl.p))
            .enumerate()
            .with_min_len(pl.planes_per_task())
            .for_each(|(i, (dst, src))| {
                let (m, a, b) = coef[i % pl.c];
                if self.relu {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = ((v - m) * a + b).max(0.0);
                    }
                } else {
                    for (d, &v) in dst.iter_mut().zip(src) {
                        *d = (v - m) * a + b;
                    }
                }
            });
        if self.relu {
            stats.out = coef;
        }
        if self.stats.set(stats).is_err() {
            candle_core::bail!("{op}: op applied twice")
        }
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        let sums = x.apply_op2_no_bwd(
            &grad,
            &BnGradSums {
                stats: self.stats.clone(),
            },
        )?;
        let dx = x.apply_op3_no_bwd(
            &grad,
            &sums,
            &BnGradInput {
                stats: self.stats.clone(),
            },
        )?;
        let dbeta = sums.get(0)?.to_dtype(DType::F32)?;
        let dgamma = sums.get(1)?.to_dtype(DType::F32)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

/// The forward pass's statistics and the `(x, dy)` arguments of a backward op, checked
/// against the forward pass's shape.
fn backward_args<'a>(
    stats: &'a OnceLock<Stats>,
    op: &str,
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
) -> Result<(&'a Stats, &'a [f32], &'a [f32])> {
    let st = stats
        .get()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: forward pass did not run")))?;
    let (x, dy) = (f32s(s1, l1, op)?, f32s(s2, l2, op)?);
    if Planes::of(l1.shape())? != st.planes || l2.shape() != l1.shape() {
        candle_core::bail!("{op}: shapes differ from the forward pass")
    }
    Ok((st, x, dy))
}

/// `(x, dy) → [2, c]` in `f64`: row 0 `Σ dy` (dβ), row 1 `Σ dy·x̂` (dγ), per channel.
struct BnGradSums {
    stats: Arc<OnceLock<Stats>>,
}

impl CustomOp2 for BnGradSums {
    fn name(&self) -> &'static str {
        "fused-batch-norm-grad-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (st, x, dy) = backward_args(&self.stats, op, (s1, l1), (s2, l2))?;
        let pl = st.planes;
        let _t = crate::opprof::timer(|| pl.key("bn grad sums"));
        let sums: Vec<(f64, f64)> = (0..pl.c)
            .into_par_iter()
            .with_min_len(pl.channels_per_task())
            .map(|ch| {
                let (m, rest) = st.shift(ch);
                let (mut sg, mut sgd) = (0f64, 0f64);
                for (xv, gv) in pl.channel(x, ch).zip(pl.channel(dy, ch)) {
                    let (p, q) = match st.mask(ch) {
                        None => block_sum2(gv, xv, |g, u| (g, g * (u - m))),
                        Some(keep) => block_sum2(gv, xv, |g, u| {
                            let g = if keep(u) { g } else { 0.0 };
                            (g, g * (u - m))
                        }),
                    };
                    sg += p;
                    sgd += q;
                }
                // Σ dy·(x − μ) = Σ dy·(x − m) − (μ − m)·Σ dy
                (sg, (sgd - rest * sg) * st.inv_std[ch])
            })
            .collect();
        let (dbeta, dgamma): (Vec<f64>, Vec<f64>) = sums.into_iter().unzip();
        let out = [dbeta, dgamma].concat();
        Ok((CpuStorage::F64(out), Shape::from((2, pl.c))))
    }
}

/// `(x, dy, sums) → dx`, `sums` from [`BnGradSums`].
struct BnGradInput {
    stats: Arc<OnceLock<Stats>>,
}

impl CustomOp3 for BnGradInput {
    fn name(&self) -> &'static str {
        "fused-batch-norm-grad-input"
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
        let op = self.name();
        let (st, x, dy) = backward_args(&self.stats, op, (s1, l1), (s2, l2))?;
        let pl = st.planes;
        let _t = crate::opprof::timer(|| pl.key("bn grad input"));
        let sums = match (s3, l3.contiguous_offsets()) {
            (CpuStorage::F64(v), Some((a, b))) if b - a == 2 * pl.c => &v[a..b],
            _ => candle_core::bail!("{op}: sums must be a contiguous f64 [2, {}]", pl.c),
        };
        let (dbeta, dgamma) = sums.split_at(pl.c);
        let inv_n = 1.0 / pl.count() as f64;

        // dx = a·dy + b·(x − μ) + c with a = γ·s, b = −a·s·dγ/N, c = −a·dβ/N; x − μ is
        // computed as (x − m) − (μ − m).
        let coef: Vec<(f32, f32, f32, f32)> = (0..pl.c)
            .map(|ch| {
                let (m, rest) = st.shift(ch);
                let s = st.inv_std[ch];
                let a = st.gamma[ch] * s;
                let b = -a * s * dgamma[ch] * inv_n;
                let c = -a * dbeta[ch] * inv_n - b * rest;
                (m, a as f32, b as f32, c as f32)
            })
            .collect();
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(pl.p)
            .zip(x.par_chunks(pl.p).zip(dy.par_chunks(pl.p)))
            .enumerate()
            .with_min_len(pl.planes_per_task())
            .for_each(|(i, (dst, (xs, gs)))| {
                let (m, a, b, c) = coef[i % pl.c];
                match st.mask(i % pl.c) {
                    None => {
                        for ((d, &u), &g) in dst.iter_mut().zip(xs).zip(gs) {
                            *d = a * g + b * (u - m) + c;
                        }
                    }
                    Some(keep) => {
                        for ((d, &u), &g) in dst.iter_mut().zip(xs).zip(gs) {
                            let g = if keep(u) { g } else { 0.0 };
                            *d = a * g + b * (u - m) + c;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::student::{batch_norm, batch_norm_relu_t, batch_norm_t};
    use candle_core::{Device, Var};
    use candle_nn::{BatchNorm, VarBuilder};

    /// Deterministic values of a given mean and spread.
    fn values(shape: &[usize], offset: f32, scale: f32, salt: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                offset + ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let s = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-6)
    }

    /// A student BatchNorm over `c` channels with non-trivial γ, β and running statistics.
    fn layer(c: usize) -> BatchNorm {
        let vm = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let bn = batch_norm(vb, c).unwrap();
        let (g, b) = bn.weight_and_bias().unwrap();
        Var::from_tensor(g)
            .unwrap()
            .set(&values(&[c], 1.0, 1.0, 11))
            .unwrap();
        Var::from_tensor(b)
            .unwrap()
            .set(&values(&[c], 0.0, 1.0, 12))
            .unwrap();
        Var::from_tensor(bn.running_mean())
            .unwrap()
            .set(&values(&[c], 0.0, 0.5, 13))
            .unwrap();
        Var::from_tensor(bn.running_var())
            .unwrap()
            .set(&values(&[c], 1.0, 0.5, 14))
            .unwrap();
        bn
    }

    /// Output, dx, dγ, dβ, running mean and running variance of one train-mode step of
    /// `batch_norm_t` (or `batch_norm_relu_t`) on a fresh layer, with the fused path on or
    /// off (off: candle's operations, and candle's ReLU).
    fn step(x: &Tensor, up: &Tensor, fast: bool, relu: bool) -> [Tensor; 6] {
        let bn = layer(x.dim(1).unwrap());
        let x = Var::from_tensor(x).unwrap();
        set_fast_batch_norm(fast);
        let (gamma, beta) = bn.weight_and_bias().unwrap();
        assert_eq!(
            batch_norm_train_applies(x.as_tensor(), gamma, beta),
            fast,
            "fast path taken"
        );
        crate::fastops::set_fast_elementwise(fast);
        let y = if relu {
            batch_norm_relu_t(&bn, x.as_tensor(), true).unwrap()
        } else {
            batch_norm_t(&bn, x.as_tensor(), true).unwrap()
        };
        crate::fastops::set_fast_elementwise(true);
        set_fast_batch_norm(true);
        let g = (&y * up).unwrap().sum_all().unwrap().backward().unwrap();
        [
            y.clone(),
            g.get(x.as_tensor()).unwrap().clone(),
            g.get(gamma).unwrap().clone(),
            g.get(beta).unwrap().clone(),
            bn.running_mean().copy().unwrap(),
            bn.running_var().copy().unwrap(),
        ]
    }

    fn check(shape: [usize; 4], offset: f32, scale: f32) {
        let x = values(&shape, offset, scale, 1);
        let up = values(&shape, 0.0, 2.0, 2);
        for relu in [false, true] {
            let fast = step(&x, &up, true, relu);
            let slow = step(&x, &up, false, relu);
            let names = ["y", "dx", "dγ", "dβ", "running mean", "running var"];
            let tol = [1e-5, 1e-4, 1e-4, 1e-4, 1e-5, 1e-5];
            for ((name, tol), (f, s)) in names.iter().zip(tol).zip(fast.iter().zip(&slow)) {
                let d = max_rel_diff(f, s);
                assert!(
                    d < tol,
                    "{shape:?} offset {offset} relu {relu}: {name} differs by {d}"
                );
            }
        }
    }

    #[test]
    fn fused_batch_norm_matches_composed_values_gradients_and_running_stats() {
        check([4, 16, 8, 8], 0.0, 2.0);
        check([2, 24, 32, 32], 0.3, 1.0);
        check([3, 5, 7, 9], -1.0, 4.0);
        check([4, 40, 17, 1], 0.0, 1.0);
    }

    #[test]
    fn fused_batch_norm_odd_shapes() {
        check([1, 8, 5, 6], 0.5, 1.0); // one image
        check([4, 7, 1, 1], 0.0, 3.0); // one pixel per image
        check([3, 1, 6, 5], 2.0, 1.0); // one channel
        check([2, 3, 1, 1], 0.0, 1.0); // two values per channel
    }

    #[test]
    fn fused_batch_norm_off_centre_inputs() {
        // A mean far from zero against a small spread: the statistics stay accurate.
        check([2, 8, 16, 16], 50.0, 1.0);
    }

    #[test]
    fn fused_batch_norm_statistics_and_refusals() {
        let x = values(&[3, 4, 5, 6], 1.0, 2.0, 3);
        let g = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let (y, mean, var) = batch_norm_train(&x, &g, &b, 1e-5).unwrap();
        let x3 = x.transpose(0, 1).unwrap().flatten_from(1).unwrap();
        let want_mean = x3.mean(1).unwrap();
        let want_var = x3
            .broadcast_sub(&want_mean.unsqueeze(1).unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .mean(1)
            .unwrap();
        assert!(max_rel_diff(&mean, &want_mean) < 1e-5);
        assert!(max_rel_diff(&var, &want_var) < 1e-5);
        // Normalised output: zero mean, unit variance per channel (up to ε).
        let y3 = y.transpose(0, 1).unwrap().flatten_from(1).unwrap();
        let ym = y3.mean(1).unwrap().abs().unwrap().max_all().unwrap();
        assert!(ym.to_scalar::<f32>().unwrap() < 1e-5);

        let one = values(&[1, 4, 1, 1], 0.0, 1.0, 4);
        assert!(batch_norm_train(&one, &g, &b, 1e-5).is_err());
        assert!(!batch_norm_train_applies(
            &x.transpose(2, 3).unwrap(),
            &g,
            &b
        ));
        assert!(!batch_norm_train_applies(
            &x.to_dtype(DType::F64).unwrap(),
            &g,
            &b
        ));
        assert!(!batch_norm_train_applies(
            &x,
            &g.narrow(0, 0, 3).unwrap(),
            &b
        ));
    }
}
