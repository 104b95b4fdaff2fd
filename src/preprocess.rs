//! Pixel pre-processing shared by trainer and runtime: CHW float conversion with the
//! teacher's normalisation, and the whole-image resize of the `resize` input mode.

use crate::meta::Normalization;
use image::{imageops::FilterType, GrayImage, RgbImage};

/// Side of the network's square input, in pixels (tiles and resized images).
pub const TILE: u32 = 256;

/// ImageNet channel means on [0, 1] pixels (torchvision's ResNet pretraining).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations on [0, 1] pixels.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Per-channel affine map `x ↦ x·scale + offset` on 0..255 pixels for a normalisation.
pub fn channel_affine(norm: Normalization) -> [(f32, f32); 3] {
    match norm {
        Normalization::Imagenet => std::array::from_fn(|c| {
            let scale = 1.0 / (255.0 * IMAGENET_STD[c]);
            (scale, -IMAGENET_MEAN[c] / IMAGENET_STD[c])
        }),
        Normalization::Lite0 => [(1.0 / 128.0, -127.0 / 128.0); 3],
    }
}

/// Writes `img` as normalised CHW floats (3·H·W values: all of R, then G, then B) into
/// `out`.
///
/// # Panics
/// When `out.len() != 3·width·height` (a caller's buffer-size bug, not an input error).
pub fn to_chw(img: &RgbImage, norm: Normalization, out: &mut [f32]) {
    let plane = img.width() as usize * img.height() as usize;
    assert_eq!(
        out.len(),
        3 * plane,
        "to_chw: output buffer must hold 3×{}×{} floats",
        img.width(),
        img.height()
    );
    let affine = channel_affine(norm);
    let (r, rest) = out.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = px[0] as f32 * affine[0].0 + affine[0].1;
        g[i] = px[1] as f32 * affine[1].0 + affine[1].1;
        b[i] = px[2] as f32 * affine[2].0 + affine[2].1;
    }
}

/// Allocating form of [`to_chw`].
pub fn to_chw_vec(img: &RgbImage, norm: Normalization) -> Vec<f32> {
    let mut out = vec![0.0; 3 * img.width() as usize * img.height() as usize];
    to_chw(img, norm, &mut out);
    out
}

/// Resizes `img` to `size`×`size` with a bilinear (triangle) filter whose support widens
/// when shrinking, like PIL's bilinear resize; the aspect ratio is not kept.
pub fn resize_exact(img: &RgbImage, size: u32) -> RgbImage {
    if img.width() == size && img.height() == size {
        return img.clone();
    }
    image::imageops::resize(img, size, size, FilterType::Triangle)
}

/// Resizes a ground-truth mask to `size`×`size` by nearest neighbour (labels stay binary).
pub fn resize_mask(mask: &GrayImage, size: u32) -> GrayImage {
    if mask.width() == size && mask.height() == size {
        return mask.clone();
    }
    image::imageops::resize(mask, size, size, FilterType::Nearest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_layout_and_normalisation() {
        let mut img = RgbImage::new(2, 1);
        img.put_pixel(0, 0, image::Rgb([0, 127, 255]));
        img.put_pixel(1, 0, image::Rgb([255, 255, 255]));
        let v = to_chw_vec(&img, Normalization::Lite0);
        assert_eq!(v.len(), 6);
        assert!((v[0] - (-127.0 / 128.0)).abs() < 1e-6);
        assert!((v[2] - 0.0).abs() < 1e-6, "G of pixel 0 = 127 → 0");
        assert!((v[4] - 1.0).abs() < 1e-6, "B of pixel 0 = 255 → 1");
        let v = to_chw_vec(&img, Normalization::Imagenet);
        let want = (1.0 - 0.485) / 0.229;
        assert!((v[1] - want).abs() < 1e-5, "{} vs {want}", v[1]);
        let want = (127.0 / 255.0 - 0.456) / 0.224;
        assert!((v[2] - want).abs() < 1e-5, "{} vs {want}", v[2]);
    }

    #[test]
    fn resize_gives_square() {
        let img = RgbImage::from_pixel(300, 40, image::Rgb([10, 20, 30]));
        let r = resize_exact(&img, 256);
        assert_eq!(r.dimensions(), (256, 256));
        assert_eq!(r.get_pixel(100, 100).0, [10, 20, 30]);
    }
}
