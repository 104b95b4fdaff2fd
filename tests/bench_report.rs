//! `fabric-inspect bench` and `fabric_inspect::bench` on the tiny fixture model: the
//! report's structure and internal consistency (medians inside their spreads, per-patch
//! figures derived from per-batch ones, the frame's tile count and ratio), the frame
//! score equal to a plain inspection of the same frame, the JSON file and the CLI's
//! argument checks. No timing value is asserted.

use fabric_inspect::bench::{render_table, run_bench, BenchOptions, FrameSource, Spread};
use fabric_inspect::engine::ort_library_path;
use fabric_inspect::inspector::{InspectOptions, Inspector};
use fabric_inspect::synth::{render_frame, FabricSpec, Weave};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny_model")
}

fn ort_available(test: &str) -> bool {
    std::env::set_var(
        "XDG_CACHE_HOME",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/xdg-cache"),
    );
    match ort_library_path() {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipping {test}: {e}");
            false
        }
    }
}

fn check_spread(s: &Spread, what: &str) {
    assert!(
        s.min <= s.median && s.median <= s.max && s.min >= 0.0 && s.max.is_finite(),
        "{what}: {s:?}"
    );
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn report_is_consistent_on_the_tiny_model() {
    if !ort_available("report_is_consistent_on_the_tiny_model") {
        return;
    }
    let inspector = Inspector::load(
        &fixture(),
        InspectOptions {
            batch: 3,
            ..InspectOptions::default()
        },
    )
    .unwrap();
    let options = BenchOptions {
        batches: vec![1, 3],
        frame: Some(FrameSource::Synthetic {
            width: 600,
            height: 300,
        }),
        runs: 3,
        warmup: 1,
        seed: 5,
    };
    let r = run_bench(&inspector, &options).unwrap();
    assert_eq!((r.runs, r.warmup), (3, 1));
    assert_eq!(r.backbone, "efficientnet-lite0");
    assert_eq!(r.network.len(), 2);
    for (b, want) in r.network.iter().zip([1usize, 3]) {
        assert_eq!(b.batch, want);
        check_spread(&b.ms_per_batch, "ms per batch");
        check_spread(&b.ms_per_patch, "ms per patch");
        check_spread(&b.patches_per_s, "patches per second");
        // Odd run count: the medians are single runs, so the derived figures match.
        assert!(close(
            b.ms_per_patch.median * want as f64,
            b.ms_per_batch.median
        ));
        assert!(close(b.patches_per_s.median, 1e3 / b.ms_per_patch.median));
        assert!(close(b.patches_per_s.max, 1e3 / b.ms_per_patch.min));
    }

    let f = r.frame.as_ref().expect("frame timing");
    assert_eq!((f.width, f.height, f.tiles, f.batch), (600, 300, 6, 3));
    let s = &f.stages_ms;
    for (sp, name) in [
        (&s.preprocess, "preprocess"),
        (&s.network, "network"),
        (&s.anomaly_map, "anomaly map"),
        (&s.stitch, "stitch"),
        (&s.smooth, "smooth"),
        (&s.total, "total"),
    ] {
        check_spread(sp, name);
        assert!(sp.median <= s.total.max, "{name} longer than the total");
    }
    assert!(s.other.min > -0.01, "stages add up to more than the total");
    let per_patch = f.network_ms_per_patch.expect("batch 3 was measured");
    assert!(close(per_patch, r.network[1].ms_per_patch.median));
    let ratio = f.total_over_network.expect("ratio");
    assert!(close(ratio, s.total.median / (6.0 * per_patch)));
    assert!(f.frames_per_s > 0.0 && f.total_over_own_network >= 1.0);

    // The timed frame is the generator's frame, scored like any inspection.
    let frame = render_frame(&FabricSpec::preset(Weave::Plain), 600, 300, &[], 5).0;
    assert_eq!(inspector.inspect_image(&frame).unwrap().score, f.score);

    if Path::new("/proc/self/status").exists() {
        assert!(r.memory.vm_hwm_bytes.unwrap() > 0);
        assert!(f.sampled_rss_max_bytes.unwrap() > 0);
    }
    let table = render_table(&r);
    assert!(table.contains("6 tiles in batches of 3"), "{table}");
    assert!(table.contains("goal ≤ 1.05"), "{table}");
    let json: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(json["frame"]["tiles"], 6);
    assert_eq!(json["network"][1]["batch"], 3);
    assert!(json["frame"]["stages_ms"]["smooth"]["median"].is_number());
}

#[test]
fn frame_batch_missing_from_the_table_gives_no_ratio() {
    if !ort_available("frame_batch_missing_from_the_table_gives_no_ratio") {
        return;
    }
    let inspector = Inspector::load(&fixture(), InspectOptions::default()).unwrap();
    let options = BenchOptions {
        batches: vec![],
        frame: Some(FrameSource::Synthetic {
            width: 256,
            height: 256,
        }),
        runs: 1,
        warmup: 0,
        seed: 1,
    };
    let r = run_bench(&inspector, &options).unwrap();
    assert!(r.network.is_empty());
    let f = r.frame.unwrap();
    assert_eq!((f.tiles, f.batch), (1, 1));
    assert!(f.network_ms_per_patch.is_none() && f.total_over_network.is_none());
    let no_runs = BenchOptions {
        runs: 0,
        ..BenchOptions::default()
    };
    assert!(run_bench(&inspector, &no_runs).is_err());
}

fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fabric-inspect"));
    c.env(
        "XDG_CACHE_HOME",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("target/xdg-cache"),
    );
    c
}

#[test]
fn cli_prints_the_table_and_writes_json_for_a_camera_frame() {
    if !ort_available("cli_prints_the_table_and_writes_json_for_a_camera_frame") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = cli()
        .args(["--quiet", "--log", "warn", "bench", "--model"])
        .arg(fixture())
        .args([
            "--batches",
            "2,32",
            "--frame",
            "3072x2048",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--threads",
            "2",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("network (teacher + student)"), "{stdout}");
    assert!(stdout.contains("96 tiles in batches of 32"), "{stdout}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["frame"]["tiles"], 96);
    assert_eq!(v["frame"]["width"], 3072);
    assert_eq!(v["intra_threads"], 2);
    assert_eq!(v["provider"], "cpu");
    assert_eq!(v["network"].as_array().unwrap().len(), 2);
    assert!(v["frame"]["total_over_network"].is_number());
}

#[test]
fn cli_rejects_bad_arguments() {
    for (args, needle) in [
        (vec!["--runs", "0"], "--runs"),
        (vec!["--frame", "3072"], "--frame"),
        (vec!["--batches", "0"], "--batches"),
    ] {
        let out = cli()
            .args(["--quiet", "bench", "--model"])
            .arg(fixture())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
