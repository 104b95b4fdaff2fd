//! Image loading: any supported file (PNG, JPEG, BMP, TIFF, ...) in grey, grey + alpha,
//! RGB or RGBA, 8 or 16 bits per channel, becomes an 8-bit RGB image.
//!
//! The pixel limit is checked from the file header before any pixel is decoded, so an
//! oversized or hostile file cannot make the inspection PC allocate gigabytes. Alpha is
//! dropped (not composited); 16-bit samples are scaled to 8 bits by the `image` crate's
//! rounding conversion.

use crate::{Error, Result};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

/// Default pixel limit (width × height) of [`load_rgb`] callers: 100 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 100_000_000;

/// File extensions treated as images when a folder is searched (lower case).
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// Whether `path` has one of [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| {
            let e = e.to_ascii_lowercase();
            IMAGE_EXTENSIONS.contains(&e.as_str())
        })
        .unwrap_or(false)
}

/// Loads the image at `path` as 8-bit RGB.
///
/// Fails, naming the path, when the file cannot be opened, its format is not recognised,
/// it holds more than `max_pixels` pixels (checked before decoding) or it is truncated.
pub fn load_rgb(path: &Path, max_pixels: u64) -> Result<RgbImage> {
    let reader = ImageReader::open(path).map_err(|e| Error::io("open", path, e))?;
    decode_reader(reader, path, max_pixels, || file_tail(path))
}

/// How many bytes at the end of a JPEG stream are searched for its end-of-image marker
/// (some cameras pad files after the marker).
const JPEG_TAIL: usize = 4096;

fn file_tail(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.seek(SeekFrom::End(0))?;
    let start = len.saturating_sub(JPEG_TAIL as u64);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    f.read_to_end(&mut tail)?;
    Ok(tail)
}

/// A JPEG decoder fills a cut-off stream with grey without an error, so a frame truncated
/// by a camera or network fault would be inspected as if it were whole: a complete stream
/// ends with the end-of-image marker FF D9.
fn check_jpeg_complete(tail: &[u8], path: &Path) -> Result<()> {
    if tail.windows(2).any(|w| w == [0xFF, 0xD9]) {
        Ok(())
    } else {
        Err(Error::Image {
            path: path.to_path_buf(),
            msg: "truncated JPEG: no end-of-image marker".into(),
        })
    }
}

/// Decodes an in-memory encoded image (e.g. a PNG received from a camera server) as
/// 8-bit RGB, with the same checks as [`load_rgb`]; errors name the file as `<memory>`.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage> {
    let reader = ImageReader::new(Cursor::new(bytes));
    let tail = &bytes[bytes.len().saturating_sub(JPEG_TAIL)..];
    decode_reader(reader, Path::new("<memory>"), max_pixels, || {
        Ok(tail.to_vec())
    })
}

/// Reads the width and height of the image at `path` from its header only.
pub fn image_dimensions(path: &Path) -> Result<(u32, u32)> {
    let reader = ImageReader::open(path).map_err(|e| Error::io("open", path, e))?;
    let reader = reader
        .with_guessed_format()
        .map_err(|e| Error::io("read", path, e))?;
    reader.into_dimensions().map_err(|e| image_error(path, e))
}

fn decode_reader<R: BufRead + Seek>(
    reader: ImageReader<R>,
    path: &Path,
    max_pixels: u64,
    tail: impl FnOnce() -> std::io::Result<Vec<u8>>,
) -> Result<RgbImage> {
    let mut reader = reader
        .with_guessed_format()
        .map_err(|e| Error::io("read", path, e))?;
    if reader.format().is_none() {
        return Err(Error::Image {
            path: path.to_path_buf(),
            msg: "not a recognised image format".into(),
        });
    }
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        let tail = tail().map_err(|e| Error::io("read", path, e))?;
        check_jpeg_complete(&tail, path)?;
    }
    // Our own pixel limit replaces the crate's allocation limit, which would refuse
    // legitimate 16-bit frames.
    reader.no_limits();
    let decoder = reader.into_decoder().map_err(|e| image_error(path, e))?;
    let (w, h) = decoder.dimensions();
    let pixels = w as u64 * h as u64;
    if pixels > max_pixels {
        return Err(Error::Image {
            path: path.to_path_buf(),
            msg: format!(
                "{w}×{h} = {pixels} pixels exceeds the limit of {max_pixels} pixels \
                 (fabric-inspect's commands raise it with --max-pixels)"
            ),
        });
    }
    if pixels == 0 {
        return Err(Error::Image {
            path: path.to_path_buf(),
            msg: "image has no pixels".into(),
        });
    }
    let img = DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, e))?;
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    })
}

fn image_error(path: &Path, e: image::ImageError) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_jpeg_is_refused() {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 3, y as u8 * 5, 77]));
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Jpeg)
            .unwrap();
        assert_eq!(decode_rgb(&bytes, u64::MAX).unwrap().dimensions(), (64, 48));
        let cut = &bytes[..bytes.len() / 2];
        let e = decode_rgb(cut, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("truncated JPEG"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cut.jpg");
        std::fs::write(&p, cut).unwrap();
        let e = load_rgb(&p, u64::MAX).unwrap_err().to_string();
        assert!(e.contains("cut.jpg") && e.contains("truncated JPEG"), "{e}");
    }

    #[test]
    fn extensions_are_case_insensitive() {
        assert!(has_image_extension(Path::new("a/B.PNG")));
        assert!(has_image_extension(Path::new("x.tiff")));
        assert!(!has_image_extension(Path::new("x.txt")));
        assert!(!has_image_extension(Path::new("png")));
    }

    #[test]
    fn decode_rejects_garbage() {
        let e = decode_rgb(b"definitely not an image", 1000)
            .unwrap_err()
            .to_string();
        assert!(e.contains("<memory>"), "{e}");
    }
}
