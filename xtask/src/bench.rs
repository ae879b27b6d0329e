//! `cargo xtask bench [parse|store|ssh|dopc|soak]`: the benchmarks, built in release mode.

use std::process::Command;

use crate::host::root;

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
        other => {
            return Err(format!(
                "unknown benchmark '{other}'; available: parse, store, ssh, dopc, soak"
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
