//! The `dopc` client commands as processes against a real server (no root needed: the plans
//! are baremetal, their steps run on this host with the `custom` plugin). Servers are stopped
//! by pid when a test ends.

use std::io::BufRead;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use dop_testbed::dopc::DopcServer;
use dop_testbed::process::text;
use serde_json::Value;

/// The dopc server of a test, and the client commands run against it.
struct Server(DopcServer);

impl Deref for Server {
    type Target = DopcServer;
    fn deref(&self) -> &DopcServer {
        &self.0
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut DopcServer {
        &mut self.0
    }
}

impl Server {
    fn start() -> Server {
        Server(DopcServer::start(env!("CARGO_BIN_EXE_dopc"), "cli"))
    }

    fn run(&self, args: &[&str]) -> Output {
        self.client(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "dopc {args:?}\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

const PLAN: &str = "name: cli\ninfrastructures: {l: {type: baremetal}}\nnodes:\n  a: {infrastructure: l}\n  b: {infrastructure: l}\n\
                    steps:\n  default:\n    - name: hello\n      nodes: all\n      command: {plugin: custom, exec: 'echo hello'}\n";

/// Times and hashes differ between runs: blank them for snapshots.
fn stable(mut v: Value) -> Value {
    match &mut v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k.ends_with("_at") || k.ends_with("_ms") || k == "hash" || k == "source" {
                    *x = Value::String("[varies]".into());
                } else {
                    *x = stable(x.take());
                }
            }
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                *x = stable(x.take());
            }
        }
        _ => {}
    }
    v
}

#[test]
fn every_command_with_text_and_json() {
    let server = Server::start();
    assert!(server.ok(&["ping"]).contains("answers"));
    // The steps come from an included file: the client expands it before upload.
    let (head, steps) = PLAN.split_once("steps:\n").unwrap();
    let part = server.file("steps.yaml", steps);
    let plan = server.file(
        "cli.yaml",
        &format!("{head}steps:\ninclude: {}\n", part.display()),
    );
    assert_eq!(
        server.ok(&["plan", "add", plan.to_str().unwrap()]),
        "added plan 'cli' as iteration 1\n"
    );
    // The server wrote the plan's Hiera data for Puppet before it answered.
    let index = std::fs::read_to_string(server.path().join("store/hiera/current/index.json"))
        .expect("the Hiera data of the added plan");
    let index: Value = serde_json::from_str(&index).unwrap();
    assert_eq!(
        index["plans"]["cli"]["nodes"],
        serde_json::json!(["a", "b"])
    );
    let stored = server.ok(&["plan", "get", "cli"]);
    assert!(
        stored.contains("echo hello") && !stored.contains("include:"),
        "{stored}"
    );
    insta::assert_json_snapshot!("plan_list", stable(server.json(&["plan", "list"])));
    assert!(server.ok(&["plan", "get", "cli"]).contains("echo hello"));

    // A run, followed to the end: its events, in order, and the exit status of the result.
    let out = server.run(&["execution", "run", "cli", "--follow"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let log = text(&out.stdout);
    assert!(
        log.contains("[a] custom [OK]") && log.contains("execution 1 done"),
        "{log}"
    );
    insta::assert_json_snapshot!(
        "execution_get",
        stable(server.json(&["execution", "get", "1"]))
    );
    let warn = server.ok(&["execution", "log", "1", "--level", "warn"]);
    assert!(
        warn.lines()
            .all(|l| l.contains("WARN") || l.contains("ERROR")),
        "{warn}"
    );
    assert!(server
        .ok(&["execution", "log", "1", "--node", "b"])
        .contains("hello"));

    // The plan changes: update shows it, versions and diff list it.
    let changed = server.file("cli.yaml", &PLAN.replace("echo hello", "echo bonjour"));
    assert!(server
        .ok(&["plan", "update", changed.to_str().unwrap()])
        .starts_with("updated plan 'cli' (iteration 2)"));
    assert_eq!(
        server.json(&["plan", "versions", "cli"])["versions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(server.ok(&["plan", "diff", "cli"]).contains("bonjour"));
    let state = server.json(&["plan", "state", "cli"]);
    assert_eq!(state["nodes"].as_array().unwrap().len(), 2);
    assert!(server
        .ok(&["plan", "reset", "cli", "--force"])
        .contains("put back to ready"));

    // Drift, monitor and metrics: the baremetal nodes are recorded by a deploy, then
    // refreshed; b is dropped from the plan, so it is pending (removal needs --destructive).
    let out = server.run(&["execution", "deploy", "cli", "--follow"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = server.run(&["execution", "refresh", "cli", "--follow"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dropped = server.file(
        "cli.yaml",
        &PLAN
            .replace("echo hello", "echo bonjour")
            .replace("  b: {infrastructure: l}\n", ""),
    );
    server.ok(&["plan", "update", dropped.to_str().unwrap()]);
    insta::assert_json_snapshot!("plan_drift", stable(server.json(&["plan", "drift", "cli"])));
    let drift = server.ok(&["plan", "drift", "cli"]);
    assert!(
        drift.starts_with("plan 'cli': iteration 3; 1 in sync, 1 pending, 0 drifted, 0 unknown\n"),
        "{drift}"
    );
    assert!(
        drift.contains("removed_from_plan; needs --destructive"),
        "{drift}"
    );
    let out = server.run(&["plan", "drift", "cli", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "b is pending");
    assert_eq!(
        server.ok(&["plan", "monitor", "cli"]),
        "plan 'cli' is not monitored\n"
    );
    let set = server.ok(&[
        "plan",
        "monitor",
        "cli",
        "--interval",
        "3600",
        "--auto-sync",
        "--interruptive",
    ]);
    assert!(
        set.starts_with("plan 'cli': refresh every 3600 s, auto-sync on (in place, reboot), then run (set in api)\n"),
        "{set}"
    );
    let monitor = server.json(&["plan", "monitor", "cli"]);
    assert_eq!(monitor["settings"]["auto_sync"]["interruptive"], true);
    assert_eq!(monitor["settings"]["auto_sync"]["destructive"], false);
    let out = server.run(&["plan", "monitor", "cli", "--destructive"]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "--destructive needs --auto-sync"
    );
    assert_eq!(
        server.ok(&["plan", "monitor", "cli", "--clear"]),
        "plan 'cli' is not monitored\n"
    );
    let metrics = server.ok(&["metrics"]);
    assert!(
        metrics.contains("dopc_nodes{plan=\"cli\",state=\"pending\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");

    // Errors: one line, a documented status.
    let out = server.run(&["execution", "cancel", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: execution 1 has already finished (done) (409 conflict)\n"
    );
    let out = server.run(&["execution", "deploy", "nowhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: there is no plan 'nowhere' in the store"),
        "{}",
        text(&out.stderr)
    );
    let bad = server.file(
        "bad.yaml",
        "name: bad\nnodes: {x: {infrastructure: nope}}\n",
    );
    let out = server.run(&["plan", "add", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !text(&out.stderr).contains("error: error:"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("is not valid; nothing was sent"),
        "{}",
        text(&out.stderr)
    );

    // Clean-up commands.
    server.ok(&["execution", "undeploy", "cli", "--follow"]);
    let removed = server.json(&["execution", "clear", "--status", "done"]);
    // The run, the deploy, the refresh and the undeploy (and a refresh the monitor may have
    // started while it was set).
    let asked = removed
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["created_by"] != "monitor")
        .count();
    assert_eq!(asked, 4, "{removed}");
    assert_eq!(server.json(&["execution", "list"]), serde_json::json!([]));
    // A monitor set through the API goes with its plan: added again, it is not monitored.
    // (Switched off, so that no refresh can make the plan busy before it is deleted.)
    let off = server.ok(&["plan", "monitor", "cli", "--interval", "3600", "--off"]);
    assert!(
        off.starts_with("plan 'cli': off; would refresh every 3600 s"),
        "{off}"
    );
    assert!(server
        .ok(&["plan", "delete", "cli"])
        .contains("removed plan 'cli'"));
    server.ok(&["plan", "add", plan.to_str().unwrap()]);
    assert_eq!(
        server.ok(&["plan", "monitor", "cli"]),
        "plan 'cli' is not monitored\n"
    );
}

#[test]
fn unreachable_unauthorized_and_tls_failures_are_one_line_and_a_status() {
    let server = Server::start();
    let out = server
        .client(&["plan", "list"])
        .env("DOPC_TOKEN", "dop_wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(6));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).starts_with("error: the server refused the token"));
    assert!(
        !text(&out.stderr).contains("dop_wrong"),
        "the token is never printed"
    );
    let out = server
        .client(&["plan", "list"])
        .env("DOPC_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(text(&out.stderr).starts_with("error: cannot reach dopc at http://127.0.0.1:1"));
    // https to a plain server: TLS fails; a CA file that is not one: a usage error.
    let https = server.url().replacen("http://", "https://", 1);
    let out = server
        .client(&["ping"])
        .env("DOPC_URL", &https)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let not_ca = server.file("not-a-ca.pem", "hello");
    let out = server
        .client(&["ping", "--ca", not_ca.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "{}",
        text(&out.stderr)
    );
    let out = server
        .client(&["ping", "--url", "127.0.0.1:8780"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn follow_survives_a_server_restart_without_losing_or_repeating_events() {
    let mut server = Server::start();
    let slow = "name: slow\ninfrastructures: {l: {type: baremetal}}\nnodes: {s1: {infrastructure: l}}\nsteps:\n  default:\n    \
                - {name: one, nodes: all, command: {plugin: custom, exec: 'sleep 1'}}\n    \
                - {name: two, nodes: all, command: {plugin: custom, exec: 'sleep 1'}}\n    \
                - {name: three, nodes: all, command: {plugin: custom, exec: 'sleep 1'}}\n";
    let plan = server.file("slow.yaml", slow);
    server.ok(&["plan", "add", plan.to_str().unwrap()]);
    let started = server.json(&["execution", "run", "slow"]);
    let id = started["id"].as_u64().unwrap().to_string();
    let follower = server
        .client(&["execution", "log", &id, "--follow", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Restart the server on the same port while the run is under way: SIGTERM hands the
    // execution back, the new server runs it to the end.
    let t = Instant::now();
    while !server
        .ok(&["execution", "log", &id])
        .contains("step 'one' done")
    {
        assert!(t.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = server.url().rsplit(':').next().unwrap().to_string();
    server.terminate();
    std::thread::sleep(Duration::from_millis(500));
    server.launch(&format!("127.0.0.1:{port}"));
    let out = follower.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let seqs: Vec<u64> = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs.first(), Some(&1));
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no event lost or repeated: {seqs:?}"
    );
    let events: Value =
        serde_json::from_str(&server.ok(&["execution", "get", &id, "--json"])).unwrap();
    assert_eq!(events["status"], "done");
    assert!(text(&out.stderr).contains(&format!("execution {id} done")));
}

#[test]
fn a_server_that_never_answers_times_out_in_one_line() {
    let server = Server::start();
    // Accepts connections, never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let started = Instant::now();
    let out = server
        .client(&["ping", "--timeout", "1", "--url", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!("error: dopc at {url} did not answer within 1 s\n")
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    drop(silent);
}

#[test]
fn plan_state_watch_prints_again_when_the_state_changes() {
    let server = Server::start();
    let plan = server.file("cli.yaml", PLAN);
    server.ok(&["plan", "add", plan.to_str().unwrap()]);
    let mut watcher = server
        .client(&["plan", "state", "cli", "--watch", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(watcher.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["step_sets"][0]["state"], "ready");
    server.ok(&["execution", "run", "cli", "--follow"]);
    let next: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(next["serial"].as_u64() > first["serial"].as_u64(), "{next}");
    let _ = watcher.kill();
    let _ = watcher.wait();
}
