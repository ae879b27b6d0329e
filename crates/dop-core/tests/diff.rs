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

/// A plan with three credentials whose secrets are written in it.
fn plan_with_secrets(password: &str, private_key: &str, keytab: &str) -> Plan {
    let text = format!(
        "name: p\ninfrastructures: {{l: {{type: local}}}}\nnodes: {{n: {{infrastructure: l}}}}\n\
         credentials:\n  \
         db: {{type: username_password, username: app, password: '{password}'}}\n  \
         key: {{type: ssh_key, username: root, private_key: '{private_key}', public_key: 'ssh-ed25519 AAAA'}}\n  \
         krb: {{type: kerberos, realm: EXAMPLE.COM, keytab: '{keytab}'}}\n"
    );
    dop_core::load_str(&text, None, &LookupSettings::default())
        .plan
        .expect("valid plan")
}

#[test]
fn a_secret_change_is_shown_without_either_value() {
    let old = plan_with_secrets("old-password-1", "old-private-key", "old-keytab");
    let new = plan_with_secrets("new-password-2", "new-private-key", "old-keytab");
    let diff = PlanDiff::between(&old, &new);
    let json = serde_json::to_string(&diff).unwrap();
    let text = diff.to_string();
    for secret in [
        "old-password-1",
        "new-password-2",
        "old-private-key",
        "new-private-key",
        "old-keytab",
    ] {
        assert!(!json.contains(secret), "{secret} in {json}");
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    insta::assert_snapshot!(text);
    insta::assert_json_snapshot!(diff.credentials);
}

#[test]
fn an_unchanged_secret_is_no_change() {
    let diff = PlanDiff::between(
        &plan_with_secrets("same-password", "same-key", "same-keytab"),
        &plan_with_secrets("same-password", "same-key", "same-keytab"),
    );
    assert!(diff.is_empty(), "{diff}");
}
