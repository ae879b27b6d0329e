//! `cargo xtask …`: the project's own tasks, in Rust instead of shell scripts.
//!
//! * `cargo xtask demo` — the main job on built-in defaults (today: validate the bundled plan
//!   and show what dopv would deploy and dopi would run).
//! * `cargo xtask bench [parse|store|ssh]` — benchmarks, built in release mode.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use dop_core::{load_file, LookupSettings, NodeFacts, Resolver};

const USAGE: &str = "usage: cargo xtask <demo [PLANFILE] | bench [parse|store|ssh] | testbed up N [DIR] | testbed down [DIR]>";

/// Where `testbed up` keeps its keys, configuration and pids unless told otherwise.
const TESTBED_DIR: &str = "target/testbed";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(args.get(1).map(PathBuf::from)),
        Some("bench") => bench(args.get(1).map_or("all", String::as_str)),
        Some("testbed") => testbed(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn demo(plan_file: Option<PathBuf>) -> Result<(), String> {
    let plan_file = plan_file.unwrap_or_else(|| root().join("fixtures/plans/valid/demo.yaml"));
    println!("== dop demo: {}", plan_file.display());
    let settings = LookupSettings::default();
    let loaded = load_file(&plan_file, &settings);
    for d in &loaded.diagnostics {
        println!("{d}");
    }
    let plan = loaded.plan.ok_or("the demo plan is not valid")?;
    println!("{}\n", plan.summary());

    let resolver = Resolver::new(&plan, &settings);
    println!("== dopv would deploy");
    for infra in &plan.infrastructures {
        println!("infrastructure '{}' ({})", infra.name, infra.provider);
        for (i, node) in plan.nodes.iter().enumerate() {
            if node.infrastructure != infra.name {
                continue;
            }
            let size = node.sizing(infra.provider).map_or_else(
                || format!("flavor {}", node.flavor.as_deref().unwrap_or("m1.medium")),
                |s| format!("{} cores, {} memory, {} disk", s.cores, s.memory, s.storage),
            );
            println!("  + {:<20} role {:<6} {size}", node.name, resolver.role(i));
        }
    }
    println!();
    for set in &plan.step_sets {
        println!("== dopi would run step set '{}'", set.name);
        for (n, step) in set.steps.iter().enumerate() {
            let selection = step.filter.select(&resolver);
            let nodes: Vec<&str> = selection.nodes.iter().map(|&i| resolver.name(i)).collect();
            let commands: Vec<&str> = step.commands.iter().map(|c| c.title.as_str()).collect();
            println!("  {}. {} [{}]", n + 1, step.name, commands.join(", "));
            println!("     on {} node(s): {}", nodes.len(), nodes.join(", "));
        }
    }
    store_demo(&plan_file)?;
    println!(
        "\ndemo finished: the plan is valid, stored, and the deployment and run above are what \
         it describes"
    );
    Ok(())
}

/// Stores the plan in a throw-away store, stores a changed iteration and shows the diff (as
/// `dopi add` / `dopi update` would), then runs the default step set with dopi in a scratch
/// directory and shows the resulting state; a second run shows that done work is not redone.
fn store_demo(plan_file: &Path) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("dop-demo-{}", std::process::id()));
    let result = (|| {
        let config = {
            let mut c = dop_core::Config::defaults(&dop_core::Environment::default());
            c.store_dir = dir.join("store");
            c.log_dir = dir.join("logs");
            c
        };
        let store = dop_store::Store::open(&config.store_dir).map_err(|e| e.to_string())?;
        let settings = LookupSettings::default();
        let loaded = load_file(plan_file, &settings);
        let (Some(plan), Some(expanded)) = (loaded.plan, loaded.expanded) else {
            return Err("the demo plan is not valid".to_string());
        };
        store
            .add(&expanded.text, &plan, Some(plan_file), false)
            .map_err(|e| e.to_string())?;
        // The next iteration: one more web node.
        let changed_text = expanded.text.replace("range: 1..3", "range: 1..4");
        let changed = dop_core::load_str(&changed_text, Some(plan_file), &settings)
            .plan
            .ok_or("the changed demo plan is not valid")?;
        store
            .update(&changed_text, &changed, Some(plan_file))
            .map_err(|e| e.to_string())?;
        let (from, to, diff) = store
            .diff(&plan.name, None, None)
            .map_err(|e| e.to_string())?;
        println!("\n== dopi add + dopi update: stored iteration {from}, then {to}; what changed:");
        print!("{diff}");

        // The commands write below the working directory: run them in the scratch directory.
        let work = dir.join("work");
        std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
        let previous = std::env::current_dir().map_err(|e| e.to_string())?;
        std::env::set_current_dir(&work).map_err(|e| e.to_string())?;
        let opts = dopi::RunOptions {
            step_set: "default".into(),
            filter: dop_core::NodeFilter::from_flags(&dop_core::FilterFlags::default())
                .map_err(|e| e.to_string())?,
            noop: false,
            settings: settings.clone(),
            log_dir: config.log_dir.clone(),
            echo: dopi::Echo::Lines,
            handle_signals: false,
            connect_timeout: 5,
            redeployed: dopi::Redeployed::Refuse,
        };
        let store = std::sync::Arc::new(store);
        println!("\n== dopi run {} (step set 'default')", plan.name);
        let first = dopi::run(store.clone(), &plan.name, &opts, &dopi::Registry::local());
        println!("\n== dopi run {} again: done work is not redone", plan.name);
        let second = dopi::run(store.clone(), &plan.name, &opts, &dopi::Registry::local());
        std::env::set_current_dir(previous).map_err(|e| e.to_string())?;
        let first = first.map_err(|e| e.to_string())?;
        second.map_err(|e| e.to_string())?;
        if first.result != dopi::RunResult::Done {
            return Err(format!("the demo run did not finish: {:?}", first.result));
        }
        let page = std::fs::read_to_string(work.join("demo-nodes/web04.demo.local/srv/index.html"))
            .map_err(|e| format!("the run did not write web04's page: {e}"))?;
        println!("\n== web04.demo.local/srv/index.html: {}", page.trim());
        println!("\n== dopi show {}", plan.name);
        let show = dopi::cli::ShowArgs {
            plan: plan.name.clone(),
            stepset: None,
            json: false,
            detailed: false,
            watch: false,
            lookup: Default::default(),
        };
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        let status = dopi::cli::show(
            &show,
            &config,
            &mut dop_store::cli::Io {
                out: &mut out,
                err: &mut err,
            },
        );
        if status != 0 {
            return Err("dopi show failed".into());
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `testbed up N [DIR]`: N test nodes (real sshd on 127.10.x.y:2222) that stay up; `testbed
/// down [DIR]` stops them by pid and removes DIR.
fn testbed(args: &[String]) -> Result<(), String> {
    let dir = |i: usize| {
        args.get(i)
            .map_or_else(|| root().join(TESTBED_DIR), PathBuf::from)
    };
    match args.first().map(String::as_str) {
        Some("up") => {
            let nodes: usize = args
                .get(1)
                .and_then(|n| n.parse().ok())
                .ok_or("testbed up needs the number of nodes: cargo xtask testbed up 10")?;
            let dir = dir(2);
            let options = dop_testbed::Options {
                nodes,
                ..Default::default()
            };
            let testbed = dop_testbed::Testbed::start(&dir, &options).map_err(|e| e.to_string())?;
            println!(
                "{} node(s) up as user '{}', port {}:",
                nodes, testbed.user, testbed.port
            );
            for a in &testbed.addresses {
                println!("  {a}");
            }
            println!("client key: {}", testbed.client_key().display());
            let pids = testbed.detach();
            let list: Vec<String> = pids.iter().map(ToString::to_string).collect();
            std::fs::write(dir.join("pids"), list.join("\n")).map_err(|e| e.to_string())?;
            println!("stop them with: cargo xtask testbed down {}", dir.display());
            Ok(())
        }
        Some("down") => {
            let dir = dir(1);
            let pids = std::fs::read_to_string(dir.join("pids"))
                .map_err(|e| format!("no testbed in {}: {e}", dir.display()))?;
            for pid in pids.lines().filter(|l| !l.trim().is_empty()) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
            std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
            println!("testbed in {} stopped and removed", dir.display());
            Ok(())
        }
        _ => Err("usage: cargo xtask testbed up N [DIR] | testbed down [DIR]".into()),
    }
}

fn bench(which: &str) -> Result<(), String> {
    let benches: &[(&str, &str)] = match which {
        "all" => &[
            ("dop-core", "parse"),
            ("dop-store", "store"),
            ("dopi", "ssh"),
        ],
        "parse" => &[("dop-core", "parse")],
        "store" => &[("dop-store", "store")],
        "ssh" => &[("dopi", "ssh")],
        other => {
            return Err(format!(
                "unknown benchmark '{other}'; available: parse, store, ssh"
            ))
        }
    };
    for (package, name) in benches {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            .args(["bench", "--quiet", "-p", package, "--bench", name])
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("benchmark '{name}' failed"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_runs_on_its_bundled_plan() {
        super::demo(None).expect("demo");
    }

    #[test]
    fn the_demo_refuses_an_invalid_plan() {
        let plan = super::root().join("fixtures/plans/invalid/wrong-types.yaml");
        assert!(super::demo(Some(plan)).is_err());
    }
}
