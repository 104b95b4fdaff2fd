//! The model folder written by the export: structure of both graphs for every backbone and
//! variant, metadata from a training run, and failure without leftovers on a corrupt or
//! truncated checkpoint. No ONNX Runtime needed (see parity_export.rs for the numbers).

use candle_core::Device;
use fabric_inspect::meta::{Backbone, InputMode, ModelMeta, Variant};
use fabric_inspect::threshold::{default_threshold, ScoreStats};
use fabric_train::checkpoint::{files, ImageScore, RunDir, RunStats};
use fabric_train::config::TrainConfig;
use fabric_train::export::{
    export_model, export_run, model_meta, untrained_info, STUDENT_OUTPUTS, TEACHER_INPUT,
    TEACHER_OUTPUTS,
};
use fabric_train::model::Rrd;
use fabric_train::onnx::proto::{tensor_shape_proto::dimension, type_proto, ModelProto};
use fabric_train::onnx::{BATCH_DIM, OPSET};
use fabric_train::weights::TeacherWeights;
use prost::Message;
use std::path::Path;

fn decode(path: &Path) -> ModelProto {
    let bytes = std::fs::read(path).unwrap();
    ModelProto::decode(bytes.as_slice()).unwrap()
}

fn io_names(v: &[fabric_train::onnx::proto::ValueInfoProto]) -> Vec<String> {
    v.iter()
        .map(|x| x.name.clone().unwrap_or_default())
        .collect()
}

fn first_dim(v: &fabric_train::onnx::proto::ValueInfoProto) -> Option<dimension::Value> {
    match v.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(t) => t.shape.as_ref()?.dim.first()?.value.clone(),
        _ => None,
    }
}

fn count_op(m: &ModelProto, op: &str) -> usize {
    m.graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type.as_deref() == Some(op))
        .count()
}

#[test]
fn every_backbone_and_variant_exports() {
    let dir = tempfile::tempdir().unwrap();
    for backbone in [
        Backbone::EfficientnetLite0,
        Backbone::Resnet18,
        Backbone::Resnet34,
    ] {
        let mut nodes = Vec::new();
        for variant in [Variant::Residual, Variant::Dg] {
            let rrd = Rrd::build(
                backbone,
                &[],
                TeacherWeights::Random { seed: 3 },
                variant,
                3,
                &Device::Cpu,
            )
            .unwrap();
            let meta = model_meta(&rrd, &untrained_info(InputMode::Tile, 256, 3));
            let out = dir.path().join(format!("{backbone}-{variant}"));
            let summary = export_model(&rrd, &meta, &out).unwrap();
            let mut entries: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            entries.sort();
            assert_eq!(entries, ["model.yaml", "student.onnx", "teacher.onnx"]);
            let loaded = ModelMeta::load(&out).unwrap();
            assert_eq!(loaded, meta);
            assert_eq!(loaded.teacher_weights, "random");
            assert!(loaded.validation.is_none());

            let t = decode(&out.join("teacher.onnx"));
            let s = decode(&out.join("student.onnx"));
            for m in [&t, &s] {
                assert_eq!(m.opset_import[0].version, Some(OPSET));
                let g = m.graph.as_ref().unwrap();
                for v in g.input.iter().chain(&g.output) {
                    assert_eq!(
                        first_dim(v),
                        Some(dimension::Value::DimParam(BATCH_DIM.into())),
                        "{backbone}/{variant}: {:?} has no dynamic batch axis",
                        v.name
                    );
                }
            }
            let tg = t.graph.as_ref().unwrap();
            let sg = s.graph.as_ref().unwrap();
            assert_eq!(io_names(&tg.input), [TEACHER_INPUT]);
            assert_eq!(io_names(&tg.output), TEACHER_OUTPUTS);
            assert_eq!(io_names(&sg.input), TEACHER_OUTPUTS);
            assert_eq!(io_names(&sg.output), STUDENT_OUTPUTS);
            // Teacher BatchNorm is folded; the student keeps one inference-form BatchNorm
            // per conv → ReLU → BN unit (fusion 6, embedding 3, residual paths 3).
            assert_eq!(count_op(&t, "BatchNormalization"), 0);
            let units = if variant == Variant::Residual { 12 } else { 9 };
            assert_eq!(count_op(&s, "BatchNormalization"), units);
            for n in &sg.node {
                for a in &n.attribute {
                    if a.name.as_deref() == Some("training_mode") {
                        assert_eq!(a.i, Some(0), "BatchNorm in training form");
                    }
                }
            }
            // Residual paths: three attention softmaxes more than the bottleneck's one.
            let softmax = if variant == Variant::Residual { 4 } else { 1 };
            assert_eq!(count_op(&s, "Softmax"), softmax);
            assert!(summary.weights[0] > 0 && summary.weights[1] > 0);
            nodes.push(summary.nodes[1]);
            eprintln!(
                "{backbone}/{variant}: teacher {} nodes {} weights, student {} nodes {} weights",
                summary.nodes[0], summary.weights[0], summary.nodes[1], summary.weights[1]
            );
        }
        assert!(nodes[0] > nodes[1], "residual student not larger than dg");
    }
}

/// A finished run folder of a Lite0 model with a random teacher.
fn fake_run(dir: &Path) -> (TrainConfig, RunStats) {
    let mut cfg = TrainConfig::with_roots(vec!["fabric00".into()]);
    cfg.backbone = Backbone::EfficientnetLite0;
    cfg.teacher_weights = Some("random".into());
    cfg.seed = 11;
    let run = RunDir::create(dir).unwrap();
    run.write_config(&cfg).unwrap();
    let model = fabric_train::trainer::build_model(&cfg, &Device::Cpu).unwrap();
    run.write_best(&model.varmap).unwrap();
    let scores = [0.010f32, 0.012, 0.011, 0.015];
    let stats = ScoreStats::from_scores(&scores).unwrap();
    let rs = RunStats {
        sigma: 4.0,
        threshold: default_threshold(&stats),
        stats,
        scores: scores
            .iter()
            .enumerate()
            .map(|(i, &score)| ImageScore {
                path: format!("img{i}.png").into(),
                score,
            })
            .collect(),
        best_epoch: 3,
        best_val_loss: 0.5,
        position: None,
    };
    run.write_stats(&rs).unwrap();
    (cfg, rs)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn run_folder_exports_with_its_validation_statistics() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let (cfg, rs) = fake_run(&run);
    let out = tmp.path().join("models").join("fabric00");
    let (meta, _) = export_run(&run, &out).unwrap();
    let loaded = ModelMeta::load(&out).unwrap();
    assert_eq!(loaded, meta);
    assert_eq!(loaded.validation.as_ref(), Some(&rs.stats));
    assert_eq!(loaded.threshold, rs.threshold);
    assert_eq!(loaded.threshold_source, "training validation");
    assert_eq!(loaded.sigma, 4.0);
    assert_eq!(loaded.seed, 11);
    assert_eq!(loaded.backbone, Backbone::EfficientnetLite0);
    assert_eq!(loaded.input_mode, cfg.input_mode);
    assert_eq!(
        loaded.training_config,
        serde_yaml::to_value(&cfg).unwrap(),
        "training config recorded verbatim"
    );
    assert_eq!(loaded.map_layer_weights.len(), 4);
    assert_eq!(
        loaded.map_layer_weights[0],
        1.0 / (64.0 * 64.0),
        "default 1/(H·W)"
    );
    // Exporting again replaces the model folder and leaves no temporary folder behind.
    export_run(&run, &out).unwrap();
    assert_eq!(entries(out.parent().unwrap()), ["fabric00"]);
}

#[test]
fn corrupt_or_truncated_checkpoint_fails_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    fake_run(&run);
    let best = run.join(files::BEST);
    let good = std::fs::read(&best).unwrap();
    let models = tmp.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let out = models.join("m");

    let cases: [(&str, Vec<u8>); 3] = [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("garbage", b"this is not a safetensors file".to_vec()),
        ("empty", Vec::new()),
    ];
    for (what, bytes) in cases {
        std::fs::write(&best, &bytes).unwrap();
        let e = export_run(&run, &out).unwrap_err().to_string();
        eprintln!("{what} checkpoint: {e}");
        assert!(
            e.contains("best.safetensors") || e.contains(&run.display().to_string()),
            "{what}: error does not name the checkpoint: {e}"
        );
        assert!(!out.exists(), "{what}: output folder created");
        assert!(
            entries(&models).is_empty(),
            "{what}: leftovers {:?}",
            entries(&models)
        );
    }

    // A checkpoint of another model (a tensor missing) is refused too, and an existing
    // model folder at the output stays as it was.
    std::fs::write(&best, &good).unwrap();
    export_run(&run, &out).unwrap();
    let before = std::fs::read(out.join("student.onnx")).unwrap();
    let mut tensors = candle_core::safetensors::load(&best, &Device::Cpu).unwrap();
    let name = tensors.keys().min().unwrap().clone();
    tensors.remove(&name);
    candle_core::safetensors::save(&tensors, &best).unwrap();
    let e = export_run(&run, &out).unwrap_err().to_string();
    assert!(e.contains(&name), "missing tensor not named: {e}");
    assert_eq!(std::fs::read(out.join("student.onnx")).unwrap(), before);
    assert_eq!(entries(&models), ["m"]);

    // No stats.yaml: the run has not finished.
    std::fs::write(&best, &good).unwrap();
    std::fs::remove_file(run.join(files::STATS)).unwrap();
    let e = export_run(&run, &models.join("n")).unwrap_err().to_string();
    assert!(e.contains("stats.yaml"), "{e}");
    assert_eq!(entries(&models), ["m"]);
}

#[test]
fn refuses_to_replace_a_folder_with_other_files() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("data");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), b"keep me").unwrap();
    let rrd = Rrd::build(
        Backbone::EfficientnetLite0,
        &[],
        TeacherWeights::Random { seed: 1 },
        Variant::Dg,
        1,
        &Device::Cpu,
    )
    .unwrap();
    let meta = model_meta(&rrd, &untrained_info(InputMode::Resize, 256, 1));
    let e = export_model(&rrd, &meta, &out).unwrap_err().to_string();
    assert!(e.contains("notes.txt"), "{e}");
    assert_eq!(entries(&out), ["notes.txt"]);
    assert_eq!(entries(tmp.path()), ["data"]);
}

#[test]
fn cli_exports_untrained_and_reports_a_bad_checkpoint() {
    let exe = env!("CARGO_BIN_EXE_fabric-train");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r18");
    let status = std::process::Command::new(exe)
        .args(["--quiet", "--log", "error", "export", "--untrained"])
        .args(["--backbone", "resnet18", "--variant", "dg"])
        .args(["--teacher-weights", "random", "--seed", "5", "--out"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let meta = ModelMeta::load(&out).unwrap();
    assert_eq!(
        (meta.backbone, meta.variant, meta.seed),
        (Backbone::Resnet18, Variant::Dg, 5)
    );
    assert_eq!(meta.teacher_weights, "random");

    let run = tmp.path().join("run");
    fake_run(&run);
    std::fs::write(run.join(files::BEST), b"\x10\x00\x00\x00").unwrap();
    let res = std::process::Command::new(exe)
        .args(["--log", "error", "export", "--checkpoint"])
        .arg(&run)
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .output()
        .unwrap();
    assert!(!res.status.success());
    let err = String::from_utf8_lossy(&res.stderr);
    assert!(err.contains("best.safetensors"), "{err}");
    assert!(!tmp.path().join("bad").exists());
}

#[test]
fn cli_refuses_untrained_options_and_bad_log_filters() {
    let exe = env!("CARGO_BIN_EXE_fabric-train");
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    fake_run(&run);
    for extra in [
        ["--backbone", "resnet34"],
        ["--seed", "3"],
        ["--size", "64"],
    ] {
        let res = std::process::Command::new(exe)
            .args(["--log", "error", "export", "--checkpoint"])
            .arg(&run)
            .args(extra)
            .arg("--out")
            .arg(tmp.path().join("m"))
            .output()
            .unwrap();
        assert_eq!(res.status.code(), Some(2), "{extra:?}");
        let err = String::from_utf8_lossy(&res.stderr);
        assert!(err.contains("cannot be used with"), "{extra:?}: {err}");
    }
    let res = std::process::Command::new(exe)
        .args(["--log", "loud", "summary"])
        .output()
        .unwrap();
    assert_eq!(res.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&res.stderr).contains("not a log filter"));
    assert!(!tmp.path().join("m").exists());
}
