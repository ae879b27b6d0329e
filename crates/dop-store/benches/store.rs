//! Store costs with a long history: 1 000 iterations of a 1 000-node plan.
//!
//! Reported against baselines measured in the same run:
//! * add: writing the same text to a file and fsyncing it (what the original store did);
//! * diff of neighbours: `PlanDiff::between` on plans already in memory (so the ratio is the
//!   cost of fetching and decompressing two iterations);
//! * open: opening an empty sled database;
//! * state transitions of 20 plans at once: 20 runs, each with its state session on one
//!   2-worker runtime (as in dopc), each writing its transitions one after another; against
//!   the same file write + fsync.
//!
//! Run with `cargo xtask bench store` (release mode). `DOP_BENCH_ITERATIONS` lowers the count.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

use dop_core::{load_str, LookupSettings, PlanDiff};
use dop_store::{App, Store};

const NODES: usize = 1000;

fn plan_text() -> String {
    let mut t = String::from("name: big\ninfrastructures:\n  lab: {type: baremetal}\nnodes:\n");
    for i in 0..NODES {
        let _ = writeln!(
            t,
            "  node{i:04}.example.com:\n    infrastructure: lab\n    fqdn: node{i:04}.example.com"
        );
    }
    t.push_str("steps:\n  - name: all\n    nodes: all\n    command: {plugin: ssh/custom, exec: /bin/true}\n");
    t
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let iterations: u64 = std::env::var("DOP_BENCH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir_in(std::env::var_os("DOP_BENCH_DIR").unwrap_or_else(|| ".".into()))
        .unwrap();
    let base = plan_text();
    let plan = load_str(&base, None, &LookupSettings::default())
        .plan
        .expect("valid");

    // Baseline for add: the text to a file, fsynced.
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let start = Instant::now();
    for n in 0..iterations.min(200) {
        let mut f = std::fs::File::create(files.join(format!("{n}.yaml"))).unwrap();
        f.write_all(base.as_bytes()).unwrap();
        f.sync_all().unwrap();
    }
    let file_write = start.elapsed() / iterations.min(200) as u32;

    let store = Store::open(&dir.path().join("store")).unwrap();
    let mut plans = Vec::with_capacity(iterations as usize);
    let start = Instant::now();
    for n in 1..=iterations {
        // Each iteration changes one node's image and its text by a comment.
        let mut p = plan.clone();
        p.nodes[(n as usize * 7) % NODES].image = Some(format!("image-{n}"));
        let text = format!("{base}# iteration {n}\n");
        if n == 1 {
            store.add(&text, &p, None, false).unwrap();
        } else {
            store.update(&text, &p, None).unwrap();
        }
        if n > iterations - 20 {
            plans.push(p);
        }
    }
    let add = start.elapsed() / iterations as u32;

    let sample = 20.min(iterations - 1);
    let start = Instant::now();
    for n in (iterations - sample + 1)..=iterations {
        let (_, _, diff) = store.diff("big", Some(n - 1), Some(n)).unwrap();
        assert_eq!(diff.nodes.len(), 2);
    }
    let diff = start.elapsed() / sample as u32;
    let start = Instant::now();
    for pair in plans.windows(2) {
        let d = PlanDiff::between(&pair[0], &pair[1]);
        assert_eq!(d.nodes.len(), 2);
    }
    let diff_memory = start.elapsed() / (plans.len() as u32 - 1);

    let empty = dir.path().join("empty");
    let start = Instant::now();
    drop(Store::open(&empty).unwrap().list().unwrap());
    let open_empty = start.elapsed();
    let start = Instant::now();
    let reopened = Store::open(&dir.path().join("store")).unwrap();
    let versions = reopened.versions("big").unwrap();
    let open_versions = start.elapsed();
    assert_eq!(versions.len() as u64, iterations);

    let lock = reopened.lock("big", "bench").unwrap();
    let start = Instant::now();
    for i in 0..200 {
        reopened
            .write_state(
                &lock,
                App::Dopi,
                &[(
                    format!("all/all/node{i:04}.example.com"),
                    Some(serde_json::json!({"state": "done"})),
                )],
                None,
            )
            .unwrap();
    }
    let transition = start.elapsed() / 200;
    let file_transition = file_write;
    // The same transitions through a run's state session (database kept open), one at a time
    // (no group commit helps here).
    let session = reopened.state_session(&lock);
    let start = Instant::now();
    for i in 0..200 {
        session
            .write(
                App::Dopi,
                vec![(
                    format!("all/all/node{i:04}.example.com"),
                    Some(serde_json::json!({"state": "done", "again": true})),
                )],
            )
            .unwrap();
    }
    let session_transition = start.elapsed() / 200;
    drop(session);
    let (concurrent_mean, concurrent_p99) = twenty_plans_at_once(&reopened);
    let start = Instant::now();
    assert_eq!(reopened.state("big", App::Dopi).unwrap().records.len(), 200);
    let open_state = start.elapsed();

    let size: u64 = walk_size(&dir.path().join("store"));
    println!(
        "store: {iterations} iterations of a {NODES}-node plan ({:.0} KiB of text each)",
        base.len() as f64 / 1024.0
    );
    let row = |label: &str, d: Duration, baseline: Duration, what: &str| {
        println!(
            "  {label:<38} {:>8.2} ms  {:>6.2}x {what}",
            ms(d),
            d.as_secs_f64() / baseline.as_secs_f64()
        );
    };
    println!(
        "  {:<38} {:>8.2} ms  (baseline)",
        "write the text to a file + fsync",
        ms(file_write)
    );
    row(
        "add an iteration (catalog + iteration)",
        add,
        file_write,
        "file write",
    );
    println!(
        "  {:<38} {:>8.2} ms  (baseline)",
        "diff of neighbours in memory",
        ms(diff_memory)
    );
    row(
        "diff of neighbours from the store",
        diff,
        diff_memory,
        "in memory",
    );
    println!(
        "  {:<38} {:>8.2} ms  (baseline)",
        "open an empty store and list",
        ms(open_empty)
    );
    row(
        "open and list all iterations",
        open_versions,
        open_empty,
        "empty store",
    );
    row(
        "read 200 state records (own database)",
        open_state,
        open_empty,
        "empty store",
    );
    row(
        "one durable state transition",
        transition,
        file_transition,
        "file write",
    );
    row(
        "the same through a run's state session",
        session_transition,
        file_transition,
        "file write",
    );
    row(
        &format!("{PLANS_AT_ONCE} plans at once: a transition, mean"),
        concurrent_mean,
        file_transition,
        "file write",
    );
    row(
        &format!("{PLANS_AT_ONCE} plans at once: a transition, p99"),
        concurrent_p99,
        file_transition,
        "file write",
    );
    println!(
        "  size on disk: {:.1} MiB ({:.1} KiB per iteration)",
        size as f64 / 1_048_576.0,
        size as f64 / 1024.0 / iterations as f64
    );
}

const PLANS_AT_ONCE: usize = 20;

/// 20 runs writing their state at once, as in dopc: one runtime of 2 workers, a state session
/// per plan, each run awaiting its transitions one after another (100 each). Returns the mean
/// and the 99th percentile of one transition's wait.
fn twenty_plans_at_once(store: &Store) -> (Duration, Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let locks: Vec<_> = (0..PLANS_AT_ONCE)
        .map(|p| {
            let name = format!("busy{p:02}");
            // Plans may not share nodes: each busy plan has nodes of its own.
            let text = plan_text()
                .replacen("name: big", &format!("name: {name}"), 1)
                .replace(".example.com", &format!(".{name}.example.com"));
            let plan = load_str(&text, None, &LookupSettings::default())
                .plan
                .expect("valid");
            store.add(&text, &plan, None, false).unwrap();
            let lock = store.lock(&name, "bench").unwrap();
            (name, lock)
        })
        .collect();
    let mut waits = runtime.block_on(async {
        let runs: Vec<_> = locks
            .iter()
            .map(|(name, lock)| {
                let session = store.state_session(lock);
                let name = name.clone();
                tokio::spawn(async move {
                    let mut waits = Vec::with_capacity(100);
                    for i in 0..100 {
                        let start = Instant::now();
                        session
                            .write_async(
                                App::Dopi,
                                vec![(
                                    format!("all/all/node{i:04}.{name}.example.com"),
                                    Some(serde_json::json!({"state": "done"})),
                                )],
                            )
                            .await
                            .unwrap();
                        waits.push(start.elapsed());
                    }
                    waits
                })
            })
            .collect();
        let mut all = Vec::new();
        for run in runs {
            all.extend(run.await.unwrap());
        }
        all
    });
    drop(locks);
    waits.sort();
    let mean = waits.iter().sum::<Duration>() / waits.len() as u32;
    (mean, waits[(waits.len() - 1) * 99 / 100])
}

fn walk_size(path: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![path.to_path_buf()];
    while let Some(p) = todo.pop() {
        if let Ok(entries) = std::fs::read_dir(&p) {
            for e in entries.flatten() {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    todo.push(e.path());
                } else {
                    total += m.len();
                }
            }
        }
    }
    total
}
