//! Distillation loss of residual reverse distillation (SPEC.md §7).
//!
//! For each pair (T_i, S_i): both features are L2-normalised along channels at every pixel
//! (norms clamped below at [`NORM_EPS`]), the per-pixel distance is `1 − cos(t, s)`
//! (= ½‖t̂ − ŝ‖²), averaged over the pixels and **summed over the batch**. The total is
//! `Σ_i α_i · loss_i`, with α = ¼ each by default ([`DEFAULT_ALPHA`]).

use candle_core::{Result, Tensor};

/// Lower bound on the per-pixel feature norm (as PyTorch's `F.normalize`).
pub const NORM_EPS: f64 = 1e-12;

/// Default per-layer loss weights α.
pub const DEFAULT_ALPHA: [f32; 4] = [0.25; 4];

/// Per-pixel `1 − cos(t, s)` over the channel axis: `[N, C, H, W]` × 2 → `[N, H, W]`.
///
/// The norm is `max(‖·‖, eps)`, computed as `sqrt(max(‖·‖², eps²))` so that the gradient
/// stays finite where a feature vector is exactly zero.
pub fn cos_distance(t: &Tensor, s: &Tensor) -> Result<Tensor> {
    if t.dims() != s.dims() || t.rank() != 4 {
        candle_core::bail!(
            "cosine distance needs two NCHW tensors of one shape, got {:?} and {:?}",
            t.dims(),
            s.dims()
        )
    }
    crate::fastops::cos_distance(t, s, NORM_EPS)
}

/// Per-pixel `1 − cos` maps `[N, H_i, W_i]`, one per feature pair (for scoring).
pub fn cos_distance_maps(t: &[Tensor], s: &[Tensor]) -> Result<Vec<Tensor>> {
    if t.len() != s.len() {
        candle_core::bail!(
            "{} teacher features but {} student features",
            t.len(),
            s.len()
        )
    }
    t.iter().zip(s).map(|(t, s)| cos_distance(t, s)).collect()
}

/// The training loss: `Σ_i α_i · Σ_n mean_{y,x} (1 − cos(T_i, S_i))` (a scalar tensor).
/// Teacher features should be detached (the teacher is frozen).
pub fn rrd_loss(t: &[Tensor], s: &[Tensor], alpha: &[f32]) -> Result<Tensor> {
    if t.len() != s.len() || t.len() != alpha.len() || t.is_empty() {
        candle_core::bail!(
            "loss needs as many teacher features, student features and α weights, got {}, {} \
             and {}",
            t.len(),
            s.len(),
            alpha.len()
        )
    }
    let mut total: Option<Tensor> = None;
    for ((t, s), &a) in t.iter().zip(s).zip(alpha) {
        let d = cos_distance(t, s)?;
        let (_, h, w) = d.dims3()?;
        let term = (d.sum_all()? * (a as f64 / (h * w) as f64))?;
        total = Some(match total {
            None => term,
            Some(x) => (x + term)?,
        });
    }
    total.ok_or_else(|| candle_core::Error::Msg("empty loss".into()))
}
