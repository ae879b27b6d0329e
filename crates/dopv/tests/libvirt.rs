//! dopv against a real libvirt: the libvirtd `cargo xtask libvirt up` runs on this machine,
//! booting real qemu guests (software emulation) from the small image `cargo xtask vm-image`
//! builds. Guests reach the host only through qemu's user networking, their SSH forwarded to
//! 127.0.80.x. Without the testbed each test prints why it is skipped.
//!
//! The tests look at the host themselves, through `virsh` (not dopv's code): which domains
//! and volumes exist, what the guests see over SSH. They share one libvirtd and two cores, so
//! they take turns; whatever a test's plan made is removed when it ends, pass or fail.

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dop_testbed::dopv::{error_of, DopvLab};
use dop_testbed::libvirt::Libvirt;
use dop_testbed::process::{text, Running};
use serde_json::Value;

/// One test at a time: one libvirtd (one test restarts it), and guests are CPU-bound.
static HOST: Mutex<()> = Mutex::new(());

/// dopv's mark on the domains it makes.
const MARK: &str = "https://dop.invalid/dopv/libvirt/1";

fn testbed() -> Option<Libvirt> {
    match Libvirt::find() {
        Ok(lv) => Some(lv),
        Err(reason) => {
            eprintln!("skipped: {reason}");
            None
        }
    }
}

/// `virsh` on the test host.
fn virsh(lv: &Libvirt, args: &[&str]) -> Output {
    Command::new("virsh")
        .args(["-q", "-c", &lv.uri])
        .args(args)
        .output()
        .expect("virsh runs")
}

fn virsh_ok(lv: &Libvirt, args: &[&str]) -> String {
    let out = virsh(lv, args);
    assert!(
        out.status.success(),
        "virsh {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every domain on the host (running or not).
fn all_domains(lv: &Libvirt) -> Vec<String> {
    virsh_ok(lv, &["list", "--all", "--name"])
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The plan a domain's dopv mark names (`None`: no mark).
fn marked_plan(lv: &Libvirt, domain: &str) -> Option<String> {
    let out = virsh(lv, &["metadata", domain, MARK]);
    if !out.status.success() {
        return None;
    }
    let meta = text(&out.stdout);
    let start = meta.find("plan=")? + "plan=".len();
    let quote = meta[start..].chars().next()?;
    let rest = &meta[start + 1..];
    Some(rest[..rest.find(quote)?].to_string())
}

/// A test's lab: a store, a login key and a plan name unique to the run.
struct Lab {
    dopv: DopvLab,
    lv: Libvirt,
    plan: String,
}

impl Drop for Lab {
    /// Removes the domains and volumes of the plan, also while a failed test unwinds.
    fn drop(&mut self) {
        clean(&self.lv, |p| p == self.plan);
    }
}

/// Removes the domains marked for plans `matches` accepts, and their volumes.
fn clean(lv: &Libvirt, matches: impl Fn(&str) -> bool) {
    let Ok(out) = Command::new("virsh")
        .args(["-q", "-c", &lv.uri, "list", "--all", "--name"])
        .output()
    else {
        return;
    };
    let mut plans = Vec::new();
    for domain in text(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let Some(plan) = marked_plan(lv, domain) else {
            continue;
        };
        if !matches(&plan) {
            continue;
        }
        let _ = virsh(lv, &["destroy", domain]);
        let _ = virsh(lv, &["undefine", domain]);
        plans.push(plan);
    }
    for volume in volumes(lv) {
        if let Some((plan, _)) = volume.split_once("--") {
            if matches(plan) {
                let _ = virsh(lv, &["vol-delete", "--pool", &lv.pool, &volume]);
            }
        }
    }
}

/// The volumes of the test pool.
fn volumes(lv: &Libvirt) -> Vec<String> {
    let _ = virsh(lv, &["pool-refresh", &lv.pool]);
    text(&virsh(lv, &["vol-list", &lv.pool]).stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

impl Lab {
    fn new(lv: Libvirt, test: &str) -> Lab {
        // A crashed earlier run of this test may have left its plan's domains behind.
        clean(&lv, |p| p.starts_with(test));
        Lab {
            dopv: DopvLab::new(env!("CARGO_BIN_EXE_dopv")),
            plan: format!("{test}{}", std::process::id()),
            lv,
        }
    }

    /// `dopv <command> <plan> [args] --json`, expecting `status`.
    fn json(&self, command: &str, args: &[&str], status: i32) -> Value {
        let mut all = vec![command, self.plan.as_str()];
        all.extend_from_slice(args);
        self.dopv.json(&all, status)
    }

    /// Adds or updates the plan: an infrastructure on the test host, the nodes, the steps.
    fn plan(&self, endpoint: &str, nodes: &str, steps: &str) {
        let key = self.dopv.key();
        let key = key.to_str().unwrap();
        let text = format!(
            "name: {plan}\ninfrastructures:\n  kvm:\n    type: libvirt\n    endpoint: '{endpoint}'\n    max_in_flight: 10\n    \
             networks:\n      lan: {{ip_pool: {{from: 10.0.2.10, to: 10.0.2.99}}, ip_netmask: 255.255.255.0, ip_defgw: 10.0.2.2}}\n\
             credentials:\n  root_key: {{type: ssh_key, username: root, private_key: {{file: {key}}}, public_key: {{file: {key}.pub}}}}\n\
             nodes:\n{nodes}{steps}",
            plan = self.plan
        );
        self.dopv.add_plan(&text);
    }

    /// The plan's domains, sorted.
    fn domains(&self) -> Vec<String> {
        let mut out: Vec<String> = all_domains(&self.lv)
            .into_iter()
            .filter(|d| marked_plan(&self.lv, d).as_deref() == Some(self.plan.as_str()))
            .collect();
        out.sort();
        out
    }

    /// The plan's volumes, sorted.
    fn volumes(&self) -> Vec<String> {
        let prefix = format!("{}--", self.plan);
        let mut out: Vec<String> = volumes(&self.lv)
            .into_iter()
            .filter(|v| v.starts_with(&prefix))
            .map(|v| v[prefix.len()..].to_string())
            .collect();
        out.sort();
        out
    }

    fn state(&self, domain: &str) -> String {
        virsh_ok(&self.lv, &["domstate", domain]).trim().to_string()
    }

    fn uuid(&self, domain: &str) -> String {
        virsh_ok(&self.lv, &["domuuid", domain]).trim().to_string()
    }

    /// Runs a command on a guest over SSH (through its forwarded port) as root.
    fn ssh(&self, address: &str, command: &str) -> String {
        self.dopv.ssh(address, 2222, command)
    }

    /// Polls `probe` for up to 15 s until it gives a value.
    fn until<T>(&self, what: &str, probe: impl Fn() -> Option<T>) -> T {
        let t = Instant::now();
        loop {
            if let Some(v) = probe() {
                return v;
            }
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "{what}: not within 15 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn dopi(&self, redeployed: dopi::Redeployed) -> dopi::RunReport {
        common::dopi_run(&self.dopv, &self.plan, redeployed, 20).unwrap()
    }
}

/// A guest: 1 vCPU, 192 MiB, a 1 GiB root disk over the test image, software emulation, its
/// first interface on qemu's user network with SSH forwarded from `forward`.
fn guest(name: &str, ip: &str, forward: &str, memory: &str, extra: &str) -> String {
    format!(
        "  {name}:\n    infrastructure: kvm\n    image: dop-guest.raw\n    credentials: [root_key]\n    \
         cores: 1\n    memory: {memory}\n    storage: 1G\n    \
         infrastructure_properties: {{default_pool: dop-test, domain_type: qemu, user_network_ssh: '{forward}:2222'}}\n    \
         interfaces: {{eth0: {{network: lan, ip: {ip}}}}}\n{extra}"
    )
}

/// The outcomes' `(node, result)`, sorted.
fn results(report: &Value) -> Vec<(String, String)> {
    let mut out = dop_testbed::dopv::results(report);
    out.sort();
    out
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The actions' `(node, action, held back)`, sorted.
fn actions(report: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out = dop_testbed::dopv::actions(report);
    out.sort();
    out
}

/// The guest's block device whose serial is `serial` (`/dev/vdc`), found from inside.
const FIND_DISK: &str = "for b in /sys/block/vd*; do [ \"$(cat $b/serial 2>/dev/null)\" = SERIAL ] && echo /dev/${b##*/}; done; true";

#[test]
fn a_plan_is_deployed_used_changed_and_removed_on_libvirt() {
    let _turn = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lv) = testbed() else { return };
    let lab = Lab::new(lv, "lvlife");
    let uri = lab.lv.uri.clone();
    let steps = "steps:\n  default:\n    - name: use\n      nodes: all\n      set_plugin_defaults:\n        \
                 - {plugins: '/^ssh/', credentials: root_key}\n      command: {plugin: ssh/custom, \
                 exec: 'hostname >> /root/runs; d=$(FIND); if [ -n \"$d\" ]; then mkfs.ext2 -q $d && mkdir -p /mnt/data && mount $d /mnt/data && hostname > /mnt/data/owner; fi'}\n"
        .replace("FIND", &FIND_DISK.replace("SERIAL", "data"));
    let one = |memory: &str| {
        guest(
            "lv1",
            "10.0.2.21",
            "127.0.80.21",
            memory,
            "    disks: {data: {size: 64M}}\n",
        )
    };
    let two = |disks: &str| guest("lv2", "10.0.2.22", "127.0.80.22", "192M", disks);
    let three = |ip: &str| guest("lv3", ip, "127.0.80.23", "192M", "");

    // v1: three guests, one with a data disk; dopi logs in to each and uses the disk.
    lab.plan(
        &uri,
        &[one("192M"), two(""), three("10.0.2.23")].concat(),
        &steps,
    );
    let deployed = lab.json("deploy", &[], 0);
    assert_eq!(
        results(&deployed),
        pairs(&[("lv1", "done"), ("lv2", "done"), ("lv3", "done")]),
        "{deployed:#}"
    );
    assert_eq!(lab.domains(), ["lv1", "lv2", "lv3"]);
    for d in ["lv1", "lv2", "lv3"] {
        assert_eq!(lab.state(d), "running");
    }
    assert_eq!(
        lab.volumes(),
        [
            "lv1--data-data.qcow2",
            "lv1--root.qcow2",
            "lv1--seed.img",
            "lv2--root.qcow2",
            "lv2--seed.img",
            "lv3--root.qcow2",
            "lv3--seed.img"
        ]
    );
    let report = lab.dopi(dopi::Redeployed::Refuse);
    assert!(
        matches!(report.result, dopi::RunResult::Done),
        "{:?}\n{}",
        report.result,
        std::fs::read_to_string(report.log_dir.join("all.log")).unwrap_or_default()
    );
    for (address, name) in [
        ("127.0.80.21", "lv1"),
        ("127.0.80.22", "lv2"),
        ("127.0.80.23", "lv3"),
    ] {
        // The seed's host name and the plan's key; the plan's static address.
        assert_eq!(lab.ssh(address, "cat /root/runs"), name);
        let ip = lab.ssh(address, "ip -4 -o addr show eth0");
        assert!(ip.contains(&format!("10.0.2.{}/24", &address[9..])), "{ip}");
    }
    assert_eq!(lab.ssh("127.0.80.21", "cat /mnt/data/owner"), "lv1");

    // What dopv reads back matches the plan: no false drift.
    lab.dopv.expect(&["refresh", &lab.plan], 0);
    lab.json("sync", &["--noop", "--detailed-exitcode"], 0);

    // v2: lv1 more memory (interruptive), lv2 a new disk (in place, hot-plugged), lv3 a new
    // address (destructive).
    lab.plan(
        &uri,
        &[
            one("256M"),
            two("    disks: {extra: {size: 32M}}\n"),
            three("10.0.2.24"),
        ]
        .concat(),
        &steps,
    );
    let preview = lab.json("sync", &["--noop", "--detailed-exitcode"], 2);
    assert_eq!(
        actions(&preview),
        [
            ("lv1", "update", vec!["--interruptive"]),
            ("lv2", "update", vec![]),
            ("lv3", "redeploy", vec!["--destructive"]),
        ]
        .map(|(n, a, h)| (
            n.to_string(),
            a.to_string(),
            h.into_iter().map(String::from).collect()
        ))
        .to_vec(),
        "{preview:#}"
    );
    let lv3_uuid = lab.uuid("lv3");
    lab.json("sync", &["--detailed-exitcode"], 2);
    // The guest handles the hotplug on its own time (ACPI): a moment after libvirt is done.
    let extra = lab.until("the guest sees the hot-plugged disk", || {
        let found = lab.ssh("127.0.80.22", &FIND_DISK.replace("SERIAL", "extra"));
        (!found.is_empty()).then_some(found)
    });
    assert!(
        extra.starts_with("/dev/vd"),
        "the hot-plugged disk is seen by the guest: {extra:?}"
    );
    assert_eq!(
        lab.ssh("127.0.80.22", &format!("blockdev --getsize64 {extra}")),
        (32u64 << 20).to_string()
    );
    // Drift: the disk unplugged behind dopv's back is found and plugged in again.
    let target = extra.trim_start_matches("/dev/");
    virsh_ok(
        &lab.lv,
        &["detach-disk", "lv2", target, "--live", "--config"],
    );
    lab.until("the guest lets go of the disk", || {
        lab.ssh("127.0.80.22", &FIND_DISK.replace("SERIAL", "extra"))
            .is_empty()
            .then_some(())
    });
    lab.dopv.expect(&["refresh", &lab.plan], 0);
    let shown = lab.json("show", &[], 0);
    let lv2 = shown["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"] == "lv2")
        .unwrap()
        .clone();
    assert_eq!(lv2["drift"][0]["field"], "disks", "{lv2:#}");
    lab.json("sync", &["--detailed-exitcode"], 2);
    lab.until("the guest sees the disk again", || {
        (!lab
            .ssh("127.0.80.22", &FIND_DISK.replace("SERIAL", "extra"))
            .is_empty())
        .then_some(())
    });
    assert!(
        virsh_ok(&lab.lv, &["dumpxml", "--inactive", "lv1"])
            .contains("<memory unit='KiB'>196608</memory>"),
        "held back"
    );

    lab.json("sync", &["--interruptive", "--detailed-exitcode"], 2);
    let lv1 = virsh_ok(&lab.lv, &["dumpxml", "lv1"]);
    assert!(lv1.contains("<memory unit='KiB'>262144</memory>"), "{lv1}");
    let mem = lab.ssh("127.0.80.21", "grep MemTotal /proc/meminfo");
    assert!(mem.contains("kB"), "{mem}");
    assert_eq!(
        lab.ssh("127.0.80.21", "cat /root/runs 2>/dev/null; echo up"),
        "up",
        "a reboot: /root is fresh in the guest's RAM"
    );
    let data = lab.ssh("127.0.80.21", &FIND_DISK.replace("SERIAL", "data"));
    assert!(
        data.starts_with("/dev/vd"),
        "the data disk is still attached after the reboot"
    );
    assert_eq!(
        lab.ssh(
            "127.0.80.21",
            &format!("mount {data} /mnt && cat /mnt/owner")
        ),
        "lv1"
    );

    lab.json("sync", &["--destructive", "--detailed-exitcode"], 0);
    assert_ne!(lab.uuid("lv3"), lv3_uuid, "lv3 was made again");
    let ip = lab.ssh("127.0.80.23", "ip -4 -o addr show eth0");
    assert!(ip.contains("10.0.2.24/24"), "{ip}");
    lab.dopv.expect(&["refresh", &lab.plan], 0);
    lab.json("sync", &["--noop", "--detailed-exitcode"], 0);

    // undeploy keeps the data disks; a new deploy gets them back with their data;
    // undeploy --rmdisk leaves nothing.
    lab.json("undeploy", &[], 0);
    assert!(lab.domains().is_empty());
    assert_eq!(
        lab.volumes(),
        ["lv1--data-data.qcow2", "lv2--data-extra.qcow2"]
    );
    lab.json("deploy", &[], 0);
    let data = lab.ssh("127.0.80.21", &FIND_DISK.replace("SERIAL", "data"));
    assert_eq!(
        lab.ssh(
            "127.0.80.21",
            &format!("mount {data} /mnt && cat /mnt/owner")
        ),
        "lv1"
    );
    lab.json("undeploy", &["--rmdisk"], 0);
    assert!(lab.domains().is_empty());
    assert!(lab.volumes().is_empty(), "{:?}", lab.volumes());
}

#[test]
fn bad_input_and_a_silent_guest_fail_their_nodes_and_leak_nothing() {
    let _turn = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lv) = testbed() else { return };
    let lab = Lab::new(lv, "lvfault");
    let uri = lab.lv.uri.clone();

    // An unreachable host: refused before any node is touched.
    lab.plan(
        "qemu+tcp://127.0.0.1:1/system",
        &guest("lf1", "10.0.2.31", "127.0.80.31", "192M", ""),
        "",
    );
    let out = lab.dopv.expect(&["deploy", &lab.plan], 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot connect to libvirt at qemu+tcp://127.0.0.1:1/system"),
        "{stderr}"
    );

    // Someone else's domain of a node's name, defined by hand, without dopv's mark.
    let clash = format!("lfclash{}", std::process::id());
    let xml = lab.dopv.path().join("clash.xml");
    std::fs::write(
        &xml,
        format!("<domain type='qemu'><name>{clash}</name><memory unit='MiB'>64</memory><os><type>hvm</type></os></domain>"),
    )
    .unwrap();
    virsh_ok(&lab.lv, &["define", xml.to_str().unwrap()]);
    struct Undefine<'a>(&'a Lab, String);
    impl Drop for Undefine<'_> {
        fn drop(&mut self) {
            let _ = virsh(&self.0.lv, &["undefine", &self.1]);
        }
    }
    let _clash = Undefine(&lab, clash.clone());
    // A guest that never answers SSH: a disk with nothing to boot.
    let blank = format!("{}--blank.raw", lab.plan);
    virsh_ok(
        &lab.lv,
        &[
            "vol-create-as",
            &lab.lv.pool,
            &blank,
            "16M",
            "--format",
            "raw",
        ],
    );

    let nodes = [
        guest("lf1", "10.0.2.31", "127.0.80.31", "192M", ""),
        guest("lf2", "10.0.2.32", "127.0.80.32", "192M", "")
            .replace("image: dop-guest.raw", "image: no-such-image.raw"),
        guest("lf3", "10.0.2.33", "127.0.80.33", "192M", "")
            .replace("default_pool: dop-test", "default_pool: no-such-pool"),
        guest(&clash, "10.0.2.34", "127.0.80.34", "192M", ""),
        guest("lf5", "10.0.2.35", "127.0.80.35", "192M", "")
            .replace("image: dop-guest.raw", &format!("image: {blank}")),
        guest("lf6", "10.0.2.36", "127.0.80.36", "192M", "").replace("storage: 1G", "storage: 16M"),
    ]
    .concat();
    lab.plan(&uri, &nodes, "");
    let report = lab.json("deploy", &["--wait-timeout", "20"], 1);
    assert_eq!(
        results(&report),
        pairs(&[
            ("lf1", "done"),
            ("lf2", "failed"),
            ("lf3", "failed"),
            ("lf5", "failed"),
            ("lf6", "failed"),
            (&clash, "failed")
        ]),
        "{report:#}"
    );
    let e = error_of(&report, "lf2");
    assert!(
        e.contains("no volume 'no-such-image.raw' in storage pool 'dop-test'"),
        "{e}"
    );
    let e = error_of(&report, "lf3");
    assert!(
        e.contains("no storage pool 'no-such-pool'") && e.contains("dop-test"),
        "{e}"
    );
    let e = error_of(&report, &clash);
    assert!(
        e.contains("that dopv did not create: dopv never touches it"),
        "{e}"
    );
    let e = error_of(&report, "lf5");
    assert!(
        e.contains("did not answer SSH within 20 s") && e.contains("console"),
        "{e}"
    );
    let e = error_of(&report, "lf6");
    assert!(
        e.contains("the image 'dop-guest.raw' is")
            && e.contains("larger than the node's storage (16777216 bytes)"),
        "{e}"
    );
    // Only the good node is left; the other domain is untouched.
    assert_eq!(lab.domains(), ["lf1"]);
    assert_eq!(
        lab.volumes(),
        ["blank.raw", "lf1--root.qcow2", "lf1--seed.img"]
    );
    assert!(all_domains(&lab.lv).contains(&clash));
    assert_eq!(marked_plan(&lab.lv, &clash), None);
    assert_eq!(lab.state(&clash), "shut off");

    // Fixed in the plan, the next sync makes the failed nodes.
    let fixed = [
        guest("lf1", "10.0.2.31", "127.0.80.31", "192M", ""),
        guest("lf2", "10.0.2.32", "127.0.80.32", "192M", ""),
    ]
    .concat();
    lab.plan(&uri, &fixed, "");
    lab.json("sync", &["--destructive"], 0);
    assert_eq!(lab.domains(), ["lf1", "lf2"]);
    lab.json("undeploy", &[], 0);
    assert_eq!(lab.volumes(), ["blank.raw"]);
}

#[test]
fn libvirtd_restarted_mid_deploy_leaves_a_node_the_next_sync_completes() {
    let _turn = HOST.lock().unwrap_or_else(|e| e.into_inner());
    let Some(lv) = testbed() else { return };
    let lab = Lab::new(lv, "lvrestart");
    let uri = lab.lv.uri.clone();
    lab.plan(
        &uri,
        &guest("lr1", "10.0.2.41", "127.0.80.41", "192M", ""),
        "",
    );
    let mut deploy = Running::spawn(
        lab.dopv
            .command(&["deploy", &lab.plan, "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    // Restart libvirtd as soon as the domain is defined: mid-deploy.
    let t = Instant::now();
    while !lab.domains().contains(&"lr1".to_string()) && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        lab.domains().contains(&"lr1".to_string()),
        "the deploy made its domain"
    );
    lab.lv.restart_libvirtd().unwrap();
    let out = deploy.wait_with_output();
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(1),
        "the deploy ends with a result, not a crash: {code:?}\n{}",
        text(&out.stderr)
    );
    eprintln!(
        "the deploy across the libvirtd restart exited {code:?}: {}",
        text(&out.stdout)
            .lines()
            .filter(|l| l.contains("\"error\""))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if code == Some(1) {
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let e = error_of(&report, "lr1");
        assert!(
            e.contains("libvirt at qemu:///system"),
            "a per-node error naming the host: {e}"
        );
    }
    // Whatever the deploy saw, the next sync leaves one working node.
    lab.json("sync", &[], 0);
    assert_eq!(lab.domains(), ["lr1"]);
    assert_eq!(lab.state("lr1"), "running");
    assert_eq!(lab.ssh("127.0.80.41", "hostname"), "lr1");
    assert_eq!(lab.volumes(), ["lr1--root.qcow2", "lr1--seed.img"]);
    lab.json("undeploy", &[], 0);
    assert!(lab.volumes().is_empty());
}
