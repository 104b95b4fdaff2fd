//! Built-in synthetic woven fabric: textures, defects with pixel masks, and datasets.
//!
//! The generator lets a fresh checkout run the whole pipeline (train, export, inspect)
//! without any real images. Everything is seeded and deterministic: the same
//! [`FabricSpec`], size and seed give the same pixels, whatever the thread count, because
//! every random value is a hash of the seed and a position rather than a draw from a
//! shared stream.
//!
//! A fabric is drawn as interlaced yarns: warp yarns run vertically (one per `period`
//! pixels of width), weft yarns horizontally. The [`Weave`] decides, at every crossing,
//! which of the two lies on top. Each visible yarn segment is shaded as a round thread
//! (bright along its middle, dark at its edges and where it dips under the next yarn),
//! every yarn gets a small brightness variation, the whole image gets a mild illumination
//! gradient and vignette, and pixel noise is added last.
//!
//! [`add_defect`] paints one [`Defect`] (broken yarn, hole, stain, knot) into an image and
//! returns its mask (255 = defect). [`write_dataset`] writes an MVTec-AD-layout category;
//! [`write_frame`] writes one large camera frame with several defects and its mask.

use crate::fsutil::atomic_write;
use crate::{Error, Result};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rayon::prelude::*;
use std::f32::consts::PI;
use std::path::{Path, PathBuf};

/// Weave pattern: which yarn lies on top at each warp/weft crossing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Weave {
    /// Plain (tabby) weave: over one, under one; repeats every 2 yarns.
    Plain,
    /// 2/2 twill: over two, under two, shifted by one yarn per row (diagonal ribs);
    /// repeats every 4 yarns.
    Twill,
    /// Plain weave whose warp alternates between two colours in bands (vertical stripes).
    Striped,
}

impl Weave {
    /// All weaves, in a fixed order.
    pub const ALL: [Weave; 3] = [Weave::Plain, Weave::Twill, Weave::Striped];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Weave::Plain => "plain",
            Weave::Twill => "twill",
            Weave::Striped => "striped",
        }
    }

    /// Number of yarns after which the interlacing repeats (in both directions).
    pub fn repeat_yarns(self) -> u32 {
        match self {
            Weave::Plain | Weave::Striped => 2,
            Weave::Twill => 4,
        }
    }

    /// Whether the warp (vertical) yarn lies on top at crossing (warp `i`, weft `j`).
    fn warp_on_top(self, i: i64, j: i64) -> bool {
        match self {
            Weave::Plain | Weave::Striped => (i + j).rem_euclid(2) == 0,
            Weave::Twill => (i + j).rem_euclid(4) < 2,
        }
    }
}

impl std::str::FromStr for Weave {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "plain" => Ok(Weave::Plain),
            "twill" => Ok(Weave::Twill),
            "striped" => Ok(Weave::Striped),
            _ => Err(format!(
                "unknown weave `{s}` (expected plain, twill or striped)"
            )),
        }
    }
}

impl std::fmt::Display for Weave {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Description of one fabric: weave, yarn pitch, colours and imaging conditions.
///
/// Images generated from one spec with different seeds are different pieces of the same
/// cloth (other weave phase, noise and light), as a training set needs.
#[derive(Debug, Clone, PartialEq)]
pub struct FabricSpec {
    /// Weave pattern.
    pub weave: Weave,
    /// Yarn pitch in pixels (distance between neighbouring yarn centres), at least 3.
    pub period: u32,
    /// Warp (vertical yarn) colour.
    pub warp: [u8; 3],
    /// Weft (horizontal yarn) colour.
    pub weft: [u8; 3],
    /// Second warp colour of [`Weave::Striped`] (unused by the other weaves).
    pub stripe: [u8; 3],
    /// Width of one stripe band, in warp yarns.
    pub stripe_yarns: u32,
    /// Relative yarn-to-yarn brightness variation (0.05 = ±5 %).
    pub yarn_jitter: f32,
    /// Strength of the illumination gradient and vignette (0 = flat light).
    pub illumination: f32,
    /// Standard deviation of the pixel noise, in grey levels.
    pub noise: f32,
}

impl FabricSpec {
    /// A fixed, good-looking preset for each weave: beige linen (plain), indigo denim
    /// (twill), red and cream shirting (striped).
    pub fn preset(weave: Weave) -> Self {
        let (period, warp, weft, stripe) = match weave {
            Weave::Plain => (8, [206, 194, 170], [188, 176, 154], [0, 0, 0]),
            Weave::Twill => (6, [48, 70, 122], [196, 196, 188], [0, 0, 0]),
            Weave::Striped => (8, [176, 44, 48], [226, 220, 204], [232, 228, 214]),
        };
        FabricSpec {
            weave,
            period,
            warp,
            weft,
            stripe,
            stripe_yarns: 6,
            yarn_jitter: 0.05,
            illumination: 0.12,
            noise: 4.0,
        }
    }

    /// The preset of `weave` with yarn colours and pitch drawn from `seed`.
    pub fn random(weave: Weave, seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x5eed_fab1);
        let mut colour = || {
            [
                rng.range(30.0, 235.0) as u8,
                rng.range(30.0, 235.0) as u8,
                rng.range(30.0, 235.0) as u8,
            ]
        };
        let warp = colour();
        let weft = colour();
        let stripe = colour();
        let mut spec = FabricSpec::preset(weave);
        spec.warp = warp;
        spec.weft = weft;
        spec.stripe = stripe;
        spec.period = 5 + (rng.next_u64() % 6) as u32;
        spec
    }

    /// Period of the texture in pixels, in both directions (weave repeat × yarn pitch).
    pub fn repeat_px(&self) -> u32 {
        self.weave.repeat_yarns() * self.period.max(3)
    }
}

/// A kind of fabric defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Defect {
    /// A yarn missing over a stretch: a thin dark gap along one yarn direction, with a
    /// loose bright tuft at its end.
    BrokenYarn,
    /// A hole: an irregular dark opening with a frayed rim.
    Hole,
    /// A stain: an irregular, soft-edged discoloured patch; the texture shows through.
    Stain,
    /// A knot: a small raised lump of yarn, shaded as a bump.
    Knot,
}

impl Defect {
    /// All defect kinds, in a fixed order.
    pub const ALL: [Defect; 4] = [
        Defect::BrokenYarn,
        Defect::Hole,
        Defect::Stain,
        Defect::Knot,
    ];

    /// Folder and command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Defect::BrokenYarn => "broken_yarn",
            Defect::Hole => "hole",
            Defect::Stain => "stain",
            Defect::Knot => "knot",
        }
    }
}

impl std::str::FromStr for Defect {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "broken_yarn" | "broken-yarn" => Ok(Defect::BrokenYarn),
            "hole" => Ok(Defect::Hole),
            "stain" => Ok(Defect::Stain),
            "knot" => Ok(Defect::Knot),
            _ => Err(format!(
                "unknown defect `{s}` (expected broken_yarn, hole, stain or knot)"
            )),
        }
    }
}

impl std::fmt::Display for Defect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Renders a defect-free piece of `spec`'s fabric of `width`×`height` pixels.
///
/// The seed sets the weave phase, the yarn brightness variation, the light and the noise.
/// Rows are rendered in parallel; the result does not depend on the thread count.
pub fn generate(spec: &FabricSpec, width: u32, height: u32, seed: u64) -> RgbImage {
    let mut rng = Rng::new(seed);
    let p = spec.period.max(3) as i64;
    let repeat = (spec.weave.repeat_yarns() as i64) * p;
    let stripe_repeat = 2 * spec.stripe_yarns.max(1) as i64 * p;
    // Phase offsets: a multiple of nothing in particular, so that pieces differ.
    let ox = (rng.next_u64() % (stripe_repeat * repeat) as u64) as i64;
    let oy = (rng.next_u64() % (stripe_repeat * repeat) as u64) as i64;
    let gx = rng.range(-1.0, 1.0) * spec.illumination;
    let gy = rng.range(-1.0, 1.0) * spec.illumination;
    let vignette = rng.range(0.3, 1.0) * spec.illumination;
    let yarn_seed = rng.next_u64();
    let noise_seed = rng.next_u64();

    let (w, h) = (width as usize, height as usize);
    let mut buf = vec![0u8; w * h * 3];
    buf.par_chunks_mut((w * 3).max(1))
        .enumerate()
        .for_each(|(y, row)| {
            let yy = y as i64 + oy;
            let j = yy.div_euclid(p);
            let v = (yy.rem_euclid(p) as f32 + 0.5) / p as f32;
            let weft_gain = 1.0 + spec.yarn_jitter * hash_signed(yarn_seed ^ 0x77, j as u64);
            let fy = (y as f32 + 0.5) / h.max(1) as f32 - 0.5;
            for x in 0..w {
                let xx = x as i64 + ox;
                let i = xx.div_euclid(p);
                let u = (xx.rem_euclid(p) as f32 + 0.5) / p as f32;
                let warp_gain = 1.0 + spec.yarn_jitter * hash_signed(yarn_seed, i as u64);
                let (colour, shade) = if spec.weave.warp_on_top(i, j) {
                    let c = if spec.weave == Weave::Striped
                        && i.div_euclid(spec.stripe_yarns.max(1) as i64).rem_euclid(2) == 1
                    {
                        spec.stripe
                    } else {
                        spec.warp
                    };
                    (c, yarn_shade(u, v) * warp_gain)
                } else {
                    (spec.weft, yarn_shade(v, u) * weft_gain)
                };
                let fx = (x as f32 + 0.5) / w.max(1) as f32 - 0.5;
                let light = 1.0 + gx * fx + gy * fy - vignette * (fx * fx + fy * fy);
                let n = spec.noise * hash_gauss(noise_seed, (y * w + x) as u64);
                for c in 0..3 {
                    let value = colour[c] as f32 * shade * light + n;
                    row[x * 3 + c] = value.round().clamp(0.0, 255.0) as u8;
                }
            }
        });
    RgbImage::from_raw(width, height, buf).unwrap_or_else(|| RgbImage::new(width, height))
}

/// Brightness of a yarn segment at position `across` (0..1 across the yarn) and `along`
/// (0..1 along the crossing cell): round-thread profile, darker where it dips under.
fn yarn_shade(across: f32, along: f32) -> f32 {
    let profile = (PI * across).sin().max(0.0).powf(0.6);
    let dip = (PI * along).sin().max(0.0).powf(0.5);
    0.42 + 0.58 * profile * (0.78 + 0.22 * dip)
}

/// Paints one `defect` into `img` at a position drawn from `seed` and returns its mask
/// (same size, 255 inside the defect, 0 elsewhere).
///
/// Pixels change only inside the mask and within a few pixels of it (soft stain edges).
/// The defect's size is scaled down on images smaller than 128 pixels a side.
pub fn add_defect(img: &mut RgbImage, defect: Defect, seed: u64) -> GrayImage {
    let mut rng = Rng::new(seed ^ 0xdef3c7);
    let (w, h) = img.dimensions();
    let margin_x = (w as f32 * 0.2).min(64.0);
    let margin_y = (h as f32 * 0.2).min(64.0);
    let cx = rng.range(margin_x, (w as f32 - margin_x).max(margin_x + 1.0));
    let cy = rng.range(margin_y, (h as f32 - margin_y).max(margin_y + 1.0));
    add_defect_at(img, defect, cx, cy, seed)
}

/// Like [`add_defect`], centred at pixel (`cx`, `cy`).
pub fn add_defect_at(img: &mut RgbImage, defect: Defect, cx: f32, cy: f32, seed: u64) -> GrayImage {
    let (w, h) = img.dimensions();
    let mut mask = GrayImage::new(w, h);
    if w == 0 || h == 0 {
        return mask;
    }
    let mut rng = Rng::new(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x0d3f);
    let scale = (w.min(h) as f32 / 128.0).min(1.0);
    match defect {
        Defect::BrokenYarn => broken_yarn(img, &mut mask, cx, cy, scale, &mut rng),
        Defect::Hole => hole(img, &mut mask, cx, cy, scale, &mut rng),
        Defect::Stain => stain(img, &mut mask, cx, cy, scale, &mut rng),
        Defect::Knot => knot(img, &mut mask, cx, cy, scale, &mut rng),
    }
    // A defect always marks at least its centre pixel.
    let (px, py) = (
        (cx.max(0.0) as u32).min(w - 1),
        (cy.max(0.0) as u32).min(h - 1),
    );
    if mask.get_pixel(px, py)[0] == 0 && mask.pixels().all(|m| m[0] == 0) {
        mask.put_pixel(px, py, Luma([255]));
        let p = img.get_pixel_mut(px, py);
        *p = Rgb([p[0] / 3, p[1] / 3, p[2] / 3]);
    }
    mask
}

/// Irregular blob radius at angle `theta`: `r0` modulated by two random harmonics.
struct Blob {
    r0: f32,
    a3: f32,
    p3: f32,
    a5: f32,
    p5: f32,
}

impl Blob {
    fn new(r0: f32, rng: &mut Rng) -> Self {
        Blob {
            r0,
            a3: rng.range(0.05, 0.25),
            p3: rng.range(0.0, 2.0 * PI),
            a5: rng.range(0.0, 0.12),
            p5: rng.range(0.0, 2.0 * PI),
        }
    }

    fn radius(&self, theta: f32) -> f32 {
        self.r0
            * (1.0
                + self.a3 * (3.0 * theta + self.p3).sin()
                + self.a5 * (5.0 * theta + self.p5).sin())
    }

    /// Largest radius the blob can reach.
    fn extent(&self) -> f32 {
        self.r0 * (1.0 + self.a3 + self.a5)
    }
}

/// Calls `f(x, y, dx, dy)` for every pixel of `img` within `radius` of (`cx`, `cy`).
fn for_disc(w: u32, h: u32, cx: f32, cy: f32, radius: f32, mut f: impl FnMut(u32, u32, f32, f32)) {
    let x0 = (cx - radius).floor().max(0.0) as u32;
    let y0 = (cy - radius).floor().max(0.0) as u32;
    let x1 = ((cx + radius).ceil().max(0.0) as u32).min(w.saturating_sub(1));
    let y1 = ((cy + radius).ceil().max(0.0) as u32).min(h.saturating_sub(1));
    for y in y0..=y1 {
        for x in x0..=x1 {
            let dx = x as f32 + 0.5 - cx;
            let dy = y as f32 + 0.5 - cy;
            if dx * dx + dy * dy <= radius * radius {
                f(x, y, dx, dy);
            }
        }
    }
}

fn scale_px(p: &mut Rgb<u8>, k: [f32; 3], add: f32) {
    for c in 0..3 {
        p[c] = (p[c] as f32 * k[c] + add).round().clamp(0.0, 255.0) as u8;
    }
}

fn broken_yarn(img: &mut RgbImage, mask: &mut GrayImage, cx: f32, cy: f32, s: f32, rng: &mut Rng) {
    let (w, h) = img.dimensions();
    let len = rng.range(40.0, 120.0) * s;
    let half_width = rng.range(1.0, 2.0) * s.max(0.5);
    let vertical = rng.next_u64().is_multiple_of(2);
    let (along_x, along_y) = if vertical { (0.0, 1.0) } else { (1.0, 0.0) };
    // The gap: yarn missing, the darker layer behind shows.
    let reach = len / 2.0 + half_width + 1.0;
    for_disc(w, h, cx, cy, reach, |x, y, dx, dy| {
        let along = dx * along_x + dy * along_y;
        let across = dx * along_y - dy * along_x;
        if along.abs() <= len / 2.0 && across.abs() <= half_width {
            scale_px(img.get_pixel_mut(x, y), [0.45, 0.45, 0.45], 0.0);
            mask.put_pixel(x, y, Luma([255]));
        }
    });
    // The loose end: a bright tuft of fibre at one end of the gap.
    let end = if rng.next_u64().is_multiple_of(2) {
        1.0
    } else {
        -1.0
    };
    let tx = cx + end * along_x * len / 2.0;
    let ty = cy + end * along_y * len / 2.0;
    let tuft = rng.range(2.5, 4.5) * s.max(0.5);
    for_disc(w, h, tx, ty, tuft, |x, y, _, _| {
        scale_px(img.get_pixel_mut(x, y), [1.25, 1.25, 1.25], 25.0);
        mask.put_pixel(x, y, Luma([255]));
    });
}

fn hole(img: &mut RgbImage, mask: &mut GrayImage, cx: f32, cy: f32, s: f32, rng: &mut Rng) {
    let (w, h) = img.dimensions();
    let blob = Blob::new(rng.range(6.0, 16.0) * s.max(0.25), rng);
    let rim = 2.0 * s.max(0.5);
    let dark = rng.range(10.0, 30.0);
    let noise_seed = rng.next_u64();
    for_disc(w, h, cx, cy, blob.extent() + rim, |x, y, dx, dy| {
        let d = (dx * dx + dy * dy).sqrt();
        let r = blob.radius(dy.atan2(dx));
        if d <= r {
            let n = 3.0 * hash_gauss(noise_seed, ((y as u64) << 32) | x as u64);
            let v = (dark + n).clamp(0.0, 255.0) as u8;
            img.put_pixel(x, y, Rgb([v, v, v]));
            mask.put_pixel(x, y, Luma([255]));
        } else if d <= r + rim {
            scale_px(img.get_pixel_mut(x, y), [0.6, 0.6, 0.6], 0.0);
            mask.put_pixel(x, y, Luma([255]));
        }
    });
}

fn stain(img: &mut RgbImage, mask: &mut GrayImage, cx: f32, cy: f32, s: f32, rng: &mut Rng) {
    let (w, h) = img.dimensions();
    let blob = Blob::new(rng.range(14.0, 40.0) * s.max(0.25), rng);
    let edge = 5.0 * s.max(0.4);
    let strength = rng.range(0.45, 0.7);
    // Tints: rust / coffee, oil (dark grey), or a greenish machine-oil cast.
    let tints = [[0.75, 0.55, 0.3], [0.45, 0.43, 0.4], [0.6, 0.7, 0.45]];
    let tint = tints[(rng.next_u64() % tints.len() as u64) as usize];
    for_disc(w, h, cx, cy, blob.extent() + edge, |x, y, dx, dy| {
        let d = (dx * dx + dy * dy).sqrt();
        let r = blob.radius(dy.atan2(dx));
        let inside = ((r + edge - d) / (2.0 * edge)).clamp(0.0, 1.0);
        if inside <= 0.0 {
            return;
        }
        let a = strength * inside;
        let k = [
            1.0 - a * (1.0 - tint[0]),
            1.0 - a * (1.0 - tint[1]),
            1.0 - a * (1.0 - tint[2]),
        ];
        scale_px(img.get_pixel_mut(x, y), k, 0.0);
        if inside >= 0.5 {
            mask.put_pixel(x, y, Luma([255]));
        }
    });
}

fn knot(img: &mut RgbImage, mask: &mut GrayImage, cx: f32, cy: f32, s: f32, rng: &mut Rng) {
    let (w, h) = img.dimensions();
    let rx = rng.range(6.0, 12.0) * s.max(0.4);
    let ry = rx * rng.range(0.6, 1.0);
    let reach = rx.max(ry) + 1.0;
    // Knot colour: the local mean of the fabric, so it reads as the same yarn, bunched.
    let mut sum = [0.0f32; 3];
    let mut n = 0.0f32;
    for_disc(w, h, cx, cy, reach, |x, y, _, _| {
        let p = img.get_pixel(x, y);
        for c in 0..3 {
            sum[c] += p[c] as f32;
        }
        n += 1.0;
    });
    let mean = sum.map(|v| v / n.max(1.0));
    let (lx, ly) = (-0.6f32, -0.6f32); // light from the top left
    let noise_seed = rng.next_u64();
    for_disc(w, h, cx, cy, reach, |x, y, dx, dy| {
        let (ex, ey) = (dx / rx, dy / ry);
        let e2 = ex * ex + ey * ey;
        if e2 > 1.0 {
            return;
        }
        let ez = (1.0 - e2).sqrt();
        let lambert = ((ex * lx + ey * ly + ez * 0.53) / 1.0).max(0.0);
        let fibre = 1.0 + 0.12 * hash_signed(noise_seed, ((y as u64) << 32) | x as u64);
        let shade = (0.45 + 0.95 * lambert) * fibre;
        let p = img.get_pixel_mut(x, y);
        for c in 0..3 {
            p[c] = (mean[c] * shade + 10.0).round().clamp(0.0, 255.0) as u8;
        }
        mask.put_pixel(x, y, Luma([255]));
    });
}

/// What [`write_dataset`] writes.
#[derive(Debug, Clone)]
pub struct DatasetOptions {
    /// The fabric.
    pub spec: FabricSpec,
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
    /// Number of defect-free training images (`train/good`).
    pub train: usize,
    /// Number of defect-free test images (`test/good`).
    pub test_good: usize,
    /// Number of defective test images per defect kind (`test/<defect>`).
    pub test_defect: usize,
    /// Defect kinds to write.
    pub defects: Vec<Defect>,
    /// Seed of the whole dataset.
    pub seed: u64,
}

impl DatasetOptions {
    /// Defaults of the `synth` command: 512×512, 40 train, 10 good and 10 per defect to
    /// test, every defect kind, seed 7.
    pub fn new(spec: FabricSpec) -> Self {
        DatasetOptions {
            spec,
            width: 512,
            height: 512,
            train: 40,
            test_good: 10,
            test_defect: 10,
            defects: Defect::ALL.to_vec(),
            seed: 7,
        }
    }
}

/// Counts of what [`write_dataset`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSummary {
    /// The category folder.
    pub root: PathBuf,
    /// Images in `train/good`.
    pub train: usize,
    /// Images in `test/good`.
    pub test_good: usize,
    /// Images in `test/<defect>` (all kinds), each with its mask.
    pub test_defect: usize,
}

/// One image to write: where, its seed, and its defect if any.
struct Job {
    image: PathBuf,
    mask: Option<PathBuf>,
    defect: Option<Defect>,
    seed: u64,
}

/// Writes an MVTec-AD-layout category under `dir`: `train/good/NNN.png`,
/// `test/good/NNN.png`, `test/<defect>/NNN.png` and `ground_truth/<defect>/NNN_mask.png`.
///
/// Existing files of the same names are replaced (atomically); images are generated and
/// encoded in parallel. The same options give byte-identical files.
pub fn write_dataset(dir: &Path, opts: &DatasetOptions) -> Result<DatasetSummary> {
    let mut jobs = Vec::new();
    let split_seed = |split: u64, k: usize| mix(mix(opts.seed, split), k as u64);
    for k in 0..opts.train {
        jobs.push(Job {
            image: dir.join("train/good").join(format!("{k:03}.png")),
            mask: None,
            defect: None,
            seed: split_seed(1, k),
        });
    }
    for k in 0..opts.test_good {
        jobs.push(Job {
            image: dir.join("test/good").join(format!("{k:03}.png")),
            mask: None,
            defect: None,
            seed: split_seed(2, k),
        });
    }
    for (d, defect) in opts.defects.iter().enumerate() {
        for k in 0..opts.test_defect {
            jobs.push(Job {
                image: dir
                    .join("test")
                    .join(defect.name())
                    .join(format!("{k:03}.png")),
                mask: Some(
                    dir.join("ground_truth")
                        .join(defect.name())
                        .join(format!("{k:03}_mask.png")),
                ),
                defect: Some(*defect),
                seed: split_seed(10 + d as u64, k),
            });
        }
    }
    for job in &jobs {
        for p in std::iter::once(&job.image).chain(job.mask.iter()) {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io("create folder", parent, e))?;
            }
        }
    }
    jobs.par_iter().try_for_each(|job| -> Result<()> {
        let mut img = generate(&opts.spec, opts.width, opts.height, job.seed);
        if let (Some(defect), Some(mask_path)) = (job.defect, &job.mask) {
            let mask = add_defect(&mut img, defect, mix(job.seed, 0xd));
            save_png(mask_path, &image::DynamicImage::ImageLuma8(mask))?;
        }
        save_png(&job.image, &image::DynamicImage::ImageRgb8(img))
    })?;
    tracing::debug!(dir = %dir.display(), images = jobs.len(), "synthetic dataset written");
    Ok(DatasetSummary {
        root: dir.to_path_buf(),
        train: opts.train,
        test_good: opts.test_good,
        test_defect: opts.test_defect * opts.defects.len(),
    })
}

/// Where a defect of a frame was placed.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedDefect {
    /// Kind of defect.
    pub defect: Defect,
    /// Centre, in pixels.
    pub x: f32,
    /// Centre, in pixels.
    pub y: f32,
}

/// A written camera frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The frame image.
    pub image: PathBuf,
    /// Its mask (`<stem>_mask.png` beside the image).
    pub mask: PathBuf,
    /// The defects, in the order given.
    pub defects: Vec<PlacedDefect>,
}

/// Renders a `width`×`height` frame of `spec`'s fabric with the given defects at
/// separate places, in memory; returns the frame, its mask and where each defect went.
pub fn render_frame(
    spec: &FabricSpec,
    width: u32,
    height: u32,
    defects: &[Defect],
    seed: u64,
) -> (RgbImage, GrayImage, Vec<PlacedDefect>) {
    let mut img = generate(spec, width, height, seed);
    let mut mask = GrayImage::new(width, height);
    let mut placed = Vec::new();
    // One defect per cell of a grid large enough for all, in a seeded order of cells.
    let n = defects.len().max(1);
    let cols = (n as f32).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let mut cells: Vec<usize> = (0..cols * rows).collect();
    let mut rng = Rng::new(mix(seed, 0xf7a3e));
    for k in (1..cells.len()).rev() {
        let r = (rng.next_u64() % (k as u64 + 1)) as usize;
        cells.swap(k, r);
    }
    let (cw, ch) = (width as f32 / cols as f32, height as f32 / rows as f32);
    for (k, defect) in defects.iter().enumerate() {
        let cell = cells[k];
        let (c, r) = ((cell % cols) as f32, (cell / cols) as f32);
        let mx = (cw * 0.25).min(80.0);
        let my = (ch * 0.25).min(80.0);
        let x = c * cw + rng.range(mx, (cw - mx).max(mx + 1.0));
        let y = r * ch + rng.range(my, (ch - my).max(my + 1.0));
        let m = add_defect_at(&mut img, *defect, x, y, mix(seed, 100 + k as u64));
        for (dst, src) in mask.pixels_mut().zip(m.pixels()) {
            dst[0] = dst[0].max(src[0]);
        }
        placed.push(PlacedDefect {
            defect: *defect,
            x,
            y,
        });
    }
    (img, mask, placed)
}

/// Writes a camera frame (see [`render_frame`]) to `path` and its mask to
/// `<stem>_mask.png` in the same folder, atomically.
pub fn write_frame(
    path: &Path,
    spec: &FabricSpec,
    width: u32,
    height: u32,
    defects: &[Defect],
    seed: u64,
) -> Result<Frame> {
    let (img, mask, placed) = render_frame(spec, width, height, defects, seed);
    let stem = path
        .file_stem()
        .ok_or_else(|| Error::Other(format!("frame path {} has no file name", path.display())))?
        .to_string_lossy()
        .into_owned();
    let mask_path = path.with_file_name(format!("{stem}_mask.png"));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io("create folder", parent, e))?;
    }
    save_png(path, &image::DynamicImage::ImageRgb8(img))?;
    save_png(&mask_path, &image::DynamicImage::ImageLuma8(mask))?;
    Ok(Frame {
        image: path.to_path_buf(),
        mask: mask_path,
        defects: placed,
    })
}

/// Encodes `img` as PNG and writes it atomically.
fn save_png(path: &Path, img: &image::DynamicImage) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::Image {
        path: path.to_path_buf(),
        msg: format!("PNG encoding failed: {e}"),
    })?;
    atomic_write(path, &bytes)
}

/// splitmix64 finaliser: a well-mixed 64-bit hash of `x`.
fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Combines a seed with a value into a new seed.
fn mix(seed: u64, v: u64) -> u64 {
    splitmix(seed ^ splitmix(v))
}

/// Uniform in [0, 1) from a hash.
fn unit(h: u64) -> f32 {
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// Uniform in [-1, 1) from seed and key.
fn hash_signed(seed: u64, key: u64) -> f32 {
    2.0 * unit(mix(seed, key)) - 1.0
}

/// Approximately standard normal from seed and key (sum of four uniforms, rescaled).
fn hash_gauss(seed: u64, key: u64) -> f32 {
    let h = mix(seed, key);
    let s: u32 = (0..4).map(|k| ((h >> (16 * k)) & 0xffff) as u32).sum();
    // Sum of 4 uniforms on [0, 65535]: mean 2·65535, variance 4·65536²/12.
    (s as f32 - 2.0 * 65535.0) / (65536.0 * (4.0f32 / 12.0).sqrt())
}

/// Small sequential generator for per-defect choices (splitmix64 stream).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(splitmix(seed))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix(self.0)
    }

    /// Uniform in [lo, hi).
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * unit(self.next_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for w in Weave::ALL {
            assert_eq!(w.name().parse::<Weave>().unwrap(), w);
        }
        for d in Defect::ALL {
            assert_eq!(d.name().parse::<Defect>().unwrap(), d);
        }
        assert!("satin".parse::<Weave>().unwrap_err().contains("satin"));
    }

    #[test]
    fn gauss_has_unit_spread() {
        let v: Vec<f32> = (0..20000).map(|k| hash_gauss(3, k)).collect();
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((var - 1.0).abs() < 0.1, "{var}");
    }

    #[test]
    fn tiny_images_still_get_a_mask() {
        for d in Defect::ALL {
            let mut img = generate(&FabricSpec::preset(Weave::Plain), 4, 3, 1);
            let m = add_defect(&mut img, d, 5);
            assert!(m.pixels().any(|p| p[0] == 255), "{d}");
        }
    }
}
