//! ReLU, the decoder's residual `ReLU(a + b)`, the attention blocks' `softmax(z) · a` and
//! the loss's per-pixel cosine distance as single operations with one-pass backward passes.
//!
//! candle's ReLU backward builds its mask from five tensor operations (zeros, compare,
//! convert, multiply, add) on one thread, and `ReLU(a + b)` adds the sum's own node. Here:
//!
//! ```text
//! relu       y = max(x, 0)          dx = dy · [x ≥ 0]
//! add_relu   y = max(a + b, 0)      da = db = dy · [a + b ≥ 0]
//! ```
//!
//! in parallel over blocks of the tensor,
//!
//! ```text
//! attend     y = σ(z) ⊙ a  (σ: softmax along the last axis)
//!            da = dy ⊙ σ(z),  dz = σ(z) ⊙ (u − Σ_last(u ⊙ σ(z)))  with u = dy ⊙ a
//! ```
//!
//! in parallel over rows (σ(z) is kept from the forward pass for the backward one), and
//!
//! ```text
//! cos_distance  d = 1 − t·s / (|t|·|s|)     (|v| = √max(v·v, ε²), sums over channels)
//!               ds_c = dd · (s_c·t·s / (|t|·|s|³) − t_c / (|t|·|s|))
//! ```
//!
//! per block of pixels of one image, with no gradient for the teacher side `t` (its fast
//! path runs only where `t` is detached). The mask is candle's (`x ≥ 0`, so that the
//! gradient at exactly zero passes as it does there), which keeps the fast path equal to
//! the straightforward one. [`set_fast_elementwise`] turns these off on the calling thread;
//! off the CPU or for other dtypes the composed candle operations run (non-contiguous
//! inputs are copied first).

use std::sync::{Arc, OnceLock};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

use crate::fastconv::{slice as f32s, SyncPtr};

/// Turns the fused element-wise operations on or off for layers run from the calling thread
/// (on by default). Off, candle's composed operations run: the path tests compare against.
pub fn set_fast_elementwise(enabled: bool) {
    crate::fastpath::set(crate::fastpath::FastPath::Elementwise, enabled);
}

/// Whether layers run from the calling thread use the fused element-wise operations.
pub fn fast_elementwise_enabled() -> bool {
    crate::fastpath::enabled(crate::fastpath::FastPath::Elementwise)
}

/// Values per rayon task.
const CHUNK: usize = 1 << 15;

fn applies(ts: &[&Tensor]) -> bool {
    fast_elementwise_enabled()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// `max(x, 0)`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !applies(&[x]) {
        return x.relu();
    }
    x.contiguous()?.apply_op1(Relu)
}

/// `max(a + b, 0)` for two tensors of one shape.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !applies(&[a, b]) || a.dims() != b.dims() {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
}

/// Per-pixel `1 − cos(t, s)` along the channels of two `[N, C, H, W]` tensors →
/// `[N, H, W]`; norms are `√max(‖·‖², eps²)`. The fused op runs where `t` carries no
/// gradient (the frozen teacher's detached features); elsewhere the composed candle
/// operations do.
pub fn cos_distance(t: &Tensor, s: &Tensor, eps: f64) -> Result<Tensor> {
    let (n, _, h, w) = s.dims4()?;
    if !applies(&[t, s]) || t.track_op() || t.dims() != s.dims() {
        let eps2 = eps * eps;
        let dot = (t * s)?.sum(1)?;
        let nt = t.sqr()?.sum(1)?.maximum(eps2)?.sqrt()?;
        let ns = s.sqr()?.sum(1)?.maximum(eps2)?.sqrt()?;
        let cos = dot.div(&(nt * ns)?)?;
        return cos.affine(-1.0, 1.0);
    }
    let op = CosDistance {
        eps2: (eps * eps) as f32,
    };
    t.contiguous()?
        .apply_op2(&s.contiguous()?, op)?
        .reshape((n, h, w))
}

/// `softmax(z) ⊙ a`, the softmax along the last axis (width, in NCHW), for two tensors of
/// one shape.
pub fn attend(z: &Tensor, a: &Tensor) -> Result<Tensor> {
    if !applies(&[z, a]) || z.dims() != a.dims() {
        return crate::student::softmax_width(z)? * a;
    }
    let op = Attend {
        softmax: Arc::new(OnceLock::new()),
    };
    z.contiguous()?.apply_op2(&a.contiguous()?, op)
}

/// `f` applied to every value of one contiguous `f32` tensor, in parallel over blocks.
fn map1(
    op: &str,
    (s, l): (&CpuStorage, &Layout),
    f: impl Fn(f32) -> f32 + Sync,
) -> Result<(CpuStorage, Shape)> {
    let x = f32s(s, l, op)?;
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(d, xs)| {
            for (o, &v) in d.iter_mut().zip(xs) {
                *o = f(v);
            }
        });
    Ok((CpuStorage::F32(y), l.shape().clone()))
}

/// `f` applied to every pair of values of two contiguous `f32` tensors of one size, in
/// parallel over blocks; the result has the first one's shape.
fn map2(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<(CpuStorage, Shape)> {
    let (a, b) = (f32s(s1, l1, op)?, f32s(s2, l2, op)?);
    same_len(op, a, b)?;
    let mut y = vec![0f32; a.len()];
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(d, (xa, xb))| {
            for ((o, &u), &v) in d.iter_mut().zip(xa).zip(xb) {
                *o = f(u, v);
            }
        });
    Ok((CpuStorage::F32(y), l1.shape().clone()))
}

fn same_len(op: &str, a: &[f32], b: &[f32]) -> Result<()> {
    if a.len() != b.len() {
        candle_core::bail!("{op}: arguments of {} and {} values", a.len(), b.len())
    }
    Ok(())
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "fused-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map1(self.name(), (s, l), |v| v.max(0.0))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?))
    }
}

/// `(x, dy) → dy · [x ≥ 0]`.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "fused-relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map2(self.name(), (s1, l1), (s2, l2), |x, g| {
            if x >= 0.0 {
                g
            } else {
                0.0
            }
        })
    }
}

struct AddRelu;

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "fused-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map2(self.name(), (s1, l1), (s2, l2), |a, b| (a + b).max(0.0))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = a.apply_op3_no_bwd(b, &grad.contiguous()?, &AddReluGrad)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `(a, b, dy) → dy · [a + b ≥ 0]`.
struct AddReluGrad;

impl CustomOp3 for AddReluGrad {
    fn name(&self) -> &'static str {
        "fused-add-relu-grad"
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
        let (a, b, g) = (f32s(s1, l1, op)?, f32s(s2, l2, op)?, f32s(s3, l3, op)?);
        same_len(op, a, b)?;
        same_len(op, a, g)?;
        let mut d = vec![0f32; a.len()];
        d.par_chunks_mut(CHUNK)
            .zip(
                a.par_chunks(CHUNK)
                    .zip(b.par_chunks(CHUNK).zip(g.par_chunks(CHUNK))),
            )
            .for_each(|(o, (xa, (xb, gs)))| {
                for (((o, &u), &v), &gv) in o.iter_mut().zip(xa).zip(xb).zip(gs) {
                    *o = if u + v >= 0.0 { gv } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

/// `(z, a) → softmax(z) ⊙ a`; keeps `softmax(z)` for the backward pass.
struct Attend {
    softmax: Arc<OnceLock<Vec<f32>>>,
}

/// Length of the last axis of a layout (at least 1).
fn last_dim(l: &Layout) -> usize {
    l.dims().last().copied().unwrap_or(1).max(1)
}

impl CustomOp2 for Attend {
    fn name(&self) -> &'static str {
        "fused-attend"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (z, a) = (f32s(s1, l1, op)?, f32s(s2, l2, op)?);
        same_len(op, z, a)?;
        let w = last_dim(l1);
        let mut sm = vec![0f32; z.len()];
        let mut y = vec![0f32; z.len()];
        let rows = (CHUNK / w).max(1) * w;
        sm.par_chunks_mut(rows)
            .zip(y.par_chunks_mut(rows))
            .zip(z.par_chunks(rows).zip(a.par_chunks(rows)))
            .for_each(|((sm, y), (z, a))| {
                let it = sm.chunks_mut(w).zip(y.chunks_mut(w));
                for ((sm, y), (z, a)) in it.zip(z.chunks(w).zip(a.chunks(w))) {
                    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (e, &v) in sm.iter_mut().zip(z) {
                        *e = (v - max).exp();
                        sum += *e;
                    }
                    let inv = 1.0 / sum;
                    for ((e, o), &av) in sm.iter_mut().zip(y.iter_mut()).zip(a) {
                        *e *= inv;
                        *o = *e * av;
                    }
                }
            });
        // A second forward of the same op object (not done by candle) keeps the first σ(z).
        let _ = self.softmax.set(sm);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _z: &Tensor,
        a: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let both = a.apply_op2_no_bwd(
            &grad.contiguous()?,
            &AttendGrad {
                softmax: self.softmax.clone(),
            },
        )?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// `(a, dy) → [dz, da]` of [`Attend`], stacked along a new first axis.
struct AttendGrad {
    softmax: Arc<OnceLock<Vec<f32>>>,
}

impl CustomOp2 for AttendGrad {
    fn name(&self) -> &'static str {
        "fused-attend-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (a, g) = (f32s(s1, l1, op)?, f32s(s2, l2, op)?);
        same_len(op, a, g)?;
        let Some(sm) = self.softmax.get().filter(|s| s.len() == a.len()) else {
            candle_core::bail!("{op}: no softmax from the forward pass")
        };
        let w = last_dim(l1);
        let n = a.len();
        let mut out = vec![0f32; 2 * n];
        let (dz, da) = out.split_at_mut(n);
        let rows = (CHUNK / w).max(1) * w;
        dz.par_chunks_mut(rows)
            .zip(da.par_chunks_mut(rows))
            .zip(
                sm.par_chunks(rows)
                    .zip(a.par_chunks(rows).zip(g.par_chunks(rows))),
            )
            .for_each(|((dz, da), (sm, (a, g)))| {
                let outs = dz.chunks_mut(w).zip(da.chunks_mut(w));
                let ins = sm.chunks(w).zip(a.chunks(w).zip(g.chunks(w)));
                for ((dz, da), (sm, (a, g))) in outs.zip(ins) {
                    let mut dot = 0f32;
                    for ((&e, &av), &gv) in sm.iter().zip(a).zip(g) {
                        dot += gv * av * e;
                    }
                    for ((((z, d), &e), &av), &gv) in
                        dz.iter_mut().zip(da.iter_mut()).zip(sm).zip(a).zip(g)
                    {
                        *d = gv * e;
                        *z = e * (gv * av - dot);
                    }
                }
            });
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `(t, s) → 1 − cos(t, s)` per pixel, `[N, 1, H, W]`.
#[derive(Clone, Copy)]
struct CosDistance {
    eps2: f32,
}

/// Pixels per block of the cosine distance: a block's values of both tensors over 512
/// channels stay within a core's L2 cache.
const PIXELS: usize = 128;

/// Per-pixel sums over the channels of one block: `t·s`, `t·t`, `s·s`.
fn channel_sums(t: &[f32], s: &[f32], c: usize, p: usize, j0: usize, len: usize) -> [Vec<f32>; 3] {
    let (mut dot, mut tt, mut ss) = (vec![0f32; len], vec![0f32; len], vec![0f32; len]);
    for ch in 0..c {
        let r = ch * p + j0..ch * p + j0 + len;
        let (tr, sr) = (&t[r.clone()], &s[r]);
        for j in 0..len {
            dot[j] += tr[j] * sr[j];
            tt[j] += tr[j] * tr[j];
            ss[j] += sr[j] * sr[j];
        }
    }
    [dot, tt, ss]
}

impl CosDistance {
    fn norm(&self, sq: f32) -> f32 {
        sq.max(self.eps2).sqrt()
    }
}

fn dims_nchw(l: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    match l.dims() {
        &[n, c, h, w] => Ok((n, c, h * w)),
        d => candle_core::bail!("{op}: needs NCHW tensors, got shape {d:?}"),
    }
}

impl CustomOp2 for CosDistance {
    fn name(&self) -> &'static str {
        "fused-cos-distance"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (t, s) = (f32s(s1, l1, op)?, f32s(s2, l2, op)?);
        same_len(op, t, s)?;
        let (n, c, p) = dims_nchw(l1, op)?;
        let mut d = vec![0f32; n * p];
        d.par_chunks_mut(p)
            .zip(t.par_chunks(c * p).zip(s.par_chunks(c * p)))
            .flat_map(|(di, (ti, si))| {
                di.par_chunks_mut(PIXELS)
                    .enumerate()
                    .map(move |(b, db)| (db, ti, si, b * PIXELS))
            })
            .for_each(|(db, ti, si, j0)| {
                let [dot, tt, ss] = channel_sums(ti, si, c, p, j0, db.len());
                for (j, o) in db.iter_mut().enumerate() {
                    let cos = dot[j] / (self.norm(tt[j]) * self.norm(ss[j]));
                    *o = 1.0 - cos;
                }
            });
        Ok((CpuStorage::F32(d), Shape::from((n, 1, p))))
    }

    fn bwd(
        &self,
        t: &Tensor,
        s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let ds = t.apply_op3_no_bwd(s, &grad.contiguous()?, &CosDistanceGrad(*self))?;
        Ok((None, Some(ds)))
    }
}

/// `(t, s, dd) → ds` of [`CosDistance`].
struct CosDistanceGrad(CosDistance);

impl CustomOp3 for CosDistanceGrad {
    fn name(&self) -> &'static str {
        "fused-cos-distance-grad"
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
        let (t, s, g) = (f32s(s1, l1, op)?, f32s(s2, l2, op)?, f32s(s3, l3, op)?);
        same_len(op, t, s)?;
        let (n, c, p) = dims_nchw(l1, op)?;
        if g.len() != n * p {
            candle_core::bail!("{op}: gradient of {} values for {n}×{p} pixels", g.len())
        }
        let cd = self.0;
        let mut ds = vec![0f32; t.len()];
        // Per image, per block of pixels: the sums, then ds channel by channel.
        let blocks: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..p).step_by(PIXELS).map(move |j0| (i, j0)))
            .collect();
        let out = SyncPtr(ds.as_mut_ptr());
        blocks.par_iter().for_each(|&(i, j0)| {
            let len = PIXELS.min(p - j0);
            let (ti, si) = (
                &t[i * c * p..(i + 1) * c * p],
                &s[i * c * p..(i + 1) * c * p],
            );
            let [dot, tt, ss] = channel_sums(ti, si, c, p, j0, len);
            // ds_c = a·s_c − b·t_c, a = dd·dot/(|t|·|s|³) (0 where |s| is clamped),
            // b = dd/(|t|·|s|).
            let mut a = vec![0f32; len];
            let mut b = vec![0f32; len];
            for j in 0..len {
                let (nt, ns) = (cd.norm(tt[j]), cd.norm(ss[j]));
                let gd = g[i * p + j0 + j];
                b[j] = gd / (nt * ns);
                a[j] = if ss[j] > cd.eps2 {
                    gd * dot[j] / (nt * ns * ns * ns)
                } else {
                    0.0
                };
            }
            for ch in 0..c {
                let off = (i * c + ch) * p + j0;
                // SAFETY: the blocks are disjoint (one image, one pixel range each), so every
                // value of `ds` is written by exactly one task; `off + len ≤ ds.len()`.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(off), len) };
                let (tr, sr) = (&t[off..off + len], &s[off..off + len]);
                for j in 0..len {
                    dst[j] = a[j] * sr[j] - b[j] * tr[j];
                }
            }
        });
        Ok((CpuStorage::F32(ds), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn values(n: usize, salt: u64) -> Tensor {
        let mut s = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let v: Vec<f32> = (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // Some exact zeros, to check the mask at zero.
                if i % 17 == 0 {
                    0.0
                } else {
                    (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                }
            })
            .collect();
        Tensor::from_vec(v, (2, 3, 5, n / 30), &Device::Cpu).unwrap()
    }

    /// Output and input gradients of `f` with the fused ops on or off.
    fn run(fast: bool, f: impl Fn(&Tensor, &Tensor) -> Tensor) -> Vec<Vec<f32>> {
        let a = Var::from_tensor(&values(30 * 700, 1)).unwrap();
        let b = Var::from_tensor(&values(30 * 700, 2)).unwrap();
        let up = values(30 * 700, 3);
        set_fast_elementwise(fast);
        let y = f(a.as_tensor(), b.as_tensor());
        set_fast_elementwise(true);
        let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut out = vec![flat(&y), flat(g.get(a.as_tensor()).unwrap())];
        if let Some(gb) = g.get(b.as_tensor()) {
            out.push(flat(gb));
        }
        out
    }

    #[test]
    fn fused_relu_equals_candle_relu_and_its_gradient() {
        let f = |a: &Tensor, _: &Tensor| relu(a).unwrap();
        assert_eq!(run(true, f), run(false, f));
    }

    #[test]
    fn fused_add_relu_equals_the_composed_operations() {
        let f = |a: &Tensor, b: &Tensor| add_relu(a, b).unwrap();
        assert_eq!(run(true, f), run(false, f));
    }

    /// Distance and student gradient, fused or composed.
    fn cos_run(t: &Tensor, s: &Tensor, fast: bool) -> (Tensor, Tensor) {
        let s = Var::from_tensor(s).unwrap();
        let (n, _, h, w) = t.dims4().unwrap();
        let up = values(n * h * w, 7).reshape((n, h, w)).unwrap();
        set_fast_elementwise(fast);
        let d = cos_distance(t, s.as_tensor(), 1e-12).unwrap();
        set_fast_elementwise(true);
        let g = (&d * &up).unwrap().sum_all().unwrap().backward().unwrap();
        (d, g.get(s.as_tensor()).unwrap().clone())
    }

    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let m = b.abs().unwrap().max_all().unwrap();
        d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap()
    }

    #[test]
    fn fused_cos_distance_equals_the_composed_operations() {
        // 300 channels × 150 pixels: more than one pixel block, a last partial block.
        let t = values(2 * 300 * 150, 5).reshape((2, 300, 10, 15)).unwrap();
        let s = values(2 * 300 * 150, 6).reshape((2, 300, 10, 15)).unwrap();
        let ((df, gf), (dc, gc)) = (cos_run(&t, &s, true), cos_run(&t, &s, false));
        assert_eq!(df.dims(), dc.dims());
        assert!(
            rel_diff(&df, &dc) < 1e-5,
            "distance: {}",
            rel_diff(&df, &dc)
        );
        assert!(
            rel_diff(&gf, &gc) < 1e-5,
            "gradient: {}",
            rel_diff(&gf, &gc)
        );

        // A pixel whose student vector is zero: its norm is clamped, both paths agree there.
        let zero = Tensor::zeros((1, 300, 1, 1), DType::F32, &Device::Cpu).unwrap();
        let s0 = s.slice_assign(&[0..1, 0..300, 3..4, 7..8], &zero).unwrap();
        let ((df, gf), (dc, gc)) = (cos_run(&t, &s0, true), cos_run(&t, &s0, false));
        let at = |x: &Tensor| x.narrow(2, 3, 1).unwrap().narrow(3, 7, 1).unwrap();
        assert!(rel_diff(&at(&gf), &at(&gc)) < 1e-5);
        assert!(rel_diff(&df, &dc) < 1e-5);
    }

    #[test]
    fn cos_distance_of_a_tracked_teacher_keeps_its_gradient() {
        let t = Var::from_tensor(&values(30 * 20, 8).reshape((1, 30, 4, 5)).unwrap()).unwrap();
        let s = values(30 * 20, 9).reshape((1, 30, 4, 5)).unwrap();
        let d = cos_distance(t.as_tensor(), &s, 1e-12).unwrap();
        let g = d.sum_all().unwrap().backward().unwrap();
        assert!(g.get(t.as_tensor()).is_some());
    }

    #[test]
    fn fused_attend_equals_the_composed_operations() {
        let z = Var::from_tensor(&(values(30 * 700, 10) * 6.0).unwrap()).unwrap();
        let a = Var::from_tensor(&values(30 * 700, 11)).unwrap();
        let up = values(30 * 700, 12);
        let run = |fast: bool| {
            set_fast_elementwise(fast);
            let y = attend(z.as_tensor(), a.as_tensor()).unwrap();
            set_fast_elementwise(true);
            let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            [
                y,
                g.get(z.as_tensor()).unwrap().clone(),
                g.get(a.as_tensor()).unwrap().clone(),
            ]
        };
        let (fast, slow) = (run(true), run(false));
        for (name, (f, s)) in ["y", "dz", "da"].iter().zip(fast.iter().zip(&slow)) {
            assert_eq!(f.dims(), s.dims());
            let d = rel_diff(f, s);
            assert!(d < 1e-5, "{name} differs by {d}");
        }
    }

    #[test]
    fn non_contiguous_inputs_are_copied_first() {
        let a = values(30 * 8, 4);
        let t = a.transpose(2, 3).unwrap();
        let want = t
            .relu()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got = relu(&t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(got, want);
    }
}
