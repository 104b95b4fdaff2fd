//! The default weights fall back to a seeded random teacher when the file is absent.
//! (Its own test binary: it sets an environment variable.)

use fabric_inspect::meta::Backbone;
use fabric_train::weights::{default_weights, weights_dir, TeacherWeights, WEIGHTS_DIR_ENV};

#[test]
fn default_weights_follow_the_folder_and_fall_back_to_random() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var(WEIGHTS_DIR_ENV, dir.path());
    assert_eq!(weights_dir(), dir.path());
    assert_eq!(
        default_weights(Backbone::Resnet34, 9),
        TeacherWeights::Random { seed: 9 }
    );

    let file = dir.path().join("resnet34-b627a593.pth");
    std::fs::write(&file, b"placeholder").unwrap();
    assert_eq!(
        default_weights(Backbone::Resnet34, 9),
        TeacherWeights::File(file)
    );
    assert_eq!(
        default_weights(Backbone::Resnet18, 9),
        TeacherWeights::Random { seed: 9 }
    );
    std::env::remove_var(WEIGHTS_DIR_ENV);
}
