//! dopv on a store in a real PostgreSQL database (`--store-url`): two labs (two store
//! directories) on one database see one deployment state, and a plan's run lock held through
//! the database keeps `dopv sync` out, naming the holder.

use dop_store::{App, Store};
use dop_testbed::dopv::DopvLab;
use dop_testbed::postgres::PgCluster;
use dop_testbed::process::text;

const PLAN: &str = "name: metal
infrastructures:
  dc: {type: baremetal, ssh_port: 2222}
nodes:
  m1: {infrastructure: dc}
  m2: {infrastructure: dc}
";

/// `--store-url URL` and `args`.
fn with_url<'a>(url: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--store-url", url];
    all.extend_from_slice(args);
    all
}

#[test]
fn two_labs_share_the_deployment_state_and_respect_the_run_lock() {
    assert!(
        dop_testbed::postgres::available(),
        "PostgreSQL is not installed: `bash .ci/install-deps` installs it"
    );
    let pg = PgCluster::start().expect("the PostgreSQL cluster starts");
    let url = pg.create_database("dopv").unwrap();
    let (one, two) = (
        DopvLab::new(env!("CARGO_BIN_EXE_dopv")),
        DopvLab::new(env!("CARGO_BIN_EXE_dopv")),
    );
    let file = one.path().join("plan.yaml");
    std::fs::write(&file, PLAN).unwrap();
    one.expect(&with_url(&url, &["add", file.to_str().unwrap()]), 0);

    // A run lock taken through the database by another process keeps sync out.
    let store = Store::open_at(&two.path().join("holder"), Some(&url)).unwrap();
    let lock = store.lock("metal", "dopv test holder").unwrap();
    let refused = one.dopv(&with_url(&url, &["sync", "metal"]));
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused.stderr));
    assert!(
        text(&refused.stderr).contains(&format!(
            "plan 'metal' is locked by 'dopv test holder' (pid {}",
            std::process::id()
        )),
        "{}",
        text(&refused.stderr)
    );
    drop(lock);

    one.expect(&with_url(&url, &["sync", "metal"]), 0);
    // The other lab reads the state the first one wrote.
    let shown = two.json(&with_url(&url, &["show", "metal"]), 0);
    let status: Vec<&str> = shown["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(status, ["deployed", "deployed"], "{shown}");
    assert_eq!(store.state("metal", App::Dopv).unwrap().records.len(), 2);
    assert!(
        !one.store_dir().join("catalog/db").exists(),
        "nothing went to sled"
    );
}
