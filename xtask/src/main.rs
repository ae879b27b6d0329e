//! `cargo xtask …`: the project's own tasks, in Rust instead of shell scripts.
//!
//! * `cargo xtask demo` — the main job on built-in defaults: the bundled plan deployed by dopv
//!   on local test nodes and run by dopi over SSH, end to end.
//! * `cargo xtask bench [parse|store|ssh|dopc]` — benchmarks, built in release mode.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use dop_core::{load_file, LookupSettings, NodeFacts, Resolver};

const USAGE: &str = "usage: cargo xtask <demo [PLANFILE] | bench [parse|store|ssh|dopc] | testbed up N [DIR] | testbed down [DIR]>";

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
        "\ndemo finished: dopv deployed the plan's nodes, dopi ran its steps on them over SSH, \
         a plan change was shown and applied, and the nodes were removed again"
    );
    Ok(())
}

/// Powers off the demo's nodes and removes its directory when the demo ends, pass or fail.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let stopped = dopv::providers::local::stop_all(&self.0.join("local"));
        if stopped > 0 {
            println!("(stopped {stopped} demo node(s) left running)");
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The literal key of the bundled plan, which the demo replaces with a pair it makes.
const DEMO_KEY_LINE: &str =
    "public_key: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyForTheDemoPlanOnly demo'";

/// One more web node, for the plan update the demo shows.
const WEB04: &str = "  web04.demo.local:\n    infrastructure: lab\n    credentials: demo_ssh\n    \
                     interfaces: {eth0: {network: loopback, ip: 127.0.90.14}}\n";

/// The demo proper, in a throw-away store: dopv deploys the plan's nodes on the local
/// provider (after showing what it would do), dopi runs the default step set on them over SSH
/// (twice: done work is not redone), then the plan gains a node: dopv shows and makes the
/// change, dopi runs only the new node. Everything is undeployed at the end.
fn store_demo(plan_file: &Path) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "the demo's local nodes are containers (namespaces), which need root: run \
                    `cargo xtask demo` as root (for example in a container)"
                .into(),
        );
    }
    let dir = std::env::temp_dir().join(format!("dop-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let scratch = Scratch(dir.clone());
    let config = {
        let mut c = dop_core::Config::defaults(&dop_core::Environment::default());
        c.store_dir = dir.join("store");
        c.log_dir = dir.join("logs");
        c
    };
    let key = dir.join("demo_key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dop demo", "-f"])
        .arg(&key)
        .status()
        .map_err(|e| format!("ssh-keygen: {e} (install openssh-client)"))?;
    if !keygen.success() {
        return Err("ssh-keygen could not make the demo key".into());
    }
    let settings = LookupSettings::default();
    let original = std::fs::read_to_string(plan_file).map_err(|e| e.to_string())?;
    if !original.contains(DEMO_KEY_LINE) {
        return Err(format!(
            "{} has no demo key line to replace",
            plan_file.display()
        ));
    }
    let text = original.replace(
        DEMO_KEY_LINE,
        &format!(
            "public_key: {{file: {k}.pub}}\n    private_key: {{file: {k}}}",
            k = key.display()
        ),
    );
    let file = dir.join("demo.yaml");
    std::fs::write(&file, &text).map_err(|e| e.to_string())?;
    let plan = dop_core::load_file(&file, &settings)
        .plan
        .ok_or("the demo plan with its key is not valid")?;
    let store =
        std::sync::Arc::new(dop_store::Store::open(&config.store_dir).map_err(|e| e.to_string())?);
    store
        .add(&text, &plan, Some(&file), false)
        .map_err(|e| e.to_string())?;

    let dopv_opts = |operation, noop| dopv::Options {
        operation,
        filter: dop_core::NodeFilter::all(),
        noop,
        settings: settings.clone(),
        log_dir: config.log_dir.clone(),
        echo: dopi::Echo::Quiet,
        providers: dopv::provider::ProviderOptions {
            local_dir: dir.join("local"),
        },
        expect_serial: None,
        handle_signals: false,
        stop: None,
        log: None,
    };
    let sync = dopv::Operation::Sync(dopv::Permissions::default());
    let dopv_step = |title: &str, operation, noop| -> Result<dopv::Report, String> {
        println!("\n== {title}");
        let report = dopv::run(&store, &plan.name, &dopv_opts(operation, noop))
            .map_err(|e| e.to_string())?;
        dopv::cli::render(&report, &mut std::io::stdout());
        if report.failed() {
            return Err(format!("{title} failed; see {}", report.log_dir.display()));
        }
        Ok(report)
    };
    let dopi_opts = dopi::RunOptions {
        step_set: "default".into(),
        filter: dop_core::NodeFilter::all(),
        noop: false,
        settings: settings.clone(),
        log_dir: config.log_dir.clone(),
        echo: dopi::Echo::Lines,
        handle_signals: false,
        connect_timeout: 10,
        redeployed: dopi::Redeployed::Refuse,
        stop: None,
        log: None,
    };
    let dopi_step = |title: &str| -> Result<(), String> {
        println!("\n== {title}");
        let report = dopi::run(
            store.clone(),
            &plan.name,
            &dopi_opts,
            &dopi::Registry::local(),
        )
        .map_err(|e| e.to_string())?;
        if report.result != dopi::RunResult::Done {
            return Err(format!("{title} did not finish: {:?}", report.result));
        }
        Ok(())
    };
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());

    dopv_step(
        "dopv sync demo --noop: what dopv would do, and why",
        sync,
        true,
    )?;
    dopv_step(
        "dopv sync demo: four local nodes, each with its own sshd",
        sync,
        false,
    )?;
    dopi_step("dopi run demo: the default step set, over SSH")?;
    dopi_step("dopi run demo again: done work is not redone")?;

    // The plan gains a web node.
    let changed_text = text.replacen(
        "\n  db01.demo.local:\n",
        &format!("\n{WEB04}  db01.demo.local:\n"),
        1,
    );
    let changed = dop_core::load_str(&changed_text, Some(&file), &settings)
        .plan
        .ok_or("the changed demo plan is not valid")?;
    store
        .update(&changed_text, &changed, Some(&file))
        .map_err(|e| e.to_string())?;
    let (from, to, diff) = store
        .diff(&plan.name, None, None)
        .map_err(|e| e.to_string())?;
    println!("\n== dopv update: stored iteration {from}, then {to}; what changed:");
    print!("{diff}");
    dopv_step(
        "dopv sync demo --noop: the new node, and nothing else",
        sync,
        true,
    )?;
    dopv_step("dopv sync demo", sync, false)?;
    dopi_step("dopi run demo: only the new node has work to do")?;

    println!("\n== dopv show demo");
    let show = dopv::cli::ShowArgs {
        plan: plan.name.clone(),
        json: false,
        local_dir: Some(dir.join("local")),
    };
    dopv::cli::show(
        &show,
        &config,
        &mut dop_store::cli::Io {
            out: &mut out,
            err: &mut err,
        },
    );
    println!("\n== dopi show demo");
    let show = dopi::cli::ShowArgs {
        plan: plan.name.clone(),
        stepset: None,
        json: false,
        detailed: false,
        watch: false,
        lookup: Default::default(),
    };
    if dopi::cli::show(
        &show,
        &config,
        &mut dop_store::cli::Io {
            out: &mut out,
            err: &mut err,
        },
    ) != 0
    {
        return Err("dopi show failed".into());
    }
    dopv_step(
        "dopv undeploy demo --rmdisk: the nodes and their disks go",
        dopv::Operation::Undeploy { rmdisk: true },
        false,
    )?;
    drop(scratch);
    Ok(())
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
            ("dopc", "dopc"),
        ],
        "parse" => &[("dop-core", "parse")],
        "store" => &[("dop-store", "store")],
        "ssh" => &[("dopi", "ssh")],
        "dopc" => &[("dopc", "dopc")],
        other => {
            return Err(format!(
                "unknown benchmark '{other}'; available: parse, store, ssh, dopc"
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
