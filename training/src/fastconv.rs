//! Convolutions for training on the CPU as matrix products (im2col + GEMM), with their
//! backward passes.
//!
//! candle's CPU convolution computes the input gradient with a plain transposed-convolution
//! loop and the weight gradient as a convolution with a kernel the size of the feature map,
//! which dominates a training step. Here every pass is one matrix product per image:
//!
//! ```text
//! conv forward          y[n]  = W · cols(x[n])                W: [Cout, Cin·k·k]
//! conv input grad       dx[n] = col2im(Wᵀ · g[n])
//! conv weight grad      dW    = Σ_n g[n] · cols(x[n])ᵀ
//! transposed forward    y[n]  = col2im(Wᵀ · x[n])             W: [Cin, Cout·k·k]
//! transposed input grad dx[n] = W · cols(g[n])
//! transposed weight grad dW   = Σ_n x[n] · cols(g[n])ᵀ
//! ```
//!
//! `cols(x)` is the `[C·k·k, Ho·Wo]` matrix of the k×k windows of `x` (zero outside the map,
//! rows ordered channel, kernel row, kernel column), `col2im` its adjoint (sums the columns
//! back onto the map). A 1×1 convolution with stride 1 needs neither: `cols(x)` is `x`
//! itself. The 2×2 stride-2 transposed convolution of the decoder has disjoint windows, so
//! its `col2im` is a plain scatter. The weight gradient reads `cols(x)ᵀ` written out row by
//! row (its product runs about 1.2–1.4× faster on that layout than on a transposed view).
//!
//! A bias is added inside the forward product (each output row starts from it) and its
//! gradient is a parallel sum per channel. The input gradient is skipped for inputs that
//! carry none: the student's first layers read the frozen teacher's detached features.
//!
//! The products go through `matrixmultiply`: with a batch of at least as many images as
//! threads, one image per task on one thread each (for these shapes about 1.2–1.5× faster
//! than one product split over the cores); otherwise split by columns over the threads
//! (candle's thread count). Either way each output value comes out bit for bit the same, so
//! an image's features do not depend on its batch. Results equal candle's convolutions up
//! to float rounding.
//! [`conv2d_layer`] and [`conv_transpose2d_layer`] take the layers of `candle_nn` (same
//! parameter tensors, so checkpoints and the exporter see no difference) and fall back to
//! candle's own forward off the CPU, for non-f32 tensors, dilation or groups, or while
//! [`set_fast_convs`] has turned the fast path off on the calling thread.

use std::cell::Cell;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Module, Result, Shape, Tensor,
};
use candle_nn::{Conv2d, ConvTranspose2d};
use rayon::prelude::*;

/// Turns the fast convolutions on or off for layers run from the calling thread (on by
/// default). Off, the student runs candle's own convolutions: the straightforward path that
/// tests compare against.
pub fn set_fast_convs(enabled: bool) {
    crate::fastpath::set(crate::fastpath::FastPath::Convs, enabled);
}

/// Whether layers run from the calling thread use the fast convolutions.
pub fn fast_convs_enabled() -> bool {
    crate::fastpath::enabled(crate::fastpath::FastPath::Convs)
}

/// Square window of a convolution: kernel side, stride, zero padding on every side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    k: usize,
    stride: usize,
    pad: usize,
}

impl Window {
    /// Output side of the window sliding over a side of `n` pixels.
    fn out(&self, n: usize) -> Result<usize> {
        let padded = n + 2 * self.pad;
        if padded < self.k || self.stride == 0 {
            candle_core::bail!(
                "convolution: kernel {} with padding {} does not fit a side of {n}",
                self.k,
                self.pad
            )
        }
        Ok((padded - self.k) / self.stride + 1)
    }

    /// Whether `cols(x)` is `x` itself.
    fn is_identity(&self) -> bool {
        self.k == 1 && self.stride == 1 && self.pad == 0
    }
}

/// Geometry of one map `[c, h, w]` and the `oh × ow` grid of windows over it.
#[derive(Debug, Clone, Copy)]
struct Geom {
    c: usize,
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    win: Window,
}

impl Geom {
    fn new(c: usize, h: usize, w: usize, win: Window) -> Result<Self> {
        Ok(Self {
            c,
            h,
            w,
            oh: win.out(h)?,
            ow: win.out(w)?,
            win,
        })
    }

    /// Rows of `cols`: `c·k·k`.
    fn rows(&self) -> usize {
        self.c * self.win.k * self.win.k
    }

    /// Columns of `cols`: `oh·ow`.
    fn cols(&self) -> usize {
        self.oh * self.ow
    }

    /// Source index along one side for output position `o` and kernel offset `kk`, or `None`
    /// in the zero padding.
    #[inline]
    fn src(&self, o: usize, kk: usize, n: usize) -> Option<usize> {
        let i = (o * self.win.stride + kk) as isize - self.win.pad as isize;
        (i >= 0 && (i as usize) < n).then_some(i as usize)
    }

    /// Profiler key of a pass over this geometry with `m` channels on the other side. A
    /// pass timed inside another is named `"outer · inner"`; its key is the outer pass's key
    /// followed by `" · inner"`.
    fn key(&self, pass: &str, m: usize) -> String {
        let w = self.win;
        let (outer, inner) = match pass.split_once(" · ") {
            Some((o, i)) => (o, format!(" · {i}")),
            None => (pass, String::new()),
        };
        format!(
            "{outer} k{}s{} {}x{}x{} / {m}{inner}",
            w.k, w.stride, self.c, self.h, self.w
        )
    }

    /// The output positions `lo..hi` along a side whose source index for kernel offset `kk`
    /// lies inside `0..n` (the others fall in the zero padding); `o_len` positions in all.
    #[inline]
    fn valid(&self, o_len: usize, kk: usize, n: usize) -> (usize, usize) {
        let (s, pad) = (self.win.stride, self.win.pad);
        // o·s + kk − pad ≥ 0  ⇔  o ≥ ⌈(pad − kk) / s⌉
        let lo = pad.saturating_sub(kk).div_ceil(s);
        // o·s + kk − pad ≤ n − 1  ⇔  o ≤ ⌊(n − 1 + pad − kk) / s⌋
        let hi = match (n + pad).checked_sub(kk + 1) {
            Some(top) => (top / s + 1).min(o_len),
            None => 0,
        };
        (lo.min(hi), hi)
    }

    /// Row `r` of `cols(x)` (`cols()` values) for one map `x` (`c·h·w`).
    fn im2col_row(&self, x: &[f32], r: usize, row: &mut [f32]) {
        let k = self.win.k;
        let (ci, ky, kx) = (r / (k * k), (r / k) % k, r % k);
        let plane = &x[ci * self.h * self.w..(ci + 1) * self.h * self.w];
        let (lo, hi) = self.valid(self.ow, kx, self.w);
        let s = self.win.stride;
        for (oy, dst) in row.chunks_exact_mut(self.ow).enumerate() {
            let Some(iy) = self.src(oy, ky, self.h) else {
                dst.fill(0.0);
                continue;
            };
            let line = &plane[iy * self.w..(iy + 1) * self.w];
            dst[..lo].fill(0.0);
            dst[hi..].fill(0.0);
            if lo < hi {
                // ix = ox·s + kx − pad, first at ox = lo.
                let first = lo * s + kx - self.win.pad;
                if s == 1 {
                    dst[lo..hi].copy_from_slice(&line[first..first + hi - lo]);
                } else {
                    for (d, &v) in dst[lo..hi].iter_mut().zip(line[first..].iter().step_by(s)) {
                        *d = v;
                    }
                }
            }
        }
    }

    /// Writes `cols(x)` (`rows() × cols()`) for one map `x` (`c·h·w`), its rows in parallel
    /// when `parallel`.
    fn im2col(&self, x: &[f32], cols: &mut [f32], parallel: bool) {
        let p = self.cols();
        let cols = &mut cols[..self.rows() * p];
        if parallel {
            cols.par_chunks_mut(p)
                .enumerate()
                .with_min_len(4)
                .for_each(|(r, row)| self.im2col_row(x, r, row));
        } else {
            for (r, row) in cols.chunks_mut(p).enumerate() {
                self.im2col_row(x, r, row);
            }
        }
    }

    /// Output row `oy` of `cols(x)ᵀ`: `ow` consecutive rows of `rows()` values, one per
    /// output pixel.
    fn im2col_t_row(&self, x: &[f32], oy: usize, block: &mut [f32]) {
        let (k, kdim, s, pad) = (self.win.k, self.rows(), self.win.stride, self.win.pad);
        let plane = self.h * self.w;
        // Pixels per group: a group's rows of `cols(x)ᵀ` (PIX · rows() values) stay in the
        // L1 cache while every channel and kernel row writes into them.
        const PIX: usize = 8;
        for (g, group) in block.chunks_mut(PIX * kdim).enumerate() {
            let ox0 = g * PIX;
            for ci in 0..self.c {
                for ky in 0..k {
                    let r0 = (ci * k + ky) * k;
                    let Some(iy) = self.src(oy, ky, self.h) else {
                        for px in group.chunks_exact_mut(kdim) {
                            px[r0..r0 + k].fill(0.0);
                        }
                        continue;
                    };
                    let line = &x[ci * plane + iy * self.w..ci * plane + (iy + 1) * self.w];
                    for (j, px) in group.chunks_exact_mut(kdim).enumerate() {
                        let d = &mut px[r0..r0 + k];
                        let x0 = ((ox0 + j) * s) as isize - pad as isize;
                        if x0 >= 0 && x0 as usize + k <= self.w {
                            let src = &line[x0 as usize..x0 as usize + k];
                            if let (Ok(d3), Ok(s3)) = (
                                <&mut [f32; 3]>::try_from(&mut *d),
                                <&[f32; 3]>::try_from(src),
                            ) {
                                // The common 3×3 kernel: three moves, not a copy call.
                                *d3 = *s3;
                            } else {
                                d.copy_from_slice(src);
                            }
                        } else {
                            // The window reaches into the zero padding.
                            for (kx, v) in d.iter_mut().enumerate() {
                                let ix = x0 + kx as isize;
                                *v = if ix >= 0 && (ix as usize) < self.w {
                                    line[ix as usize]
                                } else {
                                    0.0
                                };
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes `cols(x)ᵀ` (`cols() × rows()`, row-major) for one map `x`, its output rows in
    /// parallel when `parallel`. The weight gradient's product reads it faster than the
    /// transposed view of `cols(x)`: its pixels (the summed dimension) are then the rows.
    fn im2col_t(&self, x: &[f32], ct: &mut [f32], parallel: bool) {
        let row = self.ow * self.rows();
        let ct = &mut ct[..self.cols() * self.rows()];
        if parallel {
            ct.par_chunks_mut(row)
                .enumerate()
                .for_each(|(oy, block)| self.im2col_t_row(x, oy, block));
        } else {
            for (oy, block) in ct.chunks_mut(row).enumerate() {
                self.im2col_t_row(x, oy, block);
            }
        }
    }

    /// Sums the `k·k` rows of channel `ci` of `cols` back onto its `h·w` plane (overwritten).
    fn col2im_plane(&self, cols: &[f32], ci: usize, plane: &mut [f32]) {
        let (k, p, s) = (self.win.k, self.cols(), self.win.stride);
        plane.fill(0.0);
        for ky in 0..k {
            for kx in 0..k {
                let r = (ci * k + ky) * k + kx;
                let row = &cols[r * p..(r + 1) * p];
                let (lo, hi) = self.valid(self.ow, kx, self.w);
                if lo >= hi {
                    continue;
                }
                let first = lo * s + kx - self.win.pad;
                for (oy, src) in row.chunks_exact(self.ow).enumerate() {
                    let Some(iy) = self.src(oy, ky, self.h) else {
                        continue;
                    };
                    let line = &mut plane[iy * self.w..(iy + 1) * self.w];
                    if s == 1 {
                        for (d, &v) in line[first..first + hi - lo].iter_mut().zip(&src[lo..hi]) {
                            *d += v;
                        }
                    } else {
                        for (d, &v) in line[first..].iter_mut().step_by(s).zip(&src[lo..hi]) {
                            *d += v;
                        }
                    }
                }
            }
        }
    }

    /// Adds the columns of `cols` (`rows() × cols()`) back onto one map `img` (`c·h·w`,
    /// overwritten): the adjoint of [`Geom::im2col`]; its channels in parallel when
    /// `parallel`.
    fn col2im(&self, cols: &[f32], img: &mut [f32], parallel: bool) {
        let plane_len = self.h * self.w;
        if parallel {
            img.par_chunks_mut(plane_len)
                .enumerate()
                .for_each(|(ci, plane)| self.col2im_plane(cols, ci, plane));
        } else {
            for (ci, plane) in img.chunks_mut(plane_len).enumerate() {
                self.col2im_plane(cols, ci, plane);
            }
        }
    }
}

thread_local! {
    /// Per-thread buffer for `cols` matrices, kept between passes.
    static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Runs `f` on a buffer of at least `len` values (contents unspecified) that the calling
/// thread keeps for its next pass. The buffer is taken out of its slot while `f` runs, so a
/// nested call gets a fresh one rather than a shared one.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(Cell::take);
    if buf.len() < len {
        buf = vec![0f32; len];
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| s.set(buf));
    r
}

/// Whether a pass over `n` images runs one image per task, each with a single-threaded
/// matrix product, rather than image after image with a multi-threaded one. For the
/// decoder's and encoder's shapes (64–512 rows) a single-threaded product per core runs
/// about 1.2–1.5× faster than one product split over the cores.
fn per_image_tasks(n: usize) -> bool {
    let threads = candle_core::utils::get_num_threads();
    threads > 1 && n >= threads
}

/// Row-major matrix view for [`gemm`]: pointer, row stride, column stride.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

// SAFETY: a `Mat` is a read-only view over a slice that its creator keeps borrowed while
// the product that reads it runs (every `Mat` here is built from a live `&[f32]` and used
// within the same function call).
unsafe impl Send for Mat {}
// SAFETY: as above; nothing writes through it.
unsafe impl Sync for Mat {}

impl Mat {
    /// A row-major `[_, cols]` matrix.
    fn rows(s: &[f32], cols: usize) -> Self {
        Self {
            ptr: s.as_ptr(),
            rs: cols as isize,
            cs: 1,
        }
    }

    /// The transpose of a row-major `[_, cols]` matrix.
    fn transposed(s: &[f32], cols: usize) -> Self {
        Self {
            ptr: s.as_ptr(),
            rs: 1,
            cs: cols as isize,
        }
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, `dst` row-major `m × n`; accumulates when
/// `accumulate`, overwrites otherwise. `threaded`: the columns of `dst` are split over
/// candle's threads; otherwise the product runs on the calling thread.
///
/// Every product goes through `matrixmultiply` (the fastest single-threaded kernel for
/// these shapes), whose value at each output element does not depend on which columns are
/// computed together: a split product equals the whole one bit for bit, so an image's
/// features do not depend on the batch it is in or the thread count.
#[allow(clippy::too_many_arguments)]
fn gemm(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    threaded: bool,
) {
    assert!(dst.len() >= m * n, "gemm: destination too small");
    let threads = candle_core::utils::get_num_threads();
    // Columns per task: at least 64, so that a task amortises its packing.
    let per_task = if threaded && threads > 1 {
        n.div_ceil(threads).max(64)
    } else {
        n
    };
    let beta = if accumulate { 1.0 } else { 0.0 };
    let out = SyncPtr(dst.as_mut_ptr());
    let columns = |j0: usize| {
        // Whole views, not their fields (closures capture fields separately).
        let (lhs, rhs, out) = (&lhs, &rhs, &out);
        let cols = per_task.min(n - j0);
        // SAFETY: `lhs`/`rhs` are views over slices that hold at least the `m × k` /
        // `k × n` elements their strides address (checked by the shapes computed in the ops
        // below); columns `j0..j0 + cols` of `rhs` and `dst` lie inside them. Tasks write
        // disjoint column ranges of `dst`, which holds `m × n` values (asserted above).
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                cols,
                1.0,
                lhs.ptr,
                lhs.rs,
                lhs.cs,
                rhs.ptr.offset(j0 as isize * rhs.cs),
                rhs.rs,
                rhs.cs,
                beta,
                out.get().add(j0),
                n as isize,
                1,
            )
        }
    };
    if per_task >= n {
        columns(0);
    } else {
        (0..n)
            .step_by(per_task)
            .collect::<Vec<_>>()
            .into_par_iter()
            .for_each(columns);
    }
}

/// A pointer into an output buffer that parallel tasks share, each writing its own disjoint
/// range (shared with [`crate::fastops`]).
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr(pub(crate) *mut f32);
// SAFETY: users only write disjoint ranges through it from different tasks, and the buffer
// outlives the tasks (they run inside the function that owns it).
unsafe impl Send for SyncPtr {}
// SAFETY: as above.
unsafe impl Sync for SyncPtr {}

impl SyncPtr {
    /// The pointer (a method, so that closures capture the whole `Send` wrapper).
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// The f32 slice of a contiguous CPU tensor argument (shared with [`crate::fastbn`]).
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{op}: f32 tensors only")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: arguments must be contiguous"),
    }
}

fn dims4(l: &Layout, op: &str, what: &str) -> Result<(usize, usize, usize, usize)> {
    match l.dims() {
        &[a, b, c, d] => Ok((a, b, c, d)),
        d => candle_core::bail!("{op}: {what} must be 4-D, got shape {d:?}"),
    }
}

/// `y[n] = W · cols(x[n])`: args `x [N, C, H, W]`, `w [M, C, k, k]` → `[N, M, Ho, Wo]`.
/// With its backward pass this is the convolution.
#[derive(Debug, Clone, Copy)]
struct WindowProduct {
    win: Window,
}

/// `y[n] = col2im(Wᵀ · x[n])`: args `x [N, C, H, W]` (a grid of windows), `w [C, M, k, k]`
/// → maps `[N, M, out_h, out_w]` whose window grid is `H × W`. With its backward pass this
/// is the transposed convolution.
#[derive(Debug, Clone, Copy)]
struct WindowScatter {
    win: Window,
    out_h: usize,
    out_w: usize,
}

/// `dW = Σ_n a[n] · cols(b[n])ᵀ`: args `a [N, M, Ho, Wo]`, `b [N, C, H, W]` → `[M, C, k, k]`.
#[derive(Debug, Clone, Copy)]
struct WindowGradient {
    win: Window,
}

impl WindowProduct {
    /// The forward pass; with `bias` (one value per output channel) each output row starts
    /// from its bias and the product is added onto it.
    fn forward(
        &self,
        op: &str,
        (x, l1): (&[f32], &Layout),
        (w, l2): (&[f32], &Layout),
        bias: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, wd) = dims4(l1, op, "input")?;
        let (m, wc, kh, kw) = dims4(l2, op, "weight")?;
        if wc != c || kh != self.win.k || kw != self.win.k {
            candle_core::bail!(
                "{op}: weight {:?} does not fit input {:?} with a {}×{} kernel",
                l2.dims(),
                l1.dims(),
                self.win.k,
                self.win.k
            )
        }
        if bias.is_some_and(|b| b.len() != m) {
            candle_core::bail!("{op}: bias needs {m} values")
        }
        let g = Geom::new(c, h, wd, self.win)?;
        let _t = crate::opprof::timer(|| g.key("product", m));
        let (kdim, p) = (g.rows(), g.cols());
        let mut y = vec![0f32; n * m * p];
        let one = |xi: &[f32], yi: &mut [f32], threaded: bool| {
            if let Some(b) = bias {
                for (row, &bv) in yi.chunks_exact_mut(p).zip(b) {
                    row.fill(bv);
                }
            }
            let acc = bias.is_some();
            if self.win.is_identity() {
                let rhs = Mat::rows(xi, p);
                gemm(yi, m, p, kdim, Mat::rows(w, kdim), rhs, acc, threaded);
            } else {
                with_scratch(kdim * p, |cols| {
                    {
                        let _t = crate::opprof::timer(|| g.key("product · im2col", m));
                        g.im2col(xi, cols, threaded);
                    }
                    let rhs = Mat::rows(cols, p);
                    gemm(yi, m, p, kdim, Mat::rows(w, kdim), rhs, acc, threaded);
                })
            }
        };
        let img = c * h * wd;
        if per_image_tasks(n) {
            y.par_chunks_mut(m * p)
                .zip(x.par_chunks(img))
                .with_max_len(1)
                .for_each(|(yi, xi)| one(xi, yi, false));
        } else {
            for (xi, yi) in x.chunks_exact(img).zip(y.chunks_exact_mut(m * p)) {
                one(xi, yi, true);
            }
        }
        Ok((CpuStorage::F32(y), Shape::from((n, m, g.oh, g.ow))))
    }

    /// Input and weight gradients. The input gradient is skipped (`None`) where the input
    /// carries no gradient, such as the frozen teacher's features that the student's first
    /// layers read.
    fn backward(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        let (_, _, h, wd) = x.dims4()?;
        let scatter = WindowScatter {
            win: self.win,
            out_h: h,
            out_w: wd,
        };
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &scatter)?)
        } else {
            None
        };
        let dw = grad.apply_op2_no_bwd(x, &WindowGradient { win: self.win })?;
        Ok((dx, dw))
    }
}

impl CustomOp2 for WindowProduct {
    fn name(&self) -> &'static str {
        "fast-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, w) = (slice(s1, l1, op)?, slice(s2, l2, op)?);
        self.forward(op, (x, l1), (w, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.backward(x, w, &grad.contiguous()?)?;
        Ok((dx, Some(dw)))
    }
}

/// [`WindowProduct`] plus a bias per output channel: args `x`, `w`, `b [M]`. Its backward
/// pass sums the bias gradient in parallel over channels, where a separate broadcast add
/// would cost a zero-filled gradient, an addition and a single-threaded reduction over the
/// whole activation.
#[derive(Debug, Clone, Copy)]
struct BiasedWindowProduct(WindowProduct);

impl CustomOp3 for BiasedWindowProduct {
    fn name(&self) -> &'static str {
        "fast-conv2d-bias"
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
        let (x, w, b) = (slice(s1, l1, op)?, slice(s2, l2, op)?, slice(s3, l3, op)?);
        self.0.forward(op, (x, l1), (w, l2), Some(b))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (dx, dw) = self.0.backward(x, w, &grad)?;
        let db = grad.apply_op1_no_bwd(&ChannelSums)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// `g [N, M, H, W] → [M]`: the sum of each channel over images and pixels.
struct ChannelSums;

impl CustomOp1 for ChannelSums {
    fn name(&self) -> &'static str {
        "fast-channel-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let g = slice(s, l, op)?;
        let (n, m, h, w) = dims4(l, op, "gradient")?;
        let p = h * w;
        let sums: Vec<f32> = (0..m)
            .into_par_iter()
            .map(|c| {
                let total: f64 = (0..n)
                    .map(|i| {
                        let plane = &g[(i * m + c) * p..(i * m + c + 1) * p];
                        plane.iter().map(|&v| f64::from(v)).sum::<f64>()
                    })
                    .sum();
                total as f32
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(m)))
    }
}

impl CustomOp2 for WindowScatter {
    fn name(&self) -> &'static str {
        "fast-conv-transpose2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (x, w) = (slice(s1, l1, op)?, slice(s2, l2, op)?);
        let (n, c, h, wd) = dims4(l1, op, "input")?;
        let (wc, m, kh, kw) = dims4(l2, op, "weight")?;
        if wc != c || kh != self.win.k || kw != self.win.k {
            candle_core::bail!(
                "{op}: weight {:?} does not fit input {:?} with a {}×{} kernel",
                l2.dims(),
                l1.dims(),
                self.win.k,
                self.win.k
            )
        }
        let g = Geom::new(m, self.out_h, self.out_w, self.win)?;
        if (g.oh, g.ow) != (h, wd) {
            candle_core::bail!(
                "{op}: a {}×{} output has a {}×{} window grid, the input is {h}×{wd}",
                self.out_h,
                self.out_w,
                g.oh,
                g.ow
            )
        }
        let _t = crate::opprof::timer(|| g.key("scatter", c));
        let (kdim, p) = (g.rows(), g.cols());
        let img = m * self.out_h * self.out_w;
        let mut y = vec![0f32; n * img];
        let one = |xi: &[f32], yi: &mut [f32], threaded: bool| {
            let lhs = Mat::transposed(w, kdim);
            if self.win.is_identity() {
                gemm(yi, kdim, p, c, lhs, Mat::rows(xi, p), false, threaded);
            } else {
                with_scratch(kdim * p, |cols| {
                    gemm(cols, kdim, p, c, lhs, Mat::rows(xi, p), false, threaded);
                    let _t = crate::opprof::timer(|| g.key("scatter · col2im", c));
                    g.col2im(cols, yi, threaded);
                })
            }
        };
        if per_image_tasks(n) {
            y.par_chunks_mut(img)
                .zip(x.par_chunks(c * p))
                .with_max_len(1)
                .for_each(|(yi, xi)| one(xi, yi, false));
        } else {
            for (xi, yi) in x.chunks_exact(c * p).zip(y.chunks_exact_mut(img)) {
                one(xi, yi, true);
            }
        }
        Ok((
            CpuStorage::F32(y),
            Shape::from((n, m, self.out_h, self.out_w)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w, &WindowProduct { win: self.win })?)
        } else {
            None
        };
        let dw = x.apply_op2_no_bwd(&grad, &WindowGradient { win: self.win })?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp2 for WindowGradient {
    fn name(&self) -> &'static str {
        "fast-conv-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let (a, b) = (slice(s1, l1, op)?, slice(s2, l2, op)?);
        let (n, m, ah, aw) = dims4(l1, op, "gradient")?;
        let (nb, c, h, w) = dims4(l2, op, "input")?;
        let g = Geom::new(c, h, w, self.win)?;
        if nb != n || (g.oh, g.ow) != (ah, aw) {
            candle_core::bail!(
                "{op}: gradient {:?} does not match input {:?}",
                l1.dims(),
                l2.dims()
            )
        }
        let _t = crate::opprof::timer(|| g.key("weight-grad", m));
        let (kdim, p) = (g.rows(), g.cols());
        // Adds a[n] · cols(b[n])ᵀ onto `dw` (cols(b[n])ᵀ written out, also for 1×1 windows).
        let one = |dw: &mut [f32], ai: &[f32], bi: &[f32], threaded: bool| {
            with_scratch(kdim * p, |ct| {
                {
                    let _t = crate::opprof::timer(|| g.key("weight-grad · im2col", m));
                    g.im2col_t(bi, ct, threaded);
                }
                let rhs = Mat::rows(ct, kdim);
                gemm(dw, m, kdim, p, Mat::rows(ai, p), rhs, true, threaded);
            })
        };
        let pairs = a.par_chunks(m * p).zip(b.par_chunks(c * h * w));
        let dw = if per_image_tasks(n) {
            // One partial sum per thread's share of the images, added up at the end.
            let threads = candle_core::utils::get_num_threads();
            pairs
                .with_min_len(n / threads)
                .fold(
                    || vec![0f32; m * kdim],
                    |mut acc, (ai, bi)| {
                        one(&mut acc, ai, bi, false);
                        acc
                    },
                )
                .reduce_with(|mut s, t| {
                    s.iter_mut().zip(&t).for_each(|(u, v)| *u += v);
                    s
                })
                .unwrap_or_else(|| vec![0f32; m * kdim])
        } else {
            let mut dw = vec![0f32; m * kdim];
            for (ai, bi) in a.chunks_exact(m * p).zip(b.chunks_exact(c * h * w)) {
                one(&mut dw, ai, bi, true);
            }
            dw
        };
        let k = self.win.k;
        Ok((CpuStorage::F32(dw), Shape::from((m, c, k, k))))
    }
}

/// Whether the fast path can run on these tensors.
fn supported(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32
}

/// 2-D convolution, NCHW: `x [N, Cin, H, W]`, `weight [Cout, Cin, k, k]`, optional `bias
/// [Cout]`, square stride and zero padding (no dilation, no groups). CPU, f32.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (_, _, kh, kw) = weight.dims4()?;
    if kh != kw {
        candle_core::bail!("fast conv2d: square kernels only, got {kh}×{kw}")
    }
    let win = Window {
        k: kh,
        stride,
        pad: padding,
    };
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(b) if b.dtype() == DType::F32 && b.rank() == 1 => x.apply_op3(
            &weight,
            &b.contiguous()?,
            BiasedWindowProduct(WindowProduct { win }),
        ),
        Some(b) => x
            .apply_op2(&weight, WindowProduct { win })?
            .broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?),
        None => x.apply_op2(&weight, WindowProduct { win }),
    }
}

/// 2-D transposed convolution, NCHW: `x [N, Cin, H, W]`, `weight [Cin, Cout, k, k]`, square
/// stride and padding, no output padding, dilation or bias: output side `(H − 1)·stride −
/// 2·padding + k`. CPU, f32.
pub fn conv_transpose2d(
    x: &Tensor,
    weight: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let (_, _, kh, kw) = weight.dims4()?;
    if kh != kw || stride == 0 {
        candle_core::bail!("fast conv_transpose2d: square kernels and stride ≥ 1 only")
    }
    let side = |n: usize| -> Result<usize> {
        ((n.max(1) - 1) * stride + kh)
            .checked_sub(2 * padding)
            .ok_or_else(|| candle_core::Error::Msg("transposed conv: padding too large".into()))
    };
    let op = WindowScatter {
        win: Window {
            k: kh,
            stride,
            pad: padding,
        },
        out_h: side(h)?,
        out_w: side(w)?,
    };
    x.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

/// Whether [`conv2d_layer`] runs `conv` on `x` through [`conv2d`]: fast path on (see
/// [`set_fast_convs`]), CPU, f32, square kernel, no dilation, no groups.
pub fn conv2d_applies(conv: &Conv2d, x: &Tensor) -> bool {
    let cfg = conv.config();
    let w = conv.weight();
    let square = matches!(w.dims(), &[_, _, kh, kw] if kh == kw);
    fast_convs_enabled() && supported(x, w) && square && cfg.dilation == 1 && cfg.groups == 1
}

/// Whether [`conv_transpose2d_layer`] runs `ct` on `x` through [`conv_transpose2d`]: fast
/// path on, CPU, f32, square kernel, no dilation, output padding or bias.
pub fn conv_transpose2d_applies(ct: &ConvTranspose2d, x: &Tensor) -> bool {
    let cfg = ct.config();
    let w = ct.weight();
    let square = matches!(w.dims(), &[_, _, kh, kw] if kh == kw);
    let plain = cfg.dilation == 1 && cfg.output_padding == 0 && ct.bias().is_none();
    fast_convs_enabled() && supported(x, w) && square && plain
}

/// A `candle_nn` convolution layer's forward through [`conv2d`] where
/// [`conv2d_applies`], candle's own forward otherwise.
pub fn conv2d_layer(conv: &Conv2d, x: &Tensor) -> Result<Tensor> {
    if conv2d_applies(conv, x) {
        let cfg = conv.config();
        return conv2d(x, conv.weight(), conv.bias(), cfg.stride, cfg.padding);
    }
    conv.forward(x)
}

/// A `candle_nn` transposed convolution layer's forward through [`conv_transpose2d`] where
/// [`conv_transpose2d_applies`], candle's own forward otherwise.
pub fn conv_transpose2d_layer(ct: &ConvTranspose2d, x: &Tensor) -> Result<Tensor> {
    if conv_transpose2d_applies(ct, x) {
        let cfg = ct.config();
        return conv_transpose2d(x, ct.weight(), cfg.stride, cfg.padding);
    }
    ct.forward(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn ramp(shape: &[usize], scale: f32, salt: usize) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| (((i + salt) * 7919 % 101) as f32 / 101.0 - 0.5) * scale)
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let s = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        d.to_scalar::<f32>().unwrap() / s.max(1e-6)
    }

    /// Forward and both gradients of the fast conv against candle's, for one geometry.
    fn check_conv([n, cin, cout, h, w]: [usize; 5], [k, s, p]: [usize; 3]) {
        let x = Var::from_tensor(&ramp(&[n, cin, h, w], 2.0, 1)).unwrap();
        let wt = Var::from_tensor(&ramp(&[cout, cin, k, k], 1.0, 2)).unwrap();
        let b = Var::from_tensor(&ramp(&[cout], 1.0, 3)).unwrap();
        let fast = conv2d(x.as_tensor(), wt.as_tensor(), Some(b.as_tensor()), s, p).unwrap();
        let slow = x
            .as_tensor()
            .conv2d(wt.as_tensor(), p, s, 1, 1)
            .unwrap()
            .broadcast_add(&b.as_tensor().reshape((1, cout, 1, 1)).unwrap())
            .unwrap();
        assert_eq!(fast.dims(), slow.dims());
        let what = format!("conv n{n} {cin}→{cout} {h}×{w} k{k} s{s} p{p}");
        assert!(max_rel_diff(&fast, &slow) < 1e-5, "{what}: forward");
        let up = ramp(fast.dims(), 1.0, 4);
        let gf = (&fast * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = (&slow * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("input", &x), ("weight", &wt), ("bias", &b)] {
            let d = max_rel_diff(gf.get(v).unwrap(), gs.get(v).unwrap());
            assert!(d < 1e-5, "{what}: {name} gradient differs by {d}");
        }
    }

    fn check_transposed([n, cin, cout, h, w]: [usize; 5], [k, s, p]: [usize; 3]) {
        let x = Var::from_tensor(&ramp(&[n, cin, h, w], 2.0, 5)).unwrap();
        let wt = Var::from_tensor(&ramp(&[cin, cout, k, k], 1.0, 6)).unwrap();
        let fast = conv_transpose2d(x.as_tensor(), wt.as_tensor(), s, p).unwrap();
        let slow = x
            .as_tensor()
            .conv_transpose2d(wt.as_tensor(), p, 0, s, 1)
            .unwrap();
        assert_eq!(fast.dims(), slow.dims());
        let what = format!("transposed n{n} {cin}→{cout} {h}×{w} k{k} s{s} p{p}");
        assert!(max_rel_diff(&fast, &slow) < 1e-5, "{what}: forward");
        let up = ramp(fast.dims(), 1.0, 7);
        let gf = (&fast * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = (&slow * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (name, v) in [("input", &x), ("weight", &wt)] {
            let d = max_rel_diff(gf.get(v).unwrap(), gs.get(v).unwrap());
            assert!(d < 1e-5, "{what}: {name} gradient differs by {d}");
        }
    }

    #[test]
    fn conv_matches_candle_forward_and_gradients() {
        check_conv([2, 3, 5, 6, 7], [1, 1, 0]); // plain matrix product
        check_conv([2, 4, 3, 8, 8], [1, 2, 0]); // stride-2 1×1 (even rows/columns)
        check_conv([2, 4, 3, 7, 9], [1, 2, 0]); // odd sides
        check_conv([3, 3, 4, 6, 5], [3, 1, 1]); // 3×3, pad 1
        check_conv([1, 2, 3, 9, 9], [3, 2, 1]); // 3×3, stride 2 (candle's own backward needs equal sides here)
        check_conv([2, 2, 2, 6, 6], [5, 1, 2]); // 5×5
    }

    #[test]
    fn transposed_conv_matches_candle_forward_and_gradients() {
        check_transposed([2, 5, 3, 3, 4], [2, 2, 0]); // the decoder's 2×2 stride 2
        check_transposed([2, 3, 4, 4, 4], [1, 1, 0]);
        check_transposed([1, 3, 2, 4, 5], [3, 1, 1]);
        check_transposed([1, 2, 3, 3, 3], [3, 2, 0]); // overlapping windows
    }

    #[test]
    fn split_products_equal_whole_ones_bit_for_bit() {
        // What makes features independent of batch and thread count (see `gemm`).
        for (m, n, k) in [(64, 4096, 576), (7, 200, 33), (512, 64, 4608), (3, 65, 1)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0)
                .collect();
            let (mut whole, mut split) = (vec![0f32; m * n], vec![1f32; m * n]);
            let (lhs, rhs) = (Mat::rows(&a, k), Mat::rows(&b, n));
            gemm(&mut whole, m, n, k, lhs, rhs, false, false);
            gemm(&mut split, m, n, k, lhs, rhs, false, true);
            assert!(whole == split, "{m}×{n}×{k}: split product differs");
            // Transposed operands too (the weight gradient's layout).
            let rhs_t = Mat::transposed(&b, k);
            gemm(&mut whole, m, n, k, lhs, rhs_t, false, false);
            gemm(&mut split, m, n, k, lhs, rhs_t, false, true);
            assert!(
                whole == split,
                "{m}×{n}×{k}: split transposed product differs"
            );
        }
    }

    #[test]
    fn no_input_gradient_for_an_input_without_one() {
        // A detached input (the teacher's features) gets no gradient; the weight still does.
        let x = ramp(&[2, 3, 6, 6], 1.0, 10);
        let w = Var::from_tensor(&ramp(&[4, 3, 3, 3], 1.0, 11)).unwrap();
        let y = conv2d(&x, w.as_tensor(), None, 1, 1).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none());
        assert!(g.get(w.as_tensor()).is_some());
        let wt = Var::from_tensor(&ramp(&[3, 2, 2, 2], 1.0, 12)).unwrap();
        let y = conv_transpose2d(&x, wt.as_tensor(), 2, 0).unwrap();
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none());
        assert!(g.get(wt.as_tensor()).is_some());
    }

    #[test]
    fn layers_fall_back_when_turned_off() {
        let x = ramp(&[1, 2, 4, 4], 1.0, 8);
        let conv = Conv2d::new(ramp(&[3, 2, 3, 3], 1.0, 9), None, Default::default());
        set_fast_convs(false);
        assert!(!fast_convs_enabled());
        let slow = conv2d_layer(&conv, &x).unwrap();
        set_fast_convs(true);
        let fast = conv2d_layer(&conv, &x).unwrap();
        assert!(max_rel_diff(&fast, &slow) < 1e-5);
    }
}
