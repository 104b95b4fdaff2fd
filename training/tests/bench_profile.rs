//! `fabric-train bench`: the per-part timing and the per-pass profile add up.

use fabric_inspect::meta::{Backbone, Variant};
use fabric_train::benchtrain::{run_bench, BenchSpec};

fn spec(profile: bool) -> BenchSpec {
    BenchSpec {
        backbone: Backbone::EfficientnetLite0,
        variant: Variant::Residual,
        batch: 2,
        runs: 2,
        size: 128,
        teacher_weights: Some("random".into()),
        profile,
    }
}

/// One test, not two: the pass timers are process-wide, so a bench running beside the
/// profiled one would add its passes to the profile.
#[test]
fn profile_rows_cover_the_phases_and_stay_inside_them() {
    let plain = run_bench(&spec(false)).unwrap();
    assert!(plain.profile.is_empty());
    assert!(!plain.table().contains("profile of the last run"));
    assert!(plain.median.total_ms > 0.0);

    let r = run_bench(&spec(true)).unwrap();
    assert_eq!(r.runs.len(), 2);
    let last = r.runs.last().unwrap();
    for (phase, total) in [
        ("teacher", last.teacher_ms),
        ("student", last.student_loss_ms),
        ("backward", last.backward_ms),
    ] {
        let rows: Vec<_> = r.profile.iter().filter(|p| p.phase == phase).collect();
        assert!(
            rows.iter().any(|p| p.op.starts_with("product")),
            "{phase}: no convolution timed"
        );
        // Top-level passes run one after another on the calling thread: together they
        // cannot take longer than the phase (1 ms of slack for the clock reads).
        let timed: f64 = rows.iter().filter(|p| !p.nested).map(|p| p.ms).sum();
        assert!(
            timed <= total + 1.0,
            "{phase}: passes {timed} ms > phase {total} ms"
        );
        assert!(rows.iter().all(|p| p.calls > 0 && p.ms >= 0.0));
    }
    let backward: Vec<_> = r.profile.iter().filter(|p| p.phase == "backward").collect();
    for pass in ["weight-grad", "scatter", "bn grad sums", "bn grad input"] {
        assert!(
            backward.iter().any(|p| p.op.starts_with(pass)),
            "backward: no {pass} pass"
        );
    }
    // Every nested pass is named after an outer pass of its phase.
    for inner in r.profile.iter().filter(|p| p.nested) {
        let (outer, _) = inner.op.split_once(" · ").unwrap();
        assert!(
            r.profile
                .iter()
                .any(|p| !p.nested && p.phase == inner.phase && p.op == outer),
            "{}: no outer pass {outer}",
            inner.op
        );
    }
    assert!(r
        .profile
        .iter()
        .any(|p| p.nested && p.op.ends_with("· im2col")));
    let table = r.table();
    assert!(table.contains("profile of the last run"), "{table}");
    assert!(table.contains("other operations"), "{table}");
}
