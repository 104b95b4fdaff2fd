//! Dataset layout (MVTec AD style) shared by the trainer and the evaluator.
//!
//! A category folder holds
//! - `train/good/`: defect-free training images;
//! - `test/<defect>/`: test images, `good` being normal and any other folder defective;
//! - optionally `ground_truth/<defect>/<stem>_mask.png`: pixel masks of the defective test
//!   images (mask value > 127 = defect). Normal test images have no mask (all normal).
//!
//! Training needs `train/good/` ([`Category::open`]); evaluation needs only `test/`
//! ([`Category::open_test`]).
//!
//! Image files are those with extension png, jpg, jpeg, bmp, tif or tiff (any case); every
//! list is sorted by file name so that runs are reproducible.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// File extensions (lower case) recognised as images.
pub const IMAGE_EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// Name of the folder of normal images under `train/` and `test/`.
pub const GOOD: &str = "good";

/// Mask value above which a mask pixel is a defect.
pub const MASK_THRESHOLD: u8 = 127;

/// Whether `path` has an image file extension (case-insensitive).
pub fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| {
            let e = e.to_ascii_lowercase();
            IMAGE_EXTENSIONS.contains(&e.as_str())
        })
        .unwrap_or(false)
}

/// Lists the image files directly inside `dir`, sorted by file name.
///
/// Hidden files (leading `.`) are skipped; sub-folders are not entered.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("read folder", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read folder", dir, e))?;
        let path = entry.path();
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && path.is_file() && is_image_file(&path) {
            out.push(path);
        }
    }
    out.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(out)
}

/// Lists the sub-folders of `dir`, sorted by name (hidden ones skipped).
fn list_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io("read folder", dir, e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| Error::io("read folder", dir, e))?;
        let path = entry.path();
        if path.is_dir() && !entry.file_name().to_string_lossy().starts_with('.') {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// One test image with its label and, where one exists, its pixel mask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    /// Image file.
    pub path: PathBuf,
    /// Name of the folder under `test/` (`good` for normal images).
    pub defect: String,
    /// True for any folder other than `good`.
    pub is_anomalous: bool,
    /// Ground-truth mask file, if the category has one for this image.
    pub mask: Option<PathBuf>,
}

/// What a caller of [`Category::read`] needs from the folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// `train/good/` with images (training); `test/` optional.
    Train,
    /// `test/` with images (evaluation); `train/` not read.
    Test,
}

/// A category folder in MVTec AD layout.
#[derive(Debug, Clone)]
pub struct Category {
    /// The category folder.
    pub root: PathBuf,
    /// Training images (`train/good/`), sorted by name; empty when the folder was opened
    /// with [`Category::open_test`].
    pub train: Vec<PathBuf>,
    /// Test images, sorted by defect folder then file name.
    pub test: Vec<TestImage>,
}

impl Category {
    /// Reads the layout of the category folder `dir` for training and evaluation.
    ///
    /// `train/good/` must exist and hold at least one image. `test/` is optional (a
    /// training-only folder), but when it exists it must hold at least one non-empty defect
    /// folder. A defective image's mask is looked up as `ground_truth/<defect>/<stem>_mask.png`
    /// (also `<stem>_mask.<ext>` or `<stem>.<ext>` for any image extension); a missing mask
    /// leaves `mask` empty, and [`Category::has_masks`] tells whether every defective image
    /// has one.
    pub fn open(dir: &Path) -> Result<Category> {
        Category::read(dir, Need::Train)
    }

    /// Reads only the test side of the category folder `dir`, for evaluation.
    ///
    /// `test/` must exist and hold at least one non-empty defect folder; masks are found as
    /// in [`Category::open`]. `train/` is neither required nor read: [`Category::train`] is
    /// left empty, so a folder with an empty or missing `train/good/` can be evaluated.
    pub fn open_test(dir: &Path) -> Result<Category> {
        Category::read(dir, Need::Test)
    }

    fn read(dir: &Path, need: Need) -> Result<Category> {
        let err = |msg: String| Error::Dataset {
            path: dir.to_path_buf(),
            msg,
        };
        if !dir.is_dir() {
            return Err(err("not a folder".into()));
        }
        let train = match need {
            Need::Train => {
                let train_dir = dir.join("train").join(GOOD);
                if !train_dir.is_dir() {
                    return Err(err(format!(
                        "no train/{GOOD}/ folder (expected MVTec AD layout: train/good/, test/<defect>/, ground_truth/<defect>/)"
                    )));
                }
                let train = list_images(&train_dir)?;
                if train.is_empty() {
                    return Err(Error::Dataset {
                        path: train_dir,
                        msg: "holds no images (png, jpg, jpeg, bmp, tif, tiff)".into(),
                    });
                }
                train
            }
            Need::Test => Vec::new(),
        };

        let mut test = Vec::new();
        let test_dir = dir.join("test");
        if test_dir.is_dir() {
            let gt_dir = dir.join("ground_truth");
            for defect_dir in list_dirs(&test_dir)? {
                let defect = defect_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let is_anomalous = defect != GOOD;
                for path in list_images(&defect_dir)? {
                    let mask = if is_anomalous {
                        find_mask(&gt_dir.join(&defect), &path)
                    } else {
                        None
                    };
                    test.push(TestImage {
                        path,
                        defect: defect.clone(),
                        is_anomalous,
                        mask,
                    });
                }
            }
            if test.is_empty() {
                return Err(Error::Dataset {
                    path: test_dir,
                    msg: "holds no test images in any <defect>/ sub-folder".into(),
                });
            }
        } else if test_dir.exists() {
            return Err(Error::Dataset {
                path: test_dir,
                msg: "is not a folder".into(),
            });
        } else if need == Need::Test {
            return Err(err(
                "no test/ folder to evaluate (expected MVTec AD layout: test/<defect>/ with test/good/ for normal images, optionally ground_truth/<defect>/)"
                    .into(),
            ));
        }
        tracing::debug!(
            root = %dir.display(),
            train = train.len(),
            test = test.len(),
            "opened dataset category"
        );
        Ok(Category {
            root: dir.to_path_buf(),
            train,
            test,
        })
    }

    /// Category name (the folder's last component).
    pub fn name(&self) -> String {
        self.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.root.display().to_string())
    }

    /// Number of normal test images.
    pub fn test_normal_count(&self) -> usize {
        self.test.iter().filter(|t| !t.is_anomalous).count()
    }

    /// Number of defective test images.
    pub fn test_anomalous_count(&self) -> usize {
        self.test.iter().filter(|t| t.is_anomalous).count()
    }

    /// True when there is at least one defective test image and every defective test
    /// image has a mask, i.e. pixel metrics can be computed.
    pub fn has_masks(&self) -> bool {
        let mut any = false;
        for t in self.test.iter().filter(|t| t.is_anomalous) {
            if t.mask.is_none() {
                return false;
            }
            any = true;
        }
        any
    }

    /// Names of the test folders, sorted, each once.
    pub fn defect_types(&self) -> Vec<String> {
        let mut v: Vec<String> = self.test.iter().map(|t| t.defect.clone()).collect();
        v.dedup();
        v
    }
}

/// Finds the mask of `image` in `gt_dir`: `<stem>_mask.png` first, then `<stem>_mask.<ext>`
/// and `<stem>.<ext>` for the other image extensions (either case).
fn find_mask(gt_dir: &Path, image: &Path) -> Option<PathBuf> {
    if !gt_dir.is_dir() {
        return None;
    }
    let stem = image.file_stem()?.to_string_lossy().into_owned();
    let mut candidates = vec![gt_dir.join(format!("{stem}_mask.png"))];
    for suffix in ["_mask", ""] {
        for ext in IMAGE_EXTENSIONS {
            candidates.push(gt_dir.join(format!("{stem}{suffix}.{ext}")));
            candidates.push(gt_dir.join(format!("{stem}{suffix}.{}", ext.to_ascii_uppercase())));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_case_insensitive() {
        assert!(is_image_file(Path::new("a/b.PNG")));
        assert!(is_image_file(Path::new("b.JpEg")));
        assert!(is_image_file(Path::new("b.tif")));
        assert!(!is_image_file(Path::new("b.txt")));
        assert!(!is_image_file(Path::new("png")));
    }
}
