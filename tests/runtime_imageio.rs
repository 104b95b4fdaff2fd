//! Image loading: grey, grey + alpha, RGBA and 16-bit files become RGB8; truncated and
//! non-image files and oversized images are refused with the path in the message.

use fabric_inspect::imageio::{decode_rgb, image_dimensions, load_rgb};
use image::{ImageBuffer, Luma, LumaA, Rgb, Rgba};
use std::path::Path;

fn save<P: image::Pixel + image::PixelWithColorType>(
    path: &Path,
    img: &ImageBuffer<P, Vec<P::Subpixel>>,
) where
    [P::Subpixel]: image::EncodableLayout,
{
    img.save(path).unwrap();
}

#[test]
fn grey_alpha_and_16_bit_become_rgb8() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    let grey = ImageBuffer::from_fn(5, 3, |x, _| Luma([x as u8 * 50]));
    save(&d.join("grey.png"), &grey);
    let img = load_rgb(&d.join("grey.png"), 1000).unwrap();
    assert_eq!(img.dimensions(), (5, 3));
    assert_eq!(img.get_pixel(2, 1).0, [100, 100, 100]);

    let grey_alpha = ImageBuffer::from_fn(4, 4, |_, _| LumaA([77u8, 10]));
    save(&d.join("ga.png"), &grey_alpha);
    assert_eq!(
        load_rgb(&d.join("ga.png"), 1000).unwrap().get_pixel(3, 3).0,
        [77, 77, 77]
    );

    let rgba = ImageBuffer::from_fn(3, 2, |x, y| Rgba([x as u8, y as u8, 200, 0]));
    save(&d.join("rgba.png"), &rgba);
    assert_eq!(
        load_rgb(&d.join("rgba.png"), 1000)
            .unwrap()
            .get_pixel(2, 1)
            .0,
        [2, 1, 200]
    );

    let grey16 = ImageBuffer::from_fn(3, 3, |x, _| Luma([x as u16 * 0x7fff]));
    save(&d.join("grey16.png"), &grey16);
    let img = load_rgb(&d.join("grey16.png"), 1000).unwrap();
    assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
    assert_eq!(img.get_pixel(2, 0).0, [255, 255, 255]);
    let mid = img.get_pixel(1, 0).0[0];
    assert!((126..=128).contains(&mid), "{mid}");

    let rgb16 = ImageBuffer::from_fn(2, 2, |_, _| Rgb([0xffffu16, 0, 0x8080]));
    save(&d.join("rgb16.tif"), &rgb16);
    assert_eq!(
        load_rgb(&d.join("rgb16.tif"), 1000)
            .unwrap()
            .get_pixel(1, 1)
            .0,
        [255, 0, 128]
    );

    let jpg = ImageBuffer::from_fn(8, 8, |_, _| Rgb([120u8, 120, 120]));
    save(&d.join("a.jpg"), &jpg);
    let px = load_rgb(&d.join("a.jpg"), 1000).unwrap().get_pixel(4, 4).0;
    assert!(px.iter().all(|&v| (118..=122).contains(&v)), "{px:?}");
}

#[test]
fn truncated_and_non_image_files_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let img = ImageBuffer::from_fn(64, 64, |x, y| Rgb([x as u8, y as u8, (x ^ y) as u8]));
    save(&d.join("full.png"), &img);
    let bytes = std::fs::read(d.join("full.png")).unwrap();
    std::fs::write(d.join("cut.png"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(d.join("notes.png"), b"this is text").unwrap();

    for name in ["cut.png", "notes.png", "missing.png"] {
        let e = load_rgb(&d.join(name), 1 << 20).unwrap_err().to_string();
        assert!(e.contains(name), "{name}: {e}");
    }
    assert!(decode_rgb(&bytes[..bytes.len() / 2], 1 << 20).is_err());
    assert_eq!(decode_rgb(&bytes, 1 << 20).unwrap(), img);
}

#[test]
fn pixel_limit_is_checked_from_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.png");
    save(&p, &ImageBuffer::from_pixel(1000, 800, Luma([9u8])));
    // Keep only the header: decoding would fail, so the limit message proves the check
    // happens before any pixel is read.
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..64]).unwrap();
    assert_eq!(image_dimensions(&p).unwrap(), (1000, 800));
    let e = load_rgb(&p, 799_999).unwrap_err().to_string();
    assert!(e.contains("800000 pixels exceeds the limit"), "{e}");
    assert!(e.contains("big.png"), "{e}");
}
