//! SSH fan-out on the fleet bed of issue 27 ([`dop_testbed::fleet`]): 200 loopback nodes on
//! port 22 (13 sshd processes of 16 addresses, `MaxSessions 64`, a `/bin/sh` login, nodes named
//! `pN.example.com` and reached through `interfaces.eth0.ip`), once with sshd's stock
//! `MaxStartups 10:30:100` and once accepting every connection (`1000:30:2000`). On each bed,
//! in the same invocation: the login floor (sshd's own CPU for one login, from the listening
//! sshd's reaped children across 100 OpenSSH logins, times the nodes, over the cores), then 10
//! steps of `true` by `dopi run` at `max_in_flight` 50 and -1, by `ansible-playbook` (raw
//! module, forks 50) and by `parallel-ssh -p 50`. dopi also runs 1 step at 50, so its per-step
//! cost (`(T10 - T1) / 9`) is separated from connection setup.
//!
//! Run with `cargo xtask bench ssh` (release mode). As root, ansible-core and pssh are
//! installed from Debian packages when missing; a tool that cannot be found is reported as
//! skipped. Without root (or with port 22 taken) the beds use ports 2390 and 2391.
//! `DOP_BENCH_NODES` lowers the node count.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dop_testbed::{fleet, Options, Testbed};

const STEPS: usize = 10;
const PARALLEL: usize = 50;

struct Row {
    tool: String,
    ten: Duration,
    failures: String,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn timed(mut cmd: Command) -> (Duration, bool, String) {
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let elapsed = start.elapsed();
    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stdout));
    (elapsed, out.status.success(), text)
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs ansible-core and pssh from Debian packages when they are missing and we are root.
fn install_peers() {
    if have("ansible-playbook") && have("parallel-ssh") {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if !root || !have("apt-get") {
        eprintln!("ansible-core or pssh missing and not root with apt-get: they are skipped");
        return;
    }
    eprintln!("installing ansible-core and pssh (Debian packages)…");
    let status = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "ansible-core",
            "pssh",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("apt-get install failed: the peers that are missing are skipped");
    }
}

/// CPU seconds (user + system) of this process's children that have ended so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// CPU seconds the testbed's sshd processes spent on connections that have ended so far.
fn sshd_cpu(testbed: &Testbed) -> f64 {
    testbed
        .pids()
        .iter()
        .filter_map(|pid| fleet::reaped_children_cpu(*pid))
        .sum()
}

/// What one dopi run took: wall time, its own CPU, the sshds' CPU, how it went.
struct DopiRun {
    wall: Duration,
    cpu: f64,
    sshd_cpu: f64,
    failures: String,
}

fn run_dopi(dir: &Path, testbed: &Testbed, steps: usize, max_in_flight: i64) -> DopiRun {
    let dopi = env!("CARGO_BIN_EXE_dopi");
    let name = format!("bench{steps}x{}", max_in_flight.max(0));
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, fleet::plan(testbed, &name, steps, max_in_flight)).expect("plan");
    let command = |args: &[&str]| {
        let mut c = Command::new(dopi);
        c.env("DOP_CONFIG", "/dev/null")
            .env("DOP_STORE_DIR", dir.join(format!("store-{name}")))
            .env("DOP_LOG_DIR", dir.join("logs"))
            .args(args);
        c
    };
    let (_, ok, text) = timed(command(&["add", file.to_str().expect("utf-8")]));
    assert!(ok, "dopi add: {text}");
    let (cpu, sshd) = (children_cpu(), sshd_cpu(testbed));
    let (elapsed, _, _) = timed(command(&["run", &name, "-q"]));
    let cpu = children_cpu() - cpu;
    // The sshds reap a connection's processes a moment after the client left.
    std::thread::sleep(Duration::from_millis(500));
    let sshd = sshd_cpu(testbed) - sshd;
    let (_, _, shown) = timed(command(&["show", &name, "--json"]));
    let show: serde_json::Value = serde_json::from_str(&shown).unwrap_or_default();
    let mut failed = 0;
    for step in show["step_sets"][0]["steps"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for state in step["nodes"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(_, s)| s)
        {
            failed += usize::from(state["state"] != "done");
        }
    }
    let failures = match failed {
        0 => "none".to_string(),
        n => format!("{n} node-steps not done"),
    };
    DopiRun {
        wall: elapsed,
        cpu,
        sshd_cpu: sshd,
        failures,
    }
}

fn ssh_options(testbed: &Testbed) -> String {
    format!(
        "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -i {}",
        testbed.client_key().display()
    )
}

fn run_ansible(dir: &Path, testbed: &Testbed, steps: usize) -> (Duration, String) {
    let control = dir.join("cp");
    std::fs::create_dir_all(&control).expect("control dir");
    let mut inventory = String::from("[nodes]\n");
    for (i, a) in testbed.addresses.iter().enumerate() {
        inventory.push_str(&format!("n{i:03} ansible_host={a}\n"));
    }
    inventory.push_str(&format!(
        "[nodes:vars]\nansible_port={}\nansible_user={}\nansible_ssh_private_key_file={}\n",
        testbed.port,
        testbed.user,
        testbed.client_key().display()
    ));
    std::fs::write(dir.join("inventory"), inventory).expect("inventory");
    let config = format!(
        "[defaults]\nforks = {PARALLEL}\nhost_key_checking = False\ngathering = explicit\n\
         retry_files_enabled = False\nlocal_tmp = {dir}/ansible-tmp\n\
         [ssh_connection]\ncontrol_path_dir = {cp}\nssh_args = -C -o ControlMaster=auto -o ControlPersist=60s {extra}\n",
        dir = dir.display(),
        cp = control.display(),
        extra = "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
    );
    std::fs::write(dir.join("ansible.cfg"), config).expect("ansible.cfg");
    let mut playbook = String::from("- hosts: all\n  gather_facts: false\n  tasks:\n");
    for s in 1..=steps {
        playbook.push_str(&format!("    - name: step {s}\n      raw: 'true'\n"));
    }
    let book = dir.join(format!("playbook{steps}.yml"));
    std::fs::write(&book, playbook).expect("playbook");
    let mut cmd = Command::new("ansible-playbook");
    cmd.arg("-i")
        .arg(dir.join("inventory"))
        .arg(&book)
        .env("ANSIBLE_CONFIG", dir.join("ansible.cfg"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("HOME", dir);
    let (elapsed, ok, text) = timed(cmd);
    stop_control_masters(&control);
    let failures = if ok {
        "none".to_string()
    } else {
        let recap: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("unreachable=") && !l.contains("unreachable=0    failed=0"))
            .collect();
        format!("{} host(s) not ok", recap.len())
    };
    (elapsed, failures)
}

/// Ansible leaves its ControlPersist ssh masters behind: stop them by pid.
fn stop_control_masters(control: &Path) {
    let needle = control.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

fn run_pssh(dir: &Path, testbed: &Testbed, steps: usize) -> (Duration, String) {
    let hosts = dir.join("hosts");
    let list: Vec<String> = testbed.addresses.iter().map(ToString::to_string).collect();
    std::fs::write(&hosts, list.join("\n") + "\n").expect("hosts");
    let start = Instant::now();
    let mut failed = 0;
    for _ in 0..steps {
        let mut cmd = Command::new("parallel-ssh");
        cmd.arg("-h")
            .arg(&hosts)
            .args([
                "-p",
                &PARALLEL.to_string(),
                "-t",
                "120",
                "-l",
                &testbed.user,
            ])
            .args([
                "-x",
                &format!("-p {} {}", testbed.port, ssh_options(testbed)),
            ])
            .arg("true");
        let (_, ok, text) = timed(cmd);
        if !ok {
            failed += text.lines().filter(|l| l.contains("[FAILURE]")).count();
        }
    }
    let failures = match failed {
        0 => "none".to_string(),
        n => format!("{n} host-step(s) failed"),
    };
    (start.elapsed(), failures)
}

/// One bed: its floor, then every tool's 10 steps; prints its table.
fn bench_bed(
    dir: &Path,
    label: &str,
    max_startups: &str,
    first: u32,
    fallback_port: u16,
    nodes: usize,
) {
    let port = if fleet::port_22_usable(first) {
        fleet::PORT
    } else {
        fallback_port
    };
    let options = Options {
        max_startups: max_startups.into(),
        max_sessions: 64,
        ..Options::new(nodes, port, first)
    };
    let dir = dir.join(label);
    let testbed = Testbed::start(&dir.join("testbed"), &options).expect("testbed");
    eprintln!(
        "{label}: {nodes} nodes on port {port}, {} sshd processes (MaxStartups {max_startups}, MaxSessions 64)",
        nodes.div_ceil(dop_testbed::ADDRESSES_PER_SSHD)
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let login = fleet::login_cost(&testbed, 100, &dir.join("known_hosts"));
    let floor = login.map(|l| l * nodes as f64 / cores as f64);
    let mut rows = Vec::new();
    let work = dir.join("dopi");
    std::fs::create_dir_all(&work).expect("work dir");
    eprintln!("{label}: dopi, 1 step at {PARALLEL}…");
    let one = run_dopi(&work, &testbed, 1, PARALLEL as i64);
    let mut ten_at_parallel = None;
    for max_in_flight in [PARALLEL as i64, -1] {
        eprintln!("{label}: dopi, {STEPS} steps at max_in_flight {max_in_flight}…");
        let ten = run_dopi(&work, &testbed, STEPS, max_in_flight);
        rows.push(Row {
            tool: format!("dopi run (max_in_flight {max_in_flight})"),
            ten: ten.wall,
            failures: ten.failures.clone(),
        });
        ten_at_parallel.get_or_insert(ten);
    }
    type Runner = fn(&Path, &Testbed, usize) -> (Duration, String);
    let peers: [(&str, &str, Runner); 2] = [
        (
            "ansible-playbook (raw, forks 50)",
            "ansible-playbook",
            run_ansible,
        ),
        ("parallel-ssh (-p 50)", "parallel-ssh", run_pssh),
    ];
    for (tool, program, runner) in peers {
        if !have(program) {
            eprintln!("{tool}: not installed, skipped");
            continue;
        }
        let work: PathBuf = dir.join(program);
        std::fs::create_dir_all(&work).expect("work dir");
        eprintln!("{label}: {tool}, {STEPS} steps…");
        let (ten, failures) = runner(&work, &testbed, STEPS);
        rows.push(Row {
            tool: tool.to_string(),
            ten,
            failures,
        });
    }
    drop(testbed);

    let time_of = |prefix: &str| {
        rows.iter()
            .find(|r| r.tool.starts_with(prefix))
            .map(|r| secs(r.ten))
    };
    let (ansible, pssh) = (time_of("ansible"), time_of("parallel-ssh"));
    let ratio =
        |t: f64, base: Option<f64>| base.map_or("–".to_string(), |b| format!("{:.2}x", t / b));
    println!("\n### {label} bed: MaxStartups {max_startups}, {nodes} nodes, port {port}, {STEPS} steps of `true`\n");
    match (login, floor) {
        (Some(l), Some(f)) => println!(
            "login floor: sshd's CPU per login {:.1} ms × {nodes} nodes / {cores} cores = {f:.2} s\n",
            l * 1e3
        ),
        _ => println!("login floor: not measured (OpenSSH's client failed to log in)\n"),
    }
    println!("| tool | {STEPS} steps | vs floor | vs ansible | vs parallel-ssh | failures |");
    println!("|---|---:|---:|---:|---:|---|");
    for r in &rows {
        let t = secs(r.ten);
        println!(
            "| {} | {t:.2} s | {} | {} | {} | {} |",
            r.tool,
            ratio(t, floor),
            ratio(t, ansible),
            ratio(t, pssh),
            r.failures
        );
    }
    if let Some(ten) = ten_at_parallel {
        let added = (STEPS - 1) as f64 * nodes as f64;
        let per_step = (secs(ten.wall) - secs(one.wall)) / (STEPS - 1) as f64;
        println!(
            "\ndopi at {PARALLEL}: 1 step {:.2} s, per added step {:.0} ms. Per command on an open \
             connection (the 9 added steps): dopi's own CPU {:.3} ms, sshd's CPU {:.3} ms, wall \
             {:.2} ms. The 1-step run: dopi's CPU {:.2} s, sshd's {:.2} s ({:.1} ms a login).",
            secs(one.wall),
            per_step * 1e3,
            (ten.cpu - one.cpu) * 1e3 / added,
            (ten.sshd_cpu - one.sshd_cpu) * 1e3 / added,
            per_step * 1e3 / nodes as f64,
            one.cpu,
            one.sshd_cpu,
            one.sshd_cpu * 1e3 / nodes as f64,
        );
    }
}

fn main() {
    if !Testbed::available() {
        eprintln!("sshd is not installed: run .ci/install-deps first");
        std::process::exit(1);
    }
    install_peers();
    let nodes: usize = std::env::var("DOP_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let dir = tempfile::tempdir().expect("temp dir");
    bench_bed(dir.path(), "stock", "10:30:100", 600, 2390, nodes);
    bench_bed(dir.path(), "accept-all", "1000:30:2000", 900, 2391, nodes);
}
