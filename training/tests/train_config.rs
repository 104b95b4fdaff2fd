//! Training config: every example file loads, and bad files fail with messages that name
//! the key and the problem.

use fabric_train::config::TrainConfig;
use std::path::{Path, PathBuf};

fn configs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("configs")
}

fn parse(text: &str) -> Result<TrainConfig, String> {
    TrainConfig::from_yaml(text, Path::new("case.yaml")).map_err(|e| e.to_string())
}

const BASE: &str = "version: 1\nroots: [data/a]\n";

#[test]
fn every_example_config_loads() {
    let mut n = 0;
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let cfg = TrainConfig::load(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(!cfg.roots.is_empty(), "{}", p.display());
        n += 1;
    }
    assert!(
        n >= 4,
        "expected the example configs under configs/, found {n}"
    );
}

#[test]
fn example_files_document_every_key() {
    // Every key of the schema appears in the fully commented example.
    let text = std::fs::read_to_string(configs_dir().join("fabric00-lite0.yaml")).unwrap();
    let full = serde_yaml::to_value(TrainConfig::with_roots(vec!["x".into()])).unwrap();
    let mut keys = Vec::new();
    if let serde_yaml::Value::Mapping(m) = full {
        for (k, v) in m {
            let k = k.as_str().unwrap().to_owned();
            if let serde_yaml::Value::Mapping(inner) = v {
                for (ik, _) in inner {
                    keys.push(ik.as_str().unwrap().to_owned());
                }
            }
            keys.push(k);
        }
    }
    for k in keys {
        assert!(
            text.contains(&format!("{k}:")),
            "key `{k}` is not in fabric00-lite0.yaml"
        );
    }
}

#[test]
fn example_variants_and_modes() {
    let dg = TrainConfig::load(&configs_dir().join("dg-aitex.yaml")).unwrap();
    assert_eq!(dg.variant, fabric_inspect::meta::Variant::Dg);
    assert_eq!(dg.roots.len(), 2);
    let rs = TrainConfig::load(&configs_dir().join("mvtec-resize.yaml")).unwrap();
    assert_eq!(rs.input_mode, fabric_inspect::meta::InputMode::Resize);
}

#[test]
fn unknown_top_level_key_is_named() {
    let e = parse(&format!("{BASE}learning_rate: 0.1\n")).unwrap_err();
    assert!(
        e.contains("learning_rate") && e.contains("case.yaml"),
        "{e}"
    );
}

#[test]
fn unknown_nested_key_is_named() {
    let e = parse(&format!("{BASE}blur:\n  radius: 2\n")).unwrap_err();
    assert!(e.contains("radius"), "{e}");
}

#[test]
fn bad_values_name_their_key() {
    for (extra, key) in [
        ("optimizer:\n  lr: -1\n", "optimizer.lr"),
        ("optimizer:\n  betas: [0.9, 1.0]\n", "optimizer.betas"),
        ("plateau:\n  factor: 1.5\n", "plateau.factor"),
        ("val_fraction: 1.0\n", "val_fraction"),
        ("batch_size: 0\n", "batch_size"),
        ("max_epochs: 0\n", "max_epochs"),
        ("early_stop: 0\n", "early_stop"),
        ("blur:\n  kernel: 4\n", "blur.kernel"),
        ("blur:\n  sigma: 0\n", "blur.sigma"),
        ("image_size: 100\n", "image_size"),
        ("loss_weights: [0, 0, 0, 0]\n", "loss_weights"),
        ("teacher_taps: [a, b]\n", "teacher_taps"),
        ("threads: 0\n", "threads"),
        ("limit: 1\n", "limit"),
    ] {
        let e = parse(&format!("{BASE}{extra}")).unwrap_err();
        assert!(e.contains(&format!("`{key}`")), "{extra:?}: {e}");
    }
}

#[test]
fn bad_types_and_enums_are_refused() {
    let e = parse(&format!("{BASE}variant: residual-free\n")).unwrap_err();
    assert!(e.contains("variant") && e.contains("residual-free"), "{e}");
    let e = parse(&format!("{BASE}backbone: vgg16\n")).unwrap_err();
    assert!(e.contains("vgg16"), "{e}");
    let e = parse(&format!("{BASE}input_mode: crop\n")).unwrap_err();
    assert!(e.contains("crop"), "{e}");
    let e = parse(&format!("{BASE}loss_weights: [0.5, 0.5]\n")).unwrap_err();
    assert!(e.contains("loss_weights"), "{e}");
}

#[test]
fn missing_roots_and_version_are_refused() {
    let e = parse("version: 1\n").unwrap_err();
    assert!(e.contains("roots"), "{e}");
    let e = parse("roots: [a]\n").unwrap_err();
    assert!(e.contains("version"), "{e}");
    let e = parse("version: 1\nroots: []\n").unwrap_err();
    assert!(e.contains("`roots`"), "{e}");
    let e = parse("version: 3\nroots: [a]\n").unwrap_err();
    assert!(e.contains("`version`"), "{e}");
}

#[test]
fn missing_file_is_named() {
    let e = TrainConfig::load(Path::new("no/such/config.yaml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no/such/config.yaml"), "{e}");
}
