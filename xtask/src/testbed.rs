//! `cargo xtask testbed up N [DIR] | testbed down [DIR]`: local test nodes (real sshd) that stay
//! up between commands, stopped by pid.

use std::path::PathBuf;
use std::process::Command;

use crate::host::root;

/// Where `testbed up` keeps its keys, configuration and pids unless told otherwise.
const TESTBED_DIR: &str = "target/testbed";

/// `testbed up N [DIR]`: N test nodes (real sshd on 127.10.x.y:2222) that stay up; `testbed
/// down [DIR]` stops them by pid and removes DIR.
pub fn run(args: &[String]) -> Result<(), String> {
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
