//! The plan commands of `dopi` (shared with `dopv`) against a real store directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dop_store::{App, Store};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn fixture(relative: &str) -> String {
    root().join("fixtures").join(relative).display().to_string()
}

fn run(bin: &str, store: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .env("DOP_CONFIG", "/dev/null")
        .env_remove("DOP_STORE_DIR")
        .arg("--store-dir")
        .arg(store)
        .args(args)
        .output()
        .expect("runs")
}

fn dopi(store: &Path, args: &[&str]) -> Output {
    run(env!("CARGO_BIN_EXE_dopi"), store, args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_plan_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    let before = fixture("plans/diff/before.yaml");
    let after = fixture("plans/diff/after.yaml");

    let out = dopi(store, &["add", &before]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "added plan 'shop' as iteration 1 (5 nodes)\n"
    );

    let out = dopi(store, &["add", &before]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr)
        .contains("error: a plan named 'shop' is already in the store; use `update`"));

    let out = dopi(store, &["update", &before]);
    assert_eq!(
        text(&out.stdout),
        "plan 'shop' is unchanged (iteration 1)\n"
    );

    let out = dopi(store, &["update", &after]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!("update_shows_the_diff", text(&out.stdout));

    let out = dopi(store, &["versions", "shop", "--json"]);
    let versions: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1]["number"], 2);
    assert_eq!(versions[1]["hash"].as_str().unwrap().len(), 64);
    assert_eq!(versions[0]["source"], before.as_str());

    let out = dopi(store, &["diff", "shop", "--json"]);
    let diff: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (diff["from"].as_u64(), diff["to"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(diff["diff"]["nodes"][1]["name"], "web04.example.com");
    let out = dopi(store, &["diff", "shop", "--from", "2", "--to", "2"]);
    assert_eq!(
        text(&out.stdout),
        "plan 'shop': iteration 2 -> 2\nno changes\n"
    );
    let out = dopi(store, &["diff", "shop", "--from", "9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("plan 'shop' has no iteration 9 (it has 1 to 2)"));

    let out = dopi(store, &["export", "shop", "--version", "1"]);
    assert_eq!(text(&out.stdout), std::fs::read_to_string(&before).unwrap());

    let out = dopi(store, &["list", "--json"]);
    let plans: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((plans.len(), plans[0]["latest"].as_u64()), (1, Some(2)));

    let out = dopi(store, &["remove", "shop"]);
    assert_eq!(text(&out.stdout), "removed plan 'shop'\n");
    let out = dopi(store, &["list"]);
    assert!(text(&out.stderr).starts_with("no plans in "));
}

#[test]
fn invalid_plans_and_node_conflicts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path();
    let out = dopi(store, &["add", &fixture("plans/invalid/node-errors.yaml")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr
        .contains("error: nodes.unknown-infrastructure.infrastructure: no such infrastructure"));
    assert!(
        stderr.ends_with(
            "error: the plan is not valid (31 errors); run `validate` for the details\n"
        ),
        "{stderr}"
    );
    assert!(Store::open(store).unwrap().list().unwrap().is_empty());

    let simple = fixture("plans/original/dop_common/spec/fixtures/simple_plan.yaml");
    assert_eq!(dopi(store, &["add", &simple]).status.code(), Some(0));
    let other = fixture("plans/original/dop_common/spec/fixtures/other_plan_same_nodes.yaml");
    let out = dopi(store, &["add", &other]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: plan 'other_plan' declares nodes that belong to other plans: \
         'linux01.example.com' (in plan 'simple_plan'); node names are unique across the store\n"
    );
}

#[test]
fn show_works_while_another_process_holds_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path();
    assert_eq!(
        dopi(store_dir, &["add", &fixture("plans/valid/demo.yaml")])
            .status
            .code(),
        Some(0)
    );
    // This test process holds the plan, as a run would; dopi runs as another process.
    let store = Store::open(store_dir).unwrap();
    let lock = store.lock("demo", "dopi run").unwrap();
    store
        .write_state(
            &lock,
            App::Dopi,
            &[(
                "default/prepare the nodes/db01.demo.local".into(),
                Some(serde_json::json!({"state": "done"})),
            )],
            None,
        )
        .unwrap();

    let out = dopi(store_dir, &["show", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let pid = std::process::id();
    assert!(
        shown.contains(&format!("locked by 'dopi run' (pid {pid} on ")),
        "{shown}"
    );
    assert!(
        shown.contains("  [ready] 1. prepare the nodes: 4 node(s): 1 done, 3 ready"),
        "{shown}"
    );

    let out = dopi(store_dir, &["update", &fixture("plans/valid/demo.yaml")]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out.stderr).contains(&format!(
        "plan 'demo' is locked by 'dopi run' (pid {pid} on "
    )));
    let out = dopi(store_dir, &["remove", "demo"]);
    assert_eq!(out.status.code(), Some(3));

    drop(lock);
    let out = dopi(store_dir, &["show", "demo", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["locked_by"], serde_json::Value::Null);
    assert_eq!(shown["serial"], 1);
}

#[test]
fn remove_refuses_a_plan_with_deployed_nodes_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path();
    assert_eq!(
        dopi(store_dir, &["add", &fixture("plans/valid/minimal.yaml")])
            .status
            .code(),
        Some(0)
    );
    let store = Store::open(store_dir).unwrap();
    let lock = store.lock("minimal", "dopv deploy").unwrap();
    store
        .write_state(
            &lock,
            App::Dopv,
            &[("linux01.example.com".into(), Some(serde_json::json!({})))],
            None,
        )
        .unwrap();
    drop(lock);
    let out = dopi(store_dir, &["remove", "minimal"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr)
        .contains("still has 1 deployed node in the dopv state (linux01.example.com)"));
    let out = dopi(store_dir, &["remove", "minimal", "--force"]);
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn import_of_an_original_store() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path();
    let out = dopi(store_dir, &["import-store", &fixture("stores/original")]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "imported plan 'simple_plan': 2 iteration(s), 2 dopi and 2 dopv state record(s)\n"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "20170306121502000001.yaml: not a valid plan: the node needs an 'infrastructure'"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("broken_plan: no version of this plan is valid"),
        "{stderr}"
    );

    let out = dopi(store_dir, &["versions", "simple_plan", "--json"]);
    let versions: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    // The original version times are kept; the unpadded stamp sorts by its time.
    assert_eq!(versions[0]["time_ms"], 1_488_795_302_000u64);
    assert_eq!(versions[1]["time_ms"], 1_488_881_702_000u64);
    assert_eq!(versions[1]["nodes"], 2);

    let out = dopi(store_dir, &["show", "simple_plan", "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = &shown["step_sets"][0]["steps"][0]["nodes"];
    assert_eq!(nodes["linux01.example.com"]["state"], "done");
    assert_eq!(nodes["linux02.example.com"]["state"], "failed");
    let dopv = Store::open(store_dir)
        .unwrap()
        .state("simple_plan", App::Dopv)
        .unwrap();
    assert_eq!(
        dopv.records["linux01.example.com"]["data_volumes"][0]["name"],
        "data1"
    );
    assert_eq!(
        dopv.records["linux01.example.com"]["facts"]["ip_addresses"][0],
        "10.0.0.5"
    );

    // A second import leaves the imported plan alone.
    let out = dopi(store_dir, &["import-store", &fixture("stores/original")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("a plan named 'simple_plan' is already in the store"));

    let out = dopi(store_dir, &["import-store", &fixture("plans/valid")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is this an original DOP plan store"));
}
