//! `cargo xtask chaos [KILLS] [SEED]`: the fault-injection tests in their full form.

use std::process::Command;

use crate::host::root;

/// Kill points per tool in the full form of the fault-injection tests.
const FULL_CHAOS_KILLS: usize = 200;

/// The fault-injection tests (every test named `chaos_…`: dopi, dopv and dopc killed at many
/// moments) with `kills` kill points per tool instead of the test suite's bounded 50, and a
/// seed to replay a run's moments.
pub fn run(kills: Option<&String>, seed: Option<&String>) -> Result<(), String> {
    let kills = match kills {
        Some(k) => k
            .parse::<usize>()
            .map_err(|_| format!("KILLS must be a number, not '{k}'"))?,
        None => FULL_CHAOS_KILLS,
    };
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(root())
        .env("DOP_CHAOS_KILLS", kills.to_string())
        .args([
            "test",
            "--workspace",
            "--locked",
            "--",
            "chaos_",
            "--nocapture",
        ])
        .args(["--test-threads", "1"]);
    if let Some(seed) = seed {
        seed.parse::<u64>()
            .map_err(|_| format!("SEED must be a number, not '{seed}'"))?;
        cargo.env("DOP_CHAOS_SEED", seed);
    }
    println!("chaos: {kills} kill points per tool (the test suite uses 50)");
    let status = cargo
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err("a fault-injection test failed; its seed is printed above".into())
    }
}
