//! `model.yaml`: round trip, schema checks, threshold history.

use fabric_inspect::meta::{ModelMeta, SCHEMA_VERSION};
use fabric_inspect::threshold::ScoreStats;
use std::path::Path;

fn fixture_meta() -> ModelMeta {
    ModelMeta::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_model"))
        .unwrap()
}

#[test]
fn round_trip_is_lossless() {
    let dir = tempfile::tempdir().unwrap();
    let mut meta = fixture_meta();
    meta.validation = Some(ScoreStats::from_scores(&[0.1, 0.2, 0.4]).unwrap());
    meta.training_config = serde_yaml::from_str("epochs: 3\nlr: 0.005\n").unwrap();
    meta.save(dir.path()).unwrap();
    assert_eq!(ModelMeta::load(dir.path()).unwrap(), meta);
    assert_eq!(meta.schema_version, SCHEMA_VERSION);
}

#[test]
fn unknown_schema_version_and_keys_are_refused() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_model/model.yaml"),
    )
    .unwrap();
    let p = Path::new("m/model.yaml");

    let v2 = text.replace("schema_version: 1", "schema_version: 2");
    let e = ModelMeta::from_yaml(&v2, p).unwrap_err().to_string();
    assert!(
        e.contains("unknown schema_version 2") && e.contains("m/model.yaml"),
        "{e}"
    );

    let none = text.replace("schema_version: 1\n", "");
    let e = ModelMeta::from_yaml(&none, p).unwrap_err().to_string();
    assert!(e.contains("no schema_version"), "{e}");

    let extra = format!("{text}colour_space: hsv\n");
    let e = ModelMeta::from_yaml(&extra, p).unwrap_err().to_string();
    assert!(e.contains("colour_space"), "{e}");

    let short = text.replace("[0.000244140625, 0.000244140625, ", "[");
    let e = ModelMeta::from_yaml(&short, p).unwrap_err().to_string();
    assert!(
        e.contains("map_layer_weights has 2 entries for 4 features"),
        "{e}"
    );

    let e = ModelMeta::from_yaml("schema_version: [", p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not valid YAML"), "{e}");
}

#[test]
fn replacing_the_threshold_keeps_history() {
    let mut meta = fixture_meta();
    let first = ScoreStats::from_scores(&[1.0, 2.0]).unwrap();
    meta.replace_threshold(2.5, first.clone(), "calibrate");
    let second = ScoreStats::from_scores(&[1.0, 2.0, 3.0]).unwrap();
    meta.replace_threshold(3.5, second.clone(), "calibrate");
    assert_eq!(meta.threshold, 3.5);
    assert_eq!(meta.validation, Some(second));
    assert_eq!(meta.threshold_history.len(), 2);
    let h0 = &meta.threshold_history[0];
    assert_eq!(
        (h0.threshold, h0.images, h0.source.as_str()),
        (0.05, 2, "training validation")
    );
    assert_eq!(h0.stats, None);
    let h1 = &meta.threshold_history[1];
    assert_eq!((h1.threshold, h1.images), (2.5, 3));
    assert_eq!(h1.stats, Some(first));
    assert_eq!(h1.replaced_at.len(), "2024-01-01T00:00:00Z".len());
}

#[test]
fn position_statistics_entries_are_checked() {
    use fabric_inspect::meta::{InputMode, PositionMeta};
    let mut meta = fixture_meta();
    let pos = PositionMeta {
        file: "position.bin".into(),
        width: 4096,
        height: 256,
        images: 10,
    };
    meta.input_mode = InputMode::Tile;
    meta.position = Some(pos.clone());
    assert!(meta.validate().is_ok());
    let dir = tempfile::tempdir().unwrap();
    meta.save(dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("model.yaml")).unwrap();
    assert!(text.contains("position:"), "{text}");
    assert_eq!(ModelMeta::load(dir.path()).unwrap(), meta);

    for (bad, want) in [
        (
            PositionMeta {
                images: 1,
                ..pos.clone()
            },
            "at least 2",
        ),
        (
            PositionMeta {
                file: "../elsewhere.bin".into(),
                ..pos.clone()
            },
            "plain file name",
        ),
        (
            PositionMeta {
                width: 0,
                ..pos.clone()
            },
            "empty frame",
        ),
    ] {
        meta.position = Some(bad);
        let e = meta.validate().unwrap_err();
        assert!(e.contains(want), "{e}");
    }
    // In resize mode the map is input_size², so must the statistics be.
    meta.input_mode = InputMode::Resize;
    meta.position = Some(pos);
    let e = meta.validate().unwrap_err();
    assert!(e.contains("resize mode"), "{e}");
    // Models without statistics write no `position` key at all.
    meta.position = None;
    meta.save(dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("model.yaml")).unwrap();
    assert!(!text.contains("position:"), "{text}");
}
