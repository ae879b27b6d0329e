//! The store against a real sled directory and a real PostgreSQL database (`common`): the
//! tests of iterations, diffs, node ownership, locks between processes, durability when a
//! writer is killed with SIGKILL and state sessions run on both backends
//! ([`on_both_backends!`]); those of sled's own files (damage, torn snapshots, a full disk,
//! databases held open and given up to another process) on sled alone.

#[macro_use]
mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

use dop_core::{load_file, LookupSettings, Plan};
use dop_store::{App, Store, StoreError, Stored};

fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/plans")
        .join(relative)
}

fn plan(relative: &str) -> (String, Plan) {
    let loaded = load_file(&fixture(relative), &LookupSettings::default());
    let text = loaded.expanded.as_ref().unwrap().text.clone();
    (text, loaded.plan.expect("valid fixture"))
}

// ---- child processes -------------------------------------------------------------------------

/// A helper process: this test binary run again in a role, with its protocol output.
struct Helper {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Helper {
    /// Runs this test binary again as a helper process doing `role` on the store of `bed`.
    fn spawn(role: &str, bed: &common::Bed, arg: &str) -> Helper {
        let mut command = Command::new(std::env::current_exe().unwrap());
        if let Some(url) = bed.url() {
            command.env("DOP_STORE_TEST_URL", url);
        }
        let mut child = command
            .args([
                "--exact",
                "child_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DOP_STORE_TEST_ROLE", role)
            .env("DOP_STORE_TEST_DIR", bed.path())
            .env("DOP_STORE_TEST_ARG", arg)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Helper { child, out }
    }

    fn id(&self) -> u32 {
        self.child.id()
    }

    /// Reads protocol lines (`@@ ...`, possibly after test-harness text on the same line)
    /// until `until` returns true or the helper ends.
    fn read(&mut self, mut until: impl FnMut(&str) -> bool) -> Vec<String> {
        let mut lines = Vec::new();
        let mut line = String::new();
        while self.out.read_line(&mut line).unwrap_or(0) > 0 {
            if let Some(at) = line.find("@@ ") {
                let msg = line[at + 3..].trim().to_string();
                let stop = until(&msg);
                lines.push(msg);
                if stop {
                    break;
                }
            }
            line.clear();
        }
        lines
    }

    /// Stops the helper by pid (SIGKILL) and reaps it.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The helper process: not a test of its own (it returns at once when run normally).
#[test]
fn child_process() {
    let Ok(role) = std::env::var("DOP_STORE_TEST_ROLE") else {
        return;
    };
    let dir = PathBuf::from(std::env::var("DOP_STORE_TEST_DIR").unwrap());
    let arg = std::env::var("DOP_STORE_TEST_ARG").unwrap();
    let url = std::env::var("DOP_STORE_TEST_URL").ok();
    let store = Store::open_at(&dir, url.as_deref()).unwrap();
    let say = |msg: String| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "@@ {msg}");
        let _ = out.flush();
    };
    match role.as_str() {
        // Writes state record after state record until killed, reporting each one done.
        "writer" => {
            let start: u64 = arg.parse().unwrap();
            let lock = store.lock("crash", "writer").unwrap();
            say(format!(
                "locked {}",
                lock.took_over_from().map_or(0, |h| h.pid)
            ));
            for i in start.. {
                let value =
                    serde_json::json!({ "i": i, "padding": "x".repeat((i % 7) as usize * 100) });
                store
                    .write_state(&lock, App::Dopi, &[(format!("k{i:06}"), Some(value))], None)
                    .unwrap();
                say(format!("done {i}"));
            }
        }
        // The same through a run's state session, which keeps the database open.
        "session-writer" => {
            let lock = store.lock("crash", "session writer").unwrap();
            let session = store.state_session(&lock);
            say("locked".into());
            for i in 0.. {
                let value = serde_json::json!({ "i": i });
                session
                    .write(App::Dopi, vec![(format!("k{i:06}"), Some(value))])
                    .unwrap();
                // Few reports, so a full pipe never pauses the writer.
                if i <= 20 || i % 50 == 0 {
                    say(format!("done {i}"));
                }
            }
        }
        // Takes the lock of plan `arg` and holds it until killed.
        "holder" => match store.lock(&arg, "holder") {
            Ok(_lock) => {
                say("locked".into());
                std::thread::sleep(Duration::from_secs(60));
            }
            Err(e) => say(format!("refused {e}")),
        },
        // Waits for `go`, tries to take the lock of plan `arg`, reports, and holds a won lock
        // until `release` appears (bounded), so the race does not depend on timing.
        "racer" => {
            let wait_for = |name: &str| {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while !dir.join(name).exists() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            };
            wait_for("go");
            match store.lock(&arg, "racer") {
                Ok(_lock) => {
                    say("won".into());
                    wait_for("release");
                }
                Err(e) => say(format!("refused {e}")),
            }
        }
        other => panic!("unknown role {other}"),
    }
}

// ---- iterations ------------------------------------------------------------------------------

on_both_backends! {
fn add_update_versions_export_and_diff(bed: &Bed) {
    let store = bed.open();
    let (before_text, before) = plan("diff/before.yaml");
    let (after_text, after) = plan("diff/after.yaml");

    let Stored::New(first) = store.add(&before_text, &before, None, false).unwrap() else {
        panic!("stored")
    };
    assert_eq!((first.number, first.nodes), (1, 5));
    assert!(matches!(
        store.add(&before_text, &before, None, false),
        Err(StoreError::PlanExists(_))
    ));
    assert!(
        matches!(store.update(&before_text, &before, None).unwrap(), Stored::Unchanged(i) if i.number == 1)
    );
    let Stored::New(second) = store.update(&after_text, &after, None).unwrap() else {
        panic!()
    };
    assert_eq!(second.number, 2);
    assert_ne!(first.hash, second.hash);

    let versions = store.versions("shop").unwrap();
    assert_eq!(
        versions.iter().map(|v| v.number).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(store.iteration("shop", Some(1)).unwrap().text, before_text);
    assert_eq!(store.iteration("shop", None).unwrap().plan, after);
    let (from, to, diff) = store.diff("shop", None, None).unwrap();
    assert_eq!((from, to), (1, 2));
    assert_eq!(diff, dop_core::PlanDiff::between(&before, &after));
    assert!(matches!(
        store.iteration("shop", Some(7)),
        Err(StoreError::NoSuchIteration {
            number: 7,
            latest: 2,
            ..
        })
    ));
    assert!(matches!(
        store.versions("nope"),
        Err(StoreError::NoSuchPlan(_))
    ));

    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), listed[0].latest), ("shop", 2));
    assert!(listed[0].nodes.contains(&"web04.example.com".to_string()));
}}

on_both_backends! {
fn node_names_are_unique_across_plans(bed: &Bed) {
    let store = bed.open();
    let (text, simple) = plan("original/dop_common/spec/fixtures/simple_plan.yaml");
    store.add(&text, &simple, None, false).unwrap();
    let (other_text, other) = plan("original/dop_common/spec/fixtures/other_plan_same_nodes.yaml");
    let err = store.add(&other_text, &other, None, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "plan 'other_plan' declares nodes that belong to other plans: 'linux01.example.com' (in \
         plan 'simple_plan'); node names are unique across the store"
    );
    // Removing the owner frees the name.
    store.remove("simple_plan", false, false).unwrap();
    assert!(matches!(
        store.add(&other_text, &other, None, false).unwrap(),
        Stored::New(_)
    ));
    assert!(!bed.path().join("plans/simple_plan").exists());
}}

on_both_backends! {
fn remove_keeps_or_refuses_deployed_state(bed: &Bed) {
    let store = bed.open();
    let (text, p) = plan("valid/minimal.yaml");
    store.add(&text, &p, None, false).unwrap();
    let lock = store.lock("minimal", "test").unwrap();
    let serial = store
        .write_state(
            &lock,
            App::Dopv,
            &[(
                "linux01.example.com".into(),
                Some(serde_json::json!({"deployed": true})),
            )],
            None,
        )
        .unwrap();
    assert_eq!(serial, 1);
    // A mutating command needs the lock this test holds.
    assert!(matches!(
        store.remove("minimal", false, false),
        Err(StoreError::Locked { .. })
    ));
    drop(lock);
    let err = store.remove("minimal", false, false).unwrap_err();
    assert!(
        err.to_string()
            .contains("1 deployed node in the dopv state (linux01.example.com)"),
        "{err}"
    );
    store.remove("minimal", true, false).unwrap();
    assert!(matches!(
        store.entry("minimal"),
        Err(StoreError::NoSuchPlan(_))
    ));
    // The state survived, and a plan added again under the name finds it.
    store.add(&text, &p, None, false).unwrap();
    assert_eq!(store.state("minimal", App::Dopv).unwrap().records.len(), 1);
    store.remove("minimal", false, true).unwrap();
    assert!(store
        .state("minimal", App::Dopv)
        .unwrap()
        .records
        .is_empty());
}}

// ---- state and serials -----------------------------------------------------------------------

on_both_backends! {
fn state_writes_move_the_serial_and_stale_writes_are_refused(bed: &Bed) {
    let store = bed.open();
    let lock = store.lock("plan-a", "test").unwrap();
    let one = store
        .write_state(&lock, App::Dopi, &[("a".into(), Some(1.into()))], Some(0))
        .unwrap();
    let two = store
        .write_state(
            &lock,
            App::Dopi,
            &[("b".into(), Some(2.into())), ("a".into(), None)],
            Some(one),
        )
        .unwrap();
    assert_eq!((one, two), (1, 2));
    let err = store
        .write_state(&lock, App::Dopi, &[("c".into(), Some(3.into()))], Some(1))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::StaleSerial {
                expected: 1,
                actual: 2,
                ..
            }
        ),
        "{err}"
    );
    let state = store.state("plan-a", App::Dopi).unwrap();
    assert_eq!(state.serial, 2);
    assert_eq!(state.records.keys().collect::<Vec<_>>(), ["b"]);
    assert!(store.state("plan-a", App::Dopv).unwrap().records.is_empty());
}}

// ---- locks between processes -----------------------------------------------------------------

on_both_backends! {
fn a_second_holder_is_refused_with_the_holders_name_and_readers_still_read(bed: &Bed) {
    let store = bed.open();
    let (text, p) = plan("valid/minimal.yaml");
    store.add(&text, &p, None, false).unwrap();
    let mut holder = Helper::spawn("holder", bed, "minimal");
    assert_eq!(holder.read(|l| l == "locked"), ["locked"]);

    let err = store.lock("minimal", "test").unwrap_err();
    let StoreError::Locked { holder: who, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(who.pid, holder.id());
    assert_eq!(who.command, "holder");
    assert!(
        err.to_string()
            .starts_with("plan 'minimal' is locked by 'holder' (pid "),
        "{err}"
    );
    assert!(matches!(
        store.update(&text, &p, None),
        Err(StoreError::Locked { .. })
    ));
    // Reading works while the plan is held.
    assert_eq!(store.versions("minimal").unwrap().len(), 1);
    assert!(store
        .state("minimal", App::Dopi)
        .unwrap()
        .records
        .is_empty());
    assert_eq!(
        store.lock_holder("minimal").map(|h| h.pid),
        Some(holder.id())
    );

    // When the holder dies without cleaning up, the lock is free and the taker knows.
    holder.kill();
    let lock = store.lock("minimal", "test").unwrap();
    assert_eq!(lock.took_over_from().map(|h| h.pid), Some(holder.id()));
    drop(lock);
    assert_eq!(store.lock_holder("minimal"), None);
}}

on_both_backends! {
fn two_processes_racing_for_one_plan_one_wins_and_different_plans_both_run(bed: &Bed) {
    bed.open();
    let mut racers: Vec<Helper> = (0..2)
        .map(|_| Helper::spawn("racer", bed, "same"))
        .collect();
    std::fs::write(bed.path().join("go"), "").unwrap();
    let mut results: Vec<String> = racers
        .iter_mut()
        .map(|c| c.read(|_| true).pop().unwrap_or_default())
        .collect();
    results.sort();
    assert_eq!(results[1], "won", "{results:?}");
    assert!(
        results[0].starts_with("refused plan 'same' is locked by 'racer'"),
        "{results:?}"
    );

    std::fs::write(bed.path().join("release"), "").unwrap();
    drop(racers);

    // Two plans: both racers hold their lock at the same time (neither releases before both
    // reported).
    std::fs::remove_file(bed.path().join("release")).unwrap();
    let mut racers: Vec<Helper> = ["one", "two"]
        .iter()
        .map(|p| Helper::spawn("racer", bed, p))
        .collect();
    for r in &mut racers {
        assert_eq!(r.read(|_| true), ["won"]);
    }
    std::fs::write(bed.path().join("release"), "").unwrap();
}}

// ---- durability ------------------------------------------------------------------------------

on_both_backends! {
/// A writer is killed with SIGKILL at varying points, many times. After each kill the store
/// opens, and every transition the writer reported done is there with its value.
fn sigkill_loses_no_reported_transition(bed: &Bed) {
    let store = bed.open();
    let mut next = 0u64;
    let mut previous_pid = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0..12u64 {
        if Instant::now() > deadline {
            break;
        }
        let mut writer = Helper::spawn("writer", bed, &next.to_string());
        let first = writer.read(|l| l.starts_with("locked"));
        // Each writer takes over the lock its killed predecessor left.
        assert_eq!(first, [format!("locked {previous_pid}")]);
        previous_pid = writer.id();
        // Let it write for a varying number of transitions, then kill it mid-stream.
        let target = 5 + (round * 7919) % 40;
        let lines = writer.read(|l| l == format!("done {}", next + target));
        writer.kill();
        let reported: Vec<u64> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("done ")?.parse().ok())
            .collect();
        assert_eq!(
            reported.last(),
            Some(&(next + target)),
            "round {round}: {lines:?}"
        );

        let state = bed
            .open()
            .state("crash", App::Dopi)
            .unwrap();
        for i in 0..=next + target {
            let value = state
                .records
                .get(&format!("k{i:06}"))
                .unwrap_or_else(|| panic!("round {round}: k{i} lost"));
            assert_eq!(value["i"], i);
        }
        // Writes after the last report may or may not have landed; none is half there.
        assert!(state.serial > next + target);
        assert_eq!(state.records.len() as u64, state.serial);
        next = state.serial;
    }
    assert!(next > 50, "only {next} transitions in the time given");
    let _ = store;
}}

on_both_backends! {
/// A run's state session keeps the database open while it writes, yet a reader in another
/// process gets in (the session gives the database up while someone waits), the writes go on,
/// and a SIGKILL loses no transition the session reported durable.
fn a_state_session_lets_readers_in_and_loses_no_reported_transition(bed: &Bed) {
    let store = bed.open();
    let mut writer = Helper::spawn("session-writer", bed, "");
    assert_eq!(writer.read(|l| l == "locked"), ["locked"]);
    writer.read(|l| l == "done 20");
    // The writer never pauses: without the session yielding, this reader would wait for the
    // whole of its patience (5 s) and fail with `Busy`.
    let reader = match bed.url() {
        Some(_) => bed.open(),
        None => Store::with_backend(
            bed.path(),
            Box::new(dop_store::SledBackend {
                wait: Duration::from_secs(5),
            }),
        )
        .unwrap(),
    };
    let mut seen = 0;
    for _ in 0..5 {
        let state = reader.state("crash", App::Dopi).expect("a reader gets in");
        assert!(state.records.len() as u64 > seen, "the writes go on");
        seen = state.records.len() as u64;
        writer.read(|l| l.starts_with("done ") && l[5..].parse::<u64>().unwrap() > seen + 5);
    }
    let lines =
        writer.read(|l| l.starts_with("done ") && l[5..].parse::<u64>().unwrap() > seen + 10);
    writer.kill();
    let last: u64 = lines
        .last()
        .and_then(|l| l.strip_prefix("done ")?.parse().ok())
        .expect("reports");
    let state = store.state("crash", App::Dopi).unwrap();
    for i in 0..=last {
        assert_eq!(state.records[&format!("k{i:06}")]["i"], i, "k{i} lost");
    }
}}

// ---- bad input -------------------------------------------------------------------------------

#[test]
fn bad_plan_names_and_damaged_stores_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    for bad in ["../escape", "a/b", "x\0y", ""] {
        assert!(
            matches!(store.lock(bad, "t"), Err(StoreError::InvalidName(_))),
            "{bad:?}"
        );
        assert!(matches!(
            store.state(bad, App::Dopi),
            Err(StoreError::InvalidName(_))
        ));
    }
    assert!(!dir.path().join("escape").exists());

    // A damaged catalog database.
    let (text, p) = plan("valid/minimal.yaml");
    store.add(&text, &p, None, false).unwrap();
    let catalog = dir.path().join("catalog");
    for entry in std::fs::read_dir(&catalog).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::write(&path, vec![0xa5u8; 4096]).unwrap();
        }
    }
    let result = std::panic::catch_unwind(|| Store::open(dir.path()).unwrap().list());
    let outcome = result.expect("no panic");
    assert!(
        matches!(outcome, Err(StoreError::Corrupt { .. })),
        "{outcome:?}"
    );

    // A state database whose log is overwritten in the middle (the header intact).
    let lock = store.lock("minimal", "t").unwrap();
    for i in 0..50 {
        store
            .write_state(&lock, App::Dopi, &[(format!("r{i}"), Some(i.into()))], None)
            .unwrap();
    }
    drop(lock);
    let db_file = dir.path().join("plans/minimal/state/db");
    let mut bytes = std::fs::read(&db_file).unwrap();
    let middle = bytes.len() / 2;
    let end = (middle + 512).min(bytes.len());
    for b in &mut bytes[middle..end] {
        *b ^= 0x5a;
    }
    std::fs::write(&db_file, bytes).unwrap();
    let result =
        std::panic::catch_unwind(|| Store::open(dir.path()).unwrap().state("minimal", App::Dopi));
    let outcome = result.expect("no panic");
    // sled either notices (an error naming the database) or recovers to a consistent prefix.
    match outcome {
        Err(StoreError::Corrupt { path, .. }) => assert!(path.ends_with("state"), "{path:?}"),
        Ok(state) => assert_eq!(state.records.len() as u64, state.serial),
        Err(other) => panic!("unexpected error: {other}"),
    }

    // A directory that is not a store.
    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("notes.txt"), "mine").unwrap();
    assert!(matches!(
        Store::open(foreign.path()),
        Err(StoreError::Foreign { .. })
    ));
}

/// sled writes a snapshot of a database each time it opens one that changed, to
/// `snap.<lsn>.generating` and then renames it; a process killed in between leaves a torn
/// `.generating` file that sled 0.34 reads as the newest snapshot, calling the database
/// corrupt. Every store operation opens a database, so any kill (SIGKILL of a tool, a server
/// exiting while a thread writes) can land there. The store must open such a database.
#[test]
fn a_snapshot_torn_by_a_kill_does_not_make_the_database_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let lock = store.lock("torn", "t").unwrap();
    for i in 0..20 {
        store
            .write_state(&lock, App::Dopi, &[(format!("r{i}"), Some(i.into()))], None)
            .unwrap();
    }
    let db = dir.path().join("plans/torn/state");
    let snapshot = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .max()
        .expect("sled wrote a snapshot");
    let bytes = std::fs::read(&snapshot).unwrap();
    let torn = snapshot.with_file_name(format!(
        "{}.generating",
        snapshot.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&torn, &bytes[..bytes.len() / 2]).unwrap();

    let state = store.state("torn", App::Dopi).expect("the database opens");
    assert_eq!(state.records.len(), 20);
    assert_eq!(state.records["r19"], 19);
    assert!(!torn.exists(), "the torn snapshot is cleared away");
    store
        .write_state(&lock, App::Dopi, &[("r20".into(), Some(20.into()))], None)
        .unwrap();
    assert_eq!(store.state("torn", App::Dopi).unwrap().records.len(), 21);
}

/// The disk under the store full: writes fail with an error that names the store (never a
/// panic, never "corrupt"), nothing acknowledged is lost, and once there is room the store
/// opens and takes writes again. Root only (a tmpfs is mounted); skipped with the reason else.
#[test]
fn a_full_disk_is_a_clear_error_and_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = match dop_testbed::SmallDisk::mount(&tmp.path().join("disk"), "8m") {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: no small disk for the test: {why}");
            return;
        }
    };
    let store = Store::open(disk.path()).unwrap();
    let lock = store.lock("full", "t").unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..30u64 {
        let key = format!("k{i:03}");
        store
            .write_state(&lock, App::Dopi, &[(key.clone(), Some(i.into()))], None)
            .unwrap();
        acknowledged.push((key, i));
    }
    let filler = disk.fill();
    let mut refused = 0;
    for i in 30..60u64 {
        let key = format!("k{i:03}");
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            store.write_state(&lock, App::Dopi, &[(key.clone(), Some(i.into()))], None)
        }))
        .expect("a full disk must not make the store panic");
        match written {
            Ok(_) => acknowledged.push((key, i)),
            Err(e) => {
                refused += 1;
                assert!(!matches!(e, StoreError::Corrupt { .. }), "{e}");
                let text = e.to_string();
                assert!(
                    text.contains(&*disk.path().to_string_lossy()),
                    "the error names no place: {text}"
                );
            }
        }
    }
    assert!(refused > 0, "the disk was never full");
    std::fs::remove_file(&filler).unwrap();
    let state = store
        .state("full", App::Dopi)
        .expect("the store opens once there is room");
    for (key, i) in &acknowledged {
        assert_eq!(state.records.get(key), Some(&(*i).into()), "{key} lost");
    }
    store
        .write_state(&lock, App::Dopi, &[("after".into(), Some(1.into()))], None)
        .unwrap();
    assert_eq!(store.state("full", App::Dopi).unwrap().records["after"], 1);
}

on_both_backends! {
/// Inside a runtime the session is a task of that runtime and its commits run on the runtime's
/// blocking pool, not on a thread of its own (dopc runs many plans at once on one runtime);
/// outside any runtime it still works, on a small runtime of its own thread.
fn a_state_session_serves_on_the_callers_runtime(bed: &Bed) {
    let store = std::sync::Arc::new(bed.open());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("callers-runtime")
        .enable_all()
        .build()
        .unwrap();
    let in_runtime = store.clone();
    let (serial, committed_on) = runtime.block_on(async move {
        let lock = in_runtime.lock("p", "test").unwrap();
        let session = in_runtime.state_session(&lock);
        let (tx, rx) = tokio::sync::oneshot::channel();
        session.write_then(
            App::Dopi,
            vec![("k".into(), Some(serde_json::json!(1)))],
            move |serial| {
                let name = std::thread::current().name().map(str::to_string);
                let _ = tx.send((serial.unwrap(), name));
            },
        );
        let answer = rx.await.unwrap();
        assert_eq!(session.write_async(App::Dopi, vec![]).await.unwrap(), 2);
        answer
    });
    assert_eq!(serial, 1);
    assert_eq!(committed_on.as_deref(), Some("callers-runtime"));

    let lock = store.lock("p", "test").unwrap();
    let session = store.state_session(&lock);
    let serial = session
        .write(App::Dopi, vec![("k".into(), Some(serde_json::json!(2)))])
        .unwrap();
    assert_eq!(serial, 3);
    assert_eq!(
        session.read(App::Dopi).unwrap().records["k"],
        serde_json::json!(2)
    );
}}

/// Counts the databases a store opens.
struct CountingBackend {
    inner: dop_store::SledBackend,
    opens: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl dop_store::Backend for CountingBackend {
    fn open(
        &self,
        path: &std::path::Path,
    ) -> dop_store::Result<Box<dyn dop_store::Database + Send + Sync>> {
        self.opens.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.open(path)
    }
}

/// A run's session opens its database once: it keeps it while the run waits on its nodes, and
/// readers in the same process (dopc's API) are answered by the session instead of taking the
/// database away from it (each open of a sled database costs milliseconds and a megabyte).
#[test]
fn a_state_session_opens_its_database_once_for_idle_waits_and_readers_of_its_process() {
    let dir = tempfile::tempdir().unwrap();
    let opens = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let store = Store::with_backend(
        dir.path(),
        Box::new(CountingBackend {
            inner: dop_store::SledBackend::default(),
            opens: opens.clone(),
        }),
    )
    .unwrap();
    let lock = store.lock("p", "test").unwrap();
    let session = store.state_session(&lock);
    session
        .write(App::Dopi, vec![("a".into(), Some(serde_json::json!(1)))])
        .unwrap();
    let before = opens.load(std::sync::atomic::Ordering::SeqCst);
    for n in 2..12 {
        // Longer than the session's idle probe, as a command on a node takes.
        std::thread::sleep(Duration::from_millis(80));
        let read = store.state("p", App::Dopi).unwrap();
        assert_eq!(
            read.records["a"],
            serde_json::json!(n - 1),
            "the reader sees the last write"
        );
        session
            .write(App::Dopi, vec![("a".into(), Some(serde_json::json!(n)))])
            .unwrap();
    }
    assert_eq!(
        opens.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "the session's database was opened again"
    );
    drop(session);
    drop(lock);
    // Without a session, a reader opens the database itself.
    assert_eq!(
        store.state("p", App::Dopi).unwrap().records["a"],
        serde_json::json!(11)
    );
    assert_eq!(opens.load(std::sync::atomic::Ordering::SeqCst), before + 1);
}

/// A server that holds its databases opens each once however many requests read them, and
/// another process that wants one still gets it without waiting for the server's next
/// operation; a held plan can still be removed, and a run's session takes its state over.
#[test]
fn held_databases_open_once_let_another_process_in_and_give_way_to_remove_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let opens = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = || opens.load(std::sync::atomic::Ordering::SeqCst);
    let store = Store::with_backend(
        dir.path(),
        Box::new(CountingBackend {
            inner: dop_store::SledBackend::default(),
            opens: opens.clone(),
        }),
    )
    .unwrap();
    store.hold_databases();
    let (text, before) = plan("diff/before.yaml");
    store.add(&text, &before, None, false).unwrap();
    let name = before.name.clone();
    for n in 0..20u64 {
        store
            .records()
            .write(&[(format!("k{n}"), Some(serde_json::json!(n)))])
            .unwrap();
        assert_eq!(
            store.records().get::<u64>(&format!("k{n}")).unwrap(),
            Some(n)
        );
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(store.iteration(&name, None).unwrap().info.number, 1);
        assert!(store.state(&name, App::Dopi).unwrap().records.is_empty());
    }
    // The catalog, the iterations, the records; the state database does not exist yet.
    assert_eq!(count(), 3, "a held database was opened again");

    // Another process (a second store on the same directory behaves as one) waits for two of
    // them; the holder lets it in while doing nothing.
    let other = Store::with_backend(
        dir.path(),
        Box::new(dop_store::SledBackend {
            wait: Duration::from_secs(20),
        }),
    )
    .unwrap();
    let reader = std::thread::spawn(move || {
        let record = other.records().get::<u64>("k7").unwrap();
        let plans = other.list().unwrap().len();
        (record, plans)
    });
    assert_eq!(reader.join().unwrap(), (Some(7), 1));
    // The holder opens them again when it needs them next.
    assert_eq!(store.records().get::<u64>("k3").unwrap(), Some(3));
    assert_eq!(count(), 4);

    // A run in this process takes the plan's state over from the holder.
    let lock = store.lock(&name, "test").unwrap();
    store
        .write_state(
            &lock,
            App::Dopv,
            &[("n".into(), Some(serde_json::json!(1)))],
            None,
        )
        .unwrap();
    let session = store.state_session(&lock);
    session
        .write(App::Dopi, vec![("a".into(), Some(serde_json::json!(1)))])
        .unwrap();
    drop(session);
    store
        .write_state(&lock, App::Dopv, &[("n".into(), None)], None)
        .unwrap();
    drop(lock);
    // Opened once, for the first write: the session took it over and gave it back.
    assert_eq!(count(), 5);

    // Removing a held plan removes its files, and it can be added again.
    store.remove(&name, false, false).unwrap();
    let layout = dop_store::Layout::new(dir.path());
    assert!(!layout.iterations(&name).exists() && !layout.state(&name).exists());
    assert!(store.list().unwrap().is_empty());
    store.add(&text, &before, None, false).unwrap();
    assert_eq!(store.iteration(&name, None).unwrap().info.number, 1);
}
