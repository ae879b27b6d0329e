//! `dopv validate` is the shared implementation: same output and exit codes as `dopi validate`.

use std::process::Command;

use dop_testbed::workspace_root;

#[test]
fn validate_accepts_a_valid_plan_and_refuses_an_invalid_one() {
    dop_testbed::cli::check_validate(env!("CARGO_BIN_EXE_dopv"));
}

#[test]
fn dopv_has_the_plan_commands_on_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_dopv"))
            .current_dir(workspace_root().unwrap())
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
        std::fs::read_to_string(
            workspace_root()
                .unwrap()
                .join("fixtures/plans/valid/minimal.yaml")
        )
        .unwrap()
    );
}
