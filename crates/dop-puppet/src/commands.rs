//! The `hiera` command of the tools (dopi's `hiera sync|show|config`) and the Hiera write
//! after every plan change ([`after_plans_changed`], handed to dop-cli's plan commands).

use clap::Subcommand;
use dop_cli::store::{open, Io, JsonArg};
use dop_cli::{print_json, EXIT_FAILURE, EXIT_OK};
use dop_core::Config;
use dop_store::Store;
use serde_json::json;

use crate::hiera::{self, hiera_yaml};

/// Writes the Hiera data for Puppet after the plans changed (see [`crate::hiera`]).
pub fn sync_hiera(store: &Store, config: &Config) -> Result<hiera::Index, hiera::HieraError> {
    hiera::sync(store, &config.hiera_dir(), &config.lookup)
}

/// Says on standard error what kept the Hiera data from being written, if anything: the plans
/// are stored either way.
pub fn warn_on_hiera(
    result: &Result<hiera::Index, hiera::HieraError>,
    dir: &std::path::Path,
    io: &mut Io<'_>,
) {
    match result {
        Ok(index) => {
            for (plan, problem) in index.problems() {
                let _ = writeln!(
                    io.err,
                    "warning: Puppet keeps the previous Hiera data of plan '{plan}': {problem}"
                );
            }
        }
        Err(e) => {
            let _ = writeln!(
                io.err,
                "warning: the Hiera data for Puppet under {} was not updated: {e}; run `dopi hiera sync` once it is fixed",
                dir.display()
            );
        }
    }
}

/// Writes the Hiera data after a plan command changed the plans and warns about what kept it
/// from being written (the plans are stored either way).
pub fn after_plans_changed(store: &Store, config: &Config, io: &mut Io<'_>) {
    warn_on_hiera(&sync_hiera(store, config), &config.hiera_dir(), io);
}

/// `hiera`: the data Puppet reads from the store (see [`crate::hiera`]).
#[derive(Subcommand, Clone, Debug)]
pub enum HieraCommand {
    /// Write the Hiera data of every stored plan now (plan add, update and remove do it too);
    /// exit 1 when a plan's newest iteration could not be written (it keeps its old data).
    Sync(JsonArg),
    /// The data Puppet reads for a node now, level by level, most specific first.
    Show {
        /// The node (its name, Puppet's certname).
        node: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Print a Hiera 5 `hiera.yaml` that reads the data (for Puppet's environment or global
    /// hierarchy).
    Config,
}

/// Runs a `hiera` command; returns the exit status.
pub fn hiera(command: &HieraCommand, config: &Config, io: &mut Io<'_>) -> u8 {
    let dir = config.hiera_dir();
    match command {
        HieraCommand::Config => {
            let _ = write!(io.out, "{}", hiera_yaml(&dir));
            EXIT_OK
        }
        HieraCommand::Sync(JsonArg { json }) => {
            let store = match open(config, io) {
                Ok(s) => s,
                Err(status) => return status,
            };
            let result = sync_hiera(&store, config);
            let Ok(index) = &result else {
                warn_on_hiera(&result, &dir, io);
                return EXIT_FAILURE;
            };
            if *json {
                print_json(io.out, &json!({"dir": dir, "index": index}));
            } else {
                let nodes: usize = index.plans.values().map(|p| p.nodes.len()).sum();
                let _ = writeln!(
                    io.out,
                    "wrote generation {} of the Hiera data under {}: {} plan(s), {nodes} node(s)",
                    index.generation,
                    dir.display(),
                    index.plans.len()
                );
                warn_on_hiera(&result, &dir, io);
            }
            if index.problems().is_empty() {
                EXIT_OK
            } else {
                EXIT_FAILURE
            }
        }
        HieraCommand::Show { node, json } => match hiera::node_data(&dir, node) {
            Err(e) => {
                let _ = writeln!(io.err, "error: {e}");
                EXIT_FAILURE
            }
            Ok(levels) if *json => {
                let levels: Vec<_> = levels
                    .into_iter()
                    .map(|(file, data)| json!({"file": file, "data": data}))
                    .collect();
                print_json(io.out, &json!({"node": node, "levels": levels}));
                EXIT_OK
            }
            Ok(levels) if levels.is_empty() => {
                let _ = writeln!(
                    io.out,
                    "node '{node}' is in no stored plan (or `dopi hiera sync` has not run): Puppet finds no dop data for it"
                );
                EXIT_OK
            }
            Ok(levels) => {
                for (file, data) in levels {
                    let _ = writeln!(io.out, "# {file}");
                    let _ = writeln!(
                        io.out,
                        "{}",
                        serde_json::to_string_pretty(&data).unwrap_or_default()
                    );
                }
                EXIT_OK
            }
        },
    }
}
