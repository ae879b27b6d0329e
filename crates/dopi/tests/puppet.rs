//! `ssh/puppet_agent_run` over a real sshd, with a stand-in `puppet` program on the node whose
//! exit codes and output each test scripts: detailed exit codes, reruns on change and on error,
//! `expect_exit_codes` honoured, error patterns, and the wait for another run's lock.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{node_message, plan, text_of, World};
use dop_testbed::Options;

/// A `puppet` for the node: `config print statedir` prints `<dir>/state-<node>`; `agent …`
/// records its arguments in `<node>.calls`, takes its next result from `<node>.codes` (an exit
/// code, or `error0`: an `Error:` line and exit 0) and prints a Puppet-like line.
const FAKE_PUPPET: &str = r#"#!/bin/sh
dir=$(dirname "$0")
node=$DOP_NODE_NAME
if [ "$1" = config ]; then echo "$dir/state-$node"; exit 0; fi
echo "$*" >> "$dir/$node.calls"
code=$(head -n 1 "$dir/$node.codes")
sed -i 1d "$dir/$node.codes"
case "$code" in
  error0) echo "Error: Could not retrieve catalog"; exit 0 ;;
  *) echo "Notice: Applied catalog in 0.01 seconds"; exit "$code" ;;
esac
"#;

struct Node<'a> {
    dir: &'a Path,
    name: &'a str,
}

impl Node<'_> {
    fn codes(&self, codes: &[&str]) {
        let file = self.dir.join(format!("{}.codes", self.name));
        std::fs::write(&file, codes.join("\n") + "\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join(format!("{}.calls", self.name)))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    fn lock(&self) -> PathBuf {
        let state = self.dir.join(format!("state-{}", self.name));
        std::fs::create_dir_all(&state).unwrap();
        state.join("agent_catalog_run.lock")
    }
}

#[test]
fn puppet_runs_are_judged_by_detailed_exit_codes_with_reruns_and_the_lock() {
    let w = World::new();
    let options = Options::new(6, 2324, 111);
    let testbed = w.testbed(&options);
    // The nodes are this machine: the stand-in lives where their login can run and write it.
    let dir = w.node_dir("puppet");
    let puppet = dir.join("puppet");
    std::fs::write(&puppet, FAKE_PUPPET).unwrap();
    std::fs::set_permissions(&puppet, std::fs::Permissions::from_mode(0o755)).unwrap();
    let node = |name| Node { dir: &dir, name };

    let step = |set: &str, nodes: &str, extra: &str| {
        format!(
            "  {set}:
    - name: puppet
      nodes: [{nodes}]
      max_in_flight: -1
      set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {port}, puppet_bin: '{bin}'}}]
      command: {{plugin: ssh/puppet_agent_run{extra}}}
",
            port = options.port,
            bin = puppet.display(),
        )
    };
    let steps = [
        step("plain", "n01", ", arguments: '--tags web'"),
        step("reruns", "n02", ", rerun_on_change: true, max_rerun: 3"),
        step("errors", "n03", ", rerun_on_error: true, max_rerun: 1"),
        step("expect", "n04, n05", ", expect_exit_codes: 2"),
        step("locked", "n06", ", lock_check_interval: 1"),
        step("nowait", "n06", ", wait_if_already_running: false"),
    ]
    .concat();
    w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
    let run = |set: &str| {
        let out = w.dopi(&["run", "ssh", "-s", set]);
        (out.status.code(), text_of(&out.stderr))
    };
    let show_message = |set: usize, n: &str| node_message(&w.show_json("ssh"), set, n);

    // Changes (exit 2) are a success; the arguments follow `--test --color false`.
    node("n01").codes(&["2"]);
    assert_eq!(run("plain").0, Some(0));
    assert_eq!(
        node("n01").calls(),
        ["agent --test --color false --tags web"]
    );

    // Reruns while Puppet keeps changing things, until it settles.
    node("n02").codes(&["2", "2", "0"]);
    assert_eq!(run("reruns").0, Some(0));
    assert_eq!(node("n02").calls().len(), 3);

    // Failures (4, then 6) are rerun once, then the command fails saying so.
    node("n03").codes(&["4", "6"]);
    assert_eq!(run("errors").0, Some(1));
    assert_eq!(node("n03").calls().len(), 2);
    let m = show_message(2, "n03");
    assert!(
        m.starts_with("Puppet had ERRORS during the run! max_reruns (1) reached!")
            && m.contains("exit status 6, expected 0 or 2 (Puppet: changes applied, and the run had failures)"),
        "{m}"
    );

    // expect_exit_codes is honoured (the original ignored it): "no changes" fails an
    // expectation of changes; an `Error:` line fails even with exit 0.
    node("n04").codes(&["0"]);
    node("n05").codes(&["error0"]);
    assert_eq!(run("expect").0, Some(1));
    let m = show_message(3, "n04");
    assert_eq!(m, "exit status 0, expected 2 (Puppet: no changes)");
    let m = show_message(3, "n05");
    assert!(
        m.contains("1 output line(s) matched an error pattern"),
        "{m}"
    );

    // Another run holds the lock: the command waits until it is gone (the test removes it
    // after a moment), then runs.
    let lock = node("n06").lock();
    std::fs::write(&lock, "4242").unwrap();
    let remover = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(2500));
            std::fs::remove_file(lock).unwrap();
        })
    };
    node("n06").codes(&["0", "0"]);
    let (code, stderr) = run("locked");
    remover.join().unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(node("n06").calls().len(), 1);
    let logs = w.path().join("logs/ssh");
    let waited = std::fs::read_dir(&logs)
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path().join("n06.log")).ok())
        .any(|log| log.contains("Puppet run already in progress, waiting 1s to check again"));
    assert!(waited, "no wait logged in {}", logs.display());

    // … or, told not to wait, fails without running Puppet.
    std::fs::write(&lock, "4242").unwrap();
    assert_eq!(run("nowait").0, Some(1));
    assert_eq!(node("n06").calls().len(), 1);
    assert_eq!(
        show_message(5, "n06"),
        "a Puppet run is already in progress on the node and wait_if_already_running is false"
    );
}

/// Whether the real `puppet` is installed (`.ci/install-deps` installs Debian's puppet-agent).
fn real_puppet() -> bool {
    let found = Command::new("puppet")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: no `puppet` on this machine (run .ci/install-deps)");
    }
    found
}

/// Runs `puppet ARGS` as the test nodes' login (with its HOME); returns its standard output.
fn puppet_as_login(login: &str, home: &Path, args: &[&str]) -> String {
    let mut c = if login == dop_testbed::ROOT_LOGIN {
        let mut c = Command::new("runuser");
        c.args(["-u", login, "--", "env"])
            .arg(format!("HOME={}", home.display()))
            .arg("puppet");
        c
    } else {
        let mut c = Command::new("puppet");
        c.env("HOME", home);
        c
    };
    let out = c.args(args).output().unwrap();
    assert!(out.status.success(), "{}", text_of(&out.stderr));
    text_of(&out.stdout)
}

/// Real Puppet (`puppet apply`, masterless) run by `ssh/puppet_agent_run` on the test nodes:
/// its manifests read the plan's configuration through the Hiera data dop writes; detailed exit
/// codes 0, 2, 4 and 6, reruns, `--noop` and the run lock are Puppet's own.
#[test]
fn real_puppet_applies_the_plans_hiera_data_judged_by_its_exit_codes() {
    if !real_puppet() {
        return;
    }
    let w = World::new();
    let options = Options::new(4, 2326, 141);
    let testbed = w.testbed(&options);
    let dir = w.node_dir("puppet");
    let (home, out) = (dir.join("home"), dir.join("out"));
    for d in [&home, &out] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let manifest = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let site = manifest(
        "site.pp",
        "file { \"${lookup('out_dir')}/${trusted['certname']}.conf\": content => \"port=${lookup('web::port')}\\n\" }\n",
    );
    let fail = manifest("fail.pp", "exec { 'fails': command => '/bin/false' }\n");
    let mixed = manifest(
        "mixed.pp",
        "notify { 'changed': } exec { 'fails': command => '/bin/false', require => Notify['changed'] }\n",
    );
    // dop writes the Hiera data where the nodes' login can read it.
    let conf = w.path().join("dop.conf");
    std::fs::write(
        &conf,
        format!("hiera_dir: {}\n", dir.join("hiera").display()),
    )
    .unwrap();
    let dopi = |args: &[&str]| {
        let out = w.command(args).env("DOP_CONFIG", &conf).output().unwrap();
        (
            out.status.code(),
            text_of(&out.stdout),
            text_of(&out.stderr),
        )
    };
    let hiera_yaml = dir.join("hiera.yaml");
    let (code, yaml, _) = dopi(&["hiera", "config"]);
    assert_eq!(code, Some(0));
    std::fs::write(&hiera_yaml, yaml).unwrap();

    let step = |set: &str, nodes: &str, manifest: &str, extra: &str| {
        format!(
            "  {set}:
    - name: puppet
      nodes: [{nodes}]
      max_in_flight: -1
      set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {port}, env: {{HOME: '{home}'}}}}]
      command: {{plugin: ssh/puppet_agent_run, apply: '{manifest}', arguments: '--hiera_config {hiera}{extra}'}}
",
            port = options.port,
            home = home.display(),
            hiera = hiera_yaml.display(),
        )
    };
    let steps = [
        step(
            "apply",
            "n01, n02",
            &site,
            "', rerun_on_change: true, max_rerun: '2",
        ),
        step("again", "n01", &site, ""),
        step("noop", "n03", &site, " --noop"),
        step(
            "failures",
            "n04",
            &fail,
            "', rerun_on_error: true, max_rerun: '1",
        ),
        step("mixed", "n04", &mixed, ""),
        step("locked", "n01", &site, "', lock_check_interval: '1"),
    ]
    .concat()
    .replace("max_rerun: '2'", "max_rerun: 2")
    .replace("max_rerun: '1'", "max_rerun: 1")
    .replace("lock_check_interval: '1'", "lock_check_interval: 1");
    let n02_fqdn = &testbed.addresses[1];
    let text = plan(&testbed, &testbed.client_key(), "", &steps).replace(
        "steps:\n",
        &format!(
            "configuration:\n  nodes:\n    '{n02_fqdn}': {{'web::port': 9090}}\n  defaults: {{out_dir: '{}', 'web::port': 8080}}\nsteps:\n",
            out.display()
        ),
    );
    let file = w.path().join("ssh.yaml");
    std::fs::write(&file, &text).unwrap();
    let (code, _, err) = dopi(&["add", file.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    // The nodes share this machine and so the login's Puppet directories: make them once, as
    // a node's Puppet installation would have, rather than in several first runs at a time.
    puppet_as_login(&testbed.user, &home, &["apply", "--noop", "-e", ""]);
    let (_, shown, _) = dopi(&["hiera", "show", "n02"]);
    assert!(shown.contains("\"web::port\": 9090"), "{shown}");

    let run = |set: &str| {
        let (code, _, err) = dopi(&["run", "ssh", "-s", set]);
        (code, err)
    };
    let show_message = |set: usize, n: &str| node_message(&w.show_json("ssh"), set, n);
    let node_log = |n: &str| -> String {
        let logs = w.path().join("logs/ssh");
        std::fs::read_dir(&logs)
            .unwrap()
            .filter_map(|e| {
                std::fs::read_to_string(e.unwrap().path().join(format!("{n}.log"))).ok()
            })
            .collect()
    };

    // Changes (2), then a rerun with none (0); each node's data from its plan.
    let (code, err) = run("apply");
    assert_eq!(
        code,
        Some(0),
        "{err}\nn01:\n{}\nn02:\n{}",
        node_log("n01"),
        node_log("n02")
    );
    assert_eq!(
        std::fs::read_to_string(out.join("n01.conf")).unwrap(),
        "port=8080\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("n02.conf")).unwrap(),
        "port=9090\n"
    );
    assert!(
        node_log("n01").contains("Starting Puppet Rerun 1 of 2"),
        "{}",
        node_log("n01")
    );
    assert_eq!(show_message(0, "n01"), "");

    // Nothing to change: 0.
    assert_eq!(run("again").0, Some(0));
    // --noop: a would-be change is not made, and is no failure.
    assert_eq!(run("noop").0, Some(0));
    assert!(!out.join("n03.conf").exists(), "--noop changed nothing");

    // Failures (4) are rerun once, then fail; changes and failures (6) fail.
    assert_eq!(run("failures").0, Some(1));
    let m = show_message(3, "n04");
    assert!(
        m.starts_with("Puppet had ERRORS during the run! max_reruns (1) reached!")
            && m.contains("exit status 4, expected 0 or 2")
            && m.ends_with("(Puppet: the run had failures)"),
        "{m}"
    );
    assert_eq!(run("mixed").0, Some(1));
    let m = show_message(4, "n04");
    assert!(
        m.contains("exit status 6, expected 0 or 2")
            && m.ends_with("(Puppet: changes applied, and the run had failures)"),
        "{m}"
    );

    // Another run holds Puppet's own lock (in the statedir Puppet reports for the login):
    // the command waits until it is gone.
    let state = PathBuf::from(
        puppet_as_login(&testbed.user, &home, &["config", "print", "statedir"]).trim(),
    );
    std::fs::create_dir_all(&state).unwrap();
    let lock = state.join("agent_catalog_run.lock");
    std::fs::write(&lock, "4242").unwrap();
    let remover = {
        let lock = lock.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(2500));
            std::fs::remove_file(lock).unwrap();
        })
    };
    let (code, err) = run("locked");
    remover.join().unwrap();
    assert_eq!(code, Some(0), "{err}");
    assert!(
        node_log("n01").contains("Puppet run already in progress, waiting 1s to check again"),
        "{}",
        node_log("n01")
    );

    // dop's level masks nothing: a node in no plan finds the next level's data; a plan's node
    // finds its plan's first.
    let common = dir.join("common");
    std::fs::create_dir_all(&common).unwrap();
    std::fs::write(common.join("common.json"), r#"{"web::port": 7070}"#).unwrap();
    let layered = dir.join("layered.yaml");
    let dop_level = std::fs::read_to_string(&hiera_yaml).unwrap();
    std::fs::write(
        &layered,
        format!(
            "{dop_level}  - name: common\n    data_hash: json_data\n    datadir: \"{}\"\n    path: common.json\n",
            common.display()
        ),
    )
    .unwrap();
    let port_of = |certname: &str| {
        let out = Command::new("puppet")
            .args(["apply", "--color", "false", "--hiera_config"])
            .arg(&layered)
            .args(["--certname", certname, "-e", "notice(lookup('web::port'))"])
            .env("HOME", &home)
            .output()
            .unwrap();
        let text = text_of(&out.stdout) + &text_of(&out.stderr);
        assert!(out.status.success(), "{text}");
        text.lines()
            .find_map(|l| l.strip_prefix("Notice: Scope(Class[main]): "))
            .unwrap_or_else(|| panic!("no notice in {text}"))
            .to_string()
    };
    assert_eq!(port_of("stranger.example.com"), "7070");
    assert_eq!(port_of("n02"), "9090");
}
