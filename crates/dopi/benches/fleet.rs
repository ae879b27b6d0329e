//! 10 000 nodes from one dopi process (issue 27, point 5): 50 sshd processes of 16 loopback
//! addresses each (800 hosts, `MaxStartups` accepting every connection, `MaxSessions 64`), the
//! nodes spread over them, one step of `true` on all nodes, at `max_in_flight` 50 and -1. The
//! run is sampled every 100 ms for its resident memory, open files and threads; the baseline,
//! in the same invocation, is the same run over the first 200 nodes.
//!
//! Run with `cargo xtask bench fleet` (release mode; about 10 minutes on 2 cores: every node
//! logs in once). `DOP_BENCH_FLEET_NODES` changes the node count.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dop_testbed::{fleet, process, Options, Testbed};

const PORT: u16 = 2392;
const FIRST: u32 = 1201;
const SSHDS: usize = 50;

/// The peaks of a run, and how it went.
struct Sampled {
    wall: Duration,
    rss_kib: u64,
    open_files: usize,
    threads: u64,
    not_done: usize,
    status: Option<i32>,
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn dopi(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dopi"));
    c.env("DOP_CONFIG", "/dev/null")
        .env("DOP_STORE_DIR", dir.join("store"))
        .env("DOP_LOG_DIR", dir.join("logs"))
        .args(args)
        .stdin(Stdio::null());
    c
}

fn run(dir: &Path, testbed: &Testbed, nodes: usize, max_in_flight: i64) -> Sampled {
    let name = format!("fleet{nodes}x{}", max_in_flight.max(0));
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &file,
        fleet::plan_of(testbed, &name, nodes, 1, max_in_flight),
    )
    .expect("plan");
    let added = dopi(dir, &["add", file.to_str().expect("utf-8")])
        .output()
        .expect("dopi add");
    assert!(added.status.success(), "{}", process::text(&added.stderr));
    let started = Instant::now();
    let mut child = process::Running::spawn(
        dopi(dir, &["run", &name, "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let pid = child.id();
    let (mut rss_kib, mut files, mut most_threads) = (0, 0, 0);
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("wait") {
            break status;
        }
        rss_kib = rss_kib.max(process::rss_kib(pid));
        files = files.max(open_files(pid));
        most_threads = most_threads.max(threads(pid));
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = started.elapsed();
    let shown = dopi(dir, &["show", &name, "--json"])
        .output()
        .expect("dopi show");
    let show: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
    let not_done = show["step_sets"][0]["steps"][0]["nodes"]
        .as_object()
        .map_or(nodes, |n| {
            n.values().filter(|s| s["state"] != "done").count() + nodes.saturating_sub(n.len())
        });
    Sampled {
        wall,
        rss_kib,
        open_files: files,
        threads: most_threads,
        not_done,
        status: status.code(),
    }
}

fn main() {
    if !Testbed::available() {
        eprintln!("sshd is not installed: run .ci/install-deps first");
        std::process::exit(1);
    }
    let nodes: usize = std::env::var("DOP_BENCH_FLEET_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let options = Options {
        max_startups: "1000:30:2000".into(),
        max_sessions: 64,
        ..Options::new(SSHDS * dop_testbed::ADDRESSES_PER_SSHD, PORT, FIRST)
    };
    let testbed = Testbed::start(&dir.path().join("testbed"), &options).expect("testbed");
    eprintln!(
        "{nodes} nodes on {} addresses of {SSHDS} sshd processes",
        testbed.addresses.len()
    );
    let baseline_nodes = nodes.min(200);
    let mut rows = Vec::new();
    for (count, max_in_flight) in [
        (baseline_nodes, 50),
        (nodes, 50),
        (baseline_nodes, -1),
        (nodes, -1),
    ] {
        eprintln!("dopi run: {count} nodes, max_in_flight {max_in_flight}…");
        let work = dir.path().join(format!("run-{count}-{max_in_flight}"));
        std::fs::create_dir_all(&work).expect("work dir");
        let sampled = run(&work, &testbed, count, max_in_flight);
        rows.push((count, max_in_flight, sampled));
    }
    drop(testbed);

    println!("\nfleet: one step of `true` on every node, {SSHDS} sshd processes; baseline: the same run over {baseline_nodes} nodes\n");
    println!("| nodes | max_in_flight | wall | per node | peak RSS | RSS vs baseline | peak open files | peak threads | not done | exit |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (count, max_in_flight, s) in &rows {
        let baseline = rows
            .iter()
            .find(|(c, m, _)| *c == baseline_nodes && m == max_in_flight)
            .map_or(1, |(_, _, b)| b.rss_kib.max(1));
        println!(
            "| {count} | {max_in_flight} | {:.1} s | {:.2} ms | {:.1} MiB | {:.2}x | {} | {} | {} | {} |",
            s.wall.as_secs_f64(),
            s.wall.as_secs_f64() * 1e3 / *count as f64,
            s.rss_kib as f64 / 1024.0,
            s.rss_kib as f64 / baseline as f64,
            s.open_files,
            s.threads,
            s.not_done,
            s.status.map_or("signal".to_string(), |c| c.to_string()),
        );
    }
}
