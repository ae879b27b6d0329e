//! dopi on a store in a real PostgreSQL database (`--store-url`, `DOP_STORE_URL`): two hosts
//! (two store directories) share the plans, the state and the run locks; a wrong URL, a
//! refused password, a database that is down and a newer schema are each a clear error, exit
//! 1, with nothing written.

mod common;

use std::path::Path;

use common::{text_of, World};
use dop_testbed::postgres::PgCluster;

fn cluster() -> PgCluster {
    assert!(
        dop_testbed::postgres::available(),
        "PostgreSQL is not installed: `bash .ci/install-deps` installs it"
    );
    PgCluster::start().expect("the PostgreSQL cluster starts")
}

/// `dopi --store-url URL <args>` in world `w`.
fn dopi<'a>(w: &World, url: &'a str, args: &[&'a str]) -> std::process::Output {
    let mut all = vec!["--store-url", url];
    all.extend_from_slice(args);
    w.dopi(&all)
}

const PLAN: &str = "name: shared
infrastructures: {lab: {type: local}}
nodes:
  n{i}.lab: {infrastructure: lab, range: 1..2}
steps:
  - name: first
    nodes: all
    command: {plugin: custom, exec: 'echo $DOP_NODE_NAME >> WORK/first'}
  - name: hold
    nodes: all
    command:
      plugin: custom
      exec: 'touch WORK/holding; for i in $(seq 400); do test -e WORK/go && break; sleep 0.05; done'
";

#[test]
fn two_hosts_share_plans_state_and_locks_through_one_database() {
    let pg = cluster();
    let url = pg.create_database("shared").unwrap();
    let (one, two) = (World::new(), World::new());
    // Both hosts' commands write into host one's work directory.
    let plan = one.path().join("shared.yaml");
    std::fs::write(&plan, PLAN.replace("WORK", one.work().to_str().unwrap())).unwrap();
    let out = dopi(&one, &url, &["add", plan.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    // Host two sees the plan host one added.
    let out = dopi(&two, &url, &["list"]);
    assert!(text_of(&out.stdout).contains("shared"), "{out:?}");

    // Host one runs; while its `hold` step runs, host two's run is refused by the lock.
    let mut running = common::Running::spawn(
        one.command(&["--store-url", &url, "run", "shared", "-q"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let holding = one.work().join("holding");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !holding.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(holding.exists(), "the run reached its hold step");
    let refused = dopi(&two, &url, &["run", "shared"]);
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    let err = text_of(&refused.stderr);
    assert!(
        err.contains(&format!(
            "plan 'shared' is locked by 'dopi run' (pid {}",
            running.id()
        )),
        "{err}"
    );
    std::fs::write(one.work().join("go"), "").unwrap();
    assert!(running.wait().success());
    assert_eq!(one.lines("first").len(), 2);

    // Host two reads the state host one wrote, and a run there finds nothing left to do.
    let show = dopi(&two, &url, &["show", "shared", "--json"]);
    let show: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(show["step_sets"][0]["state"], "done", "{show}");
    let again = dopi(&two, &url, &["run", "shared"]);
    assert_eq!(again.status.code(), Some(0), "{}", text_of(&again.stderr));
    assert_eq!(one.lines("first").len(), 2, "done work is not redone");
    // Nothing went to sled in either directory.
    for w in [&one, &two] {
        assert!(!w.path().join("store/catalog/db").exists());
    }
}

/// Rows in the store's tables (0 when they are not there).
fn rows(pg: &PgCluster, db: &str) -> String {
    pg.psql(
        db,
        "SELECT CASE WHEN to_regclass('dop_kv') IS NULL THEN -1 \
         ELSE (SELECT count(*) FROM dop_kv) END",
    )
    .unwrap()
}

#[test]
fn bad_urls_refused_logins_a_database_down_and_a_newer_schema_exit_1_writing_nothing() {
    let pg = cluster();
    let w = World::new();
    let plan = w.path().join("shared.yaml");
    std::fs::write(&plan, PLAN.replace("WORK", w.work().to_str().unwrap())).unwrap();
    let plan = plan.to_str().unwrap();
    let good = pg.create_database("bad_input").unwrap();
    let fails = |url: &str, expected: &str| {
        let out = dopi(&w, url, &["add", plan]);
        let err = text_of(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {err}");
        assert!(err.contains(expected), "{url}: {err}");
        assert!(
            !err.contains("dop-test-secret"),
            "the password is shown: {err}"
        );
        assert!(
            !w.path().join("store").exists(),
            "{url}: the store directory was made"
        );
    };
    fails(
        "mysql://dop@127.0.80.1/x",
        "the store URL 'mysql://dop@127.0.80.1/x' is not a PostgreSQL URL",
    );
    let wrong_password = good.replace("dop-test-secret", "wrong");
    fails(
        &wrong_password,
        "refused the login: password authentication failed",
    );
    // A second cluster, stopped: nothing listens on its port any more.
    let mut stopped = cluster();
    let down_url = stopped.url("postgres");
    stopped.stop();
    fails(
        &down_url,
        &format!(
            "cannot reach the PostgreSQL store dop@127.0.80.1:{}/postgres",
            stopped.port()
        ),
    );
    // A database a newer dop migrated: refused, and not touched.
    let out = dopi(&w, &good, &["list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    std::fs::remove_dir_all(w.path().join("store")).unwrap();
    let before = rows(&pg, "bad_input");
    pg.psql("bad_input", "INSERT INTO dop_schema (version) VALUES (99)")
        .unwrap();
    fails(
        &good,
        &format!(
            "has schema version 99, newer than the {} this dop knows",
            dop_store::SCHEMA_VERSION
        ),
    );
    assert_eq!(rows(&pg, "bad_input"), before, "nothing was written");
    assert!(!Path::new(&w.path().join("store")).exists());
}
