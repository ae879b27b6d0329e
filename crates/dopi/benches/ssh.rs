//! SSH fan-out: 10 steps of `true` on 200 loopback nodes (real sshd with stock limits), by
//! `dopi run`, by `ansible-playbook` (raw module, forks 50) and by `parallel-ssh` (50 at a
//! time), on the same nodes in the same invocation. Each tool also runs a 1-step version, so
//! the per-step cost (`(T10 - T1) / 9`) is separated from connection setup.
//!
//! Run with `cargo xtask bench ssh` (release mode). As root, ansible-core and pssh are
//! installed from Debian packages when missing; a tool that cannot be found is reported as
//! skipped. `DOP_BENCH_NODES` lowers the node count.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dop_testbed::{Options, Testbed};

const STEPS: usize = 10;
const PARALLEL: usize = 50;
const PORT: u16 = 2390;

struct Row {
    tool: &'static str,
    one: Duration,
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

fn dopi_plan(testbed: &Testbed, steps: usize) -> String {
    let mut t = format!(
        "name: bench{steps}\ninfrastructures: {{lab: {{type: baremetal}}}}\ncredentials:\n  \
         login: {{type: ssh_key, username: {}, private_key: {{file: {}}}}}\nnodes:\n",
        testbed.user,
        testbed.client_key().display()
    );
    for (i, a) in testbed.addresses.iter().enumerate() {
        t.push_str(&format!(
            "  n{i:03}: {{infrastructure: lab, fqdn: '{a}'}}\n"
        ));
    }
    t.push_str("steps:\n");
    for s in 1..=steps {
        t.push_str(&format!(
            "  - name: step {s}\n    nodes: all\n    max_in_flight: {PARALLEL}\n    \
             set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {PORT}}}]\n    \
             command: {{plugin: ssh/custom, exec: 'true'}}\n"
        ));
    }
    t
}

fn run_dopi(dir: &Path, testbed: &Testbed, steps: usize) -> (Duration, String) {
    let dopi = env!("CARGO_BIN_EXE_dopi");
    let file = dir.join(format!("bench{steps}.yaml"));
    std::fs::write(&file, dopi_plan(testbed, steps)).expect("plan");
    let command = |args: &[&str]| {
        let mut c = Command::new(dopi);
        c.env("DOP_CONFIG", "/dev/null")
            .env("DOP_STORE_DIR", dir.join(format!("store{steps}")))
            .env("DOP_LOG_DIR", dir.join("logs"))
            .args(args);
        c
    };
    let (_, ok, text) = timed(command(&["add", file.to_str().expect("utf-8")]));
    assert!(ok, "dopi add: {text}");
    let name = format!("bench{steps}");
    let (elapsed, ok, text) = timed(command(&["run", &name, "-q"]));
    let failures = if ok {
        "none".to_string()
    } else {
        format!("run failed: {}", text.lines().last().unwrap_or(""))
    };
    (elapsed, failures)
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
        "[nodes:vars]\nansible_port={PORT}\nansible_user={}\nansible_ssh_private_key_file={}\n",
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
            .args(["-x", &format!("-p {PORT} {}", ssh_options(testbed))])
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
    let testbed = Testbed::start(&dir.path().join("testbed"), &Options::new(nodes, PORT, 600))
        .expect("testbed");
    eprintln!(
        "{nodes} nodes on {} sshd processes (stock MaxStartups 10:30:100, MaxSessions 10); {STEPS} steps of `true`, {PARALLEL} nodes at a time",
        nodes.div_ceil(dop_testbed::ADDRESSES_PER_SSHD)
    );

    type Runner = fn(&Path, &Testbed, usize) -> (Duration, String);
    let tools: [(&'static str, &str, Runner); 3] = [
        ("dopi run", "dopi", run_dopi),
        (
            "ansible-playbook (raw, forks 50)",
            "ansible-playbook",
            run_ansible,
        ),
        ("parallel-ssh (-p 50)", "parallel-ssh", run_pssh),
    ];
    let mut rows = Vec::new();
    for (tool, program, runner) in tools {
        if program != "dopi" && !have(program) {
            eprintln!("{tool}: not installed, skipped");
            continue;
        }
        let work: PathBuf = dir.path().join(program);
        std::fs::create_dir_all(&work).expect("work dir");
        eprintln!("{tool}: 1 step…");
        let (one, f1) = runner(&work, &testbed, 1);
        eprintln!("{tool}: {STEPS} steps…");
        let (ten, f10) = runner(&work, &testbed, STEPS);
        rows.push(Row {
            tool,
            one,
            ten,
            failures: if f1 == "none" {
                f10
            } else {
                format!("{f1}; {f10}")
            },
        });
    }
    drop(testbed);

    let base = rows.first().map(|r| secs(r.ten)).unwrap_or(1.0);
    println!(
        "\nssh: {STEPS} steps of `true` on {nodes} nodes ({PARALLEL} at a time); baseline: dopi run"
    );
    println!(
        "| tool | 1 step | {STEPS} steps | per added step | {STEPS} steps vs dopi | failures |"
    );
    println!("|---|---:|---:|---:|---:|---|");
    for r in &rows {
        let per_step = (secs(r.ten) - secs(r.one)) / (STEPS - 1) as f64;
        println!(
            "| {} | {:.2} s | {:.2} s | {:.0} ms | {:.2}x | {} |",
            r.tool,
            secs(r.one),
            secs(r.ten),
            per_step * 1e3,
            secs(r.ten) / base,
            r.failures
        );
    }
    if let Some(dopi) = rows.first() {
        let per_node_step = secs(dopi.ten) / (STEPS * nodes) as f64;
        println!(
            "\ndopi: {:.2} ms of wall time per node-step over the whole run",
            per_node_step * 1e3
        );
    }
}
