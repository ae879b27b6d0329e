//! `dopi run`, `reset` and `show` as processes on real stores: limits, canary, failure and
//! resume, signals, SIGKILL and resume, timeouts, reset combinations.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{text_of, Running, World};

/// The state of `node` in step `step` (by position) of the first step set in `show --json`.
fn node_state(show: &serde_json::Value, step: usize, node: &str) -> String {
    show["step_sets"][0]["steps"][step]["nodes"][node]["state"]
        .as_str()
        .unwrap_or("?")
        .to_string()
}

/// A command that records how many commands run at once (`peak` file), per role too.
const TRACK: &str = r#"mkdir -p WORK/running WORK/role-$ROLE; touch WORK/running/$DOP_NODE_NAME WORK/role-$ROLE/$DOP_NODE_NAME; ls WORK/running | wc -l >> WORK/peak; ls WORK/role-$ROLE | wc -l >> WORK/peak-$ROLE; sleep 0.4; rm WORK/running/$DOP_NODE_NAME WORK/role-$ROLE/$DOP_NODE_NAME"#;

fn peak(w: &World, file: &str) -> usize {
    w.lines(file)
        .iter()
        .filter_map(|l| l.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

#[test]
fn max_in_flight_and_max_per_role_limit_concurrency() {
    let w = World::new();
    let plan = format!(
        "name: limits
infrastructures: {{lab: {{type: local}}}}
nodes:
  a{{i}}.lab: {{infrastructure: lab, range: 1..3}}
  b{{i}}.lab: {{infrastructure: lab, range: 1..3}}
configuration:
  nodes:
    a01.lab: {{role: a}}
    a02.lab: {{role: a}}
    a03.lab: {{role: a}}
  defaults: {{role: b}}
steps:
  two_at_a_time:
    - name: track
      nodes: all
      max_in_flight: 2
      command: {{plugin: custom, exec: '{TRACK}', env: {{ROLE: all}}}}
  per_role:
    - name: track
      nodes: all
      max_in_flight: -1
      max_per_role: 1
      command: {{plugin: custom, exec: '{TRACK}', env: {{ROLE: x}}}}
  unlimited:
    - name: track
      nodes: all
      max_in_flight: -1
      command: {{plugin: custom, exec: '{TRACK}', env: {{ROLE: free}}}}
"
    );
    w.add("limits", &plan);
    let out = w.dopi(&["run", "limits", "--stepset", "two_at_a_time"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    let two = peak(&w, "peak");
    assert!((1..=2).contains(&two), "peak {two} with max_in_flight 2");
    std::fs::remove_file(w.work().join("peak")).unwrap();

    let out = w.dopi(&["run", "limits", "--stepset", "per_role"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    // One per role at a time: at most 2 in all (roles a and b).
    let per_role = peak(&w, "peak");
    assert!(
        per_role <= 2,
        "peak {per_role} with max_per_role 1 and two roles"
    );
    std::fs::remove_file(w.work().join("peak")).unwrap();

    let out = w.dopi(&["run", "limits", "--stepset", "unlimited"]);
    assert_eq!(out.status.code(), Some(0));
    let unlimited = peak(&w, "peak");
    eprintln!(
        "peaks: max_in_flight 2 -> {two}, max_per_role 1 -> {per_role}, unlimited -> {unlimited}"
    );
    assert!(
        unlimited > 2,
        "all six nodes at once should overlap, saw a peak of {unlimited}"
    );
}

#[test]
fn a_failing_canary_keeps_the_other_nodes_from_running() {
    let w = World::new();
    w.add(
        "canary",
        "name: canary
infrastructures: {lab: {type: local}}
nodes:
  n{i}.lab: {infrastructure: lab, range: 1..4}
steps:
  - name: risky
    nodes: all
    canary_host: true
    command: {plugin: custom, exec: 'echo $DOP_NODE_NAME >> WORK/ran; test -e WORK/fixed'}
  - name: after
    nodes: all
    command: dummy
",
    );
    let out = w.dopi(&["run", "canary"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(w.lines("ran"), ["n01.lab"], "only the canary ran");
    let show = w.show_json("canary");
    assert_eq!(node_state(&show, 0, "n01.lab"), "failed");
    assert_eq!(node_state(&show, 0, "n02.lab"), "ready");
    assert_eq!(node_state(&show, 1, "n01.lab"), "ready");

    // Fix the cause, reset, run again: the canary succeeds and the rest follow.
    std::fs::write(w.work().join("fixed"), "").unwrap();
    assert_eq!(w.dopi(&["reset", "canary"]).status.code(), Some(0));
    let out = w.dopi(&["run", "canary"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    let ran = w.lines("ran");
    assert_eq!(ran.len(), 5);
    assert_eq!(ran[1], "n01.lab", "the canary goes first: {ran:?}");
    let show = w.show_json("canary");
    assert_eq!(show["step_sets"][0]["state"], "done");
}

#[test]
fn a_failure_stops_the_set_after_its_step_and_a_rerun_never_redoes_done_work() {
    let w = World::new();
    w.add(
        "resume",
        "name: resume
infrastructures: {lab: {type: local}}
nodes:
  n{i}.lab: {infrastructure: lab, range: 1..3}
steps:
  - name: first
    nodes: all
    commands:
      - {plugin: custom, exec: 'echo $DOP_NODE_NAME >> WORK/first-a'}
      - {plugin: custom, exec: 'echo $DOP_NODE_NAME >> WORK/first-b; test $DOP_NODE_NAME != n02.lab -o -e WORK/fixed'}
  - name: second
    nodes: all
    command: {plugin: custom, exec: 'echo $DOP_NODE_NAME >> WORK/second'}
",
    );
    let out = w.dopi(&["run", "resume"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text_of(&out.stdout);
    assert!(
        stdout.contains("failed: first: n02.lab: custom: exit status 1, expected 0"),
        "{stdout}"
    );
    // The other nodes of the failing step finished; the next step did not start.
    assert_eq!(w.lines("first-b").len(), 3);
    assert!(w.lines("second").is_empty());

    // Running a failed plan again without a reset retries only what failed.
    std::fs::write(w.work().join("fixed"), "").unwrap();
    let out = w.dopi(&["run", "resume"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    assert_eq!(w.lines("first-a").len(), 3, "done commands are not redone");
    assert_eq!(
        w.lines("first-b").len(),
        4,
        "only n02's failed command ran again"
    );
    assert_eq!(w.lines("second").len(), 3);
    let show = w.show_json("resume");
    let n02 = &show["step_sets"][0]["steps"][0]["nodes"]["n02.lab"]["commands"][1];
    assert_eq!(
        (n02["state"].as_str(), n02["attempts"].as_u64()),
        (Some("done"), Some(2))
    );

    // A third run has nothing to do.
    let out = w.dopi(&["run", "resume"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(w.lines("second").len(), 3);
}

#[test]
fn sigkill_mid_run_then_rerun_finishes_without_redoing_done_work() {
    let w = World::new();
    w.add(
        "killed",
        "name: killed
max_in_flight: 2
infrastructures: {lab: {type: local}}
nodes:
  n{i}.lab: {infrastructure: lab, range: 1..6}
steps:
  - name: slow
    nodes: all
    command: {plugin: custom, exec: 'echo $DOP_NODE_NAME >> WORK/started; sleep 0.5; echo $DOP_NODE_NAME >> WORK/finished'}
",
    );
    let mut run = w.quietly(&["run", "killed", "-q"]);
    // Wait until the store records at least two nodes done (`show` reads while the run holds
    // the plan), then kill -9 dopi mid-run.
    let recorded_done = |show: &serde_json::Value| {
        (1..=6)
            .filter(|i| node_state(show, 0, &format!("n0{i}.lab")) == "done")
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while recorded_done(&w.show_json("killed")) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    run.kill();
    let finished_before = w.lines("finished");
    assert!(
        finished_before.len() >= 2 && finished_before.len() < 6,
        "{finished_before:?}"
    );
    // What the store says is done: a command that finished in the instant before the kill but
    // was not recorded runs again (at least once); recorded work never does.
    let show = w.show_json("killed");
    let nodes: Vec<String> = (1..=6).map(|i| format!("n0{i}.lab")).collect();
    let done_before: Vec<&String> = nodes
        .iter()
        .filter(|n| node_state(&show, 0, n) == "done")
        .collect();
    assert!(
        !done_before.is_empty() && done_before.len() < 6,
        "{done_before:?}"
    );
    let running_before = nodes
        .iter()
        .filter(|n| node_state(&show, 0, n) == "running")
        .count();
    // Let orphaned commands of the killed run end before the rerun.
    std::thread::sleep(Duration::from_millis(700));

    let out = w.dopi(&["run", "killed", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["result"], "done");
    let show = w.show_json("killed");
    for i in 1..=6 {
        assert_eq!(node_state(&show, 0, &format!("n0{i}.lab")), "done");
    }
    // Nodes recorded done before the kill did not run again; interrupted ones were recovered.
    assert_eq!(
        report["recovered"].as_u64(),
        Some(running_before as u64),
        "{report}"
    );
    let started = w.lines("started");
    for node in done_before {
        let times = started.iter().filter(|s| *s == node).count();
        assert_eq!(times, 1, "{node} ran {times} times: {started:?}");
    }
}

#[test]
fn signals_stop_gracefully_then_terminate() {
    let w = World::new();
    w.add(
        "signals",
        "name: signals
max_in_flight: 1
infrastructures: {lab: {type: local}}
nodes:
  n{i}.lab: {infrastructure: lab, range: 1..3}
steps:
  - name: work
    nodes: all
    command: {plugin: custom, exec: 'echo $DOP_NODE_NAME >> WORK/started; sleep 1; echo $DOP_NODE_NAME >> WORK/finished'}
",
    );
    let wait_for = |file: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while w.lines(file).len() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let signal = |child: &Running, sig: i32| dop_testbed::signal(child.id(), sig);
    // One SIGINT: the running command finishes, nothing new starts.
    let mut run = Running::spawn(w.command(&["run", "signals", "-q"]).stdout(Stdio::null()));
    wait_for("started", 1);
    signal(&run, libc::SIGINT);
    let status = run.wait();
    assert_eq!(status.code(), Some(4));
    assert_eq!(w.lines("finished"), ["n01.lab"]);
    assert_eq!(w.lines("started"), ["n01.lab"]);
    let show = w.show_json("signals");
    assert_eq!(node_state(&show, 0, "n01.lab"), "done");
    assert_eq!(node_state(&show, 0, "n02.lab"), "ready");

    // Two SIGTERMs: the running command is terminated and goes back to ready, not failed.
    let mut run = Running::spawn(w.command(&["run", "signals", "-q"]).stdout(Stdio::null()));
    wait_for("started", 2);
    signal(&run, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(100));
    signal(&run, libc::SIGTERM);
    let status = run.wait();
    assert_eq!(status.code(), Some(4));
    assert_eq!(
        w.lines("finished"),
        ["n01.lab"],
        "n02's command was terminated"
    );
    let show = w.show_json("signals");
    assert_eq!(node_state(&show, 0, "n02.lab"), "ready");
    assert!(
        show["step_sets"][0]["steps"][0]["nodes"]["n02.lab"]["commands"][0]["message"]
            .as_str()
            .unwrap()
            .contains("stopped by a signal")
    );

    // And a plain run finishes the rest.
    let out = w.dopi(&["run", "signals", "-q"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(w.lines("finished").len(), 3);
}

#[test]
fn timeouts_exit_codes_patterns_verify_and_big_output() {
    let w = World::new();
    w.add(
        "commands",
        "name: commands
infrastructures: {lab: {type: local}}
nodes:
  n01.lab: {infrastructure: lab}
steps:
  timeout:
    - name: hangs
      nodes: all
      command: {plugin: custom, exec: 'sleep 30', plugin_timeout: 1}
  codes:
    - name: exit 3 is fine
      nodes: all
      command: {plugin: custom, exec: 'exit 3', expect_exit_codes: [0, 3]}
    - name: any code
      nodes: all
      command: {plugin: custom, exec: 'exit 9', expect_exit_codes: all}
    - name: error pattern
      nodes: all
      command: {plugin: custom, exec: 'echo ERROR: disk full', parse_output: {error: ['^ERROR']}}
  verify:
    - name: skipped when verified
      nodes: all
      command:
        plugin: custom
        exec: 'echo ran >> WORK/verify-ran'
        verify_commands:
          - {plugin: custom, exec: 'test -e WORK/already'}
  output:
    - name: megabytes
      nodes: all
      command: {plugin: custom, exec: 'head -c 6000000 /dev/urandom; yes line | head -n 100000'}
  defaults:
    - name: set
      nodes: all
      set_plugin_defaults:
        - {plugins: custom, env: {GREETING: hello}}
      command: dummy
    - name: use
      nodes: all
      command: {plugin: custom, exec: 'echo $GREETING >> WORK/greeting'}
",
    );
    let start = Instant::now();
    let out = w.dopi(&["run", "commands", "-s", "timeout"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text_of(&out.stdout).contains("timed out after 1 s"),
        "{}",
        text_of(&out.stdout)
    );
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "the timeout ended the command"
    );

    let out = w.dopi(&["run", "commands", "-s", "codes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text_of(&out.stdout).contains("1 output line(s) matched an error pattern"),
        "{}",
        text_of(&out.stdout)
    );
    let show = w.show_json("commands");
    let steps = &show["step_sets"][1]["steps"];
    assert_eq!(steps[0]["state"], "done");
    assert_eq!(steps[1]["state"], "done");
    assert_eq!(steps[2]["state"], "failed");

    std::fs::write(w.work().join("already"), "").unwrap();
    assert_eq!(
        w.dopi(&["run", "commands", "-s", "verify"]).status.code(),
        Some(0)
    );
    assert!(
        w.lines("verify-ran").is_empty(),
        "verified commands do not run"
    );

    let out = w.dopi(&["run", "commands", "-s", "output", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    let show = w.show_json("commands");
    let tail = &show["step_sets"][3]["steps"][0]["nodes"]["n01.lab"]["commands"][0]["output_tail"];
    assert_eq!(tail.as_array().unwrap().len(), 20);
    assert_eq!(tail[19], "line");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let node_log = PathBuf::from(report["log_dir"].as_str().unwrap()).join("n01.lab.log");
    assert!(
        std::fs::metadata(node_log).unwrap().len() > 1_000_000,
        "the full output is in the node log"
    );

    assert_eq!(
        w.dopi(&["run", "commands", "-s", "defaults"]).status.code(),
        Some(0)
    );
    assert_eq!(w.lines("greeting"), ["hello"]);
}

#[test]
fn every_reset_combination() {
    let w = World::new();
    w.add(
        "reset",
        "name: reset
infrastructures: {lab: {type: local}}
nodes:
  n{i}.lab: {infrastructure: lab, range: 1..2}
steps:
  default:
    - {name: one, nodes: all, command: dummy}
    - {name: two, nodes: all, command: dummy}
  maint:
    - {name: m, nodes: all, command: dummy}
",
    );
    assert_eq!(w.dopi(&["run", "reset"]).status.code(), Some(0));
    assert_eq!(
        w.dopi(&["run", "reset", "-s", "maint"]).status.code(),
        Some(0)
    );
    let count = |args: &[&str]| -> String {
        let mut all = vec!["reset", "reset"];
        all.extend_from_slice(args);
        let out = w.dopi(&all);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text_of(&out.stderr)
        );
        text_of(&out.stdout).trim().to_string()
    };
    // Nothing failed: a normal reset changes nothing.
    assert_eq!(count(&[]), "reset 0 node record(s) of plan 'reset'");
    assert_eq!(
        count(&["--force", "--nodes", "n01.lab"]),
        "reset 3 node record(s) of plan 'reset'"
    );
    assert_eq!(
        count(&["--force", "--stepset", "maint"]),
        "reset 1 node record(s) of plan 'reset'"
    );
    assert_eq!(
        count(&["--force", "--stepset", "default", "--step", "2"]),
        "reset 1 node record(s) of plan 'reset'"
    );
    assert_eq!(
        count(&[
            "--force",
            "--stepset",
            "default",
            "--step",
            "one",
            "--nodes",
            "n02.lab"
        ]),
        "reset 1 node record(s) of plan 'reset'"
    );
    assert_eq!(
        count(&["--force", "--step", "one"]),
        "reset 0 node record(s) of plan 'reset'"
    );
    let show = w.show_json("reset");
    assert_eq!(node_state(&show, 0, "n01.lab"), "ready");
    assert_eq!(node_state(&show, 0, "n02.lab"), "ready");
    assert_eq!(node_state(&show, 1, "n01.lab"), "ready");
    assert_eq!(node_state(&show, 1, "n02.lab"), "ready");

    let out = w.dopi(&["reset", "reset", "--stepset", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text_of(&out.stderr).contains("has no step set 'nope'; it has: default, maint"));
    let out = w.dopi(&["reset", "reset", "--step", "7"]);
    assert!(text_of(&out.stderr).contains("has no step '7' (give a name or a number from 1 to 2)"));
}

#[test]
fn unknown_plugins_and_bad_parameters_are_refused_everywhere() {
    let w = World::new();
    let file = w.path().join("bad.yaml");
    std::fs::write(
        &file,
        "name: bad
infrastructures: {lab: {type: local}}
nodes: {n01.lab: {infrastructure: lab}}
steps:
  - name: s
    nodes: all
    commands:
      - {plugin: nosuch/plugin}
      - {plugin: custom, exec: 42, expect_exit_codes: sometimes, parse_output: {error: ['(']}}
      - {plugin: custom, exec: ok, colour: blue}
",
    )
    .unwrap();
    let out = w.dopi(&["validate", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text_of(&out.stderr);
    assert!(stderr.contains("error: steps[0].commands[0].plugin: unknown plugin 'nosuch/plugin'; dopi knows: custom, dummy, noop"), "{stderr}");
    assert!(
        stderr.contains("error: steps[0].commands[1].exec: 'exec' must be a non-empty string"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: steps[0].commands[1].expect_exit_codes:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("error: steps[0].commands[1].parse_output:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: steps[0].commands[2].colour: unknown parameter 'colour'"),
        "{stderr}"
    );
    let out = w.dopi(&["add", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text_of(&out.stderr).contains("the plan is not valid (4 errors)"),
        "{}",
        text_of(&out.stderr)
    );
}

#[test]
fn noop_shows_what_would_run_and_changes_nothing() {
    let w = World::new();
    w.add(
        "noop",
        "name: noop
infrastructures: {lab: {type: local}}
nodes:
  n{i}.lab: {infrastructure: lab, range: 1..2}
steps:
  - name: touch
    nodes: all
    command: {plugin: custom, exec: 'touch WORK/touched'}
",
    );
    let out = w.dopi(&["run", "noop", "--noop", "--nodes", "n02.lab"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = text_of(&out.stdout).replace(w.work().to_str().unwrap(), "WORK");
    assert_eq!(
        stdout,
        "would run: touch: n02.lab: custom: run `touch WORK/touched` on the dopi host\n"
    );
    assert!(!w.work().join("touched").exists());
    assert_eq!(w.show_json("noop")["serial"], 0);
}

#[test]
fn auto_reset_makes_a_finished_maintenance_set_ready_again() {
    let w = World::new();
    w.add(
        "maint",
        "name: maint
infrastructures: {lab: {type: local}}
nodes:
  n{i}.lab: {infrastructure: lab, range: 1..2}
steps:
  rotate:
    auto_reset: true
    steps:
      - name: rotate
        nodes: all
        command: {plugin: custom, exec: 'echo $DOP_NODE_NAME >> WORK/rotated'}
",
    );
    // A partial run does not reset: not every node is done yet.
    assert_eq!(
        w.dopi(&["run", "maint", "-s", "rotate", "--nodes", "n01.lab"])
            .status
            .code(),
        Some(0)
    );
    assert_eq!(node_state(&w.show_json("maint"), 0, "n01.lab"), "done");
    // The run that finishes the set resets it; the next run does the work again.
    assert_eq!(
        w.dopi(&["run", "maint", "-s", "rotate"]).status.code(),
        Some(0)
    );
    let show = w.show_json("maint");
    assert_eq!(node_state(&show, 0, "n01.lab"), "ready");
    assert_eq!(node_state(&show, 0, "n02.lab"), "ready");
    assert_eq!(
        w.dopi(&["run", "maint", "-s", "rotate"]).status.code(),
        Some(0)
    );
    // The second full run did the work again on both nodes (they run concurrently, in any order).
    let mut rotated = w.lines("rotated");
    rotated.sort();
    assert_eq!(rotated, ["n01.lab", "n01.lab", "n02.lab", "n02.lab"]);
}

#[test]
fn state_follows_a_new_plan_iteration_by_name() {
    let w = World::new();
    let v1 = "name: grow
infrastructures: {lab: {type: local}}
nodes:
  n{i}.lab: {infrastructure: lab, range: 1..RANGE}
steps:
  - name: base
    nodes: all
    command: {plugin: custom, exec: 'echo $DOP_NODE_NAME >> WORK/base'}
  - name: app
    nodes: all
    command: {plugin: custom, exec: 'echo VERSION $DOP_NODE_NAME >> WORK/app'}
";
    w.add("grow", &v1.replace("RANGE", "2").replace("VERSION", "v1"));
    assert_eq!(w.dopi(&["run", "grow"]).status.code(), Some(0));
    // Iteration 2: one more node, a new step before the others, the 'app' step changed.
    let v2 = v1.replace("RANGE", "3").replace("VERSION", "v2").replace(
        "steps:\n",
        "steps:\n  - name: first\n    nodes: all\n    command: dummy\n",
    );
    let file = w.path().join("grow.yaml");
    std::fs::write(&file, v2.replace("WORK", w.work().to_str().unwrap())).unwrap();
    assert_eq!(
        w.dopi(&["update", file.to_str().unwrap()]).status.code(),
        Some(0)
    );
    let out = w.dopi(&["show", "grow"]);
    assert!(
        text_of(&out.stdout).contains("the state was written under iteration 1"),
        "{}",
        text_of(&out.stdout)
    );

    let out = w.dopi(&["run", "grow"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    // 'base' is unchanged: only the new node runs it. 'app' changed: every node runs it again.
    let mut base = w.lines("base");
    base.sort();
    assert_eq!(base, ["n01.lab", "n02.lab", "n03.lab"]);
    let app = w.lines("app");
    assert_eq!(
        app.iter().filter(|l| l.starts_with("v2")).count(),
        3,
        "{app:?}"
    );
    assert_eq!(
        app.iter().filter(|l| l.starts_with("v1")).count(),
        2,
        "{app:?}"
    );
}

#[test]
fn update_ignore_keeps_changed_steps_done_and_update_clear_starts_over() {
    let w = World::new();
    let v1 = "name: fix
infrastructures: {lab: {type: local}}
nodes:
  n{i}.lab: {infrastructure: lab, range: 1..2}
steps:
  - name: base
    nodes: all
    command: {plugin: custom, exec: 'echo $DOP_NODE_NAME >> WORK/base'}
  - name: app
    nodes: all
    command: {plugin: custom, exec: 'echo VERSION $DOP_NODE_NAME >> WORK/app'}
";
    w.add("fix", &v1.replace("VERSION", "v1"));
    assert_eq!(w.dopi(&["run", "fix"]).status.code(), Some(0));
    let update = |version: &str, flags: &[&str]| {
        let file = w.path().join("fix.yaml");
        let text = v1
            .replace("VERSION", version)
            .replace("WORK", w.work().to_str().unwrap());
        std::fs::write(&file, text).unwrap();
        let mut args = vec!["update", file.to_str().unwrap()];
        args.extend(flags);
        let out = w.dopi(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
        text_of(&out.stdout)
    };

    // --ignore: 'app' changed, and keeps its done state: the run does nothing again.
    let out = update("v2", &["--ignore"]);
    assert!(
        out.ends_with("dopi state kept: 2 node record(s) of changed steps keep their state\n"),
        "{out}"
    );
    let show = w.show_json("fix");
    assert_eq!(node_state(&show, 1, "n01.lab"), "done", "{show:#}");
    assert_eq!(w.dopi(&["run", "fix"]).status.code(), Some(0));
    assert_eq!(w.lines("app").len(), 2, "{:?}", w.lines("app"));
    assert_eq!(w.lines("base").len(), 2);

    // --clear, by the stored plan's name as the original took it: every step ready again.
    let out = w.dopi(&["update", "fix", "--clear"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    assert_eq!(
        text_of(&out.stdout),
        "dopi state cleared: 4 node record(s) removed, every step is ready\n"
    );
    let show = w.show_json("fix");
    assert_eq!(node_state(&show, 0, "n01.lab"), "ready", "{show:#}");
    assert_eq!(node_state(&show, 1, "n02.lab"), "ready", "{show:#}");
    assert_eq!(w.dopi(&["run", "fix"]).status.code(), Some(0));
    assert_eq!(w.lines("base").len(), 4);

    // Without a flag a changed step is ready again (the default is unchanged).
    update("v3", &[]);
    assert_eq!(w.dopi(&["run", "fix"]).status.code(), Some(0));
    let app = w.lines("app");
    assert_eq!(
        app.iter().filter(|l| l.starts_with("v3")).count(),
        2,
        "{app:?}"
    );
    assert_eq!(
        w.lines("base").len(),
        4,
        "base did not change: not run again"
    );

    // Both flags at once: a usage error, nothing stored.
    let out = w.dopi(&["update", "fix", "--clear", "--ignore"]);
    assert_eq!(out.status.code(), Some(64), "{}", text_of(&out.stderr));
}

#[test]
fn a_third_signal_kills_commands_that_ignore_termination() {
    let w = World::new();
    w.add(
        "stubborn",
        "name: stubborn
infrastructures: {lab: {type: local}}
nodes:
  n01.lab: {infrastructure: lab}
steps:
  - name: ignore TERM
    nodes: all
    command: {plugin: custom, exec: 'trap \"\" TERM; echo started >> WORK/started; sleep 20; echo finished >> WORK/finished'}
",
    );
    let mut run = Running::spawn(w.command(&["run", "stubborn", "-q"]).stdout(Stdio::null()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.lines("started").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let start = Instant::now();
    for _ in 0..3 {
        unsafe {
            libc::kill(run.id() as i32, libc::SIGINT);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = run.wait();
    assert_eq!(status.code(), Some(4));
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "the third signal ended the command"
    );
    assert!(w.lines("finished").is_empty());
    let show = w.show_json("stubborn");
    assert_eq!(
        node_state(&show, 0, "n01.lab"),
        "ready",
        "interrupted, not failed or stuck"
    );
}

#[test]
fn verbose_shows_command_output_and_quiet_shows_nothing() {
    let w = World::new();
    w.add(
        "talk",
        "name: talk
infrastructures: {lab: {type: local}}
nodes: {n01.lab: {infrastructure: lab}}
steps:
  - {name: say, nodes: all, command: {plugin: custom, exec: 'echo hello-from-$DOP_NODE_NAME'}}
",
    );
    let out = w.dopi(&["run", "talk", "-v"]);
    assert_eq!(out.status.code(), Some(0));
    let stderr = text_of(&out.stderr);
    assert!(
        stderr.contains("[n01.lab] stdout: hello-from-n01.lab"),
        "{stderr}"
    );
    assert!(stderr.contains("INFO  run done"), "{stderr}");
    assert_eq!(w.dopi(&["reset", "talk", "--force"]).status.code(), Some(0));
    let out = w.dopi(&["run", "talk", "-q"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text_of(&out.stderr), "");
    // The execution log has everything either way.
    let logs = w.path().join("logs/talk");
    let runs: Vec<_> = std::fs::read_dir(&logs).unwrap().collect();
    assert_eq!(runs.len(), 2);
    for run in runs {
        let dir = run.unwrap().path();
        let node_log = std::fs::read_to_string(dir.join("n01.lab.log")).unwrap();
        assert!(
            node_log.contains("stdout: hello-from-n01.lab"),
            "{node_log}"
        );
        let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
        let seqs: Vec<u64> = events
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as u64).collect::<Vec<_>>(),
            "numbered without gaps"
        );
    }
}

#[test]
fn passwords_never_reach_logs_or_state() {
    let w = World::new();
    w.add(
        "secret",
        "name: secret
infrastructures: {lab: {type: local}}
credentials:
  db: {type: username_password, username: app, password: 'Tr0ub4dor-3x'}
nodes: {n01.lab: {infrastructure: lab}}
steps:
  - name: leak
    nodes: all
    command: {plugin: custom, exec: 'echo the password is Tr0ub4dor-3x; head -c 8190 /dev/zero | tr \"\\\\0\" y; echo Tr0ub4dor-3x; printf \"two writes Tr0u\"; sleep 0.2; printf \"b4d\"\"or-3x\\\\n\"; exit 1'}
",
    );
    let out = w.dopi(&["run", "secret", "-v", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !text_of(&out.stderr).contains("Tr0ub4dor"),
        "{}",
        text_of(&out.stderr)
    );
    assert!(text_of(&out.stderr).contains("the password is ****"));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = PathBuf::from(report["log_dir"].as_str().unwrap());
    for file in ["all.log", "n01.lab.log", "events.jsonl"] {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        // Not even a part of it: a line cut at 8 KiB is cut before the password, and the
        // password written in two writes is masked whole. (The command line splits it with
        // `""`, so that the command shown in the log holds no part of it either.)
        assert!(!text.contains("4dor-3x"), "{file}: {text}");
    }
    let node_log = std::fs::read_to_string(dir.join("n01.lab.log")).unwrap();
    assert!(node_log.contains("stdout: two writes ****"), "{node_log}");
    assert!(node_log.contains("stdout: ****\n"), "{node_log}");
    let show = w.dopi(&["show", "secret", "--json"]);
    assert!(!text_of(&show.stdout).contains("Tr0ub4dor"));
    assert!(text_of(&show.stdout).contains("the password is ****"));
}

/// The disk under the log directory full: the run goes on and finishes (its state is in the
/// store), says once that log lines are lost, and reports it in `--json`. Root only (a tmpfs is
/// mounted); skipped with the reason else.
#[test]
fn a_full_log_disk_loses_log_lines_not_the_run() {
    let w = World::new();
    let disk = match dop_testbed::SmallDisk::mount(&w.path().join("logdisk"), "1m") {
        Ok(d) => d,
        Err(why) => {
            eprintln!("skipped: no small disk for the test: {why}");
            return;
        }
    };
    w.add(
        "full",
        "name: full
infrastructures: {lab: {type: local}}
nodes:
  n{i}.lab: {infrastructure: lab, range: 1..3}
steps:
  - name: talk
    nodes: all
    command: {plugin: custom, exec: 'seq 1 2000; echo $DOP_NODE_NAME >> WORK/ran'}
",
    );
    disk.fill();
    let out = w
        .command(&["run", "full", "--json"])
        .env("DOP_LOG_DIR", disk.path())
        .output()
        .unwrap();
    let stderr = text_of(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["result"], "done", "{report}");
    assert_eq!(report["log_lines_lost"], true, "{report}");
    assert_eq!(
        stderr.matches("cannot write the execution log").count(),
        1,
        "{stderr}"
    );
    assert_eq!(w.lines("ran").len(), 3);
    let show = w.show_json("full");
    assert_eq!(show["step_sets"][0]["state"], "done", "{show}");
}

/// A store that takes `allowed` commits to a plan's state database, then answers every
/// further one as a full disk does.
struct FillingDisk {
    inner: dop_store::SledBackend,
    allowed: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

struct FillingDatabase {
    db: Box<dyn dop_store::Database + Send + Sync>,
    path: PathBuf,
    allowed: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
}

impl dop_store::Backend for FillingDisk {
    fn open(
        &self,
        path: &std::path::Path,
    ) -> dop_store::Result<Box<dyn dop_store::Database + Send + Sync>> {
        Ok(Box::new(FillingDatabase {
            db: self.inner.open(path)?,
            path: path.to_path_buf(),
            allowed: path.ends_with("state").then(|| self.allowed.clone()),
        }))
    }
}

impl dop_store::Database for FillingDatabase {
    fn get(&self, key: &[u8]) -> dop_store::Result<Option<Vec<u8>>> {
        self.db.get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> dop_store::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.db.scan_prefix(prefix)
    }
    fn last_with_prefix(&self, prefix: &[u8]) -> dop_store::Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.db.last_with_prefix(prefix)
    }
    fn commit(&self, batch: dop_store::Batch) -> dop_store::Result<()> {
        use std::sync::atomic::Ordering;
        if let Some(allowed) = &self.allowed {
            if allowed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
            {
                return Err(dop_store::StoreError::Io {
                    path: self.path.clone(),
                    source: std::io::Error::from_raw_os_error(28),
                });
            }
        }
        self.db.commit(batch)
    }
}

/// A state transition that cannot be saved (the store's disk is full) stops the run with
/// what happened and where, never "the store is damaged".
#[test]
fn a_state_write_that_fails_is_reported_as_what_it_is() {
    let w = World::new();
    w.add(
        "fills",
        "name: fills
infrastructures: {lab: {type: local}}
nodes:
  n1.lab: {infrastructure: lab}
steps:
  - name: work
    nodes: all
    command: {plugin: custom, exec: 'echo $DOP_NODE_NAME >> WORK/ran'}
",
    );
    let store = dop_store::Store::with_backend(
        &w.path().join("store"),
        Box::new(FillingDisk {
            inner: dop_store::SledBackend::default(),
            allowed: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }),
    )
    .unwrap();
    let opts = dopi::RunOptions {
        step_set: "default".into(),
        filter: dop_core::NodeFilter::all(),
        noop: false,
        settings: dop_core::LookupSettings::default(),
        log_dir: w.path().join("logs"),
        echo: dopi::Echo::Quiet,
        handle_signals: false,
        connect_timeout: 10,
        max_connections: None,
        limits: dop_core::ProgramLimits::default(),
        redeployed: dopi::Redeployed::Refuse,
        stop: None,
        log: None,
        lock: None,
    };
    let err = dop_run::blocking::runtime()
        .unwrap()
        .block_on(dopi::run(
            std::sync::Arc::new(store),
            "fills",
            &opts,
            &dopi::Registry::local(),
        ))
        .expect_err("the run cannot record its state");
    let message = err.to_string();
    assert!(
        matches!(err, dopi::RunError::StateWrite { .. }),
        "{message}"
    );
    assert!(message.contains("No space left on device"), "{message}");
    assert!(
        message.contains("default/work/n1.lab") || message.contains("n1.lab"),
        "{message}"
    );
    assert!(!message.contains("damaged"), "{message}");
    // Nothing ran that could not be recorded as started.
    assert!(w.lines("ran").is_empty());
}

/// `dopi <args>` with `dop.conf` text `conf`.
fn dopi_with_conf(w: &World, conf: &str, args: &[&str]) -> std::process::Output {
    let file = w.path().join("dop.conf");
    std::fs::write(&file, conf).unwrap();
    w.command(args).env("DOP_CONFIG", &file).output().unwrap()
}

/// The text of a node's log of the plan's only execution.
fn node_log(w: &World, plan: &str, node: &str) -> (u64, String) {
    let executions = w.path().join("logs").join(plan);
    let execution = std::fs::read_dir(&executions)
        .unwrap()
        .flatten()
        .next()
        .expect("an execution log")
        .path();
    let file = execution.join(format!("{node}.log"));
    let size = std::fs::metadata(&file).unwrap().len();
    (size, std::fs::read_to_string(&file).unwrap())
}

/// A local command flooding its output has only `max_program_output` bytes of it logged, then
/// a marker line; it runs to its end, and its end is judged as always (exit status 0: done).
#[test]
fn a_local_command_flooding_its_output_is_cut_in_the_log() {
    let w = World::new();
    w.add(
        "flood",
        "name: flood
infrastructures: {lab: {type: local}}
nodes:
  n1.lab: {infrastructure: lab}
steps:
  - name: flood
    nodes: all
    command: {plugin: custom, exec: 'yes | head -c 104857600; echo end > WORK/ended'}
",
    );
    let out = dopi_with_conf(&w, "max_program_output: 64K\n", &["run", "flood"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    assert_eq!(w.lines("ended"), ["end"], "the command ran to its end");
    let (size, log) = node_log(&w, "flood", "n1.lab");
    assert!(
        log.contains("… output truncated after 65536 bytes"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
    assert_eq!(log.matches("stdout: y").count(), 32768);
    // 64 KiB of two-byte lines with their frame: a few MiB, not the 52 million lines of all.
    assert!(size < 8 * 1024 * 1024, "{size} bytes");
}

/// A `content.exec` program of `file_deploy` that runs past `content_exec_timeout` is stopped
/// with its process group, and one that gives more than `max_program_output` is stopped too;
/// either fails the command with the program, step, node and limit named, before anything is
/// sent to the node (which does not even listen here).
#[test]
fn content_exec_programs_are_stopped_at_their_timeout_and_their_output_limit() {
    let w = World::new();
    dop_testbed::generate_key(&w.path().join("key"), "content").unwrap();
    let sleeper = w.work().join("sleeper.pid");
    for (name, program) in [
        (
            "slow",
            format!(
                "[/bin/sh, -c, 'sleep 3600 & echo $! > {}; wait']",
                sleeper.display()
            ),
        ),
        ("flood", "[/usr/bin/yes]".to_string()),
    ] {
        w.add(
            name,
            &format!(
                "name: {name}
infrastructures: {{lab: {{type: baremetal}}}}
credentials:
  login: {{type: ssh_key, username: root, private_key: {{file: {key}}}}}
nodes:
  {name}1: {{infrastructure: lab, fqdn: 127.0.0.1}}
steps:
  - name: deploy
    nodes: all
    command: {{plugin: ssh/file_deploy, credentials: login, port: 1, file: /tmp/dop-never, content: {{exec: {program}}}}}
",
                key = w.path().join("key").display()
            ),
        );
    }
    let conf = "content_exec_timeout: 1\nmax_program_output: 64K\n";
    let out = dopi_with_conf(&w, conf, &["run", "slow"]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out.stderr));
    let message = common::node_message(&w.show_json("slow"), 0, "slow1");
    assert!(
        message.contains(
            "the content.exec program /bin/sh of step 'deploy' for slow1 did not end within 1 s \
             (content_exec_timeout in dop.conf) and was stopped; nothing was deployed"
        ),
        "{message}"
    );
    let pid: i32 = std::fs::read_to_string(&sleeper)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signal 0 only asks whether the process exists.
    let alive = || unsafe { libc::kill(pid, 0) == 0 };
    assert!(
        dop_testbed::wait_for(Duration::from_secs(10), || !alive()).is_ok(),
        "the program's background sleep went with its group"
    );

    let out = dopi_with_conf(&w, conf, &["run", "flood"]);
    assert_eq!(out.status.code(), Some(1), "{}", text_of(&out.stderr));
    let message = common::node_message(&w.show_json("flood"), 0, "flood1");
    assert!(
        message.contains(
            "the content.exec program /usr/bin/yes of step 'deploy' for flood1 gave more than 65536 \
             bytes of output (max_program_output in dop.conf) and was stopped; content that \
             would be cut is not deployed"
        ),
        "{message}"
    );
}
