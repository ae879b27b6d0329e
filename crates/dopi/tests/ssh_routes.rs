//! Routes to a node other than a direct connection: jump host chains (per infrastructure and
//! per node, one shared connection per jump host, `direct-tcpip` to the target) and commands
//! run on another node (`run_on`).

mod common;

use common::{node_message, text_of, World};
use dop_testbed::{Options, Testbed};

/// Lines of a testbed's sshd logs that mention `needle`.
fn log_lines(testbed: &Testbed, needle: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(testbed.dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap();
            lines.extend(
                text.lines()
                    .filter(|l| l.contains(needle))
                    .map(str::to_string),
            );
        }
    }
    lines
}

#[test]
fn jump_host_chains_reach_nodes_through_one_connection_per_jump_host() {
    let w = World::new();
    let jumps = Testbed::start(
        &w.path().join("jumps"),
        &Options {
            log_level: "DEBUG1".into(),
            ..Options::new(2, 2321, 91)
        },
    )
    .expect("jump testbed");
    // The targets share the jump hosts' client key, so one credential logs in everywhere.
    let targets = Testbed::start_with_client_key_of(
        jumps.dir(),
        &w.path().join("targets"),
        &Options::new(3, 2322, 95),
    )
    .expect("target testbed");
    let (j1, j2) = (jumps.addresses[0], jumps.addresses[1]);
    let t = &targets.addresses;
    let plan = format!(
        "name: jump
infrastructures:
  lab: {{type: baremetal}}
  behind: {{type: baremetal, jump_hosts: ['{j1}:2321']}}
credentials:
  login: {{type: ssh_key, username: {user}, private_key: {{file: {key}}}}}
  wrong: {{type: ssh_key, username: nobody-here, private_key: {{file: {key}}}}}
nodes:
  hop1a: {{infrastructure: behind, fqdn: '{t0}'}}
  hop1b: {{infrastructure: behind, fqdn: '{t1}'}}
  hop2: {{infrastructure: lab, fqdn: '{t2}', jump_hosts: ['{j1}:2321', {{host: '{j2}', port: 2321, credentials: login}}]}}
  direct: {{infrastructure: behind, fqdn: '{t2}', jump_hosts: []}}
  badjump: {{infrastructure: lab, fqdn: '{t0}', jump_hosts: [{{host: '{j2}', port: 2321, credentials: wrong}}]}}
  deadjump: {{infrastructure: lab, fqdn: '{t0}', jump_hosts: ['127.10.9.9:2321']}}
  deadtarget: {{infrastructure: behind, fqdn: 127.10.9.9}}
steps:
  default:
    - name: where
      nodes: all
      max_in_flight: -1
      set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: 2322}}]
      command: {{plugin: ssh/custom, exec: 'echo at $DOP_NODE_NAME'}}
  again:
    - name: again
      nodes: [hop1a]
      command: {{plugin: ssh/custom, exec: 'true', credentials: login, port: 2322}}
",
        user = jumps.user,
        key = jumps.client_key().display(),
        t0 = t[0],
        t1 = t[1],
        t2 = t[2],
    );
    w.add("jump", &plan);
    let out = w.dopi(&["run", "jump", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logs = std::path::PathBuf::from(report["log_dir"].as_str().unwrap());
    let show = w.show_json("jump");
    let node = |n: &str| &show["step_sets"][0]["steps"][0]["nodes"][n];
    for ok in ["hop1a", "hop1b", "hop2", "direct"] {
        assert_eq!(node(ok)["state"], "done", "{ok}: {}", node(ok));
        let log = std::fs::read_to_string(logs.join(format!("{ok}.log"))).unwrap();
        assert!(log.contains(&format!("stdout: at {ok}")), "{ok}: {log}");
    }
    let hop2 = std::fs::read_to_string(logs.join("hop2.log")).unwrap();
    assert!(
        hop2.contains(&format!(
            "through {u}@{j1}:2321, then {u}@{j2}:2321",
            u = jumps.user
        )),
        "{hop2}"
    );

    // The jump hosts opened the forwarded connections: j1 to both targets behind it and to j2
    // (once: the chain's connection is shared), j2 to hop2's target. `direct` went around them.
    let forwarded = |to: std::net::Ipv4Addr, port: u16| {
        log_lines(
            &jumps,
            &format!("direct_tcpip: originator 127.0.0.1 port 0, target {to} port {port}"),
        )
        .len()
    };
    assert_eq!(forwarded(t[0], 2322), 1, "{:?}", log_lines(&jumps, "port"));
    assert_eq!(forwarded(t[1], 2322), 1);
    assert_eq!(forwarded(j2, 2321), 1);
    assert_eq!(forwarded(t[2], 2322), 1);

    assert_eq!(
        node_message(&show, 0, "badjump"),
        format!(
            "through the jump host {j2}:2321: authentication as 'nobody-here' failed (the node \
             did not accept the key)"
        )
    );
    let dead = node_message(&show, 0, "deadjump");
    assert!(
        dead.starts_with(
            "through the jump host 127.10.9.9:2321: cannot reach the node on port 2321"
        ),
        "{dead}"
    );
    let dead = node_message(&show, 0, "deadtarget");
    assert!(
        dead.contains("the jump host could not open a connection to it"),
        "{dead}"
    );

    // The first jump host comes back with another host key: nodes behind it fail, saying
    // under which name the key is recorded, until that key is forgotten.
    drop(jumps);
    let rebuilt = Testbed::start_with_client_key_of(
        &w.path().join("jumps"),
        &w.path().join("jumps-rebuilt"),
        &Options::new(2, 2321, 91),
    )
    .expect("rebuilt jump testbed");
    let out = w.dopi(&["run", "jump", "-s", "again"]);
    assert_eq!(out.status.code(), Some(1));
    let record = format!("jump host {}@{j1}:2321", rebuilt.user);
    let m = node_message(&w.show_json("jump"), 1, "hop1a");
    assert!(
        m.starts_with(&format!(
            "through the jump host {j1}:2321: the host key of the node changed"
        )) && m.ends_with(&format!("(the jump host's key is recorded as '{record}')")),
        "{m}"
    );
    let out = w.dopi(&["forget-host-key", "jump", &record]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    let out = w.dopi(&["run", "jump", "-s", "again"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    drop((rebuilt, targets));
}

#[test]
fn a_command_runs_on_another_node_with_the_facts_of_its_own_node() {
    let w = World::new();
    let options = Options::new(3, 2323, 101);
    let testbed = w.testbed(&options);
    let lb = testbed.addresses[0];
    // n01 is the load balancer: the web nodes are taken out of it, on it, one at a time.
    let steps = format!(
        "  - name: drain
    nodes: [n02, n03]
    max_in_flight: 1
    set_plugin_defaults: [{{plugins: '/^ssh/', credentials: login, port: {port}}}]
    command:
      plugin: ssh/custom
      run_on: n01
      exec: 'echo drained $DOP_NODE_NAME $DOP_NODE_HOSTNAME on $SSH_CONNECTION'
",
        port = options.port
    );
    w.add(
        "ssh",
        &common::plan(&testbed, &testbed.client_key(), "", &steps),
    );
    let out = w.dopi(&["run", "ssh", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let logs = std::path::PathBuf::from(report["log_dir"].as_str().unwrap());
    for (node, address) in [("n02", testbed.addresses[1]), ("n03", testbed.addresses[2])] {
        let log = std::fs::read_to_string(logs.join(format!("{node}.log"))).unwrap();
        // The command's environment is its own node's; the connection is to n01's sshd.
        let expected = format!("stdout: drained {node} {address} on 127.0.0.1 ");
        let line = log.lines().find(|l| l.contains(&expected));
        assert!(
            line.is_some_and(|l| l.ends_with(&format!(" {lb} {}", options.port))),
            "{node}: {log}"
        );
    }

    // A run_on that names no node is a plan error, with its path.
    let bad = steps.replace("run_on: n01", "run_on: n09");
    let file = w.path().join("bad.yaml");
    std::fs::write(
        &file,
        common::plan(&testbed, &testbed.client_key(), "", &bad),
    )
    .unwrap();
    let out = w.dopi(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text_of(&out.stderr);
    assert!(
        stderr.contains(
            "error: steps[0].command[0].run_on: no node 'n09' in the plan to run the command on"
        ),
        "{stderr}"
    );
}
