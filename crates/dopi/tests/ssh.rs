//! `ssh/custom` against real sshd test nodes on loopback: a run over SSH, exit codes,
//! environment and quoting, host keys recorded on first use and a changed key refused, a wrong
//! key, an unreachable node.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{node_message, plan, text_of, Running, World};
use dop_testbed::{Options, Testbed};

fn text(b: &[u8]) -> String {
    text_of(b)
}

#[test]
fn commands_run_on_the_nodes_and_host_keys_are_trusted_on_first_use() {
    let w = World::new();
    let options = Options::new(3, 2311, 21);
    let mut testbed = w.testbed(&options);
    let defaults = format!(
        "      set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {}}}]\n",
        options.port
    );
    let steps = format!(
        "  default:
    - name: who
      nodes: all
{defaults}      command:
        plugin: ssh/custom
        exec: echo
        arguments: ['$DOP_NODE_NAME', '$(id -un)', '\"$GREETING\"', '$SSH_CONNECTION']
        env: {{GREETING: \"it's me\"}}
    - name: exit codes
      nodes: all
      command: {{plugin: ssh/custom, exec: 'exit 3', expect_exit_codes: [0, 3]}}
  again:
    - name: again
      nodes: all
{defaults}      command: {{plugin: ssh/custom, exec: 'true'}}
"
    );
    w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
    // With DOP_LOG=debug the connection attempts are diagnosed on standard error.
    let out = w
        .command(&["run", "ssh", "--json"])
        .env("DOP_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ssh: connecting") && stderr.contains("n01"),
        "{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logs = PathBuf::from(report["log_dir"].as_str().unwrap());
    // ... and never mixed into the run log.
    for file in std::fs::read_dir(&logs).unwrap().flatten() {
        let content = std::fs::read_to_string(file.path()).unwrap_or_default();
        assert!(
            !content.contains("ssh: connecting"),
            "{}",
            file.path().display()
        );
    }
    for (i, a) in testbed.addresses.iter().enumerate() {
        let node = format!("n{:02}", i + 1);
        let log = std::fs::read_to_string(logs.join(format!("{node}.log"))).unwrap();
        let expected = format!("stdout: {node} {} it's me 127.0.0.1 ", testbed.user);
        assert!(log.contains(&expected), "{node}: {log}");
        assert!(
            log.contains(&format!(" {a} {}", options.port)),
            "{node}: {log}"
        );
    }
    // The host keys were recorded.
    let store = dop_store::Store::open(&w.path().join("store")).unwrap();
    let hosts = store.state("ssh", dop_store::App::Hosts).unwrap();
    assert_eq!(hosts.records.len(), 3);
    assert!(hosts.records["n01"]["fingerprint"]
        .as_str()
        .unwrap()
        .starts_with("SHA256:"));

    // The nodes come back with another host key: the run refuses them.
    testbed.stop();
    let rebuilt = Testbed::start(&w.path().join("testbed-rebuilt"), &options).expect("testbed");
    let out = w.dopi(&["run", "ssh", "-s", "again"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !text(&out.stderr).contains("ssh: connecting"),
        "no diagnostics at the default level"
    );
    let message = node_message(&w.show_json("ssh"), 1, "n01");
    assert!(
        message.contains("the host key of the node changed: recorded SHA256:"),
        "{message}"
    );
    drop(rebuilt);
}

#[test]
fn wrong_keys_and_unreachable_nodes_fail_clearly() {
    let w = World::new();
    let options = Options::new(1, 2312, 31);
    let testbed = w.testbed(&options);
    let wrong = w.path().join("wrong_ed25519");
    dop_testbed::generate_key(&wrong, "wrong").unwrap();
    // 127.10.9.9 has no sshd.
    let steps = format!(
        "  - name: try
    nodes: all
    max_in_flight: -1
    command: {{plugin: ssh/custom, exec: 'true', credentials: login, port: {}}}
",
        options.port
    );
    w.add(
        "ssh",
        &plan(
            &testbed,
            &wrong,
            "  ghost: {infrastructure: lab, fqdn: 127.10.9.9}\n",
            &steps,
        ),
    );
    let out = w.dopi(&["run", "ssh"]);
    assert_eq!(out.status.code(), Some(1));
    let show = w.show_json("ssh");
    let n01 = node_message(&show, 0, "n01");
    assert_eq!(
        n01,
        format!(
            "authentication as '{}' failed (the node did not accept the key)",
            testbed.user
        )
    );
    let ghost = node_message(&show, 0, "ghost");
    assert!(
        ghost.starts_with(&format!(
            "cannot reach the node on port {} at 127.10.9.9",
            options.port
        )),
        "{ghost}"
    );
}

#[test]
fn file_checks_and_waiting_for_a_login() {
    let w = World::new();
    let options = Options::new(2, 2313, 41);
    let testbed = w.testbed(&options);
    let defaults = format!(
        "      set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {}}}]\n",
        options.port
    );
    let steps = format!(
        "  default:
    - name: wait
      nodes: '/^n/'
{defaults}      command: {{plugin: ssh/wait_for_login, interval: 1}}
    - name: passwd exists
      nodes: '/^n/'
      command: {{plugin: ssh/file_exists, file: /etc/passwd}}
    - name: nothing there
      nodes: '/^n/'
      command: {{plugin: ssh/file_exists, file: \"/no such/file's here\", expect_exit_codes: 1}}
    - name: root in passwd
      nodes: '/^n/'
      command: {{plugin: ssh/file_contains, file: /etc/passwd, pattern: '^root:'}}
  missing:
    - name: no such line
      nodes: [n01]
{defaults}      command: {{plugin: ssh/file_contains, file: /etc/passwd, pattern: 'no such user here'}}
  ghost:
    - name: wait for a ghost
      nodes: [ghost]
{defaults}      command: {{plugin: ssh/wait_for_login, interval: 1, plugin_timeout: 3}}
"
    );
    w.add(
        "ssh",
        &plan(
            &testbed,
            &testbed.client_key(),
            "  ghost: {infrastructure: lab, fqdn: 127.10.9.8}\n",
            &steps,
        ),
    );
    let out = w.dopi(&["run", "ssh"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = w.dopi(&["run", "ssh", "-s", "missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        node_message(&w.show_json("ssh"), 1, "n01"),
        "exit status 1, expected 0"
    );
    let start = std::time::Instant::now();
    let out = w.dopi(&["run", "ssh", "-s", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    assert_eq!(
        node_message(&w.show_json("ssh"), 2, "ghost"),
        "the node did not accept a login within 3 s"
    );
}

#[test]
fn a_node_whose_sshd_dies_mid_command_fails_clearly_and_resumes_later() {
    let w = World::new();
    let options = Options::new(2, 2314, 51);
    let testbed = w.testbed(&options);
    // The node's sshd process for this connection is killed while the command runs (the
    // command kills its parent, the first time): the channel ends without an exit status.
    // Only that connection dies: the other node, on the same sshd, is not touched.
    let flags = w.node_dir("flags");
    let steps = format!(
        "  - name: long
    nodes: all
    max_in_flight: -1
    command:
      plugin: ssh/custom
      credentials: login
      port: {port}
      exec: 'if [ $DOP_NODE_NAME = n01 ] && [ ! -e {flags}/killed ]; then touch {flags}/killed; sleep 0.3; kill -9 $PPID; sleep 5; fi; echo done'
",
        port = options.port,
        flags = flags.display(),
    );
    w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
    let out = w.dopi(&["run", "ssh", "-q"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let show = w.show_json("ssh");
    assert_eq!(
        node_message(&show, 0, "n01"),
        "the command ended without an exit status (the connection dropped?)"
    );
    assert_eq!(
        show["step_sets"][0]["steps"][0]["nodes"]["n02"]["state"],
        "done"
    );
    // The node is reachable again: the next run connects anew and finishes the work.
    let out = w.dopi(&["run", "ssh"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// Against stock sshd limits (MaxStartups 10:30:100, MaxSessions 10): 200 nodes, a 10-step plan,
/// 50 nodes at a time, no spurious failure (refused connections are retried).
#[test]
fn two_hundred_nodes_ten_steps_no_spurious_failures() {
    let w = World::new();
    let options = Options::new(200, 2315, 300);
    let testbed = w.testbed(&options);
    let mut steps = format!(
        "  - name: step 1
    nodes: all
    max_in_flight: 50
    set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {}}}]
    command: {{plugin: ssh/custom, exec: 'true'}}
",
        options.port
    );
    for i in 2..=10 {
        steps.push_str(&format!(
            "  - {{name: step {i}, nodes: all, max_in_flight: 50, command: {{plugin: ssh/custom, exec: 'true'}}}}\n"
        ));
    }
    w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
    let start = std::time::Instant::now();
    let out = w.dopi(&["run", "ssh", "-q", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["result"], "done", "{report}\n{}", text(&out.stderr));
    eprintln!(
        "200 nodes x 10 steps over ssh: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let show = w.show_json("ssh");
    for s in 0..10 {
        assert_eq!(show["step_sets"][0]["steps"][s]["state"], "done");
    }
}

#[test]
fn file_deploy_streams_large_files_sets_the_mode_and_skips_unchanged_ones() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let options = Options::new(1, 2316, 61);
    let testbed = w.testbed(&options);
    // The node is this machine: deploy into a directory its login may write.
    let target_dir = w.node_dir("node-files");
    // 5 MiB of bytes that are not text, far beyond a command line's limit.
    let source = w.path().join("payload.bin");
    let payload: Vec<u8> = (0..5 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&source, &payload).unwrap();
    std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o644)).unwrap();
    let deployed = target_dir.join("payload.bin");
    let steps = format!(
        "  - name: deploy
    nodes: all
    command:
      plugin: ssh/file_deploy
      file: {deployed}
      content: {{file: {source}}}
      mode: '0640'
      credentials: login
      port: {port}
",
        deployed = deployed.display(),
        source = source.display(),
        port = options.port
    );
    w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
    let out = w.dopi(&["run", "ssh"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        std::fs::read(&deployed).unwrap() == payload,
        "the deployed bytes differ"
    );
    assert_eq!(
        std::fs::metadata(&deployed).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let written = std::fs::metadata(&deployed).unwrap().modified().unwrap();

    // Run again: the file has this content already and is not rewritten.
    assert_eq!(w.dopi(&["reset", "ssh", "--force"]).status.code(), Some(0));
    let out = w.dopi(&["run", "ssh"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        node_message(&w.show_json("ssh"), 0, "n01"),
        format!("{} unchanged", deployed.display())
    );
    assert_eq!(
        std::fs::metadata(&deployed).unwrap().modified().unwrap(),
        written
    );
}

#[test]
fn file_replace_takes_the_replacement_literally() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let options = Options::new(1, 2317, 71);
    let testbed = w.testbed(&options);
    let dir = w.node_dir("node-files");
    let file = dir.join("app.conf");
    let pwned = dir.join("pwned");
    // A pattern that escaped only `/` ended sed's regex at `a\\` and made the rest flags:
    // `e` ran the line as a command (`touch …pwned`). It must match its own text instead.
    let hostile = format!("^a\\/touch {} #\\/e;#", pwned.display());
    let hostile_line = format!("a/touch {} #/e;#", pwned.display());
    std::fs::write(
        &file,
        format!("url = http://old/path\nurl = http://old/other\na\\b\n{hostile_line}\nx/e\n"),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    let steps = format!(
        "  - name: replace
    nodes: all
    command:
      plugin: ssh/file_replace
      file: {file}
      pattern: 'http://old/'
      replacement: 'https://new/a&b\\\\c/'
      credentials: login
      port: {port}
  - name: hostile
    nodes: all
    command:
      plugin: ssh/file_replace
      file: {file}
      pattern: '{hostile}'
      replacement: 'matched literally'
      credentials: login
      port: {port}
  - name: slash
    nodes: all
    command:
      plugin: ssh/file_replace
      file: {file}
      pattern: 'x/e'
      replacement: 'y'
      credentials: login
      port: {port}
",
        file = file.display(),
        port = options.port
    );
    w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
    let out = w.dopi(&["run", "ssh"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "url = https://new/a&b\\\\c/path\nurl = https://new/a&b\\\\c/other\na\\b\n\
         matched literally\ny\n"
    );
    assert!(!pwned.exists(), "the pattern ran a command on the node");
}

#[test]
fn reboot_waits_for_the_node_to_go_down_and_come_back() {
    let w = World::new();
    let options = Options::new(1, 2318, 81);
    let testbed_dir = w.path().join("testbed");
    let mut testbed = Testbed::start(&testbed_dir, &options).expect("testbed");
    let flag_dir = w.node_dir("flags");
    let flag = flag_dir.join("reboot-requested");
    let steps = format!(
        "  - name: reboot
    nodes: all
    command: {{plugin: ssh/reboot, reboot_cmd: 'touch {flag}', interval: 1, plugin_timeout: 60, credentials: login, port: {port}}}
  - name: after
    nodes: all
    command: {{plugin: ssh/custom, exec: 'echo back', credentials: login, port: {port}}}
",
        flag = flag.display(),
        port = options.port
    );
    w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
    let mut run = w.quietly(&["run", "ssh", "-q"]);
    // "Reboot" the node when asked: its sshd goes away for two seconds and comes back with the
    // same host key.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !flag.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(flag.exists(), "the reboot command ran");
    testbed.crash();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let _back = Testbed::start(&testbed_dir, &options).expect("testbed");
    let status = run.wait();
    let logs: String = std::fs::read_dir(w.path().join("logs/ssh"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path().join("all.log")).unwrap_or_default())
        .collect();
    assert_eq!(status.code(), Some(0), "{logs}");
    let show = w.show_json("ssh");
    assert_eq!(show["step_sets"][0]["steps"][0]["state"], "done");
    assert_eq!(show["step_sets"][0]["steps"][1]["state"], "done");
}

/// An ssh_key credential without a private_key logs in with the keys of the ssh agent at
/// `SSH_AUTH_SOCK`; without an agent the command says what is missing.
#[test]
fn an_ssh_key_without_a_private_key_logs_in_with_the_agent() {
    let w = World::new();
    let options = Options::new(1, 2319, 121);
    let testbed = w.testbed(&options);
    let socket = w.path().join("agent.sock");
    let _agent = Running(
        Command::new("ssh-agent")
            .args(["-D", "-a"])
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ssh-agent"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let added = Command::new("ssh-add")
        .arg(testbed.client_key())
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .unwrap();
    assert!(added.status.success(), "{}", text(&added.stderr));
    let plan_text = format!(
        "name: agent
infrastructures: {{lab: {{type: baremetal}}}}
credentials:
  from_agent: {{type: ssh_key, username: {user}, public_key: {{file: {key}.pub}}}}
nodes:
  n01: {{infrastructure: lab, fqdn: '{address}'}}
steps:
  default:
    - name: who
      nodes: all
      command: {{plugin: ssh/custom, exec: 'id -un', credentials: from_agent, port: {port}}}
  again:
    - name: again
      nodes: all
      command: {{plugin: ssh/custom, exec: 'true', credentials: from_agent, port: {port}}}
",
        user = testbed.user,
        key = testbed.client_key().display(),
        address = testbed.addresses[0],
        port = options.port,
    );
    w.add("agent", &plan_text);
    let out = w
        .command(&["run", "agent"])
        .env("SSH_AUTH_SOCK", &socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = w
        .command(&["run", "agent", "-s", "again"])
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        node_message(&w.show_json("agent"), 1, "n01"),
        "none of the credentials from_agent is an ssh_key with a private_key (or, with an ssh \
         agent running, without one) or a username_password"
    );
}

#[test]
fn a_command_past_its_timeout_ends_without_waiting_for_it() {
    let w = World::new();
    let options = Options::new(1, 2325, 131);
    let testbed = w.testbed(&options);
    let steps = format!(
        "  - name: slow
    nodes: all
    command: {{plugin: ssh/custom, exec: 'sleep 30', plugin_timeout: 1, credentials: login, port: {}}}
",
        options.port
    );
    w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
    let started = std::time::Instant::now();
    let out = w.dopi(&["run", "ssh"]);
    // The command would take 30 s: the run must not wait for it (it used to hang on the
    // channel close after signalling the command).
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let message = node_message(&w.show_json("ssh"), 0, "n01");
    assert!(
        message.contains("timed out") || message.contains("timeout"),
        "{message}"
    );
}

/// Shell text in every parameter that reaches a remote command arrives as data: file names,
/// patterns, replacements, file contents and variable values are quoted, and a variable name
/// that is not one is refused before anything runs.
#[test]
fn shell_text_in_parameters_reaches_the_node_as_data() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let options = Options::new(1, 2327, 151);
    let testbed = w.testbed(&options);
    let dir = w.node_dir("node-files");
    let owned = dir.join("owned");
    let attack = format!(
        "$(touch {o}); `touch {o}`; touch {o} #'\"",
        o = owned.display()
    );
    let weird = dir.join("a b;$(touch owned)'x\"`id`");
    std::fs::write(&weird, "key = old\n").unwrap();
    std::fs::set_permissions(&weird, std::fs::Permissions::from_mode(0o666)).unwrap();
    let yaml = |s: &str| serde_json::to_string(s).unwrap();
    let steps = format!(
        "  - name: hostile
    nodes: all
    set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {port}}}]
    commands:
      - plugin: ssh/custom
        exec: 'printf %s \"$V\" > {dir}/env-out'
        env: {{V: {attack}}}
      - {{plugin: ssh/file_exists, file: {weird}}}
      - plugin: ssh/file_replace
        file: {weird}
        pattern: {pattern}
        replacement: {attack}
      - {{plugin: ssh/file_contains, file: {weird}, pattern: {contains}}}
      - plugin: ssh/file_deploy
        file: {deployed}
        content: {attack}
",
        port = options.port,
        dir = dir.display(),
        attack = yaml(&attack),
        weird = yaml(weird.to_str().unwrap()),
        pattern = yaml("old"),
        contains = yaml(&format!("touch {}", owned.display())),
        deployed = yaml(dir.join("x;$(touch owned)").to_str().unwrap()),
    );
    w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
    // A preview shows the commands and runs nothing.
    let out = w.dopi(&["run", "ssh", "--noop"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).matches("would run:").count(),
        5,
        "{}",
        text(&out.stdout)
    );
    assert!(!owned.exists() && !dir.join("env-out").exists());
    let out = w.dopi(&["run", "ssh"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(!owned.exists(), "shell text ran on the node");
    assert!(!dir.join("owned").exists());
    assert_eq!(
        std::fs::read_to_string(dir.join("env-out")).unwrap(),
        attack
    );
    assert_eq!(
        std::fs::read_to_string(&weird).unwrap(),
        format!("key = {attack}\n")
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("x;$(touch owned)")).unwrap(),
        attack
    );

    // A variable name with shell text is refused by validation: nothing runs.
    let bad = "  - name: bad\n    nodes: all\n    command: {plugin: ssh/custom, exec: 'true', credentials: login, env: {'X=1; touch /tmp/dop-owned; Y': v}}\n";
    let file = w.path().join("bad.yaml");
    std::fs::write(&file, plan(&testbed, &testbed.client_key(), "", bad)).unwrap();
    let out = w.dopi(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("is not a variable name")
            || text(&out.stderr).contains("is not a variable name"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// A run whose node n01 gets into trouble mid-command (the tests of a paused sshd and of an
/// address taken away): a 2-node plan whose one step, on n01 and until `flags/fault` exists,
/// writes its sshd session's pid to `flags/session` and waits, with a `plugin_timeout`.
struct TroubledRun {
    w: World,
    _testbed: Testbed,
    flags: PathBuf,
    run: Running,
}

impl TroubledRun {
    fn start(options: &Options, timeout: u32) -> TroubledRun {
        let w = World::new();
        let testbed = w.testbed(options);
        let flags = w.node_dir("flags");
        let steps = format!(
            "  - name: long
    nodes: all
    max_in_flight: -1
    command:
      plugin: ssh/custom
      credentials: login
      port: {port}
      plugin_timeout: {timeout}
      exec: 'if [ $DOP_NODE_NAME = n01 ] && [ ! -e {flags}/fault ]; then echo $PPID > {flags}/session.tmp; mv {flags}/session.tmp {flags}/session; sleep 2; fi; echo done'
",
            port = options.port,
            flags = flags.display(),
        );
        w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
        let run = w.quietly(&["run", "ssh", "-q"]);
        TroubledRun {
            w,
            _testbed: testbed,
            flags,
            run,
        }
    }

    /// Waits until n01's command runs; returns its sshd session's pid. Later runs of the
    /// command do not wait any more.
    fn session(&self) -> i32 {
        let session = self.flags.join("session");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !session.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let pid = std::fs::read_to_string(&session)
            .expect("n01's command started")
            .trim()
            .parse()
            .unwrap();
        std::fs::write(self.flags.join("fault"), "").unwrap();
        pid
    }

    /// Waits for the run: it fails, n01 failed and n02 is done; returns n01's message.
    fn n01_failed(&mut self) -> String {
        assert_eq!(self.run.wait().code(), Some(1));
        let show = self.w.show_json("ssh");
        let step = &show["step_sets"][0]["steps"][0]["nodes"];
        assert_eq!(step["n01"]["state"], "failed", "{show:#}");
        assert_eq!(step["n02"]["state"], "done", "{show:#}");
        node_message(&show, 0, "n01")
    }

    /// The next run finishes the work.
    fn rerun_finishes(&self) {
        let out = self.w.dopi(&["run", "ssh"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

/// A node whose sshd stops answering mid-command (its session process paused with SIGSTOP, as
/// a hung host would) fails at the command's timeout instead of holding the run; the other
/// node is not touched, and once the node answers again the next run finishes the work.
#[test]
fn a_node_whose_sshd_is_paused_mid_command_fails_at_its_timeout_and_resumes_later() {
    let options = Options::new(2, 2328, 161);
    let mut run = TroubledRun::start(&options, 3);
    // Pause n01's session process (the sshd child serving this command).
    let pid = run.session();
    // SAFETY: kill has no memory preconditions; the pid is this test's sshd session.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe {
                libc::kill(self.0, libc::SIGCONT);
            }
        }
    }
    let resume = Resume(pid);
    let message = run.n01_failed();
    assert!(
        message.contains("timed out") || message.contains("timeout"),
        "{message}"
    );
    drop(resume);
    run.rerun_finishes();
}

/// A node's address gone mid-command (its route dropped, as a pulled cable): the node fails
/// (at its timeout, or when the connection is found dead), the other node finishes, and once
/// the address is back the next run finishes the work. Runs in a network namespace the test
/// creates (this test binary again, under `unshare --net`), where the loopback addresses are
/// the test's own; root only, skipped with the reason else.
#[test]
fn a_node_whose_address_goes_away_mid_command_fails_and_resumes_when_it_is_back() {
    if std::env::var_os("DOP_TEST_IN_NETNS").is_none() {
        if Command::new("ip").arg("-V").output().is_err() {
            eprintln!("skipped: no `ip` command (iproute2; `bash .ci/install-deps` installs it)");
            return;
        }
        let out = Command::new("unshare")
            .arg("--net")
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "a_node_whose_address_goes_away_mid_command_fails_and_resumes_when_it_is_back",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DOP_TEST_IN_NETNS", "1")
            .output()
            .unwrap();
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        if !out.status.success() && stderr.contains("unshare failed") {
            eprintln!("skipped: no network namespace for the test: {stderr}");
            return;
        }
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("1 passed"), "{stdout}");
        for line in stdout.lines().filter(|l| l.contains("n01 failed with")) {
            println!("{line}");
        }
        return;
    }
    // In the namespace: loopback up with only 127.0.0.1 and the nodes' addresses, so that a
    // node's address can be taken away.
    let ip = |args: &str| {
        let out = Command::new("ip").args(args.split(' ')).output().unwrap();
        assert!(out.status.success(), "ip {args}: {}", text(&out.stderr));
    };
    let options = Options::new(2, 2329, 171);
    let (a1, a2) = (
        dop_testbed::address(options.first, 0),
        dop_testbed::address(options.first, 1),
    );
    ip("link set lo up");
    ip("addr del 127.0.0.1/8 dev lo");
    ip("addr add 127.0.0.1/32 dev lo");
    ip(&format!("addr add {a1}/32 dev lo"));
    ip(&format!("addr add {a2}/32 dev lo"));
    let mut run = TroubledRun::start(&options, 4);
    run.session();
    // The cable: the address goes, and what is sent to it is dropped.
    ip(&format!("addr del {a1}/32 dev lo"));
    ip(&format!("route add blackhole {a1}/32"));
    let message = run.n01_failed();
    assert!(message.contains("timed out"), "{message}");
    println!("n01 failed with: {message}");
    // The cable back: the next run reaches the node and finishes.
    ip(&format!("route del blackhole {a1}/32"));
    ip(&format!("addr add {a1}/32 dev lo"));
    run.rerun_finishes();
}

/// A login the node refuses is not transient: the node fails after one login, with the reason,
/// instead of trying again. Two ways sshd refuses: a locked account (root can make one), and
/// closing the connection on a refused key (`MaxAuthTries` reached).
#[test]
fn a_refused_login_fails_at_once_without_trying_again() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: making a locked account needs root");
        return;
    }
    const LOCKED: &str = "doplocked";
    if !Command::new("id")
        .arg(LOCKED)
        .output()
        .unwrap()
        .status
        .success()
    {
        // useradd leaves the password '!': locked.
        let made = Command::new("useradd")
            .args(["-r", "-M", "-d", "/nonexistent", "-s", "/bin/sh", LOCKED])
            .status()
            .unwrap();
        assert!(made.success());
    }
    let w = World::new();
    let options = Options::new(2, 2315, 61);
    let testbed = w.testbed(&options);
    let steps = format!(
        "  - name: try
    nodes: all
    max_in_flight: -1
    command: {{plugin: ssh/custom, exec: 'true', credentials: login, port: {}}}
",
        options.port
    );
    let locked_plan = plan(&testbed, &testbed.client_key(), "", &steps).replace(
        &format!("username: {}", testbed.user),
        &format!("username: {LOCKED}"),
    );
    w.add("ssh", &locked_plan);
    let started = std::time::Instant::now();
    let out = w.dopi(&["run", "ssh"]);
    println!("refused logins failed after {:?}", started.elapsed());
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let show = w.show_json("ssh");
    for node in ["n01", "n02"] {
        assert_eq!(
            node_message(&show, 0, node),
            format!("authentication as '{LOCKED}' failed (the node did not accept the key)")
        );
    }
    let log = std::fs::read_to_string(testbed.dir().join("sshd.0.log")).unwrap();
    let logins = log
        .lines()
        .filter(|l| l.contains("Connection closed by invalid user"))
        .count();
    assert_eq!(logins, 2, "one login per node, none repeated:\n{log}");
    drop(testbed);

    // A node that closes the connection on a refused key (sshd's `MaxAuthTries` reached) fails
    // at once too, with the server's message.
    let w = World::new();
    let options = Options {
        extra_config: "MaxAuthTries 1\n".into(),
        ..Options::new(1, 2316, 71)
    };
    let testbed = w.testbed(&options);
    let wrong = w.path().join("wrong_ed25519");
    dop_testbed::generate_key(&wrong, "wrong").unwrap();
    let steps = steps.replace("port: 2315", "port: 2316");
    w.add("ssh", &plan(&testbed, &wrong, "", &steps));
    let out = w.dopi(&["run", "ssh"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        node_message(&w.show_json("ssh"), 0, "n01"),
        format!(
            "authentication as '{}' failed (the node did not accept the key)",
            testbed.user
        )
    );
    let log = std::fs::read_to_string(testbed.dir().join("sshd.0.log")).unwrap();
    assert!(log.contains("Too many authentication failures"), "{log}");
    let logins = log
        .lines()
        .filter(|l| l.contains("Failed publickey"))
        .count();
    assert_eq!(logins, 1, "one login, not repeated:\n{log}");
}

/// A node's lines of the run log, comparable between nodes: the time, level and node name
/// taken off, the node's name and address replaced, and each stream's lines in their own list
/// (the two streams of a command may interleave differently on two nodes).
fn comparable_log(log: &str, node: &str, address: &str) -> [Vec<String>; 3] {
    let mut parts: [Vec<String>; 3] = Default::default();
    for line in log.lines() {
        let text = line
            .split_once(&format!("[{node}] "))
            .map_or(line, |(_, rest)| rest)
            .replace(node, "NODE")
            .replace(address, "ADDRESS");
        // Long lines are compared by their start and length (a failure stays readable).
        let text = match text.char_indices().nth(120) {
            Some((at, _)) => format!("{}… ({} bytes)", &text[..at], text.len()),
            None => text,
        };
        let which = match text.split_once(": ").map(|(tag, _)| tag) {
            Some("stdout") => 0,
            Some("stderr") => 1,
            _ => 2,
        };
        parts[which].push(text);
    }
    parts
}

/// Commands without input run one after the other in one shell session per node; a node that
/// gives none (a forced command that refuses shells, here) takes a channel per command. Both
/// report the same: output (partial, long and binary lines, both streams), exit statuses,
/// the environment, masking, an empty standard input, timeouts (the command is signalled,
/// not left running).
#[test]
fn commands_in_a_shell_session_report_exactly_as_on_a_channel_of_their_own() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let gate = w.node_dir("gate").join("single-commands-only");
    std::fs::write(
        &gate,
        "#!/bin/sh\n# Runs the command it is given, but no shell that reads commands. It says why after\n\
         # it has ended (sshd may send the exit status before the last of standard error).\n\
         case \"$SSH_ORIGINAL_COMMAND\" in\n  *'/bin/sh -s'*) (sleep 0.2; echo 'single commands only' >&2) & exit 1 ;;\nesac\n\
         exec \"$SHELL\" -c \"$SSH_ORIGINAL_COMMAND\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&gate, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut options = Options::new(2, 2330, 181);
    let gated = dop_testbed::address(181, 1);
    options.extra_config = format!(
        "Match LocalAddress {gated}\n  ForceCommand {}\n",
        gate.display()
    );
    let testbed = w.testbed(&options);
    let port = options.port;
    let steps = format!(
        "  where:
    - name: parent
      nodes: all
      set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {port}}}]
      command: {{plugin: ssh/custom, exec: 'tr \"\\\\0\" \" \" < /proc/$PPID/cmdline; echo'}}
  default:
    - name: output
      nodes: all
      set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {port}}}]
      command: {{plugin: ssh/custom, exec: 'printf \"one\\ntwo\"; printf \"three\\n\" >&2; printf %s $((1+1)); exit 3', expect_exit_codes: [3]}}
    - name: no input
      nodes: all
      command: {{plugin: ssh/custom, exec: 'cat; echo after cat', plugin_timeout: 20}}
    - name: long and binary lines
      nodes: all
      command: {{plugin: ssh/custom, exec: 'head -c 20000 /dev/zero | tr \"\\\\0\" x; echo; printf \"\\\\377\\\\376 bin\\\\n\"'}}
    - name: masked
      nodes: all
      command: {{plugin: ssh/custom, exec: 'echo the password is s3cret-Pa55 >&2; {{ head -c 8190 /dev/zero | tr \"\\\\0\" y; printf s3\"\"cr; sleep 0.2; printf \"et-Pa\"\"55\\\\n\"; }} >&2'}}
    - name: environment
      nodes: all
      command: {{plugin: ssh/custom, exec: 'echo \"$GREETING $DOP_NODE_NAME\"; export LEAK=1', env: {{GREETING: \"it's me\"}}}}
    - name: own environment
      nodes: all
      command: {{plugin: ssh/custom, exec: 'echo \"leak=${{LEAK:-none}}\"'}}
    - name: timeout
      nodes: all
      command: {{plugin: ssh/custom, exec: 'echo waiting; sleep 31.${{DOP_NODE_NAME#n0}}', plugin_timeout: 1}}
"
    );
    let text = plan(&testbed, &testbed.client_key(), "", &steps).replace(
        "credentials:\n",
        "credentials:\n  spare: {type: username_password, username: x, password: s3cret-Pa55}\n",
    );
    w.add("ssh", &text);

    let out = w
        .command(&["run", "ssh", "-s", "where", "--json"])
        .env("DOP_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    let show = w.show_json("ssh");
    let set = |name: &str| {
        show["step_sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no step set {name}: {show:#}"))
            .clone()
    };
    let tail =
        |node: &str| set("where")["steps"][0]["nodes"][node]["commands"][0]["output_tail"].clone();
    assert_eq!(tail("n01")[0], "/bin/sh -s ", "n01 runs in a session");
    let gated_parent = tail("n02")[0].as_str().unwrap_or("").to_string();
    assert!(
        gated_parent.contains("single-commands-only"),
        "n02 takes a channel per command, run by its forced command: {gated_parent}"
    );

    let out = w
        .command(&["run", "ssh", "--json"])
        .env("DOP_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out.stderr));
    let diagnostics = text_of(&out.stderr);
    assert_eq!(
        diagnostics.matches("ssh: shell session started").count(),
        1,
        "one session on n01 for all its commands: {diagnostics}"
    );
    assert!(
        diagnostics.contains("single commands only"),
        "the refusal is diagnosed: {diagnostics}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logs = PathBuf::from(report["log_dir"].as_str().unwrap());
    let log_of = |i: usize| {
        let node = format!("n{:02}", i + 1);
        let log = std::fs::read_to_string(logs.join(format!("{node}.log"))).unwrap();
        comparable_log(&log, &node, &testbed.addresses[i].to_string())
    };
    let (session, channel) = (log_of(0), log_of(1));
    assert_eq!(session, channel);
    // What the logs say is what was expected, not merely the same.
    let [stdout, stderr, _] = &session;
    for expected in [
        "stdout: one",
        "stdout: two2",
        "stdout: after cat",
        "stdout: it's me NODE",
        "stdout: leak=none",
        "stdout: waiting",
    ] {
        assert!(
            stdout.contains(&expected.to_string()),
            "{expected}: {stdout:#?}"
        );
    }
    let piece = format!("stdout: {}… (8200 bytes)", "x".repeat(112));
    assert_eq!(
        stdout.iter().filter(|l| **l == piece).count(),
        2,
        "{stdout:#?}"
    );
    assert!(stdout
        .iter()
        .any(|l| l.ends_with(" bin") && l.contains('\u{fffd}')));
    assert!(stderr.contains(&"stderr: three".to_string()), "{stderr:#?}");
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("stderr: the password is ") && !l.contains("s3cret")),
        "{stderr:#?}"
    );
    // Printed in two writes across the cut at 8 KiB: the line is cut before it, and no part
    // of it is in any log (the command line splits it with `""`, for the command shown).
    assert!(stderr.contains(&"stderr: ****".to_string()), "{stderr:#?}");
    for file in ["n01.log", "n02.log", "all.log", "events.jsonl"] {
        let text = std::fs::read_to_string(logs.join(file)).unwrap();
        assert!(!text.contains("Pa55") && !text.contains("s3cr"), "{file}");
    }
    let show = w.show_json("ssh");
    let default = show["step_sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "default")
        .unwrap()
        .clone();
    for step in 0..7 {
        let of = |node: &str| {
            let mut c = default["steps"][step]["nodes"][node]["commands"][0].clone();
            for key in ["started_ms", "finished_ms"] {
                c.as_object_mut().unwrap().remove(key);
            }
            serde_json::to_string(&c).unwrap().replace(node, "NODE")
        };
        assert_eq!(of("n01"), of("n02"), "step {step}");
    }
    assert_eq!(
        default["steps"][6]["nodes"]["n01"]["commands"][0]["message"],
        "timed out after 1 s (plugin_timeout); ended without an exit status (a signal, or the connection dropped)"
    );
    // The session's timed-out command was signalled with everything it started (its shell
    // and the `sleep`), not left running on the node. (On a channel of its own sshd signals
    // the shell alone, and n02's `sleep 31.2` outlives it: stopped here.)
    let running = |pattern: &str| -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|p| {
                std::fs::read(p.path().join("cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c).replace('\0', " ").trim_end() == pattern
                })
            })
            .filter_map(|p| p.file_name().to_str()?.parse().ok())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !running("sleep 31.1").is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let left = running("sleep 31.1");
    for pid in running("sleep 31.2")
        .into_iter()
        .chain(left.iter().copied())
    {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(
        left.is_empty(),
        "the session's timed-out command still runs"
    );
}

/// A command that leaves work in the background runs on a channel of its own: what it left
/// writes into its own output (the command ends when that output closes, as it always did),
/// never into the next command's.
#[test]
fn background_work_never_writes_into_the_next_command() {
    let w = World::new();
    let options = Options::new(1, 2332, 185);
    let testbed = w.testbed(&options);
    let steps = format!(
        "  - name: leaves work behind
    nodes: all
    set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {}}}]
    command: {{plugin: ssh/custom, exec: '(sleep 1; echo late) &'}}
  - name: next
    nodes: all
    command: {{plugin: ssh/custom, exec: 'echo next; sleep 1.5'}}
",
        options.port
    );
    w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
    let out = w.dopi(&["run", "ssh"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    let show = w.show_json("ssh");
    let tail = |step: usize| {
        show["step_sets"][0]["steps"][step]["nodes"]["n01"]["commands"][0]["output_tail"].clone()
    };
    assert_eq!(tail(0), serde_json::json!(["late"]));
    assert_eq!(tail(1), serde_json::json!(["next"]));
}

/// A credential is made once per run: a private key given by a program (`exec:`) runs the
/// program once, not once per command.
#[test]
fn a_credential_is_made_once_per_run() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    let options = Options::new(2, 2333, 187);
    let testbed = w.testbed(&options);
    let program = w.work().join("key-from-a-vault");
    let asked = w.work().join("asked");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\necho asked >> {}\nexec cat {}\n",
            asked.display(),
            testbed.client_key().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut steps = String::new();
    for n in 1..=3 {
        steps.push_str(&format!(
            "  - name: step {n}\n    nodes: all\n    command: {{plugin: ssh/custom, exec: 'true', credentials: login, port: {}}}\n",
            options.port
        ));
    }
    let text = plan(&testbed, &testbed.client_key(), "", &steps).replace(
        &format!("private_key: {{file: {}}}", testbed.client_key().display()),
        &format!("private_key: {{exec: ['{}']}}", program.display()),
    );
    assert!(text.contains("exec: ['"), "{text}");
    w.add("ssh", &text);
    let out = w.dopi(&["run", "ssh"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    assert_eq!(w.lines("asked").len(), 1, "six commands, one key");
}

/// A run keeps at most `max_ssh_connections` node connections open: with 2 for 6 nodes all at
/// once, the others wait for a place, the connection used longest ago that runs nothing is
/// closed for them, and every node still runs every step.
#[test]
fn a_run_keeps_no_more_connections_open_than_allowed() {
    let w = World::new();
    let options = Options::new(6, 2335, 191);
    let testbed = w.testbed(&options);
    let mut steps = String::new();
    for n in 1..=2 {
        steps.push_str(&format!(
            "  - name: step {n}\n    nodes: all\n    max_in_flight: -1\n    command: {{plugin: ssh/custom, exec: 'sleep 0.2', credentials: login, port: {}}}\n",
            options.port
        ));
    }
    w.add("ssh", &plan(&testbed, &testbed.client_key(), "", &steps));
    let config = w.path().join("dop.conf");
    std::fs::write(&config, "max_ssh_connections: 2\n").unwrap();
    let out = w
        .command(&["run", "ssh"])
        .env("DOP_CONFIG", &config)
        .env("DOP_LOG", "debug")
        .output()
        .unwrap();
    let diagnostics = text_of(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{diagnostics}");
    let (mut open, mut most, mut logins, mut closed) = (0i32, 0, 0, 0);
    for line in diagnostics.lines() {
        if line.contains("ssh: connected") {
            open += 1;
            logins += 1;
        } else if line.contains("ssh: closed to make room") {
            open -= 1;
            closed += 1;
        }
        most = most.max(open);
    }
    assert_eq!(most, 2, "{diagnostics}");
    assert_eq!(logins, 12, "6 nodes, 2 steps, a new login each time");
    // `-1` asks for all 6 at once: no more start than can be connected (the others would be
    // marked running while they wait).
    assert!(
        diagnostics.contains("step 'step 1' on 6 node(s), 2 at a time (max_ssh_connections)"),
        "{diagnostics}"
    );
    let (mut running, mut most_running) = (0i32, 0);
    for line in diagnostics.lines() {
        if line.contains("] starting ssh/custom") {
            running += 1;
        } else if line.contains("] ssh/custom [OK]") {
            running -= 1;
        }
        most_running = most_running.max(running);
    }
    assert_eq!(most_running, 2, "{diagnostics}");
    assert_eq!(closed, 10, "{diagnostics}");
    let show = w.show_json("ssh");
    for step in 0..2 {
        for node in ["n01", "n02", "n03", "n04", "n05", "n06"] {
            assert_eq!(
                show["step_sets"][0]["steps"][step]["nodes"][node]["state"], "done",
                "{node}"
            );
        }
    }
    let bad = w.path().join("bad.conf");
    std::fs::write(&bad, "max_ssh_connections: 0\n").unwrap();
    let out = w
        .command(&["run", "ssh"])
        .env("DOP_CONFIG", &bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out.stderr));
    assert!(
        text_of(&out.stderr)
            .contains("bad.conf:1: 'max_ssh_connections' must be a positive number"),
        "{}",
        text_of(&out.stderr)
    );
}
