//! Data-driven tests over `fixtures/plans`: every valid plan loads (its findings and parsed
//! form are snapshots), every invalid plan is refused with exactly the snapshot findings.

use std::path::{Path, PathBuf};

use dop_core::{load_file, Loaded, LookupSettings};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/plans")
}

/// The findings as `validate` prints them, with paths relative to `fixtures/plans`.
fn render(loaded: &Loaded) -> String {
    let base = fixtures().canonicalize().unwrap();
    loaded
        .diagnostics
        .iter()
        .map(|d| {
            let mut d = d.clone();
            d.file = d.file.map(|f| {
                let absolute = f.canonicalize().unwrap_or(f.clone());
                absolute
                    .strip_prefix(&base)
                    .map(Path::to_path_buf)
                    .unwrap_or(f)
            });
            // Messages may quote paths too (include chains).
            d.to_string().replace(&format!("{}/", base.display()), "")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn valid_plans_load() {
    insta::glob!("../../../fixtures/plans/valid", "*.yaml", |path| {
        let loaded = load_file(path, &LookupSettings::default());
        assert!(
            loaded.is_valid(),
            "{}:\n{}",
            path.display(),
            render(&loaded)
        );
        let summary = loaded.plan.as_ref().unwrap().summary().to_string();
        insta::assert_snapshot!(format!("{summary}\n{}", render(&loaded)));
    });
}

#[test]
fn valid_plans_parse_to_the_expected_model() {
    for name in ["all-features", "with-includes"] {
        let path = fixtures().join(format!("valid/{name}.yaml"));
        let plan = load_file(&path, &LookupSettings::default())
            .plan
            .expect("valid");
        let json = serde_json::to_string_pretty(&plan).unwrap();
        insta::assert_snapshot!(format!("model-{name}"), json);
    }
}

#[test]
fn invalid_plans_are_refused_with_every_error() {
    insta::glob!("../../../fixtures/plans/invalid", "*.yaml", |path| {
        let loaded = load_file(path, &LookupSettings::default());
        assert!(!loaded.is_valid(), "{} should be invalid", path.display());
        assert!(loaded.errors().count() >= 1);
        insta::assert_snapshot!(render(&loaded));
    });
}

#[test]
fn the_parsed_model_round_trips_through_json() {
    let path = fixtures().join("valid/all-features.yaml");
    let plan = load_file(&path, &LookupSettings::default())
        .plan
        .expect("valid");
    let json = serde_json::to_string(&plan).unwrap();
    let back: dop_core::Plan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plan);
}
