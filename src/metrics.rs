//! Evaluation metrics: image AUROC, pixel AUROC, AU-PRO and the paper's coverage.
//!
//! - [`image_auroc`]: area under the ROC curve of image scores against labels, computed
//!   exactly as the Mann–Whitney statistic (tied scores count one half).
//! - [`PixelRoc`]: pixel AUROC from two score histograms (defect / normal pixels) over a
//!   fixed number of bins; memory does not depend on the number of pixels. Pixels in the
//!   same bin count as ties.
//! - [`ProCurve`]: AU-PRO as defined for MVTec AD: ground-truth regions are the
//!   8-connected components of each mask; for a threshold, a region's overlap is the share
//!   of its pixels at or above it, PRO is the mean overlap over all regions of the test set
//!   and FPR the share of all normal pixels at or above it; PRO is integrated over FPR from
//!   0 to a limit (0.3, the curve interpolated there) and divided by the limit. Binned like
//!   [`PixelRoc`]: each region pixel adds `1 / region area` to one histogram, so memory
//!   is bounded by the bin count alone.
//! - [`coverage`]: the share of test images that can be decided automatically with zero
//!   false alarms and zero misses, with a tolerance band `δ` around the ambiguous score
//!   range, on min–max normalised image scores ([`min_max_normalise`]).
//!
//! Binned histograms start with a range `[lo, hi]`; a value above `hi` doubles the range
//! (pairs of bins are merged) until it fits, so no value is lost and no second pass is
//! needed. Values below `lo` fall into the first bin.

use crate::{Error, Result};

/// FPR limit of the AU-PRO reported by the evaluator.
pub const PRO_FPR_LIMIT: f64 = 0.3;

/// Tolerances of the coverage metric reported by the evaluator.
pub const COVERAGE_DELTAS: [f64; 3] = [0.0, 0.02, 0.05];

fn metric_err(metric: &'static str, msg: impl Into<String>) -> Error {
    Error::Metric {
        metric,
        msg: msg.into(),
    }
}

fn check_labels(metric: &'static str, scores: &[f32], labels: &[bool]) -> Result<(usize, usize)> {
    if scores.len() != labels.len() {
        return Err(Error::Shape {
            op: metric,
            expected: format!("{} labels (one per score)", scores.len()),
            got: labels.len().to_string(),
        });
    }
    if let Some((i, s)) = scores.iter().enumerate().find(|(_, s)| !s.is_finite()) {
        return Err(metric_err(metric, format!("score {i} is not finite ({s})")));
    }
    let pos = labels.iter().filter(|&&l| l).count();
    let neg = labels.len() - pos;
    if pos == 0 || neg == 0 {
        return Err(metric_err(
            metric,
            format!(
                "needs both normal and defective samples, got {neg} normal and {pos} defective"
            ),
        ));
    }
    Ok((pos, neg))
}

/// Image AUROC: the probability that a defective image scores above a normal one, ties
/// counting one half (the Mann–Whitney U statistic divided by `n_pos · n_neg`).
///
/// `labels[i]` is true for a defective image. Fails when either class is absent, when the
/// lengths differ, or when a score is not finite. All scores equal gives 0.5.
pub fn image_auroc(scores: &[f32], labels: &[bool]) -> Result<f64> {
    let (pos, neg) = check_labels("image AUROC", scores, labels)?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the (1-based, tie-averaged) ranks of the defective samples.
    let mut rank_sum = 0.0f64;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] {
                rank_sum += avg_rank;
            }
        }
        i = j + 1;
    }
    let u = rank_sum - (pos as f64) * (pos as f64 + 1.0) / 2.0;
    Ok(u / (pos as f64 * neg as f64))
}

/// Scales `scores` linearly so that their minimum is 0 and their maximum 1. All scores
/// equal map to 0. Used by [`coverage`] only; thresholds never see this scale.
pub fn min_max_normalise(scores: &[f32]) -> Vec<f32> {
    let lo = scores.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let span = hi - lo;
    scores
        .iter()
        .map(|&s| if span > 0.0 { (s - lo) / span } else { 0.0 })
        .collect()
}

/// The paper's coverage at 100 % precision and recall with tolerance `delta`, on scores
/// already on a [0, 1] scale (see [`min_max_normalise`]).
///
/// With `a` the highest normal score and `b` the lowest defective score, the ambiguous
/// band is `[b − δ, a + δ]` when the classes overlap (`a ≥ b`) or when the gap between them
/// is under `2δ`, and empty otherwise. Coverage is the share of images whose score lies
/// outside the band: those can be decided with no false alarm and no miss. Returns a value
/// in [0, 1]. Fails when a class is absent or `delta` is negative or not finite.
pub fn coverage(scores: &[f32], labels: &[bool], delta: f64) -> Result<f64> {
    check_labels("coverage", scores, labels)?;
    if !(delta.is_finite() && delta >= 0.0) {
        return Err(metric_err(
            "coverage",
            format!("tolerance {delta} is not ≥ 0"),
        ));
    }
    let mut a = f64::NEG_INFINITY;
    let mut b = f64::INFINITY;
    for (&s, &l) in scores.iter().zip(labels) {
        if l {
            b = b.min(s as f64);
        } else {
            a = a.max(s as f64);
        }
    }
    let band = if a >= b || b - a < 2.0 * delta {
        Some((b - delta, a + delta))
    } else {
        None
    };
    let inside = match band {
        Some((lo, hi)) => scores
            .iter()
            .filter(|&&s| (s as f64) >= lo && (s as f64) <= hi)
            .count(),
        None => 0,
    };
    Ok(1.0 - inside as f64 / scores.len() as f64)
}

/// A fixed number of equal-width bins over `[lo, hi]` whose range doubles on demand.
#[derive(Debug, Clone)]
struct Bins {
    lo: f64,
    hi: f64,
    n: usize,
}

impl Bins {
    fn new(metric: &'static str, lo: f32, hi: f32, bins: usize) -> Result<Bins> {
        if !(lo.is_finite() && hi.is_finite() && hi > lo) {
            return Err(metric_err(
                metric,
                format!("score range [{lo}, {hi}] is empty or not finite"),
            ));
        }
        if bins < 2 || !bins.is_multiple_of(2) {
            return Err(metric_err(
                metric,
                format!("bin count {bins} must be even and at least 2"),
            ));
        }
        Ok(Bins {
            lo: lo as f64,
            hi: hi as f64,
            n: bins,
        })
    }

    /// Doubles of the range needed so that `v` fits.
    fn doublings_for(&self, v: f64) -> u32 {
        let mut hi = self.hi;
        let mut k = 0;
        while v > hi {
            hi = self.lo + 2.0 * (hi - self.lo);
            k += 1;
        }
        k
    }

    fn index(&self, v: f64) -> usize {
        let t = (v - self.lo) / (self.hi - self.lo) * self.n as f64;
        if t <= 0.0 {
            0
        } else {
            (t as usize).min(self.n - 1)
        }
    }
}

/// Merges neighbouring pairs of bins in place: bin `i` becomes old bins `2i` and `2i+1`.
fn merge_pairs<T: Copy + Default + std::ops::Add<Output = T>>(h: &mut [T]) {
    let n = h.len();
    for i in 0..n / 2 {
        h[i] = h[2 * i] + h[2 * i + 1];
    }
    for x in &mut h[n / 2..] {
        *x = T::default();
    }
}

fn check_map(metric: &'static str, map: &[f32], mask: Option<&[bool]>) -> Result<f32> {
    if let Some(m) = mask {
        if m.len() != map.len() {
            return Err(Error::Shape {
                op: metric,
                expected: format!("mask of {} pixels (the map's size)", map.len()),
                got: m.len().to_string(),
            });
        }
    }
    let mut max = f32::NEG_INFINITY;
    for (i, &v) in map.iter().enumerate() {
        if !v.is_finite() {
            return Err(metric_err(
                metric,
                format!("map value {i} is not finite ({v})"),
            ));
        }
        max = max.max(v);
    }
    Ok(max)
}

/// Streaming pixel AUROC over binned scores.
///
/// ```
/// use fabric_inspect::metrics::PixelRoc;
/// let mut roc = PixelRoc::new(0.0, 1.0, 1000).unwrap();
/// roc.add(&[0.1, 0.9, 0.2, 0.8], Some(&[false, true, false, true])).unwrap();
/// assert_eq!(roc.auroc().unwrap(), 1.0);
/// ```
#[derive(Debug, Clone)]
pub struct PixelRoc {
    bins: Bins,
    pos: Vec<u64>,
    neg: Vec<u64>,
}

impl PixelRoc {
    /// An empty accumulator with `bins` (even, ≥ 2) bins over `[lo, hi]`.
    pub fn new(lo: f32, hi: f32, bins: usize) -> Result<PixelRoc> {
        let bins = Bins::new("pixel AUROC", lo, hi, bins)?;
        Ok(PixelRoc {
            pos: vec![0; bins.n],
            neg: vec![0; bins.n],
            bins,
        })
    }

    /// Adds one image: its anomaly map and its mask (true = defect pixel, same length);
    /// `None` means every pixel is normal.
    pub fn add(&mut self, map: &[f32], mask: Option<&[bool]>) -> Result<()> {
        let max = check_map("pixel AUROC", map, mask)?;
        for _ in 0..self.bins.doublings_for(max as f64) {
            merge_pairs(&mut self.pos);
            merge_pairs(&mut self.neg);
            self.bins.hi = self.bins.lo + 2.0 * (self.bins.hi - self.bins.lo);
        }
        for (i, &v) in map.iter().enumerate() {
            let b = self.bins.index(v as f64);
            if mask.is_some_and(|m| m[i]) {
                self.pos[b] += 1;
            } else {
                self.neg[b] += 1;
            }
        }
        Ok(())
    }

    /// Number of defect and normal pixels added so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.pos.iter().sum(), self.neg.iter().sum())
    }

    /// Current upper end of the binned range (grows when larger values arrive).
    pub fn range(&self) -> (f32, f32) {
        (self.bins.lo as f32, self.bins.hi as f32)
    }

    /// Area under the pixel ROC curve, pixels in one bin counting as ties. Fails when no
    /// defect pixel or no normal pixel was added.
    pub fn auroc(&self) -> Result<f64> {
        let (p, n) = self.counts();
        if p == 0 || n == 0 {
            return Err(metric_err(
                "pixel AUROC",
                format!("needs both normal and defect pixels, got {n} normal and {p} defect"),
            ));
        }
        let mut neg_below = 0u64;
        let mut u = 0.0f64;
        for (&pb, &nb) in self.pos.iter().zip(&self.neg) {
            u += pb as f64 * (neg_below as f64 + 0.5 * nb as f64);
            neg_below += nb;
        }
        Ok(u / (p as f64 * n as f64))
    }
}

/// Labels the 8-connected components of `mask` (`width × height`, row-major).
///
/// Returns one label per pixel (0 = background, 1..=count for the components, numbered in
/// raster order of their first pixel) and the component count.
pub fn connected_components(mask: &[bool], width: usize, height: usize) -> Result<(Vec<u32>, u32)> {
    if mask.len() != width * height {
        return Err(Error::Shape {
            op: "connected components",
            expected: format!("{width}×{height} = {} mask pixels", width * height),
            got: mask.len().to_string(),
        });
    }
    let mut labels = vec![0u32; mask.len()];
    let mut count = 0u32;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        count += 1;
        labels[start] = count;
        stack.push(start);
        while let Some(p) = stack.pop() {
            let (x, y) = ((p % width) as isize, (p / width) as isize);
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= width as isize || ny >= height as isize {
                        continue;
                    }
                    let q = ny as usize * width + nx as usize;
                    if mask[q] && labels[q] == 0 {
                        labels[q] = count;
                        stack.push(q);
                    }
                }
            }
        }
    }
    Ok((labels, count))
}

/// Streaming, binned AU-PRO (per-region overlap pooled over the test set).
///
/// ```
/// use fabric_inspect::metrics::ProCurve;
/// let mut pro = ProCurve::new(0.0, 1.0, 1000).unwrap();
/// // 2×2 image, one defect pixel scored highest: a perfect map.
/// pro.add(&[0.1, 0.9, 0.2, 0.3], Some(&[false, true, false, false]), 2, 2).unwrap();
/// assert!((pro.au_pro(0.3).unwrap() - 1.0).abs() < 1e-9);
/// ```
#[derive(Debug, Clone)]
pub struct ProCurve {
    bins: Bins,
    /// Normal pixels per bin.
    neg: Vec<u64>,
    /// Sum over region pixels of `1 / area of their region`, per bin.
    region: Vec<f64>,
    regions: u64,
}

impl ProCurve {
    /// An empty accumulator with `bins` (even, ≥ 2) thresholds over `[lo, hi]`.
    pub fn new(lo: f32, hi: f32, bins: usize) -> Result<ProCurve> {
        let bins = Bins::new("AU-PRO", lo, hi, bins)?;
        Ok(ProCurve {
            neg: vec![0; bins.n],
            region: vec![0.0; bins.n],
            regions: 0,
            bins,
        })
    }

    /// Adds one `width × height` image: its map and its mask (true = defect; `None` = all
    /// normal). The mask's 8-connected components are its regions.
    pub fn add(
        &mut self,
        map: &[f32],
        mask: Option<&[bool]>,
        width: usize,
        height: usize,
    ) -> Result<()> {
        if map.len() != width * height {
            return Err(Error::Shape {
                op: "AU-PRO",
                expected: format!("{width}×{height} = {} map values", width * height),
                got: map.len().to_string(),
            });
        }
        let max = check_map("AU-PRO", map, mask)?;
        for _ in 0..self.bins.doublings_for(max as f64) {
            merge_pairs(&mut self.neg);
            merge_pairs(&mut self.region);
            self.bins.hi = self.bins.lo + 2.0 * (self.bins.hi - self.bins.lo);
        }
        let Some(mask) = mask else {
            for &v in map {
                self.neg[self.bins.index(v as f64)] += 1;
            }
            return Ok(());
        };
        let (labels, count) = connected_components(mask, width, height)?;
        let mut area = vec![0u64; count as usize + 1];
        for &l in &labels {
            area[l as usize] += 1;
        }
        for (&v, &l) in map.iter().zip(&labels) {
            let b = self.bins.index(v as f64);
            if l == 0 {
                self.neg[b] += 1;
            } else {
                self.region[b] += 1.0 / area[l as usize] as f64;
            }
        }
        self.regions += count as u64;
        Ok(())
    }

    /// Number of ground-truth regions added so far.
    pub fn regions(&self) -> u64 {
        self.regions
    }

    /// The (FPR, PRO) curve from the highest threshold (0, 0) down to the lowest (1, 1),
    /// one point per bin edge.
    pub fn curve(&self) -> Result<Vec<(f64, f64)>> {
        let n: u64 = self.neg.iter().sum();
        if self.regions == 0 || n == 0 {
            return Err(metric_err(
                "AU-PRO",
                format!(
                    "needs defect regions and normal pixels, got {} regions and {n} normal pixels",
                    self.regions
                ),
            ));
        }
        let mut pts = Vec::with_capacity(self.bins.n + 1);
        pts.push((0.0, 0.0));
        let (mut fp, mut ov) = (0u64, 0.0f64);
        for b in (0..self.bins.n).rev() {
            fp += self.neg[b];
            ov += self.region[b];
            pts.push((fp as f64 / n as f64, ov / self.regions as f64));
        }
        Ok(pts)
    }

    /// Area under the PRO curve for FPR from 0 to `fpr_limit` (trapezoids, the curve
    /// linearly interpolated at the limit), divided by `fpr_limit`: 1 for a perfect map.
    pub fn au_pro(&self, fpr_limit: f64) -> Result<f64> {
        if !(fpr_limit > 0.0 && fpr_limit <= 1.0) {
            return Err(metric_err(
                "AU-PRO",
                format!("FPR limit {fpr_limit} is not in (0, 1]"),
            ));
        }
        let pts = self.curve()?;
        let mut area = 0.0;
        for w in pts.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            if x0 >= fpr_limit {
                break;
            }
            if x1 <= fpr_limit {
                area += (x1 - x0) * (y0 + y1) / 2.0;
            } else {
                let y = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0);
                area += (fpr_limit - x0) * (y0 + y) / 2.0;
                break;
            }
        }
        Ok(area / fpr_limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// A small deterministic generator for test data (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next_f32(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// Exact AUROC by counting every (defective, normal) pair.
    fn pairwise_auroc(scores: &[f32], labels: &[bool]) -> f64 {
        let mut u = 0.0;
        let mut pairs = 0.0;
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if labels[i] && !labels[j] {
                    pairs += 1.0;
                    u += if si > sj {
                        1.0
                    } else if si == sj {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        u / pairs
    }

    #[test]
    fn image_auroc_hand_cases() {
        let l = [false, false, true, true];
        assert_eq!(image_auroc(&[0.1, 0.2, 0.3, 0.4], &l).unwrap(), 1.0);
        assert_eq!(image_auroc(&[0.4, 0.3, 0.2, 0.1], &l).unwrap(), 0.0);
        // pairs (pos, neg): (0.3,0.1)=1 (0.3,0.4)=0 (0.2,0.1)=1 (0.2,0.4)=0 → 2/4
        assert_eq!(image_auroc(&[0.1, 0.4, 0.3, 0.2], &l).unwrap(), 0.5);
        // ties: pos {0.5, 0.7}, neg {0.5, 0.2}: (0.5,0.5)=½ (0.5,0.2)=1 (0.7,·)=2 → 3.5/4
        let s = [0.5, 0.2, 0.5, 0.7];
        assert_eq!(image_auroc(&s, &l).unwrap(), 0.875);
        assert_eq!(image_auroc(&[0.3; 4], &l).unwrap(), 0.5);
    }

    #[test]
    fn image_auroc_matches_pairwise_count_with_many_ties() {
        let mut r = Rng(7);
        let scores: Vec<f32> = (0..200).map(|_| (r.next_f32() * 10.0).floor()).collect();
        let labels: Vec<bool> = (0..200).map(|_| r.next_f32() < 0.4).collect();
        let a = image_auroc(&scores, &labels).unwrap();
        assert!(close(a, pairwise_auroc(&scores, &labels), 1e-12), "{a}");
    }

    #[test]
    fn image_auroc_errors() {
        let e = image_auroc(&[0.1, 0.2], &[true, true]).unwrap_err();
        assert!(matches!(e, Error::Metric { .. }));
        assert!(e.to_string().contains("0 normal"), "{e}");
        assert!(image_auroc(&[0.1, 0.2], &[false, false]).is_err());
        assert!(image_auroc(&[], &[]).is_err());
        assert!(matches!(
            image_auroc(&[0.1], &[true, false]),
            Err(Error::Shape { .. })
        ));
        assert!(image_auroc(&[f32::NAN, 0.1], &[true, false]).is_err());
    }

    #[test]
    fn pixel_auroc_binned_agrees_with_exact() {
        let mut r = Rng(11);
        let mut roc = PixelRoc::new(0.0, 1.0, 20_000).unwrap();
        let mut all_s = Vec::new();
        let mut all_l = Vec::new();
        for _ in 0..3 {
            let mask: Vec<bool> = (0..400).map(|_| r.next_f32() < 0.3).collect();
            let map: Vec<f32> = mask
                .iter()
                .map(|&m| r.next_f32() * 0.7 + if m { 0.3 } else { 0.0 })
                .collect();
            roc.add(&map, Some(&mask)).unwrap();
            all_s.extend_from_slice(&map);
            all_l.extend_from_slice(&mask);
        }
        let normal: Vec<f32> = (0..400).map(|_| r.next_f32() * 0.7).collect();
        roc.add(&normal, None).unwrap();
        all_s.extend_from_slice(&normal);
        all_l.extend(std::iter::repeat_n(false, normal.len()));
        let exact = image_auroc(&all_s, &all_l).unwrap();
        let binned = roc.auroc().unwrap();
        assert!(exact > 0.6 && exact < 0.95, "{exact}");
        assert!(close(exact, binned, 1e-3), "exact {exact} binned {binned}");
        assert_eq!(roc.counts().0 + roc.counts().1, 1600);
    }

    #[test]
    fn pixel_auroc_hand_case_and_range_growth() {
        // neg {0.1, 0.3}, pos {0.3, 2.5}. The range starts at [0, 1] with 4 bins; 2.5
        // doubles it twice to [0, 4] (bin width 1): 0.1 and 0.3 share bin 0, 2.5 is in bin 2.
        let mut roc = PixelRoc::new(0.0, 1.0, 4).unwrap();
        roc.add(&[0.1, 0.3], None).unwrap();
        roc.add(&[0.3, 2.5], Some(&[true, true])).unwrap();
        assert_eq!(roc.range(), (0.0, 4.0));
        // pos in bin 0 vs 2 neg in bin 0: ties → 1; pos in bin 2: beats both → 2. 3/4.
        assert_eq!(roc.auroc().unwrap(), 0.75);
        // Without growth (fine bins) the exact value: (0.3 vs 0.1)=1, (0.3 vs 0.3)=½, 2.5=2.
        let mut fine = PixelRoc::new(0.0, 4.0, 4000).unwrap();
        fine.add(&[0.1, 0.3], None).unwrap();
        fine.add(&[0.3, 2.5], Some(&[true, true])).unwrap();
        assert_eq!(fine.auroc().unwrap(), 0.875);
    }

    #[test]
    fn pixel_auroc_errors() {
        let mut roc = PixelRoc::new(0.0, 1.0, 10).unwrap();
        roc.add(&[0.1, 0.2], None).unwrap();
        assert!(matches!(roc.auroc(), Err(Error::Metric { .. })));
        assert!(roc.add(&[0.1], Some(&[true, false])).is_err());
        assert!(roc.add(&[f32::NAN], None).is_err());
        assert!(PixelRoc::new(1.0, 1.0, 10).is_err());
        assert!(PixelRoc::new(0.0, 1.0, 3).is_err());
    }

    #[test]
    fn components_use_eight_connectivity() {
        // 1 1 0 0
        // 0 0 1 0   ← diagonal touch joins the first blob
        // 0 0 0 0
        // 1 0 0 1
        let m: Vec<bool> = [1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1]
            .iter()
            .map(|&v| v == 1)
            .collect();
        let (labels, n) = connected_components(&m, 4, 4).unwrap();
        assert_eq!(n, 3);
        assert_eq!(labels[0], labels[6]);
        assert_ne!(labels[12], labels[15]);
        assert_eq!(labels[2], 0);
        assert!(connected_components(&m, 3, 4).is_err());
    }

    /// Exact AU-PRO: thresholds at every distinct score.
    fn exact_au_pro(images: &[(Vec<f32>, Vec<bool>, usize, usize)], limit: f64) -> f64 {
        let mut thresholds: Vec<f32> = images.iter().flat_map(|i| i.0.clone()).collect();
        thresholds.sort_by(|a, b| b.total_cmp(a));
        thresholds.dedup();
        let mut pts = vec![(0.0, 0.0)];
        for &t in &thresholds {
            let (mut fp, mut n, mut ov, mut regions) = (0.0, 0.0, 0.0, 0.0);
            for (map, mask, w, h) in images {
                let (labels, count) = connected_components(mask, *w, *h).unwrap();
                for r in 1..=count {
                    let area = labels.iter().filter(|&&l| l == r).count() as f64;
                    let tp = labels
                        .iter()
                        .zip(map)
                        .filter(|(&l, &v)| l == r && v >= t)
                        .count() as f64;
                    ov += tp / area;
                    regions += 1.0;
                }
                for (&l, &v) in labels.iter().zip(map) {
                    if l == 0 {
                        n += 1.0;
                        if v >= t {
                            fp += 1.0;
                        }
                    }
                }
            }
            pts.push((fp / n, ov / regions));
        }
        let mut area = 0.0;
        for w in pts.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            if x0 >= limit {
                break;
            }
            if x1 <= limit {
                area += (x1 - x0) * (y0 + y1) / 2.0;
            } else {
                let y = y0 + (y1 - y0) * (limit - x0) / (x1 - x0);
                area += (limit - x0) * (y0 + y) / 2.0;
                break;
            }
        }
        area / limit
    }

    fn square_mask(w: usize, h: usize, x0: usize, y0: usize, s: usize) -> Vec<bool> {
        (0..w * h)
            .map(|p| {
                let (x, y) = (p % w, p / w);
                x >= x0 && x < x0 + s && y >= y0 && y < y0 + s
            })
            .collect()
    }

    #[test]
    fn au_pro_perfect_map_is_one() {
        let mask = square_mask(16, 16, 4, 4, 5);
        let map: Vec<f32> = mask.iter().map(|&m| if m { 0.9 } else { 0.1 }).collect();
        let mut pro = ProCurve::new(0.0, 1.0, 100).unwrap();
        pro.add(&map, Some(&mask), 16, 16).unwrap();
        assert_eq!(pro.regions(), 1);
        assert!(close(pro.au_pro(0.3).unwrap(), 1.0, 1e-12));
    }

    #[test]
    fn au_pro_random_map_is_small() {
        let mut r = Rng(3);
        let mask = square_mask(64, 64, 10, 20, 16);
        let map: Vec<f32> = (0..64 * 64).map(|_| r.next_f32()).collect();
        let mut pro = ProCurve::new(0.0, 1.0, 1000).unwrap();
        pro.add(&map, Some(&mask), 64, 64).unwrap();
        // A map unrelated to the mask gives PRO ≈ FPR: area 0.3²/2, normalised 0.15.
        let v = pro.au_pro(0.3).unwrap();
        assert!(v > 0.1 && v < 0.2, "{v}");
    }

    #[test]
    fn au_pro_hand_case() {
        // 4×1 image: pixels [a a n n], one region of 2 pixels with scores 0.8 and 0.4,
        // normal pixels 0.6 and 0.2. Thresholds from high to low:
        //   t=0.8: PRO ½, FPR 0   t=0.6: PRO ½, FPR ½   t=0.4: PRO 1, FPR ½
        // Curve (0,0)→(0,½)→(½,½)→(½,1)→(1,1). To FPR 0.3: area 0.3·½ = 0.15; /0.3 = 0.5.
        let map = [0.8, 0.4, 0.6, 0.2];
        let mask = [true, true, false, false];
        let mut pro = ProCurve::new(0.0, 1.0, 10).unwrap();
        pro.add(&map, Some(&mask), 4, 1).unwrap();
        assert!(close(pro.au_pro(0.3).unwrap(), 0.5, 1e-12));
        // Up to FPR 1: 0.5·0.5 + 0.5·1 = 0.75.
        assert!(close(pro.au_pro(1.0).unwrap(), 0.75, 1e-12));
        let exact = exact_au_pro(&[(map.to_vec(), mask.to_vec(), 4, 1)], 0.3);
        assert!(close(exact, 0.5, 1e-12));
    }

    #[test]
    fn au_pro_weights_regions_equally_and_pools_images() {
        // Image 1: a big region (9 px) fully detected; image 2: a 1-px region missed
        // (scored below every normal pixel). PRO = ½ at every FPR < 1 → AU-PRO ½, although
        // 9 of the 10 defect pixels are found.
        let mask1 = square_mask(8, 8, 0, 0, 3);
        let map1: Vec<f32> = mask1.iter().map(|&m| if m { 0.9 } else { 0.5 }).collect();
        let mask2 = square_mask(8, 8, 6, 6, 1);
        let map2: Vec<f32> = mask2.iter().map(|&m| if m { 0.1 } else { 0.5 }).collect();
        let mut pro = ProCurve::new(0.0, 1.0, 50).unwrap();
        pro.add(&map1, Some(&mask1), 8, 8).unwrap();
        pro.add(&map2, Some(&mask2), 8, 8).unwrap();
        assert_eq!(pro.regions(), 2);
        assert!(close(pro.au_pro(0.3).unwrap(), 0.5, 1e-12));
    }

    #[test]
    fn au_pro_binned_agrees_with_exact_on_random_case() {
        let mut r = Rng(5);
        let mut images = Vec::new();
        for k in 0..3 {
            let mask = if k == 2 {
                vec![false; 24 * 24]
            } else {
                let mut m = square_mask(24, 24, 2 + 5 * k, 3, 6);
                for (i, v) in square_mask(24, 24, 15, 14, 4 + k).into_iter().enumerate() {
                    m[i] |= v;
                }
                m
            };
            let map: Vec<f32> = mask
                .iter()
                .map(|&m| r.next_f32() * 0.6 + if m { 0.35 } else { 0.0 })
                .collect();
            images.push((map, mask, 24, 24));
        }
        let mut pro = ProCurve::new(0.0, 0.5, 20_000).unwrap(); // grows to [0, 1]
        for (map, mask, w, h) in &images {
            let m = if mask.iter().any(|&v| v) {
                Some(mask.as_slice())
            } else {
                None
            };
            pro.add(map, m, *w, *h).unwrap();
        }
        assert_eq!(pro.regions(), 4);
        let exact = exact_au_pro(&images, 0.3);
        let binned = pro.au_pro(0.3).unwrap();
        assert!(exact > 0.2 && exact < 0.95, "{exact}");
        assert!(close(exact, binned, 1e-3), "exact {exact} binned {binned}");
    }

    #[test]
    fn au_pro_errors() {
        let mut pro = ProCurve::new(0.0, 1.0, 10).unwrap();
        pro.add(&[0.1, 0.2], None, 2, 1).unwrap();
        assert!(matches!(pro.au_pro(0.3), Err(Error::Metric { .. })));
        assert!(pro.add(&[0.1, 0.2], None, 3, 1).is_err());
        pro.add(&[0.1, 0.2], Some(&[true, false]), 2, 1).unwrap();
        assert!(pro.au_pro(0.3).is_ok());
        assert!(pro.au_pro(0.0).is_err());
    }

    #[test]
    fn coverage_wide_gap_is_full_at_every_delta() {
        let s = [0.0, 0.1, 0.3, 0.7, 0.9, 1.0];
        let l = [false, false, false, true, true, true];
        for d in COVERAGE_DELTAS {
            assert_eq!(coverage(&s, &l, d).unwrap(), 1.0, "δ={d}");
        }
    }

    #[test]
    fn coverage_narrow_gap_is_full_only_at_zero() {
        // a = 0.50 (highest normal), b = 0.51 (lowest defective).
        let s = [0.0, 0.2, 0.50, 0.51, 0.8, 1.0];
        let l = [false, false, false, true, true, true];
        assert_eq!(coverage(&s, &l, 0.0).unwrap(), 1.0);
        // δ = 0.02: band [0.49, 0.52] holds 0.50 and 0.51 → 4/6.
        let c = coverage(&s, &l, 0.02).unwrap();
        assert!(close(c, 4.0 / 6.0, 1e-12), "{c}");
        assert!(coverage(&s, &l, 0.05).unwrap() <= c);
    }

    #[test]
    fn coverage_with_overlap() {
        // a = 0.6 > b = 0.4: band [0.4, 0.6] at δ 0 holds 0.4, 0.5, 0.6 → 1 − 3/6.
        let s = [0.0, 0.5, 0.6, 0.4, 0.9, 1.0];
        let l = [false, false, false, true, true, true];
        assert!(close(coverage(&s, &l, 0.0).unwrap(), 0.5, 1e-12));
        // δ 0.05: band [0.35, 0.65], same three images.
        assert!(close(coverage(&s, &l, 0.05).unwrap(), 0.5, 1e-12));
        assert!(coverage(&s, &[true; 6], 0.0).is_err());
        assert!(coverage(&s, &l, -0.1).is_err());
    }

    #[test]
    fn min_max_normalise_maps_to_unit_range() {
        assert_eq!(min_max_normalise(&[2.0, 4.0, 3.0]), vec![0.0, 1.0, 0.5]);
        assert_eq!(min_max_normalise(&[5.0, 5.0]), vec![0.0, 0.0]);
        assert!(min_max_normalise(&[]).is_empty());
    }
}
