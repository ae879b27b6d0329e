//! Plan diffs keyed by name: snapshots of what changes between two plans.

use std::path::{Path, PathBuf};

use dop_core::{load_file, ChangeKind, LookupSettings, Plan, PlanDiff};

fn plan(relative: &str) -> Plan {
    let path: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/plans")
        .join(relative);
    load_file(&path, &LookupSettings::default())
        .plan
        .expect("valid fixture")
}

#[test]
fn diff_names_every_change() {
    let diff = PlanDiff::between(&plan("diff/before.yaml"), &plan("diff/after.yaml"));
    insta::assert_snapshot!(diff.to_string());
    insta::assert_json_snapshot!(diff);
}

#[test]
fn inserting_a_node_changes_no_other_node() {
    let diff = PlanDiff::between(&plan("diff/before.yaml"), &plan("diff/after.yaml"));
    let kinds: Vec<(ChangeKind, &str)> = diff
        .nodes
        .iter()
        .map(|c| (c.kind, c.name.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            (ChangeKind::Removed, "cache01.example.com"),
            (ChangeKind::Added, "web04.example.com"),
            (ChangeKind::Changed, "db01.example.com"),
        ]
    );
}

#[test]
fn the_original_update_fixture_adds_one_node_and_drops_configuration() {
    let diff = PlanDiff::between(
        &plan("original/dop_common/spec/fixtures/simple_plan.yaml"),
        &plan("original/dop_common/spec/fixtures/simple_plan_modified.yaml"),
    );
    insta::assert_snapshot!(diff.to_string());
}

#[test]
fn identical_plans_have_an_empty_diff() {
    let p = plan("valid/all-features.yaml");
    let diff = PlanDiff::between(&p, &p);
    assert!(diff.is_empty());
    assert_eq!(diff.to_string(), "no changes\n");
}
