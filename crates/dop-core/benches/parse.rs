//! Parse-and-validate time of a large plan (10 000 nodes, 50 steps), reported against a
//! baseline measured in the same run: the YAML parser's bare event stream over the same text.
//!
//! Besides the in-process figures it times what an operator waits for: the release `dopi
//! validate <file>` as a process, start included (issue 28: at most 60 ms on the development
//! machine). `cargo xtask bench parse` builds that binary first and names it in
//! `DOP_BENCH_DOPI`; without it the bench looks next to itself (`target/release/dopi`) and
//! skips those rows when there is none.
//!
//! Run with `cargo xtask bench parse` (release mode).

use std::fmt::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use dop_core::{load_str, LookupSettings};

const NODES: usize = 10_000;
const STEPS: usize = 50;
const ROUNDS: usize = 7;
/// Rounds of the process measurements (each a fresh process).
const PROCESS_ROUNDS: usize = 15;

/// A plan with `NODES` explicit nodes (each with an interface in a managed network) and
/// `STEPS` steps selecting nodes by regex, role and name.
fn big_plan() -> String {
    let mut t = String::from(
        "name: bench\ncredentials:\n  api: {type: username_password, username: u, password: p}\n\
         infrastructures:\n  cloud:\n    type: ovirt\n    endpoint: https://ovirt.example.com/api\n    \
         credentials: api\n    networks:\n      prod:\n        ip_pool: {from: 10.0.1.1, to: 10.0.254.254}\n        \
         ip_netmask: 255.255.0.0\n        ip_defgw: 10.0.0.1\nnodes:\n",
    );
    let t_ip = |i: usize| format!("10.0.{}.{}", i / 250 + 1, i % 250 + 1);
    for i in 0..NODES {
        let _ = write!(
            t,
            "  node{i:05}.example.com:\n    infrastructure: cloud\n    image: rhel9\n    \
             flavor: medium\n    infrastructure_properties: {{datacenter: dc1, cluster: c1}}\n    \
             interfaces:\n      eth0: {{network: prod, ip: {}}}\n",
            t_ip(i)
        );
    }
    t.push_str("configuration:\n  defaults: {role: app}\nsteps:\n");
    for s in 0..STEPS {
        let _ = write!(
            t,
            "  - name: step {s}\n    nodes: '/node0{}/'\n    roles: [app]\n    exclude_nodes: [node00001.example.com]\n    \
             commands:\n      - {{plugin: ssh/custom, exec: /bin/true, plugin_timeout: 60}}\n",
            s % 10
        );
    }
    t
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn measure(f: impl FnMut()) -> Duration {
    measure_n(ROUNDS, f)
}

fn measure_n(rounds: usize, mut f: impl FnMut()) -> Duration {
    median(
        (0..rounds)
            .map(|_| {
                let start = Instant::now();
                f();
                start.elapsed()
            })
            .collect(),
    )
}

fn main() {
    let text = big_plan();
    let settings = LookupSettings::default();
    let loaded = load_str(&text, None, &settings);
    assert!(loaded.is_valid(), "{:?}", loaded.diagnostics.first());
    assert_eq!(loaded.plan.as_ref().map(|p| p.nodes.len()), Some(NODES));

    // Baseline: the YAML parser's event stream alone, what any YAML reader has to pay.
    let baseline = measure(|| {
        let mut parser = yaml_rust2::parser::Parser::new_from_str(&text);
        loop {
            let (event, _) = parser.next_token().expect("yaml");
            if event == yaml_rust2::parser::Event::StreamEnd {
                break;
            }
        }
    });
    let tree = measure(|| {
        dop_core::yaml::parse(&text).expect("yaml");
    });
    let full = measure(|| {
        let l = load_str(&text, None, &settings);
        assert!(l.is_valid());
    });
    println!(
        "parse: plan of {NODES} nodes and {STEPS} steps, {:.1} MiB, median of {ROUNDS} rounds",
        text.len() as f64 / 1_048_576.0
    );
    let row = |label: &str, d: Duration| {
        println!(
            "  {label:<44} {:>7.1} ms  {:>5.2}x baseline",
            d.as_secs_f64() * 1e3,
            d.as_secs_f64() / baseline.as_secs_f64()
        );
    };
    row("baseline: YAML events (yaml-rust2)", baseline);
    row("YAML tree with positions (dop_core::yaml)", tree);
    row("load: tree + validate + step filters", full);
    // The same fleet written as one generated entry: validation work without the text.
    let head = text.split("nodes:\n").next().unwrap_or_default();
    let tail = text.split("configuration:").nth(1).unwrap_or_default();
    let generated = format!(
        "{head}nodes:\n  node{{i}}.example.com:\n    infrastructure: cloud\n    image: rhel9\n    \
         flavor: medium\n    infrastructure_properties: {{datacenter: dc1, cluster: c1}}\n    \
         range: 0..9999\n    digits: 5\nconfiguration:{tail}"
    );
    let loaded = load_str(&generated, None, &settings);
    assert_eq!(
        loaded.plan.as_ref().map(|p| p.nodes.len()),
        Some(NODES),
        "{:?}",
        loaded.diagnostics.first()
    );
    let from_template = measure(|| {
        let l = load_str(&generated, None, &settings);
        assert!(l.is_valid());
    });
    row("load: the same fleet from one node{i} entry", from_template);

    // What an operator waits for: a fresh `dopi validate` process on the file.
    let Some(dopi) = dopi_binary() else {
        println!("  skipped: `dopi validate` as a process (no release dopi; `cargo xtask bench parse` builds it)");
        return;
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let file = dir.path().join("bench.yaml");
    std::fs::write(&file, &text).expect("write the plan");
    let run = |args: &[&std::ffi::OsStr]| {
        let output = Command::new(&dopi).args(args).output().expect("run dopi");
        assert!(
            output.status.success(),
            "{} failed: {}",
            dopi.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    };
    let validate = [std::ffi::OsStr::new("validate"), file.as_os_str()];
    let said = String::from_utf8_lossy(&run(&validate)).into_owned();
    assert_eq!(
        said.trim(),
        format!("plan 'bench' is valid: {NODES} nodes, 1 step set, {STEPS} steps")
    );
    let start = measure_n(PROCESS_ROUNDS, || {
        run(&[std::ffi::OsStr::new("--version")]);
    });
    let whole = measure_n(PROCESS_ROUNDS, || {
        run(&validate);
    });
    println!(
        "  (processes: median of {PROCESS_ROUNDS} runs of {})",
        dopi.display()
    );
    row("process start: dopi --version", start);
    row("dopi validate <file>, process start included", whole);
}

/// The release `dopi`: `DOP_BENCH_DOPI`, else the one beside this bench (`target/release`).
fn dopi_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DOP_BENCH_DOPI") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    // target/release/deps/parse-<hash> -> target/release/dopi
    let candidate = exe.parent()?.parent()?.join("dopi");
    candidate.is_file().then_some(candidate)
}
