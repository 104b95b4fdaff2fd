//! Dataset layout: a temporary MVTec AD tree and, when `FABRIC_DATA` is set, the real folders.

use fabric_inspect::dataset::Category;
use fabric_inspect::Error;
use std::path::{Path, PathBuf};

fn touch(p: &Path) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"x").unwrap();
}

fn real_data(test: &str) -> Option<PathBuf> {
    match std::env::var_os("FABRIC_DATA").map(PathBuf::from) {
        Some(p) if p.is_dir() => Some(p),
        _ => {
            eprintln!("skipping {test}: FABRIC_DATA not set");
            None
        }
    }
}

#[test]
fn temp_tree_layout_labels_and_masks() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path().join("cat");
    touch(&r.join("train/good/b.png"));
    touch(&r.join("train/good/a.JPG"));
    touch(&r.join("train/good/notes.txt"));
    touch(&r.join("train/good/.hidden.png"));
    touch(&r.join("test/good/z.png"));
    touch(&r.join("test/good/y.bmp"));
    touch(&r.join("test/hole/002.png"));
    touch(&r.join("test/hole/001.tiff"));
    touch(&r.join("test/stain/x.jpeg"));
    touch(&r.join("ground_truth/hole/001_mask.png"));
    touch(&r.join("ground_truth/hole/002_mask.png"));
    // Mask named like the image: accepted as a fallback.
    touch(&r.join("ground_truth/stain/x.png"));

    let c = Category::open(&r).unwrap();
    let names = |v: &[PathBuf]| -> Vec<String> {
        v.iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(names(&c.train), vec!["a.JPG", "b.png"]);
    let test: Vec<(String, String, bool, bool)> = c
        .test
        .iter()
        .map(|t| {
            (
                t.defect.clone(),
                t.path.file_name().unwrap().to_string_lossy().into_owned(),
                t.is_anomalous,
                t.mask.is_some(),
            )
        })
        .collect();
    let s = |a: &str| a.to_string();
    assert_eq!(
        test,
        vec![
            (s("good"), s("y.bmp"), false, false),
            (s("good"), s("z.png"), false, false),
            (s("hole"), s("001.tiff"), true, true),
            (s("hole"), s("002.png"), true, true),
            (s("stain"), s("x.jpeg"), true, true),
        ]
    );
    assert_eq!(
        c.test[2].mask.as_deref(),
        Some(r.join("ground_truth/hole/001_mask.png").as_path())
    );
    assert!(c.has_masks());
    assert_eq!(c.test_normal_count(), 2);
    assert_eq!(c.test_anomalous_count(), 3);
    assert_eq!(c.defect_types(), vec!["good", "hole", "stain"]);
    assert_eq!(c.name(), "cat");

    // One defective image without a mask: pixel metrics are not available.
    touch(&r.join("test/stain/w.png"));
    let c = Category::open(&r).unwrap();
    assert!(!c.has_masks());
}

#[test]
fn wrong_layouts_name_the_folder() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope");
    let e = Category::open(&missing).unwrap_err();
    assert!(matches!(e, Error::Dataset { .. }));
    assert!(e.to_string().contains("nope"), "{e}");

    let r = d.path().join("flat");
    touch(&r.join("img.png"));
    let e = Category::open(&r).unwrap_err().to_string();
    assert!(e.contains("flat") && e.contains("train/good"), "{e}");

    touch(&r.join("train/good/readme.txt"));
    let e = Category::open(&r).unwrap_err().to_string();
    assert!(e.contains("train/good") && e.contains("no images"), "{e}");

    touch(&r.join("train/good/a.png"));
    std::fs::create_dir_all(r.join("test/good")).unwrap();
    let e = Category::open(&r).unwrap_err().to_string();
    assert!(e.contains("test") && e.contains("no test images"), "{e}");

    // Train only: accepted, with no test images.
    std::fs::remove_dir_all(r.join("test")).unwrap();
    let c = Category::open(&r).unwrap();
    assert_eq!(c.train.len(), 1);
    assert!(c.test.is_empty());
    assert!(!c.has_masks());
}

#[test]
fn evaluation_needs_only_the_test_folder() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path().join("cat");
    touch(&r.join("test/good/a.png"));
    touch(&r.join("test/hole/b.png"));
    touch(&r.join("ground_truth/hole/b_mask.png"));

    // No train/ at all: training refuses it, evaluation reads the test side.
    let e = Category::open(&r).unwrap_err().to_string();
    assert!(e.contains("train/good"), "{e}");
    let c = Category::open_test(&r).unwrap();
    assert!(c.train.is_empty());
    assert_eq!((c.test_normal_count(), c.test_anomalous_count()), (1, 1));
    assert!(c.has_masks());

    // An empty train/good/ (only a non-image file): the same.
    touch(&r.join("train/good/readme.txt"));
    let e = Category::open(&r).unwrap_err().to_string();
    assert!(e.contains("no images"), "{e}");
    let c = Category::open_test(&r).unwrap();
    assert!(c.train.is_empty());
    assert_eq!(c.test.len(), 2);

    // Training images are not read for evaluation even where they exist.
    touch(&r.join("train/good/t.png"));
    assert_eq!(Category::open(&r).unwrap().train.len(), 1);
    assert!(Category::open_test(&r).unwrap().train.is_empty());

    // Without test/ there is nothing to evaluate: an error naming the folder it needs.
    std::fs::remove_dir_all(r.join("test")).unwrap();
    let e = Category::open_test(&r).unwrap_err();
    assert!(matches!(e, Error::Dataset { .. }));
    let e = e.to_string();
    assert!(e.contains("no test/ folder"), "{e}");
    std::fs::create_dir_all(r.join("test/good")).unwrap();
    let e = Category::open_test(&r).unwrap_err().to_string();
    assert!(e.contains("no test images"), "{e}");
    let e = Category::open_test(&d.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a folder"), "{e}");
}

fn check_real(root: &Path, rel: &str, train: usize, good: usize, bad: usize, masks: bool) {
    let c = Category::open(&root.join(rel)).unwrap();
    assert_eq!(c.train.len(), train, "{rel} train");
    assert_eq!(c.test_normal_count(), good, "{rel} test good");
    assert_eq!(c.test_anomalous_count(), bad, "{rel} test defective");
    assert_eq!(c.has_masks(), masks, "{rel} masks");
    for t in &c.test {
        assert_eq!(t.is_anomalous, t.defect != "good");
        assert_eq!(t.mask.is_some(), masks && t.is_anomalous, "{:?}", t.path);
        if let Some(m) = &t.mask {
            let stem = t.path.file_stem().unwrap().to_string_lossy().into_owned();
            assert_eq!(
                m.file_name().unwrap().to_string_lossy(),
                format!("{stem}_mask.png")
            );
        }
    }
    let mut sorted = c.train.clone();
    sorted.sort();
    assert_eq!(sorted, c.train, "{rel} train sorted");
}

#[test]
fn real_folders_have_documented_counts() {
    let Some(root) = real_data("real_folders_have_documented_counts") else {
        return;
    };
    check_real(&root, "aitex/fabric00", 15, 5, 7, false);
    check_real(&root, "aitex/fabric04", 15, 5, 10, false);
    check_real(&root, "mtd/magnetic_tile", 762, 95, 204, true);
    check_real(&root, "mvtec_ad/leather", 4, 4, 11, true);
    let c = Category::open(&root.join("mtd/magnetic_tile")).unwrap();
    assert_eq!(c.defect_types(), vec!["blowhole", "crack", "fray", "good"]);
}
