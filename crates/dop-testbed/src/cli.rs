//! Checks of the command-line behaviour every dop binary shares (`validate`, from dop-cli),
//! run against the binary a test names, so that each binary's tests make the same assertions.

use std::process::{Command, Output};

use crate::workspace_root;

/// `bin validate [--json] <plan>` from the workspace root, with no configuration file.
fn validate(bin: &str, plan: &str, json: bool) -> Output {
    let mut cmd = Command::new(bin);
    cmd.current_dir(workspace_root().expect("the workspace root"))
        .env("DOP_CONFIG", "/dev/null")
        .arg("validate");
    if json {
        cmd.arg("--json");
    }
    cmd.arg(plan).output().expect("the binary runs")
}

/// `bin validate` accepts a valid plan (exit 0, a one-line summary) and refuses an invalid one
/// (exit 1, every finding in JSON with its place): the same output and exit codes as
/// `dopi validate`. Panics (fails the test) otherwise.
pub fn check_validate(bin: &str) {
    let ok = validate(bin, "fixtures/plans/valid/demo.yaml", false);
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "plan 'demo' is valid: 4 nodes, 2 step sets, 4 steps\n"
    );
    let bad = validate(bin, "fixtures/plans/invalid/generated-nodes.yaml", true);
    assert_eq!(bad.status.code(), Some(1));
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(findings.len(), 9);
    assert_eq!(findings[0]["path"], "nodes.no-range{i}.range");
}
