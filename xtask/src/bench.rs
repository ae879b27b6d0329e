//! `cargo xtask bench [parse|store|ssh|dopc|soak]`: the benchmarks, built in release mode.

use std::process::Command;

use crate::host::root;

/// Cargo's target directory: `CARGO_TARGET_DIR` (relative to the workspace), else `target`.
fn target_dir() -> std::path::PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root().join(dir),
        None => root().join("target"),
    }
}

/// Runs the benchmarks `which` names (`all`: every one but `soak`), one `cargo bench` each.
pub fn run(which: &str) -> Result<(), String> {
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
        // Not in `all`: it runs for 10 minutes (DOP_SOAK_SECS).
        "soak" => &[("dopc", "soak")],
        // Not in `all`: 10 000 logins, about 10 minutes (DOP_BENCH_FLEET_NODES).
        "fleet" => &[("dopi", "fleet")],
        other => {
            return Err(format!(
                "unknown benchmark '{other}'; available: parse, store, ssh, dopc, soak, fleet"
            ))
        }
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for (package, name) in benches {
        let mut bench = Command::new(&cargo);
        if *name == "parse" {
            // The parse bench also times `dopi validate` as a process: the release binary.
            let status = Command::new(&cargo)
                .current_dir(root())
                .args([
                    "build",
                    "--quiet",
                    "--release",
                    "-p",
                    "dopi",
                    "--bin",
                    "dopi",
                ])
                .status()
                .map_err(|e| format!("cannot run cargo: {e}"))?;
            if !status.success() {
                return Err("cannot build dopi for the parse benchmark".to_string());
            }
            bench.env("DOP_BENCH_DOPI", target_dir().join("release/dopi"));
        }
        let status = bench
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
