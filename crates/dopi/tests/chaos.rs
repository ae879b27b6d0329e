//! Fault injection: dopi killed with SIGKILL at many moments of a multi-node run (seeded, see
//! `dop_testbed::chaos`), each time resumed by the next `dopi run`. After every kill the store
//! opens, the logs read, nothing recorded done is lost or ever runs again; every round ends
//! with all work done. `DOP_CHAOS_KILLS` sets the kill points (the suite's bounded form: 50).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{text_of, World};
use dop_testbed::chaos::{kills, wait_for_leftovers, Moments};

const NODES: usize = 6;
const STEPS: usize = 5;

fn chaos_plan() -> String {
    let mut steps = String::new();
    for s in 1..=STEPS {
        steps.push_str(&format!(
            "  - name: s{s}\n    nodes: all\n    command: {{plugin: custom, exec: 'sleep 0.0{s}; echo $DOP_NODE_NAME >> WORK/ran-s{s}'}}\n"
        ));
    }
    format!(
        "name: chaos
max_in_flight: 3
infrastructures: {{lab: {{type: local}}}}
nodes:
  n{{i}}.lab: {{infrastructure: lab, range: 1..{NODES}}}
steps:
{steps}"
    )
}

/// (step, node) → state, from `dopi show --json` (which must work after any kill).
fn states(w: &World) -> BTreeMap<(usize, String), String> {
    let out = w.dopi(&["show", "chaos", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the store must open after a kill: {}",
        text_of(&out.stderr)
    );
    let show: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut found = BTreeMap::new();
    for (s, step) in show["step_sets"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for (node, record) in step["nodes"].as_object().unwrap() {
            let state = record["state"].as_str().unwrap_or("?").to_string();
            found.insert((s + 1, node.clone()), state);
        }
    }
    assert_eq!(found.len(), NODES * STEPS, "{show:#}");
    found
}

/// Every log file reads as text; only its last line may be cut short by a kill.
fn logs_read(w: &World) {
    let mut files = vec![w.path().join("logs")];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            let complete = bytes
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(&bytes[..0], |end| &bytes[..=end]);
            assert!(
                std::str::from_utf8(complete).is_ok(),
                "{} is not text",
                path.display()
            );
        }
    }
}

/// The invariants after a kill: the store opens, the logs read, work recorded done stays done
/// and never runs again (`done_at`: its line count when first seen done this round).
fn check(
    w: &World,
    done_at: &mut BTreeMap<(usize, String), usize>,
) -> BTreeMap<(usize, String), String> {
    let states = states(w);
    logs_read(w);
    for ((step, node), state) in &states {
        let ran = w
            .lines(&format!("ran-s{step}"))
            .iter()
            .filter(|l| *l == node)
            .count();
        match done_at.get(&(*step, node.clone())) {
            Some(then) => {
                assert_eq!(state, "done", "s{step} on {node} was done, now {state}");
                assert_eq!(ran, *then, "s{step} on {node} ran again after it was done");
            }
            None if state == "done" => {
                assert!(ran >= 1, "s{step} on {node} is done but never ran");
                done_at.insert((*step, node.clone()), ran);
            }
            None => {}
        }
    }
    states
}

#[test]
fn chaos_sigkill_at_many_moments_loses_and_repeats_no_recorded_work() {
    let w = World::new();
    w.add("chaos", &chaos_plan());
    // One undisturbed run sets the window kills fall in: from start-up to about its end.
    let started = Instant::now();
    let out = w.dopi(&["run", "chaos", "-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    let window = started.elapsed().mul_f64(1.1);
    let out = w.dopi(&["reset", "chaos", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    let mut moments = Moments::from_env();
    let target = kills();
    println!(
        "dopi chaos: seed {} (DOP_CHAOS_SEED), {target} kill points within {window:?}",
        moments.seed
    );
    // Lines each (step, node) had written when it was first seen done this round: a done
    // command never runs again, so its count never changes afterwards.
    let mut done_at: BTreeMap<(usize, String), usize> = BTreeMap::new();
    let (mut killed, mut rounds) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(300);
    while killed < target && Instant::now() < deadline {
        let mut run = w.quietly(&["run", "chaos", "-q"]);
        // The moment: from start-up (store, lock take-over, recovery) to the run's end.
        std::thread::sleep(moments.up_to(window));
        let finished = run.0.try_wait().unwrap();
        run.kill();
        if finished.is_none() {
            killed += 1;
        }
        let left = wait_for_leftovers(&w.work(), Duration::from_secs(10));
        assert!(left.is_empty(), "commands still running: {left:?}");

        let states = check(&w, &mut done_at);
        if let Some(status) = finished {
            assert!(status.success(), "the run ended with {status:?}");
            assert!(
                states.values().all(|s| s == "done"),
                "a finished run left work undone: {states:?}"
            );
            // Next round: everything back to ready.
            rounds += 1;
            let out = w.dopi(&["reset", "chaos", "--force"]);
            assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
            done_at.clear();
        }
    }
    assert_eq!(
        killed, target,
        "only {killed} kill points in 300 s ({rounds} rounds finished): something hangs"
    );
    // The last round, run to the end.
    let out = w.dopi(&["run", "chaos", "-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", text_of(&out.stderr));
    assert!(check(&w, &mut done_at).values().all(|s| s == "done"));
    println!("dopi chaos: {killed} kills, {rounds} rounds run to the end between them");
}
