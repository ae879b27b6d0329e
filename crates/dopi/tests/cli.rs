//! The `dopi` command line, run as a real process: `validate`, `plan-nodes`, `logs prune`, exit
//! codes, JSON output, and hostile input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn dopi(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dopi"))
        // Hermetic: no configuration file of the machine running the tests.
        .env("DOP_CONFIG", "/dev/null")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("dopi runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_prints_a_summary_and_exits_0_for_a_valid_plan() {
    let out = dopi(&root(), &["validate", "fixtures/plans/valid/demo.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "plan 'demo' is valid: 4 nodes, 2 step sets, 4 steps\n"
    );
}

#[test]
fn validate_reports_every_error_and_exits_1() {
    let out = dopi(
        &root(),
        &["validate", "fixtures/plans/invalid/wrong-types.yaml"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    insta::assert_snapshot!(text(&out.stderr));
}

#[test]
fn validate_json_lists_findings_with_their_places() {
    let out = dopi(
        &root(),
        &[
            "validate",
            "--json",
            "fixtures/plans/invalid/interface-errors.yaml",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let findings: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(findings.len(), 11);
    for f in &findings {
        for key in ["file", "path", "line", "column", "message", "severity"] {
            assert!(f.get(key).is_some(), "{key} missing in {f}");
        }
    }
    insta::assert_snapshot!(text(&out.stdout));
}

#[test]
fn validate_json_of_a_valid_plan_is_an_empty_array() {
    let out = dopi(
        &root(),
        &["validate", "--json", "fixtures/plans/valid/minimal.yaml"],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).trim(), "[]");
}

#[test]
fn strict_turns_warnings_into_failure() {
    let plan = "fixtures/plans/valid/warnings.yaml";
    assert_eq!(dopi(&root(), &["validate", plan]).status.code(), Some(0));
    let out = dopi(&root(), &["validate", "--strict", plan]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("8 warnings"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn plan_nodes_applies_the_filter_flags() {
    let plan = "fixtures/plans/valid/all-features.yaml";
    let out = dopi(
        &root(),
        &[
            "plan-nodes",
            plan,
            "--nodes",
            r"/^web(0[1-3]|1\d{1,2})\./,puppet.example.com",
            "--exclude_nodes",
            "web02.example.com",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    insta::assert_snapshot!(text(&out.stdout));
}

#[test]
fn plan_nodes_selects_all_by_default_and_by_roles_and_config() {
    let plan = "fixtures/plans/valid/all-features.yaml";
    let all = dopi(&root(), &["plan-nodes", "--json", plan]);
    let all: Vec<serde_json::Value> = serde_json::from_slice(&all.stdout).unwrap();
    assert_eq!(all.len(), 18);

    let out = dopi(
        &root(),
        &[
            "plan-nodes",
            "--json",
            plan,
            "--roles",
            "database,puppetmaster",
        ],
    );
    let picked: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<&str> = picked.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["db01.example.com", "puppet.example.com"]);
    assert_eq!(picked[0]["role"], "database");

    let out = dopi(
        &root(),
        &[
            "plan-nodes",
            "--json",
            plan,
            "--nodes-by-config",
            r#"{"my_alias": "/primary/"}"#,
        ],
    );
    let picked: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(picked.len(), 1);
    assert_eq!(picked[0]["name"], "db01.example.com");
}

#[test]
fn plan_nodes_warns_about_patterns_that_match_nothing() {
    let out = dopi(
        &root(),
        &[
            "plan-nodes",
            "fixtures/plans/valid/minimal.yaml",
            "--nodes",
            "nope,linux01.example.com",
        ],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("warning: nodes => 'nope' does not match any node"));
    assert!(text(&out.stdout).contains("linux01.example.com"));
}

#[test]
fn bad_filter_flags_are_usage_errors() {
    let plan = "fixtures/plans/valid/minimal.yaml";
    let out = dopi(
        &root(),
        &["plan-nodes", plan, "--nodes-by-config", "{role: web}"],
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("--nodes-by-config: not valid JSON"),
        "{}",
        text(&out.stderr)
    );
    let out = dopi(&root(), &["plan-nodes", plan, "--roles", "/(a/"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("is not a valid regular expression"));
    let out = dopi(&root(), &["validate"]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a missing argument is a usage error, not 2"
    );
    let out = dopi(&root(), &["run", "shop", "--no-such-flag"]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a mistyped flag is a usage error, not 2"
    );
    let out = dopi(&root(), &["--help"]);
    assert_eq!(out.status.code(), Some(0), "help is not an error");
}

#[test]
fn help_explains_the_commands() {
    let out = dopi(&root(), &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(text(&out.stdout));
}

/// The original projects' plans, validated from each project's root (hooks and secret paths
/// are relative to the working directory, as they were).
#[test]
fn original_plans_load_as_the_original_tools_judged_them() {
    let base = root().join("fixtures/plans/original");
    let cases: &[(&str, &str, bool)] = &[
        (
            "dop_common",
            "doc/examples/example_deploment_plan_v0.0.1.yaml",
            true,
        ),
        ("dop_common", "spec/fixtures/simple_plan.yaml", true),
        (
            "dop_common",
            "spec/fixtures/simple_plan_modified.yaml",
            true,
        ),
        (
            "dop_common",
            "spec/fixtures/other_plan_same_nodes.yaml",
            true,
        ),
        (
            "dop_common",
            "spec/fixtures/simple_plan_invalid.yaml",
            false,
        ),
        (
            "dop_common",
            "spec/fixtures/simple_include_with_errors.yaml",
            false,
        ),
        ("dopv", "spec/data/plans/test-plan-1.yaml", true),
        ("dopi", "spec/fixtures/testenv_plan.yaml", true),
        ("dopi", "spec/fixtures/plans/hello_world.yaml", true),
        ("dopi", "spec/fixtures/plans/fail_on_timeout.yaml", true),
        ("dopi", "spec/fixtures/plans/test_role_variable.yaml", true),
        ("dopi", "spec/fixtures/plans/non_existing_node.yaml", true),
        (
            "dopi",
            "doc/getting_started_examples/001_hello_world.yaml",
            true,
        ),
        (
            "dopi",
            "doc/getting_started_examples/002_connecting_over_ssh.yaml",
            true,
        ),
    ];
    let mut report = String::new();
    for (project, plan, valid) in cases {
        let out = dopi(&base.join(project), &["validate", plan]);
        assert_eq!(
            out.status.code(),
            Some(if *valid { 0 } else { 1 }),
            "{project}/{plan}: {}",
            text(&out.stderr)
        );
        let verdict = if *valid {
            text(&out.stdout)
        } else {
            "refused\n".to_string()
        };
        report.push_str(&format!("{project}/{plan}: {verdict}"));
    }
    // Every dopi integration plan is valid.
    let integration = base.join("dopi/spec/integration/dopi");
    let mut plans: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![integration.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                plans.push(path);
            }
        }
    }
    plans.sort();
    assert!(plans.len() >= 20, "found {} integration plans", plans.len());
    for plan in plans {
        let out = dopi(&base.join("dopi"), &["validate", plan.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            plan.display(),
            text(&out.stderr)
        );
        let shown = plan.strip_prefix(&base).unwrap().display().to_string();
        report.push_str(&format!("{shown}: {}", text(&out.stdout)));
    }
    insta::assert_snapshot!(report);
}

#[test]
fn hostile_files_give_a_clear_error_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.file_name().unwrap().to_str().unwrap().to_string()
    };
    let mut cases: Vec<(String, &str)> = vec![
        (write("empty.yaml", b""), "a plan must be a mapping"),
        (
            write("huge.yaml", &vec![b'#'; 50 * 1024 * 1024]),
            "larger than 32 MiB",
        ),
        (
            write("binary.yaml", &[0xff, 0x00, 0x13, 0x37]),
            "not UTF-8 text",
        ),
        (
            write("tabs.yaml", b"name: x\n\tnodes: 1\n"),
            "not valid YAML",
        ),
        ("no-such-file.yaml".to_string(), "cannot read the plan file"),
        (".".to_string(), "cannot read the plan file"),
    ];
    let deep: String = (0..300)
        .map(|d| format!("{}k{d}:\n", " ".repeat(d)))
        .collect();
    cases.push((
        write("deep.yaml", deep.as_bytes()),
        "nests deeper than 128 levels",
    ));
    let flow = "[".repeat(200_000);
    cases.push((write("flow.yaml", flow.as_bytes()), "not valid YAML"));
    let mut laughs = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = i - 1;
        laughs.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    cases.push((
        write("laughs.yaml", laughs.as_bytes()),
        "expands to more than",
    ));
    for (file, expected) in cases {
        let out = dopi(dir.path(), &["validate", &file]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{file}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{file}: expected '{expected}' in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{file}: {stderr}");
    }
}

#[test]
fn role_settings_come_from_flags_over_the_configuration_file() {
    let plan =
        root().join("fixtures/plans/original/dopi/spec/fixtures/plans/test_role_variable.yaml");
    let plan = plan.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("dop.conf");
    std::fs::write(&conf, ":role_variable: test_role\n").unwrap();
    let roles = |args: &[&str]| {
        let mut all = vec!["plan-nodes", "--json", plan];
        all.extend_from_slice(args);
        let out = dopi(dir.path(), &all);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let nodes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        nodes[0]["role"].as_str().unwrap().to_string()
    };
    assert_eq!(roles(&[]), "-");
    assert_eq!(roles(&["--config", conf.to_str().unwrap()]), "testnode");
    assert_eq!(
        roles(&[
            "--config",
            conf.to_str().unwrap(),
            "--role-variable",
            "role",
            "--role-default",
            "x"
        ]),
        "x"
    );
    // The step that selects by role finds its node only when the role is known.
    let validate = dopi(
        dir.path(),
        &[
            "validate",
            "--strict",
            "--config",
            conf.to_str().unwrap(),
            plan,
        ],
    );
    assert_eq!(
        validate.status.code(),
        Some(0),
        "{}",
        text(&validate.stderr)
    );

    std::fs::write(&conf, "role_varaible: test_role\n").unwrap();
    let out = dopi(
        dir.path(),
        &["validate", "--config", conf.to_str().unwrap(), plan],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("dop.conf:1: unknown setting 'role_varaible'"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn version_names_the_commit_and_the_build_profile() {
    let out = dopi(&root(), &["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let expected_start = format!("dopi {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&expected_start), "{line}");
    assert!(line.ends_with(" build)"), "{line}");
    // Built from a git checkout (not a source tarball), the commit is known.
    if root().join(".git").exists() {
        assert!(!line.contains("commit unknown"), "{line}");
    }
}

/// The invalid-plan corpus (`fixtures/plans/invalid`: type confusion, alias bombs, deep
/// nesting, shell and path text in names, bad patterns, broken includes…) through `add`: each
/// is refused with a finding that names the file, and nothing is stored or created.
#[test]
fn add_refuses_every_invalid_plan_and_stores_nothing() {
    let store = tempfile::tempdir().unwrap();
    let corpus = root().join("fixtures/plans/invalid");
    let mut refused = 0;
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let out = Command::new(env!("CARGO_BIN_EXE_dopi"))
            .env("DOP_CONFIG", "/dev/null")
            .env("DOP_STORE_DIR", store.path())
            .arg("add")
            .arg(&path)
            .current_dir(&corpus)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", path.display());
        let name = path.file_name().unwrap().to_str().unwrap();
        // The plan's file, or the included file the error is in.
        assert!(
            stderr.contains(name) || stderr.contains("fixtures/plans/invalid/parts/"),
            "{name}: the error names no file:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        refused += 1;
    }
    assert!(refused >= 20, "only {refused} plans in the corpus");
    let out = Command::new(env!("CARGO_BIN_EXE_dopi"))
        .env("DOP_CONFIG", "/dev/null")
        .env("DOP_STORE_DIR", store.path())
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    assert!(!Path::new("/tmp/dop-owned").exists());
}

/// `dopi` with a store and a log directory of its own.
fn dopi_with(store: &Path, logs: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dopi"))
        .env("DOP_CONFIG", "/dev/null")
        .env("DOP_STORE_DIR", store)
        .env("DOP_LOG_DIR", logs)
        .args(args)
        .output()
        .expect("dopi runs")
}

/// An execution log directory as a run writes it.
fn fake_execution(logs: &Path, plan: &str, id: &str) {
    let dir = logs.join(plan).join(id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("events.jsonl"), "{}\n").unwrap();
    std::fs::write(dir.join("all.log"), "a line\n").unwrap();
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn logs_prune_keeps_the_newest_and_never_touches_dopc_logs() {
    let (store, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for id in [
        "20261125T163000Z-4242",
        "20261126T090000Z-77",
        "20261127T120000Z-5",
        "dopc-1",
    ] {
        fake_execution(logs.path(), "web", id);
    }
    std::fs::create_dir_all(logs.path().join("web/notes")).unwrap();

    let out = dopi_with(store.path(), logs.path(), &["logs", "prune"]);
    assert_eq!(out.status.code(), Some(64), "no limit is a usage error");
    assert!(
        text(&out.stderr).contains("--keep"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        names_in(&logs.path().join("web")).len(),
        5,
        "nothing removed"
    );

    let out = dopi_with(
        store.path(),
        logs.path(),
        &["logs", "prune", "--keep", "1", "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("would remove 2 execution logs of plan 'web' ("));
    assert_eq!(
        names_in(&logs.path().join("web")).len(),
        5,
        "a dry run removes nothing"
    );

    let out = dopi_with(store.path(), logs.path(), &["logs", "prune", "--keep", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "removed 2 execution logs of plan 'web' (20 B)\n"
    );
    assert_eq!(
        names_in(&logs.path().join("web")),
        ["20261127T120000Z-5", "dopc-1", "notes"]
    );
}

#[test]
fn logs_prune_skips_a_plan_whose_run_lock_is_held() {
    let (store, logs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for plan in ["web", "db"] {
        fake_execution(logs.path(), plan, "20261125T163000Z-1");
        fake_execution(logs.path(), plan, "20261126T163000Z-2");
    }
    let held = dop_store::Store::open(store.path()).unwrap();
    let _lock = held.lock("web", "dopi run").unwrap();
    let out = dopi_with(
        store.path(),
        logs.path(),
        &["logs", "prune", "--keep", "1", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["plans"][0]["plan"], "db");
    assert_eq!(report["plans"][0]["removed"][0]["id"], "20261125T163000Z-1");
    assert_eq!(report["plans"][1]["plan"], "web");
    assert!(report["plans"][1]["skipped_running"]
        .as_str()
        .unwrap()
        .contains("'dopi run'"));
    assert_eq!(names_in(&logs.path().join("web")).len(), 2);
    assert_eq!(names_in(&logs.path().join("db")), ["20261126T163000Z-2"]);
}
