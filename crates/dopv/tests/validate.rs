//! `dopv validate` is the shared implementation: same output and exit codes as `dopi validate`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn validate_accepts_a_valid_plan_and_refuses_an_invalid_one() {
    let run = |plan: &str, json: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dopv"));
        cmd.current_dir(root())
            .env("DOP_CONFIG", "/dev/null")
            .arg("validate");
        if json {
            cmd.arg("--json");
        }
        cmd.arg(plan).output().unwrap()
    };
    let ok = run("fixtures/plans/valid/demo.yaml", false);
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        "plan 'demo' is valid: 4 nodes, 2 step sets, 4 steps\n"
    );
    let bad = run("fixtures/plans/invalid/generated-nodes.yaml", true);
    assert_eq!(bad.status.code(), Some(1));
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(findings.len(), 9);
    assert_eq!(findings[0]["path"], "nodes.no-range{i}.range");
}

#[test]
fn dopv_has_the_plan_commands_on_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dopv"))
            .current_dir(root())
            .env("DOP_CONFIG", "/dev/null")
            .env("DOP_STORE_DIR", dir.path())
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(
        run(&["add", "fixtures/plans/valid/minimal.yaml"])
            .status
            .code(),
        Some(0)
    );
    let out = run(&["list", "--json"]);
    let plans: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plans[0]["name"], "minimal");
    let out = run(&["export", "minimal"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(root().join("fixtures/plans/valid/minimal.yaml")).unwrap()
    );
}
