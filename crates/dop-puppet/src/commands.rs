//! The commands: `dop-puppet-autosign` ([`autosign`]), the `hiera` command of the tools
//! (dopi's `hiera sync|show|config`) and the Hiera write after every plan change
//! ([`after_plans_changed`], handed to dop-cli's plan commands).

use std::io::{Read, Write};
use std::path::PathBuf;

use clap::Subcommand;
use dop_cli::store::{open, Io, JsonArg};
use dop_cli::{print_json, EXIT_FAILURE, EXIT_OK};
use dop_core::time::{now_ms, rfc3339};
use dop_core::{Config, Environment};
use dop_store::Store;
use serde_json::json;

use crate::app::Cli;
use crate::autosign::{decide, Mode, Policy, Proof, Verdict};
use crate::challenge::{self, Origin};
use crate::hiera::{self, hiera_yaml};

/// Puppet sends a request of a few kilobytes; more is not one.
const MAX_REQUEST: u64 = 1 << 20;

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
    /// Issue a pre-provisioned node (one on a `baremetal` infrastructure, a machine dopv does
    /// not make) the challenge its certificate request must carry, and print it: this is the
    /// only time it is shown. It signs one request; issuing again replaces it.
    Challenge {
        /// The node (its name, Puppet's certname).
        node: String,
    },
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
        HieraCommand::Challenge { node } => match issue_pre_provisioned(config, node, io) {
            Ok(challenge) => {
                let _ = writeln!(io.out, "{challenge}");
                let _ = writeln!(
                    io.err,
                    "put it on {node} as /etc/puppetlabs/puppet/csr_attributes.yaml (mode 0600): \
                     `custom_attributes: {{1.2.840.113549.1.9.7: \"<challenge>\"}}` (quoted: \
                     YAML reads digits as a number); it signs one certificate request"
                );
                EXIT_OK
            }
            Err(status) => status,
        },
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

/// Issues a challenge to a node on a `baremetal` infrastructure of a stored plan; the error
/// is said on `io.err` and its status returned.
fn issue_pre_provisioned(config: &Config, node: &str, io: &mut Io<'_>) -> Result<String, u8> {
    let store = open(config, io)?;
    let mut fail = |message: String| {
        let _ = writeln!(io.err, "error: {message}");
        EXIT_FAILURE
    };
    let plans = store.list().map_err(|e| fail(e.to_string()))?;
    let mut found = None;
    for entry in plans {
        let iteration = store
            .iteration(&entry.name, None)
            .map_err(|e| fail(e.to_string()))?;
        if let Some(n) = iteration.plan.nodes.iter().find(|n| n.name == node) {
            let provider = iteration
                .plan
                .infrastructure(&n.infrastructure)
                .map(|i| i.provider);
            found = Some((entry.name.clone(), n.infrastructure.clone(), provider));
            break;
        }
    }
    let Some((plan, infrastructure, provider)) = found else {
        return Err(fail(format!(
            "{node} is not a node of any stored plan: add its plan first"
        )));
    };
    if provider != Some(dop_core::plan::ProviderKind::Baremetal) {
        return Err(fail(format!(
            "{node} is on infrastructure '{infrastructure}' of plan '{plan}', which dopv deploys: \
             dopv issues its challenge when it creates the node (a redeploy issues a new one); \
             only nodes on a baremetal infrastructure are pre-provisioned"
        )));
    }
    challenge::issue(
        &config.hiera_dir(),
        &plan,
        node,
        now_ms(),
        Origin::PreProvisioned,
    )
    .map_err(|e| fail(e.to_string()))
}

/// What a signed request proved, for the decision line.
fn said(proof: &Proof) -> String {
    match proof {
        Proof::NodeChallenge {
            origin: Origin::Dopv,
            generation,
        } => format!(", its challenge of deployment {generation} checked and used"),
        Proof::NodeChallenge {
            origin: Origin::PreProvisioned,
            ..
        } => ", its pre-provisioned challenge checked and used".to_string(),
        Proof::PlanPassword => ", challenge password checked (--compat-original)".to_string(),
        Proof::NodeName => ", by name only (--compat-original)".to_string(),
    }
}

/// `dop-puppet-autosign`: decides on the request in `input`, says why on `err` and in the
/// decision log; returns the exit status Puppet reads (0 sign, 1 refuse).
pub fn autosign(cli: &Cli, input: &mut dyn Read, err: &mut dyn Write) -> u8 {
    // The Puppet server's user is not root, but the settings are the system's.
    let env = Environment {
        root: true,
        ..Environment::of_process()
    };
    let file = cli.config.clone().or_else(|| {
        let system = PathBuf::from("/etc/dop/dop.conf");
        system.exists().then_some(system)
    });
    let config = match Config::load(&env, file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "dop-puppet-autosign: refused {}: {e}", cli.certname);
            return 1;
        }
    };
    let data_dir = cli.data_dir.clone().unwrap_or_else(|| config.hiera_dir());
    let mode = if cli.compat_original {
        let _ = writeln!(
            err,
            "dop-puppet-autosign: warning: --compat-original signs any node name of a stored \
             plan, deployed or not, as often as asked: a machine that knows a node name (and its \
             plan's `autosign` password) gets its certificate"
        );
        Mode::CompatOriginal {
            require_challenge: cli.require_challenge,
        }
    } else {
        Mode::NodeChallenge
    };
    let mut csr = Vec::new();
    let verdict = match input.take(MAX_REQUEST).read_to_end(&mut csr) {
        Ok(_) => decide(
            &Policy {
                data_dir: &data_dir,
                mode,
            },
            &cli.certname,
            &csr,
        ),
        Err(e) => Verdict::Refuse(format!("cannot read the request on standard input: {e}")),
    };
    let line = match &verdict {
        Verdict::Sign { plan, proof } => {
            format!(
                "signed {} (node of plan '{plan}'{})",
                cli.certname,
                said(proof)
            )
        }
        Verdict::Refuse(reason) => format!("refused {}: {reason}", cli.certname),
    };
    let _ = writeln!(err, "dop-puppet-autosign: {line}");
    let log_file = cli
        .log_file
        .clone()
        .unwrap_or_else(|| config.log_dir.join("autosign.log"));
    if log_file.as_os_str() != "-" {
        let record = serde_json::json!({
            "time": rfc3339(now_ms()),
            "certname": cli.certname,
            "signed": verdict.exit_status() == 0,
            "decision": line,
        });
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .and_then(|mut f| writeln!(f, "{record}"));
        if let Err(e) = written {
            let _ = writeln!(
                err,
                "dop-puppet-autosign: cannot log to {}: {e}",
                log_file.display()
            );
        }
    }
    verdict.exit_status()
}
