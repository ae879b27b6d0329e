//! dopv end to end on the `local` provider: real nodes (namespaces and an sshd each, on their
//! own loopback address), a real store, the real `dopv` binary. Every node a test starts is
//! powered off by pid when the test ends, pass or fail.

mod common;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::dopi_run;
use dop_testbed::dopv::{local_nodes_available, DopvLab};
use dop_testbed::process::{text, Running};
use serde_json::Value;

/// A dopv lab (store, logs, local nodes, a login key) whose local nodes are stopped on drop.
struct Lab(DopvLab);

impl Drop for Lab {
    fn drop(&mut self) {
        dopv::providers::local::stop_all(&self.local_dir());
    }
}

impl Deref for Lab {
    type Target = DopvLab;
    fn deref(&self) -> &DopvLab {
        &self.0
    }
}

impl Lab {
    fn new() -> Lab {
        Lab(DopvLab::new(env!("CARGO_BIN_EXE_dopv")))
    }
    /// `dopv <args>` in the background, its output discarded; killed by pid when dropped.
    fn quietly(&self, args: &[&str]) -> Running {
        Running::spawn(
            self.command(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
    }
    /// Writes a plan (`KEY` becomes the key file) and adds or updates it.
    fn plan(&self, text: &str) {
        self.add_plan(&text.replace("KEY", self.key().to_str().unwrap()));
    }
    fn node_dir(&self, plan: &str, node: &str) -> PathBuf {
        self.local_dir().join("nodes").join(plan).join(node)
    }
    fn supervisor(&self, plan: &str, node: &str) -> i32 {
        std::fs::read_to_string(self.node_dir(plan, node).join("supervisor.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
    /// Pulls a node's plug behind dopv's back.
    fn kill_node(&self, plan: &str, node: &str) {
        let pid = self.supervisor(plan, node);
        // SAFETY: kill has no memory preconditions.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let t = std::time::Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && t.elapsed() < std::time::Duration::from_secs(10)
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn answers(address: &str, port: u16) -> bool {
    std::net::TcpStream::connect((address, port)).is_ok()
}

/// The parts of a report a snapshot can hold: actions and nodes in sync (serials, ids and
/// paths differ between runs).
fn plan_of(report: &Value) -> Value {
    serde_json::json!({
        "actions": report["actions"],
        "in_sync": report["in_sync"],
        "result": report["result"],
    })
}

fn node(name: &str, ip: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    infrastructure: lab\n    credentials: [root_key]\n    \
         interfaces: {{eth0: {{network: lo, ip: {ip}}}}}\n{extra}"
    )
}

fn plan_text(name: &str, prefix: &str, port: u16, nodes: &[String]) -> String {
    format!(
        "name: {name}\ninfrastructures:\n  lab:\n    type: local\n    ssh_port: {port}\n    \
         networks:\n      lo: {{ip_pool: {{from: {prefix}.1, to: {prefix}.200}}, ip_netmask: \
         255.255.255.0, ip_defgw: false}}\ncredentials:\n  root_key: {{type: ssh_key, username: \
         root, private_key: {{file: KEY}}, public_key: {{file: KEY.pub}}}}\nnodes:\n{}",
        nodes.concat()
    )
}

#[test]
fn sync_follows_plan_changes_within_its_flags() {
    if !local_nodes_available() {
        return;
    }
    let lab = Lab::new();
    let (p, port) = ("127.0.61", 2331);
    let v1 = plan_text(
        "grow",
        p,
        port,
        &[
            node("keep", &format!("{p}.1"), ""),
            node("resize", &format!("{p}.2"), "    memory: 192M\n"),
            node("retire", &format!("{p}.3"), ""),
            node("move", &format!("{p}.4"), ""),
        ],
    );
    lab.plan(&v1);
    let first = lab.json(&["sync", "grow"], 0);
    assert_eq!(first["outcomes"].as_array().unwrap().len(), 4, "{first:#}");
    for (i, name) in ["keep", "resize", "retire", "move"].iter().enumerate() {
        let ip = format!("{p}.{}", i + 1);
        assert_eq!(lab.ssh(&ip, port, "hostname"), *name);
    }
    lab.ssh(
        &format!("{p}.2"),
        port,
        "echo kept > /root/marker; echo gone > /tmp/marker",
    );
    let generation_of =
        |name: &str| -> u64 { lab.shown_node("grow", name)["generation"].as_u64().unwrap() };
    let moved_before = generation_of("move");
    let resized_before = generation_of("resize");

    // v2: `keep` gets DNS (in place), `resize` 4 cores (reboot), `move` another address
    // (redeploy), `retire` leaves the plan, `fresh` joins it.
    let v2 = plan_text(
        "grow",
        p,
        port,
        &[
            node(
                "keep",
                &format!("{p}.1"),
                "    dns: {name_servers: [127.0.0.53]}\n",
            ),
            node(
                "resize",
                &format!("{p}.2"),
                "    cores: 4\n    memory: 256M\n",
            ),
            node("move", &format!("{p}.14"), ""),
            node("fresh", &format!("{p}.5"), ""),
        ],
    );
    lab.plan(&v2);
    let preview = lab.json(&["sync", "grow", "--noop", "--detailed-exitcode"], 2);
    insta::assert_json_snapshot!("sync_noop_after_plan_change", plan_of(&preview));
    let serial = preview["serial"].as_u64().unwrap();
    // The same preview for people: sizes as the plan writes them, not bytes.
    let shown = lab.dopv(&["sync", "grow", "--noop"]);
    assert_eq!(shown.status.code(), Some(0), "{}", text(&shown.stderr));
    let shown = text(&shown.stdout).replace(&format!("serial {serial}"), "serial SERIAL");
    insta::assert_snapshot!("sync_noop_after_plan_change_text", shown);

    // `deploy` only creates: the removed node stays.
    let deployed = lab.json(&["deploy", "grow"], 0);
    insta::assert_json_snapshot!("deploy_after_plan_change", plan_of(&deployed));
    assert!(
        answers(&format!("{p}.5"), port),
        "deploy creates the new node"
    );
    assert!(
        answers(&format!("{p}.3"), port),
        "deploy never removes a node"
    );

    // The preview was computed before `deploy` wrote: it is refused.
    let stale = lab.dopv(&["sync", "grow", "--expect-serial", &serial.to_string()]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        text(&stale.stderr).contains("changed since the preview"),
        "{}",
        text(&stale.stderr)
    );

    // Without flags: in-place changes only.
    let plain = lab.json(&["sync", "grow", "--detailed-exitcode"], 2);
    insta::assert_json_snapshot!("sync_without_flags", plan_of(&plain));
    assert_eq!(
        lab.ssh(&format!("{p}.1"), port, "cat /etc/resolv.conf"),
        "nameserver 127.0.0.53"
    );
    assert!(
        answers(&format!("{p}.3"), port),
        "held back: the removed node stays"
    );
    assert_eq!(
        lab.ssh(&format!("{p}.2"), port, "cat /tmp/marker"),
        "gone",
        "held back: no reboot"
    );

    // --interruptive: the reboot; the node's disk survives it, /tmp does not.
    let interruptive = lab.json(
        &["sync", "grow", "--interruptive", "--detailed-exitcode"],
        2,
    );
    insta::assert_json_snapshot!("sync_interruptive", plan_of(&interruptive));
    assert_eq!(
        lab.ssh(&format!("{p}.2"), port, "cat /root/marker; ls /tmp | wc -l"),
        "kept\n0"
    );
    assert_eq!(
        generation_of("resize"),
        resized_before,
        "a reboot is no redeploy"
    );

    // --destructive: the removed node goes, the moved one is redeployed at its new address.
    let destructive = lab.json(&["sync", "grow", "--destructive", "--detailed-exitcode"], 0);
    insta::assert_json_snapshot!("sync_destructive", plan_of(&destructive));
    assert!(!answers(&format!("{p}.3"), port));
    assert!(!lab.node_dir("grow", "retire").exists());
    assert!(!answers(&format!("{p}.4"), port));
    assert_eq!(lab.ssh(&format!("{p}.14"), port, "hostname"), "move");
    assert_ne!(
        generation_of("move"),
        moved_before,
        "a redeploy changes the generation"
    );

    // In sync now; the actual state says so.
    let done = lab.json(&["sync", "grow", "--noop", "--detailed-exitcode"], 0);
    assert_eq!(done["actions"], serde_json::json!([]));
    let resize = lab.shown_node("grow", "resize");
    assert_eq!(resize["actual"]["cores"], 4);
    assert_eq!(resize["actual"]["power"], "on");
    assert_eq!(resize["drift"], serde_json::json!([]));
    lab.expect(&["undeploy", "grow", "--rmdisk"], 0);
    assert!(!answers(&format!("{p}.1"), port));
}

#[test]
fn drift_made_by_hand_is_found_by_refresh_and_repaired_by_sync() {
    if !local_nodes_available() {
        return;
    }
    let lab = Lab::new();
    let (p, port) = ("127.0.62", 2332);
    lab.plan(&plan_text(
        "drift",
        p,
        port,
        &[
            node("dark", &format!("{p}.1"), ""),
            node("gone", &format!("{p}.2"), ""),
            node("fine", &format!("{p}.3"), ""),
        ],
    ));
    lab.expect(&["deploy", "drift"], 0);
    let before = lab.json(&["show", "drift"], 0);
    // Behind dopv's back: one node loses power, another is removed.
    lab.kill_node("drift", "dark");
    lab.kill_node("drift", "gone");
    std::fs::remove_dir_all(lab.node_dir("drift", "gone")).unwrap();

    let refreshed = lab.json(&["refresh", "drift", "--detailed-exitcode"], 2);
    insta::assert_json_snapshot!("refresh_finds_drift", plan_of(&refreshed));
    let shown = lab.json(&["show", "drift"], 0);
    let drift: Vec<(String, Value)> = shown["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["node"].as_str().unwrap().to_string(), n["drift"].clone()))
        .collect();
    insta::assert_json_snapshot!("show_after_refresh", drift);
    let states = |shown: &Value| -> Vec<(String, String)> {
        shown["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let word = n["state"].as_str().unwrap().to_string();
                (n["node"].as_str().unwrap().to_string(), word)
            })
            .collect()
    };
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert_eq!(
        states(&shown),
        pairs(&[
            ("dark", "drifted"),
            ("gone", "drifted"),
            ("fine", "in_sync")
        ])
    );

    // The provider cannot be reached (its directory is a file now): refresh fails, records
    // every node as unknown, never as gone, and keeps what it knew.
    {
        let _away = dop_testbed::DirectoryAway::new(&lab.local_dir()).unwrap();
        let out = text(&lab.expect(&["refresh", "drift"], 1).stdout);
        assert!(out.contains("unavailable"), "{out}");
        let shown = lab.json(&["show", "drift"], 0);
        assert_eq!(
            states(&shown),
            pairs(&[
                ("dark", "unknown"),
                ("gone", "unknown"),
                ("fine", "unknown")
            ])
        );
        let fine = &shown["nodes"][2];
        assert_eq!(fine["actual"]["exists"], true, "{fine}");
        assert!(
            fine["read_error"]
                .as_str()
                .unwrap()
                .contains("cannot create"),
            "{fine}"
        );
        // Only refresh tolerates it: sync refuses to start.
        lab.expect(&["sync", "drift"], 1);
    }

    let repaired = lab.json(&["sync", "drift"], 0);
    insta::assert_json_snapshot!("sync_repairs_drift", plan_of(&repaired));
    for i in 1..=3 {
        assert!(answers(&format!("{p}.{i}"), port));
    }
    let after = lab.json(&["show", "drift"], 0);
    let generation = |v: &Value, n: &str| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["node"] == n)
            .unwrap()["generation"]
            .clone()
    };
    assert_eq!(
        generation(&before, "dark"),
        generation(&after, "dark"),
        "powering on is no redeploy"
    );
    assert_ne!(
        generation(&before, "gone"),
        generation(&after, "gone"),
        "a re-created node is new"
    );
    lab.json(&["sync", "drift", "--noop", "--detailed-exitcode"], 0);
    lab.expect(&["undeploy", "drift"], 0);
}

#[test]
fn a_reboot_from_inside_the_node_brings_it_back_with_its_disk() {
    if !local_nodes_available() {
        return;
    }
    let lab = Lab::new();
    let (p, port) = ("127.0.63", 2333);
    let hook_log = lab.path().join("hooks.log");
    let hook = lab.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$DOP_HOOK $1 $2 $DOP_PLAN $DOP_NODE_FQDN\" >> {}\n",
            hook_log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut plan = plan_text(
        "disk",
        p,
        port,
        &[node(
            "db",
            &format!("{p}.1"),
            "    fqdn: db.example.test\n    disks: {data: {size: 16M}}\n",
        )],
    );
    plan.push_str(&format!(
        "hooks:\n  pre_create_vm: [{h}]\n  post_create_vm: [{h}]\n  pre_destroy_vm: [{h}]\n  post_destroy_vm: [{h}]\n",
        h = hook.display()
    ));
    lab.plan(&plan);
    lab.expect(&["deploy", "disk"], 0);
    let ip = format!("{p}.1");
    assert_eq!(
        lab.ssh(
            &ip,
            port,
            "hostname; stat -c %s /var/lib/dop-disks/data.img"
        ),
        "db.example.test\n16777216"
    );
    lab.ssh(
        &ip,
        port,
        "printf precious | dd of=/var/lib/dop-disks/data.img conv=notrunc 2>/dev/null",
    );

    // `shutdown -r now` inside: the node goes down and comes back.
    let supervisor = lab.supervisor("disk", "db");
    lab.ssh(&ip, port, "shutdown -r now");
    let t = std::time::Instant::now();
    let console = lab.node_dir("disk", "db").join("console.log");
    while !std::fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("reboot")
        && t.elapsed() < std::time::Duration::from_secs(20)
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let t = std::time::Instant::now();
    while !answers(&ip, port) && t.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        lab.supervisor("disk", "db"),
        supervisor,
        "the same machine, rebooted"
    );
    assert_eq!(
        lab.ssh(&ip, port, "head -c 8 /var/lib/dop-disks/data.img"),
        "precious"
    );

    // Undeploy keeps the disk; deploy attaches it again; --rmdisk deletes it.
    lab.expect(&["undeploy", "disk"], 0);
    let pool = lab.local_dir().join("pools/default/disk--db--data.img");
    assert!(pool.exists(), "the data disk outlives the node");
    lab.expect(&["deploy", "disk"], 0);
    assert_eq!(
        lab.ssh(&ip, port, "head -c 8 /var/lib/dop-disks/data.img"),
        "precious"
    );
    lab.expect(&["undeploy", "disk", "--rmdisk"], 0);
    assert!(!pool.exists());
    let hooks = std::fs::read_to_string(&hook_log).unwrap();
    insta::assert_snapshot!("hook_calls", hooks);
}

#[test]
fn killed_mid_sync_the_next_sync_completes() {
    if !local_nodes_available() {
        return;
    }
    let lab = Lab::new();
    let (p, port) = ("127.0.64", 2334);
    let nodes: Vec<String> = (1..=4)
        .map(|i| {
            node(
                &format!("k{i}"),
                &format!("{p}.{i}"),
                "    disks: {d: {size: 1M}}\n",
            )
        })
        .collect();
    lab.plan(&plan_text("kill", p, port, &nodes));
    // Kill dopv at ten moments of a sync (bounded: ten tries), then let one finish.
    for attempt in 0..10u64 {
        let mut child = lab.quietly(&["sync", "kill", "--destructive", "-q"]);
        std::thread::sleep(std::time::Duration::from_millis(15 * attempt));
        child.kill();
        if attempt % 3 == 2 {
            // Sometimes a node is also undeployed half-way.
            let mut c = lab.quietly(&["undeploy", "kill", "--nodes", "k2", "-q"]);
            std::thread::sleep(std::time::Duration::from_millis(10 * attempt));
            c.kill();
        }
    }
    lab.expect(&["sync", "kill", "--destructive"], 0);
    let check = lab.json(&["sync", "kill", "--noop", "--detailed-exitcode"], 0);
    assert_eq!(check["in_sync"].as_array().unwrap().len(), 4, "{check:#}");
    let shown = lab.json(&["show", "kill"], 0);
    for n in shown["nodes"].as_array().unwrap() {
        assert_eq!(n["status"], "deployed", "{n:#}");
    }
    for i in 1..=4 {
        assert_eq!(
            lab.ssh(&format!("{p}.{i}"), port, "hostname"),
            format!("k{i}")
        );
    }
    // One node process each: nothing half-built was left running.
    let supervisors = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    text(&c).contains(&*lab.local_dir().join("nodes/kill").to_string_lossy())
                        && text(&c).contains("supervise.sh")
                })
                .unwrap_or(false)
        })
        .count();
    assert_eq!(supervisors, 4);
    // The disk DB has each node's disk once.
    let pools: Vec<_> = std::fs::read_dir(lab.local_dir().join("pools/default"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(pools.len(), 4);
    lab.expect(&["undeploy", "kill", "--rmdisk"], 0);
}

#[test]
fn a_plan_the_providers_cannot_make_changes_nothing() {
    let lab = Lab::new();
    let plan = "name: bad\ninfrastructures:\n  lab: {type: local}\n  cloud: {type: openstack, \
                endpoint: 'http://127.0.0.1:1/v3', credentials: api, networks: {}}\n\
                credentials:\n  api: {type: username_password, username: u, password: secret}\n  \
                root_key: {type: ssh_key, username: root, public_key: {file: KEY.pub}}\n\
                nodes:\n  here: {infrastructure: lab, credentials: [root_key]}\n  \
                there: {infrastructure: cloud, image: deb, infrastructure_properties: {tenant: t}}\n";
    lab.plan(plan);
    let out = lab.dopv(&["sync", "bad"]);
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("preflight_errors", text(&out.stderr));
    assert!(!lab.node_dir("bad", "here").exists(), "nothing was touched");
    let shown = lab.json(&["show", "bad"], 0);
    assert!(shown["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n.get("status").is_none()));
}

#[test]
fn baremetal_nodes_are_recorded_and_left_alone() {
    let lab = Lab::new();
    lab.plan(
        "name: metal\ninfrastructures:\n  dc: {type: baremetal, ssh_port: 2222, networks: {n: {ip_pool: {from: 10.9.0.1, to: 10.9.0.9}, ip_netmask: 255.255.255.0, ip_defgw: false}}}\nnodes:\n  \
         m1: {infrastructure: dc, interfaces: {eth0: {network: n, ip: 10.9.0.1}}}\n  \
         m2: {infrastructure: dc}\n",
    );
    let deployed = lab.json(&["deploy", "metal"], 0);
    insta::assert_json_snapshot!("baremetal_deploy", plan_of(&deployed));
    let shown = lab.json(&["show", "metal"], 0);
    let m1 = &shown["nodes"][0];
    assert_eq!(m1["status"], "deployed");
    assert_eq!(
        m1["actual"]["ssh"],
        serde_json::json!({"address": "10.9.0.1", "port": 2222})
    );
    // dopv cannot hand a machine it does not make a challenge: it issues none (the operator
    // does, `dopi hiera challenge`).
    let hiera = lab.store_dir().join("hiera");
    assert_eq!(dop_puppet::challenge::read(&hiera, "m1").unwrap(), None);
    let undeployed = lab.json(&["undeploy", "metal"], 0);
    assert_eq!(undeployed["outcomes"].as_array().unwrap().len(), 2);
}

/// Every file under `dir` that contains `secret`.
fn files_containing(dir: &Path, secret: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if std::fs::read(&path)
                .is_ok_and(|bytes| bytes.windows(secret.len()).any(|w| w == secret.as_bytes()))
            {
                found.push(path);
            }
        }
    }
    found
}

/// A certificate request for `cn` carrying `challenge` (openssl), in `dir`.
fn csr(dir: &Path, cn: &str, challenge: &str) -> Vec<u8> {
    let config = dir.join("csr.cnf");
    std::fs::write(
        &config,
        format!(
            "[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\n[dn]\nCN = {cn}\n\
             [attrs]\nchallengePassword = {challenge}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-keyout"])
        .arg(dir.join("csr.key"))
        .arg("-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", text(&out.stderr));
    out.stdout
}

#[test]
fn a_created_node_gets_its_puppet_challenge_and_dop_keeps_only_its_hash() {
    if !local_nodes_available() {
        return;
    }
    let lab = Lab::new();
    let (p, port) = ("127.0.78", 2348);
    let plan = |ip: &str| plan_text("puppet", p, port, &[node("agent", ip, "")]);
    let hiera = lab.store_dir().join("hiera");
    // What the node's Puppet agent reads: its mode, and the challenge.
    let handed_over = |ip: &str| {
        let text = lab.ssh(
            ip,
            port,
            "stat -c %a /etc/puppetlabs/puppet/csr_attributes.yaml; \
             cat /etc/puppetlabs/puppet/csr_attributes.yaml",
        );
        let (mode, yaml) = text.split_once('\n').unwrap();
        assert_eq!(mode, "600", "{text}");
        let challenge = yaml
            .split("1.2.840.113549.1.9.7: \"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no challengePassword in {yaml}"));
        assert_eq!(challenge.len(), 64, "{yaml}");
        challenge.to_string()
    };
    let hashed = |challenge: &str| {
        let record = dop_puppet::challenge::read(&hiera, "agent")
            .unwrap()
            .expect("a challenge record");
        let generation = lab.shown_node("puppet", "agent")["generation"]
            .as_u64()
            .unwrap();
        assert_eq!(record.generation, generation, "{record:?}");
        assert_eq!(record.origin, dop_puppet::challenge::Origin::Dopv);
        assert_eq!(
            record.sha256,
            dop_puppet::challenge::challenge_hash("puppet", "agent", generation, challenge)
        );
        assert_eq!(record.signed_at, None);
        generation
    };

    lab.plan(&plan(&format!("{p}.1")));
    lab.expect(&["deploy", "puppet"], 0);
    let first = handed_over(&format!("{p}.1"));
    let first_generation = hashed(&first);
    for dir in [lab.store_dir(), lab.log_dir()] {
        assert_eq!(
            files_containing(&dir, &first),
            Vec::<PathBuf>::new(),
            "the clear challenge is kept"
        );
    }
    // Puppet's autosign signs the node's request with it, once (the plan's Hiera data was
    // written when dopv added it).
    let autosign = |challenge: &str| {
        let policy = dop_puppet::Policy {
            data_dir: &hiera,
            mode: dop_puppet::Mode::NodeChallenge,
        };
        dop_puppet::decide(&policy, "agent", &csr(lab.path(), "agent", challenge))
    };
    assert!(matches!(autosign(&first), dop_puppet::Verdict::Sign { .. }));
    assert!(matches!(autosign(&first), dop_puppet::Verdict::Refuse(_)));

    // A redeploy issues a new challenge for the new machine.
    lab.plan(&plan(&format!("{p}.2")));
    lab.expect(&["sync", "puppet", "--destructive"], 0);
    let second = handed_over(&format!("{p}.2"));
    assert_ne!(first, second);
    assert!(hashed(&second) > first_generation);
    assert!(matches!(autosign(&first), dop_puppet::Verdict::Refuse(_)));
    assert!(matches!(
        autosign(&second),
        dop_puppet::Verdict::Sign { .. }
    ));

    // Undeployed, it has none: no request is signed for it.
    lab.expect(&["undeploy", "puppet"], 0);
    assert_eq!(dop_puppet::challenge::read(&hiera, "agent").unwrap(), None);
}

#[test]
fn dopi_runs_where_dopv_deployed_and_notices_a_redeploy() {
    if !local_nodes_available() {
        return;
    }
    let lab = Lab::new();
    let (p, port) = ("127.0.65", 2335);
    let steps = "steps:\n  default:\n    - name: count\n      nodes: all\n      set_plugin_defaults:\n        \
                 - {plugins: '/^ssh/', credentials: root_key}\n      command: {plugin: ssh/custom, \
                 exec: 'hostname >> /root/runs'}\n";
    let plan = |first: &str| {
        let mut text = plan_text(
            "both",
            p,
            port,
            &[node("one", first, ""), node("two", &format!("{p}.2"), "")],
        );
        text.push_str(steps);
        text
    };
    lab.plan(&plan(&format!("{p}.1")));
    lab.expect(&["deploy", "both"], 0);
    // No port and no address in the steps: dopi takes both from dopv's state.
    let report = dopi_run(&lab, "both", dopi::Redeployed::Refuse, 10).unwrap();
    assert!(
        matches!(report.result, dopi::RunResult::Done),
        "{:?}",
        report.result
    );
    let log = std::fs::read_to_string(report.log_dir.join("all.log")).unwrap();
    assert_eq!(
        lab.ssh(&format!("{p}.1"), port, "cat /root/runs"),
        "one",
        "{log}"
    );

    // dopv redeploys `one` (new address, new machine, new host key).
    lab.plan(&plan(&format!("{p}.11")));
    lab.expect(&["sync", "both", "--destructive"], 0);
    let refused = dopi_run(&lab, "both", dopi::Redeployed::Refuse, 10).unwrap_err();
    let message = refused.to_string();
    assert!(
        message.contains("dopv redeployed one (generation"),
        "{message}"
    );
    assert!(!message.contains("two"), "{message}");

    let report = dopi_run(&lab, "both", dopi::Redeployed::Reset, 10).unwrap();
    assert!(
        matches!(report.result, dopi::RunResult::Done),
        "{:?}",
        report.result
    );
    assert_eq!(
        lab.ssh(&format!("{p}.11"), port, "cat /root/runs"),
        "one",
        "the new machine ran its steps"
    );
    assert_eq!(
        lab.ssh(&format!("{p}.2"), port, "cat /root/runs"),
        "two",
        "the other node did not run again"
    );
    lab.expect(&["undeploy", "both"], 0);
}

#[test]
fn a_node_that_fails_is_rolled_back_and_the_next_sync_repairs_it() {
    if !local_nodes_available() {
        return;
    }
    let lab = Lab::new();
    let (p, port) = ("127.0.66", 2336);
    lab.plan(&plan_text(
        "fail",
        p,
        port,
        &[
            node("busy", &format!("{p}.1"), "    disks: {d: {size: 1M}}\n"),
            node("free", &format!("{p}.2"), ""),
        ],
    ));
    // Something else listens where `busy`'s sshd must.
    let squatter = std::net::TcpListener::bind((format!("{p}.1").as_str(), port)).unwrap();
    let failed = lab.json(&["deploy", "fail"], 1);
    let outcomes: Vec<(Value, Value)> = failed["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["node"].clone(), o["result"].clone()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("busy".into(), "failed".into()),
            ("free".into(), "done".into())
        ],
        "{failed:#}"
    );
    let error = failed["outcomes"][0]["error"].as_str().unwrap();
    assert!(error.contains("is in use by another process"), "{error}");
    assert!(
        !lab.node_dir("fail", "busy").exists(),
        "the half-made node was rolled back"
    );
    let shown = lab.json(&["show", "fail"], 0);
    assert_eq!(shown["nodes"][0]["status"], "failed");
    assert_eq!(shown["nodes"][1]["status"], "deployed");

    drop(squatter);
    let repaired = lab.json(&["sync", "fail"], 0);
    insta::assert_json_snapshot!("sync_after_failure", plan_of(&repaired));
    assert_eq!(
        lab.ssh(&format!("{p}.1"), port, "ls /var/lib/dop-disks"),
        "d.img"
    );
    lab.expect(&["undeploy", "fail", "--rmdisk"], 0);
}

/// A slow `pre_create_vm` hook (its body after the line that records which node it runs for)
/// and the file it writes to, for the signal tests.
fn slow_hook(lab: &Lab, body: &str) -> (PathBuf, PathBuf) {
    let marker = lab.path().join("started");
    let hook = lab.path().join("slow.sh");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\necho \"$1\" >> {}\n{body}\n", marker.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    (hook, marker)
}

/// `dopv deploy PLAN --json -q` in the background, once its first hook has started.
fn deploy_until_a_hook_runs(lab: &Lab, plan: &str, marker: &Path) -> Running {
    let child = Running::spawn(
        lab.command(&["deploy", plan, "--json", "-q"])
            .stdout(Stdio::piped()),
    );
    let t = std::time::Instant::now();
    while !marker.exists() && t.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(marker.exists(), "the first node's hook started");
    child
}

#[test]
fn a_signal_stops_new_nodes_and_sync_finishes_the_rest() {
    if !local_nodes_available() {
        return;
    }
    let lab = Lab::new();
    let (p, port) = ("127.0.67", 2337);
    let (hook, marker) = slow_hook(&lab, "sleep 0.3");
    let nodes: Vec<String> = (1..=5)
        .map(|i| node(&format!("s{i}"), &format!("{p}.{i}"), ""))
        .collect();
    let mut plan =
        plan_text("sig", p, port, &nodes).replace("name: sig\n", "name: sig\nmax_in_flight: 1\n");
    plan.push_str(&format!("hooks:\n  pre_create_vm: [{}]\n", hook.display()));
    lab.plan(&plan);
    let mut child = deploy_until_a_hook_runs(&lab, "sig", &marker);
    dop_testbed::signal(child.id(), libc::SIGINT);
    let out = child.wait_with_output();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results: Vec<&str> = report["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results.iter().filter(|r| **r == "done").count(),
        1,
        "{report:#}"
    );
    assert_eq!(
        results.iter().filter(|r| **r == "stopped").count(),
        4,
        "{report:#}"
    );
    let finished = lab.json(&["sync", "sig"], 0);
    assert_eq!(
        finished["outcomes"].as_array().unwrap().len(),
        4,
        "{finished:#}"
    );
    for i in 1..=5 {
        assert!(answers(&format!("{p}.{i}"), port));
    }
    lab.expect(&["undeploy", "sig"], 0);
}

/// A second signal stops the node actions under way at once: the library does not exit the
/// process, so the run still reports (the node under way is `stopped`), releases the plan's
/// lock, and `sync` finishes the work.
#[test]
fn a_second_signal_stops_at_once_and_still_reports() {
    if !local_nodes_available() {
        return;
    }
    let lab = Lab::new();
    let (p, port) = ("127.0.69", 2339);
    // The first node's hook hangs: only a hard stop ends the run before it does.
    let (hook, marker) = slow_hook(&lab, "sleep 600");
    let nodes: Vec<String> = (1..=2)
        .map(|i| node(&format!("h{i}"), &format!("{p}.{i}"), ""))
        .collect();
    let mut plan = plan_text("hard", p, port, &nodes)
        .replace("name: hard\n", "name: hard\nmax_in_flight: 1\n");
    plan.push_str(&format!("hooks:\n  pre_create_vm: [{}]\n", hook.display()));
    lab.plan(&plan);
    let mut child = deploy_until_a_hook_runs(&lab, "hard", &marker);
    for _ in 0..2 {
        dop_testbed::signal(child.id(), libc::SIGINT);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = child.wait_with_output();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    let report: Value = serde_json::from_slice(&out.stdout).expect("a report, not an exit");
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{report:#}");
    assert!(
        outcomes.iter().all(|o| o["result"] == "stopped"),
        "{report:#}"
    );
    assert!(
        outcomes.iter().any(|o| o["error"]
            .as_str()
            .is_some_and(|e| e.contains("second signal"))),
        "{report:#}"
    );
    // The lock went with the run: sync finishes the work (the hook now returns at once).
    std::fs::write(&hook, "#!/bin/sh\ntrue\n").unwrap();
    let finished = lab.json(&["sync", "hard"], 0);
    assert_eq!(
        finished["outcomes"].as_array().unwrap().len(),
        2,
        "{finished:#}"
    );
    lab.expect(&["undeploy", "hard"], 0);
}

/// Fault injection (`cargo xtask chaos` runs it with more kill points): dopv killed with
/// A sync killed while a node is being created leaves a half-made node behind (its record says
/// `creating`, the provider has a directory without a finished node in it). Dropped from the
/// plan, the next sync has the provider remove that leftover: a node that does not quite exist
/// yet is still the provider's to clean up.
#[test]
fn a_node_killed_mid_create_then_dropped_from_the_plan_leaves_nothing_behind() {
    use std::os::unix::fs::PermissionsExt;
    if !local_nodes_available() {
        return;
    }
    let lab = Lab::new();
    let (p, port) = ("127.0.70", 2340);
    let keep = node("h1", &format!("{p}.1"), "");
    lab.plan(&plan_text("half", p, port, std::slice::from_ref(&keep)));
    lab.expect(&["sync", "half", "-q"], 0);
    // An ssh-keygen that stops the next create half-way: it says so, then waits to be killed.
    let bin = lab.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = lab.path().join("keygen.pid");
    let keygen = bin.join("ssh-keygen");
    std::fs::write(
        &keygen,
        format!("#!/bin/sh\necho $$ > {}\nexec sleep 60\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&keygen, std::fs::Permissions::from_mode(0o755)).unwrap();
    lab.plan(&plan_text(
        "half",
        p,
        port,
        &[keep.clone(), node("h2", &format!("{p}.2"), "")],
    ));
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mut sync = Running::spawn(
        lab.command(&["sync", "half", "-q"])
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let t = std::time::Instant::now();
    let keygen_pid = loop {
        let pid = std::fs::read_to_string(&marker).unwrap_or_default();
        if let Ok(pid) = pid.trim().parse::<i32>() {
            break pid;
        }
        assert!(
            t.elapsed() < std::time::Duration::from_secs(30),
            "the create of h2 reached ssh-keygen"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    sync.kill();
    // SAFETY: kill has no memory preconditions.
    unsafe {
        libc::kill(keygen_pid, libc::SIGKILL);
    }
    let half_made = lab.node_dir("half", "h2");
    assert!(half_made.exists() && !half_made.join("node.json").exists());
    let shown = lab.json(&["show", "half"], 0);
    let h2 = shown["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "h2")
        .cloned();
    assert_eq!(h2.map(|n| n["status"].clone()), Some("creating".into()));
    // h2 leaves the plan before it was ever finished.
    lab.plan(&plan_text("half", p, port, &[keep]));
    lab.expect(&["sync", "half", "--destructive", "-q"], 0);
    assert!(!half_made.exists(), "the half-made h2 was removed");
    let shown = lab.json(&["show", "half"], 0);
    let names: Vec<_> = shown["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].clone())
        .collect();
    assert_eq!(names, vec![Value::from("h1")]);
    lab.expect(&["undeploy", "half"], 0);
}

/// SIGKILL at many moments of syncs that create, and (as the plan alternates between two
/// versions) destroy nodes. After every kill the store opens and a node recorded deployed was
/// never built again; every sync let finish leaves the plan in sync, and at the end exactly the
/// plan's nodes run, nothing half-built left over.
#[test]
fn chaos_sigkill_at_many_moments_of_syncs_leaves_nothing_half_built() {
    use dop_testbed::chaos::{kills, Moments};
    if !local_nodes_available() {
        return;
    }
    let lab = Lab::new();
    let (p, port) = ("127.0.68", 2338);
    let version = |last: &str| {
        let mut nodes: Vec<String> = (1..=3)
            .map(|i| node(&format!("c{i}"), &format!("{p}.{i}"), ""))
            .collect();
        let ip = if last == "c4" { 9 } else { 10 };
        nodes.push(node(
            last,
            &format!("{p}.{ip}"),
            "    disks: {d: {size: 1M}}\n",
        ));
        plan_text("chaos", p, port, &nodes)
    };
    let versions = [version("c4"), version("c5")];
    lab.plan(&versions[0]);
    // One undisturbed sync sets the window kills fall in; then back to nothing deployed.
    let started = std::time::Instant::now();
    lab.expect(&["sync", "chaos", "-q"], 0);
    let window = started.elapsed().mul_f64(1.2);
    lab.expect(&["undeploy", "chaos", "--rmdisk", "-q"], 0);
    let mut moments = Moments::from_env();
    let target = kills();
    println!(
        "dopv chaos: seed {} (DOP_CHAOS_SEED), {target} kill points within {window:?}",
        moments.seed
    );
    // The supervisor (the node's process) of each kept node when it was first seen deployed.
    let mut built: std::collections::BTreeMap<String, (i32, Value)> = Default::default();
    let (mut killed, mut rounds) = (0, 0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(400);
    while killed < target && std::time::Instant::now() < deadline {
        let mut child = lab.quietly(&["sync", "chaos", "--destructive", "-q"]);
        std::thread::sleep(moments.up_to(window));
        let finished = child.0.try_wait().unwrap();
        child.kill();
        if finished.is_none() {
            killed += 1;
        }
        // The store opens after any kill, and kept nodes are built once.
        let shown = lab.json(&["show", "chaos"], 0);
        for n in shown["nodes"].as_array().unwrap() {
            let name = n["node"].as_str().unwrap();
            if !["c1", "c2", "c3"].contains(&name) || n["status"] != "deployed" {
                continue;
            }
            let now = (lab.supervisor("chaos", name), n["generation"].clone());
            let first = built.entry(name.to_string()).or_insert(now.clone());
            assert_eq!(
                *first, now,
                "{name} was recorded deployed, then built again"
            );
        }
        if let Some(status) = finished {
            assert!(status.success(), "a sync ended with {status:?}");
            let check = lab.json(&["sync", "chaos", "--noop", "--detailed-exitcode"], 0);
            assert_eq!(check["in_sync"].as_array().unwrap().len(), 4, "{check:#}");
            rounds += 1;
            lab.plan(&versions[rounds % 2]);
        }
    }
    assert_eq!(
        killed, target,
        "only {killed} kill points in 400 s ({rounds} syncs finished): something hangs"
    );
    lab.expect(&["sync", "chaos", "--destructive"], 0);
    let check = lab.json(&["sync", "chaos", "--noop", "--detailed-exitcode"], 0);
    assert_eq!(check["in_sync"].as_array().unwrap().len(), 4, "{check:#}");
    let (last, ip, gone) = if rounds % 2 == 0 {
        ("c4", 9, "c5")
    } else {
        ("c5", 10, "c4")
    };
    assert_eq!(lab.ssh(&format!("{p}.{ip}"), port, "hostname"), last);
    assert!(
        !lab.node_dir("chaos", gone).exists(),
        "{gone} was left over"
    );
    // One node process per plan node: nothing half-built is running.
    let nodes_dir = lab.local_dir().join("nodes/chaos");
    let supervisors = dop_testbed::chaos::processes_mentioning(&nodes_dir)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| text(&c).contains("supervise.sh"))
        })
        .count();
    assert_eq!(supervisors, 4);
    println!("dopv chaos: {killed} kills, {rounds} syncs run to the end between them");
    lab.expect(&["undeploy", "chaos", "--rmdisk"], 0);
}

/// Every file of the lab's execution logs, by path (small ones whole; a test reads them).
fn execution_logs(lab: &Lab) -> Vec<(PathBuf, u64, String)> {
    let mut found = Vec::new();
    let mut dirs = vec![lab.log_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let size = entry.metadata().map_or(0, |m| m.len());
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                found.push((path, size, text));
            }
        }
    }
    found
}

/// A hook past `hook_timeout` is stopped with its whole process group (what it started in the
/// background too), and a hook flooding its output has only `max_program_output` bytes of it
/// logged, then a marker line; both are warnings, and the node is undeployed (a baremetal
/// node: its record goes, the machine is left alone; its destroy hooks run).
#[test]
fn hooks_are_stopped_at_their_timeout_and_their_output_is_capped() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    let sleeper = lab.path().join("sleeper.pid");
    let slow = lab.path().join("slow.sh");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\nsleep 3600 &\necho $! > {}\nwait\n",
            sleeper.display()
        ),
    )
    .unwrap();
    let flood = lab.path().join("flood.sh");
    // 100 MiB of lines, then a word on standard error.
    std::fs::write(&flood, "#!/bin/sh\nyes | head -c 104857600\necho end >&2\n").unwrap();
    for hook in [&slow, &flood] {
        std::fs::set_permissions(hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let conf = lab.path().join("dop.conf");
    std::fs::write(&conf, "hook_timeout: 1\nmax_program_output: 64K\n").unwrap();
    lab.plan(&format!(
        "name: hooked\ninfrastructures:\n  dc: {{type: baremetal}}\nnodes:\n  m1: {{infrastructure: dc}}\n\
         hooks:\n  pre_destroy_vm: [{}]\n  post_destroy_vm: [{}]\n",
        slow.display(),
        flood.display()
    ));
    lab.expect(&["deploy", "hooked"], 0);
    let out = lab
        .command(&["undeploy", "hooked", "--json"])
        .env("DOP_CONFIG", &conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let pid: i32 = std::fs::read_to_string(&sleeper)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signal 0 only asks whether the process exists.
    let alive = || unsafe { libc::kill(pid, 0) == 0 };
    assert!(
        dop_testbed::wait_for(std::time::Duration::from_secs(10), || !alive()).is_ok(),
        "the hook's background sleep went with its group"
    );
    let logs = execution_logs(&lab);
    let all: String = logs.iter().map(|(_, _, t)| t.as_str()).collect();
    assert!(
        all.contains(&format!(
            "the pre_destroy_vm hook {} for m1 did not end within 1 s (hook_timeout in dop.conf) \
             and was stopped with its process group",
            slow.display()
        )),
        "{all}"
    );
    assert!(
        all.contains(&format!(
            "the post_destroy_vm hook {} for m1 wrote more than 65536 bytes (max_program_output \
             in dop.conf)",
            flood.display()
        )),
        "{all}"
    );
    let node_log = logs
        .iter()
        .find(|(path, _, _)| path.file_name().is_some_and(|n| n == "m1.log"))
        .expect("the node's log");
    assert!(
        node_log.2.contains("post_destroy_vm ")
            && node_log.2.contains("… output truncated after 65536 bytes"),
        "{}",
        node_log.2
    );
    // 64 KiB of two-byte lines is 32 768 log lines with their frame (time, node, hook): a few
    // MiB, where the whole output would have made 52 million lines.
    assert!(node_log.1 < 8 * 1024 * 1024, "{} bytes", node_log.1);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcomes"][0]["result"], "done", "{report:#}");
}
